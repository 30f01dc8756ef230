"""The shared KV tier under a byte budget and a TTL: GC deletes the oldest chunks,
never one inside the grace period; a chunk deleted under a reader is a counted
miss; ``storecomp kv stats | ls | verify | gc`` on a local directory and SeaweedFS."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.cli import main
from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import KVCacheStore, SharedTierOptions, maintenance
from storecomp.store import LocalStore, Store, open_store
from tests.kvcache.kvhelpers import CHUNK, FAST_RETRY, FP, make_kv, same_prefix, zeros_kv

Make = Callable[..., KVCacheStore]


def tokens(seed: int, n: int = 4 * CHUNK) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 50_000, n)]


@pytest.fixture(params=["local", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, str, dict[str, str]]]:
    """(store, URL for the CLI, environment the CLI needs)."""
    if request.param == "local":
        store: Store = LocalStore(tmp_path / "shared")
        yield store, str(tmp_path / "shared"), {}
    else:
        sw = request.getfixturevalue("running_seaweedfs")
        url = sw.url()
        store = open_store(url, retry=FAST_RETRY, **sw.store_options())
        yield store, url, sw.env()
    store.close()


def _fill(kvstore: Make, store: Store, seeds: range, **kw: Any) -> KVCacheStore:
    kv = kvstore(shared=SharedTierOptions(store, **kw), write_through=True)
    for s in seeds:
        assert kv.store(tokens(s), make_kv(4 * CHUNK, seed=s)) == 4 * CHUNK
    return kv


def test_gc_keeps_the_newest_chunks_within_budget_and_never_young_ones(kvstore: Make, shared: Any) -> None:
    store = shared[0]
    _fill(kvstore, store, range(0, 2))  # 8 older chunks
    time.sleep(1.1)  # object stores keep modification times in whole seconds
    _fill(kvstore, store, range(2, 3))  # 4 newer chunks
    found = list(maintenance.chunks(store))
    assert len(found) == 12 and {c.namespace for c in found} == {FP.namespace}
    size = found[0].size
    kept_all = maintenance.collect(store, max_bytes=0, grace_s=3600)  # everything is inside the grace period
    assert kept_all.deleted == 0 and kept_all.kept_young == 12 and len(list(maintenance.chunks(store))) == 12
    dry = maintenance.collect(store, max_bytes=4 * size, grace_s=0, dry_run=True)
    assert dry.deleted == 8 and len(list(maintenance.chunks(store))) == 12
    gc = maintenance.collect(store, max_bytes=4 * size, grace_s=0)
    assert gc.deleted == 8 and gc.deleted_bytes == 8 * size
    fresh = kvstore(shared=store)  # a reader with no host or disk copy
    assert fresh.lookup(tokens(0)) == 0 and fresh.lookup(tokens(2)) == 4 * CHUNK
    out = zeros_kv(4 * CHUNK)
    assert fresh.retrieve(tokens(2), out) == 4 * CHUNK and same_prefix(make_kv(4 * CHUNK, seed=2), out, 4 * CHUNK)
    with pytest.raises(InvalidArgumentError):
        maintenance.collect(store, max_bytes=-1)


def test_ttl_deletes_chunks_written_long_ago(kvstore: Make, tmp_path: Path) -> None:
    import os

    store = LocalStore(tmp_path / "shared")
    _fill(kvstore, store, range(40, 41))
    old = list(maintenance.chunks(store))[:2]
    past = time.time() - 7200
    for c in old:
        os.utime(store.path_of(c.object_key), (past, past))
    gc = maintenance.collect(store, ttl_s=3600, grace_s=60)
    assert gc.deleted == 2 and sorted(gc.victims) == sorted(c.object_key for c in old)
    assert len(list(maintenance.chunks(store))) == 2
    per_ns = maintenance.stats(store)[FP.namespace]
    assert per_ns["chunks"] == 2 and per_ns["oldest_age_s"] < 60


def test_a_chunk_deleted_between_lookup_and_read_is_a_counted_miss(kvstore: Make, shared: Any) -> None:
    store = shared[0]
    _fill(kvstore, store, range(5, 6))
    reader = kvstore(shared=store)
    assert reader.lookup(tokens(5)) == 4 * CHUNK  # the reader now knows the chunks are there
    assert maintenance.collect(store, max_bytes=0, grace_s=0).deleted == 4
    out = zeros_kv(4 * CHUNK)
    assert reader.retrieve(tokens(5), out) == 0  # a miss, not an error and not wrong data
    st = reader.stats()["shared"]
    assert st["misses"] >= 1 and st["verify_failures"] == 0
    assert reader.lookup(tokens(5)) == 0


def test_store_with_a_shared_budget_collects_as_it_writes(kvstore: Make, shared: Any) -> None:
    store = shared[0]
    kv = _fill(kvstore, store, range(10, 12), max_bytes=1, gc_grace_s=3600, gc_interval_s=0)
    assert len(list(maintenance.chunks(store))) == 8  # over budget, but every chunk is inside the grace period
    time.sleep(1.1)
    kv2 = _fill(kvstore, store, range(12, 13), max_bytes=4 * kv.layout.nbytes, gc_grace_s=0, gc_interval_s=0)
    kv2.flush()
    left = list(maintenance.chunks(store))
    assert sum(c.size for c in left) <= 4 * kv.layout.nbytes
    assert kv2.stats()["shared"]["evictions"] >= 8
    assert kvstore(shared=store).lookup(tokens(10)) == 0


def test_verify_finds_damaged_and_foreign_chunks(kvstore: Make, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "shared")
    _fill(kvstore, store, range(20, 21))
    chunks = list(maintenance.chunks(store))
    report = maintenance.verify(store)
    assert report.good == 4 and report.bad == []
    first, second, third = (store.path_of(c.object_key) for c in chunks[:3])
    raw = bytearray(first.read_bytes())
    raw[3 * 4096 + 10] ^= 0xFF  # bit rot in the last layer (4 KiB header, layers 4 KiB apart)
    first.write_bytes(bytes(raw))
    second.write_bytes(third.read_bytes())  # a chunk under another chunk's name
    sealed = store.root / "kvcache" / "tenant-x" / "ab" / ("ab" + "0" * 62)
    sealed.parent.mkdir(parents=True)
    sealed.write_bytes(b"SCEN" + b"\0" * 500)  # encrypted elsewhere: cannot be checked here
    report = maintenance.verify(store)
    assert report.good == 2 and report.sealed == 1 and len(report.bad) == 2
    assert any("layer 2 checksum" in e for _, e in report.bad) and any("its name says" in e for _, e in report.bad)
    assert maintenance.verify(store, delete_bad=True).deleted == 2
    assert maintenance.verify(store).bad == []


def test_kv_command(kvstore: Make, shared: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    store, url, env = shared
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _fill(kvstore, store, range(30, 31))

    def run(*args: str) -> tuple[int, str, str]:
        rc = main(["kv", *args, url])
        out = capsys.readouterr()
        return rc, out.out, out.err

    rc, out, _ = run("stats", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["chunks"] == 4 and doc["namespaces"][FP.namespace]["chunks"] == 4
    rc, out, _ = run("ls")
    assert rc == 0 and len(out.splitlines()) == 4 and FP.namespace in out
    rc, out, _ = run("verify")
    assert rc == 0 and "4 good, 0 bad" in out
    rc, out, _ = run("gc", "--max-bytes", "0", "--dry-run")
    assert rc == 0 and "would delete 0 of 4 chunks" in out and "4 kept inside the 3600 s grace period" in out
    rc, out, _ = run("gc", "--max-bytes", "0", "--grace", "0", "--json")
    assert rc == 0 and json.loads(out)["deleted"] == 4
    assert json.loads(run("stats", "--json")[1])["chunks"] == 0
    rc, _, err = run("gc")
    assert rc == 1 and "--max-bytes" in err
    with pytest.raises(SystemExit) as info:  # argparse: not a size
        main(["kv", "gc", "--max-bytes", "lots", url])
    assert info.value.code == 2 and "invalid size value: 'lots'" in capsys.readouterr().err


def test_verify_delete_spares_a_good_chunk_published_over_the_bad_one(
    kvstore: Make, shared: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``verify --delete`` deletes only the version it found bad: a good chunk that a writer
    published in its place between the check and the delete stays (review finding: it
    deleted whatever the key held by then)."""
    store = shared[0]
    _fill(kvstore, store, range(40, 41))
    victim = next(iter(maintenance.chunks(store))).object_key
    good = store.get(victim)
    bad = bytearray(good)
    bad[4096 + 10] ^= 0xFF  # the first layer (4 KiB header)
    store.put(victim, bytes(bad))
    real_check = maintenance.check_chunk

    def check_then_a_writer_repairs(obj: np.ndarray, key: str, where: str) -> None:
        try:
            real_check(obj, key, where)
        except Exception:
            store.put(victim, good)  # a writer republishes the chunk, good this time
            raise

    monkeypatch.setattr(maintenance, "check_chunk", check_then_a_writer_repairs)
    report = maintenance.verify(store, delete_bad=True)
    assert [k for k, _ in report.bad] == [victim] and report.deleted == 0
    assert store.get(victim) == good
    monkeypatch.setattr(maintenance, "check_chunk", real_check)
    store.put(victim, bytes(bad))  # without a writer in between, the bad version goes
    report = maintenance.verify(store, delete_bad=True)
    assert report.deleted == 1 and not store.exists(victim)
    assert maintenance.verify(store).bad == []


@pytest.mark.parametrize("flag", ["--ttl", "--grace"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-5", "soon"])
def test_kv_gc_refuses_a_time_that_is_not_a_finite_number_of_seconds(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--ttl nan`` compared false with every age and was accepted; a NaN grace period
    would let GC delete chunks being written. Each is a one-line usage error."""
    store = LocalStore(tmp_path / "shared")
    store.put("kvcache/keep", b"x")
    args = ["kv", "gc", f"{flag}={value}", str(tmp_path / "shared")] + (["--ttl", "1"] if flag == "--grace" else [])
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and f"argument {flag}:" in err[-1] and value in err[-1]
    assert store.exists("kvcache/keep")


@pytest.mark.parametrize("kw", [{"ttl_s": float("nan")}, {"ttl_s": float("inf")}, {"ttl_s": 10, "grace_s": float("nan")}])
def test_collect_refuses_nan_and_infinite_times(kw: dict[str, float], tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        maintenance.collect(LocalStore(tmp_path), **kw)
