"""Smoke run of benchmarks/peers/bench_peers.py without the peer venv (CI has none).

The in-environment loaders (storecomp, the torch DataLoader) really run at a
tiny size from a cold page cache; MosaicML Streaming, LitData and WebDataset
must come back as skipped with the reason, never as a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "benchmarks" / "peers" / "bench_peers.py"
VENV_PEERS = {"mosaic", "litdata", "wds"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=240)


def test_tiny_in_environment_loaders_run_and_missing_peers_are_skipped(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = _run(
        "--tiny", "--dir", str(tmp_path / "data"), "--python", str(tmp_path / "no-venv" / "bin" / "python"),
        "--torch-workers", "0,2", "--json", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    ran = {(r["peer"], r["workers"]) for r in doc["results"]}
    assert ran == {("storecomp", 0), ("storecomp-rand", 0), ("torch", 0), ("torch", 2), ("torch-pread", 0), ("torch-pread", 2)}
    for r in doc["results"]:
        assert "error" not in r, r
        assert r["samples"] > 0 and r["samples_per_s"] > 0 and r["files_evicted"] > 0
        assert 0.0 <= r["data_wait_fraction"] <= 1.0
        assert r["peak_rss_mib"] > 0 and r["cpu_s_per_gb"] is not None
    assert set(doc["skipped"]) == VENV_PEERS
    assert all("setup_venv.sh" in why for why in doc["skipped"].values())
    assert doc["commit"] and doc["machine"]["cpus"]
    for peer in VENV_PEERS:
        assert f"{peer}" in proc.stdout and "skipped" in proc.stdout
    assert "vs sc" in proc.stdout


def test_peer_missing_from_the_venv_is_skipped_with_the_import_error(tmp_path: Path) -> None:
    # This Python exists but has no webdataset: skipped, nothing written, exit 0.
    out = tmp_path / "peers.json"
    proc = _run("--tiny", "--dir", str(tmp_path / "data"), "--python", sys.executable, "--peers", "wds", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["results"] == []
    assert "could not import webdataset" in doc["skipped"]["wds"]
    assert not (tmp_path / "data" / "wds").exists()


def test_unknown_peer_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run("--tiny", "--peers", "storecomp,nosuchpeer")
    assert proc.returncode == 2
    assert "unknown peer" in proc.stderr and "nosuchpeer" in proc.stderr
