"""storecomp: storage-compute coordination.

Streams training data, inference data and KV-cache context from storage into
accelerator memory so the accelerator never waits for data. Importing
storecomp loads only the native engine and numpy; torch, cupy and kvikio are
imported when first needed.
"""

from __future__ import annotations

from . import errors
from .config import IOOptions
from .errors import StorecompError

__version__ = "0.1.0"

__all__ = ["IOOptions", "StorecompError", "errors", "__version__"]
