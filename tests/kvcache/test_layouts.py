"""PagedLayout's CPU copy path (one memcpy per run of consecutive block ids) moves
exactly the bytes torch's index_select / index_copy_ move, for every id pattern."""

from __future__ import annotations

import pytest
import torch

from storecomp.kvcache import PagedLayout

IDS = {
    "scattered": [3, 4, 5, 0, 9, 10, 2, 7],
    "one run": list(range(8)),
    "descending": [7, 6, 5, 4, 3, 2, 1, 0],
    "runs": [8, 9, 10, 11, 0, 1, 4, 5],
}


def _caches(combined: bool, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    if combined:
        return [torch.randn(12, 2, 4, 2, 8, generator=g).to(torch.bfloat16) for _ in range(2)]
    return [tuple(torch.randn(12, 4, 2, 8, generator=g).to(torch.bfloat16) for _ in range(2)) for _ in range(2)]


def _torch_path(layout: PagedLayout) -> PagedLayout:
    ref = PagedLayout(layout.caches, layout.block_ids, layout.block_size)
    ref._ids = None  # the device path: index_select / index_copy_
    return ref


@pytest.mark.parametrize("combined", [True, False])
@pytest.mark.parametrize("pattern", list(IDS))
def test_cpu_runs_match_index_ops(combined: bool, pattern: str) -> None:
    ids = IDS[pattern]
    fast = PagedLayout(_caches(combined, 0), ids, 4)
    ref = _torch_path(PagedLayout(_caches(combined, 0), ids, 4))
    for layer in range(2):
        for start in (0, 8, 16):
            a = torch.empty(2, 16, 2, 8, dtype=torch.bfloat16)
            b = torch.empty_like(a)
            fast.gather(layer, start, a)
            ref.gather(layer, start, b)
            assert torch.equal(a, b)
            new = torch.randn(2, 16, 2, 8).to(torch.bfloat16)
            fast.scatter(layer, start, new)
            ref.scatter(layer, start, new)
    for x, y in zip(fast.caches, ref.caches, strict=True):
        for s, t in zip((x,) if combined else x, (y,) if combined else y, strict=True):
            assert torch.equal(s, t)


def test_cpu_path_leaves_other_blocks_alone() -> None:
    caches = _caches(True, 1)
    before = [c.clone() for c in caches]
    layout = PagedLayout(caches, [5, 6, 1, 2], 4)
    layout.scatter(0, 0, torch.ones(2, 8, 2, 8, dtype=torch.bfloat16))
    touched = torch.zeros(12, dtype=torch.bool)
    touched[[5, 6]] = True
    assert torch.equal(caches[0][~touched], before[0][~touched]) and torch.equal(caches[1], before[1])
    assert bool((caches[0][[5, 6]] == 1).all())
