"""``storecomp.DataLoader``: batches read straight into their slots, on the device you name.

>>> loader = DataLoader("/data/ds", batch_size=64, seed=1, device="cuda")
>>> for batch in loader:          # dict of tensors, already on the device
...     loss = model(batch["x"]).sum()

Per batch: the sample indices (sorted, so neighbours merge) become one
native submission per object into a slot of one aligned staging pool. On
the CPU the yielded tensors are views of that slot (no copy); the slot goes
back to the pool when the consumer drops the batch. On CUDA the slot is
copied to the device once (from pinned memory, on a side stream).

Several batches are in flight; the read-ahead grows when the consumer has
to wait for storage, up to what ``max_memory`` (bytes of staging) allows.
Waits are blamed on what the producer was doing meanwhile (storage, its own
CPU work, the device copy): see ``metrics()`` and ``steps()``.
"""

from __future__ import annotations

import collections
import gc
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ClosedError, InvalidArgumentError, StorecompError
from ..io import Engine, StagingPool
from . import _stalls
from ._plan import (
    BatchPlan,
    SlotLayout,
    build_tensors,
    column_keys,
    corrupt_error,
    crc_steps,
    drop_rows,
    find_corrupt,
    plan_batch,
    plan_window,
)
from .datasets import Dataset, open_dataset
from .order import epoch_order, rank_steps
from .readers import capabilities

STATE_FORMAT = "storecomp.loader/1"
WINDOW = 16  #: batches planned at once (vectorised) when the reader has native batches


@dataclass
class _InFlight:
    plan: BatchPlan
    slot: Any
    futures: list[Any]
    submitted: float
    end_position: int
    cpu_at_submit: float = 0.0  # producer CPU seconds (StageClock) when the reads were submitted
    done_at: float | None = None
    cpu_at_done: float = 0.0
    seen_waiting: bool = False  # completion observed while the producer waited on it: done_at is exact


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
            self.dataset.reader.use_engine(engine)
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
        if read_ahead is not None and (not isinstance(read_ahead, int) or read_ahead <= 0):
            raise InvalidArgumentError(f"read_ahead must be a positive int (batches) or None, got {read_ahead!r}")
        self.read_ahead = min(read_ahead or 2, self.max_slots - 1)
        self._adaptive = read_ahead is None
        self.transform = transform
        self.verify = verify
        self.on_corrupt = on_corrupt
        self.progress = progress
        self.on_step = on_step
        self._steps: collections.deque[dict[str, Any]] = collections.deque(maxlen=step_log)
        self._step_no = 0
        self._clock = _stalls.StageClock()
        self.epoch = 0
        self.position = 0
        self._pool: StagingPool | None = None
        self._copy_stream: Any = None
        self._producers: set[tuple[threading.Event, threading.Thread]] = set()
        self._outside = False
        self._consumer_waiting = False
        self._reset_metrics()

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
            engine = self.dataset.reader.engine if self._caps.engine else None
            self._pool = StagingPool(self.max_slots * self.layout.nbytes, self.layout.nbytes, engine=engine)
        return self._pool

    def _run_epoch(self) -> Iterator[dict[str, Any]]:
        """The consumer side: take finished batches from the producer thread, in order."""
        if self.device.type == "cuda" and self.device.index is None:
            # The producer thread starts on device 0 (the current device is per
            # thread): name the consumer's current device (torch.cuda.set_device
            # of this rank) so batches land there, not on cuda:0.
            import torch

            self.device = torch.device("cuda", torch.cuda.current_device())
        if self._caps.page_cache_tier:
            # The page cache or O_DIRECT for this epoch (what is resident may have changed since the last).
            self.dataset.reader.choose_tier(self.dataset.keys())
        n = len(self.dataset)
        order = epoch_order(n, self.seed, self.epoch, shuffle=self.shuffle, block=self.shuffle_block, window=self.shuffle_window)
        plans = _Plans(self, order, rank_steps(n, self.position, self.batch_size, self.world_size, self.rank, self.drop_last))
        pool = self._pool_for()
        ready: queue.Queue[Any] = queue.Queue()
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(plans, pool, ready, stop), name="storecomp-loader", daemon=True)
        bar = _progress_bar(self) if self.progress else None
        producer.start()
        running = (stop, producer)
        self._producers.add(running)
        try:
            while True:
                t_enter = time.perf_counter()  # the consumer is blocked in next() from here
                stages_before = self._clock.read()
                queued = ready.qsize()
                self._consumer_waiting = True
                got = ready.get()
                self._consumer_waiting = False
                if got is _END:
                    break
                if isinstance(got, _Failure):
                    raise got.error
                head, batch = got
                del got
                t_out = time.perf_counter()
                waits = _stalls.blame(t_out - t_enter, stages_before, self._clock.read()) if queued == 0 else None
                self.position = head.end_position
                record = self._account(head, t_enter, t_out, queued, waits)
                self._size_read_ahead(waits is not None and self._storage_is_the_cause(waits))
                if self.device.type == "cuda":
                    _record_consumer_stream(batch, self.device)
                if self.transform is not None:
                    batch = self.transform(batch)
                if bar is not None:
                    bar.update(1)
                # Yield without keeping a reference in this frame: the slot must
                # come back as soon as the consumer drops the batch.
                holder = [batch]
                del batch
                yield holder.pop()
                record["step_s"] = time.perf_counter() - t_out
                self._m["step_s"] += record["step_s"]
                if self.on_step is not None:
                    self.on_step(record)
            self.epoch += 1
            self.position = 0
        finally:
            stop.set()
            producer.join()
            self._producers.discard(running)
            while not ready.empty():  # batches read ahead but never delivered: their slots come back
                ready.get_nowait()
            if bar is not None:
                bar.close()

    def _produce(self, plans: _Plans, pool: StagingPool, ready: queue.Queue[Any], stop: threading.Event) -> None:
        """The producer thread: keep ``read_ahead`` batches submitted, then check, shape and hand them over in order.

        Planning, submission, checksums and the device copy all happen here,
        so the consumer's ``next()`` only takes a finished batch.
        """
        inflight: collections.deque[_InFlight] = collections.deque()
        clock = self._clock
        try:
            while not stop.is_set():
                while len(inflight) + ready.qsize() < self.read_ahead and plans.more():
                    clock.enter("plan")
                    blocking = not inflight and ready.empty() and self._consumer_waiting
                    item = self._submit_next(plans, pool, blocking)
                    if item is None:
                        break
                    inflight.append(item)
                if inflight:
                    head = inflight[0]
                    self._poll(inflight, waited=False)  # reads that finished while the producer worked
                    clock.enter("io_wait")
                    if not _wait(head, 0.005):  # short slices: honour stop, reuse freed slots
                        self._poll(inflight, waited=True)
                        continue
                    self._poll(inflight, waited=True)
                    inflight.popleft()
                    batch = self._complete(head)
                    clock.enter(None)
                    ready.put((head, batch))
                    del batch
                elif not plans.more():
                    clock.enter(None)
                    ready.put(_END)
                    return
                else:
                    clock.enter("idle")
                    time.sleep(0.001)  # every slot is with the consumer: wait for one to come back
            # Stopped: by the consumer (which reads no further) or by close().
            ready.put(_Failure(ClosedError("the DataLoader was closed during this iteration")))
        except BaseException as e:  # handed to the consumer, raised from next()
            ready.put(_Failure(e))
        finally:
            clock.enter(None)
            for item in inflight:
                for f in item.futures:
                    try:
                        f.result()
                    except StorecompError:
                        pass
                item.slot.release()

    def _submit_next(self, plans: _Plans, pool: StagingPool, blocking: bool) -> _InFlight | None:
        if not plans.more():
            return None
        slot: Any
        try:
            slot = pool.acquire(timeout=0)
        except TimeoutError:
            if not blocking:
                return None
            # Nothing in flight and every slot is held by the consumer (it keeps
            # batches, e.g. list(loader)). Never deadlock: once garbage is
            # collected, read this batch into memory of its own, outside the
            # staging budget, owned by the batch (counted in metrics).
            if not self._outside:  # collect once per streak: gc.collect costs tens of ms
                gc.collect()
            try:
                slot = pool.acquire(timeout=0.01)
                self._outside = False
            except TimeoutError:
                slot = _OwnSlot(self.layout.nbytes)
                self._outside = True
                self._m["batches_outside_staging"] += 1
        futures = []
        try:
            plan, end, files = plans.next()
            submitted = time.perf_counter()
            reader = self.dataset.reader
            flat = plan.flat
            if flat is not None:
                futures.append(
                    reader.submit_flat(slot.array, files, flat.file_index, flat.offsets, flat.lengths, flat.dst, flat.crc_steps)
                )
            elif self._caps.native_batches and plan.reads:
                futures.append(reader.submit_many(slot.array, plan.reads, crc_steps(plan)))
            else:
                for key, offs, lens, dst in plan.reads:
                    futures.append(reader.submit(key, slot.array, offs, lens, dst))
        except BaseException:
            for f in futures:  # the reads already submitted land in the slot before it is reused
                try:
                    f.result()
                except Exception:
                    pass  # the error being raised is the one that counts
            slot.release()
            raise
        return _InFlight(plan, slot, futures, submitted, end, cpu_at_submit=self._clock.cpu())

    def _complete(self, item: _InFlight) -> dict[str, Any]:
        import torch

        try:
            for f in item.futures:
                f.result()
        except BaseException:
            item.slot.release()
            raise
        if item.done_at is None:
            item.done_at, item.cpu_at_done = time.perf_counter(), self._clock.cpu()
        self._busy(item)
        plan = item.plan
        self._clock.enter("checksum")
        if plan.flat is not None:
            bad = plan.flat.corrupt(item.futures[0].checksums()) if plan.verified else []
        else:
            crcs = _engine_crcs(item.futures) if plan.checks else None
            bad = find_corrupt(plan, item.slot.array, crcs) if plan.checks else []
        self._clock.enter("collate")
        if bad and self.on_corrupt == "raise":
            item.slot.release()
            raise corrupt_error(self.dataset, plan, bad)
        # A fresh array per batch whose lifetime is the batch's: when the
        # consumer drops every tensor of the batch, the slot is reused.
        owner = np.frombuffer(memoryview(item.slot.array), np.uint8)
        weakref.finalize(owner, item.slot.release)
        host = torch.from_numpy(owner)
        del owner
        if self.device.type == "cpu":
            batch = build_tensors(self.dataset, self.layout, plan, host)
        else:
            batch = self._to_device(plan, host)
        if bad:
            keep = np.ones(plan.n, bool)
            keep[[i for i, _ in bad]] = False
            self._m["corrupt_skipped"] += len(bad)
            batch = drop_rows(batch, self.dataset, keep)
            if self.device.type == "cuda":  # the row selection ran on this thread's stream, not the consumer's
                torch.cuda.current_stream(self.device).synchronize()
        return batch

    def _to_device(self, plan: BatchPlan, host: Any) -> dict[str, Any]:
        """One copy of the used part of the slot to the device (pinned memory, side stream), then views."""
        import torch

        t0 = time.perf_counter()
        used = max([s + plan.n * c.nbytes for s, c in zip(self.layout.columns, self.dataset.columns, strict=True)] + [0])
        used = max([used] + [s + int(v.sum()) for s, v in zip(self.layout.vars, plan.var_lengths, strict=True)])
        if self.device.type == "cuda":
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            self._clock.enter("h2d")
            with torch.cuda.stream(self._copy_stream):
                dev = host[:used].to(self.device, non_blocking=True)
            # The copy is complete once this returns: the slot may be reused and
            # the consumer (another thread, any stream) needs no event. The
            # consumer's stream is recorded on the batch when it is handed over
            # (_record_consumer_stream), so the memory is not reused by the next
            # copy while the consumer's kernels still read it.
            self._copy_stream.synchronize()
        else:
            self._clock.enter("h2d")
            dev = host[:used].to(self.device)
        self._m["h2d_s"] += time.perf_counter() - t0
        self._clock.enter("collate")
        return build_tensors(self.dataset, self.layout, plan, dev)

    # ------------------------------------------------------------ coordination

    def _poll(self, pending: collections.deque[_InFlight], waited: bool) -> None:
        """Note when in-flight batches completed: exactly (to a 5 ms slice) when the producer
        was waiting on storage, else at most as late as the producer's last CPU stage."""
        now, cpu = time.perf_counter(), self._clock.cpu()
        for item in pending:
            if item.done_at is None and _done(item):
                item.done_at, item.cpu_at_done, item.seen_waiting = now, cpu, waited

    def _busy(self, item: _InFlight) -> None:
        """Storage busy time: the union of the batches' in-flight intervals (they overlap).

        A batch's I/O latency is submission to completion; when the completion
        was only seen after the producer's own CPU work, that work is taken
        out (the reads may have finished long before it), so producer CPU
        never reads as storage latency.
        """
        m = self._m
        end = item.done_at or time.perf_counter()
        m["io_busy_s"] += max(0.0, end - max(item.submitted, m["io_last_end"]))
        m["io_last_end"] = max(m["io_last_end"], end)
        lat = end - item.submitted
        if not item.seen_waiting:
            lat = max(0.0, lat - (item.cpu_at_done - item.cpu_at_submit))
        m["latency_ema"] = lat if not m["latency_ema"] else 0.8 * m["latency_ema"] + 0.2 * lat

    def _storage_is_the_cause(self, waits: dict[str, float]) -> bool:
        """This wait, and the waits so far, were mostly the producer waiting on storage."""
        m, total = self._m, sum(waits.values())
        so_far = sum(m[f"wait_{cause}_s"] for cause in _stalls.CAUSES)
        return total > 0 and waits["storage"] >= 0.5 * total and m["wait_storage_s"] >= 0.5 * so_far

    def _size_read_ahead(self, storage_wait: bool) -> None:
        """Batches in flight: enough to cover one batch's I/O latency with consumer steps, within max_memory.

        Needed depth = ceil(2 x latency / consumer step) + 1, from measured
        averages; a wait blamed on storage that still happens doubles it
        (waits for the producer's CPU or the device copy do not: more depth
        would not help). It never shrinks within a run; one slot stays with
        the consumer (the batch it holds).
        """
        if not self._adaptive:
            return
        m = self._m
        n = max(1.0, m["batches"])
        step = (m["step_s"] + m["wait_s"]) / n  # consumer time per batch, including what it waited
        need = self.read_ahead
        if step > 0 and m["latency_ema"] > 0:
            # 2x the mean latency: storage latency has a long tail.
            need = max(need, int(np.ceil(2 * m["latency_ema"] / step)) + 1)
        if storage_wait and m["batches"] > 1:
            need = max(need, 2 * self.read_ahead)  # a wait despite the estimate: grow fast
        self.read_ahead = int(min(max(1, need), self.max_slots - 1))

    # ------------------------------------------------------------ metrics

    def _reset_metrics(self) -> None:
        self._m: dict[str, float] = collections.defaultdict(float)
        self._clock.reset()

    def _account(self, item: _InFlight, t0: float, t1: float, ready: int, waits: dict[str, float] | None) -> dict[str, Any]:
        """Add one delivered batch to the counters; returns its step record (kept in the step log)."""
        m = self._m
        m["batches"] += 1
        m["samples"] += item.plan.n
        m["bytes"] += item.plan.nbytes
        m["wait_s"] += t1 - t0
        m["ready_sum"] += ready
        m["waited_batches"] += int(waits is not None)
        if waits is None:  # a batch was ready: the short wait is the hand-over itself
            waits = dict.fromkeys(_stalls.CAUSES, 0.0)
        for cause, s in waits.items():
            m[f"wait_{cause}_s"] += s
        if m["batches"] <= 10:
            m["wait_s_first10"] += t1 - t0
        record = _stalls.step_record(self._step_no, self.epoch, item.plan.n, t1 - t0, waits, self.read_ahead, ready)
        self._step_no += 1
        self._steps.append(record)
        return record

    def steps(self) -> list[dict[str, Any]]:
        """The most recent steps (at most ``step_log``), oldest first, one dict each.

        Keys: ``step`` (counted since the loader was made), ``epoch``,
        ``samples``, ``data_wait_s`` (seconds blocked in ``next()``), its
        parts ``wait_storage_s``, ``wait_producer_cpu_s``, ``wait_h2d_s``,
        ``step_s`` (seconds the consumer spent on the batch; None until it
        asks for the next), ``read_ahead`` and ``queued`` (batches ready
        when it asked). For plotting data wait against steps.
        """
        return list(self._steps)

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
        and ``tier_reason`` why.
        """
        m = self._m
        b = max(1.0, m["batches"])
        wall = m["wait_s"] + m["step_s"]  # consumer time covered by the batches delivered
        wait = m["wait_s"]
        frac = wait / wall if wall > 0 else 0.0
        after10 = max(0.0, wall - m["wait_s_first10"])
        h2d, io = m["h2d_s"], m["io_busy_s"]
        waits = {cause: m[f"wait_{cause}_s"] for cause in _stalls.CAUSES}
        at_limit = self.read_ahead >= self.max_slots - 1 and m["latency_ema"] > 0
        hint = _stalls.bottleneck(frac, waits, at_limit)
        stages = self._clock.read()
        pool = self._pool
        return {
            "batches": int(m["batches"]),
            "samples": int(m["samples"]),
            "bytes": int(m["bytes"]),
            "wall_s": wall,
            "data_wait_s": wait,
            "data_wait_fraction": frac,
            "data_wait_fraction_after_10": (wait - m["wait_s_first10"]) / after10 if after10 > 0 else 0.0,
            "step_s": m["step_s"] / b,
            "gbps": m["bytes"] / wall / 1e9 if wall > 0 else 0.0,
            "samples_per_s": m["samples"] / wall if wall > 0 else 0.0,
            "storage_gbps": m["bytes"] / io / 1e9 if io > 0 else 0.0,
            "h2d_s": h2d,
            "data_wait_storage_s": waits["storage"],
            "data_wait_producer_cpu_s": waits["producer_cpu"],
            "data_wait_h2d_s": waits["h2d"],
            "producer_s": stages,
            "producer_cpu_s": sum(stages[s] for s in _stalls.CPU_STAGES),
            "latency_s": m["latency_ema"],
            "queue_occupancy": m["ready_sum"] / b,
            "read_ahead": self.read_ahead,
            "max_slots": self.max_slots,
            "staging_bytes": (pool.nbytes if pool is not None else 0),
            "max_memory": self.max_memory,
            "corrupt_skipped": int(m["corrupt_skipped"]),
            "batches_outside_staging": int(m["batches_outside_staging"]),
            "bottleneck": hint,
            "tier": getattr(self.dataset.reader, "tier", "store"),
            "tier_reason": getattr(self.dataset.reader, "tier_reason", "read through a Store"),
        }

    def reset_metrics(self) -> None:
        self._reset_metrics()

    def close(self) -> None:
        """Stop the producers of unfinished iterations, then release the staging pool.

        Memory goes when the last batch view is dropped. An iterator still
        held after close() raises ClosedError once the batches it had read are taken.
        """
        for stop, producer in list(self._producers):
            stop.set()  # the producer waits for its reads in flight before it exits
            producer.join()
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class _OwnSlot:
    """Aligned memory for one batch when the consumer holds every staging slot."""

    def __init__(self, nbytes: int) -> None:
        from ..io import HostBuffer

        self._buffer = HostBuffer(nbytes)
        self.array: np.ndarray = np.frombuffer(self._buffer, np.uint8)  # type: ignore[call-overload]

    def release(self) -> None:
        pass


_END = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _wait(item: _InFlight, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for every read of ``item``; True when all are done."""
    deadline = time.perf_counter() + timeout
    for f in item.futures:
        if f.done():
            continue
        wait = getattr(f, "wait", None)
        left = max(0.0, deadline - time.perf_counter())
        if wait is not None:
            if not wait(left):
                return False
        else:
            try:
                f.result(timeout=left)
            except TimeoutError:
                return False
            except BaseException:
                pass  # raised again, with its context, by _complete
    return True


def _record_consumer_stream(batch: dict[str, Any], device: Any) -> None:
    """Tie the batch's device memory to the consumer's current stream.

    The batch was allocated on the producer's streams; without this, the
    caching allocator would hand its memory to the next host-to-device copy
    as soon as the consumer drops the batch, while kernels the consumer
    queued on its own stream may still be reading it.
    """
    import torch

    stream = torch.cuda.current_stream(device)
    for t in batch.values():
        if isinstance(t, torch.Tensor) and t.is_cuda:
            t.record_stream(stream)


def _engine_crcs(futures: list[Any]) -> np.ndarray | None:
    """The per-sample crc32c the engine computed for a batch read with one local submission, else None."""
    if len(futures) != 1 or not hasattr(futures[0], "checksums"):
        return None
    crcs = futures[0].checksums()
    return crcs if crcs.size else None


def _done(item: _InFlight) -> bool:
    return all(f.done() for f in item.futures)


class _Plans:
    """The plans of one epoch's batches for this rank, in order, made ahead a window at a time.

    With native batches and fixed-size columns, a window of batches is
    planned at once (vectorised, :func:`plan_window`) and its files opened
    once; otherwise one batch at a time (:func:`plan_batch`).
    """

    def __init__(self, loader: DataLoader, order: np.ndarray, steps: Iterator[tuple[int, int, int]]) -> None:
        self._loader = loader
        self._order = order
        self._steps = _Lookahead(steps)
        self._ready: collections.deque[tuple[BatchPlan, int, Any]] = collections.deque()
        ds = loader.dataset
        self._windowed = capabilities(ds.reader).native_batches and not ds.var_fields
        self._keys = column_keys(ds) if self._windowed else None

    def more(self) -> bool:
        return bool(self._ready) or self._steps.peek() is not None

    def next(self) -> tuple[BatchPlan, int, Any]:
        """The next batch's plan, its end position in the epoch and the open files it reads (or None)."""
        if not self._ready:
            lo = self._loader
            want = min(WINDOW, max(2, 2 * lo.read_ahead)) if self._windowed else 1
            taken = []
            while len(taken) < want and self._steps.peek() is not None:
                taken.append(next(self._steps))
            if not taken:
                raise StopIteration
            batches = [np.sort(self._order[first : first + count]) for first, count, _ in taken]
            if self._keys is not None:
                plans = plan_window(lo.dataset, lo.layout, batches, lo.verify, self._keys)
                flat = plans[0].flat
                files = lo.dataset.reader.open_files(flat.keys) if flat is not None and flat.keys else None
                self._ready.extend((p, t[2], files) for p, t in zip(plans, taken, strict=True))
            else:
                self._ready.extend(
                    (plan_batch(lo.dataset, lo.layout, b, lo.verify), t[2], None) for b, t in zip(batches, taken, strict=True)
                )
        return self._ready.popleft()


class _Lookahead:
    def __init__(self, it: Iterator[tuple[int, int, int]]) -> None:
        self._it = it
        self._next: tuple[int, int, int] | None = None
        self._have = False

    def peek(self) -> tuple[int, int, int] | None:
        if not self._have:
            self._next = next(self._it, None)
            self._have = True
        return self._next

    def __iter__(self) -> _Lookahead:
        return self

    def __next__(self) -> tuple[int, int, int]:
        item = self.peek()
        self._have = False
        if item is None:
            raise StopIteration
        return item


def _progress_bar_class() -> Any:
    from ..optional import require

    return require("tqdm", "DataLoader(progress=True)").tqdm


def _progress_bar(loader: DataLoader) -> Any:
    return _progress_bar_class()(total=len(loader), unit="batch", desc=f"epoch {loader.epoch}")
