"""The SGLang backend through SGLang's own classes: its dynamic-backend factory builds it, its native page
hash equals storecomp's prefix hash, pages go to disk and back into a fresh backend's host pool.

Runs where ``sglang`` imports (not in the project's test environment: SGLang
0.5.23 wants torch 2.14.1 and CUDA packages). Recipe used on this CPU machine
(2026-12-04): a venv with ``torch==2.14.1``, ``pip install --no-deps
sglang==0.5.23`` and the pure-Python modules its storage code imports
(docs/sglang.md), then ``python -m pytest tests/integrations/test_sglang.py``.
The host pool is a stand-in with the attributes the backend reads from
``MHATokenToKVPoolHost`` (SGLang's real host pool needs a device KV pool).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

hicache = pytest.importorskip("sglang.srt.mem_cache.hicache_storage", reason="sglang is not installed (see docs/sglang.md)")

from tests.integrations.test_hicache import DIM, HEADS, LAYERS, PAGE, host_buffer, indices, sglang_page_hashes  # noqa: E402


class Pool:
    """What the backend reads from SGLang's MHATokenToKVPoolHost, with a page_first buffer."""

    def __init__(self, fill: bool) -> None:
        self.kv_buffer = host_buffer("page_first", fill)
        self.layout, self.page_size, self.dtype = "page_first", PAGE, torch.bfloat16
        self.layer_num, self.head_num, self.head_dim = LAYERS, HEADS, DIM


def config(extra: dict[str, Any]) -> Any:
    return hicache.HiCacheStorageConfig(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_cp_rank=0, attn_cp_size=1, is_mla_model=False,
        enable_storage_metrics=False, is_page_first_layout=True, model_name="tiny-llama", extra_config=extra,
    )  # fmt: skip


def test_dynamic_backend_round_trip_with_sglang_hashes(tmp_path: Path) -> None:
    from sglang.srt.mem_cache.storage.backend_factory import StorageBackendFactory
    from sglang.srt.mem_cache.utils import get_hash_str

    extra = {"backend_name": "storecomp", "module_path": "storecomp.integrations.sglang",
             "class_name": "StorecompHiCacheStorage", "interface_v1": 1, "host_bytes": 0, "disk_dir": str(tmp_path)}  # fmt: skip
    tokens = list(range(1000, 1000 + 4 * PAGE))
    hashes = get_hash_str(tokens, None, page_size=PAGE)
    assert hashes == sglang_page_hashes(tokens, PAGE)  # SGLang's native hash is storecomp's prefix hash
    src, dst = Pool(True), Pool(False)
    a = StorageBackendFactory.create_backend("dynamic", config(extra), src)
    assert isinstance(a, hicache.HiCacheStorage)
    a.register_mem_pool_host(src)
    assert a.batch_set_v1(hashes, indices([0, 1, 2, 3])) == [True] * 4
    a.close()
    b = StorageBackendFactory.create_backend("dynamic", config(extra), dst)
    b.register_mem_pool_host(dst)
    assert b.batch_exists(hashes) == 4
    assert b.batch_get_v1(hashes, indices([4, 5, 6, 7])) == [True] * 4
    assert torch.equal(src.kv_buffer[:, : 4 * PAGE], dst.kv_buffer[:, 4 * PAGE : 8 * PAGE])
    b.close()


def test_missing_interface_v1_and_unknown_keys_are_refused(tmp_path: Path) -> None:
    from storecomp.errors import ConfigError
    from storecomp.integrations.sglang import StorecompHiCacheStorage

    base = {"backend_name": "storecomp", "module_path": "storecomp.integrations.sglang",
            "class_name": "StorecompHiCacheStorage", "host_bytes": 0, "disk_dir": str(tmp_path)}  # fmt: skip
    with pytest.raises(ConfigError, match="interface_v1"):
        StorecompHiCacheStorage(config(base))
    with pytest.raises(ConfigError, match="'hostbytes'"):
        StorecompHiCacheStorage(config(base | {"interface_v1": 1, "hostbytes": 1}))
