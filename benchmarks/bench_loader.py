"""The DataLoader next to fio and torch.utils.data.DataLoader, measured in one run.

    python benchmarks/bench_loader.py --dir /nvme/scratch --size 2G --duration 5 --json loader.json

Cases (all random order, batch 64, cold page cache when the process may drop it):

* ``rand_64k``: 64 KiB samples from storecomp shards vs ``fio --rw=randread
  --bs=64k --iodepth=32 --direct=1`` and vs torch DataLoader (best of
  num_workers 0, 2, 4; a Dataset indexing one .npy memmap of the same rows);
* ``rand_4k``: the same with 4 KiB samples vs fio at 4 KiB;
* ``tokens``: windows of 2049 uint16 tokens at random offsets of a token
  .npy vs fio randread at the same read size (4098 B; fio rounds to 4 KiB
  blocks, reported as such);
* ``data_wait``: a simulated training step 1.5x longer than the loader
  needs per batch; data-wait fraction after the first 10 batches, storecomp
  and torch DataLoader (num_workers 2) side by side;
* ``rss``: peak RSS growth of a process running the loader vs ``max_memory``.

``--tiny`` is the smoke run the test suite uses (small sizes, fractions of a
second, no torch workers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from storecomp.bench._common import can_drop_caches, drop_caches
from storecomp.bench._fio import fio_path, fio_read
from storecomp.cli.bench import parse_size
from storecomp.data import DataLoader, write_dataset

BATCH = 64


def make_data(directory: str, size: int, say: Any) -> dict[str, str]:
    """A .npy of random 64 KiB rows, shard datasets of 64 KiB and 4 KiB samples, a uint16 token .npy."""
    paths = {k: os.path.join(directory, v) for k, v in (("npy", "x64k.npy"), ("npy4k", "x4k.npy"), ("tokens", "tokens.npy"))}
    paths.update(shards64=os.path.join(directory, "ds64k"), shards4=os.path.join(directory, "ds4k"))
    rows = size // 65536
    if not os.path.exists(paths["npy"]) or np.load(paths["npy"], mmap_mode="r").shape[0] != rows:
        say(f"writing {size / 2**30:.2f} GiB of data in {directory}")
        rng = np.random.default_rng(0)
        for key, shape, dtype in (
            ("npy", (rows, 65536), np.uint8),
            ("npy4k", (rows * 16, 4096), np.uint8),
            ("tokens", (size // 2,), np.uint16),
        ):
            arr = np.lib.format.open_memmap(paths[key], mode="w+", dtype=dtype, shape=shape)
            flat = arr.reshape(-1).view(np.uint8)
            step = 64 << 20
            for i in range(0, flat.size, step):
                flat[i : i + step] = rng.integers(0, 256, min(step, flat.size - i), np.uint8)
            arr.flush()
            del arr, flat
        for key, src in (("shards64", "npy"), ("shards4", "npy4k")):
            if os.path.exists(paths[key]):
                import shutil

                shutil.rmtree(paths[key])
            write_dataset(paths[key], {"x": np.load(paths[src], mmap_mode="r")}, shard_bytes=min(256 << 20, size // 4))
    return paths


DROP = True


def cold() -> bool:
    """Drop the page cache (when allowed and not --hot); True when dropped."""
    ok, _ = can_drop_caches()
    if ok and DROP:
        drop_caches()
    return ok and DROP


def run_storecomp(source: Any, duration: float, step_s: float = 0.0, **kw: Any) -> dict[str, Any]:
    loader = DataLoader(source, BATCH, seed=1, shuffle_block=1, shuffle_window=1, **kw)
    it = iter(loader)
    next(it)  # start-up (staging pool, first reads) is not timed, for storecomp nor torch
    loader.reset_metrics()
    t0 = time.perf_counter()
    n = batches = 0
    for b in it:
        n += next(iter(b.values())).shape[0]
        batches += 1
        if step_s:
            time.sleep(step_s)
        if time.perf_counter() - t0 > duration and batches >= 2:
            break
    dt = time.perf_counter() - t0
    m = loader.metrics()
    nbytes = m["bytes"]
    return {
        "samples_per_s": n / dt,
        "gbps": nbytes / dt / 1e9,
        "seconds": dt,
        "batches": batches,
        "data_wait_fraction": m["data_wait_fraction"],
        "data_wait_fraction_after_10": m["data_wait_fraction_after_10"],
        "read_ahead": m["read_ahead"],
        "bottleneck": m["bottleneck"],
    }


class _NpyRows:
    """The torch baseline: a map-style Dataset indexing one .npy memmap."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.arr: Any = None
        self.n = int(np.load(path, mmap_mode="r").shape[0])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        import torch

        if self.arr is None:
            self.arr = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self.arr[i]))


def run_torch(path: str, duration: float, workers: int, step_s: float = 0.0) -> dict[str, Any]:
    import torch.utils.data as tud

    loader = tud.DataLoader(_NpyRows(path), batch_size=BATCH, shuffle=True, num_workers=workers)
    n = batches = 0
    wait = wait10 = 0.0
    it = iter(loader)
    next(it)  # start-up (worker processes) not timed
    t0 = time.perf_counter()
    while True:
        a = time.perf_counter()
        b = next(it, None)
        w = time.perf_counter() - a
        if b is None:
            break
        wait += w
        if batches < 10:
            wait10 += w
        n += b.shape[0]
        batches += 1
        if step_s:
            time.sleep(step_s)
        if time.perf_counter() - t0 > duration and batches >= 2:
            break
    dt = time.perf_counter() - t0
    del it
    after = dt - wait10
    return {
        "num_workers": workers,
        "samples_per_s": n / dt,
        "gbps": n * np.load(path, mmap_mode="r")[0].nbytes / dt / 1e9,
        "data_wait_fraction": wait / dt,
        "data_wait_fraction_after_10": (wait - wait10) / after if after > 0 else 0.0,
    }


def rss_probe(path: str, duration: float, max_memory: int) -> dict[str, Any]:
    """Peak RSS growth (VmHWM, reset before the loader starts) of a fresh process running the loader."""
    code = (
        "import json, time\n"
        "import torch, numpy\n"
        "from storecomp.data import DataLoader\n"
        "def hwm():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024\n"
        "open('/proc/self/clear_refs', 'w').write('5')  # reset the peak (VmHWM) to the current RSS\n"
        "before = hwm()\n"
        f"loader = DataLoader({path!r}, {BATCH}, seed=1, max_memory={max_memory})\n"
        "t0 = time.perf_counter()\n"
        "for b in loader:\n"
        f"    if time.perf_counter() - t0 > {duration}: break\n"
        "print(json.dumps({'rss_before': before, 'rss_peak': hwm(), 'staging_bytes': loader.metrics()['staging_bytes']}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True).stdout
    doc = json.loads(out.strip().splitlines()[-1])
    doc["growth"] = doc["rss_peak"] - doc["rss_before"]
    doc["max_memory"] = max_memory
    doc["holds"] = doc["staging_bytes"] <= max_memory and doc["growth"] <= max_memory + (32 << 20)
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="directory for the data (default: a temporary directory)")
    p.add_argument("--size", type=parse_size, default=parse_size("2G"), help="data size per case (default 2G)")
    p.add_argument("--duration", type=float, default=4.0, help="seconds per measurement (default 4)")
    p.add_argument("--workers", default="0,2,4", help="torch DataLoader num_workers to try (default 0,2,4)")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--hot", action="store_true", help="do not drop the page cache")
    p.add_argument("--tiny", action="store_true", help="smoke run: 8 MiB, 0.2 s, hot cache, torch num_workers 0 only")
    args = p.parse_args(argv)
    if args.tiny:
        args.size, args.duration, args.workers, args.hot = 8 << 20, 0.2, "0", True
    global DROP
    DROP = not args.hot
    workers = [int(w) for w in args.workers.split(",")]
    say = print
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="storecomp-bench-loader-")
        args.dir = tmp.name
    os.makedirs(args.dir, exist_ok=True)
    paths = make_data(args.dir, args.size, say)
    have_fio = fio_path() is not None
    res: dict[str, Any] = {
        "size_bytes": args.size,
        "duration_s": args.duration,
        "cold": can_drop_caches()[0] and not args.hot,
        "cases": {},
    }

    def fio(bs: int, path: str) -> dict[str, Any] | None:
        if not have_fio:
            return None
        cold()
        return fio_read(path, "randread", bs, 32, args.duration)

    def best_torch(path: str) -> dict[str, Any]:
        runs = []
        for w in workers:
            cold()
            runs.append(run_torch(path, args.duration, w))
        return max(runs, key=lambda r: r["samples_per_s"])

    for case, shards, npy, bs in (("rand_64k", "shards64", "npy", 65536), ("rand_4k", "shards4", "npy4k", 4096)):
        say(f"{case}: fio, storecomp, torch DataLoader")
        f = fio(bs, paths[npy])
        cold()
        sc = run_storecomp(paths[shards], args.duration)
        tt = best_torch(paths[npy])
        res["cases"][case] = {"fio": f, "storecomp": sc, "torch": tt}
    say("tokens: fio, storecomp")
    f = fio(4096, paths["tokens"])
    cold()
    sc = run_storecomp(paths["tokens"], args.duration, seq_len=2048)
    res["cases"]["tokens"] = {"fio": f, "storecomp": sc}
    # A step 1.5x longer than the loader needs per batch (measured above, cold).
    per_batch = BATCH / max(1.0, res["cases"]["rand_64k"]["storecomp"]["samples_per_s"])
    step = min(1.5 * per_batch, 0.05 if args.tiny else 1.0)
    dur = max(args.duration, 30 * step)
    say(f"data_wait: simulated step {step * 1000:.1f} ms")
    cold()
    sc = run_storecomp(paths["shards64"], dur, step_s=step)
    cold()
    tt = run_torch(paths["npy"], dur, min(2, max(workers)), step_s=step)
    res["cases"]["data_wait"] = {"step_s": step, "storecomp": sc, "torch": tt}
    say("rss")
    res["cases"]["rss"] = rss_probe(paths["shards64"], args.duration, 64 << 20)
    print(report(res))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 0


def report(res: dict[str, Any]) -> str:
    lines = [f"{'case':10} {'storecomp':>14} {'limit (fio)':>14} {'ratio':>7} {'torch DL':>14} {'x torch':>8}"]
    for case in ("rand_64k", "rand_4k", "tokens"):
        c = res["cases"][case]
        sc = c["storecomp"]["samples_per_s"]
        f = c.get("fio")
        limit = f["iops"] if f else None
        t = c.get("torch")
        ts = t["samples_per_s"] if t else None
        lim_s = f"{limit:12.0f}/s" if limit else "n/a"
        ratio_s = f"{sc / limit:.2f}" if limit else "n/a"
        t_s = f"{ts:12.0f}/s" if ts else ""
        x_s = f"{sc / ts:.1f}" if ts else ""
        lines.append(f"{case:10} {sc:12.0f}/s {lim_s:>14} {ratio_s:>7} {t_s:>14} {x_s:>8}")
    dw = res["cases"]["data_wait"]
    lines.append(
        f"data_wait  step {dw['step_s'] * 1000:.1f} ms: storecomp {dw['storecomp']['data_wait_fraction_after_10']:.3f}, "
        f"torch {dw['torch']['data_wait_fraction_after_10']:.3f} (fraction of wall time after 10 batches)"
    )
    r = res["cases"]["rss"]
    lines.append(
        f"rss        peak growth {r['growth'] / 2**20:.1f} MiB, staging {r['staging_bytes'] / 2**20:.1f} MiB, "
        f"max_memory {r['max_memory'] / 2**20:.0f} MiB: {'holds' if r['holds'] else 'EXCEEDED'}"
    )
    lines.append(f"page cache dropped before each measurement: {res['cold']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
