"""One version per read: a reader racing a writer that replaces an object gets
one whole version or VersionChangedError, never the size of one version with
the bytes of another (issue 16, item 0), on every backend and the cache tier.

The writer alternates a 1,000-byte object of b"A" and a 5,000-byte object of
b"B"; each race runs for a bounded wall time (RACE_S), not a count.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.cli import main as cli_main
from storecomp.errors import VersionChangedError
from storecomp.store import CachedStore, LocalStore, Store, open_store
from storecomp.store.fsspec_store import FsspecStore
from storecomp.testing.seaweedfs import SeaweedFS
from tests.store.conftest import FAST_RETRY

RACE_S = 1.5
SMALL, LARGE = b"A" * 1000, b"B" * 5000


def _writer_thread(store: Store, key: str, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        k = 0
        while not stop.is_set():
            store.put(key, LARGE if k % 2 else SMALL)
            k += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _writer_process(code: str, store: Store) -> subprocess.Popen[str]:
    """A writer in its own process (as in the report: no GIL shared with the reader),
    returned once it has replaced the object under ``store``'s key "obj"."""
    before = store.stat("obj").version
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], text=True)
    end = time.monotonic() + 30
    while store.stat("obj").version == before and time.monotonic() < end and proc.poll() is None:
        time.sleep(0.02)
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(30)


def _race(get: Callable[[], bytes], seconds: float = RACE_S) -> dict[str, int]:
    """Call ``get`` for ``seconds``; count whole versions, torn results and version errors."""
    counts = {"whole": 0, "torn": 0, "changed": 0}
    examples: list[bytes] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data = get()
        except VersionChangedError:
            counts["changed"] += 1
            continue
        if data in (SMALL, LARGE):
            counts["whole"] += 1
        else:
            counts["torn"] += 1
            examples.append(data[:8] + b"..." + data[-8:] + f" ({len(data)} bytes)".encode())
    assert counts["torn"] == 0, f"torn reads {counts}: {examples[:3]}"
    assert counts["whole"] > 0, counts
    return counts


LOCAL_WRITER = """
    import sys, time
    from storecomp.store import {cls}
    s = {cls}({root!r})
    end = time.monotonic() + {seconds}
    k = 0
    while time.monotonic() < end:
        s.put("obj", b"B" * 5000 if k % 2 else b"A" * 1000)
        k += 1
"""


@pytest.fixture
def local_race(tmp_path: Path) -> Iterator[LocalStore]:
    store = LocalStore(tmp_path / "s")
    store.put("obj", SMALL)
    proc = _writer_process(LOCAL_WRITER.format(cls="LocalStore", root=str(tmp_path / "s"), seconds=60), store)
    yield store
    _stop(proc)
    store.close()


def test_local_get_races_a_writer_process(local_race: LocalStore) -> None:
    _race(lambda: local_race.get("obj"))


def test_local_stat_then_pinned_read_never_mixes(local_race: LocalStore) -> None:
    """A caller that takes the size from stat() and reads with its version (the DataLoader's way)."""

    def get() -> bytes:
        info = local_race.stat("obj")
        buf = np.zeros(info.size, np.uint8)
        got = local_race.read_ranges("obj", [0], [info.size], buf, [0], version=info.version)
        assert int(got[0]) == info.size  # exact: a pinned read is whole or raises
        return buf.tobytes()

    counts = _race(get)
    assert counts["changed"] > 0  # the writer did replace objects between stat and read


def test_fsspec_file_races_a_writer_process(tmp_path: Path) -> None:
    root = tmp_path / "f"
    root.mkdir()
    store = FsspecStore(f"file://{root}")
    store.put("obj", SMALL)
    code = f"""
        import time
        from storecomp.store.fsspec_store import FsspecStore
        s = FsspecStore("file://{root}")
        end = time.monotonic() + 60
        k = 0
        while time.monotonic() < end:
            s.put("obj", b"B" * 5000 if k % 2 else b"A" * 1000)
            k += 1
    """
    proc = _writer_process(code, store)
    try:
        _race(lambda: store.get("obj"))
    finally:
        _stop(proc)
        store.close()


def test_cached_store_races_a_writer(tmp_path: Path) -> None:
    """Through the cache tier with revalidation (objects that change elsewhere), blocks of 4 KiB:
    a read spanning blocks filled at different times never mixes versions."""
    inner = LocalStore(tmp_path / "inner")
    inner.put("obj", SMALL)
    cached = CachedStore(inner, tmp_path / "cache", 1 << 20, block_bytes=4096, revalidate=True)
    proc = _writer_process(LOCAL_WRITER.format(cls="LocalStore", root=str(tmp_path / "inner"), seconds=60), inner)
    try:
        _race(lambda: cached.get("obj"))
    finally:
        _stop(proc)
        cached.close()


def test_s3_get_races_a_writer(running_seaweedfs: SeaweedFS) -> None:
    store = open_store(running_seaweedfs.url(), retry=FAST_RETRY, **running_seaweedfs.store_options())
    store.put("obj", SMALL)
    stop = threading.Event()
    t = _writer_thread(store, "obj", stop)
    try:
        _race(lambda: store.get("obj"))
    finally:
        stop.set()
        t.join(30)
        store.close()


def test_s3_multipart_ranged_read_races_a_put(running_seaweedfs: SeaweedFS) -> None:
    """One ranged read cut into many parts (concurrent GETs), racing puts of another
    version: every part carries If-Match on one ETag, so the bytes are all of one version."""
    sw = running_seaweedfs
    store = open_store(sw.url(), retry=FAST_RETRY, part_bytes=16 << 10, **sw.store_options())
    n = 256 << 10  # 16 parts
    versions = [bytes([v]) * n for v in (1, 2)]
    store.put("big", versions[0])
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            store.put("big", versions[k % 2])
            k += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    reads = changed = 0
    buf = np.zeros(n, np.uint8)
    try:
        end = time.monotonic() + RACE_S
        while time.monotonic() < end:
            try:
                store.read_ranges("big", [0], [n], buf, [0])
            except VersionChangedError:
                changed += 1
                continue
            values = np.unique(buf)
            assert values.size == 1 and int(values[0]) in (1, 2), f"parts of {values.tolist()} mixed in one read"
            reads += 1
    finally:
        stop.set()
        t.join(30)
        store.close()
    assert reads > 0


def test_s3_pinned_version_refuses_a_replaced_object(running_seaweedfs: SeaweedFS) -> None:
    store = open_store(running_seaweedfs.url(), retry=FAST_RETRY, **running_seaweedfs.store_options())
    store.put("obj", SMALL)
    old = store.stat("obj")
    store.put("obj", LARGE)
    buf = np.zeros(old.size, np.uint8)
    with pytest.raises(VersionChangedError, match="obj: object changed while reading"):
        store.read_ranges("obj", [0], [old.size], buf, [0], version=old.version)
    assert store.get("obj") == LARGE
    store.close()


@pytest.mark.parametrize("backend", ["local", "fsspec", "cached"])
def test_pinned_version_of_a_replaced_object_raises(tmp_path: Path, backend: str) -> None:
    local = LocalStore(tmp_path / "s")
    stores: dict[str, Callable[[], Store]] = {
        "local": lambda: local,
        "fsspec": lambda: FsspecStore(f"file://{tmp_path / 's'}"),
        "cached": lambda: CachedStore(local, tmp_path / "c", 1 << 20),
    }
    store = stores[backend]()
    store.put("obj", SMALL)
    old = store.stat("obj")
    assert store.get("obj") == SMALL  # cached: an entry of the old version now exists
    store.put("obj", LARGE)
    buf = np.zeros(old.size, np.uint8)
    with pytest.raises(VersionChangedError) as exc:
        store.read_ranges("obj", [0], [old.size], buf, [0], version=old.version)
    assert exc.value.expected == old.version and isinstance(exc.value, RuntimeError)
    assert store.get("obj") == LARGE
    new = store.stat("obj")
    assert int(store.read_ranges("obj", [0], [10], buf, [0], version=new.version)[0]) == 10
    store.close()


def test_cp_never_writes_a_torn_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`storecomp cp` of an object being replaced: each copy is a whole version (or a clear error)."""
    src = tmp_path / "src"
    source = LocalStore(src)
    source.put("obj", SMALL)
    proc = _writer_process(LOCAL_WRITER.format(cls="LocalStore", root=str(src), seconds=60), source)
    results: dict[Any, int] = {}
    try:
        end = time.monotonic() + RACE_S
        i = 0
        while time.monotonic() < end:
            dst = tmp_path / f"copy{i}"
            rc = cli_main(["cp", str(src / "obj"), str(dst)])
            if rc == 0:
                data = dst.read_bytes()
                assert data in (SMALL, LARGE), f"torn copy of {len(data)} bytes, exit 0"
            else:
                err = capsys.readouterr().err  # the copy engine refuses a source that changed, whichever way it saw it
                assert "object changed while reading" in err or "changed while being copied" in err, err
            results[rc] = results.get(rc, 0) + 1
            i += 1
    finally:
        _stop(proc)
    assert results.get(0, 0) > 0, results
