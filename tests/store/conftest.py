"""Fixtures for store tests: a real SeaweedFS server and one store of each backend.

* ``seaweedfs`` / ``running_seaweedfs``: the session's SeaweedFS server (tests/conftest.py).
* ``s3_store``: an S3Store on a fresh prefix of that server.
* ``any_store``: parametrised over every backend (local, s3, fsspec memory://).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from storecomp.store import LocalStore, Store, open_store
from storecomp.store.retry import RetryPolicy
from storecomp.testing.seaweedfs import SeaweedFS

#: Short bounds so fault tests finish fast; production defaults are longer.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=5.0, connect_timeout_s=1.0)


@pytest.fixture
def s3_store(running_seaweedfs: SeaweedFS) -> Iterator[Store]:
    store = open_store(running_seaweedfs.url(), retry=FAST_RETRY, **running_seaweedfs.store_options())
    yield store
    store.close()


def _local(tmp_path: Path, _: SeaweedFS | None) -> Store:
    return LocalStore(tmp_path / "store")


def _s3(_: Path, sw: SeaweedFS | None) -> Store:
    assert sw is not None
    if not sw.running:
        sw.restart()
    return open_store(sw.url(), retry=FAST_RETRY, **sw.store_options())


def _memory(_: Path, __: SeaweedFS | None) -> Store:
    return open_store(f"memory://sc-test-{uuid.uuid4().hex}")


BACKENDS: dict[str, Callable[[Path, SeaweedFS | None], Store]] = {"local": _local, "s3": _s3, "memory": _memory}


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_store(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    sw = request.getfixturevalue("seaweedfs") if backend_name == "s3" else None
    store = BACKENDS[backend_name](tmp_path, sw)
    yield store
    store.close()
