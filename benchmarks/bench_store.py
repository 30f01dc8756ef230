"""S3 read benchmark: storecomp's S3Store against tuned boto3 and s3fs, in one run, on SeaweedFS.

    python benchmarks/bench_store.py            # 2 x 128 MiB objects, 4000 random 64 KiB reads
    python benchmarks/bench_store.py --tiny     # smoke run (seconds)

Starts a SeaweedFS server on loopback (or uses ``--endpoint`` with the
standard AWS variables), uploads the objects, then for each client:

* large: read every object whole into a preallocated buffer (GB/s, best of
  ``--repeat``). boto3: ``download_fileobj`` with a TransferConfig of
  ``--concurrency`` threads and ``--part-mib`` chunks, writing in place;
  s3fs: ``cat_ranges`` over ``--part-mib`` parts (concurrent), copied in.
* ranged: ``--ranges`` random 64 KiB reads spread over the objects, into one
  buffer (samples/s). boto3: a thread pool of ``--concurrency`` ranged
  GETs; s3fs: ``cat_ranges`` per batch; storecomp: ``read_ranges`` per object.

Prints a table with the ratio of storecomp to the best baseline and writes
JSON with ``--json``. Never asserts speed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = 64 << 10


class _BufferWriter(io.RawIOBase):
    """A seekable file that writes into a preallocated numpy buffer (what boto3 downloads into)."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.buf.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.buf[self.pos : self.pos + len(mv)] = np.frombuffer(mv, np.uint8)
        self.pos += len(mv)
        return len(mv)


def best_of(repeat: int, fn: Callable[[], None]) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--object-mib", type=int, default=128)
    ap.add_argument("--objects", type=int, default=2)
    ap.add_argument("--ranges", type=int, default=4000, help="random 64 KiB reads")
    ap.add_argument("--concurrency", type=int, default=32, help="requests in flight per client")
    ap.add_argument("--part-mib", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--endpoint", help="use this S3 endpoint (AWS_* variables for credentials) instead of SeaweedFS")
    ap.add_argument("--bucket", default="bench")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.tiny:
        args.object_mib, args.objects, args.ranges, args.repeat = 4, 1, 200, 1

    from storecomp.store import open_store
    from storecomp.testing.seaweedfs import SeaweedFS

    tmp = tempfile.TemporaryDirectory(prefix="bench-store-")
    sw = None
    if args.endpoint:
        conn = {
            "endpoint": args.endpoint,
            "region": os.environ.get("AWS_REGION", "us-east-1"),
            "access_key_id": os.environ["AWS_ACCESS_KEY_ID"],
            "secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"],
        }
        bucket = args.bucket
    else:
        sw = SeaweedFS.start(tmp.name, bucket=args.bucket)
        conn = sw.store_options()
        bucket = sw.bucket
    try:
        results = run(args, bucket, conn, open_store)
    finally:
        if sw is not None:
            sw.stop()
        tmp.cleanup()
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def run(args: argparse.Namespace, bucket: str, conn: dict[str, Any], open_store: Any) -> dict[str, Any]:
    import boto3
    import s3fs
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    size = args.object_mib << 20
    part = args.part_mib << 20
    prefix = f"bench-{os.getpid()}"
    keys = [f"obj-{i}" for i in range(args.objects)]
    store = open_store(f"s3://{bucket}/{prefix}", max_concurrency=args.concurrency, part_bytes=part, **conn)
    rng = np.random.default_rng(0)
    data = {k: rng.integers(0, 256, size, dtype=np.uint8) for k in keys}
    for k, v in data.items():
        store.put(k, v)

    client = boto3.client(
        "s3",
        endpoint_url=conn["endpoint"],
        aws_access_key_id=conn["access_key_id"],
        aws_secret_access_key=conn["secret_access_key"],
        region_name=conn["region"],
        config=Config(max_pool_connections=args.concurrency * 2, retries={"max_attempts": 3}),
    )
    tconf = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=args.concurrency, use_threads=True)
    fs = s3fs.S3FileSystem(
        key=conn["access_key_id"],
        secret=conn["secret_access_key"],
        endpoint_url=conn["endpoint"],
        client_kwargs={"region_name": conn["region"]},
        default_block_size=part,
        max_concurrency=args.concurrency,
        skip_instance_cache=True,
    )
    dst = {k: np.empty(size, np.uint8) for k in keys}

    def large_storecomp() -> None:
        for k in keys:
            store.read_ranges(k, [0], [size], dst[k], [0])

    def large_boto3() -> None:
        for k in keys:
            client.download_fileobj(bucket, f"{prefix}/{k}", _BufferWriter(dst[k]), Config=tconf)

    def large_s3fs() -> None:
        starts = list(range(0, size, part))
        for k in keys:
            ends = [min(s + part, size) for s in starts]
            paths = [f"{bucket}/{prefix}/{k}"] * len(starts)
            parts = fs.cat_ranges(paths, starts, ends, batch_size=args.concurrency)
            for s, p in zip(starts, parts, strict=True):
                dst[k][s : s + len(p)] = np.frombuffer(p, np.uint8)

    results: dict[str, Any] = {
        "config": {
            "object_bytes": size,
            "objects": args.objects,
            "ranges": args.ranges,
            "sample_bytes": SAMPLE,
            "concurrency": args.concurrency,
            "part_bytes": part,
            "repeat": args.repeat,
            "endpoint": conn["endpoint"],
        },
        "large": {},
        "ranged": {},
    }
    total = size * len(keys)
    for name, fn in (("storecomp", large_storecomp), ("boto3", large_boto3), ("s3fs", large_s3fs)):
        for k in keys:
            dst[k].fill(0)
        fn()  # warm connections
        t = best_of(args.repeat, fn)
        ok = all(np.array_equal(dst[k], data[k]) for k in keys)
        results["large"][name] = {"seconds": t, "gbps": total / t / 1e9, "verified": ok}

    # 64 KiB random ranged reads
    which = rng.integers(0, len(keys), args.ranges)
    offs = rng.integers(0, size // SAMPLE, args.ranges) * SAMPLE
    out = np.empty(args.ranges * SAMPLE, np.uint8)
    by_key = {k: np.flatnonzero(which == i) for i, k in enumerate(keys)}

    def ranged_storecomp() -> None:
        futs = [
            store.submit_ranges(k, offs[idx], np.full(idx.size, SAMPLE), out, idx.astype(np.uint64) * SAMPLE)
            for k, idx in by_key.items()
        ]
        for f in futs:
            f.result()

    pool = ThreadPoolExecutor(args.concurrency)

    def one_boto3(i: int) -> None:
        k = keys[int(which[i])]
        o = int(offs[i])
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{k}", Range=f"bytes={o}-{o + SAMPLE - 1}")["Body"].read()
        out[i * SAMPLE : (i + 1) * SAMPLE] = np.frombuffer(body, np.uint8)

    def ranged_boto3() -> None:
        list(pool.map(one_boto3, range(args.ranges)))

    def ranged_s3fs() -> None:
        paths = [f"{bucket}/{prefix}/{keys[int(w)]}" for w in which]
        parts = fs.cat_ranges(paths, offs.tolist(), (offs + SAMPLE).tolist(), batch_size=args.concurrency)
        for i, p in enumerate(parts):
            out[i * SAMPLE : (i + 1) * SAMPLE] = np.frombuffer(p, np.uint8)

    expect = np.concatenate([data[keys[int(w)]][o : o + SAMPLE] for w, o in zip(which, offs, strict=True)])
    for name, fn in (("storecomp", ranged_storecomp), ("boto3", ranged_boto3), ("s3fs", ranged_s3fs)):
        out.fill(0)
        fn()
        t = best_of(args.repeat, fn)
        results["ranged"][name] = {
            "seconds": t,
            "samples_per_s": args.ranges / t,
            "gbps": args.ranges * SAMPLE / t / 1e9,
            "verified": bool(np.array_equal(out, expect)),
        }
    pool.shutdown()
    for k in keys:
        store.delete(k)
    store.close()
    for case in ("large", "ranged"):
        r = results[case]
        metric = "gbps" if case == "large" else "samples_per_s"
        best_peer = max(r["boto3"][metric], r["s3fs"][metric])
        r["ratio_vs_best_peer"] = r["storecomp"][metric] / best_peer
    return results


def print_table(results: dict[str, Any], args: argparse.Namespace) -> None:
    cfg = results["config"]
    print(
        f"S3 reads from {cfg['endpoint']}: {cfg['objects']} x {cfg['object_bytes'] >> 20} MiB objects, "
        f"{cfg['ranges']} x 64 KiB random ranges, concurrency {cfg['concurrency']}, best of {cfg['repeat']}"
    )
    print(f"{'case':<22}{'storecomp':>12}{'boto3':>12}{'s3fs':>12}{'ratio':>8}  verified")
    large, ranged = results["large"], results["ranged"]
    ok = all(v["verified"] for v in (*(large[n] for n in ("storecomp", "boto3", "s3fs")),))
    print(
        f"{'large read (GB/s)':<22}{large['storecomp']['gbps']:>12.2f}{large['boto3']['gbps']:>12.2f}"
        f"{large['s3fs']['gbps']:>12.2f}{large['ratio_vs_best_peer']:>8.2f}  {ok}"
    )
    ok = all(ranged[n]["verified"] for n in ("storecomp", "boto3", "s3fs"))
    print(
        f"{'64 KiB reads (/s)':<22}{ranged['storecomp']['samples_per_s']:>12.0f}{ranged['boto3']['samples_per_s']:>12.0f}"
        f"{ranged['s3fs']['samples_per_s']:>12.0f}{ranged['ratio_vs_best_peer']:>8.2f}  {ok}"
    )
    print("ratio = storecomp / best of boto3 and s3fs (same run, same server)")


if __name__ == "__main__":
    sys.exit(main())
