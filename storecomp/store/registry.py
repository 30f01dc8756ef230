"""``open_store(url)``: the backend for a URL, imported on first use.

A read-only table maps a URL scheme to ``"module:Class"`` and an install
hint (fsspec style); :func:`register_backend` adds to it. Plain paths and
``file://`` open a :class:`~storecomp.store.local.LocalStore`, ``s3://``
an :class:`~storecomp.store.s3.S3Store`, and any other scheme goes to the
fsspec adapter, which names the package to install when its protocol's
implementation is missing.
"""

from __future__ import annotations

import importlib
import os
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

from ..errors import InvalidArgumentError, UnavailableError
from ..redact import public_url
from .base import Store


@dataclass(frozen=True)
class Backend:
    """Where a backend lives (``"module:Class"``) and what to install when it is missing."""

    target: str
    install: str


_BUILTIN = {
    "file": Backend("storecomp.store.local:LocalStore", "(built in)"),
    "s3": Backend("storecomp.store.s3:S3Store", "pip install obstore (or storecomp[s3])"),
}
_FSSPEC = Backend("storecomp.store.fsspec_store:FsspecStore", "pip install fsspec")
_extra: dict[str, Backend] = {}
_lock = threading.Lock()


def backends() -> MappingProxyType[str, Backend]:
    """The scheme table (read-only): built-ins plus registered ones."""
    with _lock:
        return MappingProxyType({**_BUILTIN, **_extra})


def register_backend(scheme: str, target: str, install: str = "") -> None:
    """Route ``scheme://`` URLs to ``target`` (``"module:Class"``, imported on first use).

    The class is called as ``Class(url, **options)``. Raises
    InvalidArgumentError for a malformed scheme or target.
    """
    if not scheme.isidentifier() or ":" not in target:
        raise InvalidArgumentError(f"register_backend: bad scheme {scheme!r} or target {target!r} (want 'module:Class')")
    with _lock:
        _extra[scheme.lower()] = Backend(target, install)


def _load(scheme: str, backend: Backend) -> type[Store]:
    module, _, name = backend.target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise UnavailableError(f"the {scheme}:// backend needs a package that is missing ({e.name}): {backend.install}") from None
    if not (isinstance(cls, type) and issubclass(cls, Store)):
        raise InvalidArgumentError(f"{backend.target} is not a storecomp Store class")
    return cls


def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``(bucket, prefix)``; InvalidArgumentError without a bucket."""
    parts = urlsplit(url)
    if not parts.netloc:
        raise InvalidArgumentError(f"{public_url(url)}: an s3 URL needs a bucket: s3://bucket/prefix")
    if "@" in parts.netloc:
        raise InvalidArgumentError(
            f"s3://{parts.netloc.rpartition('@')[2]}{parts.path}: an s3 URL holds no credentials; pass access_key_id= "
            "and secret_access_key= (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    return parts.netloc, unquote(parts.path).strip("/")


def open_store(url: str | os.PathLike[str], *, encryption: Any = None, **options: Any) -> Store:
    """The store at ``url``: a path, ``file:///dir``, ``s3://bucket/prefix`` or any fsspec URL.

    ``encryption`` (a :class:`storecomp.crypto.KeyProvider`, ``"env"``,
    ``"file:PATH"``; None: off) wraps the store in an
    :class:`~storecomp.store.encrypted.EncryptedStore`. ``options`` go to the backend (for S3: ``endpoint``, ``region``,
    ``access_key_id``, ``secret_access_key``, ``retry``...; for fsspec: its
    storage options). Raises InvalidArgumentError for an unknown scheme or a
    malformed URL, UnavailableError naming the package to install when a
    backend's dependency is missing.
    """
    if encryption is not None and encryption != "off":
        from ..crypto import key_provider
        from .encrypted import EncryptedStore

        keys = key_provider(encryption)  # a missing key fails here, before anything is opened
        return EncryptedStore(open_store(url, **options), keys)
    text = os.fspath(url)
    if not isinstance(text, str) or not text:
        raise InvalidArgumentError(f"store URL must be a non-empty string, got {url!r}")
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    with _lock:
        backend = _extra.get(scheme) or _BUILTIN.get(scheme or "file")
    if scheme in ("", "file") and (backend is None or backend is _BUILTIN["file"]):
        from .local import LocalStore

        path = unquote(urlsplit(text).path) if scheme == "file" else text
        if scheme == "file" and urlsplit(text).netloc not in ("", "localhost"):
            raise InvalidArgumentError(f"{text}: file:// URLs name a local path (file:///dir), not a host")
        return LocalStore(path, **options)
    if scheme == "s3" and backend is _BUILTIN["s3"]:
        from .s3 import S3Store

        bucket, prefix = split_s3_url(text)
        return S3Store(bucket, prefix, **options)
    if backend is not None:
        return _load(scheme, backend)(text, **options)  # type: ignore[call-arg]
    from .fsspec_store import FsspecStore

    return FsspecStore(text, **options)
