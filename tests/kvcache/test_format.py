"""Chunk objects: layout arithmetic, header round trip, every kind of corruption detected."""

from __future__ import annotations

import numpy as np
import pytest

from storecomp.crc import crc32c
from storecomp.errors import CorruptDataError
from storecomp.kvcache import format as fmt
from storecomp.kvcache.keys import ModelFingerprint, chunk_keys

FP = ModelFingerprint("m", "bfloat16", layers=3, kv_heads=2, head_dim=8)


def make(tokens: int = 16) -> tuple[fmt.ChunkLayout, bytes, np.ndarray]:
    lay = fmt.ChunkLayout(FP, tokens)
    key = chunk_keys(FP, list(range(tokens)), tokens)[0]
    obj = np.zeros(lay.nbytes, np.uint8)
    rng = np.random.default_rng(0)
    crcs = []
    for i in range(FP.layers):
        v = lay.layer_view(obj, i)
        v[:] = rng.integers(0, 256, v.size, np.uint8)
        crcs.append(crc32c(v))
    fmt.write_header(obj, lay, key, crcs)
    return lay, key, obj


def test_layout_is_aligned() -> None:
    llama = fmt.ChunkLayout(ModelFingerprint("l", "bfloat16", layers=32, kv_heads=8, head_dim=128), 256)
    assert llama.layer_bytes == 1 << 20
    assert llama.header_bytes == 4096
    assert llama.nbytes == 4096 + (32 << 20)
    lay = fmt.ChunkLayout(FP, 16)
    assert lay.layer_bytes == 2 * 16 * 2 * 8 * 2
    for i in range(FP.layers):
        assert lay.layer_offset(i) % 4096 == 0
    assert lay.nbytes % 4096 == 0


def test_round_trip() -> None:
    lay, key, obj = make()
    fmt.verify(obj, lay, key, "t")
    h = fmt.read_header(obj[: lay.header_bytes], lay, key, "t")
    assert h.tokens == 16 and len(h.crcs) == 3


@pytest.mark.parametrize(
    "where,match",
    [
        (0, "magic"),  # magic
        (4, "version"),  # version
        (20, "checksum"),  # inside the fingerprint digest: header crc catches it first
        ("layer", "layer 1 checksum"),
        ("lastbyte", "layer 2 checksum"),
    ],
)
def test_corruption_detected(where: object, match: str) -> None:
    lay, key, obj = make()
    if where == "layer":
        obj[lay.layer_offset(1) + 7] ^= 1
    elif where == "lastbyte":
        obj[lay.layer_offset(2) + lay.layer_bytes - 1] ^= 0x80
    else:
        obj[int(where)] ^= 1  # type: ignore[call-overload]
    with pytest.raises(CorruptDataError, match=match):
        fmt.verify(obj, lay, key, "t")


def test_wrong_key_fingerprint_size() -> None:
    lay, key, obj = make()
    other = chunk_keys(FP, list(range(1, 17)), 16)[0]
    with pytest.raises(CorruptDataError, match="holds chunk"):
        fmt.verify(obj, lay, other, "t")
    fp2 = ModelFingerprint("m", "bfloat16", layers=3, kv_heads=2, head_dim=8, tag="x")
    with pytest.raises(CorruptDataError, match="fingerprint"):
        fmt.verify(obj, fmt.ChunkLayout(fp2, 16), key, "t")
    with pytest.raises(CorruptDataError, match="bytes, expected"):
        fmt.verify(obj[:-4096], lay, key, "t")
    with pytest.raises(CorruptDataError, match="truncated"):
        fmt.read_header(obj[:100], lay, key, "t")


def test_header_bytes_at_documented_offsets() -> None:
    """docs/kvcache.md's table, read back with struct alone."""
    import struct

    import google_crc32c

    lay, key, obj = make()
    raw = obj[: lay.header_bytes].tobytes()
    assert raw[0:4] == b"SCKV"
    assert struct.unpack_from("<HHI", raw, 4) == (1, 0, 4096)
    assert raw[12:44] == FP.digest and raw[44:76] == key
    assert raw[76:92].rstrip(b"\0") == b"bfloat16"
    assert struct.unpack_from("<IIII", raw, 92) == (16, 3, 2, 8)
    for i in range(3):
        off, length, crc, reserved = struct.unpack_from("<QQII", raw, 108 + 24 * i)
        assert (off, length, reserved) == (4096 * (1 + i), 2 * 16 * 2 * 8 * 2, 0)
        assert crc == google_crc32c.value(obj[off : off + length].tobytes())
    end = 108 + 24 * 3
    assert struct.unpack_from("<I", raw, end)[0] == google_crc32c.value(raw[:end])
    assert fmt.stored_key(obj) == key
