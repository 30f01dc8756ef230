"""One namespace over local files, S3-compatible object stores and fsspec backends."""

from .base import Capabilities, ObjectInfo, RangeFuture, Store

__all__ = ["Capabilities", "ObjectInfo", "RangeFuture", "Store"]
