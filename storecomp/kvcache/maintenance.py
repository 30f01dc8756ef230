"""Keeping the shared KV tier in bounds: listing, statistics, verification and GC.

Chunk objects are content-addressed (the object's name is its chunk key), so
deleting one never makes a wrong answer possible: a reader that finds it
gone counts a miss and recomputes. What GC must not do is delete a chunk
that a writer is publishing or has just published: a chunk younger than
``grace_s`` (by the store's modification time) is never deleted, as in the
blob GC of :class:`storecomp.store.Repository`. A reader in the middle of a
chunk that GC deletes loses the layers it has not read yet: a counted miss
(each layer is verified before use), never wrong data.

Policy (:func:`collect`): every chunk older than ``ttl_s`` goes; then, while
the chunks take more than ``max_bytes``, the oldest chunks past the grace
period go. Ages count from when a chunk was written (object stores keep no
access time), so the budget keeps the most recently written chunks.

Chunks are found by their names: any object under ``prefix`` whose last
path segment is 64 hex digits, in a ``<namespace>/<xx>/<key>`` layout; the
namespace is everything between ``prefix`` and ``<xx>`` (empty when
``prefix`` is one namespace's own).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, NotFoundError, VersionChangedError
from ..store.base import Store
from . import format as fmt

_HEX = frozenset("0123456789abcdef")
#: Objects sealed by an encrypting tier start with this magic (storecomp.crypto's envelope):
#: their contents cannot be checked without the key, so verify reports them and keeps them.
SEALED_MAGIC = b"SCEN"


@dataclass(frozen=True)
class Chunk:
    """One chunk object: its object key, namespace, chunk key (hex), size in bytes, mtime (Unix s)."""

    object_key: str
    namespace: str
    key: str
    size: int
    mtime: float | None


@dataclass
class GCReport:
    """What :func:`collect` found and did (bytes in bytes)."""

    chunks: int = 0
    bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    kept_young: int = 0  # inside the grace period: never deleted
    dry_run: bool = False
    victims: list[str] = field(default_factory=list, repr=False)  # object keys (deleted, or to delete)


@dataclass
class VerifyReport:
    """What :func:`verify` found: good chunks, sealed ones (not checkable), bad ones (object key, why)."""

    good: int = 0
    sealed: int = 0
    vanished: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    deleted: int = 0


def _dir(prefix: str) -> str:
    prefix = prefix.strip("/")
    return prefix + "/" if prefix else ""


def chunks(store: Store, prefix: str = "kvcache") -> Iterator[Chunk]:
    """Every chunk object under ``prefix``, in key order."""
    base = _dir(prefix)
    for info in store.list(base):
        parts = info.key[len(base) :].split("/")
        if len(parts) < 2 or len(parts[-1]) != 64 or not set(parts[-1]) <= _HEX or parts[-2] != parts[-1][:2]:
            continue
        yield Chunk(info.key, "/".join(parts[:-2]), parts[-1], info.size, info.mtime)


def stats(store: Store, prefix: str = "kvcache", now: float | None = None) -> dict[str, dict[str, float]]:
    """Per namespace: chunks, bytes, and the age in seconds of its oldest and newest chunk."""
    now = time.time() if now is None else now
    out: dict[str, dict[str, float]] = {}
    for c in chunks(store, prefix):
        s = out.setdefault(c.namespace, {"chunks": 0, "bytes": 0, "oldest_age_s": 0.0, "newest_age_s": float("inf")})
        s["chunks"] += 1
        s["bytes"] += c.size
        if c.mtime is not None:
            s["oldest_age_s"] = max(s["oldest_age_s"], now - c.mtime)
            s["newest_age_s"] = min(s["newest_age_s"], now - c.mtime)
    for s in out.values():
        if s["newest_age_s"] == float("inf"):
            s["newest_age_s"] = 0.0
    return out


def check_chunk(obj: np.ndarray, key: str, where: str) -> None:
    """Check a chunk object by what it says of itself (no fingerprint needed): magic and
    version, header crc32c, that it holds chunk ``key`` (hex), its size, every layer's
    crc32c. CorruptDataError naming ``where`` on any mismatch."""
    if obj.size < fmt._FIXED.size + fmt._CRC.size:
        raise CorruptDataError(f"{where}: {obj.size} bytes, too short for a KV chunk header")
    raw = obj[: min(obj.size, 1 << 20)].tobytes()
    magic, version, _, header_bytes, _digest, okey, _dtype, _tokens, layers, _heads, _dim = fmt._FIXED.unpack_from(raw, 0)
    if magic != fmt.MAGIC or version != fmt.FORMAT_VERSION:
        raise CorruptDataError(f"{where}: not a storecomp KV chunk (magic {magic!r}, version {version})")
    end = fmt._FIXED.size + layers * fmt._LAYER.size
    if end + fmt._CRC.size > min(header_bytes, len(raw)) or header_bytes % fmt.ALIGN:
        raise CorruptDataError(f"{where}: header of {header_bytes} bytes cannot hold {layers} layers")
    (own,) = fmt._CRC.unpack_from(raw, end)
    if crc32c(raw[:end]) != own:
        raise CorruptDataError(f"{where}: header checksum mismatch")
    if okey.hex() != key:
        raise CorruptDataError(f"{where}: object holds chunk {okey.hex()[:16]}..., its name says {key[:16]}...")
    size = header_bytes
    for i in range(layers):
        off, length, crc, _ = fmt._LAYER.unpack_from(raw, fmt._FIXED.size + i * fmt._LAYER.size)
        if off < header_bytes or off + length > obj.size:
            raise CorruptDataError(f"{where}: layer {i} at [{off}, {off + length}) lies outside the {obj.size}-byte object")
        if crc32c(obj[off : off + length]) != crc:
            raise CorruptDataError(f"{where}: layer {i} checksum mismatch")
        size = max(size, off + length)
    if fmt._round_up(size) != obj.size:  # the last layer is padded to the alignment
        raise CorruptDataError(f"{where}: object is {obj.size} bytes, its header describes {size}")


def verify(store: Store, prefix: str = "kvcache", *, delete_bad: bool = False) -> VerifyReport:
    """Read every chunk under ``prefix`` and check it (:func:`check_chunk`); with
    ``delete_bad``, delete the ones that fail (a bad object would shadow a good one,
    since writers only add absent chunks): only the version that was read and found bad
    (:meth:`Store.delete_if`), so a good chunk published in its place meanwhile stays."""
    report = VerifyReport()
    for c in chunks(store, prefix):
        where = f"{store.url}/{c.object_key}"
        try:
            info = store.stat(c.object_key)
            obj = np.empty(info.size, np.uint8)
            if info.size:  # all of one version: the one a bad verdict may delete
                store.read_ranges(c.object_key, [0], [info.size], obj, [0], version=info.version)
        except (NotFoundError, VersionChangedError):
            report.vanished += 1  # deleted or replaced meanwhile (GC, a failed check elsewhere)
            continue
        if obj[:4].tobytes() == SEALED_MAGIC:
            report.sealed += 1
            continue
        try:
            check_chunk(obj, c.key, where)
        except CorruptDataError as e:
            report.bad.append((c.object_key, str(e)))
            if delete_bad and store.delete_if(c.object_key, info.version):  # never a good chunk written since
                report.deleted += 1
            continue
        report.good += 1
    return report


def collect(
    store: Store,
    prefix: str = "kvcache",
    *,
    max_bytes: int | None = None,
    ttl_s: float | None = None,
    grace_s: float = 3600.0,
    dry_run: bool = False,
) -> GCReport:
    """Delete chunks under ``prefix`` older than ``ttl_s`` seconds, then the oldest ones
    until they take at most ``max_bytes`` bytes; never one younger than ``grace_s``
    seconds (re-checked with a fresh ``stat`` just before its delete). Returns what was
    found and deleted (with ``dry_run``, what would be)."""
    if max_bytes is not None and max_bytes < 0:
        raise InvalidArgumentError(f"max_bytes must be >= 0, got {max_bytes}")
    if (ttl_s is not None and not (0 < ttl_s < math.inf)) or not (0 <= grace_s < math.inf):  # nan fails both
        raise InvalidArgumentError(f"ttl_s must be positive and grace_s >= 0, got ttl_s={ttl_s} grace_s={grace_s}")
    now = time.time()
    found = sorted(chunks(store, prefix), key=lambda c: (c.mtime if c.mtime is not None else now, c.object_key))
    report = GCReport(chunks=len(found), bytes=sum(c.size for c in found), dry_run=dry_run)
    total = report.bytes
    for c in found:
        age = max(0.0, now - c.mtime) if c.mtime is not None else 0.0  # (LocalStore mtimes carry sub-second noise)
        expired = ttl_s is not None and age > ttl_s
        over = max_bytes is not None and total > max_bytes
        if not (expired or over):
            continue
        if age < grace_s or c.mtime is None:
            report.kept_young += 1
            continue
        if not dry_run and not _still_old(store, c.object_key, grace_s):
            report.kept_young += 1
            continue
        if not dry_run:
            store.delete(c.object_key)
        total -= c.size
        report.deleted += 1
        report.deleted_bytes += c.size
        report.victims.append(c.object_key)
    return report


def _still_old(store: Store, key: str, grace_s: float) -> bool:
    """True when ``key`` still exists and is older than ``grace_s`` (a writer may have
    published it again since the listing)."""
    try:
        mtime = store.stat(key).mtime
    except NotFoundError:
        return False
    return mtime is not None and max(0.0, time.time() - mtime) >= grace_s
