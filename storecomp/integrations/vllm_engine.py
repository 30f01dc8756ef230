"""Start a real vLLM engine with the storecomp connector: the one place that does it
(``storecomp bench vllm`` and the vLLM integration tests both use it).

Runs where vLLM is installed (its own venv); importing this module does not
import vLLM. The model is a small Llama built from a config (dummy weights,
seeded): nothing is downloaded.
"""

from __future__ import annotations

import os
from typing import Any

#: The connector's class and module, as vLLM's ``KVTransferConfig`` names them.
CONNECTOR = "StorecompConnector"
CONNECTOR_MODULE = "storecomp.integrations.vllm"


def make_model(
    model_dir: str,
    *,
    vocab: int = 2048,
    hidden: int = 256,
    intermediate: int | None = None,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 4096,
) -> None:
    """Write a bfloat16 Llama config to ``model_dir`` (kept when one is there already)."""
    if os.path.exists(os.path.join(model_dir, "config.json")):
        return
    from transformers import LlamaConfig

    LlamaConfig(  # type: ignore[call-arg]  # torch_dtype is one of PretrainedConfig's **kwargs
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        torch_dtype="bfloat16",
    ).save_pretrained(model_dir)


def start_llm(
    model_dir: str,
    connector: dict[str, Any] | None,
    *,
    role: str = "kv_both",
    failure_policy: str = "recompute",
    max_model_len: int = 4096,
    kv_cache_bytes: int = 256 << 20,
    max_num_seqs: int = 8,
    **llm_options: Any,
) -> Any:
    """A ``vllm.LLM`` on ``model_dir`` (dummy weights, eager, greedy-ready, seed 0).

    ``connector``: the storecomp connector's extra config (None: no connector).
    ``failure_policy`` "recompute" makes a failed load recompute the blocks
    (vLLM's own default would fail the request). ``kv_cache_bytes``: the
    engine's KV memory in bytes. Other keywords go to ``LLM`` as they are.
    """
    from vllm import LLM
    from vllm.config import KVTransferConfig

    if connector is not None:
        llm_options["kv_transfer_config"] = KVTransferConfig(
            kv_connector=CONNECTOR,
            kv_connector_module_path=CONNECTOR_MODULE,
            kv_role=role,
            kv_load_failure_policy=failure_policy,
            kv_connector_extra_config=connector,
        )
    return LLM(
        model=model_dir,
        load_format="dummy",
        skip_tokenizer_init=True,
        enforce_eager=True,
        dtype="bfloat16",
        max_model_len=max_model_len,
        kv_cache_memory_bytes=kv_cache_bytes,
        max_num_seqs=max_num_seqs,
        seed=0,
        **llm_options,
    )


__all__ = ["CONNECTOR", "CONNECTOR_MODULE", "make_model", "start_llm"]
