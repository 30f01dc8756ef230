"""The KV disk tier chooses the page cache or O_DIRECT for its budget (io.PageCachePolicy), says which
and why in stats(), and ``disk_direct`` forces either; chunks round-trip in every mode."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from storecomp import KVCacheStore
from storecomp.io import memory_info, resident_bytes
from tests.conftest import drop_cache
from tests.kvcache.kvhelpers import CHUNK, make_kv, same_prefix, zeros_kv

Make = Callable[..., KVCacheStore]
TOKENS = list(range(2000, 2000 + 4 * CHUNK))  # 4 whole chunks


def _chunk_files(root: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".kv")]


def _round_trip_cold(s: KVCacheStore, root: Path) -> list[str]:
    """Store, evict the chunk files from the page cache, retrieve from the disk tier; the files."""
    kv = make_kv(len(TOKENS), seed=5)
    s.store(TOKENS, kv)
    files = _chunk_files(root)
    assert len(files) == 4
    for f in files:
        assert drop_cache(f)
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == len(TOKENS) and same_prefix(kv, out, len(TOKENS))
    assert s.stats()["disk"]["hits"] == 4
    return files


def test_a_disk_tier_that_fits_memory_reads_through_the_page_cache(kvstore: Make, tmp_path: Path) -> None:
    s = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", write_through=True, disk_bytes=16 << 20)
    files = _round_trip_cold(s, tmp_path / "disk")
    st = s.stats()["disk"]
    assert st["page_cache"] == "buffered" and st["page_cache_buffered"] == 1
    assert "fits the page cache" in st["page_cache_reason"]
    assert all(resident_bytes(f) == os.path.getsize(f) for f in files)  # the next reload runs from memory


def test_a_disk_tier_larger_than_memory_uses_o_direct(kvstore: Make, tmp_path: Path) -> None:
    s = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", write_through=True, disk_bytes=2 * memory_info().total)
    files = _round_trip_cold(s, tmp_path / "disk")
    st = s.stats()["disk"]
    assert st["page_cache"] == "direct" and st["page_cache_buffered"] == 0
    assert "larger than the page-cache budget" in st["page_cache_reason"]
    if s.engine.stats()["direct_fallbacks"] == 0:  # (a file system without O_DIRECT reads buffered)
        assert not any(resident_bytes(f) for f in files)


@pytest.mark.parametrize("disk_direct,tier", [(True, "direct"), (False, "buffered")])
def test_disk_direct_forces_either_tier(kvstore: Make, tmp_path: Path, disk_direct: bool, tier: str) -> None:
    s = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", write_through=True, disk_bytes=16 << 20, disk_direct=disk_direct)
    _round_trip_cold(s, tmp_path / "disk")
    st = s.stats()["disk"]
    assert st["page_cache"] == tier and st["page_cache_reason"] == f"forced: direct={'on' if disk_direct else 'off'}"


def test_memory_pressure_moves_disk_reads_to_o_direct(tmp_path: Path) -> None:
    import numpy as np

    from storecomp.io import Engine, PageCachePolicy
    from storecomp.kvcache.tiers import DiskTier

    with Engine() as eng:
        tight = PageCachePolicy("auto", floor_bytes=memory_info().total + 1)  # always "short of memory"
        disk = DiskTier(tmp_path / "disk", "ns", 16 << 20, eng, tight)
        assert disk.page_cache.tier == "buffered"  # chosen for the budget, before any read
        data = np.arange(10_000, dtype=np.uint8)
        assert disk.put(b"\x01" * 32, data)
        dst = np.zeros_like(data)
        reads = disk.submit_reads(b"\x01" * 32, dst, [(0, 4096), (4096, 5904)])
        assert [int(f.result()[0]) for f in reads.futures] == [4096, 5904] and np.array_equal(dst, data)
        reads.close()
        assert disk.page_cache.tier == "direct" and disk.page_cache.reason.startswith("memory pressure")


def test_disk_writes_follow_the_tier_as_memory_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tier is chosen again as memory changes, and writes follow it: a chunk written while the
    tier is O_DIRECT (here: memory pressure) leaves no pages in the page cache; once the pressure is
    gone, the tier is buffered again and a chunk written then stays in memory for its next read."""
    import numpy as np

    from storecomp.io import Engine, PageCachePolicy
    from storecomp.kvcache import tiers

    monkeypatch.setattr(tiers, "RECHOOSE_S", 0.0)  # choose again at every write and read
    data = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8)
    with Engine() as eng:
        policy = PageCachePolicy("auto", floor_bytes=memory_info().total + 1)  # short of memory from the start
        disk = tiers.DiskTier(tmp_path / "disk", "ns", 16 << 20, eng, policy)
        assert disk.put(b"\x01" * 32, data)
        assert disk.page_cache.tier == "direct" and disk.page_cache.reason.startswith("memory pressure")
        assert resident_bytes(disk.path(b"\x01" * 32)) == 0
        policy.floor_bytes = 0  # the pressure is gone
        assert disk.put(b"\x02" * 32, data)
        assert disk.page_cache.tier == "buffered" and "fits the page cache" in disk.page_cache.reason
        assert resident_bytes(disk.path(b"\x02" * 32)) == data.nbytes
        for key in (b"\x01" * 32, b"\x02" * 32):  # both read back whole in either tier
            dst = np.zeros_like(data)
            reads = disk.submit_reads(key, dst, [(0, data.nbytes)])
            assert int(reads.futures[0].result()[0]) == data.nbytes and np.array_equal(dst, data)
            reads.close()
