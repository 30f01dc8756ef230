"""storecomp.io: bytes from files into host or accelerator memory.

>>> import numpy as np, storecomp.io as scio
>>> buf = np.empty(1 << 20, np.uint8)
>>> n = scio.read_into("/data/shard-0", buf, offset=0)

``read_into`` and ``read_batch`` use a process-wide default engine built from
``IOOptions.load()`` (environment and config file) on first use; pass
``engine=`` to use your own :class:`Engine`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from .. import _native
from .buffers import BufferRef, StagingPool, StagingSlot, as_buffer
from .engine import Engine, File, IOFuture, ReadRequest, checked_ranges
from .paths import PATHS, choose, flat_u8, land_bytes
from .tier import PageCachePolicy, TierChoice, memory_info, resident_bytes

_default: Engine | None = None
_default_lock = threading.Lock()


def _forget_default_after_fork() -> None:
    # The child gets a fresh default engine on first use (the parent's has
    # no threads here), and a lock no other thread can be holding.
    global _default, _default_lock
    _default, _default_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_default_after_fork)


def default_engine() -> Engine:
    """The process-wide engine, created on first use from the environment."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Engine()
        return _default


def read_into(
    path: str | os.PathLike[str],
    dst: Any,
    offset: int = 0,
    *,
    length: int | None = None,
    dst_offset: int = 0,
    exact: bool = True,
    engine: Engine | None = None,
) -> int:
    """Read ``length`` bytes (default: all of ``dst``) of ``path`` at ``offset`` into ``dst``.

    ``dst`` may be a numpy array, a torch tensor (cpu or cuda), a cupy array
    or anything with the buffer protocol, ``__cuda_array_interface__`` or
    DLPack. Returns the bytes read. Raises ShortReadError when the file ends
    first (``exact=False`` returns the shorter count instead), NotFoundError,
    InvalidArgumentError and the other storecomp errors.
    """
    eng = engine or default_engine()
    return eng.cached_file(path).pread_into(dst, offset, length=length, dst_offset=dst_offset, exact=exact)


def read_batch(requests: Sequence[ReadRequest], *, exact: bool = True, engine: Engine | None = None) -> IOFuture:
    """Submit many reads (any files, any destinations) at once; returns an :class:`IOFuture`."""
    return (engine or default_engine()).read_batch(requests, exact=exact)


def io_path_for(dst: Any, engine: Engine | None = None) -> str:
    """The device path (gds, bounce or posix) a read into ``dst`` would take."""
    ref = as_buffer(dst)
    options = engine.options if engine else default_engine().options
    return choose(options.io_path, ref.device)


__all__ = [
    "HostBuffer",
    "io_uring_status",
    "BufferRef",
    "Engine",
    "File",
    "IOFuture",
    "PATHS",
    "PageCachePolicy",
    "ReadRequest",
    "StagingPool",
    "StagingSlot",
    "TierChoice",
    "as_buffer",
    "checked_ranges",
    "default_engine",
    "flat_u8",
    "io_path_for",
    "land_bytes",
    "memory_info",
    "read_batch",
    "read_into",
    "resident_bytes",
]

#: Page-aligned host memory owned by the native engine (``address``, ``nbytes``, the
#: buffer protocol, ``prefault()``): the one host buffer type other packages use.
HostBuffer = _native.HostBuffer


def io_uring_status() -> dict[str, Any]:
    """``{"compiled": bool, "permitted": bool, "reason": str}``: whether the engine was built
    with liburing, and whether this process may create a ring (seccomp, sysctl)."""
    probe = dict(_native.probe_io_uring())
    return {"compiled": bool(_native.HAVE_LIBURING), "permitted": bool(probe["permitted"]), "reason": str(probe["reason"])}
