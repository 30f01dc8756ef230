"""``storecomp bench vllm`` / benchmarks/bench_vllm.py: skipped with the install hint without the vLLM venv,
and a tiny real run (recompute and the disk tier, two engines) when it exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from storecomp.config import vllm_venv

REPO = Path(__file__).resolve().parents[2]


def test_missing_venv_is_reported_as_skipped(tmp_path: Path) -> None:
    env = dict(os.environ, STORECOMP_VLLM_VENV=str(tmp_path / "none"))
    proc = subprocess.run(
        [sys.executable, "-m", "storecomp", "bench", "vllm", "--dir", str(tmp_path)], capture_output=True, text=True,
        env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "skipped: no vLLM venv at" in proc.stdout and "setup-vllm-venv.sh" in proc.stdout


@pytest.mark.skipif(not (vllm_venv() / "bin" / "python").exists(), reason=f"no vLLM venv at {vllm_venv()}")
def test_tiny_run_measures_each_configuration(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_vllm.py"), "--workload", "tiny", "--configs", "recompute,disk",
         "--dir", str(tmp_path), "--json", str(out)], capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert set(res) == {"recompute", "disk"}
    for r in res.values():
        assert r["requests"] == 1 and r["ttft_p50_s"] > 0 and r["output_tok_s"] > 0
    assert "disk_ttft_p50" in proc.stdout
