"""Device paths: how bytes reach a CUDA destination.

* ``gds``: GPUDirect Storage through kvikio/cuFile, storage to GPU memory.
* ``bounce``: the native engine reads into pinned staging slots; each slot
  is copied to the device asynchronously on a stream of its own. Several
  slots are in flight, so the read of slot n+1 overlaps the copy of slot n.
  Small requests are packed into one slot and copied as one run when their
  destinations are contiguous (a batch of samples).
* ``posix``: a plain read into pageable host memory, then a synchronous
  copy; the baseline the other two are measured against.

Device reads are ordered after the work queued on the submitting thread's
current CUDA stream at submission (an event recorded there: the reads run
on an engine thread, and work queued later does not hold them up): a
kernel still writing the destination finishes first. Every path
has finished writing the destination when its future completes.

Host destinations always take ``posix``: the engine reads straight into
them. ``IOOptions.io_path`` (``STORECOMP_IO_PATH``) forces a path; ``auto``
takes GDS only where cuFile reports it truly available (not compat mode),
because a good bounce path often beats GDS.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import UnavailableError
from . import cuda
from .buffers import BufferRef, _is_torch_tensor

if TYPE_CHECKING:
    from .engine import Engine, File, IOFuture

PATHS = ("gds", "bounce", "posix")


def choose(io_path: str, device: str) -> str:
    """The path a destination on ``device`` ("cpu" or "cuda") takes under setting ``io_path``.

    Raises UnavailableError when ``gds`` is forced but GDS does not work here.
    """
    if device != "cuda":
        return "posix"
    if io_path == "gds":
        status = cuda.gds_status()
        if not status["available"]:
            raise UnavailableError(f"GDS forced (io_path=gds) but unavailable: {status['reason']}")
        return "gds"
    if io_path in ("bounce", "posix"):
        return io_path
    return "gds" if cuda.gds_status()["available"] else "bounce"


def submit_device_reads(
    engine: Engine,
    f: File,
    ref: BufferRef,
    offs: np.ndarray,
    lens: np.ndarray,
    douts: np.ndarray,
    exact: bool,
    *,
    inline: bool = False,
) -> IOFuture:
    """Reads from ``f`` into the CUDA destination ``ref``, in the background,
    or, with ``inline``, on the calling thread before this returns (for a
    caller that waits at once: it saves the hand-off to a copier thread and
    back, which on an H200 machine cost more than a 64 KiB read and its copy).
    """
    from .engine import IOFuture

    if not cuda.device_count():
        raise UnavailableError("a CUDA destination was given but no CUDA device is usable here")
    path = choose(engine.options.io_path, "cuda")
    runner = {"gds": _gds, "bounce": _bounce, "posix": _posix}[path]
    torch = cuda.import_torch()
    if torch is None:
        raise UnavailableError("reads into CUDA memory need torch (pip install torch)")
    after = torch.cuda.Event()
    after.record(torch.cuda.current_stream(ref.device_index))  # the caller's queued work, as of now
    if inline:
        fut: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
        try:
            fut.set_result(runner(engine, f, ref, offs, lens, douts, after))
        except BaseException as e:  # raised by the future's result(), as from a copier thread
            fut.set_exception(e)
    else:
        fut = engine._copier_pool().submit(runner, engine, f, ref, offs, lens, douts, after)
    return IOFuture(
        [],
        [f.path],
        np.zeros(0, np.int64),
        offs,
        lens,
        "read",
        exact,
        [ref, f],
        (path,) * offs.size,
        device_part=fut,
    )


def flat_u8(ref: BufferRef) -> Any:
    """The CUDA destination ``ref`` as a flat writable torch uint8 tensor (zero-copy).

    Raises UnavailableError when torch is missing.
    """
    torch = cuda.import_torch()
    if torch is None:
        raise UnavailableError("reads into CUDA memory need torch (pip install torch)")
    owner = ref.owner
    t = owner if _is_torch_tensor(owner) else torch.as_tensor(owner, device=f"cuda:{ref.device_index}")
    return t.reshape(-1).view(torch.uint8)


def land_bytes(ref: BufferRef, dst_offset: int, data: Any, nbytes: int | None = None) -> int:
    """Copy the first ``nbytes`` (default: all) of host bytes ``data`` (any
    bytes-like object) into destination ``ref`` at byte ``dst_offset``;
    returns the bytes copied.

    The one way remote backends (S3, fsspec, the cache tier) land bytes: a
    host destination gets a memmove; a CUDA one a copy queued on the calling
    thread's current stream (so after the work the caller queued there, as
    the device paths promise) that has finished when this returns. The
    caller has checked that the range fits ``ref`` (``checked_ranges``).
    """
    src = np.frombuffer(data, np.uint8)
    n = src.size if nbytes is None else min(int(nbytes), src.size)
    if n <= 0:
        return 0
    if not ref.is_cuda:
        ctypes.memmove(ref.address + dst_offset, int(src.ctypes.data), n)
        return n
    torch = cuda.import_torch()
    dst = flat_u8(ref)
    host = src[:n] if src.flags.writeable else src[:n].copy()  # torch wants writable host memory
    with torch.cuda.device(ref.device_index):
        stream = torch.cuda.current_stream(ref.device_index)
        dst[dst_offset : dst_offset + n].copy_(torch.from_numpy(host), non_blocking=False)
        stream.synchronize()
    return n


def _short(nbytes: np.ndarray, req: int, end: int) -> None:
    nbytes[req] = min(int(nbytes[req]), end)


def _bounce(
    engine: Engine, f: File, ref: BufferRef, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, after: Any
) -> np.ndarray:
    torch = cuda.import_torch()
    dst = flat_u8(ref)
    pool = engine.staging_pool()
    slot_bytes = pool.slot_bytes
    # Pack requests (split at slot size) into slot loads: (req, rel, n, slot_off).
    loads: list[list[tuple[int, int, int, int]]] = [[]]
    used = 0
    for req in range(offs.size):
        rel, total = 0, int(lens[req])
        while rel < total:
            if used == slot_bytes:
                loads.append([])
                used = 0
            n = min(total - rel, slot_bytes - used)
            loads[-1].append((req, rel, n, used))
            used += n
            rel += n
    nbytes = lens.copy()
    stream = torch.cuda.Stream(device=ref.device_index)
    stream.wait_event(after)  # the caller's queued work on the destination comes first
    depth = max(2, min(4, pool.nslots // 2))
    reads: collections.deque[Any] = collections.deque()
    copies: collections.deque[Any] = collections.deque()

    def start(load: list[tuple[int, int, int, int]], wait: bool) -> bool:
        """Submit the read of ``load`` into a free slot; False when none is free and ``wait`` is not set.

        The pool is shared by every device read of the engine: never wait for
        a slot while holding one (two readers would each wait for the other).
        """
        while copies and pool.free_slots == 0:
            done_copy(copies.popleft())
        if wait:
            while copies:  # hold nothing while waiting
                done_copy(copies.popleft())
        try:
            slot = pool.acquire(timeout=None if wait else 0)
        except TimeoutError:
            return False
        try:
            fut = f.read_many_into(
                slot.array,
                [int(offs[r]) + rel for r, rel, _, _ in load],
                [n for _, _, n, _ in load],
                [so for _, _, _, so in load],
                exact=False,
            )
        except BaseException:
            slot.release()
            raise
        reads.append((load, slot, fut))
        return True

    def done_copy(entry: tuple[Any, Any]) -> None:
        slot, event = entry
        event.synchronize()  # the device copy has read the slot: it may be reused
        slot.release()

    pending = collections.deque(load for load in loads if load)
    try:
        while pending or reads:
            while pending and len(reads) < depth and start(pending[0], wait=not reads):
                pending.popleft()
            load, slot, fut = reads.popleft()
            try:
                got = fut.result()
            except BaseException:
                slot.release()  # the read failed: nothing is copied from this slot
                raise
            src = slot.tensor()
            runs: list[list[int]] = []  # [dst_start, slot_start, n], merged when contiguous
            for (req, rel, n, slot_off), g in zip(load, got.tolist(), strict=True):
                if g < n:
                    _short(nbytes, req, rel + g)
                if g == 0:
                    continue
                d = int(douts[req]) + rel
                if runs and runs[-1][0] + runs[-1][2] == d and runs[-1][1] + runs[-1][2] == slot_off:
                    runs[-1][2] += g
                else:
                    runs.append([d, slot_off, g])
            with torch.cuda.stream(stream):
                for d, s, n in runs:
                    dst[d : d + n].copy_(src[s : s + n], non_blocking=True)
                event = torch.cuda.Event()
                event.record(stream)
            copies.append((slot, event))
        stream.synchronize()
    finally:
        for _, slot, fut in reads:
            fut.wait()
            slot.release()
        while copies:
            done_copy(copies.popleft())
    return nbytes


def _posix(
    engine: Engine, f: File, ref: BufferRef, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, after: Any
) -> np.ndarray:
    torch = cuda.import_torch()
    dst = flat_u8(ref)
    nbytes = lens.copy()
    stream = torch.cuda.Stream(device=ref.device_index)
    stream.wait_event(after)  # behind the caller's queued work, as the caller's own copy would be
    with torch.cuda.stream(stream):
        for i in range(offs.size):
            host = np.empty(int(lens[i]), np.uint8)
            got = f.pread_into(host, int(offs[i]))
            nbytes[i] = got
            d = int(douts[i])
            dst[d : d + got].copy_(torch.from_numpy(host[:got]))
    stream.synchronize()
    return nbytes


def _gds(
    engine: Engine, f: File, ref: BufferRef, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, after: Any
) -> np.ndarray:
    import kvikio

    dst = flat_u8(ref)
    after.synchronize()  # cuFile's DMA is not stream-ordered: the caller's queued work finishes first
    nbytes = lens.copy()
    with kvikio.CuFile(f.path, "r") as cf:
        futs = []
        for i in range(offs.size):
            d, n = int(douts[i]), int(lens[i])
            futs.append(cf.pread(dst[d : d + n], n, int(offs[i])))
        for i, fut in enumerate(futs):
            nbytes[i] = fut.get()
    return nbytes


__all__ = ["PATHS", "choose", "flat_u8", "land_bytes", "submit_device_reads"]
