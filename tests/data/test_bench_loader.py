"""Smoke run of benchmarks/bench_loader.py at a tiny size, so the script does not rot (no speed asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def _hot_epochs_last_the_duration(epochs: list[dict], duration: float) -> None:
    """The cold epoch, then hot ones (at least two) adding up to the measurement's duration, as long as fio's."""
    assert [e["epoch"] for e in epochs] == list(range(len(epochs))) and len(epochs) >= 3
    assert sum(e["samples"] / e["samples_per_s"] for e in epochs[1:]) >= duration * 0.99


def test_bench_loader_tiny(tmp_path: Path) -> None:
    out = tmp_path / "loader.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--tiny", "--dir", str(tmp_path), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"rand_64k", "rand_4k", "tokens", "data_wait", "rss", "hot_64k", "user_buffer_64k"}
    hot = doc["cases"]["hot_64k"]
    _hot_epochs_last_the_duration(hot["storecomp"], 0.2)  # --tiny: 0.2 s per measurement
    assert hot["storecomp"][1]["tier"] == "buffered"
    assert hot["fio_buffered_2"]["iops"] > 0 and [t["num_workers"] for t in hot["torch"]] == [0]  # --tiny: num_workers 0 only
    assert doc["cases"]["user_buffer_64k"]["numpy"] > 0 and doc["cases"]["user_buffer_64k"]["slot"] > 0
    for case in ("rand_64k", "rand_4k", "tokens"):
        assert doc["cases"][case]["storecomp"]["samples_per_s"] > 0
    assert doc["cases"]["rand_64k"]["torch"]["samples_per_s"] > 0
    rss = doc["cases"]["rss"]
    assert rss["staging_bytes"] <= rss["max_memory"] and rss["holds"], rss  # the loader's own memory, within budget
    assert rss["mapped_growth"] >= 0  # the page cache its mapped reads map, reported apart
    assert "rand_64k" in proc.stdout and "torch DataLoader" in proc.stdout


def test_bench_loader_one_case_writes_only_its_data(tmp_path: Path) -> None:
    """--cases hot_64k measures the hot-epoch comparison alone, on the 64 KiB data only; an unknown case is refused."""
    out = tmp_path / "loader.json"
    script = str(ROOT / "benchmarks" / "bench_loader.py")
    cmd = [sys.executable, script, "--tiny", "--cases", "hot_64k", "--dir", str(tmp_path), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"hot_64k"}
    _hot_epochs_last_the_duration(doc["cases"]["hot_64k"]["storecomp"], 0.2)
    assert "hot_64k" in proc.stdout
    written = {p.name for p in (tmp_path / "storecomp-bench-loader").iterdir()}
    assert written == {"x64k.npy", "ds64k"}, written
    bad_cmd = [sys.executable, script, "--tiny", "--cases", "hot_64k,warp"]
    bad = subprocess.run(bad_cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown case(s) warp" in bad.stderr
