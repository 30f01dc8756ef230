"""The foundation read benchmark: storecomp's native engine next to fio and memcpy.

:func:`run_read_bench` measures, in one run and on one data file:

* ``seq_1m``: sequential 1 MiB O_DIRECT reads (io_uring, queue depth 32)
  against ``fio --rw=read --bs=1M --iodepth=32 --direct=1 --ioengine=io_uring``.
* ``rand_4k`` / ``rand_64k`` / ``rand_1m``: random aligned O_DIRECT reads at
  queue depth 32, io_uring (and, at 4 and 64 KiB, the 32-thread pread pool),
  against fio ``randread``; and the same io_uring reads into users' own
  buffers, which are rarely O_DIRECT-aligned: a plain ``np.empty`` array
  (``storecomp_numpy``) and a ``torch.empty`` tensor (``storecomp_torch``),
  next to the staging slots and a page-aligned numpy array
  (``storecomp_aligned``). ``user_buffer`` holds the ratios of the unaligned
  destinations to the aligned ones (per round, then the median), target 0.9.
* ``hot``: reads of a file already in the page cache, with ``direct="auto"``
  (RWF_NOWAIT, O_DIRECT on a miss) and ``direct="off"``, against
  single-threaded memcpy (``np.copyto`` of 256 MiB).

Every comparison runs ``repeats`` times interleaved (ours, the limit, ours,
the limit, ...) and reports medians, because this storage is noisy. CPU cost
is CPU-seconds per GB moved: ``getrusage`` of this process (every thread)
over the measured window for storecomp, fio's own ``usr_cpu + sys_cpu`` for
fio.
"""

from __future__ import annotations

import collections
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..config import IOOptions
from ..errors import StorecompError, UnavailableError
from ..io import Engine, StagingPool
from . import Context, _fio
from ._common import Run, Window, cache_file, data_file, evict, summarize
from .report import Figure

CASES = ("seq_1m", "rand_4k", "rand_64k", "rand_1m", "hot")
TARGETS = {"seq_1m": 0.95, "rand_4k": 0.9, "rand_64k": 0.9, "rand_1m": 0.9, "hot": 0.8}
USER_BUFFER_TARGET = 0.9  # unaligned destinations / aligned ones
_BLOCK = {"rand_4k": 4096, "rand_64k": 65536, "rand_1m": 1 << 20}

QUEUE_DEPTH = 32
_BATCH_BYTES = 32 << 20  # destination bytes per submitted batch
_BATCH_REQUESTS = 4096  # at most this many requests per batch
_SLOTS = 4  # batches in flight: the engine's queue depth bounds what the kernel sees
_MEMCPY_BYTES = 256 << 20

Progress = Callable[[str], None]


def run_read_bench(
    directory: str,
    size_bytes: int,
    duration_s: float,
    *,
    cases: Iterable[str] = CASES,
    fio: bool = True,
    drop_caches: bool = True,
    progress: Progress | None = None,
    repeats: int = 3,
    options: IOOptions | None = None,
) -> dict[str, Any]:
    """Run the read benchmark on a ``size_bytes`` file in ``directory``.

    ``size_bytes`` is rounded down to a whole MiB (at least 1 MiB); the file
    is reused when present with that size, and left in place (the caller
    deletes it). Each measurement lasts about ``duration_s`` seconds;
    ``repeats`` interleaved rounds are run per case. ``options`` is the base
    engine configuration (default ``IOOptions.load()``); the benchmark
    overrides engine, queue depth, threads and direct mode per measurement.

    Returns a JSON-able dict ``{"meta": {...}, "cases": {case: {...}}}``;
    each case holds ``storecomp`` (and where measured ``storecomp_threads``,
    ``storecomp_buffered``), each with median ``gbps``, ``iops`` and
    ``cpu_s_per_gb`` plus the single ``runs``; ``limit`` (fio or memcpy, or
    ``skipped`` with a reason); ``ratio`` (storecomp / limit, None when the
    limit was skipped), ``ratios`` per variant, ``target`` and
    ``meets_target``. Failures of fio are reported in the dict, never raised.
    Raises ValueError for an unknown case or a bad size or duration.
    """
    cases = tuple(cases)
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    if duration_s <= 0 or repeats < 1:
        raise ValueError("duration_s must be positive and repeats at least 1")
    size = max(1 << 20, size_bytes - size_bytes % (1 << 20))
    say = progress or (lambda _msg: None)
    base = options if options is not None else IOOptions.load()

    notes: list[str] = []
    if size != size_bytes:
        notes.append(f"size rounded down to {size} bytes (a whole MiB)")
    drop = drop_caches
    if drop:
        notes.append("the data file is evicted from the page cache (fadvise) before each cold measurement")
    else:
        notes.append("drop_caches=False: page cache not dropped before cold measurements")
    fio_skip = _fio.skip_reason(fio)
    use_fio = fio_skip is None

    path = data_file(directory, size, say)
    bench = _Bench(path, size, duration_s, repeats, base, drop, use_fio, fio_skip, say)
    out: dict[str, Any] = {
        "meta": {
            "file": path,
            "size_bytes": size,
            "duration_s": duration_s,
            "repeats": repeats,
            "queue_depth": QUEUE_DEPTH,
            "cpu_count": os.cpu_count(),
            "kernel": platform.release(),
            "fio": _fio.fio_version() if use_fio else None,
            "caches_dropped": drop,
            "notes": notes,
        },
        "cases": {},
    }
    for case in cases:
        say(f"{case}: starting")
        result = bench.run_case(case)
        result["target"] = TARGETS[case]
        ratio = result.get("ratio")
        result["meets_target"] = None if ratio is None else ratio >= TARGETS[case]
        out["cases"][case] = result
        if ratio is not None:
            say(f"{case}: ratio {ratio:.2f} (target {TARGETS[case]})")
    return out


class _Bench:
    """One benchmark run: the data file, settings and the measurements."""

    def __init__(
        self,
        path: str,
        size: int,
        duration_s: float,
        repeats: int,
        base: IOOptions,
        drop: bool,
        use_fio: bool,
        fio_skip: str | None,
        say: Progress,
    ) -> None:
        self.path = path
        self.size = size
        self.duration_s = duration_s
        self.repeats = repeats
        self.base = base
        self.drop = drop
        self.use_fio = use_fio
        self.fio_skip = fio_skip
        self.say = say

    # ------------------------------------------------------------ cases

    def run_case(self, case: str) -> dict[str, Any]:
        if case == "seq_1m":
            return self._cold(
                "sequential 1 MiB O_DIRECT reads, queue depth 32",
                "gbps",
                1 << 20,
                sequential=True,
                variants={"storecomp": ("io_uring", "on")},
                fio_rw="read",
            )
        if case in _BLOCK:
            bs = _BLOCK[case]
            variants = {
                "storecomp": ("io_uring", "on"),
                "storecomp_aligned": ("io_uring", "on", "aligned"),
                "storecomp_numpy": ("io_uring", "on", "numpy"),
                "storecomp_torch": ("io_uring", "on", "torch"),
            }
            if bs < 1 << 20:
                variants["storecomp_threads"] = ("threads", "on")
            result = self._cold(
                f"random aligned {_bs_name(bs)} O_DIRECT reads, queue depth 32",
                "iops",
                bs,
                sequential=False,
                variants=variants,
                fio_rw="randread",
            )
            result["user_buffer"] = _user_buffer_ratios(result)
            return result
        return self._hot()

    def _cold(
        self,
        description: str,
        metric: str,
        bs: int,
        *,
        sequential: bool,
        variants: dict[str, tuple[str, ...]],
        fio_rw: str,
    ) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        info: dict[str, dict[str, Any]] = {name: {} for name in variants}
        limit_runs: list[dict[str, Any]] = []
        limit_name = f"fio {fio_rw} io_uring iodepth={QUEUE_DEPTH} bs={_bs_name(bs)} direct=1"
        limit: dict[str, Any] = {"name": limit_name}
        if self.fio_skip:
            limit["skipped"] = self.fio_skip
        # The order alternates between rounds (ours then fio, fio then ours):
        # a trend in the storage (a host cache warming up) favours neither.
        for rnd in range(self.repeats):
            order = [*variants, "fio"] if rnd % 2 == 0 else ["fio", *variants]
            for name in order:
                if self.drop:
                    evict(self.path)
                if name == "fio":
                    if not self.use_fio or "skipped" in limit:
                        continue
                    try:
                        fig = _fio.fio_read(self.path, fio_rw, bs, QUEUE_DEPTH, self.duration_s)
                    except (RuntimeError, OSError, ValueError, KeyError) as e:
                        limit["skipped"] = f"fio failed: {e}"
                        continue
                    limit["command"] = "fio " + fig.pop("command")
                    fig["round"] = rnd
                    limit_runs.append(fig)
                    self.say(f"  fio {rnd + 1}/{self.repeats}: {_fmt(fig, metric)}")
                    continue
                self._measure(name, variants[name], bs, sequential, metric, rnd, runs, info)
        if limit_runs and "skipped" not in limit:
            limit.update(summarize(limit_runs))
        result = self._result(description, metric, runs, info, limit)
        # Ours over fio within each round (measured back to back), then the median.
        fio_by_round = {r["round"]: r[metric] for r in limit_runs if r.get(metric)}
        paired = [r[metric] / fio_by_round[r["round"]] for r in runs.get("storecomp", []) if r["round"] in fio_by_round]
        result["paired_ratio"] = statistics.median(paired) if paired else None
        result["paired_ratio_spread"] = [min(paired), max(paired)] if paired else None
        return result

    def _hot(self) -> dict[str, Any]:
        variants = {
            "storecomp": ("auto", "auto"),
            "storecomp_buffered": ("auto", "off"),
            "storecomp_threads": ("threads", "auto"),
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        info: dict[str, dict[str, Any]] = {name: {} for name in variants}
        limit_runs: list[dict[str, Any]] = []
        for rnd in range(self.repeats):
            for name, variant in variants.items():
                cache_file(self.path)  # again each time: anything else on the machine may evict it
                self._measure(name, variant, 1 << 20, True, "gbps", rnd, runs, info)
            fig = _memcpy(self.duration_s)
            limit_runs.append(fig)
            self.say(f"  memcpy {rnd + 1}/{self.repeats}: {_fmt(fig, 'gbps')}")
        limit = {"name": f"memcpy (np.copyto, {_MEMCPY_BYTES >> 20} MiB, one thread)"}
        limit.update(summarize(limit_runs))
        return self._result("sequential 1 MiB reads of a file in the page cache", "gbps", runs, info, limit)

    def _measure(
        self,
        name: str,
        variant: tuple[str, ...],
        bs: int,
        sequential: bool,
        metric: str,
        rnd: int,
        runs: dict[str, list[dict[str, Any]]],
        info: dict[str, dict[str, Any]],
    ) -> None:
        """One measurement of one storecomp variant (backend, direct), recorded in ``runs`` and ``info``."""
        try:
            backend, direct, *dst = variant
            fig, meta = self._storecomp(backend, direct, bs, sequential, *dst)
        except (StorecompError, OSError) as e:
            info[name]["error"] = f"{type(e).__name__}: {e}"
            return
        fig["round"] = rnd
        runs[name].append(fig)
        info[name].update(meta)
        self.say(f"  {name} {rnd + 1}/{self.repeats}: {_fmt(fig, metric)}")

    def _result(
        self,
        description: str,
        metric: str,
        runs: dict[str, list[dict[str, Any]]],
        info: dict[str, dict[str, Any]],
        limit: dict[str, Any],
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"description": description, "metric": metric}
        ratios: dict[str, float | None] = {}
        for name, rs in runs.items():
            variant = dict(info[name])
            if rs:
                variant.update(summarize(rs))
            out[name] = variant
            ok = rs and "skipped" not in limit and limit.get(metric)
            ratios[name] = variant[metric] / limit[metric] if ok else None
        out["limit"] = limit
        out["ratio"] = ratios.get("storecomp")
        out["ratios"] = ratios
        return out

    # ------------------------------------------------------------ storecomp

    def _engine(self, backend: str, direct: str) -> tuple[Engine, str | None]:
        threads = QUEUE_DEPTH if backend == "threads" else self.base.threads
        opts = self.base.replace(engine=backend, queue_depth=QUEUE_DEPTH, threads=threads, direct=direct)
        try:
            return Engine(opts), None
        except UnavailableError as e:
            note = f"io_uring unavailable ({e}); measured the thread pool instead"
            return Engine(opts.replace(engine="threads", threads=QUEUE_DEPTH)), note

    def _storecomp(
        self, backend: str, direct: str, bs: int, sequential: bool, dst: str = "slot"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One measurement into ``dst``: ``slot`` (staging slots), ``aligned`` (page-aligned numpy),
        ``numpy`` (``np.empty``) or ``torch`` (``torch.empty``)."""
        engine, note = self._engine(backend, direct)
        try:
            nreq = max(1, min(_BATCH_REQUESTS, _BATCH_BYTES // bs, self.size // bs))
            pool = StagingPool(_SLOTS * nreq * bs, nreq * bs, engine=engine) if dst == "slot" else None
            fixed = pool is not None and pool.fixed
            try:
                dsts = _user_buffers(dst, _SLOTS, nreq * bs) if pool is None else None
                with engine.open(self.path) as f:
                    run = _drive(f, pool, dsts, nreq, bs, self.size, sequential, self.duration_s)
            finally:
                if pool is not None:
                    pool.close()
            stats = engine.stats()
            where = "staging slots" if dst == "slot" else f"{dst} buffers at address % 4096 = {dsts[0].ctypes.data % 4096}"  # type: ignore[index]
            meta: dict[str, Any] = {
                "name": f"storecomp {engine.backend} qd={QUEUE_DEPTH} direct={direct} bs={_bs_name(bs)} into {where}",
                "backend": engine.backend,
                "destination": dst,
                "fixed_buffers": fixed,
                "engine_stats": {
                    k: stats[k]
                    for k in (
                        "pieces",
                        "bounce_pieces",
                        "direct_fallbacks",
                        "nowait_hits",
                        "nowait_misses",
                        "fixed_buffer_pieces",
                    )
                },
            }
            if engine.backend == "threads":
                meta["threads"] = engine.options.threads
            if note:
                meta["note"] = note
            return run.figures(), meta
        finally:
            engine.close()


def _user_buffers(kind: str, n: int, nbytes: int) -> list[np.ndarray]:
    """``n`` destinations as a user makes them (touched once, as a training loop's would be):
    ``np.empty`` arrays or ``torch.empty`` tensors (as numpy views), usually not page-aligned;
    or (``aligned``) numpy arrays cut to start at a page boundary, the aligned reference."""
    if kind == "numpy":
        out = [np.empty(nbytes, np.uint8) for _ in range(n)]
    elif kind == "aligned":
        raws = [np.empty(nbytes + 4096, np.uint8) for _ in range(n)]
        out = [r[(-r.ctypes.data) % 4096 :][:nbytes] for r in raws]
    elif kind == "torch":
        import torch

        out = [torch.empty(nbytes, dtype=torch.uint8).numpy() for _ in range(n)]
    else:
        raise ValueError(f"unknown destination kind {kind!r}")
    for a in out:
        a.fill(0)
    return out


class _Dst:
    """A user buffer in the place of a staging slot."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def release(self) -> None:
        pass


def _drive(
    f: Any,
    pool: StagingPool | None,
    dsts: list[np.ndarray] | None,
    nreq: int,
    bs: int,
    size: int,
    sequential: bool,
    duration_s: float,
) -> Run:
    """Keep ``pool.nslots`` batches (or one per array of ``dsts``) of ``nreq`` reads of ``bs`` bytes
    in flight for ``duration_s``.

    Sequential batches walk the file and wrap around at its end; random
    batches draw aligned offsets uniformly. Each batch lands in its own
    staging slot (or user array), which is reused once the batch completes.
    """
    rng = np.random.default_rng()
    blocks = size // bs
    dst = np.arange(nreq, dtype=np.uint64) * np.uint64(bs)
    step = np.arange(nreq, dtype=np.uint64)
    slots: list[Any] = [pool.acquire() for _ in range(pool.nslots)] if pool is not None else [_Dst(a) for a in dsts or []]
    inflight: collections.deque[tuple[Any, Any]] = collections.deque()
    nbytes = requests = 0
    cursor = 0

    def submit(slot: Any) -> None:
        nonlocal cursor
        if sequential:
            offs = ((step + np.uint64(cursor)) % np.uint64(blocks)) * np.uint64(bs)
            cursor = (cursor + nreq) % blocks
        else:
            offs = rng.integers(0, blocks, nreq, dtype=np.uint64) * np.uint64(bs)
        inflight.append((f.read_many_into(slot.array, offs, bs, dst), slot))

    try:
        window = Window()
        deadline = time.perf_counter() + duration_s
        for slot in slots:
            submit(slot)
        while inflight:
            fut, slot = inflight.popleft()
            fut.result()
            nbytes += nreq * bs
            requests += nreq
            if time.perf_counter() < deadline:
                submit(slot)
        seconds, cpu, busy = window.close()
    finally:
        for fut, _ in inflight:
            fut.wait()
        for slot in slots:
            slot.release()
    return Run(nbytes, requests, seconds, cpu, busy)


def _user_buffer_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Users' own (unaligned) destinations against the aligned ones of the same case:
    ``{kind: {"vs_slots": r, "vs_aligned": r, "spread_vs_aligned": [lo, hi]}}`` with the
    median over rounds of the ratio within each round (both measured minutes apart at
    most, so a drift of the shared storage cancels), plus ``target`` and ``meets_target``
    (every kind at least the target against page-aligned numpy and the staging slots)."""
    metric = result["metric"]

    def per_round(name: str) -> dict[int, float]:
        return {r["round"]: r[metric] for r in result.get(name, {}).get("runs", []) if r.get(metric)}

    slots, aligned = per_round("storecomp"), per_round("storecomp_aligned")
    out: dict[str, Any] = {"target": USER_BUFFER_TARGET}
    met = []
    for kind in ("numpy", "torch"):
        mine = per_round(f"storecomp_{kind}")
        entry: dict[str, Any] = {}
        for ref_name, ref in (("slots", slots), ("aligned", aligned)):
            ratios = [mine[k] / ref[k] for k in mine if k in ref]
            if ratios:
                entry[f"vs_{ref_name}"] = statistics.median(ratios)
                entry[f"spread_vs_{ref_name}"] = [min(ratios), max(ratios)]
                met.append(entry[f"vs_{ref_name}"] >= USER_BUFFER_TARGET)
        out[kind] = entry
    out["meets_target"] = all(met) if met else None
    return out


def _memcpy(duration_s: float) -> dict[str, Any]:
    """Single-threaded memcpy bandwidth between two preallocated, touched arrays."""
    src = np.ones(_MEMCPY_BYTES, np.uint8)
    dst = np.zeros(_MEMCPY_BYTES, np.uint8)
    np.copyto(dst, src)  # warm: page tables and TLB
    window = Window()
    deadline = time.perf_counter() + duration_s
    copies = 0
    while True:
        np.copyto(dst, src)
        copies += 1
        if time.perf_counter() >= deadline:
            break
    seconds, cpu, busy = window.close()
    return Run(copies * _MEMCPY_BYTES, copies, seconds, cpu, busy).figures()


def _bs_name(bs: int) -> str:
    return f"{bs >> 20}M" if bs % (1 << 20) == 0 else f"{bs >> 10}k"


def _fmt(fig: dict[str, Any], metric: str) -> str:
    head = f"{fig['iops'] / 1000:.1f}k IOPS, " if metric == "iops" else ""
    return f"{head}{fig['gbps']:.2f} GB/s, {fig['cpu_s_per_gb']:.3f} CPU-s/GB"


def run_suite(ctx: Context) -> dict[str, Any]:
    """``storecomp bench read``: :func:`run_read_bench` on the context's directory,
    then the device sweep (:func:`device_sweep`) when a CUDA device exists."""
    result = run_read_bench(
        ctx.directory, ctx.size_bytes, ctx.duration_s, fio=ctx.fio, repeats=ctx.repeats, progress=ctx.progress
    )
    result["device"] = device_sweep(result["meta"]["file"], ctx)
    return result


SWEEP_SIZES = (64 << 10, 1 << 20, 16 << 20)


def device_sweep(path: str, ctx: Context) -> dict[str, Any]:
    """gdsio-style: sequential reads of ``path`` into a CUDA tensor through each
    device path (GDS when available, bounce, posix; only ``ctx.io_path`` when
    it is not ``auto``) and I/O size, next to the same reads into host memory.

    Returns ``{"skipped": reason}`` without a CUDA device.
    """
    from ..io import cuda
    from ..io.paths import PATHS

    if cuda.device_count() == 0:
        return {"skipped": "no CUDA device: device paths (gds, bounce, posix) apply to CUDA destinations only"}
    torch = cuda.import_torch()
    gds = cuda.gds_status()
    paths = list(PATHS) if ctx.io_path == "auto" else [ctx.io_path]
    if "gds" in paths and not gds["available"] and ctx.io_path == "auto":
        paths.remove("gds")
    size = os.path.getsize(path)
    out: dict[str, Any] = {"gds": gds, "device": torch.cuda.get_device_name(0), "runs": {}}
    for bs in SWEEP_SIZES:
        if bs > size:
            continue
        host = np.empty(bs, np.uint8)
        dev = torch.empty(bs, dtype=torch.uint8, device="cuda")
        for where, dst in [("host", host)] + [(p, dev) for p in paths]:
            name = f"{where}_{_bs_name(bs)}"
            engine = Engine(io_path=where if where != "host" else "auto", queue_depth=QUEUE_DEPTH)
            try:
                with engine.open(path) as f:
                    window = Window()
                    deadline, off, moved = time.perf_counter() + ctx.duration_s, 0, 0
                    while time.perf_counter() < deadline:
                        f.pread_into(dst, off, length=bs)
                        moved += bs
                        off = (off + bs) % (size - size % bs)
                    if where != "host":
                        torch.cuda.synchronize()
                    seconds, cpu, busy = window.close()
                out["runs"][name] = Run(moved, moved // bs, seconds, cpu, busy).figures()
            except StorecompError as e:
                out["runs"][name] = {"error": f"{type(e).__name__}: {e}"}
            finally:
                engine.close()
            ctx.say(f"device sweep: {where} {_bs_name(bs)}")
    return out


_PEER_NAMES = {
    "storecomp_threads": "threads engine",
    "storecomp_aligned": "into page-aligned np",
    "storecomp_buffered": "direct=off",
    "storecomp_numpy": "into np.empty",
    "storecomp_torch": "into torch.empty",
}


def figures(result: dict[str, Any]) -> list[Figure]:
    """Rows for the final table: ours against fio or memcpy; the other engine variants as peers."""
    out = []
    for case, r in result["cases"].items():
        metric = r["metric"]
        unit = "IOPS" if metric == "iops" else "GB/s"
        ours = r.get("storecomp", {})
        limit = r["limit"]
        peers = {
            _PEER_NAMES.get(name, name): v[metric]
            for name, v in r.items()
            if name.startswith("storecomp_") and isinstance(v, dict) and metric in v
        }
        notes = [
            f"{n}: {v.get('error') or v.get('note')}"
            for n, v in r.items()
            if isinstance(v, dict) and (v.get("error") or v.get("note"))
        ]
        if "skipped" in limit:
            notes.append(f"limit skipped: {limit['skipped']}")
        user = r.get("user_buffer", {})
        for kind in ("numpy", "torch"):
            if "vs_aligned" in user.get(kind, {}):
                u = user[kind]
                notes.append(
                    f"{kind} buffer / aligned {u['vs_aligned']:.2f}, / slots {u.get('vs_slots', float('nan')):.2f}"
                    f" (target {user['target']})"
                )
        if metric in ours and "cpu_s_per_gb" in ours:
            notes.append(f"CPU-s/GB {ours['cpu_s_per_gb']:.3f} (limit {limit.get('cpu_s_per_gb', float('nan')):.3f})")
        out.append(Figure(
            suite="read", case=case, unit=unit, value=float(ours.get(metric, float("nan"))),
            limit=None if "skipped" in limit else (limit["name"].split(" ")[0], float(limit[metric])),
            target=r["target"], peers=peers, note="; ".join(notes),
        ))  # fmt: skip
    device = result.get("device", {})
    if "skipped" in device:
        out.append(Figure("read", "to_gpu", "GB/s", float("nan"), note=f"skipped: {device['skipped']}"))
    for name, run in device.get("runs", {}).items():
        where, bs = name.rsplit("_", 1)
        if where == "host":
            continue
        host = device["runs"].get(f"host_{bs}", {})
        out.append(Figure(
            "read", f"to_gpu_{where}_{bs}", "GB/s", float(run.get("gbps", float("nan"))),
            limit=("host reads", float(host["gbps"])) if "gbps" in host else None,
            note=run.get("error", f"sequential {bs} reads into a CUDA tensor through {where}"),
        ))  # fmt: skip
    return out
