"""Placement of snapshots across sites (storecomp.store.placement) on local-directory
sites: the record, resolution to complete copies only, leases, drop, plan, the
concurrency cases of issue 14 and the bad-input and fault list (full destination,
corruption at the destination, unknown site or mount, racing writers)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storecomp.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError
from storecomp.store import Lease, LocalStore, Namespace, Repository, drop, open_snapshot, place, plan, resolve
from storecomp.store import placement as pl
from storecomp.store.base import ObjectInfo
from storecomp.store.transfer import TransferError

from .placehelpers import complete_at, local_namespace, site_mount, write_snapshot

URL = "sc://ds/train"


@pytest.fixture
def ns(tmp_path: Path) -> Any:
    with local_namespace(tmp_path, sites=("a", "b", "c")) as n:
        yield n


def sites(ns: Namespace) -> dict[str, Any]:
    return {s.name: s.store for s in pl.mount_sites(ns, "ds")}


def test_place_copies_only_missing_blobs_and_publishes_complete(ns: Namespace) -> None:
    st = sites(ns)
    h, files = write_snapshot(st["a"])
    manifest = Repository(st["a"]).get_manifest(h)
    assert resolve(URL, namespace=ns, near="b").site == "a"
    p = plan(URL, "b", namespace=ns)
    assert p.blobs_missing == 6 and p.bytes_missing == manifest.total_bytes and p.rate > 0 and p.rate_from == "probe"
    r = place(URL, "b", namespace=ns, part_bytes=300 << 10)
    assert r.transfer.copied == 6 and r.transfer.bytes_copied == manifest.total_bytes and not r.already_complete
    assert complete_at(st["b"], manifest)
    assert pl.read_record(st["a"]).sites_of(h) == {"b"}
    res = resolve(URL, namespace=ns, near="b")
    assert res.site == "b" and res.sites == ["b", "a"]
    assert all(res.snapshot.read(p) == d for p, d in files.items())  # read from b's copy
    assert place(URL, "b", namespace=ns).already_complete
    assert plan(URL, "b", namespace=ns).bytes_missing == 0 and plan(URL, "b", namespace=ns).rate_from == "last copy"
    # A new snapshot sharing five of six files: only the changed blob moves.
    repo = Repository(st["a"], chunk_bytes=256 << 10)
    w = repo.writer("train")
    w.add("part-000.bin", b"changed" * 1000)
    w.commit("train")
    r2 = place(URL, "b", namespace=ns)
    assert r2.transfer.copied == 1 and r2.transfer.skipped == 5
    doc = pl.status("ds", namespace=ns)
    assert doc["primary"] == "a" and doc["snapshots"][0]["complete"] == ["a", "b"] and doc["snapshots"][0]["in_flight"] == {}


def test_readers_never_resolve_to_a_partial_copy(ns: Namespace) -> None:
    st = sites(ns)
    h, _ = write_snapshot(st["a"])
    repo = Repository(st["a"])
    entries = list(repo.get_manifest(h).entries.values())
    for e in entries[:-1]:  # every blob but one at b, and the manifest: still partial
        st["b"].put(repo.blob_key(e.blob), repo.read_blob(e))
    st["b"].put(repo.manifest_key(h), st["a"].get(repo.manifest_key(h)))
    assert resolve(URL, namespace=ns, near="b").site == "a"
    r = place(URL, "b", namespace=ns)
    assert r.transfer.copied == 1 and r.transfer.skipped == len(entries) - 1  # resumed: verified blobs skipped
    assert resolve(URL, namespace=ns, near="b").site == "b"


def test_drop_refuses_primary_and_leased_copies_and_keeps_shared_blobs(ns: Namespace) -> None:
    st = sites(ns)
    h, _ = write_snapshot(st["a"])
    write_snapshot(st["a"], "other", n=2, seed=0)  # shares part-000 and part-001 with train
    place(URL, "b", namespace=ns)
    place("sc://ds/other", "b", namespace=ns)
    with pytest.raises(ConflictError, match="only complete copy"):
        drop(URL, "a", namespace=ns)
    with pytest.raises(ConflictError, match="no complete copy"):
        drop(URL, "c", namespace=ns)
    res, lease = open_snapshot(URL, namespace=ns, near="b", ttl_s=30)
    assert res.site == "b"
    with pytest.raises(ConflictError, match="lease"):
        drop(URL, "b", namespace=ns)
    assert "b" in pl.read_record(st["a"]).sites_of(h)  # a refused drop leaves the copy published
    lease.release()
    freed = drop(URL, "b", namespace=ns)
    manifest = Repository(st["a"]).get_manifest(h)
    shared = {e.blob for p, e in manifest.entries.items() if p in ("part-000.bin", "part-001.bin")}
    assert freed == sum(e.size for e in manifest.entries.values() if e.blob not in shared)
    assert resolve(URL, namespace=ns, near="b").site == "a"
    assert resolve("sc://ds/other", namespace=ns, near="b").site == "b"
    assert complete_at(st["b"], Repository(st["a"]).get_manifest(Repository(st["a"]).read_ref("other").manifest))


def _age_everything(root: Path, seconds: float) -> None:
    t = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (t, t))


def test_lease_is_renewed_and_pins_a_snapshot_against_gc(ns: Namespace, tmp_path: Path) -> None:
    st = sites(ns)
    h1, files = write_snapshot(st["a"])
    repo = Repository(st["a"], grace_s=100, keep_history=0)
    with Lease(st["a"], h1, "a", ttl_s=0.3) as lease:
        w = repo.writer()
        w.add("x.bin", b"x" * 100)
        w.commit("train")  # h1 is no longer named by any ref
        first = [le.expires for le in pl.leases(st["a"], manifest=h1)]
        time.sleep(0.25)
        assert [le.expires for le in pl.leases(st["a"], manifest=h1)] > first  # renewed by its thread
        time.sleep(0.1)
        assert repo.gc().deleted_blobs == 0
        assert repo.snapshot(h1).read("part-002.bin") == files["part-002.bin"]
        assert lease.error is None
    assert pl.leases(st["a"], manifest=h1) == []
    _age_everything(tmp_path / "site-a", 1000)
    assert repo.gc().deleted_blobs == len(files)


def test_unknown_mount_site_and_snapshot(ns: Namespace) -> None:
    write_snapshot(sites(ns)["a"])
    with pytest.raises(InvalidArgumentError, match="no such mount"):
        place("sc://nope/train", "b", namespace=ns)
    with pytest.raises(InvalidArgumentError, match="no site 'zz'.*a, b, c"):
        place(URL, "zz", namespace=ns)
    with pytest.raises(NotFoundError, match="refs/missing"):
        place("sc://ds/missing", "b", namespace=ns)
    for bad in ("s3://bucket/train", "sc://ds", "sc://ds/", "/tmp/x"):
        with pytest.raises(InvalidArgumentError, match="sc://mount/name"):
            place(bad, "b", namespace=ns)
    with pytest.raises(InvalidArgumentError, match="no site"):
        drop(URL, "zz", namespace=ns)


def test_two_place_runs_of_the_same_snapshot_at_once_make_one_record(ns: Namespace, tmp_path: Path) -> None:
    st = sites(ns)
    h, _ = write_snapshot(st["a"], n=8)
    results: list[Any] = []

    def run() -> None:
        with local_namespace(tmp_path, sites=("a", "b", "c")) as own:
            results.append(place(URL, "b", namespace=own, workers=2))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2  # both finished
    rec = pl.read_record(st["a"])
    assert rec.sites_of(h) == {"b"} and rec.inflight == {}
    assert complete_at(st["b"], Repository(st["a"]).get_manifest(h))
    moved = sum(r.transfer.bytes_copied for r in results)
    assert Repository(st["a"]).get_manifest(h).total_bytes <= moved <= 2 * Repository(st["a"]).get_manifest(h).total_bytes


def test_writers_racing_on_the_ref_while_a_placement_runs(ns: Namespace) -> None:
    st = sites(ns)
    h1, files1 = write_snapshot(st["a"], n=8)
    repo = Repository(st["a"], chunk_bytes=256 << 10)
    outcome: dict[str, Any] = {}

    def writer(tag: str) -> None:
        w = repo.writer("train")
        w.add("part-000.bin", tag.encode() * 1000)
        try:
            outcome[tag] = w.commit("train", expected=h1)
        except ConflictError as e:
            outcome[tag] = e

    placing = threading.Thread(target=lambda: outcome.__setitem__("place", place(URL, "b", namespace=ns, max_rate=20e6)))
    placing.start()
    writers = [threading.Thread(target=writer, args=(t,)) for t in ("w1", "w2")]
    for t in writers:
        t.start()
    for t in writers + [placing]:
        t.join()
    won = [k for k in ("w1", "w2") if isinstance(outcome[k], str)]
    assert len(won) == 1 and isinstance(outcome[{"w1": "w2", "w2": "w1"}[won[0]]], ConflictError)
    h2 = outcome[won[0]]
    assert repo.read_ref("train").manifest == h2
    # The placement ran on the snapshot it started with: whole, published for h1 only.
    assert outcome["place"].manifest == h1
    rec = pl.read_record(st["a"])
    assert rec.sites_of(h1) == {"b"} and rec.sites_of(h2) == set()
    res = resolve(URL, namespace=ns, near="b")
    assert res.manifest == h2 and res.site == "a"  # the new snapshot, from a complete copy only
    assert res.snapshot.read("part-000.bin") == won[0].encode() * 1000
    assert res.snapshot.read("part-001.bin") == files1["part-001.bin"]


class CorruptingStore(LocalStore):
    """A real local store whose streamed writes flip one byte of the first
    ``bad_writes`` objects it publishes (bit rot or a bad NIC at the destination)."""

    bad_writes = 1

    def put_stream(self, key: str, parts: Any) -> ObjectInfo:
        info = super().put_stream(key, parts)
        if "/blobs/" in f"/{key}" and type(self).bad_writes > 0:
            type(self).bad_writes -= 1
            path = self.path_of(key)
            with open(path, "r+b") as f:
                f.seek(info.size // 2)
                b = f.read(1)
                f.seek(info.size // 2)
                f.write(bytes([b[0] ^ 0xFF]))
        return info


def _opener(tmp_path: Path) -> Any:
    def open_(url: str, **_: Any) -> Any:
        return CorruptingStore(url) if url.endswith("site-b") else LocalStore(url)

    return open_


def test_a_blob_corrupted_at_the_destination_is_found_recopied_and_never_published(tmp_path: Path) -> None:
    with local_namespace(tmp_path, opener=_opener(tmp_path)) as ns:
        st = sites(ns)
        h, files = write_snapshot(st["a"])
        CorruptingStore.bad_writes = 1
        r = place(URL, "b", namespace=ns)
        assert r.transfer.recopied == 1 and complete_at(st["b"], Repository(st["a"]).get_manifest(h))
        # Bit rot in a placed copy before a rerun (the record is cleared as if never placed):
        key = Repository(st["a"]).blob_key(next(iter(Repository(st["a"]).get_manifest(h).entries.values())).blob)
        raw = bytearray(st["b"].get(key))
        raw[5] ^= 1
        st["b"].put(key, bytes(raw))
        pl.update_record(st["a"], lambda rec: rec.complete.clear())
        r = place(URL, "b", namespace=ns)
        assert r.transfer.copied == 1 and r.transfer.skipped == 5 and st["b"].get(key) == files["part-000.bin"]
        # A destination that corrupts every write: a clear error, never a "complete" record.
        pl.update_record(st["a"], lambda rec: rec.complete.clear())
        shutil.rmtree(tmp_path / "site-b")
        CorruptingStore.bad_writes = 10**6
        with pytest.raises(CorruptDataError, match="verification at the destination twice"):
            place(URL, "b", namespace=ns)
        rec = pl.read_record(st["a"])
        assert rec.sites_of(h) == set() and rec.inflight == {}
        assert resolve(URL, namespace=ns, near="b").site == "a"
        CorruptingStore.bad_writes = 0


@pytest.fixture
def tiny_disk(small_tmpfs: Any) -> Any:
    """A 2 MiB tmpfs (root only): a destination that fills up."""
    with small_tmpfs("2m") as path:
        yield path


def test_a_full_destination_is_a_clear_error_and_nothing_is_published(tmp_path: Path, tiny_disk: Path) -> None:
    mount = site_mount("ds", {"a": (str(tmp_path / "site-a"), {}), "b": (str(tiny_disk), {})})
    with Namespace([mount], environ={}) as ns:
        st = sites(ns)
        h, _ = write_snapshot(st["a"], n=6, size=700_000)  # 4.2 MB > 2 MiB
        with pytest.raises(TransferError, match=f"destination file://{tiny_disk} is full: writing blobs/") as ei:
            place(URL, "b", namespace=ns, workers=2)
        assert ei.value.errno == 28
        rec = pl.read_record(st["a"])
        assert rec.sites_of(h) == set() and rec.inflight == {}
        assert not [p for p in tiny_disk.rglob("*") if p.is_file() and p.name.startswith(".sc")]  # no temp files left


def test_warm_fills_the_cache_tier(tmp_path: Path) -> None:
    from storecomp.store import Mount, Replica

    mount = Mount("ds", (Replica(str(tmp_path / "site-a"), "a"),), cache_dir=str(tmp_path / "cache"), cache_max_bytes=64 << 20)
    with Namespace([mount], environ={}) as ns:
        h, files = write_snapshot(LocalStore(tmp_path / "site-a"))
        doc = pl.warm(URL, namespace=ns)
        assert doc["blobs"] == 6 and doc["bytes"] == sum(map(len, files.values()))
        cache = ns.store("ds")
        assert sum(n for _, n in cache.entries()) >= doc["bytes"]
    with local_namespace(tmp_path) as plain:
        with pytest.raises(InvalidArgumentError, match="no cache tier"):
            pl.warm(URL, namespace=plain)


def test_auto_decides_from_measured_rates(ns: Namespace) -> None:
    write_snapshot(sites(ns)["a"])
    d = pl.decide(URL, "b", reads=3, namespace=ns)
    assert set(d.measures) == {"a", "b"} and d.measures["b"]["read_bps"] > 0 and d.stay_s > 0 and d.copy_s > 0
    assert d.copy == (d.copy_s < d.stay_s) and ("copy to b" in d.why or "stay on a" in d.why)
    d0 = pl.decide(URL, "b", reads=0, namespace=ns)
    assert not d0.copy  # nothing will be read: copying only costs
    place(URL, "b", namespace=ns)
    assert pl.decide(URL, "b", namespace=ns).why == "b already holds a complete copy"


def test_copy_never_holds_a_whole_blob_in_memory(ns: Namespace) -> None:
    st = sites(ns)
    write_snapshot(st["a"], n=1, size=3 << 20)
    seen: list[int] = []
    real = LocalStore.put_stream

    def spy(self: LocalStore, key: str, parts: Any) -> ObjectInfo:
        def each() -> Any:
            for p in parts:
                seen.append(len(p))
                yield p

        return real(self, key, each())

    LocalStore.put_stream = spy  # type: ignore[method-assign]
    try:
        place(URL, "b", namespace=ns, part_bytes=512 << 10)
    finally:
        LocalStore.put_stream = real  # type: ignore[method-assign]
    assert sum(seen) == (3 << 20) and max(seen) == 512 << 10 and len(seen) == 6


def test_a_drop_racing_a_placement_makes_it_verify_again_before_publishing(ns: Namespace) -> None:
    st = sites(ns)
    h, _ = write_snapshot(st["a"], n=8, size=400_000)
    repo = Repository(st["a"])
    manifest = repo.get_manifest(h)
    keys = [repo.blob_key(e.blob) for e in manifest.entries.values()]
    done = threading.Event()

    def drop_like() -> None:  # what a drop of another snapshot sharing a blob does at b, mid-copy
        while not (present := [k for k in keys if st["b"].exists(k)]):  # the first blob copied, whichever it is
            time.sleep(0.005)
        st["b"].delete(present[0])

        def bump(rec: Any) -> None:
            d = rec.drops.setdefault("b", {"epoch": 0, "done": 0, "time": 0.0})
            d["epoch"] += 1
            d["done"] = d["epoch"]
            d["time"] = time.time()

        pl.update_record(st["a"], bump)
        done.set()

    t = threading.Thread(target=drop_like)
    t.start()
    r = place(URL, "b", namespace=ns, workers=1, max_rate=1e6)  # ~3 s of copying: the drop lands early, mid-copy
    t.join()
    assert done.is_set() and complete_at(st["b"], manifest)  # the deleted blob was found and copied again
    assert r.transfer.copied >= len(manifest.entries)


def test_a_placement_waits_for_a_drop_in_progress(ns: Namespace) -> None:
    st = sites(ns)
    h, _ = write_snapshot(st["a"], n=2)

    def in_progress(rec: Any) -> None:  # a drop at b that started (almost) DROP_STALE_S ago and has not finished
        rec.drops["b"] = {"epoch": 1.0, "done": 0.0, "time": time.time() - pl.DROP_STALE_S + 0.5}

    pl.update_record(st["a"], in_progress)
    r = place(URL, "b", namespace=ns)
    assert r.transfer.bytes_verified >= 2 * Repository(st["a"]).get_manifest(h).total_bytes  # verified again after waiting
    assert pl.read_record(st["a"]).sites_of(h) == {"b"}


def test_place_yields_while_a_reader_holds_a_lease(ns: Namespace) -> None:
    st = sites(ns)
    write_snapshot(st["a"], n=2)
    assert place(URL, "b", namespace=ns).transfer.yield_rate is None  # nobody reading: full speed
    drop(URL, "b", namespace=ns)
    resolved, lease = open_snapshot(URL, namespace=ns, near="a")  # a reader at the source
    try:
        assert resolved.site == "a" and pl.leases(st["a"])[0].purpose == "read"
        base = pl.read_record(st["a"]).rates["a->b"]  # the first copy's, at full speed
        r = place(URL, "b", namespace=ns)
        assert r.transfer.yield_rate == max(float(1 << 20), 0.1 * base)
        assert pl.read_record(st["a"]).rates["a->b"] == base  # a slowed copy does not lower the recorded rate
        drop(URL, "b", namespace=ns)
        assert place(URL, "b", namespace=ns, yield_to_readers=False).transfer.yield_rate is None
        drop(URL, "b", namespace=ns)
    finally:
        lease.release()
    with Lease(st["a"], "0" * 64, "a", purpose="copy"):  # another placement's pin is no reader
        assert place(URL, "b", namespace=ns).transfer.yield_rate is None
