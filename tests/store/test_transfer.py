"""The copy engine (storecomp.store.transfer) and ``storecomp cp``: parallel,
streamed in parts, verified at the destination, resumable, rate-capped, with
progress; between local directories and SeaweedFS."""

from __future__ import annotations

import errno
import http.server
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.cli import main
from storecomp.errors import InvalidArgumentError, PermissionDeniedError, StorageIOError, StorecompError
from storecomp.store import LocalStore, Store, open_store
from storecomp.store.integrity import Checksums
from storecomp.store.transfer import (
    CopyItem,
    RateLimiter,
    TransferError,
    YieldPolicy,
    copy_objects,
    put_stream,
    verify_object,
)

from .conftest import FAST_RETRY, PART_RETRY


def fill(store: Store, sizes: list[int], seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    out = {}
    for i, n in enumerate(sizes):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        store.put(f"src/d{i % 3}/obj-{i}.bin", data)
        out[f"src/d{i % 3}/obj-{i}.bin"] = data
    return out


SIZES = [0, 1, 4095, 300_000, 1 << 20, (5 << 20) + 7, 2_000_000]


@pytest.mark.parametrize("dst_kind", ["local", "s3"])
def test_copy_objects_streams_verifies_and_resumes(tmp_path: Path, dst_kind: str, request: pytest.FixtureRequest) -> None:
    src = LocalStore(tmp_path / "src")
    if dst_kind == "s3":
        sw = request.getfixturevalue("running_seaweedfs")
        dst: Store = open_store(sw.url(), retry=PART_RETRY, **sw.store_options())
    else:
        dst = LocalStore(tmp_path / "dst")
    files = fill(src, SIZES)
    items = [CopyItem(k, "copy/" + k, len(v)) for k, v in files.items()]
    rep = copy_objects(src, dst, items, workers=4, part_bytes=5 << 20)
    assert rep.copied == len(items) and rep.bytes_copied == sum(SIZES) and rep.bytes_verified == sum(SIZES)
    assert all(dst.get("copy/" + k) == v for k, v in files.items())
    # A rerun writes nothing; an object damaged at the destination is copied again.
    bad = "copy/src/d0/obj-3.bin"
    dst.put(bad, b"\0" + files["src/d0/obj-3.bin"][1:])
    dst.delete("copy/src/d1/obj-4.bin")
    rep2 = copy_objects(src, dst, items, workers=4, part_bytes=5 << 20)
    assert rep2.copied == 2 and rep2.skipped == len(items) - 2
    assert dst.get(bad) == files["src/d0/obj-3.bin"]
    dst.close()


def test_known_checksums_are_checked_at_the_source_and_the_destination(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    data = os.urandom(1 << 20)
    src.put("blob", data)
    sums = Checksums.compute(data, 64 << 10)
    rep = copy_objects(src, dst, [CopyItem("blob", "blob", len(data), sums)], part_bytes=100 << 10)
    assert rep.copied == 1 and verify_object(dst, "blob", sums)
    src.put("rotten", data[:-1] + bytes([data[-1] ^ 1]))  # a source that fails its checksums is never copied
    from storecomp.errors import CorruptDataError

    with pytest.raises(CorruptDataError, match="rotten: crc32c mismatch"):
        copy_objects(src, dst, [CopyItem("rotten", "rotten", len(data), sums)])
    assert not dst.exists("rotten")


def test_put_stream_publishes_the_parts_atomically(tmp_path: Path, running_seaweedfs: Any) -> None:
    s3 = open_store(running_seaweedfs.url(), retry=FAST_RETRY, **running_seaweedfs.store_options())
    for store in (LocalStore(tmp_path), s3):
        parts = [os.urandom(n) for n in (6 << 20, 5 << 20, 123)]
        info = put_stream(store, "k/obj", iter(parts))
        assert info.size == sum(map(len, parts)) and store.get("k/obj") == b"".join(parts)

        def failing() -> Any:
            yield os.urandom(6 << 20)
            raise InvalidArgumentError("the source broke")

        with pytest.raises(Exception, match="the source broke|put failed"):
            put_stream(store, "k/broken", failing())
        assert not store.exists("k/broken")  # an interrupted stream is never visible
    s3.close()


def test_destination_down_is_a_clear_transfer_error(tmp_path: Path, seaweedfs: Any, tmp_path_factory: Any) -> None:
    from storecomp.testing.seaweedfs import SeaweedFS

    with SeaweedFS.start(tmp_path_factory.mktemp("down")) as sw:
        dst = open_store(sw.url(), retry=FAST_RETRY, **sw.store_options())
    src = LocalStore(tmp_path / "src")
    files = fill(src, [1000, 2000])
    with pytest.raises(TransferError, match=f"destination s3://.*unreachable \\({sw.endpoint}\\)"):
        copy_objects(src, dst, [CopyItem(k, k, len(v)) for k, v in files.items()])
    dst.close()


def test_a_destination_answering_500_is_not_called_unreachable(tmp_path: Path, small_tmpfs: Any) -> None:
    """A SeaweedFS destination whose disk fills mid-copy answers a bare 500 InternalError: the
    copy stops with an error that says the server answered and failed (a full disk or a failed
    volume), never "unreachable", and no object is left half written."""
    from storecomp.testing.seaweedfs import SeaweedFS

    src = LocalStore(tmp_path / "src")
    files = fill(src, [8 << 20] * 6)  # 48 MiB into a 32 MiB disk
    with small_tmpfs("32m") as disk, SeaweedFS.start(disk) as sw:
        dst = open_store(sw.url(), retry=FAST_RETRY, **sw.store_options())
        with pytest.raises(TransferError, match="answered HTTP 500 to every retry, a fault on the server") as ei:
            copy_objects(src, dst, [CopyItem(k, k, len(v)) for k, v in files.items()], workers=2)
        assert "unreachable" not in str(ei.value) and ei.value.errno == errno.EIO
        for info in dst.list(""):  # what is there is whole
            assert dst.get(info.key) == files[info.key]
        dst.close()


def test_rate_limiter_and_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        RateLimiter(0)
    with pytest.raises(InvalidArgumentError):
        copy_objects(LocalStore(tmp_path), LocalStore(tmp_path), [], workers=0)
    lim = RateLimiter(1e9)
    lim.take(10)  # within the burst: returns at once
    RateLimiter(None).take(1 << 40)


def test_cp_r_is_parallel_verified_resumable_with_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = LocalStore(tmp_path / "in")
    files = fill(src, SIZES)
    out = tmp_path / "out"
    args = ["cp", "-r", "-j", "4", "--progress", "--max-rate", "1G", str(tmp_path / "in" / "src"), f"{out}/"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"copied {len(SIZES)} objects" in err and "bytes" in err  # plain progress lines when stderr is no terminal
    assert all((out / "src" / k[len("src/") :]).read_bytes() == v for k, v in files.items())
    (out / "src" / "d0" / "obj-0.bin").unlink()
    assert main(args[:-2] + ["--no-progress", str(tmp_path / "in" / "src"), f"{out}/"]) == 0
    err = capsys.readouterr().err
    assert "copied 1 objects" in err and f"{len(SIZES) - 1} already there and verified" in err
    # single-object cp still works, through the same engine
    assert main(["cp", str(tmp_path / "in" / "src" / "d1" / "obj-4.bin"), str(tmp_path / "one.bin")]) == 0
    assert (tmp_path / "one.bin").read_bytes() == files["src/d1/obj-4.bin"]
    with pytest.raises(SystemExit):
        main(["cp", "-r", "--max-rate", "fast", str(tmp_path), str(out)])


def test_a_source_replaced_during_the_copy_is_never_copied_torn(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    old, new = os.urandom(3 << 20), os.urandom(3 << 20)
    src.put("obj", old)
    from storecomp.errors import ConflictError
    from storecomp.store.transfer import put_stream as real_put_stream

    def replacing(parts: Any) -> Any:  # the source is replaced after the first part was read
        for i, p in enumerate(parts):
            yield p
            if i == 0:
                src.put("obj", new)

    with pytest.raises(ConflictError, match="obj: changed while being copied"):
        real_put_stream(dst, "copy", replacing(_parts_of(src, "obj")))
    assert not dst.exists("copy")
    rep = copy_objects(src, dst, [CopyItem("obj", "copy", len(new))], part_bytes=1 << 20)
    assert rep.copied == 1 and dst.get("copy") == new


def _parts_of(src: Store, key: str) -> Any:
    from storecomp.store.transfer import Progress, RateLimiter, TransferReport, _Copier

    c = _Copier(src, src, 1 << 20, RateLimiter(None), Progress(0, "t", enabled=False), TransferReport(), True)
    return c._source_parts(CopyItem(key, key, src.stat(key).size), 1 << 20, [])


def test_rate_limiter_rate_changes_reach_threads_already_waiting() -> None:
    lim = RateLimiter(1.0)  # 1 byte/s: a 1 GB take would wait for decades
    done = threading.Event()
    t = threading.Thread(target=lambda: (lim.take(1 << 30), done.set()), daemon=True)
    t.start()
    assert not done.wait(0.3)  # blocked at 1 byte/s
    lim.set_rate(None)
    t.join(30)
    assert done.is_set()
    with pytest.raises(InvalidArgumentError):
        lim.set_rate(-1)


def test_copy_yields_to_readers_then_returns_to_its_own_cap(tmp_path: Path) -> None:
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    files = fill(src, [300_000, 1 << 20])
    items = [CopyItem(k, "y/" + k, len(v)) for k, v in files.items()]
    policy = YieldPolicy(lambda: True, fraction=0.5, base_rate=lambda: 400e6)
    rep = copy_objects(src, dst, items, yield_to=policy, max_rate=1e9)
    assert rep.copied == 2 and rep.yield_rate == 200e6 and rep.max_rate == 1e9  # half the copy's rate, under its cap
    rep = copy_objects(src, dst, [CopyItem(k, "z/" + k, len(v)) for k, v in files.items()], yield_to=policy, max_rate=5e7)
    assert rep.yield_rate == 5e7  # never above the caller's cap
    quiet = YieldPolicy(lambda: False, base_rate=lambda: 400e6)
    rep = copy_objects(src, dst, [CopyItem(k, "q/" + k, len(v)) for k, v in files.items()], yield_to=quiet)
    assert rep.yield_rate is None and rep.yielded_s == 0.0
    floor = YieldPolicy(lambda: True, fraction=0.1, base_rate=lambda: 1.0, floor=float(8 << 20))
    rep = copy_objects(src, dst, [CopyItem(k, "f/" + k, len(v)) for k, v in files.items()], yield_to=floor)
    assert rep.yield_rate == float(8 << 20)  # never below the floor
    assert all(dst.get(p + k) == v for k, v in files.items() for p in ("y/", "z/", "q/", "f/"))
    with pytest.raises(InvalidArgumentError, match="fraction"):
        YieldPolicy(lambda: True, fraction=0)


def test_checked_stream_to_s3_publishes_the_same_bytes(running_seaweedfs: Any, tmp_path: Path) -> None:
    """put_stream(checked=True), the copy engine's upload (it reads every object back),
    goes to S3 with an unsigned payload (put_stream_checked); a store without that
    path (local files) takes the plain streamed put. Same bytes either way."""
    sw = running_seaweedfs
    data = np.random.default_rng(3).integers(0, 256, (11 << 20) + 5, dtype=np.uint8)
    parts = [data[o : o + (5 << 20)] for o in range(0, data.size, 5 << 20)]  # multipart: three parts
    s3 = open_store(sw.url("checked"), retry=PART_RETRY, **sw.store_options())
    local = LocalStore(tmp_path / "dst")
    try:
        for store in (s3, local):
            info = put_stream(store, "obj", iter(parts), checked=True)
            assert info.size == data.size and store.get("obj") == data.tobytes()
        assert hasattr(s3, "put_stream_checked") and not hasattr(local, "put_stream_checked")
    finally:
        s3.close()


def test_read_ahead_and_parallel_read_back_keep_every_check(tmp_path: Path) -> None:
    """Deeper read-ahead and read-back change no result: parts in order, a damaged
    destination object found by the read-back and rewritten, bad arguments refused."""
    src, dst = LocalStore(tmp_path / "src"), LocalStore(tmp_path / "dst")
    data = os.urandom((3 << 20) + 123)
    src.put("blob", data)
    sums = Checksums.compute(data, 64 << 10)
    item = CopyItem("blob", "blob", len(data), sums)
    for ra, depth in ((0, 1), (3, 8)):
        dst.put("blob", data[:-1] + bytes([data[-1] ^ 1]))  # damaged at the destination: recopied
        rep = copy_objects(src, dst, [item], part_bytes=256 << 10, read_ahead=ra, verify_depth=depth)
        assert (rep.copied, rep.skipped) == (1, 0) and dst.get("blob") == data
        assert verify_object(dst, "blob", sums, 256 << 10, depth=depth)
    with pytest.raises(InvalidArgumentError, match="read_ahead"):
        copy_objects(src, dst, [item], read_ahead=-1)
    with pytest.raises(InvalidArgumentError, match="verify_depth"):
        copy_objects(src, dst, [item], verify_depth=0)


# ---------------------------------------------------------------- a full destination, by errno and status


@pytest.mark.parametrize("kind", ["local", "fsspec"])
def test_a_full_local_destination_is_told_by_its_errno(tmp_path: Path, small_tmpfs: Any, kind: str) -> None:
    """A local destination (the native store, or fsspec's local file system) that fills mid-copy
    stops the copy with a TransferError carrying ENOSPC; a destination that fails for another
    reason is never called full, even when its keys hold the words the copy engine once looked
    for in messages ("no space", "quota", ...)."""
    from storecomp.store.fsspec_store import FsspecStore

    src = LocalStore(tmp_path / "src")
    files = fill(src, [700_000] * 4)  # 2.8 MB into a 2 MiB disk
    with small_tmpfs("2m") as disk:
        dst: Store = LocalStore(disk / "dst") if kind == "local" else FsspecStore(f"file://{disk}/dst")
        with pytest.raises(TransferError, match=f"destination file://{disk}/dst is full: writing src/") as ei:
            copy_objects(src, dst, [CopyItem(k, k, len(v)) for k, v in files.items()], workers=2)
        assert ei.value.errno == errno.ENOSPC
        for info in dst.list(""):  # what is there is whole
            assert dst.get(info.key) == files[info.key]
    worded = "no space, quota insufficient, entity too large.bin"
    src.put(worded, b"x" * 5000)
    with small_tmpfs("2m") as disk:
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)  # EROFS, not a full disk
        ro: Store = LocalStore(disk) if kind == "local" else FsspecStore(f"file://{disk}")
        with pytest.raises(StorecompError) as pe:
            copy_objects(src, ro, [CopyItem(worded, worded, 5000)])
        assert not isinstance(pe.value, TransferError) and "is full" not in str(pe.value)
        assert isinstance(pe.value, PermissionDeniedError) and pe.value.errno == errno.EROFS


class _RefusingS3(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that has no objects and refuses every write with one S3 error answer
    (``answer``: HTTP status and error code), as a full or over-quota server does."""

    answer = (507, "XMinioStorageFull")

    def _reply(self, status: int, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._reply(404 if self.path.count("/") > 1 else 200)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0].count("/") > 1:
            self._reply(404, b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>")
        else:
            self._reply(200, b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>')

    def do_PUT(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, code = self.answer
        self._reply(status, f"<Error><Code>{code}</Code><Message>refused</Message></Error>".encode())

    do_POST = do_PUT

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "code", "err", "says"),
    [
        (403, "QuotaExceeded", errno.EDQUOT, "is full"),  # Ceph RGW: a 403, yet not a credentials error
        (507, "XMinioStorageFull", errno.ENOSPC, "is full"),  # MinIO
        (507, "InsufficientStorage", errno.ENOSPC, "is full"),  # any server, by the status alone
        (400, "EntityTooLarge", errno.EFBIG, "cannot hold"),  # AWS: an object past the size limit
    ],
)
def test_a_full_s3_destination_is_told_by_its_status_and_code(
    tmp_path: Path, status: int, code: str, err: int, says: str
) -> None:
    """The real S3 client (obstore) against an endpoint answering writes with a full store's S3
    error: the store's error carries the errno (by status and code, never the message's words), and
    the copy stops with a TransferError that says so."""
    handler = type("Refusing", (_RefusingS3,), {"answer": (status, code)})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    src = LocalStore(tmp_path / "src")
    src.put("obj.bin", b"y" * 3000)
    dst = open_store(
        "s3://bucket/pre",
        endpoint=f"http://127.0.0.1:{server.server_address[1]}",
        region="us-east-1",
        access_key_id="id",
        secret_access_key="secret",
        retry=FAST_RETRY,
    )
    try:
        with pytest.raises(StorageIOError) as se:
            dst.put("direct.bin", b"z" * 100)
        assert se.value.errno == err and "s3://bucket/pre/direct.bin" in str(se.value)
        with pytest.raises(TransferError, match=f"destination s3://bucket/pre {says}") as ei:
            copy_objects(src, dst, [CopyItem("obj.bin", "obj.bin", 3000)])
        assert ei.value.errno == err
    finally:
        dst.close()
        server.shutdown()
        server.server_close()


def test_storage_full_errno_reads_status_and_code_only() -> None:
    from storecomp.store.retry import storage_full_errno

    assert storage_full_errno(500, "InternalError") is None  # SeaweedFS's full disk: a fault like any other
    assert storage_full_errno(None, "") is None and storage_full_errno(403, "AccessDenied") is None
    assert storage_full_errno(413) == errno.EFBIG and storage_full_errno(507) == errno.ENOSPC
