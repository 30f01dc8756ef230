"""The chunk object: one object per chunk holding every layer's K and V.

Layout (all integers little-endian; see docs/kvcache.md)::

    [0, header_bytes)     header, zero-padded to a multiple of 4096
    [off_i, off_i+len_i)  layer i payload, off_i a multiple of 4096

Header fields, in order (``struct`` format ``_FIXED`` then one ``_LAYER``
record per layer, then a crc32c of all preceding header bytes):

    magic         4s   b"SCKV"
    version       u16  FORMAT_VERSION
    reserved      u16  0
    header_bytes  u32  size of the header region
    fingerprint   32s  ModelFingerprint.digest
    key           32s  the chunk key this object was stored under
    dtype         16s  torch dtype name, NUL padded
    tokens        u32  tokens in the chunk
    layers        u32
    kv_heads      u32
    head_dim      u32
    per layer:    offset u64, length u64, crc32c u32, reserved u32
    header_crc    u32  crc32c of every header byte before it

A layer payload is ``[2, tokens, kv_heads, head_dim]`` elements of the
dtype, C order: K for all tokens, then V. A loader may range-read one layer
(``layer_span``) without reading the others.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError
from .keys import ModelFingerprint

MAGIC = b"SCKV"
FORMAT_VERSION = 1
ALIGN = 4096
_FIXED = struct.Struct("<4sHHI32s32s16sIIII")
_LAYER = struct.Struct("<QQII")
_CRC = struct.Struct("<I")


def round_up(n: int, a: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``a`` (default 4096)."""
    return -(-n // a) * a


_round_up = round_up


@dataclass(frozen=True)
class ChunkLayout:
    """Where everything lies in an object of ``tokens`` tokens under ``fingerprint``.

    Offsets are fixed by the fingerprint and token count alone, so a loader
    can issue every range read before it has seen the header.
    """

    fingerprint: ModelFingerprint
    tokens: int

    @property
    def layer_bytes(self) -> int:
        """Bytes of one layer's payload (K and V)."""
        fp = self.fingerprint
        return 2 * self.tokens * fp.kv_heads * fp.head_dim * fp.itemsize

    @property
    def layer_stride(self) -> int:
        return _round_up(self.layer_bytes)

    @property
    def header_bytes(self) -> int:
        return _round_up(_FIXED.size + self.fingerprint.layers * _LAYER.size + _CRC.size)

    @property
    def nbytes(self) -> int:
        """Total object size in bytes (a multiple of 4096)."""
        return self.header_bytes + self.fingerprint.layers * self.layer_stride

    def layer_offset(self, i: int) -> int:
        return self.header_bytes + i * self.layer_stride

    def layer_view(self, obj: np.ndarray, i: int) -> np.ndarray:
        """The uint8 bytes of layer ``i``'s payload inside ``obj``."""
        off = self.layer_offset(i)
        return obj[off : off + self.layer_bytes]


def stored_key(obj: np.ndarray) -> bytes:
    """The chunk key recorded in an object's header (unverified: call :func:`verify` with it)."""
    return bytes(obj[44:76])


def write_header(obj: np.ndarray, layout: ChunkLayout, key: bytes, crcs: list[int]) -> None:
    """Fill ``obj[:header_bytes]`` for a payload already in place with per-layer ``crcs``."""
    fp = layout.fingerprint
    hb = layout.header_bytes
    head = bytearray(hb)
    _FIXED.pack_into(
        head,
        0,
        MAGIC,
        FORMAT_VERSION,
        0,
        hb,
        fp.digest,
        key,
        fp.dtype.encode(),
        layout.tokens,
        fp.layers,
        fp.kv_heads,
        fp.head_dim,
    )
    pos = _FIXED.size
    for i, crc in enumerate(crcs):
        _LAYER.pack_into(head, pos, layout.layer_offset(i), layout.layer_bytes, crc, 0)
        pos += _LAYER.size
    _CRC.pack_into(head, pos, crc32c(head[:pos]))
    obj[:hb] = np.frombuffer(head, np.uint8)


@dataclass(frozen=True)
class Header:
    tokens: int
    crcs: tuple[int, ...]


def read_header(head: np.ndarray, layout: ChunkLayout, key: bytes, where: str) -> Header:
    """Parse and check a header against the expected fingerprint, key and layout.

    Raises CorruptDataError naming ``where`` on any mismatch: bad magic or
    version, header checksum, fingerprint, key, shape or offsets.
    """
    fp = layout.fingerprint
    hb = layout.header_bytes
    if head.size < hb:
        raise CorruptDataError(f"{where}: header truncated ({head.size} of {hb} bytes)")
    raw = head[:hb].tobytes()
    magic, version, _, header_bytes, digest, okey, dtype, tokens, layers, kv_heads, head_dim = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC:
        raise CorruptDataError(f"{where}: not a storecomp KV chunk (magic {magic!r})")
    if version != FORMAT_VERSION:
        raise CorruptDataError(f"{where}: chunk format version {version}, this reader knows {FORMAT_VERSION}")
    end = _FIXED.size + layers * _LAYER.size if layers == fp.layers else -1
    if header_bytes != hb or end < 0:
        raise CorruptDataError(f"{where}: header size {header_bytes} / {layers} layers do not match the fingerprint")
    (stored_crc,) = _CRC.unpack_from(raw, end)
    if crc32c(raw[:end]) != stored_crc:
        raise CorruptDataError(f"{where}: header checksum mismatch")
    if digest != fp.digest:
        raise CorruptDataError(f"{where}: fingerprint mismatch (chunk of another model configuration)")
    if okey != key:
        raise CorruptDataError(f"{where}: object holds chunk {okey.hex()[:16]}..., expected {key.hex()[:16]}...")
    if (
        dtype.rstrip(b"\0").decode(errors="replace") != fp.dtype
        or tokens != layout.tokens
        or (kv_heads, head_dim) != (fp.kv_heads, fp.head_dim)
    ):
        raise CorruptDataError(f"{where}: dtype/shape in header do not match the fingerprint")
    crcs = []
    for i in range(layers):
        off, length, c, _ = _LAYER.unpack_from(raw, _FIXED.size + i * _LAYER.size)
        if off != layout.layer_offset(i) or length != layout.layer_bytes:
            raise CorruptDataError(f"{where}: layer {i} offset/length ({off}, {length}) do not match the layout")
        crcs.append(c)
    return Header(tokens, tuple(crcs))


def check_layer(obj: np.ndarray, layout: ChunkLayout, header: Header, i: int, where: str) -> None:
    """Raise CorruptDataError when layer ``i``'s payload fails its crc32c."""
    if crc32c(layout.layer_view(obj, i)) != header.crcs[i]:
        raise CorruptDataError(f"{where}: layer {i} checksum mismatch")


def verify(obj: np.ndarray, layout: ChunkLayout, key: bytes, where: str) -> None:
    """Check a whole object (header and every layer); CorruptDataError on any mismatch."""
    if obj.size != layout.nbytes:
        raise CorruptDataError(f"{where}: object is {obj.size} bytes, expected {layout.nbytes}")
    header = read_header(obj, layout, key, where)
    for i in range(layout.fingerprint.layers):
        check_layer(obj, layout, header, i, where)


def check_tokens(tokens: int) -> None:
    if tokens <= 0:
        raise InvalidArgumentError(f"a chunk holds at least one token, got {tokens}")
