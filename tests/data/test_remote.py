"""Remote shard datasets through the Store interface: a real SeaweedFS (S3) server and a LocalStore.

Both remote modes: ranged GETs straight into the batch slot, and whole
shards through the node-local cache tier.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.data import DataLoader, open_dataset, write_dataset
from storecomp.errors import CorruptDataError, InvalidArgumentError
from storecomp.store import LocalStore, Store, open_store
from storecomp.testing.seaweedfs import SeaweedFS

N = 300


def local_dataset(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    rng = np.random.default_rng(3)
    cols = {
        "x": rng.random((N, 8)).astype(np.float32),
        "id": np.arange(N),
        "t": [rng.integers(0, 99, int(rng.integers(0, 6)), dtype=np.int32) for _ in range(N)],
    }
    path = str(tmp_path / "ds")
    write_dataset(path, cols, shard_bytes=4 << 10)
    return path, cols


def upload(path: str, store: Store) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            store.put(os.path.relpath(full, path), Path(full).read_bytes())


def check_epoch(source: Any, cols: dict[str, Any], **kw: Any) -> DataLoader:
    loader = DataLoader(source, 32, seed=2, **kw)
    seen = []
    for b in loader:
        ids = b["id"].numpy()
        assert np.array_equal(b["x"].numpy(), cols["x"][ids])
        offs = b["t_offsets"].numpy()
        for k, i in enumerate(ids):
            assert np.array_equal(b["t"].numpy()[offs[k] : offs[k + 1]], cols["t"][i])
        seen += ids.tolist()
    assert sorted(seen) == list(range(N))
    return loader


def test_store_object_ranges(tmp_path: Path) -> None:
    path, cols = local_dataset(tmp_path)
    store = LocalStore(tmp_path / "store")
    upload(path, store)
    ds = open_dataset(store)
    assert ds.remote == "ranges" and len(ds) == N
    check_epoch(ds, cols)


def test_s3_ranges_and_cache(tmp_path: Path, running_seaweedfs: SeaweedFS) -> None:
    path, cols = local_dataset(tmp_path)
    url = running_seaweedfs.url()
    store = open_store(url, **running_seaweedfs.store_options())
    upload(path, store)
    ds = open_dataset(url, store_options=running_seaweedfs.store_options())
    assert ds.remote == "ranges"
    check_epoch(ds, cols)
    cache = tmp_path / "cache"
    ds = open_dataset(url, store_options=running_seaweedfs.store_options(), remote="cache", cache_dir=cache)
    check_epoch(ds, cols)
    cached = sum(len(f) for _, _, f in os.walk(cache))
    assert cached >= len(ds.parts)  # whole shards landed in the node-local tier
    # A corrupted object in the store is caught by the record checksums on the ranged path.
    key = ds.parts[0].name
    data = bytearray(store.get(key))
    data[5] ^= 0xFF
    store.put(key, bytes(data))
    ds = open_dataset(url, store_options=running_seaweedfs.store_options())
    with pytest.raises(CorruptDataError, match="checksum mismatch in record 0"):
        check_epoch(ds, cols, shuffle=False)


def test_remote_cache_needs_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="cache_dir"):
        open_dataset(LocalStore(tmp_path / "s"), remote="cache")


def test_loader_over_a_replicated_mount_with_a_lagging_near_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 16, item 3: the near replica (STORECOMP_SITE) lacks half the shards; the loader's
    stats and ranged reads fall back to the primary for those, and the epoch is whole."""
    path, cols = local_dataset(tmp_path)
    files = sorted(os.path.relpath(os.path.join(r, n), path) for r, _, ns in os.walk(path) for n in ns)
    shards = [f for f in files if f.startswith("shards/")]
    assert len(shards) >= 2 and "manifest.json" in files
    for site in ("a", "c"):
        upload(path, LocalStore(tmp_path / site))
    for lagging in shards[::2]:
        LocalStore(tmp_path / "c").delete(lagging)
    mounts = tmp_path / "mounts.toml"
    mounts.write_text(
        '[mounts.data]\nprimary = "a"\nreplicas = [\n'
        f'  {{url = "{tmp_path}/a", site = "a", preference = 1}},\n'
        f'  {{url = "{tmp_path}/c", site = "c", preference = 0}},\n]\n'
    )
    monkeypatch.setenv("STORECOMP_MOUNTS", str(mounts))
    monkeypatch.setenv("STORECOMP_SITE", "c")
    ds = open_dataset("sc://data")
    assert ds.remote == "ranges" and len(ds) == N
    check_epoch(ds, cols)
