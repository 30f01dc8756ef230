"""Tier bookkeeping under concurrency (tiers.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from storecomp.io import Engine
from storecomp.kvcache import tiers


def test_disk_put_of_one_key_from_two_threads_reserves_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tiers._preallocate
    entered, go = threading.Event(), threading.Event()

    def slow_first(path: str, nbytes: int) -> None:
        if not entered.is_set():
            entered.set()
            assert go.wait(10)
        real(path, nbytes)

    monkeypatch.setattr(tiers, "_preallocate", slow_first)
    data = np.arange(8192, dtype=np.uint8)
    with Engine() as engine:
        disk = tiers.DiskTier(tmp_path, "ns", 1 << 20, engine)
        key = bytes(32)
        results: list[bool] = []
        first = threading.Thread(target=lambda: results.append(disk.put(key, data)))
        first.start()
        assert entered.wait(10)
        results.append(disk.put(key, data))  # the same chunk while the first write is in flight
        go.set()
        first.join(10)
        assert results == [True, True]
        assert disk.used == data.nbytes  # before the fix: 2x, budget leaked until restart
        assert list(disk.entries.items()) == [(key, data.nbytes)]
        assert not disk.writing
        disk.rebuild()
        assert disk.used == data.nbytes


def test_disk_rebuild_skips_a_chunk_removed_while_listing(tmp_path: Path) -> None:
    with Engine() as engine:
        disk = tiers.DiskTier(tmp_path, "ns", 1 << 20, engine)
        data = np.ones(4096, np.uint8)
        keys = [bytes([i]) * 32 for i in range(3)]
        for k in keys:
            assert disk.put(k, data)
        real_scandir = os.scandir
        gone = disk.path(keys[1])

        class Vanishing:
            """os.scandir of a chunk directory whose entry is deleted just before its stat."""

            def __init__(self, path: str) -> None:
                self._it = real_scandir(path)

            def __enter__(self) -> Vanishing:
                return self

            def __exit__(self, *exc: object) -> None:
                self._it.close()

            def __iter__(self):  # type: ignore[no-untyped-def]
                for e in self._it:
                    if e.path == gone:
                        os.unlink(gone)  # another process evicts it now
                    yield e

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tiers.os, "scandir", Vanishing)
            disk.rebuild()  # before: FileNotFoundError (a KVCacheStore failed to start)
        assert set(disk.entries) == {keys[0], keys[2]} and disk.used == 2 * data.nbytes


def test_buffer_pool_reserve_allocates_within_its_keep() -> None:
    pool = tiers.BufferPool(keep_bytes=3 * 8192)
    pool.reserve(8192, 5)  # capped at what the pool keeps
    assert len(pool._free[8192]) == 3 and pool._free_bytes == 3 * 8192
    bufs = [pool.get(8192) for _ in range(3)]
    assert pool._free_bytes == 0 and all(b.array.nbytes == 8192 and b.address % 4096 == 0 for b in bufs)
    pool.reserve(8192, 1)
    for b in bufs:
        pool.put(b)  # the third no longer fits: freed
    assert len(pool._free[8192]) == 3 and pool._free_bytes == 3 * 8192


def test_store_allocates_its_buffers_before_copying(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Host tier off: a call's buffers are all allocated up front (not while its disk writers run),
    and a second call of the same size reuses them."""
    from storecomp.kvcache import KVCacheStore
    from tests.kvcache.kvhelpers import CHUNK, FP, make_kv

    events: list[str] = []
    real_buffer, real_build = tiers.Buffer, KVCacheStore._build

    def buffer(nbytes: int, pin: bool) -> tiers.Buffer:
        events.append("alloc")
        return real_buffer(nbytes, pin)

    def build(self: KVCacheStore, *a: object) -> tiers.Buffer:
        events.append("copy")
        return real_build(self, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(tiers, "Buffer", buffer)
    monkeypatch.setattr(KVCacheStore, "_build", build)
    with KVCacheStore(FP, chunk_tokens=CHUNK, host_bytes=0, disk_dir=tmp_path, write_through=True) as s:
        tokens = np.arange(4 * CHUNK)
        assert s.store(tokens, make_kv(4 * CHUNK)) == 4 * CHUNK
        assert events == ["alloc"] * 4 + ["copy"] * 4
        events.clear()
        assert s.store(tokens + 1, make_kv(4 * CHUNK, seed=1)) == 4 * CHUNK
        assert events == ["copy"] * 4
