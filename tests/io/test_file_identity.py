"""An open File reads only the inode it opened (issue 16, item 0, the engine floor):
every descriptor it uses, buffered or O_DIRECT, refers to that inode; the
descriptor cache never serves a file the path no longer names."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storecomp.errors import ClosedError, NotFoundError
from storecomp.io import Engine

OLD, NEW = b"a" * 1000, b"b" * 5000


def _replace(path: Path, data: bytes) -> None:
    """What LocalStore.put does: a new file renamed over the path."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, path)


@pytest.mark.parametrize("length", [5000, 8192])
def test_open_file_reads_its_own_inode_after_rename(engine: Engine, tmp_path: Path, length: int) -> None:
    """Opened on the 1,000-byte file, then the path is replaced by a 5,000-byte file:
    exact=False returns the old file's short count and bytes, never the new file's.
    (Before: the O_DIRECT descriptor, opened later by path, read the new file.)"""
    path = tmp_path / "f"
    path.write_bytes(OLD)
    f = engine.open(path)
    _replace(path, NEW)
    buf = np.zeros(length, np.uint8)
    assert f.pread_into(buf, 0, exact=False) == 1000
    assert buf[:1000].tobytes() == OLD and not buf[1000:].any()
    aligned = np.zeros(4096, np.uint8)  # O_DIRECT-shaped: aligned offset, length and address
    assert f.pread_into(aligned, 0, exact=False) == 1000 and aligned[:1000].tobytes() == OLD
    assert f.size() == 1000 and f.fstat()[2] == 1000
    assert engine.open(path).size() == 5000
    f.close()


def test_open_file_survives_unlink(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(OLD)
    f = engine.open(path)
    os.unlink(path)
    buf = np.zeros(4096, np.uint8)
    assert f.pread_into(buf, 0, exact=False) == 1000 and buf[:1000].tobytes() == OLD
    f.close()
    with pytest.raises(ClosedError):
        f.size()


def test_cached_file_follows_the_path(tmp_path: Path) -> None:
    """A dataset folder rewritten in place: the cache opens the new file; a removed path is NotFound."""
    path = tmp_path / "f"
    path.write_bytes(OLD)
    with Engine() as eng:
        f0 = eng.cached_file(path)
        assert eng.cached_file(path) is f0  # unchanged: served from the cache
        _replace(path, NEW)
        f1 = eng.cached_file(path)
        assert f1 is not f0 and f1.size() == 5000
        buf = np.zeros(5000, np.uint8)
        from storecomp.io import read_into

        assert read_into(path, buf, engine=eng) == 5000 and buf.tobytes() == NEW
        with open(path, "r+b") as w:  # rewritten in place: same inode, other size and mtime
            w.truncate(10)
        f2 = eng.cached_file(path)
        assert f2.size() == 10
        os.unlink(path)
        with pytest.raises(NotFoundError):
            eng.cached_file(path)
        with pytest.raises(NotFoundError):
            read_into(path, buf, engine=eng)
        path.write_bytes(OLD)  # deleted and written again
        assert read_into(path, buf, exact=False, engine=eng) == 1000 and buf[:1000].tobytes() == OLD
