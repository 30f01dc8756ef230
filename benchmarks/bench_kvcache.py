"""KV-cache store benchmark: tiers against their limits, measured in the same run.

A thin wrapper over :mod:`storecomp.bench.kvcache` (what ``storecomp bench
kvcache`` runs) with knobs for the chunk count and repeats, and ``--tiny``:
everything at toy sizes in seconds (the test suite runs it, so this does
not rot). See that module for what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

import torch

from storecomp.bench import kvcache as kvb
from storecomp.kvcache import ModelFingerprint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes (seconds): the smoke run")
    p.add_argument("--dir", default=None, help="directory for the disk tier and fio files (default: a temp dir under /var/tmp)")
    p.add_argument("--chunks", type=int, default=16, help="chunks per round for the host and disk cases")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for gathers and scatters")
    p.add_argument("--no-fio", action="store_true", help="skip the fio limit")
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.torch_threads)
    if a.tiny:
        fp = ModelFingerprint("tiny", "bfloat16", layers=2, kv_heads=2, head_dim=64)
        chunks, repeats, fio_s, rebuild_n, ttft_tokens = 2, 1, 0.2, 200, 200
    else:
        fp = kvb.llama8b_fingerprint()
        chunks, repeats, fio_s, rebuild_n, ttft_tokens = a.chunks, a.repeats, 2.0, 10_000, 2_000
    directory = a.dir or tempfile.mkdtemp(prefix="sc-bench-kv-", dir="/var/tmp")
    os.makedirs(directory, exist_ok=True)
    res: dict[str, Any] = {
        "fingerprint": fp.canonical().decode(),
        "torch_threads": a.torch_threads,
        "dir": directory,
        "loadavg_start": os.getloadavg(),
    }
    try:
        res["host"] = kvb.bench_host(fp, chunks, repeats)
        res["disk"] = kvb.bench_disk(fp, chunks, repeats, directory, fio_s, fio=not a.no_fio)
        res["lookup"] = kvb.bench_lookup(4 if a.tiny else 128, 3 if a.tiny else 20)
        res["rebuild"] = kvb.bench_rebuild(directory, rebuild_n)
        res["ttft"] = kvb.bench_ttft(ttft_tokens, repeats)
    finally:
        if a.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()
    _print(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _print(res: dict[str, Any]) -> None:
    h, d = res["host"], res["disk"]
    g = h["gbps"]
    print(f"load average {res['loadavg_start'][0]:.1f} at start, {res['loadavg_end'][0]:.1f} at end ({os.cpu_count()} cores)")
    print(f"host tier ({h['chunks_per_round']} chunks/round): memcpy {g['memcpy']:.2f} GB/s")
    print(f"  paged:      store {g['store']:.2f} GB/s (ratio {h['ratio_store']:.2f})   "
          f"retrieve {g['retrieve']:.2f} GB/s (ratio {h['ratio_retrieve']:.2f})")  # fmt: skip
    print(f"  contiguous: store {g['store_hf']:.2f} GB/s (ratio {h['ratio_store_hf']:.2f})   "
          f"retrieve {g['retrieve_hf']:.2f} GB/s (ratio {h['ratio_retrieve_hf']:.2f})")  # fmt: skip
    dg = d["gbps"]
    if "ratio_store" in d:
        print(f"disk tier: store {dg['store']:.2f} GB/s vs fio write {dg['fio_write']:.2f} (ratio {d['ratio_store']:.2f})")
        print(f"  retrieve {dg['retrieve']:.2f} GB/s vs fio read {dg['fio_read']:.2f} (ratio {d['ratio_retrieve']:.2f})")
    else:
        print(f"disk tier: store {dg['store']:.2f} GB/s, retrieve {dg['retrieve']:.2f} GB/s (no limit: {d['fio_skipped']})")
    lk = res["lookup"]
    print(f"lookup {lk['tokens']} tokens: " + ", ".join(f"{k} {v:.3f} ms" for k, v in lk["ms"].items()))
    rb = res["rebuild"]
    print(f"disk index rebuild: {rb['chunks']} chunks in {rb['seconds'] * 1e3:.1f} ms")
    t = res["ttft"]
    print(f"TTFT ({t['prompt_tokens']} tokens, {t['reused_tokens']} reused): no hit {t['ttft_ms_no_hit']:.1f} ms, "
          f"90% hit {t['ttft_ms_hit']:.1f} ms, ratio {t['speedup']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
