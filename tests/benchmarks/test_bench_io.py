"""Smoke run of benchmarks/bench_io.py at a tiny size, so the script does not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_io_tiny(tmp_path: Path) -> None:
    out = tmp_path / "io.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_io.py"), "--tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"seq_1m", "rand_4k", "rand_64k", "rand_1m", "hot"}
    assert all(case["storecomp"]["gbps"] > 0 for case in doc["cases"].values())
    for case in ("rand_4k", "rand_64k", "rand_1m"):  # users' own buffers, next to the aligned ones
        for kind in ("aligned", "numpy", "torch"):
            variant = doc["cases"][case][f"storecomp_{kind}"]
            assert variant["destination"] == kind and variant["iops"] > 0
        user = doc["cases"][case]["user_buffer"]
        assert user["target"] == 0.9 and isinstance(user["meets_target"], bool)
        for kind in ("numpy", "torch"):
            assert user[kind]["vs_aligned"] > 0 and user[kind]["vs_slots"] > 0
    assert "seq_1m" in proc.stdout and "ratio" in proc.stdout
