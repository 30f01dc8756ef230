"""Peer loaders on the same synthetic data, cold page cache: storecomp vs torch, Mosaic, LitData, WebDataset.

    benchmarks/peers/setup_venv.sh                 # once: the peers' own venv
    python benchmarks/peers/bench_peers.py --dir /nvme/peers --size 2G --duration 15 --json peers.json

N samples of 64 KiB (random bytes + an int label) are written once per
format under ``--dir`` (reused by later runs of the same size), then every
(peer, num_workers) runs in its own process (run_one.py): the data files are
evicted from the page cache (fsync + posix_fadvise DONTNEED, no root; again
whenever a pass over the data ends, so every pass reads from storage), the
loader reads batches of 64 in a random order for ``--duration`` seconds
(``--one-pass``: at most one pass), with an optional simulated step
(``--step-ms``, a sleep) after each batch. storecomp and the torch
DataLoader run in this Python; MosaicML Streaming, LitData and WebDataset in
the peer venv (``--python``, default ``$STORECOMP_PEERS_PYTHON`` or
``~/.cache/storecomp-peers-venv/bin/python``). A peer that cannot run there
is reported as skipped with the reason, never as a failure.

The table gives samples/s and each row's ratio to storecomp (the default
loader, measured in the same run), GB/s, CPU-seconds per GB of the whole
process tree, cores used, peak RSS/PSS of the tree, data-wait fraction and
start-up time (first batch; not in the window). ``--tiny`` is the smoke run.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import CHUNK, SAMPLE_BYTES, evict  # noqa: E402
from loaders import PEERS  # noqa: E402

RUN_ONE = os.path.join(HERE, "run_one.py")
DEFAULT_VENV_PYTHON = os.path.expanduser("~/.cache/storecomp-peers-venv/bin/python")
REFERENCE = "storecomp"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'2G', '512M', '4096' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r} (examples: 512M, 2G)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_ints(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"need non-negative integers: {text!r}")
    return out


def log(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- peers and their Python


def probe(peer: str, venv_python: str) -> tuple[str | None, str]:
    """(python to run ``peer`` with, or None when skipped; version or the reason for skipping)."""
    fmt, where, module = PEERS[peer]
    if where == "project":
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return None, f"{module} is not installed in this Python ({sys.executable})"
        return sys.executable, _version(module.split(".")[0])
    if not os.path.exists(venv_python):
        return None, f"peer venv Python {venv_python} not found (run benchmarks/peers/setup_venv.sh)"
    code = f"import {module}, importlib.metadata as m; print(getattr({module}, '__version__', ''))"
    try:
        proc = subprocess.run([venv_python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{venv_python} could not import {module}: {e}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"{venv_python} could not import {module}: {last}"
    return venv_python, proc.stdout.strip()


def _version(dist: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return ""


# ---------------------------------------------------------------- data


def ensure_format(directory: str, fmt: str, n: int, python: str, timeout: float) -> tuple[str, float]:
    """Path of format ``fmt`` holding ``n`` samples under ``directory`` (written when missing); seconds spent writing."""
    path = os.path.join(directory, fmt)
    marker = os.path.join(directory, f"{fmt}.done.json")
    want = {"n": n, "sample_bytes": SAMPLE_BYTES, "format": fmt}
    try:
        with open(marker) as f:
            if json.load(f) == want and os.path.isdir(path):
                return path, 0.0
    except (OSError, ValueError):
        pass
    shutil.rmtree(path, ignore_errors=True)
    if os.path.exists(marker):
        os.unlink(marker)
    os.makedirs(path)
    log(f"writing {n} samples ({n * SAMPLE_BYTES / 2**30:.2f} GiB) as {fmt}")
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, RUN_ONE, "write", fmt, path, str(n)], capture_output=True, text=True, timeout=timeout, cwd=directory
    )
    if proc.returncode != 0:
        shutil.rmtree(path, ignore_errors=True)
        raise RuntimeError(f"writing {fmt} failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")
    with open(marker, "w") as f:
        json.dump(want, f)
    return path, time.perf_counter() - t0


# ---------------------------------------------------------------- runs


def run_cases(python: str, cases: list[tuple[str, int]], root: str, args: argparse.Namespace, n: int) -> list[dict[str, Any]]:
    """Run ``cases`` ((peer, num_workers)) one after another in one process of ``python``; a result (or error) per case."""
    cmd = [python, RUN_ONE, "run", root, *(f"{p}:{w}" for p, w in cases), "--duration", str(args.duration)]
    cmd += ["--max-samples", str(n if args.one_pass else 0), "--step-ms", str(args.step_ms), "--seed", str(args.seed)]
    timeout = len(cases) * (args.duration + args.startup_timeout)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = f"timed out after {timeout:.0f} s", None
    got = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[len("RESULT ") :])
            got[(res["peer"], res["workers"])] = res
    results = []
    for peer, w in cases:
        if (peer, w) in got:
            res = got[(peer, w)]
            if rc != 0:
                res["exit_note"] = f"exit {rc} after the measurement: {err.strip()[-300:]}"
        else:
            res = {"peer": peer, "workers": w, "error": f"exit {rc}: {err.strip()[-1500:]}"}
        results.append(res)
    return results


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem / 2**30, 1), "kernel": platform.release()}


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE, timeout=10)
        return out.stdout.strip()
    except OSError:
        return ""


def _f(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(results: list[dict[str, Any]], skipped: dict[str, str]) -> str:
    ref = [r for r in results if r["peer"] == REFERENCE and "error" not in r]
    ref_sps = max((r["samples_per_s"] for r in ref), default=None)
    head = (
        f"{'peer':<15}{'workers':>8}{'samples/s':>11}{'vs sc':>7}{'GB/s':>7}{'CPU s/GB':>10}"
        f"{'cores':>7}{'RSS MiB':>9}{'PSS MiB':>9}{'wait':>7}{'start s':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['peer']:<15}{r['workers']:>8}  ERROR: {r['error'].splitlines()[-1][:80]}")
            continue
        ratio = r["samples_per_s"] / ref_sps if ref_sps else None
        lines.append(
            f"{r['peer']:<15}{r['workers']:>8}{r['samples_per_s']:>11,.0f}{_f(ratio, '.2f'):>7}{r['gbps']:>7.2f}"
            f"{_f(r['cpu_s_per_gb'], '.2f'):>10}{r['cores_used']:>7.2f}{r['peak_rss_mib']:>9.0f}{r['peak_pss_mib']:>9.0f}"
            f"{r['data_wait_fraction']:>7.1%}{r['startup_s']:>9.2f}"
        )
    for peer, why in skipped.items():
        lines.append(f"{peer:<15}{'-':>8}  skipped: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="folder for the data (kept and reused; default: a temporary folder)")
    p.add_argument("--size", type=parse_size, default=parse_size("2G"), help="data set size per format (default 2G)")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per run (default 15)")
    p.add_argument("--step-ms", type=float, default=0.0, help="simulated training step after each batch, ms (default 0)")
    p.add_argument("--workers", type=parse_ints, default=[0, 2], help="num_workers for the peers (default 0,2)")
    p.add_argument("--torch-workers", type=parse_ints, default=[0, 2, 4], help="num_workers for torch (default 0,2,4)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {','.join(PEERS)}")
    p.add_argument("--python", default=os.environ.get("STORECOMP_PEERS_PYTHON", DEFAULT_VENV_PYTHON),
                   help="the peer venv's Python (default $STORECOMP_PEERS_PYTHON or ~/.cache/storecomp-peers-venv)")  # fmt: skip
    p.add_argument("--one-pass", action="store_true", help="stop each run after one pass over the data")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds a run may take beyond --duration")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON")
    p.add_argument("--tiny", action="store_true", help="smoke run: 16 MiB, 0.3 s per run")
    args = p.parse_args(argv)
    peers = [x for x in args.peers.split(",") if x]
    unknown = [x for x in peers if x not in PEERS]
    if unknown:
        p.error(f"unknown peer(s) {unknown}; choose from {','.join(PEERS)}")
    if args.tiny:
        args.size, args.duration, args.one_pass = 16 << 20, 0.3, True
    n = max(CHUNK, args.size // SAMPLE_BYTES // CHUNK * CHUNK)
    if args.json:
        try:
            with open(args.json, "a"):
                pass
        except OSError as e:
            p.error(f"cannot write --json {args.json}: {e}")

    pythons: dict[str, str] = {}
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for peer in peers:
        py, note = probe(peer, args.python)
        if py is None:
            skipped[peer] = note
            log(f"{peer}: skipped ({note})")
        else:
            pythons[peer], versions[peer] = py, note

    tmp = None if args.dir else tempfile.mkdtemp(prefix="storecomp-peers-")
    directory = os.path.abspath(args.dir or tmp or ".")
    results: list[dict[str, Any]] = []
    write_s: dict[str, float] = {}
    try:
        data: dict[str, str] = {}
        for peer, py in pythons.items():
            fmt = PEERS[peer][0]
            if fmt in data:
                continue
            try:
                data[fmt], write_s[fmt] = ensure_format(directory, fmt, n, py, timeout=3600)
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                results.append({"peer": peer, "workers": -1, "error": str(e)})
        cases = []
        for peer in pythons:
            if PEERS[peer][0] not in data:
                continue
            if peer.startswith("storecomp"):
                counts = [0]
            else:
                counts = args.torch_workers if peer.startswith("torch") else args.workers
            cases.extend((peer, w) for w in counts)
        if args.tiny:  # the smoke run: project-Python cases share one process (one torch import)
            shared = [c for c in cases if PEERS[c[0]][1] == "project"]
            groups = [shared] if shared else []
            groups += [[c] for c in cases if PEERS[c[0]][1] != "project"]
        else:
            groups = [[c] for c in cases]
        for group in groups:
            log(", ".join(f"{p} num_workers={w}" for p, w in group) + f": {args.duration:g} s each, cold")
            results.extend(run_cases(pythons[group[0][0]], group, directory, args, n))
        for path in data.values():
            evict(path)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    print(table(results, skipped))
    doc = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit(),
        "machine": machine(),
        "samples": n,
        "sample_bytes": SAMPLE_BYTES,
        "batch_size": 64,
        "duration_s": args.duration,
        "one_pass": args.one_pass,
        "step_ms": args.step_ms,
        "versions": versions,
        "write_s": write_s,
        "reference": REFERENCE,
        "results": results,
        "skipped": skipped,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
