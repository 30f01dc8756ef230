"""A KV-cache client in its own process, for the cross-process tests (``python -m tests.kvcache.kvworker JSON``).

Modes: ``store`` (store prompts, print stats as JSON), ``retrieve`` (lookup and
retrieve, print the tokens found and a digest of the KV), ``loop`` (store fresh
prompts until killed).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from typing import Any

import torch

from storecomp import KVCacheStore
from storecomp.kvcache import ModelFingerprint, SharedTierOptions
from storecomp.store.retry import RetryPolicy


def kv_for(fp: ModelFingerprint, tokens: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = (1, fp.kv_heads, tokens, fp.head_dim)
    dt = getattr(torch, fp.dtype)
    return [(torch.randn(shape, generator=g).to(dt), torch.randn(shape, generator=g).to(dt)) for _ in range(fp.layers)]


def digest(kv: list[tuple[torch.Tensor, torch.Tensor]], n: int) -> str:
    h = hashlib.sha256()
    for k, v in kv:
        h.update(k[:, :, :n].contiguous().view(torch.uint8).numpy().tobytes())
        h.update(v[:, :, :n].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def main(args: dict[str, Any]) -> None:
    fp = ModelFingerprint(**args["fingerprint"])
    opts = dict(args.get("shared_options") or {})
    if "retry" in opts:
        opts["retry"] = RetryPolicy(**opts["retry"])
    s = KVCacheStore(
        fp,
        chunk_tokens=args["chunk_tokens"],
        disk_dir=args.get("disk_dir"),
        shared=SharedTierOptions(args["shared"], store_options=opts),
        write_through=True,
    )
    tokens = args.get("tokens", [])
    if args["mode"] == "store":
        if "start_at" in args:  # line up concurrent writers
            time.sleep(max(0.0, args["start_at"] - time.time()))
        s.store(tokens, kv_for(fp, len(tokens), args["seed"]))
        s.flush()
        print(json.dumps({"shared": s.stats()["shared"], "digest": digest(kv_for(fp, len(tokens), args["seed"]), len(tokens))}))
    elif args["mode"] == "retrieve":
        n_lookup = s.lookup(tokens)
        out = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in kv_for(fp, len(tokens), 0)]
        n = s.retrieve(tokens, out)
        print(json.dumps({"lookup": n_lookup, "retrieved": n, "digest": digest(out, n)}))
    elif args["mode"] == "loop":
        i = 0
        while True:
            toks = [i * 100_000 + t for t in range(len(tokens))]
            s.store(toks, kv_for(fp, len(toks), i))
            print(i, flush=True)
            i += 1
    s.close()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
