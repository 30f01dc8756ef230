"""Smoke run of benchmarks/bench_store.py at a tiny size, so the script does not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_store_tiny(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_store.py"), "--tiny", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    for case, metric in (("large", "gbps"), ("ranged", "samples_per_s")):
        for client in ("storecomp", "boto3", "s3fs"):
            assert doc[case][client][metric] > 0
            assert doc[case][client]["verified"] is True
        assert doc[case]["ratio_vs_best_peer"] > 0
    assert "large read" in proc.stdout and "ratio" in proc.stdout
