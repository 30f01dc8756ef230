"""One namespace: ``sc://mount/path`` URLs resolved through a mount table.

A *mount* names one or more *replicas* of the same data, each a store URL
(``/abs/dir``, ``file://``, ``s3://bucket/prefix``, any fsspec URL) in a
*site* (region). Reads go to the nearest healthy replica and fail over to
the next when one errs; writes go to the primary. Keeping replicas in sync
is the object store's job (S3 replication, ``weed filer.sync``), not ours.

Mount tables come from, lowest precedence first:

1. the ``[mounts]`` table of the file named by ``STORECOMP_CONFIG``;
2. the ``[mounts]`` table of the file named by ``STORECOMP_MOUNTS``
   (a mount of the same name replaces the one from 1);
3. ``STORECOMP_MOUNT_<NAME>=url[,url...]`` environment variables (one per
   mount; several URLs are replicas in order of preference);
4. the Python API: ``Namespace(mounts=[...])`` / :meth:`Namespace.add`.

``STORECOMP_SITE`` names this node's site: replicas there are read first.
The TOML format is documented in docs/store.md.

Plain paths, ``file://`` and ``s3://bucket/key`` URLs resolve without any
mount (plain and ``file://`` paths to a store rooted at ``/``; object-store
URLs to a store rooted at the bucket).
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import config
from ..errors import InvalidArgumentError
from .base import Store
from .keys import validate_key, validate_prefix
from .mounts import SCHEME, Mount, Replica, load_mounts
from .replicas import ReplicatedStore, primary_of

__all__ = [
    "SCHEME",
    "Mount",
    "Namespace",
    "Replica",
    "ReplicatedStore",
    "StoreReader",
    "load_mounts",
    "primary_of",
    "split_url",
]


# ---------------------------------------------------------------- URLs


def split_url(url: str) -> tuple[str, str]:
    """``(root_url, key)`` of a non-``sc://`` URL or path.

    Plain and ``file://`` paths: root ``file:///``, key the absolute path
    without its leading ``/``. ``scheme://bucket/key``: root
    ``scheme://bucket``. The key may be ``""`` (the root itself).
    """
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"expected a URL or path, got {url!r}")
    if "\0" in url:
        raise InvalidArgumentError(f"{url!r}: contains a NUL byte")
    if url.startswith("file://"):
        path = url[len("file://") :]
        if not path.startswith("/"):
            raise InvalidArgumentError(f"{url!r}: file:// URLs need an absolute path (file:///dir/file)")
        return "file:///", os.path.normpath(path).lstrip("/")
    if "://" not in url:
        path = os.path.abspath(os.path.expanduser(url))
        return "file:///", path.lstrip("/")
    scheme, rest = url.split("://", 1)
    if not re.match(r"^[a-z][a-z0-9+.-]*$", scheme):
        raise InvalidArgumentError(f"{url!r}: malformed URL scheme {scheme!r}")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InvalidArgumentError(f"{url!r}: no bucket or host after {scheme}://")
    return f"{scheme}://{bucket}", key


def _mount_key(url: str, path: str) -> str:
    """The key inside a mount for the path part of an ``sc://`` URL; refuses traversal."""
    if path.startswith("/"):
        raise InvalidArgumentError(f"{url!r}: absolute path {path!r} would escape the mount")
    if path == "":
        return ""
    return validate_prefix(path) if path.endswith("/") else validate_key(path)


def _default_opener(url: str, **options: Any) -> Store:
    """Local paths open a LocalStore directly; any other URL goes through the registry."""
    if ("://" not in url or url.startswith("file://")) and not options:
        from .local import LocalStore

        return LocalStore(url[len("file://") :] if url.startswith("file://") else url)
    from .registry import open_store

    return open_store(url, **options)


class Namespace:
    """The mount table and the stores it opens (opened once, reused).

    ``mounts``: mounts added on top of ``environ``'s table (see
    :func:`load_mounts`); ``environ=None`` reads ``os.environ``, ``{}``
    ignores the environment. ``opener(url, **options) -> Store`` opens one replica or
    root (default: :func:`storecomp.store.registry.open_store`).
    """

    def __init__(
        self,
        mounts: Sequence[Mount] = (),
        *,
        environ: Mapping[str, str] | None = None,
        opener: Callable[..., Store] | None = None,
        local_site: str | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._mounts = load_mounts(env)
        for m in mounts:
            self._mounts[m.name] = m
        self._opener = opener or _default_opener
        self.local_site = config.local_site(env) if local_site is None else local_site
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    @property
    def mounts(self) -> dict[str, Mount]:
        return dict(self._mounts)

    def add(self, mount: Mount) -> None:
        """Add or replace a mount (its store is reopened on next use)."""
        with self._lock:
            self._mounts[mount.name] = mount
            old = self._stores.pop(SCHEME + mount.name, None)
        if old is not None:
            old.close()

    def store(self, name: str) -> Store:
        """The store of mount ``name`` (a ReplicatedStore for several replicas)."""
        key = SCHEME + name
        with self._lock:
            if key in self._stores:
                return self._stores[key]
            mount = self._mounts.get(name)
        if mount is None:
            known = ", ".join(sorted(self._mounts)) or "none"
            raise InvalidArgumentError(f"{key}: no such mount (known: {known}); see `storecomp mounts`")
        stores = [self._opener(r.url, **dict(r.options)) if r.options else self._opener(r.url) for r in mount.replicas]
        st: Store
        if len(stores) == 1 and not mount.read_only:
            st = stores[0]
        else:
            st = ReplicatedStore(mount, stores, local_site=self.local_site)
        if mount.cache_dir:
            from .cache import CachedStore

            st = CachedStore(st, mount.cache_dir, mount.cache_max_bytes, mount.cache_block_bytes)
        if mount.encryption and mount.encryption != "off":
            from .encrypted import EncryptedStore

            st = EncryptedStore(st, mount.encryption)  # outermost: the cache and the replicas hold ciphertext
        return self._keep(key, st)

    def resolve(self, url: str) -> tuple[Store, str]:
        """``(store, key)`` for ``url``: ``sc://mount/path``, a plain path,
        ``file://`` or ``scheme://bucket/key``. The key may be ``""`` (the
        store's root). Raises InvalidArgumentError for path traversal, an
        unknown mount or a malformed URL."""
        if isinstance(url, os.PathLike):
            url = os.fspath(url)
        if isinstance(url, str) and url.startswith(SCHEME):
            rest = url[len(SCHEME) :]
            name, _, path = rest.partition("/")
            if not name:
                raise InvalidArgumentError(f"{url!r}: no mount name after {SCHEME}")
            key = _mount_key(url, path)
            return self.store(name), key
        root, key = split_url(url)
        with self._lock:
            st = self._stores.get(root)
        if st is None:
            st = self._keep(root, self._opener(root))
        if key:
            key = validate_prefix(key) if key.endswith("/") else validate_key(key)
        return st, key

    def _keep(self, key: str, st: Store) -> Store:
        """The store kept under ``key``: ``st``, or the one another thread opened
        first (then ``st`` is closed: its connections and threads are not leaked)."""
        with self._lock:
            kept = self._stores.setdefault(key, st)
        if kept is not st:
            st.close()
        return kept

    def open(self, url: str) -> StoreReader:
        """A read-only binary file object over the object at ``url``."""
        store, key = self.resolve(url)
        return StoreReader(store, validate_key(key))

    def close(self) -> None:
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for s in stores:
            s.close()

    def __enter__(self) -> Namespace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StoreReader(io.RawIOBase):
    """A seekable read-only file over one object (ranged reads, no prefetch).

    Every read is of the version opened: when the object is replaced, reads
    raise VersionChangedError instead of mixing two versions.
    """

    def __init__(self, store: Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        info = store.stat(key)
        self.size, self.version = info.size, info.version
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise InvalidArgumentError(f"{self.key}: seek to negative offset {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), max(0, self.size - self._pos))
        if n == 0:
            return 0
        arr = np.frombuffer(view, np.uint8)
        got = int(self.store.read_ranges(self.key, [self._pos], [n], arr, [0], exact=False, version=self.version)[0])
        self._pos += got
        return got
