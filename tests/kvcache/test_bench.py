"""Smoke run of benchmarks/bench_kvcache.py at toy sizes, so the script does not rot (no speed asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_bench_kvcache_tiny(tmp_path: Path) -> None:
    out = tmp_path / "kv.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_kvcache.py"),
            "--tiny",
            "--dir",
            str(tmp_path / "d"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc) >= {"host", "disk", "lookup", "rebuild", "ttft"}
    assert doc["host"]["gbps"]["store"] > 0 and doc["disk"]["gbps"]["retrieve"] > 0
    assert doc["rebuild"]["chunks"] == 200
    assert doc["ttft"]["reused_tokens"] == 176
    assert "host tier" in proc.stdout and "TTFT" in proc.stdout
