"""Sharing across processes through one shared store: SeaweedFS (S3) and a local directory.

Every test runs real processes: two inference "nodes" sharing prefixes,
concurrent writers of the same chunks, and a writer killed with SIGKILL in
the middle of its writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.kvcache import ModelFingerprint
from storecomp.kvcache import format as fmt
from storecomp.kvcache.keys import chunk_keys
from storecomp.store import open_store
from storecomp.testing.seaweedfs import SeaweedFS
from tests.kvcache.kvhelpers import FAST_RETRY
from tests.kvcache.kvworker import digest, kv_for

ROOT = Path(__file__).parents[2]
FP = ModelFingerprint("share-test", "float16", layers=4, kv_heads=4, head_dim=64)
CHUNK = 64  # 4 KiB header + 4 x 64 KiB layers per object


def _shared(kind: str, tmp_path: Path, sw: SeaweedFS | None) -> tuple[str, dict[str, Any]]:
    if kind == "local":
        return str(tmp_path / "shared"), {}
    assert sw is not None
    if not sw.running:
        sw.restart()
    opts = dict(sw.store_options(), retry=dataclasses.asdict(FAST_RETRY))
    return sw.url(), opts


@pytest.fixture(params=["local", "s3"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    sw = request.getfixturevalue("running_seaweedfs") if request.param == "s3" else None
    return _shared(str(request.param), tmp_path, sw)


def _args(mode: str, url: str, opts: dict[str, Any], **kw: Any) -> str:
    return json.dumps(
        {"mode": mode, "fingerprint": dataclasses.asdict(FP), "chunk_tokens": CHUNK, "shared": url, "shared_options": opts} | kw
    )


def _run(args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.kvcache.kvworker", args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _store_objects(url: str, opts: dict[str, Any]) -> list[np.ndarray]:
    from storecomp.store.retry import RetryPolicy

    o = dict(opts)
    if "retry" in o:
        o["retry"] = RetryPolicy(**o["retry"])
    with open_store(url, **o) as store:
        keys = [i.key for i in store.list(f"kvcache/{FP.namespace}/")]
        return [np.frombuffer(store.get(k), np.uint8) for k in keys]


def test_two_nodes_share_prefixes(shared: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = shared
    prompt = list(range(7, 7 + 3 * CHUNK + 10))
    a = _run(_args("store", url, opts, tokens=prompt, seed=5, disk_dir=str(tmp_path / "node-a")))
    assert a["shared"]["write_failures"] == 0
    # node B: its own process, host memory and disk; a longer prompt with the same beginning
    b = _run(_args("retrieve", url, opts, tokens=prompt[: 3 * CHUNK] + [1] * 40, disk_dir=str(tmp_path / "node-b")))
    assert b["lookup"] == b["retrieved"] == 3 * CHUNK
    # the bytes node A stored: its KV for the first 3 chunks
    assert b["digest"] == digest(kv_for(FP, len(prompt), 5), 3 * CHUNK)


def test_concurrent_writers_of_the_same_chunks(running_seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    """Writers on two nodes store the same prompt at the same moment (S3 If-None-Match decides)."""
    url, opts = _shared("s3", tmp_path, running_seaweedfs)
    prompt = list(range(100, 100 + 4 * CHUNK))
    start_at = time.time() + 3.0
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.kvcache.kvworker", _args("store", url, opts, tokens=prompt, seed=9, start_at=start_at)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert all(r["shared"]["write_failures"] == 0 for r in results)  # losers count as success
    layout = fmt.ChunkLayout(FP, CHUNK)
    written = sum(r["shared"]["bytes_written"] for r in results) // layout.nbytes
    assert written >= 4
    objs = _store_objects(url, opts)
    assert len(objs) == 4
    keys = chunk_keys(FP, prompt, CHUNK)
    for obj in objs:
        header_key = fmt.stored_key(obj)
        assert header_key in keys
        fmt.verify(obj, layout, header_key, "shared")
    assert len({r["digest"] for r in results}) == 1


def test_kill_9_mid_write_never_exposes_a_partial_chunk(shared: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = shared
    disk = tmp_path / "disk"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.kvcache.kvworker",
            _args("loop", url, opts, tokens=list(range(8 * CHUNK)), disk_dir=str(disk)),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        for _ in range(3):  # a few prompts stored, then kill while writing the next
            assert p.stdout.readline(), p.stderr.read() if p.stderr else ""
        time.sleep(0.05)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    layout = fmt.ChunkLayout(FP, CHUNK)
    objs = _store_objects(url, opts)
    assert len(objs) >= 3 * 8
    for obj in objs:
        fmt.verify(obj, layout, fmt.stored_key(obj), "shared")  # whole, or not there at all
    files = [Path(d) / f for d, _, fs in os.walk(disk) for f in fs]
    finished = [f for f in files if f.suffix == ".kv"]
    assert len(finished) >= 3 * 8
    for f in finished:
        obj = np.fromfile(f, np.uint8)
        fmt.verify(obj, layout, bytes.fromhex(f.stem), "disk")
    # a restarted node drops the dead writer's temp files and indexes only whole chunks
    from storecomp import KVCacheStore

    with KVCacheStore(FP, chunk_tokens=CHUNK, disk_dir=disk) as s:
        assert s.disk is not None and len(s.disk.entries) == len(finished)
    assert not [f for d, _, fs in os.walk(disk) for f in fs if ".tmp-" in f]
