"""Shared helpers for KV-cache tests (imported by tests/kvcache and tests/integrations).

* ``FP``: 3 layers x 2 KV heads x 16 head dim, bfloat16; chunks of ``CHUNK`` = 8 tokens
  (one chunk object = 4 KiB header + 3 x 4 KiB layers).
* ``make_kv(tokens, seed)`` / ``zeros_kv(tokens)``: per-layer (key, value) pairs of
  [1, kv_heads, tokens, head_dim], the transformers layout.
"""

from __future__ import annotations

import torch

from storecomp.kvcache import ModelFingerprint
from storecomp.store.retry import RetryPolicy

FP = ModelFingerprint("tiny-test", "bfloat16", layers=3, kv_heads=2, head_dim=16)
CHUNK = 8
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=2.0, connect_timeout_s=0.5)

KV = list[tuple[torch.Tensor, torch.Tensor]]


def make_kv(tokens: int, seed: int = 0, fp: ModelFingerprint = FP) -> KV:
    g = torch.Generator().manual_seed(seed)
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    dt = getattr(torch, fp.dtype)
    return [(torch.randn(shape, generator=g).to(dt), torch.randn(shape, generator=g).to(dt)) for _ in range(fp.layers)]


def zeros_kv(tokens: int, fp: ModelFingerprint = FP) -> KV:
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    dt = getattr(torch, fp.dtype)
    return [(torch.zeros(shape, dtype=dt), torch.zeros(shape, dtype=dt)) for _ in range(fp.layers)]


def same_prefix(a: KV, b: KV, n: int) -> bool:
    return all(torch.equal(x[:, :, :n], y[:, :, :n]) for pa, pb in zip(a, b, strict=True) for x, y in zip(pa, pb, strict=True))


def untouched_after(out: KV, n: int) -> bool:
    return all(bool((t[:, :, n:] == 0).all()) for pair in out for t in pair)
