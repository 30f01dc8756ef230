"""Where a mount's snapshots are: its sites, and the placement record.

A mount (``sc://mount``) has replicas in sites; its datasets are snapshots
(:mod:`storecomp.store.snapshots`). The *placement record*, one JSON object
per mount at its primary (``placement/record.json``), moved only by
compare-and-swap, says per snapshot (manifest hash) which non-primary sites
hold a complete, verified copy, which copies are in flight, the last
measured copy rates and the drops under way. The primary holds every
committed snapshot (writers commit there) and is always complete.
Readers' leases (:mod:`storecomp.store.leases`) sit beside it.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError
from .base import Store
from .leases import leases
from .mounts import SCHEME
from .namespace import Namespace
from .replicas import ReplicatedStore
from .snapshots import Manifest, Repository

RECORD_KEY = "placement/record.json"
RECORD_FORMAT = "storecomp.placement/1"
#: Tries of a compare-and-swap (or a consistent read) of the record before ConflictError.
CAS_RETRIES = 32
#: A drop that has not finished after this many seconds is taken for dead (its process was killed).
DROP_STALE_S = 600.0


# ---------------------------------------------------------------- sites


@dataclass(frozen=True)
class Site:
    """One replica of a mount: its site name (the replica's URL when it has none) and store."""

    name: str
    url: str
    store: Store
    primary: bool
    preference: int


def mount_sites(ns: Namespace, mount: str) -> list[Site]:
    """The sites of ``mount`` in read order (this node's site first, then
    preference and measured latency). InvalidArgumentError for an unknown mount."""
    st = ns.store(mount)
    inner = getattr(st, "inner", None)  # a cache tier in front of the mount
    if isinstance(inner, Store):
        st = inner
    m = ns.mounts[mount]
    primary = m.primary_replica
    if isinstance(st, ReplicatedStore):
        order, stores = st.read_order(), st.stores
    else:
        order, stores = [0], [st]
    return [
        Site(
            m.replicas[i].site or m.replicas[i].url,
            m.replicas[i].url,
            stores[i],
            m.replicas[i] is primary,
            m.replicas[i].preference,
        )
        for i in order
    ]


def site_named(sites: list[Site], name: str, mount: str) -> Site:
    for s in sites:
        if s.name == name:
            return s
    known = ", ".join(s.name for s in sites)
    raise InvalidArgumentError(f"{SCHEME}{mount}: no site {name!r} (sites: {known})")


def primary_site(sites: list[Site]) -> Site:
    return next(s for s in sites if s.primary)


def split_snapshot_url(url: str) -> tuple[str, str]:
    """``sc://mount/name`` -> ``(mount, name)``; InvalidArgumentError otherwise."""
    if not isinstance(url, str) or not url.startswith(SCHEME):
        raise InvalidArgumentError(f"{url!r}: expected sc://mount/name (a snapshot of a mount)")
    mount, _, name = url[len(SCHEME) :].partition("/")
    if not mount or not name or name.endswith("/"):
        raise InvalidArgumentError(f"{url!r}: expected sc://mount/name (a snapshot of a mount)")
    return mount, name


def snapshot_at(ns: Namespace, url: str) -> tuple[str, list[Site], Site, Repository, str, Manifest]:
    mount, name = split_snapshot_url(url)
    sites = mount_sites(ns, mount)
    primary = primary_site(sites)
    repo = Repository(primary.store)
    state = repo.read_ref(name)
    if state is None:
        raise NotFoundError(2, f"{url} (ref {primary.url}/{repo.ref_key(name)})", None, "resolve snapshot")
    return mount, sites, primary, repo, state.manifest, repo.get_manifest(state.manifest)


# ---------------------------------------------------------------- the record


@dataclass
class PlacementRecord:
    """Per snapshot (manifest hash): complete non-primary sites and copies in flight.

    ``complete[h][site] = {"time", "bytes"}``; ``inflight[h][site][run] =
    {"started", "holder"}``; ``rates["SRC->DST"]`` = bytes/s of the last copy.
    """

    complete: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    inflight: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    drops: dict[str, dict[str, float]] = field(default_factory=dict)  # site -> {"epoch", "done", "time"}
    generation: int = 0
    version: str | None = None  # the record object's version (None: no record yet)

    def sites_of(self, manifest: str) -> set[str]:
        return set(self.complete.get(manifest, {}))

    def to_bytes(self) -> bytes:
        doc = {
            "format": RECORD_FORMAT,
            "generation": self.generation,
            "complete": self.complete,
            "inflight": self.inflight,
            "rates": self.rates,
            "drops": self.drops,
        }
        return json.dumps(doc, sort_keys=True).encode()

    def drop_epoch(self, site: str) -> int:
        return int(self.drops.get(site, {}).get("epoch", 0))

    def dropping(self, site: str) -> bool:
        """True while a drop at ``site`` that started less than DROP_STALE_S ago has not finished."""
        d = self.drops.get(site)
        return d is not None and d["epoch"] != d["done"] and time.time() - d["time"] < DROP_STALE_S

    @classmethod
    def from_bytes(cls, raw: bytes, version: str, name: str) -> PlacementRecord:
        try:
            doc = json.loads(raw)
            if doc.get("format") != RECORD_FORMAT:
                raise CorruptDataError(f"{name}: not a {RECORD_FORMAT} record (format {doc.get('format')!r})")
            return cls(
                {h: dict(v) for h, v in doc["complete"].items()},
                {h: {s: dict(r) for s, r in v.items()} for h, v in doc.get("inflight", {}).items()},
                {k: float(v) for k, v in doc.get("rates", {}).items()},
                {k: {f: float(x) for f, x in v.items()} for k, v in doc.get("drops", {}).items()},
                int(doc.get("generation", 0)),
                version,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptDataError(f"{name}: malformed placement record: {e}") from None


def read_record(primary: Store) -> PlacementRecord:
    """The mount's placement record (empty when none was written yet)."""
    for _ in range(CAS_RETRIES):
        try:
            info = primary.stat(RECORD_KEY)
            raw = primary.get(RECORD_KEY)
        except NotFoundError:
            return PlacementRecord()
        if primary.stat(RECORD_KEY).version == info.version:  # a consistent (version, bytes) pair
            return PlacementRecord.from_bytes(raw, info.version, f"{primary.url}/{RECORD_KEY}")
    raise ConflictError(f"{primary.url}/{RECORD_KEY}: placement record kept changing while being read")


def update_record(primary: Store, change: Callable[[PlacementRecord], None]) -> PlacementRecord:
    """Apply ``change`` to the current record and publish it by compare-and-swap;
    on a lost race ``change`` is applied again to the newer record (no lost update)."""
    for attempt in range(CAS_RETRIES):
        rec = read_record(primary)
        change(rec)
        rec.generation += 1
        try:
            info = primary.compare_and_swap(RECORD_KEY, rec.version, rec.to_bytes())
        except ConflictError:
            time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
            continue
        rec.version = info.version
        return rec
    raise ConflictError(f"{primary.url}/{RECORD_KEY}: lost {CAS_RETRIES} compare-and-swap races to other writers")


def refuse_if_leased(primary: Store, url: str, h: str, site: str) -> None:
    held = [le for le in leases(primary, manifest=h) if le.live and le.site == site]
    if held:
        raise ConflictError(
            f"{url}: {len(held)} reader(s) hold a lease on the copy at {site} (e.g. {held[0].holder}); not dropped"
        )
