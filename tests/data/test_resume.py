"""Resume, torchdata-style: a state saved at any point (before the first batch, mid-epoch, at the end of an
epoch) and loaded into a fresh loader gives exactly the samples the first loader would have given next,
whatever the batches in flight (read_ahead) of either loader and whichever producer path plans the batches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.data import DataLoader, open_dataset, write_dataset
from tests.data import datahelpers

columns = datahelpers.columns  # fixtures
shard_ds = datahelpers.shard_ds

EPOCHS = 2


def _take(it: Any, k: int | None) -> list[int]:
    """The labels of the next ``k`` batches of ``it`` (all when None), flattened."""
    out: list[int] = []
    for n, b in enumerate(it):
        out += b["label"].tolist()
        if k is not None and n + 1 == k:
            break
    return out


def _epochs(loader: DataLoader, epochs: int) -> list[int]:
    return [i for _ in range(epochs) for i in _take(iter(loader), None)]


def check_resume(make: Callable[[int | None], DataLoader], ahead: tuple[int | None, int | None]) -> None:
    """Save after k batches of epoch 0 (k = 0, mid-epoch, every batch) and after a whole epoch; a fresh loader
    (read_ahead ``ahead[1]``, the saver's ``ahead[0]``) continues with exactly the reference's samples."""
    reference = _epochs(make(None), EPOCHS)
    per_epoch = len(reference) // EPOCHS
    nbatches = len(make(None))
    for k in sorted({0, 1, nbatches // 2, nbatches - 1, nbatches}):
        saver = make(ahead[0])
        seen = _take(iter(saver), k) if k else []
        if k == nbatches:  # the epoch ran to its end: the state points at the next epoch
            seen += _take(iter(saver), None)
            assert saver.epoch == 1 and saver.position == 0
        state = saver.state_dict()
        saver.close()
        fresh = make(ahead[1])
        fresh.load_state_dict(state)
        rest = _epochs(fresh, EPOCHS - fresh.epoch)
        assert seen + rest == reference, f"resume after {k} batches of {nbatches}"
    assert len(reference) == EPOCHS * per_epoch


@pytest.fixture
def fixed_ds(tmp_path: Path) -> str:
    """Fixed-size fields only: batches planned a window at a time."""
    path = str(tmp_path / "fixed")
    rng = np.random.default_rng(1)
    write_dataset(path, {"x": rng.random((300, 4)).astype(np.float32), "label": np.arange(300)}, shard_bytes=2 << 10)
    return path


@pytest.mark.parametrize("ahead", [(None, None), (1, 6), (6, 1)], ids=["adaptive", "1-then-6", "6-then-1"])
def test_resume_fixed_columns(fixed_ds: str, ahead: tuple[int | None, int | None]) -> None:
    ds = open_dataset(fixed_ds)
    assert not ds.var_fields
    check_resume(lambda r: DataLoader(ds, 16, seed=9, read_ahead=r), ahead)


def test_resume_variable_length_fields(shard_ds: str) -> None:
    """Variable-length fields: batches planned one at a time."""
    ds = open_dataset(shard_ds)
    assert ds.var_fields
    check_resume(lambda r: DataLoader(ds, 64, seed=5, read_ahead=r), (2, 7))
