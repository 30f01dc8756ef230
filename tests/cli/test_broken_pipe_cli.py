"""``storecomp ... | head``: a reader that closes the pipe early is not an error (exit 0, nothing on stderr),
for every command (handled once in ``storecomp.cli.main``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storecomp.data import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipe") / "ds"
    write_dataset(root, {"x": np.arange(64, dtype=np.int64)}, shard_bytes=64)
    return root


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}


@pytest.mark.parametrize(
    "argv",
    [["dataset", "inspect", "{ds}"], ["dataset", "verify", "{ds}"], ["info", "--json"], ["ls", "{ds}/shards"]],
    ids=["dataset-inspect", "dataset-verify", "info", "ls"],
)
def test_reader_closed_before_any_output(dataset: Path, argv: list[str]) -> None:
    """The read end is closed before the command writes a byte: its first write meets EPIPE."""
    args = [a.format(ds=dataset) for a in argv]
    proc = subprocess.Popen(
        [sys.executable, "-m", "storecomp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert err == "", err  # no "Broken pipe", no "Exception ignored", no traceback


def test_shell_pipe_into_head(dataset: Path) -> None:
    cmd = f'{sys.executable} -m storecomp dataset inspect {dataset} | head -c 20; echo " rc=${{PIPESTATUS[0]}}"'
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=_env(), timeout=60)
    assert p.stdout.endswith(" rc=0\n") and p.stdout.startswith("{"), p.stdout
    assert "Broken pipe" not in p.stderr and "Traceback" not in p.stderr, p.stderr
