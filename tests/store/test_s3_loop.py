"""S3Store's private event loop: closing it never leaves a read waiting forever."""

from __future__ import annotations

import asyncio
import concurrent.futures

import numpy as np
import pytest

from storecomp.errors import ClosedError
from storecomp.store.futures import PendingRanges
from storecomp.store.s3 import _Loop


def test_close_cancels_reads_in_flight() -> None:
    loop = _Loop()
    started = concurrent.futures.Future[None]()

    async def stalled() -> np.ndarray:
        started.set_result(None)
        await asyncio.sleep(3600)  # a request that never answers
        return np.zeros(1, np.uint64)

    pending = PendingRanges(loop.submit(stalled()), None)
    started.result(5)
    loop.close()
    with pytest.raises(ClosedError):
        pending.result(timeout=5)  # before the fix: the loop stopped and this timed out (without a timeout: forever)
    assert pending.done()


def test_loop_restarts_after_close() -> None:
    loop = _Loop()
    loop.close()  # nothing started: a no-op

    async def one() -> int:
        return 1

    assert loop.submit(one()).result(5) == 1
    loop.close()
    assert loop.submit(one()).result(5) == 1
    loop.close()


def test_forked_child_gets_a_loop_of_its_own() -> None:
    import os

    loop = _Loop()

    async def pid() -> int:
        return os.getpid()

    assert loop.submit(pid()).result(5) == os.getpid()  # the parent's loop thread runs
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            code = 0 if loop.submit(pid()).result(5) == os.getpid() else 2  # before: timed out (no loop thread here)
            loop.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert loop.submit(pid()).result(5) == os.getpid()  # the parent's loop is untouched
    loop.close()
