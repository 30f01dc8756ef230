"""The read side of placement: readers resolve ``sc://mount/name`` to the nearest
site whose copy is complete (never a partial one), pin it with a lease, and
move to a nearer complete copy at a shard boundary without stopping
(:class:`PlacedReader`); :func:`warm` fills the node-local cache tier.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConflictError, InvalidArgumentError, StorecompError
from .leases import Lease
from .mounts import SCHEME
from .namespace import Namespace
from .placement_record import CAS_RETRIES, mount_sites, primary_site, read_record, snapshot_at, split_snapshot_url
from .snapshots import Repository, Snapshot
from .transfer import DEFAULT_PART_BYTES

# ---------------------------------------------------------------- read side


@dataclass
class Resolved:
    """A snapshot and the site whose complete copy reads go to."""

    url: str
    manifest: str
    site: str
    snapshot: Snapshot
    sites: list[str]  # every site with a complete copy, nearest first


def resolve(url: str, *, namespace: Namespace | None = None, near: str | None = None) -> Resolved:
    """The nearest complete copy of ``sc://mount/name``: ``near`` (default this
    node's ``STORECOMP_SITE``) if it holds one, else the next in read order;
    never a site whose copy is partial."""
    ns = namespace or Namespace()
    mount, sites, primary, _, h, manifest = snapshot_at(ns, url)
    complete = read_record(primary.store).sites_of(h) | {primary.name}
    near = ns.local_site if near is None else near
    order = sorted((s for s in sites if s.name in complete), key=lambda s: (s.name != near,))  # stable: read order
    best = order[0]
    snap = Snapshot(Repository(best.store), h, manifest)
    return Resolved(url, h, best.name, snap, [s.name for s in order])


def open_snapshot(
    url: str, *, namespace: Namespace | None = None, near: str | None = None, ttl_s: float = 60.0
) -> tuple[Resolved, Lease]:
    """:func:`resolve` and pin the copy with a renewed lease (release it when done).
    The lease is taken before the record is read again, so a concurrent
    ``--drop`` either sees the lease or has already unpublished the site."""
    ns = namespace or Namespace()
    for _ in range(CAS_RETRIES):
        r = resolve(url, namespace=ns, near=near)
        primary = primary_site(mount_sites(ns, split_snapshot_url(url)[0]))
        lease = Lease(primary.store, r.manifest, r.site, ttl_s=ttl_s)
        if r.site == primary.name or r.site in read_record(primary.store).sites_of(r.manifest):
            return r, lease
        lease.release()  # dropped between resolve and lease: resolve again
    raise ConflictError(f"{url}: copies kept moving while being opened")


# ---------------------------------------------------------------- the cache tier


def warm(url: str, *, namespace: Namespace | None = None, part_bytes: int = DEFAULT_PART_BYTES) -> dict[str, Any]:
    """Read every blob of snapshot ``sc://mount/name`` through the mount's
    node-local cache tier (verified), so later reads hit local disk.
    InvalidArgumentError when the mount has no ``cache_dir``."""
    ns = namespace or Namespace()
    try:
        mount, _, _, _, h, manifest = snapshot_at(ns, url)
        st = ns.store(mount)
        cache_dir = ns.mounts[mount].cache_dir
        if not cache_dir:
            raise InvalidArgumentError(
                f"{SCHEME}{mount}: no cache tier to warm (set cache_dir and cache_max_bytes in the mount table)"
            )
        repo = Repository(st)
        blobs = {e.blob: e for e in manifest.entries.values()}
        buf = np.empty(part_bytes, np.uint8)
        total = 0
        for e in blobs.values():
            step = e.checksums.chunk_bytes * max(1, part_bytes // e.checksums.chunk_bytes)
            if step > buf.size:
                buf = np.empty(step, np.uint8)
            for off in range(0, e.size, step):
                n = min(step, e.size - off)
                repo.read_blob_into(e, buf, [off], [n], [0])
                total += n
        return {"url": url, "manifest": h, "blobs": len(blobs), "bytes": total, "cache": cache_dir}
    finally:
        if namespace is None:
            ns.close()


# ---------------------------------------------------------------- readers that move


class _Done:
    """A finished :class:`~storecomp.store.base.RangeFuture` around a concurrent.futures.Future."""

    def __init__(self, fut: Any) -> None:
        self._fut = fut

    def done(self) -> bool:
        return bool(self._fut.done())

    def result(self, timeout: float | None = None) -> np.ndarray:
        return self._fut.result(timeout)


class PlacedReader:
    """The files of one snapshot, read from its nearest complete copy; moves to
    a nearer copy when one completes, without stopping.

    Implements the reader interface of :mod:`storecomp.data` (``size``,
    ``read``, ``submit``, ``join``, ``describe``), so ``open_dataset`` and
    the DataLoader read a placed snapshot through it. The snapshot is pinned
    at open (its manifest hash): a writer moving the ref later changes
    nothing here, so sample order and bytes stay exactly those of the
    snapshot opened. Every read is verified against the manifest's crc32c.
    At a file (shard) boundary, at most every ``recheck_s`` seconds, it reads
    the placement record; when a nearer site (``near``, default
    ``STORECOMP_SITE``) became complete, later reads go there. The copy being
    read is pinned by a renewed :class:`Lease`; the previous copy's lease is
    released at the next check, after the reads already submitted to it.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: Namespace | None = None,
        near: str | None = None,
        recheck_s: float = 5.0,
        ttl_s: float = 60.0,
        threads: int = 8,
    ) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.url = url
        self._own_ns = namespace is None
        self._ns = namespace or Namespace()
        self._near = self._ns.local_site if near is None else near
        resolved, lease = open_snapshot(url, namespace=self._ns, near=self._near, ttl_s=ttl_s)
        self.manifest_hash = resolved.manifest
        self.snapshot = resolved.snapshot
        self.site = resolved.site
        self.switches = 0
        self._ttl_s, self.recheck_s = ttl_s, recheck_s
        self._lease: Lease = lease
        self._old: Lease | None = None
        self._sites = mount_sites(self._ns, split_snapshot_url(url)[0])
        self._last_key: str | None = None
        self._checked = time.monotonic()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sc-placed")
        self._lock = threading.Lock()

    def _maybe_move(self, key: str) -> None:
        if key == self._last_key:
            return
        self._last_key = key
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return
        self._checked = now
        if self._old is not None:
            self._old.release()  # the reads that used it finished a check period ago
            self._old = None
        primary = primary_site(self._sites)
        try:
            complete = read_record(primary.store).sites_of(self.manifest_hash) | {primary.name}
        except StorecompError:
            return  # the record is unreachable: keep reading where we are
        order = sorted((s for s in self._sites if s.name in complete), key=lambda s: s.name != self._near)
        best = order[0] if order else None
        if best is None or best.name == self.site:
            return
        lease = Lease(primary.store, self.manifest_hash, best.name, ttl_s=self._ttl_s)
        if best.name != primary.name and best.name not in read_record(primary.store).sites_of(self.manifest_hash):
            lease.release()  # dropped meanwhile
            return
        with self._lock:
            self.snapshot = Snapshot(Repository(best.store), self.manifest_hash, self.snapshot.manifest)
            self.site = best.name
            self._old, self._lease = self._lease, lease
            self.switches += 1

    # -- the storecomp.data reader interface

    def size(self, key: str) -> int:
        return self.snapshot.entry(key).size

    def read(self, key: str, offset: int, length: int) -> bytes:
        return self.snapshot.read(key, offset, length)

    def submit(self, key: str, dst: Any, offsets: np.ndarray, lengths: np.ndarray, dst_offsets: np.ndarray) -> Any:
        """Start verified reads of ``key`` into host array ``dst`` (uint8); a future with ``result()``."""
        self._maybe_move(key)
        snap = self.snapshot
        arr = dst if isinstance(dst, np.ndarray) and dst.dtype == np.uint8 else np.frombuffer(memoryview(dst).cast("B"), np.uint8)
        return _Done(self._pool.submit(snap.read_into, key, arr, offsets, lengths, dst_offsets))

    def join(self, base: str, key: str) -> str:
        return f"{base.rstrip('/')}/{key}" if base else key

    def describe(self, key: str) -> str:
        return f"{self.url}@{self.manifest_hash[:12]}:{key} (site {self.site})"

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for lease in (self._lease, self._old):
            if lease is not None:
                lease.release()
        if self._own_ns:
            self._ns.close()


def placed_reader(url: str, *, namespace: Namespace | None = None, near: str | None = None) -> PlacedReader | None:
    """A :class:`PlacedReader` when ``url`` (``sc://mount/name``) names a snapshot
    (a ref at the mount's primary), else None (a plain path inside the mount)."""
    if not isinstance(url, str) or not url.startswith(SCHEME):
        return None
    mount, _, name = url[len(SCHEME) :].rstrip("/").partition("/")
    if not mount or not name:
        return None
    ns = namespace or Namespace()
    try:
        primary = primary_site(mount_sites(ns, mount))
        try:
            if not primary.store.exists(Repository(primary.store).ref_key(name)):
                return None
        except InvalidArgumentError:
            return None
        return PlacedReader(f"{SCHEME}{mount}/{name}", namespace=namespace, near=near)
    finally:
        if namespace is None:
            ns.close()
