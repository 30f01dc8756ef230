"""The shard format and the writer: layouts, round trips, atomic publishing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storecomp.data import DatasetWriter, FieldSpec, open_dataset, write_dataset
from storecomp.data.format import TRAILER, decode_index, encode_index, record_layout
from storecomp.errors import InvalidArgumentError
from tests.data import datahelpers

columns = datahelpers.columns  # fixtures
shard_ds = datahelpers.shard_ds


def test_record_layout_pads_only_when_cheap() -> None:
    f = [FieldSpec("a", np.dtype("u1"), (65536,))]
    assert record_layout(f)[1] == 65536
    f = [FieldSpec("a", np.dtype("u1"), (4000,))]
    assert record_layout(f)[1] == 4096  # 2.4 % padding buys aligned records
    f = [FieldSpec("a", np.dtype("u1"), (100,))]
    assert record_layout(f)[1] == 104  # padding to 512 would cost 5x
    f = [FieldSpec("a", np.dtype("u1"), (3,)), FieldSpec("b", np.dtype("<f8"), (2,))]
    offsets, stride = record_layout(f, align=8)
    assert offsets == {"a": 0, "b": 8} and stride == 24


@settings(max_examples=30, deadline=None)
@given(st.dictionaries(st.text("abc", min_size=1, max_size=4), st.lists(st.integers(0, 2**31), max_size=20), max_size=4))
def test_index_round_trip(blobs_in: dict[str, list[int]]) -> None:
    blobs = {k: np.array(v, np.uint64) for k, v in blobs_in.items()}
    data = encode_index({"format": "storecomp.shard/1", "n": 3}, blobs)
    header, out = decode_index(data, "x")
    assert header["n"] == 3
    for k, v in blobs.items():
        assert np.array_equal(out[k], v)


def test_round_trip_fixed_and_var(shard_ds: str, columns: dict[str, Any]) -> None:
    ds = open_dataset(shard_ds)
    assert len(ds) == len(columns["label"]) and len(ds.parts) > 1
    for i in (0, 1, 77, len(ds) - 1):
        s = ds[i]
        assert np.array_equal(s["x"], columns["x"][i])
        assert int(s["label"]) == i
        assert np.array_equal(s["text"], columns["text"][i])


def test_manifest_names_shards_by_content_hash(shard_ds: str) -> None:
    import hashlib

    manifest = json.loads(Path(shard_ds, "manifest.json").read_text())
    assert manifest["format"] == "storecomp.dataset/1"
    for s in manifest["shards"]:
        data = Path(shard_ds, s["key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["sha256"] and s["key"] == f"shards/{s['sha256']}.scs"
        assert len(data) == s["size"] and data[-TRAILER.size :][:8] == b"SCSHRD01"
    assert not [p for p in os.listdir(shard_ds) if p.startswith(".tmp")]


def test_writer_from_iterable_of_dicts_and_torch(tmp_path: Path) -> None:
    samples = [{"img": torch.full((2, 2), i, dtype=torch.uint8), "caption": f"sample {i}"} for i in range(10)]
    write_dataset(tmp_path / "d", samples)
    ds = open_dataset(str(tmp_path / "d"))
    assert [f.name for f in ds.fields] == ["img", "caption"] and ds.fields[1].var
    assert ds[3]["caption"].tobytes() == b"sample 3" and int(ds[3]["img"][1, 1]) == 3


def test_writer_context_manager_and_aligned_records(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "d", [FieldSpec("x", np.dtype("u1"), (4000,))]) as w:
        for i in range(5):
            w.write({"x": np.full(4000, i, np.uint8)})
    ds = open_dataset(str(tmp_path / "d"))
    assert ds.columns[0].nbytes == 4096 and ds[4]["x"][0] == 4


def test_publishing_twice_is_refused(shard_ds: str) -> None:
    with pytest.raises(InvalidArgumentError, match="already published"):
        write_dataset(shard_ds, {"a": np.zeros(3)})


def test_shards_are_durable_before_the_manifest_names_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every shard's bytes and the renames into shards/ reach stable storage before manifest.json is published."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync " + os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace " + os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_dataset(tmp_path / "ds", {"x": np.arange(3000, dtype=np.int64)}, shard_bytes=8192)
    shards = os.listdir(tmp_path / "ds" / "shards")
    assert len(shards) > 1
    assert sum(e.startswith("fsync shard-") for e in events) == len(shards)
    published = events.index("replace manifest.json")
    assert "fsync shards" in events[:published]
    assert events[-1] == "fsync ds"
