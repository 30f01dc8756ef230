"""FsspecStore: any fsspec filesystem URL (gs://, az://, http(s)://, hdfs://, memory://, file://...).

fsspec is imported when the first such store is opened; a protocol whose
package is missing raises ``UnavailableError`` with fsspec's install hint.

What is and is not atomic here (``capabilities.conditional_writes`` is
False): ``put`` writes through fsspec's ``pipe_file``, atomic where the
backend's single write is (object stores, memory://); on a local or
mounted file system (file://) it writes a hidden temp file and renames it.
``put_if_absent`` and ``compare_and_swap`` check, then write, under a lock
that only serialises writers *in this process*: two processes (or nodes)
can both win. Use the s3 or local backend for refs shared between
processes. Versions are the object's ETag when the backend reports one,
else a digest of its size, modification time and inode (fsspec's ``info``).
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import (
    ConflictError,
    CredentialsError,
    InvalidArgumentError,
    NotFoundError,
    StorageIOError,
    StorecompError,
    StoreUnavailableError,
    UnavailableError,
    VersionChangedError,
    from_errno,
)
from ..io import BufferRef, land_bytes
from ..redact import call_translated, public_url, redact
from .base import VERSION_RETRIES, Capabilities, Listing, ObjectInfo, Store, dir_prefix
from .futures import PendingRanges
from .keys import RESERVED_PREFIX, payload_view, validate_key, validate_prefix
from .retry import RetryPolicy, call_with_retry, http_status, looks_transient, storage_full_errno


def filesystem_for(url: str, **storage_options: Any) -> tuple[Any, str]:
    """fsspec's filesystem and root path for ``url``.

    Raises UnavailableError naming the package to install when the protocol's
    implementation is missing, InvalidArgumentError when fsspec knows no such
    protocol.
    """
    shown = public_url(url)
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError:
        raise UnavailableError(f"{shown}: this URL needs fsspec: pip install fsspec") from None
    scheme = url.split("://", 1)[0] if "://" in url else "file"

    def failed(e: Exception) -> StorecompError:
        if isinstance(e, ImportError):
            known = known_implementations.get(scheme, {})
            package = str(known.get("class", "")).split(".", 1)[0]
            hint = f"pip install {package}" if package else "install its fsspec implementation"
            return UnavailableError(f"{shown}: the {scheme}:// protocol needs a package: {hint} ({known.get('err', e)})")
        if isinstance(e, ValueError) and "protocol not known" in str(e).lower():
            return InvalidArgumentError(
                f"{shown}: unknown URL scheme {scheme!r}: neither storecomp nor fsspec has a backend for it "
                "(file paths, s3://, and fsspec protocols such as gs:// (pip install gcsfs), az:// (pip install adlfs), "
                "http(s)://, hdfs:// are supported)"
            )
        if isinstance(e, ValueError):
            return InvalidArgumentError(f"{shown}: {redact(str(e))}")
        # a client that needs more (hdfs:// needs a JVM and libhdfs)
        first = redact(str(e)).strip().split("\n", 1)[0][:300]
        return UnavailableError(f"{shown}: could not open the {scheme}:// file system: {type(e).__name__}: {first}")

    fs, root = call_translated(lambda: fsspec.core.url_to_fs(url, **storage_options), failed)
    return fs, str(root).rstrip("/")


class FsspecStore(Store):
    """A store over an fsspec URL; ``storage_options`` go to the filesystem.

    ``retry`` bounds retries of transient errors (timeouts, resets, 5xx, 429);
    ``max_concurrency`` is the number of reads in flight per store.
    """

    def __init__(self, url: str, *, retry: RetryPolicy | None = None, max_concurrency: int = 16, **storage_options: Any) -> None:
        self.fs, self.root = filesystem_for(url, **storage_options)
        self.url = public_url(url.rstrip("/"))
        self._password = urlsplit(url).password or ""  # kept out of every message
        self.retry = retry or RetryPolicy()
        self._local = "file" in _protocols(self.fs) or "local" in _protocols(self.fs)
        self._max_concurrency = max_concurrency
        self._pool = concurrent.futures.ThreadPoolExecutor(max_concurrency, thread_name_prefix="storecomp-fsspec")
        self._pid = os.getpid()
        self._cas_lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional_writes=False, ranged_reads=True, native_reads=False, local=self._local)

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}" if self.root else validate_key(key)

    # ------------------------------------------------------------ errors

    def _translate(self, e: BaseException, key: str | None, op: str) -> StorecompError:
        if isinstance(e, StorecompError):
            return e
        name = f"{self.url}/{key}" if key else self.url
        status = http_status(e)  # by type and status, never by the message's words
        if isinstance(e, FileNotFoundError) or status == 404:
            return NotFoundError(errno.ENOENT, name, None, op)
        if isinstance(e, PermissionError) or status in (401, 403):
            return CredentialsError(f"{name}: {op} refused: check the credentials and permissions")
        text = redact(str(e), (self._password,))
        full = storage_full_errno(status)
        if full is not None and not getattr(e, "errno", None):  # an errno, when there is one, says more
            err = StorageIOError(full, name, None, op)
            err.add_note(f"{type(e).__name__}: {text[:300]}")
            return err
        if looks_transient(e):
            return StoreUnavailableError(self.url, f"{op} {name}: {type(e).__name__}: {text[:300]}")
        err = from_errno(getattr(e, "errno", None) or errno.EIO, name, None, op)  # EROFS: PermissionDeniedError
        err.add_note(f"{type(e).__name__}: {text[:300]}")
        return err

    def _call(self, fn: Any, key: str | None, op: str) -> Any:
        return call_translated(lambda: call_with_retry(fn, self.retry, looks_transient), lambda e: self._translate(e, key, op))

    # ------------------------------------------------------------ reads

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> PendingRanges:
        path = self._path(key)
        return PendingRanges(self._executor().submit(self._read, key, path, offs, lens, douts, ref, version), ref)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The read pool; a forked child (DataLoader workers) makes its own: the
        parent's worker threads do not exist there, and its queue would never drain."""
        if self._pid != os.getpid():
            self._pool = concurrent.futures.ThreadPoolExecutor(self._max_concurrency, thread_name_prefix="storecomp-fsspec")
            self._pid = os.getpid()
        return self._pool

    def _read(
        self, key: str, path: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, version: str | None
    ) -> np.ndarray:
        """fsspec has no conditional reads: the object's version (ETag, or size,
        mtime and inode) is read before and after the ranges; a change between
        restarts the read (at most ``VERSION_RETRIES`` times), or raises
        VersionChangedError when the caller pinned ``version``."""
        for _ in range(VERSION_RETRIES):
            before = self.stat(key)
            if version is not None and before.version != version:
                raise VersionChangedError(self.name_of(key), version, before.version)
            got = self._read_once(key, path, offs, lens, douts, ref, before.size)
            after = self.stat(key)
            if after.version == before.version:
                return got
            if version is not None:
                raise VersionChangedError(self.name_of(key), version, after.version)
        raise VersionChangedError(self.name_of(key), before.version, "replaced on every try")

    def _read_once(
        self, key: str, path: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, size: int
    ) -> np.ndarray:
        got = np.zeros(offs.size, np.uint64)
        ends = np.minimum(offs + lens, np.uint64(size))  # clipped to this version's end
        todo = np.flatnonzero(ends > offs)
        if todo.size:
            starts = [int(offs[i]) for i in todo]
            stops = [int(ends[i]) for i in todo]
            parts = self._call(
                lambda: _raise_first(self.fs.cat_ranges([path] * len(starts), starts, stops, on_error="return")), key, "read"
            )
            for i, data in zip(todo, parts, strict=True):
                got[i] = land_bytes(ref, int(douts[i]), data, int(ends[i] - offs[i]))
        return got

    # ------------------------------------------------------------ writes

    def _write(self, key: str, data: Any, mode: str = "overwrite") -> None:
        path = self._path(key)
        value = bytes(payload_view(data))
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if self._local:
            if parent:
                self._call(lambda: self.fs.makedirs(parent, exist_ok=True), key, "put")
            tmp = f"{parent}/{RESERVED_PREFIX}tmp-{uuid.uuid4().hex}"
            try:
                self._call(lambda: self.fs.pipe_file(tmp, value), key, "put")
                self._call(lambda: self.fs.mv(tmp, path), key, "put")
            finally:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
        else:
            self._call(lambda: self.fs.pipe_file(path, value, mode=mode), key, "put")

    def put(self, key: str, data: Any) -> ObjectInfo:
        self._write(key, data)
        return self.stat(key)

    def put_if_absent(self, key: str, data: Any) -> bool:
        with self._cas_lock:
            if self.exists(key):
                return False
            self._write(key, data)
            return True

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        with self._cas_lock:
            try:
                current: str | None = self.stat(key).version
            except NotFoundError:
                current = None
            if current != expected:
                what = "no object" if expected is None else f"version {expected}"
                found = "none" if current is None else current
                raise ConflictError(f"{self.url}/{key}: compare-and-swap expected {what}, found {found}")
            self._write(key, data)
            return self.stat(key)

    # ------------------------------------------------------------ metadata

    def _info(self, key: str, info: dict[str, Any]) -> ObjectInfo:
        etag = info.get("ETag") or info.get("etag") or info.get("e_tag")
        mtime = _mtime(info)
        if etag:
            version = str(etag)
        else:
            raw = f"{info.get('size')}-{mtime}-{info.get('ino', '')}"
            version = hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()
        return ObjectInfo(key, int(info.get("size") or 0), version, mtime)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        info = self._call(lambda: self.fs.info(path), key, "stat")
        if info.get("type") != "file":
            raise NotFoundError(errno.ENOENT, f"{self.url}/{key}", None, "stat")
        return self._info(key, info)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = f"{self.root}/{base}" if base else self.root
        try:
            found = self._call(lambda: self.fs.find(top, detail=True), None, "list")
        except NotFoundError:
            return
        out = []
        for path, info in found.items():
            path = str(path)
            if not path.startswith(self.root):
                continue
            key = path[len(self.root) :].lstrip("/")
            if info.get("type") != "file" or not key.startswith(prefix):
                continue
            if any(seg.startswith(RESERVED_PREFIX) for seg in key.split("/")):
                continue
            out.append(self._info(key, info))
        out.sort(key=lambda i: i.key)
        yield from out

    def list_dir(self, prefix: str = "") -> Listing:
        """One level (``fs.ls(detail=True)``), not the tree below it."""
        prefix = dir_prefix(prefix)
        top = f"{self.root}/{prefix.rstrip('/')}".rstrip("/") if prefix else self.root
        try:
            found = self._call(lambda: self.fs.ls(top or "", detail=True), None, "list")
        except NotFoundError:
            return Listing([], [])
        objects, dirs = [], set()
        for info in found:
            path = str(info.get("name", ""))
            if not path.startswith(self.root):
                continue
            key = path[len(self.root) :].strip("/")
            hidden = any(seg.startswith(RESERVED_PREFIX) for seg in key.split("/"))
            if hidden or not key.startswith(prefix) or key == prefix.rstrip("/"):
                continue
            if info.get("type") == "directory":
                dirs.add(key + "/")
            elif info.get("type") == "file":
                objects.append(self._info(key, info))
        objects.sort(key=lambda i: i.key)
        return Listing(objects, sorted(dirs))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self._call(lambda: self.fs.rm_file(path), key, "delete")
        except NotFoundError:
            pass

    def close(self) -> None:
        if self._pid == os.getpid():
            self._pool.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"


def _protocols(fs: Any) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def _raise_first(parts: list[Any]) -> list[Any]:
    for p in parts:
        if isinstance(p, BaseException):
            raise p
    return parts


def _mtime(info: dict[str, Any]) -> float | None:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            continue
    return None
