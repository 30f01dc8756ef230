"""Cache-hit reads of the node-local cache tier next to plain local file reads, in one run.

    python benchmarks/bench_cache.py --size 1G --duration 3 --json cache.json

Both sides read the same bytes through the native engine (LocalStore) with
the page cache hot: "plain" reads a file of a LocalStore directly; "cache"
reads the same object through a warm :class:`CachedStore` (whole-object
entries), once with ``verify="always"`` (crc32c of every chunk read, the
default) and once with ``verify="once"`` (each chunk checked on its first
read in the process; the object is read once before measuring, so these
are steady-state hits). Workloads: large reads (4 MiB per call, moving
sequentially) and 64 KiB random reads (64 ranges per call). Rates come
from the median call time; measurements alternate plain/cache and the best
of ``--repeats`` rounds is kept; the ratio is cache / plain (the issue's
target is >= 0.9). ``--tiny`` is the smoke run the test suite uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from storecomp.store import CachedStore, LocalStore, Store

MiB = 1 << 20


def _rate(fn: Callable[[], int], duration: float) -> float:
    """Bytes per second of ``fn`` (one call returns the bytes it read), from the
    median call time over about ``duration`` seconds (robust to noise from
    other processes on a shared machine)."""
    fn()  # warm
    times, n, t0 = [], 0, time.perf_counter()
    while time.perf_counter() - t0 < duration or len(times) < 5:
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return n / float(np.median(times))


def _large(store: Store, size: int) -> Callable[[], int]:
    step = 4 * MiB
    buf = np.empty(step, np.uint8)
    offs = list(range(0, size - step + 1, step))
    pos = [0]

    def run() -> int:
        store.read_ranges("data", [offs[pos[0] % len(offs)]], [step], buf, [0])
        pos[0] += 1
        return step

    return run


def _random_64k(store: Store, size: int, seed: int = 0) -> Callable[[], int]:
    ln, batch = 64 << 10, 64
    rng = np.random.default_rng(seed)
    buf = np.empty(ln * batch, np.uint8)
    douts = np.arange(batch, dtype=np.int64) * ln
    lens = np.full(batch, ln, np.int64)

    def run() -> int:
        offs = rng.integers(0, size // ln, batch) * ln
        store.read_ranges("data", offs, lens, buf, douts)
        return ln * batch

    return run


def run_bench(workdir: str, size: int, duration: float, repeats: int) -> dict[str, object]:
    root = Path(workdir)
    remote = LocalStore(root / "remote")
    remote.put("data", np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))
    caches = {mode: CachedStore(remote, root / f"cache-{mode}", 2 * size + MiB, verify=mode) for mode in ("always", "once")}
    for c in caches.values():
        c.get("data")  # fill, and read once: steady-state hits (verify="once" has checked every chunk)
    results: dict[str, object] = {"size_bytes": size, "duration_s": duration, "repeats": repeats, "cases": {}}
    for case, make in (("large_4m", _large), ("random_64k", _random_64k)):
        best: dict[str, float] = {}
        for r in range(repeats):
            order = [("plain", remote), *((f"cache_{m}", c) for m, c in caches.items())]
            if r % 2:
                order.reverse()
            for name, store in order:
                rate = _rate(make(store, size), duration)
                best[name] = max(best.get(name, 0.0), rate)
        cases = results["cases"]
        assert isinstance(cases, dict)
        cases[case] = {
            **{f"{k}_gbps": v / 1e9 for k, v in best.items()},
            "ratio_always": best["cache_always"] / best["plain"],
            "ratio_once": best["cache_once"] / best["plain"],
        }
    for c in caches.values():
        assert c.stats.misses == 1, "every measured read must be a cache hit"
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--dir", help="work directory (default: a temporary directory)")
    p.add_argument("--size", type=int, default=512 * MiB, help="object size in bytes (default 512 MiB)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per measurement (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--tiny", action="store_true", help="smoke run: 8 MiB, 0.05 s, one round")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.duration, args.repeats = 8 * MiB, 0.05, 1
    with tempfile.TemporaryDirectory(prefix="storecomp-bench-cache-") as tmp:
        res = run_bench(args.dir or tmp, args.size, args.duration, args.repeats)
    print(f"{'case':12} {'plain GB/s':>11} {'cache GB/s':>11} {'ratio':>6} {'cache(once)':>12} {'ratio':>6}")
    cases = res["cases"]
    assert isinstance(cases, dict)
    for case, r in cases.items():
        print(
            f"{case:12} {r['plain_gbps']:11.2f} {r['cache_always_gbps']:11.2f} {r['ratio_always']:6.2f} "
            f"{r['cache_once_gbps']:12.2f} {r['ratio_once']:6.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
