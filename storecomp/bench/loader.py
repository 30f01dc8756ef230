"""The DataLoader next to fio and torch.utils.data.DataLoader, measured in one run.

Cases (random order, batch 64, each data file evicted from the page cache
before each measurement):

* ``rand_64k``: 64 KiB samples from storecomp shards vs ``fio --rw=randread
  --bs=64k --iodepth=32 --direct=1`` on a file of the same rows; with
  ``compare``, torch DataLoader as a peer (best of num_workers 0, 2, 4; a
  Dataset indexing one .npy memmap of the same rows);
* ``rand_4k``: the same with 4 KiB samples vs fio at 4 KiB;
* ``tokens``: windows of 2049 uint16 tokens at random offsets of a token
  .npy, read as they are: windows/s vs fio randread IOPS at 8 KiB. A
  4098-byte window at a random offset spans two 4 KiB blocks, so an
  O_DIRECT read of it is an 8 KiB device read: fio at 8 KiB does the same
  device work per request (fio at 4 KiB would do half);
* ``data_wait``: a simulated training step 1.5x longer than the loader
  needs per batch; the fraction of wall time blocked in ``next()`` after
  the first 10 batches (torch DataLoader with 2 workers beside it with
  ``compare``);
* ``rss``: peak growth of a fresh process's own memory (``RssAnon +
  RssShmem``) running the loader vs its ``max_memory`` staging budget, which
  must hold; the page cache its mapped reads map (``RssFile``) is reported
  beside it, not counted;
* ``hot_64k``: whole epochs of the 64 KiB data set (it fits in memory: the
  loader's page-cache tier reads it buffered), the first from a cold page
  cache. Cold epoch vs fio O_DIRECT randread (64 KiB, iodepth 32, measured
  just before it);
  later epochs (at least two, more while they add up to under ``--duration``:
  their median) vs fio buffered randread of the cached .npy with two psync
  jobs (one job and torch DataLoader over the cached memmap, num_workers
  0/2/4, as peers);
* ``user_buffer_64k``: random 64 KiB O_DIRECT reads, batches of 64, into a
  plain ``np.empty`` array (not page-aligned) vs into staging slots.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import time
from typing import Any

import numpy as np

from . import Context, _fio
from ._common import Window, cache_file, evict, evict_tree, run_child
from .report import Figure

BATCH = 64
TARGETS = {"rand_64k": 0.9, "rand_4k": 0.8, "tokens": 0.9, "hot_64k": 0.7, "cold_epoch_64k": 0.9, "user_buffer_64k": 0.9}
#: hot_64k epochs shorter than this many batches are mostly the read-ahead's start-up and drain.
SHORT_EPOCH_BATCHES = 256
HOT_EPOCHS_MIN = 2  #: hot epochs of the hot_64k case at least (after the cold one), more while they last under --duration
TORCH_TARGET = 3.0  #: storecomp / best torch DataLoader, 64 KiB samples
WAIT_TARGET = 0.01  #: data-wait fraction after the first 10 batches
RSS_BUDGET = 64 << 20
TORCH_WORKERS = (0, 2, 4)  #: num_workers tried for the torch peer (best reported)
CASES = ("rand_64k", "rand_4k", "tokens", "data_wait", "rss", "hot_64k", "user_buffer_64k")
#: The cases run_suite measures (benchmarks/bench_loader.py --cases narrows it; data_wait needs rand_64k).
SELECTED: tuple[str, ...] = CASES


def make_data(directory: str, size: int, say: Any) -> dict[str, str]:
    """A .npy of random 64 KiB rows and one of 4 KiB rows, shard datasets of both, a uint16 token .npy.

    Reused when present with the right size.
    """
    from ..data import write_dataset

    base = os.path.join(directory, "storecomp-bench-loader")
    os.makedirs(base, exist_ok=True)
    paths = {k: os.path.join(base, v) for k, v in (("npy", "x64k.npy"), ("npy4k", "x4k.npy"), ("tokens", "tokens.npy"))}
    paths.update(shards64=os.path.join(base, "ds64k"), shards4=os.path.join(base, "ds4k"))
    rows = max(BATCH * 4, size // 65536)
    # Only what the selected cases read: the 4 KiB rows for rand_4k, the tokens for tokens.
    arrays = [k for k in ("npy", "npy4k", "tokens") if k == "npy" or {"npy4k": "rand_4k", "tokens": "tokens"}[k] in SELECTED]
    shard_sets = [k for k in ("shards64", "shards4") if k == "shards64" or "npy4k" in arrays]
    complete = all(os.path.exists(paths[k]) for k in arrays if k != "npy") and all(
        os.path.exists(os.path.join(paths[k], "manifest.json")) for k in shard_sets
    )
    if complete and os.path.exists(paths["npy"]) and np.load(paths["npy"], mmap_mode="r").shape[0] == rows:
        return paths  # a run interrupted while writing leaves some missing: those are written again
    say(f"writing {rows * 65536 / 2**30:.2f} GiB of loader data per kind ({', '.join(arrays)}) in {base}")
    rng = np.random.default_rng(0)
    for key, shape, dtype in (
        ("npy", (rows, 65536), np.uint8),
        ("npy4k", (rows * 16, 4096), np.uint8),
        ("tokens", (rows * 32768,), np.uint16),
    ):
        if key not in arrays:
            continue
        arr = np.lib.format.open_memmap(paths[key], mode="w+", dtype=dtype, shape=shape)
        with open(paths[key], "r+b") as f:  # a full disk is ENOSPC here, not SIGBUS on a later store into the map
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        flat = arr.reshape(-1).view(np.uint8)
        step = 64 << 20
        for i in range(0, flat.size, step):
            flat[i : i + step] = rng.integers(0, 256, min(step, flat.size - i), np.uint8)
        arr.flush()
        del arr, flat
    for key, src in (("shards64", "npy"), ("shards4", "npy4k")):
        if key not in shard_sets:
            continue
        shutil.rmtree(paths[key], ignore_errors=True)
        write_dataset(paths[key], {"x": np.load(paths[src], mmap_mode="r")}, shard_bytes=max(1 << 20, min(256 << 20, size // 4)))
    return paths


def run_storecomp(source: Any, duration: float, step_s: float = 0.0, **kw: Any) -> dict[str, Any]:
    """Iterate storecomp.DataLoader for ``duration`` seconds (start-up untimed)."""
    from ..data import DataLoader

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
    loader.close()
    return {
        "samples_per_s": n / dt,
        "gbps": m["bytes"] / dt / 1e9,
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
    """torch.utils.data.DataLoader over a .npy memmap, the same batch size and order kind."""
    import torch.utils.data as tud

    # forkserver: workers start from a clean process, not a fork of this one,
    # whose native I/O threads (storecomp's engine) a forked child must not inherit.
    ctx = "forkserver" if workers else None
    dataset: Any = _NpyRows(path)  # map-style: __len__ and __getitem__
    loader: Any = tud.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, multiprocessing_context=ctx)
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
        "data_wait_fraction": wait / dt,
        "data_wait_fraction_after_10": (wait - wait10) / after if after > 0 else 0.0,
    }


def run_epochs(source: Any, duration: float, hot_min: int = HOT_EPOCHS_MIN) -> list[dict[str, Any]]:
    """Epochs of storecomp.DataLoader (batch 64, random order): the first whole (it fills the page
    cache when the tier is buffered), then later ones, each for at most ``duration`` seconds, until
    they add up to ``duration`` seconds (at least ``hot_min`` of them): as long as fio's measurement
    they are compared with, not a few short epochs that one scheduling hiccup moves."""
    from ..data import DataLoader

    loader = DataLoader(source, BATCH, seed=1, shuffle_block=1, shuffle_window=1)
    out: list[dict[str, Any]] = []
    hot_s = 0.0
    try:
        epoch = 0
        while epoch <= hot_min or (hot_s < duration and epoch < 1000):
            loader.epoch = epoch
            # The interpreter's one full collection after the imports (torch: ~170k objects, 0.1-0.2 s)
            # falls on whichever loop runs then; collected here, it lands in no timed epoch.
            gc.collect()
            loader.reset_metrics()
            t0 = time.perf_counter()
            n = 0
            for b in loader:
                n += next(iter(b.values())).shape[0]
                if epoch and time.perf_counter() - t0 > duration:
                    break
            dt = time.perf_counter() - t0
            if epoch:
                hot_s += dt
            m = loader.metrics()
            out.append({
                "epoch": epoch, "samples_per_s": n / dt, "samples": n, "tier": m["tier"], "tier_reason": m["tier_reason"],
                "read_path": m.get("read_path", ""), "bottleneck": m["bottleneck"],
            })  # fmt: skip
            epoch += 1
    finally:
        loader.close()
    return out


def run_user_buffer(path: str, duration: float) -> dict[str, Any]:
    """Random 64 KiB O_DIRECT reads (batches of 64, 4 in flight) into ``np.empty`` arrays vs staging slots."""
    from ..io import Engine, StagingPool

    size = os.path.getsize(path)
    blocks = (size - 4096) // 65536
    out: dict[str, Any] = {}
    with Engine(direct="on", queue_depth=32) as eng:
        f = eng.open(path)
        pool = StagingPool(4 * BATCH * 65536, BATCH * 65536, engine=eng)
        slots = [pool.acquire() for _ in range(4)]
        user = [np.empty(BATCH * 65536, np.uint8) for _ in range(4)]
        for a in user:
            a.fill(0)
        rng = np.random.default_rng(2)
        dst = np.arange(BATCH, dtype=np.uint64) * np.uint64(65536)
        for rnd in range(2):
            for name, arrays in (("numpy", user), ("slot", [s.array for s in slots]))[:: 1 if rnd % 2 == 0 else -1]:
                evict(path)

                def submit(a: np.ndarray) -> Any:
                    offs = 4096 + rng.integers(0, blocks, BATCH, dtype=np.uint64) * np.uint64(65536)
                    return f.read_many_into(a, offs, 65536, dst)

                window = Window()
                futs = [submit(a) for a in arrays]
                n = i = 0
                while time.perf_counter() - window._t0 < duration:
                    futs[i % 4].result()
                    n += BATCH
                    futs[i % 4] = submit(arrays[i % 4])
                    i += 1
                for fu in futs:
                    fu.result()
                seconds, _, _ = window.close()
                out.setdefault(name, []).append(n / seconds)
        pool.close()
    res: dict[str, Any] = {k: float(np.median(v)) for k, v in out.items()}
    res["numpy_address_mod_4096"] = int(user[0].ctypes.data % 4096)
    res["ratio"] = res["numpy"] / res["slot"] if res["slot"] else None
    return res


def rss_probe(path: str, duration: float, max_memory: int) -> dict[str, Any]:
    """Peak growth of a fresh process's own memory (anonymous and shared: ``RssAnon + RssShmem``,
    sampled every 5 ms) while it runs the loader, and apart from it the page cache it maps
    (``RssFile``: the engine's mappings of resident shards, which the kernel reclaims like any page
    cache and which VmHWM would count as the loader's memory)."""
    code = (
        "import json, threading, time\n"
        "import torch, numpy\n"
        "from storecomp.data import DataLoader\n"
        "def rss():\n"
        "    d = {}\n"
        "    for line in open('/proc/self/status'):\n"
        "        k, _, v = line.partition(':')\n"
        "        if k in ('RssAnon', 'RssFile', 'RssShmem'):\n"
        "            d[k] = int(v.split()[0]) * 1024\n"
        "    return d['RssAnon'] + d['RssShmem'], d['RssFile']\n"
        "before = rss()\n"
        "peak = list(before)\n"
        "done = threading.Event()\n"
        "def sample():\n"
        "    while not done.wait(0.005):\n"
        "        now = rss()\n"
        "        peak[0], peak[1] = max(peak[0], now[0]), max(peak[1], now[1])\n"
        "sampler = threading.Thread(target=sample, daemon=True)\n"
        "sampler.start()\n"
        f"loader = DataLoader({path!r}, {BATCH}, seed=1, max_memory={max_memory})\n"
        "t0 = time.perf_counter()\n"
        "for b in loader:\n"
        f"    if time.perf_counter() - t0 > {duration}: break\n"
        "done.set()\n"
        "sampler.join()\n"
        "now = rss()\n"
        "peak = [max(peak[0], now[0]), max(peak[1], now[1])]\n"
        "print(json.dumps({'rss_before': before[0], 'rss_peak': peak[0], 'mapped_before': before[1], "
        "'mapped_peak': peak[1], 'staging_bytes': loader.metrics()['staging_bytes']}))\n"
    )
    # -P: the child must import the installed storecomp, not a source tree in the current directory
    # (a checkout where `pip install .` ran has no built _native module).
    out = run_child([sys.executable, "-P", "-c", code], "the loader's peak-RSS probe (a child Python)", 300).stdout
    doc = json.loads(out.strip().splitlines()[-1])
    doc["growth"] = doc["rss_peak"] - doc["rss_before"]
    doc["mapped_growth"] = doc["mapped_peak"] - doc["mapped_before"]
    doc["max_memory"] = max_memory
    doc["holds"] = doc["staging_bytes"] <= max_memory and doc["growth"] <= max_memory + (32 << 20)
    return doc


def run_suite(ctx: Context) -> dict[str, Any]:
    """Measure every case; fio and the torch peer as the context asks."""
    paths = make_data(ctx.directory, ctx.size_bytes, ctx.say)
    fio_skip = _fio.skip_reason(ctx.fio)
    use_fio = fio_skip is None
    workers = TORCH_WORKERS if ctx.compare else ()
    res: dict[str, Any] = {"size_bytes": ctx.size_bytes, "duration_s": ctx.duration_s, "fio_skipped": fio_skip, "cases": {}}

    def fio(bs: int, path: str) -> dict[str, Any] | None:
        if not use_fio:
            return None
        evict(path)
        try:
            return _fio.fio_read(path, "randread", bs, 32, ctx.duration_s)
        except (RuntimeError, OSError, ValueError, KeyError) as e:
            return {"error": str(e)}

    def best_torch(path: str) -> dict[str, Any] | None:
        runs = []
        for w in workers:
            evict(path)
            ctx.say(f"  torch DataLoader num_workers={w}")
            runs.append(run_torch(path, ctx.duration_s, w))
        return max(runs, key=lambda r: r["samples_per_s"]) if runs else None

    for case, shards, npy, bs in (("rand_64k", "shards64", "npy", 65536), ("rand_4k", "shards4", "npy4k", 4096)):
        if case not in SELECTED:
            continue
        ctx.say(f"loader {case}")
        f = fio(bs, paths[npy])
        evict_tree(paths[shards])
        sc = run_storecomp(paths[shards], ctx.duration_s)
        res["cases"][case] = {"fio": f, "storecomp": sc, "torch": best_torch(paths[npy])}
    if "tokens" in SELECTED:
        ctx.say("loader tokens")
        f = fio(8192, paths["tokens"])
        evict(paths["tokens"])
        res["cases"]["tokens"] = {"fio": f, "storecomp": run_storecomp(paths["tokens"], ctx.duration_s, seq_len=2048)}
    if "data_wait" in SELECTED and "rand_64k" in res["cases"]:
        # A step 1.5x longer than the loader needs per batch (measured above, cold).
        per_batch = BATCH / max(1.0, res["cases"]["rand_64k"]["storecomp"]["samples_per_s"])
        step = min(1.5 * per_batch, 0.2)
        dur = max(ctx.duration_s, 30 * step)
        ctx.say(f"loader data_wait: simulated step {step * 1000:.1f} ms")
        evict_tree(paths["shards64"])
        wait: dict[str, Any] = {"step_s": step, "storecomp": run_storecomp(paths["shards64"], dur, step_s=step)}
        if ctx.compare:
            evict(paths["npy"])
            wait["torch"] = run_torch(paths["npy"], dur, min(2, max(TORCH_WORKERS)), step_s=step)
        res["cases"]["data_wait"] = wait
    if "rss" in SELECTED:
        ctx.say("loader rss")
        res["cases"]["rss"] = rss_probe(paths["shards64"], ctx.duration_s, RSS_BUDGET)
    if "hot_64k" in SELECTED:
        ctx.say("loader hot_64k: epochs of a data set that fits in memory")
        res["cases"]["hot_64k"] = _run_hot(ctx, paths, fio, use_fio, workers)
    if "user_buffer_64k" in SELECTED:
        ctx.say("loader user_buffer_64k")
        res["cases"]["user_buffer_64k"] = run_user_buffer(paths["npy"], ctx.duration_s)
    return res


def _run_hot(ctx: Context, paths: dict[str, str], fio: Any, use_fio: bool, workers: tuple[int, ...]) -> dict[str, Any]:
    """The hot_64k case: fio O_DIRECT, the loader's epochs from a dropped cache, then fio buffered and torch, cached."""
    # fio O_DIRECT right before the cold epoch: the limit it is compared with, a minute apart at most
    # (rand_64k's was measured minutes earlier, and a shared machine's device rate drifts).
    hot: dict[str, Any] = {"fio_direct": fio(65536, paths["npy"])}
    evict_tree(paths["shards64"])
    hot["storecomp"] = run_epochs(paths["shards64"], ctx.duration_s)
    if use_fio:
        cache_file(paths["npy"])
        for jobs in (1, 2):
            try:
                hot[f"fio_buffered_{jobs}"] = _fio.fio_read(
                    paths["npy"], "randread", 65536, 1, ctx.duration_s, buffered=True, jobs=jobs
                )
            except (RuntimeError, OSError, ValueError, KeyError) as e:
                hot[f"fio_buffered_{jobs}"] = {"error": str(e)}
    if workers:
        runs = []
        for w in workers:
            cache_file(paths["npy"])
            ctx.say(f"  torch DataLoader num_workers={w} (cached)")
            runs.append(run_torch(paths["npy"], ctx.duration_s, w))
        hot["torch"] = runs
    return hot


def figures(result: dict[str, Any]) -> list[Figure]:
    out = []
    for case in ("rand_64k", "rand_4k", "tokens"):
        if case not in result["cases"]:
            continue
        c = result["cases"][case]
        sc = c["storecomp"]
        f = c.get("fio")
        note = f"bottleneck: {sc['bottleneck']}; read-ahead {sc['read_ahead']} batches"
        # samples/s against fio's IOPS at the same device read size (tokens: 8 KiB, see the module doc)
        value, unit = sc["samples_per_s"], "samples/s"
        limit = ("fio", f["iops"]) if f and "iops" in f else None
        if sc["gbps"] * 1e9 * sc["seconds"] > result["size_bytes"]:
            note += "; NOT COLD: the run read more than the dataset (later passes hit the page cache), use a larger --size"
        if f is None:
            note += f"; limit skipped: {result['fio_skipped']}"
        elif "error" in f:
            note += f"; fio failed: {f['error']}"
        peers = {}
        if c.get("torch"):
            t = c["torch"]
            peers[f"torch DataLoader (num_workers={t['num_workers']})"] = t["samples_per_s"]
            if case == "rand_64k":
                note += f"; target >= {TORCH_TARGET}x torch DataLoader"
        out.append(Figure("loader", case, unit, value, limit, TARGETS[case], peers, note=note, bottleneck=sc["bottleneck"]))
    dw = result["cases"].get("data_wait")
    if dw:
        peers = {"torch DataLoader (num_workers=2)": dw["torch"]["data_wait_fraction_after_10"]} if "torch" in dw else {}
        out.append(Figure(
            "loader", "data_wait", "fraction", dw["storecomp"]["data_wait_fraction_after_10"], None, None, peers,
            higher_is_better=False,
            note=f"time blocked in next() after 10 batches, step {dw['step_s'] * 1000:.1f} ms; target <= {WAIT_TARGET}",
        ))  # fmt: skip
    r = result["cases"].get("rss")
    if r:
        out.append(Figure(
            "loader", "peak_rss", "MiB", r["growth"] / 2**20, None, None, {}, higher_is_better=False,
            note=f"max_memory {r['max_memory'] >> 20} MiB: {'holds' if r['holds'] else 'EXCEEDED'} (own memory: RssAnon + "
            f"RssShmem; page cache mapped besides: {r.get('mapped_growth', 0) / 2**20:.0f} MiB, reclaimable)",
        ))  # fmt: skip
    out.extend(_hot_figures(result))
    return out


def _hot_figures(result: dict[str, Any]) -> list[Figure]:
    cases = result["cases"]
    out = []
    hot = cases.get("hot_64k")
    if hot:
        epochs = hot["storecomp"]
        cold, later = epochs[0], epochs[1:]
        f = hot.get("fio_direct") or (cases.get("rand_64k") or {}).get("fio")
        out.append(Figure(
            "loader", "cold_epoch_64k", "samples/s", cold["samples_per_s"],
            ("fio O_DIRECT", f["iops"]) if f and "iops" in f else None, TARGETS["cold_epoch_64k"], {},
            note=f"first epoch, page cache dropped; tier {cold['tier']}: {cold['tier_reason']}",
            bottleneck=cold.get("bottleneck", ""),
        ))  # fmt: skip
        if later:
            value = float(np.median([e["samples_per_s"] for e in later]))
            f2, f1 = hot.get("fio_buffered_2") or {}, hot.get("fio_buffered_1") or {}
            peers = {"fio buffered 1 job": f1["iops"]} if "iops" in f1 else {}
            best = max(hot.get("torch") or [], key=lambda t: t["samples_per_s"], default=None)
            for t in hot.get("torch") or []:
                peers[f"torch DataLoader (num_workers={t['num_workers']})"] = t["samples_per_s"]
            note = f"epochs 1..{len(later)} (median), tier {later[-1]['tier']}"
            batches = cold["samples"] // BATCH
            if batches < SHORT_EPOCH_BATCHES:
                # Each epoch starts with an empty read-ahead and ends draining it: over a few batches
                # that, not the steady rate, is what is measured.
                note += f"; SHORT: an epoch is {batches} batches, mostly start-up and drain (use --size 1G or more)"
            if later[-1].get("read_path"):
                note += f", read path {later[-1]['read_path']}"
            if later[-1].get("bottleneck"):
                note += f"; bottleneck: {later[-1]['bottleneck']}"
            if best is not None:
                note += f"; {'at or above' if value >= best['samples_per_s'] else 'BELOW'} torch's best num_workers"
            out.append(Figure(
                "loader", "hot_64k", "samples/s", value,
                ("fio buffered 2 jobs", f2["iops"]) if "iops" in f2 else None, TARGETS["hot_64k"], peers, note=note,
                bottleneck=later[-1].get("bottleneck", ""),
            ))  # fmt: skip
    ub = cases.get("user_buffer_64k")
    if ub:
        out.append(Figure(
            "loader", "user_buffer_64k", "IOPS", ub["numpy"], ("staging slots", ub["slot"]), TARGETS["user_buffer_64k"], {},
            note=f"random 64 KiB O_DIRECT reads into np.empty (address % 4096 = {ub['numpy_address_mod_4096']})",
        ))  # fmt: skip
    return out


def hints(result: dict[str, Any]) -> list[str]:
    cases = result["cases"]
    out = []
    if "rand_64k" in cases:
        out.append(f"loader: bottleneck {cases['rand_64k']['storecomp']['bottleneck']} (from the loader's own metrics)")
    wait = cases["data_wait"]["storecomp"]["data_wait_fraction_after_10"] if "data_wait" in cases else 0.0
    if wait > WAIT_TARGET:
        out.append(f"loader: the training step waited {wait:.1%} of the time for data: raise max_memory (more read-ahead)")
    return out
