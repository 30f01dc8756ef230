"""The DataLoader's counters: what was delivered, what the consumer waited for and why, the step log.

The producer thread adds its storage intervals (:meth:`LoaderMetrics.busy`)
and the consumer adds each handed-over batch (:meth:`LoaderMetrics.account`);
:meth:`LoaderMetrics.snapshot` turns the counters into ``DataLoader.metrics()``.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

from . import _stalls

_WAIT_KEYS = tuple(f"wait_{cause}_s" for cause in _stalls.CAUSES)  #: the counters of the waits per cause


class LoaderMetrics:
    """Counters since creation or :meth:`reset`, the producer's :class:`~storecomp.data._stalls.StageClock`
    and the last ``step_log`` step records."""

    def __init__(self, step_log: int) -> None:
        self.clock = _stalls.StageClock()
        self.steps: collections.deque[dict[str, Any]] = collections.deque(maxlen=step_log)
        self.step_no = 0
        self.m: dict[str, float] = collections.defaultdict(float)

    def reset(self) -> None:
        """Zero the counters and the stage clock (the step log and step numbers go on)."""
        self.m = collections.defaultdict(float)
        self.clock.reset()

    def busy(self, submitted: float, done_at: float | None, seen_waiting: bool, cpu_at_submit: float, cpu_at_done: float) -> None:
        """Storage busy time: the union of the batches' in-flight intervals (they overlap).

        A batch's I/O latency is submission to completion (``perf_counter``
        seconds); when the completion was only seen after the producer's own
        CPU work, that work is taken out (the reads may have finished long
        before it), so producer CPU never reads as storage latency.
        """
        m = self.m
        end = done_at or time.perf_counter()
        m["io_busy_s"] += max(0.0, end - max(submitted, m["io_last_end"]))
        m["io_last_end"] = max(m["io_last_end"], end)
        lat = end - submitted
        if not seen_waiting:
            lat = max(0.0, lat - (cpu_at_done - cpu_at_submit))
        m["latency_ema"] = lat if not m["latency_ema"] else 0.8 * m["latency_ema"] + 0.2 * lat

    def storage_is_the_cause(self, waits: dict[str, float]) -> bool:
        """This wait, and the waits so far, were mostly the producer waiting on storage."""
        m, total = self.m, sum(waits.values())
        so_far = sum(m[key] for key in _WAIT_KEYS)
        return total > 0 and waits["storage"] >= 0.5 * total and m["wait_storage_s"] >= 0.5 * so_far

    def account(
        self,
        samples: int,
        nbytes: int,
        epoch: int,
        t0: float,
        t1: float,
        ready: int,
        waits: dict[str, float] | None,
        read_ahead: int,
    ) -> dict[str, Any]:
        """Add one delivered batch (the consumer blocked from ``t0`` to ``t1``, ``ready`` batches were
        queued); returns its step record (kept in the step log)."""
        m = self.m
        m["batches"] += 1
        m["samples"] += samples
        m["bytes"] += nbytes
        m["wait_s"] += t1 - t0
        m["ready_sum"] += ready
        m["waited_batches"] += int(waits is not None)
        if waits is None:  # a batch was ready: the short wait is the hand-over itself
            waits = dict.fromkeys(_stalls.CAUSES, 0.0)
        else:
            for key, s in zip(_WAIT_KEYS, waits.values(), strict=True):  # waits are keyed in CAUSES order
                m[key] += s
        if m["batches"] <= 10:
            m["wait_s_first10"] += t1 - t0
        record = _stalls.step_record(self.step_no, epoch, samples, t1 - t0, waits, read_ahead, ready)
        self.step_no += 1
        self.steps.append(record)
        return record

    def step_done(self, record: dict[str, Any], step_s: float, on_step: Callable[[dict[str, Any]], None] | None) -> None:
        """The consumer came back after ``step_s`` seconds with the batch of ``record``."""
        record["step_s"] = step_s
        self.m["step_s"] += step_s
        if on_step is not None:
            on_step(record)

    def snapshot(self, at_limit: bool, **extra: Any) -> dict[str, Any]:
        """The counters as ``DataLoader.metrics()`` documents them (``extra``: the loader's own entries)."""
        m = self.m
        b = max(1.0, m["batches"])
        wall = m["wait_s"] + m["step_s"]  # consumer time covered by the batches delivered
        wait = m["wait_s"]
        frac = wait / wall if wall > 0 else 0.0
        after10 = max(0.0, wall - m["wait_s_first10"])
        io = m["io_busy_s"]
        waits = {cause: m[f"wait_{cause}_s"] for cause in _stalls.CAUSES}
        stages = self.clock.read()
        out = {
            "batches": int(m["batches"]),
            "samples": int(m["samples"]),
            "bytes": int(m["bytes"]),
            "wall_s": wall,
            "data_wait_s": wait,
            "data_wait_fraction": frac,
            "data_wait_fraction_after_10": (wait - m["wait_s_first10"]) / after10 if after10 > 0 else 0.0,
            "step_s": m["step_s"] / b,
            "gbps": m["bytes"] / wall / 1e9 if wall > 0 else 0.0,
            "samples_per_s": m["samples"] / wall if wall > 0 else 0.0,
            "storage_gbps": m["bytes"] / io / 1e9 if io > 0 else 0.0,
            "h2d_s": m["h2d_s"],
            "data_wait_storage_s": waits["storage"],
            "data_wait_producer_cpu_s": waits["producer_cpu"],
            "data_wait_h2d_s": waits["h2d"],
            "producer_s": stages,
            "producer_cpu_s": sum(stages[s] for s in _stalls.CPU_STAGES),
            "latency_s": m["latency_ema"],
            "queue_occupancy": m["ready_sum"] / b,
        }
        out.update(extra)
        out["corrupt_skipped"] = int(m["corrupt_skipped"])
        out["batches_outside_staging"] = int(m["batches_outside_staging"])
        out["bottleneck"] = _stalls.bottleneck(frac, waits, at_limit)
        return out
