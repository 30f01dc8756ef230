"""What docs/dataloader.md shows is what the DataLoader takes: open_dataset's options next to a URL,
and a one-line install hint for progress=True without tqdm."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from storecomp.data import DataLoader, open_dataset, write_dataset
from storecomp.errors import InvalidArgumentError, UnavailableError


@pytest.fixture
def mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    write_dataset(tmp_path / "data" / "ds", {"x": np.arange(300, dtype=np.int64)}, shard_bytes=1024)
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(f'[mounts.data]\nurl = "{tmp_path}/data"\n')
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    return "sc://data/ds"


def test_remote_and_cache_dir_next_to_a_url(mounted: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    loader = DataLoader(mounted, 64, remote="cache", cache_dir=cache, cache_bytes=1 << 20, shuffle=False)
    assert loader.dataset.remote == "cache"
    assert np.array_equal(np.concatenate([b["x"].numpy() for b in loader]), np.arange(300))
    assert sum(len(f) for _, _, f in os.walk(cache)) >= len(loader.dataset.parts)  # whole shards in the cache tier
    ranged = DataLoader(mounted, 64, remote="ranges")
    assert ranged.dataset.remote == "ranges" and sum(b["x"].shape[0] for b in ranged) == 300


def test_open_options_with_an_open_dataset_are_refused(mounted: str) -> None:
    ds = open_dataset(mounted)
    with pytest.raises(InvalidArgumentError, match="cache_dir, remote: options of open_dataset"):
        DataLoader(ds, 8, remote="cache", cache_dir="/tmp/x")
    with pytest.raises(InvalidArgumentError, match="remote='cache' needs cache_dir"):
        DataLoader(mounted, 8, remote="cache")


def test_progress_without_tqdm_is_an_install_hint(mounted: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # what an environment without tqdm looks like to `import tqdm`
    with pytest.raises(
        UnavailableError, match=r"progress=True\) needs tqdm: pip install 'tqdm' \(or pip install 'storecomp\[bench\]'\)"
    ) as e:
        DataLoader(mounted, 8, progress=True)
    assert "\n" not in str(e.value)
