"""End to end with a real SGLang server (GPU only: SGLang 0.5.23 ships CUDA builds; see docs/sglang.md).

Engine A (HiCache with the storecomp backend, an empty disk tier) computes and
stores; engine B, a fresh process with the same disk tier, loads (cached
tokens > 0) and returns the tokens of a server without the backend.
Needs ``pip install sglang==0.5.23`` in the test environment and a CUDA device.
"""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.gpu

PAGE = 64


def _serve(model_dir: str, backend: dict[str, Any] | None, prompts: list[list[int]], q: Any) -> None:
    import sglang

    kw: dict[str, Any] = {}
    if backend is not None:
        extra = {"backend_name": "storecomp", "module_path": "storecomp.integrations.sglang",
                 "class_name": "StorecompHiCacheStorage", "interface_v1": 1} | backend  # fmt: skip
        kw = {
            "enable_hierarchical_cache": True,
            "hicache_mem_layout": "page_first",
            "hicache_storage_backend": "dynamic",
            "hicache_storage_backend_extra_config": json.dumps(extra),
            "hicache_storage_prefetch_policy": "wait_complete",
        }
    eng = sglang.Engine(model_path=model_dir, load_format="dummy", skip_tokenizer_init=True, page_size=PAGE,
                        random_seed=0, mem_fraction_static=0.3, **kw)  # fmt: skip
    try:
        out = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": 8, "temperature": 0.0})
        q.put([(o["output_ids"], o["meta_info"].get("cached_tokens", 0)) for o in out])
    finally:
        eng.shutdown()


def _run(model_dir: str, backend: dict[str, Any] | None, prompts: list[list[int]]) -> list[tuple[list[int], int]]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_serve, args=(model_dir, backend, prompts, q))
    p.start()
    res = q.get(timeout=900)
    p.join(120)
    return res


def test_second_server_loads_what_the_first_stored(tmp_path: Path) -> None:
    pytest.importorskip("sglang", reason="sglang is not installed (pip install sglang==0.5.23 on a CUDA machine)")
    transformers = pytest.importorskip("transformers")
    model_dir = str(tmp_path / "model")
    transformers.LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=4096, torch_dtype="bfloat16",
    ).save_pretrained(model_dir)  # fmt: skip
    prompts = [[(i * 7919) % 31000 + 1 for i in range(20 * PAGE + 5)]]
    backend = {"host_bytes": 0, "disk_dir": str(tmp_path / "disk"), "stats_file": str(tmp_path / "stats.jsonl")}
    base = _run(model_dir, None, prompts)
    first = _run(model_dir, backend, prompts)
    second = _run(model_dir, backend, prompts)
    assert first[0][0] == base[0][0] and second[0][0] == base[0][0]
    assert second[0][1] >= 16 * PAGE
    assert list((tmp_path / "disk").rglob("*.kv"))
