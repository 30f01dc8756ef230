"""``storecomp bench``: a smoke run at a tiny size (the benchmark must not rot),
the JSON document, and the refusals that come before any data is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from storecomp.bench.read import CASES, figures, run_read_bench
from storecomp.bench.report import table
from storecomp.cli import main
from storecomp.cli.bench import parse_size


def test_smoke_read_bench_json_and_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    data = tmp_path / "data"
    data.mkdir()
    rc = main(["bench", "read", "--dir", str(data), "--size", "4M", "--duration", "0.05", "--json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    cases = doc["results"]["read"]["cases"]
    assert doc["schema"] == "storecomp.bench/1" and len(doc["figures"]) == len(CASES) + 1
    (to_gpu,) = [f for f in doc["figures"] if f["case"].startswith("to_gpu")]
    assert "no CUDA device" in to_gpu["note"] and "no CUDA device" in doc["results"]["read"]["device"]["skipped"]
    assert set(cases) == set(CASES)
    for name, case in cases.items():
        ours = case["storecomp"]
        assert "error" not in ours, (name, ours)
        assert ours["gbps"] > 0 and ours["cpu_s_per_gb"] >= 0 and ours["runs"]
        limit = case["limit"]
        if "skipped" not in limit:
            assert limit[case["metric"]] > 0
            assert case["ratio"] == pytest.approx(ours[case["metric"]] / limit[case["metric"]])
    assert cases["hot"]["limit"]["name"].startswith("memcpy")
    table = capsys.readouterr().out
    for name in CASES:
        assert name in table
    assert "ratio" in table
    assert not (data / "storecomp-bench.dat").exists()  # made by this run, no --keep: removed


def test_fio_missing_is_skipped_with_a_reason(tmp_path: Path) -> None:
    result = run_read_bench(str(tmp_path), 2 << 20, 0.05, cases=["rand_4k"], fio=False, repeats=1, drop_caches=False)
    case = result["cases"]["rand_4k"]
    assert "fio disabled" in case["limit"]["skipped"]
    assert case["ratio"] is None and case["meets_target"] is None
    assert "limit skipped: fio disabled" in table(figures(result))


@pytest.mark.skipif(shutil.which("fio") is None, reason="fio not installed")
def test_fio_limit_measured_in_the_same_run(tmp_path: Path) -> None:
    result = run_read_bench(str(tmp_path), 4 << 20, 0.2, cases=["seq_1m"], repeats=1, drop_caches=False)
    limit = result["cases"]["seq_1m"]["limit"]
    assert "skipped" not in limit, limit
    assert limit["gbps"] > 0 and "--direct=1" in limit["command"] and "--ioengine=io_uring" in limit["command"]


def test_unwritable_json_output_is_refused_before_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "missing-dir" / "out.json"
    assert main(["bench", "--json", str(target), "--size", "1M", "--duration", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and str(target) in err


def test_json_output_that_is_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", str(tmp_path), "--size", "1M", "--duration", "0.01"]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_too_little_free_disk_is_refused_before_writing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    free = shutil.disk_usage(tmp_path).free
    size = f"{(free >> 30) + 64}G"
    assert main(["bench", "read", "--dir", str(tmp_path), "--size", size, "--duration", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "free" in err and "--size" in err
    assert list(tmp_path.iterdir()) == []


def test_bad_duration_and_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--duration", "0", "--size", "1M"]) == 1
    assert "--duration" in capsys.readouterr().err
    assert main(["bench", "--dir", str(tmp_path / "nope"), "--size", "1M"]) == 1
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("text,value", [("4096", 4096), ("512M", 512 << 20), ("1.5g", 3 << 29), ("4GiB", 4 << 30)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_bad_size_and_unknown_suite_get_usage() -> None:
    for args in (["bench", "--size", "lots"], ["bench", "raed"]):
        proc = subprocess.run([sys.executable, "-m", "storecomp", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "usage:" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "storecomp", "bench", "--sise", "1M"], capture_output=True, text=True, timeout=60
    )
    assert "did you mean '--size'?" in proc.stderr


def test_plot_and_compare(tmp_path: Path) -> None:
    png = tmp_path / "ratios.png"
    rc = main(
        ["bench", "read", "--size", "2M", "--duration", "0.02", "--repeats", "1", "--no-fio", "--compare", "--plot", str(png)]
    )
    assert rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unwritable_plot_output_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--plot", str(tmp_path / "no" / "x.png")]) == 1
    assert "--plot" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("cmd", "timeout_s", "message"),
    [
        ([sys.executable, "-c", "import time; time.sleep(30)"], 0.5, "did not finish"),
        ([sys.executable, "-c", "print('note: no json here')"], 30, "no readable JSON"),
        ([sys.executable, "-c", "print('{\"jobs\": []}')"], 30, "no readable JSON"),
        ([sys.executable, "-c", "import sys; sys.exit(3)"], 30, "fio exited 3"),
    ],
    ids=["hang", "not-json", "no-job", "exit-status"],
)
def test_fio_failures_are_runtime_errors(cmd: list[str], timeout_s: float, message: str) -> None:
    """Whatever goes wrong with fio is the RuntimeError the suites catch, never a crash of the whole run."""
    from storecomp.bench import _fio

    with pytest.raises(RuntimeError, match=message):
        _fio._run_job(cmd, timeout_s)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["auto", "bounce", "posix"])
def test_device_sweep_reads_into_the_gpu(tmp_path: Path, path: str) -> None:
    out = tmp_path / "gpu.json"
    args = ["bench", "read", "--size", "32M", "--duration", "0.05", "--repeats", "1", "--no-fio", "--path", path]
    assert main([*args, "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["results"]["read"]["device"]["runs"]
    wanted = {"bounce", "posix"} if path == "auto" else {path}
    for where in wanted:
        for bs in ("64k", "1M", "16M"):
            assert runs[f"{where}_{bs}"]["gbps"] > 0, runs[f"{where}_{bs}"]


def test_size_zero_is_a_usage_error() -> None:
    proc = subprocess.run([sys.executable, "-m", "storecomp", "bench", "--size", "0"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "size must be positive: '0'" in proc.stderr and "Traceback" not in proc.stderr


def test_unwritable_dir_is_refused_before_running(mount_tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    ro = mount_tmpfs(1 << 20, read_only=True)
    assert main(["bench", "read", "--dir", str(ro), "--size", "1M", "--duration", "0.01"]) == 1
    err = capsys.readouterr().err
    assert f"--dir {ro}: cannot write there: Read-only file system" in err


def test_unwritable_bench_dir_variable_is_refused(
    mount_tmpfs: Callable[..., Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ro = mount_tmpfs(1 << 20, read_only=True)
    monkeypatch.setenv("STORECOMP_BENCH_DIR", str(ro))
    assert main(["bench", "read", "--size", "1M", "--duration", "0.01"]) == 1
    assert f"STORECOMP_BENCH_DIR {ro}: cannot write there" in capsys.readouterr().err


def test_disk_that_fills_mid_run_is_a_clear_error(mount_tmpfs: Callable[..., Path]) -> None:
    """The free-space check passes, then the loader suite's data (80 MiB at this size) fills the disk.

    One line, no crash (the data is written through a memory map: SIGBUS unless space is reserved first),
    and nothing left behind.
    """
    small = mount_tmpfs(72 << 20)
    args = ["bench", "loader", "--dir", str(small), "--size", "4M", "--duration", "0.01", "--repeats", "1", "--no-fio"]
    proc = subprocess.run([sys.executable, "-m", "storecomp", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("storecomp: error: ") and "No space left on device" in last, proc.stderr
    assert list(small.iterdir()) == []  # what the run wrote is removed


def test_bench_size_and_duration_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORECOMP_BENCH_SIZE", "2M")
    monkeypatch.setenv("STORECOMP_BENCH_DURATION", "0.02")
    out = tmp_path / "b.json"
    assert main(["bench", "read", "--repeats", "1", "--no-fio", "--dir", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["size_bytes"] == 2 << 20 and doc["duration_s"] == 0.02
    monkeypatch.setenv("STORECOMP_BENCH_SIZE", "lots")
    assert main(["bench", "read"]) == 1
    assert "STORECOMP_BENCH_SIZE: not a size: 'lots'" in capsys.readouterr().err
