"""storecomp: storage-compute coordination.

Streams training data, inference data and KV-cache context from storage into
accelerator memory so the accelerator never waits for data. Importing
storecomp loads only the native engine and numpy; torch, cupy and kvikio are
imported when first needed.
"""

from __future__ import annotations

from typing import Any

from . import errors
from .config import IOOptions
from .errors import StorecompError

__version__ = "0.1.0"

__all__ = ["DataLoader", "IOOptions", "KVCacheStore", "StorecompError", "errors", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the loader and the KV store pull in torch.
    if name == "DataLoader":
        from .data.loader import DataLoader

        return DataLoader
    if name == "KVCacheStore":
        from .kvcache.store import KVCacheStore

        return KVCacheStore
    raise AttributeError(f"module 'storecomp' has no attribute {name!r}")
