"""Blobs, manifests, refs and GC (storecomp.store.snapshots) on LocalStore."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import pytest

from storecomp.errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError
from storecomp.store import LocalStore
from storecomp.store.base import ObjectInfo, Store
from storecomp.store.snapshots import ANY, Manifest, Repository, sha256_hex

CHUNK = 1024


def repo_at(path: Path, **kw: Any) -> Repository:
    return Repository(LocalStore(path), "repo", chunk_bytes=CHUNK, **kw)


def age(store: LocalStore, key: str, seconds: float) -> None:
    """Make ``key`` look ``seconds`` old (GC decides by mtime)."""
    t = time.time() - seconds
    os.utime(store.path_of(key), (t, t))


def test_blobs_are_content_addressed_and_deduplicated(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    data = os.urandom(3 * CHUNK + 17)
    e1, e2 = repo.put_blob(data), repo.put_blob(data)
    assert e1 == e2 and e1.blob == sha256_hex(data) and e1.size == len(data)
    assert repo.store.exists(repo.blob_key(e1.blob) + ".crc32c")
    assert repo.read_blob(e1) == data
    assert repo.read_blob(e1, CHUNK + 5, 100) == data[CHUNK + 5 : CHUNK + 105]
    assert len(list(repo.store.list("repo/blobs/"))) == 2  # blob + sidecar, once


def test_commit_pin_and_history(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    w = repo.writer()
    w.add("a.bin", b"A" * 5000)
    w.add("dir/b.bin", b"B")
    h1 = w.commit("main", expected=None)
    pinned = repo.snapshot("main")
    assert pinned.hash == h1 and pinned.paths() == ["a.bin", "dir/b.bin"]
    w2 = repo.writer("main")
    w2.add("a.bin", b"new")
    h2 = w2.commit("main", expected=h1)
    assert pinned.read("a.bin") == b"A" * 5000  # the pinned view never changes
    assert repo.snapshot("main").read("a.bin") == b"new"
    assert repo.snapshot(h1).read("dir/b.bin") == b"B"
    state = repo.read_ref("main")
    assert state is not None and state.manifest == h2 and state.generation == 2 and state.history == (h1,)
    assert repo.get_manifest(h2).parent == h1
    assert repo.refs() == ["main"]
    with pytest.raises(NotFoundError):
        pinned.read("missing")
    with pytest.raises(NotFoundError):
        repo.snapshot("nope")


def test_ref_changed_underneath_a_writer_is_a_clear_conflict(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    base = repo.writer()
    base.add("x", b"1")
    h1 = base.commit("main", expected=None)
    w_late = repo.writer("main")
    w_fast = repo.writer("main")
    w_fast.add("x", b"fast")
    w_fast.commit("main", expected=h1)
    w_late.add("x", b"late")
    with pytest.raises(ConflictError, match=f"expected {h1}"):
        w_late.commit("main", expected=h1)
    with pytest.raises(ConflictError):
        repo.set_ref("main", h1, expected=None)
    assert repo.snapshot("main").read("x") == b"fast"
    repo.set_ref("main", h1, expected=ANY)  # last-writer-wins is still an atomic swap
    assert repo.snapshot("main").read("x") == b"1"


class MovingRefStore(LocalStore):
    """A LocalStore where another writer moves the ref right before each of our CAS calls."""

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        if key.endswith("refs/main") and self.exists(key):
            self.put(key, self.get(key))  # same bytes, new version: our expected is stale
        return super().compare_and_swap(key, expected, data)


def test_bounded_retries_end_in_conflict(tmp_path: Path) -> None:
    repo = Repository(MovingRefStore(tmp_path), chunk_bytes=CHUNK, cas_retries=3)
    h = repo.put_manifest(Manifest({}))
    repo.set_ref("main", h, expected=None)
    t0 = time.monotonic()
    with pytest.raises(ConflictError, match="lost 3 compare-and-swap races"):
        repo.set_ref("main", h, expected=ANY)
    with pytest.raises(ConflictError, match="lost 3"):
        repo.update("main", lambda m: Manifest({}, {"x": 1}))
    assert time.monotonic() - t0 < 5


def _adder(root: str, worker: int, rounds: int) -> None:
    repo = Repository(LocalStore(root), "repo", chunk_bytes=CHUNK, cas_retries=200)
    for r in range(rounds):
        entry = repo.put_blob(f"{worker}-{r}".encode())
        repo.update("main", lambda m, e=entry, k=f"w{worker}/r{r}": Manifest({**(m.entries if m else {}), k: e}))


def _racer(root: str, version: str | None, q: Any) -> None:
    store = LocalStore(root)
    try:
        store.compare_and_swap("ref", version, os.urandom(8))
        q.put(True)
    except ConflictError:
        q.put(False)


def test_concurrent_processes_lose_no_update(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_adder, args=(str(tmp_path), w, 4)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    repo = repo_at(tmp_path)
    snap = repo.snapshot("main")
    assert len(snap.paths()) == 12
    assert snap.read("w2/r3") == b"2-3"
    state = repo.read_ref("main")
    assert state is not None and state.generation == 12
    # A round of raw CAS races from the same version: exactly one of N wins.
    store = LocalStore(tmp_path)
    store.put("ref", b"start")
    q = ctx.Queue()
    racers = [ctx.Process(target=_racer, args=(str(tmp_path), store.stat("ref").version, q)) for _ in range(3)]
    for p in racers:
        p.start()
    wins = [q.get(timeout=60) for _ in racers]
    for p in racers:
        p.join(30)
    assert wins.count(True) == 1


def test_gc_keeps_reachable_young_and_in_progress(tmp_path: Path) -> None:
    repo = repo_at(tmp_path, grace_s=100, keep_history=0)
    store = repo.store
    assert isinstance(store, LocalStore)
    w = repo.writer()
    keep = w.add("keep", b"keep" * 300)
    old = w.add("old", b"old" * 300)
    h1 = w.commit("main")
    w2 = repo.writer("main")
    w2.remove("old")
    h2 = w2.commit("main")
    in_progress = repo.writer()
    fresh = in_progress.add("fresh", b"fresh")  # uploaded, not committed yet
    for key in [repo.blob_key(keep.blob), repo.blob_key(old.blob), repo.manifest_key(h1), repo.manifest_key(h2)]:
        age(store, key, 1000)
    dry = repo.gc(dry_run=True)
    assert dry.deleted_blobs == 1 and store.exists(repo.blob_key(old.blob))
    rep = repo.gc()
    assert rep.deleted_blobs == 1 and rep.deleted_bytes == old.size and rep.deleted_manifests == 1
    assert not store.exists(repo.blob_key(old.blob)) and not store.exists(repo.blob_key(old.blob) + ".crc32c")
    assert store.exists(repo.blob_key(keep.blob)) and store.exists(repo.blob_key(fresh.blob))
    assert not store.exists(repo.manifest_key(h1)) and store.exists(repo.manifest_key(h2))
    in_progress.commit("other")
    assert repo.snapshot("other").read("fresh") == b"fresh"
    assert repo.snapshot("main").read("keep") == b"keep" * 300


def test_writer_reusing_an_old_unreachable_blob_refreshes_it(tmp_path: Path) -> None:
    repo = repo_at(tmp_path, grace_s=100)
    store = repo.store
    assert isinstance(store, LocalStore)
    e = repo.put_blob(b"orphan")
    age(store, repo.blob_key(e.blob), 1000)
    w = repo.writer()
    w.add("again", b"orphan")  # dedups against the old blob, which GC would otherwise take
    assert repo.gc().deleted_blobs == 0
    w.commit("main")
    assert repo.snapshot("main").read("again") == b"orphan"


def test_slow_writer_is_refused(tmp_path: Path) -> None:
    repo = repo_at(tmp_path, grace_s=10)
    w = repo.writer()
    w.add("a", b"a")
    w.started -= 6
    with pytest.raises(ConflictError, match="grace"):
        w.commit("main")
    assert repo.read_ref("main") is None


def test_corruption_is_detected(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    store = repo.store
    assert isinstance(store, LocalStore)
    w = repo.writer()
    e = w.add("f", os.urandom(4 * CHUNK))
    h = w.commit("main")
    path = store.path_of(repo.blob_key(e.blob))
    raw = bytearray(path.read_bytes())
    raw[2 * CHUNK + 1] ^= 0x40
    path.write_bytes(bytes(raw))
    snap = repo.snapshot("main")
    assert len(snap.read("f", 0, 2 * CHUNK)) == 2 * CHUNK
    with pytest.raises(CorruptDataError, match=rf"\[{2 * CHUNK}, {3 * CHUNK}\)"):
        snap.read("f")
    mpath = store.path_of(repo.manifest_key(h))
    mpath.write_bytes(mpath.read_bytes().replace(b'"f"', b'"g"'))
    with pytest.raises(CorruptDataError, match="SHA-256"):
        repo.snapshot("main")
    store.put("repo/refs/bad", b"{not json")
    with pytest.raises(CorruptDataError, match="malformed ref"):
        repo.read_ref("bad")


def test_bad_names(tmp_path: Path) -> None:
    repo = repo_at(tmp_path)
    with pytest.raises(InvalidArgumentError):
        repo.read_ref("../escape")
    with pytest.raises(InvalidArgumentError):
        repo.writer().add("/abs", b"x")
    with pytest.raises(InvalidArgumentError):
        repo.set_ref("main", "not-a-hash")
    assert isinstance(repo.store, Store)


# ---------------------------------------------------------------- on S3 (SeaweedFS)


def test_s3_commit_conflict_concurrent_updates_and_gc(s3_store: Store) -> None:
    import threading

    repo = Repository(s3_store, "repo", chunk_bytes=CHUNK, keep_history=0, cas_retries=100)
    collector = Repository(s3_store, "repo", chunk_bytes=CHUNK, grace_s=1.0, keep_history=0)
    w = repo.writer()
    old = w.add("old", b"o" * 3000)
    h1 = w.commit("main", expected=None)
    w_late = repo.writer("main")
    with pytest.raises(ConflictError):
        repo.set_ref("main", h1, expected=None)  # If-None-Match lost: the ref exists

    def adder(t: int) -> None:
        for r in range(2):
            e = repo.put_blob(f"{t}/{r}".encode())
            repo.update("main", lambda m, e=e, k=f"t{t}/{r}": Manifest({**(m.entries if m else {}), k: e}))

    threads = [threading.Thread(target=adder, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = repo.snapshot("main")
    assert len(snap.paths()) == 7 and snap.read("t2/1") == b"2/1"  # no lost update
    late = w_late.add("x", b"late")
    with pytest.raises(ConflictError):
        w_late.commit("main", expected=h1)  # If-Match lost: the ref moved
    w2 = repo.writer("main")
    w2.remove("old")
    w2.commit("main")
    # everything is younger than a grace period longer than this test (a fixed
    # 1 s one flaked on a loaded CI machine, where the steps above took longer)
    assert collector.gc(grace_s=600.0).deleted_blobs == 0
    time.sleep(2.2)  # S3 mtimes have 1 s resolution
    rep = collector.gc()
    assert rep.deleted_blobs == 2  # "old", and the blob of the writer that lost its commit
    assert not s3_store.exists(repo.blob_key(old.blob)) and not s3_store.exists(repo.blob_key(late.blob))
    assert repo.snapshot("main").read("t0/0") == b"0/0"


def test_repository_over_a_lagging_replica(tmp_path: Path) -> None:
    """Refs and GC use the primary; reads fall back to it while a nearer replica lags."""
    from storecomp.store import CachedStore, Mount, Replica, ReplicatedStore

    near, far = LocalStore(tmp_path / "near"), LocalStore(tmp_path / "far")
    mount = Mount("m", (Replica(str(near.root), "near", 0), Replica(str(far.root), "far", 1)), primary="far")
    rs = ReplicatedStore(mount, [near, far])
    repo = Repository(CachedStore(rs, tmp_path / "cache", 1 << 20), "repo", chunk_bytes=CHUNK, cas_retries=3)
    assert repo.primary is far
    w = repo.writer()
    w.add("a", b"alpha" * 500)
    w.commit("main", expected=None)  # nothing reaches "near": replication has not happened
    repo.update("main", lambda m: Manifest({**(m.entries if m else {}), "b": repo.put_blob(b"beta")}))
    snap = repo.snapshot("main")
    assert snap.read("a") == b"alpha" * 500 and snap.read("b") == b"beta"
    assert not near.exists(repo.ref_key("main")) and far.exists(repo.ref_key("main"))
    assert repo.gc().deleted_blobs == 0
