"""EncryptedStore: objects sealed with AES-256-GCM over any Store (format in storecomp.crypto).

>>> store = EncryptedStore(open_store("s3://bucket/ds"), "env")   # keys from STORECOMP_ENCRYPTION_KEYS
>>> store = open_store("s3://bucket/ds", encryption="file:/etc/storecomp/keys")

It composes: put it *outside* a cache tier (``EncryptedStore(CachedStore(...))``)
so that the cache holds ciphertext, and under datasets, snapshots and the
DataLoader like any other store. Plaintext never reaches the inner store.

* Writes seal the object on the writer's thread (one data key per object,
  wrapped by the provider's current key) and publish it whole through the
  inner store (put, put_if_absent and compare_and_swap keep their meaning).
* Reads (``submit_ranges``) return at once; a worker thread fetches the
  header (cached per key) and the segments covering the ranges, opens them
  (every tag checked) and copies the bytes into the destination (host
  memory: decrypt to host first for a CUDA tensor). A failed tag is a
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
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import crypto
from ..errors import (
    ConfigError,
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    ShortReadError,
    UnsupportedBufferError,
)
from ..io.buffers import BufferRef, as_buffer
from ..io.engine import checked_ranges
from .base import Capabilities, ObjectInfo, Store
from .futures import PendingRanges
from .keys import payload_view, validate_key

_HEADER_CACHE = 4096


class EncryptedStore(Store):
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
    def capabilities(self) -> Capabilities:
        c = self.inner.capabilities
        return Capabilities(conditional_writes=c.conditional_writes, ranged_reads=c.ranged_reads, native_reads=False, local=False)

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    # ------------------------------------------------------------ headers

    def _envelope(self, key: str, fresh: bool) -> tuple[crypto.Envelope | None, bool]:
        """The object's opened header (None: a plaintext object, allowed), and whether it came from the cache."""
        if not fresh:
            with self._lock:
                if key in self._headers:
                    self._headers.move_to_end(key)
                    return self._headers[key], True
        head = np.zeros(crypto.HEADER_BYTES, np.uint8)
        got = int(self.inner.read_ranges(key, [0], [crypto.HEADER_BYTES], head, [0], exact=False)[0])
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

    def submit_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
    ) -> PendingRanges:
        validate_key(key)
        ref = as_buffer(dst)
        if ref.is_cuda:
            raise UnsupportedBufferError(
                f"{self._where(key)}: an encrypted store decrypts into host memory; read to host, then copy"
            )
        offs, lens, douts = checked_ranges(offsets, lengths, dst_offsets, ref, self._where(key))
        return PendingRanges(self._pool.submit(self._read, key, offs, lens, douts, ref, dst, exact), ref)

    def _read(
        self, key: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, dst: Any, exact: bool
    ) -> np.ndarray:
        env, cached = self._envelope(key, fresh=False)
        if env is None:
            return self.inner.read_ranges(key, offs, lens, dst, douts, exact=exact)
        try:
            return self._read_sealed(key, env, offs, lens, douts, ref, exact)
        except CorruptDataError:
            if not cached:
                raise
        # The cached header may be of an earlier version of the object: once more, fresh.
        env, _ = self._envelope(key, fresh=True)
        if env is None:
            return self.inner.read_ranges(key, offs, lens, dst, douts, exact=exact)
        return self._read_sealed(key, env, offs, lens, douts, ref, exact)

    def _read_sealed(
        self, key: str, env: crypto.Envelope, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, exact: bool
    ) -> np.ndarray:
        size, seg = env.plaintext_bytes, env.segment_bytes
        where = self._where(key)
        ends = np.minimum(offs + lens, size)
        got = np.where(ends > offs, ends - offs, 0).astype(np.uint64)
        if exact:
            short = np.flatnonzero(got < lens)
            if short.size:
                i = int(short[0])
                raise ShortReadError(where, int(offs[i]), int(lens[i]), int(got[i]))
        live = np.flatnonzero(got > 0)
        if not live.size:
            return got
        first, last = offs[live] // seg, (ends[live] - 1) // seg
        wanted = np.unique(np.concatenate([np.arange(f, g + 1, dtype=np.int64) for f, g in zip(first, last, strict=True)]))
        plens = np.minimum(seg, size - wanted * seg)
        rec_lens = plens + crypto.RECORD_OVERHEAD
        positions = np.zeros(wanted.size + 1, np.int64)
        np.cumsum(rec_lens, out=positions[1:])
        plain_at = positions[:-1] - np.arange(wanted.size) * crypto.RECORD_OVERHEAD
        # Records of consecutive segments are adjacent in the object: one read per run of them.
        breaks = np.flatnonzero(np.diff(wanted) != 1) + 1
        run_starts = np.concatenate([[0], breaks])
        run_ends = np.concatenate([breaks, [wanted.size]])
        records = np.empty(int(positions[-1]), np.uint8)
        try:
            self.inner.read_ranges(
                key,
                crypto.HEADER_BYTES + wanted[run_starts] * (seg + crypto.RECORD_OVERHEAD),
                positions[run_ends] - positions[run_starts],
                records,
                positions[run_starts],
            )
        except ShortReadError as e:
            raise CorruptDataError(f"{where}: encrypted object truncated ({e})") from None
        # Every segment is authenticated before any byte lands: a failed read leaves ``dst`` untouched.
        plain = np.empty(int(positions[-1]) - wanted.size * crypto.RECORD_OVERHEAD, np.uint8)
        for j in range(wanted.size):
            p0, pa = int(positions[j]), int(plain_at[j])
            env.open_segment(int(wanted[j]), records[p0 : int(positions[j + 1])], plain[pa : pa + int(plens[j])], where)
        dst = np.frombuffer((ctypes.c_uint8 * ref.nbytes).from_address(ref.address), np.uint8)
        # A range's segments are consecutive in ``wanted`` (sorted, unique), so its plaintext is contiguous in ``plain``.
        index = {int(w): j for j, w in enumerate(wanted)}
        for i in live:
            o, e, d = int(offs[i]), int(ends[i]), int(douts[i])
            j = index[o // seg]
            src = int(plain_at[j]) + o - int(wanted[j]) * seg
            dst[d : d + e - o] = plain[src : src + e - o]
        return got

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
            n = crypto.plaintext_size(info.size, self.segment_bytes)
            yield ObjectInfo(info.key, n if n >= 0 and not self.allow_plaintext else info.size, info.version, info.mtime)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.inner.close()

    def __repr__(self) -> str:
        return f"EncryptedStore({self.inner!r}, keys={self.keys!r})"
