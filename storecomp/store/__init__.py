"""One namespace over local files, S3-compatible object stores and fsspec backends.

``open_store(url)`` returns the backend for a path, ``file://``, ``s3://`` or
any fsspec URL; backends other than local files are imported on first use.
"""

from .base import Capabilities, Listing, ObjectInfo, RangeFuture, Store, WrapperStore, primary_of
from .cache import CachedStore
from .encrypted import EncryptedStore
from .integrity import Checksums
from .keys import validate_key, validate_prefix
from .leases import Lease
from .local import LocalStore
from .namespace import Mount, Namespace, Replica, ReplicatedStore, StoreReader, load_mounts
from .placement import (
    PlacedReader,
    PlaceReport,
    Plan,
    Resolved,
    drop,
    open_snapshot,
    place,
    placed_reader,
    plan,
    publish,
    resolve,
)
from .policy import AutoPlacement, auto_decisions, place_auto
from .registry import backends, open_store, register_backend
from .retry import RetryPolicy
from .snapshots import ANY, Entry, GCReport, Manifest, RefState, Repository, Snapshot, SnapshotWriter
from .transfer import CopyItem, TransferError, TransferReport, copy_objects

__all__ = [
    "Capabilities",
    "Listing",
    "LocalStore",
    "ObjectInfo",
    "RangeFuture",
    "RetryPolicy",
    "Store",
    "WrapperStore",
    "backends",
    "open_store",
    "primary_of",
    "register_backend",
    "validate_key",
    "validate_prefix",
    # namespace (namespace.py)
    "Mount",
    "Namespace",
    "Replica",
    "ReplicatedStore",
    "StoreReader",
    "load_mounts",
    # integrity, blobs, manifests, refs, cache (integrity.py, snapshots.py, cache.py)
    "CachedStore",
    "EncryptedStore",
    "ANY",
    "Checksums",
    "Entry",
    "GCReport",
    "Manifest",
    "RefState",
    "Repository",
    "Snapshot",
    "SnapshotWriter",
    # copies and placement across sites (transfer.py, placement.py, leases.py)
    "AutoPlacement",
    "CopyItem",
    "Lease",
    "PlaceReport",
    "PlacedReader",
    "Plan",
    "Resolved",
    "TransferError",
    "TransferReport",
    "auto_decisions",
    "copy_objects",
    "drop",
    "open_snapshot",
    "place",
    "place_auto",
    "placed_reader",
    "publish",
    "plan",
    "resolve",
]


def __getattr__(name: str) -> object:
    # Remote backends import their client libraries: only on first use.
    if name == "S3Store":
        from .s3 import S3Store

        return S3Store
    if name == "FsspecStore":
        from .fsspec_store import FsspecStore

        return FsspecStore
    raise AttributeError(name)
