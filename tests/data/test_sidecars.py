"""``storecomp dataset index`` / ``verify``: checksum sidecars for datasets read in place, and a verify
that reads every byte and never says ok when it checked nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storecomp.cli import main
from storecomp.cli.dataset import UNVERIFIED
from storecomp.data import index_dataset, open_dataset, write_dataset
from storecomp.data.convert import verify
from storecomp.errors import CorruptDataError, InvalidArgumentError


def _megatron(d: Path) -> tuple[str, dict[str, object]]:
    sizes = np.array([50, 70, 30], np.int32)
    ptr = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * 2)]).astype(np.int64)
    head = b"MMIDIDX\x00\x00" + (1).to_bytes(8, "little") + bytes([8]) + (3).to_bytes(8, "little") + (4).to_bytes(8, "little")
    (d / "m.idx").write_bytes(head + sizes.tobytes() + ptr.tobytes() + np.arange(4, dtype=np.int64).tobytes())
    (d / "m.bin").write_bytes(np.arange(150, dtype=np.uint16).tobytes())
    return str(d / "m.bin"), {"seq_len": 8}


def _tokens(d: Path) -> tuple[str, dict[str, object]]:
    np.save(d / "tok.npy", np.arange(5000, dtype=np.uint16))
    return str(d / "tok.npy"), {"seq_len": 16}


def _rows(d: Path) -> tuple[str, dict[str, object]]:
    np.save(d / "rows.npy", np.arange(3000, dtype=np.float32).reshape(1000, 3))
    return str(d / "rows.npy"), {}


def _zarr(d: Path) -> tuple[str, dict[str, object]]:
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(str(d / "z"), shape=(100, 4), chunks=(25, 4), dtype="int32", compressors=None)
    z[:] = np.arange(400, dtype=np.int32).reshape(100, 4)
    return str(d / "z"), {}


FORMATS = {"megatron": _megatron, "token-npy": _tokens, "npy-rows": _rows, "zarr": _zarr}


@pytest.mark.parametrize("make", FORMATS.values(), ids=FORMATS.keys())
def test_verify_says_what_it_could_not_check_then_index_makes_it_checkable(
    tmp_path: Path, make: Callable[[Path], tuple[str, dict[str, object]]]
) -> None:
    src, kw = make(tmp_path)
    ds = open_dataset(src, **kw)  # type: ignore[arg-type]
    total = sum(os.path.getsize(p) for p in ds.in_place_files)
    before = verify(ds)
    assert before["ok"] is None and before["bytes_read"] == total and before["bytes_checked"] == 0
    assert sorted(before["unchecked"]) == sorted(ds.in_place_files) and "dataset index" in before["note"]
    summary = index_dataset(ds, chunk_bytes=4096)
    assert summary["files"] == len(ds.in_place_files) and summary["bytes"] == total
    ds = open_dataset(src, **kw)  # type: ignore[arg-type]
    assert set(ds.checksums) == set(ds.in_place_files)
    after = verify(ds)
    assert after["ok"] is True and after["unchecked"] == [] and after["bytes_read"] == after["bytes_checked"] == total
    assert after["checked"]["chunks_crc32c"] == sum(-(-os.path.getsize(p) // 4096) for p in ds.in_place_files)
    first = ds[0]
    assert all(isinstance(v, np.ndarray) for v in first.values())


def test_damage_after_indexing_is_found_by_verify_and_by_reads(tmp_path: Path) -> None:
    src, kw = _rows(tmp_path)
    index_dataset(open_dataset(src), chunk_bytes=4096)
    with open(src, "r+b") as f:  # one byte of row 500 (past the 128-byte header), in place
        f.seek(128 + 500 * 12)
        b = f.read(1)
        f.seek(128 + 500 * 12)
        f.write(bytes([b[0] ^ 0xFF]))
    ds = open_dataset(src)
    with pytest.raises(CorruptDataError, match=r"rows.npy: crc32c mismatch in bytes \[4096, 8192\)"):
        verify(ds)
    with pytest.raises(CorruptDataError, match="rows.npy"):
        ds[500]  # the read checks the chunk that covers the sample
    assert np.array_equal(ds[0]["x"], np.arange(3, dtype=np.float32))  # other chunks are fine
    with open(src, "ab") as f:  # replaced by a longer file: the sidecar no longer describes it
        f.write(b"\0" * 12)
    with pytest.raises(CorruptDataError, match="changed since `storecomp dataset index`"):
        open_dataset(src)


def test_damaged_sidecar_and_reindexing(tmp_path: Path) -> None:
    src, kw = _tokens(tmp_path)
    index_dataset(open_dataset(src, **kw))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="already indexed"):
        index_dataset(open_dataset(src, **kw))  # type: ignore[arg-type]
    side = Path(src + ".crc32c")
    raw = bytearray(side.read_bytes())
    raw[-1] ^= 1
    side.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match="sidecar"):
        open_dataset(src, **kw)  # type: ignore[arg-type]
    side.unlink()
    index_dataset(open_dataset(src, **kw), replace=True)  # type: ignore[arg-type]
    assert verify(open_dataset(src, **kw))["ok"] is True  # type: ignore[arg-type]


def test_shard_datasets_are_checked_whole_and_need_no_index(tmp_path: Path) -> None:
    ds_path = tmp_path / "ds"
    write_dataset(
        ds_path,
        {"x": np.arange(200, dtype=np.int64), "t": [np.arange(i % 5, dtype=np.int32) for i in range(200)]},
        shard_bytes=1024,
    )
    ds = open_dataset(ds_path)
    out = verify(ds)
    shards = [p for p in (ds_path / "shards").iterdir()]
    assert out["ok"] is True and out["checked"]["shard_sha256"] == len(shards) == len(ds.parts)
    assert out["checked"]["record_crc32c"] == 200 and out["checked"]["value_crc32c"] == 200
    assert out["bytes_read"] == out["bytes_checked"] == sum(p.stat().st_size for p in shards)
    with pytest.raises(InvalidArgumentError, match="carry their own checksums"):
        index_dataset(ds)


def test_cli_index_and_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, _ = _tokens(tmp_path)
    assert main(["dataset", "verify", "--seq-len", "128", src]) == UNVERIFIED == 3
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is None and doc["bytes_read"] == os.path.getsize(src) and doc["unchecked"] == [src]
    assert main(["dataset", "index", "--seq-len", "128", "--chunk-bytes", "65536", src]) == 0
    assert json.loads(capsys.readouterr().out)["chunk_bytes"] == 65536
    assert main(["dataset", "verify", "--seq-len", "128", src]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["checked"]["chunks_crc32c"] == -(-os.path.getsize(src) // 65536)
    assert main(["dataset", "index", "--seq-len", "128", src]) == 1
    assert "already indexed" in capsys.readouterr().err
