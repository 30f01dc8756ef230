"""Datasets: where each sample's bytes are, for every supported layout.

A :class:`Dataset` is a list of *parts* (a shard, a token file, a set of
.npy files) with the same *columns*. A column is fixed-size bytes per
sample at ``base + local_index * step`` of one object; ``nbytes`` are read
per sample (``step == nbytes`` lets runs of consecutive samples merge into
one read; token windows overlap, so there ``step < nbytes``). Variable-length
fields are values plus offsets, the offsets held in memory.

Layouts: storecomp shards (:func:`open_dataset` on a folder with a
manifest), token streams (:class:`TokenDataset`: Megatron .bin/.idx or a 1-D
.npy), fixed-width .npy arrays (:class:`NpyDataset`) and uncompressed Zarr
arrays (:class:`ZarrDataset`), all read as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, NotFoundError, StorecompError
from ..store import Checksums, Store, validate_key
from . import _urls, sidecars
from .format import MANIFEST_FORMAT, TRAILER, FieldSpec, decode_index, parse_trailer
from .readers import LocalReader, Reader, StoreReader


@dataclass
class Column:
    """Fixed-size bytes per sample: ``fields`` are (spec, byte offset within the sample)."""

    fields: list[tuple[FieldSpec, int]]
    nbytes: int
    step: int


@dataclass
class PartColumn:
    key: str
    base: int
    crc: np.ndarray | None = None  # uint32 per sample over its nbytes


@dataclass
class PartVar:
    key: str
    values_base: int
    offsets: np.ndarray  # uint64, count + 1, relative to values_base
    crc: np.ndarray | None = None


@dataclass
class Part:
    name: str
    count: int
    columns: list[PartColumn]
    vars: list[PartVar] = field(default_factory=list)


class Dataset:
    """Samples spread over parts; see the module docstring.

    ``dataset[i]`` returns one sample as numpy arrays (convenient, not the
    fast path: the :class:`~storecomp.data.DataLoader` reads whole batches).
    """

    kind = "records"
    remote: str | None = None  # "ranges" or "cache" for datasets read through a Store

    def __init__(
        self, reader: Reader, columns: list[Column], var_fields: list[FieldSpec], parts: list[Part], fingerprint: str
    ) -> None:
        self.reader = reader
        #: Files read as they are (token, .npy, Zarr datasets): what ``storecomp dataset index`` covers.
        self.in_place_files: list[str] = []
        #: Their checksum sidecars (path -> Checksums), when indexed.
        self.checksums: dict[str, Checksums] = {}
        self.columns = columns
        self.var_fields = var_fields
        self.parts = parts
        self.fingerprint = fingerprint
        counts = np.array([p.count for p in parts], np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.num_samples = int(self.starts[-1])
        # Flattened per-part tables so a batch is located with numpy only.
        self._bases = [np.array([p.columns[c].base for p in parts], np.uint64) for c in range(len(columns))]
        self._crc = [_concat([p.columns[c].crc for p in parts]) for c in range(len(columns))]
        self._var_offsets = [_concat([p.vars[v].offsets for p in parts]) for v in range(len(var_fields))]
        self._var_starts = [np.concatenate([[0], np.cumsum([p.count + 1 for p in parts])]).astype(np.int64) for _ in var_fields]
        self._var_bases = [np.array([p.vars[v].values_base for p in parts], np.uint64) for v in range(len(var_fields))]
        self._var_crc = [_concat([p.vars[v].crc for p in parts]) for v in range(len(var_fields))]
        self.max_var_nbytes = [
            max((int(np.diff(p.vars[v].offsets).max()) if p.count else 0) for p in parts) if parts else 0
            for v in range(len(var_fields))
        ]

    def __len__(self) -> int:
        return self.num_samples

    @property
    def fields(self) -> list[FieldSpec]:
        return [f for c in self.columns for f, _ in c.fields] + list(self.var_fields)

    def keys(self) -> list[str]:
        """The reader's keys of every object that holds sample bytes (each once, in part order)."""
        keys = [c.key for p in self.parts for c in p.columns] + [v.key for p in self.parts for v in p.vars]
        return list(dict.fromkeys(keys))

    @property
    def sample_nbytes(self) -> int:
        """Fixed bytes read per sample (variable-length fields not counted)."""
        return sum(c.nbytes for c in self.columns)

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(part, local index) of each global sample index (IndexError when out of range)."""
        idx = np.asarray(indices, np.int64)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"sample index out of range [0, {self.num_samples})")
        part = np.searchsorted(self.starts, idx, side="right") - 1
        return part, idx - self.starts[part]

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        part, local = self.locate(np.array([i]))
        p, li = self.parts[int(part[0])], int(local[0])
        out: dict[str, np.ndarray] = {}
        for col, pc in zip(self.columns, p.columns, strict=True):
            raw = np.frombuffer(self._read(pc.key, pc.base + li * col.step, col.nbytes), np.uint8)
            for spec, off in col.fields:
                out[spec.name] = raw[off : off + spec.nbytes].view(spec.dtype).reshape(spec.shape).copy()
        for spec, pv in zip(self.var_fields, p.vars, strict=True):
            lo, hi = int(pv.offsets[li]), int(pv.offsets[li + 1])
            out[spec.name] = np.frombuffer(self._read(pv.key, pv.values_base + lo, hi - lo), spec.dtype).copy()
        return out

    def _read(self, key: str, offset: int, length: int) -> bytes:
        """Bytes of ``key``; the covering chunks checked when the file has a checksum sidecar."""
        return sidecars.read_checked(self.reader, self.checksums.get(key), key, offset, length)

    def _attach_checksums(self, files: list[str]) -> None:
        """Note the files read in place and load their sidecars (CorruptDataError when one disagrees)."""
        self.in_place_files = files
        self.checksums = sidecars.load(self.reader, files)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (what ``storecomp dataset inspect`` prints)."""
        return {
            "kind": self.kind,
            "num_samples": self.num_samples,
            "parts": len(self.parts),
            "fields": [f.to_json() for f in self.fields],
            "sample_nbytes": self.sample_nbytes,
            "fingerprint": self.fingerprint,
        }


def _concat(arrays: Sequence[np.ndarray | None]) -> np.ndarray | None:
    if not arrays or any(a is None for a in arrays):
        return None
    return np.concatenate(arrays)  # type: ignore[arg-type]


# ---------------------------------------------------------------- storecomp shards


def _open_shards(reader: Reader, root: str, manifest_key: str) -> Dataset:
    raw = reader.read(manifest_key, 0, reader.size(manifest_key))
    try:
        manifest = json.loads(raw)
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        fields = [FieldSpec.from_json(f) for f in manifest["fields"]]
        shards = manifest["shards"]
        stride = int(manifest["record_stride"])
        offsets = {f["name"]: int(f.get("offset", -1)) for f in manifest["fields"]}
        keys = [_shard_key(s["key"]) for s in shards]
    except StorecompError as e:
        raise CorruptDataError(f"{reader.describe(manifest_key)}: malformed manifest ({e})") from None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # RecursionError: deeply nested JSON
        raise CorruptDataError(f"{reader.describe(manifest_key)}: malformed manifest ({type(e).__name__}: {e})") from None
    fixed = [f for f in fields if not f.var]
    var = [f for f in fields if f.var]
    parts: list[Part] = []
    for s, key in zip(shards, keys, strict=True):
        where = reader.join(root, key)
        try:
            part, field_offsets = _open_shard(reader, where, s, fields, stride)
        except StorecompError:
            raise
        except (KeyError, TypeError, ValueError) as e:  # a field missing from the manifest entry or the shard index
            raise CorruptDataError(f"{reader.describe(where)}: malformed shard entry or index ({e!r})") from None
        if field_offsets != {k: v for k, v in offsets.items() if k in field_offsets}:
            raise CorruptDataError(f"{reader.describe(part.name)}: field offsets differ from the manifest's")
        parts.append(part)
    columns = [Column([(f, offsets[f.name]) for f in fixed], stride, stride)] if fixed else []
    if not fixed:
        for p in parts:
            p.columns = []
    fp = hashlib.sha256(raw).hexdigest()
    return Dataset(reader, columns, var, parts, fp)


def _shard_key(key: Any) -> str:
    """A manifest's shard key: relative, inside the dataset (no absolute path, no '..')."""
    if not isinstance(key, str):
        raise TypeError(f"shard key {key!r} is not a string")
    try:
        return validate_key(key)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"shard key {key!r} leaves the dataset folder (absolute or '..'): refused") from None


def _open_shard(
    reader: Reader, key: str, entry: dict[str, Any], fields: list[FieldSpec], stride: int
) -> tuple[Part, dict[str, int]]:
    where = reader.describe(key)
    size = reader.size(key)
    if size != int(entry["size"]):
        raise CorruptDataError(f"{where}: {size} bytes, the manifest says {entry['size']} (truncated or replaced shard)")
    ioff, ilen, icrc = parse_trailer(reader.read(key, size - TRAILER.size, TRAILER.size), size, where)
    index = reader.read(key, ioff, ilen)
    if crc32c(index) != icrc:
        raise CorruptDataError(f"{where}: shard index checksum mismatch at offset {ioff}")
    header, blobs = decode_index(index, where)
    n = int(header.get("num_records", -1))
    if n != int(entry["num_records"]) or int(header.get("record_stride", -1)) != stride:
        raise CorruptDataError(f"{where}: index says {n} records of stride {header.get('record_stride')}, the manifest disagrees")
    got = [FieldSpec.from_json(f) for f in header["fields"]]
    if got != fields:
        raise CorruptDataError(f"{where}: shard fields differ from the manifest's")
    offsets = {f["name"]: int(f["offset"]) for f in header["fields"] if not f.get("var")}
    has_fixed = any(not f.var for f in fields)
    if has_fixed and n * stride > ioff:
        raise CorruptDataError(f"{where}: {n} records of {stride} bytes overlap the index at offset {ioff}")
    columns = [PartColumn(key, 0, _blob(blobs, "record_crc", n, where))] if has_fixed else []
    pvars = []
    vjson = {v["name"]: v for v in header["var_fields"]}
    for f in fields:
        if not f.var:
            continue
        v = vjson.get(f.name)
        if v is None:
            raise CorruptDataError(f"{where}: no values section for field {f.name!r}")
        offs = _blob(blobs, f"offsets/{f.name}", n + 1, where)
        assert offs is not None
        vbase, vlen = int(v["values_offset"]), int(v["values_nbytes"])
        if vbase + vlen > ioff or (n and (int(offs[-1]) != vlen or np.any(np.diff(offs.astype(np.int64)) < 0))):
            raise CorruptDataError(f"{where}: offsets of field {f.name!r} do not fit its {vlen}-byte values section at {vbase}")
        pvars.append(PartVar(key, vbase, offs, _blob(blobs, f"crc/{f.name}", n, where)))
    return Part(key, n, columns, pvars), offsets


def _blob(blobs: dict[str, np.ndarray], name: str, count: int, where: str) -> np.ndarray | None:
    arr = blobs.get(name)
    if arr is None or arr.size != count:
        raise CorruptDataError(f"{where}: index blob {name!r} missing or of the wrong length")
    return arr


# ---------------------------------------------------------------- token streams

#: Megatron's MMIDIDX dtype codes (megatron/core/datasets/indexed_dataset.py).
MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16}
MEGATRON_MAGIC = b"MMIDIDX\x00\x00"


def read_megatron_index(data: bytes, where: str) -> tuple[np.dtype[Any], np.ndarray, np.ndarray, np.ndarray]:
    """(dtype, sizes, pointers, document index) from a Megatron .idx file's bytes.

    Layout: magic ``MMIDIDX\\0\\0`` (9 bytes), u64 version (1), u8 dtype
    code, u64 sequence count S, u64 document count D, int32 sizes[S] (tokens),
    int64 pointers[S] (byte offsets into .bin), int64 doc_idx[D]. Raises
    CorruptDataError when the bytes do not match.
    """
    try:
        if data[:9] != MEGATRON_MAGIC:
            raise ValueError("bad magic (not an MMIDIDX index)")
        (version,) = struct.unpack_from("<Q", data, 9)
        if version != 1:
            raise ValueError(f"version {version}, expected 1")
        (code,) = struct.unpack_from("<B", data, 17)
        dtype = np.dtype(MEGATRON_DTYPES[code])
        s, d = struct.unpack_from("<QQ", data, 18)
        pos = 34
        sizes = np.frombuffer(data, np.int32, s, pos)
        pointers = np.frombuffer(data, np.int64, s, pos + 4 * s)
        doc_idx = np.frombuffer(data, np.int64, d, pos + 12 * s)
    except (ValueError, KeyError, OverflowError, struct.error) as e:  # OverflowError: counts past what numpy can hold
        raise CorruptDataError(f"{where}: not a readable Megatron index ({e})") from None
    return dtype, sizes, pointers, doc_idx


class TokenDataset(Dataset):
    """Windows of ``seq_len + 1`` tokens over one or more token streams.

    Each file is one stream (a Megatron .bin with its .idx, or a 1-D .npy);
    sample ``i`` of a stream is tokens ``[i*seq_len, i*seq_len + seq_len + 1)``
    (consecutive windows share one token: inputs and shifted labels). Windows
    never cross files. Field name: ``tokens``.
    """

    kind = "tokens"

    def __init__(self, paths: str | Sequence[str], seq_len: int, *, reader: Reader | None = None) -> None:
        if isinstance(paths, str | os.PathLike):
            paths = [os.fspath(paths)]
        if not isinstance(seq_len, int) or seq_len <= 0:
            raise InvalidArgumentError(f"seq_len must be a positive int, got {seq_len!r}")
        if not paths:
            raise InvalidArgumentError("no token files given")
        rd: Reader = reader or LocalReader()
        parts, dtype = [], None
        ident = []
        for path in paths:
            key, base, ntok, dt = _token_stream(rd, os.fspath(path))
            if dtype is not None and dt != dtype:
                raise InvalidArgumentError(f"{path}: tokens of dtype {dt}, the other files have {dtype}")
            dtype = dt
            count = max(0, (ntok - 1) // seq_len)
            parts.append(Part(key, count, [PartColumn(key, base)]))
            ident.append(f"{key}:{rd.size(key)}:{ntok}")
        assert dtype is not None
        spec = FieldSpec("tokens", dtype, (seq_len + 1,))
        col = Column([(spec, 0)], (seq_len + 1) * dtype.itemsize, seq_len * dtype.itemsize)
        fp = hashlib.sha256(json.dumps([ident, seq_len]).encode()).hexdigest()
        super().__init__(rd, [col], [], parts, fp)
        self.seq_len = seq_len
        files = []
        for path in paths:
            stem, ext = os.path.splitext(os.fspath(path))
            files += [stem + ".bin", stem + ".idx"] if ext in (".bin", ".idx") else [os.fspath(path)]
        self._attach_checksums(files)


def _token_stream(reader: Reader, path: str) -> tuple[str, int, int, np.dtype[Any]]:
    """(data key, byte offset of token 0, token count, dtype) of one token file."""
    stem, ext = os.path.splitext(path)
    if ext in (".bin", ".idx"):
        idx_key, bin_key = stem + ".idx", stem + ".bin"
        dtype, sizes, pointers, _ = read_megatron_index(reader.read(idx_key, 0, reader.size(idx_key)), idx_key)
        bin_size = reader.size(bin_key)
        ntok = int(sizes.astype(np.int64).sum())
        first = int(pointers[0]) if pointers.size else 0
        if first + ntok * dtype.itemsize > bin_size:
            raise CorruptDataError(
                f"{bin_key}: {bin_size} bytes, its index describes {ntok} tokens from offset {first} (truncated?)"
            )
        if pointers.size and np.any(np.diff(pointers) != sizes[:-1].astype(np.int64) * dtype.itemsize):
            raise InvalidArgumentError(f"{idx_key}: sequences are not stored back to back; not a single token stream")
        return bin_key, first, ntok, dtype
    if ext == ".npy":
        header = reader.read(path, 0, min(4096, reader.size(path)))
        dtype, shape, base = _npy_header(header, path)
        if len(shape) != 1 or dtype.kind not in "iu":
            raise InvalidArgumentError(f"{path}: a token file is a 1-D integer array, got {dtype} {shape}")
        if base + shape[0] * dtype.itemsize > reader.size(path):
            raise CorruptDataError(f"{path}: shorter than its header says (truncated?)")
        return path, base, int(shape[0]), dtype
    raise InvalidArgumentError(f"{path}: token files are Megatron .bin/.idx or .npy")


def _npy_header(header: bytes, where: str) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    import io
    import warnings

    f = io.BytesIO(header)
    try:
        with warnings.catch_warnings():  # numpy warns about Python 2 headers, and about escapes in garbage
            warnings.simplefilter("ignore")
            major, _ = np.lib.format.read_magic(f)
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as e:  # numpy's header parser raises ValueError, EOFError, SyntaxError, tokenize.TokenError...
        why = " ".join(str(e).split())
        raise CorruptDataError(f"{where}: not a readable .npy header ({type(e).__name__}: {why})") from None
    if fortran:
        raise InvalidArgumentError(f"{where}: Fortran-ordered .npy cannot be read by rows; save it C-ordered")
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InvalidArgumentError(f"{where}: dtype {dtype} is not a fixed-size numeric type")
    return dtype, tuple(int(x) for x in shape), f.tell()


# ---------------------------------------------------------------- npy and zarr


class NpyDataset(Dataset):
    """Fields from .npy files as they are: row ``i`` of each file is sample ``i``.

    ``files`` maps field names to .npy paths (C order, same first dimension).
    """

    kind = "npy"

    def __init__(self, files: Mapping[str, str], *, reader: Reader | None = None) -> None:
        if not files:
            raise InvalidArgumentError("no .npy files given")
        rd: Reader = reader or LocalReader()
        columns, pcols, n, ident = [], [], None, []
        for name, path in files.items():
            path = os.fspath(path)
            dtype, shape, base = _npy_header(rd.read(path, 0, min(4096, rd.size(path))), path)
            if not shape:
                raise InvalidArgumentError(f"{path}: a 0-d array has no samples")
            if n is not None and shape[0] != n:
                raise InvalidArgumentError(f"{path}: {shape[0]} rows, the other files have {n}")
            n = shape[0]
            spec = FieldSpec(name, dtype, shape[1:])
            if base + n * spec.nbytes > rd.size(path):
                raise CorruptDataError(f"{path}: shorter than its header says (truncated?)")
            columns.append(Column([(spec, 0)], spec.nbytes, spec.nbytes))
            pcols.append(PartColumn(path, base))
            ident.append([name, path, rd.size(path), list(shape), dtype.str])
        fp = hashlib.sha256(json.dumps(ident).encode()).hexdigest()
        super().__init__(rd, columns, [], [Part("npy", int(n or 0), pcols)], fp)
        self._attach_checksums([pc.key for pc in pcols])


class ZarrDataset(Dataset):
    """An uncompressed Zarr array (v2 or v3, chunked along axis 0 only), read chunk files as they are.

    Each chunk file is one part; row ``i`` is sample ``i`` of field ``name``.
    Raises InvalidArgumentError for compressed or otherwise unreadable layouts
    (convert those with ``storecomp dataset convert``).
    """

    kind = "zarr"

    def __init__(self, path: str, name: str = "x") -> None:
        from ..optional import require

        zarr = require("zarr", f"{path}: reading Zarr")
        try:
            arr = zarr.open_array(path, mode="r")
            meta: Any = arr.metadata
        except (StorecompError, FileNotFoundError):
            raise
        except Exception as e:  # zarr's errors for bad metadata are many (JSON, Unicode, validation): one at this boundary
            why = " ".join(str(e).split())
            raise CorruptDataError(f"{path}: not a readable Zarr array ({type(e).__name__}: {why})") from None
        if arr.ndim < 1 or any(c != s for c, s in zip(arr.chunks[1:], arr.shape[1:], strict=True)):
            raise InvalidArgumentError(f"{path}: only arrays chunked along axis 0 can be read in place")
        codecs = [type(c).__name__ for c in getattr(meta, "codecs", ())] if getattr(meta, "zarr_format", 2) == 3 else []
        compressor = getattr(meta, "compressor", None)
        if compressor is not None or any(c != "BytesCodec" for c in codecs) or getattr(meta, "filters", None):
            raise InvalidArgumentError(f"{path}: compressed or filtered Zarr chunks cannot be read in place (convert instead)")
        dtype = np.dtype(arr.dtype)
        if dtype.byteorder == ">" or (
            codecs and getattr(meta.codecs[0], "endian", None) not in (None,) and str(meta.codecs[0].endian.value) != "little"
        ):
            raise InvalidArgumentError(f"{path}: big-endian chunks cannot be read in place")
        spec = FieldSpec(name, dtype.newbyteorder("<") if dtype.itemsize > 1 else dtype, tuple(arr.shape[1:]))
        rows = int(arr.chunks[0])
        nchunks = -(-int(arr.shape[0]) // rows)
        parts = []
        for k in range(nchunks):
            key = _zarr_chunk_path(path, meta, k, arr.ndim)
            count = min(rows, int(arr.shape[0]) - k * rows)
            if not os.path.exists(key):
                raise InvalidArgumentError(f"{path}: chunk {k} is missing (fill value not stored); convert instead")
            parts.append(Part(key, count, [PartColumn(key, 0)]))
        fp = hashlib.sha256(json.dumps([path, list(arr.shape), dtype.str]).encode()).hexdigest()
        super().__init__(LocalReader(), [Column([(spec, 0)], spec.nbytes, spec.nbytes)], [], parts, fp)
        meta_files = [os.path.join(path, m) for m in ("zarr.json", ".zarray", ".zattrs") if os.path.exists(os.path.join(path, m))]
        self._attach_checksums(meta_files + [p.name for p in parts])


def _zarr_chunk_path(path: str, meta: Any, k: int, ndim: int) -> str:
    coords = [str(k)] + ["0"] * (ndim - 1)
    if getattr(meta, "zarr_format", 2) == 3:
        enc = meta.chunk_key_encoding
        sep = getattr(enc, "separator", "/")
        prefix = ["c"] if type(enc).__name__ == "DefaultChunkKeyEncoding" else []
        return os.path.join(path, sep.join(prefix + coords))
    sep = getattr(meta, "dimension_separator", ".") or "."
    return os.path.join(path, sep.join(coords))


# ---------------------------------------------------------------- opening


def open_dataset(
    source: str | os.PathLike[str] | Mapping[str, str] | Sequence[str] | Store,
    *,
    seq_len: int | None = None,
    field: str = "x",
    store_options: Mapping[str, Any] | None = None,
    remote: str = "ranges",
    cache_dir: str | os.PathLike[str] | None = None,
    cache_bytes: int = 64 << 30,
) -> Dataset:
    """Open a dataset by what it is.

    * a folder with ``manifest.json``: storecomp shards;
    * ``*.bin``/``*.idx`` (Megatron) or ``*.npy`` with ``seq_len``: a token stream;
      a list of such files: several streams;
    * a ``*.npy`` without ``seq_len``: field ``field``, one sample per row; a
      mapping of field name to .npy path: several fields;
    * a Zarr array folder (uncompressed, chunked along axis 0);
    * a remote shard dataset: a URL (``s3://bucket/prefix``, ``sc://mount/path``,
      any fsspec URL; resolved through the namespace, or by
      :func:`storecomp.store.open_store` with ``store_options``) or a
      :class:`~storecomp.store.base.Store` whose root holds the manifest.
      ``remote="ranges"``: each batch is concurrent ranged GETs straight into
      its slot; ``remote="cache"``: whole shards go through the node-local
      cache tier (:class:`~storecomp.store.CachedStore` in ``cache_dir``, at
      most ``cache_bytes``) and are read from there.

    Raises NotFoundError, InvalidArgumentError or CorruptDataError.
    """
    if remote not in ("ranges", "cache"):
        raise InvalidArgumentError(f"remote must be 'ranges' or 'cache', got {remote!r}")
    if isinstance(source, Store):
        return _open_remote(source, "", remote, cache_dir, cache_bytes)
    if isinstance(source, Mapping):
        return NpyDataset(source)
    if not isinstance(source, str | os.PathLike):
        if seq_len is None:
            raise InvalidArgumentError("several files form a token dataset: pass seq_len")
        return TokenDataset([os.fspath(p) for p in source], seq_len)
    src = os.fspath(source)
    if _urls.is_store_url(src):
        if store_options is None and remote == "ranges":
            from ..store import placed_reader

            placed = placed_reader(src)
            if placed is not None:  # sc://mount/name names a snapshot: read its nearest complete copy
                ds = _open_shards(placed, "", "manifest.json")
                ds.remote = remote
                return ds
        store, prefix, _ = _urls.resolve(src, store_options)  # the store lives as long as the dataset reads it
        return _open_remote(store, prefix, remote, cache_dir, cache_bytes)
    src = _urls.local_path(src)
    if os.path.isdir(src):
        manifest = os.path.join(src, "manifest.json")
        if os.path.exists(manifest):
            return _open_shards(LocalReader(), src, manifest)
        if any(os.path.exists(os.path.join(src, m)) for m in ("zarr.json", ".zarray")):
            return ZarrDataset(src, field)
        raise InvalidArgumentError(f"{src}: a folder without manifest.json or Zarr metadata is not a dataset")
    if not os.path.exists(src) and not os.path.exists(os.path.splitext(src)[0] + ".idx"):
        raise NotFoundError(2, src, None, "open")
    if src.endswith((".bin", ".idx")) or (src.endswith(".npy") and seq_len is not None):
        if seq_len is None:
            raise InvalidArgumentError(f"{src}: a token stream needs seq_len")
        return TokenDataset(src, seq_len)
    if src.endswith(".npy"):
        return NpyDataset({field: src})
    raise InvalidArgumentError(f"{src}: unknown dataset layout (expected a shard folder, .bin/.idx, .npy or Zarr)")


def _open_remote(store: Store, prefix: str, remote: str, cache_dir: Any, cache_bytes: int) -> Dataset:
    if remote == "cache":
        if cache_dir is None:
            raise InvalidArgumentError("remote='cache' needs cache_dir (a node-local folder for whole shards)")
        from ..store import CachedStore, EncryptedStore

        if isinstance(store, EncryptedStore):  # the cache goes inside the encryption: it holds ciphertext
            store = store.over(CachedStore(store.inner, cache_dir, cache_bytes))
        else:
            store = CachedStore(store, cache_dir, cache_bytes)
    reader = StoreReader(store)
    prefix = prefix.rstrip("/")
    ds = _open_shards(reader, prefix, reader.join(prefix, "manifest.json"))
    ds.remote = remote
    return ds
