"""Smoke run of benchmarks/bench_place.py at its tiny size (two real SeaweedFS
sites, storecomp place against the peers, resume after kill -9, a reader during
a migration): every part runs and reports numbers; speed is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_tiny_bench_place_runs_every_part(tmp_path: Path) -> None:
    out = tmp_path / "place.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_place.py"), "--tiny", "--read-s", "0.3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    (rnd,) = doc["rounds"]
    assert rnd["storecomp"]["copied"] == rnd["storecomp"]["objects"] > 0 and rnd["storecomp"]["bytes_per_s"] > 0
    assert "bytes_per_s" in rnd["boto3"]
    assert "bytes_per_s" in rnd["rclone"] or "skipped" in rnd["rclone"]
    rs = doc["resume"]
    if not rs["rerun_already_complete"]:  # the kill landed before the publish: the rerun copies exactly what is missing
        assert rs["rerun_skipped"] == rs["blobs_present_after_kill"]
        assert rs["rerun_bytes_uploaded"] + rs["rerun_bytes_resumed"] == rs["bytes_missing_after_kill"]
        assert rs["repeated_bytes"] <= rs["repeat_bound"] + (256 << 10)  # headers and small requests beside the parts
    assert doc["reader_alone"]["samples"] > 0 and doc["reader_during"]["samples"] > 0
    assert "storecomp / best peer" in proc.stdout
