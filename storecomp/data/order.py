"""The global sample order of an epoch and how ranks share it.

The order depends only on (number of samples, seed, epoch, block, window),
never on the world size: shuffled blocks of ``block`` consecutive samples
(locality: neighbours often share a batch, so their reads merge), then a
shuffle inside consecutive windows of ``window`` samples.

Ranks consume the order in *steps* of ``world_size * batch_size`` samples;
rank ``r`` takes positions ``[pos + r*B, pos + (r+1)*B)``. A loader's state is
the global position reached, so a run saved with one world size resumes with
another without losing or repeating a sample. The tail (fewer than a full
step) is split evenly across ranks, or dropped with ``drop_last``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def epoch_order(n: int, seed: int, epoch: int, *, shuffle: bool = True, block: int = 1, window: int = 1) -> np.ndarray:
    """Permutation of ``range(n)`` (int64) for ``epoch``; identity when not shuffling."""
    if not shuffle or n == 0:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, int(epoch)])
    block = max(1, int(block))
    nblocks = -(-n // block)
    order = (rng.permutation(nblocks)[:, None] * block + np.arange(block)).ravel()
    order = order[order < n]
    window = max(1, int(window))
    if window > 1:
        keys = rng.random(n)
        order = order[np.lexsort((keys, np.arange(n) // window))]
    return order.astype(np.int64)


def rank_steps(
    n: int, start: int, batch_size: int, world_size: int, rank: int, drop_last: bool
) -> Iterator[tuple[int, int, int]]:
    """This rank's batches from global position ``start``: (first position, count, position after the step)."""
    pos = start
    step = batch_size * world_size
    while pos + step <= n:
        yield pos + rank * batch_size, batch_size, pos + step
        pos += step
    rest = n - pos
    if rest <= 0 or drop_last:
        return
    q, r = divmod(rest, world_size)
    first = pos + rank * q + min(rank, r)
    count = q + (1 if rank < r else 0)
    if count:
        yield first, count, n
