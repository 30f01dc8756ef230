"""Reader conformance: every reader kind a dataset can sit on passes the same cases.

Kinds: ``LocalReader`` (the native engine on local files, page cache and
O_DIRECT) and ``StoreReader`` over every Store backend of the store
conformance suite (local, S3 on SeaweedFS, fsspec memory:// and file://, a
CachedStore, a ReplicatedStore). Cases: ranges into numpy, torch CPU and torch
CUDA (gpu-marked) destinations at destination offsets; exact reads (a range
past the end is a ShortReadError naming the object, never a short count);
small reads clipped at the end; one version per read (a replaced object reads
whole as the new version, a shrunk one refuses the old ranges); a missing
object is NotFoundError.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from storecomp.data.readers import LocalReader, Reader, StoreReader
from storecomp.errors import NotFoundError, ShortReadError
from storecomp.io import Engine
from tests.conftest import random_bytes
from tests.store.conftest import BACKENDS

SIZE = 100_000


@dataclass
class Kind:
    """A reader and how to put an object where it reads (returns the reader's key)."""

    reader: Reader
    put: Callable[[str, bytes], str]
    close: Callable[[], None]


def _local(tmp_path: Path, direct: str) -> Kind:
    engine = Engine(direct=direct)
    root = tmp_path / "files"
    root.mkdir()

    def put(name: str, data: bytes) -> str:
        path = root / name
        tmp = root / f".{name}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a new file (inode) in one step, as every writer here publishes
        return str(path)

    return Kind(LocalReader(engine), put, engine.close)


KINDS = ["local", "local_direct"] + [f"store_{name}" for name in sorted(BACKENDS)]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Kind]:
    name = str(request.param)
    if name.startswith("local"):
        k = _local(tmp_path, "on" if name == "local_direct" else "auto")
    else:
        backend = name.removeprefix("store_")
        sw = request.getfixturevalue("seaweedfs") if backend == "s3" else None
        store = BACKENDS[backend](tmp_path, sw)

        def put(key: str, data: bytes) -> str:
            store.put(key, data)
            return key

        k = Kind(StoreReader(store), put, store.close)
    yield k
    k.close()


def _dst(where: str, nbytes: int) -> tuple[Any, Callable[[], bytes]]:
    """A zeroed destination and a function giving its bytes."""
    if where == "numpy":
        a = np.zeros(nbytes, np.uint8)
        return a, a.tobytes
    t = torch.zeros(nbytes, dtype=torch.uint8, device="cuda" if where == "torch_cuda" else "cpu")
    return t, lambda: bytes(t.cpu().numpy())


@pytest.mark.parametrize("where", ["numpy", "torch_cpu", pytest.param("torch_cuda", marks=pytest.mark.gpu)])
def test_ranges_land_at_their_destination_offsets(kind: Kind, where: str) -> None:
    data = random_bytes(SIZE, seed=1)
    key = kind.put("a", data)
    assert kind.reader.size(key) == SIZE
    offs = np.array([0, 4097, 70_000, SIZE - 50, 12], np.int64)  # unaligned, up to the exact end, a zero-length one
    lens = np.array([100, 5000, 333, 50, 0], np.int64)
    douts = np.array([10, 200, 5300, 5700, 5750], np.int64)
    dst, contents = _dst(where, 6000)
    got = kind.reader.submit(key, dst, offs, lens, douts).result(timeout=60)
    assert got.tolist() == lens.tolist()
    expect = bytearray(6000)
    for o, n, d in zip(offs, lens, douts, strict=True):
        expect[d : d + n] = data[o : o + n]
    assert contents() == bytes(expect)  # the ranges, and not a byte around them


def test_whole_object_in_one_range(kind: Kind) -> None:
    data = random_bytes(SIZE, seed=2)
    key = kind.put("whole", data)
    dst = np.empty(kind.reader.size(key), np.uint8)
    assert kind.reader.submit(key, dst, np.array([0]), np.array([dst.size]), np.array([0])).result(timeout=60).tolist() == [SIZE]
    assert dst.tobytes() == data


@pytest.mark.parametrize("offset,length", [(SIZE - 10, 20), (SIZE, 1), (SIZE + 4096, 10)])
def test_a_range_past_the_end_is_a_short_read_error(kind: Kind, offset: int, length: int) -> None:
    key = kind.put("short", random_bytes(SIZE, seed=3))
    dst = np.zeros(64, np.uint8)
    with pytest.raises(ShortReadError) as exc:
        kind.reader.submit(key, dst, np.array([0, offset]), np.array([8, length]), np.array([0, 32])).result(timeout=60)
    assert "short" in str(exc.value)


def test_small_reads_are_clipped_at_the_end(kind: Kind) -> None:
    data = random_bytes(SIZE, seed=4)
    key = kind.put("small", data)
    assert kind.reader.read(key, 5, 100) == data[5:105]
    assert kind.reader.read(key, SIZE - 10, 100) == data[-10:]
    assert kind.reader.read(key, SIZE, 100) == b""


def test_a_replaced_object_reads_whole_as_the_new_version(kind: Kind) -> None:
    old, new = random_bytes(SIZE, seed=5), random_bytes(SIZE, seed=6)
    key = kind.put("v", old)
    dst = np.empty(SIZE, np.uint8)
    kind.reader.submit(key, dst, np.array([0]), np.array([SIZE]), np.array([0])).result(timeout=60)
    assert dst.tobytes() == old
    kind.put("v", new)  # same size: only a version check tells the two apart
    for _ in range(2):  # a cached handle or block must not serve the old bytes
        kind.reader.submit(key, dst, np.array([0, SIZE // 2]), np.array([SIZE // 2, SIZE // 2]), np.array([0, SIZE // 2])).result(
            timeout=60
        )
        assert dst.tobytes() == new
        assert kind.reader.read(key, 1000, 64) == new[1000:1064]


def test_a_shrunk_object_refuses_the_old_ranges(kind: Kind) -> None:
    key = kind.put("shrink", random_bytes(SIZE, seed=7))
    dst = np.empty(SIZE, np.uint8)
    kind.reader.submit(key, dst, np.array([0]), np.array([SIZE]), np.array([0])).result(timeout=60)
    smaller = random_bytes(SIZE // 4, seed=8)
    kind.put("shrink", smaller)
    assert kind.reader.size(key) == SIZE // 4
    with pytest.raises(ShortReadError):
        kind.reader.submit(key, dst, np.array([0]), np.array([SIZE]), np.array([0])).result(timeout=60)
    kind.reader.submit(key, dst, np.array([0]), np.array([SIZE // 4]), np.array([0])).result(timeout=60)
    assert dst[: SIZE // 4].tobytes() == smaller


def test_a_missing_object_is_not_found(kind: Kind) -> None:
    key = kind.reader.join(os.path.dirname(kind.put("present", b"x" * 10)), "absent")
    with pytest.raises(NotFoundError):
        kind.reader.size(key)
    dst = np.zeros(16, np.uint8)
    with pytest.raises(NotFoundError):
        kind.reader.submit(key, dst, np.array([0]), np.array([8]), np.array([0])).result(timeout=60)


def test_describe_names_the_object(kind: Kind) -> None:
    key = kind.put("named", b"y" * 10)
    assert key in kind.reader.describe(key)
