"""``storecomp place`` (--to, --status, --plan, --drop, --auto --near), ``storecomp warm``
and ``storecomp mounts --probe`` bandwidth, on local-directory sites; bad input
gives one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from storecomp.cli import main
from storecomp.store import LocalStore, Repository

from ..store.placehelpers import complete_at, write_snapshot


@pytest.fixture
def sites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(
        '[mounts.ds]\nprimary = "a"\n'
        f'cache_dir = "{tmp_path}/cache"\ncache_max_bytes = 67108864\n'
        f'replicas = [{{url = "{tmp_path}/a", site = "a"}}, {{url = "{tmp_path}/b", site = "b"}}]\n'
    )
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    a, b = LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")
    h, _ = write_snapshot(a, n=3)
    return {"a": a, "b": b, "h": h}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_place_status_plan_drop(sites: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["place", "sc://ds/train", "--plan", "b", "--json"], capsys)
    p = json.loads(out)
    assert rc == 0 and p["blobs_missing"] == 3 and p["bytes_missing"] == p["bytes_total"] > 0 and p["seconds"] > 0
    rc, out, _ = run(["place", "sc://ds/train", "--to", "b", "--max-rate", "100M"], capsys)
    assert rc == 0 and "complete at b: copied 3 blobs" in out
    manifest = Repository(sites["a"]).get_manifest(sites["h"])
    assert complete_at(sites["b"], manifest)
    rc, out, _ = run(["place", "sc://ds/train", "--to", "b"], capsys)
    assert "already complete at b" in out
    rc, out, _ = run(["place", "sc://ds", "--status", "--json"], capsys)
    doc = json.loads(out)
    assert doc["snapshots"][0]["complete"] == ["a", "b"] and doc["snapshots"][0]["manifest"] == sites["h"]
    rc, out, _ = run(["place", "sc://ds", "--status"], capsys)
    assert "complete: a, b" in out
    rc, _, err = run(["place", "sc://ds/train", "--drop", "a"], capsys)
    assert rc == 1 and "only complete copy" in err
    rc, out, _ = run(["place", "sc://ds/train", "--drop", "b"], capsys)
    assert rc == 0 and "dropped b" in out and not complete_at(sites["b"], manifest)
    rc, out, _ = run(["place", "sc://ds/train", "--auto", "--near", "b", "--reads", "0", "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and [d["copy"] for d in doc["decisions"]] == [False] and doc["placed"] == []
    rc, out, _ = run(["warm", "sc://ds/train", "--json"], capsys)
    assert rc == 0 and json.loads(out)["bytes"] == manifest.total_bytes


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["place", "sc://ds/train", "--to", "zz"], "no site 'zz' (sites: a, b)"),
        (["place", "sc://nope/train", "--to", "b"], "sc://nope: no such mount"),
        (["place", "sc://ds/missing", "--to", "b"], "refs/missing"),
        (["place", "/tmp/x", "--to", "b"], "expected sc://mount/name"),
        (["place", "sc://ds/train"], "say what to do"),
        (["place", "sc://ds/train", "--auto"], "nothing to decide: give --near SITE"),
        (["place", "sc://ds/train", "--auto", "--near", "zz"], "no site 'zz' (sites: a, b)"),
        (["place", "sc://ds/train", "--drop", "b"], "holds no complete copy"),
    ],
)
def test_bad_input_is_one_line(sites: dict[str, Any], capsys: pytest.CaptureFixture[str], args: list[str], needle: str) -> None:
    rc, _, err = run(args, capsys)
    assert rc == 1 and needle in err and err.count("\n") == 1, err


def test_bad_rate_is_a_usage_error(sites: dict[str, Any]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["place", "sc://ds/train", "--to", "b", "--max-rate", "-5M"])
    assert e.value.code == 2


def test_mounts_probe_measures_bandwidth(sites: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["mounts", "--probe", "--probe-bytes", "65536", "--json"], capsys)
    reps = json.loads(out)["mounts"][0]["replicas"]
    assert rc == 0 and all(r["write_bytes_per_s"] > 0 and r["read_bytes_per_s"] > 0 and not r["error"] for r in reps)
    rc, out, _ = run(["mounts", "--probe", "--probe-bytes", "65536"], capsys)
    assert "write " in out and "/s read " in out
