"""DataLoader on the CPU: exact epochs, shuffling, sharding, zero-copy slots, resume, metrics."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import storecomp
from storecomp.data import DataLoader, epoch_order, open_dataset, rank_steps
from tests.conftest import drop_cache
from tests.data import datahelpers

columns = datahelpers.columns  # fixtures
shard_ds = datahelpers.shard_ds


def labels(loader: DataLoader, limit: int | None = None) -> list[np.ndarray]:
    out = []
    for k, b in enumerate(loader):
        out.append(b["label"].numpy().copy())
        if limit is not None and k + 1 == limit:
            break
    return out


def test_export_is_lazy() -> None:
    assert storecomp.DataLoader is DataLoader


def test_batches_match_the_data(shard_ds: str, columns: dict[str, Any]) -> None:
    loader = DataLoader(shard_ds, 32, seed=5)
    seen = []
    for b in loader:
        lab = b["label"].numpy()
        assert b["x"].dtype == torch.float32 and b["x"].shape == (lab.size, 3, 5)
        assert np.array_equal(b["x"].numpy(), columns["x"][lab])
        offs = b["text_offsets"].numpy()
        vals = b["text"].numpy()
        for k, i in enumerate(lab):
            assert np.array_equal(vals[offs[k] : offs[k + 1]], columns["text"][i])
        seen.append(lab)
    assert sorted(np.concatenate(seen).tolist()) == list(range(len(columns["label"])))
    assert loader.epoch == 1 and loader.position == 0


def test_order_deterministic_and_world_size_independent() -> None:
    a = epoch_order(1000, 3, 0, block=8, window=64)
    assert np.array_equal(a, epoch_order(1000, 3, 0, block=8, window=64))
    assert not np.array_equal(a, epoch_order(1000, 3, 1, block=8, window=64))
    assert not np.array_equal(a, epoch_order(1000, 4, 0, block=8, window=64))
    assert sorted(a.tolist()) == list(range(1000))
    for world in (1, 2, 3, 5):
        got = sorted(
            p for r in range(world) for first, n, _ in rank_steps(1000, 0, 16, world, r, False) for p in range(first, first + n)
        )
        assert got == list(range(1000))


def test_shuffle_has_locality() -> None:
    a = epoch_order(4096, 0, 0, block=16, window=16)
    # with window == block, each block stays together
    assert np.all(np.sort(a.reshape(-1, 16), axis=1) // 16 == (np.sort(a.reshape(-1, 16), axis=1) // 16)[:, :1])


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_partition_the_epoch(shard_ds: str, world: int) -> None:
    ds = open_dataset(shard_ds)
    per_rank = [np.concatenate(labels(DataLoader(ds, 20, seed=9, rank=r, world_size=world))) for r in range(world)]
    allv = np.concatenate(per_rank)
    assert allv.size == len(ds) and np.unique(allv).size == len(ds)


def test_cpu_batches_are_views_of_the_slot_and_recycled_when_dropped(shard_ds: str, columns: dict[str, Any]) -> None:
    loader = DataLoader(shard_ds, 16, seed=1, max_memory=6 * 8192)
    it = iter(loader)
    b = next(it)
    pool = loader._pool
    assert pool is not None and loader.metrics()["staging_bytes"] <= loader.max_memory
    ptr = b["x"].data_ptr()
    assert pool.address <= ptr < pool.address + pool.nbytes  # a view of the staging slot: no copy
    held = [next(it) for _ in range(3)]
    rest = sum(x["label"].shape[0] for x in it)  # read on with the remaining slots
    assert rest == 600 - 4 * 16
    for batch in [b, *held]:  # slots held by the consumer were never reused
        assert np.array_equal(batch["x"].numpy(), columns["x"][batch["label"].numpy()])
    del b, held, batch
    gc.collect()
    assert pool.free_slots == pool.nslots  # every slot came back once its batch was dropped


def test_mid_epoch_resume_is_exact(shard_ds: str) -> None:
    ds = open_dataset(shard_ds)
    full = labels(DataLoader(ds, 25, seed=11))
    first = DataLoader(ds, 25, seed=11)
    part = labels(first, limit=7)
    state = first.state_dict()
    second = DataLoader(ds, 25, seed=11)
    second.load_state_dict(state)
    rest = labels(second)
    assert [x.tolist() for x in part + rest] == [x.tolist() for x in full]
    assert second.epoch == 1


def test_resume_with_another_world_size(shard_ds: str) -> None:
    ds = open_dataset(shard_ds)
    old = [DataLoader(ds, 10, seed=4, rank=r, world_size=2) for r in range(2)]
    seen = [x for r in range(2) for x in labels(old[r], limit=9)]
    state = old[0].state_dict()
    assert state == old[1].state_dict()
    new = [DataLoader(ds, 10, seed=4, rank=r, world_size=3) for r in range(3)]
    for loader in new:
        loader.load_state_dict(state)
        seen += labels(loader)
    allv = np.concatenate(seen)
    assert allv.size == len(ds) and np.unique(allv).size == len(ds)


def test_drop_last_and_len(shard_ds: str) -> None:
    loader = DataLoader(shard_ds, 64, drop_last=True, seed=0)
    n = len(loader)
    got = labels(loader)
    assert len(got) == n == 600 // 64 and all(x.size == 64 for x in got)


def test_transform_runs_on_batches(shard_ds: str) -> None:
    loader = DataLoader(shard_ds, 50, transform=lambda b: {"y": b["label"] * 2})
    b = next(iter(loader))
    assert set(b) == {"y"} and int(b["y"].max()) % 2 == 0


def test_metrics_and_progress_bar(shard_ds: str, capsys: pytest.CaptureFixture[str]) -> None:
    loader = DataLoader(shard_ds, 50, progress=True)
    labels(loader)
    m = loader.metrics()
    assert m["batches"] == 12 and m["samples"] == 600 and m["bytes"] > 600 * 72
    assert 0 <= m["data_wait_fraction"] <= 1
    assert m["bottleneck"].split(" ")[0] in ("storage", "consumer", "host-to-device", "producer")
    assert 1 <= m["read_ahead"] < m["max_slots"] and m["samples_per_s"] > 0
    assert "batch" in capsys.readouterr().err


def test_unshuffled_runs_merge_into_single_reads(shard_ds: str) -> None:
    from storecomp.data._plan import SlotLayout, plan_batch

    ds = open_dataset(shard_ds)
    plan = plan_batch(ds, SlotLayout.for_dataset(ds, 64), np.arange(64), verify=True)
    fixed_reads = [r for r in plan.reads if r[2][0] % ds.columns[0].nbytes == 0 and r[2][0] >= ds.columns[0].nbytes]
    assert len(fixed_reads) <= 1 + len({ds.locate(np.arange(64))[0].tolist().count(p) for p in range(len(ds.parts))})


@pytest.mark.gpu
def test_cuda_batches() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    np.save("/tmp/storecomp-gpu-test.npy", np.arange(10000, dtype=np.uint16))
    loader = DataLoader("/tmp/storecomp-gpu-test.npy", 8, seq_len=16, device="cuda")
    b = next(iter(loader))
    assert b["tokens"].device.type == "cuda" and b["tokens"].shape == (8, 17)
    # device="cuda" means this thread's current device, not the producer thread's (always cuda:0)
    assert b["tokens"].device.index == torch.cuda.current_device() == loader.device.index


@pytest.mark.gpu
def test_cuda_batches_consumed_on_a_side_stream(tmp_path: Any) -> None:
    """Batches read on the consumer's own stream hold their values while the next copies run (record_stream)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    path = str(tmp_path / "tokens.npy")
    np.save(path, np.arange(1 << 20, dtype=np.int32))
    loader = DataLoader(path, 64, seq_len=255, device="cuda", shuffle=False)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        for k, b in enumerate(loader):
            torch.cuda._sleep(1_000_000)  # the consumer's kernels lag behind the producer's copies
            first = b["tokens"][:, 0].to(torch.int64).sum()
            del b
            expected = sum(255 * (64 * k + i) for i in range(64))
            side.synchronize()
            assert int(first) == expected
            if k == 8:
                break


def test_read_ahead_is_sized_from_latency_and_step_within_the_budget(shard_ds: str) -> None:
    import time

    loader = DataLoader(shard_ds, 8, seed=3, max_memory=6 * 8192)
    assert loader.max_slots == 6
    for _ in loader:
        time.sleep(0.002)  # a simulated training step
    m = loader.metrics()
    step = (m["data_wait_s"] + m["step_s"] * m["batches"]) / m["batches"]
    need = int(np.ceil(2 * m["latency_s"] / step)) + 1 if m["latency_s"] else 1
    assert min(need - 1, loader.max_slots - 1) <= m["read_ahead"] <= loader.max_slots - 1  # -1: averages move
    assert m["staging_bytes"] <= loader.max_memory and m["storage_gbps"] > 0 and m["latency_s"] > 0
    fixed = DataLoader(shard_ds, 8, read_ahead=3)
    list(fixed)
    assert fixed.metrics()["read_ahead"] == 3


def test_a_consumer_keeping_every_batch_does_not_deadlock(shard_ds: str) -> None:
    loader = DataLoader(shard_ds, 8, max_memory=3 * 8192)
    batches = list(loader)  # keeps all 75 batches alive: more than the 3 staging slots
    assert sum(b["label"].shape[0] for b in batches) == 600
    assert len({int(b["label"][0]) for b in batches}) == 75
    m = loader.metrics()
    assert m["batches_outside_staging"] >= 75 - 3 and m["staging_bytes"] <= loader.max_memory


def _evict(folder: str) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            drop_cache(os.path.join(root, name))


def _tier_ds(tmp_path: Any) -> tuple[str, int]:
    from storecomp.data import write_dataset

    n = 64 * 40
    write_dataset(tmp_path / "d", {"x": np.arange(n * 512, dtype=np.int64).reshape(n, 512)}, shard_bytes=1 << 20)
    return str(tmp_path / "d"), n


def _resident(folder: str) -> int:
    from storecomp.io import resident_bytes

    return sum(resident_bytes(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)


@pytest.mark.parametrize("verify", [True, False])
def test_a_dataset_that_fits_is_read_through_the_page_cache(tmp_path: Any, verify: bool) -> None:
    """The tier is chosen on purpose: a small data set is read buffered, so
    the first epoch leaves it in the page cache and later epochs hit it
    (mapped copies with checks folded in, or plain streaming copies)."""
    from storecomp.io import Engine

    path, n = _tier_ds(tmp_path)
    with Engine(direct="auto") as eng:
        _evict(path)
        loader = DataLoader(path, 64, seed=1, shuffle_block=1, shuffle_window=1, engine=eng, verify=verify)
        seen = [b["x"][:, 0].numpy() // 512 for b in loader]
        assert sorted(np.concatenate(seen).tolist()) == list(range(n))
        m = loader.metrics()
        assert m["tier"] == "buffered" and "fits the page cache" in m["tier_reason"]
        assert _resident(path + "/shards") >= n * 512 * 8  # the cold epoch filled the page cache
        assert m["read_path"] == "buffered"  # the shards were not all resident when the epoch began
        loader.epoch = 1
        mapped = eng.stats()["mapped_pieces"]
        rows = np.concatenate([b["x"].numpy() for b in loader])
        # Every byte as written (the mapped copy's streaming stores included), each sample once.
        assert sorted((rows[:, 0] // 512).tolist()) == list(range(n))
        assert (rows == rows[:, :1] + np.arange(512)).all()
        # Every batch of the hot epoch came from memory: copied out of the mappings of the resident shards.
        assert loader.metrics()["read_path"] == "mapped"
        assert eng.stats()["mapped_pieces"] - mapped >= 40


def _mapped_bytes(folder: str) -> int:
    """Bytes of the files below ``folder`` mapped into this process's page tables (smaps ``Rss``)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: range perms offset dev inode [path]
                inside = len(head) >= 6 and head[5].startswith(folder)
            elif inside and head[0] == "Rss:":
                total += int(head[1]) * 1024
    return total


def test_mapped_epochs_on_one_cpu(tmp_path: Any) -> None:
    """A data set's mapped batches keep no more engine workers awake than the process has CPUs:
    pinned to one CPU, every batch still completes (the one awake worker drains the queue) with the
    right bytes, batches larger than a single inline read included (64 x 64 KiB)."""
    from storecomp.data import write_dataset

    n = 64 * 8
    write_dataset(tmp_path / "d", {"x": np.arange(n * 8192, dtype=np.int64).reshape(n, 8192)}, shard_bytes=8 << 20)
    script = textwrap.dedent(f"""
        import os
        os.sched_setaffinity(0, {{min(os.sched_getaffinity(0))}})
        import numpy as np
        from storecomp import DataLoader
        from storecomp.io import Engine
        with Engine(direct="auto") as eng:
            loader = DataLoader({str(tmp_path / "d")!r}, 64, seed=1, shuffle_block=1, shuffle_window=1, engine=eng)
            for epoch in range(3):
                loader.epoch = epoch
                rows = np.concatenate([b["x"].numpy() for b in loader])
                assert sorted((rows[:, 0] // 8192).tolist()) == list(range({n}))
                assert (rows == rows[:, :1] + np.arange(8192)).all()
            assert loader.metrics()["read_path"] == "mapped", loader.metrics()["read_path"]
            loader.close()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_cold_epoch_maps_what_it_reads_and_close_unmaps_it(tmp_path: Any) -> None:
    """While the cold epoch fills the page cache, what it reads is mapped into the engine's mappings
    in the background (MODE_POPULATE): the page tables hold every sample before the first mapped
    epoch touches one (no page fault per 4 KiB there). close() drops the mappings: the kernel may
    drop the pages again (posix_fadvise DONTNEED skips mapped pages)."""
    import time

    from storecomp.io import Engine

    path, n = _tier_ds(tmp_path)
    shards = os.path.realpath(path + "/shards")
    with Engine(direct="auto") as eng:
        _evict(path)
        loader = DataLoader(path, 64, seed=1, shuffle_block=1, shuffle_window=1, engine=eng)
        assert sum(b["x"].shape[0] for b in loader) == n
        assert loader.metrics()["read_path"] == "buffered"
        deadline = time.monotonic() + 60  # the populating thread runs on idle CPU only
        while time.monotonic() < deadline:
            st = eng.stats()
            if st["populated_bytes"] + st["populate_skipped"] >= n * 4096:
                break
            time.sleep(0.05)
        st = eng.stats()
        assert st["populated_bytes"] >= n * 4096 and st["populate_skipped"] == 0, st
        assert _mapped_bytes(shards) >= n * 4096  # in the page tables before any mapped read
        loader.epoch = 1
        rows = np.concatenate([b["x"].numpy() for b in loader])
        assert sorted((rows[:, 0] // 512).tolist()) == list(range(n))
        assert (rows == rows[:, :1] + np.arange(512)).all()
        assert loader.metrics()["read_path"] == "mapped"
        loader.close()
        assert _mapped_bytes(shards) == 0
        _evict(path)
        assert _resident(path + "/shards") == 0  # nothing left mapped: every page could go


@pytest.mark.parametrize("direct", ["on", "off"])
def test_the_direct_option_forces_a_tier(tmp_path: Any, direct: str) -> None:
    from storecomp.io import Engine

    path, n = _tier_ds(tmp_path)
    with Engine(direct=direct) as eng:
        _evict(path)
        loader = DataLoader(path, 64, seed=1, engine=eng)
        assert sum(b["x"].shape[0] for b in loader) == n
        m = loader.metrics()
        assert m["tier"] == ("direct" if direct == "on" else "buffered")
        assert m["tier_reason"] == f"forced: direct={direct}"
        if direct == "on":  # O_DIRECT leaves the page cache alone
            assert _resident(path + "/shards") < n * 512 * 8 // 4


def test_memory_pressure_while_buffered_moves_reads_to_o_direct(tmp_path: Any) -> None:
    """Buffered reads watch MemAvailable: below the floor (here set above
    what the machine has) the loader moves to O_DIRECT, stating why, and
    every sample still arrives."""
    from storecomp.io import Engine, PageCachePolicy, memory_info

    path, n = _tier_ds(tmp_path)
    with Engine(direct="auto") as eng:
        _evict(path)
        loader = DataLoader(path, 64, seed=1, engine=eng)
        reader = loader.dataset.reader
        floor = memory_info().total + 1  # more than there is: pressure from the first check on
        reader.set_policy(PageCachePolicy("auto", floor_bytes=floor))
        assert reader.choose_tier(loader.dataset.keys()).tier == "buffered"  # it fits: the choice itself is buffered
        seen = [b["x"][:, 0].numpy() // 512 for b in loader]
        assert sorted(np.concatenate(seen).tolist()) == list(range(n))
        m = loader.metrics()
        assert m["tier"] == "direct" and m["tier_reason"].startswith("memory pressure")


def test_close_during_iteration_stops_the_producer(shard_ds: str) -> None:
    """close() with an iterator still held: the producer thread ends, the iterator raises instead of hanging."""
    import threading

    from storecomp.errors import ClosedError

    loader = DataLoader(shard_ds, 8, seed=1)
    it = iter(loader)
    next(it)
    loader.close()
    assert not any(t.name == "storecomp-loader" and t.is_alive() for t in threading.enumerate())
    with pytest.raises(ClosedError, match="closed"):
        for _ in range(1000):  # the batches already read come first
            next(it)
    assert loader.position < len(loader.dataset)  # an interrupted epoch is not counted as done
    assert sum(1 for _ in loader) > 0  # a new iteration works after close()


def test_host_batches_from_local_files_are_made_in_next(shard_ds: str) -> None:
    """CPU batches from local files are made in next() itself (the engine's threads keep the read-ahead
    in flight): no producer thread runs, metrics say so, and the stages are still attributed."""
    import threading

    loader = DataLoader(shard_ds, 8, seed=1)
    it = iter(loader)
    first = next(it)
    assert not any(t.name == "storecomp-loader" for t in threading.enumerate())
    rest = [b["x"] for b in it]
    m = loader.metrics()
    assert m["pipeline"] == "inline" and m["batches"] == 1 + len(rest) and m["samples"] == len(loader.dataset)
    assert m["producer_s"]["plan"] > 0 and m["producer_s"]["collate"] > 0 and m["producer_cpu_s"] > 0
    assert first["x"].shape[0] == 8


@pytest.mark.parametrize("read_ahead", [-1, 0.5])
def test_bad_read_ahead_is_refused(shard_ds: str, read_ahead: Any) -> None:
    with pytest.raises(storecomp.errors.InvalidArgumentError, match="read_ahead"):
        DataLoader(shard_ds, 8, read_ahead=read_ahead)


def test_exit_without_close_mid_epoch_does_not_abort(tmp_path: Path) -> None:
    """A process that leaves an iteration open and exits (no close()) exits cleanly:
    its producer thread is stopped while the interpreter can still run it. Before,
    about one exit in four aborted ("terminate called without an active exception")."""
    np.save(tmp_path / "t.npy", np.arange(200_000, dtype=np.uint16))
    script = textwrap.dedent(f"""
        from storecomp import DataLoader
        it = iter(DataLoader({str(tmp_path / "t.npy")!r}, 8, seq_len=16))
        next(it)
    """)
    for _ in range(4):
        proc = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
