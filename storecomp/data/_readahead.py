"""The read-ahead controller: how many batches the DataLoader keeps in flight.

Needed depth = ceil(2 x latency / consumer step) + 1, from measured
averages (:class:`~storecomp.data._metrics.LoaderMetrics`), within the slots
``max_memory`` allows; a wait blamed on storage that still happens doubles
it. Waits for the producer's CPU or the device copy do not grow it: more
depth would not help them.
"""

from __future__ import annotations

import math

from ..errors import InvalidArgumentError
from ._metrics import LoaderMetrics


class ReadAhead:
    """Batches in flight: ``requested`` fixes the depth (batches); None sizes it from measurements.

    ``max_slots`` staging slots exist; one always stays with the consumer
    (the batch it holds), so the depth is at most ``max_slots - 1``.
    Raises InvalidArgumentError for a ``requested`` that is not a positive int.
    """

    def __init__(self, requested: int | None, max_slots: int) -> None:
        if requested is not None and (not isinstance(requested, int) or requested <= 0):
            raise InvalidArgumentError(f"read_ahead must be a positive int (batches) or None, got {requested!r}")
        self.max_slots = max_slots
        self.depth = min(requested or 2, max_slots - 1)
        self.adaptive = requested is None

    def at_limit(self, metrics: LoaderMetrics) -> bool:
        """More depth is not allowed (the max_memory limit), and storage latency has been measured."""
        return self.depth >= self.max_slots - 1 and metrics.m["latency_ema"] > 0

    def resize(self, metrics: LoaderMetrics, waits: dict[str, float] | None) -> None:
        """After a batch was handed over (``waits``: how its wait was blamed, None when it was ready).

        It never shrinks within a run.
        """
        if not self.adaptive:
            return
        storage_wait = waits is not None and metrics.storage_is_the_cause(waits)
        m = metrics.m
        n = max(1.0, m["batches"])
        step = (m["step_s"] + m["wait_s"]) / n  # consumer time per batch, including what it waited
        need = self.depth
        if step > 0 and m["latency_ema"] > 0:
            # 2x the mean latency: storage latency has a long tail.
            need = max(need, math.ceil(2 * m["latency_ema"] / step) + 1)
        if storage_wait and m["batches"] > 1:
            need = max(need, 2 * self.depth)  # a wait despite the estimate: grow fast
        self.depth = int(min(max(1, need), self.max_slots - 1))
