"""Batched strided copies between CPU memory regions, done natively with the GIL released.

A copy is an ``int64 [n, 11]`` array of 3-D ops: ``outer`` x ``rows`` rows
of ``row_bytes``, each end with its own outer and row strides, each end an
offset into a *region* (an address and a size: a tensor's storage, a numpy
array). The native side checks every op against its regions before any
byte moves, runs each op in the loop order that touches fewer concurrent
address streams (a transposing copy goes token by token: 1.2-1.3x memcpy
here, against 0.8x head by head), uses streaming (non-temporal) stores for
batches of 4 MiB and more, and can spread a batch over threads.

Why by hand: torch's ``index_select`` / ``copy_`` and numpy slice copies
cost one Python-level call per block and, for blocks of tens of KiB, reach
0.4-0.7x of one large memcpy (plain stores read every destination line
before writing it; a large memcpy streams). No library offers a batched,
bounds-checked, streaming gather/scatter between arbitrary strided views.

Ops are built from a :func:`template` (the ops for one strided block, from
its shape and strides, cached) placed at many offsets at once
(:func:`instantiate`, vectorized), and run with :func:`run`.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _native

#: columns of one op: dst region, dst offset, src region, src offset, outer,
#: dst outer stride, src outer stride, rows, dst row stride, src row stride, row bytes
COLS = 11
#: the most ops one template may hold before :func:`template` declines
MAX_TEMPLATE_OPS = 4096
_SWAP = [2, 3, 0, 1, 4, 6, 5, 7, 9, 8, 10]


@functools.lru_cache(maxsize=1024)
def template(
    shape: tuple[int, ...], dst_strides: tuple[int, ...], src_strides: tuple[int, ...], itemsize: int
) -> np.ndarray | None:
    """Ops copying one N-d block of ``shape`` between element strides ``src_strides`` and ``dst_strides``.

    Regions are 0 and offsets start at 0 (see :func:`instantiate`). None
    when the innermost dimension is not contiguous at both ends or the block
    needs more than MAX_TEMPLATE_OPS ops: the caller copies another way.
    The array is read-only (it is shared through the cache).
    """
    dims = [(n, ds, ss) for n, ds, ss in zip(shape, dst_strides, src_strides, strict=True) if n != 1]
    if any(n == 0 for n, _, _ in dims):
        return _frozen(np.zeros((0, COLS), dtype=np.int64))
    merged = [dims[-1] if dims else (1, 1, 1)]
    for n, ds, ss in reversed(dims[:-1]):
        m, mds, mss = merged[0]
        if ds == m * mds and ss == m * mss:  # one run of rows: merge into the dimension inside it
            merged[0] = (n * m, mds, mss)
        else:
            merged.insert(0, (n, ds, ss))
    inner, ids, iss = merged.pop()
    if ids != 1 or iss != 1:
        return None
    # The two largest outer dimensions go into each op; any others are iterated here.
    merged.sort(key=lambda d: d[0])
    rows = merged.pop() if merged else (1, 0, 0)
    outer = merged.pop() if merged else (1, 0, 0)
    if math.prod(n for n, _, _ in merged) > MAX_TEMPLATE_OPS:
        return None
    ops = []
    for idx in itertools.product(*(range(n) for n, _, _ in merged)):
        doff = sum(i * ds for i, (_, ds, _) in zip(idx, merged, strict=True)) * itemsize
        soff = sum(i * ss for i, (_, _, ss) in zip(idx, merged, strict=True)) * itemsize
        ops.append(
            (0, doff, 0, soff, outer[0], outer[1] * itemsize, outer[2] * itemsize)
            + (rows[0], rows[1] * itemsize, rows[2] * itemsize, inner * itemsize)
        )
    return _frozen(np.asarray(ops, dtype=np.int64).reshape(-1, COLS))


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def instantiate(tpl: np.ndarray, dst_region: Any, dst_offs: Any, src_region: Any, src_offs: Any) -> np.ndarray:
    """``tpl`` placed once per entry of the offset vectors (regions: scalars or per-entry vectors)."""
    dst_offs = np.asarray(dst_offs, dtype=np.int64).reshape(-1)
    m, k = dst_offs.size, len(tpl)
    ops = np.empty((m, k, COLS), dtype=np.int64)
    ops[:] = tpl  # broadcast over the m placements
    ops[:, :, 0] = np.asarray(dst_region, dtype=np.int64).reshape(-1, 1)
    ops[:, :, 1] += dst_offs[:, None]
    ops[:, :, 2] = np.asarray(src_region, dtype=np.int64).reshape(-1, 1)
    ops[:, :, 3] += np.asarray(src_offs, dtype=np.int64).reshape(-1, 1)
    return ops.reshape(m * k, COLS)


def swapped(ops: np.ndarray) -> np.ndarray:
    """The same ops in the other direction (destination and source exchanged)."""
    return np.ascontiguousarray(ops[:, _SWAP])


def tensor_region(t: Any) -> tuple[int, int]:
    """A CPU tensor's storage as a region: ops address it from its storage's start."""
    return storage_region(t.untyped_storage())


def storage_region(storage: Any) -> tuple[int, int]:
    """A CPU torch storage (``UntypedStorage``) as a region."""
    return int(storage.data_ptr()), int(storage.nbytes())


def array_region(a: np.ndarray, *, writable: bool = False) -> tuple[int, int]:
    """A C-contiguous numpy array as a region (``writable``: one that will be written)."""
    if not a.flags.c_contiguous:
        raise ValueError("a copy region must be C-contiguous")
    if writable and not a.flags.writeable:
        raise ValueError("a copy destination must be writable (this array is read-only)")
    return int(a.ctypes.data), int(a.nbytes)


def run(
    ops: np.ndarray,
    dst: Sequence[tuple[int, int]],
    src: Sequence[tuple[int, int]],
    *,
    threads: int = 1,
    nontemporal: bool | None = None,
) -> None:
    """Run ``ops`` from regions ``src`` into regions ``dst`` (``(address, size)`` pairs).

    The memory behind the regions must stay alive for the call (it is
    synchronous). ``nontemporal``: None streams batches of 4 MiB and more.
    Raises ValueError naming the op when one falls outside its region.
    """
    regions = [np.asarray(r, dtype=np.int64).reshape(-1, 2) for r in (dst, src)]
    nt = -1 if nontemporal is None else int(nontemporal)
    _native.copy_ops(ops, regions[0], regions[1], max(1, threads), nt)
