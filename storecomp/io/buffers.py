"""Buffers: one parser for every destination, and the aligned staging pool.

:func:`as_buffer` accepts numpy arrays, torch tensors (CPU or CUDA), cupy
arrays, anything with the buffer protocol, ``__cuda_array_interface__`` or
DLPack, and returns a :class:`BufferRef` (address, size, device) that keeps
the object alive. Nothing here imports torch or cupy unless the object given
already comes from them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import _native
from ..errors import (
    ClosedError,
    InvalidArgumentError,
    ReadOnlyDestinationError,
    StorecompError,
    UnsupportedBufferError,
)
from . import cuda

_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST = 1, 2, 3


@dataclass(frozen=True)
class BufferRef:
    """A contiguous span of memory: ``address`` and ``nbytes`` on ``device``.

    ``owner`` is the object the span belongs to; holding the ref holds it.
    """

    address: int
    nbytes: int
    device: str  # "cpu" or "cuda"
    device_index: int
    readonly: bool
    owner: Any = field(repr=False, compare=False)

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"


def as_buffer(obj: Any, *, writable: bool = True, what: str = "destination") -> BufferRef:
    """Describe ``obj``'s memory.

    Raises UnsupportedBufferError when ``obj`` exposes no usable memory or is
    not contiguous, and ReadOnlyDestinationError when ``writable`` is asked of
    read-only memory.
    """
    ref: BufferRef
    if isinstance(obj, BufferRef):
        ref = obj
    elif _is_torch_tensor(obj):
        ref = _from_torch(obj, what)
    elif hasattr(obj, "__cuda_array_interface__"):
        ref = _from_cai(obj, what)
    else:
        ref = _from_buffer_protocol(obj, what) or _from_dlpack(obj, what)
    if writable and ref.readonly:
        raise ReadOnlyDestinationError(f"{what} is read-only ({type(obj).__name__}); reads need writable memory")
    return ref


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr") and hasattr(obj, "is_cuda")


def _from_torch(t: Any, what: str) -> BufferRef:
    if not t.is_contiguous():
        raise UnsupportedBufferError(f"{what}: torch tensor is not contiguous; call .contiguous() first")
    if t.device.type not in ("cpu", "cuda"):
        raise UnsupportedBufferError(f"{what}: torch device {t.device} is not supported (cpu or cuda)")
    nbytes = t.numel() * t.element_size()
    index = t.device.index if t.device.type == "cuda" and t.device.index is not None else 0
    return BufferRef(t.data_ptr(), nbytes, t.device.type, index, False, t)


def _from_cai(obj: Any, what: str) -> BufferRef:
    cai = obj.__cuda_array_interface__
    shape = tuple(cai["shape"])
    itemsize = np.dtype(cai["typestr"]).itemsize
    strides = cai.get("strides")
    if strides is not None and tuple(strides) != _c_strides(shape, itemsize):
        raise UnsupportedBufferError(f"{what}: CUDA array is not C-contiguous")
    address, readonly = cai["data"]
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize if shape else itemsize
    index = 0
    device = getattr(obj, "device", None)
    if device is not None and hasattr(device, "id"):
        index = int(device.id)
    return BufferRef(int(address), nbytes, "cuda", index, bool(readonly), obj)


def _c_strides(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return tuple(reversed(strides))


def _from_buffer_protocol(obj: Any, what: str) -> BufferRef | None:
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        try:
            view = memoryview(obj)
        except TypeError:
            return None
        if not view.contiguous:
            raise UnsupportedBufferError(f"{what}: buffer of {type(obj).__name__} is not contiguous")
        arr = np.frombuffer(view.cast("B") if view.ndim != 1 or view.format != "B" else view, dtype=np.uint8)
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise UnsupportedBufferError(f"{what}: numpy array is not contiguous; use np.ascontiguousarray")
    return BufferRef(int(arr.ctypes.data), int(arr.nbytes), "cpu", 0, not arr.flags.writeable, obj)


def _from_dlpack(obj: Any, what: str) -> BufferRef:
    if not hasattr(obj, "__dlpack__") or not hasattr(obj, "__dlpack_device__"):
        raise UnsupportedBufferError(
            f"{what}: {type(obj).__name__} exposes no memory (buffer protocol, __cuda_array_interface__ or DLPack expected)"
        )
    kind, _ = obj.__dlpack_device__()
    if kind in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
        arr = np.from_dlpack(obj)
        ref = _from_buffer_protocol(arr, what)
        assert ref is not None
        return BufferRef(ref.address, ref.nbytes, "cpu", 0, ref.readonly, obj)
    if kind == _DLPACK_CUDA:
        torch = cuda.import_torch()
        if torch is None:
            raise UnsupportedBufferError(f"{what}: a CUDA DLPack object needs torch to be described")
        return _from_torch(torch.from_dlpack(obj), what)
    raise UnsupportedBufferError(f"{what}: DLPack device type {kind} is not supported")


def span(ref: BufferRef, offset: int, length: int | None, what: str = "destination") -> tuple[int, int]:
    """Checked ``(address, length)`` of ``length`` bytes at ``offset`` inside ``ref``."""
    if not isinstance(offset, (int, np.integer)) or offset < 0:
        raise InvalidArgumentError(f"{what} offset must be a non-negative integer, got {offset!r}")
    if length is None:
        length = ref.nbytes - int(offset)
    if not isinstance(length, (int, np.integer)) or length < 0:
        raise InvalidArgumentError(f"length must be a non-negative integer, got {length!r}")
    if offset + length > ref.nbytes:
        raise InvalidArgumentError(
            f"{what} too small: {length} bytes at offset {offset} need {offset + length} bytes, it has {ref.nbytes}"
        )
    return ref.address + int(offset), int(length)


class StagingPool:
    """One aligned host allocation carved into ``nslots`` reusable slots.

    Page-aligned, touched once so first use pays no page faults, pinned with
    ``cudaHostRegister`` when CUDA exists, and optionally registered with an
    io_uring engine as a fixed buffer. Slot views (numpy, torch) keep the
    allocation alive: a view can outlive the pool without dangling.
    """

    def __init__(self, nbytes: int, slot_bytes: int, *, pin: bool | None = None, engine: Any = None) -> None:
        if slot_bytes <= 0 or nbytes < slot_bytes or slot_bytes % 4096:
            raise InvalidArgumentError(
                f"staging pool of {nbytes} bytes cannot hold slots of {slot_bytes} bytes "
                "(slots must be positive multiples of 4096 and fit the pool)"
            )
        self.slot_bytes = slot_bytes
        self.nslots = nbytes // slot_bytes
        self._buffer = _native.HostBuffer(self.nslots * slot_bytes)
        self._buffer.prefault()
        self._array = np.frombuffer(self._buffer, dtype=np.uint8)  # type: ignore[call-overload]
        self._free = list(range(self.nslots - 1, -1, -1))
        self._cond = threading.Condition()
        self._closed = False
        if pin is None:
            pin = cuda.device_count() > 0
        self.pinned = bool(pin) and cuda.host_register(self._buffer.address, self._buffer.nbytes)
        self.fixed = bool(engine is not None and engine._register_buffer(self._buffer.address, self._buffer.nbytes))
        # Unpin and unregister however the pool goes (close() or garbage
        # collection): a registration outliving its memory would let the
        # kernel read into the old pages.
        self._finalizer = weakref.finalize(self, _release_pool, self._buffer, self.pinned, engine if self.fixed else None)

    @property
    def address(self) -> int:
        return int(self._buffer.address)

    @property
    def nbytes(self) -> int:
        return int(self._buffer.nbytes)

    def acquire(self, timeout: float | None = None) -> StagingSlot:
        """Take a free slot, waiting up to ``timeout`` seconds (None: forever).

        Raises TimeoutError when none frees in time, ClosedError after close().
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._free or self._closed, timeout):
                raise TimeoutError(f"no staging slot free within {timeout} s ({self.nslots} slots)")
            if self._closed:
                raise ClosedError("staging pool is closed")
            index = self._free.pop()
        return StagingSlot(self, index)

    def _release(self, index: int) -> None:
        with self._cond:
            self._free.append(index)
            self._cond.notify()

    @property
    def free_slots(self) -> int:
        with self._cond:
            return len(self._free)

    def close(self) -> None:
        """Unpin and unregister. Memory is freed when the last view is gone."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._finalizer()
        self.pinned = self.fixed = False

    def __enter__(self) -> StagingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _release_pool(buffer: Any, pinned: bool, engine: Any) -> None:
    if pinned:
        cuda.host_unregister(buffer.address)
    if engine is not None:
        engine._unregister_buffer(buffer.address)


class StagingSlot:
    """One slot of a :class:`StagingPool`; release it (or use ``with``) when done."""

    def __init__(self, pool: StagingPool, index: int) -> None:
        self._pool = pool
        self.index = index
        self.nbytes = pool.slot_bytes
        self.address = pool.address + index * pool.slot_bytes
        self.array: np.ndarray = pool._array[index * pool.slot_bytes : (index + 1) * pool.slot_bytes]
        self._released = False

    def tensor(self) -> Any:
        """A torch uint8 tensor over this slot (zero-copy; keeps the memory alive)."""
        torch = cuda.import_torch()
        if torch is None:
            raise StorecompError("torch is not installed")
        return torch.from_numpy(self.array)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self.index)

    def __enter__(self) -> StagingSlot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
