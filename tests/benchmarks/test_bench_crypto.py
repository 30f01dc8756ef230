"""Smoke run of benchmarks/bench_crypto.py at a tiny size, so the script does not rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_crypto_tiny(tmp_path: Path) -> None:
    out = tmp_path / "crypto.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_crypto.py"), "--tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    kv, loader = doc["kv_disk"], doc["loader_cold"]
    assert kv["verify_failures"] == 0 and kv["ratio_store"] > 0 and kv["ratio_retrieve"] > 0
    assert all(v > 0 for v in kv["gbps"].values())
    cached = doc["kv_disk_page_cache"]
    assert kv["disk_direct"] is True and cached["disk_direct"] is None
    assert cached["verify_failures"] == 0 and all(v > 0 for v in cached["gbps"].values())
    assert loader["samples_per_s"]["plain"] > 0 and loader["samples_per_s"]["encrypted"] > 0
    assert "target" in proc.stderr
    assert "key" not in json.dumps(doc).lower()  # nothing about keys, let alone a key, in the figures
