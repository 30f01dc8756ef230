"""``storecomp bench kvcache`` at a tiny size: every figure there, with its limit
measured in the same run (fio skipped with the reason under --no-fio)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from storecomp.bench import SUITES
from storecomp.bench.kvcache import scale
from storecomp.cli import main

TINY = ["--size", "64M", "--duration", "0.05", "--repeats", "1"]
HOST = ("host_store_paged", "host_retrieve_paged", "host_store_hf", "host_retrieve_hf")


def _run(tmp_path: Path, *extra: str) -> tuple[dict[str, dict], dict]:
    out = tmp_path / "out.json"
    assert main(["bench", "kvcache", *TINY, "--json", str(out), *extra]) == 0
    doc = json.loads(out.read_text())
    assert all(f["suite"] == "kvcache" for f in doc["figures"])
    return {f["case"]: f for f in doc["figures"]}, doc["results"]["kvcache"]


def test_kvcache_is_a_suite_before_store() -> None:
    assert "kvcache" in SUITES and SUITES.index("kvcache") > SUITES.index("read")
    if "store" in SUITES:
        assert SUITES.index("kvcache") < SUITES.index("store")


def test_scale_from_size() -> None:
    assert scale(64 << 20)["chunks"] == 2 and scale(256 << 20)["chunks"] == 8 and scale(1 << 40)["chunks"] == 16
    assert scale(1 << 20)["chunks"] == 1 and scale(1 << 40)["rebuild_chunks"] == 10_000


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed (apt-get install fio)")
def test_bench_kvcache_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figs, result = _run(tmp_path)
    for case in HOST:
        f = figs[case]
        assert f["value"] > 0 and f["limit"][0] == "memcpy" and f["limit"][1] > 0 and f["target"] == 0.8, f
        assert f["ratio"] == pytest.approx(f["value"] / f["limit"][1])
    for case, limit in (("disk_store", "fio write"), ("disk_retrieve", "fio read")):
        f = figs[case]
        assert f["value"] > 0 and f["limit"][0] == limit and f["limit"][1] > 0 and f["target"] == 0.9, f
    lk = figs["lookup_32k_tokens"]
    assert lk["unit"] == "ms" and lk["value"] > 0 and lk["limit"] is None and not lk["higher_is_better"]
    assert "<= 1 ms" in lk["note"]
    rb = figs["index_rebuild_200"]
    assert rb["unit"] == "ms" and rb["value"] > 0
    tt = figs["ttft_90pct_hit"]
    assert tt["value"] > 0 and tt["peers"]["recompute"] > 0 and not tt["higher_is_better"]
    assert tt["peer_ratios"]["recompute"] == pytest.approx(result["ttft"]["speedup"])
    assert result["ttft"]["reused_tokens"] >= int(0.9 * result["ttft"]["prompt_tokens"]) - 16
    assert result["disk"]["verify_failures"] == 0
    out = capsys.readouterr().out
    assert "host_store_paged" in out and "ttft_90pct_hit" in out and "recompute" in out


def test_disk_part_without_fio_says_why(tmp_path: Path) -> None:
    from storecomp.bench.kvcache import bench_disk
    from storecomp.kvcache import ModelFingerprint

    fp = ModelFingerprint("tiny", "bfloat16", layers=2, kv_heads=2, head_dim=64)
    d = bench_disk(fp, 1, 1, str(tmp_path), 0.05, fio=False)
    assert d["fio_skipped"].startswith("fio disabled") and "ratio_store" not in d
    assert d["gbps"]["store"] > 0 and d["gbps"]["retrieve"] > 0 and d["gbps"]["fio_read"] is None
    assert not (tmp_path / "kv").exists()


def test_bench_host_refuses_to_time_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    """A retrieve that loads nothing is fast; the host part raises instead of reporting it as bandwidth."""
    from typing import Any

    from storecomp.bench import kvcache as bench
    from storecomp.kvcache import KVCacheStore, ModelFingerprint

    real = KVCacheStore.retrieve

    def miss_contiguous(self: Any, tokens: Any, out: Any, *a: Any, **kw: Any) -> int:
        return 0 if isinstance(out, list) else real(self, tokens, out, *a, **kw)

    monkeypatch.setattr(KVCacheStore, "retrieve", miss_contiguous)
    fp = ModelFingerprint("tiny", "bfloat16", layers=1, kv_heads=1, head_dim=8)
    with pytest.raises(RuntimeError, match="contiguous layout"):
        bench.bench_host(fp, 1, 1)
