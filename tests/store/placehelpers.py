"""Helpers for transfer and placement tests: snapshots, mounts over sites, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from storecomp.store import Manifest, Mount, Namespace, Replica, Repository, Store
from storecomp.store.transfer import verify_object

CHUNK = 256 << 10  # small checksum chunks: several parts per blob at test sizes


def write_snapshot(
    store: Store, name: str = "train", n: int = 6, size: int = 700_000, seed: int = 0
) -> tuple[str, dict[str, bytes]]:
    """Commit ``n`` random files of about ``size`` bytes as snapshot ``name``; (manifest hash, files)."""
    rng = np.random.default_rng(seed)
    repo = Repository(store, chunk_bytes=CHUNK)
    w = repo.writer()
    files = {}
    for i in range(n):
        data = rng.integers(0, 256, size + 1000 * i, dtype=np.uint8).tobytes()
        w.add(f"part-{i:03d}.bin", data)
        files[f"part-{i:03d}.bin"] = data
    return w.commit(name), files


def site_mount(name: str, sites: dict[str, tuple[str, dict[str, Any]]], primary: str = "a") -> Mount:
    """A mount whose replicas are ``{site: (url, options)}`` in the given order."""
    reps = tuple(Replica(url, site, i, tuple(sorted(opts.items()))) for i, (site, (url, opts)) in enumerate(sites.items()))
    return Mount(name, reps, primary=primary)


def local_namespace(tmp_path: Path, name: str = "ds", sites: tuple[str, ...] = ("a", "b"), **kw: Any) -> Namespace:
    return Namespace([site_mount(name, {s: (str(tmp_path / f"site-{s}"), {}) for s in sites})], environ={}, **kw)


def complete_at(store: Store, manifest: Manifest) -> bool:
    """True when every blob of ``manifest`` is in ``store`` and passes its crc32c."""
    repo = Repository(store)
    return all(verify_object(store, repo.blob_key(e.blob), e.checksums) for e in manifest.entries.values())
