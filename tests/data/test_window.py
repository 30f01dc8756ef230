"""Window planning: datasets of fixed-size columns on local files are planned a window of batches at a
time (vectorised) and each batch read as one native submission with crc32c on the engine's threads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storecomp.data import DataLoader, open_dataset, write_dataset
from storecomp.data._pipeline import _sorted_batches
from storecomp.data._plan import SlotLayout, column_keys, plan_batch, plan_window
from storecomp.data.readers import LocalReader
from storecomp.errors import CorruptDataError, InvalidArgumentError
from storecomp.io import IOFuture
from tests.data.test_bad_input import flip, shard_paths

N = 600


@pytest.fixture
def fixed_ds(tmp_path: Path) -> str:
    """N samples of two fixed-size fields in several shards, no variable-length fields."""
    rng = np.random.default_rng(3)
    path = str(tmp_path / "fixed")
    write_dataset(path, {"x": rng.random((N, 7)).astype(np.float32), "label": np.arange(N, dtype=np.int64)}, shard_bytes=4 << 10)
    return path


def _expand(key: str, offs: np.ndarray, lens: np.ndarray, dst: np.ndarray) -> set[tuple[str, int, int]]:
    """Every (key, file offset, slot offset) of 4-byte granules the reads cover: equal sets read equal bytes."""
    out = set()
    for o, n, d in zip(offs.tolist(), lens.tolist(), dst.tolist(), strict=True):
        out.update((key, o + k, d + k) for k in range(0, n, 4))
    return out


def test_window_plans_read_and_check_what_batch_plans_do(fixed_ds: str) -> None:
    ds = open_dataset(fixed_ds)
    assert len(ds.parts) > 3 and not ds.var_fields
    layout = SlotLayout.for_dataset(ds, 64)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(N, 64, replace=False)), np.arange(100, 164), np.sort(rng.choice(N, 9, replace=False))]
    window = plan_window(ds, layout, batches, True, column_keys(ds))
    assert len(window) == 3
    for indices, wp in zip(batches, window, strict=True):
        bp = plan_batch(ds, layout, indices, verify=True)
        flat = wp.flat
        assert flat is not None and wp.n == bp.n == indices.size and wp.nbytes == bp.nbytes
        want = set().union(*(_expand(*r) for r in bp.reads))
        got = set().union(
            *(
                _expand(flat.keys[int(f)], flat.offsets[i : i + 1], flat.lengths[i : i + 1], flat.dst[i : i + 1])
                for i, f in enumerate(flat.file_index)
            )
        )
        assert got == want
        # One expected crc32c per checked sample chunk, in request order: the engine's order.
        assert flat.crc_steps is not None and flat.expected is not None
        chunks = int(np.sum(flat.lengths // np.maximum(flat.crc_steps, 1)))
        assert chunks == flat.expected.size == sum(c.expected.size for c in bp.checks)
        # The slot bytes the reads need, computed for the window at once (the submission's size check).
        assert flat.dst_end == int((flat.dst + flat.lengths).max())
    # Consecutive samples of one shard are one read.
    assert window[1].flat is not None and window[1].flat.offsets.size <= len({int(p) for p in ds.locate(batches[1])[0]})


def test_window_batches_sorted_in_one_pass_match_one_by_one() -> None:
    order = np.random.default_rng(5).permutation(1000)
    for taken in ([(0, 64, 64), (64, 64, 128), (320, 64, 384)], [(0, 64, 64), (64, 30, 94)], [(7, 5, 12)]):
        got = _sorted_batches(order, taken)
        assert [g.tolist() for g in got] == [sorted(order[f : f + c].tolist()) for f, c, _ in taken]


def test_fixed_columns_exact_epochs(fixed_ds: str) -> None:
    ds = open_dataset(fixed_ds)
    loader = DataLoader(fixed_ds, 48, seed=4)
    for _ in range(2):
        seen = []
        for b in loader:
            lab = b["label"].numpy()
            rows = np.stack([ds[int(i)]["x"] for i in lab])
            assert np.array_equal(b["x"].numpy(), rows)
            seen += lab.tolist()
        assert sorted(seen) == list(range(N))


def test_fixed_columns_corrupt_record_is_named_or_skipped(fixed_ds: str) -> None:
    ds = open_dataset(fixed_ds)
    stride = ds.columns[0].nbytes
    path = shard_paths(fixed_ds)[1]
    flip(path, 5 * stride + 2)  # record 5 of shard 1
    with pytest.raises(CorruptDataError, match=f"{os.path.basename(path)}: checksum mismatch in record 5 at offset {5 * stride}"):
        for _ in DataLoader(fixed_ds, 32, seed=1):
            pass
    loader = DataLoader(fixed_ds, 32, seed=1, on_corrupt="skip")
    seen = [i for b in loader for i in b["label"].tolist()]
    bad = int(ds.starts[1]) + 5
    assert loader.metrics()["corrupt_skipped"] == 1 and sorted(seen) == [i for i in range(N) if i != bad]


def test_fixed_columns_modified_between_epochs_is_a_checksum_error(fixed_ds: str) -> None:
    from storecomp.io import Engine

    ds = open_dataset(fixed_ds)
    stride = ds.columns[0].nbytes
    path = shard_paths(fixed_ds)[0]
    with Engine(direct="off") as eng:
        loader = DataLoader(fixed_ds, 32, seed=3, engine=eng)
        assert sum(b["label"].shape[0] for b in loader) == len(ds)
        with open(path, "r+b") as f:  # the same inode, rewritten in place: the page cache holds the new bytes
            f.seek(7 * stride + 1)
            f.write(b"\xa5\x5a")
        with pytest.raises(CorruptDataError, match=f"checksum mismatch in record 7 at offset {7 * stride}"):
            for _ in loader:
                pass


def test_submit_flat_refuses_a_destination_smaller_than_the_plan_needs(fixed_ds: str) -> None:
    ds = open_dataset(fixed_ds)
    layout = SlotLayout.for_dataset(ds, 64)
    (plan,) = plan_window(ds, layout, [np.arange(64)], True, column_keys(ds))
    flat = plan.flat
    assert flat is not None and flat.dst_end is not None
    reader = ds.reader
    assert isinstance(reader, LocalReader)
    files = reader.open_files(flat.keys)
    small = np.empty(flat.dst_end - 1, np.uint8)
    for dst_end in (None, flat.dst_end):  # computed here, or the plan's own figure
        with pytest.raises(InvalidArgumentError, match=f"need {flat.dst_end} bytes of {flat.dst_end - 1}"):
            reader.submit_flat(
                small, files, flat.file_index, flat.offsets, flat.lengths, flat.dst, flat.crc_steps, dst_end=dst_end
            )
    big = np.empty(layout.nbytes, np.uint8)
    fut = reader.submit_flat(
        big, files, flat.file_index, flat.offsets, flat.lengths, flat.dst, flat.crc_steps, dst_end=flat.dst_end
    )
    assert isinstance(fut, IOFuture) and flat.corrupt(fut.checksums()) == []
