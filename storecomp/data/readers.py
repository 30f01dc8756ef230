"""Where dataset bytes come from: local files (native engine) or a Store.

A reader names objects by key (a local path, or a key in a store) and has
three operations: ``size``, ``read`` (small reads: manifests, indexes) and
``submit`` (a batch of ranges into one destination, returning a future with
``result()``). Local reads go straight to :meth:`storecomp.io.File.read_many_into`
(one native submission, O_DIRECT when aligned); store reads go through
:meth:`storecomp.store.base.Store.submit_ranges` (concurrent ranged GETs).
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from ..io import Engine, as_buffer, default_engine
from ..store.base import RangeFuture, Store


class Reader(Protocol):
    """What a dataset needs from its storage."""

    def size(self, key: str) -> int: ...

    def read(self, key: str, offset: int, length: int) -> bytes: ...

    def submit(self, key: str, dst: Any, offsets: np.ndarray, lengths: np.ndarray, dst_offsets: np.ndarray) -> RangeFuture: ...

    def join(self, base: str, key: str) -> str: ...

    def describe(self, key: str) -> str: ...


class LocalReader:
    """Local files through the native engine (``engine``: default engine when None).

    Tier choice for batches (:meth:`submit_many`) when the engine's read mode
    is ``auto``: every read first tries the page cache (``RWF_NOWAIT``), which
    costs a second submission per read when the data is not cached. After a
    window of batches in which under 10 % of reads hit the cache, batches go
    to an O_DIRECT engine; every 512 batches a window goes through the page
    cache again to see whether the data became hot (a second epoch of a
    dataset that fits in memory). ``tier`` says which is in use.
    """

    WINDOW = 16  # batches per measurement window
    RECHECK = 512  # batches on O_DIRECT between two page-cache windows
    MIN_HIT_RATIO = 0.1

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._direct: Engine | None = None
        self.tier = "auto"
        self._batches = 0
        self._snapshot: tuple[int, int] | None = None

    @property
    def engine(self) -> Engine:
        return self._engine or default_engine()

    def _pick(self) -> Engine:
        eng = self.engine
        if eng.options.direct != "auto":
            return eng
        self._batches += 1
        if self.tier == "auto":
            st = eng.stats()
            now = (st.get("nowait_hits", 0), st.get("nowait_misses", 0))
            if self._snapshot is None:
                self._snapshot = now
            elif self._batches >= self.WINDOW:
                hits, misses = now[0] - self._snapshot[0], now[1] - self._snapshot[1]
                if misses and hits < self.MIN_HIT_RATIO * (hits + misses):
                    self.tier = "direct"
                self._batches, self._snapshot = 0, None
            return eng
        if self._batches >= self.RECHECK:
            self.tier, self._batches, self._snapshot = "auto", 0, None
            return eng
        if self._direct is None or self._direct.closed:
            self._direct = Engine(eng.options.replace(direct="on"))
        return self._direct

    def size(self, key: str) -> int:
        try:
            return os.stat(key).st_size
        except FileNotFoundError:
            raise NotFoundError(2, key, None, "stat") from None

    def read(self, key: str, offset: int, length: int) -> bytes:
        buf = np.empty(length, np.uint8)
        n = self.engine.cached_file(key).pread_into(buf, offset, exact=False)
        return buf[:n].tobytes()

    def submit(self, key: str, dst: Any, offsets: np.ndarray, lengths: np.ndarray, dst_offsets: np.ndarray) -> RangeFuture:
        return self.engine.cached_file(key).read_many_into(dst, offsets, lengths, dst_offsets)

    def submit_many(self, dst: Any, reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> RangeFuture:
        """All ``reads`` (key, offsets, lengths, dst offsets) of a batch as one native submission.

        The engine's per-call cost is large next to a 4 KiB read (tens of
        microseconds), so a batch touching several shards is still one call.
        """
        eng = self._pick()
        files = [eng.cached_file(key) for key, *_ in reads]
        counts = np.array([r[1].size for r in reads], np.int64)
        fids = np.repeat(np.array([f._check_open() for f in files], np.uint32), counts)
        offs = np.concatenate([r[1] for r in reads]).astype(np.uint64, copy=False)
        lens = np.concatenate([r[2] for r in reads]).astype(np.uint64, copy=False)
        douts = np.concatenate([r[3] for r in reads]).astype(np.uint64, copy=False)
        ref = as_buffer(dst)
        if ref.is_cuda:
            raise InvalidArgumentError("submit_many reads into host memory (staging slots)")
        if douts.size and int((douts + lens).max()) > ref.nbytes:
            raise InvalidArgumentError(f"destination too small: reads need {int((douts + lens).max())} bytes of {ref.nbytes}")
        return eng._submit(
            [f.path for f in files],
            fids,
            0,
            offs,
            lens,
            douts + np.uint64(ref.address),
            eng._read_mode,
            [ref, files],
            exact=True,
            io_paths=("posix",) * int(offs.size),
            file_index=np.repeat(np.arange(len(files), dtype=np.int64), counts),
        )

    def join(self, base: str, key: str) -> str:
        return os.path.join(base, key)

    def describe(self, key: str) -> str:
        return key


class StoreReader:
    """Objects of a :class:`~storecomp.store.base.Store` (ranged reads into the destination)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def size(self, key: str) -> int:
        return self.store.stat(key).size

    def read(self, key: str, offset: int, length: int) -> bytes:
        return self.store.get(key, offset, length)

    def submit(self, key: str, dst: Any, offsets: np.ndarray, lengths: np.ndarray, dst_offsets: np.ndarray) -> RangeFuture:
        return self.store.submit_ranges(key, offsets, lengths, dst, dst_offsets)

    def join(self, base: str, key: str) -> str:
        return f"{base.rstrip('/')}/{key}" if base else key

    def describe(self, key: str) -> str:
        return f"{self.store.url.rstrip('/')}/{key}"
