"""storecomp.metrics: the loader's, the KV store's and the cache tier's counters in Prometheus text format,
checked with prometheus_client's own parser and registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from storecomp.data import DataLoader
from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import KVCacheStore
from storecomp.metrics import collect, prometheus_text, register
from storecomp.store import CachedStore, LocalStore
from tests.kvcache.kvhelpers import CHUNK, FP, make_kv, zeros_kv

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def _sources(tmp_path: Path) -> tuple[DataLoader, KVCacheStore, CachedStore]:
    np.save(tmp_path / "x.npy", np.arange(640, dtype=np.int64).reshape(64, 10))
    loader = DataLoader(str(tmp_path / "x.npy"), 16)
    assert sum(b["x"].shape[0] for b in loader) == 64
    kv = KVCacheStore(FP, chunk_tokens=CHUNK, disk_dir=tmp_path / "kvdisk")
    tokens = list(range(2 * CHUNK))
    kv.store(tokens, make_kv(2 * CHUNK))
    kv.flush()
    assert kv.retrieve(tokens, zeros_kv(2 * CHUNK)) == 2 * CHUNK
    assert kv.retrieve(list(range(100, 100 + CHUNK)), zeros_kv(CHUNK)) == 0  # a miss
    inner = LocalStore(tmp_path / "remote")
    inner.put("a", b"x" * 5000)
    cache = CachedStore(inner, tmp_path / "cache", 1 << 20)
    assert cache.get("a") == b"x" * 5000 and cache.get("a") == b"x" * 5000  # a miss, then a hit
    return loader, kv, cache


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_text_format_parses_and_carries_the_counters(tmp_path: Path) -> None:
    loader, kv, cache = _sources(tmp_path)
    try:
        text = prometheus_text(loaders={"train": loader}, kv_stores={"llm": kv}, caches={"nvme": cache})
        v = _values(text)
        m = loader.metrics()
        assert v[("storecomp_loader_batches_total", (("name", "train"),))] == m["batches"] == 4
        assert v[("storecomp_loader_samples_total", (("name", "train"),))] == 64
        assert v[("storecomp_loader_data_wait_seconds_total", (("name", "train"),))] == pytest.approx(m["data_wait_s"])
        assert ("storecomp_loader_bottleneck", (("bottleneck", m["bottleneck"]), ("name", "train"))) in v
        assert ("storecomp_loader_producer_stage_seconds_total", (("name", "train"), ("stage", "plan"))) in v
        st = kv.stats()
        assert v[("storecomp_kv_chunks_hit_total", (("name", "llm"),))] == st["chunks_hit"] == 2
        assert v[("storecomp_kv_chunks_missed_total", (("name", "llm"),))] == st["chunks_missed"] >= 1
        assert v[("storecomp_kv_tier_used_bytes", (("name", "llm"), ("tier", "host")))] == st["host"]["used_bytes"]
        assert v[("storecomp_kv_tier_bytes_written_total", (("name", "llm"), ("tier", "disk")))] > 0
        assert v[("storecomp_cache_hits_total", (("name", "nvme"),))] == cache.stats.hits >= 1
        assert v[("storecomp_cache_misses_total", (("name", "nvme"),))] == cache.stats.misses == 1
        assert "# TYPE storecomp_cache_hits_total counter" in text and "# TYPE storecomp_kv_tier_used_bytes gauge" in text
    finally:
        kv.close()
        loader.close()


def test_register_serves_the_same_families(tmp_path: Path) -> None:
    loader, kv, cache = _sources(tmp_path)
    try:
        registry = prometheus_client.CollectorRegistry()
        collector = register(loaders={"train": loader}, kv_stores={"llm": kv}, caches={"nvme": cache}, registry=registry)
        served = _values(prometheus_client.generate_latest(registry).decode())
        ours = _values(prometheus_text(loaders={"train": loader}, kv_stores={"llm": kv}, caches={"nvme": cache}))
        assert served == ours
        hits = cache.stats.hits
        cache.get("a")  # read at every scrape: the next one sees the new hit
        assert registry.get_sample_value("storecomp_cache_hits_total", {"name": "nvme"}) == hits + 1
        registry.unregister(collector)
    finally:
        kv.close()
        loader.close()


def test_wrong_sources_are_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="loaders\\['x'\\]"):
        collect(loaders={"x": object()})
    with pytest.raises(InvalidArgumentError, match="kv_stores"):
        collect(kv_stores={"x": torch.zeros(1)})
    with pytest.raises(InvalidArgumentError, match="caches"):
        collect(caches={"x": 3})
    assert prometheus_text() == "\n"
