"""Leases: a reader's pin on a snapshot at a site, so that GC and ``place --drop``
leave alone what it still reads.

A lease is one small object at the mount's primary,
``placement/leases/<manifest>/<id>.json`` = ``{"manifest", "site", "holder",
"expires"}`` (expires: Unix time, seconds). Each holder writes only its own
lease (no contention between readers); :class:`Lease` renews it every third
of its ``ttl_s`` on a daemon thread and deletes it on release. A holder that
dies stops renewing, and its lease lapses after ``ttl_s``. GC
(:meth:`Repository.gc`) keeps every manifest with a live lease, and
``place --drop`` refuses a site a live lease names.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, NotFoundError, StorecompError
from .base import Store

LEASE_PREFIX = "placement/leases/"
DEFAULT_TTL_S = 60.0


@dataclass(frozen=True)
class LeaseInfo:
    """A live or lapsed lease as stored."""

    id: str
    manifest: str
    site: str
    holder: str
    expires: float
    #: "read" (a reader pins what it reads: copies yield to it) or "copy" (a placement's source pin).
    purpose: str = "read"

    @property
    def live(self) -> bool:
        return self.expires > time.time()


def _key(prefix: str, manifest: str, lease_id: str) -> str:
    return f"{prefix}{LEASE_PREFIX}{manifest}/{lease_id}.json"


def leases(store: Store, prefix: str = "", manifest: str | None = None) -> list[LeaseInfo]:
    """Every lease (of ``manifest`` when given) under ``prefix`` of the primary
    ``store``, lapsed ones included; unreadable entries are skipped."""
    base = f"{prefix}{LEASE_PREFIX}" + (f"{manifest}/" if manifest else "")
    out: list[LeaseInfo] = []
    for info in store.list(base):
        try:
            doc = json.loads(store.get(info.key))
            lease_id = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            out.append(
                LeaseInfo(
                    lease_id,
                    str(doc["manifest"]),
                    str(doc["site"]),
                    str(doc["holder"]),
                    float(doc["expires"]),
                    str(doc.get("purpose", "read")),
                )
            )
        except NotFoundError:
            continue  # released while listing
        except (ValueError, KeyError, TypeError):
            continue  # a torn or foreign object: it pins nothing
    return out


def leased_manifests(store: Store, prefix: str = "") -> set[str]:
    """Manifests that a live lease pins (GC roots)."""
    return {lease.manifest for lease in leases(store, prefix) if lease.live}


def sweep_lapsed(store: Store, prefix: str = "", grace_s: float = 3600.0) -> int:
    """Delete leases lapsed for more than ``grace_s`` seconds; returns how many."""
    n = 0
    for lease in leases(store, prefix):
        if lease.expires + grace_s < time.time():
            store.delete(_key(prefix, lease.manifest, lease.id))
            n += 1
    return n


class Lease:
    """A renewed pin on snapshot ``manifest`` at ``site`` (a context manager).

    ``store``: the mount's primary; ``ttl_s``: seconds a lease outlives its
    last renewal. Renewal failures are kept in :attr:`error` (the lease then
    lapses after ``ttl_s``); :meth:`release` is idempotent. ``purpose``:
    "read" (copies touching ``site`` yield to the holder) or "copy".
    """

    def __init__(
        self,
        store: Store,
        manifest: str,
        site: str,
        *,
        prefix: str = "",
        ttl_s: float = DEFAULT_TTL_S,
        purpose: str = "read",
    ) -> None:
        if ttl_s <= 0:
            raise InvalidArgumentError(f"lease ttl_s must be positive, got {ttl_s}")
        if purpose not in ("read", "copy"):
            raise InvalidArgumentError(f"lease purpose must be 'read' or 'copy', got {purpose!r}")
        self.store, self.manifest, self.site, self.ttl_s = store, manifest, site, ttl_s
        self.purpose = purpose
        self.id = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.key = _key(prefix, manifest, self.id)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._write()
        self._thread = threading.Thread(target=self._renew, name="sc-lease", daemon=True)
        self._thread.start()

    def _write(self) -> None:
        doc: dict[str, Any] = {
            "manifest": self.manifest,
            "site": self.site,
            "holder": self.holder,
            "expires": time.time() + self.ttl_s,
            "purpose": self.purpose,
        }
        self.store.put(self.key, json.dumps(doc).encode())

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._write()
                self.error = None
            except StorecompError as e:
                self.error = e

    def move(self, site: str) -> None:
        """Pin the snapshot at ``site`` instead (a reader switching copies)."""
        self.site = site
        self._write()

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self.store.delete(self.key)
        except StorecompError:
            pass  # lapses after ttl_s

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
