"""Writing datasets straight to a store URL (s3:// on a real SeaweedFS, sc:// mounts, a Store object):
published atomically (the manifest last, by put-if-absent), read back with open_dataset and the DataLoader;
URLs that cannot be written are refused in one line before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storecomp.cli import main
from storecomp.data import DataLoader, DatasetWriter, open_dataset, write_dataset
from storecomp.data.convert import convert
from storecomp.errors import ConflictError, InvalidArgumentError, NotFoundError, PermissionDeniedError
from storecomp.store import LocalStore, open_store
from storecomp.testing.seaweedfs import SeaweedFS

N = 500


def _cols() -> dict[str, object]:
    rng = np.random.default_rng(5)
    return {
        "x": rng.random((N, 6)).astype(np.float32),
        "id": np.arange(N, dtype=np.int64),
        "t": [rng.integers(0, 9, int(rng.integers(0, 5)), dtype=np.int32) for _ in range(N)],
    }


def _check(ds_or_url: object, cols: dict[str, object], **kw: object) -> None:
    loader = DataLoader(ds_or_url, 64, seed=1, **kw)  # type: ignore[arg-type]
    seen = []
    for b in loader:
        ids = b["id"].numpy()
        assert np.array_equal(b["x"].numpy(), cols["x"][ids])  # type: ignore[index]
        offs = b["t_offsets"].numpy()
        for k, i in enumerate(ids):
            assert np.array_equal(b["t"].numpy()[offs[k] : offs[k + 1]], cols["t"][i])  # type: ignore[index]
        seen += ids.tolist()
    assert sorted(seen) == list(range(N))


def test_write_to_s3_and_read_back(running_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    cols, url, opts = _cols(), running_seaweedfs.url(), running_seaweedfs.store_options()
    m = write_dataset(url, cols, shard_bytes=4 << 10, store_options=opts, var=["t"])
    assert m["num_samples"] == N and len(m["shards"]) > 2
    store = open_store(url, **opts)
    keys = sorted(o.key for o in store.list(""))
    assert keys == sorted(["manifest.json"] + [s["key"] for s in m["shards"]])  # nothing else (no staging left there)
    ds = open_dataset(url, store_options=opts)
    assert len(ds) == N and ds.remote == "ranges"
    _check(ds, cols)
    assert not any(p.name.startswith("s3:") for p in Path.cwd().iterdir())  # never a local folder named s3:
    with pytest.raises(InvalidArgumentError, match="already published"):
        write_dataset(url, cols, store_options=opts)


def test_nothing_is_visible_until_close_and_the_first_publisher_wins(running_seaweedfs: SeaweedFS) -> None:
    cols, url, opts = _cols(), running_seaweedfs.url(), running_seaweedfs.store_options()
    a = DatasetWriter(url, shard_bytes=4 << 10, store_options=opts, var=["t"])
    b = DatasetWriter(url, shard_bytes=4 << 10, store_options=opts, var=["t"])
    a.write_batch(cols)
    b.write_batch({"x": cols["x"][:10], "id": cols["id"][:10], "t": cols["t"][:10]})  # type: ignore[index]
    with pytest.raises(NotFoundError):
        open_dataset(url, store_options=opts)  # written, not published: invisible
    assert a.close()["num_samples"] == N
    with pytest.raises(ConflictError, match="another writer published"):
        b.close()
    _check(open_dataset(url, store_options=opts), cols)  # the first dataset is intact
    c = DatasetWriter(running_seaweedfs.url(), store_options=opts)
    c.write_batch({"x": cols["x"]})
    c.abort()
    with pytest.raises(NotFoundError):
        open_dataset(c.path, store_options=opts)


def test_cli_write_and_convert_to_s3_urls(running_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    cols = _cols()
    np.save(tmp_path / "x.npy", cols["x"])
    np.save(tmp_path / "id.npy", cols["id"])
    np.savez(tmp_path / "src.npz", x=cols["x"], id=cols["id"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORECOMP_", "AWS_"))} | running_seaweedfs.env()
    written, converted = running_seaweedfs.url(), running_seaweedfs.url()
    for args in (
        ["dataset", "write", written, f"x={tmp_path}/x.npy", f"id={tmp_path}/id.npy", "--shard-bytes", "4096"],
        ["dataset", "convert", str(tmp_path / "src.npz"), converted, "--shard-bytes", "4096"],
    ):
        p = subprocess.run([sys.executable, "-m", "storecomp", *args], env=env, cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert f'"dataset": "{args[3] if args[1] == "convert" else args[2]}"' in p.stdout and '"num_samples": 500' in p.stdout
    assert sorted(os.listdir(tmp_path)) == ["id.npy", "src.npz", "x.npy"]  # nothing written locally
    for url in (written, converted):
        ds = open_dataset(url, store_options=running_seaweedfs.store_options())
        b = next(iter(DataLoader(ds, N, shuffle=False)))
        assert np.array_equal(b["x"].numpy(), cols["x"]) and np.array_equal(b["id"].numpy(), cols["id"])


def test_sc_mount_and_store_object_destinations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cols = _cols()
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(f'[mounts.data]\nurl = "{tmp_path}/data"\n\n[mounts.ro]\nurl = "{tmp_path}/ro"\nread_only = true\n')
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    convert_src = tmp_path / "src.npz"
    np.savez(convert_src, x=cols["x"])
    assert convert(str(convert_src), "sc://data/conv", shard_bytes=4096)["num_samples"] == N
    assert (tmp_path / "data" / "conv" / "manifest.json").exists()
    assert len(open_dataset("sc://data/conv")) == N
    with pytest.raises(PermissionDeniedError, match="sc://ro/ds"):
        write_dataset("sc://ro/ds", cols, var=["t"])
    assert not (tmp_path / "ro").exists()
    store = LocalStore(tmp_path / "as-store")
    write_dataset(store, cols, var=["t"], shard_bytes=4096)
    _check(open_dataset(store), cols)


def test_unwritable_urls_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    for url, says in (
        ("http://127.0.0.1:9/ds", "http:// URLs are read-only"),
        ("nosuchscheme://b/ds", "unknown URL scheme"),
        ("sc://nosuchmount/ds", "no such mount"),
    ):
        assert main(["dataset", "write", url, f"x={tmp_path}/x.npy"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and says in err and err.startswith("storecomp: error:"), err
    assert sorted(os.listdir(tmp_path)) == ["x.npy"]


@pytest.mark.parametrize("where", ["local-store", "s3"])
def test_a_damaged_object_under_a_shard_name_is_replaced_not_accepted_by_size(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Shards are named by their SHA-256, so an object already under that name is taken
    for the shard: it must hash to that name (review finding: a damaged object of the
    right size was accepted and the dataset published over it)."""
    cols = _cols()
    first = write_dataset(LocalStore(tmp_path / "first"), cols, var=["t"], shard_bytes=4096)  # the same shard names
    if where == "s3":
        sw = request.getfixturevalue("running_seaweedfs")
        url, opts = sw.url(), sw.store_options()
        store = open_store(url, **opts)
    else:
        store = LocalStore(tmp_path / "second")
        url, opts = "", {}
    good = LocalStore(tmp_path / "first")
    for s in first["shards"][:2]:  # same size, one byte flipped
        raw = bytearray(good.get(s["key"]))
        raw[len(raw) // 2] ^= 0x01
        store.put(s["key"], bytes(raw))
    m = write_dataset(store if where != "s3" else url, cols, var=["t"], shard_bytes=4096, store_options=opts or None)
    assert [s["key"] for s in m["shards"]] == [s["key"] for s in first["shards"]]
    for s in m["shards"]:
        assert store.get(s["key"]) == good.get(s["key"])
    _check(open_dataset(store if where != "s3" else url, store_options=opts or None), cols)
