"""Prefix reuse for Hugging Face transformers: load a stored prefix's KV, prefill only the rest.

>>> from storecomp import KVCacheStore
>>> from storecomp.integrations.transformers import fingerprint_for, prefill
>>> kv = KVCacheStore(fingerprint_for(model, "my-model"), disk_dir="/nvme/kv")
>>> r = prefill(model, input_ids, kv)        # r.logits for the computed positions
>>> r.reused, r.computed                       # tokens loaded, tokens prefilled
>>> tokens = greedy_generate(model, input_ids, kv, max_new_tokens=32)

Batch size 1 (one request at a time); the model's KV cache must be a
``DynamicCache`` of per-layer ``[1, kv_heads, seq, head_dim]`` tensors
(Llama, Mistral, Qwen and most decoder-only models).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InvalidArgumentError
from ..kvcache.keys import ModelFingerprint
from ..kvcache.store import KVCacheStore
from ..optional import require

DynamicCache = require("transformers", "storecomp.integrations.transformers").DynamicCache


def fingerprint_for(model: Any, name: str | None = None, *, revision: str = "", tag: str = "", **extra: Any) -> ModelFingerprint:
    """The fingerprint of ``model``'s KV cache (its config and parameter dtype)."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return ModelFingerprint.from_hf_config(model.config, dtype, model=name, revision=revision, tag=tag, **extra)


@dataclass
class PrefillResult:
    """``logits``: [1, computed, vocab] for the positions prefilled; ``cache``: the full prompt's KV."""

    logits: torch.Tensor
    cache: DynamicCache
    reused: int  # prompt tokens whose KV came from the store
    computed: int  # prompt tokens prefilled by the model
    load_seconds: float
    compute_seconds: float


def _input_ids(input_ids: Any) -> torch.Tensor:
    ids = torch.as_tensor(input_ids)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise InvalidArgumentError(f"input_ids must be one sequence ([n] or [1, n]), got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise InvalidArgumentError("input_ids is empty")
    return ids


def load_prefix(model: Any, input_ids: Any, kvstore: KVCacheStore) -> tuple[DynamicCache, int, float]:
    """A DynamicCache holding the longest stored prefix of ``input_ids`` (at least one token is left
    to compute); returns (cache, tokens loaded, seconds)."""
    ids = _input_ids(input_ids)
    t0 = time.perf_counter()
    n_ids = ids.shape[1]
    fp = kvstore.fingerprint
    limit = ((n_ids - 1) // kvstore.chunk_tokens) * kvstore.chunk_tokens
    n = min(kvstore.lookup(ids[0, :limit]), limit) if limit > 0 else 0
    got = 0
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    if n:
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        shape = (1, fp.kv_heads, n, fp.head_dim)
        pairs = [
            (torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))
            for _ in range(fp.layers)
        ]
        got = kvstore.retrieve(ids[0, :n], pairs)
    cache = DynamicCache(ddp_cache_data=[(k[:, :, :got], v[:, :, :got]) for k, v in pairs]) if got else DynamicCache()
    return cache, got, time.perf_counter() - t0


def _forward(model: Any, ids: Any, cache: Any) -> Any:
    """``model(ids)`` continuing ``cache``: transformers 5.2x names the argument ``cache``, older ones ``past_key_values``."""
    if "cache" in inspect.signature(model.forward).parameters:
        return model(ids, cache=cache, use_cache=True)
    return model(ids, past_key_values=cache, use_cache=True)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def prefill(model: Any, input_ids: Any, kvstore: KVCacheStore, *, store: bool = True) -> PrefillResult:
    """Prefill ``input_ids`` reusing the longest stored prefix; stores the prompt's whole chunks after.

    Raises InvalidArgumentError for a batch of more than one sequence, and
    when the model's KV does not match the store's fingerprint.
    """
    ids = _input_ids(input_ids).to(next(model.parameters()).device)
    cache, got, load_s = load_prefix(model, ids, kvstore)
    t0 = time.perf_counter()
    out = _forward(model, ids[:, got:], cache)
    compute_s = time.perf_counter() - t0
    if store:
        kvstore.store(ids[0], _cache_of(out))
    return PrefillResult(out.logits, _cache_of(out), got, ids.shape[1] - got, load_s, compute_s)


@torch.inference_mode()
def greedy_generate(model: Any, input_ids: Any, kvstore: KVCacheStore | None, max_new_tokens: int) -> list[int]:
    """Greedy decoding after a :func:`prefill` that reuses stored KV (``kvstore`` None: plain prefill)."""
    ids = _input_ids(input_ids).to(next(model.parameters()).device)
    if kvstore is not None:
        r = prefill(model, ids, kvstore)
        logits, cache = r.logits, r.cache
    else:
        out = model(ids, use_cache=True)
        logits, cache = out.logits, _cache_of(out)
    tokens: list[int] = []
    for _ in range(max_new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(nxt))
        out = _forward(model, nxt, cache)
        logits, cache = out.logits, _cache_of(out)
    return tokens
