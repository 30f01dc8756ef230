"""Bad input and faults: every one gets a clear storecomp error (or a defined result), never a crash.

Each case of the issue list is its own test: negative and overflowing
offsets and lengths, reads past end of file, read-only, too small,
non-contiguous and memory-less destinations, missing files, directories,
closed handles and engines, io_uring refused by seccomp, and the translation
of kernel errors into StorageIOError with path, offset and errno name.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import storecomp.io as scio
from storecomp.errors import (
    ClosedError,
    InvalidArgumentError,
    IsADirectoryError_,
    NotFoundError,
    ReadOnlyDestinationError,
    ShortReadError,
    StorageIOError,
    StorecompError,
    UnavailableError,
    UnsupportedBufferError,
)
from storecomp.io import Engine, ReadRequest, StagingPool
from tests.conftest import DataFile, NoMemory, drop_cache, make_engine, run_python, warm_cache

# ---------------------------------------------------------------- offsets and lengths


@pytest.mark.parametrize("offset", [-1, -(2**63), -4096])
def test_negative_offset(engine: Engine, small_file: DataFile, offset: int) -> None:
    dst = np.zeros(10, np.uint8)
    f = engine.open(small_file.path)
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        f.pread_into(dst, offset)
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        f.read_many_into(dst, [0, offset], [5, 5], [0, 5])
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        engine.read_batch([ReadRequest(small_file.path, dst, offset)])
    assert not dst.any()
    assert engine.stats()["requests"] == 0  # refused before any I/O


def test_negative_length(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(10, np.uint8)
    f = engine.open(small_file.path)
    with pytest.raises(InvalidArgumentError, match="length"):
        f.pread_into(dst, 0, length=-1)
    with pytest.raises(InvalidArgumentError, match="lengths"):
        f.read_many_into(dst, [0, 0], [5, -5], [0, 5])
    with pytest.raises(InvalidArgumentError, match="length"):
        engine.read_batch([ReadRequest(small_file.path, dst, 0, length=-3)])
    assert engine.stats()["requests"] == 0


def test_negative_scalar_length_in_read_many_into(engine: Engine, small_file: DataFile) -> None:
    with pytest.raises(InvalidArgumentError, match="length"):
        engine.open(small_file.path).read_many_into(np.zeros(10, np.uint8), [0], -1, [0])


@pytest.mark.parametrize(
    "offset,length",
    [(2**63, 1), (2**64, 1), (2**64 + 5, 1), (2**63 - 1, 2), (2**63 - 10, 100), ((1 << 62) + 1, 2**63 - 1)],
    ids=["2^63", "2^64", "past-2^64", "end-2^63+1", "end-overflows", "huge-both"],
)
def test_offset_plus_length_overflowing_2_63(engine: Engine, small_file: DataFile, offset: int, length: int) -> None:
    dst = np.zeros(128, np.uint8)
    f = engine.open(small_file.path)
    with pytest.raises(InvalidArgumentError):
        f.read_many_into(dst, [offset], [length], [0])
    with pytest.raises(InvalidArgumentError):
        engine.read_batch([ReadRequest(small_file.path, dst, offset, length=length)])
    if offset + min(length, 128) > 2**63 - 1:
        with pytest.raises(InvalidArgumentError):
            f.pread_into(dst, offset, length=min(length, 128))
    assert engine.stats()["requests"] == 0


def test_length_beyond_2_63_is_refused(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(8, np.uint8)
    with pytest.raises(InvalidArgumentError):
        engine.open(small_file.path).read_many_into(dst, [0], [2**63], [0])
    with pytest.raises(InvalidArgumentError):
        engine.open(small_file.path).read_many_into(dst, [0], [2**64], [0])


def test_non_integer_offsets_and_mismatched_arrays(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(8, np.uint8)
    f = engine.open(small_file.path)
    with pytest.raises(InvalidArgumentError, match="integers"):
        f.read_many_into(dst, [0.5], [1], [0])
    with pytest.raises(InvalidArgumentError, match="integers"):
        f.read_many_into(dst, [0], [1], ["0"])
    with pytest.raises(InvalidArgumentError, match="differ in length"):
        f.read_many_into(dst, [0, 1], [1], [0, 1])
    with pytest.raises(InvalidArgumentError):
        f.pread_into(dst, 0, dst_offset=-1)


# ---------------------------------------------------------------- end of file


def test_read_past_eof_exact_raises_short_read(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(4096, np.uint8)
    with pytest.raises(ShortReadError) as info:
        scio.read_into(small_file.path, dst, small_file.size - 1000, engine=engine)
    e = info.value
    assert isinstance(e, EOFError) and isinstance(e, StorecompError)
    assert (e.path, e.offset, e.requested, e.got) == (str(small_file.path), small_file.size - 1000, 4096, 1000)
    assert str(small_file.path) in str(e) and f"end of file at {small_file.size}" in str(e)
    assert dst[:1000].tobytes() == small_file.data[-1000:]  # what exists is still delivered


def test_read_past_eof_inexact_returns_the_count(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(4096, np.uint8)
    assert scio.read_into(small_file.path, dst, small_file.size - 10, exact=False, engine=engine) == 10
    assert dst[:10].tobytes() == small_file.data[-10:]
    assert scio.read_into(small_file.path, dst, small_file.size, exact=False, engine=engine) == 0
    assert scio.read_into(small_file.path, dst, 10**12, exact=False, engine=engine) == 0
    f = engine.open(small_file.path)
    fut = f.read_many_into(dst, [0, small_file.size - 5, small_file.size + 5], [100, 100, 100], [0, 100, 200], exact=False)
    assert fut.result().tolist() == [100, 5, 0]


@pytest.mark.parametrize("aligned_dst", [True, False], ids=["aligned-dst", "unaligned-dst"])
@pytest.mark.parametrize("cache", ["hot", "cold"])
def test_read_past_eof_never_leaves_garbage_in_the_destination(
    engine: Engine, small_file: DataFile, aligned_dst: bool, cache: str
) -> None:
    # The documented contract (io.engine): past the returned count, the requested
    # range of dst holds its old bytes or zeros (an aligned O_DIRECT read lets the
    # kernel zero the rest of the last block, as pread with O_DIRECT does); dst
    # beyond the requested range is never touched.
    pool = StagingPool(1 << 16, 1 << 16, pin=False)
    with pool.acquire() as slot:
        dst = slot.array if aligned_dst else slot.array[1:]
        dst[:] = 0xAB
        if cache == "hot":
            warm_cache(small_file.path)
        elif not drop_cache(small_file.path):
            pytest.skip("cannot evict the file from the page cache here")
        # file is 10,000 bytes: [8192, 8192 + 8192) crosses EOF at 10,000 inside a block
        n = scio.read_into(small_file.path, dst, 8192, length=8192, exact=False, engine=engine)
        assert n == small_file.size - 8192
        assert dst[:n].tobytes() == small_file.data[8192:]
        rest = dst[n:8192]
        assert ((rest == 0xAB) | (rest == 0)).all(), "bytes past end of file are neither old nor zero"
        assert (dst[8192:] == 0xAB).all(), "bytes past the requested range were overwritten"
    pool.close()


# ---------------------------------------------------------------- destinations


@pytest.mark.parametrize("backend_name", ["io_uring", "threads"])
def test_unaligned_buffers_with_o_direct_get_no_einval(backend_name: str, data_file: DataFile) -> None:
    eng = make_engine(backend_name, "on")
    try:
        f = eng.open(data_file.path)
        for misalign in (1, 3, 511, 513, 4095):
            back = bytearray(70_000 + misalign)
            dst = memoryview(back)[misalign:]
            drop_cache(data_file.path)
            assert f.pread_into(dst, 12_345) == 70_000
            assert bytes(dst) == data_file.data[12_345:82_345]
        assert eng.stats()["errors"] == 0
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["bytes", "readonly-numpy", "readonly-memoryview"])
def test_read_only_destination(engine: Engine, small_file: DataFile, kind: str) -> None:
    if kind == "bytes":
        dst = bytes(100)
    elif kind == "readonly-numpy":
        dst = np.zeros(100, np.uint8)
        dst.flags.writeable = False
    else:
        dst = memoryview(bytearray(100)).toreadonly()
    with pytest.raises(ReadOnlyDestinationError):
        scio.read_into(small_file.path, dst, 0, engine=engine)
    with pytest.raises(ReadOnlyDestinationError):
        engine.open(small_file.path).read_many_into(dst, [0], [10], [0])
    with pytest.raises(ReadOnlyDestinationError):
        engine.read_batch([ReadRequest(small_file.path, dst)])
    assert bytes(dst) == bytes(100)
    assert issubclass(ReadOnlyDestinationError, InvalidArgumentError)


def test_destination_smaller_than_request(engine: Engine, small_file: DataFile) -> None:
    dst = np.zeros(100, np.uint8)
    f = engine.open(small_file.path)
    with pytest.raises(InvalidArgumentError, match="too small"):
        f.pread_into(dst, 0, length=101)
    with pytest.raises(InvalidArgumentError, match="too small"):
        f.pread_into(dst, 0, length=50, dst_offset=51)
    with pytest.raises(InvalidArgumentError, match="too small"):
        f.read_many_into(dst, [0, 0], [50, 60], [0, 50])
    with pytest.raises(InvalidArgumentError):
        f.read_many_into(dst, [0], [1], [2**64 - 1])
    with pytest.raises(InvalidArgumentError, match="too small"):
        engine.read_batch([ReadRequest(small_file.path, dst, 0, length=10, dst_offset=95)])
    assert not dst.any() and engine.stats()["requests"] == 0


@pytest.mark.parametrize("kind", ["numpy-strided", "numpy-2d-column", "memoryview-strided", "torch-transposed"])
def test_non_contiguous_destination(engine: Engine, small_file: DataFile, kind: str) -> None:
    if kind == "numpy-strided":
        dst = np.zeros(200, np.uint8)[::2]
    elif kind == "numpy-2d-column":
        dst = np.zeros((10, 10), np.uint8)[:, 3]
    elif kind == "memoryview-strided":
        dst = memoryview(bytearray(200))[::2]
    else:
        torch = pytest.importorskip("torch")
        dst = torch.zeros(10, 10).t()
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        scio.read_into(small_file.path, dst, 0, engine=engine)


@pytest.mark.parametrize("obj", [NoMemory(), None, 42, "a string", {"a": 1}], ids=repr)
def test_destination_with_no_memory(engine: Engine, small_file: DataFile, obj) -> None:
    with pytest.raises(UnsupportedBufferError, match="exposes no memory"):
        scio.read_into(small_file.path, obj, 0, engine=engine)
    with pytest.raises(UnsupportedBufferError):
        engine.read_batch([ReadRequest(small_file.path, obj)])


def test_cuda_destination_without_cuda_is_refused(engine: Engine, small_file: DataFile) -> None:
    from storecomp.io import cuda

    if cuda.device_count():
        pytest.skip("a CUDA device exists")

    class FakeCuda:
        __cuda_array_interface__ = {"shape": (16,), "typestr": "|u1", "data": (1 << 40, False), "version": 3}

    with pytest.raises(UnavailableError, match="CUDA"):
        scio.read_into(small_file.path, FakeCuda(), 0, engine=engine)


# ---------------------------------------------------------------- files


def test_missing_file(engine: Engine, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "missing.bin"
    for call in (
        lambda: scio.read_into(missing, np.zeros(1, np.uint8), engine=engine),
        lambda: engine.open(missing),
        lambda: engine.read_batch([ReadRequest(missing, np.zeros(1, np.uint8))]),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        e = info.value
        assert isinstance(e, FileNotFoundError) and isinstance(e, StorecompError)
        assert e.errno == errno.ENOENT and e.filename == str(missing)
        assert str(missing) in str(e) and "ENOENT" in str(e)


def test_directory_given_as_file(engine: Engine, tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError) as info:
        scio.read_into(tmp_path, np.zeros(1, np.uint8), engine=engine)
    assert isinstance(info.value, IsADirectoryError_) and isinstance(info.value, StorecompError)
    assert info.value.errno == errno.EISDIR and str(tmp_path) in str(info.value)
    with pytest.raises(IsADirectoryError):
        engine.open(tmp_path, "r+")


def test_empty_path(engine: Engine) -> None:
    with pytest.raises(InvalidArgumentError, match="path"):
        engine.open("")


def test_closed_file_handle(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    path.write_bytes(b"x" * 100)
    f = engine.open(path, "r+")
    f.close()
    dst = np.zeros(10, np.uint8)
    for call in (
        lambda: f.pread_into(dst, 0),
        lambda: f.read_many_into(dst, [0], [1], [0]),
        lambda: f.pwrite(b"y", 0),
        lambda: f.sync(),
        lambda: f.size(),
    ):
        with pytest.raises(ClosedError, match="closed"):
            call()
    assert not dst.any()


def test_closed_engine(backend: str, small_file: DataFile) -> None:
    eng = make_engine(backend)
    f = eng.open(small_file.path)
    eng.close()
    dst = np.zeros(10, np.uint8)
    for call in (
        lambda: eng.open(small_file.path),
        lambda: eng.cached_file(small_file.path),
        lambda: eng.read_batch([ReadRequest(small_file.path, dst)]),
        lambda: scio.read_into(small_file.path, dst, engine=eng),
        lambda: f.pread_into(dst, 0),  # a File opened before the close
    ):
        with pytest.raises(ClosedError):
            call()
    assert not dst.any()


# ---------------------------------------------------------------- engine configuration


@pytest.mark.parametrize("option", [{"queue_depth": 5000}, {"threads": 2000}, {"split_bytes": 2 << 30}])
def test_engine_options_beyond_native_limits(option: dict) -> None:
    with pytest.raises(StorecompError):
        Engine(engine="threads", **option)


def test_forcing_io_uring_when_seccomp_blocks_it() -> None:
    out = run_python(
        """
        from storecomp import _native
        from storecomp.errors import UnavailableError
        from storecomp.io import Engine
        from tests.seccomp import block_io_uring; block_io_uring()
        try:
            Engine(engine="io_uring")
        except UnavailableError as e:
            assert isinstance(e, RuntimeError)
            print("refused:", e)
        else:
            raise SystemExit("Engine(engine='io_uring') did not raise")
        """
    )
    assert "refused: io_uring unavailable" in out.stdout
    assert "STORECOMP_ENGINE" in out.stdout  # the message says what to do


def test_io_uring_blocked_at_run_time_falls_back_to_threads(small_file: DataFile) -> None:
    out = run_python(
        f"""
        import numpy as np
        import storecomp.io as scio
        from storecomp import _native
        from storecomp.errors import UnavailableError
        from tests.seccomp import block_io_uring; block_io_uring()
        for direct in ("auto", "on", "off"):
            with scio.Engine(direct=direct) as eng:
                assert eng.backend == "threads", eng.backend
                reason = eng.backend_reason
                dst = np.zeros({small_file.size}, np.uint8)
                assert scio.read_into({str(small_file.path)!r}, dst, engine=eng) == {small_file.size}
                assert dst.tobytes() == open({str(small_file.path)!r}, "rb").read()
        assert scio.default_engine().backend == "threads"
        print("reason:", reason)
        """
    )
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("reason:"))
    if scio.Engine is not None and __import__("storecomp")._native.HAVE_LIBURING:
        assert "io_uring_setup" in line and "Operation not permitted" in line
    else:
        assert "liburing" in line


def test_io_uring_forced_by_environment_when_blocked() -> None:
    out = run_python(
        """
        from storecomp import _native
        from storecomp.errors import UnavailableError
        from storecomp.io import Engine
        from tests.seccomp import block_io_uring; block_io_uring()
        try:
            Engine()
        except UnavailableError as e:
            print("refused:", e)
        """,
        env={"STORECOMP_ENGINE": "io_uring"},
    )
    assert "refused: io_uring unavailable" in out.stdout


def test_a_ring_that_cannot_be_enabled_falls_back_to_threads(small_file: DataFile) -> None:
    """A seccomp profile that lets io_uring_setup through but refuses io_uring_register: the ring,
    created disabled, cannot be enabled, so it would never complete a read (it hung, spinning on
    EBADFD). The engine says why and reads with the thread pool; a forced io_uring is refused."""
    if not __import__("storecomp")._native.HAVE_LIBURING:
        pytest.skip("built without liburing: no ring to enable")
    out = run_python(
        f"""
        import numpy as np
        import storecomp.io as scio
        from storecomp.errors import UnavailableError
        from tests.seccomp import block_io_uring; block_io_uring("io_uring_register")
        with scio.Engine(direct="on") as eng:
            assert eng.backend == "threads", eng.backend
            dst = np.zeros({small_file.size}, np.uint8)
            assert scio.read_into({str(small_file.path)!r}, dst, engine=eng) == {small_file.size}
            assert dst.tobytes() == open({str(small_file.path)!r}, "rb").read()
            print("reason:", eng.backend_reason)
        try:
            scio.Engine(engine="io_uring")
        except UnavailableError as e:
            print("refused:", e)
        """,
        timeout=60,
    )
    reason = next(ln for ln in out.stdout.splitlines() if ln.startswith("reason:"))
    assert "IORING_REGISTER_ENABLE_RINGS" in reason and "Operation not permitted" in reason
    assert "refused: io_uring unavailable" in out.stdout and "IORING_REGISTER_ENABLE_RINGS" in out.stdout


@pytest.fixture
def sector_4k_device(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    """A loop block device with 4 KiB logical sectors over a 4 MiB file of random bytes:
    O_DIRECT there needs 4096-aligned offsets and lengths (statx dio_offset_align 4096)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup for a loop device with 4 KiB sectors")
    data = np.random.default_rng(12).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()
    image = tmp_path / "sectors.img"
    image.write_bytes(data)
    made = subprocess.run(["losetup", "-f", "--show", "-b", "4096", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"losetup could not make a loop device here: {made.stderr.strip()}")
    dev = made.stdout.strip()
    try:
        yield dev, data
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_bounces_use_the_devices_coarser_sector_size(backend: str, sector_4k_device: tuple[str, bytes]) -> None:
    """An engine configured with align=512 on a device with 4 KiB sectors: an unaligned O_DIRECT
    read must bounce in whole 4 KiB sectors (the kernel's statx alignment), not 512-byte units,
    which the device refuses with EINVAL."""
    dev, data = sector_4k_device
    with make_engine(backend, direct="on", align=512, split_bytes=1 << 20) as eng:
        f = eng.open(dev)
        # aligned to 512 but not to 4096; unaligned; crossing a piece; a whole-sector read as control
        ranges = [(512, 512), (1000, 3000), (4096 + 512, 70_000), ((1 << 20) - 700, 5000), (8192, 4096)]
        pool = StagingPool(1 << 20, 1 << 20, pin=False)
        with pool.acquire() as slot:
            for unaligned_dst in (False, True):
                buf = slot.array[1 if unaligned_dst else 0 :]
                douts = np.cumsum([0] + [n for _, n in ranges[:-1]])
                fut = f.read_many_into(buf, [o for o, _ in ranges], [n for _, n in ranges], douts)
                assert fut.result().tolist() == [n for _, n in ranges]
                for (o, n), d in zip(ranges, douts, strict=True):
                    assert buf[d : d + n].tobytes() == data[o : o + n], (o, n, unaligned_dst)
        pool.close()
        assert eng.stats()["bounce_pieces"] > 0 and eng.stats()["direct_fallbacks"] == 0


_MEM_ALIGN_CHILD = """
import numpy as np, storecomp.io as scio
from tests.seccomp import emulate_dio_mem_align

path, mem = {path!r}, {mem}
data = np.fromfile(path, np.uint8)
emulate_dio_mem_align(mem, enforce={enforce})
for backend in {backends!r}:
    with scio.Engine(engine=backend, direct="on", align=512, split_bytes=1 << 20) as eng:
        f = eng.open(path)
        assert f.direct_alignment() == (mem, 512), f.direct_alignment()
        base = np.empty((4 << 20) + 2 * mem, np.uint8)
        aligned = base[(-base.ctypes.data) % mem:]
        # 512-aligned pieces (in place before), unaligned ones, one whole and aligned, one of 1 MiB
        ranges = [(0, 65536), (512, 70000), (4608, 3000), ((1 << 20) - 700, 5000), (8192, 16384), (mem, 1 << 20)]
        douts = np.cumsum([0] + [n for _, n in ranges[:-1]])
        for shift in (0, 4096, 1):
            buf = aligned[shift:]
            fut = f.read_many_into(buf, [o for o, _ in ranges], [n for _, n in ranges], douts)
            assert fut.result().tolist() == [n for _, n in ranges]
            for (o, n), d in zip(ranges, douts):
                assert np.array_equal(buf[d:d + n], data[o:o + n]), (backend, o, n, shift)
        s = eng.stats()
        print(backend, "bounces:", s["bounce_pieces"], "buffered:", s["direct_fallbacks"], "errors:", s["errors"],
              "arena:", s["bounce_arena_bytes"])
"""


@pytest.mark.parametrize(("mem", "enforce"), [(16 << 10, True), (2 << 20, False)])
def test_bounces_honour_a_device_memory_alignment_above_a_page(data_file: DataFile, mem: int, enforce: bool) -> None:
    """A device whose O_DIRECT memory alignment (statx dio_mem_align) is coarser than align and
    than a page: bounces read into memory aligned to it, not to align or 4 KiB (EINVAL before),
    and a 512-aligned destination is not read in place. The io_uring arena gives page-aligned
    units, so such pieces bounce in the thread pool, which aligns inside its bounce area; an
    alignment larger than that area reads the piece buffered. No device here reports more than
    512: a seccomp supervisor raises statx's answer and (16 KiB) refuses misaligned reads."""
    import platform

    if os.geteuid() != 0 or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("the statx supervisor writes the reader's memory through /proc (root, x86_64 or aarch64)")
    backends = ["threads"] + (["io_uring"] if __import__("storecomp")._native.HAVE_LIBURING else [])
    code = _MEM_ALIGN_CHILD.format(path=str(data_file.path), mem=mem, enforce=enforce, backends=backends)
    out = run_python(code, timeout=120)
    assert len(out.stdout.splitlines()) == len(backends), out.stdout
    for line in out.stdout.splitlines():
        _, _, bounces, _, buffered, _, errors, _, arena = line.split()
        assert int(errors) == 0 and int(arena) == 0, line  # never in the ring's page-aligned arena
        if mem <= 1 << 20:
            assert int(bounces) > 0 and int(buffered) == 0, line
        else:
            assert int(buffered) > 0, line


# ---------------------------------------------------------------- kernel errors


@pytest.mark.parametrize("offset", [0, 8192])
def test_kernel_read_error_names_path_offset_and_errno(engine: Engine, offset: int) -> None:
    path = "/proc/self/mem"  # reading an unmapped address of our own memory fails with EIO
    if not os.path.exists(path):
        pytest.skip("no procfs")
    dst = np.zeros(4096, np.uint8)
    with pytest.raises(StorageIOError) as info:
        engine.open(path).pread_into(dst, offset)
    e = info.value
    assert e.errno == errno.EIO and e.filename == path and e.offset == offset and e.op == "read"
    assert isinstance(e, OSError) and isinstance(e, StorecompError)
    text = str(e)
    assert path in text and f"at offset {offset}" in text and "EIO" in text
    assert engine.stats()["errors"] >= 1


def test_kernel_write_error_names_path_offset_and_errno(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with engine.open(path, "w") as f:
        with pytest.raises(StorageIOError) as info:
            f.pwrite(b"x" * 4096, 1 << 50)  # beyond ext4's maximum file size
    e = info.value
    if e.errno != errno.EFBIG:
        pytest.skip(f"this file system allows {1 << 50}-byte files ({e})")
    assert e.op == "write" and e.offset == 1 << 50
    assert str(path) in str(e) and f"at offset {1 << 50}" in str(e) and "EFBIG" in str(e)


def test_first_of_several_failures_is_raised_with_a_note(engine: Engine) -> None:
    dst = np.zeros(3 * 4096, np.uint8)
    f = engine.open("/proc/self/mem")
    with pytest.raises(StorageIOError) as info:
        f.read_many_into(dst, [0, 4096, 8192], 4096, [0, 4096, 8192]).result()
    assert info.value.offset == 0
    assert any("2 more of 3 requests" in n for n in info.value.__notes__)


def test_sync_error_is_translated(engine: Engine) -> None:
    f = engine.open("/dev/null")  # fsync on a character device fails with EINVAL
    with pytest.raises(StorageIOError) as info:
        f.sync()
    assert info.value.errno == errno.EINVAL and "/dev/null" in str(info.value) and "EINVAL" in str(info.value)


# ---------------------------------------------------------------- users' own (unaligned) destinations


def _user_dst(kind: str, n: int) -> tuple[object, np.ndarray]:
    """A destination of ``n`` bytes exactly 1 byte past a page boundary, and a view of its whole allocation."""
    if kind == "torch":
        import torch

        base = torch.zeros(n + 4096 + 8, dtype=torch.uint8)
        skip = (-base.data_ptr()) % 4096 + 1
        return base[skip : skip + n], base.numpy()
    if kind == "bytearray":
        back = bytearray(n + 4096 + 8)
        arr = np.frombuffer(back, np.uint8)
        skip = (-arr.ctypes.data) % 4096 + 1
        return memoryview(back)[skip : skip + n], arr
    raw = np.zeros(n + 4096 + 8, np.uint8)
    skip = (-raw.ctypes.data) % 4096 + 1
    return raw[skip : skip + n], raw


@pytest.mark.parametrize("kind", ["numpy", "torch", "bytearray"])
def test_destinations_misaligned_by_one_byte_get_the_file_and_nothing_else(backend: str, data_file: DataFile, kind: str) -> None:
    """Many O_DIRECT reads at once into a buffer 1 byte past a page (the
    bounce path; in the ring with io_uring): exact bytes, margins untouched."""
    eng = make_engine(backend, "on")
    try:
        n, size = 64, 65536
        dst, whole = _user_dst(kind, n * size)
        offs = np.random.default_rng(5).integers(0, (data_file.size - size) // 4096, n) * 4096
        fut = eng.open(data_file.path).read_many_into(dst, offs, size, np.arange(n) * size)
        assert fut.result().tolist() == [size] * n
        view = np.frombuffer(memoryview(dst).cast("B") if kind == "bytearray" else np.asarray(dst), np.uint8)
        for i, o in enumerate(offs.tolist()):
            assert view[i * size : (i + 1) * size].tobytes() == data_file.data[o : o + size]
        skip = view.ctypes.data - whole.ctypes.data
        assert not whole[:skip].any() and not whole[skip + n * size :].any()
        assert eng.stats()["bounce_pieces"] >= n and eng.stats()["errors"] == 0
    finally:
        eng.close()


def test_unaligned_destination_dropped_while_reads_are_in_flight_is_kept_alive(backend: str, data_file: DataFile) -> None:
    """The caller drops its only reference to an unaligned destination while
    bounced reads into it are in flight: the future keeps it alive, and
    dropping the future too waits for the reads, so no byte lands in freed memory."""
    import gc
    import weakref

    eng = make_engine(backend, "on", queue_depth=2)
    try:
        n, size = 256, 65536
        drop_cache(data_file.path)
        raw = np.zeros(n * size + 4096 + 1, np.uint8)
        dst = raw[(-raw.ctypes.data) % 4096 + 1 :][: n * size]
        alive = weakref.ref(raw)
        offs = np.random.default_rng(6).integers(0, (data_file.size - size) // 4096, n) * 4096
        fut = eng.open(data_file.path).read_many_into(dst, offs, size, np.arange(n) * size)
        native = fut._parts[0]
        del raw, dst
        gc.collect()
        assert alive() is not None or native.done()  # kept alive by the future while in flight
        del fut
        gc.collect()
        assert native.done() and alive() is None  # dropping the future waited for the reads, then freed
        junk = [np.ones(n * size, np.uint8) for _ in range(2)]  # reuse the freed memory: never written
        assert all(j.all() for j in junk)
    finally:
        eng.close()


def test_large_unaligned_reads_fill_the_ring_and_copy_on_the_pool(data_file: DataFile) -> None:
    """1 MiB O_DIRECT reads into a buffer 1 byte past a page, more than one arena
    chunk holds at once: the arena grows, the copies run on the pool's threads,
    the checks run after each copy, and every byte is the file's."""
    from storecomp.crc import crc32c

    eng = make_engine("io_uring", "on", queue_depth=32)
    try:
        n, size, step = 48, 1 << 20, 64 << 10
        dst, whole = _user_dst("numpy", n * size)
        offs = np.random.default_rng(7).integers(0, (data_file.size - size) // 4096, n) * 4096
        drop_cache(data_file.path)
        fut = eng.open(data_file.path).read_many_into(dst, offs, size, np.arange(n) * size, crc_step=step)
        assert fut.result().tolist() == [size] * n
        want = [crc32c(data_file.data[o + k : o + k + step]) for o in offs.tolist() for k in range(0, size, step)]
        assert fut.checksums().tolist() == want
        for i, o in enumerate(offs.tolist()):
            assert dst[i * size : (i + 1) * size].tobytes() == data_file.data[o : o + size]
        skip = dst.ctypes.data - whole.ctypes.data
        assert not whole[:skip].any() and not whole[skip + n * size :].any()
        stats = eng.stats()
        assert stats["bounce_handoffs"] == n and stats["errors"] == 0
        assert stats["bounce_arena_bytes"] > 16 << 20  # one 16 MiB chunk holds 16 such pieces, the ring 32
    finally:
        eng.close()
    assert eng.stats()["bounce_arena_bytes"] == 0  # unmapped at close


def test_engine_closed_while_bounce_copies_are_pending(backend: str, data_file: DataFile) -> None:
    """close() while unaligned reads and their copies out of the arena are in
    flight: it returns once nothing can touch the arena or the destination;
    each read has its bytes or is cancelled, and nothing outside is written."""
    from storecomp.errors import CancelledIOError

    for _ in range(3):
        eng = make_engine(backend, "on", queue_depth=8)
        n, size = 64, 256 << 10
        dst, whole = _user_dst("numpy", n * size)
        offs = np.random.default_rng(8).integers(0, (data_file.size - size) // 4096, n) * 4096
        drop_cache(data_file.path)
        fut = eng.open(data_file.path).read_many_into(dst, offs, size, np.arange(n) * size)
        eng.close()
        assert fut.done()
        try:
            fut.result()
            done = n
        except CancelledIOError:
            done = 0
        for i, o in enumerate(offs.tolist()[:done]):
            assert dst[i * size : (i + 1) * size].tobytes() == data_file.data[o : o + size]
        skip = dst.ctypes.data - whole.ctypes.data
        assert not whole[:skip].any() and not whole[skip + n * size :].any()


def test_destination_aligned_as_the_kernel_asks_goes_direct(backend: str, data_file: DataFile) -> None:
    """A destination aligned to what the kernel reports for O_DIRECT on this file
    (statx STATX_DIOALIGN: 512 bytes on this virtio disk, 4 on NVMe) but not to a
    page lands in place, without a bounce; offsets need only the kernel's alignment too."""
    eng = make_engine(backend, "on")
    try:
        f = eng.open(data_file.path)
        alignment = f.direct_alignment()
        assert alignment is not None
        mem, off_align = alignment
        if mem >= 4096 and off_align >= 4096:
            pytest.skip(f"this file system asks for page alignment ({alignment}): nothing lies between")
        raw = np.zeros(8 * 65536 + 8192, np.uint8)
        base = (-raw.ctypes.data) % 4096 + max(mem, 16)  # past a page boundary, aligned as the kernel asks
        dst = raw[base : base + 8 * 65536]
        offs = np.arange(8) * 65536 + off_align * 3
        drop_cache(data_file.path)
        assert f.read_many_into(dst, offs, 65536, np.arange(8) * 65536).result().tolist() == [65536] * 8
        for i, o in enumerate(offs.tolist()):
            assert dst[i * 65536 : (i + 1) * 65536].tobytes() == data_file.data[o : o + 65536]
        assert not raw[:base].any() and not raw[base + 8 * 65536 :].any()
        assert eng.stats()["bounce_pieces"] == 0 and eng.stats()["errors"] == 0
    finally:
        eng.close()


# ---------------------------------------------------------------- descriptors closed under the engine

_RING_CLOSED_CHILD = """
import os, numpy as np, storecomp.io as scio
from storecomp.errors import EngineRingLostError
{setup}

def rings():
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{{fd}}") == "anon_inode:[io_uring]":
                out.append(int(fd))
        except OSError:
            pass
    return out

path, how = {path!r}, {how!r}
data = np.fromfile(path, np.uint8)
n, size = 64, 64 << 10
rng = np.random.default_rng(5)
before = set(rings())
with scio.Engine(direct="on", queue_depth=32) as eng:
    assert eng.backend == "io_uring", eng.backend_reason
    f = eng.open(path)
    f.pread_into(np.empty(4096, np.uint8))  # the ring is up (and private, where the kernel allows)
    mine = [fd for fd in rings() if fd not in before]
    print("ring descriptors:", len(mine))

    def submit():
        offs = rng.integers(0, (len(data) - size) // 512, n) * 512
        dst = np.empty(n * size + 1, np.uint8)[1:]  # unaligned: bounced through the ring's arena
        return dst, offs, f.read_many_into(dst, offs, size, np.arange(n) * size)

    def check(dst, offs):
        for i, o in enumerate(offs):
            assert np.array_equal(dst[i * size:(i + 1) * size], data[o:o + size]), i

    inflight = [submit() for _ in range(12)]
    if how == "closerange":  # every descriptor but stdio: the ring's, its wake-up's, the files'
        os.closerange(3, 1 << 16)
        f = eng.open(path)  # the file again (reads through the closed descriptors fail, EBADF)
    for fd in mine:  # what a dup2 over the ring's descriptor, or a close of it, does
        if how == "dup2":
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, fd)
            os.close(null)
        elif how == "close":
            os.close(fd)
    ok = lost = 0
    for dst, offs, fut in inflight + [submit() for _ in range(4)]:
        try:
            fut.result(timeout=60)
        except EngineRingLostError as e:
            assert isinstance(e, OSError) and e.errno == 77, e
            assert "io_uring descriptor was closed under it" in str(e) and path in str(e), e
            lost += 1
        except OSError as e:  # a read through a descriptor os.closerange closed
            assert how == "closerange" and e.errno == 9 and path in str(e), e
            lost += 1
        else:
            check(dst, offs)
            ok += 1
    for _ in range(4):  # from now on: correct bytes
        dst, offs, fut = submit()
        fut.result(timeout=60)
        check(dst, offs)
    print("ring_lost:", eng.stats()["ring_lost"], "ok:", ok, "lost:", lost)
if how == "dup2":  # the numbers now name /dev/null, which closing the engine leaves open
    for fd in mine:
        assert os.readlink(f"/proc/self/fd/{{fd}}") == "/dev/null"
"""


@pytest.mark.parametrize("how", ["close", "dup2", "closerange"])
@pytest.mark.parametrize("kernel", ["registered ring", "registered enters only", "descriptor only", "eventfd wake-up"])
def test_a_ring_descriptor_closed_under_the_engine(data_file: DataFile, kernel: str, how: str) -> None:
    """User code that closes descriptors it does not own (os.closerange) or dup2s over them. The
    reaper sleeps on a futex in the ring (6.7+), so callers wake it without a descriptor; on an
    eventfd (before 6.7) an idle reaper's wait is bounded, and a closed eventfd is replaced. Where
    the kernel allows (registered rings, 6.3+), the engine keeps no ring descriptor at all, so
    nothing can close it. Where only io_uring_enter takes the registered ring (5.18-6.2, here: a
    seccomp filter refusing io_uring_register through it) the reads go on, and closing the engine
    leaves alone the number that now names another file. Else (a kernel before 5.18, here: a filter
    refusing IORING_REGISTER_RING_FDS) the reaper sees io_uring_enter fail: reads that were in the
    ring fail with a clear error, the rest and every later read go to the thread pool. Before, the
    reaper looped on EBADF and no read ever completed. In a child with a timeout, so that a
    regression cannot hang the suite."""
    if not __import__("storecomp")._native.HAVE_LIBURING:
        pytest.skip("built without liburing: no ring")
    setup = ""
    if kernel == "descriptor only":
        setup = "from tests.seccomp import IORING_REGISTER_RING_FDS, refuse_io_uring_register\n"
        setup += "refuse_io_uring_register(IORING_REGISTER_RING_FDS)"
    elif kernel == "eventfd wake-up":  # no futex operation in the ring (before 6.7): a refused probe says so
        setup = "from tests.seccomp import IORING_REGISTER_PROBE, refuse_io_uring_register\n"
        setup += "refuse_io_uring_register(IORING_REGISTER_PROBE)"
    elif kernel == "registered enters only":
        setup = "from tests.seccomp import IORING_REGISTER_VIA_INDEX, refuse_io_uring_register\n"
        setup += "refuse_io_uring_register(19 | IORING_REGISTER_VIA_INDEX)  # IORING_REGISTER_IOWQ_MAX_WORKERS"
    out = run_python(_RING_CLOSED_CHILD.format(setup=setup, path=str(data_file.path), how=how), timeout=120)
    fds = int(next(ln for ln in out.stdout.splitlines() if ln.startswith("ring descriptors:")).split(":")[1])
    last = next(ln for ln in out.stdout.splitlines() if ln.startswith("ring_lost:")).split()
    ring_lost, ok, lost = int(last[1]), int(last[3]), int(last[5])
    if how == "closerange":  # the reads through the closed file descriptors may fail (EBADF)
        assert ring_lost == (kernel == "descriptor only"), out.stdout
    elif kernel == "descriptor only":
        assert fds == 1 and ring_lost == 1, out.stdout
    elif kernel == "registered enters only":  # the enters never see the descriptor: nothing is lost
        assert fds == 1 and ring_lost == 0 and lost == 0 and ok == 16, out.stdout
    elif fds == 0:  # the ring is private: closing descriptors cannot reach it
        assert ring_lost == 0 and lost == 0 and ok == 16, out.stdout
    assert ok + lost == 16
