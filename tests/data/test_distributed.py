"""Real torch.distributed (gloo) ranks on localhost reading one dataset, then resuming with another world size.

Runs examples/distributed_training.py (DDP on the CPU) so the example cannot rot.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from storecomp.data import write_dataset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "distributed_training.py"
N = 500


def run(*args: str) -> None:
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_union_is_the_epoch_and_resume_with_another_world_size(tmp_path: Path) -> None:
    data = str(tmp_path / "ds")
    write_dataset(data, {"x": np.zeros((N, 16), np.float32), "id": np.arange(N)}, shard_bytes=8 << 10)
    # 4 ranks for 3 steps, save, then 2 ranks to the end of the epoch.
    state = tmp_path / "state.json"
    run(
        "--data",
        data,
        "--world-size",
        "4",
        "--batch-size",
        "16",
        "--steps",
        "3",
        "--save",
        str(state),
        "--report",
        str(tmp_path / "a.json"),
    )
    first = json.loads((tmp_path / "a.json").read_text())
    assert json.loads(state.read_text())["position"] == 4 * 16 * 3
    assert all(r["state"] == first[0]["state"] for r in first)  # every rank agrees on the global position
    run("--data", data, "--world-size", "2", "--batch-size", "16", "--resume", str(state), "--report", str(tmp_path / "b.json"))
    second = json.loads((tmp_path / "b.json").read_text())
    ids = [i for r in first + second for i in r["seen"]]
    assert len(ids) == N and sorted(ids) == list(range(N))
    assert all(r["state"]["epoch"] == 1 and r["state"]["position"] == 0 for r in second)
