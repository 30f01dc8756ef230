"""Where a dataset lives: a local folder, or a prefix of a store named by a URL.

One rule for readers (``open_dataset``) and writers (``DatasetWriter``):
``file://`` and plain paths are local folders; any other ``scheme://`` URL
(``s3://``, ``sc://mount/path``, fsspec protocols) is a store prefix,
opened by :func:`storecomp.store.open_store` when ``store_options`` are
given, else resolved through the mount table (:class:`~storecomp.store.Namespace`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidArgumentError, PermissionDeniedError
from ..store import Namespace, Store, open_store


def is_store_url(src: str) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a store prefix, not a local folder)."""
    return "://" in src and not src.startswith("file://")


def local_path(src: str) -> str:
    """A local path from a plain path or a ``file://`` URL."""
    return src[len("file://") :] if src.startswith("file://") else src


#: fsspec protocols that can only read.
READ_ONLY_SCHEMES = ("http", "https")


def resolve(url: str, store_options: Mapping[str, Any] | None, *, write: bool = False) -> tuple[Store, str, Callable[[], None]]:
    """``(store, prefix, close)`` for a dataset URL; ``prefix`` is ``""`` or ends with ``/``.

    ``close`` releases what was opened here (call it when the store is no
    longer used). Raises InvalidArgumentError for an unknown scheme or
    mount, UnavailableError when the backend's package is missing; with
    ``write``, before anything is written: InvalidArgumentError for a
    read-only protocol (http) and PermissionDeniedError for a read-only mount.
    """
    scheme = url.split("://", 1)[0].lower()
    if write and scheme in READ_ONLY_SCHEMES:
        raise InvalidArgumentError(
            f"{url}: {scheme}:// URLs are read-only; write to a local folder, s3:// or a writable sc:// mount"
        )
    if store_options is not None:
        store = open_store(url, **store_options)
        return store, "", store.close
    ns = Namespace()
    try:
        if write and url.startswith("sc://"):
            mount = ns.mounts.get(url[len("sc://") :].partition("/")[0])
            if mount is not None and mount.read_only:
                raise PermissionDeniedError(errno.EROFS, url, None, "write (the mount is read_only)")
        store, prefix = ns.resolve(url.rstrip("/") + "/")
    except BaseException:
        ns.close()
        raise
    return store, prefix, ns.close
