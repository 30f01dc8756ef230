"""KV layouts: how an engine's KV tensors map to and from chunk payloads.

A chunk payload for one layer is ``[2, tokens, kv_heads, head_dim]`` (K
then V, token-major). An adapter gathers a token range of one layer into
such a host tensor and scatters one back, with torch, on the tensors' own
device (a CUDA cache gets one device-to-host or host-to-device copy per
layer and chunk; nothing else moves).

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

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InvalidArgumentError
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
    """Adapter interface: ``tokens`` (capacity), ``gather`` and ``scatter``."""

    #: how many token positions the adapter addresses
    tokens: int

    def check(self, fp: ModelFingerprint) -> None:
        """Raise InvalidArgumentError when the tensors do not match ``fp``."""
        raise NotImplementedError

    def gather(self, layer: int, start: int, dst: torch.Tensor) -> None:
        """Copy tokens ``[start, start + dst.shape[1])`` of ``layer`` into ``dst`` ([2, T, H, D], host)."""
        raise NotImplementedError

    def scatter(self, layer: int, start: int, src: torch.Tensor) -> None:
        """Copy ``src`` ([2, T, H, D], host) into tokens ``[start, start + T)`` of ``layer``."""
        raise NotImplementedError


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
    lists; ``batch_index`` picks the request's row.
    """

    def __init__(self, kv: Any, batch_index: int = 0) -> None:
        self.pairs = _pairs(kv)
        self.batch_index = batch_index
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
        # On the CPU, blocks move as runs of consecutive ids (one memcpy per run):
        # faster than index_copy_ (about half of memcpy) and no slower than index_select.
        self._ids = self.block_ids.tolist() if device.type == "cpu" else None
        self._run_cache: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        self._np_layers: dict[int, tuple[Any, Any] | None] = {}

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
                if self.block_ids.numel() and int(self.block_ids.max()) >= t.shape[0]:
                    raise InvalidArgumentError(f"block id {int(self.block_ids.max())} out of range for {t.shape[0]} blocks")

    def _blocks(self, start: int, n: int) -> torch.Tensor:
        if start % self.block_size or n % self.block_size:
            raise InvalidArgumentError(f"token range [{start}, {start + n}) does not cover whole blocks of {self.block_size}")
        return self.block_ids[start // self.block_size : (start + n) // self.block_size]

    def _kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.caches[layer]
        return (c[:, 0], c[:, 1]) if self.combined else (c[0], c[1])

    def _runs(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """``(row, first block id, blocks)`` per run of consecutive block ids in the token range (cached)."""
        runs = self._run_cache.get((start, n))
        if runs is not None:
            return runs
        self._blocks(start, n)  # range check
        b0 = start // self.block_size
        ids = self._ids[b0 : b0 + n // self.block_size]  # type: ignore[index]
        runs, i = [], 0
        while i < len(ids):
            j = i + 1
            while j < len(ids) and ids[j] == ids[j - 1] + 1:
                j += 1
            runs.append((i, ids[i], j - i))
            i = j
        self._run_cache[(start, n)] = runs
        return runs

    def _np_cache(self, layer: int) -> tuple[Any, Any] | None:
        """uint8 numpy row views ``[blocks, block bytes]`` of layer's K and V (cached), or None."""
        if layer not in self._np_layers:
            k, v = (_np_rows(t) for t in self._kv(layer))
            self._np_layers[layer] = None if k is None or v is None else (k, v)
        return self._np_layers[layer]

    def _fast(self, layer: int, start: int, payload: torch.Tensor) -> tuple[Any, Any, Any, int] | None:
        """(K rows, V rows, payload rows [2 * blocks, block bytes], blocks) for the CPU copy path, or None."""
        if self._ids is None or payload.device.type != "cpu":
            return None
        nb = payload.shape[1] // self.block_size
        cache = self._np_cache(layer)
        rows = _np_rows(payload, 2 * nb) if payload.shape[1] % self.block_size == 0 else None
        if cache is None or rows is None:
            return None
        return cache[0], cache[1], rows, nb

    def gather(self, layer: int, start: int, dst: torch.Tensor) -> None:
        n = dst.shape[1]
        # Mostly consecutive blocks: one memcpy per run. (Scattered blocks go
        # through index_select below, which copies single rows faster.)
        mostly_runs = self._ids is not None and 2 * len(self._runs(start, n)) <= n // self.block_size
        fast = self._fast(layer, start, dst) if mostly_runs else None
        if fast is not None:
            runs = self._runs(start, n)
            k, v, out, nb = fast
            for row, bid, cnt in runs:
                out[row : row + cnt] = k[bid : bid + cnt]
                out[nb + row : nb + row + cnt] = v[bid : bid + cnt]
            return
        ids = self._blocks(start, n)
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
        n = src.shape[1]
        fast = self._fast(layer, start, src)
        if fast is not None:
            # One memcpy per run of consecutive block ids: index_copy_ reaches about
            # half of memcpy on the CPU, per-row slice copies about 0.7x.
            k, v, rows, nb = fast
            for row, bid, cnt in self._runs(start, n):
                k[bid : bid + cnt] = rows[row : row + cnt]
                v[bid : bid + cnt] = rows[nb + row : nb + row + cnt]
            return
        ids = self._blocks(start, n)
        for dst, part_t in zip(self._kv(layer), (src[0], src[1]), strict=True):
            part_rows = part_t.reshape(ids.numel(), -1)
            if part_rows.device != dst.device:
                part_rows = part_rows.to(dst.device)  # synchronous: the host buffer is reused after retrieve()
            dst.flatten(1).index_copy_(0, ids, part_rows)


def _np_rows(t: torch.Tensor, rows: int | None = None) -> Any:
    """A uint8 numpy view ``[rows, bytes per row]`` over a CPU tensor's first dimension
    (``t.shape[0]`` rows by default), or None when its rows are not contiguous (no copy is ever made)."""
    if t.device.type != "cpu":
        return None
    try:
        r = t.detach().view(t.shape[0] if rows is None else rows, -1)
        if r.shape[1] and r.stride(1) != 1:
            return None
        return r.view(torch.uint8).numpy()
    except (RuntimeError, TypeError):
        return None


def as_layout(kv: Any) -> KVLayout:
    """``kv`` itself when it is a KVLayout, else a :class:`ContiguousLayout` over it."""
    return kv if isinstance(kv, KVLayout) else ContiguousLayout(kv)


def payload_view(buf: Any, fp: ModelFingerprint, tokens: int) -> torch.Tensor:
    """A ``[2, tokens, kv_heads, head_dim]`` tensor over a uint8 numpy payload (zero-copy)."""
    t = torch.from_numpy(buf)
    return t.view(torch_dtype(fp.dtype)).view(2, tokens, fp.kv_heads, fp.head_dim)
