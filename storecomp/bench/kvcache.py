"""The KV-cache benchmark: each tier of :class:`~storecomp.KVCacheStore` next to its limit, in one run.

Chunks of 256 tokens of a Llama-3-8B-shaped cache (32 layers x 8 KV heads x
128 head dim, bf16: 32 MiB per chunk), gathered from and scattered into a
vLLM-style paged cache (per layer ``[blocks, 2, 16, 8, 128]``, shuffled
block ids) and transformers' contiguous ``[1, 8, seq, 128]`` tensors.

* host tier store / retrieve vs memcpy (a torch copy of the same bytes,
  one thread, like the tier's copies);
* disk tier store / retrieve (O_DIRECT chunk files, fsync + rename per
  chunk, crc32c checked on every load) vs fio sequential O_DIRECT write and
  read (1 MiB, io_uring, at the engine's queue depth: STORECOMP_QUEUE_DEPTH,
  default 64) on the same file system: fio writes a
  file as large as one round and reads that file back, as the tier reads
  back what it just wrote;
* ``lookup`` of a 32K-token prompt (128 chunks) with hot metadata (target
  at most 1 ms; no hardware limit applies);
* disk index rebuild at start for N chunk files;
* time to first token of a small CPU Llama with 90 % of the prompt stored
  vs a full recompute.

Rounds alternate ours and the limit; medians are reported. Torch imports
happen inside the functions (``import storecomp.bench`` stays light).
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any

import numpy as np

from ..config import IOOptions
from ..errors import MissingPackageError
from . import Context, _fio
from .report import Figure

BLOCK = 16  #: tokens per block of the paged cache
CHUNK_TOKENS = 256
HOST_TARGET = 0.8  #: host tier / memcpy
DISK_TARGET = 0.9  #: disk tier / fio
LOOKUP_TARGET_MS = 1.0
MiB = 1 << 20


def llama8b_fingerprint() -> Any:
    """The fingerprint of the Llama-3-8B-shaped cache the issue's targets are stated for."""
    from ..kvcache import ModelFingerprint

    return ModelFingerprint("llama-3-8b-shape", "bfloat16", layers=32, kv_heads=8, head_dim=128)


def _paged(fp: Any, tokens: int, seed: int) -> Any:
    import torch

    from ..kvcache import PagedLayout

    nblocks = tokens // BLOCK
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, fp.dtype)
    caches = [torch.randn(nblocks + 8, 2, BLOCK, fp.kv_heads, fp.head_dim, generator=g).to(dt) for _ in range(fp.layers)]
    ids = torch.randperm(nblocks + 8, generator=g)[:nblocks]
    return PagedLayout(caches, ids, BLOCK)


def _contiguous(fp: Any, tokens: int) -> list[tuple[Any, Any]]:
    import torch

    dt = getattr(torch, fp.dtype)
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    return [(torch.randn(shape).to(dt), torch.randn(shape).to(dt)) for _ in range(fp.layers)]


def _tokens(n: int, salt: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 7 + salt * 1_000_003) % 128_000


def _gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else 0.0


def _median(v: list[float]) -> float | None:
    return statistics.median(v) if v else None


def bench_host(fp: Any, chunks: int, repeats: int) -> dict[str, Any]:
    """Host tier: store and retrieve ``chunks`` chunks per round, paged and contiguous; memcpy of the same bytes.

    Returns ``{"chunks_per_round", "bytes_per_round", "gbps": {case: median}, "ratio_<case>": ...}``.
    """
    import torch

    from ..kvcache import KVCacheStore

    tokens = chunks * CHUNK_TOKENS
    payload = chunks * 2 * CHUNK_TOKENS * fp.kv_heads * fp.head_dim * fp.itemsize * fp.layers
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
        # Each layout per round: store, memcpy of the same bytes, retrieve.
        layouts = (("", src, dst, 2, "paged"), ("_hf", hf, hf, 1000, "contiguous"))
        for r in range(repeats):
            for suffix, source, out, salt, name in layouts:
                toks = _tokens(tokens, salt + r)
                t0 = time.perf_counter()
                kv.store(toks, source)
                runs[f"store{suffix}"].append(_gbps(payload, time.perf_counter() - t0))
                t0 = time.perf_counter()
                b.copy_(a)
                runs["memcpy"].append(_gbps(payload, time.perf_counter() - t0))
                t0 = time.perf_counter()
                n = kv.retrieve(toks, out)
                runs[f"retrieve{suffix}"].append(_gbps(payload, time.perf_counter() - t0))
                if n != tokens:  # a miss is fast: never report it as a bandwidth
                    raise RuntimeError(f"host retrieve ({name} layout) returned {n} of {tokens} tokens")
    finally:
        kv.close()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "chunks_per_round": chunks,
        "bytes_per_round": payload,
        "gbps": med,
        "runs": runs,
        "ratio_store": med["store"] / med["memcpy"],
        "ratio_retrieve": med["retrieve"] / med["memcpy"],
        "ratio_store_hf": med["store_hf"] / med["memcpy"],
        "ratio_retrieve_hf": med["retrieve_hf"] / med["memcpy"],
    }


def bench_disk(fp: Any, chunks: int, repeats: int, directory: str, fio_s: float, fio: bool = True) -> dict[str, Any]:
    """Disk tier (host tier off): store, then retrieve from a second store; fio write / read alternate.

    ``fio=False`` (or no fio on PATH) skips the limit, with the reason in ``fio_skipped``.
    """
    from ..kvcache import KVCacheStore

    tokens = chunks * CHUNK_TOKENS
    src = _paged(fp, tokens, 3)
    dst = _paged(fp, tokens, 4)
    runs: dict[str, list[float]] = {"store": [], "retrieve": [], "fio_write": [], "fio_read": []}
    kv_dir = os.path.join(directory, "kv")
    from ..kvcache.format import ChunkLayout

    obj_bytes = ChunkLayout(fp, CHUNK_TOKENS).nbytes
    total = chunks * obj_bytes
    fio_bytes = max(MiB, (total >> 20) << 20)
    qd = IOOptions.load().queue_depth  # fio runs at the queue depth the tier's engine uses
    skip = _fio.skip_reason(fio)
    # One long-lived store per side, as in a server: chunk buffers are reused
    # after the first round (a warm-up round, not timed, pays their page faults).
    # O_DIRECT on both sides, forced: the tier is measured against the device (fio O_DIRECT), not the page cache.
    writer = KVCacheStore(
        fp, host_bytes=0, disk_dir=kv_dir, write_through=True, disk_bytes=(repeats + 2) * total, disk_direct=True
    )
    reader = None
    failures = 0
    try:
        writer.store(_tokens(tokens, 40), src)
        for r in range(repeats):
            toks = _tokens(tokens, 50 + r)
            t0 = time.perf_counter()
            writer.store(toks, src)
            runs["store"].append(_gbps(total, time.perf_counter() - t0))
            if skip is None:
                # fio writes a file as large as a round, then reads that same file back,
                # as the tier reads back the chunks it just wrote: both see the same
                # device caches (a VM's host cache favours freshly written data).
                wfile = os.path.join(directory, "fio-limit.dat")
                try:
                    runs["fio_write"].append(_fio.fio_write(wfile, MiB, qd, fio_bytes)["gbps"])
                    runs["fio_read"].append(_fio.fio_read(wfile, "read", MiB, qd, fio_s)["gbps"])
                except (RuntimeError, OSError, ValueError, KeyError) as e:
                    skip = f"fio failed: {e}"
                finally:
                    if os.path.exists(wfile):
                        os.unlink(wfile)
            if reader is None:  # opened after the first chunks exist: its index is rebuilt from disk
                reader = KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir, disk_direct=True)
                if reader.retrieve(_tokens(tokens, 40), dst) != tokens:  # warm-up
                    raise RuntimeError("disk tier lost the warm-up chunks")
            t0 = time.perf_counter()
            n = reader.retrieve(toks, dst)
            runs["retrieve"].append(_gbps(total, time.perf_counter() - t0))
            if n != tokens:
                raise RuntimeError(f"disk retrieve returned {n} of {tokens} tokens")
        if reader is not None:
            failures = int(reader.stats()["disk"]["verify_failures"])
    finally:
        writer.close()
        if reader is not None:
            reader.close()
        shutil.rmtree(kv_dir, ignore_errors=True)
    med = {k: _median(v) for k, v in runs.items()}
    out: dict[str, Any] = {
        "chunks_per_round": chunks,
        "bytes_per_round": total,
        "gbps": med,
        "runs": runs,
        "verify_failures": failures,
        "fio_skipped": skip,
        "queue_depth": qd,
    }
    if skip is None and med["fio_write"] and med["fio_read"]:
        out["ratio_store"] = med["store"] / med["fio_write"]  # type: ignore[operator]
        out["ratio_retrieve"] = med["retrieve"] / med["fio_read"]  # type: ignore[operator]
    return out


def bench_rebuild(directory: str, chunks: int) -> dict[str, Any]:
    """Disk index rebuild at start for ``chunks`` chunk files (small chunks: the cost is per file)."""
    import torch

    from ..kvcache import KVCacheStore, ModelFingerprint

    fp = ModelFingerprint("rebuild", "bfloat16", layers=1, kv_heads=1, head_dim=8)
    kv_dir = os.path.join(directory, "rebuild")
    shutil.rmtree(kv_dir, ignore_errors=True)
    src = [(torch.zeros(1, 1, CHUNK_TOKENS * 100, 8, dtype=torch.bfloat16),) * 2]
    try:
        with KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir, write_through=True, disk_direct=False) as kv:
            for i in range(0, chunks, 100):
                kv.store(_tokens(CHUNK_TOKENS * min(100, chunks - i), 7_000 + i), src)
        with KVCacheStore(fp, host_bytes=0, disk_dir=kv_dir) as kv:
            assert kv.disk is not None
            found, seconds = len(kv.disk.entries), kv.disk.rebuild_seconds
    finally:
        shutil.rmtree(kv_dir, ignore_errors=True)
    return {"chunks": found, "seconds": seconds}


def bench_lookup(chunks: int, repeats: int) -> dict[str, Any]:
    """``lookup()`` of a prompt of ``chunks`` x 256 tokens, every chunk in the host index (hot metadata).

    The chunk payload size does not enter lookup (keys hash the tokens; the
    index is a dict), so the chunks here are tiny to keep memory low. Best
    of ``repeats`` per token container (numpy, torch tensor, list), in ms.
    """
    import torch

    from ..kvcache import KVCacheStore, ModelFingerprint

    fp = ModelFingerprint("lookup", "bfloat16", layers=1, kv_heads=1, head_dim=8)
    tokens = _tokens(chunks * CHUNK_TOKENS, 9)
    with KVCacheStore(fp, host_bytes=1 << 30) as kv:
        kv.store(tokens, [(torch.zeros(1, 1, len(tokens), 8, dtype=torch.bfloat16),) * 2])
        args = (("numpy", tokens), ("tensor", torch.from_numpy(tokens)), ("list", tokens.tolist()))
        times: dict[str, list[float]] = {name: [] for name, _ in args}
        for _ in range(repeats):
            for name, arg in args:
                t0 = time.perf_counter()
                n = kv.lookup(arg)
                times[name].append(time.perf_counter() - t0)
                if n != len(tokens):
                    raise RuntimeError(f"lookup found {n} of {len(tokens)} tokens")
    return {"tokens": len(tokens), "ms": {k: 1e3 * min(v) for k, v in times.items()}}


def bench_ttft(prompt_tokens: int, repeats: int) -> dict[str, Any]:
    """Time to first token of a small CPU Llama (4 layers, hidden 256): 90 % of the prompt stored vs no hit."""
    import torch

    from ..optional import require

    transformers = require("transformers", "the kvcache TTFT case (a small Llama built from a config)")
    from ..integrations.transformers import fingerprint_for, prefill
    from ..kvcache import KVCacheStore

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
        # One untimed round of each side first: first-call allocations and lazy
        # initialisation would otherwise land on whichever side runs first.
        prefill(model, prompt, kv, store=False)
        with torch.inference_mode():
            model(prompt)
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


def scale(size_bytes: int) -> dict[str, int]:
    """Sizes of each part for a ``--size`` budget: chunks per round of the host and disk
    cases (32 MiB each; 1 to 16), index-rebuild chunk files (200 to 10,000), TTFT prompt tokens."""
    chunk = 32 * MiB
    return {
        "chunks": max(1, min(16, size_bytes // chunk)),
        "rebuild_chunks": max(200, min(10_000, (size_bytes // (256 * 1024)) // 100 * 100)),
        "ttft_tokens": 1024 if size_bytes >= 256 * MiB else 512,
    }


def run_suite(ctx: Context) -> dict[str, Any]:
    """``storecomp bench kvcache``: every part at sizes scaled from ``ctx.size_bytes``.

    Torch runs on one intra-op thread for the tier copies and memcpy alike
    (restored afterwards); the TTFT part uses torch's default threads.
    """
    import torch

    sizes = scale(ctx.size_bytes)
    fp = llama8b_fingerprint()
    threads = torch.get_num_threads()
    out: dict[str, Any] = {
        "fingerprint": fp.canonical().decode(),
        "chunk_bytes": 32 * MiB,
        "sizes": sizes,
        "repeats": ctx.repeats,
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    seconds: dict[str, float] = {}

    def part(name: str, message: str, fn: Any, *args: Any) -> None:
        ctx.say(f"kvcache: {message}")
        t0 = time.perf_counter()
        out[name] = fn(*args)
        seconds[name] = round(time.perf_counter() - t0, 3)

    torch.set_num_threads(1)
    try:
        part("host", f"host tier, {sizes['chunks']} chunks of 32 MiB per round", bench_host, fp, sizes["chunks"], ctx.repeats)
        part("disk", "disk tier", bench_disk, fp, sizes["chunks"], ctx.repeats, ctx.directory, ctx.duration_s, ctx.fio)
    finally:
        torch.set_num_threads(threads)
    part("lookup", "lookup of 32K tokens", bench_lookup, 128, 20)
    part(
        "rebuild",
        f"index rebuild of {sizes['rebuild_chunks']} chunk files",
        bench_rebuild,
        ctx.directory,
        sizes["rebuild_chunks"],
    )
    try:
        part("ttft", f"time to first token, {sizes['ttft_tokens']}-token prompt", bench_ttft, sizes["ttft_tokens"], ctx.repeats)
    except MissingPackageError as e:
        out["ttft"] = {"skipped": str(e)}
    out["seconds"] = seconds
    out["loadavg_end"] = os.getloadavg()
    return out


def figures(result: dict[str, Any]) -> list[Figure]:
    """Rows: host and disk tiers vs memcpy and fio, lookup latency, index rebuild, TTFT hit vs recompute."""
    out: list[Figure] = []
    load = f"load avg {result['loadavg_start'][0]:.1f} on {result['cpu_count']} cores"
    h = result["host"]
    g = h["gbps"]
    for case, key, what in (
        ("host_store_paged", "store", "gather from a paged cache"),
        ("host_retrieve_paged", "retrieve", "scatter into a paged cache"),
        ("host_store_hf", "store_hf", "from transformers [1, H, seq, D] tensors"),
        ("host_retrieve_hf", "retrieve_hf", "into transformers [1, H, seq, D] tensors"),
    ):
        out.append(Figure(
            suite="kvcache", case=case, unit="GB/s", value=g[key], limit=("memcpy", g["memcpy"]), target=HOST_TARGET,
            note=f"{h['chunks_per_round']} chunks of 32 MiB per round, {what}; {load}",
        ))  # fmt: skip
    d = result["disk"]
    dg = d["gbps"]
    skip = d.get("fio_skipped")
    for case, key, fio_key, limit_name in (
        ("disk_store", "store", "fio_write", "fio write"),
        ("disk_retrieve", "retrieve", "fio_read", "fio read"),
    ):
        note = (f"{d['chunks_per_round']} chunks per round, O_DIRECT, crc32c checked on load; "
                f"fio 1 MiB at iodepth {d.get('queue_depth', 32)} (the engine's queue depth)")  # fmt: skip
        if skip:
            note += f"; limit skipped: {skip}"
        out.append(Figure(
            suite="kvcache", case=case, unit="GB/s", value=dg[key],
            limit=None if skip or not dg[fio_key] else (limit_name, dg[fio_key]), target=DISK_TARGET, note=note,
        ))  # fmt: skip
    lk = result["lookup"]
    ms = lk["ms"]["numpy"]
    verdict = "ok" if ms <= LOOKUP_TARGET_MS else "MISSED"
    out.append(Figure(
        suite="kvcache", case=f"lookup_{lk['tokens'] // 1024}k_tokens", unit="ms", value=ms, higher_is_better=False,
        peers={"token list": lk["ms"]["list"], "torch tensor": lk["ms"]["tensor"]},
        note=f"target <= {LOOKUP_TARGET_MS:g} ms: {verdict}; hot metadata, no hardware limit applies",
    ))  # fmt: skip
    rb = result["rebuild"]
    out.append(Figure(
        suite="kvcache", case=f"index_rebuild_{rb['chunks']}", unit="ms", value=rb["seconds"] * 1e3,
        higher_is_better=False, note=f"disk index rebuilt from {rb['chunks']} chunk files at start",
    ))  # fmt: skip
    t = result["ttft"]
    if "skipped" in t:
        skipped = f"skipped: {t['skipped']}"
        out.append(Figure("kvcache", "ttft_90pct_hit", "ms", float("nan"), higher_is_better=False, note=skipped))
        return out
    out.append(Figure(
        suite="kvcache", case="ttft_90pct_hit", unit="ms", value=t["ttft_ms_hit"], higher_is_better=False,
        peers={"recompute": t["ttft_ms_no_hit"]},
        note=(f"small CPU Llama, {t['prompt_tokens']}-token prompt, {t['reused_tokens']} tokens loaded: "
              f"{t['speedup']:.2f}x faster than recomputing the prefill"),
    ))  # fmt: skip
    return out


def hints(result: dict[str, Any]) -> list[str]:
    """Findings beyond the ratios: verification failures, a slow lookup, a loaded machine."""
    out = []
    if result["disk"].get("verify_failures"):
        out.append(f"kvcache: {result['disk']['verify_failures']} disk chunks failed verification: check the disk")
    if result["lookup"]["ms"]["numpy"] > LOOKUP_TARGET_MS:
        out.append("kvcache: lookup above 1 ms: pass tokens as a numpy int array (no per-token conversion)")
    load = max(result["loadavg_start"][0], result.get("loadavg_end", (0.0,))[0])
    cores = result["cpu_count"] or 1
    if load > cores:
        out.append(f"kvcache: load average {load:.1f} on {cores} cores during the run: CPU-bound copies read low")
    return out
