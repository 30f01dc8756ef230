"""Placement between real SeaweedFS sites (one server per site; the far one in a
network namespace behind a tbf bandwidth limit), and kill -9 of ``storecomp
place`` at random points: a site is published complete only when every blob
is there and verified; a rerun copies only what is still missing.

``STORECOMP_TEST_KILL_ROUNDS`` sets the kill -9 rounds (default 5; issue 14
asks for 20: ``STORECOMP_TEST_KILL_ROUNDS=20``)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storecomp.store import Namespace, Repository, place, resolve
from storecomp.store import placement as pl
from storecomp.store.transfer import TransferError
from storecomp.testing.netns import SlowLink, unavailable_reason
from storecomp.testing.seaweedfs import SeaweedFS

from .conftest import FAST_RETRY, PART_RETRY
from .placehelpers import complete_at, site_mount, write_snapshot

URL = "sc://ds/train"
#: Read at import: the autouse fixture clears STORECOMP_* variables before each test.
KILL_ROUNDS = int(os.environ.get("STORECOMP_TEST_KILL_ROUNDS", "5"))


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS.start(tmp_path_factory.mktemp("site-b")) as sw:
        yield sw


@pytest.fixture(scope="module")
def far_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no far site: {reason}")
    link = SlowLink.create("16mbit")  # 2 MB/s each way
    try:
        with SeaweedFS.start(tmp_path_factory.mktemp("site-far"), ip=link.ns_ip, netns=link.name) as sw:
            yield sw
    finally:
        link.remove()


SITE_RETRY = PART_RETRY  # the sites' parts: 8 MiB, some over the 2 MB/s far link


def _opts(sw: SeaweedFS) -> dict[str, Any]:
    return {"retry": SITE_RETRY, **sw.store_options()}


def s3_namespace(a: SeaweedFS, b: SeaweedFS, site: str = "b") -> Namespace:
    return Namespace([site_mount("ds", {"a": (a.url(), _opts(a)), site: (b.url(), _opts(b))})], environ={})


def test_place_between_two_seaweedfs_sites(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    with s3_namespace(running_seaweedfs, site_b) as ns:
        st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
        h, files = write_snapshot(st["a"], n=4, size=6 << 20)  # multipart streamed copies
        r = place(URL, "b", namespace=ns, part_bytes=5 << 20)
        assert r.transfer.copied == 4 and complete_at(st["b"], Repository(st["a"]).get_manifest(h))
        res = resolve(URL, namespace=ns, near="b")
        assert res.site == "b" and res.snapshot.read("part-003.bin") == files["part-003.bin"]
        assert place(URL, "b", namespace=ns).already_complete


def test_destination_down_at_start_then_rerun_resumes(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    with s3_namespace(running_seaweedfs, site_b) as ns:
        st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
        h, _ = write_snapshot(st["a"], n=3)
        site_b.stop()
        try:
            with pytest.raises(TransferError, match=f"destination {site_b.url('')[:-1]}.*unreachable.*{site_b.endpoint}"):
                place(URL, "b", namespace=ns)
            rec = pl.read_record(st["a"])
            assert rec.sites_of(h) == set() and rec.inflight == {}
            assert resolve(URL, namespace=ns, near="b").site == "a"
        finally:
            site_b.restart()
        r = place(URL, "b", namespace=ns)
        assert r.transfer.copied == 3 and pl.read_record(st["a"]).sites_of(h) == {"b"}


def test_far_site_goes_down_mid_copy_then_rerun_resumes(running_seaweedfs: SeaweedFS, far_site: SeaweedFS) -> None:
    with s3_namespace(running_seaweedfs, far_site, "far") as ns:
        st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
        h, _ = write_snapshot(st["a"], n=8, size=600_000)
        repo = Repository(st["a"])
        keys = [repo.blob_key(e.blob) for e in repo.get_manifest(h).entries.values()]
        stop = threading.Event()

        def kill_after_first_blob() -> None:
            while not stop.is_set():
                if any(far_site_has(st["far"], k) for k in keys):
                    far_site.kill()
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_after_first_blob)
        killer.start()
        try:
            with pytest.raises(TransferError, match="unreachable") as ei:
                place(URL, "far", namespace=ns, workers=2)
            # The kill lands after a blob is written, maybe before its read-back: done (verified) may be 0.
            assert ei.value.done_objects < len(keys)
        finally:
            stop.set()
            killer.join()
            far_site.restart()
        rec = pl.read_record(st["a"])
        assert rec.sites_of(h) == set()
        # A blob seen at the far site before the kill -9 may not survive it (SeaweedFS had not synced
        # it; its metadata may survive without its bytes): what counts is that the copy is incomplete
        # and the rerun skips exactly the blobs there and good.
        present = sum(complete_at_blob(st["far"], repo, e) for e in repo.get_manifest(h).entries.values())
        assert present < len(keys)
        r = place(URL, "far", namespace=ns, workers=2)
        assert r.transfer.skipped == present and r.transfer.copied == len(keys) - present
        assert complete_at(st["far"], repo.get_manifest(h)) and pl.read_record(st["a"]).sites_of(h) == {"far"}


def far_site_has(store: Any, key: str) -> bool:
    try:
        return bool(store.exists(key))
    except Exception:
        return False


def test_kill_9_of_place_never_leaves_a_complete_record_for_an_incomplete_copy(tmp_path: Path) -> None:
    rounds = KILL_ROUNDS
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(
        '[mounts.ds]\nprimary = "a"\n'
        f'replicas = [{{url = "{tmp_path}/site-a", site = "a"}}, {{url = "{tmp_path}/site-b", site = "b"}}]\n'
    )
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}, "STORECOMP_MOUNTS": str(cfg)}
    rng = random.Random(14)
    killed_before_complete = 0
    with Namespace(environ=env) as ns:
        st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
        repo = Repository(st["a"])
        for r in range(rounds):
            name = f"s{r}"
            h, _ = write_snapshot(st["a"], name, n=6, size=500_000, seed=100 + r)
            manifest = repo.get_manifest(h)
            proc = subprocess.Popen(
                [sys.executable, "-m", "storecomp", "place", f"sc://ds/{name}", "--to", "b", "--max-rate", "1M", "-j", "2"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(rng.uniform(0.2, 1.8))  # the copy takes ~3 s at 1M/s: the kill lands before it ends
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            rec = pl.read_record(st["a"])
            if "b" in rec.sites_of(h):
                assert complete_at(st["b"], manifest), f"round {r}: complete record for an incomplete copy"
                continue
            killed_before_complete += 1
            good = {e.blob for e in manifest.entries.values() if complete_at_blob(st["b"], repo, e)}
            rep = place(f"sc://ds/{name}", "b", namespace=ns)
            assert rep.transfer.skipped == len(good), f"round {r}: a verified blob was copied again"
            assert complete_at(st["b"], manifest) and "b" in pl.read_record(st["a"]).sites_of(h)
            assert pl.read_record(st["a"]).inflight.get(h) is None
    print(f"kill -9 rounds: {rounds}, killed before 'complete': {killed_before_complete}, every record checked")
    assert killed_before_complete >= 1  # the kills landed mid-copy at least once


def complete_at_blob(store: Any, repo: Repository, e: Any) -> bool:
    from storecomp.store.transfer import verify_object

    return verify_object(store, repo.blob_key(e.blob), e.checksums)


def _lose_unsynced_bytes(sw: SeaweedFS) -> None:
    """What a kill -9 can leave: every volume file of ``sw`` (stopped) cut back to its
    8-byte superblock, while the filer's metadata still names the objects."""
    for dat in (sw.dir / "data").glob("*.dat"):
        if dat.stat().st_size > 8:
            os.truncate(dat, 8)


def test_blob_a_crash_cut_short_at_the_destination_is_copied_again(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    """A SeaweedFS restarted after kill -9 can keep an object's metadata but not its
    bytes: HEAD answers, every GET is a 500 (the fresh-clone CI flake of the
    far-site test). The rerun takes that blob for missing and writes it again:
    not "destination unreachable", and the site is published complete.
    (Last in this module: it wipes site b's volumes.)"""
    opts = {s: {"retry": FAST_RETRY, **sw.store_options()} for s, sw in (("a", running_seaweedfs), ("b", site_b))}
    sites = {"a": (running_seaweedfs.url("crash-cut"), opts["a"]), "b": (site_b.url("crash-cut"), opts["b"])}
    with Namespace([site_mount("ds", sites)], environ={}) as ns:
        st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
        h, _ = write_snapshot(st["a"], n=3, size=600_000, seed=7)
        repo = Repository(st["a"])
        manifest = repo.get_manifest(h)
        key = repo.blob_key(next(iter(manifest.entries.values())).blob)
        st["b"].put(key, st["a"].get(key))  # one blob was at b before the crash
        site_b.kill()
        _lose_unsynced_bytes(site_b)
        site_b.restart()
        assert st["b"].stat(key).size > 0  # its metadata survived, its bytes did not (a GET: 500 until the deadline)
        r = place(URL, "b", namespace=ns, workers=2)
        assert (r.transfer.copied, r.transfer.skipped) == (3, 0)
        assert complete_at(st["b"], manifest) and pl.read_record(st["a"]).sites_of(h) == {"b"}
