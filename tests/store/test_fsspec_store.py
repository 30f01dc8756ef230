"""FsspecStore specifics (the conformance suite covers the Store contract)."""

from __future__ import annotations

import os

import numpy as np

from storecomp.store.fsspec_store import FsspecStore


def test_forked_child_reads_through_a_pool_of_its_own() -> None:
    store = FsspecStore("memory://fsspec-fork-test")
    store.put("a", b"hello")
    dst = np.zeros(5, np.uint8)
    store.read_ranges("a", [0], [5], dst, [0])  # the parent's pool has an idle worker now
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            out = np.zeros(5, np.uint8)
            store.submit_ranges("a", [0], [5], out, [0]).result(5)  # before: timed out (no worker thread here)
            code = 0 if out.tobytes() == b"hello" else 2
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    store.read_ranges("a", [0], [5], dst, [0])  # the parent's pool still works
    assert dst.tobytes() == b"hello"
    store.delete("a")
    store.close()
