"""The foundation I/O benchmark: the native engine next to fio and memcpy, in one run.

    python benchmarks/bench_io.py --dir /nvme/scratch --size 4G --duration 5 --json io.json

Cases (see storecomp.bench.read): sequential 1 MiB O_DIRECT reads vs
``fio --rw=read --bs=1M --iodepth=32 --direct=1 --ioengine=io_uring``;
random 4 KiB, 64 KiB and 1 MiB O_DIRECT reads (io_uring, and the thread pool
below 1 MiB) vs fio randread at iodepth 32, each also into users' own buffers
(np.empty, torch.empty: not page-aligned) next to staging slots and a
page-aligned numpy array (``user_buffer`` in the JSON: unaligned / aligned,
target 0.9); page-cache-hot reads vs memcpy; CPU-seconds per GB for each.
Comparisons are interleaved and alternate in order; medians are reported,
and for ratios also the median of the ratios within each round. The same measurement is ``storecomp bench read``; this script adds
``--cases`` and ``--repeats`` and keeps the data file for the next run.
``--tiny`` is the smoke run the test suite uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from storecomp.bench.read import CASES, figures, run_read_bench
from storecomp.bench.report import table
from storecomp.cli.bench import parse_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="directory for the data file (default: a temporary directory)")
    p.add_argument("--size", type=parse_size, default=parse_size("4G"), help="data file size (default 4G)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measurement (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds per case (default 3)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--no-fio", action="store_true", help="skip the fio limit")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--tiny", action="store_true", help="smoke run: 4 MiB, 0.05 s, one round")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.duration, args.repeats = 4 << 20, 0.05, 1
    with tempfile.TemporaryDirectory(prefix="storecomp-bench-io-") as tmp:
        results = run_read_bench(
            args.dir or tmp,
            args.size,
            args.duration,
            cases=[c for c in args.cases.split(",") if c],
            fio=not args.no_fio,
            repeats=args.repeats,
            progress=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True),
        )
    print(table(figures(results)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
