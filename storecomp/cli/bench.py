"""``storecomp bench``: measured figures next to the hardware limit and the peers.

With no arguments it runs the embedded default, ``all``: every suite that
needs no server, on a temporary local dataset generated on the fly, in a few
minutes on a 2-core machine. ``read`` measures the native engine against
fio (the storage limit) and memcpy (the page-cache limit); ``loader`` the
DataLoader; ``kvcache`` the KV-cache tiers; ``store`` the store layer.
``--compare`` adds the peer libraries in the same run.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import config
from ..bench import DATA_FILE_NAME, ON_REQUEST, SUITES, Context
from ..errors import InvalidArgumentError
from ..optional import require

_HEADROOM = 64 << 20  # free bytes left over after the data is written


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5g', '4096' -> bytes (binary units), for argparse."""
    try:
        return config.parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub: Any) -> None:
    b = sub.add_parser("bench", help="benchmark the data path against fio, memcpy and the peers")
    suites = (*SUITES, *ON_REQUEST, "all")
    b.add_argument("suite", nargs="?", default="all", choices=suites, help="what to measure (default: all)")
    b.add_argument("--dir", help="directory for the data (default: a temporary directory in $STORECOMP_BENCH_DIR or /tmp)")
    b.add_argument(
        "--size",
        type=parse_size,
        default=None,
        help="data size (default: $STORECOMP_BENCH_SIZE, else 1G for one suite, 256M for all)",
    )
    b.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per measurement (default: $STORECOMP_BENCH_DURATION, else 3; 1 for all)",
    )
    b.add_argument("--repeats", type=int, default=2, help="interleaved rounds per comparison (default 2)")
    b.add_argument("--json", metavar="FILE", help="write the results as JSON")
    b.add_argument("--plot", metavar="FILE.png", help="draw the ratios to the limits and peers (matplotlib)")
    b.add_argument("--compare", action="store_true", help="also run the peer libraries in the same run")
    paths = ("auto", "gds", "bounce", "posix")
    b.add_argument("--path", choices=paths, default="auto", help="device path for the GPU sweep (auto: each available)")
    b.add_argument("--no-fio", action="store_true", help="skip the fio baseline")
    b.add_argument("--keep", action="store_true", help="keep the generated data (a later run with --dir reuses it)")
    b.set_defaults(func=main)


def _check_output(flag: str, path: str | None) -> None:
    if path is None:
        return
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    writable = parent.is_dir() and os.access(parent, os.W_OK) and (not out.exists() or os.access(out, os.W_OK))
    if out.is_dir() or not writable:
        raise InvalidArgumentError(f"{flag} {path}: cannot write there (check the directory exists and is writable)")


def _check_writable(flag: str, directory: Path) -> None:
    """Create and remove a file in ``directory`` (permission bits say nothing for root or a read-only mount)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".storecomp-bench-probe-", dir=directory)
    except OSError as e:
        raise InvalidArgumentError(f"{flag} {directory}: cannot write there: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(probe)


def _check_space(directory: Path, size: int) -> None:
    existing = directory / DATA_FILE_NAME
    have = existing.stat().st_size if existing.exists() else 0
    free = shutil.disk_usage(directory).free
    if max(0, size - have) + _HEADROOM > free:
        raise InvalidArgumentError(
            f"{directory}: {size / 2**30:.2f} GiB requested but only {free / 2**30:.2f} GiB free; use --size or --dir"
        )


def main(args: argparse.Namespace) -> int:
    from ..bench import report

    _check_output("--json", args.json)
    _check_output("--plot", args.plot)
    env = config.BenchDefaults.load()
    whole = args.suite == "all"
    size = next(v for v in (args.size, env.size_bytes, 256 << 20 if whole else 1 << 30) if v is not None)
    duration = next(v for v in (args.duration, env.duration_s, 1.0 if whole else 3.0) if v is not None)
    if duration <= 0 or args.repeats < 1:
        raise InvalidArgumentError(f"--duration must be positive and --repeats at least 1, got {duration}, {args.repeats}")
    if args.plot:
        require("matplotlib", "--plot")  # before minutes of measuring, not after
    tmp = None
    if args.dir:
        directory = Path(args.dir)
        if not directory.is_dir():
            raise InvalidArgumentError(f"--dir {args.dir}: not a directory")
        _check_writable("--dir", directory)
    else:
        if env.directory:
            _check_writable("STORECOMP_BENCH_DIR", Path(env.directory))
        tmp = tempfile.mkdtemp(prefix="storecomp-bench-", dir=env.directory)
        directory = Path(tmp)
    before = set(os.listdir(directory))
    progress = _Progress()
    ctx = Context(
        str(directory), size, duration, repeats=args.repeats, fio=not args.no_fio, compare=args.compare,
        io_path=args.path, progress=progress,
    )  # fmt: skip
    results: dict[str, Any] = {}
    figures: list[report.Figure] = []
    hints: list[str] = []
    try:
        _check_space(directory, size)
        for name in SUITES if whole else (args.suite,):
            suite = importlib.import_module(f"storecomp.bench.{name}")
            progress(f"suite {name}")
            try:
                results[name] = suite.run_suite(ctx)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                free = shutil.disk_usage(directory).free
                raise InvalidArgumentError(
                    f"{directory}: the disk filled up during suite {name} ({e.strerror}; {free / 2**20:.0f} MiB free): "
                    "use a smaller --size or another --dir"
                ) from None
            figures += suite.figures(results[name])
            hints += getattr(suite, "hints", lambda _r: [])(results[name])
    finally:
        progress.close()
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not args.keep:
            for made in set(os.listdir(directory)) - before:  # only what this run wrote
                path = directory / made
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    tips = report.advice(figures, hints)
    print(report.table(figures))
    if tips:
        print("\nadvice:\n" + "\n".join(f"  - {t}" for t in tips))
    doc = {
        "schema": "storecomp.bench/1",
        "suite": args.suite,
        "size_bytes": size,
        "duration_s": duration,
        "figures": [f.as_dict() for f in figures],
        "advice": tips,
        "results": results,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    if args.plot:
        report.plot(figures, args.plot)
    return 0


class _Progress:
    """Progress on stderr: a live rich status line on a terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self._status: Any = None
        if sys.stderr.isatty():
            try:
                from rich.console import Console
            except ImportError:
                return
            self._status = Console(stderr=True).status("storecomp bench")
            self._status.start()

    def __call__(self, message: str) -> None:
        if self._status is not None:
            self._status.update(message)
        else:
            print(f"  .. {message}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._status is not None:
            self._status.stop()
