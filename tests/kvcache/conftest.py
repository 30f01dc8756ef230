"""Fixtures for KV-cache tests (helpers live in kvhelpers.py).

* ``kvstore(**kw)``: a KVCacheStore of the tiny fingerprint, closed after the test.
* ``kv_seaweedfs`` (session): a SeaweedFS server of our own (the class from
  storecomp.testing, as tests/store uses).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storecomp.kvcache import KVCacheStore
from storecomp.testing.seaweedfs import SeaweedFS
from tests.kvcache.kvhelpers import CHUNK, FP


@pytest.fixture
def kvstore(tmp_path: Path) -> Iterator[Callable[..., KVCacheStore]]:
    made: list[KVCacheStore] = []

    def make(**kw: Any) -> KVCacheStore:
        kw.setdefault("chunk_tokens", CHUNK)
        s = KVCacheStore(kw.pop("fingerprint", FP), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture(scope="session")
def kv_seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    sw = SeaweedFS.start(tmp_path_factory.mktemp("kv-seaweedfs"))
    try:
        yield sw
    finally:
        sw.stop()
