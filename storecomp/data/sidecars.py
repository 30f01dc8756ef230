"""Checksum sidecars for datasets read in place, and the full verification pass.

Formats read as they are (Megatron ``.bin``/``.idx``, token ``.npy``, ``.npy``
rows, uncompressed Zarr) carry no checksums of their own. ``storecomp
dataset index`` (:func:`index_dataset`) writes one sidecar per file the
dataset reads, ``<file>.crc32c``, in the store's sidecar format
(:class:`storecomp.store.Checksums`: crc32c per ``chunk_bytes`` chunk,
the sidecar checked by its own crc32c). Then:

* opening the dataset checks each sidecar against its file's size (a file
  replaced or truncated since it was indexed is a CorruptDataError);
* ``dataset[i]`` checks the chunks that cover the sample;
* :func:`verify` (``storecomp dataset verify``) reads every byte and
  checks every chunk.

:func:`verify` reports what it could and could not check: ``ok`` is true
only when every byte read was covered by a checksum; without them it is
``None`` and ``unchecked`` lists the files (bytes were read, nothing is
known to be bad, nothing was proven good).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, NotFoundError, StorageIOError
from ..store import Checksums
from .readers import LocalReader

if TYPE_CHECKING:
    from .datasets import Dataset

SUFFIX = ".crc32c"
DEFAULT_CHUNK_BYTES = 1 << 20
READ_BYTES = 8 << 20  # verify reads files in pieces of this many bytes


def sidecar_path(path: str) -> str:
    """Where the checksum sidecar of ``path`` lives."""
    return path + SUFFIX


def _read_sidecar(reader: Any, side: str) -> bytes | None:
    if isinstance(reader, LocalReader):  # plain open: a sidecar may be replaced by `index --replace`
        try:
            with open(side, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StorageIOError(e.errno or 5, side, None, "read") from None
    try:
        return bytes(reader.read(side, 0, reader.size(side)))
    except NotFoundError:
        return None


def load(reader: Any, files: Iterable[str]) -> dict[str, Checksums]:
    """The sidecars that exist for ``files`` read through ``reader`` (path -> Checksums).

    Raises CorruptDataError when a sidecar is damaged or describes another
    size than its file has now (replaced or truncated since it was indexed).
    """
    out: dict[str, Checksums] = {}
    for path in files:
        side = sidecar_path(path)
        raw = _read_sidecar(reader, side)
        if raw is None:
            continue
        sums = Checksums.from_bytes(raw, side)
        size = reader.size(path)
        if size != sums.size:
            raise CorruptDataError(
                f"{path}: {size} bytes, its checksum sidecar describes {sums.size} "
                "(changed since `storecomp dataset index`: restore it or index again)"
            )
        out[path] = sums
    return out


def read_checked(reader: Any, sums: Checksums | None, key: str, offset: int, length: int) -> bytes:
    """``length`` bytes of ``key`` from ``offset``, the covering chunks checked when ``sums`` is given."""
    if sums is None:
        return bytes(reader.read(key, offset, length))
    start, end = sums.covering(offset, length)
    raw = reader.read(key, start, end - start)
    if len(raw) != end - start:
        raise CorruptDataError(f"{key}: shorter than its checksum sidecar says ({start + len(raw)} of {end} bytes)")
    sums.verify(raw, start, key)
    return bytes(raw[offset - start : offset - start + length])


def index_dataset(ds: Dataset, chunk_bytes: int = DEFAULT_CHUNK_BYTES, *, replace: bool = False) -> dict[str, Any]:
    """Write a checksum sidecar for every file ``ds`` reads in place; returns a summary.

    Raises InvalidArgumentError for a storecomp shard dataset (its shards
    carry their own checksums) or when a sidecar exists and ``replace`` is
    False (a sidecar records what the data was: replacing it blesses what
    the data is now).
    """
    if not isinstance(chunk_bytes, int) or chunk_bytes <= 0:
        raise InvalidArgumentError(f"chunk_bytes must be a positive int, got {chunk_bytes!r}")
    files = ds.in_place_files
    if not files:
        raise InvalidArgumentError(f"{ds.kind} datasets carry their own checksums: nothing to index")
    if not isinstance(ds.reader, LocalReader):
        raise InvalidArgumentError("dataset index writes sidecars next to local files; this dataset is read through a store")
    if not replace:
        have = [p for p in files if os.path.exists(sidecar_path(p))]
        if have:
            raise InvalidArgumentError(f"{have[0]}: already indexed ({len(have)} sidecar(s)); pass replace=True (--replace)")
    total = 0
    for path in files:
        crcs: list[int] = []
        size = 0
        with open(path, "rb") as f:
            while piece := f.read(chunk_bytes):
                crcs.append(crc32c(piece))
                size += len(piece)
        sums = Checksums(size, chunk_bytes, tuple(crcs))
        side = sidecar_path(path)
        tmp = f"{side}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(sums.to_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, side)
        total += size
    return {"kind": ds.kind, "files": len(files), "bytes": total, "chunk_bytes": chunk_bytes, "sidecar_suffix": SUFFIX}


def verify(ds: Dataset) -> dict[str, Any]:
    """Read every byte of ``ds`` and check everything that can be checked.

    Shard datasets: each shard's SHA-256 name and every record's and value's
    crc32c. Datasets read in place: every chunk of every file that has a
    sidecar. Returns ``ok`` (True: every byte read was checked; None: some
    bytes had no checksum to check, see ``unchecked``), ``checked`` (what
    was checked, counted), ``unchecked`` (files read without a checksum),
    ``bytes_read`` and ``bytes_checked``. Raises CorruptDataError naming the
    first bad file and byte range.
    """
    if ds.kind == "records":
        return _verify_shards(ds)
    checked = {"chunks_crc32c": 0}
    unchecked, nbytes, nchecked = [], 0, 0
    for path in ds.in_place_files:
        sums = ds.checksums.get(path)
        size = ds.reader.size(path)
        step = READ_BYTES if sums is None else max(sums.chunk_bytes, READ_BYTES // sums.chunk_bytes * sums.chunk_bytes)
        pos = 0
        while pos < size:
            piece = ds.reader.read(path, pos, min(step, size - pos))
            if not piece:
                break
            if sums is not None:
                sums.verify(piece, pos, path)
                checked["chunks_crc32c"] += -(-len(piece) // sums.chunk_bytes)
                nchecked += len(piece)
            pos += len(piece)
        if pos != size:
            raise CorruptDataError(f"{path}: read {pos} bytes, the file has {size} (changed while verifying)")
        nbytes += pos
        if sums is None:
            unchecked.append(path)
    out: dict[str, Any] = {
        "ok": True if not unchecked else None,
        "kind": ds.kind,
        "samples": len(ds),
        "files": len(ds.in_place_files),
        "checked": checked,
        "unchecked": unchecked,
        "bytes_read": nbytes,
        "bytes_checked": nchecked,
    }
    if unchecked:
        out["note"] = (
            f"{len(unchecked)} of {len(ds.in_place_files)} file(s) have no checksums: every byte was read, "
            "none could be checked; run `storecomp dataset index` where the data is known good"
        )
    return out


def _verify_shards(ds: Dataset) -> dict[str, Any]:
    checked = {"shard_sha256": 0, "record_crc32c": 0, "value_crc32c": 0}
    nbytes = 0
    for part in ds.parts:
        key = part.name
        size = ds.reader.size(key)
        raw = ds.reader.read(key, 0, size)
        if len(raw) != size:
            raise CorruptDataError(f"{ds.reader.describe(key)}: read {len(raw)} of {size} bytes")
        data = np.frombuffer(raw, np.uint8)
        nbytes += size
        name = os.path.basename(key)
        if name.endswith(".scs"):
            digest = hashlib.sha256(raw).hexdigest()
            if name != f"{digest}.scs":
                raise CorruptDataError(f"{ds.reader.describe(key)}: content hash {digest} does not match its name")
            checked["shard_sha256"] += 1
        for col, pc in zip(ds.columns, part.columns, strict=True):
            if pc.crc is None:
                continue
            for i in range(part.count):
                off = pc.base + i * col.step
                if crc32c(data[off : off + col.nbytes]) != int(pc.crc[i]):
                    raise CorruptDataError(f"{ds.reader.describe(key)}: checksum mismatch in record {i} at offset {off}")
                checked["record_crc32c"] += 1
        for pv in part.vars:
            if pv.crc is None:
                continue
            for i in range(part.count):
                lo, hi = pv.values_base + int(pv.offsets[i]), pv.values_base + int(pv.offsets[i + 1])
                if crc32c(data[lo:hi]) != int(pv.crc[i]):
                    raise CorruptDataError(f"{ds.reader.describe(key)}: checksum mismatch in record {i} at offset {lo}")
                checked["value_crc32c"] += 1
    proven = all(n.endswith(".scs") for n in (p.name for p in ds.parts))
    return {
        "ok": True if proven else None,
        "kind": ds.kind,
        "samples": len(ds),
        "parts": len(ds.parts),
        "checked": checked,
        "checksums_checked": checked["record_crc32c"] + checked["value_crc32c"],
        "unchecked": [] if proven else [p.name for p in ds.parts if not p.name.endswith(".scs")],
        "bytes_read": nbytes,
        "bytes_checked": nbytes if proven else 0,
    }
