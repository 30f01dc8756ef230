"""KV layouts: how an engine's KV tensors map to and from chunk payloads.

A chunk payload for one layer is ``[2, tokens, kv_heads, head_dim]`` (K
then V, token-major). An adapter gathers a chunk's token range of every
layer into a chunk buffer and scatters one back: for a CPU cache in one
native call (:mod:`storecomp.io.memcopy`), for a CUDA cache with torch on
the device (one device-to-host or host-to-device copy per layer and chunk;
nothing else moves).

* :class:`ContiguousLayout`: Hugging Face transformers, per layer a key and
  a value tensor of ``[batch, kv_heads, seq, head_dim]`` (a list of pairs or
  a ``DynamicCache``), one batch row per request.
* :class:`PagedLayout`: vLLM / SGLang paged caches, per layer either one
  tensor ``[num_blocks, 2, block_size, kv_heads, head_dim]`` or a pair of
  ``[num_blocks, block_size, kv_heads, head_dim]`` (K, V), addressed by the
  request's block ids.

Torch is imported here; this module is loaded only when a KV store is used.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..io import memcopy
from .format import ChunkLayout
from .keys import ModelFingerprint


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (a fingerprint dtype)."""
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise InvalidArgumentError(f"torch has no dtype {name!r}")
    return dt


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


class KVLayout:
    """Adapter interface: ``tokens`` (capacity), ``check``, ``gather`` and ``scatter``.

    :meth:`gather_chunk` / :meth:`scatter_chunk` move one chunk's layers
    between the cache and a chunk buffer. When the cache is on the CPU they
    do it in one native call (:mod:`storecomp.io.memcopy`: bounds-checked,
    GIL released, streaming stores, optionally threaded), from ops built
    with numpy from the cache's geometry; otherwise (a CUDA cache, or
    layers of unlike strides) layer by layer with torch (:meth:`gather` /
    :meth:`scatter`). A subclass opts into the native path with
    :meth:`_units` and :meth:`_unit_ops`.
    """

    #: how many token positions the adapter addresses
    tokens: int

    def check(self, fp: ModelFingerprint) -> None:
        """Raise InvalidArgumentError when the tensors do not match ``fp``."""
        raise NotImplementedError

    def gather(self, layer: int, start: int, dst: torch.Tensor) -> None:
        """Copy tokens ``[start, start + dst.shape[1])`` of ``layer`` into ``dst`` ([2, T, H, D]) with torch."""
        raise NotImplementedError

    def scatter(self, layer: int, start: int, src: torch.Tensor) -> None:
        """Copy ``src`` ([2, T, H, D]) into tokens ``[start, start + T)`` of ``layer`` with torch."""
        raise NotImplementedError

    def gather_chunk(
        self, start: int, buf: np.ndarray, chunk: ChunkLayout, layers: Sequence[int] | None = None, threads: int = 1
    ) -> None:
        """Copy tokens ``[start, start + chunk.tokens)`` of ``layers`` (default all) into the payloads of ``buf``."""
        self._move(start, buf, chunk, layers, threads, gather=True)

    def scatter_chunk(
        self, start: int, buf: np.ndarray, chunk: ChunkLayout, layers: Sequence[int] | None = None, threads: int = 1
    ) -> None:
        """Copy the payloads of ``layers`` (default all) in ``buf`` into tokens ``[start, start + chunk.tokens)``."""
        self._move(start, buf, chunk, layers, threads, gather=False)

    def _move(
        self, start: int, buf: np.ndarray, chunk: ChunkLayout, layers: Sequence[int] | None, threads: int, gather: bool
    ) -> None:
        fp = chunk.fingerprint
        if layers is None:
            idx = np.arange(fp.layers, dtype=np.int64)
        else:
            idx = np.asarray([operator.index(i) for i in layers], dtype=np.int64)
            if idx.size and not (0 <= int(idx.min()) and int(idx.max()) < fp.layers):
                raise InvalidArgumentError(f"layers {idx.tolist()} out of range for {fp.layers} layers")
        if not 0 <= start <= self.tokens - chunk.tokens:
            raise InvalidArgumentError(f"tokens [{start}, {start + chunk.tokens}) out of range for {self.tokens} positions")
        units = self._unit_table()
        ops = None
        if units is not None:
            if units.dtype != fp.dtype:
                raise InvalidArgumentError(f"KV dtype {units.dtype} does not match the fingerprint's {fp.dtype}")
            # [layers, 2]: payloads K and V of each requested layer in the buffer, and the cache units they map to.
            dst_off = (chunk.layer_offset(0) + idx * chunk.layer_stride)[:, None] + np.asarray([0, chunk.layer_bytes // 2])
            picked = units._replace(region=units.region[idx], base=units.base[idx], step=units.step[idx])
            ops = self._unit_ops(fp, start, chunk.tokens, dst_off, picked)
        if ops is None:  # a CUDA cache, unlike layers, or a head_dim that is not contiguous: torch
            for layer in idx.tolist():
                payload = payload_view(chunk.layer_view(buf, layer), fp, chunk.tokens)
                (self.gather if gather else self.scatter)(layer, start, payload)
            return
        assert units is not None
        cache = [memcopy.storage_region(st) for st in units.storages]
        if gather:
            memcopy.run(ops, [memcopy.array_region(buf, writable=True)], cache, threads=threads)
        else:
            memcopy.run(memcopy.swapped(ops), cache, [memcopy.array_region(buf)], threads=threads)

    def _units(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per layer the (K, V) tensors the native path addresses, or None for the torch path."""
        return None

    def _unit_geometry(self, t: torch.Tensor) -> tuple[tuple[int, ...], int, int]:
        """For a K or V tensor of :meth:`_units`: (the strides all units must share, the unit's offset
        in its storage and its step, both in elements)."""
        raise NotImplementedError

    def _unit_ops(self, fp: ModelFingerprint, start: int, n: int, dst_off: np.ndarray, units: _UnitTable) -> np.ndarray | None:
        """Gather ops for tokens ``[start, start + n)``, or None when they are not row copies (the torch
        path then). ``dst_off`` ``[layers, 2]`` (K, V): each payload's byte offset in the buffer;
        ``units``: the unit table, its arrays cut to the same layers."""
        raise NotImplementedError

    def _unit_table(self) -> _UnitTable | None:
        """The native path's view of the cache, made once per adapter; None (torch path) when the
        cache is not on the CPU or its units differ in strides or dtype."""
        if "_table" in self.__dict__:
            return self.__dict__["_table"]
        table = None
        units = self._units()
        if units is not None and all(t.device.type == "cpu" for pair in units for t in pair):
            tensors = [t for pair in units for t in pair]
            geometry = [self._unit_geometry(t) for t in tensors]
            if len({(g[0], t.dtype) for g, t in zip(geometry, tensors, strict=True)}) == 1:
                shape = (len(units), 2)
                isz = tensors[0].element_size()
                table = _UnitTable(
                    [t.untyped_storage() for t in tensors],
                    _dtype_name(tensors[0].dtype),
                    geometry[0][0],
                    np.arange(len(tensors), dtype=np.int64).reshape(shape),
                    np.asarray([g[1] * isz for g in geometry], dtype=np.int64).reshape(shape),
                    np.asarray([g[2] * isz for g in geometry], dtype=np.int64).reshape(shape),
                )
        self.__dict__["_table"] = table
        return table


class _UnitTable(NamedTuple):
    """The cache as native copy regions: ``region``, ``base`` and ``step`` are ``[layers, 2]`` (K, V)."""

    storages: list[torch.UntypedStorage]  #: the regions (held: their memory outlives any copy)
    dtype: str
    strides: tuple[int, ...]  #: element strides every unit shares
    region: np.ndarray
    base: np.ndarray  #: byte offset of each unit in its storage
    step: np.ndarray  #: bytes per token (contiguous) or per block (paged)


def _check_tensor(t: Any, what: str, fp: ModelFingerprint, shape_tail: tuple[str, ...], heads_dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"{what} is {type(t).__name__}, expected a torch.Tensor")
    if _dtype_name(t.dtype) != fp.dtype:
        raise InvalidArgumentError(f"{what} has dtype {_dtype_name(t.dtype)}, the fingerprint says {fp.dtype}")
    if t.dim() != len(shape_tail) or t.shape[heads_dim] != fp.kv_heads or t.shape[-1] != fp.head_dim:
        raise InvalidArgumentError(
            f"{what} has shape {tuple(t.shape)}, expected {shape_tail} with kv_heads={fp.kv_heads} "
            f"and head_dim={fp.head_dim} (from the fingerprint)"
        )


class ContiguousLayout(KVLayout):
    """Per-layer ``(key, value)`` tensors of ``[batch, kv_heads, seq, head_dim]``.

    ``kv`` is a list of pairs, a transformers ``DynamicCache`` (its
    ``layers[i].keys/.values``) or anything with ``key_cache``/``value_cache``
    lists; ``batch_index`` picks the request's row (fixed for the adapter's
    life: the native path's geometry includes it).
    """

    def __init__(self, kv: Any, batch_index: int = 0) -> None:
        self.pairs = _pairs(kv)
        self._batch_index = batch_index
        self.tokens = int(self.pairs[0][0].shape[2]) if self.pairs and self.pairs[0][0].dim() == 4 else 0

    def check(self, fp: ModelFingerprint) -> None:
        if len(self.pairs) != fp.layers:
            raise InvalidArgumentError(f"KV has {len(self.pairs)} layers, the fingerprint says {fp.layers}")
        for i, (k, v) in enumerate(self.pairs):
            for name, t in (("key", k), ("value", v)):
                _check_tensor(t, f"layer {i} {name}", fp, ("batch", "kv_heads", "seq", "head_dim"), 1)
                if t.shape[2] != self.tokens:
                    raise InvalidArgumentError(f"layer {i} {name} has {t.shape[2]} positions, layer 0 key has {self.tokens}")
                if not 0 <= self.batch_index < t.shape[0]:
                    raise InvalidArgumentError(f"batch_index {self.batch_index} out of range for batch {t.shape[0]}")

    @property
    def batch_index(self) -> int:
        return self._batch_index

    def _units(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return self.pairs

    def _unit_geometry(self, t: torch.Tensor) -> tuple[tuple[int, ...], int, int]:
        # Unit: the request's row [kv_heads, seq, head_dim]; it steps by token.
        return tuple(t.stride()[1:]), int(t.storage_offset()) + self.batch_index * t.stride(0), t.stride(2)

    def _unit_ops(self, fp: ModelFingerprint, start: int, n: int, dst_off: np.ndarray, units: _UnitTable) -> np.ndarray | None:
        # [kv_heads, n, head_dim] of the cache <-> [n, kv_heads, head_dim] of the payload.
        shape = (fp.kv_heads, n, fp.head_dim)
        tpl = memcopy.template(shape, (fp.head_dim, fp.kv_heads * fp.head_dim, 1), units.strides, fp.itemsize)
        if tpl is None:
            return None
        return memcopy.instantiate(tpl, 0, dst_off.ravel(), units.region.ravel(), (units.base + start * units.step).ravel())

    def gather(self, layer: int, start: int, dst: torch.Tensor) -> None:
        k, v = self.pairs[layer]
        n = dst.shape[1]
        b = self.batch_index
        dst[0].copy_(k[b, :, start : start + n, :].transpose(0, 1))
        dst[1].copy_(v[b, :, start : start + n, :].transpose(0, 1))

    def scatter(self, layer: int, start: int, src: torch.Tensor) -> None:
        k, v = self.pairs[layer]
        n = src.shape[1]
        b = self.batch_index
        # Synchronous copies: the host buffer is reused as soon as retrieve() returns.
        k[b, :, start : start + n, :].copy_(src[0].transpose(0, 1))
        v[b, :, start : start + n, :].copy_(src[1].transpose(0, 1))


def _pairs(kv: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(kv, "layers", None)
    if layers is not None and all(hasattr(x, "keys") and hasattr(x, "values") for x in layers):
        return [(x.keys, x.values) for x in layers]
    if hasattr(kv, "key_cache") and hasattr(kv, "value_cache"):
        return list(zip(kv.key_cache, kv.value_cache, strict=True))
    if isinstance(kv, Sequence) and all(isinstance(p, Sequence) and len(p) == 2 for p in kv):
        return [(p[0], p[1]) for p in kv]
    raise InvalidArgumentError(
        f"cannot read KV from {type(kv).__name__}: pass a list of (key, value) tensors, a DynamicCache or a KVLayout"
    )


class PagedLayout(KVLayout):
    """A paged cache addressed by ``block_ids`` (block j holds tokens ``[j*bs, (j+1)*bs)``).

    ``caches[i]`` is layer i: one tensor ``[num_blocks, 2, block_size, H, D]``
    or a ``(K, V)`` pair of ``[num_blocks, block_size, H, D]``. Chunks must
    cover whole blocks (``chunk_tokens % block_size == 0``).
    """

    def __init__(self, caches: Sequence[Any], block_ids: Sequence[int] | torch.Tensor, block_size: int) -> None:
        if block_size <= 0:
            raise InvalidArgumentError(f"block_size must be positive, got {block_size}")
        self.caches = list(caches)
        self.block_size = block_size
        self.combined = bool(self.caches) and isinstance(self.caches[0], torch.Tensor)
        first = self.caches[0] if self.combined else (self.caches[0][0] if self.caches else None)
        device = first.device if isinstance(first, torch.Tensor) else torch.device("cpu")
        self.block_ids = torch.as_tensor(block_ids, dtype=torch.long).reshape(-1).to(device)
        self.tokens = int(self.block_ids.numel()) * block_size
        self._ids_np = self.block_ids.cpu().numpy()

    def check(self, fp: ModelFingerprint) -> None:
        if len(self.caches) != fp.layers:
            raise InvalidArgumentError(f"paged KV has {len(self.caches)} layers, the fingerprint says {fp.layers}")
        for i, c in enumerate(self.caches):
            tensors = [("kv", c)] if self.combined else list(zip(("key", "value"), c, strict=True))
            for name, t in tensors:
                if self.combined:
                    _check_tensor(t, f"layer {i} {name}", fp, ("blocks", "2", "block_size", "kv_heads", "head_dim"), 3)
                    ok = t.shape[1] == 2 and t.shape[2] == self.block_size
                else:
                    _check_tensor(t, f"layer {i} {name}", fp, ("blocks", "block_size", "kv_heads", "head_dim"), 2)
                    ok = t.shape[1] == self.block_size
                if not ok:
                    raise InvalidArgumentError(
                        f"layer {i} {name} shape {tuple(t.shape)} does not match block_size {self.block_size}"
                    )
                lo, hi = (int(self.block_ids.min()), int(self.block_ids.max())) if self.block_ids.numel() else (0, -1)
                if lo < 0 or hi >= t.shape[0]:
                    raise InvalidArgumentError(f"block ids [{lo}, {hi}] out of range for {t.shape[0]} blocks")

    def _check_range(self, start: int, n: int) -> int:
        """The first block of tokens ``[start, start + n)``; InvalidArgumentError unless whole blocks."""
        if start % self.block_size or n % self.block_size:
            raise InvalidArgumentError(f"token range [{start}, {start + n}) does not cover whole blocks of {self.block_size}")
        return start // self.block_size

    def _blocks(self, start: int, n: int) -> torch.Tensor:
        b0 = self._check_range(start, n)
        return self.block_ids[b0 : b0 + n // self.block_size]

    def _kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.caches[layer]
        return (c[:, 0], c[:, 1]) if self.combined else (c[0], c[1])

    def _units(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        return [self._kv(layer) for layer in range(len(self.caches))]

    def _unit_geometry(self, t: torch.Tensor) -> tuple[tuple[int, ...], int, int]:
        # Unit: K or V of every block [blocks, block_size, kv_heads, head_dim]; it steps by block.
        return tuple(t.stride()[1:]), int(t.storage_offset()), t.stride(0)

    def _unit_ops(self, fp: ModelFingerprint, start: int, n: int, dst_off: np.ndarray, units: _UnitTable) -> np.ndarray | None:
        # Block ids[j] of the cache <-> tokens [j * bs, (j + 1) * bs) of the payload: one op per
        # layer, block and part, in that order (a block's K and V, adjacent in a combined cache,
        # are read one after the other: the source in address order).
        b0 = self._check_range(start, n)
        ids = self._ids_np[b0 : b0 + n // self.block_size]
        bs, row = self.block_size, fp.kv_heads * fp.head_dim
        tpl = memcopy.template((bs, fp.kv_heads, fp.head_dim), (row, fp.head_dim, 1), units.strides, fp.itemsize)
        if tpl is None:
            return None
        j = (np.arange(len(ids), dtype=np.int64) * (bs * row * fp.itemsize))[None, :, None]
        per_block = (len(dst_off), len(ids), 2)
        return memcopy.instantiate(
            tpl,
            0,
            (dst_off[:, None, :] + j).ravel(),
            np.broadcast_to(units.region[:, None, :], per_block).ravel(),
            (units.base[:, None, :] + ids[None, :, None] * units.step[:, None, :]).ravel(),
        )

    def gather(self, layer: int, start: int, dst: torch.Tensor) -> None:
        ids = self._blocks(start, dst.shape[1])
        for src, part_t in zip(self._kv(layer), (dst[0], dst[1]), strict=True):
            # Blocks as flat rows: torch's 2-D index_select copies whole rows (memcpy
            # speed); on 4-D or strided-inner views it goes element by element.
            rows = src.flatten(1)
            out_t = part_t.view(ids.numel(), -1)
            if rows.device == out_t.device:
                torch.index_select(rows, 0, ids, out=out_t)
            else:
                out_t.copy_(rows.index_select(0, ids))  # gathered on the device, one copy to host

    def scatter(self, layer: int, start: int, src: torch.Tensor) -> None:
        ids = self._blocks(start, src.shape[1])
        for dst, part_t in zip(self._kv(layer), (src[0], src[1]), strict=True):
            part_rows = part_t.reshape(ids.numel(), -1)
            if part_rows.device != dst.device:
                part_rows = part_rows.to(dst.device)  # synchronous: the host buffer is reused after retrieve()
            dst.flatten(1).index_copy_(0, ids, part_rows)


def as_layout(kv: Any) -> KVLayout:
    """``kv`` itself when it is a KVLayout, else a :class:`ContiguousLayout` over it."""
    return kv if isinstance(kv, KVLayout) else ContiguousLayout(kv)


def payload_view(buf: Any, fp: ModelFingerprint, tokens: int) -> torch.Tensor:
    """A ``[2, tokens, kv_heads, head_dim]`` tensor over a uint8 numpy payload (zero-copy)."""
    t = torch.from_numpy(buf)
    return t.view(torch_dtype(fp.dtype)).view(2, tokens, fp.kv_heads, fp.head_dim)
