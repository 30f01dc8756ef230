"""One conformance suite for every KV tier (the :class:`~storecomp.kvcache.tiers.Tier` protocol).

Each case runs on the host tier, the disk tier and the shared tier over two
real stores: the session SeaweedFS (S3) and a local directory. A chunk is
read the way a KV store reads it: a :class:`~storecomp.kvcache.fetch.Fetch`
started on the tier, verified layer by layer, ending in a
:class:`~storecomp.kvcache.fetch.FetchOutcome`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from storecomp.crc import crc32c
from storecomp.errors import InvalidArgumentError
from storecomp.io import Engine
from storecomp.kvcache import format as fmt
from storecomp.kvcache.fetch import Fetch, FetchOutcome
from storecomp.kvcache.tiers import BufferPool, DiskTier, HostTier, SharedTier, Tier
from storecomp.store import Store, open_store
from storecomp.testing.seaweedfs import SeaweedFS
from tests.kvcache.kvhelpers import CHUNK, FAST_RETRY, FP

LAYOUT = fmt.ChunkLayout(FP, CHUNK)
POOL = BufferPool(keep_bytes=8 * LAYOUT.nbytes)
TIERS = ["host", "disk", "shared-s3", "shared-dir"]


@dataclass
class Case:
    tier: Tier
    store: Store | None = None  # the shared tier's store
    down: Callable[[], None] | None = None  # make the shared store unreachable ...
    up: Callable[[], None] | None = None  # ... and reachable again, with all it held


def _tier_case(kind: str, tmp_path: Path, request: pytest.FixtureRequest, engine: Engine) -> Case:
    if kind == "host":
        return Case(HostTier(16 * LAYOUT.nbytes, POOL))
    if kind == "disk":
        return Case(DiskTier(tmp_path / "disk", "ns", 16 * LAYOUT.nbytes, engine))
    if kind == "shared-s3":
        sw: SeaweedFS = request.getfixturevalue("running_seaweedfs")
        store = open_store(sw.url(), **sw.store_options(), retry=FAST_RETRY)
        return Case(SharedTier(store, "ns", backoff=0.05, max_backoff=0.1), store, sw.stop, sw.restart)
    root = tmp_path / "shared"
    store = open_store(str(root))

    def down() -> None:  # the directory's mount gone bad: every path under it fails (ELOOP), nothing is missing
        root.rename(tmp_path / "away")
        root.symlink_to(root)

    def up() -> None:
        root.unlink()
        (tmp_path / "away").rename(root)

    return Case(SharedTier(store, "ns", backoff=0.05, max_backoff=0.1), store, down, up)


@pytest.fixture(params=TIERS)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    with Engine() as engine:
        c = _tier_case(request.param, tmp_path, request, engine)
        yield c
        if c.store is not None:
            c.store.close()


def make_chunk(key: bytes, seed: int = 0) -> np.ndarray:
    """A whole chunk object for ``key``: random layers under a header with their crc32c."""
    arr = np.random.default_rng(seed).integers(0, 256, LAYOUT.nbytes, dtype=np.uint8)
    fmt.write_header(arr, LAYOUT, key, [crc32c(LAYOUT.layer_view(arr, i)) for i in range(FP.layers)])
    return arr


def fetch(tier: Tier, key: bytes, per_layer: bool) -> tuple[Fetch, bool, np.ndarray]:
    """Read ``key`` from ``tier`` as the store does; (the fetch, whether every layer passed, a copy of the buffer)."""
    buf = POOL.get(LAYOUT.nbytes)
    buf.array[:] = 0
    f = Fetch(0, key, tier, buf, LAYOUT)
    try:
        f.start(per_layer)
        ok = f.wait_all()
    finally:
        f.drain()
    got = buf.array.copy()
    POOL.put(buf)
    return f, ok, got


def same_chunk(got: np.ndarray, data: np.ndarray) -> bool:
    """Header and every layer equal (a layer-by-layer read skips the padding between layers)."""
    hb = LAYOUT.header_bytes
    return np.array_equal(got[:hb], data[:hb]) and all(
        np.array_equal(LAYOUT.layer_view(got, i), LAYOUT.layer_view(data, i)) for i in range(FP.layers)
    )


def key_of(i: int) -> bytes:
    return bytes([i]) * 32


def test_every_tier_is_a_tier(case: Case) -> None:
    assert isinstance(case.tier, Tier)
    assert not isinstance(object(), Tier)


@pytest.mark.parametrize("per_layer", [False, True], ids=["whole", "layerwise"])
def test_put_then_fetch_gives_the_same_bytes(case: Case, per_layer: bool) -> None:
    key, data = key_of(1), make_chunk(key_of(1), seed=1)
    assert not case.tier.has(key)
    assert case.tier.put(key, data)
    assert case.tier.has(key)
    f, ok, got = fetch(case.tier, key, per_layer)
    assert ok and f.outcome is FetchOutcome.HIT and not f.bad
    assert same_chunk(got, data)
    assert per_layer or np.array_equal(got, data)


def test_a_missing_key_is_a_miss(case: Case) -> None:
    assert not case.tier.has(key_of(2))
    f, ok, _ = fetch(case.tier, key_of(2), per_layer=False)
    assert not ok and f.outcome is FetchOutcome.MISS


def _damaged(kind: str, key: bytes) -> np.ndarray:
    data = make_chunk(key, seed=3)
    if kind == "truncated":
        return data[: LAYOUT.layer_offset(1) + 100].copy()
    data[LAYOUT.layer_offset(2) + 7 if kind == "layer" else 40] ^= 0x5A
    return data


@pytest.mark.parametrize("damage", ["header", "layer", "truncated"])
@pytest.mark.parametrize("per_layer", [False, True], ids=["whole", "layerwise"])
def test_a_corrupt_entry_is_corrupt_and_never_returns_bytes(case: Case, damage: str, per_layer: bool) -> None:
    key = key_of(3)
    assert case.tier.put(key, _damaged(damage, key))
    f, ok, _ = fetch(case.tier, key, per_layer)
    assert not ok and f.outcome is FetchOutcome.CORRUPT and f.bad and f.detail
    assert all(not f.wait_layer(i) for i in range(FP.layers))  # no layer is handed out from now on
    if damage == "header":
        assert not f.checked  # nothing passed before the damage was found
    case.tier.forget(key, delete=True)  # what the store does with a corrupt chunk
    assert not case.tier.has(key)
    assert fetch(case.tier, key, per_layer)[0].outcome is FetchOutcome.MISS


def test_forget_removes(case: Case) -> None:
    keep, gone = key_of(4), key_of(5)
    for k in (keep, gone):
        assert case.tier.put(k, make_chunk(k, seed=k[0]))
    case.tier.forget(gone, delete=True)
    assert not case.tier.has(gone) and case.tier.has(keep)
    assert fetch(case.tier, gone, per_layer=False)[0].outcome is FetchOutcome.MISS
    assert fetch(case.tier, keep, per_layer=False)[0].outcome is FetchOutcome.HIT


def test_a_fetch_into_a_too_small_buffer_is_refused(case: Case) -> None:
    key, data = key_of(6), make_chunk(key_of(6), seed=6)
    assert case.tier.put(key, data)
    small = np.zeros(LAYOUT.nbytes - 1, np.uint8)
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        case.tier.submit_reads(key, small, [(0, LAYOUT.nbytes)])
    assert not small.any()  # nothing was read
    buf = POOL.get(LAYOUT.header_bytes)
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        Fetch(0, key, case.tier, buf, LAYOUT).start(per_layer=True)
    POOL.put(buf)
    assert fetch(case.tier, key, per_layer=False)[0].outcome is FetchOutcome.HIT  # the entry is untouched


@pytest.fixture(params=["shared-s3", "shared-dir"])
def shared_case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    with Engine() as engine:
        c = _tier_case(request.param, tmp_path, request, engine)
        yield c
        assert c.store is not None
        c.store.close()


def test_an_unavailable_shared_store_is_unavailable_and_loses_nothing(shared_case: Case) -> None:
    c = shared_case
    assert isinstance(c.tier, SharedTier) and c.store is not None and c.down is not None and c.up is not None
    key, data = key_of(7), make_chunk(key_of(7), seed=7)
    assert c.tier.put(key, data)
    okey = c.tier.object_key(key)
    c.down()
    try:
        for per_layer in (False, True):
            f, ok, _ = fetch(c.tier, key, per_layer)
            assert not ok and f.outcome is FetchOutcome.UNAVAILABLE, f.detail
        c.tier.forget(key)  # the store's miss path: the index only, never the object
        assert not c.tier.has(key)  # unknown and unreachable: not offered
    finally:
        c.up()
    assert c.store.stat(okey).size == data.nbytes
    c.tier.down_until = 0.0  # the backoff has passed
    assert c.tier.has(key)
    f, ok, got = fetch(c.tier, key, per_layer=False)
    assert ok and f.outcome is FetchOutcome.HIT and same_chunk(got, data)


def test_disk_chunks_survive_a_restart_of_the_tier(tmp_path: Path) -> None:
    """The disk tier's index is its directory: a new tier over it holds what the old one put."""
    with Engine() as engine:
        key, data = key_of(8), make_chunk(key_of(8), seed=8)
        assert DiskTier(tmp_path, "ns", 16 * LAYOUT.nbytes, engine).put(key, data)
        again = DiskTier(tmp_path, "ns", 16 * LAYOUT.nbytes, engine)
        assert again.has(key) and os.path.getsize(again.path(key)) == data.nbytes
        f, ok, got = fetch(again, key, per_layer=True)
        assert ok and same_chunk(got, data)
