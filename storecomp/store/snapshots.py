"""Immutable blobs, manifests and refs: atomic publishing without a lock server.

Layout of keys under a repository's ``prefix`` (the protocol, with the GC
safety argument and failure cases, is in docs/store.md)::

    blobs/sha256/<h[:2]>/<h>            blob bytes, h = SHA-256 of the bytes
    blobs/sha256/<h[:2]>/<h>.crc32c     its checksum sidecar (integrity.py)
    manifests/<m[:2]>/<m>.json          a snapshot, m = SHA-256 of the JSON
    refs/<name>                         JSON {manifest, generation, history, time}

Blobs and manifests are content-addressed and written with put_if_absent,
so duplicate writers are harmless and nothing visible ever changes. A ref is
the only mutable object; it moves only by compare-and-swap, retried a
bounded number of times (then :class:`ConflictError`).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConflictError, CorruptDataError, InvalidArgumentError, NotFoundError
from .base import Store
from .integrity import DEFAULT_CHUNK_BYTES, Checksums, read_verified, sidecar_key
from .keys import payload_view, validate_key
from .replicas import primary_of

MANIFEST_FORMAT = "storecomp.manifest/1"
_HEX = frozenset("0123456789abcdef")


def sha256_hex(data: Any) -> str:
    """SHA-256 of a bytes-like object, as 64 hex digits."""
    return hashlib.sha256(payload_view(data)).hexdigest()


def _check_hash(h: str) -> str:
    if not isinstance(h, str) or len(h) != 64 or not set(h) <= _HEX:
        raise InvalidArgumentError(f"{h!r} is not a SHA-256 hex digest")
    return h


@dataclass(frozen=True)
class Entry:
    """One file of a snapshot: its blob, size (bytes) and chunk checksums."""

    blob: str
    size: int
    checksums: Checksums

    def to_json(self) -> dict[str, Any]:
        return {"blob": self.blob, "size": self.size, **self.checksums.to_json()}

    @classmethod
    def from_json(cls, obj: Any, name: str) -> Entry:
        try:
            return cls(_check_hash(obj["blob"]), int(obj["size"]), Checksums.from_json(obj["size"], obj, name))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptDataError(f"{name}: malformed manifest entry: {e}") from None


@dataclass(frozen=True)
class Manifest:
    """A snapshot: paths to entries, free-form ``meta`` and the ``parent`` manifest hash."""

    entries: Mapping[str, Entry]
    meta: Mapping[str, Any] = field(default_factory=dict)
    parent: str | None = None

    def to_bytes(self) -> bytes:
        doc = {
            "format": MANIFEST_FORMAT,
            "parent": self.parent,
            "meta": dict(self.meta),
            "entries": {p: e.to_json() for p, e in sorted(self.entries.items())},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, name: str) -> Manifest:
        try:
            doc = json.loads(raw)
            if doc.get("format") != MANIFEST_FORMAT:
                raise CorruptDataError(f"{name}: not a {MANIFEST_FORMAT} manifest (format {doc.get('format')!r})")
            entries = {p: Entry.from_json(e, f"{name}: {p}") for p, e in doc["entries"].items()}
            return cls(entries, doc.get("meta") or {}, doc.get("parent"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptDataError(f"{name}: malformed manifest: {e}") from None

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())


@dataclass(frozen=True)
class RefState:
    """What a ref says: the current manifest, a counter, recent previous manifests."""

    manifest: str
    generation: int
    history: tuple[str, ...] = ()
    time: float = 0.0
    version: str = ""  # the ref object's version token (for compare-and-swap)

    def to_bytes(self) -> bytes:
        doc = {"manifest": self.manifest, "generation": self.generation, "history": list(self.history), "time": self.time}
        return json.dumps(doc, sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, raw: bytes, version: str, name: str) -> RefState:
        try:
            doc = json.loads(raw)
            return cls(
                _check_hash(doc["manifest"]),
                int(doc["generation"]),
                tuple(_check_hash(h) for h in doc.get("history", ())),
                float(doc.get("time", 0.0)),
                version,
            )
        except (ValueError, KeyError, TypeError, InvalidArgumentError) as e:
            raise CorruptDataError(f"{name}: malformed ref: {e}") from None


@dataclass
class GCReport:
    """What :meth:`Repository.gc` found and removed (bytes are blob bytes)."""

    roots: int = 0
    reachable_blobs: int = 0
    deleted_blobs: int = 0
    deleted_bytes: int = 0
    deleted_manifests: int = 0
    kept_young: int = 0
    dry_run: bool = False


class Repository:
    """Blobs, manifests and refs under ``prefix`` of ``store``.

    ``grace_s``: GC never deletes a blob or manifest younger than this
    (seconds), and a writer must commit within half of it.
    ``keep_history``: previous manifests a ref keeps reachable.
    ``cas_retries``: compare-and-swap attempts before ConflictError.
    """

    def __init__(
        self,
        store: Store,
        prefix: str = "",
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        grace_s: float = 3600.0,
        keep_history: int = 2,
        cas_retries: int = 16,
    ) -> None:
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        if prefix:
            validate_key(prefix[:-1])
        if grace_s <= 0 or cas_retries < 1 or keep_history < 0 or chunk_bytes <= 0:
            raise InvalidArgumentError("grace_s, cas_retries, chunk_bytes must be positive and keep_history >= 0")
        self.store, self.prefix = store, prefix
        # Refs, freshness checks and GC go to the primary: a replica may lag.
        self.primary = primary_of(store)
        self.chunk_bytes, self.grace_s = chunk_bytes, grace_s
        self.keep_history, self.cas_retries = keep_history, cas_retries

    # ------------------------------------------------------------ keys

    def blob_key(self, h: str) -> str:
        return f"{self.prefix}blobs/sha256/{h[:2]}/{_check_hash(h)}"

    def manifest_key(self, h: str) -> str:
        return f"{self.prefix}manifests/{h[:2]}/{_check_hash(h)}.json"

    def ref_key(self, name: str) -> str:
        return validate_key(f"{self.prefix}refs/{name}")

    # ------------------------------------------------------------ blobs

    def put_blob(self, data: Any) -> Entry:
        """Store ``data`` as a blob (idempotent); returns its entry."""
        view = payload_view(data)
        h = sha256_hex(view)
        sums = Checksums.compute(view, self.chunk_bytes)
        key = self.blob_key(h)
        self.store.put_if_absent(sidecar_key(key), sums.to_bytes())  # sidecar first: a visible blob has one
        if not self.store.put_if_absent(key, view):
            self._refresh_if_old(key, view)
        return Entry(h, len(view), sums)

    def _refresh_if_old(self, key: str, data: Any) -> None:
        """Rewrite an existing content-addressed object whose age is past half
        the grace period, so GC sees it young while this writer commits."""
        try:
            info = self.primary.stat(key)
        except NotFoundError:
            self.store.put(key, data)  # collected between our put_if_absent and now
            return
        if info.mtime is not None and time.time() - info.mtime > self.grace_s / 2:
            self.store.put(key, data)

    def read_blob(self, entry: Entry, offset: int = 0, length: int | None = None) -> bytes:
        """Verified bytes of a blob (``length`` bytes from ``offset``, or to the end)."""
        n = entry.size - offset if length is None else min(length, entry.size - offset)
        buf = np.empty(max(0, n), np.uint8)
        if buf.size:
            self.read_blob_into(entry, buf, [offset], [buf.size], [0])
        return buf.tobytes()

    def read_blob_into(self, entry: Entry, dst: np.ndarray, offsets: Any, lengths: Any, dst_offsets: Any) -> np.ndarray:
        """Verified ranged reads of a blob into host array ``dst``; bytes read per range."""
        key = self.blob_key(entry.blob)
        try:
            return read_verified(
                self.store, key, entry.checksums, offsets, lengths, dst, dst_offsets, name=f"{self.store.url}/{key}"
            )
        except NotFoundError:
            if self.primary is self.store:
                raise
            # A replica that has not caught up yet: the primary has every committed blob.
            return read_verified(
                self.primary, key, entry.checksums, offsets, lengths, dst, dst_offsets, name=f"{self.primary.url}/{key}"
            )

    # ------------------------------------------------------------ manifests

    def put_manifest(self, manifest: Manifest) -> str:
        """Store ``manifest`` (idempotent); returns its hash."""
        raw = manifest.to_bytes()
        h = sha256_hex(raw)
        key = self.manifest_key(h)
        if not self.store.put_if_absent(key, raw):
            self._refresh_if_old(key, raw)
        return h

    def get_manifest(self, h: str) -> Manifest:
        """The manifest ``h``; CorruptDataError when its bytes do not hash to ``h``."""
        key = self.manifest_key(h)
        try:
            raw = self.store.get(key)
        except NotFoundError:
            if self.primary is self.store:
                raise
            raw = self.primary.get(key)  # a lagging replica
        if sha256_hex(raw) != h:
            raise CorruptDataError(f"{self.store.url}/{key}: manifest content does not match its SHA-256 name")
        return Manifest.from_bytes(raw, f"{self.store.url}/{key}")

    # ------------------------------------------------------------ refs

    def read_ref(self, name: str) -> RefState | None:
        """The ref's state, or None when it does not exist."""
        key = self.ref_key(name)
        for _ in range(self.cas_retries):
            try:
                info = self.primary.stat(key)
                raw = self.primary.get(key)
            except NotFoundError:
                return None
            # The ref may move between stat and get: accept only a consistent pair.
            if self.primary.stat(key).version == info.version:
                return RefState.from_bytes(raw, info.version, f"{self.primary.url}/{key}")
        raise ConflictError(f"{self.store.url}/{key}: ref kept changing while being read")

    def refs(self) -> list[str]:
        """Names of every ref."""
        base = f"{self.prefix}refs/"
        return [i.key[len(base) :] for i in self.primary.list(base)]

    def set_ref(self, name: str, manifest: str, *, expected: str | None | _Any = None) -> RefState:
        """Point ``name`` at ``manifest`` by compare-and-swap.

        ``expected``: the manifest hash the ref must hold now (None: the ref
        must not exist; :data:`ANY`: whatever it holds, retried on races).
        Raises ConflictError when the ref holds something else, or after
        ``cas_retries`` lost races.
        """
        _check_hash(manifest)
        key = self.ref_key(name)
        for attempt in range(self.cas_retries):
            cur = self.read_ref(name)
            if not isinstance(expected, _Any) and (cur.manifest if cur else None) != expected:
                raise ConflictError(f"{self.store.url}/{key}: ref holds {cur.manifest if cur else None}, expected {expected}")
            new = _next_state(cur, manifest, self.keep_history)
            try:
                info = self.store.compare_and_swap(key, cur.version if cur else None, new.to_bytes())
            except ConflictError:
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
                continue
            return RefState(new.manifest, new.generation, new.history, new.time, info.version)
        raise ConflictError(f"{self.store.url}/{key}: lost {self.cas_retries} compare-and-swap races to other writers")

    def update(self, name: str, change: Callable[[Manifest | None], Manifest]) -> tuple[str, RefState]:
        """Apply ``change`` to the ref's current manifest and publish the result;
        on a lost race ``change`` is re-applied to the newer manifest (no lost
        update). Returns (manifest hash, new ref state); ConflictError after
        ``cas_retries`` lost races."""
        key = self.ref_key(name)
        for attempt in range(self.cas_retries):
            cur = self.read_ref(name)
            base = self.get_manifest(cur.manifest) if cur else None
            m = change(base)
            if cur is not None and m.parent is None:
                m = Manifest(m.entries, m.meta, cur.manifest)
            h = self.put_manifest(m)
            new = _next_state(cur, h, self.keep_history)
            try:
                info = self.store.compare_and_swap(key, cur.version if cur else None, new.to_bytes())
            except ConflictError:
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))
                continue
            return h, RefState(new.manifest, new.generation, new.history, new.time, info.version)
        raise ConflictError(f"{self.store.url}/{key}: lost {self.cas_retries} compare-and-swap races to other writers")

    def delete_ref(self, name: str) -> None:
        self.store.delete(self.ref_key(name))

    # ------------------------------------------------------------ snapshots

    def snapshot(self, name_or_hash: str) -> Snapshot:
        """A pinned snapshot: the manifest a ref names now, or a manifest hash."""
        if len(name_or_hash) == 64 and set(name_or_hash) <= _HEX:
            return Snapshot(self, name_or_hash, self.get_manifest(name_or_hash))
        state = self.read_ref(name_or_hash)
        if state is None:
            raise NotFoundError(2, f"{self.store.url}/{self.ref_key(name_or_hash)}", None, "read ref")
        return Snapshot(self, state.manifest, self.get_manifest(state.manifest))

    def writer(self, base: str | None = None) -> SnapshotWriter:
        """A writer that builds a new snapshot (starting from snapshot ``base`` if given)."""
        return SnapshotWriter(self, self.snapshot(base) if base else None)

    # ------------------------------------------------------------ GC

    def gc(self, grace_s: float | None = None, *, dry_run: bool = False) -> GCReport:
        """Delete blobs and manifests reachable from no ref and older than
        ``grace_s`` (default the repository's). Roots: every ref's manifest
        and history, and every manifest younger than the grace period.
        Objects without an mtime are never deleted."""
        grace = self.grace_s if grace_s is None else grace_s
        report = GCReport(dry_run=dry_run)
        roots: set[str] = set()
        for name in self.refs():  # refs first: anything committed later is young
            state = self.read_ref(name)
            if state is not None:
                roots.add(state.manifest)
                roots.update(state.history)
        from .leases import leased_manifests  # a snapshot a reader holds a lease on is kept too

        roots.update(leased_manifests(self.primary, self.prefix))
        now = time.time()
        mprefix = f"{self.prefix}manifests/"
        all_manifests: dict[str, float | None] = {}
        for info in self.primary.list(mprefix):
            h = info.key.rsplit("/", 1)[-1].removesuffix(".json")
            all_manifests[h] = info.mtime
            if info.mtime is None or now - info.mtime < grace:
                roots.add(h)
        report.roots = len(roots)
        reachable: set[str] = set()
        for h in roots:
            try:
                m = self.get_manifest(h)
            except NotFoundError:
                raise CorruptDataError(
                    f"{self.primary.url}/{self.manifest_key(h)}: manifest named by a ref is missing; GC aborted"
                ) from None
            reachable.update(e.blob for e in m.entries.values())
        report.reachable_blobs = len(reachable)
        bprefix = f"{self.prefix}blobs/sha256/"
        for info in list(self.primary.list(bprefix)):
            if info.key.endswith(".crc32c"):
                continue
            h = info.key.rsplit("/", 1)[-1]
            if h in reachable:
                continue
            if not self._old(info.key, info.mtime, grace):
                report.kept_young += 1
                continue
            report.deleted_blobs += 1
            report.deleted_bytes += info.size
            if not dry_run:
                self.primary.delete(info.key)  # blob before sidecar: a visible blob always has its sidecar
                self.primary.delete(sidecar_key(info.key))
        for info in list(self.primary.list(bprefix)):  # sidecars whose blob never landed (crashed writers)
            if info.key.endswith(".crc32c") and self._old(info.key, info.mtime, grace):
                if not self.primary.exists(info.key.removesuffix(".crc32c")) and not dry_run:
                    self.primary.delete(info.key)
        for h, mtime in all_manifests.items():
            if h not in roots and self._old(self.manifest_key(h), mtime, grace):
                report.deleted_manifests += 1
                if not dry_run:
                    self.primary.delete(self.manifest_key(h))
        return report

    def _old(self, key: str, mtime: float | None, grace: float) -> bool:
        """True when ``key`` is older than ``grace`` (re-stat just before deleting:
        a writer may have refreshed it since the listing)."""
        if mtime is None or time.time() - mtime < grace:
            return False
        try:
            fresh = self.primary.stat(key).mtime
        except NotFoundError:
            return False
        return fresh is not None and time.time() - fresh >= grace


class _Any:
    def __repr__(self) -> str:
        return "ANY"


#: ``expected`` value for :meth:`Repository.set_ref`: accept whatever the ref holds.
ANY = _Any()


def _next_state(cur: RefState | None, manifest: str, keep: int) -> RefState:
    if cur is None:
        return RefState(manifest, 1, (), time.time())
    history = (cur.manifest, *cur.history)[:keep] if cur.manifest != manifest else cur.history
    return RefState(manifest, cur.generation + 1, history, time.time())


class Snapshot:
    """A pinned, immutable view of one manifest: reads never see a later commit."""

    def __init__(self, repo: Repository, manifest_hash: str, manifest: Manifest) -> None:
        self.repo, self.hash, self.manifest = repo, manifest_hash, manifest

    def paths(self) -> list[str]:
        return sorted(self.manifest.entries)

    def entry(self, path: str) -> Entry:
        try:
            return self.manifest.entries[path]
        except KeyError:
            raise NotFoundError(2, f"snapshot {self.hash[:12]}:{path}", None, "open") from None

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Verified bytes of ``path`` (CorruptDataError on a checksum mismatch)."""
        return self.repo.read_blob(self.entry(path), offset, length)

    def read_into(self, path: str, dst: np.ndarray, offsets: Any, lengths: Any, dst_offsets: Any) -> np.ndarray:
        """Verified ranged reads of ``path`` into host array ``dst``; bytes read per range."""
        return self.repo.read_blob_into(self.entry(path), dst, offsets, lengths, dst_offsets)

    def __iter__(self) -> Iterator[str]:
        return iter(self.paths())


class SnapshotWriter:
    """Builds a snapshot: blobs are uploaded as files are added; nothing is
    visible until :meth:`commit` moves the ref. Must commit within half the
    repository's grace period (ConflictError otherwise)."""

    def __init__(self, repo: Repository, base: Snapshot | None = None) -> None:
        self.repo = repo
        self.entries: dict[str, Entry] = dict(base.manifest.entries) if base else {}
        self.base = base.hash if base else None
        self.meta: dict[str, Any] = {}
        self.started = time.time()

    def add(self, path: str, data: Any) -> Entry:
        """Upload ``data`` as the file ``path`` of the new snapshot."""
        validate_key(path)
        entry = self.repo.put_blob(data)
        self.entries[path] = entry
        return entry

    def remove(self, path: str) -> None:
        self.entries.pop(path, None)

    def commit(self, name: str, *, expected: str | None | _Any = ANY) -> str:
        """Publish: store the manifest, then compare-and-swap ref ``name`` to it.
        ``expected`` as in :meth:`Repository.set_ref`. Returns the manifest hash."""
        if time.time() - self.started > self.repo.grace_s / 2:
            raise ConflictError(
                f"snapshot writer for {name!r} ran {time.time() - self.started:.0f} s, past half the GC grace "
                f"period ({self.repo.grace_s:.0f} s): its blobs may have been collected; write it again"
            )
        h = self.repo.put_manifest(Manifest(dict(self.entries), self.meta, self.base))
        self.repo.set_ref(name, h, expected=expected)
        return h
