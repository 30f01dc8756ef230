"""The bounce path's use of the shared staging pool, on the CPU.

The device copy is the only CUDA part of the bounce path; here torch's CUDA
stream and event are replaced by no-ops and the destination is a CPU tensor,
so the slot bookkeeping (no slot lost on a failed read, no two readers each
holding slots while waiting for another) runs without a GPU.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any

import numpy as np
import pytest

from storecomp.io import Engine, as_buffer, paths
from tests.conftest import DataFile

torch = pytest.importorskip("torch")
SLOT = 64 << 10


class _Stream:
    def __init__(self, device: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass


class _Event:
    def record(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass


@pytest.fixture
def cpu_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Stream", _Stream)
    monkeypatch.setattr(torch.cuda, "Event", _Event)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())


def _bounce(eng: Engine, path: Any, offset: int, n: int) -> torch.Tensor:
    dst = torch.zeros(n, dtype=torch.uint8)
    f = eng.open(path)
    got = paths._bounce(
        eng, f, as_buffer(dst), np.array([offset], np.uint64), np.array([n], np.uint64), np.zeros(1, np.uint64), _Event()
    )
    assert got.tolist() == [n]
    return dst


def test_concurrent_bounce_reads_share_a_small_pool(cpu_cuda: None, data_file: DataFile) -> None:
    """Two readers (the engine's two copier threads), two slots: neither waits for a slot while holding one."""
    eng = Engine(staging_bytes=2 * SLOT, staging_slot_bytes=SLOT)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the readers as finely as the interpreter allows
    n = 24 * SLOT + 77
    errors: list[BaseException] = []

    def reader(offset: int) -> None:
        try:
            for _ in range(20):
                dst = _bounce(eng, data_file.path, offset, n)
                assert dst.numpy().tobytes() == data_file.data[offset : offset + n]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(off,), daemon=True) for off in (0, 4096 + 3)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join(20)
    finally:
        sys.setswitchinterval(old_interval)
    assert not any(t.is_alive() for t in threads), "bounce readers deadlocked on the staging pool"
    assert not errors, errors
    assert eng.staging_pool().free_slots == 2
    eng.close()


def test_failed_read_gives_its_slot_back(cpu_cuda: None, data_file: DataFile, monkeypatch: pytest.MonkeyPatch) -> None:
    eng = Engine(staging_bytes=4 * SLOT, staging_slot_bytes=SLOT)
    f = eng.open(data_file.path)
    real = f.read_many_into
    calls = 0

    class _Failed:
        def result(self) -> Any:
            raise OSError(5, "injected")

        def wait(self) -> bool:
            return True

    def flaky(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return _Failed() if calls == 2 else real(*args, **kw)

    monkeypatch.setattr(f, "read_many_into", flaky)
    dst = torch.zeros(6 * SLOT, dtype=torch.uint8)
    for _ in range(3):
        calls = 0
        with pytest.raises(OSError, match="injected"):
            paths._bounce(
                eng, f, as_buffer(dst), np.zeros(1, np.uint64), np.array([6 * SLOT], np.uint64), np.zeros(1, np.uint64), _Event()
            )
        assert eng.staging_pool().free_slots == 4
    eng.close()
