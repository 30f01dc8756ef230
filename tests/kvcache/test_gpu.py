"""CUDA KV tensors: gathers and scatters on the device, pinned host tier. Skipped (with a reason) without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from storecomp import KVCacheStore
from storecomp.kvcache import PagedLayout
from storecomp.kvcache.tiers import Buffer
from tests.kvcache.kvhelpers import CHUNK, FP, make_kv

pytestmark = pytest.mark.gpu


def test_cuda_contiguous_and_paged_round_trip(tmp_path: Path) -> None:
    tokens = list(range(4 * CHUNK))
    kv = [(k.cuda(), v.cuda()) for k, v in make_kv(len(tokens))]
    with KVCacheStore(FP, chunk_tokens=CHUNK, disk_dir=tmp_path / "d", write_through=True) as s:
        assert s.pool.pin  # host tier pinned when CUDA exists
        assert s.store(tokens, kv) == 4 * CHUNK
        out = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in kv]
        assert s.retrieve(tokens, out) == 4 * CHUNK
        assert all(torch.equal(a, b) for pa, pb in zip(kv, out, strict=True) for a, b in zip(pa, pb, strict=True))
    with KVCacheStore(FP, chunk_tokens=CHUNK, disk_dir=tmp_path / "d") as s:  # from disk into a paged CUDA cache
        caches = [torch.zeros(12, 2, 4, FP.kv_heads, FP.head_dim, dtype=torch.bfloat16, device="cuda") for _ in range(FP.layers)]
        ids = [11, 0, 5, 3, 7, 1, 9, 2]
        assert s.retrieve(tokens, PagedLayout(caches, ids, 4)) == 4 * CHUNK
        for layer in range(FP.layers):
            for j, b in enumerate(ids):
                assert torch.equal(caches[layer][b, 0], kv[layer][0][0, :, 4 * j : 4 * j + 4].transpose(0, 1))


def test_host_buffers_dropped_without_free_are_unpinned() -> None:
    """A pinned host buffer unpins when collected, before its memory is unmapped:
    the next buffer mapped at the same address pins, and no CUDA error is left
    for the next kernel launch (seen on an H200 as cudaErrorHostMemoryAlreadyRegistered)."""
    for _ in range(4):
        buf = Buffer(4 << 20, pin=True)
        assert buf.pinned
        del buf  # no free(): garbage collection alone
    x = torch.ones(8, device="cuda").mul_(3)
    assert float(x.sum()) == 24.0
