"""``storecomp bench loader``: a tiny run through the CLI, with and without the torch peer."""

from __future__ import annotations

import json
from pathlib import Path

from storecomp.cli import main


def test_bench_loader_cli(tmp_path: Path) -> None:
    # The torch peer (--compare) is covered by benchmarks/bench_loader.py --tiny (tests/data).
    out = tmp_path / "loader.json"
    args = ["bench", "loader", "--size", "8M", "--duration", "0.1", "--repeats", "1", "--json", str(out)]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    figs = {f["case"]: f for f in doc["figures"] if f["suite"] == "loader"}
    assert set(figs) == {"rand_64k", "rand_4k", "tokens", "data_wait", "peak_rss", "cold_epoch_64k", "hot_64k", "user_buffer_64k"}
    assert figs["hot_64k"]["limit"][0] == "fio buffered 2 jobs" and figs["user_buffer_64k"]["limit"][0] == "staging slots"
    for case in ("rand_64k", "rand_4k", "tokens"):
        assert figs[case]["value"] > 0
        assert figs[case]["limit"] is None or figs[case]["limit"][0] == "fio"
    assert figs["rand_64k"]["peers"] == {}
    assert "holds" in figs["peak_rss"]["note"]
    assert "SHORT: an epoch is " in figs["hot_64k"]["note"]  # 8 MiB: the figure says what it measured
    assert not (tmp_path / "storecomp-bench-loader").exists()
    # The loader's own stall attribution travels with its figures, and the advice follows it.
    hot = figs["hot_64k"]
    assert hot["bottleneck"] and hot["bottleneck"] in hot["note"]
    for tip in doc["advice"]:
        if tip.startswith("loader/hot_64k"):
            assert "STORECOMP_ENGINE" not in tip and "device" not in tip  # the page cache is the limit there
            if "below the page-cache limit" in tip and not hot["bottleneck"].startswith("storage"):
                assert hot["bottleneck"] in tip


def test_advice_names_the_producer_when_the_loader_blames_it() -> None:
    """Below fio's page-cache limit with the producer as the loader's own bottleneck: no storage advice."""
    from storecomp.bench.report import Figure, advice

    producer = "producer CPU (planning, checksums, collation)"
    hot = Figure("loader", "hot_64k", "samples/s", 40e3, ("fio buffered 2 jobs", 160e3), 0.7, bottleneck=producer)
    (tip,) = advice([hot])
    assert tip.startswith("loader/hot_64k: 0.25x fio buffered 2 jobs") and producer in tip
    assert "STORECOMP_ENGINE" not in tip and "verify=False" in tip
    # Storage blamed (or no attribution): the storage advice stays.
    for blamed in ("storage", "storage (read-ahead at the max_memory limit)", ""):
        cold = Figure("loader", "rand_64k", "samples/s", 5e3, ("fio", 10e3), 0.9, bottleneck=blamed)
        (tip,) = advice([cold])
        assert "STORECOMP_ENGINE=threads" in tip
    # fio reading the page cache is the limit: never the device's advice (O_DIRECT, queue depth, engine).
    for blamed in ("storage (read-ahead at the max_memory limit)", ""):
        hot = Figure("loader", "hot_64k", "samples/s", 80e3, ("fio buffered 2 jobs", 320e3), 0.7, bottleneck=blamed)
        (tip,) = advice([hot])
        assert "below the page-cache limit" in tip and "STORECOMP_ENGINE" not in tip and "max_memory" in tip
    (tip,) = advice([Figure("loader", "hot_64k", "samples/s", 300e3, ("fio buffered 2 jobs", 320e3), 0.7)])
    assert "page-cache limit" in tip and "device" not in tip
    # Other causes get their own cure.
    h2d = Figure("loader", "rand_64k", "samples/s", 5e3, ("fio", 10e3), 0.9, bottleneck="host-to-device")
    assert "pinned memory" in advice([h2d])[0]


def test_loader_data_interrupted_while_writing_is_written_again(tmp_path: Path) -> None:
    """--dir reuse: data left half-written by an interrupted run (a shard dataset missing) is completed, not reused."""
    import shutil

    from storecomp.bench.loader import make_data
    from storecomp.data import open_dataset

    paths = make_data(str(tmp_path), 4 << 20, lambda _m: None)
    shutil.rmtree(paths["shards4"])
    again = make_data(str(tmp_path), 4 << 20, lambda _m: None)
    assert len(open_dataset(again["shards4"])) == len(open_dataset(again["shards64"])) * 16
