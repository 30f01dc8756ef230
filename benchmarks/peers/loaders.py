"""Each peer's writer and reader for the synthetic data set (see harness.sample_chunks).

Every reader yields batches of ``BATCH`` samples in a random order as a
uint8 tensor of shape (batch, 64 KiB) plus int64 labels; ``open_<peer>``
returns (a function making one pass's iterable, a function counting a
batch's samples). The peer libraries are imported inside the functions:
this module imports in either Python (the project's or the peer venv's).

Layouts under ``DIR/<format>/``:

* ``storecomp``: storecomp shards (``storecomp.data.write_dataset``), read by
  ``storecomp.DataLoader`` (``storecomp``: its default block-local shuffle,
  ``storecomp-rand``: ``shuffle_block=1``, a uniform permutation like the
  torch sampler's);
* ``npy``: ``x.npy`` (n, 65536) uint8 and ``label.npy``, read by a torch
  ``Dataset`` and ``torch.utils.data.DataLoader`` (``torch``: samples copied
  out of ``np.load(mmap_mode="r")``, the baseline issue 5 names;
  ``torch-pread``: one ``os.preadv`` per sample into a fresh array);
* ``mosaic``: MDS shards (``streaming.MDSWriter``), ``streaming.StreamingDataset``;
* ``litdata``: ``litdata.optimize`` chunks, ``litdata.StreamingDataset``;
* ``wds``: WebDataset tar shards (``webdataset.ShardWriter``), ``webdataset.WebDataset``
  with shard shuffle and a 1,000-sample shuffle buffer.

Shards and chunks are about 64 MB for every format that has them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from harness import BATCH, CHUNK, SAMPLE_BYTES, make_chunk, sample_chunks

SHARD_BYTES = 64 << 20

# peer name -> (data format, python: "project" or "venv", importable module it needs)
PEERS: dict[str, tuple[str, str, str]] = {
    "storecomp": ("storecomp", "project", "storecomp.data"),
    "storecomp-rand": ("storecomp", "project", "storecomp.data"),
    "torch": ("npy", "project", "torch"),
    "torch-pread": ("npy", "project", "torch"),
    "mosaic": ("mosaic", "venv", "streaming"),
    "litdata": ("litdata", "venv", "litdata"),
    "wds": ("wds", "venv", "webdataset"),
}

Opened = tuple[Callable[[], Iterable[Any]], Callable[[Any], int]]


def _count_dict(batch: Any) -> int:
    return int(batch["label"].shape[0])


def _count_pair(batch: Any) -> int:
    return int(batch[1].shape[0])


# ---------------------------------------------------------------- writers


def write(fmt: str, out: str, n: int) -> None:
    """Write ``n`` samples in format ``fmt`` into the empty folder ``out``."""
    {"storecomp": _write_storecomp, "npy": _write_npy, "mosaic": _write_mosaic, "litdata": _write_litdata, "wds": _write_wds}[
        fmt
    ](out, n)


def _write_storecomp(out: str, n: int) -> None:
    import numpy as np

    from storecomp.data import DatasetWriter, FieldSpec

    fields = [FieldSpec("x", np.dtype(np.uint8), (SAMPLE_BYTES,)), FieldSpec("label", np.dtype(np.int64), ())]
    with DatasetWriter(out, fields, shard_bytes=SHARD_BYTES) as w:
        for x, y in sample_chunks(n):
            w.write_batch({"x": x, "label": y})


def _write_npy(out: str, n: int) -> None:
    import numpy as np

    x = np.lib.format.open_memmap(os.path.join(out, "x.npy"), "w+", np.uint8, (n, SAMPLE_BYTES))
    labels = np.empty(n, np.int64)
    i = 0
    for cx, cy in sample_chunks(n):
        x[i : i + len(cx)] = cx
        labels[i : i + len(cy)] = cy
        i += len(cx)
    x.flush()
    del x
    np.save(os.path.join(out, "label.npy"), labels)


def _write_mosaic(out: str, n: int) -> None:
    from streaming import MDSWriter

    with MDSWriter(out=out, columns={"x": "bytes", "label": "int"}, size_limit=SHARD_BYTES) as w:
        for x, y in sample_chunks(n):
            for i in range(len(x)):
                w.write({"x": x[i].tobytes(), "label": int(y[i])})


def _litdata_chunk(start: int) -> Any:
    x, y = make_chunk(start, CHUNK)
    for i in range(CHUNK):
        yield {"x": x[i].tobytes(), "label": int(y[i])}


def _write_litdata(out: str, n: int) -> None:
    import litdata

    if n % CHUNK:
        raise ValueError(f"litdata writer needs a multiple of {CHUNK} samples, got {n}")
    litdata.optimize(
        fn=_litdata_chunk,
        inputs=list(range(0, n, CHUNK)),
        output_dir=out,
        chunk_bytes=SHARD_BYTES,
        num_workers=1,
        mode="overwrite",
    )


def _write_wds(out: str, n: int) -> None:
    import webdataset as wds

    k = 0
    with wds.ShardWriter(os.path.join(out, "shard-%06d.tar"), maxsize=SHARD_BYTES, verbose=0) as w:
        for x, y in sample_chunks(n):
            for i in range(len(x)):
                w.write({"__key__": f"{k:09d}", "bin": x[i].tobytes(), "cls": int(y[i])})
                k += 1


# ---------------------------------------------------------------- readers


def open_peer(peer: str, path: str, workers: int, seed: int) -> Opened:
    """(pass factory, batch counter) for ``peer`` reading the data under ``path``."""
    if peer in ("storecomp", "storecomp-rand"):
        return _open_storecomp(path, workers, seed, peer == "storecomp-rand")
    if peer in ("torch", "torch-pread"):
        return _open_torch(path, workers, seed, peer == "torch-pread")
    return {"mosaic": _open_mosaic, "litdata": _open_litdata, "wds": _open_wds}[peer](path, workers, seed)


def _open_storecomp(path: str, workers: int, seed: int, uniform: bool) -> Opened:
    from storecomp import DataLoader

    if workers:
        raise ValueError("storecomp.DataLoader has no worker processes (its I/O runs on native threads): use workers=0")
    kw: dict[str, Any] = {"shuffle_block": 1, "shuffle_window": 1} if uniform else {}
    loader = DataLoader(path, batch_size=BATCH, seed=seed, **kw)

    def one_pass() -> Iterable[Any]:
        return iter(loader)

    return one_pass, _count_dict


def _bytes_batch(xs: list[bytes], labels: list[int]) -> tuple[Any, Any]:
    import numpy as np
    import torch

    x = torch.from_numpy(np.frombuffer(b"".join(xs), np.uint8).reshape(len(xs), -1))
    return x, torch.tensor(labels, dtype=torch.int64)


class _NpySamples:
    """A torch map-style Dataset over the .npy memmap: one sample = one copy out of the mapping."""

    def __init__(self, path: str, pread: bool = False) -> None:
        import numpy as np

        self.path = path
        self.pread = pread
        self.labels = np.load(os.path.join(path, "label.npy"))
        x = np.load(os.path.join(path, "x.npy"), mmap_mode="r")
        self.header = int(x.offset)
        del x
        self._x: Any = None
        self._fd = -1

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import numpy as np
        import torch

        if self.pread:
            if self._fd < 0:  # opened lazily in each worker process
                self._fd = os.open(os.path.join(self.path, "x.npy"), os.O_RDONLY)
            out = np.empty(SAMPLE_BYTES, np.uint8)
            if os.preadv(self._fd, [out], self.header + i * SAMPLE_BYTES) != SAMPLE_BYTES:
                raise OSError(f"short read of sample {i} in {self.path}/x.npy")
            return torch.from_numpy(out), int(self.labels[i])
        if self._x is None:
            self._x = np.load(os.path.join(self.path, "x.npy"), mmap_mode="r")
        return torch.from_numpy(np.array(self._x[i])), int(self.labels[i])


def _open_torch(path: str, workers: int, seed: int, pread: bool) -> Opened:
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        _NpySamples(path, pread), batch_size=BATCH, shuffle=True, num_workers=workers, generator=g, persistent_workers=workers > 0
    )
    return (lambda: loader), _count_pair


def _mosaic_collate(samples: list[dict[str, Any]]) -> tuple[Any, Any]:
    return _bytes_batch([s["x"] for s in samples], [int(s["label"]) for s in samples])


def _open_mosaic(path: str, workers: int, seed: int) -> Opened:
    import torch
    from streaming import StreamingDataset
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    ds = StreamingDataset(local=path, shuffle=True, shuffle_seed=seed, batch_size=BATCH)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, num_workers=workers, collate_fn=_mosaic_collate, persistent_workers=workers > 0
    )
    return (lambda: loader), _count_pair


def _litdata_collate(samples: list[dict[str, Any]]) -> tuple[Any, Any]:
    return _bytes_batch([s["x"] for s in samples], [int(s["label"]) for s in samples])


def _open_litdata(path: str, workers: int, seed: int) -> Opened:
    from litdata import StreamingDataLoader, StreamingDataset

    ds = StreamingDataset(input_dir=path, shuffle=True, seed=seed)
    loader = StreamingDataLoader(ds, batch_size=BATCH, num_workers=workers, collate_fn=_litdata_collate)
    return (lambda: loader), _count_pair


def _wds_sample(sample: tuple[bytes, bytes]) -> tuple[bytes, int]:
    return sample[0], int(sample[1])


def _wds_collate(samples: list[tuple[bytes, int]]) -> tuple[Any, Any]:
    return _bytes_batch([s[0] for s in samples], [s[1] for s in samples])


def _open_wds(path: str, workers: int, seed: int) -> Opened:
    import webdataset as wds

    urls = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".tar"))
    ds = (
        wds.WebDataset(urls, shardshuffle=len(urls), seed=seed, empty_check=False)
        .shuffle(1000, seed=seed)
        .to_tuple("bin", "cls")
        .map(_wds_sample)
        .batched(BATCH, collation_fn=_wds_collate)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    return (lambda: loader), _count_pair
