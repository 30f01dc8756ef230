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

import errno
import io
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    ConfigError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StorageIOError,
    StoreUnavailableError,
)
from .base import Capabilities, ObjectInfo, RangeFuture, Store
from .keys import validate_key, validate_prefix

SCHEME = "sc://"
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_MOUNT = "STORECOMP_MOUNT_"
_T = TypeVar("_T")


# ---------------------------------------------------------------- mounts


@dataclass(frozen=True)
class Replica:
    """One copy of a mount's data: a store URL in a site. Lower ``preference`` is read first."""

    url: str
    site: str = ""
    preference: int = 0
    #: Backend options for ``open_store(url, **options)`` (endpoint, region...);
    #: never credentials: those come from the environment.
    options: tuple[tuple[str, Any], ...] = ()


#: Option names refused in mount tables (credentials belong in the environment).
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")


@dataclass(frozen=True)
class Mount:
    """A named entry of the mount table.

    ``replicas`` are copies of the same data; ``primary`` (a site name or a
    replica URL; default the first replica) takes every write.
    """

    name: str
    replicas: tuple[Replica, ...]
    primary: str = ""
    read_only: bool = False
    #: Node-local cache (storecomp.store.cache.CachedStore) in front of the
    #: mount when set: directory, byte budget, block size (None: whole objects).
    cache_dir: str = ""
    cache_max_bytes: int = 0
    cache_block_bytes: int | None = None

    def __post_init__(self) -> None:
        if not _MOUNT_NAME.match(self.name):
            raise InvalidArgumentError(f"mount name {self.name!r}: use letters, digits, '_', '.', '-'")
        if not self.replicas:
            raise InvalidArgumentError(f"mount {self.name!r} has no replicas")
        if self.primary and self.primary_replica is None:
            raise InvalidArgumentError(f"mount {self.name!r}: primary {self.primary!r} is no replica's site or url")
        if self.cache_dir and self.cache_max_bytes <= 0:
            raise InvalidArgumentError(f"mount {self.name!r}: cache_dir needs a positive cache_max_bytes")

    @classmethod
    def of(cls, name: str, *urls: str, read_only: bool = False) -> Mount:
        """A mount over ``urls`` (replicas in order of preference)."""
        return cls(name, tuple(Replica(u, preference=i) for i, u in enumerate(urls)), read_only=read_only)

    @property
    def primary_replica(self) -> Replica | None:
        if not self.primary:
            return self.replicas[0]
        for r in self.replicas:
            if self.primary in (r.site, r.url):
                return r
        return None


# ---------------------------------------------------------------- config


def load_mounts(environ: Mapping[str, str] | None = None) -> dict[str, Mount]:
    """The mount table from files and environment (see the module docstring).

    Raises ConfigError naming the file, line and key of a malformed entry.
    """
    env = os.environ if environ is None else environ
    mounts: dict[str, Mount] = {}
    for var in ("STORECOMP_CONFIG", "STORECOMP_MOUNTS"):
        if env.get(var):
            mounts.update(_mounts_from_file(Path(env[var]), var))
    for var, value in sorted(env.items()):
        if var.startswith(_ENV_MOUNT) and len(var) > len(_ENV_MOUNT):
            name = var[len(_ENV_MOUNT) :].lower()
            urls = [u.strip() for u in value.split(",") if u.strip()]
            try:
                mounts[name] = Mount.of(name, *urls)
            except InvalidArgumentError as e:
                raise ConfigError(f"{var}={value!r}: {e}") from None
    return mounts


def _mounts_from_file(path: Path, var: str) -> dict[str, Mount]:
    import tomllib

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (named by {var})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file (named by {var}): {e.strerror}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    table = doc.get("mounts", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}:{_line_of(text, 'mounts')}: [mounts] must be a table of mounts")
    out: dict[str, Mount] = {}
    for name, spec in table.items():
        out[name] = _mount_from_table(path, text, name, spec)
    return out


def _mount_from_table(path: Path, text: str, name: str, spec: Any) -> Mount:
    def fail(key: str, msg: str) -> ConfigError:
        line = _line_of(text, f"mounts.{name}", key)
        return ConfigError(f"{path}:{line}: [mounts.{name}] {key}: {msg}")

    if not isinstance(spec, dict):
        return _raise(fail("", "a mount must be a table with 'url' or 'replicas'"))
    known = {"url", "options", "replicas", "primary", "read_only", "cache_dir", "cache_max_bytes", "cache_block_bytes"}
    for key in spec:
        if key not in known:
            raise fail(key, f"unknown key; known: {', '.join(sorted(known))}")
    if ("url" in spec) == ("replicas" in spec):
        raise fail("url", "give exactly one of 'url' or 'replicas'")
    replicas: list[Replica] = []
    if "url" in spec:
        if not isinstance(spec["url"], str) or not spec["url"]:
            raise fail("url", "expected a non-empty string")
        replicas.append(Replica(spec["url"], options=_options(spec.get("options", {}), lambda m: fail("options", m), 0)))
    else:
        reps = spec["replicas"]
        if not isinstance(reps, list) or not reps:
            raise fail("replicas", "expected a non-empty array of tables {url, site, preference}")
        for i, r in enumerate(reps):
            if isinstance(r, str):
                r = {"url": r}
            if not isinstance(r, dict) or not isinstance(r.get("url"), str) or not r["url"]:
                raise fail("replicas", f"entry {i}: expected a table with a string 'url'")
            extra = set(r) - {"url", "site", "preference", "options"}
            if extra:
                raise fail("replicas", f"entry {i}: unknown key {sorted(extra)[0]!r}; known: url, site, preference, options")
            site, pref = r.get("site", ""), r.get("preference", i)
            if not isinstance(site, str):
                raise fail("replicas", f"entry {i}: site must be a string")
            if not isinstance(pref, int) or isinstance(pref, bool):
                raise fail("replicas", f"entry {i}: preference must be an integer")
            replicas.append(Replica(r["url"], site, pref, _options(r.get("options", {}), lambda m: fail("replicas", m), i)))
    primary, read_only = spec.get("primary", ""), spec.get("read_only", False)
    if not isinstance(primary, str):
        raise fail("primary", "expected a site name or replica url")
    if not isinstance(read_only, bool):
        raise fail("read_only", "expected true or false")
    cache_dir, cache_max, cache_block = spec.get("cache_dir", ""), spec.get("cache_max_bytes", 0), spec.get("cache_block_bytes")
    if not isinstance(cache_dir, str):
        raise fail("cache_dir", "expected a directory path")
    if not isinstance(cache_max, int) or isinstance(cache_max, bool) or cache_max < 0:
        raise fail("cache_max_bytes", "expected a positive integer (bytes)")
    if cache_block is not None and (not isinstance(cache_block, int) or isinstance(cache_block, bool) or cache_block <= 0):
        raise fail("cache_block_bytes", "expected a positive integer (bytes), a multiple of 4096")
    try:
        return Mount(name, tuple(replicas), primary, read_only, cache_dir, cache_max, cache_block)
    except InvalidArgumentError as e:
        msg = str(e)
        raise fail("primary" if "primary" in msg else "cache_max_bytes" if "cache" in msg else "url", msg) from None


def _options(obj: Any, fail: Callable[[str], ConfigError], i: int) -> tuple[tuple[str, Any], ...]:
    """Backend options of a replica, refusing anything that looks like a credential."""
    if not isinstance(obj, dict):
        raise fail(f"entry {i}: options must be a table (endpoint, region, ...)")
    for k in obj:
        if any(w in k.lower() for w in _SECRET_WORDS):
            raise fail(f"entry {i}: option {k!r} looks like a credential; set it in the environment (AWS_*), not in a file")
    return tuple(sorted(obj.items()))


def _raise(e: Exception) -> Any:
    raise e


def _line_of(text: str, table: str, key: str = "") -> int:
    """Best-effort 1-based line of ``key`` inside ``[table]`` (the header's line without a key)."""
    parts = table.split(".")
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(rf"[\"']?{re.escape(p)}[\"']?" for p in parts) + r"\s*\]")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if header.match(line):
            if key:
                for j in range(i + 1, len(lines)):
                    if lines[j].lstrip().startswith("["):
                        break
                    if re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[j]):
                        return j + 1
            return i + 1
    # An inline table: `name = { ... }` under [mounts].
    name = parts[-1]
    for i, line in enumerate(lines):
        if re.match(rf"^\s*[\"']?{re.escape(name)}[\"']?\s*=", line):
            return i + 1
    return 1


# ---------------------------------------------------------------- replicas


def _failover_worthy(e: BaseException) -> bool:
    """Errors after which another replica may succeed: unreachable, timeouts, I/O failures."""
    if isinstance(e, (NotFoundError, PermissionDeniedError)):
        return False
    if isinstance(e, (StoreUnavailableError, ConnectionError, TimeoutError)):
        return True
    return isinstance(e, StorageIOError) and e.errno in (errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, None)


@dataclass
class _Health:
    latency_s: float = 0.0  # EWMA of successful operations; 0 until measured
    down_until: float = 0.0  # monotonic time before which the replica is skipped
    failures: int = 0
    last_error: str = ""


class ReplicatedStore(Store):
    """A mount's replicas as one Store: reads from the best healthy replica
    with failover, writes to the primary.

    Order of reads: replicas in ``local_site`` first, then lower
    ``preference``, then lower measured latency (EWMA of successful calls).
    A replica that fails with an unreachable/transient error is skipped for
    ``cooldown_s`` seconds. Raises the last error when every replica fails.
    """

    def __init__(
        self,
        mount: Mount,
        stores: Sequence[Store],
        *,
        local_site: str = "",
        cooldown_s: float = 30.0,
    ) -> None:
        if len(stores) != len(mount.replicas):
            raise InvalidArgumentError("one store per replica is needed")
        self.mount = mount
        self.url = f"{SCHEME}{mount.name}"
        self._stores = list(stores)
        self._health = [_Health() for _ in stores]
        self._local_site = local_site
        self._cooldown_s = cooldown_s
        self._lock = threading.Lock()
        primary = mount.primary_replica
        self._primary = mount.replicas.index(primary) if primary is not None else 0

    @property
    def stores(self) -> list[Store]:
        return list(self._stores)

    @property
    def primary(self) -> Store:
        """The replica that takes writes (and so holds the newest refs)."""
        return self._stores[self._primary]

    @property
    def capabilities(self) -> Capabilities:
        caps = [s.capabilities for s in self._stores]
        p = caps[self._primary]
        return Capabilities(
            conditional_writes=p.conditional_writes,
            ranged_reads=all(c.ranged_reads for c in caps),
            native_reads=all(c.native_reads for c in caps),
            local=all(c.local for c in caps),
        )

    def read_order(self) -> list[int]:
        """Replica indices in the order reads try them (healthy ones first)."""
        now = time.monotonic()
        with self._lock:
            health = [(h.down_until > now, h.latency_s) for h in self._health]

        def rank(i: int) -> tuple[bool, bool, int, float, int]:
            r = self.mount.replicas[i]
            down, lat = health[i]
            return (down, bool(self._local_site) and r.site != self._local_site, r.preference, lat, i)

        return sorted(range(len(self._stores)), key=rank)

    def health(self) -> list[dict[str, Any]]:
        """Per replica: url, site, latency_s, healthy, failures, last_error (for ``storecomp mounts``)."""
        now = time.monotonic()
        with self._lock:
            return [
                {
                    "url": r.url,
                    "site": r.site,
                    "preference": r.preference,
                    "latency_s": h.latency_s,
                    "healthy": h.down_until <= now,
                    "failures": h.failures,
                    "last_error": h.last_error,
                }
                for r, h in zip(self.mount.replicas, self._health, strict=True)
            ]

    def probe(self, key: str | None = None) -> None:
        """Measure every replica's latency now (a stat of ``key`` or a list call)."""
        for i, s in enumerate(self._stores):
            t0 = time.monotonic()
            try:
                if key is None:
                    next(iter(s.list("")), None)
                else:
                    s.exists(key)
            except Exception as e:  # noqa: BLE001 - any failure marks the replica down
                self._failed(i, e)
            else:
                self._succeeded(i, time.monotonic() - t0)

    def _succeeded(self, i: int, seconds: float) -> None:
        with self._lock:
            h = self._health[i]
            h.latency_s = seconds if h.latency_s == 0.0 else 0.8 * h.latency_s + 0.2 * seconds
            h.down_until = 0.0

    def _failed(self, i: int, e: BaseException) -> None:
        with self._lock:
            h = self._health[i]
            h.failures += 1
            h.last_error = f"{type(e).__name__}: {e}"
            h.down_until = time.monotonic() + self._cooldown_s

    def _read(self, op: Callable[[Store], _T]) -> _T:
        last: BaseException | None = None
        for i in self.read_order():
            t0 = time.monotonic()
            try:
                out = op(self._stores[i])
            except Exception as e:
                if not _failover_worthy(e):
                    raise
                self._failed(i, e)
                last = e
                continue
            self._succeeded(i, time.monotonic() - t0)
            return out
        assert last is not None
        raise last

    def _writer(self) -> Store:
        if self.mount.read_only:
            raise PermissionDeniedError(errno.EROFS, self.url, None, "write")
        return self._stores[self._primary]

    # -- reads

    def submit_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
    ) -> RangeFuture:
        return _FailoverFuture(self, key, offsets, lengths, dst, dst_offsets, exact)

    def stat(self, key: str) -> ObjectInfo:
        return self._read(lambda s: s.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._read(lambda s: list(s.list(prefix))))

    # -- writes (primary only)

    def put(self, key: str, data: Any) -> ObjectInfo:
        return self._writer().put(key, data)

    def put_if_absent(self, key: str, data: Any) -> bool:
        return self._writer().put_if_absent(key, data)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        return self._writer().compare_and_swap(key, expected, data)

    def delete(self, key: str) -> None:
        self._writer().delete(key)

    def close(self) -> None:
        for s in self._stores:
            s.close()

    def __repr__(self) -> str:
        return f"ReplicatedStore({self.url!r}, replicas={[r.url for r in self.mount.replicas]})"


def primary_of(store: Store) -> Store:
    """The store behind wrappers that takes writes and holds the freshest state:
    a ReplicatedStore's primary, a CachedStore's inner store (recursively)."""
    while True:
        if isinstance(store, ReplicatedStore):
            store = store.primary
            continue
        inner = getattr(store, "inner", None)
        if isinstance(inner, Store):
            store = inner
            continue
        return store


class _FailoverFuture:
    """A ranged read that moves to the next replica when the current one fails."""

    def __init__(self, rs: ReplicatedStore, key: str, *args: Any) -> None:
        self._rs, self._key, self._args = rs, key, args
        self._order = rs.read_order()
        self._pos = 0
        self._t0 = time.monotonic()
        self._last: BaseException | None = None
        self._fut: RangeFuture | None = None
        self._start()

    def _start(self) -> None:
        offsets, lengths, dst, dst_offsets, exact = self._args
        while self._pos < len(self._order):
            i = self._order[self._pos]
            self._t0 = time.monotonic()
            try:
                store = self._rs._stores[i]
                self._fut = store.submit_ranges(self._key, offsets, lengths, dst, dst_offsets, exact=exact)
                return
            except Exception as e:
                if not _failover_worthy(e):
                    raise
                self._rs._failed(i, e)
                self._last = e
                self._pos += 1
        assert self._last is not None
        raise self._last

    def done(self) -> bool:
        return self._fut is not None and self._fut.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        while True:
            assert self._fut is not None
            i = self._order[self._pos]
            try:
                out = self._fut.result(timeout)
            except Exception as e:
                if not self._fut.done() or not _failover_worthy(e):
                    raise  # the caller's wait timed out (the read is still running), or a real answer
                self._rs._failed(i, e)
                self._last = e
                self._pos += 1
                self._start()
                continue
            self._rs._succeeded(i, time.monotonic() - self._t0)
            return out


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
        self.local_site = env.get("STORECOMP_SITE", "") if local_site is None else local_site
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
        with self._lock:
            return self._stores.setdefault(key, st)

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
            st = self._opener(root)
            with self._lock:
                st = self._stores.setdefault(root, st)
        if key:
            key = validate_prefix(key) if key.endswith("/") else validate_key(key)
        return st, key

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
    """A seekable read-only file over one object (ranged reads, no prefetch)."""

    def __init__(self, store: Store, key: str) -> None:
        super().__init__()
        self.store, self.key = store, key
        self.size = store.stat(key).size
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
        got = int(self.store.read_ranges(self.key, [self._pos], [n], arr, [0], exact=False)[0])
        self._pos += got
        return got
