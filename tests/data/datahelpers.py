"""Small datasets for the data tests (real files in tmp_path, nothing mocked); import the fixtures you use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.data import write_dataset

N = 600


@pytest.fixture
def columns() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    return {
        "x": rng.random((N, 3, 5)).astype(np.float32),
        "label": np.arange(N, dtype=np.int64),
        "text": [rng.integers(0, 1000, int(rng.integers(0, 9)), dtype=np.int32) for _ in range(N)],
    }


@pytest.fixture
def shard_ds(tmp_path: Path, columns: dict[str, Any]) -> str:
    """A dataset of N samples in several shards (fixed and variable-length fields)."""
    path = str(tmp_path / "ds")
    write_dataset(path, columns, shard_bytes=8 << 10)
    return path
