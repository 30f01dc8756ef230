"""One namespace over local files, S3-compatible object stores and fsspec backends."""

from .base import Capabilities, ObjectInfo, RangeFuture, Store
from .keys import validate_key, validate_prefix
from .local import LocalStore
from .namespace import Mount, Namespace, Replica, ReplicatedStore, StoreReader, load_mounts

__all__ = [
    "Capabilities",
    "LocalStore",
    "ObjectInfo",
    "RangeFuture",
    "Store",
    "validate_key",
    "validate_prefix",
    # namespace
    "Mount",
    "Namespace",
    "Replica",
    "ReplicatedStore",
    "StoreReader",
    "load_mounts",
]
