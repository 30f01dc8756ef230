"""``storecomp bench``: measured figures next to the hardware limit.

With no arguments it runs the embedded default: a temporary local data file,
no server, a few minutes on a 2-core machine. ``read`` measures the native
engine against fio (the storage limit) and memcpy (the page-cache limit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SUBCOMMANDS = ("read", "all")


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5g', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 4096, 512M, 4G)")
    n = int(float(m.group(1)) * _UNITS[m.group(2)])
    if n <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return n


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmark the data path against fio and memcpy")
    b.add_argument("suite", nargs="?", default="all", choices=SUBCOMMANDS, help="what to measure (default: all)")
    b.add_argument("--dir", help="directory for the data file (default: a temporary directory)")
    b.add_argument("--size", type=parse_size, default=parse_size("1G"), help="data file size (default 1G)")
    b.add_argument("--duration", type=float, default=3.0, help="seconds per measurement (default 3)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--no-fio", action="store_true", help="skip the fio baseline")
    b.add_argument("--keep", action="store_true", help="keep the generated data file (a later run with --dir reuses it)")
    b.set_defaults(func=main)


def _check_output(path: str | None) -> None:
    if path is None:
        return
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    if out.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise InvalidArgumentError(f"--json {path}: cannot write there (check the directory exists and is writable)")


def _check_space(directory: Path, size: int) -> None:
    existing = directory / "storecomp-bench.dat"
    have = existing.stat().st_size if existing.exists() else 0
    free = shutil.disk_usage(directory).free
    need = max(0, size - have) + (64 << 20)
    if need > free:
        raise InvalidArgumentError(
            f"{directory}: {size / 2**30:.2f} GiB requested but only {free / 2**30:.2f} GiB free; use --size or --dir"
        )


def main(args: argparse.Namespace) -> int:
    from ..bench.read import run_read_bench

    _check_output(args.json)
    if args.duration <= 0:
        raise InvalidArgumentError(f"--duration must be positive, got {args.duration}")
    tmp = None
    if args.dir:
        directory = Path(args.dir)
        if not directory.is_dir():
            raise InvalidArgumentError(f"--dir {args.dir}: not a directory")
    else:
        tmp = tempfile.mkdtemp(prefix="storecomp-bench-", dir=os.environ.get("STORECOMP_BENCH_DIR"))
        directory = Path(tmp)
    data = directory / "storecomp-bench.dat"
    existed = data.exists()
    try:
        _check_space(directory, args.size)
        results = run_read_bench(str(directory), args.size, args.duration, fio=not args.no_fio, progress=_progress)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not existed and not args.keep:
            data.unlink(missing_ok=True)  # made by this run: --keep keeps it, for the next run to reuse
    doc = {"suite": args.suite, "size_bytes": args.size, "duration_s": args.duration, "read": results}
    print(render(doc))
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return 0


def _progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def render(doc: dict[str, Any]) -> str:
    """A table: each figure next to its limit, as a ratio."""
    from ..bench.read import render_table

    return render_table(doc["read"])
