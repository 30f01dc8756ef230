"""Each bad input of issue 5 gets a clear storecomp error and loses nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.data import DataLoader, DatasetWriter, FieldSpec, open_dataset, write_dataset
from storecomp.data.format import TRAILER
from storecomp.errors import CorruptDataError, InvalidArgumentError, StorecompError
from tests.data import datahelpers

columns = datahelpers.columns  # fixtures
shard_ds = datahelpers.shard_ds


def shard_paths(ds: str) -> list[str]:
    manifest = json.loads(Path(ds, "manifest.json").read_text())
    return [os.path.join(ds, s["key"]) for s in manifest["shards"]]


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def test_corrupted_shard_trailer(shard_ds: str) -> None:
    path = shard_paths(shard_ds)[1]
    flip(path, os.path.getsize(path) - TRAILER.size + 2)  # inside the magic
    with pytest.raises(CorruptDataError, match=f"{os.path.basename(path)}.*no shard trailer"):
        open_dataset(shard_ds)


def test_corrupted_shard_index(shard_ds: str) -> None:
    path = shard_paths(shard_ds)[0]
    with open(path, "rb") as f:
        f.seek(-TRAILER.size, 2)
        _, ioff, _, _, _ = TRAILER.unpack(f.read())
    flip(path, ioff + 10)  # inside the index JSON
    with pytest.raises(CorruptDataError, match=f"{os.path.basename(path)}: shard index checksum mismatch at offset {ioff}"):
        open_dataset(shard_ds)


def test_truncated_shard(shard_ds: str) -> None:
    path = shard_paths(shard_ds)[2]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(CorruptDataError, match="truncated"):
        open_dataset(shard_ds)


def test_checksum_mismatch_names_shard_and_offset(shard_ds: str) -> None:
    ds = open_dataset(shard_ds)
    stride = ds.columns[0].nbytes
    path = shard_paths(shard_ds)[0]
    flip(path, 3 * stride + 5)  # record 3 of shard 0
    loader = DataLoader(shard_ds, 32, shuffle=False)
    with pytest.raises(CorruptDataError, match=f"{os.path.basename(path)}: checksum mismatch in record 3 at offset {3 * stride}"):
        for _ in loader:
            pass


def test_checksum_mismatch_can_be_skipped_and_counted(shard_ds: str, columns: dict[str, Any]) -> None:
    ds = open_dataset(shard_ds)
    path = shard_paths(shard_ds)[0]
    flip(path, 3 * ds.columns[0].nbytes + 5)
    loader = DataLoader(shard_ds, 32, shuffle=False, on_corrupt="skip")
    seen = []
    for b in loader:
        lab = b["label"].numpy()
        assert np.array_equal(b["x"].numpy(), columns["x"][lab])
        offs = b["text_offsets"].numpy()
        for k, i in enumerate(lab):
            assert np.array_equal(b["text"].numpy()[offs[k] : offs[k + 1]], columns["text"][i])
        seen += lab.tolist()
    assert loader.metrics()["corrupt_skipped"] == 1 and sorted(seen) == [i for i in range(len(ds)) if i != 3]


def test_corrupt_variable_length_values(shard_ds: str) -> None:
    ds = open_dataset(shard_ds)
    p = ds.parts[0].vars[0]
    k = int(np.flatnonzero(np.diff(p.offsets))[0])  # a sample with a non-empty value
    flip(p.key, p.values_base + int(p.offsets[k]))
    with pytest.raises(CorruptDataError, match=f"record {k} at offset {p.values_base + int(p.offsets[k])}"):
        for _ in DataLoader(ds, 600, shuffle=False):
            pass


@pytest.mark.parametrize("bs", [0, -3, 2.5, True])
def test_batch_size_must_be_positive(shard_ds: str, bs: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        DataLoader(shard_ds, bs)


def test_dataset_with_zero_samples(tmp_path: Path) -> None:
    write_dataset(tmp_path / "empty", {"x": np.zeros((0, 4), np.float32)})
    assert len(open_dataset(str(tmp_path / "empty"))) == 0
    with pytest.raises(InvalidArgumentError, match="zero samples"):
        DataLoader(str(tmp_path / "empty"), 4)
    np.save(tmp_path / "t.npy", np.arange(5, dtype=np.uint16))
    with pytest.raises(InvalidArgumentError, match="zero samples"):
        DataLoader(str(tmp_path / "t.npy"), 4, seq_len=8)


def test_state_from_another_dataset_or_seed_is_refused(shard_ds: str, tmp_path: Path) -> None:
    state = DataLoader(shard_ds, 8, seed=1).state_dict()
    with pytest.raises(InvalidArgumentError, match="another seed"):
        DataLoader(shard_ds, 8, seed=2).load_state_dict(state)
    write_dataset(tmp_path / "other", {"x": np.zeros((600, 4), np.float32)})
    with pytest.raises(InvalidArgumentError, match="another dataset"):
        DataLoader(str(tmp_path / "other"), 8, seed=1).load_state_dict(state)
    with pytest.raises(InvalidArgumentError, match="another shuffle"):
        DataLoader(shard_ds, 8, seed=1, shuffle=False).load_state_dict(state)
    with pytest.raises(InvalidArgumentError, match="not a storecomp loader state"):
        DataLoader(shard_ds, 8, seed=1).load_state_dict({"epoch": 1})


def test_mismatched_shapes_or_dtypes_are_refused_before_publishing(tmp_path: Path) -> None:
    def samples(bad: dict[str, Any]) -> Any:
        for i in range(50):
            yield {"x": np.zeros(4, np.float32), "y": i}
        yield bad

    for bad in ({"x": np.zeros(5, np.float32), "y": 1}, {"x": np.zeros(4, np.float64), "y": 1}, {"x": np.zeros(4, np.float32)}):
        target = tmp_path / f"d{len(os.listdir(tmp_path))}"
        with pytest.raises(InvalidArgumentError, match="nothing was published|has no field"):
            write_dataset(target, samples(bad), shard_bytes=64)
        assert not target.exists()  # no manifest, no shards, no temporary files, not the folder the writer made
    with pytest.raises(InvalidArgumentError, match="different sample counts"):
        write_dataset(tmp_path / "n", {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(InvalidArgumentError, match="not a fixed-size numeric"):
        DatasetWriter(tmp_path / "o", [FieldSpec("s", np.dtype(object), ())])
    with pytest.raises(InvalidArgumentError, match="1-D"):
        write_dataset(tmp_path / "v", [{"t": np.zeros(2, np.int32)}, {"t": np.zeros((2, 2), np.int32)}], var=["t"])


def test_errors_share_the_root(shard_ds: str) -> None:
    with pytest.raises(StorecompError):
        open_dataset(os.path.join(shard_ds, "nope"))
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        DataLoader(shard_ds, 8, max_memory=4096)


@pytest.mark.parametrize("drop", ["record_stride", "shards/0/size", "shards/0/key"])
def test_manifest_missing_a_key_is_corrupt_data(shard_ds: str, drop: str) -> None:
    """A manifest without a required entry is CorruptDataError naming the file, not a KeyError."""
    path = Path(shard_ds, "manifest.json")
    doc = json.loads(path.read_text())
    *where, last = drop.split("/")
    node = doc
    for k in where:
        node = node[int(k)] if k.isdigit() else node[k]
    del node[last]
    path.write_text(json.dumps(doc))
    with pytest.raises(CorruptDataError, match="malformed"):
        open_dataset(shard_ds)


@pytest.mark.parametrize(
    "direct,mapped,read_path",
    [("off", "auto", "mapped"), ("off", "off", "buffered"), ("on", "auto", "direct")],
    ids=["mapped", "buffered", "o_direct"],
)
def test_dataset_modified_on_disk_between_epochs_is_a_checksum_error(
    shard_ds: str, direct: str, mapped: str, read_path: str
) -> None:
    """Epoch 0 reads the data set (buffered: it stays in the page cache; its
    shards, just written, are all resident, so they are read mapped unless
    that is turned off); then a sample changes on disk in place. Epoch 1
    never hands out the old bytes (the page cache, and the mapping of it,
    hold the new ones) nor the new ones unchecked: the engine's per-sample
    crc32c (computed as the bytes are copied, when mapped) fails and the
    error names the sample."""
    from storecomp.io import Engine

    ds = open_dataset(shard_ds)
    stride = ds.columns[0].nbytes
    path = shard_paths(shard_ds)[0]
    with Engine(direct=direct, mapped=mapped) as eng:
        loader = DataLoader(shard_ds, 32, seed=3, engine=eng)
        assert sum(b["label"].shape[0] for b in loader) == len(ds)
        m = loader.metrics()
        assert m["tier"] == ("buffered" if direct == "off" else "direct")
        assert m["read_path"] == read_path
        assert (eng.stats()["mapped_pieces"] > 0) == (read_path == "mapped")
        with open(path, "r+b") as f:  # the same inode, rewritten in place
            f.seek(7 * stride + 1)
            f.write(b"\xa5\x5a")
        loader.epoch = 1
        want = f"{os.path.basename(path)}: checksum mismatch in record 7 at offset {7 * stride}"
        with pytest.raises(CorruptDataError, match=want):
            for _ in loader:
                pass
