"""``storecomp.DataLoader``: batches read straight into their slots, on the device you name.

>>> loader = DataLoader("/data/ds", batch_size=64, seed=1, device="cuda")
>>> for batch in loader:          # dict of tensors, already on the device
...     loss = model(batch["x"]).sum()

Per batch: the sample indices (sorted, so neighbours merge) become one
native submission into a slot of one aligned staging pool (local files:
one for the whole batch, planned a window of batches at a time; a store:
one per object). On
the CPU the yielded tensors are views of that slot (no copy); the slot goes
back to the pool when the consumer drops the batch. On CUDA the slot is
copied to the device once (from pinned memory, on a side stream).

Several batches are in flight; the read-ahead grows when the consumer has
to wait for storage, up to what ``max_memory`` (bytes of staging) allows.
Host batches from local files are made in ``next()`` itself (the engine's
threads keep the read-ahead in flight; no second Python thread); store
reads and CUDA devices have a producer thread. Waits are blamed on what
the producer was doing meanwhile (storage, its own CPU work, the device
copy): see ``metrics()`` and ``steps()``.

This module is the consumer side and the run's state (epoch, position,
resume); the producer (thread or inline) is :mod:`._pipeline`, the read-ahead
controller :mod:`._readahead`, the counters :mod:`._metrics`.
"""

from __future__ import annotations

import atexit
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any, cast

from ..errors import InvalidArgumentError
from ..io import Engine, StagingPool
from . import _stalls
from ._metrics import LoaderMetrics
from ._pipeline import Inline, Plans, Producer, Threaded, record_consumer_stream
from ._plan import SlotLayout
from ._readahead import ReadAhead
from .datasets import Dataset, open_dataset
from .order import epoch_order, rank_steps
from .readers import capabilities

STATE_FORMAT = "storecomp.loader/1"


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank): torch.distributed when initialised, else RANK/WORLD_SIZE/LOCAL_RANK, else (0, 1, 0)."""
    try:
        import torch.distributed as td

        if td.is_available() and td.is_initialized():
            return td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    except ImportError:
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


class DataLoader:
    """Batches of ``dataset`` as dicts of tensors on ``device``.

    ``dataset``: a :class:`~storecomp.data.Dataset` or anything
    :func:`~storecomp.data.open_dataset` takes, with its options: ``seq_len``
    for token files; ``remote``, ``cache_dir``, ``cache_bytes`` and
    ``store_options`` for store URLs.
    Variable-length fields come as ``name`` (values) and ``name_offsets``
    (int64, batch + 1). ``shuffle_block``/``shuffle_window`` (samples) set the
    locality of the shuffle (defaults: blocks of about 1 MiB, windows of 16
    blocks). ``max_memory`` bounds the staging bytes. ``verify`` checks
    the per-record crc32c of shard datasets (the chunk sidecars of datasets
    read in place are checked by ``storecomp dataset verify``, not per batch);
    ``on_corrupt="skip"`` drops bad samples (counted in ``metrics()["corrupt_skipped"]``) instead of raising
    CorruptDataError. ``transform`` runs on each batch on the device.
    ``on_step`` is called with each step's record (see :meth:`steps`) once
    the consumer comes back for the next batch; ``step_log`` bounds the
    records kept (the most recent).

    Raises InvalidArgumentError for bad arguments (batch_size <= 0, an empty
    dataset, a budget too small for two batches).
    """

    def __init__(
        self,
        dataset: Dataset | str | os.PathLike[str],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        device: str | Any = "cpu",
        drop_last: bool = False,
        seq_len: int | None = None,
        shuffle_block: int | None = None,
        shuffle_window: int | None = None,
        max_memory: int | None = None,
        read_ahead: int | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        verify: bool = True,
        on_corrupt: str = "raise",
        rank: int | None = None,
        world_size: int | None = None,
        engine: Engine | None = None,
        progress: bool = False,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        step_log: int = 1024,
        remote: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_bytes: int | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        import torch

        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise InvalidArgumentError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(step_log, int) or step_log < 0:
            raise InvalidArgumentError(f"step_log must be an int >= 0 (records kept), got {step_log!r}")
        if on_corrupt not in ("raise", "skip"):
            raise InvalidArgumentError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        given: dict[str, Any] = {
            "remote": remote,
            "cache_dir": cache_dir,
            "cache_bytes": cache_bytes,
            "store_options": store_options,
        }
        opening = {k: v for k, v in given.items() if v is not None}
        if progress:
            _progress_bar_class()  # fail before opening anything
        if isinstance(dataset, Dataset):
            if opening or seq_len is not None:
                names = ", ".join(sorted(opening) + (["seq_len"] if seq_len is not None else []))
                raise InvalidArgumentError(f"{names}: options of open_dataset, but the dataset is already open")
            self.dataset = dataset
        else:
            self.dataset = open_dataset(dataset, seq_len=seq_len, **opening)
        self._caps = capabilities(self.dataset.reader)
        if engine is not None and self._caps.engine:
            reader: Any = self.dataset.reader  # capability-gated: self._caps.engine
            reader.use_engine(engine)
        if len(self.dataset) == 0:
            raise InvalidArgumentError("the dataset has zero samples: nothing to load")
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.drop_last = drop_last
        per_sample = max(1, self.dataset.sample_nbytes + sum(self.dataset.max_var_nbytes))
        self.shuffle_block = int(shuffle_block or max(1, min(256, (1 << 20) // per_sample)))
        self.shuffle_window = int(shuffle_window or 16 * self.shuffle_block)
        if self.shuffle_block <= 0 or self.shuffle_window <= 0:
            raise InvalidArgumentError("shuffle_block and shuffle_window must be positive")
        r, w, _ = dist_info()
        self.rank = r if rank is None else rank
        self.world_size = w if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise InvalidArgumentError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        self.layout = SlotLayout.for_dataset(self.dataset, batch_size)
        slot = self.layout.nbytes
        budget = max_memory if max_memory is not None else max(64 << 20, 3 * slot)
        self.max_slots = min(64, budget // slot)
        if self.max_slots < 2:
            raise InvalidArgumentError(
                f"max_memory={budget} bytes holds {self.max_slots} batch slot(s) of {slot} bytes; at least 2 are needed"
            )
        self.max_memory = budget
        self._read_ahead = ReadAhead(read_ahead, self.max_slots)
        self.transform = transform
        self.verify = verify
        self.on_corrupt = on_corrupt
        self.progress = progress
        self.on_step = on_step
        self._metrics = LoaderMetrics(step_log)
        self._producer = Producer(
            self.dataset,
            self.layout,
            verify=verify,
            on_corrupt=on_corrupt,
            device=self.device,
            read_ahead=self._read_ahead,
            metrics=self._metrics,
        )
        self.epoch = 0
        self.position = 0
        self._pool: StagingPool | None = None
        self._producers: set[Inline | Threaded] = set()
        _live_loaders.add(self)

    @property
    def read_ahead(self) -> int:
        """Batches kept in flight now (sized from measurements unless given)."""
        return self._read_ahead.depth

    # ------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Where the run is: epoch and global position (samples of the epoch's order consumed by all ranks)."""
        return {
            "format": STATE_FORMAT,
            "dataset": self.dataset.fingerprint,
            "num_samples": len(self.dataset),
            "seed": self.seed,
            "shuffle": self.shuffle,
            "shuffle_block": self.shuffle_block,
            "shuffle_window": self.shuffle_window,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (any world size or batch size).

        Raises InvalidArgumentError, saying why, when the state comes from
        another dataset, seed or shuffle setting.
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InvalidArgumentError(f"not a storecomp loader state (expected a dict with format {STATE_FORMAT!r})")
        mine = self.state_dict()
        for key, why in (
            ("dataset", "it was saved for another dataset"),
            ("num_samples", "it was saved for a dataset of another size"),
            ("seed", "it was saved with another seed"),
            ("shuffle", "it was saved with another shuffle setting"),
            ("shuffle_block", "it was saved with another shuffle_block"),
            ("shuffle_window", "it was saved with another shuffle_window"),
        ):
            if state.get(key) != mine[key]:
                raise InvalidArgumentError(f"cannot resume: {why} ({key}={state.get(key)!r}, this loader has {mine[key]!r})")
        pos = int(state["position"])
        if not 0 <= pos <= len(self.dataset) or int(state["epoch"]) < 0:
            raise InvalidArgumentError(f"cannot resume: position {pos} outside [0, {len(self.dataset)}]")
        self.epoch = int(state["epoch"])
        self.position = pos

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning at the next iteration."""
        self.epoch, self.position = int(epoch), 0

    def __len__(self) -> int:
        """Batches this rank yields in the rest of the current epoch."""
        return sum(
            1 for _ in rank_steps(len(self.dataset), self.position, self.batch_size, self.world_size, self.rank, self.drop_last)
        )

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._run_epoch()

    def _pool_for(self) -> StagingPool:
        if self._pool is None:
            engine = cast(Any, self.dataset.reader).engine if self._caps.engine else None
            self._pool = StagingPool(self.max_slots * self.layout.nbytes, self.layout.nbytes, engine=engine)
        return self._pool

    def _inline(self) -> bool:
        """Host batches from local files are made in next() itself (the engine's threads keep the
        read-ahead in flight); store reads and device copies have a producer thread."""
        return self._caps.native_batches and self.device.type == "cpu"

    def _run_epoch(self) -> Iterator[dict[str, Any]]:
        """The consumer side: take finished batches from the producer thread, in order."""
        if self.device.type == "cuda" and self.device.index is None:
            # The producer thread starts on device 0 (the current device is per
            # thread): name the consumer's current device (torch.cuda.set_device
            # of this rank) so batches land there, not on cuda:0.
            import torch

            self.device = torch.device("cuda", torch.cuda.current_device())
        self._producer.device = self.device
        if self._caps.page_cache_tier:
            # The page cache or O_DIRECT for this epoch (what is resident may have changed since the last).
            cast(Any, self.dataset.reader).choose_tier(self.dataset.keys())
        n = len(self.dataset)
        order = epoch_order(n, self.seed, self.epoch, shuffle=self.shuffle, block=self.shuffle_block, window=self.shuffle_window)
        steps = rank_steps(n, self.position, self.batch_size, self.world_size, self.rank, self.drop_last)
        plans = Plans(self._producer, order, steps)
        pool = self._pool_for()
        source: Inline | Threaded = (Inline if self._inline() else Threaded)(self._producer, plans, pool)
        bar = _progress_bar(self) if self.progress else None
        self._producers.add(source)
        try:
            metrics, clock = self._metrics, self._metrics.clock
            while True:
                t_enter = time.perf_counter()  # the consumer is blocked in next() from here
                stages_before = clock.causes()
                queued = -1 if source.inline else source.queued()  # inline: counted by get() itself
                got = source.get()
                if got is None:
                    break
                head, batch = got
                del got
                t_out = time.perf_counter()
                if queued < 0:
                    queued = source.ready_at_get
                # Inline, next() itself plans, checks and shapes: its time is blamed even when the reads were done.
                waited = queued == 0 or source.inline
                waits = _stalls.blame(t_out - t_enter, stages_before, clock.causes()) if waited else None
                self.position = head.end_position
                record = metrics.account(
                    head.plan.n, head.plan.nbytes, self.epoch, t_enter, t_out, queued, waits, self.read_ahead
                )
                self._read_ahead.resize(metrics, waits)
                if self.device.type == "cuda":
                    record_consumer_stream(batch, self.device)
                if self.transform is not None:
                    batch = self.transform(batch)
                if bar is not None:
                    bar.update(1)
                # Yield without keeping a reference in this frame: the slot must
                # come back as soon as the consumer drops the batch.
                holder = [batch]
                del batch
                yield holder.pop()
                metrics.step_done(record, time.perf_counter() - t_out, self.on_step)
            self.epoch += 1
            self.position = 0
        finally:
            source.stop()
            self._producers.discard(source)
            if bar is not None:
                bar.close()

    # ------------------------------------------------------------ metrics

    def steps(self) -> list[dict[str, Any]]:
        """The most recent steps (at most ``step_log``), oldest first, one dict each.

        Keys: ``step`` (counted since the loader was made), ``epoch``,
        ``samples``, ``data_wait_s`` (seconds blocked in ``next()``), its
        parts ``wait_storage_s``, ``wait_producer_cpu_s``, ``wait_h2d_s``,
        ``step_s`` (seconds the consumer spent on the batch; None until it
        asks for the next), ``read_ahead`` and ``queued`` (batches ready
        when it asked). For plotting data wait against steps.
        """
        return list(self._metrics.steps)

    def metrics(self) -> dict[str, Any]:
        """Counters since the loader was made (or :meth:`reset_metrics`).

        ``data_wait_s`` is the time the consumer blocked in ``next()``;
        ``data_wait_fraction`` its share of the wall time; ``gbps`` bytes
        delivered per second of wall time (1e9 bytes); ``storage_gbps`` bytes
        per second of storage busy time (the union of the batches' in-flight
        intervals); ``latency_s`` a batch's I/O time (moving average); ``queue_occupancy`` batches already read when
        the consumer asked. ``data_wait_storage_s``, ``data_wait_producer_cpu_s``
        and ``data_wait_h2d_s`` split the waits by what the producer did
        meanwhile; ``producer_s`` holds its seconds per stage (plan, io_wait,
        checksum, collate, h2d, idle) and ``producer_cpu_s`` their CPU part.
        ``bottleneck`` is ``consumer`` (data waits under 5 %), else the cause
        with the most wait: ``storage``, ``producer CPU (planning, checksums,
        collation)``, ``host-to-device`` (see :func:`_stalls.bottleneck`).
        ``tier`` is how local data is read (``buffered``: through the page
        cache, ``direct``: O_DIRECT; see :class:`~storecomp.io.PageCachePolicy`)
        and ``tier_reason`` why; ``read_path`` how the bytes are read (``mapped``:
        copies out of the engine's mappings of shards all in the page cache, with
        the checks in the same pass; ``buffered``; ``direct``; ``store``).
        ``pipeline`` is where batches are made:
        ``inline`` (in ``next()``, host batches from local files; the
        producer stages are then the consumer thread's own) or ``thread``.
        """
        pool = self._pool
        return self._metrics.snapshot(
            self._read_ahead.at_limit(self._metrics),
            read_ahead=self.read_ahead,
            max_slots=self.max_slots,
            staging_bytes=pool.nbytes if pool is not None else 0,
            max_memory=self.max_memory,
            tier=getattr(self.dataset.reader, "tier", "store"),
            tier_reason=getattr(self.dataset.reader, "tier_reason", "read through a Store"),
            read_path=getattr(self.dataset.reader, "read_path", "store"),
            pipeline="inline" if self._inline() else "thread",
        )

    def reset_metrics(self) -> None:
        """Zero the counters of :meth:`metrics` (the step log goes on)."""
        self._metrics.reset()

    def close(self) -> None:
        """Stop the producers of unfinished iterations, then release the staging pool and the
        engine's mappings of the data set's files.

        Memory goes when the last batch view is dropped. An iterator still
        held after close() raises ClosedError once the batches it had read are taken.
        """
        for source in list(self._producers):
            source.stop()  # waits for its reads in flight
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._caps.page_cache_tier:
            # Mapped reads and the cold epoch's population mapped the files: unmapped now, the
            # kernel may drop their pages from the page cache again.
            cast(Any, self.dataset.reader).release(self.dataset.keys())


_live_loaders: weakref.WeakSet[DataLoader] = weakref.WeakSet()


@atexit.register
def _stop_producers_at_exit() -> None:
    """Stop every loader's producer thread while the interpreter can still run it.

    A producer is a daemon thread, often waiting in the native engine with the
    GIL released; one that wakes after finalization has begun is ended by
    pthread_exit, whose unwinding through a destructor aborts the process
    ("terminate called without an active exception": a user who exits without
    close() saw it in about one exit in six).
    """
    for loader in list(_live_loaders):
        for source in list(loader._producers):
            source.stop(timeout=10)


def _progress_bar_class() -> Any:
    from ..optional import require

    return require("tqdm", "DataLoader(progress=True)").tqdm


def _progress_bar(loader: DataLoader) -> Any:
    return _progress_bar_class()(total=len(loader), unit="batch", desc=f"epoch {loader.epoch}")
