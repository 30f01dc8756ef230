"""The DataLoader next to fio and torch.utils.data.DataLoader, measured in one run.

    python benchmarks/bench_loader.py --dir /nvme/scratch --size 2G --duration 5 --json loader.json

The cases and how they are measured: storecomp.bench.loader (the same suite
as ``storecomp bench loader --compare``). This script always runs the torch
DataLoader peer and adds ``--workers`` and ``--cases`` (e.g. ``--cases hot_64k``: the
hot-epoch comparison alone); ``--tiny`` is the smoke run the test
suite uses (8 MiB, 0.2 s, torch num_workers 0 only).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from storecomp.bench import Context, loader
from storecomp.bench.report import table
from storecomp.cli.bench import parse_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="directory for the data (default: a temporary directory)")
    p.add_argument("--size", type=parse_size, default=parse_size("2G"), help="data size per case (default 2G)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (default 4)")
    p.add_argument("--workers", default="0,2,4", help="torch DataLoader num_workers to try (default 0,2,4)")
    p.add_argument("--no-fio", action="store_true", help="skip the fio limit")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--tiny", action="store_true", help="smoke run: 8 MiB, 0.2 s, torch num_workers 0 only")
    p.add_argument("--cases", default=",".join(loader.CASES), help=f"cases to run (default: all of {','.join(loader.CASES)})")
    args = p.parse_args(argv)
    cases = tuple(c for c in args.cases.split(",") if c)
    unknown = sorted(set(cases) - set(loader.CASES))
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(loader.CASES)}")
    loader.SELECTED = cases
    if args.tiny:
        args.size, args.duration, args.workers = 8 << 20, 0.2, "0"
    loader.TORCH_WORKERS = tuple(int(w) for w in args.workers.split(","))
    with tempfile.TemporaryDirectory(prefix="storecomp-bench-loader-") as tmp:
        ctx = Context(args.dir or tmp, args.size, args.duration, fio=not args.no_fio, compare=True, progress=print)
        result = loader.run_suite(ctx)
    print(table(loader.figures(result)))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
