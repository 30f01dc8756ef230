"""Fixtures for KV-cache tests (helpers live in kvhelpers.py).

* ``kvstore(**kw)``: a KVCacheStore of the tiny fingerprint, closed after the test.
* SeaweedFS: ``running_seaweedfs``, the session server (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storecomp.kvcache import KVCacheStore
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
