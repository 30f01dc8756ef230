"""KV-cache offload: reused prefixes' KV in host memory, on local disk and in a shared store.

See docs/kvcache.md. ``keys`` and ``format`` need only numpy; the store and
the layouts import torch when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .format import ChunkLayout
from .keys import ModelFingerprint, Tenant, chunk_keys, token_array

if TYPE_CHECKING:  # loaded on first use (they import the native engine)
    from .fetch import FetchOutcome
    from .tiers import SharedTierOptions, Tier

__all__ = [
    "ChunkLayout",
    "ContiguousLayout",
    "FetchOutcome",
    "KVCacheStore",
    "ModelFingerprint",
    "PagedLayout",
    "SharedTierOptions",
    "Tenant",
    "Tier",
    "chunk_keys",
    "token_array",
]


def __getattr__(name: str) -> Any:
    if name == "KVCacheStore":
        from .store import KVCacheStore

        return KVCacheStore
    if name in ("SharedTierOptions", "Tier"):
        from . import tiers

        return getattr(tiers, name)
    if name == "FetchOutcome":
        from .fetch import FetchOutcome

        return FetchOutcome
    if name in ("ContiguousLayout", "PagedLayout", "KVLayout"):
        from . import layouts

        return getattr(layouts, name)
    raise AttributeError(f"module 'storecomp.kvcache' has no attribute {name!r}")
