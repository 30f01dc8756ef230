"""LocalStore reads choose the page cache or O_DIRECT on purpose (io.PageCachePolicy), say why, and
return the right bytes either way (unaligned ranges too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storecomp.config import IOOptions
from storecomp.io import PageCachePolicy, memory_info, resident_bytes
from storecomp.store import LocalStore
from tests.conftest import drop_cache, random_bytes

RANGES = ([0, 4097, 700_001], [4096, 300_000, 123], [0, 5000, 400_000])  # offsets, lengths, dst offsets: unaligned


def _cold(store: LocalStore, key: str, data: bytes) -> Path:
    """Put ``data`` under ``key`` and evict it from the page cache."""
    store.put(key, data)
    path = store.path_of(key)
    assert drop_cache(path)
    return path


def _read_back(store: LocalStore, key: str, data: bytes) -> None:
    offs, lens, douts = RANGES
    buf = np.zeros(1 << 20, np.uint8)
    assert store.read_ranges(key, offs, lens, buf, douts).tolist() == lens
    for o, n, d in zip(offs, lens, douts, strict=True):
        assert bytes(buf[d : d + n]) == data[o : o + n]
    assert store.get(key) == data


def _o_direct_worked(store: LocalStore) -> bool:
    return store.engine.stats()["direct_fallbacks"] == 0  # (a file system without O_DIRECT reads buffered)


def test_an_object_that_fits_is_read_through_the_page_cache(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "s", page_cache=PageCachePolicy("auto", floor_bytes=0))
    data = random_bytes(1 << 20, seed=21)
    path = _cold(s, "k", data)
    _read_back(s, "k", data)
    st = s.tier_stats()
    assert st["tier"] == "buffered" and not st["forced"] and "fits the page cache" in st["reason"]
    assert st["data_bytes"] == 1 << 20 and st["reads_buffered"] == 2 and st["reads_direct"] == 0
    assert resident_bytes(str(path)) == 1 << 20  # filled: the next read of it runs from memory
    s.close()


def test_an_object_larger_than_the_budget_is_read_with_o_direct(tmp_path: Path) -> None:
    s = LocalStore(tmp_path / "s", page_cache=PageCachePolicy("auto", floor_bytes=0))
    with open(s.path_of("big"), "wb") as f:  # sparse: no disk used
        f.write(b"head")
        f.truncate(2 * memory_info().total)
    buf = np.ones(8192, np.uint8)
    assert s.read_ranges("big", [0, 1 << 30], [4096, 4096], buf, [0, 4096]).tolist() == [4096, 4096]
    assert bytes(buf[:4]) == b"head" and not buf[4:].any()
    st = s.tier_stats()
    assert st["tier"] == "direct" and "larger than the page-cache budget" in st["reason"] and st["reads_direct"] == 1
    s.close()


@pytest.mark.parametrize("direct,tier", [("on", "direct"), ("off", "buffered")])
def test_the_direct_option_forces_either_tier(tmp_path: Path, direct: str, tier: str) -> None:
    s = LocalStore(tmp_path / "s", IOOptions(direct=direct))
    data = random_bytes(1 << 20, seed=22)
    path = _cold(s, "k", data)
    _read_back(s, "k", data)
    st = s.tier_stats()
    assert (st["tier"], st["forced"], st["reason"], st["policy"]) == (tier, True, f"forced: direct={direct}", direct)
    if tier == "buffered":
        assert resident_bytes(str(path)) == 1 << 20
    elif _o_direct_worked(s):
        assert resident_bytes(str(path)) == 0  # O_DIRECT leaves the page cache to the rest of the machine
    s.close()


def test_memory_pressure_moves_reads_to_o_direct(tmp_path: Path) -> None:
    tight = PageCachePolicy("auto", floor_bytes=memory_info().total + 1)  # always "short of memory"
    s = LocalStore(tmp_path / "s", page_cache=tight)
    data = random_bytes(1 << 20, seed=23)
    path = _cold(s, "k", data)
    _read_back(s, "k", data)
    st = s.tier_stats()
    assert st["tier"] == "direct" and st["reason"].startswith("memory pressure") and st["reads_buffered"] == 0
    if _o_direct_worked(s):
        assert resident_bytes(str(path)) == 0
    s.close()


def test_a_replaced_object_is_chosen_for_again(tmp_path: Path) -> None:
    """The choice belongs to the file read: a new version (another inode, another size) gets its own."""
    s = LocalStore(tmp_path / "s", page_cache=PageCachePolicy("auto", floor_bytes=0))
    s.put("k", b"x" * 5000)
    assert s.get("k") == b"x" * 5000 and s.tier_stats()["data_bytes"] == 5000
    s.put("k", b"y" * 70000)
    assert s.get("k") == b"y" * 70000 and s.tier_stats()["data_bytes"] == 70000
    s.close()
