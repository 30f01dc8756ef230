"""Cache entry files of :mod:`storecomp.store.cache`: the header format, and the
small helpers the cache reads with (host views, pinned-file readers, flock)."""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, UnsupportedBufferError
from ..io import File, as_buffer
from .integrity import Checksums

MAGIC = b"SCACHE01"
_FIXED = struct.Struct("<8sIIQQI")
ALIGN = 4096


@dataclass(frozen=True)
class Header:
    """A decoded entry header: its length, the data length (bytes), checksums, meta."""

    header_len: int
    data_len: int
    sums: Checksums
    meta: dict[str, Any]


class Done:
    """A finished RangeFuture (CachedStore reads complete before returning)."""

    def __init__(self, value: np.ndarray) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> np.ndarray:
        return self._value


def encode_header(data_len: int, sums: Checksums, meta: dict[str, Any]) -> bytes:
    mj = json.dumps(meta, sort_keys=True).encode()
    body_len = _FIXED.size + len(mj) + 4 * len(sums.crcs) + 4
    header_len = -(-body_len // ALIGN) * ALIGN
    body = _FIXED.pack(MAGIC, header_len, len(mj), data_len, sums.chunk_bytes, len(sums.crcs)) + mj
    body += struct.pack(f"<{len(sums.crcs)}I", *sums.crcs)
    body += struct.pack("<I", crc32c(body))
    return body + b"\0" * (header_len - len(body))


def decode_header(raw: bytes, name: str) -> Header:
    """Parse an entry header; any damage (bytes, lengths, checksums, meta) is a CorruptDataError naming ``name``."""
    if len(raw) < _FIXED.size:
        raise CorruptDataError(f"{name}: cache entry header truncated")
    magic, header_len, meta_len, data_len, chunk, n = _FIXED.unpack_from(raw)
    if magic != MAGIC:
        raise CorruptDataError(f"{name}: not a cache entry (magic {magic!r})")
    end = _FIXED.size + meta_len + 4 * n
    if header_len % ALIGN or end + 4 > min(len(raw), header_len):
        raise CorruptDataError(f"{name}: cache entry header truncated or of a bad length ({header_len} bytes)")
    (own,) = struct.unpack_from("<I", raw, end)
    if own != crc32c(raw[:end]):
        raise CorruptDataError(f"{name}: cache entry header fails its crc32c")
    meta = _decode_meta(raw[_FIXED.size : _FIXED.size + meta_len], name)
    crcs = struct.unpack_from(f"<{n}I", raw, _FIXED.size + meta_len)
    try:
        sums = Checksums(data_len, chunk, crcs)
    except InvalidArgumentError as e:
        raise CorruptDataError(f"{name}: cache entry header: {e}") from None
    return Header(header_len, data_len, sums, meta)


#: Entry meta fields and the types they must have (``block`` may also be None).
_META_TYPES: dict[str, type] = {"url": str, "key": str, "version": str, "size": int, "block": int}


def _decode_meta(raw: bytes, name: str) -> dict[str, Any]:
    """The meta JSON of an entry header, checked field by field (CorruptDataError when it is not what
    :func:`encode_header` writes: bad UTF-8, bad JSON, not an object, a field missing or of a wrong type)."""
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CorruptDataError(f"{name}: cache entry meta is not JSON: {type(e).__name__}") from None
    if not isinstance(meta, dict):
        raise CorruptDataError(f"{name}: cache entry meta is a {type(meta).__name__}, not an object")
    for field, kind in _META_TYPES.items():
        value = meta.get(field)
        if field == "block" and value is None and field in meta:
            continue
        if not isinstance(value, kind) or isinstance(value, bool) or (isinstance(value, int) and value < 0):
            raise CorruptDataError(f"{name}: cache entry meta field {field!r} is missing or bad ({value!r:.40})")
    return meta


def host_array(dst: Any) -> np.ndarray:
    """A flat writable uint8 view of host memory ``dst``."""
    if isinstance(dst, np.ndarray) and dst.dtype == np.uint8 and dst.ndim == 1 and dst.flags.writeable:
        return dst
    ref = as_buffer(dst, writable=True)
    if ref.is_cuda:
        raise UnsupportedBufferError("internal: CUDA destinations go through CachedStore._to_device")
    if ref.nbytes == 0:
        return np.empty(0, np.uint8)
    return np.ctypeslib.as_array((ctypes.c_uint8 * ref.nbytes).from_address(ref.address))


class FileReader:
    """``read_ranges`` over one open File, offsets shifted by ``base`` (the entry header)."""

    def __init__(self, f: File, base: int) -> None:
        self.f, self.base, self.url = f, base, f.path

    def read_ranges(self, key: str, offsets: Any, lengths: Any, dst: Any, dst_offsets: Any, *, exact: bool = True) -> np.ndarray:
        offs = np.asarray(offsets, np.int64) + self.base
        return self.f.read_many_into(dst, offs, lengths, dst_offsets, exact=exact).result()


class FileLock:
    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> int:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self._fd

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
