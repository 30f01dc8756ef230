"""The SGLang HiCache page contract (storecomp.integrations.hicache) on SGLang-shaped host pools, and the
engine-neutral keys: SGLang page hashes, the transformers helper and KVCacheStore name a chunk alike.

sglang itself does not install here (CUDA-only wheels: see docs/sglang.md); its
page hash is recomputed from its source (sglang 0.5.23,
srt/mem_cache/cpp_utils/hash_binding.cpp ``hash_page``: SHA-256 of the previous
page's digest, none for the first page, then the page's token ids as
little-endian uint32). The end-to-end test with a real SGLang server is
tests/integrations/test_sglang_gpu.py (gpu marker).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
import torch

from storecomp import KVCacheStore
from storecomp.errors import ConfigError
from storecomp.integrations.breakeven import BreakEven
from storecomp.integrations.hicache import HostPages, PageStore
from storecomp.kvcache import ModelFingerprint

PAGE, LAYERS, HEADS, DIM = 16, 3, 2, 8
POOL_PAGES = 12
FP = ModelFingerprint("tiny-llama", "bfloat16", layers=LAYERS, kv_heads=HEADS, head_dim=DIM)


def sglang_page_hashes(tokens: list[int], page: int, prior: bytes | None = None) -> list[str]:
    """SGLang's page hash chain (hash_binding.cpp ``hash_page``), hex as SGLang passes it to backends."""
    out = []
    for i in range(len(tokens) // page):
        h = hashlib.sha256()
        if prior is not None:
            h.update(prior)
        h.update(struct.pack(f"<{page}I", *tokens[i * page : (i + 1) * page]))
        prior = h.digest()
        out.append(prior.hex())
    return out


def host_buffer(layout: str, fill: bool) -> torch.Tensor:
    tokens = POOL_PAGES * PAGE
    dims = {
        "layer_first": (2, LAYERS, tokens, HEADS, DIM),
        "page_first": (2, tokens, LAYERS, HEADS, DIM),
        "page_first_direct": (2, POOL_PAGES, LAYERS, PAGE, HEADS, DIM),
    }[layout]
    if not fill:
        return torch.zeros(dims, dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    return torch.randn(dims, generator=g).to(torch.bfloat16)


def page_kv(pages: HostPages, page: int) -> list[torch.Tensor]:
    return [t[page].clone() for pair in pages.pairs for t in pair]


def indices(pages: list[int]) -> torch.Tensor:
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages])


TOKENS = list(range(1000, 1000 + 4 * PAGE))


@pytest.mark.parametrize("layout", ["page_first", "layer_first", "page_first_direct"])
def test_set_then_get_into_another_pool(layout: str, tmp_path: Path) -> None:
    src = HostPages(host_buffer(layout, True), layout, PAGE, LAYERS, HEADS, DIM)
    hashes = sglang_page_hashes(TOKENS, PAGE)
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d", write_through=True) as a:
        ps = PageStore(a, src)
        assert ps.set(hashes, indices([5, 2, 9, 0])) == [True] * 4
    dst_buf = host_buffer(layout, False)
    dst = HostPages(dst_buf, layout, PAGE, LAYERS, HEADS, DIM)
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d") as b:  # a fresh process's view
        pb = PageStore(b, dst)
        assert pb.exists(hashes) == 4 and pb.exists(hashes[:2] + ["00" * 32]) == 2
        assert pb.get(hashes, indices([1, 3, 4, 7])) == [True] * 4
        for s_page, d_page in zip([5, 2, 9, 0], [1, 3, 4, 7], strict=True):
            for x, y in zip(page_kv(src, s_page), page_kv(dst, d_page), strict=True):
                assert torch.equal(x, y)
        untouched = [p for p in range(POOL_PAGES) if p not in (1, 3, 4, 7)]
        assert all(not bool(t[untouched].any()) for pair in dst.pairs for t in pair)


def test_corrupt_page_is_not_loaded(tmp_path: Path) -> None:
    layout = "page_first"
    src = HostPages(host_buffer(layout, True), layout, PAGE, LAYERS, HEADS, DIM)
    hashes = sglang_page_hashes(TOKENS, PAGE)
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d", write_through=True) as a:
        assert PageStore(a, src).set(hashes, indices([0, 1, 2, 3])) == [True] * 4
        victim = a.disk.path(PageStore(a, src).keys(hashes)[2])  # type: ignore[union-attr]
        where = a.layout.layer_offset(LAYERS - 1) + 10  # inside the last layer's payload
    with open(victim, "r+b") as f:
        f.seek(where)
        f.write(b"\xff" * 8)
    dst = HostPages(host_buffer(layout, False), layout, PAGE, LAYERS, HEADS, DIM)
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d") as b:
        pb = PageStore(b, dst)
        assert pb.get(hashes, indices([4, 5, 6, 7])) == [True, True, False, False]
        assert b.stats()["verify_failures"] == 1
        assert all(not bool(t[6:8].any()) for pair in dst.pairs for t in pair)  # nothing of the bad page written


def test_bad_host_indices_and_layouts(tmp_path: Path) -> None:
    buf = host_buffer("page_first", True)
    pages = HostPages(buf, "page_first", PAGE, LAYERS, HEADS, DIM)
    hashes = sglang_page_hashes(TOKENS[: 2 * PAGE], PAGE)
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=1 << 20) as s:
        ps = PageStore(s, pages)
        assert ps.set(hashes, indices([0])) == [False, False]  # one page of indices for two hashes
        assert ps.set(hashes, indices([0, 1]) + 1) == [False, False]  # not page-aligned
        assert ps.get(hashes, torch.arange(2 * PAGE).flip(0)) == [False, False]  # not runs
        assert ps.counts["bad_indices"] == 3
    with pytest.raises(ConfigError, match="page_head"):
        HostPages(buf, "page_head", PAGE, LAYERS, HEADS, DIM)
    with pytest.raises(ConfigError, match="does not match"):
        HostPages(buf, "page_first", PAGE, LAYERS + 1, HEADS, DIM)
    with KVCacheStore(FP, chunk_tokens=2 * PAGE, host_bytes=0) as s, pytest.raises(ConfigError, match="page size"):
        PageStore(s, pages)


def test_break_even_declines_a_slow_tier(tmp_path: Path) -> None:
    src = HostPages(host_buffer("page_first", True), "page_first", PAGE, LAYERS, HEADS, DIM)
    hashes = sglang_page_hashes(TOKENS, PAGE)
    be = BreakEven(prefill_tokens_per_s=1e12)  # recompute is "free": every measured load loses
    with KVCacheStore(FP, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d", write_through=True) as s:
        ps = PageStore(s, src, be)
        ps.set(hashes, indices([0, 1, 2, 3]))
        assert ps.exists(hashes) == 4  # the disk rate is not measured yet: load
        assert ps.get(hashes, indices([4, 5, 6, 7])) == [True] * 4
        assert ps.exists(hashes) == 0  # now measured, and slower than a free recompute
        assert be.counts()["declined_loads"] == 1 and be.counts()["declined_tokens"] == 4 * PAGE


def test_break_even_arithmetic() -> None:
    be = BreakEven(prefill_tokens_per_s=1000.0, latency_s=0.001)
    assert be.worth_loading("disk", 1 << 30, 100)  # unmeasured tier: load
    be.add_load("disk", 1_000_000, 1.0)  # 1 MB/s
    assert be.estimate("disk", 500_000, 1000) == pytest.approx((0.501, 1.0))
    assert be.worth_loading("disk", 500_000, 1000)
    assert not be.worth_loading("disk", 2_000_000, 1000)
    off = BreakEven(enabled=False, prefill_tokens_per_s=1e12)
    off.add_load("disk", 1, 1.0)
    assert off.worth_loading("disk", 1 << 30, 1) and off.counts()["declined_loads"] == 0
    with pytest.raises(ValueError):
        BreakEven(prefill_tokens_per_s=0)


def test_keys_agree_across_engines(tmp_path: Path) -> None:
    """One chunk, three engines' ways of naming it: SGLang page hashes, tokens (vLLM's connector and
    the transformers helper go through KVCacheStore.chunk_keys), and the files the helper stored."""
    transformers = pytest.importorskip("transformers")
    from storecomp.integrations.transformers import fingerprint_for, prefill

    cfg = transformers.LlamaConfig(
        vocab_size=2048, hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS, num_attention_heads=4,
        num_key_value_heads=HEADS, head_dim=DIM, max_position_embeddings=1024,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    fp = fingerprint_for(model, "tiny-llama")
    assert fp == FP
    ids = torch.tensor([TOKENS + [7, 8, 9]])
    with KVCacheStore(fp, chunk_tokens=PAGE, host_bytes=0, disk_dir=tmp_path / "d", write_through=True) as s:
        prefill(model, ids, s)
        on_disk = sorted(p.name.removesuffix(".kv") for p in (tmp_path / "d").rglob("*.kv"))
        from_tokens = [k.hex() for k in s.chunk_keys(TOKENS)]
        dst = HostPages(host_buffer("page_first", False), "page_first", PAGE, LAYERS, HEADS, DIM)
        pages = PageStore(s, dst)
        from_sglang = [k.hex() for k in pages.keys(sglang_page_hashes(TOKENS, PAGE))]
        assert from_sglang == from_tokens and sorted(from_tokens) == on_disk
        # ... and the SGLang side loads what the transformers helper stored, verified
        assert pages.get(sglang_page_hashes(TOKENS, PAGE), indices([8, 9, 10, 11])) == [True] * 4
        out = model(ids, use_cache=True).past_key_values
        k0 = out.layers[0].keys[0, :, PAGE : 2 * PAGE].transpose(0, 1)  # [tokens, heads, dim] of chunk 1
        assert torch.equal(dst.pairs[0][0][9], k0)
