"""Writing datasets in the storecomp shard format.

>>> from storecomp.data import write_dataset
>>> write_dataset("/data/ds", {"x": np.zeros((1000, 64), np.float32), "y": np.arange(1000)})

The destination is a local folder or any store URL (``s3://bucket/ds``,
``sc://mount/ds``, fsspec URLs): ``write_dataset("s3://bucket/ds", ...)``.
Nothing is visible until the whole dataset is written: shards go to a
temporary folder (for a store: on this machine), are named by their
content hash (renamed, or uploaded with put-if-absent), and the manifest
is published last, atomically; readers open a dataset only through its
manifest. Bad input (a field whose shape or dtype changes,
an unsupported dtype) is refused with InvalidArgumentError and nothing is
published.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..crc import crc32c
from ..errors import (
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    StorecompError,
    VersionChangedError,
    from_errno,
)
from ..store import Store
from . import _urls
from .format import (
    MAGIC,
    MANIFEST_FORMAT,
    SECTION_ALIGN,
    SHARD_FORMAT,
    TRAILER,
    VERSION,
    FieldSpec,
    check_field,
    encode_index,
    record_layout,
)

MANIFEST_NAME = "manifest.json"
SHARD_DIR = "shards"
_SHARD_ATTEMPTS = 3  # turns to place a shard over objects that others replace meanwhile


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(value), np.uint8)
    if isinstance(value, str):
        return np.frombuffer(value.encode(), np.uint8)
    return np.asarray(value)


def infer_fields(sample: Mapping[str, Any], var: Sequence[str] = ()) -> list[FieldSpec]:
    """Field specs from one sample: arrays are fixed fields, bytes/str (or names in ``var``) variable-length."""
    out = []
    for name, value in sample.items():
        arr = _to_numpy(value)
        if name in var or isinstance(value, bytes | bytearray | memoryview | str):
            out.append(FieldSpec(name, arr.dtype, (-1,), var=True))
        else:
            out.append(FieldSpec(name, arr.dtype, tuple(arr.shape)))
    return out


def _infer_column_fields(columns: Mapping[str, Any], var: Sequence[str]) -> list[FieldSpec]:
    """Field specs from columns: arrays of shape (n, *shape) are fixed, lists of 1-D arrays variable-length."""
    out = []
    for name, value in columns.items():
        if name in var or isinstance(value, list):
            if not len(value):
                raise InvalidArgumentError(f"field {name!r}: no values to take a dtype from; pass fields=")
            out.append(FieldSpec(name, _to_numpy(value[0]).dtype, (-1,), var=True))
        else:
            arr = _to_numpy(value)
            if arr.ndim == 0:
                raise InvalidArgumentError(f"field {name!r}: a column needs a first (sample) dimension")
            out.append(FieldSpec(name, arr.dtype, tuple(arr.shape[1:])))
    return out


class DatasetWriter:
    """Writes samples into shards of about ``shard_bytes`` under ``path``.

    ``path``: a local folder (or ``file://`` URL), a store URL (``s3://``,
    ``sc://``, any fsspec URL; opened with ``store_options`` when given,
    else through the mount table) or a :class:`~storecomp.store.Store`
    (the dataset goes to its root). For a store, shards are staged on this
    machine (in ``staging_dir``, default the system temp folder) and
    uploaded when the writer closes.
    ``fields`` fixes the schema; when None it is taken from the first sample.
    Call :meth:`close` to publish (returns the manifest) or :meth:`abort`.

    Raises InvalidArgumentError when a dataset is already published at
    ``path`` or the URL names no store; the store's own errors (read-only
    mount, unreachable server) as they come, publishing nothing. A failed
    write of the staged shards (disk full, I/O error) raises StorageIOError
    naming the file; nothing is published then.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | Store,
        fields: Sequence[FieldSpec] | None = None,
        *,
        shard_bytes: int = 256 << 20,
        align: int | str = "auto",
        var: Sequence[str] = (),
        metadata: Mapping[str, Any] | None = None,
        store_options: Mapping[str, Any] | None = None,
        staging_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(shard_bytes, int) or shard_bytes <= 0:
            raise InvalidArgumentError(f"shard_bytes must be a positive int, got {shard_bytes!r}")
        self._store: Store | None = None
        self._made_root = False  # this writer made the destination folder: an abort removes it (when empty)
        self._prefix = ""
        self._release = _nothing
        if isinstance(path, Store):
            self._store, self.path = path, path.url
        else:
            self.path = os.fspath(path)
            if _urls.is_store_url(self.path):
                self._store, self._prefix, self._release = _urls.resolve(self.path, store_options, write=True)
            else:
                self.path = _urls.local_path(self.path)
        try:
            with _os_errors(self.path, "stage the dataset"):
                if self._store is not None:
                    if self._store.exists(self._prefix + MANIFEST_NAME):
                        raise InvalidArgumentError(f"{self.path}: a dataset is already published here")
                    self._tmp = tempfile.mkdtemp(prefix="storecomp-dataset-", dir=staging_dir)
                else:
                    if os.path.exists(os.path.join(self.path, MANIFEST_NAME)):
                        raise InvalidArgumentError(f"{self.path}: a dataset is already published here")
                    self._tmp = os.path.join(self.path, f".tmp-{uuid.uuid4().hex[:12]}")
                    self._made_root = not os.path.exists(self.path)
                    os.makedirs(self._tmp)
        except BaseException:
            self._release()
            raise
        self._shard_bytes = shard_bytes
        self._align = align
        self._var_names = tuple(var)
        self._metadata = dict(metadata or {})
        self.fields: list[FieldSpec] | None = None
        self._shards: list[dict[str, Any]] = []
        self._file: Any = None
        self._shard: dict[str, Any] = {}
        self._closed = False
        if fields is not None:
            self._set_fields(list(fields))

    def _set_fields(self, fields: list[FieldSpec]) -> None:
        if not fields:
            raise InvalidArgumentError("a dataset needs at least one field")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"duplicate field names in {names}")
        for f in fields:
            check_field(f)
        self.fields = fields
        self._offsets, self._stride = record_layout(fields, self._align)
        self._fixed = [f for f in fields if not f.var]
        self._var = [f for f in fields if f.var]

    # ------------------------------------------------------------ input

    def write(self, sample: Mapping[str, Any]) -> None:
        """Append one sample (a mapping of field name to array, tensor, bytes or str)."""
        if self.fields is None:
            self._set_fields(infer_fields(sample, self._var_names))
        batch = {}
        for f in self._fields():
            if f.name not in sample:
                raise InvalidArgumentError(f"sample has no field {f.name!r} (fields: {[g.name for g in self._fields()]})")
            arr = _to_numpy(sample[f.name])
            batch[f.name] = [arr] if f.var else arr[None]
        self._check_extra(sample)
        self.write_batch(batch)

    def write_batch(self, columns: Mapping[str, Any]) -> None:
        """Append many samples: fixed fields as arrays of shape (n, *shape), var fields as sequences of 1-D arrays."""
        self._check_open()
        if self.fields is None:
            self._set_fields(_infer_column_fields(columns, self._var_names))
        self._check_extra(columns)
        fixed: dict[str, np.ndarray] = {}
        var: dict[str, list[np.ndarray]] = {}
        n = None
        for f in self._fields():
            if f.name not in columns:
                raise InvalidArgumentError(f"batch has no field {f.name!r}")
            if f.var:
                var[f.name] = [self._check_var(f, _to_numpy(v)) for v in columns[f.name]]
                m = len(var[f.name])
            else:
                arr = _to_numpy(columns[f.name])
                if arr.dtype != f.dtype or tuple(arr.shape[1:]) != f.shape:
                    raise InvalidArgumentError(
                        f"field {f.name!r}: got samples of dtype {arr.dtype} shape {tuple(arr.shape[1:])}, "
                        f"the dataset has dtype {f.dtype} shape {f.shape}; nothing was published"
                    )
                fixed[f.name] = arr
                m = arr.shape[0]
            if n is not None and m != n:
                raise InvalidArgumentError(f"fields have different sample counts ({n} and {m} for {f.name!r})")
            n = m
        start = 0
        while n and start < n:
            with _os_errors(self._tmp, "write"):
                shard = self._current()
                room = max(1, (self._shard_bytes - shard["bytes"]) // max(1, self._stride))
                end = min(n, start + room)
                self._append(
                    shard, {k: v[start:end] for k, v in fixed.items()}, {k: v[start:end] for k, v in var.items()}, end - start
                )
                if shard["bytes"] >= self._shard_bytes:
                    self._finish_shard()
            start = end

    def _fields(self) -> list[FieldSpec]:
        assert self.fields is not None
        return self.fields

    def _check_extra(self, given: Mapping[str, Any]) -> None:
        extra = set(given) - {f.name for f in self._fields()}
        if extra:
            raise InvalidArgumentError(f"unknown fields {sorted(extra)} (the dataset has {[f.name for f in self._fields()]})")

    def _check_var(self, f: FieldSpec, arr: np.ndarray) -> np.ndarray:
        if arr.ndim != 1 or arr.dtype != f.dtype:
            raise InvalidArgumentError(
                f"field {f.name!r}: got a value of dtype {arr.dtype} with {arr.ndim} dims, "
                f"expected 1-D {f.dtype}; nothing was published"
            )
        return arr

    # ------------------------------------------------------------ shards

    def _current(self) -> dict[str, Any]:
        if self._file is None:
            name = os.path.join(self._tmp, f"shard-{len(self._shards):06d}")
            self._file = open(name, "wb")  # noqa: SIM115 - closed in _finish_shard
            self._shard = {
                "tmp": name,
                "n": 0,
                "bytes": 0,
                "crc": [],
                "values": {f.name: [] for f in self._var},
                "lens": {f.name: [] for f in self._var},
                "vcrc": {f.name: [] for f in self._var},
            }
        return self._shard

    def _append(self, shard: dict[str, Any], fixed: dict[str, np.ndarray], var: dict[str, list[np.ndarray]], n: int) -> None:
        if self._fixed:
            rec = np.zeros((n, self._stride), np.uint8)
            for f in self._fixed:
                off = self._offsets[f.name]
                rec[:, off : off + f.nbytes] = np.ascontiguousarray(fixed[f.name]).reshape(n, -1).view(np.uint8)
            self._file.write(rec.tobytes())
            shard["crc"].extend(crc32c(rec[i]) for i in range(n))
            shard["bytes"] += rec.nbytes
        for f in self._var:
            for v in var[f.name]:
                b = np.ascontiguousarray(v).tobytes()
                shard["values"][f.name].append(b)
                shard["lens"][f.name].append(len(b))
                shard["vcrc"][f.name].append(crc32c(b))
                shard["bytes"] += len(b)
        shard["n"] += n

    def _finish_shard(self) -> None:
        if self._file is None:
            return
        shard: dict[str, Any] = self._shard
        f = self._file
        pos = shard["n"] * self._stride if self._fixed else 0
        blobs: dict[str, np.ndarray] = {}
        if self._fixed:
            blobs["record_crc"] = np.array(shard["crc"], np.uint32)
        var_json = []
        for spec in self._var:
            pad = (-pos) % SECTION_ALIGN
            f.write(b"\0" * pad)
            pos += pad
            vals = b"".join(shard["values"][spec.name])
            f.write(vals)
            offs = np.zeros(shard["n"] + 1, np.uint64)
            np.cumsum(np.array(shard["lens"][spec.name], np.uint64), out=offs[1:])
            blobs[f"offsets/{spec.name}"] = offs
            blobs[f"crc/{spec.name}"] = np.array(shard["vcrc"][spec.name], np.uint32)
            var_json.append({"name": spec.name, "values_offset": pos, "values_nbytes": len(vals)})
            pos += len(vals)
        header = {
            "format": SHARD_FORMAT,
            "num_records": shard["n"],
            "record_stride": self._stride,
            "fields": [dict(s.to_json(), offset=self._offsets.get(s.name, -1)) for s in self._fields()],
            "var_fields": var_json,
        }
        index = encode_index(header, blobs)
        f.write(index)
        f.write(TRAILER.pack(MAGIC, pos, len(index), crc32c(index), VERSION))
        f.flush()
        os.fsync(f.fileno())  # on stable storage before a manifest can name it
        f.close()
        self._file = None
        size = os.path.getsize(shard["tmp"])
        self._shards.append({"tmp": shard["tmp"], "num_records": shard["n"], "size": size})

    # ------------------------------------------------------------ publish

    def close(self) -> dict[str, Any]:
        """Finish the last shard, move shards into place and publish the manifest (returned).

        Raises ConflictError when another writer published a dataset at the
        same place first (the store's put-if-absent refused the manifest).
        """
        self._check_open()
        try:
            if self.fields is None:
                raise InvalidArgumentError("no samples and no fields: nothing to write")
            with _os_errors(self.path, "publish"):
                manifest = self._publish()
        except BaseException:
            self.abort()
            raise
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._release()
        return manifest

    def _publish(self) -> dict[str, Any]:
        """Finish the last shard, place shards under their hash (renamed, or uploaded to the
        store), publish the manifest (last). ConflictError when another writer published first."""
        self._finish_shard()
        place = self._upload_shard if self._store is not None else self._move_shard
        if self._store is None:
            os.makedirs(os.path.join(self.path, SHARD_DIR), exist_ok=True)
        shards = []
        for s in self._shards:
            digest = _sha256_file(s["tmp"])
            key = f"{SHARD_DIR}/{digest}.scs"
            place(s["tmp"], key, digest)
            shards.append({"key": key, "sha256": digest, "size": s["size"], "num_records": s["num_records"]})
        manifest = {
            "format": MANIFEST_FORMAT,
            "kind": "records",
            "fields": [dict(f.to_json(), offset=self._offsets.get(f.name, -1)) for f in self._fields()],
            "record_stride": self._stride,
            "num_samples": sum(s["num_records"] for s in shards),
            "shards": shards,
            "metadata": self._metadata,
        }
        if self._store is None:
            _fsync_dir(os.path.join(self.path, SHARD_DIR))  # the renames, before the manifest that names them
            _publish_json(os.path.join(self.path, MANIFEST_NAME), manifest)
        else:
            doc = json.dumps(manifest, indent=1, sort_keys=True).encode()
            if not self._store.put_if_absent(self._prefix + MANIFEST_NAME, doc):
                raise ConflictError(f"{self.path}: another writer published a dataset here first; nothing was changed")
        return manifest

    def _move_shard(self, tmp: str, key: str, digest: str) -> None:
        os.replace(tmp, os.path.join(self.path, key))

    def _upload_shard(self, tmp: str, key: str, digest: str) -> None:
        """Upload a finished shard under its content-hash key. An object already there is
        accepted only when its bytes hash to ``digest`` (a rerun, or another writer of the
        same data); a damaged one (a torn upload by another tool, bit rot) is replaced,
        that version only. CorruptDataError when it cannot be replaced after a few turns."""
        assert self._store is not None
        store, full = self._store, self._prefix + key
        with open(tmp, "rb") as f, _mapped(f) as data:
            for _ in range(_SHARD_ATTEMPTS):
                if store.put_if_absent(full, data):
                    return
                try:
                    there, version = _object_sha256(store, full)
                except (NotFoundError, VersionChangedError):
                    continue  # deleted or replaced meanwhile: look again
                if there == digest:
                    return
                try:
                    store.compare_and_swap(full, version, data)
                    return
                except ConflictError:
                    continue  # someone else replaced it meanwhile: check theirs
        raise CorruptDataError(f"{self.path}/{key}: the object there is not this shard (another SHA-256), could not replace it")

    def abort(self) -> None:
        """Drop everything written so far; nothing is published."""
        if self._file is not None:
            with contextlib.suppress(OSError):  # a full disk fails the flush of buffered bytes: dropped anyway
                self._file.close()
            self._file = None
        self._closed = True
        shutil.rmtree(self._tmp, ignore_errors=True)
        if self._made_root:
            for folder in (os.path.join(self.path, SHARD_DIR), self.path):
                try:
                    os.rmdir(folder)  # only when empty: nothing of anyone else's is removed
                except OSError:
                    pass
        self._release()
        self._release = _nothing

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError(f"{self.path}: writer is closed")

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _nothing() -> None:
    pass


@contextlib.contextmanager
def _os_errors(path: str, op: str) -> Iterator[None]:
    """Translate a bare OSError (ENOSPC, EIO...) into the storecomp error naming the file."""
    try:
        yield
    except StorecompError:
        raise
    except OSError as e:
        raise from_errno(e.errno or errno.EIO, str(e.filename or path), None, op) from None


@contextlib.contextmanager
def _mapped(f: Any) -> Iterator[mmap.mmap]:
    """The open file ``f`` mapped read-only. An S3 client may let go of its view of the
    payload a moment after the call returns (obstore drops it on its own thread): the map
    is then unmapped when that view goes, not by ``close``."""
    data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield data
    finally:
        with contextlib.suppress(BufferError):
            data.close()


def _object_sha256(store: Store, key: str, part_bytes: int = 8 << 20) -> tuple[str, str]:
    """(SHA-256 hex, version) of object ``key``, read in parts all pinned to one version
    (VersionChangedError when it is replaced meanwhile)."""
    info = store.stat(key)
    h = hashlib.sha256()
    buf = np.empty(min(max(info.size, 1), part_bytes), np.uint8)
    for off in range(0, info.size, part_bytes):
        n = min(part_bytes, info.size - off)
        store.read_ranges(key, [off], [n], buf, [0], version=info.version)
        h.update(buf[:n].data)
    return h.hexdigest(), info.version


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _publish_json(path: str, doc: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_dataset(
    path: str | os.PathLike[str] | Store,
    data: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    fields: Sequence[FieldSpec] | None = None,
    shard_bytes: int = 256 << 20,
    align: int | str = "auto",
    var: Sequence[str] = (),
    metadata: Mapping[str, Any] | None = None,
    store_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a dataset from columns (dict of arrays/tensors, lists for var fields) or an iterable of sample dicts.

    ``path``: a local folder, a store URL or a Store (see :class:`DatasetWriter`).
    Returns the manifest. Raises InvalidArgumentError on inconsistent input
    (nothing is published then).
    """
    w = DatasetWriter(path, fields, shard_bytes=shard_bytes, align=align, var=var, metadata=metadata, store_options=store_options)
    try:
        if isinstance(data, Mapping):
            w.write_batch(data)
        else:
            for sample in data:
                w.write(sample)
    except BaseException:
        w.abort()
        raise
    return w.close()
