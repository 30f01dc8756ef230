"""``storecomp info``: the stable JSON document, the text form, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from storecomp.cli import main

# Every documented key (docs/info.md), dotted; the document is stable.
DOCUMENTED = [
    "schema", "storecomp.version", "storecomp.native.liburing", "python", "platform.system", "platform.kernel",
    "platform.machine", "cpus", "packages", "io_uring.compiled", "io_uring.permitted", "io_uring.reason",
    "engine.requested", "engine.backend", "engine.reason", "engine.queue_depth", "engine.threads", "engine.direct",
    "engine.io_path", "path", "cuda.driver", "cuda.devices", "gds.kvikio", "gds.available", "gds.reason",
    "io_paths.host", "io_paths.cuda", "io_paths.cuda_reason", "fio.path", "fio.version", "optional", "advice",
    "page_cache.mem_total_bytes", "page_cache.mem_available_bytes", "page_cache.cgroup_limit_bytes",
    "page_cache.budget_bytes", "page_cache.pressure_floor_bytes", "page_cache.direct", "page_cache.mapped", "page_cache.choice",
    "encryption.backend", "encryption.reason", "encryption.openssl",
]  # fmt: skip


def _get(doc: dict, dotted: str) -> object:
    node: object = doc
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"missing {dotted}"
        node = node[part]
    return node


def _cuda_devices() -> int:
    """CUDA devices on this machine, asked of torch directly (0 without torch or a driver)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def _info_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict:
    assert main(["info", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_every_documented_key(capsys: pytest.CaptureFixture[str]) -> None:
    doc = _info_json(capsys)
    for key in DOCUMENTED:
        _get(doc, key)
    assert doc["schema"] == "storecomp.info/1"
    assert doc["path"] is None
    assert doc["io_paths"]["host"] == "posix"
    # What this machine has decides what the document must say (never assume there is no GPU).
    ngpu = _cuda_devices()
    assert len(doc["cuda"]["devices"]) == ngpu
    if ngpu:
        assert doc["io_paths"]["cuda"] in ("gds", "bounce", "posix") and doc["cuda"]["driver"] is True
    else:
        assert doc["io_paths"]["cuda"] is None and doc["io_paths"]["cuda_reason"] == "no CUDA device"
    assert isinstance(doc["advice"], list)


def test_every_documented_key_is_in_the_docs() -> None:
    text = (Path(__file__).parents[2] / "docs" / "info.md").read_text()
    for key in DOCUMENTED:
        head = key.split(".")[0]
        assert f"`{head}" in text, key


def test_path_probe_reports_o_direct(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = _info_json(capsys, str(tmp_path))
    p = doc["path"]
    assert p["path"] == str(tmp_path) and p["exists"] is True
    assert p["o_direct"]["supported"] is True and p["o_direct"]["alignment"] in (512, 1024, 2048, 4096)
    assert p["free_bytes"] > 0 and p["filesystem"]
    assert list(tmp_path.iterdir()) == []  # the probe leaves nothing behind


@pytest.mark.parametrize(
    "direct,mapped,tier,read_path",
    [("auto", "auto", "buffered", "mapped"), ("auto", "off", "buffered", "buffered"), ("on", "auto", "direct", "direct")],
)
def test_path_reports_the_page_cache_tier_and_why(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    direct: str,
    mapped: str,
    tier: str,
    read_path: str,
) -> None:
    """The file was just written: all of it in the page cache, so a buffered tier reads it mapped."""
    (tmp_path / "a.bin").write_bytes(b"x" * 8192)
    monkeypatch.setenv("STORECOMP_DIRECT", direct)
    monkeypatch.setenv("STORECOMP_MAPPED", mapped)
    doc = _info_json(capsys, str(tmp_path))
    choice = doc["page_cache"]["choice"]
    assert choice["tier"] == tier and choice["data_bytes"] == 8192 and choice["reason"]
    assert choice["read_path"] == read_path and doc["page_cache"]["mapped"] == mapped
    assert 0 < doc["page_cache"]["budget_bytes"] <= doc["page_cache"]["mem_available_bytes"]
    assert main(["info", str(tmp_path)]) == 0
    assert f"tier:         {tier} ({read_path} reads) for {tmp_path}" in capsys.readouterr().out


def test_missing_path_is_reported_not_raised(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    doc = _info_json(capsys, str(tmp_path / "nope"))
    assert doc["path"]["exists"] is False


def test_text_form_names_engine_and_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "io_uring" in out and "engine" in out and "storecomp" in out


def test_engine_setting_is_reflected(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECOMP_ENGINE", "threads")
    doc = _info_json(capsys)
    assert doc["engine"]["requested"] == "threads" and doc["engine"]["backend"] == "threads"


def test_bad_setting_is_a_clear_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORECOMP_QUEUE_DEPTH", "lots")
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert "STORECOMP_QUEUE_DEPTH" in err and "Traceback" not in err


def test_unknown_command_suggests_the_nearest() -> None:
    proc = subprocess.run([sys.executable, "-m", "storecomp", "infp"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "did you mean 'info'?" in proc.stderr


def test_unknown_option_suggests_the_nearest() -> None:
    proc = subprocess.run([sys.executable, "-m", "storecomp", "info", "--jsn"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "did you mean '--json'?" in proc.stderr


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "info" in capsys.readouterr().out
