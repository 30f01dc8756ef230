"""Reads into CUDA memory through each device path (bounce, posix, gds).

Every test here carries the ``gpu`` marker; conftest skips them with a reason
when no CUDA device is usable. The gds cases also skip when cuFile reports
GPUDirect Storage unavailable (kvikio would only run in compat mode).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

import storecomp.io as scio
from storecomp.errors import ShortReadError, UnavailableError
from storecomp.io import Engine, ReadRequest, cuda
from tests.conftest import DataFile

pytestmark = pytest.mark.gpu

IO_PATHS = ("bounce", "posix", "gds")
SLOT = 64 << 10


def _torch():
    return pytest.importorskip("torch")


@pytest.fixture(params=IO_PATHS)
def gpu_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine forcing one device path; small staging slots so batches span several slots."""
    if request.param == "gds" and not cuda.gds_status()["available"]:
        pytest.skip(f"GDS unavailable: {cuda.gds_status()['reason']}")
    eng = Engine(io_path=request.param, staging_bytes=8 * SLOT, staging_slot_bytes=SLOT)
    yield eng
    eng.close()


def _host(t) -> np.ndarray:
    return t.cpu().reshape(-1).view(_torch().uint8).numpy()


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_read_into_cuda_tensor(gpu_engine: Engine, data_file: DataFile, dtype: str) -> None:
    torch = _torch()
    n = (1 << 20) + 4 * 1234
    t = torch.full((n // np.dtype(dtype).itemsize,), 0, dtype=getattr(torch, dtype), device="cuda")
    assert scio.read_into(data_file.path, t, 777, engine=gpu_engine) == n
    assert _host(t).tobytes() == data_file.data[777 : 777 + n]
    assert scio.io_path_for(t, engine=gpu_engine) == gpu_engine.options.io_path


def test_pread_into_cuda_waits_on_the_calling_thread(gpu_engine: Engine, data_file: DataFile) -> None:
    """A synchronous read into CUDA memory drives its device path on the caller's
    thread (no copier hand-off): whole, short at the end, ShortReadError when exact."""
    torch = _torch()
    t = torch.zeros(3 * SLOT + 5, dtype=torch.uint8, device="cuda")
    with gpu_engine.open(data_file.path) as f:
        assert f.pread_into(t, 11) == t.numel()
        assert _host(t).tobytes() == data_file.data[11 : 11 + t.numel()]
        tail = data_file.size - 100
        assert f.pread_into(t, tail, length=1000) == 100
        assert _host(t[:100]).tobytes() == data_file.data[tail:]
        with pytest.raises(ShortReadError):
            f.pread_into(t, tail, length=1000, exact=True)


def test_request_larger_than_a_slot_spans_slots(gpu_engine: Engine, data_file: DataFile) -> None:
    torch = _torch()
    n = 20 * SLOT + 99  # more slots than the pool holds: slots are reused
    t = torch.zeros(n, dtype=torch.uint8, device="cuda")
    fut = gpu_engine.open(data_file.path).read_many_into(t, [5], [n], [0])
    assert fut.result(timeout=60).tolist() == [n]
    assert fut.io_paths == (gpu_engine.options.io_path,)
    assert _host(t).tobytes() == data_file.data[5 : 5 + n]


@pytest.mark.parametrize("layout", ["contiguous", "gaps", "reversed"])
def test_many_small_requests_into_one_cuda_tensor(gpu_engine: Engine, data_file: DataFile, layout: str) -> None:
    torch = _torch()
    rng = np.random.default_rng(3)
    k = 1000
    lens = rng.integers(1, 3000, k).astype(np.uint64)
    offs = rng.integers(0, data_file.size - 3000, k).astype(np.uint64)
    gap = 0 if layout == "contiguous" else 17
    starts = np.concatenate([[0], np.cumsum(lens + gap)[:-1]]).astype(np.uint64)
    if layout == "reversed":
        total = int(starts[-1] + lens[-1])
        starts = (total - starts - lens).astype(np.uint64)
    size = int((starts + lens).max())
    t = torch.full((size,), 0xCD, dtype=torch.uint8, device="cuda")
    fut = gpu_engine.open(data_file.path).read_many_into(t, offs, lens, starts)
    assert fut.result(timeout=60).tolist() == lens.tolist()
    host = _host(t)
    expect = np.full(size, 0xCD, np.uint8)
    for o, n, d in zip(offs.tolist(), lens.tolist(), starts.tolist(), strict=True):
        expect[d : d + n] = np.frombuffer(data_file.data[o : o + n], np.uint8)
    assert np.array_equal(host, expect)


def test_short_reads_into_cuda(gpu_engine: Engine, small_file: DataFile) -> None:
    torch = _torch()
    t = torch.full((3 * 4096,), 0xAB, dtype=torch.uint8, device="cuda")
    f = gpu_engine.open(small_file.path)
    fut = f.read_many_into(t, [0, small_file.size - 100, small_file.size + 1], [4096, 4096, 4096], [0, 4096, 8192], exact=False)
    assert fut.result(timeout=60).tolist() == [4096, 100, 0]
    host = _host(t)
    assert host[:4096].tobytes() == small_file.data[:4096]
    assert host[4096:4196].tobytes() == small_file.data[-100:]
    assert (host[4196:] == 0xAB).all()  # nothing past end of file is written
    with pytest.raises(ShortReadError) as info:
        scio.read_into(small_file.path, t, small_file.size - 10, engine=gpu_engine)
    assert info.value.got == 10


def test_read_batch_mixes_host_and_cuda_destinations(gpu_engine: Engine, data_file: DataFile) -> None:
    torch = _torch()
    a = np.zeros(1000, np.uint8)
    g = torch.zeros(5000, dtype=torch.uint8, device="cuda")
    b = torch.zeros(250, dtype=torch.float32)
    reqs = [
        ReadRequest(data_file.path, g, 10),
        ReadRequest(data_file.path, a, 20),
        ReadRequest(data_file.path, b, 30, length=999, dst_offset=1),
    ]
    fut = gpu_engine.read_batch(reqs)
    assert fut.result(timeout=60).tolist() == [5000, 1000, 999]
    assert fut.io_paths == (gpu_engine.options.io_path, "posix", "posix")
    assert _host(g).tobytes() == data_file.data[10:5010]
    assert a.tobytes() == data_file.data[20:1020]
    assert b.numpy().view(np.uint8)[1:1000].tobytes() == data_file.data[30:1029]


def test_cupy_destination(gpu_engine: Engine, data_file: DataFile) -> None:
    cp = pytest.importorskip("cupy")
    arr = cp.zeros(70_000, dtype=cp.uint8)
    assert scio.read_into(data_file.path, arr, 3, engine=gpu_engine) == arr.size
    assert cp.asnumpy(arr).tobytes() == data_file.data[3 : 3 + arr.size]


def test_staging_pool_is_pinned_with_cuda() -> None:
    with Engine(staging_bytes=2 * SLOT, staging_slot_bytes=SLOT) as eng:
        assert eng.staging_pool().pinned


def test_a_refused_pin_leaves_no_cuda_error_behind() -> None:
    """cudaHostRegister of a range already registered fails; the failure must not
    surface in the caller's next, unrelated kernel launch (torch reads the
    thread's last CUDA error after each launch)."""
    torch = _torch()
    pool = scio.StagingPool(2 * SLOT, SLOT, pin=True)
    assert pool.pinned
    assert not cuda.host_register(pool.address, pool.nbytes)  # already registered: refused
    x = torch.arange(16, device="cuda").add_(1)  # raised cudaErrorHostMemoryAlreadyRegistered before the fix
    assert int(x.sum()) == 136
    pool.close()


def test_auto_path_prefers_gds_only_when_available() -> None:
    torch = _torch()
    t = torch.zeros(16, dtype=torch.uint8, device="cuda")
    with Engine() as eng:
        expect = "gds" if cuda.gds_status()["available"] else "bounce"
        assert scio.io_path_for(t, engine=eng) == expect


def test_forcing_gds_where_unavailable_is_refused(data_file: DataFile) -> None:
    torch = _torch()
    if cuda.gds_status()["available"]:
        pytest.skip("GDS is available here")
    t = torch.zeros(16, dtype=torch.uint8, device="cuda")
    with Engine(io_path="gds") as eng, pytest.raises(UnavailableError, match="GDS"):
        scio.read_into(data_file.path, t, engine=eng)


def test_reads_are_ordered_after_the_callers_stream(gpu_engine: Engine, data_file: DataFile) -> None:
    """Work still queued on the submitting thread's stream (here a fill behind a ~100 ms sleep)
    reaches the destination first; the read lands after it, on every path."""
    torch = _torch()
    n = min(data_file.size, 4 << 20)
    t = torch.zeros(n, dtype=torch.uint8, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # the stream stays busy while the read is submitted
        t.fill_(7)
        assert scio.read_into(data_file.path, t, 0, engine=gpu_engine) == n
    torch.cuda.synchronize()
    assert _host(t).tobytes() == data_file.data[:n]
