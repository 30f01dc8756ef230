"""EncryptedStore: objects sealed with AES-256-GCM over any Store (format in storecomp.crypto).

>>> store = EncryptedStore(open_store("s3://bucket/ds"), "env")   # keys from STORECOMP_ENCRYPTION_KEYS
>>> store = open_store("s3://bucket/ds", encryption="file:/etc/storecomp/keys")

It composes: put it *outside* a cache tier (``EncryptedStore(CachedStore(...))``)
so that the cache holds ciphertext, and under datasets, snapshots and the
DataLoader like any other store. Plaintext never reaches the inner store.

* Writes seal the object on the writer's thread (one data key per object,
  wrapped by the provider's current key) and publish it whole through the
  inner store (put, put_if_absent and compare_and_swap keep their meaning).
* Reads (``submit_ranges``, through the Store template) return at once. The
  ciphertext sits at the plaintext's offsets (shifted by the aligned head), so
  the segments wholly inside a range are read straight into the destination,
  with the plaintext read's own I/O, and a worker thread decrypts them there,
  in place; the segments at a range's edges (every segment, for a CUDA
  destination, landed through ``storecomp.io.land_bytes``) go through a host
  scratch buffer. Every tag is checked before an edge lands; a failed tag is a
  ``CorruptDataError`` (``WrongKeyError`` for a key problem) and leaves zeros in
  the destination ranges, never an unauthenticated byte. Headers and their tag
  tables are cached per (key, version).
* Every read of one call (header, tags and segments) is pinned to one version
  of the object: the caller's ``version``, else the cached header's or a fresh
  ``stat``'s; when an unpinned read finds that version replaced, it restarts
  from a fresh ``stat`` (a few times, then ``VersionChangedError``, as every
  Store), so a concurrent replace never reads as a failed tag.
* Sizes are the plaintext's: ``stat`` reads them from the header (of the version it
  reports), ``list`` computes them from the sealed size and this store's
  ``segment_bytes`` (with ``allow_plaintext``: from each object's header).
* An object that is not sealed (written around this store) is refused as
  ``CorruptDataError``, unless ``allow_plaintext=True``, which reads such
  objects as they are (an explicit, per-store choice for a migration).
* :meth:`rewrap` re-wraps an object's data key under the current key
  (rotation) without re-encrypting its segments.
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import crypto
from ..errors import (
    ClosedError,
    ConfigError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    ShortReadError,
    VersionChangedError,
)
from ..io import BufferRef, aead, as_buffer, checked_ranges, land_bytes
from .base import VERSION_RETRIES, Capabilities, ExactRanges, Listing, ObjectInfo, RangeFuture, Store, WrapperStore
from .futures import JoinedRanges, PendingRanges, settle
from .keys import payload_view, validate_key

_HEADER_CACHE = 4096  # objects whose headers are kept
_HEADER_CACHE_BYTES = 64 << 20  # and the most bytes of tag tables kept with them
_MAX_CACHED_HEAD = 1 << 20  # a larger tag table (a 4 GiB object in 64 KiB segments) is read per call, in part
_Infos = list[ObjectInfo]  # (the class's own ``list`` method hides the builtin in its body)
_LIST_BATCH = 256  # listed objects whose headers are read at once (allow_plaintext)


class EncryptedStore(WrapperStore):
    """``inner`` with every object sealed under keys from ``keys`` (a KeyProvider, ``"env"``,
    ``"file:PATH"``). ``threads``: workers that open segments. Raises ConfigError naming the
    setting when no key provider is given or its keys are missing. ``segment_bytes`` (a multiple of 4096):
    the plaintext per authenticated segment of new objects: a read fetches and opens whole segments,
    so it is the read granularity (smaller for small random reads, larger for streaming)."""

    def __init__(
        self,
        inner: Store,
        keys: crypto.KeyProvider | str | None,
        *,
        allow_plaintext: bool = False,
        threads: int = 16,
        segment_bytes: int = crypto.SEGMENT_BYTES,
    ):
        provider = crypto.key_provider(keys)
        if provider is None:
            raise ConfigError(
                f"{inner.url}: EncryptedStore needs a key provider (encryption='env', 'file:PATH' or a KeyProvider)"
            )
        if segment_bytes <= 0 or segment_bytes % 4096 or segment_bytes > 1 << 30:
            raise InvalidArgumentError(f"segment_bytes={segment_bytes}: expected a positive multiple of 4096, at most 1 GiB")
        self.segment_bytes = segment_bytes
        self.inner = inner
        self.keys = provider
        self.url = inner.url
        self.allow_plaintext = allow_plaintext
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="storecomp-decrypt")
        openers = max(1, min(4, self._threads, len(os.sched_getaffinity(0)) // 2))
        self._openers = ThreadPoolExecutor(openers, thread_name_prefix="storecomp-open")
        # key -> (version, its opened header; None for an allowed plaintext object)
        self._headers: collections.OrderedDict[str, tuple[str, crypto.Envelope | None]] = collections.OrderedDict()
        self._head_bytes = 0
        #: Objects whose head (header and tag table) is at most this many bytes keep their tag table
        #: cached; larger ones read the tags a call needs with its segments.
        self.max_cached_head = _MAX_CACHED_HEAD
        self._lock = threading.Lock()
        #: Reads of a LocalStore are opened on its engine's threads as they land (one native batch per call).
        self.native_reads = callable(getattr(inner, "open_version", None))

    def crypto_stats(self) -> dict[str, str]:
        """Who runs AES-GCM for this store: :func:`storecomp.crypto.backend_info` (``backend``, ``reason``,
        ``openssl``) and ``opens_on``: ``engine threads`` (native, over a LocalStore) or ``worker threads``."""
        info = crypto.backend_info()
        native = info["backend"] == "openssl-evp" and self.native_reads
        info["opens_on"] = "engine threads" if native else "worker threads"
        return info

    #: Reads return plaintext: a cache tier must not wrap this store (CachedStore checks).
    decrypts = True

    def over(self, inner: Store) -> EncryptedStore:
        """The same keys and settings over ``inner`` (e.g. a cache tier around this store's inner store)."""
        return EncryptedStore(
            inner,
            self.keys,
            allow_plaintext=self.allow_plaintext,
            threads=self._threads,
            segment_bytes=self.segment_bytes,
        )

    @property
    def primary(self) -> Store:
        return self.inner

    @property
    def capabilities(self) -> Capabilities:
        c = self.inner.capabilities
        return Capabilities(conditional_writes=c.conditional_writes, ranged_reads=c.ranged_reads, native_reads=False, local=False)

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    # ------------------------------------------------------------ headers

    def _envelope(self, key: str, version: str | None) -> tuple[str, crypto.Envelope | None]:
        """The opened header of ``key`` at ``version`` (None: the current version, from a fresh
        ``stat``) and that version; the envelope is None for a plaintext object (allowed).

        Headers (with their tag tables up to ``max_cached_head`` bytes) are cached by (key, version):
        a cached one is used only for reads pinned to its version, so it can never be applied to
        the segments of another version."""
        if version is None:
            version = self.inner.stat(key).version
        with self._lock:
            hit = self._headers.get(key)
            if hit is not None and hit[0] == version:
                self._headers.move_to_end(key)
                return hit
        where = self._where(key)
        head = np.zeros(crypto.ALIGN, np.uint8)
        got = int(self.inner.read_ranges(key, [0], [head.size], head, [0], exact=False, version=version)[0])
        env: crypto.Envelope | None
        if got >= crypto.HEADER_BYTES and crypto.is_sealed(head):
            env = crypto.open_header(head[:got], key.encode(), self.keys, where)
            if env.tags is None and env.data_offset <= self.max_cached_head:
                whole = np.zeros(env.data_offset, np.uint8)
                whole[: head.size] = head
                rest = env.data_offset - head.size
                n = int(self.inner.read_ranges(key, [head.size], [rest], whole, [head.size], exact=False, version=version)[0])
                env.load_tags(whole[: head.size + n], where)
        elif self.allow_plaintext:
            env = None
        else:
            raise CorruptDataError(
                f"{where}: not an encrypted object (plaintext under an encrypted store; "
                "allow_plaintext=True reads such objects as they are)"
            )
        with self._lock:
            old = self._headers.pop(key, None)
            self._head_bytes += _head_nbytes(env) - _head_nbytes(old[1] if old else None)
            self._headers[key] = (version, env)
            while len(self._headers) > _HEADER_CACHE or (self._head_bytes > _HEADER_CACHE_BYTES and len(self._headers) > 1):
                self._head_bytes -= _head_nbytes(self._headers.popitem(last=False)[1][1])
        return version, env

    def _cached(self, key: str) -> tuple[str, crypto.Envelope | None] | None:
        with self._lock:
            return self._headers.get(key)

    def _forget(self, key: str) -> None:
        with self._lock:
            old = self._headers.pop(key, None)
            if old is not None:
                self._head_bytes -= _head_nbytes(old[1])

    # ------------------------------------------------------------ reads

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> RangeFuture:
        """Every read of the call (header and segments) is pinned to one version: ``version`` when
        given, else the cached header's (checked by the inner store) or a fresh ``stat``'s.

        Header known: the segment reads start now, on this thread (the inner store's own
        concurrency), and an opener thread (one per two cores, at most four) opens the segments
        of the calls in order as they land: few threads, so that a burst of calls (a DataLoader
        batch touches every shard) wakes one thread once, not one thread per call, and the AES
        work stays off the caller's thread. Else a worker reads the header first, then the segments."""
        hit = self._cached(key)
        if hit is not None and hit[1] is not None and (version is None or hit[0] == version):
            # Header known: the segment reads start now (the inner store's own concurrency); a worker
            # thread waits for them and opens the segments.
            plan = _Plan(self, key, hit[1], offs, lens, douts, hit[0], ref)
            if plan.native is not None:  # the engine opens the segments: only the edges' copies are left
                return _Landing(self, plan, version is None)
            return PendingRanges(self._openers.submit(self._finish, plan, version is None), ref)
        return PendingRanges(self._pool.submit(self._read, key, offs, lens, douts, ref, version), ref)

    def submit_batch(self, reads: Sequence[tuple[str, Any, Any, Any]], dst: Any) -> RangeFuture:
        """The reads of a batch over several objects (see :meth:`Store.submit_batch`). Over a LocalStore
        into host memory, every read whose object's header is known goes into one native batch (its
        segments opened on the engine's threads as they land; a DataLoader batch touching 16 shards is
        one submission, not 16); the others are :meth:`submit_ranges` calls."""
        ref = as_buffer(dst)
        if not self.native_reads or ref.is_cuda:
            return super().submit_batch(reads, dst)
        parts: list[Any] = []
        plans: list[_Plan | _Whole] = []
        others: list[Any] = []
        try:
            for key, offsets, lengths, dst_offsets in reads:
                validate_key(key)
                name = self.name_of(key)
                offs, lens, douts = checked_ranges(offsets, lengths, dst_offsets, ref, name)
                hit = self._cached(key)
                whole: _Whole | None = None
                plan: _Plan | None = None
                if hit is not None and hit[1] is not None and hit[1].native is not None and hit[1].tags is not None:
                    try:
                        whole = _Whole.of(self, key, hit[1], offs, lens, douts, hit[0], ref)
                        if whole is None:  # ranges with edges inside segments, or past the end
                            plan = _Plan(self, key, hit[1], offs, lens, douts, hit[0], ref, batched=True)
                    except VersionChangedError:
                        pass
                if whole is not None:
                    plans.append(whole)
                    parts.append(whole)
                elif plan is not None and plan.native is not None:
                    plans.append(plan)
                    parts.append(ExactRanges(_Landing(self, plan, True), name, offs, lens))
                else:  # header not known, or the object was replaced: the one-call path
                    others.append(self.submit_ranges(key, offs, lens, ref, douts))
                    parts.append(others[-1])
            _submit_plans(self.inner.engine, plans)  # type: ignore[attr-defined]  # native_reads: a LocalStore
        except BaseException:
            for p in plans:  # what was submitted lands before the caller reuses dst
                if p.sealed is not None:
                    p.sealed.wait()
            settle(others)
            raise
        return JoinedRanges(parts)

    def _finish(self, plan: _Plan, restart: bool) -> np.ndarray:
        try:
            return plan.finish()
        except VersionChangedError:
            if not restart:
                raise
        # Unpinned, and the cached header's version was replaced: again from a fresh stat.
        return self._read(plan.key, plan.offs, plan.lens, plan.douts, plan.ref, None)

    def _read(
        self, key: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, version: str | None
    ) -> np.ndarray:
        for attempt in range(VERSION_RETRIES):
            try:
                pin, env = self._envelope(key, version)
                if env is None:
                    return self.inner.read_ranges(key, offs, lens, ref, douts, exact=False, version=pin)
                return _Plan(self, key, env, offs, lens, douts, pin, ref).finish()
            except VersionChangedError:
                if version is not None or attempt == VERSION_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ writes

    def _seal(self, key: str, data: Any) -> tuple[np.ndarray, int]:
        view = payload_view(data)
        self._forget(key)
        return crypto.seal(view, key.encode(), self.keys, self.segment_bytes), len(view)

    def put(self, key: str, data: Any) -> ObjectInfo:
        validate_key(key)
        sealed, n = self._seal(key, data)
        info = self.inner.put(key, sealed)
        return ObjectInfo(key, n, info.version, info.mtime)

    def put_if_absent(self, key: str, data: Any) -> bool:
        validate_key(key)
        sealed, _ = self._seal(key, data)
        return self.inner.put_if_absent(key, sealed)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        validate_key(key)
        sealed, n = self._seal(key, data)
        info = self.inner.compare_and_swap(key, expected, sealed)
        return ObjectInfo(key, n, info.version, info.mtime)

    def rewrap(self, key: str) -> bool:
        """Re-wrap ``key``'s data key under the provider's current key (segments untouched, published
        with compare-and-swap). False when it already uses the current key or changed meanwhile."""
        validate_key(key)
        info = self.inner.stat(key)
        raw = np.empty(info.size, np.uint8)
        try:
            self.inner.read_ranges(key, [0], [info.size], raw, [0], version=info.version)
        except VersionChangedError:
            return False
        where = self._where(key)
        if not crypto.is_sealed(raw):
            raise CorruptDataError(f"{where}: not an encrypted object: nothing to rewrap")
        env = crypto.open_header(raw, key.encode(), self.keys, where)
        if env.key_id == self.keys.current()[0]:
            return False
        head = crypto.rewrap(raw, key.encode(), self.keys, where)
        raw[: crypto.HEADER_BYTES] = np.frombuffer(head, np.uint8)
        try:
            self.inner.compare_and_swap(key, info.version, raw)
        except ConflictError:
            return False
        self._forget(key)
        return True

    # ------------------------------------------------------------ metadata

    def stat(self, key: str) -> ObjectInfo:
        """Plaintext size and version of ``key``, both of one version (the header is read pinned
        to the version the inner store's ``stat`` gave; a replacement in between restarts)."""
        validate_key(key)
        for attempt in range(VERSION_RETRIES):
            info = self.inner.stat(key)
            try:
                _, env = self._envelope(key, info.version)
            except VersionChangedError:
                if attempt == VERSION_RETRIES - 1:
                    raise
                continue
            return ObjectInfo(key, info.size if env is None else env.plaintext_bytes, info.version, info.mtime)
        raise AssertionError("unreachable")

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` with their plaintext sizes (see :meth:`_listed`)."""
        batch: _Infos = []
        for info in self.inner.list(prefix):
            batch.append(info)
            if len(batch) == _LIST_BATCH:
                yield from self._listed(batch)
                batch = []
        yield from self._listed(batch)

    def list_dir(self, prefix: str = "") -> Listing:
        """One level under ``prefix``; sizes are plaintext sizes, as :meth:`list` reports them."""
        inner = self.inner.list_dir(prefix)
        return Listing(self._listed(inner.objects), inner.prefixes, inner.skipped)

    def _listed(self, infos: _Infos) -> _Infos:
        """Listed objects with their plaintext sizes. Sealed objects only: from the sealed size and
        this store's ``segment_bytes``, no read. With ``allow_plaintext`` (sealed and plaintext objects
        side by side), each object's header says which it is: read pinned to the listed version (a
        plaintext object keeps its size; one replaced or deleted since the listing is stat'ed again or left out)."""
        if not self.allow_plaintext:
            out = []
            for info in infos:
                n = crypto.plaintext_size(info.size, self.segment_bytes)
                out.append(ObjectInfo(info.key, n if n >= 0 else info.size, info.version, info.mtime))
            return out
        return [i for i in self._pool.map(self._listed_mixed, infos) if i is not None]

    def _listed_mixed(self, info: ObjectInfo) -> ObjectInfo | None:
        head = np.zeros(crypto.HEADER_BYTES, np.uint8)
        for attempt in range(VERSION_RETRIES):
            try:
                if attempt:
                    info = self.inner.stat(info.key)
                got = int(self.inner.read_ranges(info.key, [0], [head.size], head, [0], exact=False, version=info.version)[0])
            except NotFoundError:
                return None
            except VersionChangedError:
                if attempt == VERSION_RETRIES - 1:
                    raise
                continue
            n = crypto.peek_plaintext_size(head[:got])
            return ObjectInfo(info.key, info.size if n is None else n, info.version, info.mtime)
        raise AssertionError("unreachable")

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def delete_if(self, key: str, version: str) -> bool:
        """The inner store's compare-and-delete; the cached header of ``key`` goes either way."""
        self._forget(key)
        return self.inner.delete_if(key, version)

    def close(self) -> None:
        self._openers.shutdown(wait=True)
        self._pool.shutdown(wait=True)
        self.inner.close()

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, keys={self.keys!r})"


class _Plan:
    """One sealed read, pinned to ``version``: the ciphertext of every segment that lies whole inside
    a range is read straight into the destination and decrypted there, in place; the segments at
    the ranges' edges (and every segment, for a CUDA destination) go through a host scratch buffer;
    the tags come from the envelope's cached table or are read with the segments. The reads start
    at construction; :meth:`finish` waits, authenticates every segment, and only then copies the
    edges in. On any failure the destination ranges are zeroed: no unauthenticated byte is left.
    Ranges past the end read short (the Store template checks ``exact``)."""

    def __init__(
        self,
        store: EncryptedStore,
        key: str,
        env: crypto.Envelope,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        version: str,
        ref: BufferRef,
        batched: bool = False,
    ) -> None:
        self.key, self.env, self.offs, self.lens, self.douts, self.version, self.ref = key, env, offs, lens, douts, version, ref
        self.where = store._where(key)
        size, seg, base = env.plaintext_bytes, env.segment_bytes, env.data_offset
        # Plain Python ints from here: a call has a handful of ranges, and numpy costs microseconds per operation.
        got = []
        self.ranges: list[tuple[int, int, int]] = []  # live ranges: (plaintext from, to, destination offset)
        for o, n, d in zip(offs.tolist(), lens.tolist(), douts.tolist(), strict=True):
            e = min(o + n, size)
            got.append(max(0, e - o))
            if e > o:
                self.ranges.append((o, e, d))
        self.got = np.array(got, np.uint64)
        self.direct: list[tuple[int, int]] = []  # (segment, its offset in the destination): decrypted in place
        self.copies: list[tuple[int, int, int, int]] = []  # (segment, plaintext from, to, destination offset)
        direct_reads: list[tuple[int, int, int, int]] = []
        edges: set[int] = set()
        for o, e, d in self.ranges:
            a, b = o // seg, (e - 1) // seg
            first = a if o == a * seg else a + 1  # the segments wholly inside [o, e)
            last = b if e == min((b + 1) * seg, size) else b - 1
            if ref.is_cuda:
                first, last = b + 1, b  # none: a CUDA destination lands host plaintext
            if first <= last:
                start, stop = first * seg, min((last + 1) * seg, size)
                direct_reads.append((base + start, stop - start, d + start - o, first))
                self.direct.extend((j, d + j * seg - o) for j in range(first, last + 1))
            for j in range(a, b + 1) if first > last else sorted({a, b}):
                if first <= j <= last:
                    continue  # read whole, in place
                lo, hi = max(o, j * seg), min(e, (j + 1) * seg, size)
                edges.add(j)
                self.copies.append((j, lo, hi, d + lo - o))
        self.scratch_segments = sorted(edges)
        self.scratch_at: dict[int, int] = {}
        at = 0
        for j in self.scratch_segments:
            self.scratch_at[j] = at
            at += env.segment_plain(j)[1]
        self.scratch = np.empty(at, np.uint8)
        self.tag_rows: dict[int, int] | None = None
        self.tag_buf: np.ndarray | None = None
        self.futures: list[Any] = []
        self.sealed: aead.SealedFuture | None = None  # the native path's batch (shared by the plans of a submit_batch)
        self.sealed_at = slice(0, 0)  # this plan's requests in it
        #: The native path's requests (file offset, bytes, address, first segment), when not yet submitted.
        self.native: list[tuple[int, int, int, int]] | None = None
        self.file: Any = None
        self.mode = ""
        inner = store.inner
        try:
            if store.native_reads and env.native is not None and env.tags is not None and not ref.is_cuda:
                self._plan_native(inner, direct_reads)
                if not batched:
                    _submit_plans(inner.engine, [self])  # type: ignore[attr-defined]  # native_reads: a LocalStore
            else:
                self._submit_inner(inner, direct_reads, edges)
        except Exception as e:  # noqa: BLE001 - reported by finish(), after the reads already started
            self.native = None  # not submitted natively: finish() takes the futures path, which raises and zeroes
            self.futures.append(_failed(e))

    def _submit_inner(self, inner: Store, direct_reads: list[tuple[int, int, int, int]], edges: set[int]) -> None:
        """The reads through the inner store: the segments in place, the edges into the scratch buffer,
        the tags the call needs when the envelope has no table (opened by :meth:`finish`)."""
        key, ref, version, env = self.key, self.ref, self.version, self.env
        seg, size, base = env.segment_bytes, env.plaintext_bytes, env.data_offset
        if direct_reads:
            # Inside the caller's ranges, which the Store template checked: the backend's part directly.
            o_, n_, d_, _ = (np.array(x, np.uint64) for x in zip(*direct_reads, strict=True))
            self.futures.append(ExactRanges(inner._submit_ranges(key, o_, n_, ref, d_, version), self.where, o_, n_))
        if self.scratch_segments:
            runs = _runs(self.scratch_segments)
            self.futures.append(
                inner.submit_ranges(
                    key,
                    [base + j0 * seg for j0, _ in runs],
                    [min((j1 + 1) * seg, size) - j0 * seg for j0, j1 in runs],
                    self.scratch,
                    [self.scratch_at[j0] for j0, _ in runs],
                    version=version,
                )
            )
        if env.tags is None:
            needed = sorted(edges | {j for j, _ in self.direct})
            self.tag_rows = {j: r for r, j in enumerate(needed)}
            self.tag_buf = np.empty((len(needed), crypto.TAG_BYTES), np.uint8)
            runs = _runs(needed)
            spans = [env.tag_span(j0, j1 - j0 + 1) for j0, j1 in runs]
            self.futures.append(
                inner.submit_ranges(
                    key,
                    [o for o, _ in spans],
                    [n for _, n in spans],
                    self.tag_buf,
                    [crypto.TAG_BYTES * self.tag_rows[j0] for j0, _ in runs],
                    version=version,
                )
            )

    def _plan_native(self, inner: Any, direct_reads: list[tuple[int, int, int, int]]) -> None:
        """The call's segments (in place, and the edges into the scratch buffer) as native requests
        on the inner LocalStore's file (:func:`_submit_plans` submits them: the engine opens each
        segment as it lands)."""
        seg, size, base = self.env.segment_bytes, self.env.plaintext_bytes, self.env.data_offset
        self.file, self.mode = inner.open_version(self.key, self.version)
        reqs = [(o, n, self.ref.address + d, j) for o, n, d, j in direct_reads]
        at = self.scratch.ctypes.data
        for j0, j1 in _runs(self.scratch_segments):
            start, stop = j0 * seg, min((j1 + 1) * seg, size)
            reqs.append((base + start, stop - start, at + self.scratch_at[j0], j0))
        self.native = reqs

    def _finish_native(self, dst: np.ndarray) -> None:
        """Wait for the native batch; raise CorruptDataError for a short read or a failed tag."""
        if self.sealed is None:
            if self.native:
                raise ClosedError(f"{self.where}: the encrypted read was never submitted")  # never report unread bytes
            return  # nothing to read (ranges past the end)
        at = self.sealed_at
        got = self.sealed.result()[at]
        need = np.array([n for _, n, _, _ in self.native or ()], np.uint64)
        if (got < need).any():
            i = int(np.argmax(got < need))
            raise CorruptDataError(f"{self.where}: encrypted object truncated ({int(got[i])} of {int(need[i])} bytes read)")
        failed = self.sealed.failed_segments()[at]
        bad = failed[failed >= 0]
        if bad.size:
            raise CorruptDataError(f"{self.where}: encrypted segment {int(bad.min())} failed its authentication tag")

    def finish(self) -> np.ndarray:
        """Wait for the reads, open every segment (all before an edge lands), copy the edges in."""
        ref, env, where = self.ref, self.env, self.where
        dst = None if ref.is_cuda else np.ctypeslib.as_array((ctypes.c_uint8 * ref.nbytes).from_address(ref.address))
        try:
            if self.native is not None:
                assert dst is not None
                self._finish_native(dst)
                return self._land()
        except BaseException:
            for lo, hi, d in self.ranges:
                dst[d : d + hi - lo] = 0  # type: ignore[index]
            raise
        try:
            error: BaseException | None = None
            for f in self.futures:  # every read is waited for: none may still write into the destination
                try:
                    f.result()
                except BaseException as e:  # noqa: BLE001 - the first failure is raised below
                    error = error or e
            if isinstance(error, ShortReadError):
                raise CorruptDataError(f"{where}: encrypted object truncated ({error})") from None
            if error is not None:
                raise error
            tag: Callable[[int], bytes]
            if self.tag_rows is None:
                tag = env.tag
            else:
                assert self.tag_buf is not None
                table, rows = self.tag_buf.tobytes(), self.tag_rows
                tag = lambda j: table[crypto.TAG_BYTES * rows[j] : crypto.TAG_BYTES * (rows[j] + 1)]  # noqa: E731
            seg, size, opener = env.segment_bytes, env.plaintext_bytes, env.open_segment
            if dst is not None:
                view = dst.data
                for j, at in self.direct:
                    seg_view = view[at : at + min(seg, size - j * seg)]
                    opener(j, seg_view, seg_view, tag(j), where)
            for j in self.scratch_segments:
                at = self.scratch_at[j]
                part = self.scratch[at : at + min(seg, size - j * seg)]
                opener(j, part, part, tag(j), where)
        except BaseException:
            if dst is not None:
                for lo, hi, d in self.ranges:
                    dst[d : d + hi - lo] = 0
            raise
        return self._land()

    def _land(self) -> np.ndarray:
        """Copy the opened edge segments' wanted bytes into the destination; the bytes read per range."""
        ref, seg = self.ref, self.env.segment_bytes
        dst = None if ref.is_cuda else np.ctypeslib.as_array((ctypes.c_uint8 * ref.nbytes).from_address(ref.address))
        for j, lo, hi, d in self.copies:
            src = self.scratch_at[j] + lo - j * seg
            if dst is None:
                land_bytes(ref, d, self.scratch[src : src + hi - lo])  # a CUDA destination: the io copy, on this thread's stream
            else:
                dst[d : d + hi - lo] = self.scratch[src : src + hi - lo]
        return self.got


class _Landing:
    """Completion of a call whose segments the engine opens (:meth:`_Plan._submit_native`): ``result()``
    waits for the native batch, checks its tags and copies the edges in, on the caller's thread;
    an unpinned call whose cached header's version was replaced restarts there from a fresh ``stat``."""

    def __init__(self, store: EncryptedStore, plan: _Plan, restart: bool) -> None:
        self._store, self._plan, self._restart = store, plan, restart
        self._got: np.ndarray | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        plan = self._plan
        if self._got is not None or self._error is not None:
            return True
        return plan.sealed.done() if plan.sealed is not None else not plan.native  # no sealed batch: nothing to read

    def result(self, timeout: float | None = None) -> np.ndarray:
        if self._got is None and self._error is None:
            plan = self._plan
            if timeout is not None and plan.sealed is not None and not plan.sealed.wait(timeout):
                raise TimeoutError(f"ranged read not finished within {timeout} s")
            try:
                self._got = self._store._finish(plan, self._restart)
            except BaseException as e:  # noqa: BLE001 - kept and raised at every result()
                self._error = e
        if self._error is not None:
            raise self._error
        assert self._got is not None
        return self._got

    def __del__(self) -> None:
        sealed = self._plan.sealed
        if sealed is not None:
            sealed.wait()  # the engine may still write into the destination


class _Whole:
    """A read of whole segments only (every range starts at a segment and ends at one, or at the object's
    end): read in place into the destination by a shared native batch (:func:`_submit_plans`), no plan,
    no scratch, no edges; also its own future (``result()`` raises CorruptDataError for a short read or
    a failed tag, the destination ranges then zeroed)."""

    __slots__ = ("where", "env", "ref", "file", "mode", "native", "lens", "douts", "sealed", "sealed_at", "scratch")

    @classmethod
    def of(
        cls,
        store: EncryptedStore,
        key: str,
        env: crypto.Envelope,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        version: str,
        ref: BufferRef,
    ) -> _Whole | None:
        """The read, or None when a range has edges inside a segment or runs past the end.
        Raises VersionChangedError when ``key`` no longer holds ``version``."""
        seg, size, base, at = env.segment_bytes, env.plaintext_bytes, env.data_offset, ref.address
        native = []
        for o, n, d in zip(offs.tolist(), lens.tolist(), douts.tolist(), strict=True):
            if o % seg or not n or o + n > size or (n % seg and o + n != size):
                return None
            native.append((base + o, n, at + d, o // seg))
        file, mode = store.inner.open_version(key, version)  # type: ignore[attr-defined]  # native_reads: a LocalStore
        return cls(store._where(key), env, ref, native, lens, douts, file, mode)

    def __init__(
        self,
        where: str,
        env: crypto.Envelope,
        ref: BufferRef,
        native: list[tuple[int, int, int, int]],
        lens: np.ndarray,
        douts: np.ndarray,
        file: Any,
        mode: str,
    ) -> None:
        self.where, self.env, self.ref, self.native, self.lens, self.douts = where, env, ref, native, lens, douts
        self.file, self.mode = file, mode
        self.sealed: aead.SealedFuture | None = None
        self.sealed_at = slice(0, 0)
        self.scratch: np.ndarray | None = None

    def done(self) -> bool:
        return self.sealed is None or self.sealed.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        sealed = self.sealed
        if not self.native:
            return self.lens  # no range
        if sealed is None:
            raise ClosedError(f"{self.where}: read never submitted")
        if timeout is not None and not sealed.wait(timeout):
            raise TimeoutError(f"ranged read not finished within {timeout} s")
        try:
            got = sealed.result()[self.sealed_at]
            if (got < self.lens).any():
                i = int(np.argmax(got < self.lens))
                n, want = int(got[i]), int(self.lens[i])
                raise CorruptDataError(f"{self.where}: encrypted object truncated ({n} of {want} bytes read)")
            failed = sealed.failed_segments()[self.sealed_at]
            bad = failed[failed >= 0]
            if bad.size:
                raise CorruptDataError(f"{self.where}: encrypted segment {int(bad.min())} failed its authentication tag")
        except BaseException:
            dst = np.ctypeslib.as_array((ctypes.c_uint8 * self.ref.nbytes).from_address(self.ref.address))
            for n, d in zip(self.lens.tolist(), self.douts.tolist(), strict=True):
                dst[d : d + n] = 0
            raise
        return self.lens

    def __del__(self) -> None:
        if self.sealed is not None:
            self.sealed.wait()  # the engine may still write into the destination


def _submit_plans(engine: Any, plans: Sequence[_Plan | _Whole]) -> None:
    """The native requests of ``plans`` as one batch per read mode (usually one), shared by the plans."""
    by_mode: dict[str, list[_Plan | _Whole]] = {}
    for p in plans:
        if p.native:
            by_mode.setdefault(p.mode, []).append(p)
    for mode, group in by_mode.items():
        files: dict[int, int] = {}
        ciphers: dict[int, int] = {}
        rows: list[tuple[int, int, int, int, int, int]] = []
        tags: list[bytes] = []
        for p in group:
            fi = files.setdefault(id(p.file), len(files))
            ci = ciphers.setdefault(id(p.env), len(ciphers))
            p.sealed_at = slice(len(rows), len(rows) + len(p.native or ()))
            seg, table = p.env.segment_bytes, p.env.tags
            assert table is not None
            for o, n, a, j in p.native or ():
                rows.append((fi, ci, o, n, a, j))
                tags.append(table[crypto.TAG_BYTES * j : crypto.TAG_BYTES * (j + -(-n // seg))])
        fidx, cidx, offs, lens, addrs, firsts = (np.array(x, np.uint64) for x in zip(*rows, strict=True))
        uniq_files = list({id(p.file): p.file for p in group}.values())
        uniq_envs = list({id(p.env): p.env for p in group}.values())
        keep = [b for p in group for b in (p.ref, p.scratch) if b is not None]
        fut = aead.submit_sealed(
            engine,
            uniq_files,
            fidx.astype(np.int64),
            offs,
            lens,
            addrs,
            keep,
            [e.native for e in uniq_envs if e.native is not None],
            cidx.astype(np.int32),
            firsts,
            np.frombuffer(b"".join(tags), np.uint8),
            mode,
        )
        for p in group:
            p.sealed = fut


def _runs(sorted_ints: list[int]) -> list[tuple[int, int]]:
    """Runs of consecutive integers in a sorted list, as (first, last)."""
    runs: list[tuple[int, int]] = []
    for j in sorted_ints:
        if runs and runs[-1][1] == j - 1:
            runs[-1] = (runs[-1][0], j)
        else:
            runs.append((j, j))
    return runs


def _head_nbytes(env: crypto.Envelope | None) -> int:
    return 0 if env is None or env.tags is None else len(env.tags)


def _failed(e: BaseException) -> Any:
    fut: Future[np.ndarray] = Future()
    fut.set_exception(e)
    return fut
