"""storecomp._native directly: the C++ engine, its batches, HostBuffer, the io_uring probe.

The Python layer checks arguments before they get here; these tests check
that the native layer itself stays safe (no crash, an errno per request) and
correct when driven through its raw interface.
"""

from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

from storecomp import _native
from tests.conftest import BACKENDS, IO_URING_OK, DataFile, drop_cache, needs_io_uring, run_python

MODES = {"off": _native.MODE_BUFFERED, "on": _native.MODE_DIRECT, "auto": _native.MODE_AUTO}


@pytest.fixture
def native(backend: str):
    eng = _native.Engine(backend, 16, 2, 1 << 20, 4096, 1 << 20)
    yield eng
    eng.shutdown()


def submit_reads(eng, fid: int, offsets, lengths, addrs, mode: int):
    n = len(offsets)
    return eng.submit(
        np.full(n, fid, np.uint32),
        np.zeros(n, np.uint8),
        np.asarray(offsets, np.uint64),
        np.asarray(lengths, np.uint64),
        np.asarray(addrs, np.uint64),
        mode,
    )


def test_probe_reports_compiled_and_permitted() -> None:
    probe = _native.probe_io_uring()
    assert set(probe) == {"compiled", "permitted", "reason"}
    assert probe["compiled"] == _native.HAVE_LIBURING
    assert probe["permitted"] == IO_URING_OK
    assert probe["reason"]


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_engine_reports_backend_and_config(backend_name: str) -> None:
    if backend_name == "io_uring" and not IO_URING_OK:
        pytest.skip("io_uring unavailable")
    eng = _native.Engine(backend_name, 8, 3, 1 << 16, 512, 1 << 16)
    try:
        assert eng.backend == backend_name
        assert eng.backend_reason == ("threads requested" if backend_name == "threads" else "io_uring permitted")
        assert (eng.queue_depth, eng.threads, eng.split_bytes, eng.align) == (8, 3, 1 << 16, 512)
        assert set(eng.stats()) == {
            "requests",
            "pieces",
            "bytes_read",
            "bytes_written",
            "errors",
            "bounce_pieces",
            "direct_fallbacks",
            "nowait_hits",
            "nowait_misses",
            "fixed_buffer_pieces",
            "cancelled",
            "ring_lost",
            "bounce_handoffs",
            "bounce_arena_bytes",
            "mapped_pieces",
            "mapped_faults",
            "populated_bytes",
            "populate_skipped",
        }
        assert all(v == 0 for v in eng.stats().values())
    finally:
        eng.shutdown()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"align": 1000},
        {"align": 256},
        {"split_bytes": 0},
        {"split_bytes": 4096 + 512},
        {"split_bytes": 2 << 30},
        {"bounce_bytes": 4096},
        {"queue_depth": 0},
        {"queue_depth": 4097},
        {"threads": 0},
        {"threads": 1025},
        {"backend": "spdk"},
    ],
)
def test_engine_rejects_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        _native.Engine(**kwargs)


def test_host_buffer_is_aligned_zeroed_and_exposes_its_memory() -> None:
    buf = _native.HostBuffer(3 * 4096 + 5)
    assert buf.address % 4096 == 0
    assert buf.nbytes == 3 * 4096 + 5
    view = np.frombuffer(buf, np.uint8)
    assert view.ctypes.data == buf.address
    assert view.size == buf.nbytes and not view.any()
    view[:] = 7
    buf.prefault()  # touches pages by writing zeros: documented as first-use preparation
    mv = memoryview(buf)
    assert not mv.readonly and mv.nbytes == buf.nbytes


def test_host_buffer_rejects_zero_size() -> None:
    with pytest.raises(ValueError):
        _native.HostBuffer(0)


@pytest.mark.parametrize("mode", list(MODES))
def test_raw_batch_reads_and_reports_per_request(native, data_file: DataFile, mode: str) -> None:
    fid = native.open(str(data_file.path))
    dst = np.zeros(3 * 8192, np.uint8)
    base = dst.ctypes.data
    batch = submit_reads(
        native, fid, [0, 5000, data_file.size - 100], [8192, 8192, 8192], [base, base + 8192, base + 16384], MODES[mode]
    )
    assert batch.wait(30.0)
    assert batch.done() and len(batch) == 3
    nbytes, errs, _ = batch.results()
    assert nbytes.tolist() == [8192, 8192, 100]
    assert errs.tolist() == [0, 0, 0]
    assert bytes(dst[:8192]) == data_file.data[:8192]
    assert bytes(dst[8192:16384]) == data_file.data[5000:13192]
    assert bytes(dst[16384:16484]) == data_file.data[-100:]
    assert not dst[16484:].any()


def test_raw_batch_gives_errno_per_bad_request(native, small_file: DataFile) -> None:
    fid = native.open(str(small_file.path))
    dst = np.zeros(4096, np.uint8)
    a = dst.ctypes.data
    n = 4
    batch = native.submit(
        np.array([fid, 999, fid, fid], np.uint32),
        np.array([0, 0, 0, 1], np.uint8),
        np.array([0, 0, 2**63, 0], np.uint64),
        np.array([100, 100, 100, 100], np.uint64),
        np.array([a, a, a, a], np.uint64),
        _native.MODE_BUFFERED,
    )
    assert batch.wait(30.0)
    nbytes, errs, err_offsets = batch.results()
    # good read; unknown file id; offset beyond off_t; write to a read-only file
    assert errs.tolist() == [0, errno.EBADF, errno.EINVAL, errno.EBADF]
    assert nbytes.tolist() == [100, 0, 0, 0]
    assert err_offsets.tolist()[1:] == [0, 2**63, 0]
    assert native.stats()["errors"] == n - 1


def test_raw_batch_rejects_null_address(native, small_file: DataFile) -> None:
    fid = native.open(str(small_file.path))
    batch = submit_reads(native, fid, [0], [10], [0], _native.MODE_BUFFERED)
    assert batch.wait(30.0)
    assert batch.results()[1].tolist() == [errno.EINVAL]


def test_submit_checks_array_shapes_and_mode(native, small_file: DataFile) -> None:
    fid = native.open(str(small_file.path))
    dst = np.zeros(16, np.uint8)
    with pytest.raises(ValueError, match="mode"):
        submit_reads(native, fid, [0], [16], [dst.ctypes.data], 3)
    with pytest.raises(ValueError, match="lengths"):
        native.submit(
            np.array([fid], np.uint32),
            np.zeros(1, np.uint8),
            np.zeros(1, np.uint64),
            np.zeros(2, np.uint64),
            np.zeros(1, np.uint64),
            0,
        )


def test_empty_and_zero_length_batches_finish_at_once(native, small_file: DataFile) -> None:
    fid = native.open(str(small_file.path))
    empty = submit_reads(native, fid, [], [], [], _native.MODE_AUTO)
    assert empty.done() and len(empty) == 0
    zero = submit_reads(native, fid, [0], [0], [0], _native.MODE_AUTO)
    assert zero.done()
    assert zero.results()[0].tolist() == [0]


def test_large_request_is_split_into_pieces(backend: str, data_file: DataFile) -> None:
    eng = _native.Engine(backend, 16, 2, 64 << 10, 4096, 1 << 20)
    try:
        fid = eng.open(str(data_file.path))
        dst = np.empty(1 << 20, np.uint8)
        batch = submit_reads(eng, fid, [777], [dst.size], [dst.ctypes.data], _native.MODE_BUFFERED)
        assert batch.wait(30.0)
        assert batch.results()[0].tolist() == [dst.size]
        assert eng.stats()["pieces"] == 16  # 1 MiB in 64 KiB pieces
    finally:
        eng.shutdown()


def test_unaligned_direct_read_goes_through_the_bounce_area(native, data_file: DataFile) -> None:
    fid = native.open(str(data_file.path))
    raw = np.zeros(20000, np.uint8)
    dst = raw[3 : 3 + 10001]  # address, offset and length all unaligned
    batch = submit_reads(native, fid, [4097], [dst.size], [dst.ctypes.data], _native.MODE_DIRECT)
    assert batch.wait(30.0)
    assert batch.results()[1].tolist() == [0]
    assert bytes(dst) == data_file.data[4097 : 4097 + 10001]
    assert native.stats()["bounce_pieces"] >= 1
    assert not raw[:3].any() and not raw[3 + 10001 :].any()


def test_write_then_fsync(native, tmp_path) -> None:
    path = tmp_path / "w.bin"
    fid = native.open(str(path), True, True)
    src = np.arange(8192, dtype=np.uint8)
    batch = native.submit(
        np.array([fid], np.uint32),
        np.ones(1, np.uint8),
        np.array([100], np.uint64),
        np.array([src.size], np.uint64),
        np.array([src.ctypes.data], np.uint64),
        _native.MODE_BUFFERED,
    )
    assert batch.wait(30.0)
    assert batch.results()[0].tolist() == [8192]
    native.fsync(fid)
    assert path.read_bytes() == bytes(100) + src.tobytes()
    assert native.stats()["bytes_written"] == 8192


def test_open_raises_oserror_with_errno(native, tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        native.open(str(tmp_path / "missing"))
    assert info.value.filename == str(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        native.open(str(tmp_path))


def test_close_file_keeps_in_flight_io_valid(native, data_file: DataFile) -> None:
    fid = native.open(str(data_file.path))
    assert native.open_files() == 1
    dst = np.empty(1 << 20, np.uint8)
    batch = submit_reads(native, fid, [0], [dst.size], [dst.ctypes.data], _native.MODE_DIRECT)
    native.close_file(fid)  # the batch holds the descriptor until it is done
    native.close_file(fid)  # unknown ids are ignored
    assert native.open_files() == 0
    assert batch.wait(30.0)
    assert batch.results()[1].tolist() == [0]
    assert bytes(dst) == data_file.data[: 1 << 20]


def test_submit_after_shutdown_raises_and_shutdown_is_idempotent(native, small_file: DataFile) -> None:
    fid = native.open(str(small_file.path))
    native.shutdown()
    native.shutdown()
    dst = np.zeros(10, np.uint8)
    with pytest.raises(RuntimeError, match="shut down"):
        submit_reads(native, fid, [0], [10], [dst.ctypes.data], _native.MODE_BUFFERED)


@pytest.mark.parametrize("mode", list(MODES))
def test_concurrent_submitters_share_one_engine(native, data_file: DataFile, mode: str) -> None:
    fid = native.open(str(data_file.path))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(20):
                offs = rng.integers(0, data_file.size - 70000, 16).astype(np.uint64)
                lens = rng.integers(1, 65536, 16).astype(np.uint64)
                dst = np.zeros(16 * 65536, np.uint8)
                addrs = dst.ctypes.data + np.arange(16, dtype=np.uint64) * 65536
                batch = submit_reads(native, fid, offs, lens, addrs, MODES[mode])
                assert batch.wait(30.0)
                nbytes, errs, _ = batch.results()
                assert not errs.any()
                assert (nbytes == lens).all()
                for i in range(16):
                    o, n = int(offs[i]), int(lens[i])
                    assert bytes(dst[i * 65536 : i * 65536 + n]) == data_file.data[o : o + n]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]


@needs_io_uring
def test_register_buffer_only_once_and_fixed_reads(data_file: DataFile) -> None:
    eng = _native.Engine("io_uring", 16, 2, 1 << 20, 4096, 1 << 20)
    try:
        buf = _native.HostBuffer(1 << 20)
        assert eng.register_buffer(buf.address, buf.nbytes)
        assert not eng.register_buffer(buf.address, buf.nbytes)  # one registration at a time
        fid = eng.open(str(data_file.path))
        batch = submit_reads(eng, fid, [8192], [1 << 20], [buf.address], _native.MODE_DIRECT)
        assert batch.wait(30.0)
        assert batch.results()[1].tolist() == [0]
        assert eng.stats()["fixed_buffer_pieces"] == 1
        assert bytes(np.frombuffer(buf, np.uint8)) == data_file.data[8192 : 8192 + (1 << 20)]
        eng.unregister_buffer(buf.address)
        eng.unregister_buffer(buf.address)
        assert eng.register_buffer(buf.address, buf.nbytes)
        eng.unregister_buffer(buf.address)
    finally:
        eng.shutdown()


def test_threads_engine_never_registers_buffers() -> None:
    eng = _native.Engine("threads")
    try:
        buf = _native.HostBuffer(8192)
        assert not eng.register_buffer(buf.address, buf.nbytes)
        eng.unregister_buffer(buf.address)
    finally:
        eng.shutdown()


def test_seccomp_blocked_io_uring_probe_in_child() -> None:
    """tests.seccomp installs a real seccomp filter: the probe then reports EPERM."""
    out = run_python(
        """
        from storecomp import _native
        from tests.seccomp import block_io_uring; block_io_uring()
        p = _native.probe_io_uring()
        assert not p["permitted"], p
        e = _native.Engine("auto")
        assert e.backend == "threads", e.backend
        print(e.backend_reason)
        try:
            _native.Engine("io_uring")
        except RuntimeError as ex:
            print("refused:", ex)
        else:
            raise SystemExit("io_uring engine created despite seccomp")
        """
    )
    if _native.HAVE_LIBURING:
        assert "Operation not permitted" in out.stdout
    assert "refused: io_uring unavailable" in out.stdout


def test_cold_direct_reads_are_correct(native, tmp_path) -> None:
    data = np.random.default_rng(5).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "cold.bin"
    path.write_bytes(data)
    drop_cache(path)
    fid = native.open(str(path))
    dst = np.empty(len(data), np.uint8)
    batch = submit_reads(native, fid, [0], [len(data)], [dst.ctypes.data], _native.MODE_AUTO)
    assert batch.wait(30.0)
    assert batch.results()[0].tolist() == [len(data)]
    assert dst.tobytes() == data


@needs_io_uring
def test_unaligned_direct_reads_bounce_in_the_ring_beyond_the_arena(data_file: DataFile) -> None:
    """io_uring: unaligned O_DIRECT reads bounce through the ring's arena (16
    MiB), not the thread pool: 48 unaligned 1 MiB reads need three times the
    arena, so pieces wait for room and are issued as completions free it;
    every byte is the file's and nothing outside the spans is written."""
    eng = _native.Engine("io_uring", 32, 1, 1 << 20, 4096, 1 << 20)
    try:
        fid = eng.open(str(data_file.path))
        n, length = 48, (1 << 20) - 5
        rng = np.random.default_rng(3)
        offsets = rng.integers(0, data_file.size - length, n)
        raw = np.zeros(n * (length + 7) + 16, np.uint8)
        dst_offs = 3 + np.arange(n) * (length + 7)
        batch = submit_reads(eng, fid, offsets, [length] * n, raw.ctypes.data + dst_offs, _native.MODE_DIRECT)
        assert batch.wait(60.0)
        got, errs, _ = batch.results()
        assert errs.tolist() == [0] * n and got.tolist() == [length] * n
        for o, d in zip(offsets.tolist(), dst_offs.tolist(), strict=True):
            assert bytes(raw[d : d + length]) == data_file.data[o : o + length]
            assert not raw[d - 3 : d].any() and not raw[d + length : d + length + 4].any()
        stats = eng.stats()
        assert stats["bounce_pieces"] == n and stats["errors"] == 0
    finally:
        eng.shutdown()


def test_native_crc32c_matches_the_crc32c_package() -> None:
    import crc32c

    rng = np.random.default_rng(11)
    buf = rng.integers(0, 256, 3 << 20, np.uint8).tobytes()
    for _ in range(300):
        a, n = int(rng.integers(0, 64)), int(rng.integers(0, 1 << 20))
        v = int(rng.integers(0, 1 << 32))
        assert _native.crc32c(buf[a : a + n], v) == crc32c.crc32c(buf[a : a + n], v)
    # Around the stream block sizes and where carry-less folding takes over (1024 bytes, 256 per turn).
    for n in (0, 1, 7, 8, 255, 767, 768, 769, 1023, 1024, 1025, 1279, 1280, 1281, 2047, 24575, 24576, 24577):
        for a in (0, 3, 64):
            assert _native.crc32c(buf[a : a + n]) == crc32c.crc32c(buf[a : a + n])
            assert _native.crc32c(buf[a : a + n], 0xFFFFFFFF) == crc32c.crc32c(buf[a : a + n], 0xFFFFFFFF)
    with pytest.raises(ValueError, match="contiguous"):
        _native.crc32c(np.zeros(16, np.uint8)[::2])


@pytest.mark.parametrize("mode", ["on", "off", "auto"])
def test_batch_checksums_are_computed_as_requests_land(native, data_file: DataFile, mode: str) -> None:
    """crc_steps: the engine's threads compute one crc32c per chunk of each
    request (several pieces: split at 1 MiB), also for unaligned ones and short reads at end of file.
    Chunks inside one piece are checked as that piece lands; chunks across piece boundaries (a step
    that does not divide the split, or one larger than it) once the request's last piece is in."""
    import crc32c

    fid = native.open(str(data_file.path))
    offs = [0, 4097, 1 << 20, data_file.size - 100, 3, 512, 0]
    lens = [65536, 10001, (2 << 20) + 5, 100 + 50, (3 << 20) + 7, (2 << 20) + 100, data_file.size + 9000]
    steps = [4096, 0, 65536, 64, 768 << 10, (3 << 20) // 2, 700_001]  # the 4th and last run past end of file
    raw = np.zeros(sum(lens) + 16, np.uint8)
    dst = 3 + np.concatenate([[0], np.cumsum(lens)[:-1]])
    batch = native.submit(
        np.full(len(offs), fid, np.uint32), np.zeros(len(offs), np.uint8), np.array(offs, np.uint64), np.array(lens, np.uint64),
        (raw.ctypes.data + dst).astype(np.uint64), MODES[mode], np.array(steps, np.uint64),
    )  # fmt: skip
    assert batch.wait(30.0)
    got = batch.crcs().tolist()
    want = []
    for o, n, s in zip(offs, lens, steps, strict=True):
        if s:
            data = data_file.data[o : o + n]
            want += [crc32c.crc32c(data[k : k + s]) for k in range(0, len(data), s)] + [0] * (-(-n // s) - -(-len(data) // s))
    assert got == want
