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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..errors import InvalidArgumentError, NotFoundError
from ..io import Engine, PageCachePolicy, TierChoice, as_buffer, default_engine
from ..store.base import RangeFuture, Store


@dataclass(frozen=True)
class ReaderCapabilities:
    """What a reader can do beyond the :class:`Reader` protocol (the DataLoader asks, never checks types).

    ``native_batches``: :meth:`LocalReader.open_files` and :meth:`LocalReader.submit_flat` read a
    whole batch over many objects as one native submission, with crc32c on the engine's threads.
    ``page_cache_tier``: :meth:`LocalReader.choose_tier` picks buffered or O_DIRECT reads per epoch.
    ``store_batches``: ``submit_many`` (without engine checksums) over a Store's ``submit_batch``.
    ``engine``: reads run on a storecomp :class:`~storecomp.io.Engine` (``reader.engine``; staging
    slots are registered with it, and ``use_engine`` replaces it).
    """

    native_batches: bool = False
    page_cache_tier: bool = False
    engine: bool = False
    #: :meth:`StoreReader.submit_many` reads a batch over many objects through the store's ``submit_batch``
    #: (one native submission for an EncryptedStore over a LocalStore).
    store_batches: bool = False


#: A reader that only has the :class:`Reader` protocol (no ``capabilities`` attribute).
NO_CAPABILITIES = ReaderCapabilities()


def capabilities(reader: Any) -> ReaderCapabilities:
    """``reader.capabilities``, or none for readers that do not declare any."""
    caps = getattr(reader, "capabilities", None)
    return caps if isinstance(caps, ReaderCapabilities) else NO_CAPABILITIES


class Reader(Protocol):
    """What a dataset needs from its storage (capabilities beyond it: :class:`ReaderCapabilities`)."""

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
    (``off``: buffered, ``on``: O_DIRECT). A buffered choice over files that
    are all in the page cache reads them ``mapped`` (:attr:`read_path`; the
    engine's ``mapped`` option turns it off).
    """

    capabilities = ReaderCapabilities(native_batches=True, page_cache_tier=True, engine=True)

    def __init__(self, engine: Engine | None = None) -> None:
        self._engine = engine
        self._policy: PageCachePolicy | None = None
        self._own_policy = False
        self.choice: TierChoice | None = None

    @property
    def engine(self) -> Engine:
        return self._engine or default_engine()

    def use_engine(self, engine: Engine) -> None:
        """Read through ``engine`` from now on."""
        self._engine = engine

    @property
    def tier(self) -> str:
        """``buffered`` or ``direct`` once chosen; before, the engine's own ``direct`` mode (``auto``: RWF_NOWAIT first)."""
        return self.choice.tier if self.choice is not None else "auto"

    @property
    def read_path(self) -> str:
        """How batches are read now: ``mapped`` (copies out of the engine's mappings of resident files),
        ``buffered`` (``preadv`` through the page cache), ``direct`` (O_DIRECT), or ``auto`` before a choice."""
        return self.choice.read_path if self.choice is not None else "auto"

    @property
    def tier_reason(self) -> str:
        return self.choice.reason if self.choice is not None else "no tier chosen yet (reads use the engine's direct mode)"

    def policy(self) -> PageCachePolicy:
        """The tier policy: the one set with :meth:`set_policy`, else one following the engine's ``direct`` option."""
        opts = self.engine.options
        if self._policy is None or (
            not self._own_policy and (self._policy.direct, self._policy.mapped) != (opts.direct, opts.mapped)
        ):
            self._policy = PageCachePolicy(opts.direct, mapped=opts.mapped)
        return self._policy

    def set_policy(self, policy: PageCachePolicy) -> None:
        """Use ``policy`` for every later tier choice."""
        self._policy, self._own_policy = policy, True

    def choose_tier(self, keys: list[str], data_bytes: int | None = None) -> TierChoice:
        """Choose the tier for reading ``keys`` (``data_bytes`` of them; default all), again at each call."""
        self.choice = self.policy().choose(keys, data_bytes)
        return self.choice

    def _mode(self, eng: Engine) -> int:
        choice = self.choice
        if choice is None:
            return eng._read_mode
        if choice.tier == "buffered" and not choice.forced:  # only a buffered choice moves (memory pressure)
            self.choice = choice = self.policy().check(choice)
        return choice.mode

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

    def open_files(self, keys: Sequence[str]) -> OpenFiles:
        """The files behind ``keys``, open (reused from the engine's cache), for :meth:`submit_flat`."""
        eng = self.engine
        files = [eng.cached_file(key) for key in keys]
        return OpenFiles(eng, files, np.array([f._check_open() for f in files], np.uint32), [f.path for f in files])

    def submit_flat(
        self,
        dst: Any,
        files: OpenFiles,
        file_index: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        dst_offsets: np.ndarray,
        crc_steps: np.ndarray | None = None,
        dst_end: int | None = None,
    ) -> RangeFuture:
        """Ranges of several files (``file_index`` into ``files``; uint64 byte offsets, lengths, offsets in ``dst``)
        as one native submission into host memory ``dst``.

        The engine's per-call cost is large next to a 4 KiB read (tens of
        microseconds), so a batch touching several shards is still one call.
        ``crc_steps`` (one per range, in order; 0: none): the engine's
        threads compute the crc32c of each chunk of that many bytes of the
        range as it lands (the future's ``checksums()``); ``dst_end``: ``max(dst_offsets + lengths)``
        when the caller has it (a plan computes it for a window at once). ``dst`` may be a
        :class:`~storecomp.io.BufferRef`. Raises InvalidArgumentError for a CUDA or too small destination.
        """
        eng = files.engine
        ref = as_buffer(dst)
        if ref.is_cuda:
            raise InvalidArgumentError("submit_flat reads into host memory (staging slots)")
        if dst_offsets.size:
            need = int((dst_offsets + lengths).max()) if dst_end is None else dst_end
            if need > ref.nbytes:
                raise InvalidArgumentError(f"destination too small: reads need {need} bytes of {ref.nbytes}")
        return eng._submit(
            files.paths,
            files.ids[file_index],
            0,
            offsets,
            lengths,
            dst_offsets + np.uint64(ref.address),
            self._mode(eng),
            [ref, files.files],
            exact=True,
            io_paths=("posix",) * int(offsets.size),
            file_index=file_index,
            crc_steps=crc_steps,
        )

    def submit_many(
        self, dst: Any, reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], crc_steps: np.ndarray | None = None
    ) -> RangeFuture:
        """All ``reads`` (key, offsets, lengths, dst offsets) of a batch as one native submission (:meth:`submit_flat`)."""
        files = self.open_files([key for key, *_ in reads])
        counts = np.array([r[1].size for r in reads], np.int64)
        return self.submit_flat(
            dst,
            files,
            np.repeat(np.arange(len(reads), dtype=np.int64), counts),
            np.concatenate([r[1] for r in reads]).astype(np.uint64, copy=False),
            np.concatenate([r[2] for r in reads]).astype(np.uint64, copy=False),
            np.concatenate([r[3] for r in reads]).astype(np.uint64, copy=False),
            crc_steps,
        )

    def join(self, base: str, key: str) -> str:
        return os.path.join(base, key)

    def describe(self, key: str) -> str:
        return key

    def release(self, keys: Sequence[str]) -> None:
        """Drop the engine's mappings of ``keys`` (a closed loader leaves their pages unmapped,
        free for the page cache to drop)."""
        self.engine.release_mappings(keys)


@dataclass
class OpenFiles:
    """Files opened by :meth:`LocalReader.open_files`: the engine, the Files, their native ids and paths."""

    engine: Engine
    files: list[Any]
    ids: np.ndarray
    paths: list[str]


class StoreReader:
    """Objects of a :class:`~storecomp.store.base.Store` (ranged reads into the destination)."""

    capabilities = ReaderCapabilities(store_batches=True)

    def __init__(self, store: Store) -> None:
        self.store = store

    def submit_many(
        self, dst: Any, reads: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], crc_steps: np.ndarray | None = None
    ) -> RangeFuture:
        """All ``reads`` (key, offsets, lengths, dst offsets) of a batch through :meth:`Store.submit_batch`
        (``crc_steps`` is not used: the caller checks what it must)."""
        return self.store.submit_batch(reads, dst)

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
