"""Placement: copy a snapshot of a mount to a site, publish it there, drop it.

The sites of a mount and the placement record (which sites hold a complete,
verified copy of each snapshot, moved by compare-and-swap at the mount's
primary) are in :mod:`storecomp.store.placement_record`; the read side
(resolve to the nearest complete copy, pin it, move readers) is in
:mod:`storecomp.store.resolution`. This module changes where copies are:

* :func:`place` copies the blobs a site lacks (only those: content-addressed)
  with :func:`storecomp.store.transfer.copy_objects` (parallel, streamed,
  crc32c-verified at the destination, resumable, rate-capped), then the
  manifest, and only then publishes "SITE complete". A crash or kill -9
  before that leaves at most an in-flight mark, never a complete one.
* :func:`drop` removes a site's copy only when another complete copy exists
  (the primary) and no live lease names it.
* :func:`plan`, :func:`status`, :func:`decide`: what a copy would move, where
  each snapshot lives, whether copying is worth it.
* :func:`publish` makes a dataset folder a snapshot; :func:`place_prefix`
  copies plain objects (a KV shared pool).

The decision rule for ``--auto`` and its numbers are in docs/placement.md.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError, StorecompError
from .base import Store
from .leases import Lease, leases
from .mounts import SCHEME
from .namespace import Namespace
from .placement_record import (
    DROP_STALE_S,
    RECORD_FORMAT,
    RECORD_KEY,
    PlacementRecord,
    Site,
    mount_sites,
    primary_site,
    read_record,
    refuse_if_leased,
    site_named,
    snapshot_at,
    split_snapshot_url,
    update_record,
)
from .resolution import PlacedReader, Resolved, open_snapshot, placed_reader, resolve, warm
from .snapshots import Manifest, Repository, sha256_hex
from .transfer import DEFAULT_PART_BYTES, DEFAULT_WORKERS, CopyItem, TransferReport, YieldPolicy, copy_objects

__all__ = [
    "DROP_STALE_S",
    "RECORD_FORMAT",
    "RECORD_KEY",
    "Decision",
    "PlaceReport",
    "PlacedReader",
    "PlacementRecord",
    "Plan",
    "Resolved",
    "Site",
    "decide",
    "drop",
    "leases",
    "mount_sites",
    "open_snapshot",
    "place",
    "place_prefix",
    "placed_reader",
    "plan",
    "probe_site",
    "probe_write_rate",
    "publish",
    "read_record",
    "reader_yield",
    "resolve",
    "split_snapshot_url",
    "status",
    "update_record",
    "warm",
]

_PUBLISH_TRIES = 8


class _DropRaced(StorecompError):
    """A drop at the destination ran while the blobs were being verified: verify again."""


# ---------------------------------------------------------------- place


@dataclass
class PlaceReport:
    """What :func:`place` did."""

    url: str
    manifest: str
    site: str
    source: str
    blobs: int
    bytes_total: int
    transfer: TransferReport
    already_complete: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "manifest": self.manifest,
            "site": self.site,
            "source": self.source,
            "blobs": self.blobs,
            "bytes": self.bytes_total,
            "already_complete": self.already_complete,
            **self.transfer.to_json(),
        }


def _blob_items(repo: Repository, manifest: Manifest) -> list[CopyItem]:
    seen: dict[str, CopyItem] = {}
    for e in manifest.entries.values():
        if e.blob not in seen:
            key = repo.blob_key(e.blob)
            seen[e.blob] = CopyItem(key, key, e.size, e.checksums)
    return list(seen.values())


def place(
    url: str,
    to: str,
    *,
    namespace: Namespace | None = None,
    max_rate: float | None = None,
    workers: int = DEFAULT_WORKERS,
    part_bytes: int = DEFAULT_PART_BYTES,
    progress: bool = False,
    nice: int = 0,
    yield_to_readers: bool = True,
) -> PlaceReport:
    """Copy snapshot ``sc://mount/name`` to site ``to`` and publish it complete there.

    Copies only the blobs ``to`` lacks (or holds damaged), each verified by
    crc32c at ``to``; ``max_rate`` caps bytes/s (None: the mount policy's
    ``max_rate``, else no cap). Publishes "``to``
    complete" in the placement record only after every blob and the
    manifest are there and verified. ``nice``: CPU niceness of the copy
    threads (readers on this node go first). ``yield_to_readers``: while a
    reader holds a live lease at the source or at ``to`` (any snapshot of
    the mount), the copy slows to a fraction of its own rate
    (:func:`reader_yield`; docs/placement.md, "Yielding to readers"). Raises InvalidArgumentError for an
    unknown mount or site, NotFoundError for an unknown snapshot,
    TransferError when ``to`` is down or full (nothing published; a rerun
    resumes), ConflictError when the record cannot be updated.
    """
    ns = namespace or Namespace()
    try:
        mount, sites, primary, repo, h, manifest = snapshot_at(ns, url)
        dest = site_named(sites, to, mount)
        policy = ns.mounts[mount].placement
        if max_rate is None and policy is not None:
            max_rate = policy.max_rate  # the mount table's cap ([mounts.NAME.placement] max_rate)
        items = _blob_items(repo, manifest)
        total = sum(i.size for i in items)
        if dest.primary or to in read_record(primary.store).sites_of(h):
            return PlaceReport(url, h, to, primary.name, len(items), total, TransferReport(objects=len(items)), True)
        run = uuid.uuid4().hex[:12]
        holder = f"{socket.gethostname()}:{os.getpid()}"

        def mark(rec: PlacementRecord) -> None:
            rec.inflight.setdefault(h, {}).setdefault(to, {})[run] = {"started": time.time(), "holder": holder}

        def unmark(rec: PlacementRecord) -> None:
            runs = rec.inflight.get(h, {}).get(to, {})
            runs.pop(run, None)
            if not runs:
                rec.inflight.get(h, {}).pop(to, None)
            if not rec.inflight.get(h, True):
                rec.inflight.pop(h, None)

        # The source blobs stay pinned while they are copied (GC keeps leased snapshots).
        report = TransferReport(objects=len(items), max_rate=max_rate)
        yielding = reader_yield(primary, dest, read_record(primary.store)) if yield_to_readers else None
        with Lease(primary.store, h, primary.name, purpose="copy"):
            for attempt in range(_PUBLISH_TRIES):
                epoch = update_record(primary.store, mark).drop_epoch(to)  # before any blob is checked
                try:
                    part = copy_objects(
                        primary.store,
                        dest.store,
                        items,
                        workers=workers,
                        part_bytes=part_bytes,
                        max_rate=max_rate,
                        progress=progress,
                        label=f"place {url} -> {to}",
                        delete_bad=False,  # concurrent runs may write the same blob; only drop deletes
                        nice=nice,
                        yield_to=yielding,
                    )
                    _copy_manifest(repo, h, dest.store)
                except BaseException:
                    try:
                        update_record(primary.store, unmark)
                    except StorecompError:
                        pass  # the in-flight mark stays; `place --status` shows its age
                    raise
                _add(report, part)

                def publish(rec: PlacementRecord, epoch: int = epoch, part: TransferReport = part) -> None:
                    # A drop at `to` that started after our mark, or is still deleting, may have
                    # removed a blob we found present: verify everything again before publishing.
                    if rec.drop_epoch(to) != epoch or rec.dropping(to):
                        raise _DropRaced(f"{url}: a drop at {to} ran during the copy")
                    unmark(rec)
                    rec.inflight.get(h, {}).pop(to, None)  # complete now: marks of runs that died are moot
                    if not rec.inflight.get(h, True):
                        rec.inflight.pop(h, None)
                    rec.complete.setdefault(h, {})[to] = {"time": time.time(), "bytes": total}
                    if (
                        part.bytes_copied and part.seconds > 0 and part.yield_rate is None
                    ):  # a slowed copy says nothing of the link
                        rec.rates[f"{primary.name}->{to}"] = part.bytes_copied / part.seconds

                try:
                    update_record(primary.store, publish)
                    break
                except _DropRaced:
                    time.sleep(min(2.0, 0.1 * 2**attempt))
            else:
                update_record(primary.store, unmark)
                raise ConflictError(f"{url}: a drop at site {to} kept running; nothing published, place again later")
        return PlaceReport(url, h, to, primary.name, len(items), total, report)
    finally:
        if namespace is None:
            ns.close()


def reader_yield(src: Site, dst: Site, rec: PlacementRecord, fraction: float = YieldPolicy.fraction) -> YieldPolicy:
    """The :class:`YieldPolicy` of a copy ``src`` -> ``dst``: readers are live
    "read" leases (any snapshot of the mount) at either site, listed at the
    primary (``src``); the copy's rate before it measures its own is the
    record's last ``src->dst`` rate, else the fastest recorded from ``src``,
    else one 4 MiB write probed at ``dst``."""
    sites = {src.name, dst.name}

    def readers() -> bool:
        return any(le.live and le.purpose == "read" and le.site in sites for le in leases(src.store))

    def base_rate() -> float:
        rate = rec.rates.get(f"{src.name}->{dst.name}") or max(
            (r for k, r in rec.rates.items() if k.startswith(f"{src.name}->")), default=0.0
        )
        return rate or probe_write_rate(dst.store)

    return YieldPolicy(readers, fraction, base_rate)


def _add(total: TransferReport, part: TransferReport) -> None:
    for f in (
        "copied",
        "skipped",
        "recopied",
        "bytes_copied",
        "bytes_skipped",
        "bytes_verified",
        "bytes_uploaded",
        "bytes_resumed",
        "seconds",
        "yielded_s",
        "verify_s",
        "put_s",
        "source_s",
    ):
        setattr(total, f, getattr(total, f) + getattr(part, f))
    total.yield_rate = part.yield_rate if part.yield_rate is not None else total.yield_rate
    if part.objects and total.skipped > part.objects:  # a second pass re-verifies: count each blob once
        total.skipped, total.bytes_skipped = part.skipped, part.bytes_skipped


def _copy_manifest(repo: Repository, h: str, dst: Store) -> None:
    key = repo.manifest_key(h)
    raw = repo.primary.get(key)
    if sha256_hex(raw) != h:
        raise CorruptDataError(f"{repo.primary.url}/{key}: manifest content does not match its SHA-256 name")
    try:
        if sha256_hex(dst.get(key)) == h:
            return
    except NotFoundError:
        pass
    dst.put(key, raw)
    if sha256_hex(dst.get(key)) != h:
        raise CorruptDataError(f"{dst.url}/{key}: manifest failed verification at the destination")


def publish(url: str, folder: str | os.PathLike[str], *, namespace: Namespace | None = None) -> str:
    """Publish every file under ``folder`` (by its path relative to ``folder``) as
    snapshot ``sc://mount/name`` at the mount's primary; returns the manifest hash.

    Each file becomes a content-addressed blob with its crc32c sidecar (only
    blobs the primary lacks are uploaded), and the ref moves last, by
    compare-and-swap: a reader sees the old snapshot or the new, never a mix.
    This is what :func:`place` copies and ``open_dataset(url)`` reads from the
    nearest complete copy. InvalidArgumentError for a URL that is not
    ``sc://mount/name`` or a folder with no files.
    """
    mount, name = split_snapshot_url(url)
    root = os.fspath(folder)
    files = sorted(
        os.path.relpath(path, root)
        for d, _, names in os.walk(root)
        for path in (os.path.join(d, f) for f in names)
        if os.path.isfile(path) and not os.path.islink(path)  # regular files; links are not followed out of the folder
    )
    if not files:
        raise InvalidArgumentError(f"{root}: no files to publish as {url}")
    ns = namespace or Namespace()
    try:
        # The mount's own store: writes reach the primary through every wrapper (an
        # encrypting mount's blobs are sealed; never the raw replica behind it).
        w = Repository(ns.store(mount)).writer()
        for rel in files:
            # One file in memory at a time (a shard: 256 MiB by default). Not an mmap: an
            # S3 client may hold a view of the bytes a moment after put returns.
            with open(os.path.join(root, rel), "rb") as f:
                w.add(rel, f.read())
        return w.commit(name)
    finally:
        if namespace is None:
            ns.close()


# ---------------------------------------------------------------- drop, plan, status


def drop(url: str, site: str, *, namespace: Namespace | None = None, manifest_hash: str | None = None) -> int:
    """Remove ``site``'s copy of snapshot ``sc://mount/name`` (of manifest
    ``manifest_hash`` when given: a snapshot the ref no longer names); returns
    blob bytes deleted.

    Refused (ConflictError) for the primary (the write site, the one copy
    always complete), for a site without a complete copy of it, and while a
    live lease names the copy. Blobs another snapshot placed at ``site`` still
    uses are kept.
    """
    ns = namespace or Namespace()
    try:
        mount, sites, primary, repo, h, manifest = snapshot_at(ns, url)
        if manifest_hash is not None:
            h, manifest = manifest_hash, repo.get_manifest(manifest_hash)
        dest = site_named(sites, site, mount)
        rec = read_record(primary.store)
        others = (rec.sites_of(h) | {primary.name}) - {site}
        if dest.primary or not others:
            raise ConflictError(f"{url}: refusing to drop the only complete copy guaranteed to stay ({site} is the primary)")
        if site not in rec.sites_of(h):
            raise ConflictError(f"{url}: site {site} holds no complete copy of {h[:12]} (see `storecomp place --status`)")
        refuse_if_leased(primary.store, url, h, site)

        my_epoch = [0]

        def unpublish(r: PlacementRecord) -> None:
            if site not in r.sites_of(h):
                raise ConflictError(f"{url}: site {site} holds no complete copy of {h[:12]} (dropped meanwhile)")
            r.complete.get(h, {}).pop(site, None)
            if not r.complete.get(h, True):
                r.complete.pop(h, None)
            # Placements verifying blobs at `site` while this drop deletes see the epoch move and verify again.
            d = r.drops.setdefault(site, {"epoch": 0, "done": 0, "time": 0.0})
            d["epoch"], d["time"] = d["epoch"] + 1, time.time()
            my_epoch[0] = int(d["epoch"])

        def finished(r: PlacementRecord) -> None:
            d = r.drops.setdefault(site, {"epoch": my_epoch[0], "done": 0, "time": 0.0})
            d["done"] = max(d["done"], my_epoch[0])

        def restore(r: PlacementRecord) -> None:
            finished(r)
            r.complete.setdefault(h, {})[site] = {"time": time.time(), "bytes": manifest.total_bytes}

        rec = update_record(primary.store, unpublish)
        try:
            refuse_if_leased(primary.store, url, h, site)  # a reader that pinned it meanwhile
        except ConflictError:
            update_record(primary.store, restore)
            raise
        keep: set[str] = set()  # blobs of other snapshots complete or in flight at `site`
        for other in set(rec.complete) | set(rec.inflight):
            if other != h and (site in rec.complete.get(other, {}) or site in rec.inflight.get(other, {})):
                keep.update(e.blob for e in repo.get_manifest(other).entries.values())
        freed = 0
        try:
            for e in {e.blob: e for e in manifest.entries.values()}.values():
                if e.blob not in keep:
                    dest.store.delete(repo.blob_key(e.blob))
                    freed += e.size
        finally:
            update_record(primary.store, finished)
        return freed
    finally:
        if namespace is None:
            ns.close()


@dataclass
class Plan:
    """What :func:`plan` found: bytes to move to ``site`` and the estimated time."""

    url: str
    manifest: str
    site: str
    blobs: int
    bytes_total: int
    blobs_missing: int
    bytes_missing: int
    rate: float  # bytes/s used for the estimate
    rate_from: str  # "last copy" or "probe"
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def plan(url: str, to: str, *, namespace: Namespace | None = None, probe_bytes: int = 4 << 20) -> Plan:
    """Dry run of :func:`place`: the blobs ``to`` lacks (by presence and size)
    and the time to copy them at the rate the last copy measured, else at a
    rate probed now (one ``probe_bytes`` object written to ``to`` and removed)."""
    ns = namespace or Namespace()
    try:
        mount, sites, primary, repo, h, manifest = snapshot_at(ns, url)
        dest = site_named(sites, to, mount)
        items = _blob_items(repo, manifest)
        rec = read_record(primary.store)
        missing = []
        if not dest.primary and to not in rec.sites_of(h):
            for it in items:
                try:
                    if dest.store.stat(it.dst_key).size == it.size:
                        continue
                except NotFoundError:
                    pass
                missing.append(it)
        nbytes = sum(i.size for i in missing)
        rate, source = rec.rates.get(f"{primary.name}->{to}", 0.0), "last copy"
        if rate <= 0 and nbytes:
            rate, source = probe_write_rate(dest.store, probe_bytes), "probe"
        secs = nbytes / rate if rate > 0 else 0.0
        return Plan(url, h, to, len(items), sum(i.size for i in items), len(missing), nbytes, rate, source, secs)
    finally:
        if namespace is None:
            ns.close()


def probe_write_rate(store: Store, nbytes: int = 4 << 20) -> float:
    """Bytes/s of one ``nbytes`` put to ``store`` (a temporary object, removed)."""
    key = f"placement/probe/{uuid.uuid4().hex}"
    data = np.random.default_rng().integers(0, 256, nbytes, dtype=np.uint8)
    t0 = time.perf_counter()
    store.put(key, data)
    dt = time.perf_counter() - t0
    store.delete(key)
    return nbytes / max(dt, 1e-9)


def status(mount: str, *, namespace: Namespace | None = None) -> dict[str, Any]:
    """Where each snapshot (ref) of ``mount`` lives, what is in flight and who holds leases."""
    ns = namespace or Namespace()
    try:
        sites = mount_sites(ns, mount)
        primary = primary_site(sites)
        repo = Repository(primary.store)
        rec = read_record(primary.store)
        live = [le for le in leases(primary.store) if le.live]
        snaps = []
        for name in repo.refs():
            state = repo.read_ref(name)
            if state is None:
                continue
            h = state.manifest
            try:
                m = repo.get_manifest(h)
                nbytes, nblobs = m.total_bytes, len({e.blob for e in m.entries.values()})
            except StorecompError:
                nbytes, nblobs = -1, -1
            snaps.append(
                {
                    "name": name,
                    "url": f"{SCHEME}{mount}/{name}",
                    "manifest": h,
                    "bytes": nbytes,
                    "blobs": nblobs,
                    "complete": [primary.name, *sorted(rec.sites_of(h) - {primary.name})],
                    "in_flight": {
                        s: [
                            {"run": r, "age_s": round(time.time() - v.get("started", 0), 1), "holder": v.get("holder")}
                            for r, v in runs.items()
                        ]
                        for s, runs in rec.inflight.get(h, {}).items()
                    },
                    "leases": [
                        {"site": le.site, "holder": le.holder, "expires_in_s": round(le.expires - time.time(), 1)}
                        for le in live
                        if le.manifest == h
                    ],
                }
            )
        return {
            "mount": f"{SCHEME}{mount}",
            "primary": primary.name,
            "sites": [s.name for s in sites],
            "generation": rec.generation,
            "snapshots": snaps,
            "rates": rec.rates,
        }
    finally:
        if namespace is None:
            ns.close()


# ---------------------------------------------------------------- probe, decide


def probe_site(store: Store, nbytes: int = 4 << 20) -> dict[str, Any]:
    """Measure one site now: ``latency_s`` (a small list call), ``write_bps`` and
    ``read_bps`` (one ``nbytes`` object written, read back and removed; 0 when
    the site refuses writes). ``error`` holds why a measure failed."""
    out: dict[str, Any] = {"latency_s": None, "write_bps": 0.0, "read_bps": 0.0, "error": ""}
    try:
        t0 = time.perf_counter()
        next(iter(store.list("placement/probe/")), None)
        out["latency_s"] = time.perf_counter() - t0
        key = f"placement/probe/{uuid.uuid4().hex}"
        data = np.random.default_rng().integers(0, 256, nbytes, dtype=np.uint8)
        t0 = time.perf_counter()
        store.put(key, data)
        out["write_bps"] = nbytes / max(time.perf_counter() - t0, 1e-9)
        try:
            buf = np.empty(nbytes, np.uint8)
            t0 = time.perf_counter()
            store.read_ranges(key, [0], [nbytes], buf, [0])
            out["read_bps"] = nbytes / max(time.perf_counter() - t0, 1e-9)
        finally:
            store.delete(key)
    except StorecompError as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


@dataclass
class Decision:
    """What ``place --auto`` decided and why (times in seconds, rates in bytes/s)."""

    url: str
    site: str
    copy: bool
    why: str
    stay_s: float
    copy_s: float
    measures: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def decide(url: str, near: str, *, reads: float = 1.0, namespace: Namespace | None = None) -> Decision:
    """Whether to copy ``sc://mount/name`` to site ``near`` before reading it
    ``reads`` times there (the rule in docs/placement.md): copy when

        missing / copy_rate + reads * size / read_rate(near)  <  reads * size / read_rate(nearest complete copy)

    with rates measured now (:func:`probe_site`; the copy rate is the last
    copy's, else min(source read, ``near`` write))."""
    if reads < 0:
        raise InvalidArgumentError(f"reads must be >= 0, got {reads}")
    ns = namespace or Namespace()
    try:
        mount, sites, primary, _, h, manifest = snapshot_at(ns, url)
        dest = site_named(sites, near, mount)
        rec = read_record(primary.store)
        complete = rec.sites_of(h) | {primary.name}
        size = manifest.total_bytes
        if near in complete:
            return Decision(url, near, False, f"{near} already holds a complete copy", 0.0, 0.0, {})
        src = next(s for s in sites if s.name in complete)
        m_src, m_dst = probe_site(src.store), probe_site(dest.store)
        measures = {src.name: m_src, near: m_dst}
        p = plan(url, near, namespace=ns)
        copy_rate = rec.rates.get(f"{primary.name}->{near}") or min(m_src["read_bps"], m_dst["write_bps"])
        if m_dst["error"] or m_src["error"] or copy_rate <= 0 or m_dst["read_bps"] <= 0 or m_src["read_bps"] <= 0:
            why = f"cannot measure ({m_dst['error'] or m_src['error'] or 'a rate is 0'}): staying on {src.name}"
            return Decision(url, near, False, why, 0.0, 0.0, measures)
        stay = reads * size / m_src["read_bps"]
        copy = p.bytes_missing / copy_rate + reads * size / m_dst["read_bps"]
        do = copy < stay
        why = (
            f"reading {reads:g} x {size} bytes from {src.name} at {m_src['read_bps'] / 2**20:.1f} MiB/s takes {stay:.2f} s; "
            f"copying {p.bytes_missing} bytes at {copy_rate / 2**20:.1f} MiB/s and reading at {near} at "
            f"{m_dst['read_bps'] / 2**20:.1f} MiB/s takes {copy:.2f} s: {'copy to ' + near if do else 'stay on ' + src.name}"
        )
        return Decision(url, near, do, why, stay, copy, measures)
    finally:
        if namespace is None:
            ns.close()


# ---------------------------------------------------------------- plain objects (a KV shared pool)


def place_prefix(
    url: str,
    to: str,
    *,
    namespace: Namespace | None = None,
    max_rate: float | None = None,
    workers: int = DEFAULT_WORKERS,
    part_bytes: int = DEFAULT_PART_BYTES,
    progress: bool = False,
    nice: int = 0,
    yield_to_readers: bool = True,
) -> TransferReport:
    """Copy every object under ``sc://mount/prefix/`` from the mount's primary to
    site ``to``: plain immutable objects such as a KV shared pool
    (docs/placement.md, "KV shared prefixes"). Only objects missing at ``to``
    or different there move; each one's crc32c is computed while it streams
    and checked read back at ``to``. No record is published: such objects are
    usable one by one (a reader missing one at ``to`` falls back to another
    replica). ``max_rate`` (None: the policy's), ``yield_to_readers`` and the
    errors are those of :func:`place`."""
    if not isinstance(url, str) or not url.startswith(SCHEME) or not url.endswith("/"):
        raise InvalidArgumentError(f"{url!r}: expected sc://mount/prefix/ (ending in '/')")
    mount, _, prefix = url[len(SCHEME) :].partition("/")
    if not mount or prefix.startswith("/") or ".." in prefix.split("/"):
        raise InvalidArgumentError(f"{url!r}: expected sc://mount/prefix/")
    ns = namespace or Namespace()
    try:
        sites = mount_sites(ns, mount)
        primary, dest = primary_site(sites), site_named(sites, to, mount)
        policy = ns.mounts[mount].placement
        if max_rate is None and policy is not None:
            max_rate = policy.max_rate
        if dest.primary:
            return TransferReport(max_rate=max_rate)
        items = [CopyItem(o.key, o.key, o.size) for o in primary.store.list(prefix) if not o.key.startswith("placement/")]
        yielding = reader_yield(primary, dest, read_record(primary.store)) if yield_to_readers else None
        return copy_objects(
            primary.store,
            dest.store,
            items,
            workers=workers,
            part_bytes=part_bytes,
            max_rate=max_rate,
            progress=progress,
            label=f"place {url} -> {to}",
            delete_bad=False,  # another run may be writing the same object
            nice=nice,
            yield_to=yielding,
        )
    finally:
        if namespace is None:
            ns.close()
