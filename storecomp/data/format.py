"""The storecomp shard format (spec: docs/dataset-format.md).

A shard holds ``N`` records of named fields::

    [records: N x stride bytes, from offset 0]          fixed-shape fields, one record after another
    [values of var field 0, aligned to 4096]            variable-length fields: values ...
    [values of var field 1, aligned to 4096] ...
    [index: u32 json_len | JSON | pad to 8 | blobs]     ... and offsets, crc32c per record
    [trailer: 32 bytes]                                  magic, index offset/size/crc32c, version

The trailer is the last 32 bytes: ``<8sQQII``: magic ``SCSHRD01``, index
offset (bytes), index size (bytes), crc32c of the index, format version.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CorruptDataError, InvalidArgumentError

MAGIC = b"SCSHRD01"
VERSION = 1
TRAILER = struct.Struct("<8sQQII")
SHARD_FORMAT = "storecomp.shard/1"
MANIFEST_FORMAT = "storecomp.dataset/1"
SECTION_ALIGN = 4096
#: Padding a record up to one of these is worth it when it costs at most 1/8 of the record.
STRIDE_ALIGNS = (4096, 512)
MAX_PAD_FRACTION = 1 / 8


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record: a numpy dtype and a per-sample shape.

    ``var`` fields are 1-D of any length (stored as values plus offsets);
    their ``shape`` is ``(-1,)``.
    """

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    var: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes of one sample of a fixed field."""
        return math.prod(self.shape) * self.dtype.itemsize  # math, not numpy: ~30x cheaper, read per batch

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype.str, "shape": list(self.shape), "var": self.var}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FieldSpec:
        return cls(str(d["name"]), np.dtype(d["dtype"]), tuple(int(x) for x in d["shape"]), bool(d.get("var", False)))


def check_field(spec: FieldSpec) -> None:
    """Refuse names, dtypes and shapes the format cannot hold (InvalidArgumentError)."""
    if not spec.name or not isinstance(spec.name, str) or spec.name.endswith("_offsets") or "/" in spec.name:
        raise InvalidArgumentError(f"field name {spec.name!r}: must be a non-empty string without '/' or an '_offsets' suffix")
    if spec.dtype.kind not in "biuf" or spec.dtype.hasobject:
        raise InvalidArgumentError(f"field {spec.name!r}: dtype {spec.dtype} is not a fixed-size numeric type")
    if spec.var and spec.shape != (-1,):
        raise InvalidArgumentError(f"field {spec.name!r}: variable-length fields are 1-D")
    if not spec.var and any(d < 0 for d in spec.shape):
        raise InvalidArgumentError(f"field {spec.name!r}: negative dimension in shape {spec.shape}")


def record_layout(fields: list[FieldSpec], align: int | str = "auto") -> tuple[dict[str, int], int]:
    """Byte offset of each fixed field in a record, and the record stride.

    Each field starts at a multiple of its item size; the stride is a
    multiple of 8. ``align="auto"`` pads the stride to 4096 or 512 when that
    costs at most 1/8 of the record (aligned records read with O_DIRECT
    without a bounce); an int pads to that multiple.
    """
    offsets: dict[str, int] = {}
    pos = 0
    for f in fields:
        if f.var:
            continue
        pos = _round_up(pos, f.dtype.itemsize)
        offsets[f.name] = pos
        pos += f.nbytes
    natural = max(8, _round_up(pos, 8))
    if align == "auto":
        stride = natural
        for a in STRIDE_ALIGNS:
            padded = _round_up(natural, a)
            if padded - natural <= natural * MAX_PAD_FRACTION:
                stride = padded
                break
    else:
        if not isinstance(align, int) or align < 8 or align % 8:
            raise InvalidArgumentError(f"record alignment must be 'auto' or a positive multiple of 8, got {align!r}")
        stride = _round_up(natural, align)
    return offsets, stride


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def encode_index(header: dict[str, Any], blobs: dict[str, np.ndarray]) -> bytes:
    """The index section: JSON header (with blob locations added) and the blobs."""
    header = dict(header)
    placed: dict[str, list[Any]] = {}
    # Blob positions are relative to the start of the blob area (after the JSON, padded to 8).
    pos = 0
    for name, arr in blobs.items():
        placed[name] = [pos, int(arr.nbytes), arr.dtype.str, int(arr.size)]
        pos = _round_up(pos + arr.nbytes, 8)
    header["blobs"] = placed
    js = json.dumps(header, sort_keys=True).encode()
    head = struct.pack("<I", len(js)) + js
    head += b"\0" * (_round_up(len(head), 8) - len(head))
    out = bytearray(head)
    for arr in blobs.values():
        out += arr.tobytes()
        out += b"\0" * (_round_up(len(out), 8) - len(out))
    return bytes(out)


def decode_index(data: bytes, where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parse an index section; CorruptDataError (naming ``where``) when malformed."""
    try:
        (n,) = struct.unpack_from("<I", data, 0)
        header = json.loads(data[4 : 4 + n])
        base = _round_up(4 + n, 8)
        blobs = {}
        for name, (off, nbytes, dt, count) in header["blobs"].items():
            start = base + int(off)
            if start + int(nbytes) > len(data):
                raise ValueError(f"blob {name} runs past the index")
            blobs[name] = np.frombuffer(data, np.dtype(dt), int(count), start)
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise CorruptDataError(f"{where}: malformed shard index ({e})") from None
    if header.get("format") != SHARD_FORMAT:
        raise CorruptDataError(f"{where}: index format {header.get('format')!r}, expected {SHARD_FORMAT!r}")
    return header, blobs


def parse_trailer(raw: bytes, size: int, where: str) -> tuple[int, int, int]:
    """(index offset, index size, index crc32c) from the last 32 bytes of a ``size``-byte shard."""
    if size < TRAILER.size or len(raw) != TRAILER.size:
        raise CorruptDataError(f"{where}: {size} bytes, too short for a shard (truncated?)")
    magic, ioff, ilen, icrc, version = TRAILER.unpack(raw)
    if magic != MAGIC:
        raise CorruptDataError(f"{where}: no shard trailer at offset {size - TRAILER.size} (truncated or not a storecomp shard)")
    if version != VERSION:
        raise CorruptDataError(f"{where}: shard format version {version}, this storecomp reads {VERSION}")
    if ioff + ilen + TRAILER.size != size:
        raise CorruptDataError(
            f"{where}: index at [{ioff}, {ioff + ilen}) does not end at the trailer (offset {size - TRAILER.size})"
        )
    return ioff, ilen, icrc
