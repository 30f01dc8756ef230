"""The three tiers of a KV store: host memory, local disk, a shared Store.

Each tier keeps an LRU index under a byte budget and counts what it does
(:class:`TierStats`). Entries being read are *pinned* and never evicted;
an entry whose buffer is still being written to a lower tier may leave the
index, but its memory is reused only once every writer let go. What the
store does on every tier is the :class:`Tier` protocol; the shared tier's
settings travel in one :class:`SharedTierOptions`.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import CorruptDataError, InvalidArgumentError, NotFoundError, ShortReadError, StorecompError, WrongKeyError
from ..io import Engine, File, HostBuffer, PageCachePolicy, TierChoice, cuda
from ..store import RangeFuture
from ..store.base import Store


@dataclass
class TierStats:
    """Counters of one tier. Bytes in bytes, seconds of wall time spent in I/O."""

    hits: int = 0
    misses: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    read_seconds: float = 0.0
    write_seconds: float = 0.0
    evictions: int = 0
    verify_failures: int = 0
    write_failures: int = 0
    skipped: int = 0  # entries not admitted (no room: all pinned, or larger than the budget)
    unavailable: int = 0  # operations skipped or failed because the tier could not be reached
    cleanup_failures: int = 0  # corrupt chunks that could not be re-checked or deleted (they stay, shadowing a rewrite)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: float) -> None:
        with self.lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, float]:
        with self.lock:
            d = {k: v for k, v in vars(self).items() if k != "lock"}
        d["read_gbps"] = d["bytes_read"] / d["read_seconds"] / 1e9 if d["read_seconds"] else 0.0
        d["write_gbps"] = d["bytes_written"] / d["write_seconds"] / 1e9 if d["write_seconds"] else 0.0
        return d


class TierReads:
    """Reads of one chunk in flight from a tier (:meth:`Tier.submit_reads`): ``futures[i]``
    completes range i, and its ``result()`` raises what the tier's read raised."""

    __slots__ = ("futures", "_file")

    def __init__(self, futures: list[RangeFuture], file: File | None = None) -> None:
        self.futures = futures
        self._file = file  # a disk chunk's open file, held until close()

    @property
    def file(self) -> File | None:
        """A disk chunk's open file (the one version the reads come from), until :meth:`close`."""
        return self._file

    def close(self) -> None:
        """Let go of what the reads hold (waits for reads still in flight). Idempotent."""
        if self._file is not None:
            self._file.close()
            self._file = None


@runtime_checkable
class Tier(Protocol):
    """What a KV store and a :class:`~storecomp.kvcache.fetch.Fetch` use on every tier.

    A chunk is one object of bytes under a 32-byte key. Beyond this, the host
    tier lends its buffers without a copy (``acquire``/``release``), the disk
    tier pins files being read, and the shared tier backs off while its store
    cannot be reached; the store uses those where it knows the tier.
    """

    name: str
    stats: TierStats

    def has(self, key: bytes) -> bool:
        """Whether the tier holds chunk ``key`` (the shared tier may ask its store)."""
        ...

    def put(self, key: bytes, data: np.ndarray) -> bool:
        """Store ``data`` (uint8) as chunk ``key``; False (counted) when it cannot."""
        ...

    def submit_reads(self, key: bytes, dst: np.ndarray, ranges: Sequence[tuple[int, int]]) -> TierReads:
        """Start reading each ``(offset, nbytes)`` of chunk ``key`` into the same bytes of ``dst``.

        Raises InvalidArgumentError, before any I/O, when a range falls outside
        ``dst``; NotFoundError (here or from a future) for a chunk the tier does
        not hold; other StorecompError/OSError when the tier cannot be read.
        """
        ...

    def forget(self, key: bytes, *, delete: bool = False) -> None:
        """Drop ``key`` from the tier's index; with ``delete``, its stored bytes too."""
        ...


def _check_ranges(where: str, dst: np.ndarray, ranges: Sequence[tuple[int, int]]) -> None:
    for off, n in ranges:
        if off < 0 or n < 0 or off + n > dst.nbytes:
            raise InvalidArgumentError(f"{where}: range ({off}, {n}) does not fit a destination of {dst.nbytes} bytes")


# ---------------------------------------------------------------- host memory


class Buffer:
    """One host allocation (a native HostBuffer: page-aligned for O_DIRECT, on a
    2 MiB boundary with transparent huge pages from 2 MiB up; pinned when CUDA exists).

    Every page is faulted in at allocation (one MADV_POPULATE_WRITE, GIL
    released), not on a request's first copy; huge pages cut the TLB misses
    of chunk copies; the memory goes back to the system when the buffer is
    dropped. Allocation is the slow part of a store (4 ms per 32 MiB on a
    quiet 2-core machine, 100+ ms when disk writers' checksums hold the
    cores), hence the pool and :meth:`BufferPool.reserve`.
    """

    __slots__ = ("_host", "array", "address", "pinned", "_unpin", "refs", "sealed", "seal_lock", "__weakref__")

    def __init__(self, nbytes: int, pin: bool) -> None:
        self._host = HostBuffer(max(nbytes, 1))
        self._host.prefault()  # not on the request path's first copy
        self.array: np.ndarray = np.frombuffer(memoryview(self._host), np.uint8, count=nbytes)
        self.address = int(self.array.ctypes.data)
        self.pinned = bool(pin) and nbytes > 0 and cuda.host_register(self.address, nbytes)
        # Unpin however the buffer goes (free() or garbage collection), before its
        # memory can be unmapped: a registration outliving its memory makes the next
        # buffer mapped at that address fail to pin (cudaErrorHostMemoryAlreadyRegistered).
        self._unpin = weakref.finalize(self, cuda.host_unregister, self.address) if self.pinned else None
        self.refs = 0  # readers and lower-tier writers holding this buffer
        self.sealed = False  # header and checksums written (done lazily, off the request path)
        self.seal_lock = threading.Lock()

    def free(self) -> None:
        if self._unpin is not None:
            self._unpin()
            self.pinned = False


class BufferPool:
    """Reuses freed buffers of the same size (page faults and pinning cost more than the copy)."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._free: dict[int, list[Buffer]] = collections.defaultdict(list)
        self._free_bytes = 0
        self._lock = threading.Lock()
        self.pin = cuda.device_count() > 0

    def get(self, nbytes: int) -> Buffer:
        with self._lock:
            lst = self._free.get(nbytes)
            if lst:
                self._free_bytes -= nbytes
                return lst.pop()
        return Buffer(nbytes, self.pin)

    def reserve(self, nbytes: int, count: int) -> None:
        """Allocate now what it takes for ``count`` free buffers of ``nbytes`` (within ``keep_bytes``)."""
        with self._lock:
            have = len(self._free.get(nbytes, ()))
            room = (self.keep_bytes - self._free_bytes) // nbytes if nbytes > 0 else 0
            short = max(0, min(count - have, room))
            self._free_bytes += short * nbytes  # claimed now, so concurrent reserves do not overshoot
        made = []
        try:
            for _ in range(short):
                made.append(Buffer(nbytes, self.pin))
        finally:
            with self._lock:
                self._free[nbytes].extend(made)
                self._free_bytes -= (short - len(made)) * nbytes

    def put(self, buf: Buffer) -> None:
        n = buf.array.nbytes
        with self._lock:
            if self._free_bytes + n <= self.keep_bytes:
                self._free[n].append(buf)
                self._free_bytes += n
                return
        buf.free()


@dataclass
class _HostEntry:
    buf: Buffer
    pins: int = 0


class HostTier:
    """Chunk objects in host memory under ``budget`` bytes, LRU."""

    name = "host"

    def __init__(self, budget: int, pool: BufferPool) -> None:
        self.budget = budget
        self.pool = pool
        self.used = 0
        self.entries: collections.OrderedDict[bytes, _HostEntry] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.stats = TierStats()

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def has(self, key: bytes) -> bool:
        return key in self.entries

    def put(self, key: bytes, data: Buffer | np.ndarray) -> bool:
        """Admit ``data`` under ``key``; False when there is no room. A :class:`Buffer` is taken
        as it is (the tier takes a reference); other bytes are copied into a pool buffer."""
        if not isinstance(data, np.ndarray):
            return self._admit(key, data)
        src = data.reshape(-1).view(np.uint8)
        buf = self.pool.get(src.nbytes)
        buf.refs, buf.sealed = 1, True  # a whole chunk object as given
        buf.array[:] = src
        try:
            return self._admit(key, buf)
        finally:
            self.unref(buf)

    def _admit(self, key: bytes, buf: Buffer) -> bool:
        n = buf.array.nbytes
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return True
            if n > self.budget or not self._make_room(n):
                self.stats.add(skipped=1)
                return False
            buf.refs += 1
            self.entries[key] = _HostEntry(buf)
            self.used += n
        return True

    def make_room(self, n: int) -> None:
        """Evict LRU entries now so that ``n`` more bytes fit (their buffers go to the pool for reuse)."""
        with self.lock:
            if n <= self.budget:
                self._make_room(n)

    def _make_room(self, n: int) -> bool:
        victims = []
        freed = self.budget - self.used
        if freed >= n:
            return True
        for k, e in self.entries.items():
            if e.pins == 0:
                victims.append(k)
                freed += e.buf.array.nbytes
                if freed >= n:
                    break
        if freed < n:
            return False
        for k in victims:
            e = self.entries.pop(k)
            self.used -= e.buf.array.nbytes
            self._unref(e.buf)
        self.stats.add(evictions=len(victims))
        return True

    def _unref(self, buf: Buffer) -> None:
        buf.refs -= 1
        if buf.refs == 0:
            self.pool.put(buf)

    def acquire(self, key: bytes) -> Buffer | None:
        """The buffer of ``key``, pinned (call :meth:`release`), or None."""
        with self.lock:
            e = self.entries.get(key)
            if e is None:
                return None
            e.pins += 1
            e.buf.refs += 1
            self.entries.move_to_end(key)
            return e.buf

    def release(self, key: bytes, buf: Buffer) -> None:
        with self.lock:
            e = self.entries.get(key)
            if e is not None and e.buf is buf:
                e.pins -= 1
            self._unref(buf)

    def ref(self, buf: Buffer) -> None:
        """Hold ``buf`` (for a lower-tier write) so its memory is not reused."""
        with self.lock:
            buf.refs += 1

    def unref(self, buf: Buffer) -> None:
        with self.lock:
            self._unref(buf)

    def submit_reads(self, key: bytes, dst: np.ndarray, ranges: Sequence[tuple[int, int]]) -> TierReads:
        """Copy ranges of chunk ``key`` into ``dst`` (done on return). The store itself
        reads host chunks in place (:meth:`acquire`), with no copy."""
        _check_ranges(f"host chunk {key.hex()[:16]}", dst, ranges)
        buf = self.acquire(key)
        if buf is None:
            raise NotFoundError(errno.ENOENT, f"host chunk {key.hex()}", None, "read")
        futures: list[RangeFuture] = []
        try:
            for off, n in ranges:
                got = max(0, min(n, buf.array.nbytes - off))
                dst[off : off + got] = buf.array[off : off + got]
                fut: Future[np.ndarray] = Future()
                if got < n:  # exact, like every other tier's reads
                    fut.set_exception(ShortReadError(f"host chunk {key.hex()}", off, n, got))
                else:
                    fut.set_result(np.array([got], np.uint64))
                futures.append(fut)
        finally:
            self.release(key, buf)
        return TierReads(futures)

    def forget(self, key: bytes, *, delete: bool = False) -> None:
        """Drop ``key`` unless a reader holds it (host memory is its own index: ``delete`` changes nothing)."""
        with self.lock:
            e = self.entries.get(key)
            if e is not None and e.pins == 0:
                del self.entries[key]
                self.used -= e.buf.array.nbytes
                self._unref(e.buf)


# ---------------------------------------------------------------- local disk


class DiskTier:
    """Chunk files under ``root/<namespace>/<xx>/<key>.kv``, LRU under ``budget`` bytes.

    Files are written to a temp name in the same directory, fsynced and
    renamed into place: a reader sees a whole chunk or none, even after a
    crash. The index is rebuilt at start by listing the directory (temp
    files left by dead writers are removed).

    Reads go through the page cache or use O_DIRECT as ``policy`` (a
    :class:`~storecomp.io.PageCachePolicy`; default: the engine's ``direct``
    option) chooses for a working set of ``budget`` bytes: a tier that fits
    the page-cache budget is read buffered, so chunks read again come from
    memory; a larger one with O_DIRECT; under memory pressure, O_DIRECT.
    The choice is made again as memory changes (at most once per
    :data:`RECHOOSE_S`), and writes follow it: while the tier is O_DIRECT a
    written chunk's pages leave the page cache once it is synced, so chunks
    the page cache cannot hold do not push out the rest of the machine's.
    ``page_cache`` is the current choice, with its reason.
    """

    name = "disk"
    SUFFIX = ".kv"

    def __init__(
        self,
        root: str | os.PathLike[str],
        namespace: str,
        budget: int,
        engine: Engine,
        policy: PageCachePolicy | None = None,
    ) -> None:
        self.root = os.path.join(os.fspath(root), namespace)
        self.budget = budget
        self.engine = engine
        self.policy = policy or PageCachePolicy(engine.options.direct)
        self.page_cache: TierChoice = self.policy.choose_size(budget)
        self._rechoose_at = time.monotonic() + RECHOOSE_S
        self.used = 0
        self.entries: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        self.pins: collections.Counter[bytes] = collections.Counter()
        self.writing: set[bytes] = set()  # keys being written by this process (their bytes reserved in used)
        self.lock = threading.Lock()
        self.stats = TierStats()
        os.makedirs(self.root, exist_ok=True)
        self.rebuild_seconds = self.rebuild()

    def path(self, key: bytes) -> str:
        h = key.hex()
        return os.path.join(self.root, h[:2], h + self.SUFFIX)

    def rebuild(self) -> float:
        """Re-read the index from disk (oldest mtime first in LRU order); returns seconds taken."""
        t0 = time.perf_counter()
        found: list[tuple[float, bytes, int]] = []
        with os.scandir(self.root) as top:
            subdirs = [d.path for d in top if d.is_dir(follow_symlinks=False)]
        for sub in subdirs:
            with os.scandir(sub) as it:
                for f in it:
                    name = f.name
                    if name.endswith(self.SUFFIX) and len(name) == 64 + len(self.SUFFIX):
                        try:
                            st = f.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue  # evicted by another process sharing the directory
                        found.append((st.st_mtime, bytes.fromhex(name[:64]), st.st_size))
                    elif ".tmp-" in name and not _writer_alive(name):
                        _unlink_quiet(f.path)
        found.sort()
        with self.lock:
            self.entries = collections.OrderedDict((k, size) for _, k, size in found)
            self.used = sum(size for _, _, size in found)
        return time.perf_counter() - t0

    def __contains__(self, key: bytes) -> bool:
        return key in self.entries

    def has(self, key: bytes) -> bool:
        """Whether chunk ``key`` is on disk: the index, else one stat (another process
        sharing the directory may have written it since the index was built)."""
        if key in self.entries:
            return True
        try:
            size = os.stat(self.path(key)).st_size
        except OSError:
            return False
        with self.lock:
            if key not in self.entries:
                self.entries[key] = size
                self.used += size
        return True

    def put(self, key: bytes, data: np.ndarray) -> bool:
        """Write ``data`` as chunk ``key``; False (counted) when it cannot be stored."""
        n = data.nbytes
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return True
            if key in self.writing:  # another thread writes the same chunk now: one reservation, one file
                return True
            if n > self.budget or not self._make_room(n):
                self.stats.add(skipped=1)
                return False
            self.used += n  # reserved while writing
            self.writing.add(key)
        final = self.path(key)
        tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        try:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            _preallocate(tmp, n)
            with self.engine.open(tmp, "r+") as f:
                f.pwrite(data, 0)
                f.sync()
            if self._tier().tier != "buffered":
                _drop_pages(tmp)  # synced: clean pages, dropped (kept while buffered: the next read runs from memory)
            os.rename(tmp, final)
        except (OSError, StorecompError):
            _unlink_quiet(tmp)
            with self.lock:
                self.used -= n
                self.writing.discard(key)
            self.stats.add(write_failures=1)
            return False
        self.stats.add(bytes_written=n, write_seconds=time.perf_counter() - t0)
        with self.lock:
            self.writing.discard(key)
            if key in self.entries:  # has() saw the renamed file first and counted it
                self.used -= n
            else:
                self.entries[key] = n
        return True

    def _make_room(self, n: int) -> bool:
        victims, freed = [], self.budget - self.used
        if freed >= n:
            return True
        for k, size in self.entries.items():
            if self.pins[k] == 0:
                victims.append(k)
                freed += size
                if freed >= n:
                    break
        if freed < n:
            return False
        for k in victims:
            self.used -= self.entries.pop(k)
            _unlink_quiet(self.path(k))
        self.stats.add(evictions=len(victims))
        return True

    def pin(self, key: bytes) -> bool:
        with self.lock:
            if key not in self.entries:
                return False
            self.pins[key] += 1
            self.entries.move_to_end(key)
            return True

    def unpin(self, key: bytes) -> None:
        with self.lock:
            self.pins[key] -= 1
            if self.pins[key] <= 0:
                del self.pins[key]

    def submit_reads(self, key: bytes, dst: np.ndarray, ranges: Sequence[tuple[int, int]]) -> TierReads:
        """Open chunk ``key``'s file and start its reads (the file stays open until ``close()``)."""
        path = self.path(key)
        _check_ranges(path, dst, ranges)
        f = self.engine.open(path, "r")
        choice = self._tier()
        try:
            return TierReads([f.read_many_into(dst, [off], [n], [off], direct=choice.direct) for off, n in ranges], f)
        except BaseException:
            f.close()  # after the reads already issued
            raise

    def _tier(self) -> TierChoice:
        """The page cache or O_DIRECT now: chosen again for the budget once per :data:`RECHOOSE_S`
        (available memory moves: a tier chosen O_DIRECT at start-up may fit later, and the
        reverse), and O_DIRECT under memory pressure (the policy's check)."""
        now = time.monotonic()
        choice = self.page_cache
        if now >= self._rechoose_at and not choice.forced:
            self._rechoose_at = now + RECHOOSE_S
            choice = self.policy.choose_size(self.budget)
        self.page_cache = choice = self.policy.check(choice)
        return choice

    def forget(self, key: bytes, *, delete: bool = False) -> None:
        """Drop ``key`` from the index (and the file, when ``delete``): a corrupt or vanished chunk."""
        with self.lock:
            size = self.entries.pop(key, None)
            if size is not None:
                self.used -= size
        if delete:
            try:
                os.unlink(self.path(key))
            except FileNotFoundError:
                pass
            except OSError:
                self.stats.add(cleanup_failures=1)


#: Seconds between two choices of the disk tier's page-cache tier (:meth:`DiskTier._tier`).
RECHOOSE_S = 1.0


def _drop_pages(path: str) -> None:
    """Take ``path``'s (synced, clean) pages out of the page cache; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def _preallocate(path: str, nbytes: int) -> None:
    """Create ``path`` with its blocks reserved: a full disk fails here (ENOSPC) before any
    write, and O_DIRECT writes inside the file size run in parallel (extending ones do not)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, nbytes)  # file systems without fallocate
    finally:
        os.close(fd)


def _writer_alive(name: str) -> bool:
    """Whether the process that owns temp file ``name`` (``...tmp-<pid>-<rand>``) still runs."""
    try:
        pid = int(name.rsplit(".tmp-", 1)[1].split("-")[0])
        os.kill(pid, 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------- shared store


@dataclass(frozen=True)
class SharedTierOptions:
    """A KV store's shared tier, passed as ``KVCacheStore(shared=SharedTierOptions(...))``.

    ``store``: a URL, opened with ``open_store(store, **store_options)`` and
    closed with the KV store, or a :class:`~storecomp.store.Store` (the
    caller's: left open). Chunks live under ``<prefix>/<namespace>/<xx>/<key>``.
    While the store cannot be reached the tier is skipped for ``backoff``
    seconds, doubling up to ``max_backoff``; background writes retry for up
    to ``retry_seconds`` seconds, then are dropped and counted.
    """

    store: str | os.PathLike[str] | Store
    store_options: Mapping[str, Any] = field(default_factory=dict)
    prefix: str = "kvcache"
    retry_seconds: float = 60.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    #: Bounds on this model's chunks in the shared store (None: unbounded), enforced by a GC pass
    #: a writer runs at most every ``gc_interval_s`` seconds; never deletes a chunk younger than ``gc_grace_s``.
    max_bytes: int | None = None
    ttl_s: float | None = None
    gc_grace_s: float = 3600.0
    gc_interval_s: float = 600.0

    def __post_init__(self) -> None:
        if not isinstance(self.store, str | os.PathLike | Store):
            raise InvalidArgumentError(f"SharedTierOptions.store must be a URL or a Store, got {type(self.store).__name__}")
        if not isinstance(self.store_options, Mapping):
            raise InvalidArgumentError(
                f"SharedTierOptions.store_options must be a mapping, got {type(self.store_options).__name__}"
            )
        if not isinstance(self.prefix, str):
            raise InvalidArgumentError(f"SharedTierOptions.prefix must be a string, got {type(self.prefix).__name__}")
        for name in ("retry_seconds", "backoff", "max_backoff", "gc_grace_s", "gc_interval_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
                raise InvalidArgumentError(f"SharedTierOptions.{name} must be a non-negative number of seconds, got {value!r}")
        if self.max_bytes is not None and (
            isinstance(self.max_bytes, bool) or not isinstance(self.max_bytes, int) or self.max_bytes < 0
        ):
            raise InvalidArgumentError(f"SharedTierOptions.max_bytes must be None or a non-negative int, got {self.max_bytes!r}")
        if self.ttl_s is not None and (isinstance(self.ttl_s, bool) or not isinstance(self.ttl_s, int | float) or self.ttl_s < 0):
            raise InvalidArgumentError(f"SharedTierOptions.ttl_s must be None or a non-negative number, got {self.ttl_s!r}")


#: Checks a whole chunk object read from a tier: ``(chunk key, object bytes, where)``; raises
#: CorruptDataError (WrongKeyError when it cannot be opened with this store's keys) when bad.
ChunkCheck = Callable[[bytes, np.ndarray, str], None]


class SharedTier:
    """Chunk objects in a :class:`Store` under ``<prefix>/<namespace>/<xx>/<key>``.

    Writes use ``put_if_absent`` (a lost race is a success: the content is
    the same). When the store cannot be reached the tier marks itself down
    for ``backoff`` seconds (doubling up to ``max_backoff``): lookups and
    reads skip it meanwhile, background writes wait and retry.

    ``max_bytes`` / ``ttl_s`` bound this namespace's chunks: after a write,
    at most once per ``gc_interval_s`` seconds, the writing thread runs
    :func:`storecomp.kvcache.maintenance.collect` (oldest chunks first, none
    younger than ``grace_s``); deleted chunks count as ``evictions``.
    """

    name = "shared"

    def __init__(
        self,
        store: Store,
        namespace: str,
        prefix: str = "kvcache",
        *,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_bytes: int | None = None,
        ttl_s: float | None = None,
        grace_s: float = 3600.0,
        gc_interval_s: float = 600.0,
        check: ChunkCheck | None = None,
    ):
        self.store = store
        self.check = check
        self.prefix = f"{prefix.strip('/')}/{namespace}" if prefix else namespace
        self.stats = TierStats()
        self.known: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.lock = threading.Lock()
        self.base_backoff = backoff
        self.max_backoff = max_backoff
        self._backoff = backoff
        self.down_until = 0.0
        self.last_error = ""
        self.max_bytes, self.ttl_s, self.grace_s, self.gc_interval_s = max_bytes, ttl_s, grace_s, gc_interval_s
        self._last_gc = -float("inf")
        self._gc_lock = threading.Lock()
        self._gc_again = False

    def object_key(self, key: bytes) -> str:
        h = key.hex()
        return f"{self.prefix}/{h[:2]}/{h}"

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def mark_down(self, err: BaseException) -> None:
        now = time.monotonic()
        with self.lock:
            self.last_error = f"{type(err).__name__}: {err}"
            if now < self.down_until:  # already down: concurrent failures do not stack the backoff
                return
            self.down_until = now + self._backoff
            self._backoff = min(self.max_backoff, self._backoff * 2)
        self.stats.add(unavailable=1)

    def mark_up(self) -> None:
        with self.lock:
            self._backoff = self.base_backoff

    def remember(self, key: bytes) -> None:
        with self.lock:
            self.known[key] = None
            self.known.move_to_end(key)
            while len(self.known) > 1_000_000:
                self.known.popitem(last=False)

    def forget(self, key: bytes, *, delete: bool = False) -> None:
        """Forget that the store holds ``key``; with ``delete``, delete the object too when it is
        still bad (best effort: a corrupt object would shadow a good one forever, since writes are
        put_if_absent). The read that failed was not pinned to a version, so the object is read
        again, whole and pinned to the version a ``stat`` gives, checked with ``check`` (the
        constructor's), and deleted only at that version (``delete_if``): a good chunk written in
        its place meanwhile stays."""
        with self.lock:
            self.known.pop(key, None)
        if not delete:
            return
        okey = self.object_key(key)
        try:
            info = self.store.stat(okey)
            if self.check is not None:
                obj = np.empty(info.size, np.uint8)
                if info.size:
                    self.store.read_ranges(okey, [0], [info.size], obj, [0], version=info.version)
                try:
                    self.check(key, obj, self.store.name_of(okey))
                except WrongKeyError:
                    return  # not this store's key (or moved): never deleted, the key may be what is wrong
                except CorruptDataError:
                    pass
                else:
                    return  # good now: replaced by a good chunk since the failed read
            self.store.delete_if(okey, info.version)
        except NotFoundError:
            pass  # gone already
        except (StorecompError, OSError):
            self.stats.add(cleanup_failures=1)  # the read goes on as a miss; the count says a bad chunk stays

    def has(self, key: bytes) -> bool:
        """Whether the store holds ``key``: known keys at once, else one stat (False while the tier is down)."""
        if key in self.known:
            return True
        if not self.up:
            return False
        try:
            self.store.stat(self.object_key(key))
        except NotFoundError:
            return False
        except (StorecompError, OSError) as e:
            self.mark_down(e)
            return False
        self.mark_up()
        self.remember(key)
        return True

    def submit_reads(self, key: bytes, dst: np.ndarray, ranges: Sequence[tuple[int, int]]) -> TierReads:
        """Start ranged reads of ``key``'s object (all of one version per range)."""
        okey = self.object_key(key)
        _check_ranges(self.store.name_of(okey), dst, ranges)
        futures: list[RangeFuture] = []
        try:
            for off, n in ranges:
                futures.append(self.store.submit_ranges(okey, [off], [n], dst, [off]))
        except BaseException:
            for f in futures:  # dst must not be reused while they write into it
                try:
                    f.result()
                except BaseException:  # noqa: BLE001 - the first failure is the one raised
                    pass
            raise
        return TierReads(futures)

    def exists_many(self, keys: Iterable[bytes], executor: Any) -> set[bytes]:
        """Which of ``keys`` the store holds: one batch of concurrent stats (known keys skip it).

        On an unreachable store, returns only the known keys and marks the tier down.
        """
        keys = list(keys)
        present = {k for k in keys if k in self.known}
        ask = [k for k in keys if k not in present]
        if not ask or not self.up:
            return present

        def one(k: bytes) -> bool:
            try:
                self.store.stat(self.object_key(k))
                return True
            except NotFoundError:
                return False

        try:
            for k, ok in zip(ask, executor.map(one, ask), strict=True):
                if ok:
                    present.add(k)
                    self.remember(k)
        except (StorecompError, OSError) as e:
            self.mark_down(e)
        else:
            self.mark_up()
        return present

    def put(self, key: bytes, data: np.ndarray) -> bool:
        """put_if_absent; True when the chunk is in the store now (written by us or another)."""
        t0 = time.perf_counter()
        wrote = self.store.put_if_absent(self.object_key(key), data)
        if wrote:
            self.stats.add(bytes_written=data.nbytes, write_seconds=time.perf_counter() - t0)
        self.remember(key)
        self.mark_up()
        if (self.max_bytes is not None or self.ttl_s is not None) and time.monotonic() - self._last_gc >= self.gc_interval_s:
            self.gc()
        return True

    def gc(self) -> int:
        """One GC pass over this namespace's chunks (budget, TTL, grace); chunks deleted.
        Concurrent calls in this process run it once; a failed pass is counted as unavailable."""
        from .maintenance import collect

        if not self._gc_lock.acquire(blocking=False):
            self._gc_again = True  # the pass running now goes round once more (it may have listed too early)
            return 0
        deleted = 0
        try:
            self._gc_again = True
            while self._gc_again:
                self._gc_again = False
                self._last_gc = time.monotonic()
                report = collect(self.store, self.prefix, max_bytes=self.max_bytes, ttl_s=self.ttl_s, grace_s=self.grace_s)
                with self.lock:
                    for victim in report.victims:
                        self.known.pop(bytes.fromhex(victim.rsplit("/", 1)[-1]), None)
                self.stats.add(evictions=report.deleted)
                deleted += report.deleted
        except (StorecompError, OSError) as e:
            self.mark_down(e)
        finally:
            self._gc_lock.release()
        return deleted
