"""CachedStore under faults: a full cache disk, damaged entry metadata, and
several processes evicting each other's entries under a small budget."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storecomp.crc import crc32c
from storecomp.errors import VersionChangedError
from storecomp.store import LocalStore
from storecomp.store.cache import CachedStore
from storecomp.store.cache_entry import ALIGN, MAGIC
from tests.conftest import fill_disk, run_processes
from tests.conftest import random_bytes as blob

KiB = 1024


# ---------------------------------------------------------------- a full cache disk


@pytest.mark.parametrize("block_bytes", [None, 16 * KiB])
def test_full_cache_disk_serves_reads_from_the_inner_store(
    mount_tmpfs: Callable[..., Path], remote: LocalStore, block_bytes: int | None
) -> None:
    small_tmpfs = mount_tmpfs(2 << 20)
    c = CachedStore(remote, small_tmpfs / "cache", 64 << 20, block_bytes=block_bytes)
    assert c.get("obj/0") == blob(100 * KiB, 0)  # cached while there is room
    filler = fill_disk(small_tmpfs)
    for i in range(1, 5):
        assert c.get(f"obj/{i}") == blob(100 * KiB + i, i)
        dst = np.zeros(300, np.uint8)
        assert c.read_ranges(f"obj/{i}", [70_000], [300], dst, [0]).tolist() == [300]
        assert dst.tobytes() == blob(100 * KiB + i, i)[70_000:70_300]
    assert c.stats.fill_failures >= 4
    assert c.get("obj/0") == blob(100 * KiB, 0)  # what was cached before is intact and still served
    assert list((small_tmpfs / "cache" / "tmp").iterdir()) == []  # no partial entry left behind
    filler.unlink()  # room again: the cache fills again
    before = c.stats.fill_failures
    assert c.get("obj/5") == blob(100 * KiB + 5, 5)
    assert c.stats.fill_failures == before
    assert c.get("obj/5") == blob(100 * KiB + 5, 5) and c.stats.hits >= 1


def test_cache_opened_on_a_full_disk_still_reads(mount_tmpfs: Callable[..., Path], remote: LocalStore) -> None:
    small_tmpfs = mount_tmpfs(2 << 20)
    (small_tmpfs / "cache").mkdir()
    fill_disk(small_tmpfs)
    c = CachedStore(remote, small_tmpfs / "cache", 64 << 20)
    assert c.get("obj/3") == blob(100 * KiB + 3, 3)
    assert c.stats.fill_failures == 1 and c.stats.bytes_from_inner == 100 * KiB + 3


def test_fills_served_from_memory_stay_pinned_to_one_version(mount_tmpfs: Callable[..., Path], remote: LocalStore) -> None:
    """A full cache disk (fills served from memory) and version pinning together: every block of a
    read is of the version asked, a replaced object is refused at the old version, never mixed."""
    small_tmpfs = mount_tmpfs(2 << 20)
    c = CachedStore(remote, small_tmpfs / "cache", 64 << 20, block_bytes=16 * KiB)
    old, new = blob(100 * KiB + 1, 1), blob(100 * KiB + 1, 99)
    v_old = remote.stat("obj/1").version
    dst = np.zeros(len(new), np.uint8)
    assert c.read_ranges("obj/1", [0], [100], dst, [0]).tolist() == [100]  # block 0 cached while there is room
    fill_disk(small_tmpfs)
    remote.put("obj/1", new)  # replaced behind the cache
    v_new = remote.stat("obj/1").version
    with pytest.raises(VersionChangedError):  # block 0 is of v_old, the fill of block 1 finds v_new: refused, not mixed
        c.read_ranges("obj/1", [0], [len(old)], dst, [0], version=v_old)
    misses, failures = c.stats.misses, c.stats.fill_failures
    assert c.read_ranges("obj/1", [0], [len(new)], dst, [0], version=v_new).tolist() == [len(new)]
    assert dst.tobytes() == new  # block 0 of v_old was a miss: all 7 blocks fetched at v_new, served from memory
    assert c.stats.misses - misses == 7 and c.stats.fill_failures - failures >= 6  # block 0 may fit where v_old was
    assert c.get("obj/2") == blob(100 * KiB + 2, 2)  # unpinned: every block pinned to the first one's version


# ---------------------------------------------------------------- damaged metadata


def _forge(path: Path, meta_raw: bytes, data: bytes, chunk: int = 64 * KiB) -> None:
    """Write an entry file whose header checksums are valid but whose meta bytes are ``meta_raw``."""
    crcs = [crc32c(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    body = struct.pack("<8sIIQQI", MAGIC, 0, len(meta_raw), len(data), chunk, len(crcs)) + meta_raw
    body += struct.pack(f"<{len(crcs)}I", *crcs)
    header_len = -(-(len(body) + 4) // ALIGN) * ALIGN
    body = body[:8] + struct.pack("<I", header_len) + body[12:]
    body += struct.pack("<I", crc32c(body))
    tmp = path.with_name(path.name + ".forge")
    tmp.write_bytes(body + b"\0" * (header_len - len(body)) + data)
    os.rename(tmp, path)  # a new inode, as another process would publish it


_META_FIELDS = {"url": st.text(max_size=20), "key": st.text(max_size=20), "version": st.text(max_size=8)}
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


def _meta_variants(key: str, size: int) -> st.SearchStrategy[bytes]:
    good = {"url": "", "key": key, "version": "v", "size": size, "block": None}
    mutated = st.fixed_dictionaries({}, optional={**_META_FIELDS, "size": _JSONISH, "block": _JSONISH}).map(
        lambda d: json.dumps({**good, **d}).encode()
    )
    dropped = st.sampled_from(sorted(good)).map(lambda k: json.dumps({f: v for f, v in good.items() if f != k}).encode())
    return st.one_of(
        st.binary(max_size=200),  # random bytes: bad UTF-8, bad JSON
        _JSONISH.map(lambda v: json.dumps(v).encode()),  # JSON, but not an entry's meta
        mutated,
        dropped,
        st.binary(min_size=1, max_size=40).map(lambda b: json.dumps(good).encode()[:-1] + b),
    )


def test_damaged_entry_meta_is_discarded_counted_and_refetched(tmp_path: Path, remote: LocalStore) -> None:
    """Entries whose header checksum is intact but whose meta is not an entry's own (random bytes,
    other JSON, fields missing or mistyped, another url): each is discarded, counted and refetched."""
    key, data = "obj/1", blob(100 * KiB + 1, 1)
    c = CachedStore(remote, tmp_path / "cache", 10 << 20)
    assert c.get(key) == data
    path = c._local.root / c._entry_key(key, None)
    seen = {"cases": 0}

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(meta=_meta_variants(key, len(data)))
    def case(meta: bytes) -> None:
        _forge(path, meta, data)
        before = c.stats.corrupt_discarded
        assert c.get(key) == data  # never JSONDecodeError, UnicodeDecodeError, KeyError, TypeError
        assert c.stats.corrupt_discarded == before + 1
        assert c.get(key) == data  # the refetched entry is sound
        assert c.stats.corrupt_discarded == before + 1
        seen["cases"] += 1

    case()
    assert seen["cases"] >= 500


def test_damaged_header_bytes_are_discarded_and_counted(tmp_path: Path, remote: LocalStore) -> None:
    key, data = "obj/2", blob(100 * KiB + 2, 2)
    c = CachedStore(remote, tmp_path / "cache", 10 << 20)
    assert c.get(key) == data
    path = c._local.root / c._entry_key(key, None)
    good = path.read_bytes()
    meta_len, n = struct.unpack_from("<I", good, 12)[0], struct.unpack_from("<I", good, 32)[0]
    body_len = 36 + meta_len + 4 * n + 4  # every byte here is covered by the header's own crc32c

    @settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(pos=st.integers(0, body_len - 1), flip=st.integers(1, 255), cut=st.integers(0, 2 * ALIGN))
    def case(pos: int, flip: int, cut: int) -> None:
        raw = bytearray(good)
        raw[pos] ^= flip
        tmp = path.with_name("damaged")
        tmp.write_bytes(bytes(raw[: len(raw) - cut]))
        os.rename(tmp, path)
        before = c.stats.corrupt_discarded
        assert c.get(key) == data
        assert c.stats.corrupt_discarded == before + 1

    case()


# ---------------------------------------------------------------- eviction races between processes


def _pressure_reader(remote_root: str, cache_dir: str, budget: int, verify: str, seconds: float, q: object) -> None:
    remote = LocalStore(remote_root)
    c = CachedStore(remote, cache_dir, budget, verify=verify)
    rng = np.random.default_rng(os.getpid())
    expect = {i: blob(100 * KiB + i, seed=i) for i in range(8)}
    errors, wrong, reads = [], 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = int(rng.integers(0, 8))
        try:
            got = c.get(f"obj/{i}")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        reads += 1
        wrong += got != expect[i]
    q.put({"errors": errors[:5], "n_errors": len(errors), "wrong": wrong, "reads": reads, "stats": vars(c.stats)})  # type: ignore[attr-defined]


@pytest.mark.parametrize("verify", ["always", "once"])
def test_processes_evicting_each_other_never_fail_a_read(tmp_path: Path, remote: LocalStore, verify: str) -> None:
    budget = 250 * KiB  # two of the eight ~100 KiB objects: every fill evicts
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    args = (str(remote.root), str(tmp_path / "cache"), budget, verify, 2.0, q)
    results = run_processes(ctx, _pressure_reader, [args] * 4, q, 4, get_timeout=90, join_timeout=30)
    assert sum(r["reads"] for r in results) > 0
    for r in results:
        assert r["n_errors"] == 0, r["errors"]
        assert r["wrong"] == 0
        assert r["stats"]["corrupt_discarded"] == 0  # nothing was corrupt: evictions are misses
