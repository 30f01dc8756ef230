"""crc32c checksums per chunk, and reads that verify them.

Every blob carries a list of crc32c values (the Castagnoli polynomial, S3's
own checksum algorithm), one per ``chunk_bytes`` chunk (4 MiB by default;
the last chunk may be short). A ranged read fetches the chunks that cover
the range, checks them and copies out the requested bytes; a mismatch
raises :class:`~storecomp.errors.CorruptDataError` naming the object and the
byte range of the bad chunk.

Sidecar format (``<key>.crc32c``, written before the object it describes;
all integers little-endian)::

    offset  size  field
    0       4     magic  b"SCC1"
    4       4     algorithm  (1 = crc32c)
    8       8     size of the object in bytes
    16      8     chunk_bytes
    24      4*n   crc32c of chunk i, n = ceil(size / chunk_bytes)
    24+4n   4     crc32c of bytes [0, 24+4n) (the sidecar's own check)

In manifests the same values appear as JSON: ``{"chunk_bytes": N,
"crc32c": [...]}`` (see :meth:`Checksums.to_json`).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, ShortReadError
from ..io import as_buffer
from .base import ObjectInfo, Store
from .keys import payload_view

DEFAULT_CHUNK_BYTES = 4 << 20
SIDECAR_SUFFIX = ".crc32c"
_MAGIC = b"SCC1"
_HEAD = struct.Struct("<4sIQQ")
_ALGO_CRC32C = 1


def _u8(data: Any) -> np.ndarray:
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        return data
    return np.frombuffer(payload_view(data), np.uint8)


@dataclass(frozen=True)
class Checksums:
    """crc32c of each ``chunk_bytes`` chunk of an object of ``size`` bytes."""

    size: int
    chunk_bytes: int
    crcs: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0 or self.size < 0:
            raise InvalidArgumentError(f"checksums: bad size={self.size} or chunk_bytes={self.chunk_bytes}")
        if len(self.crcs) != -(-self.size // self.chunk_bytes):
            raise InvalidArgumentError(f"checksums: {len(self.crcs)} crcs for {self.size} bytes in chunks of {self.chunk_bytes}")

    @classmethod
    def compute(cls, data: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Checksums:
        """Checksums of ``data`` (bytes-like) in chunks of ``chunk_bytes`` bytes."""
        if chunk_bytes <= 0:
            raise InvalidArgumentError(f"chunk_bytes must be positive, got {chunk_bytes}")
        arr = _u8(data)
        crcs = tuple(crc32c(arr[i : i + chunk_bytes]) for i in range(0, arr.size, chunk_bytes))
        return cls(arr.size, chunk_bytes, crcs)

    @functools.cached_property
    def array(self) -> np.ndarray:
        """``crcs`` as a read-only uint32 array (made once: checks of many small ranges index it)."""
        a = np.asarray(self.crcs, np.uint32)
        a.flags.writeable = False
        return a

    # -- encodings

    def to_bytes(self) -> bytes:
        body = _HEAD.pack(_MAGIC, _ALGO_CRC32C, self.size, self.chunk_bytes) + struct.pack(f"<{len(self.crcs)}I", *self.crcs)
        return body + struct.pack("<I", crc32c(body))

    @classmethod
    def from_bytes(cls, raw: bytes, name: str = "checksums") -> Checksums:
        """Parse a sidecar; CorruptDataError (naming ``name``) when it is damaged."""
        if len(raw) < _HEAD.size + 4:
            raise CorruptDataError(f"{name}: checksum sidecar truncated ({len(raw)} bytes)")
        magic, algo, size, chunk = _HEAD.unpack_from(raw)
        if magic != _MAGIC or algo != _ALGO_CRC32C or chunk <= 0:
            raise CorruptDataError(f"{name}: not a storecomp crc32c sidecar (magic {magic!r}, algorithm {algo})")
        n = -(-size // chunk)
        if len(raw) != _HEAD.size + 4 * n + 4:
            raise CorruptDataError(f"{name}: checksum sidecar has {len(raw)} bytes, expected {_HEAD.size + 4 * n + 4}")
        (own,) = struct.unpack_from("<I", raw, len(raw) - 4)
        if own != crc32c(raw[:-4]):
            raise CorruptDataError(f"{name}: checksum sidecar fails its own crc32c")
        return cls(size, chunk, struct.unpack_from(f"<{n}I", raw, _HEAD.size))

    def to_json(self) -> dict[str, Any]:
        return {"chunk_bytes": self.chunk_bytes, "crc32c": list(self.crcs)}

    @classmethod
    def from_json(cls, size: int, obj: Any, name: str = "checksums") -> Checksums:
        try:
            return cls(int(size), int(obj["chunk_bytes"]), tuple(int(c) for c in obj["crc32c"]))
        except (KeyError, TypeError, ValueError, InvalidArgumentError) as e:
            raise CorruptDataError(f"{name}: malformed checksum record: {e}") from None

    # -- ranges

    def covering(self, offset: int, length: int) -> tuple[int, int]:
        """The chunk-aligned byte range ``[start, end)`` that covers ``[offset, offset+length)``,
        clipped to the object. InvalidArgumentError for a negative range."""
        if offset < 0 or length < 0:
            raise InvalidArgumentError(f"bad range: offset={offset} length={length}")
        end = min(offset + length, self.size)
        if end <= offset:
            return offset, offset
        c = self.chunk_bytes
        return (offset // c) * c, min(-(-end // c) * c, self.size)

    def verify(self, data: Any, start: int, name: str) -> None:
        """Check ``data``, which holds the object's bytes from ``start`` (a chunk
        boundary) to a chunk boundary or the end. Raises CorruptDataError naming
        ``name`` and the byte range of the first bad chunk."""
        arr = _u8(data)
        c = self.chunk_bytes
        if start % c or start < 0:
            raise InvalidArgumentError(f"{name}: verify start {start} is not a chunk boundary ({c} bytes)")
        end = start + arr.size
        if end > self.size or (end % c and end != self.size):
            raise CorruptDataError(f"{name}: bytes [{start}, {end}) do not end on a chunk boundary of a {self.size}-byte object")
        for i, pos in enumerate(range(start, end, c)):
            got = crc32c(arr[i * c : i * c + c])
            want = self.crcs[pos // c]
            if got != want:
                stop = min(pos + c, self.size)
                raise CorruptDataError(f"{name}: crc32c mismatch in bytes [{pos}, {stop}): expected {want:08x}, got {got:08x}")


def sidecar_key(key: str) -> str:
    """The key of ``key``'s checksum sidecar."""
    return key + SIDECAR_SUFFIX


def put_checked(store: Store, key: str, data: Any, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Checksums:
    """Put ``data`` with its sidecar (sidecar first, so a visible object always has one)."""
    sums = Checksums.compute(data, chunk_bytes)
    store.put(sidecar_key(key), sums.to_bytes())
    store.put(key, data)
    return sums


def load_checksums(store: Store, key: str) -> Checksums:
    """The sidecar of ``key``: NotFoundError when it has none, CorruptDataError when damaged."""
    return Checksums.from_bytes(store.get(sidecar_key(key)), f"{store.url}/{sidecar_key(key)}")


class RangeReader(Protocol):
    """What :func:`read_verified` reads through: a Store, or anything with its ``read_ranges``."""

    url: str

    def read_ranges(
        self, key: str, offsets: Any, lengths: Any, dst: Any, dst_offsets: Any, *, exact: bool = True
    ) -> np.ndarray: ...


def read_verified(
    store: RangeReader,
    key: str,
    sums: Checksums,
    offsets: Sequence[int] | np.ndarray,
    lengths: Sequence[int] | np.ndarray,
    dst: np.ndarray,
    dst_offsets: Sequence[int] | np.ndarray,
    *,
    name: str | None = None,
    base: int = 0,
    file: Any = None,
    read_mode: str | None = None,
) -> np.ndarray:
    """Read ranges of ``key`` into host array ``dst`` (uint8), verifying every
    covering chunk. Ranges are clipped at the object's end (as ``exact=False``);
    returns bytes read per range (uint64). Chunk-aligned ranges land straight
    in ``dst``; others go through a scratch buffer. Raises CorruptDataError
    (naming the object and byte range) and never leaves unverified bytes
    reported as read. ``base``: where the object starts inside ``key`` (bytes;
    for files that carry a header before the object). ``file``: an open
    :class:`storecomp.io.File` holding ``key``: chunk-aligned ranges are then
    read from it and checked on the engine's threads as they land, in
    ``read_mode`` (a ``direct`` value of :meth:`storecomp.io.File.read_many_into`; ``"mapped"``:
    the checks computed as the bytes are copied)."""
    label = name or f"{store.url}/{key}"
    if len(offsets) == 1 and len(lengths) == 1 and len(dst_offsets) == 1:
        # One range (a large read, a get): Python ints cost less than numpy's calls.
        off, ln, at = int(offsets[0]), int(lengths[0]), int(dst_offsets[0])
        n = min(off + ln, sums.size) - off
        c = sums.chunk_bytes
        if min(off, ln, at) >= 0 and n > 0 and at + n <= dst.size and off % c == 0 and (n % c == 0 or off + n == sums.size):
            _read_direct(store, key, sums, np.array([off]), np.array([n]), dst, np.array([at]), label, base, file, read_mode)
            return np.array([n], np.uint64)
    # Vectorised, with few numpy calls: a cache hit must not pay Python per range.
    try:
        rows = np.array([offsets, lengths, dst_offsets], np.int64, ndmin=2)
    except (ValueError, TypeError, OverflowError):
        raise InvalidArgumentError(f"{label}: offsets, lengths and dst_offsets must be integer sequences of one length") from None
    if rows.ndim != 2 or rows.shape[0] != 3:
        raise InvalidArgumentError(f"{label}: offsets, lengths and dst_offsets must be 1-D")
    if rows.shape[1] == 0:
        return np.zeros(0, np.uint64)
    offs, lens, douts = rows
    if rows.min() < 0:
        i = int(np.flatnonzero((rows < 0).any(axis=0))[0])
        raise InvalidArgumentError(f"{label}: bad range: offset={int(offs[i])} length={int(lens[i])} at {int(douts[i])}")
    c, size = sums.chunk_bytes, sums.size
    end = np.minimum(offs + lens, size)  # the requested bytes, clipped at the object's end
    n = end - offs
    if int((douts + n).max()) > dst.size:
        raise InvalidArgumentError(f"{label}: a range runs past the end of the {dst.size}-byte destination")
    # Chunk-aligned ranges (start and end on chunk boundaries, or the object's end) land
    # straight in dst; the others are read whole-chunk into scratch and copied out.
    misfit = np.minimum(end % c, size - end)
    misfit += offs % c  # 0 when chunk-aligned
    if not misfit.any() and n.min() > 0:  # the usual case: every range aligned and inside the object
        _read_direct(store, key, sums, offs, n, dst, douts, label, base, file, read_mode)
        return n.view(np.uint64)
    out = np.zeros(rows.shape[1], np.uint64)
    direct = (misfit == 0) & (n > 0)
    di = np.flatnonzero(direct)
    if di.size:
        _read_direct(store, key, sums, offs[di], n[di], dst, douts[di], label, base, file, read_mode)
        out[di] = n[di]
    staged = np.flatnonzero(~direct & (n > 0))
    if staged.size:
        s0 = offs[staged] // c * c
        s1 = np.minimum(-(-end[staged] // c) * c, size)
        places = np.concatenate([[0], np.cumsum(s1 - s0)[:-1]])
        scratch = np.empty(int((s1 - s0).sum()), np.uint8)
        _read(store, key, s0 + base, s1 - s0, scratch, places, label)
        for i, s, e, p in zip(staged.tolist(), s0.tolist(), s1.tolist(), places.tolist(), strict=True):
            sums.verify(scratch[p : p + e - s], s, label)
            off, at, m = int(offs[i]), int(douts[i]), int(n[i])
            dst[at : at + m] = scratch[p + off - s : p + off - s + m]
            out[i] = m
    return out


def _read_direct(
    store: RangeReader,
    key: str,
    sums: Checksums,
    offs: np.ndarray,
    lens: np.ndarray,
    dst: np.ndarray,
    douts: np.ndarray,
    label: str,
    base: int,
    file: Any,
    read_mode: str | None = None,
) -> None:
    """Chunk-aligned ranges (int64 arrays, checked against ``dst``) straight into ``dst``, verified:
    through ``file``, each chunk's crc32c is computed by the engine's threads as it lands and
    compared here with numpy; otherwise read, then checked chunk by chunk."""
    if file is None:
        _read(store, key, offs + base, lens, dst, douts, label)
        for off, ln, at in zip(offs.tolist(), lens.tolist(), douts.tolist(), strict=True):
            sums.verify(dst[at : at + ln], off, label)
        return
    c = sums.chunk_bytes
    try:
        # Non-negative int64 values: their uint64 views are the same numbers, no copies.
        u64 = np.uint64
        fut = file.read_checked(
            as_buffer(dst), (offs + base).view(u64), lens.view(u64), douts.view(u64), crc_step=c, direct=read_mode
        )
        got = fut.checksums()
    except ShortReadError as e:
        raise CorruptDataError(f"{label}: object is shorter than its checksums say ({e})") from None
    if offs.size == 1:  # the chunks each request covers, in order
        k0 = int(offs[0]) // c
        want = sums.array[k0 : k0 + got.size]
    elif int(lens.max()) <= c:
        want = sums.array[offs // c]
    else:
        counts = -(-lens // c)
        want = sums.array[np.repeat(offs // c - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))]
    if got.tobytes() != want.tobytes():  # both uint32 (cheaper than numpy's compare for a few values)
        k = int(np.flatnonzero(got != want)[0])
        pos = _chunk_start(offs, lens, c, k)
        end, w, g = min(pos + c, sums.size), int(want[k]), int(got[k])
        raise CorruptDataError(f"{label}: crc32c mismatch in bytes [{pos}, {end}): expected {w:08x}, got {g:08x}")


def _chunk_start(offs: np.ndarray, lens: np.ndarray, c: int, k: int) -> int:
    """Byte offset in the object of the k-th chunk read by chunk-aligned ranges ``offs``/``lens``."""
    for o, n in zip(offs.tolist(), lens.tolist(), strict=True):
        m = -(-n // c)
        if k < m:
            return o + k * c
        k -= m
    raise AssertionError("chunk index past the ranges")


def _read(store: RangeReader, key: str, offs: Any, lens: Any, dst: np.ndarray, douts: Any, label: str) -> None:
    try:
        store.read_ranges(key, offs, lens, dst, douts, exact=True)
    except ShortReadError as e:
        raise CorruptDataError(f"{label}: object is shorter than its checksums say ({e})") from None


def get_verified(store: Store, key: str, sums: Checksums | None = None, offset: int = 0, length: int | None = None) -> bytes:
    """Bytes of ``key`` from ``offset`` (``length`` bytes, or to the end), verified
    against ``sums`` (default: the object's sidecar)."""
    if sums is None:
        sums = load_checksums(store, key)
    if length is None:
        length = max(0, sums.size - offset)
    buf = np.empty(max(0, min(length, sums.size - offset)), np.uint8)
    if buf.size == 0:
        return b""
    read_verified(store, key, sums, [offset], [buf.size], buf, [0])
    return buf.tobytes()


def check_size(info: ObjectInfo, sums: Checksums, name: str) -> None:
    """CorruptDataError when an object's size differs from its checksum record."""
    if info.size != sums.size:
        raise CorruptDataError(f"{name}: object has {info.size} bytes, its checksums describe {sums.size}")
