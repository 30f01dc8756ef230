"""Stall attribution: a wait is blamed on what the producer did meanwhile (its own CPU, storage,
the device copy); read-ahead grows only for storage; the step log and the on_step callback."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.data import DataLoader, NpyDataset, open_dataset, write_dataset
from storecomp.errors import InvalidArgumentError
from storecomp.store import open_store
from storecomp.testing.seaweedfs import SeaweedFS

BURN_S = 0.010  # producer CPU per batch of 128 samples, as in the issue


class BusyPlanning(NpyDataset):
    """An .npy dataset whose batch planning costs ~10 ms of CPU per 128 samples in the producer thread
    (the loader plans a window of batches in one call: the cost follows the samples planned)."""

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        end = time.perf_counter() + BURN_S * np.asarray(indices).size / 128
        x = 0
        while time.perf_counter() < end:  # CPU work, holding the GIL like Python collation would
            x += 1
        return super().locate(indices)


def _rows(tmp_path: Path, n: int = 4096) -> str:
    path = str(tmp_path / "x.npy")
    np.save(path, np.arange(n * 16, dtype=np.float32).reshape(n, 16))
    return path


def test_producer_cpu_is_blamed_not_storage_and_read_ahead_stays(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []
    loader = DataLoader(BusyPlanning({"x": _rows(tmp_path)}), 128, seed=1, on_step=seen.append)
    start = loader.read_ahead
    batches = sum(1 for _ in loader)
    m = loader.metrics()
    assert batches == 32 == m["batches"]
    assert m["producer_s"]["plan"] >= 32 * BURN_S * 0.9 and m["producer_cpu_s"] >= m["producer_s"]["plan"]
    assert m["data_wait_fraction"] > 0.5  # the consumer does nothing: it waits on the producer
    assert m["data_wait_producer_cpu_s"] > 4 * m["data_wait_storage_s"], m
    assert m["bottleneck"] == "producer CPU (planning, checksums, collation)", m
    assert m["read_ahead"] <= start + 1 < m["max_slots"] - 1  # more depth cannot help: it did not grow to the cap
    # The step log and the callback: one record per step, the waits add up.
    steps = loader.steps()
    assert [s["step"] for s in steps] == list(range(32)) and seen == steps
    assert all(s["step_s"] is not None and s["step_s"] >= 0 for s in steps)
    assert sum(s["data_wait_s"] for s in steps) == pytest.approx(m["data_wait_s"])
    assert sum(s["wait_producer_cpu_s"] for s in steps) == pytest.approx(m["data_wait_producer_cpu_s"])
    assert sum(s["samples"] for s in steps) == 4096


def test_storage_is_blamed_for_real_io_and_read_ahead_grows(tmp_path: Path, running_seaweedfs: SeaweedFS) -> None:
    """Ranged GETs from a real S3 server, ~no producer CPU: storage is the cause, and more depth is the cure."""
    n = 2048
    local = str(tmp_path / "ds")
    write_dataset(local, {"x": np.arange(n * 256, dtype=np.float32).reshape(n, 256)}, shard_bytes=256 << 10)
    url = running_seaweedfs.url()
    store = open_store(url, **running_seaweedfs.store_options())
    for p in sorted(Path(local).rglob("*")):
        if p.is_file():
            store.put(str(p.relative_to(local)), p.read_bytes())
    ds = open_dataset(url, store_options=running_seaweedfs.store_options())
    loader = DataLoader(ds, 64, seed=2, verify=False, max_memory=16 * 64 * 1024)
    start = loader.read_ahead
    assert sum(b["x"].shape[0] for b in loader) == n
    m = loader.metrics()
    assert m["data_wait_storage_s"] > m["data_wait_producer_cpu_s"], m
    assert m["bottleneck"].startswith("storage"), m
    assert m["read_ahead"] > start  # waits for storage grow the read-ahead
    assert m["pipeline"] == "thread"  # store reads: a producer thread (local host batches are made in next())


def test_step_log_is_bounded(tmp_path: Path) -> None:
    loader = DataLoader(_rows(tmp_path, 512), 16, step_log=5)
    list(loader)
    steps = loader.steps()
    assert [s["step"] for s in steps] == [27, 28, 29, 30, 31]
    list(loader)  # a second epoch continues the count
    assert loader.steps()[-1]["step"] == 63 and loader.steps()[-1]["epoch"] == 1
    with pytest.raises(InvalidArgumentError, match="step_log"):
        DataLoader(_rows(tmp_path, 512), 16, step_log=-1)
