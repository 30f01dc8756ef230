"""The store benchmark: the store layer next to plain reads and the S3 peers, in one run.

Local part (no server needed, part of the embedded default):

* :func:`run_cache_bench`: cache-hit reads of a warm :class:`CachedStore`
  (``verify="always"`` and ``"once"``) next to plain reads of the same
  object in a :class:`LocalStore` (the limit; the issue's target is 0.9x),
  4 MiB sequential reads and 64 KiB random reads, page cache hot.
* :func:`run_local_ranged_bench`: :meth:`LocalStore.read_ranges` of 64 KiB
  random ranges next to ``os.preadv`` of the same ranges, one at a time.

S3 part (:func:`run_s3_bench`): :class:`S3Store` next to tuned boto3
(``download_fileobj`` with a TransferConfig; a thread pool of ranged GETs)
and s3fs (``cat_ranges``), on a SeaweedFS started for the run
(:func:`s3_target`) or on the endpoint in ``STORECOMP_BENCH_S3_URL``: whole
large objects (GB/s; target 0.9x the best peer) and 64 KiB ranged reads at
high concurrency (samples/s). A missing peer library is skipped with the
reason, never a failure. Speed is measured, never asserted.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StorecompError, UnavailableError
from . import Context
from ._store_s3 import ENV_URL, PEERS, SAMPLE, S3Target, endpoint_target, load_peers, run_s3_bench, s3_target
from .report import Figure

__all__ = [
    "ENV_URL", "PEERS", "S3Target", "endpoint_target", "figures", "hints", "load_peers", "run_cache_bench",
    "run_local_ranged_bench", "run_s3_bench", "run_suite", "s3_target",
]  # fmt: skip

MiB = 1 << 20
CACHE_TARGET = 0.9  #: cache hits / plain local reads
S3_TARGET = 0.9  #: S3Store / best of boto3 and s3fs, large objects

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------- local: cache hits


def _median_rate(fn: Callable[[], int], duration: float, min_calls: int = 5) -> float:
    """Bytes per second of ``fn`` (each call returns the bytes it read), from
    the median call time over about ``duration`` seconds (robust to noise from
    other processes on a shared machine); one warm call first."""
    fn()
    times: list[float] = []
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < duration or len(times) < min_calls:
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
    return n / float(np.median(times))


def _rates(fn: Callable[[], int], duration: float, min_calls: int = 5) -> tuple[float, float]:
    """(bytes per second of wall time from the median call, bytes per CPU second of the whole
    process over the same calls). The second counts every thread's CPU (the engine's too): on a
    machine shared with other work it still says what the reads cost, where wall time also
    measures the neighbours."""
    fn()
    times: list[float] = []
    n, total = 0, 0
    c0, t0 = time.process_time(), time.perf_counter()
    while time.perf_counter() - t0 < duration or len(times) < min_calls:
        t = time.perf_counter()
        n = fn()
        times.append(time.perf_counter() - t)
        total += n
    cpu = time.process_time() - c0
    return n / float(np.median(times)), total / cpu if cpu > 0 else 0.0


def _large(store: Any, size: int) -> Callable[[], int]:
    step = min(4 * MiB, size)
    buf = np.empty(step, np.uint8)
    offs = list(range(0, size - step + 1, step))
    pos = [0]

    def run() -> int:
        store.read_ranges("data", [offs[pos[0] % len(offs)]], [step], buf, [0])
        pos[0] += 1
        return step

    return run


def _random_64k(store: Any, size: int, seed: int = 0) -> Callable[[], int]:
    batch = 64
    rng = np.random.default_rng(seed)
    buf = np.empty(SAMPLE * batch, np.uint8)
    douts = np.arange(batch, dtype=np.int64) * SAMPLE
    lens = np.full(batch, SAMPLE, np.int64)

    def run() -> int:
        offs = rng.integers(0, size // SAMPLE, batch) * SAMPLE
        store.read_ranges("data", offs, lens, buf, douts)
        return SAMPLE * batch

    return run


def run_cache_bench(workdir: str, size: int, duration: float, repeats: int, progress: Progress | None = None) -> dict[str, Any]:
    """Cache-hit reads of a ``size``-byte object next to plain LocalStore reads of it.

    Writes under ``workdir`` (the object and two cache directories). Both
    sides go through the native engine with the page cache hot. Each rate
    is the median call time over ``duration`` seconds; rounds alternate
    plain/cache and the best of ``repeats`` rounds is kept. Returns
    ``{"size_bytes", "duration_s", "repeats", "cases": {"large_4m" |
    "random_64k": {"plain_gbps", "cache_always_gbps", "cache_once_gbps",
    "ratio_always", "ratio_once", "cpu_ratio_always", "cpu_ratio_once"}}}``
    (``cpu_ratio_*``: bytes per CPU second of the process, cache / plain, best
    round each: what the checks cost, robust to other work on the machine).
    Raises ValueError for a size under 1 MiB or a bad duration or repeat count.
    """
    from ..store import CachedStore, LocalStore

    if size < MiB or duration < 0 or repeats < 1:
        raise ValueError(f"size >= 1 MiB, duration >= 0 and repeats >= 1 expected, got {size}, {duration}, {repeats}")
    say = progress or _quiet
    root = Path(workdir)
    remote = LocalStore(root / "remote")
    remote.put("data", np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))
    caches = {m: CachedStore(remote, root / f"cache-{m}", 2 * size + MiB, verify=m) for m in ("always", "once")}
    try:
        for c in caches.values():
            c.get("data")  # fill, and read once: steady-state hits (verify="once" has checked every chunk)
        cases: dict[str, Any] = {}
        for case, make in (("large_4m", _large), ("random_64k", _random_64k)):
            best: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for r in range(repeats):
                order: list[tuple[str, Any]] = [("plain", remote), *((f"cache_{m}", c) for m, c in caches.items())]
                if r % 2:
                    order.reverse()
                for name, store in order:
                    wall, per_cpu = _rates(make(store, size), duration)
                    best[name] = max(best.get(name, 0.0), wall)
                    cpu[name] = max(cpu.get(name, 0.0), per_cpu)
            say(f"cache {case}: cache {best['cache_always'] / 1e9:.2f} GB/s, plain {best['plain'] / 1e9:.2f} GB/s")
            cases[case] = {
                **{f"{k}_gbps": v / 1e9 for k, v in best.items()},
                "ratio_always": best["cache_always"] / best["plain"],
                "ratio_once": best["cache_once"] / best["plain"],
                "cpu_ratio_always": cpu["cache_always"] / cpu["plain"] if cpu["plain"] else 0.0,
                "cpu_ratio_once": cpu["cache_once"] / cpu["plain"] if cpu["plain"] else 0.0,
            }
        misses = {m: c.stats.misses for m, c in caches.items()}
    finally:
        for c in caches.values():
            c.close()
        remote.close()
    if any(v != 1 for v in misses.values()):
        raise StorecompError(f"cache benchmark: expected only hits after the fill, misses {misses}")
    return {"size_bytes": size, "duration_s": duration, "repeats": repeats, "cases": cases}


# ---------------------------------------------------------------- local: ranged reads vs os.preadv


def run_local_ranged_bench(
    workdir: str, size: int, duration: float, repeats: int, batch: int = 64, progress: Progress | None = None
) -> dict[str, Any]:
    """LocalStore ranged reads of random 64 KiB ranges next to ``os.preadv`` of the same ranges.

    One ``size``-byte object under ``workdir``, page cache hot. A call reads
    ``batch`` ranges into one buffer: ``read_ranges`` for storecomp, one
    ``os.preadv`` per range for the baseline; both walk the same seeded
    range sequence. Returns ``{"size_bytes", "batch", "storecomp":
    {"samples_per_s", "gbps"}, "preadv": {...}, "ratio", "verified"}``.
    Raises ValueError for a size under 1 MiB or bad counts.
    """
    from ..store import LocalStore

    if size < MiB or duration < 0 or repeats < 1 or batch < 1:
        raise ValueError(f"size >= 1 MiB, duration >= 0, repeats and batch >= 1 expected, got {size}, {duration}")
    say = progress or _quiet
    store = LocalStore(Path(workdir) / "ranged")
    data = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8)
    store.put("data", data)
    path = str(store.path_of("data"))
    offsets = np.random.default_rng(2).integers(0, size // SAMPLE, (256, batch)) * SAMPLE
    lens = np.full(batch, SAMPLE, np.int64)
    douts = np.arange(batch, dtype=np.int64) * SAMPLE
    buf = np.empty(batch * SAMPLE, np.uint8)
    views = [buf[i * SAMPLE : (i + 1) * SAMPLE].data for i in range(batch)]
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = {"storecomp": 0, "preadv": 0}

        def ours() -> int:
            offs = offsets[pos["storecomp"] % len(offsets)]
            pos["storecomp"] += 1
            store.read_ranges("data", offs, lens, buf, douts)
            return batch * SAMPLE

        def plain() -> int:
            offs = offsets[pos["preadv"] % len(offsets)]
            pos["preadv"] += 1
            for v, o in zip(views, offs.tolist(), strict=True):
                os.preadv(fd, [v], o)
            return batch * SAMPLE

        ours()
        verified = bool(np.array_equal(buf.reshape(batch, SAMPLE), data[offsets[0][:, None] + np.arange(SAMPLE)]))
        best: dict[str, float] = {}
        for r in range(repeats):
            order = [("storecomp", ours), ("preadv", plain)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                best[name] = max(best.get(name, 0.0), _median_rate(fn, duration))
    finally:
        os.close(fd)
        store.close()
    out: dict[str, Any] = {"size_bytes": size, "batch": batch, "sample_bytes": SAMPLE, "verified": verified}
    for name, bps in best.items():
        out[name] = {"samples_per_s": bps / SAMPLE, "gbps": bps / 1e9}
    out["ratio"] = best["storecomp"] / best["preadv"]
    say(f"local ranged 64 KiB: {out['storecomp']['samples_per_s']:.0f}/s, os.preadv {out['preadv']['samples_per_s']:.0f}/s")
    return out


# ---------------------------------------------------------------- the suite


def run_suite(ctx: Context) -> dict[str, Any]:
    """``storecomp bench store``: the local part always, the S3 part when an endpoint exists.

    Local objects are ``ctx.size_bytes`` capped at 64 MiB (the page cache
    is hot: a larger object measures the same); S3 objects are two of
    ``ctx.size_bytes / 2`` capped at 64 MiB. The peers run with
    ``ctx.compare``. An S3 part that cannot run is ``{"skipped": reason}``.
    """
    local_size = max(MiB, min(64 * MiB, ctx.size_bytes) // MiB * MiB)
    out: dict[str, Any] = {"local_size_bytes": local_size}
    with tempfile.TemporaryDirectory(prefix="store-bench-", dir=ctx.directory) as tmp:
        ctx.say("store: cache-hit reads vs plain local reads")
        out["cache"] = run_cache_bench(os.path.join(tmp, "cache"), local_size, ctx.duration_s, ctx.repeats, ctx.progress)
        ctx.say("store: LocalStore 64 KiB ranged reads vs os.preadv")
        out["local_ranged"] = run_local_ranged_bench(
            os.path.join(tmp, "local"), local_size, ctx.duration_s, ctx.repeats, progress=ctx.progress
        )
        try:
            with s3_target(tmp) as target:
                ctx.say(f"store: S3 reads from {target.source} ({target.endpoint})")
                object_bytes = max(MiB, min(64 * MiB, ctx.size_bytes // 2) // MiB * MiB)
                ranges = max(64, min(1000, int(500 * ctx.duration_s)))  # s3fs may do under 100/s on 2 cores
                out["s3"] = run_s3_bench(
                    target, object_bytes=object_bytes, objects=2, ranges=ranges, repeats=ctx.repeats,
                    duration=ctx.duration_s, peers=PEERS if ctx.compare else (), progress=ctx.progress,
                )  # fmt: skip
                if not ctx.compare:
                    out["s3"]["skipped"] = {p: "peers not run (pass --compare)" for p in PEERS}
        except UnavailableError as e:
            out["s3"] = {"skipped": str(e)}
        except (StorecompError, OSError) as e:  # the local figures stand; the table says why S3 has none
            out["s3"] = {"skipped": f"S3 part failed: {type(e).__name__}: {str(e)[:300]}"}
    return out


def figures(result: dict[str, Any]) -> list[Figure]:
    """Rows: cache hits vs plain reads, LocalStore vs os.preadv, S3Store vs the best of boto3/s3fs."""
    out: list[Figure] = []
    size_mib = result["local_size_bytes"] >> 20
    for case, label in (("large_4m", "cache_hit_4m"), ("random_64k", "cache_hit_64k")):
        c = result["cache"]["cases"][case]
        out.append(Figure(
            suite="store", case=label, unit="GB/s", value=c["cache_always_gbps"], limit=("plain reads", c["plain_gbps"]),
            target=CACHE_TARGET, peers={"verify=once": c["cache_once_gbps"]},
            note=(
                f"CachedStore hits (verify=always) vs LocalStore reads of the same {size_mib} MiB object, page cache hot; "
                f"per CPU second {c.get('cpu_ratio_always', 0.0):.2f}x plain"
            ),
        ))  # fmt: skip
    lr = result["local_ranged"]
    out.append(Figure(
        suite="store", case="local_ranged_64k", unit="samples/s", value=lr["storecomp"]["samples_per_s"],
        limit=("os.preadv", lr["preadv"]["samples_per_s"]),
        note=f"LocalStore.read_ranges of {lr['batch']} random 64 KiB ranges per call vs one os.preadv per range; "
        f"verified={lr['verified']}",
    ))  # fmt: skip
    s3 = result["s3"]
    if "config" not in s3:
        for case, unit in (("s3_large", "GB/s"), ("s3_ranged_64k", "samples/s")):
            out.append(Figure(suite="store", case=case, unit=unit, value=float("nan"), note=f"skipped: {s3['skipped']}"))
        return out
    cfg = s3["config"]
    for case, key, unit, metric in (
        ("s3_large", "large", "GB/s", "gbps"),
        ("s3_ranged_64k", "ranged", "samples/s", "samples_per_s"),
    ):
        r = s3[key]
        peers = {n: float(v[metric]) for n, v in r.items() if n != "storecomp" and isinstance(v, dict) and metric in v}
        notes = [f"{n}: {v['error']}" for n, v in r.items() if isinstance(v, dict) and "error" in v]
        notes += [f"{n} skipped: {why}" for n, why in s3["skipped"].items()]
        bad = [n for n, v in r.items() if isinstance(v, dict) and v.get("verified") is False]
        if bad:
            notes.append(f"WRONG BYTES from {', '.join(bad)}")
        what = f"{cfg['objects']} x {cfg['object_bytes'] >> 20} MiB objects" if key == "large" else f"{cfg['ranges']} ranges"
        notes.insert(0, f"{cfg['source']} {cfg['endpoint']}, {what}, concurrency {cfg['concurrency']}")
        limit = None
        if key == "large" and peers:
            best = max(peers, key=lambda n: peers[n])
            limit = (f"best of {'/'.join(peers)} ({best})", peers[best])
        out.append(Figure(
            suite="store", case=case, unit=unit, value=float(r["storecomp"][metric]), limit=limit,
            target=S3_TARGET if limit else None, peers=peers, note="; ".join(notes),
        ))  # fmt: skip
    return out


def hints(result: dict[str, Any]) -> list[str]:
    """What to change when a store figure misses its target."""
    out = []
    for case, c in result["cache"]["cases"].items():
        if c["ratio_always"] < CACHE_TARGET <= c["ratio_once"]:
            ratio = c["ratio_always"]
            out.append(f"store/cache {case}: checksums cost the hits ({ratio:.2f}x plain reads); use CachedStore(verify='once')")
    s3 = result["s3"]
    ratio = s3.get("large", {}).get("ratio_vs_best_peer")
    if ratio is not None and ratio < S3_TARGET:
        out.append(f"store/s3_large: {ratio:.2f}x the best peer: try a larger max_concurrency or part_bytes for S3Store")
    return out
