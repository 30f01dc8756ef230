"""Bad files given to the CLI (and the library under it): one-line errors naming the file, never a traceback.

The cases of issue 16's fault campaign: an empty .npy, garbage Zarr metadata, garbage
parquet / WebDataset tar / safetensors / npz to convert, a deeply nested manifest, a mounts
TOML with invalid UTF-8, and a manifest that names shard files outside the dataset folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storecomp.cli import main
from storecomp.data import open_dataset, write_dataset
from storecomp.errors import ConfigError, CorruptDataError, StorecompError


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], names: str) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("storecomp: error: ") and err.count("\n") == 1, err
    assert names in err and "Traceback" not in err, err
    return err


def _garbage(path: Path, n: int = 3000) -> Path:
    path.write_bytes(np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes())
    return path


def test_write_from_an_empty_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.npy").write_bytes(b"")
    err = _one_line_error(capsys, ["dataset", "write", str(tmp_path / "out"), f"x={tmp_path}/empty.npy"], "empty.npy")
    assert "not a readable .npy file" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("meta", "text"), [("zarr.json", b"{garbage"), (".zarray", b"\x00\x01 not json \xff")])
def test_inspect_garbage_zarr(tmp_path: Path, capsys: pytest.CaptureFixture[str], meta: str, text: bytes) -> None:
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / meta).write_bytes(text)
    _one_line_error(capsys, ["dataset", "inspect", str(tmp_path / "z")], str(tmp_path / "z"))
    with pytest.raises(CorruptDataError, match="not a readable Zarr array"):
        open_dataset(tmp_path / "z")


@pytest.mark.parametrize("ext", [".parquet", ".tar", ".safetensors", ".npz"])
def test_convert_garbage(tmp_path: Path, capsys: pytest.CaptureFixture[str], ext: str) -> None:
    src = _garbage(tmp_path / f"g{ext}")
    err = _one_line_error(capsys, ["dataset", "convert", str(src), str(tmp_path / "out")], str(src))
    assert "not a readable" in err
    assert not (tmp_path / "out").exists()  # nothing published, no empty folder left behind


def test_deeply_nested_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    for cmd in ("inspect", "verify"):
        _one_line_error(capsys, ["dataset", cmd, str(tmp_path / "deep")], "manifest.json")
    with pytest.raises(CorruptDataError, match="malformed manifest"):
        open_dataset(tmp_path / "deep")  # the library too: RecursionError stays inside


def test_mounts_toml_with_invalid_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "mounts.toml"
    cfg.write_bytes(b'[mounts.a]\nurl = "/tmp/\xff\xfe"\n')
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    _one_line_error(capsys, ["ls", "sc://a"], str(cfg))
    from storecomp.store import load_mounts

    with pytest.raises(ConfigError, match="not UTF-8"):
        load_mounts({"STORECOMP_MOUNTS": str(cfg)})
    from storecomp.config import IOOptions

    with pytest.raises(ConfigError, match="not UTF-8"):
        IOOptions.load({"STORECOMP_CONFIG": str(cfg)})


def _escape_manifest(tmp_path: Path, rewrite: Callable[[str, Path], str]) -> Path:
    ds = tmp_path / "ds"
    write_dataset(ds, {"x": np.arange(100, dtype=np.int64)})
    manifest = json.loads((ds / "manifest.json").read_text())
    key = manifest["shards"][0]["key"]
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(ds / key, outside / os.path.basename(key))
    manifest["shards"][0]["key"] = rewrite(key, outside)
    (ds / "manifest.json").write_text(json.dumps(manifest))
    return ds


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda key, out: f"../outside/{os.path.basename(key)}",
        lambda key, out: str(out / os.path.basename(key)),  # absolute
        lambda key, out: f"shards/../../outside/{os.path.basename(key)}",
    ],
    ids=["dotdot", "absolute", "nested-dotdot"],
)
def test_manifest_naming_shards_outside_the_dataset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rewrite: Callable[[str, Path], str]
) -> None:
    ds = _escape_manifest(tmp_path, rewrite)
    with pytest.raises(CorruptDataError, match="leaves the dataset folder"):
        open_dataset(ds)
    _one_line_error(capsys, ["dataset", "verify", str(ds)], "manifest.json")


def test_config_toml_errors_share_the_root() -> None:
    assert issubclass(ConfigError, StorecompError)
