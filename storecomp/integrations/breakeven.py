"""Break-even control: load stored KV only when it beats recomputing it.

An engine integration asks :meth:`BreakEven.worth_loading` before it
promises a hit. The load's cost is estimated from the bandwidth measured on
the tier the chunks come from (bytes / bytes-per-second, plus a per-load
latency); the recompute cost from the engine's measured prefill rate (tokens
/ tokens-per-second). A load that costs more is declined and counted: the
engine recomputes those tokens, which was the faster choice. Until both
rates have been measured, loads go ahead (a first load is how the tier rate
gets measured). Engine-neutral: the vLLM connector and the SGLang backend
use the same class.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ..errors import InvalidArgumentError

__all__ = ["BreakEven"]


@dataclass
class _Rate:
    """An exponentially weighted rate (units per second) from (units, seconds) samples."""

    alpha: float = 0.3
    value: float = 0.0

    def add(self, units: float, seconds: float) -> None:
        if units <= 0 or seconds <= 0:
            return
        r = units / seconds
        self.value = r if self.value == 0.0 else (1 - self.alpha) * self.value + self.alpha * r


@dataclass
class BreakEven:
    """Decides whether loading ``tokens`` from a tier beats recomputing them.

    ``prefill_tokens_per_s``: a fixed prefill rate (None: measured with
    :meth:`add_prefill`); ``latency_s``: fixed cost added to every load
    (seconds); ``enabled``: False loads everything (still counted).
    """

    enabled: bool = True
    prefill_tokens_per_s: float | None = None
    latency_s: float = 0.0
    declined_loads: int = 0
    declined_tokens: int = 0
    accepted_loads: int = 0
    _prefill: _Rate = field(default_factory=_Rate)
    _tiers: dict[str, _Rate] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.prefill_tokens_per_s is not None and not self.prefill_tokens_per_s > 0:
            raise InvalidArgumentError(f"prefill_tokens_per_s must be positive, got {self.prefill_tokens_per_s!r}")
        if self.latency_s < 0:
            raise InvalidArgumentError(f"latency_s must be non-negative, got {self.latency_s!r}")

    def add_prefill(self, tokens: int, seconds: float) -> None:
        """Record that ``tokens`` were prefilled in ``seconds``."""
        with self._lock:
            self._prefill.add(tokens, seconds)

    def add_load(self, tier: str, nbytes: int, seconds: float) -> None:
        """Record that ``nbytes`` came from ``tier`` in ``seconds``."""
        with self._lock:
            self._tiers.setdefault(tier, _Rate()).add(nbytes, seconds)

    def rates(self) -> dict[str, float]:
        """The current estimates: ``prefill_tokens_per_s`` and ``<tier>_bytes_per_s``."""
        with self._lock:
            out = {"prefill_tokens_per_s": self.prefill_tokens_per_s or self._prefill.value}
            out.update({f"{t}_bytes_per_s": r.value for t, r in self._tiers.items()})
        return out

    def estimate(self, tier: str, nbytes: int, tokens: int) -> tuple[float, float] | None:
        """(load seconds, recompute seconds), or None while a rate is still unmeasured."""
        with self._lock:
            bw = self._tiers.get(tier, _Rate()).value
            prefill = self.prefill_tokens_per_s or self._prefill.value
        if bw <= 0 or prefill <= 0:
            return None
        return self.latency_s + nbytes / bw, tokens / prefill

    def worth_loading(self, tier: str, nbytes: int, tokens: int) -> bool:
        """True to load; False (counted in ``declined_loads`` / ``declined_tokens``) to recompute."""
        est = self.estimate(tier, nbytes, tokens)
        with self._lock:
            if self.enabled and est is not None and est[0] > est[1]:
                self.declined_loads += 1
                self.declined_tokens += tokens
                return False
            self.accepted_loads += 1
        return True

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {
                "accepted_loads": self.accepted_loads,
                "declined_loads": self.declined_loads,
                "declined_tokens": self.declined_tokens,
            }
