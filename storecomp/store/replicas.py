"""A mount's replicas as one Store: reads from the nearest healthy replica with
failover, writes to the primary (see docs/store.md, "Replicas")."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StorageIOError,
    StoreUnavailableError,
)
from .base import Capabilities, Listing, ObjectInfo, RangeFuture, Store
from .mounts import SCHEME, Mount

_T = TypeVar("_T")


# ---------------------------------------------------------------- replicas


def _failover_worthy(e: BaseException) -> bool:
    """Errors after which another replica may succeed: unreachable, timeouts, I/O failures."""
    if isinstance(e, (NotFoundError, PermissionDeniedError)):
        return False
    if isinstance(e, (StoreUnavailableError, ConnectionError, TimeoutError)):
        return True
    return isinstance(e, StorageIOError) and e.errno in (errno.EIO, errno.ETIMEDOUT, errno.ECONNRESET, None)


@dataclass
class _Health:
    latency_s: float = 0.0  # EWMA of successful operations; 0 until measured
    down_until: float = 0.0  # monotonic time before which the replica is skipped
    failures: int = 0
    last_error: str = ""


class ReplicatedStore(Store):
    """A mount's replicas as one Store: reads from the best healthy replica
    with failover, writes to the primary.

    Order of reads: replicas in ``local_site`` first, then lower
    ``preference``, then lower measured latency (EWMA of successful calls).
    A replica that fails with an unreachable/transient error is skipped for
    ``cooldown_s`` seconds. Raises the last error when every replica fails.
    """

    def __init__(
        self,
        mount: Mount,
        stores: Sequence[Store],
        *,
        local_site: str = "",
        cooldown_s: float = 30.0,
    ) -> None:
        if len(stores) != len(mount.replicas):
            raise InvalidArgumentError("one store per replica is needed")
        self.mount = mount
        self.url = f"{SCHEME}{mount.name}"
        self._stores = list(stores)
        self._health = [_Health() for _ in stores]
        self._local_site = local_site
        self._cooldown_s = cooldown_s
        self._lock = threading.Lock()
        primary = mount.primary_replica
        self._primary = mount.replicas.index(primary) if primary is not None else 0

    @property
    def stores(self) -> list[Store]:
        return list(self._stores)

    @property
    def primary(self) -> Store:
        """The replica that takes writes (and so holds the newest refs)."""
        return self._stores[self._primary]

    @property
    def capabilities(self) -> Capabilities:
        caps = [s.capabilities for s in self._stores]
        p = caps[self._primary]
        return Capabilities(
            conditional_writes=p.conditional_writes,
            ranged_reads=all(c.ranged_reads for c in caps),
            native_reads=all(c.native_reads for c in caps),
            local=all(c.local for c in caps),
        )

    def read_order(self) -> list[int]:
        """Replica indices in the order reads try them (healthy ones first)."""
        now = time.monotonic()
        with self._lock:
            health = [(h.down_until > now, h.latency_s) for h in self._health]

        def rank(i: int) -> tuple[bool, bool, int, float, int]:
            r = self.mount.replicas[i]
            down, lat = health[i]
            return (down, bool(self._local_site) and r.site != self._local_site, r.preference, lat, i)

        return sorted(range(len(self._stores)), key=rank)

    def health(self) -> list[dict[str, Any]]:
        """Per replica: url, site, latency_s, healthy, failures, last_error (for ``storecomp mounts``)."""
        now = time.monotonic()
        with self._lock:
            return [
                {
                    "url": r.url,
                    "site": r.site,
                    "preference": r.preference,
                    "latency_s": h.latency_s,
                    "healthy": h.down_until <= now,
                    "failures": h.failures,
                    "last_error": h.last_error,
                }
                for r, h in zip(self.mount.replicas, self._health, strict=True)
            ]

    def probe(self, key: str | None = None) -> None:
        """Measure every replica's latency now (a stat of ``key`` or a list call)."""
        for i, s in enumerate(self._stores):
            t0 = time.monotonic()
            try:
                if key is None:
                    next(iter(s.list("")), None)
                else:
                    s.exists(key)
            except Exception as e:  # noqa: BLE001 - any failure marks the replica down
                self._failed(i, e)
            else:
                self._succeeded(i, time.monotonic() - t0)

    def _succeeded(self, i: int, seconds: float) -> None:
        with self._lock:
            h = self._health[i]
            h.latency_s = seconds if h.latency_s == 0.0 else 0.8 * h.latency_s + 0.2 * seconds
            h.down_until = 0.0

    def _failed(self, i: int, e: BaseException) -> None:
        with self._lock:
            h = self._health[i]
            h.failures += 1
            h.last_error = f"{type(e).__name__}: {e}"
            h.down_until = time.monotonic() + self._cooldown_s

    def _read(self, op: Callable[[Store], _T]) -> _T:
        last: BaseException | None = None
        for i in self.read_order():
            t0 = time.monotonic()
            try:
                out = op(self._stores[i])
            except Exception as e:
                if not _failover_worthy(e):
                    raise
                self._failed(i, e)
                last = e
                continue
            self._succeeded(i, time.monotonic() - t0)
            return out
        assert last is not None
        raise last

    def _writer(self) -> Store:
        if self.mount.read_only:
            raise PermissionDeniedError(errno.EROFS, self.url, None, "write")
        return self._stores[self._primary]

    # -- reads

    def submit_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
    ) -> RangeFuture:
        return _FailoverFuture(self, key, offsets, lengths, dst, dst_offsets, exact)

    def stat(self, key: str) -> ObjectInfo:
        return self._read(lambda s: s.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(self._read(lambda s: list(s.list(prefix))))

    def list_dir(self, prefix: str = "") -> Listing:
        return self._read(lambda s: s.list_dir(prefix))

    # -- writes (primary only)

    def put(self, key: str, data: Any) -> ObjectInfo:
        return self._writer().put(key, data)

    def put_if_absent(self, key: str, data: Any) -> bool:
        return self._writer().put_if_absent(key, data)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        return self._writer().compare_and_swap(key, expected, data)

    def delete(self, key: str) -> None:
        self._writer().delete(key)

    def close(self) -> None:
        for s in self._stores:
            s.close()

    def __repr__(self) -> str:
        return f"ReplicatedStore({self.url!r}, replicas={[r.url for r in self.mount.replicas]})"


def primary_of(store: Store) -> Store:
    """The store behind wrappers that takes writes and holds the freshest state:
    a ReplicatedStore's primary, a CachedStore's inner store (recursively)."""
    while True:
        if isinstance(store, ReplicatedStore):
            store = store.primary
            continue
        inner = getattr(store, "inner", None)
        if isinstance(inner, Store):
            store = inner
            continue
        return store


class _FailoverFuture:
    """A ranged read that moves to the next replica when the current one fails."""

    def __init__(self, rs: ReplicatedStore, key: str, *args: Any) -> None:
        self._rs, self._key, self._args = rs, key, args
        self._order = rs.read_order()
        self._pos = 0
        self._t0 = time.monotonic()
        self._last: BaseException | None = None
        self._fut: RangeFuture | None = None
        self._start()

    def _start(self) -> None:
        offsets, lengths, dst, dst_offsets, exact = self._args
        while self._pos < len(self._order):
            i = self._order[self._pos]
            self._t0 = time.monotonic()
            try:
                store = self._rs._stores[i]
                self._fut = store.submit_ranges(self._key, offsets, lengths, dst, dst_offsets, exact=exact)
                return
            except Exception as e:
                if not _failover_worthy(e):
                    raise
                self._rs._failed(i, e)
                self._last = e
                self._pos += 1
        assert self._last is not None
        raise self._last

    def done(self) -> bool:
        return self._fut is not None and self._fut.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        while True:
            assert self._fut is not None
            i = self._order[self._pos]
            try:
                out = self._fut.result(timeout)
            except Exception as e:
                if not self._fut.done() or not _failover_worthy(e):
                    raise  # the caller's wait timed out (the read is still running), or a real answer
                self._rs._failed(i, e)
                self._last = e
                self._pos += 1
                self._start()
                continue
            self._rs._succeeded(i, time.monotonic() - self._t0)
            return out
