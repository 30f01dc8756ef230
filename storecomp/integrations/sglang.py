"""An SGLang HiCache L3 storage backend on :class:`~storecomp.kvcache.KVCacheStore` (docs/sglang.md).

    python -m sglang.launch_server ... --enable-hierarchical-cache --page-size 64 \\
        --hicache-mem-layout page_first --hicache-storage-backend dynamic \\
        --hicache-storage-backend-extra-config '{"backend_name": "storecomp",
            "module_path": "storecomp.integrations.sglang", "class_name": "StorecompHiCacheStorage",
            "interface_v1": 1, "host_bytes": 0, "disk_dir": "/nvme/kv", "shared": "s3://bucket/kv"}'

Page-first zero-copy path: ``batch_exists``, ``batch_get_v1`` and
``batch_set_v1`` move pages straight between SGLang's host pool and the
tiers, one verified storecomp chunk per page, named by the engine-neutral
key of SGLang's page hash (the same key the vLLM connector and the
transformers helper compute for the same tokens). Only this module imports
sglang; the logic is in :mod:`storecomp.integrations.hicache`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from sglang.srt.mem_cache.hicache_storage import HiCacheStorage, HiCacheStorageConfig, HiCacheStorageExtraInfo

from ..errors import ConfigError
from ..kvcache import ModelFingerprint
from .breakeven import BreakEven
from .hicache import HostPages, PageStore
from .options import TierOptions, open_kv_store, parse_options

__all__ = ["StorecompHiCacheStorage"]

log = logging.getLogger("storecomp.sglang")

#: extra-config keys that belong to SGLang's dynamic-backend loader, not to storecomp
SGLANG_KEYS = ("backend_name", "module_path", "class_name", "interface_v1")


class StorecompHiCacheStorage(HiCacheStorage):
    """``--hicache-storage-backend dynamic`` backend; needs ``interface_v1`` (the zero-copy path)."""

    def __init__(self, storage_config: HiCacheStorageConfig, kwargs: Any = None) -> None:
        extra = dict(storage_config.extra_config or {})
        who = "StorecompHiCacheStorage"
        if not extra.get("interface_v1"):
            raise ConfigError(f"{who}: set 'interface_v1': 1 in the extra config (the page-first zero-copy path)")
        if storage_config.is_mla_model:
            raise ConfigError(f"{who}: MLA models are not supported")
        self.options: TierOptions = parse_options(extra, who, what="hicache storage extra config", ignore=SGLANG_KEYS)
        self.storage_config = storage_config
        self.pages: PageStore | None = None

    def register_mem_pool_host(self, mem_pool_host: Any) -> None:
        super().register_mem_pool_host(mem_pool_host)
        pool = mem_pool_host
        cfg = self.storage_config
        host = HostPages(pool.kv_buffer, pool.layout, pool.page_size, pool.layer_num, pool.head_num, pool.head_dim)
        fp = ModelFingerprint(
            model=self.options.model_id or str(cfg.model_name or ""),
            revision=self.options.revision,
            dtype=str(pool.dtype).removeprefix("torch."),
            layers=int(pool.layer_num),
            kv_heads=int(pool.head_num),
            head_dim=int(pool.head_dim),
            tp_size=int(cfg.tp_size),
            tp_rank=int(cfg.tp_rank),
            tag=self.options.tag,
        )
        if self.options.chunk_tokens not in (None, pool.page_size):
            raise ConfigError(f"chunk_tokens {self.options.chunk_tokens} must equal --page-size {pool.page_size}")
        store = open_kv_store(fp, int(pool.page_size), self.options)
        be = BreakEven(self.options.break_even, self.options.prefill_tokens_per_s)
        self.pages = PageStore(store, host, be if self.options.prefill_tokens_per_s else None)

    def _pages(self) -> PageStore:
        if self.pages is None:
            raise ConfigError("StorecompHiCacheStorage: no host pool registered yet")
        return self.pages

    def batch_exists(self, keys: list[str], extra_info: HiCacheStorageExtraInfo | None = None) -> int:
        return self._pages().exists(keys)

    def exists(self, key: str) -> bool:
        return self._pages().exists([key]) == 1

    def batch_get_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        return self._pages().get(keys, host_indices)

    def batch_set_v1(
        self, keys: list[str], host_indices: torch.Tensor, extra_info: HiCacheStorageExtraInfo | None = None
    ) -> list[bool]:
        return self._pages().set(keys, host_indices)

    # The generic (copying) interface: not offered; interface_v1 routes SGLang to the methods above.
    def get(self, key: str, target_location: Any = None, target_sizes: Any = None) -> torch.Tensor | None:
        raise NotImplementedError("StorecompHiCacheStorage serves the zero-copy interface (interface_v1) only")

    def batch_get(self, keys: list[str], target_locations: Any = None, target_sizes: Any = None) -> list[torch.Tensor | None]:
        raise NotImplementedError("StorecompHiCacheStorage serves the zero-copy interface (interface_v1) only")

    def set(self, key: str, value: Any = None, target_location: Any = None, target_sizes: Any = None) -> bool:
        raise NotImplementedError("StorecompHiCacheStorage serves the zero-copy interface (interface_v1) only")

    def batch_set(self, keys: list[str], values: Any = None, target_locations: Any = None, target_sizes: Any = None) -> bool:
        raise NotImplementedError("StorecompHiCacheStorage serves the zero-copy interface (interface_v1) only")

    def get_stats(self) -> dict[str, Any] | None:
        if self.pages is None:
            return None
        return {"pages": dict(self.pages.counts), "store": self.pages.store.stats()}

    def close(self) -> None:
        if self.pages is not None:
            self.pages.store.flush(timeout=self.options.shared_retry_seconds + 30)
            if self.options.stats_file:
                with open(self.options.stats_file, "a") as f:
                    f.write(json.dumps(self.get_stats(), default=str) + "\n")
            self.pages.store.close()
            self.pages = None
