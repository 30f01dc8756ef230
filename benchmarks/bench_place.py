"""Placement benchmark: copy a snapshot between two SeaweedFS sites with ``storecomp
place`` against the best tuned peer in the same run, the bytes a resumed run
repeats after kill -9, and a reader's samples/s during a migration vs without.

    python benchmarks/bench_place.py               # 2 GiB snapshot, 64 MiB blobs
    python benchmarks/bench_place.py --tiny        # smoke run (seconds)
    python benchmarks/bench_place.py --mib 512 --json out.json
    python benchmarks/bench_place.py --rounds 3 --copy-only   # the copy alone, 3 interleaved rounds

Steps (two ``weed server`` processes on loopback, one per site):

1. write the snapshot (``--mib`` MiB in ``--blob-mib`` MiB blobs) at site a;
2. ``storecomp.store.place`` a -> b (``--workers`` blobs at once, parts of
   ``--part-mib``; every blob read back from b and its crc32c checked), timed;
3. peers, each copying the same blobs a -> a fresh prefix at b, timed
   (each copier to a fresh, warmed server for site b; ``--rounds N``: N
   rounds, the three copiers in an order rotated per round; medians and
   ranges reported):
   ``rclone copy`` (when the binary exists: ``--transfers`` = workers,
   ``--s3-chunk-size`` = part, ``--s3-upload-concurrency 4``, no checksum
   read-back) and boto3 (``get_object`` streamed into ``upload_fileobj`` with
   a TransferConfig of ``--part-mib`` chunks and 4 threads per object,
   ``--workers`` objects at once);
4. resume: ``storecomp place`` in a subprocess to a third prefix, through a
   byte-counting relay in front of b, SIGKILL when about half the blobs are at
   b, then a rerun: the bytes both runs sent to b minus the snapshot's bytes
   are the repeat (bound: one part per blob in flight at the kill);
5. reader: one thread reading random 64 KiB samples (verified) of the
   snapshot at site a for ``--read-s`` seconds, holding a lease like every
   storecomp reader of a placed snapshot (``open_snapshot``), alone, then
   while a ``storecomp place`` subprocess migrates it to b: with the
   defaults (the copy yields to leased readers), and with ``--no-yield``
   (the copy at full speed, as before the yield existed); during a
   migration the count starts ``--settle-s`` seconds after the ``storecomp
   place`` process starts (its interpreter start-up is not the copy).

Prints a table and writes JSON with ``--json``. Never asserts speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from storecomp.store import Mount, Namespace, Replica, Repository, open_store, place
from storecomp.store import placement as pl
from storecomp.testing.relay import Relay
from storecomp.testing.seaweedfs import SeaweedFS


def _write_snapshot(store: Any, total: int, blob: int) -> tuple[str, list[str]]:
    repo = Repository(store, chunk_bytes=256 << 10)  # a 64 KiB sample verifies one 256 KiB chunk
    w = repo.writer()
    rng = np.random.default_rng(0)
    n = max(1, total // blob)
    for i in range(n):
        w.add(f"shard-{i:05d}.bin", rng.integers(0, 256, blob, dtype=np.uint8))
    h = w.commit("train")
    return h, [repo.blob_key(e.blob) for e in repo.get_manifest(h).entries.values()]


def _mount_toml(path: Path, a: SeaweedFS, a_url: str, b: SeaweedFS, b_url: str, site: str, b_endpoint: str = "") -> None:
    b_at = b_endpoint or b.endpoint
    path.write_text(
        '[mounts.ds]\nprimary = "a"\nreplicas = [\n'
        f'  {{url = "{a_url}", site = "a", options = {{endpoint = "{a.endpoint}", region = "{a.region}"}}}},\n'
        f'  {{url = "{b_url}", site = "{site}", options = {{endpoint = "{b_at}", region = "{b.region}"}}}},\n]\n'
    )


def _warm_up(*servers: SeaweedFS) -> None:
    """Write and delete a few objects: a fresh server grows its volumes on the first writes (seconds)."""
    data = np.zeros(8 << 20, np.uint8)
    for sw in servers:
        st = open_store(sw.url("warmup"), **sw.store_options())
        for i in range(8):
            st.put(f"w{i}", data)
        for i in range(8):
            st.delete(f"w{i}")
        st.close()


def _ns(a: SeaweedFS, a_url: str, b: SeaweedFS, b_url: str, site: str = "b") -> Namespace:
    reps = (
        Replica(a_url, "a", 0, tuple(sorted(a.store_options().items()))),
        Replica(b_url, site, 1, tuple(sorted(b.store_options().items()))),
    )
    return Namespace([Mount("ds", reps, primary="a")], environ={})


def bench_rclone(a: SeaweedFS, a_url: str, b: SeaweedFS, b_url: str, workers: int, part: int) -> dict[str, Any]:
    exe = shutil.which("rclone")
    if exe is None:
        return {"skipped": "rclone not installed (apt-get install -y rclone)"}
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone 1.60 fails on it over http
    for name, sw in (("SCA", a), ("SCB", b)):
        env.update(
            {
                f"RCLONE_CONFIG_{name}_TYPE": "s3",
                f"RCLONE_CONFIG_{name}_PROVIDER": "Other",
                f"RCLONE_CONFIG_{name}_ENDPOINT": sw.endpoint,
                f"RCLONE_CONFIG_{name}_ACCESS_KEY_ID": sw.access_key,
                f"RCLONE_CONFIG_{name}_SECRET_ACCESS_KEY": sw.secret_key,
                f"RCLONE_CONFIG_{name}_REGION": sw.region,
            }
        )
    src = "SCA:" + a_url[len("s3://") :] + "/blobs"
    dst = "SCB:" + b_url[len("s3://") :] + "/blobs"
    cmd = [exe, "copy", src, dst, f"--transfers={workers}", f"--s3-chunk-size={part >> 20}M", "--s3-upload-concurrency=4"]
    cmd += ["--s3-upload-cutoff=16M", "--checkers=16", "--s3-no-check-bucket"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    return {"seconds": secs, "cmd": " ".join(cmd[1:])}


def bench_boto3(a: SeaweedFS, a_url: str, keys: list[str], b: SeaweedFS, b_url: str, workers: int, part: int) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig

    ca = a.boto3_client(max_pool_connections=64)
    cb = b.boto3_client(max_pool_connections=64)
    abucket, aprefix = a_url[len("s3://") :].split("/", 1)
    bbucket, bprefix = b_url[len("s3://") :].split("/", 1)
    cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part, max_concurrency=4, use_threads=True)

    def one(key: str) -> None:
        body = ca.get_object(Bucket=abucket, Key=f"{aprefix}/{key}")["Body"]
        cb.upload_fileobj(body, bbucket, f"{bprefix}/{key}", Config=cfg)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, keys))
    return {
        "seconds": time.perf_counter() - t0,
        "config": f"{workers} objects x TransferConfig(chunk={part >> 20} MiB, 4 threads)",
    }


def _parts_in_flight(sw: SeaweedFS, url: str) -> tuple[int, int]:
    """(unfinished multipart uploads, bytes of their uploaded parts) under ``url`` at ``sw``:
    what a kill -9 left (a rerun keeps those parts: storecomp.store.s3_resume)."""
    client = sw.boto3_client()
    bucket, prefix = url[len("s3://") :].split("/", 1)
    uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
    nbytes = 0
    for up in uploads:
        parts = client.list_parts(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"]).get("Parts", [])
        nbytes += sum(int(p["Size"]) for p in parts)
    return len(uploads), nbytes


def bench_resume(
    cfg: Path, b_store: Any, keys: list[str], total: int, blob: int, part: int, b: SeaweedFS, b_url: str, relay: Relay
) -> dict[str, Any]:
    """Kill -9 a ``storecomp place`` when about half the blobs are at b, rerun it: the bytes
    on the wire to b (``relay``), both runs together, minus the snapshot's bytes are the repeat."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}
    env["STORECOMP_MOUNTS"] = str(cfg)
    sent0 = relay.sent
    proc = subprocess.Popen([sys.executable, "-m", "storecomp", "place", "sc://ds/train", "--to", "resume"], env=env)
    while proc.poll() is None and sum(b_store.exists(k) for k in keys) < len(keys) // 2:
        time.sleep(0.05)
    exited = proc.poll()  # not None: the first run ended by itself (finished or failed) before the kill
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.3)  # what the killed process had sent still passes the relay
    sent_killed = relay.sent - sent0
    present = sum(b_store.exists(k) for k in keys)
    try:
        uploads, kept = _parts_in_flight(b, b_url)
    except Exception as e:  # noqa: BLE001 - a measure only: the bench goes on without it
        uploads, kept = -1, -1
        print(f"  .. could not list the unfinished uploads: {type(e).__name__}", file=sys.stderr)
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "storecomp", "place", "sc://ds/train", "--to", "resume", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    sent_rerun = relay.sent - sent0 - sent_killed
    doc = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-500:]}
    missing = total - present * blob  # blobs not complete at b: parts of them kept or uploaded by the rerun
    return {
        "blobs_present_after_kill": present,
        "uploads_in_flight_at_kill": uploads,
        "part_bytes_left_at_kill": kept,
        "bytes_missing_after_kill": missing,
        "rerun_bytes_uploaded": doc.get("bytes_uploaded"),
        "rerun_bytes_resumed": doc.get("bytes_resumed"),
        "rerun_skipped": doc.get("skipped"),
        "rerun_already_complete": doc.get("already_complete"),
        "rerun_seconds": time.perf_counter() - t0,
        "wire_bytes_killed_run": sent_killed,
        "wire_bytes_rerun": sent_rerun,
        "repeated_bytes": sent_killed + sent_rerun - total,  # request headers included
        "repeat_bound": uploads * part,
        "first_run_exit": exited,
        "rerun_error": doc.get("error"),
    }


def bench_reader(ns: Namespace, seconds: float, migrate: list[str] | None, settle_s: float = 0.0) -> dict[str, Any]:
    """Samples/s of one reader of random 64 KiB samples at site a, with ``migrate``
    (a command) running meanwhile when given; the count starts ``settle_s``
    seconds after the command starts (its interpreter start is not the copy)."""
    res, lease = pl.open_snapshot("sc://ds/train", namespace=ns, near="a")
    snap = res.snapshot
    paths = snap.paths()
    size = snap.entry(paths[0]).size
    rng = np.random.default_rng(1)
    buf = np.empty(64 << 10, np.uint8)
    proc = subprocess.Popen(migrate, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) if migrate else None
    if proc is not None and settle_s > 0:
        time.sleep(settle_s)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds and (proc is None or proc.poll() is None or n == 0):
            p = paths[int(rng.integers(len(paths)))]
            off = int(rng.integers(0, max(1, size - buf.size) // 4096)) * 4096
            snap.read_into(p, buf, [off], [buf.size], [0])
            n += 1
    finally:
        dt = time.perf_counter() - t0
        if proc is not None:
            proc.kill()
            proc.wait()
        lease.release()
    return {"samples": n, "seconds": dt, "samples_per_s": n / dt}


COPIERS = ("storecomp", "rclone", "boto3")


def copy_round(
    i: int, a: SeaweedFS, a_url: str, keys: list[str], tmp: Path, total: int, workers: int, part: int, log: Any
) -> dict[str, Any]:
    """One round: every copier copies the snapshot a -> a fresh site b of its own
    (a new server, warmed: the same start for all, and deletes do not free a
    SeaweedFS volume), in an order rotated by ``i`` (no copier always first)."""
    out: dict[str, Any] = {"round": i, "load_before": os.getloadavg()[0]}
    order = COPIERS[i % 3 :] + COPIERS[: i % 3]
    for k in order:
        log(f"round {i}: {k}")
        b = SeaweedFS.start(tmp / f"b-{i}-{k}")
        try:
            _warm_up(b)
            if k == "storecomp":
                with _ns(a, a_url, b, b.url("site"), site=f"b{i}") as ns:
                    t0 = time.perf_counter()
                    r = place("sc://ds/train", f"b{i}", namespace=ns, workers=workers, part_bytes=part)
                    out[k] = {"seconds": time.perf_counter() - t0, **r.to_json()}
            elif k == "rclone":
                out[k] = bench_rclone(a, a_url, b, b.url("rclone"), workers, part)
            else:
                out[k] = bench_boto3(a, a_url, list(keys), b, b.url("boto3"), workers, part)
        finally:
            b.stop()
            shutil.rmtree(tmp / f"b-{i}-{k}", ignore_errors=True)
        if "seconds" in out[k]:
            out[k]["bytes_per_s"] = total / out[k]["seconds"]
    peers = [out[k]["bytes_per_s"] for k in ("rclone", "boto3") if "bytes_per_s" in out[k]]
    out["ratio_vs_best_peer"] = out["storecomp"]["bytes_per_s"] / max(peers) if peers else None
    out["order"] = list(order)
    out["load_after"] = os.getloadavg()[0]
    return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians and ranges over the rounds (MiB/s per copier, storecomp / best peer)."""
    out: dict[str, Any] = {}
    for k in COPIERS:
        rates = [r[k]["bytes_per_s"] / 2**20 for r in rounds if "bytes_per_s" in r[k]]
        if rates:
            out[f"{k}_mib_s"] = {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}
    ratios = [r["ratio_vs_best_peer"] for r in rounds if r.get("ratio_vs_best_peer")]
    if ratios:
        out["ratio_vs_best_peer"] = statistics.median(ratios)
        out["ratio_range"] = [min(ratios), max(ratios)]
    loads = [x for r in rounds for x in (r["load_before"], r["load_after"])]
    if loads:
        out["load_range"] = [min(loads), max(loads)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="smoke-test sizes")
    ap.add_argument("--mib", type=int, default=2048, help="snapshot size (MiB)")
    ap.add_argument("--blob-mib", type=int, default=64)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--part-mib", type=int, default=8)
    ap.add_argument("--read-s", type=float, default=5.0, help="seconds of each reader measurement")
    ap.add_argument(
        "--settle-s", type=float, default=3.0, help="seconds between starting a migration and counting the reader's samples"
    )
    ap.add_argument("--rounds", type=int, default=1, help="copy rounds (each to a fresh site b, the copiers' order rotated)")
    ap.add_argument("--copy-only", action="store_true", help="only the copy rounds (no resume, no reader)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.tiny:
        args.mib, args.blob_mib, args.read_s, args.settle_s = 24, 4, 0.5, 0.0
    total, blob, part = args.mib << 20, args.blob_mib << 20, args.part_mib << 20
    log = lambda m: print(f"  .. {m}", file=sys.stderr, flush=True)  # noqa: E731
    out: dict[str, Any] = {
        "config": {"mib": args.mib, "blob_mib": args.blob_mib, "workers": args.workers, "part_mib": args.part_mib}
    }
    with tempfile.TemporaryDirectory(prefix="bench-place-") as tmp:
        a = SeaweedFS.start(Path(tmp) / "a")
        b: SeaweedFS | None = None
        try:
            _warm_up(a)
            a_url = a.url("site")
            sa = open_store(a_url, **a.store_options())
            log(f"writing a {args.mib} MiB snapshot at site a")
            h, keys = _write_snapshot(sa, total, blob)
            total = len(keys) * blob
            rounds = [copy_round(i, a, a_url, keys, Path(tmp), total, args.workers, part, log) for i in range(args.rounds)]
            out["rounds"] = rounds
            out.update(summarize(rounds))
            if not args.copy_only:
                b = SeaweedFS.start(Path(tmp) / "b")
                _warm_up(b)
                b_url = b.url("site")
                log("resume after kill -9")
                cfg = Path(tmp) / "mounts.toml"
                os.environ.update(a.env())  # both servers share the test credentials
                with Relay(b.ports["s3"]) as relay:
                    _mount_toml(cfg, a, a_url, b, b.url("resume"), "resume", b_endpoint=relay.endpoint)
                    out["resume"] = bench_resume(
                        cfg, open_store(b.url("resume"), **b.store_options()), keys, total, blob, part, b, b.url("resume"), relay
                    )
                log("reader alone / during migrations")
                with _ns(a, a_url, b, b_url) as ns:
                    out["reader_alone"] = bench_reader(ns, args.read_s, None)
                    env_cfg = Path(tmp) / "mig.toml"
                    base = [sys.executable, "-m", "storecomp", "place", "sc://ds/train", "--to"]
                    _mount_toml(env_cfg, a, a_url, b, b.url("mig1"), "mig1")
                    os.environ["STORECOMP_MOUNTS"] = str(env_cfg)
                    out["reader_during"] = bench_reader(ns, args.read_s, base + ["mig1"], args.settle_s)
                    _mount_toml(env_cfg, a, a_url, b, b.url("mig2"), "mig2")
                    out["reader_during_no_yield"] = bench_reader(ns, args.read_s, base + ["mig2", "--no-yield"], args.settle_s)
                    del os.environ["STORECOMP_MOUNTS"]
                alone = out["reader_alone"]["samples_per_s"]
                out["reader_ratio"] = out["reader_during"]["samples_per_s"] / alone
                out["reader_ratio_no_yield"] = out["reader_during_no_yield"]["samples_per_s"] / alone
        finally:
            a.stop()
            if b is not None:
                b.stop()
    print_table(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


def print_table(out: dict[str, Any]) -> None:
    c = out["config"]
    print(f"copy of a {c['mib']} MiB snapshot ({c['blob_mib']} MiB blobs), {c['workers']} at once, parts of {c['part_mib']} MiB")
    for r in out["rounds"]:
        print(f" round {r['round']} (order {', '.join(r['order'])}; load {r['load_before']:.1f} -> {r['load_after']:.1f})")
        for k in COPIERS:
            x = r[k]
            if "bytes_per_s" in x:
                print(f"  {k:10} {x['seconds']:8.2f} s  {x['bytes_per_s'] / 2**20:8.1f} MiB/s")
            else:
                print(f"  {k:10} {x.get('skipped') or x.get('error')}")
        sc = r["storecomp"]
        if "verify_s" in sc:
            print(
                f"  storecomp worker-seconds: streaming parts a -> b {sc['put_s']:.1f} (of which waiting for source parts "
                f"{sc.get('source_s', 0):.1f}), reading back from b {sc['verify_s']:.1f}"
            )
        if r.get("ratio_vs_best_peer"):
            print(f"  storecomp / best peer: {r['ratio_vs_best_peer']:.2f}x")
    if out.get("ratio_vs_best_peer"):
        lo, hi = out["ratio_range"]
        print(
            f"median storecomp / best peer over {len(out['rounds'])} round(s): {out['ratio_vs_best_peer']:.2f}x "
            f"(range {lo:.2f}-{hi:.2f}; storecomp also reads every blob back and checks crc32c); "
            f"load average {out['load_range'][0]:.1f}-{out['load_range'][1]:.1f}"
        )
    if "resume" not in out:
        return
    rs = out["resume"]
    print(
        f"resume after kill -9: {rs['blobs_present_after_kill']} blobs done and {rs['uploads_in_flight_at_kill']} in flight "
        f"({rs['part_bytes_left_at_kill']} bytes of their parts at b); the rerun kept {rs['rerun_bytes_resumed']} bytes of "
        f"parts and uploaded {rs['rerun_bytes_uploaded']} of the {rs['bytes_missing_after_kill']} not complete. Sent to b: "
        f"killed run {rs['wire_bytes_killed_run']} + rerun {rs['wire_bytes_rerun']} bytes, repeated {rs['repeated_bytes']} "
        f"(one part per blob in flight: {rs['repeat_bound']})"
    )
    if rs.get("rerun_error"):
        print(f"  the rerun failed: {rs['rerun_error']}")
    print(
        f"reader 64 KiB samples/s: alone {out['reader_alone']['samples_per_s']:.0f}, during a migration "
        f"{out['reader_during']['samples_per_s']:.0f} ({out['reader_ratio']:.2f}x, the copy yielding), with --no-yield "
        f"{out['reader_during_no_yield']['samples_per_s']:.0f} ({out['reader_ratio_no_yield']:.2f}x)"
    )


if __name__ == "__main__":
    sys.exit(main())
