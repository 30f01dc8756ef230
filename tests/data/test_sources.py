"""Existing layouts read as they are: Megatron .bin/.idx, token .npy, fixed-width .npy, uncompressed Zarr."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from storecomp.data import DataLoader, NpyDataset, TokenDataset, open_dataset, read_megatron_index
from storecomp.errors import CorruptDataError, InvalidArgumentError


def write_megatron(prefix: Path, docs: list[np.ndarray], dtype_code: int = 8) -> None:
    """A Megatron MMIDIDX index (version 1) and its .bin, as megatron-core writes them."""
    dtype = np.dtype(np.uint16 if dtype_code == 8 else np.int32)
    sizes = np.array([d.size for d in docs], np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1].astype(np.int64) * dtype.itemsize)]).astype(np.int64)
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    with open(f"{prefix}.idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", dtype_code))
        f.write(struct.pack("<Q", len(docs)) + struct.pack("<Q", doc_idx.size))
        f.write(sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    with open(f"{prefix}.bin", "wb") as f:
        for d in docs:
            f.write(d.astype(dtype).tobytes())


def test_megatron_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 50000, int(rng.integers(1, 300)), dtype=np.uint16) for _ in range(40)]
    write_megatron(tmp_path / "corpus", docs)
    stream = np.concatenate(docs)
    dtype, sizes, pointers, doc_idx = read_megatron_index((tmp_path / "corpus.idx").read_bytes(), "x")
    assert dtype == np.uint16 and sizes.size == 40 and doc_idx.size == 41
    seq = 32
    ds = open_dataset(str(tmp_path / "corpus.bin"), seq_len=seq)
    assert isinstance(ds, TokenDataset) and len(ds) == (stream.size - 1) // seq
    loader = DataLoader(ds, 16, seed=1)
    got = 0
    for b in loader:
        t = b["tokens"].numpy()
        assert t.shape[1] == seq + 1
        # each window is some i*seq offset of the stream
        starts = [
            int(np.flatnonzero(np.all(np.lib.stride_tricks.sliding_window_view(stream, seq + 1)[::seq] == row, axis=1))[0])
            for row in t[:2]
        ]
        assert all(np.array_equal(stream[s * seq : s * seq + seq + 1], row) for s, row in zip(starts, t[:2], strict=True))
        got += t.shape[0]
    assert got == len(ds)


def test_token_npy_windows_exact(tmp_path: Path) -> None:
    tokens = np.arange(1000, dtype=np.uint32)
    np.save(tmp_path / "t.npy", tokens)
    ds = open_dataset(str(tmp_path / "t.npy"), seq_len=10)
    assert len(ds) == 99
    b = next(iter(DataLoader(ds, 99, shuffle=False)))["tokens"].numpy()
    assert np.array_equal(b, np.stack([tokens[i * 10 : i * 10 + 11] for i in range(99)]))


def test_several_token_files(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(101, dtype=np.uint16))
    np.save(tmp_path / "b.npy", np.arange(1000, 1051, dtype=np.uint16))
    ds = open_dataset([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], seq_len=10)
    assert len(ds) == 10 + 5
    rows = np.concatenate([b["tokens"].numpy() for b in DataLoader(ds, 4, shuffle=False)])
    assert rows[10, 0] == 1000 and rows[9, -1] == 100


def test_npy_fields_in_place(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((50, 7)).astype(np.float64)
    y = np.arange(50, dtype=np.int16)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = NpyDataset({"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")})
    for b in DataLoader(ds, 8, seed=2):
        assert np.array_equal(b["x"].numpy(), x[b["y"].numpy()])


def test_uncompressed_zarr_in_place(tmp_path: Path) -> None:
    import zarr

    data = np.arange(30 * 4, dtype=np.int32).reshape(30, 4)
    z = zarr.create_array(str(tmp_path / "z"), shape=data.shape, chunks=(8, 4), dtype=data.dtype, compressors=None)
    z[:] = data
    ds = open_dataset(str(tmp_path / "z"))
    assert len(ds) == 30 and len(ds.parts) == 4
    rows = np.concatenate([b["x"].numpy() for b in DataLoader(ds, 7, shuffle=False)])
    assert np.array_equal(rows, data)


def test_compressed_zarr_is_refused(tmp_path: Path) -> None:
    import zarr

    z = zarr.create_array(str(tmp_path / "z"), shape=(10, 2), chunks=(5, 2), dtype="f4")
    z[:] = 1
    with pytest.raises(InvalidArgumentError, match="compressed"):
        open_dataset(str(tmp_path / "z"))


def test_megatron_bad_index_and_truncated_bin(tmp_path: Path) -> None:
    write_megatron(tmp_path / "c", [np.arange(100, dtype=np.uint16)])
    (tmp_path / "bad.idx").write_bytes(b"NOTANIDX" + (tmp_path / "c.idx").read_bytes()[8:])
    (tmp_path / "bad.bin").write_bytes(b"")
    with pytest.raises(CorruptDataError, match="bad magic"):
        open_dataset(str(tmp_path / "bad.bin"), seq_len=8)
    with open(tmp_path / "c.bin", "r+b") as f:
        f.truncate(50)
    with pytest.raises(CorruptDataError, match="truncated"):
        open_dataset(str(tmp_path / "c.bin"), seq_len=8)
