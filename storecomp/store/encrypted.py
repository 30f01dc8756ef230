"""EncryptedStore: objects sealed with AES-256-GCM over any Store (format in storecomp.crypto).

>>> store = EncryptedStore(open_store("s3://bucket/ds"), "env")   # keys from STORECOMP_ENCRYPTION_KEYS
>>> store = open_store("s3://bucket/ds", encryption="file:/etc/storecomp/keys")

It composes: put it *outside* a cache tier (``EncryptedStore(CachedStore(...))``)
so that the cache holds ciphertext, and under datasets, snapshots and the
DataLoader like any other store. Plaintext never reaches the inner store.

* Writes seal the object on the writer's thread (one data key per object,
  wrapped by the provider's current key) and publish it whole through the
  inner store (put, put_if_absent and compare_and_swap keep their meaning).
* Reads (``submit_ranges``, through the Store template) return at once; a
  worker thread fetches the header (cached per key) and the segments covering
  the ranges, all of one version of the object, opens them (every tag
  checked) and lands the bytes in the destination (host memory, or a CUDA
  tensor through ``storecomp.io.land_bytes``). A failed tag is a
  ``CorruptDataError`` (``WrongKeyError`` for a key problem); no byte lands
  in the destination unless every segment the call needs authenticates. A cached header that no
  longer matches (the object was replaced) is re-read once.
* Sizes are the plaintext's: ``stat`` reads them from the header, ``list``
  computes them from the sealed size and this store's ``segment_bytes``.
* An object that is not sealed (written around this store) is refused as
  ``CorruptDataError``, unless ``allow_plaintext=True``, which reads such
  objects as they are (an explicit, per-store choice for a migration).
* :meth:`rewrap` re-wraps an object's data key under the current key
  (rotation) without re-encrypting its segments.
"""

from __future__ import annotations

import collections
import ctypes
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import crypto
from ..errors import (
    ConfigError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    ShortReadError,
)
from ..io import BufferRef, land_bytes
from .base import Capabilities, Listing, ObjectInfo, Store, WrapperStore
from .futures import PendingRanges
from .keys import payload_view, validate_key

_HEADER_CACHE = 4096


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
        self._headers: collections.OrderedDict[str, crypto.Envelope | None] = collections.OrderedDict()
        self._lock = threading.Lock()

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

    def _envelope(self, key: str, fresh: bool, version: str | None = None) -> tuple[crypto.Envelope | None, bool]:
        """The object's opened header (None: a plaintext object, allowed), and whether it came from the cache."""
        if not fresh:
            with self._lock:
                if key in self._headers:
                    self._headers.move_to_end(key)
                    return self._headers[key], True
        head = np.zeros(crypto.HEADER_BYTES, np.uint8)
        got = int(self.inner.read_ranges(key, [0], [crypto.HEADER_BYTES], head, [0], exact=False, version=version)[0])
        env: crypto.Envelope | None
        if got == crypto.HEADER_BYTES and crypto.is_sealed(head):
            env = crypto.open_header(head, key.encode(), self.keys, self._where(key))
        elif self.allow_plaintext:
            env = None
        else:
            raise CorruptDataError(
                f"{self._where(key)}: not an encrypted object (plaintext under an encrypted store; "
                "allow_plaintext=True reads such objects as they are)"
            )
        with self._lock:
            self._headers[key] = env
            while len(self._headers) > _HEADER_CACHE:
                self._headers.popitem(last=False)
        return env, False

    def _forget(self, key: str) -> None:
        with self._lock:
            self._headers.pop(key, None)

    # ------------------------------------------------------------ reads

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> PendingRanges:
        with self._lock:
            env = self._headers.get(key)
        if env is not None:
            # Header known: the segment reads start now (the inner store's own concurrency); a worker
            # thread waits for them and opens the segments.
            plan = _Plan(self, key, env, offs, lens, douts, version)
            return PendingRanges(self._pool.submit(self._finish_cached, plan, ref), ref)
        return PendingRanges(self._pool.submit(self._read, key, offs, lens, douts, ref, version), ref)

    def _finish_cached(self, plan: _Plan, ref: BufferRef) -> np.ndarray:
        try:
            return plan.finish(ref)
        except CorruptDataError:
            pass
        # The cached header may be of an earlier version of the object: once more, fresh.
        env, _ = self._envelope(plan.key, fresh=True, version=plan.version)
        if env is None:
            return self.inner.read_ranges(plan.key, plan.offs, plan.lens, ref, plan.douts, exact=False, version=plan.version)
        return _Plan(self, plan.key, env, plan.offs, plan.lens, plan.douts, plan.version).finish(ref)

    def _read(
        self, key: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, version: str | None
    ) -> np.ndarray:
        env, _ = self._envelope(key, fresh=True, version=version)
        if env is None:
            return self.inner.read_ranges(key, offs, lens, ref, douts, exact=False, version=version)
        return _Plan(self, key, env, offs, lens, douts, version).finish(ref)

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
        raw = self.inner.get(key)
        where = self._where(key)
        if not crypto.is_sealed(raw):
            raise CorruptDataError(f"{where}: not an encrypted object: nothing to rewrap")
        env = crypto.open_header(raw, key.encode(), self.keys, where)
        if env.key_id == self.keys.current()[0]:
            return False
        head = crypto.rewrap(raw, key.encode(), self.keys, where)
        try:
            self.inner.compare_and_swap(key, info.version, head + raw[crypto.HEADER_BYTES :])
        except ConflictError:
            return False
        self._forget(key)
        return True

    # ------------------------------------------------------------ metadata

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        info = self.inner.stat(key)
        env, _ = self._envelope(key, fresh=True)
        return ObjectInfo(key, info.size if env is None else env.plaintext_bytes, info.version, info.mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        for info in self.inner.list(prefix):
            yield self._listed(info)

    def list_dir(self, prefix: str = "") -> Listing:
        """One level under ``prefix``; sizes are plaintext sizes, as :meth:`list` reports them."""
        inner = self.inner.list_dir(prefix)
        return Listing([self._listed(info) for info in inner.objects], inner.prefixes, inner.skipped)

    def _listed(self, info: ObjectInfo) -> ObjectInfo:
        """A listed sealed object's info with its plaintext size (from the sealed size alone)."""
        n = crypto.plaintext_size(info.size, self.segment_bytes)
        return ObjectInfo(info.key, n if n >= 0 and not self.allow_plaintext else info.size, info.version, info.mtime)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.inner.close()

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, keys={self.keys!r})"


class _Plan:
    """One sealed read: the segments that cover the ranges, their records being read (started at
    construction, pinned to ``version`` when given), then :meth:`finish` opens them and lands the
    ranges in the destination. Ranges past the end read short (the Store template checks ``exact``)."""

    def __init__(
        self,
        store: EncryptedStore,
        key: str,
        env: crypto.Envelope,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        version: str | None,
    ) -> None:
        self.key, self.env, self.offs, self.lens, self.douts, self.version = key, env, offs, lens, douts, version
        self.where = store._where(key)
        size, seg = env.plaintext_bytes, env.segment_bytes
        self.ends = np.minimum(offs + lens, size)
        self.got = np.where(self.ends > offs, self.ends - offs, 0).astype(np.uint64)
        self.live = np.flatnonzero(self.got > 0)
        self.future: Any = None
        if not self.live.size:
            return
        first, last = offs[self.live] // seg, (self.ends[self.live] - 1) // seg
        self.wanted = np.unique(np.concatenate([np.arange(f, g + 1, dtype=np.int64) for f, g in zip(first, last, strict=True)]))
        self.plens = np.minimum(seg, size - self.wanted * seg)
        self.positions = np.zeros(self.wanted.size + 1, np.int64)
        np.cumsum(self.plens + crypto.RECORD_OVERHEAD, out=self.positions[1:])
        self.plain_at = self.positions[:-1] - np.arange(self.wanted.size) * crypto.RECORD_OVERHEAD
        # Records of consecutive segments are adjacent in the object: one read per run of them.
        breaks = np.flatnonzero(np.diff(self.wanted) != 1) + 1
        run_starts = np.concatenate([[0], breaks])
        run_ends = np.concatenate([breaks, [self.wanted.size]])
        self.records = np.empty(int(self.positions[-1]), np.uint8)
        try:
            self.future = store.inner.submit_ranges(
                key,
                crypto.HEADER_BYTES + self.wanted[run_starts] * (seg + crypto.RECORD_OVERHEAD),
                self.positions[run_ends] - self.positions[run_starts],
                self.records,
                self.positions[run_starts],
                version=version,
            )
        except Exception as e:  # noqa: BLE001 - reported by finish(), on the future
            self.future = _failed(e)

    def finish(self, ref: BufferRef) -> np.ndarray:
        """Wait for the records, open every segment (all before any byte lands in ``ref``), copy the ranges."""
        if self.future is None:
            return self.got
        env, seg, where = self.env, self.env.segment_bytes, self.where
        try:
            self.future.result()
        except ShortReadError as e:
            raise CorruptDataError(f"{where}: encrypted object truncated ({e})") from None
        plain = np.empty(int(self.positions[-1]) - self.wanted.size * crypto.RECORD_OVERHEAD, np.uint8)
        pos, at, plens, wanted = self.positions, self.plain_at, self.plens, self.wanted
        for j in range(wanted.size):
            env.open_segment(
                int(wanted[j]), self.records[int(pos[j]) : int(pos[j + 1])], plain[int(at[j]) : int(at[j]) + int(plens[j])], where
            )
        dst = None if ref.is_cuda else np.ctypeslib.as_array((ctypes.c_uint8 * ref.nbytes).from_address(ref.address))
        # A range's segments are consecutive in ``wanted`` (sorted, unique), so its plaintext is contiguous in ``plain``.
        index = {int(w): j for j, w in enumerate(wanted)}
        for i in self.live:
            o, end, d = int(self.offs[i]), int(self.ends[i]), int(self.douts[i])
            j = index[o // seg]
            src = int(at[j]) + o - int(wanted[j]) * seg
            if dst is None:
                land_bytes(ref, d, plain[src : src + end - o])  # a CUDA destination: the io copy, on this thread's stream
            else:
                dst[d : d + end - o] = plain[src : src + end - o]
        return self.got


def _failed(e: BaseException) -> Any:
    fut: Future[np.ndarray] = Future()
    fut.set_exception(e)
    return fut
