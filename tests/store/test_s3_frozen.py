"""A frozen S3 server (SIGSTOP): failed multipart puts leave no upload behind once the
server answers again, and every call ends within the policy's overall deadline.

These tests freeze a SeaweedFS of their own (never the session's shared server)
and always let it run again (SIGCONT) and stop it at the end."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.errors import StoreUnavailableError
from storecomp.store import open_store
from storecomp.store.retry import RetryPolicy
from storecomp.testing.seaweedfs import SeaweedFS

#: Short bounds: each call must give up within deadline_s (plus scheduling slack on 2 busy cores).
DEADLINE = RetryPolicy(max_attempts=4, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=3.0, connect_timeout_s=1.0)


@pytest.fixture(scope="module")
def private_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS.start(tmp_path_factory.mktemp("frozen-seaweedfs")) as sw:  # stop() also wakes a frozen server
        yield sw


class Frozen:
    """SIGSTOP the server's process group for a ``with`` block; SIGCONT on the way out."""

    def __init__(self, sw: SeaweedFS) -> None:
        assert sw.proc is not None
        self.pgid = sw.proc.pid

    def __enter__(self) -> Frozen:
        os.killpg(self.pgid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        os.killpg(self.pgid, signal.SIGCONT)


def _uploads(sw: SeaweedFS, prefix: str) -> list[dict[str, Any]]:
    return list(sw.boto3_client().list_multipart_uploads(Bucket=sw.bucket, Prefix=prefix).get("Uploads", []))


def _put_in_background(store: Any, key: str, nbytes: int) -> tuple[threading.Thread, dict[str, BaseException | None]]:
    outcome: dict[str, BaseException | None] = {}

    def put() -> None:
        try:
            store.put(key, np.zeros(nbytes, np.uint8))
            outcome["error"] = None
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    writer = threading.Thread(target=put)
    writer.start()
    return writer, outcome


def _wait_for_upload(sw: SeaweedFS, prefix: str, writer: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while not _uploads(sw, prefix):
        assert writer.is_alive(), "the put ended before its upload was seen"
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_multipart_put_that_fails_leaves_no_upload(private_seaweedfs: SeaweedFS) -> None:
    """The server dies mid-upload: obstore's own abort fails (nobody answers); the store
    remembers the upload and aborts it once the server is back (next put, or close)."""
    sw = private_seaweedfs
    opts = dict(retry=DEADLINE, multipart_bytes=5 << 20, part_bytes=5 << 20, max_concurrency=1, **sw.store_options())
    for closing in (False, True):
        store = open_store(sw.url(f"mp{closing:d}"), **opts)
        writer, outcome = _put_in_background(store, "big.bin", 200 << 20)
        _wait_for_upload(sw, f"mp{closing:d}/", writer)
        sw.kill()
        writer.join(60)
        assert isinstance(outcome["error"], StoreUnavailableError), outcome
        sw.restart()
        assert [u["Key"] for u in _uploads(sw, f"mp{closing:d}/")] == [f"mp{closing:d}/big.bin"]  # the failure left it
        if closing:
            store.close()
        else:
            store.put("small.bin", b"x")  # the next put through this store aborts what the failure left
            assert not store.exists("big.bin")
            store.close()
        assert _uploads(sw, f"mp{closing:d}/") == []


def test_every_call_to_a_frozen_server_fails_within_the_deadline(private_seaweedfs: SeaweedFS) -> None:
    """SIGSTOP: connections are accepted and nothing answers. Each call fails with
    StoreUnavailableError within the policy's deadline (3 s; before, 60 s per request)."""
    sw = private_seaweedfs
    if not sw.running:
        sw.restart()
    store = open_store(sw.url("frozen"), retry=DEADLINE, part_bytes=1 << 20, **sw.store_options())
    store.put("obj", b"y" * (3 << 20))
    bound = 2 * DEADLINE.deadline_s + 4  # generous (2 busy cores); the old behaviour took 60-120 s
    calls = {
        "get": lambda: store.get("obj"),
        "read_ranges": lambda: store.read_ranges(
            "obj", [0, 2 << 20], [1 << 20, 1 << 20], np.empty(2 << 20, np.uint8), [0, 1 << 20]
        ),
        "stat": lambda: store.stat("obj"),
        "put": lambda: store.put("new", b"z" * 1000),
        "delete": lambda: store.delete("other"),  # (may still take effect once the server runs again)
    }
    try:
        with Frozen(sw):
            for name, call in calls.items():
                t0 = time.monotonic()
                with pytest.raises(StoreUnavailableError) as info:
                    call()
                took = time.monotonic() - t0
                assert took < bound, f"{name} took {took:.1f} s against a deadline of {DEADLINE.deadline_s} s"
                assert info.value.endpoint == sw.endpoint
        assert store.get("obj") == b"y" * (3 << 20)  # the server answers again: so does the store
    finally:
        store.close()


def test_a_server_that_loses_a_port_race_is_started_again_on_fresh_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port chosen free can be taken before weed binds it (a neighbour's server): weed exits at
    start. ``SeaweedFS.start`` then starts it again on fresh ports instead of failing the run."""
    import socket

    import storecomp.testing.seaweedfs as swmod

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    real = swmod.free_port
    calls = iter(range(1 << 20))

    def racing_port() -> int:
        return taken.getsockname()[1] if next(calls) == 3 else real()  # the first attempt's S3 port is in use

    monkeypatch.setattr(swmod, "free_port", racing_port)
    try:
        sw = SeaweedFS.start(tmp_path / "sw")
        try:
            assert sw.ports["s3"] != taken.getsockname()[1]
            store = open_store(sw.url(), **sw.store_options())
            store.put("k", b"v")
            assert store.get("k") == b"v"
        finally:
            sw.stop()
    finally:
        taken.close()
