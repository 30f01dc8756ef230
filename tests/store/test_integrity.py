"""crc32c chunk checksums: sidecar format, verified (ranged) reads, corruption detection."""

from __future__ import annotations

import os
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storecomp.crc import crc32c
from storecomp.errors import CorruptDataError, InvalidArgumentError, NotFoundError
from storecomp.store import LocalStore
from storecomp.store.integrity import (
    Checksums,
    get_verified,
    load_checksums,
    put_checked,
    read_verified,
    sidecar_key,
)

CHUNK = 4096


@pytest.fixture
def data() -> bytes:
    return np.random.default_rng(1).integers(0, 256, 5 * CHUNK + 123, dtype=np.uint8).tobytes()


def test_compute_matches_reference_crc32c(data: bytes) -> None:
    sums = Checksums.compute(data, CHUNK)
    assert sums.size == len(data) and len(sums.crcs) == 6
    assert sums.crcs[0] == google_crc32c.value(data[:CHUNK])
    assert sums.crcs[-1] == google_crc32c.value(data[5 * CHUNK :])
    assert crc32c(b"123456789") == 0xE3069283  # the standard crc32c check value
    assert Checksums.compute(b"", CHUNK).crcs == ()


def test_sidecar_roundtrip_and_damage(data: bytes) -> None:
    sums = Checksums.compute(data, CHUNK)
    raw = sums.to_bytes()
    assert len(raw) == 24 + 4 * 6 + 4
    assert Checksums.from_bytes(raw) == sums
    assert Checksums.from_json(sums.size, sums.to_json()) == sums
    bad = bytearray(raw)
    bad[30] ^= 1
    with pytest.raises(CorruptDataError, match="own crc32c"):
        Checksums.from_bytes(bytes(bad), "x")
    with pytest.raises(CorruptDataError, match="truncated"):
        Checksums.from_bytes(raw[:10], "x")
    with pytest.raises(CorruptDataError, match="not a storecomp"):
        Checksums.from_bytes(b"XXXX" + raw[4:], "x")
    with pytest.raises(CorruptDataError, match="malformed"):
        Checksums.from_json(5, {"chunk_bytes": 4})
    with pytest.raises(InvalidArgumentError):
        Checksums(10, CHUNK, (1, 2))


@settings(max_examples=60, deadline=None)
@given(off=st.integers(0, 5 * CHUNK + 200), ln=st.integers(0, 3 * CHUNK))
def test_verified_ranged_reads_return_exact_bytes(tmp_path_factory: pytest.TempPathFactory, off: int, ln: int) -> None:
    root = tmp_path_factory.getbasetemp() / "integrity-prop"
    store = LocalStore(root)
    data = np.random.default_rng(1).integers(0, 256, 5 * CHUNK + 123, dtype=np.uint8).tobytes()
    if not store.exists("obj"):
        put_checked(store, "obj", data, CHUNK)
    assert get_verified(store, "obj", None, off, ln) == data[off : off + ln]


def test_many_ranges_direct_and_staged(tmp_path: Path, data: bytes) -> None:
    store = LocalStore(tmp_path)
    sums = put_checked(store, "obj", data, CHUNK)
    assert load_checksums(store, "obj") == sums
    offs, lens = [0, CHUNK + 7, 5 * CHUNK, 2 * CHUNK], [CHUNK, 100, 10_000, 2 * CHUNK]
    dst = np.zeros(sum(lens), np.uint8)
    douts = np.cumsum([0, *lens[:-1]]).tolist()
    got = read_verified(store, "obj", sums, offs, lens, dst, douts)
    assert got.tolist() == [CHUNK, 100, 123, 2 * CHUNK]
    for o, n, d in zip(offs, got.tolist(), douts, strict=True):
        assert dst[d : d + n].tobytes() == data[o : o + n]


def test_corruption_names_object_and_range(tmp_path: Path, data: bytes) -> None:
    store = LocalStore(tmp_path)
    put_checked(store, "obj", data, CHUNK)
    path = tmp_path / "obj"
    with open(path, "r+b") as f:
        f.seek(3 * CHUNK + 5)
        b = f.read(1)
        f.seek(3 * CHUNK + 5)
        f.write(bytes([b[0] ^ 0xFF]))
    assert get_verified(store, "obj", None, 0, 3 * CHUNK) == data[: 3 * CHUNK]  # untouched chunks still read
    with pytest.raises(CorruptDataError, match=rf"obj: crc32c mismatch in bytes \[{3 * CHUNK}, {4 * CHUNK}\)"):
        get_verified(store, "obj", None, 3 * CHUNK + 100, 10)
    with pytest.raises(CorruptDataError, match="obj"):
        get_verified(store, "obj")
    os.truncate(path, 2 * CHUNK)
    with pytest.raises(CorruptDataError, match="shorter"):
        get_verified(store, "obj", None, CHUNK, 3 * CHUNK)


def test_missing_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("plain", b"abc")
    with pytest.raises(NotFoundError):
        get_verified(store, "plain")
    assert sidecar_key("a/b") == "a/b.crc32c"
