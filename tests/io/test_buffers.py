"""storecomp.io.buffers: the destination parser (as_buffer, span) and the StagingPool."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from storecomp.errors import (
    ClosedError,
    InvalidArgumentError,
    ReadOnlyDestinationError,
    StorecompError,
    UnsupportedBufferError,
)
from storecomp.io import BufferRef, StagingPool, as_buffer
from storecomp.io.buffers import span
from tests.conftest import DST_KINDS, DataFile, DLPackOnly, NoMemory, make_engine, needs_io_uring

# ---------------------------------------------------------------- as_buffer


@pytest.mark.parametrize("kind", DST_KINDS)
def test_as_buffer_describes_every_destination_kind(make_dst, kind: str) -> None:
    d = make_dst(kind, 4096)
    ref = as_buffer(d.obj)
    assert ref.address == d.view.ctypes.data
    assert ref.nbytes == d.nbytes
    assert (ref.device, ref.device_index, ref.readonly, ref.is_cuda) == ("cpu", 0, False, False)
    assert ref.owner is d.obj
    assert as_buffer(ref) is ref


def test_as_buffer_of_a_torch_view_uses_its_offset() -> None:
    torch = pytest.importorskip("torch")
    t = torch.zeros(100, dtype=torch.int64)
    ref = as_buffer(t[10:20])
    assert ref.address == t.data_ptr() + 80
    assert ref.nbytes == 80


def test_as_buffer_accepts_fortran_and_multidimensional_arrays() -> None:
    a = np.zeros((8, 16), np.float32, order="F")
    ref = as_buffer(a)
    assert (ref.address, ref.nbytes) == (a.ctypes.data, a.nbytes)
    mv = memoryview(np.zeros((4, 4), np.int16))
    assert as_buffer(mv).nbytes == 32


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"immutable",
        lambda: memoryview(bytearray(8)).toreadonly(),
        lambda: _readonly_array(),
        lambda: DLPackOnly(_readonly_array()),
    ],
    ids=["bytes", "readonly-memoryview", "readonly-numpy", "readonly-dlpack"],
)
def test_read_only_memory_is_refused_as_destination(make) -> None:
    obj = make()
    with pytest.raises(ReadOnlyDestinationError, match="read-only"):
        as_buffer(obj)
    ref = as_buffer(obj, writable=False, what="source")
    assert ref.readonly


def _readonly_array() -> np.ndarray:
    a = np.arange(16, dtype=np.uint8)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.zeros(32, np.uint8)[::2],
        lambda: np.zeros((8, 8), np.uint8)[:, :4],
        lambda: memoryview(bytearray(32))[::2],
        lambda: _torch_strided(),
    ],
    ids=["numpy-strided", "numpy-2d-slice", "memoryview-strided", "torch-transposed"],
)
def test_non_contiguous_memory_is_refused(make) -> None:
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        as_buffer(make())


def _torch_strided():
    torch = pytest.importorskip("torch")
    return torch.zeros(8, 8).t()


@pytest.mark.parametrize("obj", [NoMemory(), 12345, "text", None, [1, 2, 3]], ids=repr)
def test_objects_without_memory_are_refused(obj) -> None:
    with pytest.raises(UnsupportedBufferError, match="exposes no memory"):
        as_buffer(obj)


def test_unsupported_buffer_error_is_also_a_type_error() -> None:
    with pytest.raises(TypeError):
        as_buffer(object())


def test_span_checks_offset_and_length() -> None:
    ref = as_buffer(np.zeros(100, np.uint8))
    assert span(ref, 0, None) == (ref.address, 100)
    assert span(ref, 10, None) == (ref.address + 10, 90)
    assert span(ref, 100, 0) == (ref.address + 100, 0)
    assert span(ref, np.int64(5), np.uint32(5)) == (ref.address + 5, 5)
    for off, length in [(-1, 10), (0, -1), (0, 101), (99, 2), (101, None), (1.5, 1), (0, 2.0)]:
        with pytest.raises(InvalidArgumentError):
            span(ref, off, length)


# ---------------------------------------------------------------- StagingPool


def test_slots_are_distinct_aligned_and_cover_the_pool() -> None:
    with StagingPool(10 * 8192 + 100, 8192, pin=False) as pool:
        assert pool.nslots == 10 and pool.nbytes == 10 * 8192
        assert pool.address % 4096 == 0
        assert not pool.pinned and not pool.fixed
        slots = [pool.acquire(timeout=0) for _ in range(pool.nslots)]
        addrs = sorted(s.address for s in slots)
        assert len(set(addrs)) == pool.nslots
        assert all(a % 4096 == 0 for a in addrs)
        assert addrs == [pool.address + i * 8192 for i in range(10)]
        for s in slots:
            assert s.nbytes == 8192
            assert s.array.ctypes.data == s.address and s.array.size == 8192
            s.array[:] = s.index  # slots do not overlap
        assert all((s.array == s.index).all() for s in slots)
        assert pool.free_slots == 0
        for s in slots:
            s.release()
        assert pool.free_slots == 10


def test_pool_is_not_pinned_without_cuda() -> None:
    with StagingPool(8192, 4096) as pool:  # pin=None: pins only when CUDA exists
        from storecomp.io import cuda

        assert pool.pinned == (cuda.device_count() > 0)


@pytest.mark.parametrize("nbytes,slot", [(8192, 0), (8192, 1000), (4096, 8192), (8192, -4096)])
def test_pool_rejects_bad_sizes(nbytes: int, slot: int) -> None:
    with pytest.raises(InvalidArgumentError):
        StagingPool(nbytes, slot, pin=False)


def test_acquire_times_out_when_exhausted() -> None:
    with StagingPool(2 * 4096, 4096, pin=False) as pool:
        a, b = pool.acquire(), pool.acquire()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no staging slot"):
            pool.acquire(timeout=0.2)
        assert time.monotonic() - t0 >= 0.19
        with pytest.raises(TimeoutError):
            pool.acquire(timeout=0)
        a.release()
        c = pool.acquire(timeout=0)
        assert c.index == a.index
        b.release()
        c.release()


def test_acquire_blocks_until_a_slot_is_released() -> None:
    with StagingPool(4096, 4096, pin=False) as pool:
        held = pool.acquire()
        got: list = []
        t = threading.Thread(target=lambda: got.append(pool.acquire(timeout=10)))
        t.start()
        time.sleep(0.1)
        assert t.is_alive() and not got  # blocked: the only slot is held
        held.release()
        t.join(10)
        assert got and got[0].index == held.index


def test_release_is_idempotent_and_context_managed() -> None:
    with StagingPool(2 * 4096, 4096, pin=False) as pool:
        with pool.acquire() as slot:
            assert pool.free_slots == 1
        assert pool.free_slots == 2
        slot.release()
        slot.release()
        assert pool.free_slots == 2  # a double release must not free a slot twice


def test_close_wakes_waiters_and_refuses_acquire() -> None:
    pool = StagingPool(4096, 4096, pin=False)
    pool.acquire()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire(timeout=10)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    pool.close()
    t.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ClosedError)
    with pytest.raises(ClosedError):
        pool.acquire(timeout=0)
    pool.close()  # idempotent


def test_views_keep_memory_alive_after_pool_and_slot_are_gone() -> None:
    torch = pytest.importorskip("torch")
    pool = StagingPool(4 * 4096, 4096, pin=False)
    slot = pool.acquire()
    arr = slot.array
    ten = slot.tensor()
    other = pool.acquire().array
    pattern = np.arange(4096, dtype=np.uint64).astype(np.uint8)
    arr[:] = pattern
    other[:] = 0x5A
    pool.close()
    del pool, slot
    gc.collect()
    junk = [np.full(4 * 4096, 0xFF, np.uint8) for _ in range(64)]  # would reuse freed memory
    assert (arr == pattern).all()
    assert (ten.numpy() == pattern).all()
    assert torch.equal(ten, torch.from_numpy(pattern))
    assert (other == 0x5A).all()
    del junk


def test_slot_tensor_is_a_zero_copy_uint8_view() -> None:
    torch = pytest.importorskip("torch")
    with StagingPool(4096, 4096, pin=False) as pool, pool.acquire() as slot:
        t = slot.tensor()
        assert t.dtype == torch.uint8 and t.data_ptr() == slot.address and t.numel() == 4096
        t.fill_(3)
        assert (slot.array == 3).all()


@needs_io_uring
def test_pool_registers_fixed_buffer_and_direct_reads_use_it(data_file: DataFile) -> None:
    eng = make_engine("io_uring", "on")
    try:
        pool = StagingPool(4 * 65536, 65536, pin=False, engine=eng)
        assert pool.fixed
        before = eng.stats()["fixed_buffer_pieces"]
        f = eng.open(data_file.path)
        with pool.acquire() as slot:
            assert f.pread_into(slot.array, 4096) == 65536
            assert slot.array.tobytes() == data_file.data[4096 : 4096 + 65536]
        assert eng.stats()["fixed_buffer_pieces"] > before
        pool.close()
        assert not pool.fixed
        # after close the memory is no longer fixed: further reads use plain reads
        before = eng.stats()["fixed_buffer_pieces"]
        assert f.pread_into(pool._array[:65536], 0) == 65536
        assert eng.stats()["fixed_buffer_pieces"] == before
    finally:
        eng.close()


@needs_io_uring
def test_pools_registered_from_many_threads_while_reads_run(data_file: DataFile) -> None:
    """The ring's one submitter (the reaper) runs every registration: pools made and
    closed from several threads while reads are in flight get a clear yes or no
    (one registered at a time), and every read still lands its bytes."""
    import threading

    eng = make_engine("io_uring", "on")
    try:
        f = eng.open(data_file.path)
        fixed: list[bool] = []
        errors: list[BaseException] = []

        def churn(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                for _ in range(20):
                    with StagingPool(2 * 65536, 65536, pin=False, engine=eng) as pool, pool.acquire() as slot:
                        fixed.append(pool.fixed)
                        off = int(rng.integers(0, (data_file.size - 65536) // 4096)) * 4096
                        assert f.pread_into(slot.array, off) == 65536
                        assert slot.array.tobytes() == data_file.data[off : off + 65536]
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=churn, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert len(fixed) == 80 and any(fixed)
        with StagingPool(65536, 65536, pin=False, engine=eng) as pool:
            assert pool.fixed  # every registration was undone
    finally:
        eng.close()


def test_threads_engine_pool_is_not_fixed() -> None:
    eng = make_engine("threads")
    try:
        with StagingPool(8192, 4096, pin=False, engine=eng) as pool:
            assert not pool.fixed
    finally:
        eng.close()


def test_engine_staging_pool_is_created_once_from_options() -> None:
    eng = make_engine("threads", staging_bytes=1 << 20, staging_slot_bytes=1 << 18)
    try:
        pool = eng.staging_pool()
        assert eng.staging_pool() is pool
        assert (pool.nslots, pool.slot_bytes) == (4, 1 << 18)
    finally:
        eng.close()
    with pytest.raises(ClosedError):
        pool.acquire(timeout=0)


@needs_io_uring
def test_pool_dropped_without_close_does_not_leave_a_stale_fixed_buffer(data_file: DataFile) -> None:
    eng = make_engine("io_uring", "on")
    try:
        first = StagingPool(1 << 20, 1 << 18, pin=False, engine=eng)
        assert first.fixed
        address, nbytes = first.address, first.nbytes
        del first
        gc.collect()
        # New memory at the same address, as the next large allocation may well get.
        with _mapped_at(address, nbytes) as memory:
            memory[:] = 0
            n = eng.open(data_file.path).pread_into(memory, 0)
            assert n == nbytes
            assert memory.tobytes() == data_file.data[:nbytes]
    finally:
        eng.close()


@contextlib.contextmanager
def _mapped_at(address: int, nbytes: int) -> Iterator[np.ndarray]:
    """Anonymous memory mapped at exactly ``address`` (skips when the range is taken)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x100000  # MAP_FIXED_NOREPLACE
    got = libc.mmap(address, nbytes, prot, flags, -1, 0)
    if got in (None, ctypes.c_void_p(-1).value) or got != address:
        if got not in (None, ctypes.c_void_p(-1).value):
            libc.munmap(got, nbytes)
        pytest.skip("could not map memory at the freed pool's address")
    try:
        yield np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(address))
    finally:
        libc.munmap(address, nbytes)


@needs_io_uring
def test_closing_a_pool_of_a_closed_engine_does_not_touch_other_engines(data_file: DataFile) -> None:
    first = make_engine("io_uring", "on")
    pool_a = StagingPool(1 << 20, 1 << 18, pin=False, engine=first)
    assert pool_a.fixed
    first.close()
    second = make_engine("io_uring", "on")
    try:
        pool_b = StagingPool(1 << 20, 1 << 18, pin=False, engine=second)
        assert pool_b.fixed
        pool_a.close()  # must not reach `second`'s ring
        with pool_b.acquire() as slot:
            assert second.open(data_file.path).pread_into(slot.array, 0) == 1 << 18
            assert slot.array.tobytes() == data_file.data[: 1 << 18]
        pool_b.close()
    finally:
        second.close()


def test_every_buffer_error_is_a_storecomp_error() -> None:
    for exc in (ReadOnlyDestinationError, UnsupportedBufferError, InvalidArgumentError, ClosedError):
        assert issubclass(exc, StorecompError)
    assert isinstance(as_buffer(bytearray(1)), BufferRef)


def test_host_register_pins_for_every_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """cudaHostRegister is asked for portable memory (pinned in every device's context, not just the current one)."""
    import types

    from storecomp.io import cuda

    calls: list[tuple[int, int, int]] = []

    class _Cudart:
        def cudaHostRegister(self, address: int, nbytes: int, flags: int) -> int:  # noqa: N802 - the CUDA name
            calls.append((address, nbytes, flags))
            return 0

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(cudart=_Cudart))
    monkeypatch.setattr(cuda, "device_count", lambda: 1)
    monkeypatch.setattr(cuda, "import_torch", lambda: fake_torch)
    assert cuda.host_register(4096, 8192)
    assert calls == [(4096, 8192, 1)]  # cudaHostRegisterPortable
