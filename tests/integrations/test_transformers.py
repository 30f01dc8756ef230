"""A real transformers model (LlamaForCausalLM from a config, seeded random weights, nothing downloaded)
reuses a stored prefix: its logits and greedy tokens equal a full recompute."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from storecomp import KVCacheStore  # noqa: E402
from storecomp.errors import InvalidArgumentError  # noqa: E402
from storecomp.integrations.transformers import fingerprint_for, greedy_generate, prefill  # noqa: E402

CHUNK = 16


def tiny_llama(seed: int = 0) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_llama()


@pytest.mark.parametrize("tiers", ["host", "disk"])
def test_prefix_reuse_matches_full_recompute(model: torch.nn.Module, tmp_path: Path, tiers: str) -> None:
    g = torch.Generator().manual_seed(1)
    prompt_a = torch.randint(0, 512, (1, 100), generator=g)
    prompt_b = torch.cat([prompt_a[:, :96], torch.randint(0, 512, (1, 40), generator=g)], dim=1)
    host = 1 << 30 if tiers == "host" else 0
    fp = fingerprint_for(model, "tiny-llama")
    with KVCacheStore(fp, chunk_tokens=CHUNK, host_bytes=host, disk_dir=tmp_path / "d", write_through=True) as kv:
        ra = prefill(model, prompt_a, kv)
        assert ra.reused == 0 and ra.computed == 100
        assert kv.lookup(prompt_a[0]) == 96
        rb = prefill(model, prompt_b, kv)
        assert rb.reused == 96 and rb.computed == 40
        with torch.inference_mode():
            full = model(prompt_b).logits
        torch.testing.assert_close(rb.logits, full[:, 96:], atol=1e-4, rtol=1e-4)
        assert greedy_generate(model, prompt_b, kv, 8) == greedy_generate(model, prompt_b, None, 8)
        st = kv.stats()
        assert st["verify_failures"] == 0
        assert st["disk" if tiers == "disk" else "host"]["hits"] >= 6


def test_whole_prompt_stored_still_computes_last_token(model: torch.nn.Module) -> None:
    prompt = torch.arange(64)[None]
    with KVCacheStore(fingerprint_for(model, "tiny-llama"), chunk_tokens=CHUNK) as kv:
        prefill(model, prompt, kv)
        r = prefill(model, prompt, kv)
        assert r.reused == 48 and r.computed == 16  # the last chunk is recomputed: logits need one token
        with torch.inference_mode():
            torch.testing.assert_close(r.logits, model(prompt).logits[:, 48:], atol=1e-4, rtol=1e-4)


def test_bad_input(model: torch.nn.Module) -> None:
    with KVCacheStore(fingerprint_for(model, "tiny-llama"), chunk_tokens=CHUNK) as kv:
        with pytest.raises(InvalidArgumentError, match="one sequence"):
            prefill(model, torch.zeros(2, 20, dtype=torch.long), kv)
        with pytest.raises(InvalidArgumentError, match="empty"):
            prefill(model, torch.zeros(1, 0, dtype=torch.long), kv)
    other = tiny_llama().to(torch.bfloat16)
    with KVCacheStore(fingerprint_for(model, "tiny-llama"), chunk_tokens=CHUNK) as kv:
        with pytest.raises(InvalidArgumentError, match="dtype bfloat16, the fingerprint says float32"):
            prefill(other, torch.arange(40)[None], kv)


def test_prefill_time_saved(model: torch.nn.Module, capsys: pytest.CaptureFixture[str]) -> None:
    """Reported, not asserted: TTFT with 90% of a 1,000-token prompt stored vs none."""
    g = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 512, (1, 1000), generator=g)
    with KVCacheStore(fingerprint_for(model, "tiny-llama"), chunk_tokens=CHUNK) as kv:
        prefill(model, prompt[:, :900], kv)  # 896 tokens stored (56 chunks)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(prompt)
        full = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = prefill(model, prompt, kv, store=False)
        cached = time.perf_counter() - t0
    assert r.reused == 896
    with capsys.disabled():
        print(
            f"\n[kvcache] tiny Llama, 1000-token prompt, 896 reused: full prefill {full * 1e3:.1f} ms, "
            f"with prefix {cached * 1e3:.1f} ms (load {r.load_seconds * 1e3:.1f} ms) -> {full / cached:.1f}x"
        )
