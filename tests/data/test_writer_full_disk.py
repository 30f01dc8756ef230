"""DatasetWriter on a disk that fills up: a StorageIOError naming the dataset, nothing published,
and a dataset written earlier on the same disk intact."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from storecomp.data import DatasetWriter, open_dataset, write_dataset
from storecomp.errors import StorageIOError
from tests.conftest import fill_disk


def test_full_disk_raises_storage_io_error_and_keeps_earlier_data(mount_tmpfs: Callable[..., Path]) -> None:
    small_tmpfs = mount_tmpfs(2 << 20)
    small = np.arange(1000, dtype=np.int64)
    write_dataset(small_tmpfs / "before", {"x": small}, shard_bytes=4096)
    big = np.random.default_rng(0).integers(0, 255, (4096, 1024), dtype=np.uint8)  # 4 MiB: more than the disk
    with pytest.raises(StorageIOError) as info:
        write_dataset(small_tmpfs / "big", {"x": big}, shard_bytes=1 << 20)
    assert info.value.errno == errno.ENOSPC
    assert str(small_tmpfs / "big") in str(info.value)
    assert not (small_tmpfs / "big").exists()  # the folder this writer made goes with its temp shards

    fill_disk(small_tmpfs)
    with pytest.raises(StorageIOError) as info:  # the manifest (or the last shard) cannot be written
        with DatasetWriter(small_tmpfs / "tiny") as w:
            w.write_batch({"x": small})
    assert info.value.errno == errno.ENOSPC
    assert not (small_tmpfs / "tiny" / "manifest.json").exists()

    ds = open_dataset(str(small_tmpfs / "before"))
    assert len(ds) == 1000 and np.array_equal(np.asarray([ds[i]["x"] for i in (0, 999)]).ravel(), [0, 999])
