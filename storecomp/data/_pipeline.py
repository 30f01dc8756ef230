"""The DataLoader's producer pipeline: plan, submit, wait, check, shape, hand over, in order.

One :class:`Producer` per loader runs one thread per iteration
(:meth:`Producer.run`): it keeps the read-ahead depth of batches submitted
(each one native submission into a staging slot when the reader has native
batches), then checks each finished batch (crc32c computed by the engine's
threads), shapes it into tensors (views of the slot, or one copy to the
device) and hands it to the consumer through a queue. :class:`Plans` makes
the plans a window of batches at a time.
"""

from __future__ import annotations

import collections
import gc
import queue
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ClosedError, StorecompError
from ..io import BufferRef, StagingPool
from . import _stalls
from ._metrics import LoaderMetrics
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
from ._readahead import ReadAhead
from .datasets import Dataset
from .readers import capabilities

WINDOW = 64  #: batches planned at once (vectorised) when the reader has native batches


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


class Producer:
    """Reads batches of ``dataset`` into slots of a staging pool and hands them over, in order.

    ``device`` is where batches land (the loader sets it before each
    iteration); ``read_ahead`` bounds the batches in flight; the counters
    go to ``metrics``. ``consumer_waiting`` is set by the consumer while it
    blocks on the queue (then, with every slot held, a batch is read into
    memory of its own rather than deadlock).
    """

    def __init__(
        self,
        dataset: Dataset,
        layout: SlotLayout,
        *,
        verify: bool,
        on_corrupt: str,
        device: Any,
        read_ahead: ReadAhead,
        metrics: LoaderMetrics,
    ) -> None:
        self.dataset = dataset
        self.layout = layout
        self.verify = verify
        self.on_corrupt = on_corrupt
        self.device = device
        self.read_ahead = read_ahead
        self.metrics = metrics
        self.consumer_waiting = False
        self._caps = capabilities(dataset.reader)
        self._copy_stream: Any = None
        self._outside = False

    @property
    def _clock(self) -> _stalls.StageClock:
        return self.metrics.clock

    @property
    def _m(self) -> dict[str, float]:
        return self.metrics.m

    def run(self, plans: Plans, pool: StagingPool, ready: queue.Queue[Any], stop: threading.Event) -> None:
        """The producer thread: keep ``read_ahead`` batches submitted, then check, shape and hand them over in order.

        Planning, submission, checksums and the device copy all happen here,
        so the consumer's ``next()`` only takes a finished batch.
        """
        inflight: collections.deque[_InFlight] = collections.deque()
        clock = self._clock
        try:
            while not stop.is_set():
                while len(inflight) + ready.qsize() < self.read_ahead.depth and plans.more():
                    clock.enter("plan")
                    blocking = not inflight and ready.empty() and self.consumer_waiting
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
                    ready.put(END)
                    return
                else:
                    clock.enter("idle")
                    time.sleep(0.001)  # every slot is with the consumer: wait for one to come back
            # Stopped: by the consumer (which reads no further) or by close().
            ready.put(Failure(ClosedError("the DataLoader was closed during this iteration")))
        except BaseException as e:  # handed to the consumer, raised from next()
            ready.put(Failure(e))
        finally:
            clock.enter(None)
            for item in inflight:
                _drain(item)

    def _submit_next(self, plans: Plans, pool: StagingPool, blocking: bool) -> _InFlight | None:
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
            reader: Any = self.dataset.reader  # its capabilities say which submit methods it has
            flat = plan.flat
            if flat is not None:
                # The slot described without as_buffer's probing (a staging slot: host memory, writable).
                ref = BufferRef(slot.address, slot.nbytes, "cpu", 0, False, slot.array)
                futures.append(
                    reader.submit_flat(
                        ref, files, flat.file_index, flat.offsets, flat.lengths, flat.dst, flat.crc_steps, dst_end=flat.dst_end
                    )
                )
            elif (self._caps.native_batches or self._caps.store_batches) and plan.reads:
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
        plan = item.plan
        crcs = None
        try:
            if plan.flat is not None and plan.verified:
                crcs = item.futures[0].checksums()  # its one read's result, raised like result()
            else:
                for f in item.futures:
                    f.result()
        except BaseException:
            item.slot.release()
            raise
        if item.done_at is None:
            item.done_at, item.cpu_at_done = time.perf_counter(), self._clock.cpu()
        self.metrics.busy(item.submitted, item.done_at, item.seen_waiting, item.cpu_at_submit, item.cpu_at_done)
        self._clock.enter("checksum")
        if plan.flat is not None:
            bad = plan.flat.corrupt(crcs) if plan.verified else []
        else:
            crcs = _engine_crcs(item.futures) if plan.checks else None
            bad = find_corrupt(plan, item.slot.array, crcs) if plan.checks else []
        self._clock.enter("collate")
        if bad and self.on_corrupt == "raise":
            item.slot.release()
            raise corrupt_error(self.dataset, plan, bad)
        # A fresh array per batch whose lifetime is the batch's: when the
        # consumer drops every tensor of the batch, the slot is reused. The
        # finalizer sits on the array's buffer export (a memoryview), which
        # every view of it keeps alive, however numpy chains their bases.
        owner = np.frombuffer(memoryview(item.slot.array), np.uint8)
        weakref.finalize(owner.base, item.slot.release)
        if self.device.type == "cpu":
            batch = build_tensors(self.dataset, self.layout, plan, owner)
        else:
            import torch

            batch = self._to_device(plan, torch.from_numpy(owner))
        del owner
        if bad:
            keep = np.ones(plan.n, bool)
            keep[[i for i, _ in bad]] = False
            self._m["corrupt_skipped"] += len(bad)
            batch = drop_rows(batch, self.dataset, keep)
            if self.device.type == "cuda":  # the row selection ran on this thread's stream, not the consumer's
                import torch

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

    def _poll(self, pending: collections.deque[_InFlight], waited: bool) -> int:
        """Note when in-flight batches completed: exactly (to a 5 ms slice) when the producer
        was waiting on storage, else at most as late as the producer's last CPU stage.

        Only the batches at the head that are done (reads complete mostly in
        order; a later batch done early is noted once those before it are):
        returns how many.
        """
        now = cpu = 0.0
        n = 0
        for item in pending:
            if item.done_at is None:
                if not _done(item):
                    break
                if not now:
                    now, cpu = time.perf_counter(), self._clock.cpu()
                item.done_at, item.cpu_at_done, item.seen_waiting = now, cpu, waited
            n += 1
        return n


class _OwnSlot:
    """Aligned memory for one batch when the consumer holds every staging slot."""

    def __init__(self, nbytes: int) -> None:
        from ..io import HostBuffer

        self._buffer = HostBuffer(nbytes)
        self.array: np.ndarray = np.frombuffer(self._buffer, np.uint8)  # type: ignore[call-overload]
        self.address, self.nbytes = int(self.array.ctypes.data), nbytes

    def release(self) -> None:
        pass


END = object()  #: put on the queue after the last batch


class Threaded:
    """One iteration's batches made by a producer thread (:meth:`Producer.run`), handed over through a queue.

    For readers without native batches (a Store: one submission per object,
    waits on the network) and for CUDA devices (the host-to-device copy
    overlaps the consumer's step).
    """

    inline = False
    ready_at_get = 0  #: not kept here: the loader asks :meth:`queued` before :meth:`get`

    def __init__(self, producer: Producer, plans: Plans, pool: StagingPool) -> None:
        self._producer = producer
        self._ready: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=producer.run, args=(plans, pool, self._ready, self._stop), name="storecomp-loader", daemon=True
        )
        self._thread.start()

    def queued(self) -> int:
        """Batches ready now."""
        return self._ready.qsize()

    def get(self) -> tuple[_InFlight, dict[str, Any]] | None:
        """The next batch in order (blocking), None after the last; raises the producer's error."""
        self._producer.consumer_waiting = True
        got = self._ready.get()
        self._producer.consumer_waiting = False
        if got is END:
            return None
        if isinstance(got, Failure):
            raise got.error
        return got

    def stop(self, timeout: float | None = None) -> None:
        """End the producer (it waits for its reads in flight); batches read but not taken give their slots back."""
        self._stop.set()
        self._thread.join(timeout)
        while not self._ready.empty():
            self._ready.get_nowait()


class Inline:
    """One iteration's batches made on the consumer's own thread, in ``next()``.

    The engine's threads keep ``read_ahead`` batches in flight between calls;
    each call tops the submissions up, waits for the head batch if it is not
    already read, checks and shapes it. No second Python thread: no queue,
    no hand-over, no GIL ping-pong per batch (local files read into host
    memory, where a batch's Python is ~0.1 ms and the copies run on the engine's threads).
    """

    inline = True
    ready_at_get = 0  #: batches at the head already read when the last :meth:`get` looked (for the step log)

    def __init__(self, producer: Producer, plans: Plans, pool: StagingPool) -> None:
        self._producer = producer
        self._plans = plans
        self._pool = pool
        self._inflight: collections.deque[_InFlight] = collections.deque()
        self._lock = threading.Lock()  # close() from another thread vs. the consumer
        self._closed = False

    def queued(self) -> int:
        """Batches at the head already read (ready to hand over)."""
        with self._lock:
            return self._producer._poll(self._inflight, waited=False)

    def get(self) -> tuple[_InFlight, dict[str, Any]] | None:
        """The next batch in order, None after the last. Raises ClosedError after :meth:`stop`."""
        with self._lock:
            if self._closed:
                raise ClosedError("the DataLoader was closed during this iteration")
            p, inflight = self._producer, self._inflight
            clock = p._clock
            try:
                self._top_up()
                if not inflight:
                    return None
                # Reads that finished while this thread planned and submitted: noted as done by
                # then, with that CPU work taken out of their latency (not as waited on).
                self.ready_at_get = p._poll(inflight, waited=False)
                head = inflight[0]
                if head.done_at is None:
                    clock.enter("io_wait")
                    _wait(head, None)
                    p._poll(inflight, waited=True)
                inflight.popleft()
                return head, p._complete(head)
            finally:
                clock.enter(None)

    def _top_up(self) -> None:
        p, inflight = self._producer, self._inflight
        while len(inflight) < p.read_ahead.depth and self._plans.more():
            p._clock.enter("plan")
            # Nothing in flight and no free slot: the consumer holds them all (it keeps batches).
            item = p._submit_next(self._plans, self._pool, blocking=not inflight)
            if item is None:
                break
            inflight.append(item)

    def stop(self, timeout: float | None = None) -> None:
        """Wait for the reads in flight and give their slots back; a later :meth:`get` raises ClosedError."""
        with self._lock:
            self._closed = True
            while self._inflight:
                _drain(self._inflight.popleft())


class Failure:
    """An error of the producer thread, raised again by the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _drain(item: _InFlight) -> None:
    """Wait for a batch's reads (their errors no longer matter: nobody takes the batch), then free its slot."""
    for f in item.futures:
        try:
            f.result()
        except StorecompError:
            pass
    item.slot.release()


def _wait(item: _InFlight, timeout: float | None) -> bool:
    """Wait up to ``timeout`` seconds (None: until done) for every read of ``item``; True when all are done."""
    deadline = None if timeout is None else time.perf_counter() + timeout
    for f in item.futures:
        if f.done():
            continue
        wait = getattr(f, "wait", None)
        left = None if deadline is None else max(0.0, deadline - time.perf_counter())
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


def record_consumer_stream(batch: dict[str, Any], device: Any) -> None:
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


class Plans:
    """The plans of one epoch's batches for this rank, in order, made ahead a window at a time.

    With native batches and fixed-size columns, a window of batches is
    planned at once (vectorised, :func:`plan_window`) and its files opened
    once; otherwise one batch at a time (:func:`plan_batch`).
    """

    def __init__(self, producer: Producer, order: np.ndarray, steps: Iterator[tuple[int, int, int]]) -> None:
        self._producer = producer
        self._order = order
        self._steps = _Lookahead(steps)
        self._ready: collections.deque[tuple[BatchPlan, int, Any]] = collections.deque()
        ds = producer.dataset
        self._windowed = capabilities(ds.reader).native_batches and not ds.var_fields
        self._keys = column_keys(ds) if self._windowed else None

    def more(self) -> bool:
        return bool(self._ready) or self._steps.peek() is not None

    def next(self) -> tuple[BatchPlan, int, Any]:
        """The next batch's plan, its end position in the epoch and the open files it reads (or None)."""
        if not self._ready:
            lo = self._producer
            want = min(WINDOW, max(2, 8 * lo.read_ahead.depth)) if self._windowed else 1
            taken: list[Any] = []
            while len(taken) < want and self._steps.peek() is not None:
                taken.append(next(self._steps))
            if not taken:
                raise StopIteration
            batches = _sorted_batches(self._order, taken)
            if self._keys is not None:
                plans = plan_window(lo.dataset, lo.layout, batches, lo.verify, self._keys)
                flat = plans[0].flat
                reader: Any = lo.dataset.reader  # a flat plan exists only for native_batches readers
                files = reader.open_files(flat.keys) if flat is not None and flat.keys else None
                self._ready.extend((p, t[2], files) for p, t in zip(plans, taken, strict=True))
            else:
                self._ready.extend(
                    (plan_batch(lo.dataset, lo.layout, b, lo.verify), t[2], None) for b, t in zip(batches, taken, strict=True)
                )
        return self._ready.popleft()


def _sorted_batches(order: np.ndarray, taken: list[Any]) -> list[np.ndarray]:
    """Each batch's indices (``(first, count, end)`` in ``taken``: a slice of ``order``) sorted ascending;
    one 2-D gather and sort when the batches are the same size."""
    counts = {t[1] for t in taken}
    if len(counts) != 1 or len(taken) == 1:
        return [np.sort(order[first : first + count]) for first, count, _ in taken]
    count = counts.pop()
    rows = np.sort(order[np.array([t[0] for t in taken], np.int64)[:, None] + np.arange(count)], axis=1)
    return list(rows)


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
