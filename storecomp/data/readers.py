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
from ..io import Engine, PageCachePolicy, TierChoice, as_buffer, default_engine
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

    Batches (:meth:`submit_many`) read through the page cache or with
    O_DIRECT as a :class:`~storecomp.io.PageCachePolicy` chooses for the data
    set (:meth:`choose_tier`, called by the DataLoader at each epoch): when
    the data fits the page-cache budget, buffered, so that later epochs run
    from memory; when it does not, O_DIRECT. ``tier`` and ``tier_reason``
    say which and why; the engine's ``direct`` option forces either
    (``off``: buffered, ``on``: O_DIRECT).
    """

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._policy: PageCachePolicy | None = None
        self._own_policy = False
        self.choice: TierChoice | None = None

    @property
    def engine(self) -> Engine:
        return self._engine or default_engine()

    @property
    def tier(self) -> str:
        """``buffered`` or ``direct`` once chosen; before, the engine's own ``direct`` mode (``auto``: RWF_NOWAIT first)."""
        return self.choice.tier if self.choice is not None else "auto"

    @property
    def tier_reason(self) -> str:
        return self.choice.reason if self.choice is not None else "no tier chosen yet (reads use the engine's direct mode)"

    def policy(self) -> PageCachePolicy:
        """The tier policy: the one set with :meth:`set_policy`, else one following the engine's ``direct`` option."""
        if self._policy is None or (not self._own_policy and self._policy.direct != self.engine.options.direct):
            self._policy = PageCachePolicy(self.engine.options.direct)
        return self._policy

    def set_policy(self, policy: PageCachePolicy) -> None:
        """Use ``policy`` for every later tier choice."""
        self._policy, self._own_policy = policy, True

    def choose_tier(self, keys: list[str], data_bytes: int | None = None) -> TierChoice:
        """Choose the tier for reading ``keys`` (``data_bytes`` of them; default all), again at each call."""
        self.choice = self.policy().choose(keys, data_bytes)
        return self.choice

    def _mode(self, eng: Engine) -> int:
        if self.choice is None:
            return eng._read_mode
        self.choice = self.policy().check(self.choice)
        return self.choice.mode

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

    def submit_many(
        self, dst: Any, reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], crc_steps: np.ndarray | None = None
    ) -> RangeFuture:
        """All ``reads`` (key, offsets, lengths, dst offsets) of a batch as one native submission.

        The engine's per-call cost is large next to a 4 KiB read (tens of
        microseconds), so a batch touching several shards is still one call.
        ``crc_steps`` (one per range, in order; 0: none): the engine's
        threads compute the crc32c of each chunk of that many bytes of the
        range as it lands (the future's ``checksums()``).
        """
        eng = self.engine
        mode = self._mode(eng)
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
            mode,
            [ref, files],
            exact=True,
            io_paths=("posix",) * int(offs.size),
            file_index=np.repeat(np.arange(len(files), dtype=np.int64), counts),
            crc_steps=crc_steps,
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
