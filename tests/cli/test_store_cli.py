"""``storecomp ls | stat | cat | cp | du`` and ``storecomp mounts`` on local
stores, sc:// mounts and SeaweedFS; bad input gives clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storecomp.cli import main


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"A" * 1000)
    (root / "sub" / "b.bin").write_bytes(b"B" * 2000)
    (root / "sub" / "deep" / "c.bin").write_bytes(b"C" * 3000)
    return root


@pytest.fixture
def mounted(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(
        f'[mounts.data]\nurl = "{tree}"\ncache_dir = "{tmp_path}/cache"\ncache_max_bytes = 1048576\n\n'
        '[mounts.mirror]\nprimary = "b"\n'
        f'replicas = [{{url = "{tmp_path}/m1", site = "a"}}, {{url = "{tmp_path}/m2", site = "b", preference = 5}}]\n'
    )
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    return tree


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ls_children_recursive_long_and_json(mounted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["ls", "sc://data"], capsys)[1].split() == ["a.bin", "sub/"]
    assert run(["ls", "-r", "sc://data/sub"], capsys)[1].split() == ["b.bin", "deep/c.bin"]
    assert run(["ls", str(mounted / "sub")], capsys)[1].split() == ["b.bin", "deep/"]
    rc, out, _ = run(["ls", "-l", "sc://data/a.bin"], capsys)
    assert rc == 0 and "1000" in out and out.strip().endswith("a.bin")
    docs = [json.loads(line) for line in run(["ls", "--json", "sc://data"], capsys)[1].splitlines()]
    assert docs[0]["size"] == 1000 and docs[1] == {"name": "sub/", "dir": True}


def test_stat_cat_and_ranges(mounted: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["cat", "sc://data/sub/b.bin"]) == 0
    assert capsysbinary.readouterr().out == b"B" * 2000
    assert main(["cat", "--offset", "990", "--length", "20", mounted.as_uri() + "/a.bin"]) == 0
    assert capsysbinary.readouterr().out == b"A" * 10
    assert main(["stat", "--json", "sc://data/sub/deep/c.bin"]) == 0
    doc = json.loads(capsysbinary.readouterr().out)
    assert doc["size"] == 3000 and doc["key"] == "sub/deep/c.bin" and doc["version"]


def test_cp_and_du(mounted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert run(["cp", "sc://data/a.bin", f"{out_dir}/"], capsys)[0] == 0
    assert (out_dir / "a.bin").read_bytes() == b"A" * 1000
    assert run(["cp", "-r", "sc://data/sub", "sc://mirror/copy/"], capsys)[0] == 0
    assert (tmp_path / "m2" / "copy" / "sub" / "deep" / "c.bin").read_bytes() == b"C" * 3000  # primary "b"
    assert not (tmp_path / "m1" / "copy").exists()
    rc, out, _ = run(["du", "--json", "sc://data"], capsys)
    doc = json.loads(out)
    assert doc["bytes"] == 6000 and doc["objects"] == 3 and doc["children"]["sub/"] == {"bytes": 5000, "objects": 2}
    rc, out, _ = run(["du", "-s", str(mounted)], capsys)
    assert out.split()[0] == "6000" and "total" in out


def test_mounts_listing_and_probe(mounted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["mounts"], capsys)
    assert rc == 0 and "sc://data" in out and "sc://mirror" in out and "site=b" in out and "cache=" in out
    rc, out, _ = run(["mounts", "--json", "--probe"], capsys)
    doc = json.loads(out)
    mirror = next(m for m in doc["mounts"] if m["name"] == "mirror")
    assert [r["primary"] for r in mirror["replicas"]] == [False, True]
    assert all(r["healthy"] for r in mirror["replicas"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["ls", "sc://data/../../etc"], "traversal"),
        (["ls", "sc://nope/x"], "no such mount"),
        (["cat", "sc://data/missing.bin"], "missing.bin"),
        (["cat", "sc://data/sub"], "missing"),
        (["cp", "sc://data/sub/", "/tmp/x"], "use -r"),
        (["ls", "nosuchscheme://bucket/key"], "nosuchscheme"),
        (["cat", "--offset", "-1", "sc://data/a.bin"], "negative"),
    ],
)
def test_bad_input_is_a_clear_error(mounted: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    rc, out, err = run(args, capsys)
    assert rc == 1 and err.startswith("storecomp: error:")
    if needle != "missing":
        assert needle in err


def test_malformed_mount_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[mounts.data]\nurl = "/x"\ncolour = "blue"\n')
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    rc, _, err = run(["mounts"], capsys)
    assert rc == 1 and f"{cfg}:3:" in err and "colour" in err


def test_cli_in_a_subprocess(mounted: Path) -> None:
    env = {**os.environ}
    proc = subprocess.run(
        [sys.executable, "-m", "storecomp", "ls", "-r", "sc://data"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["a.bin", "sub/b.bin", "sub/deep/c.bin"]


def test_on_seaweedfs(
    mounted: Path, running_seaweedfs: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sw = running_seaweedfs
    for k, v in sw.env().items():
        monkeypatch.setenv(k, v)
    url = sw.url()
    assert run(["cp", "-r", "sc://data/sub", f"{url}/"], capsys)[0] == 0
    assert run(["ls", "-r", url], capsys)[1].split() == ["sub/b.bin", "sub/deep/c.bin"]
    assert json.loads(run(["du", "--json", "-s", url], capsys)[1])["bytes"] == 5000
    assert json.loads(run(["stat", "--json", f"{url}/sub/b.bin"], capsys)[1])["size"] == 2000
    monkeypatch.setenv("STORECOMP_MOUNT_REMOTE", url)
    rc, out, _ = run(["ls", "sc://remote/sub"], capsys)
    assert out.split() == ["b.bin", "deep/"]
    rc, _, err = run(["stat", f"{url}/sub/none"], capsys)
    assert rc == 1 and "none" in err
    rc, _, err = run(["ls", f"s3://no-such-bucket-{os.getpid()}/x"], capsys)
    assert rc == 1 and "no-such-bucket" in err
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    rc, _, err = run(["ls", url], capsys)
    assert rc == 1 and "AWS_ACCESS_KEY_ID" in err and sw.secret_key not in err  # missing credentials
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", sw.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value")
    rc, out, err = run(["ls", url], capsys)
    assert rc == 1 and "wrong-secret-value" not in err + out and sw.secret_key not in err + out
