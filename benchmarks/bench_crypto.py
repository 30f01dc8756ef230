"""Encryption at rest against the same work in the clear, measured in the same run.

* ``kv_disk``: KVCacheStore disk tier (host tier off, O_DIRECT, write-through):
  store a round of chunks, then retrieve them from a second store, plain and
  encrypted alternating within each repeat. Target: encrypted >= 0.8x plain.
* ``kv_disk_page_cache``: the same with the disk tier's default page-cache
  policy (buffered while the chunks fit in memory, as a user gets by default):
  retrieves are then memory copies, and the ratio shows what AES-GCM costs next
  to a copy, not next to storage. Reported beside the target, not held to it.
* ``loader_cold``: storecomp.DataLoader over a shard dataset in a store, 64 KiB
  samples in random order, every data file evicted from the page cache before
  each measurement: the dataset in a LocalStore vs the same dataset sealed in an
  EncryptedStore over a LocalStore (same reader path, the only difference is
  the encryption), alternating. Target: encrypted >= 0.9x plain.

``--tiny`` runs everything at toy sizes in seconds (the test suite runs it, so
this does not rot). Prints JSON (and writes it with ``--json``); no key or
secret is ever in it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from storecomp import crypto
from storecomp.bench.loader import evict_tree
from storecomp.store import EncryptedStore, LocalStore

KV_TARGET = 0.8
LOADER_TARGET = 0.9
BATCH = 64


def _keys() -> crypto.StaticKeys:
    return crypto.StaticKeys([("bench", os.urandom(32))], "bench keys")


def bench_kv_disk(
    fp: Any, chunk_tokens: int, chunks: int, repeats: int, directory: Path, disk_direct: bool | None = True
) -> dict[str, Any]:
    """``disk_direct``: the disk tier's O_DIRECT option (True: the storage case; None: its page-cache policy)."""
    import torch

    from storecomp.kvcache import ChunkLayout, KVCacheStore

    tokens = chunks * chunk_tokens
    g = torch.Generator().manual_seed(0)
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    dt = getattr(torch, fp.dtype)
    src = [(torch.randn(shape, generator=g).to(dt), torch.randn(shape, generator=g).to(dt)) for _ in range(fp.layers)]
    dst = [(torch.empty(shape, dtype=dt), torch.empty(shape, dtype=dt)) for _ in range(fp.layers)]
    runs: dict[str, list[float]] = {f"{m}_{op}": [] for m in ("plain", "encrypted") for op in ("store", "retrieve")}
    keys = _keys()
    stores: dict[str, tuple[Any, Any]] = {}
    try:
        for mode in ("plain", "encrypted"):
            enc = keys if mode == "encrypted" else None
            kv_dir = directory / f"kv-{mode}-{disk_direct}"
            budget = (repeats + 2) * chunks * ChunkLayout(fp, chunk_tokens).nbytes * 2
            opts: dict[str, Any] = dict(
                chunk_tokens=chunk_tokens,
                host_bytes=0,
                disk_dir=kv_dir,
                disk_bytes=budget,
                encryption=enc,
                disk_direct=disk_direct,
            )
            w = KVCacheStore(fp, write_through=True, **opts)
            w.store(np.arange(tokens) + 7, src)  # warm-up: buffers faulted in, not timed
            r = KVCacheStore(fp, **opts)
            assert r.retrieve(np.arange(tokens) + 7, dst) == tokens
            stores[mode] = (w, r)
        nbytes = chunks * stores["plain"][0].layout.nbytes
        for rep in range(repeats):
            for mode in ("plain", "encrypted") if rep % 2 == 0 else ("encrypted", "plain"):
                w, r = stores[mode]
                toks = np.arange(tokens) + 1_000_000 * (rep + 1)
                t0 = time.perf_counter()
                w.store(toks, src)
                runs[f"{mode}_store"].append(nbytes / (time.perf_counter() - t0) / 1e9)
                t0 = time.perf_counter()
                n = r.retrieve(toks, dst)
                runs[f"{mode}_retrieve"].append(nbytes / (time.perf_counter() - t0) / 1e9)
                if n != tokens:
                    raise RuntimeError(f"{mode}: retrieved {n} of {tokens} tokens")
                if not all(torch.equal(a[0], b[0]) for a, b in zip(src, dst, strict=True)):
                    raise RuntimeError(f"{mode}: retrieved KV differs from what was stored")
        failures = sum(int(r.stats()["verify_failures"]) for _, r in stores.values())
    finally:
        for w, r in stores.values():
            w.close()
            r.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "disk_direct": disk_direct,
        "chunk_bytes": stores["plain"][0].layout.nbytes,
        "bytes_per_round": nbytes,
        "gbps": med,
        "runs": runs,
        "ratio_store": med["encrypted_store"] / med["plain_store"],
        "ratio_retrieve": med["encrypted_retrieve"] / med["plain_retrieve"],
        "target": KV_TARGET,
        "verify_failures": failures,
    }


def bench_loader_cold(size: int, duration: float, repeats: int, directory: Path, segment_bytes: int) -> dict[str, Any]:
    from storecomp.bench.loader import run_storecomp
    from storecomp.data import open_dataset, write_dataset

    plain_dir, sealed_dir = directory / "ds-plain", directory / "ds-sealed"
    rows = max(BATCH * 8, size // 65536)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (rows, 65536), np.uint8)
    write_dataset(plain_dir, {"x": x}, shard_bytes=64 << 20)
    del x
    keys = _keys()
    sealed = EncryptedStore(LocalStore(sealed_dir), keys, segment_bytes=segment_bytes)
    plain_store = LocalStore(plain_dir)
    for info in plain_store.list(""):
        sealed.put(info.key, plain_store.get(info.key))
    runs: dict[str, list[float]] = {"plain": [], "encrypted": []}
    cpu: dict[str, list[float]] = {"plain": [], "encrypted": []}
    for rep in range(repeats):
        for mode in ("plain", "encrypted") if rep % 2 == 0 else ("encrypted", "plain"):
            evict_tree(plain_dir if mode == "plain" else sealed_dir)
            store = plain_store if mode == "plain" else sealed
            c0 = time.process_time()
            res = run_storecomp(open_dataset(store), duration)
            runs[mode].append(float(res["samples_per_s"]))
            # This process's CPU (every thread) per sample: what the encryption costs, whatever the load.
            cpu[mode].append((time.process_time() - c0) / max(1.0, res["samples_per_s"] * res["seconds"]) * 1e6)
    sealed.close()
    plain_store.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "rows": rows,
        "sample_bytes": 65536,
        "segment_bytes": segment_bytes,
        "samples_per_s": med,
        "runs": runs,
        "cpu_us_per_sample": {k: statistics.median(v) for k, v in cpu.items()},
        "ratio": med["encrypted"] / med["plain"],
        "target": LOADER_TARGET,
    }


def _machine() -> str:
    """CPU model and the cores this process may use (the figures depend on AES-NI and on sharing)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.system()} {platform.release()}"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes (seconds): the smoke run")
    p.add_argument("--dir", default=None, help="working directory (default: a temp dir under /var/tmp)")
    p.add_argument("--chunks", type=int, default=8, help="KV chunks per round (Llama-3-8B shape: 32 MiB each)")
    p.add_argument("--loader-bytes", type=int, default=1 << 30, help="loader dataset size in bytes")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per loader measurement")
    p.add_argument("--segment-bytes", type=int, default=crypto.SEGMENT_BYTES, help="EncryptedStore segment size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    import torch

    from storecomp.kvcache import ModelFingerprint

    torch.set_num_threads(1)
    if a.tiny:
        fp, chunk_tokens, chunks, repeats = ModelFingerprint("tiny", "bfloat16", layers=2, kv_heads=2, head_dim=64), 16, 2, 1
        loader_bytes, duration = 4 << 20, 0.2
    else:
        fp = ModelFingerprint("meta-llama/Llama-3.1-8B", "bfloat16", layers=32, kv_heads=8, head_dim=128)
        chunk_tokens, chunks, repeats, loader_bytes, duration = 256, a.chunks, a.repeats, a.loader_bytes, a.duration
    directory = Path(a.dir or tempfile.mkdtemp(prefix="sc-bench-crypto-", dir="/var/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": _machine(),
        "commit": _commit(),
        "loadavg_start": os.getloadavg(),
        "aead": crypto.backend_info(),  # who runs AES-GCM (OpenSSL EVP on the engine, or cryptography) and why
    }
    try:
        res["kv_disk"] = bench_kv_disk(fp, chunk_tokens, chunks, repeats, directory)
        res["kv_disk_page_cache"] = bench_kv_disk(fp, chunk_tokens, chunks, repeats, directory, disk_direct=None)
        res["loader_cold"] = bench_loader_cold(loader_bytes, duration, repeats, directory, a.segment_bytes)
    finally:
        if a.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    kv, kc, ld = res["kv_disk"], res["kv_disk_page_cache"], res["loader_cold"]
    print(
        f"kv disk (O_DIRECT): store {kv['ratio_store']:.2f}x, retrieve {kv['ratio_retrieve']:.2f}x plain (target {KV_TARGET}); "
        f"kv disk (page cache): store {kc['ratio_store']:.2f}x, retrieve {kc['ratio_retrieve']:.2f}x plain; "
        f"loader cold: {ld['ratio']:.2f}x plain (target {LOADER_TARGET})",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
