"""The page-cache tier policy (storecomp.io.tier) on real files and this machine's memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storecomp.errors import InvalidArgumentError
from storecomp.io import PageCachePolicy, memory_info, resident_bytes
from tests.conftest import drop_cache, random_bytes, write_file


def _evict(path: Path) -> None:
    drop_cache(path)


def test_resident_bytes_follow_the_page_cache(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f.bin", random_bytes(1 << 20, seed=4))
    _evict(path)
    assert resident_bytes(str(path)) == 0
    path.read_bytes()
    assert resident_bytes(str(path)) == 1 << 20


def test_sampled_residency_estimates_a_large_file(tmp_path: Path) -> None:
    """``samples``: a file larger than 4 * samples * 64 KiB is estimated from that many ranges: its
    size when all of it is resident, 0 when none is, about the resident share in between; a small
    file is counted exactly."""
    size = 16 << 20
    path = write_file(tmp_path / "f.bin", random_bytes(size, seed=5))
    path.read_bytes()
    assert resident_bytes(str(path), samples=8) == size
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # clean pages: DONTNEED skips dirty ones
        os.posix_fadvise(fd, 0, size // 2, os.POSIX_FADV_DONTNEED)  # the first half leaves the page cache
    finally:
        os.close(fd)
    assert resident_bytes(str(path)) == size // 2  # exact
    estimates = [resident_bytes(str(path), samples=8) for _ in range(4)]
    assert all(size // 4 <= e <= size * 3 // 4 for e in estimates), estimates  # 8 strides: 4 in each half
    _evict(path)
    assert resident_bytes(str(path), samples=8) == 0
    small = write_file(tmp_path / "s.bin", random_bytes(1 << 20, seed=6))
    small.read_bytes()
    assert resident_bytes(str(small), samples=8) == 1 << 20  # under 4 * 8 * 64 KiB: the whole file counted


def test_resident_bytes_of_a_missing_file_is_zero(tmp_path: Path) -> None:
    assert resident_bytes(str(tmp_path / "absent")) == 0


def test_memory_info_is_this_machine(tmp_path: Path) -> None:
    mem = memory_info()
    assert 0 < mem.available <= mem.total


def test_small_data_fits_and_large_data_does_not(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f.bin", random_bytes(1 << 20, seed=5))
    _evict(path)
    policy = PageCachePolicy("auto")
    small = policy.choose([str(path)])
    assert small.tier == "buffered" and small.data_bytes == 1 << 20 and not small.forced
    assert "fits the page cache" in small.reason
    # A data set larger than the machine's memory (a sparse file: no disk used).
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(2 * memory_info().total)
    large = policy.choose([str(big)])
    assert large.tier == "direct" and "larger than the page-cache budget" in large.reason
    assert large.as_dict()["budget_bytes"] == large.budget_bytes < large.data_bytes


def test_what_is_resident_costs_nothing(tmp_path: Path) -> None:
    """A data set over the budget that is already in memory stays buffered:
    reading it adds nothing to the page cache."""
    path = write_file(tmp_path / "f.bin", random_bytes(4 << 20, seed=6))
    path.read_bytes()
    choice = PageCachePolicy("auto").choose([str(path)])
    assert choice.resident_bytes == 4 << 20 and choice.tier == "buffered"


@pytest.mark.parametrize("direct,tier", [("on", "direct"), ("off", "buffered")])
def test_the_direct_option_forces_the_tier(tmp_path: Path, direct: str, tier: str) -> None:
    path = write_file(tmp_path / "f.bin", random_bytes(4096, seed=7))
    choice = PageCachePolicy(direct).choose([str(path)])
    assert (choice.tier, choice.forced) == (tier, True)
    assert choice.reason.startswith(f"forced: direct={direct}")


def test_memory_pressure_moves_buffered_reads_to_o_direct(tmp_path: Path) -> None:
    path = write_file(tmp_path / "f.bin", random_bytes(4096, seed=8))
    calm = PageCachePolicy("auto", floor_bytes=0)
    choice = calm.choose([str(path)])
    assert calm.check(choice) is choice
    tight = PageCachePolicy("auto", floor_bytes=memory_info().total + 1)
    choice = tight.choose([str(path)])
    moved = tight.check(choice)
    assert moved.tier == "direct" and moved.reason.startswith("memory pressure")
    assert tight.check(moved) is moved  # forced and direct choices are left alone


def test_bad_direct_value_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="direct must be"):
        PageCachePolicy("sometimes")


def test_a_buffered_choice_over_resident_files_reads_them_mapped(tmp_path: Path) -> None:
    """Every file all in the page cache: mapped (the engine's mode carries the flag); one file not
    (wholly) resident, or mapped="off": buffered reads; O_DIRECT or memory pressure: never mapped."""
    from storecomp import _native

    a = write_file(tmp_path / "a.bin", random_bytes(1 << 20, seed=1))
    b = write_file(tmp_path / "b.bin", random_bytes(1 << 20, seed=2))
    a.read_bytes(), b.read_bytes()
    choice = PageCachePolicy("auto").choose([str(a), str(b)])
    assert (choice.tier, choice.mapped, choice.read_path, choice.direct) == ("buffered", True, "mapped", "mapped")
    assert choice.mode == _native.MODE_BUFFERED | _native.MODE_MAPPED | _native.MODE_STREAM  # a data set's batches stream
    assert not choice.populate  # already mapped: nothing to populate
    assert choice.as_dict()["read_path"] == "mapped" and "copied out of mappings" in choice.reason
    assert PageCachePolicy("off").choose([str(a)]).read_path == "mapped"  # forced buffered: still the page cache
    assert PageCachePolicy("auto", mapped="off").choose([str(a), str(b)]).read_path == "buffered"
    assert PageCachePolicy("on").choose([str(a)]).read_path == "direct"
    tight = PageCachePolicy("auto", floor_bytes=memory_info().total + 1)
    moved = tight.check(tight.choose([str(a)]))
    assert (moved.tier, moved.mapped, moved.read_path) == ("direct", False, "direct")
    _evict(b)
    choice = PageCachePolicy("auto").choose([str(a), str(b)])
    assert (choice.tier, choice.read_path, choice.direct) == ("buffered", "buffered", "off")
    # The pass that fills the page cache maps what it reads, for the mapped passes after it.
    assert choice.populate and choice.mode == _native.MODE_BUFFERED | _native.MODE_POPULATE
    off = PageCachePolicy("auto", mapped="off").choose([str(a), str(b)])
    assert not off.populate and off.mode == _native.MODE_BUFFERED  # no mapped passes: nothing to map
    moved = tight.check(tight.choose([str(a), str(b)]))
    assert (moved.tier, moved.populate, moved.mode) == ("direct", False, _native.MODE_DIRECT)


def test_bad_mapped_value_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="mapped must be"):
        PageCachePolicy("auto", mapped="on")
