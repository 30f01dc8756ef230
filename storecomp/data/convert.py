"""Converters into the storecomp shard format, and a full verification pass.

Sources: Parquet (pyarrow), folders of .npy files, .npz files, Zarr arrays
or groups, safetensors files and WebDataset tar files. Each converter
streams the source in pieces of about ``chunk_rows`` samples into a
:class:`~storecomp.data.DatasetWriter` and returns the manifest; bad input
raises InvalidArgumentError and publishes nothing.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, NotFoundError
from ..optional import require
from .datasets import Dataset, open_dataset
from .writer import DatasetWriter

FORMATS = ("parquet", "npy", "npz", "zarr", "safetensors", "wds")


def detect_format(src: str) -> str:
    """The source format of ``src`` from its name (InvalidArgumentError when unknown)."""
    if os.path.isdir(src):
        if any(os.path.exists(os.path.join(src, m)) for m in ("zarr.json", ".zarray", ".zgroup")):
            return "zarr"
        if any(n.endswith(".npy") for n in os.listdir(src)):
            return "npy"
        if any(n.endswith(".parquet") for n in os.listdir(src)):
            return "parquet"
    for ext, fmt in ((".parquet", "parquet"), (".npz", "npz"), (".safetensors", "safetensors"), (".tar", "wds")):
        if src.endswith(ext):
            return fmt
    raise InvalidArgumentError(f"{src}: cannot tell the source format; pass one of {FORMATS}")


def convert(
    src: str, dst: str, fmt: str | None = None, *, shard_bytes: int = 256 << 20, chunk_rows: int = 4096
) -> dict[str, Any]:
    """Convert ``src`` (format ``fmt`` or detected) into a shard dataset at ``dst``; returns the manifest."""
    if not os.path.exists(src):
        raise NotFoundError(2, src, None, "open")
    fmt = fmt or detect_format(src)
    readers = {
        "parquet": _parquet_chunks,
        "npy": _npy_chunks,
        "npz": _npz_chunks,
        "zarr": _zarr_chunks,
        "safetensors": _safetensors_chunks,
        "wds": _wds_chunks,
    }
    if fmt not in readers:
        raise InvalidArgumentError(f"unknown source format {fmt!r}; one of {FORMATS}")
    writer = DatasetWriter(dst, shard_bytes=shard_bytes, metadata={"converted_from": fmt, "source": os.path.abspath(src)})
    try:
        for chunk in readers[fmt](src, chunk_rows):
            writer.write_batch(chunk)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def _parquet_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    pa = require("pyarrow", "converting Parquet")
    pq = require("pyarrow.parquet", "converting Parquet")

    files = sorted(os.path.join(src, n) for n in os.listdir(src) if n.endswith(".parquet")) if os.path.isdir(src) else [src]
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            out: dict[str, Any] = {}
            for name, col in zip(batch.schema.names, batch.columns, strict=True):
                t = col.type
                if col.null_count:
                    raise InvalidArgumentError(f"{path}: column {name!r} has nulls; fill them before converting")
                if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
                    out[name] = col.to_numpy(zero_copy_only=False)
                elif pa.types.is_fixed_size_list(t):
                    flat = col.flatten().to_numpy(zero_copy_only=False)
                    out[name] = flat.reshape(len(col), t.list_size)
                elif pa.types.is_list(t) or pa.types.is_large_list(t):
                    out[name] = [np.asarray(v) for v in col.to_numpy(zero_copy_only=False)]
                elif pa.types.is_binary(t) or pa.types.is_string(t) or pa.types.is_large_binary(t) or pa.types.is_large_string(t):
                    out[name] = [np.frombuffer(v if isinstance(v, bytes) else v.encode(), np.uint8) for v in col.to_pylist()]
                else:
                    raise InvalidArgumentError(f"{path}: column {name!r} of type {t} has no storecomp field type")
            yield out


def _rows(arrays: dict[str, Any], chunk_rows: int, where: str) -> Iterator[dict[str, Any]]:
    """Slices of arrays that share their first dimension."""
    n = {k: int(a.shape[0]) if getattr(a, "ndim", 0) else -1 for k, a in arrays.items()}
    if not arrays or len(set(n.values())) != 1 or -1 in n.values():
        raise InvalidArgumentError(f"{where}: arrays must share their first (sample) dimension, got {n}")
    total = next(iter(n.values()))
    for start in range(0, total, chunk_rows):
        yield {k: np.asarray(a[start : start + chunk_rows]) for k, a in arrays.items()}
    if total == 0:
        yield {k: np.asarray(a[:0]) for k, a in arrays.items()}


def _npy_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    names = sorted(n for n in os.listdir(src) if n.endswith(".npy"))
    arrays = {n[:-4]: np.load(os.path.join(src, n), mmap_mode="r") for n in names}
    yield from _rows(arrays, chunk_rows, src)


def _npz_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    yield from _rows(arrays, chunk_rows, src)


def _zarr_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    zarr = require("zarr", "converting Zarr")
    node = zarr.open(src, mode="r")
    if isinstance(node, zarr.Array):
        arrays: dict[str, Any] = {"x": node}
    else:
        arrays = {name: arr for name, arr in node.arrays()}
    yield from _rows(arrays, chunk_rows, src)


def _safetensors_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    safe_open = require("safetensors", "converting safetensors").safe_open

    with safe_open(src, framework="np") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    yield from _rows(arrays, chunk_rows, src)


def _wds_chunks(src: str, chunk_rows: int) -> Iterator[dict[str, Any]]:
    """WebDataset: files ``<key>.<ext>`` grouped by key (in tar order); each extension a byte field."""
    fields: list[str] | None = None
    buf: dict[str, list[np.ndarray]] = {}
    count = 0

    def samples() -> Iterator[tuple[str, dict[str, bytes]]]:
        key, cur = None, {}
        with tarfile.open(src) as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = os.path.basename(m.name)
                k, _, ext = base.partition(".")
                k = os.path.join(os.path.dirname(m.name), k)
                if key is not None and k != key:
                    yield key, cur
                    cur = {}
                key = k
                f = tar.extractfile(m)
                assert f is not None
                cur[ext] = f.read()
        if key is not None:
            yield key, cur

    for key, sample in samples():
        if fields is None:
            fields = sorted(sample)
            buf = {f: [] for f in fields}
        if sorted(sample) != fields:
            raise InvalidArgumentError(f"{src}: sample {key!r} has files {sorted(sample)}, the first sample had {fields}")
        for f in fields:
            buf[f].append(np.frombuffer(sample[f], np.uint8))
        count += 1
        if count % chunk_rows == 0:
            yield dict(buf)
            buf = {f: [] for f in fields}
    if fields is None:
        raise InvalidArgumentError(f"{src}: no samples in the tar file")
    if any(buf.values()):
        yield dict(buf)


def verify(ds: Dataset | str) -> dict[str, Any]:
    """Read every byte of a shard dataset and check it: shard SHA-256 names, record and value crc32c.

    Returns a summary; raises CorruptDataError naming the first bad shard,
    record and offset.
    """
    if isinstance(ds, str):
        ds = open_dataset(ds)
    if ds.kind != "records":
        # Layouts read in place carry no checksums: opening them checked their headers and sizes.
        return {"ok": True, "samples": len(ds), "parts": len(ds.parts), "checksums_checked": 0, "bytes_read": 0}
    checked = 0
    nbytes = 0
    for part in ds.parts:
        key = part.name
        size = ds.reader.size(key)
        raw = ds.reader.read(key, 0, size)
        data = np.frombuffer(raw, np.uint8)
        nbytes += size
        name = os.path.basename(key)
        if name.endswith(".scs"):
            digest = hashlib.sha256(raw).hexdigest()
            if name != f"{digest}.scs":
                raise CorruptDataError(f"{ds.reader.describe(key)}: content hash {digest} does not match its name")
        for col, pc in zip(ds.columns, part.columns, strict=True):
            if pc.crc is None:
                continue
            for i in range(part.count):
                off = pc.base + i * col.step
                if crc32c(data[off : off + col.nbytes]) != int(pc.crc[i]):
                    raise CorruptDataError(f"{ds.reader.describe(key)}: checksum mismatch in record {i} at offset {off}")
                checked += 1
        for pv in part.vars:
            if pv.crc is None:
                continue
            for i in range(part.count):
                lo, hi = pv.values_base + int(pv.offsets[i]), pv.values_base + int(pv.offsets[i + 1])
                if crc32c(data[lo:hi]) != int(pv.crc[i]):
                    raise CorruptDataError(f"{ds.reader.describe(key)}: checksum mismatch in record {i} at offset {lo}")
                checked += 1
    return {"ok": True, "samples": len(ds), "parts": len(ds.parts), "checksums_checked": checked, "bytes_read": nbytes}
