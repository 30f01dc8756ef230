"""Where the DataLoader's time goes: the producer's stages, the consumer's waits, and their cause.

The producer thread moves through stages (``plan``: choosing the batch's
ranges and submitting them; ``io_wait``: blocked on storage; ``checksum``;
``collate``: shaping tensors; ``h2d``: the host-to-device copy; ``idle``:
every slot is with the consumer). :class:`StageClock` adds up the seconds
per stage and can be read from the consumer thread mid-stage, so a wait of
the consumer is split by what the producer was doing during it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

STAGES = ("plan", "io_wait", "checksum", "collate", "h2d", "idle")
#: Producer stages that are CPU work of the loader itself (not storage, not the device copy).
CPU_STAGES = ("plan", "checksum", "collate")
#: What a wait is blamed on, from the stages the producer spent it in.
CAUSES = {"storage": ("io_wait",), "producer_cpu": CPU_STAGES, "h2d": ("h2d",), "consumer_holds_slots": ("idle",)}
_CPU = frozenset(CPU_STAGES)
_CAUSE_STAGES = tuple(CAUSES.values())
_CAUSE_OF = {s: i for i, stages in enumerate(_CAUSE_STAGES) for s in stages}


class StageClock:
    """Seconds the producer thread spent in each stage; thread-safe, readable mid-stage.

    :meth:`enter` and :meth:`cpu` are O(1) and build nothing (several calls per batch).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(STAGES, 0.0)
        self._cpu = 0.0  # the CPU stages' part of _totals, kept as they close
        self._stage: str | None = None
        self._since = 0.0

    def enter(self, stage: str | None) -> None:
        """The producer starts ``stage`` now (None: between stages, not counted)."""
        now = time.perf_counter()
        with self._lock:
            running = self._stage
            if running is not None:
                spent = now - self._since
                self._totals[running] += spent
                if running in _CPU:
                    self._cpu += spent
            self._stage, self._since = stage, now

    def reset(self) -> None:
        """Zero the totals (the running stage keeps running, counted from now)."""
        now = time.perf_counter()
        with self._lock:
            self._totals = dict.fromkeys(STAGES, 0.0)
            self._cpu = 0.0
            self._since = now

    def read(self) -> dict[str, float]:
        """Seconds per stage so far, the running stage included."""
        now = time.perf_counter()
        with self._lock:
            out = dict(self._totals)
            if self._stage is not None:
                out[self._stage] += now - self._since
        return out

    def causes(self) -> tuple[float, ...]:
        """Seconds so far per cause of :data:`CAUSES` (in its order), the running stage included; for :func:`blame`."""
        now = time.perf_counter()
        with self._lock:
            t = self._totals
            running, since = self._stage, self._since
            out = [sum(t[s] for s in stages) for stages in _CAUSE_STAGES]
        if running is not None:
            out[_CAUSE_OF[running]] += now - since
        return tuple(out)

    def cpu(self) -> float:
        """Producer CPU seconds so far (planning, checksums, collation)."""
        with self._lock:
            if self._stage in _CPU:
                return self._cpu + time.perf_counter() - self._since
            return self._cpu


def blame(wait_s: float, before: tuple[float, ...], after: tuple[float, ...]) -> dict[str, float]:
    """Split a consumer wait of ``wait_s`` seconds over :data:`CAUSES`, in proportion to the producer's
    seconds per cause between the ``before`` and ``after`` readings (:meth:`StageClock.causes`)."""
    spent = [max(0.0, a - b) for a, b in zip(after, before, strict=True)]
    total = sum(spent)
    if total <= 0:  # the producer did nothing we measure during the wait (it was already done)
        return dict.fromkeys(CAUSES, 0.0)
    k = wait_s / total
    return {cause: k * s for cause, s in zip(CAUSES, spent, strict=True)}


def bottleneck(wait_fraction: float, waits: dict[str, float], read_ahead_at_limit: bool) -> str:
    """The cause of the consumer's waits, in words.

    ``consumer`` when it waited under 5 % of the time; else the cause with
    the most wait seconds: ``storage`` (``storage (read-ahead at the
    max_memory limit)`` when more depth is not allowed), ``producer CPU
    (planning, checksums, collation)``, ``host-to-device`` or ``consumer
    holds every staging slot``.
    """
    if wait_fraction < 0.05:
        return "consumer"
    cause = max(waits, key=lambda c: waits[c]) if any(waits.values()) else "storage"
    if cause == "storage":
        return "storage (read-ahead at the max_memory limit)" if read_ahead_at_limit else "storage"
    return {
        "producer_cpu": "producer CPU (planning, checksums, collation)",
        "h2d": "host-to-device",
        "consumer_holds_slots": "consumer holds every staging slot",
    }[cause]


def step_record(
    step: int, epoch: int, samples: int, wait_s: float, waits: dict[str, float], read_ahead: int, queued: int
) -> dict[str, Any]:
    """One entry of the loader's step log (``step_s`` is filled when the consumer comes back)."""
    return {
        "step": step,
        "epoch": epoch,
        "samples": samples,
        "data_wait_s": wait_s,
        "wait_storage_s": waits["storage"],
        "wait_producer_cpu_s": waits["producer_cpu"],
        "wait_h2d_s": waits["h2d"],
        "read_ahead": read_ahead,
        "queued": queued,
        "step_s": None,
    }
