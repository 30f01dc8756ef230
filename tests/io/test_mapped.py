"""Mapped reads (``direct="mapped"``): copies out of the engine's kept mapping of a file, the
crc32c of each chunk computed in the same pass; a file shrunk under the mapping is an error for
that read, never a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from storecomp.errors import CancelledIOError, ClosedError, ShortReadError, StorageIOError
from storecomp.io import Engine
from tests.conftest import UNDER_TSAN

SIZE = 3 << 20

# ThreadSanitizer calls a handler of a synchronous signal from its own; after the guard's
# siglongjmp out of it, it reports races on the batch the thread then completes and the next
# fault kills the process (scripts/sanitize.sh, SANITIZER=thread, 2026-12-05). The fault tests
# run under AddressSanitizer and in the plain suite.
_not_under_tsan = pytest.mark.skipif(UNDER_TSAN, reason="ThreadSanitizer does not follow a siglongjmp out of a SIGBUS handler")


@pytest.fixture
def data_file(tmp_path: Path) -> tuple[str, bytes]:
    data = np.random.default_rng(11).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def eng():
    # Small pieces: requests span several, and chunks straddle piece boundaries.
    with Engine(split_bytes=64 << 10) as e:
        yield e


@pytest.mark.parametrize("step", [0, 512, 4096, 5000, 65536, 1 << 20])
@pytest.mark.parametrize("dst_shift", [0, 16, 1])
def test_mapped_reads_give_the_bytes_and_checksums_of_buffered_reads(
    data_file: tuple[str, bytes], eng: Engine, step: int, dst_shift: int
) -> None:
    """Random ranges (crossing pieces, of any length), into destinations at any alignment: the
    same bytes as the file and the same per-chunk crc32c as the buffered path computes."""
    path, data = data_file
    rng = np.random.default_rng(step + dst_shift)
    lens = rng.integers(1, 300_000, 24).astype(np.uint64)
    offs = rng.integers(0, SIZE - 300_000, 24).astype(np.uint64)
    douts = (np.concatenate([[0], np.cumsum(lens)[:-1]]) + dst_shift).astype(np.uint64)
    end = int(douts[-1] + lens[-1])
    f = eng.open(path)
    mapped, buffered = np.zeros(end + 64, np.uint8), np.zeros(end + 64, np.uint8)
    got = f.read_many_into(mapped, offs, lens, douts, crc_step=step, direct="mapped")
    want = f.read_many_into(buffered, offs, lens, douts, crc_step=step, direct="off")
    assert (got.result() == lens).all()
    assert np.array_equal(got.checksums(), want.checksums())
    assert np.array_equal(mapped, buffered)  # outside the ranges too: nothing else written
    for o, n, d in zip(offs.tolist(), lens.tolist(), douts.tolist(), strict=True):
        assert mapped[d : d + n].tobytes() == data[o : o + n]
    assert eng.stats()["mapped_pieces"] > 0


def test_small_batches_run_inline_and_large_ones_on_the_pool(data_file: tuple[str, bytes], eng: Engine) -> None:
    path, data = data_file
    f = eng.open(path)
    small = np.empty(4096, np.uint8)
    fut = f.read_many_into(small, [100], [4096], [0], direct="mapped")
    assert fut.done()  # copied on the calling thread, at submission
    assert small.tobytes() == data[100:4196]
    big = np.empty(SIZE, np.uint8)
    assert int(f.read_many_into(big, [0], [SIZE], [0], direct="mapped").result()[0]) == SIZE
    assert big.tobytes() == data


def test_a_read_past_the_end_is_short(data_file: tuple[str, bytes], eng: Engine) -> None:
    path, data = data_file
    f = eng.open(path)
    buf = np.zeros(8192, np.uint8)
    with pytest.raises(ShortReadError, match=path):
        f.read_many_into(buf, [SIZE - 1000], [8192], [0], direct="mapped").result()
    got = f.read_many_into(buf, [SIZE - 1000], [8192], [0], direct="mapped", exact=False, crc_step=4096)
    assert int(got.result()[0]) == 1000
    assert buf[:1000].tobytes() == data[-1000:]
    assert int(got.checksums()[0]) == int(
        f.read_many_into(np.empty(1000, np.uint8), [SIZE - 1000], [1000], [0], crc_step=4096).checksums()[0]
    )
    assert int(f.read_many_into(buf, [SIZE + 5], [10], [0], direct="mapped", exact=False).result()[0]) == 0


def test_a_file_grown_after_mapping_is_mapped_again(data_file: tuple[str, bytes], eng: Engine) -> None:
    path, data = data_file
    f = eng.open(path)
    buf = np.empty(SIZE + 8192, np.uint8)
    assert int(f.read_many_into(buf, [0], [4096], [0], direct="mapped").result()[0]) == 4096  # maps SIZE bytes
    more = os.urandom(8192)
    with open(path, "ab") as w:
        w.write(more)
    assert int(f.read_many_into(buf, [0], [SIZE + 8192], [0], direct="mapped").result()[0]) == SIZE + 8192
    assert buf.tobytes() == data + more


@_not_under_tsan
def test_a_file_truncated_under_the_mapping_is_an_error_not_a_crash(data_file: tuple[str, bytes], eng: Engine) -> None:
    """The copy's SIGBUS is caught on the thread that copies: the read fails naming the path (every
    time: the guard is armed again after a fault), the process lives on, and the part that is still
    there reads."""
    path, data = data_file
    f = eng.open(path)
    buf = np.empty(SIZE, np.uint8)
    f.read_many_into(buf, [0], [SIZE], [0], direct="mapped").result()  # mapped whole
    os.truncate(path, 1 << 20)
    for direct_step in (0, 4096):
        with pytest.raises(StorageIOError, match="changed under the read") as e:
            f.read_many_into(buf, [0], [SIZE], [0], direct="mapped", crc_step=direct_step).result()
        assert e.value.filename == path
    small = np.empty(4096, np.uint8)  # inline, on this thread
    with pytest.raises(StorageIOError, match="changed under the read"):
        f.read_many_into(small, [2 << 20], [4096], [0], direct="mapped").result()
    assert eng.stats()["mapped_faults"] >= 3  # every piece past the new end
    assert int(f.read_many_into(buf, [0], [1 << 20], [0], direct="mapped").result()[0]) == 1 << 20
    assert buf[: 1 << 20].tobytes() == data[: 1 << 20]


def test_a_file_shrunk_inside_a_page_never_reads_as_zeros(data_file: tuple[str, bytes], eng: Engine) -> None:
    """Shrunk to a size inside a page: the mapping still shows that page, zeros past the new end
    (no SIGBUS). A read without checks that covers those bytes fails as changed, never returns
    the zeros as the file's bytes; what is still the file's reads."""
    path, data = data_file
    f = eng.open(path)
    buf = np.empty(SIZE, np.uint8)
    f.read_many_into(buf, [0], [SIZE], [0], direct="mapped").result()  # mapped whole
    new_end = (1 << 20) + 100
    os.truncate(path, new_end)
    for off, n in ((1 << 20, 4096), (0, 2 << 20)):  # inline, and on the pool
        with pytest.raises(StorageIOError, match="changed under the read"):
            f.read_many_into(buf, [off], [n], [0], direct="mapped").result()
    assert int(f.read_many_into(buf, [1 << 20], [100], [0], direct="mapped").result()[0]) == 100
    assert buf[:100].tobytes() == data[1 << 20 : new_end]


@_not_under_tsan
def test_truncating_while_reads_run_never_crashes(data_file: tuple[str, bytes], eng: Engine) -> None:
    """A writer shrinks and regrows the file while mapped reads run on the pool: each read gives the
    bytes, a short read or the 'changed' error; nothing else, and the process lives."""
    path, _ = data_file
    f = eng.open(path)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            os.truncate(path, 64 << 10)
            os.truncate(path, SIZE)

    t = threading.Thread(target=churn)
    t.start()
    outcomes = set()
    try:
        buf = np.empty(SIZE, np.uint8)
        for _ in range(200):
            try:
                f.read_many_into(buf, [0], [SIZE], [0], direct="mapped").result()
                outcomes.add("ok")
            except ShortReadError:
                outcomes.add("short")
            except StorageIOError as e:
                assert "changed under the read" in str(e)
                outcomes.add("changed")
    finally:
        stop.set()
        t.join()
    assert outcomes and outcomes <= {"ok", "short", "changed"}


def test_closing_the_file_with_a_read_in_flight(data_file: tuple[str, bytes], eng: Engine) -> None:
    """The batch holds the file (and its mapping) until its copies are done."""
    path, data = data_file
    f = eng.open(path)
    buf = np.empty(SIZE, np.uint8)
    fut = f.read_many_into(buf, [0], [SIZE], [0], direct="mapped", crc_step=65536)
    f.close()
    assert int(fut.result()[0]) == SIZE
    assert buf.tobytes() == data
    with pytest.raises(ClosedError):
        f.read_many_into(buf, [0], [10], [0], direct="mapped")


def test_closing_the_engine_with_reads_in_flight(data_file: tuple[str, bytes]) -> None:
    path, data = data_file
    e = Engine(split_bytes=64 << 10, threads=1)
    f = e.open(path)
    bufs = [np.empty(SIZE, np.uint8) for _ in range(4)]
    futs = [f.read_many_into(b, [0], [SIZE], [0], direct="mapped") for b in bufs]
    e.close()
    for fut, b in zip(futs, bufs, strict=True):
        try:
            assert int(fut.result()[0]) == SIZE
            assert b.tobytes() == data
        except CancelledIOError:
            pass  # queued when the engine closed: never ran
    with pytest.raises(ClosedError):
        f.read_many_into(bufs[0], [0], [10], [0], direct="mapped")


def test_files_that_cannot_be_mapped_are_read_with_system_calls(tmp_path: Path, eng: Engine) -> None:
    """A file open for writing, and a /proc file (size 0, bytes on read), are read as buffered."""
    path = tmp_path / "rw.bin"
    path.write_bytes(b"x" * 10000)
    with eng.open(path, "r+") as f:
        buf = np.empty(10000, np.uint8)
        assert int(f.read_many_into(buf, [0], [10000], [0], direct="mapped").result()[0]) == 10000
        assert buf.tobytes() == b"x" * 10000
    with eng.open("/proc/self/status") as f:
        buf = np.zeros(256, np.uint8)
        n = int(f.read_many_into(buf, [0], [256], [0], direct="mapped", exact=False).result()[0])
        assert n > 0 and buf[:5].tobytes() == b"Name:"
    assert eng.stats()["mapped_pieces"] == 0


def test_a_bad_read_mode_is_refused(data_file: tuple[str, bytes], eng: Engine) -> None:
    from storecomp.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="mapped"):
        eng.open(data_file[0]).read_many_into(np.empty(10, np.uint8), [0], [10], [0], direct="map")


_OUTSIDE = """
import faulthandler, mmap, os, sys
import numpy as np
from storecomp.io import Engine
faulthandler.enable()
path = sys.argv[1]
with Engine() as e:
    f = e.open(path)
    f.read_many_into(np.empty(8192, np.uint8), [0], [8192], [0], direct="mapped").result()  # installs the guard
    m = mmap.mmap(os.open(path, os.O_RDONLY), 1 << 20, prot=mmap.PROT_READ)
    os.truncate(path, 0)
    print("reading", flush=True)
    m[500000]  # a SIGBUS outside any guarded copy
print("survived")
"""


def test_a_sigbus_outside_a_mapped_copy_reaches_the_previous_handler(data_file: tuple[str, bytes]) -> None:
    """The guard only catches faults of its own copies: any other SIGBUS goes to the handler that
    was there before (here Python's faulthandler, which reports it), and the process dies of it."""
    path, _ = data_file
    env = dict(os.environ)
    # Under scripts/sanitize.sh: the sanitizer's own SIGBUS handler would be "the previous one" and
    # report the fault instead of faulthandler; this test is about the chain, so leave SIGBUS to Python.
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":handle_sigbus=0"
    env["TSAN_OPTIONS"] = env.get("TSAN_OPTIONS", "") + ":handle_sigbus=0"
    proc = subprocess.run([sys.executable, "-c", _OUTSIDE, path], capture_output=True, text=True, timeout=60, env=env)
    assert "reading" in proc.stdout and "survived" not in proc.stdout
    assert proc.returncode == -7  # SIGBUS
    assert "Fatal Python error: Bus error" in proc.stderr


_REPLACED = """
import faulthandler, mmap, os, sys
import numpy as np
from storecomp.errors import StorageIOError
from storecomp.io import Engine
path = sys.argv[1]
with Engine() as e:
    f = e.open(path)
    f.read_many_into(np.empty(8192, np.uint8), [0], [8192], [0], direct="mapped").result()  # the guard, first
    faulthandler.enable()  # now faulthandler first, the guard its previous handler
    m = mmap.mmap(os.open(path, os.O_RDONLY), 1 << 20, prot=mmap.PROT_READ)
    os.truncate(path, 4096)
    try:  # the guard is put first again at this submission
        f.read_many_into(np.empty(1 << 20, np.uint8), [0], [1 << 20], [0], direct="mapped").result()
    except StorageIOError as exc:
        print("guarded fault:", "changed under the read" in str(exc), flush=True)
    print("reading", flush=True)
    m[500000]
print("survived")
"""


@_not_under_tsan
def test_handlers_replaced_and_reinstalled_neither_lose_a_guarded_fault_nor_loop(tmp_path: Path) -> None:
    """faulthandler enabled after the guard was installed: the next mapped batch puts the guard first
    again, so a fault in its copy fails only that read. A SIGBUS outside any copy then goes to
    faulthandler, which reports it and raises it again to its own previous handler, the guard's: the
    default action ends the process, no loop between the two handlers."""
    path = tmp_path / "a.bin"
    path.write_bytes(os.urandom(1 << 20))
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":handle_sigbus=0"
    proc = subprocess.run([sys.executable, "-c", _REPLACED, str(path)], capture_output=True, text=True, timeout=60, env=env)
    assert "guarded fault: True" in proc.stdout
    assert "reading" in proc.stdout and "survived" not in proc.stdout
    assert proc.returncode == -7  # SIGBUS
    assert proc.stderr.count("Fatal Python error: Bus error") == 1  # reported once, by faulthandler
