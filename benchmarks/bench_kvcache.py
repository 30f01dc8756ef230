"""KV-cache store benchmark: tiers against their limits, measured in the same run.

Chunks of 256 tokens of a Llama-3-8B-shaped cache (32 layers x 8 KV heads x
128 head dim, bf16: 32 MiB per chunk), gathered from and scattered into a
vLLM-style paged cache (per layer [blocks, 2, 16, 8, 128], shuffled block ids)
and, for reference, transformers' contiguous [1, 8, seq, 128] tensors.

* host tier store / retrieve vs memcpy (torch copy of the same bytes);
* disk tier store / retrieve (O_DIRECT chunk files, fsync + rename per
  chunk, crc32c checked on every load) vs fio sequential O_DIRECT write and
  read (1 MiB, iodepth 32, io_uring) on the same file system;
* lookup of a 32K-token prompt (128 chunks) with hot metadata;
* time-to-first-token of a small CPU Llama with 90 % of the prompt stored vs none.

Rounds alternate ours and the limit; medians are reported. ``--tiny`` runs
everything at toy sizes in seconds (the test suite does, so this does not rot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from storecomp import KVCacheStore
from storecomp.bench._common import data_file
from storecomp.bench._fio import fio_path, fio_read, fio_write
from storecomp.kvcache import ModelFingerprint, PagedLayout

BLOCK = 16


def _paged(fp: ModelFingerprint, tokens: int, seed: int) -> PagedLayout:
    nblocks = tokens // BLOCK
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, fp.dtype)
    caches = [torch.randn(nblocks + 8, 2, BLOCK, fp.kv_heads, fp.head_dim, generator=g).to(dt) for _ in range(fp.layers)]
    ids = torch.randperm(nblocks + 8, generator=g)[:nblocks]
    return PagedLayout(caches, ids, BLOCK)


def _contiguous(fp: ModelFingerprint, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dt = getattr(torch, fp.dtype)
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    return [(torch.randn(shape).to(dt), torch.randn(shape).to(dt)) for _ in range(fp.layers)]


def _tokens(n: int, salt: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 7 + salt * 1_000_003) % 128_000


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def bench_host(fp: ModelFingerprint, chunks: int, repeats: int) -> dict[str, Any]:
    """Host tier: store and retrieve ``chunks`` chunks per round; memcpy of the same bytes."""
    tokens = chunks * 256
    payload = chunks * 2 * 256 * fp.kv_heads * fp.head_dim * fp.itemsize * fp.layers
    src = _paged(fp, tokens, 1)
    dst = _paged(fp, tokens, 2)
    hf = _contiguous(fp, tokens)
    a = torch.empty(payload // 2, dtype=torch.bfloat16).normal_()
    b = torch.empty_like(a)
    b.copy_(a)
    kv = KVCacheStore(fp, host_bytes=2 * chunks * (payload // chunks + 8192))
    runs: dict[str, list[float]] = {"store": [], "retrieve": [], "store_hf": [], "retrieve_hf": [], "memcpy": []}
    try:
        kv.store(_tokens(tokens, 0), src)  # warm: buffers allocated and faulted in once
        kv.store(_tokens(tokens, 1), src)
        for r in range(repeats):
            toks = _tokens(tokens, 2 + r)
            t0 = time.perf_counter()
            kv.store(toks, src)
            runs["store"].append(_gbps(payload, time.perf_counter() - t0))
            t0 = time.perf_counter()
            b.copy_(a)
            runs["memcpy"].append(_gbps(payload, time.perf_counter() - t0))
            t0 = time.perf_counter()
            n = kv.retrieve(toks, dst)
            runs["retrieve"].append(_gbps(payload, time.perf_counter() - t0))
            assert n == tokens
            toks = _tokens(tokens, 1000 + r)
            t0 = time.perf_counter()
            kv.store(toks, hf)
            runs["store_hf"].append(_gbps(payload, time.perf_counter() - t0))
            t0 = time.perf_counter()
            kv.retrieve(toks, hf)
            runs["retrieve_hf"].append(_gbps(payload, time.perf_counter() - t0))
    finally:
        kv.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "chunks_per_round": chunks,
        "bytes_per_round": payload,
        "gbps": med,
        "ratio_store": med["store"] / med["memcpy"],
        "ratio_retrieve": med["retrieve"] / med["memcpy"],
        "ratio_store_hf": med["store_hf"] / med["memcpy"],
        "ratio_retrieve_hf": med["retrieve_hf"] / med["memcpy"],
    }


def bench_disk(fp: ModelFingerprint, chunks: int, repeats: int, directory: str, fio_s: float) -> dict[str, Any]:
    """Disk tier (host tier off): store then retrieve from a fresh store; fio write/read alternate."""
    tokens = chunks * 256
    src = _paged(fp, tokens, 3)
    dst = _paged(fp, tokens, 4)
    runs: dict[str, list[float]] = {"store": [], "retrieve": [], "fio_write": [], "fio_read": []}
    kv_dir = os.path.join(directory, "kv")
    obj_bytes = KVCacheStore(fp, host_bytes=0).layout.nbytes
    total = chunks * obj_bytes
    fio_file = data_file(directory, max(1 << 20, (total >> 20) << 20))
    # One long-lived store per side, as in a server: chunk buffers are reused
    # after the first round (a warm-up round, not timed, pays their page faults).
    writer = KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir, write_through=True, disk_bytes=(repeats + 2) * total)
    reader = None
    try:
        writer.store(_tokens(tokens, 40), src)
        for r in range(repeats):
            toks = _tokens(tokens, 50 + r)
            t0 = time.perf_counter()
            writer.store(toks, src)
            runs["store"].append(_gbps(total, time.perf_counter() - t0))
            if fio_path():
                wfile = os.path.join(directory, "fio-write.dat")
                runs["fio_write"].append(fio_write(wfile, 1 << 20, 32, max(1 << 20, (total >> 20) << 20))["gbps"])
                os.unlink(wfile)
            if reader is None:  # opened after the first chunks exist: its index is rebuilt from disk
                reader = KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir)
                assert reader.retrieve(_tokens(tokens, 40), dst) == tokens  # warm-up
            t0 = time.perf_counter()
            n = reader.retrieve(toks, dst)
            runs["retrieve"].append(_gbps(total, time.perf_counter() - t0))
            assert n == tokens, n
            if fio_path():
                runs["fio_read"].append(fio_read(fio_file, "read", 1 << 20, 32, fio_s)["gbps"])
        if reader is not None:
            assert reader.stats()["disk"]["verify_failures"] == 0
    finally:
        writer.close()
        if reader is not None:
            reader.close()
    med = {k: statistics.median(v) if v else None for k, v in runs.items()}
    out: dict[str, Any] = {"chunks_per_round": chunks, "bytes_per_round": total, "gbps": med}
    if med["fio_write"]:
        out["ratio_store"] = med["store"] / med["fio_write"]  # type: ignore[operator]
        out["ratio_retrieve"] = med["retrieve"] / med["fio_read"]  # type: ignore[operator]
    return out


def bench_rebuild(directory: str, chunks: int) -> dict[str, Any]:
    """Disk index rebuild at start for ``chunks`` chunk files (small chunks: the cost is per file)."""
    fp = ModelFingerprint("rebuild", "bfloat16", layers=1, kv_heads=1, head_dim=8)
    kv_dir = os.path.join(directory, "rebuild")
    shutil.rmtree(kv_dir, ignore_errors=True)
    src = [(torch.zeros(1, 1, 256 * 100, 8, dtype=torch.bfloat16),) * 2]
    with KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir, write_through=True, disk_direct=False) as kv:
        for i in range(0, chunks, 100):
            kv.store(_tokens(256 * min(100, chunks - i), 7_000 + i), src)
    with KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir) as kv:
        assert kv.disk is not None
        found, seconds = len(kv.disk.entries), kv.disk.rebuild_seconds
    shutil.rmtree(kv_dir, ignore_errors=True)
    return {"chunks": found, "seconds": seconds}


def bench_lookup(chunks: int, repeats: int) -> dict[str, Any]:
    """lookup() of a prompt of ``chunks`` x 256 tokens, every chunk in the host index (hot metadata).

    The chunk payload size does not enter lookup (keys hash the tokens; the
    index is a dict), so the chunks here are tiny to keep memory low.
    """
    fp = ModelFingerprint("lookup", "bfloat16", layers=1, kv_heads=1, head_dim=8)
    tokens = _tokens(chunks * 256, 9)
    with KVCacheStore(fp, host_bytes=1 << 30) as kv:
        kv.store(tokens, [(torch.zeros(1, 1, len(tokens), 8, dtype=torch.bfloat16),) * 2])
        as_tensor = torch.from_numpy(tokens)
        as_list = tokens.tolist()
        times: dict[str, list[float]] = {"numpy": [], "tensor": [], "list": []}
        for _ in range(repeats):
            for name, arg in (("numpy", tokens), ("tensor", as_tensor), ("list", as_list)):
                t0 = time.perf_counter()
                n = kv.lookup(arg)
                times[name].append(time.perf_counter() - t0)
                assert n == len(tokens)
    return {"tokens": len(tokens), "ms": {k: 1e3 * min(v) for k, v in times.items()}}


def bench_ttft(prompt_tokens: int, repeats: int) -> dict[str, Any]:
    """TTFT of a small CPU Llama: 90 % of the prompt stored (host tier) vs no hit."""
    import transformers

    from storecomp.integrations.transformers import fingerprint_for, prefill

    cfg = transformers.LlamaConfig(
        vocab_size=32_000,
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 32_000, (1, prompt_tokens), generator=g)
    hit = int(prompt_tokens * 0.9)
    miss_s, hit_s, reused = [], [], 0
    with KVCacheStore(fingerprint_for(model, "bench-llama"), chunk_tokens=16) as kv:
        prefill(model, prompt[:, :hit], kv)
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = prefill(model, prompt, kv, store=False)
            int(r.logits[0, -1].argmax())
            hit_s.append(time.perf_counter() - t0)
            reused = r.reused
            t0 = time.perf_counter()
            with torch.inference_mode():
                int(model(prompt).logits[0, -1].argmax())
            miss_s.append(time.perf_counter() - t0)
    m, h = statistics.median(miss_s), statistics.median(hit_s)
    return {
        "prompt_tokens": prompt_tokens,
        "reused_tokens": reused,
        "ttft_ms_no_hit": m * 1e3,
        "ttft_ms_hit": h * 1e3,
        "speedup": m / h,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="toy sizes (seconds): the smoke run")
    p.add_argument("--dir", default=None, help="directory for the disk tier and fio files (default: a temp dir under /var/tmp)")
    p.add_argument("--chunks", type=int, default=16, help="chunks per round for the host and disk cases")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads for gathers and scatters")
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.torch_threads)
    if a.tiny:
        fp = ModelFingerprint("tiny", "bfloat16", layers=2, kv_heads=2, head_dim=64)
        chunks, repeats, fio_s, rebuild_n, ttft_tokens = 2, 1, 0.2, 200, 200
    else:
        fp = ModelFingerprint("llama-3-8b-shape", "bfloat16", layers=32, kv_heads=8, head_dim=128)
        chunks, repeats, fio_s, rebuild_n, ttft_tokens = a.chunks, a.repeats, 2.0, 10_000, 2_000
    directory = a.dir or tempfile.mkdtemp(prefix="sc-bench-kv-", dir="/var/tmp")
    os.makedirs(directory, exist_ok=True)
    res: dict[str, Any] = {"fingerprint": fp.canonical().decode(), "torch_threads": a.torch_threads, "dir": directory}
    try:
        res["host"] = bench_host(fp, chunks, repeats)
        res["disk"] = bench_disk(fp, chunks, repeats, directory, fio_s)
        res["lookup"] = bench_lookup(4 if a.tiny else 128, 3 if a.tiny else 20)
        res["rebuild"] = bench_rebuild(directory, rebuild_n)
        res["ttft"] = bench_ttft(ttft_tokens, repeats)
    finally:
        if a.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    _print(res)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def _print(res: dict[str, Any]) -> None:
    h, d = res["host"], res["disk"]
    g = h["gbps"]
    print(f"host tier ({h['chunks_per_round']} chunks/round): memcpy {g['memcpy']:.2f} GB/s")
    print(f"  paged:      store {g['store']:.2f} GB/s (ratio {h['ratio_store']:.2f})   "
          f"retrieve {g['retrieve']:.2f} GB/s (ratio {h['ratio_retrieve']:.2f})")  # fmt: skip
    print(f"  contiguous: store {g['store_hf']:.2f} GB/s (ratio {h['ratio_store_hf']:.2f})   "
          f"retrieve {g['retrieve_hf']:.2f} GB/s (ratio {h['ratio_retrieve_hf']:.2f})")  # fmt: skip
    dg = d["gbps"]
    if dg["fio_write"]:
        print(f"disk tier: store {dg['store']:.2f} GB/s vs fio write {dg['fio_write']:.2f} (ratio {d['ratio_store']:.2f})")
        print(f"  retrieve {dg['retrieve']:.2f} GB/s vs fio read {dg['fio_read']:.2f} (ratio {d['ratio_retrieve']:.2f})")
    else:
        print(f"disk tier: store {dg['store']:.2f} GB/s, retrieve {dg['retrieve']:.2f} GB/s (fio not found: no limit)")
    lk = res["lookup"]
    print(f"lookup {lk['tokens']} tokens: " + ", ".join(f"{k} {v:.3f} ms" for k, v in lk["ms"].items()))
    rb = res["rebuild"]
    print(f"disk index rebuild: {rb['chunks']} chunks in {rb['seconds'] * 1e3:.1f} ms")
    t = res["ttft"]
    print(f"TTFT ({t['prompt_tokens']} tokens, {t['reused_tokens']} reused): no hit {t['ttft_ms_no_hit']:.1f} ms, "
          f"90% hit {t['ttft_ms_hit']:.1f} ms, ratio {t['speedup']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
