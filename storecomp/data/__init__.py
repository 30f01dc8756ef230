"""storecomp.data: datasets and the DataLoader.

Formats (storecomp shards, token streams, .npy, Zarr) and the writer import
without torch; :class:`DataLoader` imports torch when first used.
"""

from __future__ import annotations

from typing import Any

from .datasets import Dataset, NpyDataset, TokenDataset, ZarrDataset, open_dataset, read_megatron_index
from .format import FieldSpec
from .order import epoch_order, rank_steps
from .sidecars import index_dataset
from .writer import DatasetWriter, infer_fields, write_dataset

__all__ = [
    "DataLoader",
    "Dataset",
    "DatasetWriter",
    "FieldSpec",
    "NpyDataset",
    "TokenDataset",
    "ZarrDataset",
    "epoch_order",
    "index_dataset",
    "infer_fields",
    "open_dataset",
    "rank_steps",
    "read_megatron_index",
    "write_dataset",
]


def __getattr__(name: str) -> Any:
    if name == "DataLoader":
        from .loader import DataLoader

        return DataLoader
    raise AttributeError(f"module 'storecomp.data' has no attribute {name!r}")
