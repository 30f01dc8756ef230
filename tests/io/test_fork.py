"""Engines and fork: a forked child (torch DataLoader workers, multiprocessing)
never touches the parent's I/O threads or ring, gets a clear error when it
uses an inherited engine, and a working default engine of its own."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import IO_URING_OK, UNDER_TSAN, DataFile, drop_cache, run_python

BACKENDS = ["threads"] + (["io_uring"] if IO_URING_OK else [])

# ThreadSanitizer cannot follow a fork of a multi-threaded process: the child's
# new threads hang or die ("dup thread with used id"), whatever the code does.
pytestmark = pytest.mark.skipif(UNDER_TSAN, reason="ThreadSanitizer does not support threads in the child of a threaded fork")


@pytest.mark.parametrize("backend", BACKENDS)
def test_forked_child_uses_its_own_engine_and_exits_cleanly(data_file: DataFile, backend: str) -> None:
    code = f"""
        import gc, multiprocessing as mp, numpy as np
        import storecomp.io as scio
        from storecomp.errors import ClosedError
        path = {str(data_file.path)!r}
        eng = scio.Engine(engine={backend!r})
        f = eng.open(path)
        buf = np.empty(8192, np.uint8)
        f.pread_into(buf, 4096)                    # the parent's threads are running
        parent_default = scio.default_engine()

        def child(q):
            try:
                f.pread_into(buf, 0)
                q.put("inherited engine worked?!")
                return
            except ClosedError as e:
                assert "before a fork" in str(e), e
            assert scio.default_engine() is not parent_default
            out = np.empty(4096, np.uint8)
            scio.read_into(path, out, 8192)          # a fresh default engine in the child
            q.put(out.tobytes())
            global eng
            del eng                                   # dropping the parent's engine must not join its threads
            gc.collect()

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        got = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        with open(path, "rb") as fh:
            fh.seek(8192)
            assert got == fh.read(4096)
        f.pread_into(buf, 0)                          # the parent's engine still works
        eng.close()
        print("ok")
    """
    proc = run_python(textwrap.dedent(code), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok") and "terminate called" not in proc.stderr


def test_torch_dataloader_fork_workers_beside_an_engine(data_file: DataFile) -> None:
    code = f"""
        import numpy as np, torch
        import storecomp.io as scio
        path = {str(data_file.path)!r}
        eng = scio.Engine()
        eng.open(path).pread_into(np.empty(4096, np.uint8), 0)

        class Rows(torch.utils.data.Dataset):
            def __len__(self):
                return 16
            def __getitem__(self, i):
                out = np.empty(4096, np.uint8)
                scio.read_into(path, out, i * 4096)   # the worker's own default engine
                return torch.from_numpy(out)

        loader = torch.utils.data.DataLoader(Rows(), batch_size=4, num_workers=2, multiprocessing_context="fork")
        got = torch.cat(list(loader)).numpy().tobytes()
        with open(path, "rb") as fh:
            assert got == fh.read(16 * 4096)
        eng.close()
        print("ok")
    """
    proc = run_python(textwrap.dedent(code), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "terminate called" not in proc.stderr


def test_forked_child_after_a_populating_epoch_exits_cleanly(tmp_path: Path) -> None:
    """A cold epoch over a data set that fits the page cache starts the engine's populating thread
    (MODE_POPULATE); a child forked after it (torch DataLoader workers) drops the parent's engine
    without joining that thread, which does not exist in the child."""
    import numpy as np

    from storecomp.data import write_dataset

    root = tmp_path / "d"
    write_dataset(root, {"x": np.arange(256 * 512, dtype=np.int64).reshape(256, 512)}, shard_bytes=1 << 20)
    for f in root.rglob("*"):
        if f.is_file():
            drop_cache(f)  # not resident: the script's cold epoch reads buffered and populates
    code = f"""
        import gc, time, multiprocessing as mp
        from storecomp.data import DataLoader
        from storecomp.io import Engine
        root = {str(root)!r}
        eng = Engine(direct="auto")
        loader = DataLoader(root, 64, seed=1, engine=eng)
        assert sum(b["x"].shape[0] for b in loader) == 256
        deadline = time.monotonic() + 60
        while eng.stats()["populated_bytes"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eng.stats()["populated_bytes"] > 0      # the populating thread ran in the parent

        def child(q):
            global eng, loader
            del loader, eng                            # must not join the parent's threads
            gc.collect()
            q.put("ok")

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        assert q.get(timeout=60) == "ok"
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        loader.close()
        eng.close()
        print("ok")
    """
    proc = run_python(textwrap.dedent(code), timeout=120)
    assert proc.stdout.strip().endswith("ok") and "terminate called" not in proc.stderr
