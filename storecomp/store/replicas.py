"""A mount's replicas as one Store: reads from the nearest healthy replica with
failover, writes to the primary (see docs/store.md, "Replicas")."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ..errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    StorageIOError,
    StoreUnavailableError,
    VersionChangedError,
)
from ..io import BufferRef
from .base import Capabilities, Listing, ObjectInfo, RangeFuture, Store, WrapperStore
from .base import primary_of as primary_of  # re-exported: namespace and snapshots import it from here
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


class ReplicatedStore(WrapperStore):
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
    def wrapped(self) -> list[Store]:
        return list(self._stores)

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

    def _read(self, op: Callable[[Store], _T], primary_first: bool = False) -> _T:
        last: BaseException | None = None
        lagging: BaseException | None = None
        order = self.read_order()
        if primary_first:  # answers a lagging replica would get wrong by omission (listings)
            order.remove(self._primary)
            order.insert(0, self._primary)
        for i in order:
            t0 = time.monotonic()
            try:
                out = op(self._stores[i])
            except Exception as e:
                if self._lagging(i, e):
                    lagging = lagging or e
                    continue
                if not _failover_worthy(e):
                    raise
                self._failed(i, e)
                last = e
                continue
            self._succeeded(i, time.monotonic() - t0)
            return out
        raise _final(lagging, last)

    def _lagging(self, i: int, e: BaseException) -> bool:
        """A replica other than the primary that lacks the object (or has another
        version of it) may lag behind: the primary and the other replicas are
        asked before that is the answer. The replica stays healthy."""
        return i != self._primary and isinstance(e, (NotFoundError, VersionChangedError))

    def _writer(self) -> Store:
        if self.mount.read_only:
            raise PermissionDeniedError(errno.EROFS, self.url, None, "write")
        return self._stores[self._primary]

    # -- reads

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> RangeFuture:
        return _FailoverFuture(self, key, offs, lens, ref, douts, version)

    def stat(self, key: str) -> ObjectInfo:
        return self._read(lambda s: s.stat(key))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects under ``prefix`` as the primary lists them (a lagging replica
        would omit the newest); other replicas only when it cannot be reached."""
        return iter(self._read(lambda s: list(s.list(prefix)), primary_first=True))

    def list_dir(self, prefix: str = "") -> Listing:
        """One level under ``prefix`` as the primary lists it (like :meth:`list`)."""
        return self._read(lambda s: s.list_dir(prefix), primary_first=True)

    # -- writes (primary only)

    def put(self, key: str, data: Any) -> ObjectInfo:
        return self._writer().put(key, data)

    def put_stream(self, key: str, parts: Iterable[Any]) -> ObjectInfo:
        from .transfer import put_stream

        return put_stream(self._writer(), key, parts)

    def put_if_absent(self, key: str, data: Any) -> bool:
        return self._writer().put_if_absent(key, data)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        return self._writer().compare_and_swap(key, expected, data)

    def delete(self, key: str) -> None:
        self._writer().delete(key)

    def delete_if(self, key: str, version: str) -> bool:
        return self._writer().delete_if(key, version)

    def __repr__(self) -> str:
        return f"ReplicatedStore({self.url!r}, replicas={[r.url for r in self.mount.replicas]})"


def _final(lagging: BaseException | None, last: BaseException | None) -> BaseException:
    """The answer when no replica served a read: a lagging replica's NotFound
    (or VersionChangedError) when no replica had it, else the last failure."""
    out = lagging or last
    assert out is not None
    return out


class _FailoverFuture:
    """A ranged read that moves to the next replica when the current one fails."""

    def __init__(self, rs: ReplicatedStore, key: str, *args: Any) -> None:
        self._rs, self._key, self._args = rs, key, args
        self._order = rs.read_order()
        self._pos = 0
        self._t0 = time.monotonic()
        self._last: BaseException | None = None
        self._lagging: BaseException | None = None
        self._fut: RangeFuture | None = None
        self._start()

    def _start(self) -> None:
        offs, lens, ref, douts, version = self._args
        while self._pos < len(self._order):
            i = self._order[self._pos]
            self._t0 = time.monotonic()
            try:
                store = self._rs._stores[i]
                self._fut = store.submit_ranges(self._key, offs, lens, ref, douts, exact=False, version=version)
                return
            except Exception as e:
                self._next(i, e)
        raise _final(self._lagging, self._last)

    def _next(self, i: int, e: BaseException) -> None:
        """Move past replica ``i`` after ``e``, or raise ``e`` when it is the answer."""
        if self._rs._lagging(i, e):
            self._lagging = self._lagging or e
        elif _failover_worthy(e):
            self._rs._failed(i, e)
            self._last = e
        else:
            raise e
        self._pos += 1

    def done(self) -> bool:
        return self._fut is not None and self._fut.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        while True:
            assert self._fut is not None
            i = self._order[self._pos]
            try:
                out = self._fut.result(timeout)
            except Exception as e:
                if not self._fut.done():
                    raise  # the caller's wait timed out: the read is still running
                self._next(i, e)
                self._start()
                continue
            self._rs._succeeded(i, time.monotonic() - self._t0)
            return out
