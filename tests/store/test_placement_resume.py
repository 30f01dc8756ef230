"""Resumed copies between real SeaweedFS sites (issue 14: "the bytes a resumed run
repeats: at most one part per blob in flight at the kill"): a ``storecomp place``
killed with SIGKILL mid-copy leaves tagged multipart uploads; the rerun keeps
their parts and sends only the rest, counted on the wire by a relay. The faults:
a kept part of the wrong size, a kept part with wrong bytes (caught by the
crc32c read-back, uploaded afresh, never published), an upload that vanishes
before it is completed, two runs adopting one upload, the destination down at
resume."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.store import Namespace, Repository, open_store, place
from storecomp.store import placement as pl
from storecomp.store.s3 import S3Store
from storecomp.store.s3_resume import marker_dir
from storecomp.store.transfer import CopyItem, TransferError, _upload_part_size, _upload_tag, copy_objects
from storecomp.testing.relay import Relay
from storecomp.testing.seaweedfs import SeaweedFS
from tests.conftest import kill_when

from .conftest import PART_RETRY
from .placehelpers import complete_at, site_mount, write_snapshot

URL = "sc://ds/train"
PART = 5 << 20  # S3's smallest part: blobs of 12 MiB are three parts (5, 5, 2 MiB)


@pytest.fixture(scope="module")
def site_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS.start(tmp_path_factory.mktemp("resume-b")) as sw:
        yield sw


def _namespace(a: SeaweedFS, b: SeaweedFS, pa: str, pb: str, b_endpoint: str | None = None, **b_extra: Any) -> Namespace:
    opts_a = {"retry": PART_RETRY, **a.store_options()}
    opts_b = {"retry": PART_RETRY, **b.store_options(), **({"endpoint": b_endpoint} if b_endpoint else {}), **b_extra}
    return Namespace([site_mount("ds", {"a": (a.url(pa), opts_a), "b": (b.url(pb), opts_b)})], environ={})


def _uploads(sw: SeaweedFS, prefix: str) -> list[dict[str, Any]]:
    return list(sw.boto3_client().list_multipart_uploads(Bucket=sw.bucket, Prefix=prefix + "/").get("Uploads", []))


def _part_bytes_at(sw: SeaweedFS, prefix: str) -> int:
    """Bytes of the parts of every unfinished upload under ``prefix``."""
    c = sw.boto3_client()
    return sum(
        int(p["Size"])
        for u in _uploads(sw, prefix)
        for p in c.list_parts(Bucket=sw.bucket, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", [])
    )


def _markers(sw: SeaweedFS, prefix: str) -> list[str]:
    page = sw.boto3_client().list_objects_v2(Bucket=sw.bucket, Prefix=prefix + "/")
    return [str(o["Key"]) for o in page.get("Contents", []) if "/.sc-upload/" in str(o["Key"])]


def _blobs(store: Any, h: str) -> list[tuple[str, Any]]:
    repo = Repository(store)
    return [(repo.blob_key(e.blob), e) for e in repo.get_manifest(h).entries.values()]


def _leave_upload(dst: S3Store, sw: SeaweedFS, key: str, data: bytes, sums: Any, parts: dict[int, bytes]) -> str:
    """What a killed run leaves: a tagged upload of ``key`` holding ``parts`` (index -> body,
    sent as given: a wrong size or wrong bytes is the test's fault to plant). Its upload id."""
    step = _upload_part_size(PART, dst.min_part_bytes, sums)
    up = dst.resumable_upload(key, len(data), step, _upload_tag(sums, step))
    c = sw.boto3_client()
    for i, body in parts.items():
        c.upload_part(Bucket=sw.bucket, Key=up.full_key, UploadId=up.upload_id, PartNumber=i + 1, Body=body)
    return str(up.upload_id)


def _part(data: bytes, i: int) -> bytes:
    return data[i * PART : (i + 1) * PART]


def test_kill_9_mid_copy_then_the_rerun_repeats_at_most_one_part_per_blob_in_flight(
    running_seaweedfs: SeaweedFS, site_b: SeaweedFS, tmp_path: Path
) -> None:
    """The figure of benchmarks/RESULTS.md ("resume after kill -9"): bytes on the wire to
    site b, killed run plus rerun, minus the snapshot's bytes, are the repeat."""
    a, b = running_seaweedfs, site_b
    pa, pb = f"ra-{uuid.uuid4().hex[:8]}", f"rb-{uuid.uuid4().hex[:8]}"
    with Relay(b.ports["s3"]) as relay:
        cfg = tmp_path / "mounts.toml"
        cfg.write_text(
            '[mounts.ds]\nprimary = "a"\nreplicas = [\n'
            f'  {{url = "{a.url(pa)}", site = "a", options = {{endpoint = "{a.endpoint}", region = "{a.region}"}}}},\n'
            f'  {{url = "{b.url(pb)}", site = "b", options = {{endpoint = "{relay.endpoint}", region = "{b.region}"}}}},\n]\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STORECOMP_", "AWS_"))} | a.env()
        env["STORECOMP_MOUNTS"] = str(cfg)
        with _namespace(a, b, pa, pb, relay.endpoint) as ns:
            st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
            h, _ = write_snapshot(st["a"], n=2, size=18 << 20, seed=14)  # 18 MiB blobs: parts of 8 MiB (8, 8, 2)
            manifest = Repository(st["a"]).get_manifest(h)
            part = _upload_part_size(8 << 20, S3Store.min_part_bytes, next(iter(manifest.entries.values())).checksums)
            cmd = [sys.executable, "-m", "storecomp", "place", URL, "--to", "b", "-j", "2", "--max-rate", "12M"]
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            kill_when(proc, lambda: _part_bytes_at(b, pb) >= part, "a part upload")  # kill mid-copy
            time.sleep(0.3)  # the relay forwards what the killed process had sent
            sent_killed = relay.sent
            in_flight = len(_uploads(b, pb))  # blobs whose upload had started and not completed
            kept_at_kill = _part_bytes_at(b, pb)
            done_at_kill = sum(e.size for k, e in _blobs(st["a"], h) if complete_at_blob(st["b"], k, e))
            assert pl.read_record(st["a"]).sites_of(h) == set()  # never complete for an incomplete copy
            r = place(URL, "b", namespace=ns)
            sent_rerun = relay.sent - sent_killed
        total = manifest.total_bytes
        t = r.transfer
        assert complete_at(st["b"], manifest) and pl.read_record(st["a"]).sites_of(h) == {"b"}
        # Every part the killed run had uploaded was kept (one the server finished storing after
        # the listing above is kept too), and only the rest was sent.
        assert t.bytes_resumed >= kept_at_kill > 0
        assert t.bytes_uploaded == total - done_at_kill - t.bytes_resumed
        repeated = sent_killed + sent_rerun - total
        overhead = 256 << 10  # request headers, markers, the manifest, completes (a few hundred requests at most)
        print(
            f"resume after kill -9: {total} bytes, {in_flight} blobs in flight at the kill (parts of {part}), "
            f"kept {kept_at_kill}, rerun uploaded {t.bytes_uploaded}; on the wire: killed run {sent_killed}, "
            f"rerun {sent_rerun}, repeated {repeated} (bound {in_flight * part})"
        )
        assert 1 <= in_flight <= 2
        assert repeated <= in_flight * part + overhead
        assert _uploads(b, pb) == [] and _markers(b, pb) == []  # nothing left behind


def complete_at_blob(store: Any, key: str, e: Any) -> bool:
    from storecomp.store.transfer import verify_object

    return verify_object(store, key, e.checksums)


def _one_blob(a: SeaweedFS, b: SeaweedFS, **b_extra: Any) -> tuple[Namespace, dict[str, Any], str, str, bytes, Any, str]:
    pa, pb = f"ra-{uuid.uuid4().hex[:8]}", f"rb-{uuid.uuid4().hex[:8]}"
    ns = _namespace(a, b, pa, pb, **b_extra)
    st = {s.name: s.store for s in pl.mount_sites(ns, "ds")}
    h, files = write_snapshot(st["a"], n=1, size=12 << 20, seed=3)
    key, e = _blobs(st["a"], h)[0]
    return ns, st, h, key, files["part-000.bin"], e.checksums, pb


def test_a_kept_part_of_the_wrong_size_is_sent_again(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    ns, st, h, key, data, sums, pb = _one_blob(running_seaweedfs, site_b)
    with ns:
        _leave_upload(st["b"], site_b, key, data, sums, {0: _part(data, 0), 1: _part(data, 1)[: 3 << 20]})
        r = place(URL, "b", namespace=ns, part_bytes=PART)
        t = r.transfer
        assert (t.copied, t.recopied, t.bytes_resumed) == (1, 0, PART)  # part 0 kept, the short part 1 sent again
        assert t.bytes_uploaded == len(data) - PART
        assert st["b"].get(key) == data and pl.read_record(st["a"]).sites_of(h) == {"b"}
        assert _uploads(site_b, pb) == [] and _markers(site_b, pb) == []


def test_a_kept_part_with_wrong_bytes_is_caught_uploaded_afresh_and_never_published(
    running_seaweedfs: SeaweedFS, site_b: SeaweedFS
) -> None:
    ns, st, h, key, data, sums, pb = _one_blob(running_seaweedfs, site_b)
    with ns:
        bad = (np.frombuffer(_part(data, 1), np.uint8) ^ 0x5A).tobytes()  # the right size, the wrong bytes
        _leave_upload(st["b"], site_b, key, data, sums, {0: _part(data, 0), 1: bad})
        r = place(URL, "b", namespace=ns, part_bytes=PART)
        t = r.transfer
        # Kept: parts 0 and 1; the read-back found the object bad; the second upload sent it whole.
        assert (t.copied, t.recopied, t.bytes_resumed) == (1, 1, 2 * PART)
        assert t.bytes_uploaded == (len(data) - 2 * PART) + len(data)
        assert st["b"].get(key) == data and complete_at(st["b"], Repository(st["a"]).get_manifest(h))
        assert pl.read_record(st["a"]).sites_of(h) == {"b"}
        assert _uploads(site_b, pb) == [] and _markers(site_b, pb) == []


class VanishingUploads(S3Store):
    """A real S3Store whose adopted uploads are aborted (by someone else: another
    run's hygiene, an operator) right after it listed their parts."""

    def resumable_upload(self, key: str, size: int, part_bytes: int, tag: str, *, adopt: bool = True) -> Any:
        up = super().resumable_upload(key, size, part_bytes, tag, adopt=adopt)
        if up.kept:
            self._uploads_client().abort_multipart_upload(Bucket=self.bucket, Key=up.full_key, UploadId=up.upload_id)
        return up


def test_an_upload_that_vanishes_between_list_parts_and_complete(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    """Two blobs: one whose every part was uploaded (the copy goes straight to complete:
    NoSuchUpload), one with a part left to send (upload_part: NoSuchUpload). Each is
    read back (nothing there), then uploaded afresh; nothing unverified is counted."""
    a, b = running_seaweedfs, site_b
    src = open_store(a.url(f"va-{uuid.uuid4().hex[:8]}"), retry=PART_RETRY, **a.store_options())
    prefix = f"vb-{uuid.uuid4().hex[:8]}"
    dst = VanishingUploads(b.bucket, prefix, retry=PART_RETRY, **b.store_options())
    try:
        rng = np.random.default_rng(5)
        items, datas = [], {}
        for name in ("all-parts", "one-missing"):
            data = rng.integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
            src.put(name, data)
            from storecomp.store.integrity import Checksums

            sums = Checksums.compute(data, 256 << 10)
            items.append(CopyItem(name, name, len(data), sums))
            datas[name] = data
            parts = {i: _part(data, i) for i in range(3)} if name == "all-parts" else {0: _part(data, 0), 1: _part(data, 1)}
            _leave_upload(dst, b, name, data, sums, parts)
        rep = copy_objects(src, dst, items, part_bytes=PART, workers=2)
        assert (rep.copied, rep.recopied) == (2, 2) and rep.bytes_resumed == (12 << 20) + 2 * PART
        assert all(dst.get(k) == d for k, d in datas.items())
        assert _uploads(b, prefix) == [] and _markers(b, prefix) == []
    finally:
        src.close()
        dst.close()


class MeetingUploads(S3Store):
    """A real S3Store that holds every caller at a barrier once it has its upload, so
    that two copies of one blob surely adopt the same upload before either goes on."""

    barrier = threading.Barrier(2, timeout=30)
    ids: list[str] = []

    def resumable_upload(self, key: str, size: int, part_bytes: int, tag: str, *, adopt: bool = True) -> Any:
        up = super().resumable_upload(key, size, part_bytes, tag, adopt=adopt)
        if adopt:
            type(self).ids.append(str(up.upload_id))
            type(self).barrier.wait()
        return up


def test_two_runs_adopting_the_same_upload_both_finish(running_seaweedfs: SeaweedFS, site_b: SeaweedFS) -> None:
    a, b = running_seaweedfs, site_b
    src = open_store(a.url(f"ca-{uuid.uuid4().hex[:8]}"), retry=PART_RETRY, **a.store_options())
    prefix = f"cb-{uuid.uuid4().hex[:8]}"
    from storecomp.store.integrity import Checksums

    data = np.random.default_rng(9).integers(0, 256, 17 << 20, dtype=np.uint8).tobytes()  # 4 parts: 5, 5, 5, 2 MiB
    src.put("blob", data)
    sums = Checksums.compute(data, 256 << 10)
    item = CopyItem("blob", "blob", len(data), sums)
    stores = [MeetingUploads(b.bucket, prefix, retry=PART_RETRY, **b.store_options()) for _ in range(2)]
    with S3Store(b.bucket, prefix, retry=PART_RETRY, **b.store_options()) as plain:
        _leave_upload(plain, b, "blob", data, sums, {0: _part(data, 0)})
    results: list[Any] = []
    errors: list[BaseException] = []

    def run(dst: S3Store) -> None:
        try:
            results.append(copy_objects(src, dst, [item], part_bytes=PART, delete_bad=False))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    try:
        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == [] and len(results) == 2
        assert len(set(MeetingUploads.ids)) == 1  # both adopted the one upload
        assert all(r.copied == 1 and r.bytes_resumed == PART for r in results)
        assert stores[0].get("blob") == data
        assert _uploads(b, prefix) == [] and _markers(b, prefix) == []
    finally:
        src.close()
        for s in stores:
            s.close()


def test_the_destination_down_at_resume_is_a_clear_error_then_the_rerun_resumes(
    running_seaweedfs: SeaweedFS, site_b: SeaweedFS
) -> None:
    ns, st, h, key, data, sums, pb = _one_blob(running_seaweedfs, site_b)
    with ns:
        _leave_upload(st["b"], site_b, key, data, sums, {0: _part(data, 0), 1: _part(data, 1)})
        site_b.stop()
        try:
            with pytest.raises(TransferError, match=f"destination {site_b.url(pb)}.*unreachable"):
                place(URL, "b", namespace=ns, part_bytes=PART)
            rec = pl.read_record(st["a"])
            assert rec.sites_of(h) == set() and rec.inflight == {}
        finally:
            site_b.restart()
        r = place(URL, "b", namespace=ns, part_bytes=PART)
        assert (r.transfer.bytes_resumed, r.transfer.bytes_uploaded) == (2 * PART, len(data) - 2 * PART)
        assert st["b"].get(key) == data and pl.read_record(st["a"]).sites_of(h) == {"b"}


def test_markers_sit_beside_the_key_and_are_hidden(running_seaweedfs: SeaweedFS) -> None:
    sw = running_seaweedfs
    prefix = f"mk-{uuid.uuid4().hex[:8]}"
    store = S3Store(sw.bucket, prefix, retry=PART_RETRY, **sw.store_options())
    try:
        up = store.resumable_upload("d/blob", 12 << 20, PART, "tag-1")
        assert _markers(sw, prefix) and all(m.startswith(f"{prefix}/{marker_dir('d/blob')}") for m in _markers(sw, prefix))
        assert [i.key for i in store.list()] == []  # a marker is no object of the store
        again = store.resumable_upload("d/blob", 12 << 20, PART, "tag-1")
        other = store.resumable_upload("d/blob", 12 << 20, PART, "tag-2")  # another content: never adopted
        assert again.upload_id == up.upload_id and other.upload_id != up.upload_id
        for u in (up, other):
            u.abort()
        assert _uploads(sw, prefix) == [] and _markers(sw, prefix) == []
    finally:
        store.close()


def test_without_boto3_the_copy_takes_the_plain_put(running_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """obstore alone (boto3 missing): multi-part blobs still copy, through the plain put."""
    sw = running_seaweedfs
    code = f"""
import sys
sys.modules["boto3"] = None  # not installed
import numpy as np
from storecomp.store import LocalStore, open_store
from storecomp.store.integrity import Checksums
from storecomp.store.transfer import CopyItem, copy_objects
data = np.random.default_rng(1).integers(0, 256, 12 << 20, dtype=np.uint8).tobytes()
src = LocalStore({str(tmp_path)!r})
src.put("blob", data)
dst = open_store({sw.url(f"nb-{uuid.uuid4().hex[:8]}")!r})
rep = copy_objects(src, dst, [CopyItem("blob", "blob", len(data), Checksums.compute(data, 256 << 10))], part_bytes={PART})
assert dst.get("blob") == data
print(rep.copied, rep.bytes_uploaded, rep.bytes_resumed)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORECOMP_", "AWS_"))} | sw.env()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", str(12 << 20), "0"]
