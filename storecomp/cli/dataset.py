"""``storecomp dataset write | convert | inspect | index | publish | verify``.

* ``write DST FIELD=FILE.npy ...``: a shard dataset from .npy files (row i of each file is sample i), DST a folder or store URL;
* ``convert SRC DST [--from FORMAT]``: from Parquet, .npy folders, .npz, Zarr, safetensors or WebDataset tar;
* ``inspect URL``: fields, sample count, parts, sizes (JSON);
* ``index URL``: write checksum sidecars for a dataset read in place (Megatron, token .npy, .npy rows, Zarr);
* ``publish FOLDER sc://mount/name``: publish a dataset folder as a snapshot of a mount (what ``place`` moves);
* ``verify URL``: read every byte and check every checksum; exit 0 when every byte was checked, 1 on the
  first bad record or byte range, 3 when some bytes had no checksum to check (the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..errors import InvalidArgumentError


def add_parser(sub: Any) -> None:
    d = sub.add_parser("dataset", help="write, convert, inspect and verify datasets")
    dsub = d.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)

    w = dsub.add_parser("write", help="write a shard dataset from .npy files")
    w.add_argument("dst", help="the new dataset: a folder or a store URL (s3://bucket/ds, sc://mount/ds, fsspec)")
    w.add_argument("fields", nargs="+", metavar="FIELD=FILE.npy", help="one field per .npy file (same first dimension)")
    w.add_argument("--shard-bytes", type=int, default=256 << 20, help="target shard size in bytes (default 256 MiB)")
    w.set_defaults(func=main)

    c = dsub.add_parser("convert", help="convert Parquet, .npy folders, .npz, Zarr, safetensors or WebDataset tar")
    c.add_argument("src")
    c.add_argument("dst", help="the new dataset: a folder or a store URL (s3://bucket/ds, sc://mount/ds, fsspec)")
    c.add_argument("--from", dest="fmt", choices=("parquet", "npy", "npz", "zarr", "safetensors", "wds"), help="source format")
    c.add_argument("--shard-bytes", type=int, default=256 << 20, help="target shard size in bytes (default 256 MiB)")
    c.set_defaults(func=main)

    i = dsub.add_parser("inspect", help="describe a dataset (JSON)")
    i.add_argument("url", help="dataset folder, store URL, token file (.bin/.idx/.npy with --seq-len), .npy or Zarr")
    i.add_argument("--seq-len", type=int, help="read token files as windows of seq_len + 1 tokens")
    i.set_defaults(func=main)

    x = dsub.add_parser("index", help="write checksum sidecars (<file>.crc32c) for a dataset read in place")
    x.add_argument("url", help="token file (.bin/.idx/.npy with --seq-len), .npy or Zarr")
    x.add_argument("--seq-len", type=int, help="read token files as windows of seq_len + 1 tokens")
    x.add_argument("--chunk-bytes", type=int, default=1 << 20, help="bytes per checksum (default 1 MiB)")
    x.add_argument("--replace", action="store_true", help="replace existing sidecars (they record what the data was)")
    x.set_defaults(func=main)

    p = dsub.add_parser("publish", help="publish a dataset folder as snapshot sc://mount/name (then `storecomp place` moves it)")
    p.add_argument("folder", help="a dataset folder (manifest.json and its shards)")
    p.add_argument("url", help="sc://mount/name: the snapshot's ref at the mount's primary")
    p.set_defaults(func=main)

    v = dsub.add_parser(
        "verify",
        help="read every byte and check every checksum (exit 3 when some bytes had none: run `dataset index`)",
    )
    v.add_argument("url")
    v.add_argument("--seq-len", type=int)
    v.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from ..data import convert, open_dataset, write_dataset

    cmd = args.dataset_command
    if cmd == "write":
        import numpy as np

        arrays = {}
        for item in args.fields:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise InvalidArgumentError(f"expected FIELD=FILE.npy, got {item!r}")
            try:
                arrays[name] = np.load(path, mmap_mode="r")
            except OSError:
                raise  # missing or unreadable: the OSError names the file
            except Exception as e:  # empty (EOFError), pickled or garbage (ValueError, SyntaxError...)
                raise InvalidArgumentError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
            if not isinstance(arrays[name], np.ndarray):
                raise InvalidArgumentError(f"{path}: not a .npy file (a .npz holds several arrays: use convert)")
        manifest = write_dataset(args.dst, arrays, shard_bytes=args.shard_bytes)
        print(json.dumps({"dataset": args.dst, "num_samples": manifest["num_samples"], "shards": len(manifest["shards"])}))
        return 0
    if cmd == "convert":
        manifest = convert.convert(args.src, args.dst, args.fmt, shard_bytes=args.shard_bytes)
        print(json.dumps({"dataset": args.dst, "num_samples": manifest["num_samples"], "shards": len(manifest["shards"])}))
        return 0
    if cmd == "publish":
        from ..store import publish

        if not os.path.isfile(os.path.join(args.folder, "manifest.json")):
            raise InvalidArgumentError(
                f"{args.folder}: not a storecomp dataset folder (no manifest.json): `storecomp dataset write` or `convert` first"
            )
        ds = open_dataset(args.folder)  # whole and readable before anything is published
        h = publish(args.url, args.folder)
        print(json.dumps({"snapshot": args.url, "manifest": h, "num_samples": len(ds)}))
        return 0
    ds = open_dataset(args.url, seq_len=args.seq_len)
    if cmd == "inspect":
        doc = ds.describe()
        doc["part_list"] = [{"name": p.name, "samples": p.count} for p in ds.parts[:1000]]
        json.dump(doc, sys.stdout, indent=1)
        print()
        return 0
    if cmd == "index":
        from ..data import index_dataset

        print(json.dumps(index_dataset(ds, args.chunk_bytes, replace=args.replace)))
        return 0
    result = convert.verify(ds)
    print(json.dumps(result))
    return 0 if result["ok"] else UNVERIFIED


#: ``dataset verify``'s exit status when every byte was read but some had no checksum to check.
UNVERIFIED = 3
