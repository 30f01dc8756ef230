"""Fixtures for store tests: a real SeaweedFS server and one store of each backend.

* ``seaweedfs`` / ``running_seaweedfs``: the session's SeaweedFS server (tests/conftest.py).
* ``s3_store``: an S3Store on a fresh prefix of that server.
* ``any_store``: parametrised over every backend (local, s3, fsspec memory:// and file://)
  and the wrappers (a CachedStore over a LocalStore, a ReplicatedStore of two).
* ``remote``: a LocalStore holding ``obj/0`` .. ``obj/7``, ``obj/i`` = ``random_bytes(100 KiB + i, seed=i)``
  (the backing store of the cache tests).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from storecomp.store import LocalStore, Store, open_store
from storecomp.store.retry import RetryPolicy
from storecomp.testing.seaweedfs import SeaweedFS
from tests.conftest import random_bytes

#: Short bounds so fault tests finish fast; production defaults are longer.
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=5.0, connect_timeout_s=1.0)
#: FAST_RETRY for tests that move multi-MiB parts: a part to a fresh SeaweedFS on a loaded
#: 2-core machine (or over a rate-limited link) can outlast 5 s; a down server still fails at once.
PART_RETRY = dataclasses.replace(FAST_RETRY, deadline_s=60.0)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Callable[[str], AbstractContextManager[Path]]:
    """``with small_tmpfs("2m") as path``: a tmpfs of that size mounted under ``tmp_path``
    (root only, as CI runs): a disk that fills up, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")

    @contextmanager
    def mount(size: str) -> Iterator[Path]:
        path = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)

    return mount


@pytest.fixture
def remote(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "remote")
    for i in range(8):
        store.put(f"obj/{i}", random_bytes(100 * 1024 + i, seed=i))
    return store


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


def _fsspec_file(tmp_path: Path, _: SeaweedFS | None) -> Store:
    from storecomp.store.fsspec_store import FsspecStore

    (tmp_path / "fsspec").mkdir()
    return FsspecStore(f"file://{tmp_path / 'fsspec'}")


def _cached(tmp_path: Path, _: SeaweedFS | None) -> Store:
    from storecomp.store import CachedStore

    return CachedStore(LocalStore(tmp_path / "inner"), tmp_path / "cache", 64 << 20, block_bytes=64 << 10)


def _replicated(tmp_path: Path, _: SeaweedFS | None) -> Store:
    """Two local replicas, the near one (site "b") read first; writes go to the primary "a"."""
    from storecomp.store import Mount, Replica, ReplicatedStore

    mount = Mount("m", (Replica(f"{tmp_path}/a", "a", 1), Replica(f"{tmp_path}/b", "b", 0)), primary="a")
    return ReplicatedStore(mount, [LocalStore(tmp_path / "a"), LocalStore(tmp_path / "b")], local_site="b")


BACKENDS: dict[str, Callable[[Path, SeaweedFS | None], Store]] = {
    "local": _local,
    "s3": _s3,
    "memory": _memory,
    "fsspec_file": _fsspec_file,
    "cached": _cached,
    "replicated": _replicated,
}


@pytest.fixture(params=sorted(BACKENDS))
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def any_store(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    sw = request.getfixturevalue("seaweedfs") if backend_name == "s3" else None
    store = BACKENDS[backend_name](tmp_path, sw)
    yield store
    store.close()
