"""S3 read benchmark: storecomp's S3Store against tuned boto3 and s3fs, in one run, on SeaweedFS.

    python benchmarks/bench_store.py            # 2 x 128 MiB objects, 4000 random 64 KiB reads
    python benchmarks/bench_store.py --tiny     # smoke run (seconds)

A thin wrapper over :func:`storecomp.bench.store.run_s3_bench` (also run by
``storecomp bench store``). Starts a SeaweedFS server on loopback (or uses
``--endpoint`` with the standard AWS variables), uploads the objects, then
for each client:

* large: read every object whole into a preallocated buffer (GB/s, best of
  ``--repeat``). boto3: ``download_fileobj`` with a TransferConfig of
  ``--concurrency`` threads and ``--part-mib`` chunks, writing in place;
  s3fs: ``cat_ranges`` over ``--part-mib`` parts (concurrent), copied in.
* ranged: ``--ranges`` random 64 KiB reads spread over the objects, into one
  buffer (samples/s). boto3: a thread pool of ``--concurrency`` ranged
  GETs; s3fs: ``cat_ranges`` per batch; storecomp: ``read_ranges`` per object.

A peer library that is not installed is skipped with the reason. Prints a
table with the ratio of storecomp to the best baseline and writes JSON with
``--json``. Never asserts speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from storecomp.bench.store import PEERS, endpoint_target, run_s3_bench, s3_target


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

    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        if args.endpoint:
            env = {**os.environ, "STORECOMP_BENCH_S3_BUCKET": args.bucket}
            where: Any = contextlib.nullcontext(endpoint_target(args.endpoint, env))
        else:
            where = s3_target(tmp, bucket=args.bucket, environ={})  # always a SeaweedFS of our own
        with where as target:
            results = run_s3_bench(
                target,
                object_bytes=args.object_mib << 20,
                objects=args.objects,
                ranges=args.ranges,
                concurrency=args.concurrency,
                part_bytes=args.part_mib << 20,
                repeats=args.repeat,
                duration=0.0,  # one call per round: the best of --repeat
                peers=PEERS,
                progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True),
            )
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict[str, Any]) -> None:
    cfg = results["config"]
    print(
        f"S3 reads from {cfg['endpoint']}: {cfg['objects']} x {cfg['object_bytes'] >> 20} MiB objects, "
        f"{cfg['ranges']} x 64 KiB random ranges, concurrency {cfg['concurrency']}, best of {cfg['repeat']}"
    )
    clients = ("storecomp", *PEERS)
    print(f"{'case':<22}" + "".join(f"{c:>12}" for c in clients) + f"{'ratio':>8}  verified")
    for case, label, metric, fmt in (
        ("large", "large read (GB/s)", "gbps", ".2f"),
        ("ranged", "64 KiB reads (/s)", "samples_per_s", ".0f"),
    ):
        r = results[case]
        cells = "".join(f"{format(r[c][metric], fmt):>12}" if metric in r.get(c, {}) else f"{'-':>12}" for c in clients)
        ratio = "n/a" if r["ratio_vs_best_peer"] is None else f"{r['ratio_vs_best_peer']:.2f}"
        ok = all(v.get("verified") for v in r.values() if isinstance(v, dict) and "verified" in v)
        print(f"{label:<22}{cells}{ratio:>8}  {ok}")
    for name, why in results["skipped"].items():
        print(f"{name} skipped: {why}")
    for case in ("large", "ranged"):
        for name, v in results[case].items():
            if isinstance(v, dict) and "error" in v:
                print(f"{name} failed ({case}): {v['error']}")
    print("ratio = storecomp / best of boto3 and s3fs (same run, same server)")


if __name__ == "__main__":
    sys.exit(main())
