"""The layouts' native chunk copies (storecomp.io.memcopy) move exactly the bytes
torch's per-layer gather / scatter move, for every block-id pattern and cache
geometry; what the native path cannot express falls back to torch."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import ContiguousLayout, PagedLayout
from storecomp.kvcache.format import ChunkLayout
from tests.kvcache.kvhelpers import FP, make_kv

IDS = {
    "scattered": [3, 4, 5, 0, 9, 10, 2, 7],
    "one run": list(range(8)),
    "descending": [7, 6, 5, 4, 3, 2, 1, 0],
    "runs": [8, 9, 10, 11, 0, 1, 4, 5],
}
BS = 4  #: tokens per block
CH = ChunkLayout(FP, 16)  #: chunks of 4 blocks


def _caches(combined: bool, seed: int) -> list[Any]:
    g = torch.Generator().manual_seed(seed)
    shape = (12, 2, BS, FP.kv_heads, FP.head_dim) if combined else (12, BS, FP.kv_heads, FP.head_dim)
    if combined:
        return [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(FP.layers)]
    return [tuple(torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(2)) for _ in range(FP.layers)]


def _flat(caches: list[Any]) -> list[torch.Tensor]:
    return [t for c in caches for t in ((c,) if isinstance(c, torch.Tensor) else c)]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (random payload bytes include NaNs, which torch.equal never calls equal)."""
    return torch.equal(a.view(torch.int16), b.view(torch.int16))


def _buf(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, CH.nbytes, dtype=np.uint8)


def _torch_gather(layout: Any, start: int, layers: list[int]) -> np.ndarray:
    """The reference: per-layer torch gathers into a zeroed chunk buffer."""
    from storecomp.kvcache.layouts import payload_view

    buf = np.zeros(CH.nbytes, dtype=np.uint8)
    for layer in layers:
        layout.gather(layer, start, payload_view(CH.layer_view(buf, layer), FP, CH.tokens))
    return buf


def _torch_scatter(layout: Any, start: int, buf: np.ndarray, layers: list[int]) -> None:
    from storecomp.kvcache.layouts import payload_view

    for layer in layers:
        layout.scatter(layer, start, payload_view(CH.layer_view(buf, layer), FP, CH.tokens))


@pytest.mark.parametrize("combined", [True, False])
@pytest.mark.parametrize("pattern", list(IDS))
@pytest.mark.parametrize("threads", [1, 2])
def test_paged_native_matches_torch(combined: bool, pattern: str, threads: int) -> None:
    native = PagedLayout(_caches(combined, 0), IDS[pattern], BS)
    ref = PagedLayout(_caches(combined, 0), IDS[pattern], BS)
    assert native._unit_table() is not None  # the native path is the one under test
    for start in (0, 16):
        for layers in (None, [1], [2, 0]):
            want = _torch_gather(ref, start, layers or [0, 1, 2])
            got = np.zeros(CH.nbytes, dtype=np.uint8)
            native.gather_chunk(start, got, CH, layers, threads=threads)
            assert np.array_equal(got, want)
            new = _buf(start + len(layers or []))
            native.scatter_chunk(start, new, CH, layers, threads=threads)
            _torch_scatter(ref, start, new, layers or [0, 1, 2])
            assert all(_same(a, b) for a, b in zip(_flat(native.caches), _flat(ref.caches), strict=True))


@pytest.mark.parametrize("batch_index", [0, 2])
@pytest.mark.parametrize("sliced", [False, True])
def test_contiguous_native_matches_torch(batch_index: int, sliced: bool) -> None:
    """transformers' [batch, heads, seq, head_dim], also as a view into a larger (static) cache."""

    def kv(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        full = [torch.randn(3, FP.kv_heads, 48, FP.head_dim, generator=g).to(torch.bfloat16) for _ in range(2 * FP.layers)]
        ts = [t[:, :, 5:45] if sliced else t for t in full]
        return [(ts[2 * i], ts[2 * i + 1]) for i in range(FP.layers)]

    native, ref = ContiguousLayout(kv(1), batch_index), ContiguousLayout(kv(1), batch_index)
    assert native._unit_table() is not None
    for start in (0, 7, native.tokens - CH.tokens):
        got = np.zeros(CH.nbytes, dtype=np.uint8)
        native.gather_chunk(start, got, CH)
        assert np.array_equal(got, _torch_gather(ref, start, [0, 1, 2]))
        new = _buf(start)
        native.scatter_chunk(start, new, CH, threads=2)
        _torch_scatter(ref, start, new, [0, 1, 2])
        assert all(_same(a, b) for pa, pb in zip(native.pairs, ref.pairs, strict=True) for a, b in zip(pa, pb, strict=True))


def test_scatter_leaves_other_blocks_and_the_header_alone() -> None:
    caches = _caches(True, 1)
    before = [c.clone() for c in caches]
    layout = PagedLayout(caches, [5, 6, 1, 2, 9, 10, 11, 0], BS)
    buf = _buf(3)
    layout.scatter_chunk(0, buf, CH)
    touched = torch.zeros(12, dtype=torch.bool)
    touched[[5, 6, 1, 2]] = True
    for c, b in zip(caches, before, strict=True):
        assert _same(c[~touched], b[~touched]) and not _same(c[touched], b[touched])
    head = np.zeros(CH.nbytes, dtype=np.uint8)
    layout.gather_chunk(0, head, CH)
    assert not head[: CH.layer_offset(0)].any()  # the header region is never written by a gather


def _head_dim_strided(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(2, 3).contiguous().transpose(2, 3)  # same values, head_dim not contiguous


@pytest.mark.parametrize("which", ["layer 0", "every tensor"])
def test_what_is_not_row_copies_goes_through_torch(which: str) -> None:
    """Unlike layers (no unit table) or a strided head_dim everywhere (no row copies): same bytes, via torch."""
    kv = make_kv(32)
    if which == "layer 0":
        kv[0] = (_head_dim_strided(kv[0][0]), kv[0][1])
    else:
        kv = [(_head_dim_strided(k), _head_dim_strided(v)) for k, v in kv]
    layout = ContiguousLayout(kv)
    assert (layout._unit_table() is None) == (which == "layer 0")
    got = np.zeros(CH.nbytes, dtype=np.uint8)
    layout.gather_chunk(16, got, CH)
    assert np.array_equal(got, _torch_gather(ContiguousLayout(make_kv(32)), 16, [0, 1, 2]))
    new = _buf(5)
    layout.scatter_chunk(16, new, CH)
    back = np.zeros(CH.nbytes, dtype=np.uint8)
    layout.gather_chunk(16, back, CH)  # what was scattered comes back, byte for byte
    assert all(np.array_equal(CH.layer_view(back, i), CH.layer_view(new, i)) for i in range(FP.layers))


def test_out_of_range_tokens_are_refused() -> None:
    layout = ContiguousLayout(make_kv(20))
    with pytest.raises(InvalidArgumentError, match=r"tokens \[8, 24\) out of range for 20"):
        layout.gather_chunk(8, np.zeros(CH.nbytes, dtype=np.uint8), CH)
    paged = PagedLayout(_caches(True, 0), [0, 1, 2, 3, 4, 5], BS)
    with pytest.raises(InvalidArgumentError, match="whole blocks"):
        paged.gather_chunk(2, np.zeros(CH.nbytes, dtype=np.uint8), CH)


def test_bad_layers_dtype_and_destination_are_refused() -> None:
    layout = ContiguousLayout(make_kv(32))
    buf = np.zeros(CH.nbytes, dtype=np.uint8)
    for bad in ([3], [-1], [0, 5]):
        with pytest.raises(InvalidArgumentError, match="out of range for 3 layers"):
            layout.gather_chunk(0, buf, CH, bad)
    with pytest.raises(TypeError):
        layout.gather_chunk(0, buf, CH, [0.7])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="writable"):
        layout.gather_chunk(0, np.frombuffer(bytes(CH.nbytes), np.uint8), CH)  # never into immutable bytes
    with pytest.raises(AttributeError):
        layout.batch_index = 1  # type: ignore[misc]  # the native geometry includes it
    half = ContiguousLayout([(k.half(), v.half()) for k, v in make_kv(32)])
    with pytest.raises(InvalidArgumentError, match="dtype float16 does not match the fingerprint's bfloat16"):
        half.scatter_chunk(0, buf, CH)
