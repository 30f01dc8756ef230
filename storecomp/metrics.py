"""Counters of storecomp's moving parts in Prometheus' text format.

>>> from storecomp.metrics import prometheus_text
>>> print(prometheus_text(loaders={"train": loader}, kv_stores={"llm": kv}, caches={"nvme": cached_store}))

Sources, each under a name of your choosing (the ``name`` label):
DataLoaders (``metrics()``), KV-cache stores (``stats()``, one ``tier``
label per tier) and cache tiers (:class:`~storecomp.store.CachedStore`'s
``stats``). Cumulative counters are ``counter`` families ending in
``_total`` (seconds as ``_seconds_total``), everything else ``gauge``;
words become labels (``bottleneck``, ``tier``). URLs and error texts are
left out: a page scraped by anyone must never carry a credential.

The text format is written here (it is a few lines); :func:`register`
hands the same families to ``prometheus_client`` (``pip install
'storecomp[metrics]'``) to serve them from its HTTP endpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgumentError, UnavailableError

__all__ = ["Family", "collect", "prometheus_text", "register"]

_LOADER_COUNTERS = {
    "batches", "samples", "bytes", "wall_s", "data_wait_s", "data_wait_storage_s", "data_wait_producer_cpu_s",
    "data_wait_h2d_s", "h2d_s", "producer_cpu_s", "corrupt_skipped", "batches_outside_staging",
}  # fmt: skip
_KV_COUNTERS = {
    "chunks_hit", "chunks_missed", "verify_failures", "hits", "misses", "bytes_read", "bytes_written", "read_seconds",
    "write_seconds", "evictions", "write_failures", "skipped",
}  # fmt: skip


@dataclass
class Family:
    """One metric family: ``name`` (without ``_total``), ``kind`` (counter or gauge) and its samples."""

    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)


def _metric_name(prefix: str, key: str) -> str:
    key = key[:-2] + "_seconds" if key.endswith("_s") else key
    return f"storecomp_{prefix}_{key}"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


class _Families:
    def __init__(self) -> None:
        self.by_name: dict[str, Family] = {}

    def add(self, prefix: str, key: str, value: Any, labels: dict[str, str], counter: bool, what: str) -> None:
        v = _number(value)
        if v is None:
            return
        name = _metric_name(prefix, key)
        fam = self.by_name.get(name)
        if fam is None:
            fam = self.by_name[name] = Family(name, "counter" if counter else "gauge", f"storecomp {what}: {key}")
        fam.samples.append((labels, v))


def collect(
    *,
    loaders: Mapping[str, Any] | None = None,
    kv_stores: Mapping[str, Any] | None = None,
    caches: Mapping[str, Any] | None = None,
) -> list[Family]:
    """The metric families of every source, in a stable order.

    Raises InvalidArgumentError when a source is not what its argument
    names (a DataLoader has ``metrics()``, a KV store ``stats()``, a cache
    tier a ``stats`` record).
    """
    out = _Families()
    for name, loader in (loaders or {}).items():
        if not callable(getattr(loader, "metrics", None)):
            raise InvalidArgumentError(f"loaders[{name!r}] has no metrics(): pass a storecomp DataLoader")
        m = loader.metrics()
        base = {"name": name}
        for key, value in m.items():
            if key == "producer_s":
                for stage, s in value.items():
                    out.add("loader", "producer_stage_s", s, base | {"stage": stage}, True, "loader")
            elif key in ("bottleneck", "tier"):
                out.add("loader", key, 1, base | {key: str(value)}, False, "loader")
            else:
                out.add("loader", key, value, base, key in _LOADER_COUNTERS, "loader")
    for name, kv in (kv_stores or {}).items():
        if not callable(getattr(kv, "stats", None)):
            raise InvalidArgumentError(f"kv_stores[{name!r}] has no stats(): pass a storecomp KVCacheStore")
        base = {"name": name}
        for key, value in kv.stats().items():
            if isinstance(value, dict):  # one tier: host, disk, shared
                for k, v in value.items():
                    if k not in ("url", "last_error"):
                        out.add("kv", f"tier_{k}", v, base | {"tier": key}, k in _KV_COUNTERS, "KV cache tier")
            else:
                out.add("kv", key, value, base, key in _KV_COUNTERS, "KV cache")
    for name, cache in (caches or {}).items():
        stats = getattr(cache, "stats", None)
        if stats is None or callable(stats) or not hasattr(stats, "__dict__"):
            raise InvalidArgumentError(f"caches[{name!r}] has no stats record: pass a storecomp CachedStore")
        base = {"name": name}
        for key, value in sorted(vars(stats).items()):
            if not key.startswith("_"):
                out.add("cache", key, value, base, True, "cache tier")
        out.add("cache", "max_bytes", getattr(cache, "max_bytes", None), base, False, "cache tier")
    return list(out.by_name.values())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render(families: Iterable[Family]) -> Iterator[str]:
    for fam in families:
        name = fam.name + "_total" if fam.kind == "counter" else fam.name
        yield f"# HELP {name} {fam.help}"
        yield f"# TYPE {name} {fam.kind}"
        for labels, value in fam.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{name}{{{text}}} {value!r}"


def prometheus_text(
    *,
    loaders: Mapping[str, Any] | None = None,
    kv_stores: Mapping[str, Any] | None = None,
    caches: Mapping[str, Any] | None = None,
) -> str:
    """The sources' counters in Prometheus' text exposition format (version 0.0.4)."""
    return "\n".join(_render(collect(loaders=loaders, kv_stores=kv_stores, caches=caches))) + "\n"


def register(
    *,
    loaders: Mapping[str, Any] | None = None,
    kv_stores: Mapping[str, Any] | None = None,
    caches: Mapping[str, Any] | None = None,
    registry: Any = None,
) -> Any:
    """Register a ``prometheus_client`` collector that reads the sources at every scrape.

    ``registry`` defaults to ``prometheus_client.REGISTRY``; returns the
    collector (``registry.unregister(collector)`` removes it). Raises
    UnavailableError when prometheus_client is not installed.
    """
    try:
        import prometheus_client
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise UnavailableError("storecomp.metrics.register needs prometheus_client: pip install 'storecomp[metrics]'") from None

    class _Collector:
        def collect(self) -> Iterator[Any]:
            for fam in collect(loaders=loaders, kv_stores=kv_stores, caches=caches):
                keys = sorted({k for labels, _ in fam.samples for k in labels})
                cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
                metric = cls(fam.name, fam.help, labels=keys)
                for labels, value in fam.samples:
                    metric.add_metric([labels.get(k, "") for k in keys], value)
                yield metric

    collector = _Collector()
    (registry if registry is not None else prometheus_client.REGISTRY).register(collector)
    return collector
