"""storecomp.io public API: Engine, File, IOFuture, read_into, read_batch.

One conformance suite, parametrised over backend (io_uring, threads), direct
mode (auto, on, off) and destination kind (see conftest.DST_KINDS).
"""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storecomp.io as scio
from storecomp.errors import CancelledIOError, ClosedError, InvalidArgumentError, ShortReadError
from storecomp.io import Engine, ReadRequest
from tests.conftest import (
    BACKENDS,
    DataFile,
    Dest,
    drop_cache,
    make_engine,
    random_bytes,
    warm_cache,
    write_file,
)

# ---------------------------------------------------------------- whole-file and ranged reads


def test_read_whole_file_into_every_destination(engine: Engine, data_file: DataFile, make_dst, dst_kind: str) -> None:
    d: Dest = make_dst(dst_kind, data_file.size)
    d.fill(0xEE)
    n = scio.read_into(data_file.path, d.obj, 0, length=data_file.size, engine=engine)
    assert n == data_file.size
    assert d.view[: data_file.size].tobytes() == data_file.data
    assert (d.view[data_file.size :] == 0xEE).all()


def test_read_into_default_length_is_the_whole_destination(engine: Engine, data_file: DataFile) -> None:
    dst = np.empty(12345, np.uint8)
    assert scio.read_into(data_file.path, dst, 1000, engine=engine) == 12345
    assert dst.tobytes() == data_file.data[1000:13345]


def test_read_into_default_engine(data_file: DataFile) -> None:
    dst = np.empty(5000, np.uint8)
    assert scio.read_into(data_file.path, dst, 7) == 5000
    assert dst.tobytes() == data_file.data[7:5007]
    eng = scio.default_engine()
    assert eng is scio.default_engine() and not eng.closed
    assert scio.io_path_for(dst) == "posix"


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    align=st.sampled_from([1, 512, 4096]),
    dst_pad=st.integers(0, 8192),
    misalign=st.sampled_from([0, 1, 7, 511, 512, 2048, 4095]),
)
def test_random_ranges_land_exactly_in_their_span(
    engine: Engine, data_file: DataFile, data: st.DataObject, align: int, dst_pad: int, misalign: int
) -> None:
    """Any offset, length, destination offset and buffer address (each aligned to ``align``, the
    buffer address ``misalign`` bytes past a page): the file's bytes, and nothing outside the span touched."""
    offset = data.draw(st.integers(0, data_file.size // align)) * align
    offset = min(offset, data_file.size)
    length = data.draw(st.integers(0, min(data_file.size - offset, 300_000)))
    if align > 1:
        length -= length % align
    dst_offset = data.draw(st.integers(0, dst_pad))
    if align > 1:
        dst_offset -= dst_offset % align
    raw = np.full(misalign + dst_offset + length + dst_pad + 4096, 0xA5, np.uint8)
    base = (-raw.ctypes.data) % 4096 + misalign
    dst = raw[base : base + dst_offset + length + dst_pad]
    f = engine.cached_file(data_file.path)
    n = f.pread_into(dst, offset, length=length, dst_offset=dst_offset, exact=True)
    assert n == length
    assert dst[dst_offset : dst_offset + length].tobytes() == data_file.data[offset : offset + length]
    assert (raw[: base + dst_offset] == 0xA5).all()
    assert (raw[base + dst_offset + length :] == 0xA5).all()


def test_request_larger_than_split_bytes_is_split(backend: str, direct: str, data_file: DataFile) -> None:
    eng = make_engine(backend, direct, split_bytes=64 << 10)
    try:
        dst = np.empty((1 << 20) + 777, np.uint8)
        before = eng.stats()
        assert eng.open(data_file.path).pread_into(dst, 4095) == dst.size
        assert dst.tobytes() == data_file.data[4095 : 4095 + dst.size]
        after = eng.stats()
        assert after["requests"] - before["requests"] == 1
        assert after["pieces"] - before["pieces"] == -(-dst.size // (64 << 10))  # 17
        assert after["bytes_read"] - before["bytes_read"] >= dst.size
    finally:
        eng.close()


def test_thousand_small_requests_in_one_batch(engine: Engine, data_file: DataFile, make_dst, dst_kind: str) -> None:
    rng = np.random.default_rng(11)
    n = 1000
    lens = rng.integers(0, 3000, n).astype(np.uint64)
    offs = rng.integers(0, data_file.size - 3000, n).astype(np.uint64)
    douts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.uint64)
    total = int(lens.sum())
    d: Dest = make_dst(dst_kind, total + 64)
    d.fill(0x11)
    f = engine.open(data_file.path)
    before = engine.stats()["requests"]
    fut = f.read_many_into(d.obj, offs, lens, douts)
    got = fut.result(timeout=60)
    assert got.dtype == np.uint64 and got.tolist() == lens.tolist()
    assert engine.stats()["requests"] - before == n
    expect = b"".join(data_file.data[int(o) : int(o) + int(k)] for o, k in zip(offs, lens, strict=True))
    assert d.view[:total].tobytes() == expect
    assert (d.view[total:] == 0x11).all()
    assert fut.io_paths == ("posix",)


def test_read_many_into_accepts_scalar_length_and_lists(engine: Engine, data_file: DataFile) -> None:
    dst = np.zeros(4 * 100, np.uint8)
    fut = engine.open(data_file.path).read_many_into(dst, [0, 10, 20, 30], 100, [300, 200, 100, 0])
    assert fut.result().tolist() == [100] * 4
    for i, o in enumerate([0, 10, 20, 30]):
        d = 300 - 100 * i
        assert dst[d : d + 100].tobytes() == data_file.data[o : o + 100]


def test_read_many_into_with_no_requests(engine: Engine, data_file: DataFile) -> None:
    fut = engine.open(data_file.path).read_many_into(np.zeros(1, np.uint8), [], [], [])
    assert fut.result().size == 0 and fut.done()


# ---------------------------------------------------------------- O_DIRECT and the page cache


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(
    "offset,length,misalign",
    [(1, 4096, 0), (4096, 4095, 0), (4096, 4096, 1), (511, 70001, 3), (8192, 3 * 4096, 2048), (0, 1, 4095)],
)
def test_unaligned_direct_reads_never_fail(
    backend_name: str, data_file: DataFile, offset: int, length: int, misalign: int
) -> None:
    eng = make_engine(backend_name, "on")
    try:
        raw = np.zeros(length + 8192, np.uint8)
        base = (-raw.ctypes.data) % 4096 + misalign
        dst = raw[base : base + length]
        drop_cache(data_file.path)
        f = eng.open(data_file.path)
        assert f.pread_into(dst, offset) == length
        assert dst.tobytes() == data_file.data[offset : offset + length]
        assert not raw[:base].any() and not raw[base + length :].any()
        stats = eng.stats()
        mem, off_align = f.direct_alignment() or (4096, 4096)
        as_is = offset % off_align == 0 and length % off_align == 0 and dst.ctypes.data % mem == 0
        assert stats["bounce_pieces"] == (0 if as_is else 1), (mem, off_align)
        assert stats["errors"] == 0 and stats["direct_fallbacks"] == 0
    finally:
        eng.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_aligned_direct_read_needs_no_bounce(backend_name: str, data_file: DataFile) -> None:
    eng = make_engine(backend_name, "on")
    try:
        from storecomp.io import StagingPool

        with StagingPool(1 << 20, 1 << 20, pin=False) as pool, pool.acquire() as slot:
            assert eng.open(data_file.path).pread_into(slot.array, 1 << 20) == 1 << 20
            assert slot.array.tobytes() == data_file.data[1 << 20 : 2 << 20]
        assert eng.stats()["bounce_pieces"] == 0
    finally:
        eng.close()


def test_direct_falls_back_to_buffered_where_the_file_system_refuses(backend: str) -> None:
    path = "/proc/sys/kernel/ostype"  # procfs has no O_DIRECT
    if not os.path.exists(path):
        pytest.skip("no procfs")
    expect = Path(path).read_bytes()
    eng = make_engine(backend, "on")
    try:
        dst = np.zeros(100, np.uint8)
        assert eng.open(path).pread_into(dst, 0, exact=False) == len(expect)
        assert dst[: len(expect)].tobytes() == expect
        assert eng.stats()["direct_fallbacks"] >= 1
    finally:
        eng.close()


def test_auto_mode_hot_reads_hit_the_page_cache_and_cold_reads_miss(backend: str, tmp_path: Path) -> None:
    data = random_bytes(2 << 20, seed=7)
    path = write_file(tmp_path / "tier.bin", data)
    eng = make_engine(backend, "auto", split_bytes=256 << 10)
    try:
        f = eng.open(path)
        dst = np.empty(len(data), np.uint8)
        warm_cache(path)
        s0 = eng.stats()
        assert f.pread_into(dst, 0) == len(data) and dst.tobytes() == data
        s1 = eng.stats()
        assert s1["nowait_hits"] - s0["nowait_hits"] == 8  # every 256 KiB piece came from the cache
        assert s1["nowait_misses"] == s0["nowait_misses"]
        if not drop_cache(path):
            pytest.skip("cannot evict the file from the page cache here")
        dst[:] = 0
        assert f.pread_into(dst, 0) == len(data) and dst.tobytes() == data
        s2 = eng.stats()
        assert s2["nowait_misses"] > s1["nowait_misses"]  # read from the device with O_DIRECT
        assert s2["nowait_hits"] + s2["nowait_misses"] - s1["nowait_hits"] - s1["nowait_misses"] >= 8
    finally:
        eng.close()


def test_small_auto_reads_probe_the_page_cache_at_submission(backend: str, tmp_path: Path) -> None:
    """AUTO reads of at most 256 KiB in all: a page-cache hit is complete when submit returns
    (no engine thread involved); a miss still lands, from the device; an end of file is a short read."""
    data = random_bytes(300 << 10, seed=8)
    path = write_file(tmp_path / "small.bin", data)
    eng = make_engine(backend, "auto")
    try:
        f = eng.open(path)
        warm_cache(path)
        dst = np.zeros(200 << 10, np.uint8)
        s0 = eng.stats()
        fut = f.read_many_into(dst, [4096, 150_000], [64 << 10, 100 << 10], [0, 64 << 10])
        assert fut.done()  # completed on the submitting thread
        assert fut.result().tolist() == [64 << 10, 100 << 10]
        assert dst[: 64 << 10].tobytes() == data[4096 : 4096 + (64 << 10)]
        assert dst[64 << 10 : 164 << 10].tobytes() == data[150_000 : 150_000 + (100 << 10)]
        assert eng.stats()["nowait_hits"] - s0["nowait_hits"] == 2
        tail = np.zeros(4096, np.uint8)
        assert f.pread_into(tail, len(data) - 1000, exact=False) == 1000  # end of file, inline
        assert tail[:1000].tobytes() == data[-1000:]
        if not drop_cache(path):
            pytest.skip("cannot evict the file from the page cache here")
        dst[:] = 0
        s1 = eng.stats()
        assert f.pread_into(dst, 8192) == dst.size and dst.tobytes() == data[8192 : 8192 + dst.size]
        assert eng.stats()["nowait_misses"] > s1["nowait_misses"]
    finally:
        eng.close()


def test_on_mode_never_tries_the_page_cache_first(backend: str, data_file: DataFile) -> None:
    eng = make_engine(backend, "on")
    try:
        dst = np.empty(1 << 20, np.uint8)
        assert eng.open(data_file.path).pread_into(dst, 0) == dst.size
        s = eng.stats()
        assert s["nowait_hits"] == s["nowait_misses"] == 0
    finally:
        eng.close()


def test_off_mode_reads_through_the_page_cache(backend: str, tmp_path: Path) -> None:
    """direct="off": a cold read fills the page cache (a miss of its
    RWF_NOWAIT probe is read buffered, never with O_DIRECT), so the next read hits it."""
    from storecomp.io import resident_bytes

    data = random_bytes(1 << 20, seed=9)
    path = write_file(tmp_path / "cold.bin", data)
    drop_cache(path)
    eng = make_engine(backend, "off")
    try:
        dst = np.empty(1 << 20, np.uint8)
        f = eng.open(path)
        assert f.pread_into(dst, 0) == dst.size and dst.tobytes() == data
        assert resident_bytes(str(path)) >= len(data)
        hits = eng.stats()["nowait_hits"]
        assert f.pread_into(dst, 0) == dst.size and dst.tobytes() == data
        if backend == "io_uring":
            assert eng.stats()["nowait_hits"] > hits  # the second read came from memory, copied on the pool's threads
    finally:
        eng.close()


# ---------------------------------------------------------------- writes


def test_pwrite_then_read_back(engine: Engine, tmp_path: Path, make_dst, dst_kind: str) -> None:
    data = random_bytes(300_001, seed=3)
    path = tmp_path / "out.bin"
    with engine.open(path, "w") as f:
        assert f.pwrite(data, 0) == len(data)
        assert f.pwrite(memoryview(data)[:1000], 500_000) == 1000
        f.sync()
        assert f.size() == 501_000
        d: Dest = make_dst(dst_kind, len(data))
        assert f.pread_into(d.obj, 0, length=len(data)) == len(data)
        assert d.view[: len(data)].tobytes() == data
    on_disk = path.read_bytes()
    assert on_disk[: len(data)] == data
    assert on_disk[len(data) : 500_000] == bytes(500_000 - len(data))
    assert on_disk[500_000:] == data[:1000]
    assert engine.stats()["bytes_written"] == len(data) + 1000


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_direct_writes_aligned_go_direct_and_unaligned_fall_back(backend: str, tmp_path: Path, aligned: bool) -> None:
    from storecomp.io import StagingPool

    eng = make_engine(backend, "on")
    try:
        path = tmp_path / "direct.bin"
        f = eng.open(path, "w")
        with StagingPool(1 << 16, 1 << 16, pin=False) as pool, pool.acquire() as slot:
            slot.array[:] = np.frombuffer(random_bytes(1 << 16, seed=4), np.uint8)
            src = slot.array if aligned else slot.array[1:5001]
            offset = 8192 if aligned else 8193
            assert f.pwrite(src, offset) == src.size
            f.sync()
            if aligned:
                assert eng.stats()["direct_fallbacks"] == 0
            else:
                assert eng.stats()["direct_fallbacks"] >= 1
            assert path.read_bytes()[offset : offset + src.size] == src.tobytes()
            back = np.zeros(src.size, np.uint8)
            assert f.pread_into(back, offset) == src.size and (back == src).all()
        f.close()
    finally:
        eng.close()


def test_open_modes(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "modes.bin"
    with pytest.raises(FileNotFoundError):
        engine.open(path, "r+")
    with engine.open(path, "w") as f:
        assert f.writable and f.size() == 0
        f.pwrite(b"hello", 0)
    with engine.open(path, "w") as f:  # "w" creates but does not truncate
        assert f.size() == 5
    with engine.open(path, "r+") as f:
        f.pwrite(b"J", 0)
    assert path.read_bytes() == b"Jello"
    with engine.open(path) as f:
        assert not f.writable
        with pytest.raises(InvalidArgumentError, match="read-only"):
            f.pwrite(b"x", 0)
    with pytest.raises(InvalidArgumentError, match="mode"):
        engine.open(path, "a")


# ---------------------------------------------------------------- read_batch


def test_read_batch_over_files_and_mixed_destinations(engine: Engine, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    files = [write_file(tmp_path / f"f{i}.bin", random_bytes(50_000 + i, seed=10 + i)) for i in range(3)]
    datas = [p.read_bytes() for p in files]
    a = np.zeros(1000, np.uint8)
    b = torch.zeros(250, dtype=torch.float32)
    c = bytearray(3000)
    d = memoryview(bytearray(600))
    reqs = [
        ReadRequest(files[0], a, 100),
        ReadRequest(files[1], b, 40_000, length=999, dst_offset=1),
        ReadRequest(files[2], c, 0, length=2000, dst_offset=1000),
        ReadRequest(files[0], d, 49_500, length=500),
        ReadRequest(str(files[1]), a, 0, length=0),
    ]
    fut = engine.read_batch(reqs)
    assert fut.result(timeout=30).tolist() == [1000, 999, 2000, 500, 0]
    assert fut.io_paths == ("posix",) * 5
    assert a.tobytes() == datas[0][100:1100]
    assert b.numpy().view(np.uint8)[1:1000].tobytes() == datas[1][40_000:40_999]
    assert bytes(c[1000:]) == datas[2][:2000] and bytes(c[:1000]) == bytes(1000)
    assert bytes(d[:500]) == datas[0][49_500:] and bytes(d[500:]) == bytes(100)


def test_read_batch_through_module_function_and_short_reads(engine: Engine, small_file: DataFile) -> None:
    a, b = np.zeros(100, np.uint8), np.zeros(100, np.uint8)
    reqs = [ReadRequest(small_file.path, a, 0), ReadRequest(small_file.path, b, small_file.size - 40)]
    with pytest.raises(ShortReadError) as info:
        scio.read_batch(reqs, engine=engine).result()
    assert info.value.path == str(small_file.path) and info.value.got == 40
    assert scio.read_batch(reqs, exact=False, engine=engine).result().tolist() == [100, 40]
    assert b[:40].tobytes() == small_file.data[-40:]


def test_empty_read_batch(engine: Engine) -> None:
    fut = engine.read_batch([])
    assert fut.done() and fut.result().size == 0 and fut.io_paths == ()


def test_read_batch_rejects_other_objects(engine: Engine, small_file: DataFile) -> None:
    with pytest.raises(InvalidArgumentError, match="ReadRequest"):
        engine.read_batch([(small_file.path, np.zeros(1, np.uint8))])  # type: ignore[list-item]


# ---------------------------------------------------------------- IOFuture


def _slow_batch(eng: Engine, path: Path, n: int) -> tuple[scio.IOFuture, np.ndarray]:
    """``n`` cold 4 KiB O_DIRECT reads in random order: takes a while on one thread."""
    drop_cache(path)
    dst = np.zeros(n * 4096, np.uint8)
    offs = np.random.default_rng(0).permutation(n).astype(np.uint64) * 4096
    fut = eng.open(path).read_many_into(dst, offs, 4096, np.arange(n, dtype=np.uint64) * 4096)
    return fut, dst


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> DataFile:
    data = random_bytes(16 << 20, seed=9)
    return DataFile(write_file(tmp_path_factory.mktemp("big") / "big.bin", data), data)


def test_future_done_wait_and_result_timeouts(big_file: DataFile) -> None:
    eng = make_engine("threads", "on", threads=1)
    try:
        fut, dst = _slow_batch(eng, big_file.path, 4096)
        t0 = time.monotonic()
        assert not fut.done()
        assert fut.wait(0) is False
        assert fut.wait(0.001) is False
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.001)
        assert time.monotonic() - t0 < 5
        assert fut.wait(60) is True and fut.done()
        got = fut.result(timeout=0)
        assert got.tolist() == [4096] * 4096
        offs = np.random.default_rng(0).permutation(4096) * 4096
        for i in (0, 1, 4095):
            assert dst[i * 4096 : (i + 1) * 4096].tobytes() == big_file.data[offs[i] : offs[i] + 4096]
        assert fut.result() is got  # cached
    finally:
        eng.close()


def test_dropping_a_future_waits_for_its_io(big_file: DataFile) -> None:
    eng = make_engine("threads", "on", threads=1)
    try:
        fut, _ = _slow_batch(eng, big_file.path, 2048)
        native_batch = fut._parts[0]
        del fut, _  # the destination is only kept alive by the future
        gc.collect()
        assert native_batch.done()  # dropping the future waited for the kernel to finish writing
        junk = [np.ones(2048 * 4096, np.uint8) for _ in range(3)]  # reuse the freed memory
        assert all(j.all() for j in junk)
    finally:
        eng.close()


@pytest.mark.parametrize(
    "backend_name,opts",
    [("threads", {"threads": 1}), ("io_uring", {"queue_depth": 4}), ("io_uring", {"queue_depth": 1})],
)
def test_close_cancels_queued_io_cleanly(backend_name: str, opts: dict, big_file: DataFile) -> None:
    for _ in range(3):
        eng = make_engine(backend_name, "on", **opts)
        n = 4096
        fut, dst = _slow_batch(eng, big_file.path, n)
        eng.close()
        assert fut.wait(30), "I/O still in flight after close"
        cancelled = eng.stats()["cancelled"]
        assert 0 <= cancelled <= n
        try:
            got = fut.result(timeout=0)
        except CancelledIOError as e:
            assert cancelled > 0
            assert e.errno == 125 and "ECANCELED" in str(e) and str(big_file.path) in str(e)
            failed = 1 + (int(e.__notes__[0].split()[0]) if getattr(e, "__notes__", None) else 0)
            assert failed == cancelled  # one 4 KiB request per piece
            nbytes, errs, _ = fut._parts[0].results()
            offs = np.random.default_rng(0).permutation(n) * 4096
            for i in np.flatnonzero(errs == 0)[:50]:  # what did complete is right
                assert dst[i * 4096 : (i + 1) * 4096].tobytes() == big_file.data[offs[i] : offs[i] + 4096]
        else:
            assert cancelled == 0 and got.tolist() == [4096] * n
        with pytest.raises(ClosedError):
            eng.open(big_file.path)


def test_engine_close_is_idempotent_and_context_managed(backend: str, data_file: DataFile) -> None:
    with make_engine(backend) as eng:
        f = eng.cached_file(data_file.path)
        assert not eng.closed
    assert eng.closed and f.closed
    eng.close()


# ---------------------------------------------------------------- File and Engine housekeeping


def test_file_handle_basics(engine: Engine, data_file: DataFile) -> None:
    f = engine.open(data_file.path)
    assert f.size() == data_file.size
    assert repr(f) == f"<storecomp.io.File {str(data_file.path)!r} r>"
    assert not f.closed
    f.close()
    f.close()
    assert f.closed and "closed" in repr(f)


def test_cached_file_reuses_descriptors_lru(backend: str, tmp_path: Path) -> None:
    paths = [write_file(tmp_path / f"{i}.bin", random_bytes(100, seed=i)) for i in range(3)]
    eng = make_engine(backend, max_open_files=2)
    try:
        f0 = eng.cached_file(paths[0])
        assert eng.cached_file(str(paths[0])) is f0
        eng.cached_file(paths[1])
        eng.cached_file(paths[0])  # most recently used
        eng.cached_file(paths[2])  # evicts paths[1]
        assert eng.cached_file(paths[0]) is f0
        assert len(eng._files) == 2
        # An evicted File a caller still holds keeps working.
        dst = np.zeros(100, np.uint8)
        assert f0.pread_into(dst, 0) == 100 and dst.tobytes() == paths[0].read_bytes()
    finally:
        eng.close()


def test_engine_reports_backend(backend: str) -> None:
    with make_engine(backend) as eng:
        assert eng.backend == backend
        assert eng.backend_reason
        assert backend in repr(eng)
        assert eng.options.engine == backend


def test_auto_engine_prefers_io_uring_when_permitted() -> None:
    from tests.conftest import IO_URING_OK

    with Engine() as eng:
        assert eng.backend == ("io_uring" if IO_URING_OK else "threads")


def test_options_from_environment_reach_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECOMP_ENGINE", "threads")
    monkeypatch.setenv("STORECOMP_THREADS", "3")
    monkeypatch.setenv("STORECOMP_SPLIT_BYTES", str(128 << 10))
    with Engine() as eng:
        assert eng.backend == "threads"
        assert eng._native.threads == 3 and eng._native.split_bytes == 128 << 10
    with Engine(threads=2) as eng:  # keyword overrides beat the environment
        assert eng._native.threads == 2


def test_many_threads_read_through_one_engine(engine: Engine, data_file: DataFile) -> None:
    errors: list[BaseException] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(25):
                off = int(rng.integers(0, data_file.size - 100_000))
                n = int(rng.integers(1, 100_000))
                dst = np.empty(n, np.uint8)
                assert scio.read_into(data_file.path, dst, off, engine=engine) == n
                assert dst.tobytes() == data_file.data[off : off + n]
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


def test_device_read_cancelled_by_close_is_cancelled_io_error() -> None:
    """A device read still queued when its engine closes raises CancelledIOError, as host reads do."""
    import concurrent.futures

    from storecomp.errors import CancelledIOError
    from storecomp.io import IOFuture

    queued: concurrent.futures.Future[np.ndarray] = concurrent.futures.Future()
    assert queued.cancel()  # what the copier pool's shutdown(cancel_futures=True) does
    one = np.array([4096], np.uint64)
    fut = IOFuture([], ["/data/x"], np.zeros(0, np.int64), one, one, "read", True, [], ("bounce",), device_part=queued)
    assert fut.wait(1.0)
    with pytest.raises(CancelledIOError, match="/data/x"):
        fut.result()
