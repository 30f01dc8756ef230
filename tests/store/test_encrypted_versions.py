"""One version per read through an EncryptedStore: a reader racing a writer that replaces a
sealed object (two versions of different sizes) gets one whole version, or VersionChangedError
when it pinned a version itself, never a CorruptDataError (a header of one version with the
segments of another fails its tags) and never a size of one version with the bytes of another.

Each race runs for a bounded wall time (RACE_S); the writer is another process (no GIL shared).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from storecomp import crypto
from storecomp.errors import CorruptDataError, VersionChangedError
from storecomp.store import EncryptedStore, LocalStore, Store, open_store
from storecomp.store.retry import RetryPolicy
from storecomp.testing.seaweedfs import SeaweedFS

RACE_S = 1.5
#: Requests on a loaded machine may take seconds; a race is about versions, not deadlines.
RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=60.0, connect_timeout_s=5.0)
KEY = bytes(range(32))
SEG = 4096  # small segments: every version spans many of them
# Two versions of different sizes and contents: A (3 segments and a bit), B (7 segments and a bit).
A = np.random.default_rng(1).integers(0, 256, 3 * SEG + 100, np.uint8).tobytes()
B = np.random.default_rng(2).integers(0, 256, 7 * SEG + 900, np.uint8).tobytes()

WRITER = """
    import time
    from storecomp import crypto
    from storecomp.store import EncryptedStore, LocalStore
    s = EncryptedStore(LocalStore({root!r}), crypto.StaticKeys([("k1", bytes(range(32)))]), segment_bytes={seg})
    a, b = open({a!r}, "rb").read(), open({b!r}, "rb").read()
    end = time.monotonic() + 60
    k = 0
    while time.monotonic() < end:
        s.put("obj", b if k % 2 else a)
        k += 1
"""


def _store(inner: Store) -> EncryptedStore:
    return EncryptedStore(inner, crypto.StaticKeys([("k1", KEY)]), segment_bytes=SEG)


def _race(read: Callable[[], bytes | None], wanted: Callable[[bytes], bool]) -> dict[str, int]:
    """Call ``read`` for RACE_S seconds; count whole versions, torn or corrupt results and version
    changes (None, or VersionChangedError: an unpinned read restarts a few times, then says so,
    as every Store does)."""
    counts = {"whole": 0, "changed": 0, "torn": 0, "corrupt": 0}
    examples: list[str] = []
    end = time.monotonic() + RACE_S
    while time.monotonic() < end:
        try:
            data = read()
        except VersionChangedError:
            data = None
        except CorruptDataError as e:
            counts["corrupt"] += 1
            examples.append(str(e))
            continue
        if data is None:
            counts["changed"] += 1
        elif wanted(data):
            counts["whole"] += 1
        else:
            counts["torn"] += 1
            examples.append(f"{len(data)} bytes")
    assert counts["corrupt"] == 0 and counts["torn"] == 0, f"{counts}: {examples[:3]}"
    assert counts["whole"] > 0, counts
    return counts


@pytest.fixture
def local_race(tmp_path: Path) -> Iterator[EncryptedStore]:
    (tmp_path / "a").write_bytes(A)
    (tmp_path / "b").write_bytes(B)
    store = _store(LocalStore(tmp_path / "s"))
    store.put("obj", A)
    before = store.stat("obj").version
    code = WRITER.format(root=str(tmp_path / "s"), seg=SEG, a=str(tmp_path / "a"), b=str(tmp_path / "b"))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True)
    end = time.monotonic() + 30
    while store.stat("obj").version == before and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "the writer process exited early"
    yield store
    proc.terminate()
    proc.wait(30)
    store.close()


def test_get_races_a_writer_process(local_race: EncryptedStore) -> None:
    counts = _race(lambda: local_race.get("obj"), lambda d: d in (A, B))
    assert counts["changed"] < counts["whole"]  # restarts absorb nearly every replacement


def test_unpinned_ranged_read_races_a_writer_process(local_race: EncryptedStore) -> None:
    """Ranges across segments without a version: all from one version (the header's)."""
    offs, lens = [100, 2 * SEG - 5, 0], [3 * SEG, 900, 50]

    def read() -> bytes:
        buf = np.zeros(sum(lens), np.uint8)
        local_race.read_ranges("obj", offs, lens, buf, np.cumsum([0] + lens[:-1]))
        return buf.tobytes()

    def whole(data: bytes) -> bool:
        return any(data == b"".join(v[o : o + n] for o, n in zip(offs, lens, strict=True)) for v in (A, B))

    _race(read, whole)
    _race(lambda: local_race.get("obj", SEG, 2 * SEG), lambda d: d in (A[SEG : 3 * SEG], B[SEG : 3 * SEG]))


def test_stat_is_one_version_and_pinned_reads_follow_it(local_race: EncryptedStore) -> None:
    """stat's size and version come from one version; a read pinned to that version reads
    exactly that many bytes of it, or raises VersionChangedError."""

    def read() -> bytes | None:
        info = local_race.stat("obj")
        assert info.size in (len(A), len(B))
        buf = np.zeros(info.size, np.uint8)
        try:
            local_race.read_ranges("obj", [0], [info.size], buf, [0], version=info.version)
        except VersionChangedError:
            return None
        return buf.tobytes()

    counts = _race(read, lambda d: d in (A, B))
    assert counts["changed"] > 0  # the writer did replace the object between stat and read


def test_s3_reads_race_a_writer(running_seaweedfs: SeaweedFS) -> None:
    """The same over S3: every ranged GET of one call carries If-Match on one ETag."""
    inner = open_store(running_seaweedfs.url(), retry=RETRY, **running_seaweedfs.store_options())
    store, writer = _store(inner), _store(inner)
    store.put("obj", A)
    stop = threading.Event()

    def write() -> None:
        k = 0
        while not stop.is_set():
            writer.put("obj", B if k % 2 else A)
            k += 1
            time.sleep(0.005)  # an encrypted read is three requests (stat, header, segments): let some finish

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        _race(lambda: store.get("obj"), lambda d: d in (A, B))
        _race(lambda: store.get("obj", SEG, 2 * SEG), lambda d: d in (A[SEG : 3 * SEG], B[SEG : 3 * SEG]))
    finally:
        stop.set()
        t.join(30)
        store.close()
