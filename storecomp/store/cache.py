"""A node-local cache tier in front of any Store (remote objects on local NVMe).

:class:`CachedStore` wraps a store (composition): reads are served from
entry files under ``cache_dir`` through a :class:`LocalStore` (the native
engine), misses are fetched from the inner store and published into the
cache. Every process on the node may share one ``cache_dir`` (training
ranks): there is no daemon, only files, ``flock(2)`` and ``rename(2)``.

Layout of ``cache_dir``::

    entries/<d[:2]>/<d>        whole object   (d = SHA-256 of inner url + key, 40 hex)
    entries/<d[:2]>/<d>.b<i>   block i        (with block_bytes)
    tmp/                       entries being written (renamed into entries/)
    locks/<nn>                 fill locks (256 stripes: one fetch per entry at a time)
    state.lock, usage          byte accounting and eviction

Entry file (format in cache_entry.py): a header, padded to a multiple of
4096 bytes (so the data stays O_DIRECT-aligned), then the data::

    magic b"SCACHE01", u32 header_len, u32 meta_len, u64 data_len,
    u64 chunk_bytes, u32 n, meta JSON {url, key, version, size, block},
    n x u32 crc32c (one per chunk of the data), u32 crc32c of all the above

Safety: an entry is written to ``tmp/`` and renamed into place, so a
partial entry is never visible; the header carries its own crc32c and every
read checks the crc32c of the chunks it returns (``verify="always"``, the
default) or, with ``verify="once"``, each chunk the first time this
process reads it from an entry file (per inode; later reads of that chunk
are trusted). A failed check deletes the entry and refetches from
the inner store: bytes that failed verification are never returned.

Budget: ``usage`` holds the bytes the entries take; a fill adds to it under
``state.lock`` and, past ``max_bytes``, the directory is rescanned (the
truth; this also repairs drift after a crash) and the least recently used
entries (oldest atime; a hit refreshes it at most once a second) are
deleted down to 90% of the budget. The index is the directory itself, so
the cache survives restarts.

The cache assumes an object does not change once visible (true for blobs
and manifests, see snapshots.py). Writes through the CachedStore invalidate
this node's entry; ``revalidate=True`` compares the inner version on every
read for objects that may change elsewhere. ``stat``/``list`` and refs are
never cached.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    ShortReadError,
    VersionChangedError,
    from_errno,
)
from ..io import BufferRef, File, as_buffer, land_bytes, resident_bytes
from .base import VERSION_RETRIES, Capabilities, ObjectInfo, Store, WrapperStore
from .cache_entry import (
    ALIGN,
    Done,
    FileLock,
    FileReader,
    Header,
    decode_header,
    encode_header,
    host_array,
)
from .integrity import Checksums, read_verified
from .local import LocalStore, _unique_mtime_ns

_STRIPES = 256
_TOUCH_INTERVAL_S = 1.0
_MAX_VERIFIED_ENTRIES = 1 << 16  # verify="once": entries whose checked chunks a process remembers
_MAX_HEADERS = 1 << 16  # entry headers a process remembers
_MAX_OPEN_FILES = 128  # verify="once": entry files a process keeps open
_RESIDENCY_RECHECK_S = 0.5  # how long "this entry file is all in the page cache" is trusted
_ATTEMPTS = 3  # cache lookups per read before it goes straight to the inner store

#: An entry file's identity: (st_ino, st_dev, st_size, st_mtime_ns). A fill stamps its
#: entry with a unique mtime (a hit touches only the atime), so an inode number that the
#: file system hands out again after an eviction never passes for the entry it held.
_Ident = tuple[int, int, int, int]


def _ident(st: os.stat_result) -> _Ident:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


#: An entry's header and the identity of the inode it was read from.
_Found = tuple[Header, _Ident]


@dataclass(frozen=True)
class _Fetched:
    """Bytes a fill fetched from the inner store (the read is served from them, whether or
    not the entry could be written): ``data``, of the object's version ``version``."""

    data: np.ndarray
    version: str


@dataclass
class CacheStats:
    """Process-local counters (bytes are payload bytes).

    ``corrupt_discarded``: entries that failed a check (header, meta, data
    crc32c) and were deleted and refetched. ``fill_failures``: fills that could
    not be written to the cache's disk (full, I/O error): the read was served
    from the inner store instead. ``lost_races``: entries evicted or replaced
    by another process between lookup and read (a miss, not corruption).
    ``read_through``: reads served from the inner store after repeated lost
    races or corrupt entries.
    """

    hits: int = 0
    misses: int = 0
    bytes_from_cache: int = 0
    bytes_from_inner: int = 0
    evictions: int = 0
    corrupt_discarded: int = 0
    fill_failures: int = 0
    lost_races: int = 0
    read_through: int = 0


class CachedStore(WrapperStore):
    """``inner`` with a node-local cache in ``cache_dir`` of at most ``max_bytes`` bytes.

    ``block_bytes=None`` caches whole objects; otherwise blocks of that many
    bytes (a multiple of 4096), so a ranged read fetches only the blocks it
    touches. ``chunk_bytes``: checksum granularity inside entries (bytes).
    ``verify``: ``"always"`` (every read checks its chunks) or ``"once"``
    (each chunk of an entry file is checked the first time this process
    reads it, then trusted).
    Objects larger than ``max_bytes`` (whole mode) bypass the cache.
    """

    def __init__(
        self,
        inner: Store,
        cache_dir: str | os.PathLike[str],
        max_bytes: int,
        block_bytes: int | None = None,
        *,
        chunk_bytes: int = 64 << 10,
        verify: str = "always",
        revalidate: bool = False,
    ) -> None:
        if max_bytes <= 0:
            raise InvalidArgumentError(f"max_bytes must be positive, got {max_bytes}")
        if block_bytes is not None and (block_bytes <= 0 or block_bytes % ALIGN):
            raise InvalidArgumentError(f"block_bytes must be a positive multiple of {ALIGN}, got {block_bytes}")
        if chunk_bytes <= 0 or chunk_bytes % ALIGN:
            raise InvalidArgumentError(f"chunk_bytes must be a positive multiple of {ALIGN}, got {chunk_bytes}")
        if verify not in ("always", "once"):
            raise InvalidArgumentError(f"verify must be 'always' or 'once', got {verify!r}")
        if getattr(inner, "decrypts", False):  # the cache would hold plaintext on disk
            raise InvalidArgumentError(
                f"{inner.url}: a cache tier goes inside the encryption (EncryptedStore(CachedStore(...)), "
                "or encrypted.over(CachedStore(encrypted.inner, ...))), so that it holds ciphertext"
            )
        self.inner = inner
        self.url = inner.url
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.max_bytes = max_bytes
        self.block_bytes = block_bytes
        self.chunk_bytes = min(chunk_bytes, block_bytes) if block_bytes else chunk_bytes
        self.verify = verify
        self.revalidate = revalidate
        self.stats = CacheStats()
        for sub in ("entries", "tmp", "locks"):
            (self.cache_dir / sub).mkdir(parents=True, exist_ok=True)
        self._local = LocalStore(self.cache_dir / "entries")
        # Headers memoised by entry (LRU) and, for verify="once", open handles by entry inode
        # (LRU; bounded, so entries evicted by any process do not pin descriptors and disk space).
        self._headers: OrderedDict[str, tuple[_Ident, Header]] = OrderedDict()
        self._files: OrderedDict[_Ident, File] = OrderedDict()
        self._root_s = str(self.cache_dir / "entries")
        self._verified: OrderedDict[_Ident, list[Any]] = OrderedDict()  # [checked chunks, unchecked count]
        self._resident: OrderedDict[_Ident, tuple[float, bool]] = OrderedDict()  # (good until, all in the page cache)
        self._lock = threading.Lock()
        self._sweep_tmp()
        with FileLock(self.cache_dir / "state.lock"):
            self._write_usage(self._scan()[0])

    # ------------------------------------------------------------ properties

    @property
    def primary(self) -> Store:
        """The inner store: writes, ``stat`` and ``list`` go to it."""
        return self.inner

    @property
    def capabilities(self) -> Capabilities:
        c = self.inner.capabilities
        return Capabilities(c.conditional_writes, True, True, c.local)

    def usage(self) -> int:
        """Bytes the cache's entries take on disk (by the last accounting)."""
        return self._read_usage()

    def entries(self) -> list[tuple[str, int]]:
        """(entry key, bytes) of every cache entry (a directory scan)."""
        return [(k, n) for k, n, _ in self._scan()[1]]

    # ------------------------------------------------------------ entry files

    def _entry_key(self, key: str, block: int | None) -> str:
        d = hashlib.sha256(f"{self.inner.url}\0{key}".encode()).hexdigest()[:40]
        return f"{d[:2]}/{d}" + ("" if block is None else f".b{block}")

    def _header(self, ekey: str) -> tuple[Header, _Ident] | None:
        """The entry's header (memoised by inode) and the inode's identity,
        or None when the entry is absent."""
        path = f"{self._root_s}/{ekey}"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        ident = _ident(st)
        with self._lock:
            hit = self._headers.get(ekey)
            if hit is not None:
                self._headers.move_to_end(ekey)
        if hit is not None and hit[0] == ident:
            hdr = hit[1]
        else:
            try:
                hdr, ident = _read_header(path)  # the identity of the inode actually read
            except FileNotFoundError:
                return None  # evicted meanwhile: a miss
            except OSError as e:
                raise from_errno(e.errno or errno.EIO, path, 0, "read") from None
            except CorruptDataError:
                self.stats.corrupt_discarded += 1
                self._discard(ekey, ident)
                return None
            with self._lock:
                self._headers[ekey] = (ident, hdr)
                while len(self._headers) > _MAX_HEADERS:
                    self._headers.popitem(last=False)
        if time.time() - st.st_atime > _TOUCH_INTERVAL_S and not _touch(path, ident):
            return None
        return hdr, ident

    def _file(self, ekey: str, ident: _Ident) -> File:
        """A read handle on exactly the inode ``ident`` of entry ``ekey``
        (NotFoundError when the entry was replaced or removed meanwhile)."""
        path = f"{self._root_s}/{ekey}"
        with self._lock:
            hit = self._files.get(ident)
            if hit is not None and not hit.closed:
                self._files.move_to_end(ident)
                return hit
        try:
            f = self._local.engine.open(path)
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(errno.ENOENT, path, None, "open") from None
        if _ident(st) != ident:
            raise NotFoundError(errno.ENOENT, path, None, "open (entry replaced)")
        with self._lock:
            self._files[ident] = f
            while len(self._files) > _MAX_OPEN_FILES:
                self._files.popitem(last=False)  # closed when the last reader lets go
        return f

    def _discard(self, ekey: str, ident: _Ident | None = None) -> None:
        """Delete entry ``ekey`` (only the inode ``ident`` when given: an entry
        another process has filled anew meanwhile is left alone)."""
        path = self._local.root / ekey
        with self._lock:
            old = self._headers.pop(ekey, None)
            if old is not None:
                self._files.pop(old[0], None)
        try:
            st = path.stat()
            if ident is not None and _ident(st) != ident:
                return
            path.unlink()
        except FileNotFoundError:
            return
        self._account(-st.st_size)

    def _fill(self, key: str, block: int | None, version: str | None = None) -> _Found | _Fetched | None:
        """Fetch ``key`` (or one block) from the inner store into the cache and return the
        bytes fetched with the version they are of (the caller reads them from memory, so an
        entry evicted at once costs nothing); the entry found instead when another process
        filled it meanwhile; None when it bypasses the cache (larger than the budget).

        The entry holds bytes of one version, the one its header names: ``version`` when
        given (an entry of another version is replaced; VersionChangedError when the inner
        store no longer has ``version``). A fill that cannot be written (disk full, I/O
        error) is counted in ``fill_failures`` and still returns the bytes."""
        ekey = self._entry_key(key, block)
        stripe = int(ekey[:2], 16) % _STRIPES
        with FileLock(self.cache_dir / "locks" / f"{stripe:02x}"):
            found = self._header(ekey)  # another process may have filled it meanwhile
            if found is not None and version in (None, found[0].meta.get("version")):
                return found
            info = self.inner.stat(key)
            if version is not None and info.version != version:
                raise VersionChangedError(self.name_of(key), version, info.version)
            if found is not None:  # an entry of another version: this fill replaces it
                self._discard(ekey, found[1])
            if block is None:
                if info.size > self.max_bytes:
                    return None
                data = np.empty(info.size, np.uint8)
                if info.size:
                    self.inner.read_ranges(key, [0], [info.size], data, [0], version=info.version)
            else:
                assert self.block_bytes is not None
                start = block * self.block_bytes
                n = max(0, min(self.block_bytes, info.size - start))
                if n == 0:  # past the end of the object: nothing to cache
                    return _Fetched(np.empty(0, np.uint8), info.version)
                data = np.empty(n, np.uint8)
                self.inner.read_ranges(key, [start], [n], data, [0], version=info.version)
            self.stats.misses += 1
            self.stats.bytes_from_inner += data.size
            fetched = _Fetched(data, info.version)
            sums = Checksums.compute(data, self.chunk_bytes)
            meta = {"url": self.inner.url, "key": key, "version": info.version, "size": info.size, "block": block}
            header = encode_header(data.size, sums, meta)
            try:
                self._write_entry(ekey, header, data)
            except OSError:
                self.stats.fill_failures += 1  # the cache steps aside; the read is served all the same
                return fetched
            try:
                self._account(len(header) + data.size)
            except OSError:
                pass  # usage is a hint: the next scan over budget recounts it
            return fetched

    def _write_entry(self, ekey: str, header: bytes, data: np.ndarray) -> None:
        """Publish entry ``ekey`` (temp file, then rename); OSError (ENOSPC...) leaves nothing behind."""
        tmp = self.cache_dir / "tmp" / f"{uuid.uuid4().hex}"
        final = self._local.root / ekey
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(header)
                while view.nbytes:
                    view = view[os.write(fd, view) :]
                view = memoryview(data.data)
                while view.nbytes:
                    view = view[os.write(fd, view) :]
                os.utime(fd, ns=(time.time_ns(), _unique_mtime_ns()))  # the entry's identity (see _Ident)
            finally:
                os.close(fd)
            final.parent.mkdir(exist_ok=True)
            os.rename(tmp, final)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ accounting

    def _read_usage(self) -> int:
        try:
            return int((self.cache_dir / "usage").read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_usage(self, n: int) -> None:
        tmp = self.cache_dir / "tmp" / f"usage-{uuid.uuid4().hex}"
        try:
            tmp.write_text(str(max(0, n)))
            os.rename(tmp, self.cache_dir / "usage")
        except OSError:  # a full disk: the count is a hint, rebuilt by the next scan over budget
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _scan(self) -> tuple[int, list[tuple[str, int, float]]]:
        found: list[tuple[str, int, float]] = []
        root = self._local.root
        for sub in os.scandir(root):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                found.append((f"{sub.name}/{e.name}", st.st_size, st.st_atime))
        return sum(n for _, n, _ in found), found

    def _account(self, delta: int) -> None:
        with FileLock(self.cache_dir / "state.lock"):
            total = self._read_usage() + delta
            if total > self.max_bytes:
                total, found = self._scan()
                found.sort(key=lambda e: e[2])
                target = int(self.max_bytes * 0.9)
                for ekey, n, _ in found:
                    if total <= target:
                        break
                    try:
                        os.unlink(self._local.root / ekey)
                    except FileNotFoundError:
                        continue
                    with self._lock:
                        old = self._headers.pop(ekey, None)
                        if old is not None:
                            self._files.pop(old[0], None)  # the file's blocks are freed once no handle holds it
                    total -= n
                    self.stats.evictions += 1
            self._write_usage(total)

    def _sweep_tmp(self, max_age_s: float = 3600.0) -> None:
        """Remove temp files left by crashed fills (older than ``max_age_s``)."""
        now = time.time()
        for e in os.scandir(self.cache_dir / "tmp"):
            try:
                if now - e.stat().st_mtime > max_age_s:
                    os.unlink(e.path)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------ reads

    def _entry(self, key: str, block: int | None, version: str | None = None) -> tuple[str, Header, _Ident] | _Fetched | None:
        """(entry key, header, inode identity) of ``key``'s entry; on a miss, the bytes
        fetched from the inner store by :meth:`_fill` (or the entry another process filled
        meanwhile); None when it bypasses the cache. With ``version``, an entry of another
        version is a miss, and the fill raises VersionChangedError when the inner store no
        longer has ``version``. A sound header of another object or block (misplaced) is
        discarded and counted in ``corrupt_discarded``."""
        ekey = self._entry_key(key, block)
        found = self._header(ekey)
        if found is not None and not self._describes(found[0], key, block):
            self.stats.corrupt_discarded += 1  # a sound header for another object or block: misplaced
            self._discard(ekey, found[1])
            found = None
        if found is not None and self.revalidate and found[0].meta.get("version") != self.inner.stat(key).version:
            self._discard(ekey, found[1])
            found = None
        if found is not None and version is not None and found[0].meta.get("version") != version:
            found = None  # a miss: the fill replaces it (or finds the inner store moved on)
        if found is None:
            filled = self._fill(key, block, version)
            if not isinstance(filled, tuple):
                return filled
            found = filled
            if not self._describes(found[0], key, block):
                return None  # (vanishingly rare) another object's entry: read straight from the inner store
        self.stats.hits += 1
        return ekey, found[0], found[1]

    def _describes(self, hdr: Header, key: str, block: int | None) -> bool:
        """Whether a (well-formed) header is that of ``key``'s ``block`` in this cache's inner store."""
        m = hdr.meta
        if m["url"] != self.inner.url or m["key"] != key or m["block"] != block:
            return False
        if block is None:
            return hdr.data_len == m["size"]
        assert self.block_bytes is not None
        return hdr.data_len == max(0, min(self.block_bytes, m["size"] - block * self.block_bytes))

    def _read_entry(
        self,
        ekey: str,
        hdr: Header,
        ident: _Ident,
        offs: list[int],
        lens: list[int],
        dst: np.ndarray,
        douts: list[int],
    ) -> list[int]:
        """Read ranges of an entry's data into ``dst``, verified; bytes read per range
        (ranges are clipped at the end of the entry's data)."""
        if hdr.data_len == 0:
            return [0] * len(offs)
        name = f"cache entry {self._root_s}/{ekey} ({hdr.meta.get('url')}/{hdr.meta.get('key')})"
        if self.verify == "once":
            return self._read_once(ekey, hdr, ident, offs, lens, dst, douts, name)
        file = self._file(ekey, ident) if ident is not None else None  # checks on the engine's threads
        mode = self._hit_mode(ident, file.path) if file is not None else None
        got = read_verified(
            self._local, ekey, hdr.sums, offs, lens, dst, douts, name=name, base=hdr.header_len, file=file, read_mode=mode
        )
        return got.tolist()

    def _hit_mode(self, ident: _Ident, path: str) -> str | None:
        """The read mode of a hit on the entry file ``ident``: ``"mapped"`` while the file is all in
        the page cache (asked again every ``_RESIDENCY_RECHECK_S`` seconds): its chunks are then
        copied out of the engine's mapping of it with their crc32c computed in the same pass, instead
        of a read system call and a second pass for the check (entry files never change in place:
        fills write a new file and rename it). Otherwise None: the engine's own mode (the page cache
        without blocking, O_DIRECT for what is not cached). ``IOOptions.mapped = "off"`` keeps None."""
        if self._local.engine.options.mapped == "off":
            return None
        now = time.monotonic()
        with self._lock:
            known = self._resident.get(ident)
        if known is None or now >= known[0]:
            known = (now + _RESIDENCY_RECHECK_S, resident_bytes(path) >= ident[2])
            with self._lock:
                self._resident[ident] = known
                self._resident.move_to_end(ident)
                while len(self._resident) > _MAX_OPEN_FILES:
                    self._resident.popitem(last=False)
        return "mapped" if known[1] else None

    def _read_once(
        self,
        ekey: str,
        hdr: Header,
        ident: _Ident,
        offs: list[int],
        lens: list[int],
        dst: np.ndarray,
        douts: list[int],
        name: str,
    ) -> list[int]:
        """``verify="once"``: chunks this process has not checked yet (per entry
        inode) are read verified; chunks already checked are read plainly. All
        reads go through one handle on that very inode."""
        f = self._file(ekey, ident)
        with self._lock:
            state = self._verified.get(ident)
            if state is None:
                state = self._verified[ident] = [np.zeros(len(hdr.sums.crcs), bool), len(hdr.sums.crcs)]
                while len(self._verified) > _MAX_VERIFIED_ENTRIES:
                    self._verified.popitem(last=False)
            else:
                self._verified.move_to_end(ident)
        seen, unchecked = state
        c, size, base = hdr.sums.chunk_bytes, hdr.data_len, hdr.header_len
        o_arr = np.asarray(offs, np.int64)
        n_arr = np.clip(np.minimum(np.asarray(lens, np.int64), size - o_arr), 0, None)
        d_arr = np.asarray(douts, np.int64)
        if unchecked == 0:  # every chunk of this inode was checked already: one plain batched read
            live = n_arr > 0
            plain_o, plain_n, plain_d = o_arr[live], n_arr[live], d_arr[live]
        else:  # one gather over the chunks the ranges cover (numpy, no Python per range)
            live = n_arr > 0
            first = o_arr // c
            counts = np.where(live, -(-(o_arr + n_arr) // c) - first, 0)
            starts = np.cumsum(counts) - counts
            chunks = np.repeat(first - starts, counts) + np.arange(int(counts.sum()))
            need = np.zeros(len(o_arr), bool)
            if chunks.size:
                unseen = ~seen[chunks]
                need[live] = np.logical_or.reduceat(unseen, starts[live])
            check = np.flatnonzero(need)
            if check.size:
                reader = FileReader(f, base)
                read_verified(reader, ekey, hdr.sums, o_arr[check], n_arr[check], dst, d_arr[check], name=name)
                covered = chunks[np.repeat(need, counts)]
                with self._lock:  # readers of one entry on several threads: each chunk counted once
                    fresh = np.unique(covered[~seen[covered]])
                    seen[fresh] = True
                    state[1] -= int(fresh.size)
            mask = live & ~need
            plain_o, plain_n, plain_d = o_arr[mask], n_arr[mask], d_arr[mask]
        if plain_o.size:
            try:
                # Ranges checked by submit_ranges, clipped non-negative int64: their uint64 views.
                u64 = np.uint64
                mode = self._hit_mode(ident, f.path)
                f.read_checked(
                    as_buffer(dst), (plain_o + base).view(u64), plain_n.view(u64), plain_d.view(u64), direct=mode
                ).result()
            except ShortReadError as e:
                raise CorruptDataError(f"{name}: truncated ({e})") from None
        return n_arr.tolist()

    def _read_block(
        self,
        key: str,
        block: int | None,
        offs: list[int],
        lens: list[int],
        dst: np.ndarray,
        douts: list[int],
        version: str | None,
    ) -> tuple[list[int], str | None]:
        """Ranges of one cache entry (the whole object, or one block), filled on a
        miss; objects that bypass the cache are read from the inner store. A bad
        entry is discarded (counted) and refetched; an entry evicted by another
        process between lookup and read is a miss (counted in ``lost_races``).
        After ``_ATTEMPTS`` such turns the read goes to the inner store
        (``read_through``). Returns the bytes per range and the version they are
        of: ``version`` when given, else the version of the entry or fetch that
        served them (the caller pins the object's other blocks to it)."""
        for _ in range(_ATTEMPTS):
            ent = self._entry(key, block, version)
            if ent is None:  # too large to cache: straight from the inner store
                return self._read_inner(key, block, offs, lens, dst, douts, version)
            if isinstance(ent, _Fetched):  # just fetched: served from memory
                return _copy_ranges(ent.data, offs, lens, dst, douts), ent.version
            ekey, hdr, ident = ent
            try:
                out = self._read_entry(ekey, hdr, ident, offs, lens, dst, douts)
            except NotFoundError:
                self.stats.lost_races += 1
                continue
            except CorruptDataError:
                self.stats.corrupt_discarded += 1
                self._discard(ekey, ident)
                continue
            self.stats.bytes_from_cache += sum(out)
            return out, hdr.meta.get("version")
        self.stats.read_through += 1
        return self._read_inner(key, block, offs, lens, dst, douts, version)

    def _read_inner(
        self,
        key: str,
        block: int | None,
        offs: list[int],
        lens: list[int],
        dst: np.ndarray,
        douts: list[int],
        version: str | None,
    ) -> tuple[list[int], str | None]:
        """Ranges of ``key`` (offsets inside ``block`` when given) straight from the inner
        store, pinned to ``version``. A block read unpinned is pinned to the version a
        ``stat`` names, so that the object's other blocks can be pinned to it."""
        if version is None and block is not None:
            version = self.inner.stat(key).version
        base = 0 if block is None else block * (self.block_bytes or 0)
        got = self.inner.read_ranges(key, [o + base for o in offs], lens, dst, douts, exact=False, version=version)
        self.stats.bytes_from_inner += int(got.sum())
        return [int(g) for g in got], version

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> Done:
        """Read ranges (synchronously; the returned future is already done), all
        of one version. CUDA destinations are filled through a host buffer."""
        if ref.is_cuda:
            return self._to_device(key, offs, lens, ref, douts, version)
        arr = host_array(ref)
        for attempt in range(VERSION_RETRIES):
            try:
                return Done(self._read_host(key, offs, lens, arr, douts, version))
            except VersionChangedError:
                if version is not None or attempt == VERSION_RETRIES - 1:
                    raise
                # Unpinned: the entries disagree with the inner store (the object was replaced
                # behind the cache). Drop this node's copies so the next try fills one version.
                self.invalidate(key)
        raise AssertionError("unreachable")

    def _read_host(
        self, key: str, offs: np.ndarray, lens: np.ndarray, arr: np.ndarray, douts: np.ndarray, version: str | None
    ) -> np.ndarray:
        out = np.zeros(len(offs), np.uint64)
        if self.block_bytes is None and lens.size and int(lens.min()) > 0:  # whole entries, no empty range: arrays as they are
            # (int64 views of the checked uint64 ranges: values below 2**63, and safe to negate)
            i64 = np.int64
            got, _ = self._read_block(key, None, offs.view(i64), lens.view(i64), arr, douts.view(i64), version)  # type: ignore[arg-type]
            out[:] = got
            return out
        ol, ll, dl = offs.tolist(), lens.tolist(), douts.tolist()
        if self.block_bytes is None:
            live = [i for i in range(len(ol)) if ll[i]]
            if live:
                got, _ = self._read_block(
                    key, None, [ol[i] for i in live], [ll[i] for i in live], arr, [dl[i] for i in live], version
                )
                out[live] = got
            return out
        b = self.block_bytes
        pieces: dict[int, list[tuple[int, int, int, int]]] = {}  # block -> (range, offset in block, length, dst)
        for i, (o, n, d) in enumerate(zip(ol, ll, dl, strict=True)):
            pos = o
            while pos < o + n:
                blk = pos // b
                m = min(o + n, (blk + 1) * b) - pos
                pieces.setdefault(blk, []).append((i, pos - blk * b, m, d + pos - o))
                pos += m
        short: set[int] = set()
        for blk in sorted(pieces):
            ps = pieces[blk]
            # Every block after the first is pinned to the first one's version:
            # blocks filled at different times never mix two versions.
            got, version = self._read_block(key, blk, [p[1] for p in ps], [p[2] for p in ps], arr, [p[3] for p in ps], version)
            for (i, _, m, _), g in zip(ps, got, strict=True):
                if i not in short:
                    out[i] += g
                if g < m:
                    short.add(i)  # past the end: later blocks add nothing to this range
        return out

    def _to_device(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> Done:
        """Verified reads into host memory, then one copy per range to the CUDA ``ref``."""
        places = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.uint64) if len(lens) else lens
        scratch = np.empty(int(lens.sum()), np.uint8)
        got = self._submit_ranges(key, offs, lens, as_buffer(scratch), places, version).result()
        for p, d, n in zip(places.tolist(), douts.tolist(), got.tolist(), strict=True):
            land_bytes(ref, d, scratch[p : p + n])
        return Done(got)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is not None:
            return super().get(key, offset, length)
        first = None if self.block_bytes is None else 0
        for attempt in range(VERSION_RETRIES):
            # The size and version from a cached entry's header when there is one (looked at, not
            # counted: the read below counts its own hit or miss), else from the inner store.
            # A damaged header is discarded and counted by _header; a misplaced one is not trusted.
            found = self._header(self._entry_key(key, first))
            if found is not None and self._describes(found[0], key, first):
                size, version = int(found[0].meta["size"]), str(found[0].meta["version"])
            else:
                info = self.inner.stat(key)
                size, version = info.size, info.version
            buf = np.empty(max(0, size - offset), np.uint8)
            try:
                n = int(self.read_ranges(key, [offset], [buf.size], buf, [0], exact=False, version=version)[0])
            except VersionChangedError:
                if attempt == VERSION_RETRIES - 1:
                    raise
                self.invalidate(key)  # an entry of a replaced version must not pin the next try to it
                continue
            return buf[:n].tobytes()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ pass-through

    def invalidate(self, key: str) -> None:
        """Drop this node's cached copies of ``key`` (whole entry and blocks)."""
        whole = self._entry_key(key, None)
        d = self._local.root / whole.split("/")[0]
        if not d.is_dir():
            return
        name = whole.split("/")[1]
        for e in os.scandir(d):
            if e.name == name or e.name.startswith(name + ".b"):
                self._discard(f"{d.name}/{e.name}")

    def put(self, key: str, data: Any) -> ObjectInfo:
        info = self.inner.put(key, data)
        self.invalidate(key)
        return info

    def put_if_absent(self, key: str, data: Any) -> bool:
        wrote = self.inner.put_if_absent(key, data)
        if wrote:  # an entry left from an object removed elsewhere would shadow the new one
            self.invalidate(key)
        return wrote

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        info = self.inner.compare_and_swap(key, expected, data)
        self.invalidate(key)
        return info

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)
        self.invalidate(key)

    def delete_if(self, key: str, version: str) -> bool:
        deleted = self.inner.delete_if(key, version)
        if deleted:
            self.invalidate(key)
        return deleted

    def close(self) -> None:
        with self._lock:
            files = list(self._files.values())
            self._files.clear()
            self._headers.clear()
        for f in files:
            f.close()
        self._local.close()
        self.inner.close()

    def __repr__(self) -> str:
        return f"CachedStore({self.inner!r}, {str(self.cache_dir)!r}, max_bytes={self.max_bytes})"


def _copy_ranges(data: np.ndarray, offs: list[int], lens: list[int], dst: np.ndarray, douts: list[int]) -> list[int]:
    """Copy ranges of ``data`` into ``dst`` (clipped at its end); bytes copied per range."""
    out = []
    for o, n, d in zip(offs, lens, douts, strict=True):
        m = max(0, min(n, data.size - o))
        if m:
            dst[d : d + m] = data[o : o + m]
        out.append(m)
    return out


def _touch(path: str, ident: _Ident) -> bool:
    """Mark the entry ``ident`` at ``path`` used now (its atime; the mtime is its identity).
    False when the path no longer holds that entry (evicted or replaced: a miss)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if _ident(st) != ident:
            return False
        os.utime(fd, ns=(time.time_ns(), st.st_mtime_ns))
    except OSError:
        pass  # not the owner (a cache shared between users), read-only: the LRU order is a hint
    finally:
        os.close(fd)
    return True


def _read_header(path: str) -> tuple[Header, _Ident]:
    """Decode the header of the entry file at ``path``, reading one open inode (an entry
    replaced meanwhile is judged as the file that was read, never a mix of two);
    returns it with that inode's identity. CorruptDataError when damaged."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        raw = os.pread(fd, min(st.st_size, 1 << 20), 0)
        hdr = decode_header(raw, path)
        if hdr.header_len + hdr.data_len != st.st_size:
            raise CorruptDataError(f"{path}: cache entry has {st.st_size} bytes, its header says {hdr.header_len + hdr.data_len}")
        if hdr.header_len > len(raw):
            hdr = decode_header(os.pread(fd, hdr.header_len, 0), path)
    finally:
        os.close(fd)
    return hdr, _ident(st)
