"""Converters (Parquet, .npy folder, .npz, Zarr, safetensors, WebDataset tar) and ``storecomp dataset``."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from storecomp.cli import main as cli
from storecomp.data import DataLoader, open_dataset
from storecomp.data.convert import convert, verify
from storecomp.errors import CorruptDataError, InvalidArgumentError

N = 37


def check(ds_path: str, expected: dict[str, list[np.ndarray] | np.ndarray]) -> None:
    ds = open_dataset(ds_path)
    assert len(ds) == N
    for i in (0, 5, N - 1):
        s = ds[i]
        for k, v in expected.items():
            assert np.array_equal(s[k], v[i]), k
    assert verify(ds)["checksums_checked"] >= N


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    a = rng.random(N).astype(np.float32)
    emb = rng.random((N, 4)).astype(np.float64)
    toks = [rng.integers(0, 9, int(rng.integers(0, 5))).astype(np.int64) for _ in range(N)]
    text = [f"row {i}" for i in range(N)]
    table = pa.table(
        {
            "a": a,
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), 4),
            "toks": pa.array([t.tolist() for t in toks], pa.list_(pa.int64())),
            "text": text,
        }
    )
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=10)
    convert(str(tmp_path / "t.parquet"), str(tmp_path / "ds"), shard_bytes=1024, chunk_rows=8)
    check(str(tmp_path / "ds"), {"a": a, "emb": emb, "toks": toks, "text": [np.frombuffer(t.encode(), np.uint8) for t in text]})


def test_npy_folder_and_npz(tmp_path: Path) -> None:
    x = np.arange(N * 3, dtype=np.int16).reshape(N, 3)
    y = np.arange(N, dtype=np.float32)
    (tmp_path / "src").mkdir()
    np.save(tmp_path / "src" / "x.npy", x)
    np.save(tmp_path / "src" / "y.npy", y)
    convert(str(tmp_path / "src"), str(tmp_path / "a"), chunk_rows=5)
    check(str(tmp_path / "a"), {"x": x, "y": y})
    np.savez(tmp_path / "z.npz", x=x, y=y)
    convert(str(tmp_path / "z.npz"), str(tmp_path / "b"))
    check(str(tmp_path / "b"), {"x": x, "y": y})


def test_zarr_and_safetensors(tmp_path: Path) -> None:
    import zarr
    from safetensors.numpy import save_file

    x = np.arange(N * 2, dtype=np.float32).reshape(N, 2)
    z = zarr.create_array(str(tmp_path / "z"), shape=x.shape, chunks=(4, 2), dtype=x.dtype)  # compressed: converted
    z[:] = x
    convert(str(tmp_path / "z"), str(tmp_path / "a"), chunk_rows=6)
    check(str(tmp_path / "a"), {"x": x})
    save_file({"x": x, "label": np.arange(N, dtype=np.int64)}, str(tmp_path / "t.safetensors"))
    convert(str(tmp_path / "t.safetensors"), str(tmp_path / "b"))
    check(str(tmp_path / "b"), {"x": x, "label": np.arange(N)})


def write_wds(path: Path, n: int) -> list[bytes]:
    payloads = []
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            for ext, data in (("cls", str(i % 3).encode()), ("jpg", os.urandom(10 + i))):
                info = tarfile.TarInfo(f"s{i:05d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                if ext == "jpg":
                    payloads.append(data)
    return payloads


def test_webdataset_tar(tmp_path: Path) -> None:
    jpgs = write_wds(tmp_path / "w.tar", N)
    convert(str(tmp_path / "w.tar"), str(tmp_path / "ds"), chunk_rows=10)
    check(str(tmp_path / "ds"), {"jpg": [np.frombuffer(j, np.uint8) for j in jpgs]})
    b = next(iter(DataLoader(str(tmp_path / "ds"), 8, shuffle=False)))
    assert b["jpg_offsets"].shape == (9,) and bytes(b["cls"].numpy()[:1]) == b"0"


def test_unknown_or_bad_sources(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InvalidArgumentError, match="cannot tell"):
        convert(str(tmp_path / "f.txt"), str(tmp_path / "d"))
    np.savez(tmp_path / "bad.npz", x=np.zeros(3), y=np.zeros(4))
    with pytest.raises(InvalidArgumentError, match="first"):
        convert(str(tmp_path / "bad.npz"), str(tmp_path / "d2"))
    assert not (tmp_path / "d2" / "manifest.json").exists()


def test_cli_write_inspect_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.arange(N * 4, dtype=np.float32).reshape(N, 4))
    np.save(tmp_path / "y.npy", np.arange(N))
    ds = str(tmp_path / "ds")
    assert cli(["dataset", "write", ds, f"x={tmp_path / 'x.npy'}", f"y={tmp_path / 'y.npy'}", "--shard-bytes", "512"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == N
    assert cli(["dataset", "inspect", ds]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_samples"] == N and [f["name"] for f in doc["fields"]] == ["x", "y"] and doc["parts"] > 1
    assert cli(["dataset", "verify", ds]) == 0
    assert json.loads(capsys.readouterr().out)["checksums_checked"] == N
    # flip one byte of the last record of the first shard: verify names it
    shard = os.path.join(ds, json.loads(Path(ds, "manifest.json").read_text())["shards"][0]["key"])
    with open(shard, "r+b") as f:
        f.seek(40)
        b = f.read(1)
        f.seek(40)
        f.write(bytes([b[0] ^ 1]))
    with pytest.raises(CorruptDataError, match="content hash"):
        verify(ds)
    assert cli(["dataset", "verify", ds]) == 1
    assert "content hash" in capsys.readouterr().err


def test_cli_convert_and_token_inspect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "z.npz", x=np.zeros((N, 2), np.uint8))
    assert cli(["dataset", "convert", str(tmp_path / "z.npz"), str(tmp_path / "ds"), "--from", "npz"]) == 0
    capsys.readouterr()
    np.save(tmp_path / "t.npy", np.arange(100, dtype=np.uint16))
    assert cli(["dataset", "inspect", str(tmp_path / "t.npy"), "--seq-len", "9"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "tokens" and doc["num_samples"] == 11
    assert cli(["dataset", "write", str(tmp_path / "e"), "nonsense"]) == 1
