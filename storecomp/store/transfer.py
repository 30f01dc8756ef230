"""Copy objects between two Stores: parallel, streamed in parts, verified, resumable.

:func:`copy_objects` is the one copy engine behind ``storecomp cp -r`` and
``storecomp place``:

* **parallel**: ``workers`` objects in flight at once;
* **streamed**: each object moves in parts of ``part_bytes`` (a multiple of
  its checksum chunk), pulled from the source as the destination takes them
  (:func:`put_stream`), the next ``read_ahead`` parts already being read: an
  object is never whole in memory;
* **verified**: every part read from the source is checked against the
  object's known crc32c (a manifest entry) or has its crc32c computed; after
  the destination publishes, the object is read back *from the destination*
  (``verify_depth`` parts at once, one version) and every chunk checked. A
  mismatch copies again once; a second mismatch is a
  :class:`CorruptDataError`. Because of that read-back, uploads may skip the
  store's own payload hashing (``put_stream(..., checked=True)``);
* **resumable**: an object already at the destination with the right size
  and matching crc32c is skipped (read back, nothing written), so a rerun
  after a crash or kill -9 moves only what is missing; an object whose upload
  was cut short is invisible (atomic publish). On a destination with
  resumable uploads (S3, :class:`SupportsResumableUpload`) a rerun finds that
  upload and sends only the parts it lacks (at most the one part per object
  that was in flight at the kill is sent again; ``bytes_resumed`` counts the
  parts kept); elsewhere it is copied again whole, and so is one the store
  lists but cannot serve (:func:`store_answers`);
* **rate-capped**: ``max_rate`` bytes/s over all workers (a token bucket);
* **progress**: a rich bar, else tqdm, else a line every few seconds on stderr.

A destination that cannot be reached or is full stops the copy with
:class:`TransferError` naming the destination and what was done so far.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..crc import crc32c
from ..errors import (
    ConflictError,
    CorruptDataError,
    InvalidArgumentError,
    MissingPackageError,
    NotFoundError,
    StorageIOError,
    StorecompError,
    StoreUnavailableError,
    VersionChangedError,
)
from .base import ObjectInfo, RangeFuture, Store
from .integrity import Checksums
from .replicas import primary_of

DEFAULT_PART_BYTES = 8 << 20
DEFAULT_WORKERS = 8
#: Parts of one object read at once when a copy is read back from its destination.
DEFAULT_VERIFY_DEPTH = 4
#: Source parts each copy worker reads ahead of the part its upload is taking.
DEFAULT_READ_AHEAD = 2


class TransferError(StorecompError, OSError):
    """A copy stopped: the destination is unreachable or full, or an object kept
    failing verification. ``done_bytes``/``done_objects`` say what was copied
    and verified before it stopped (a rerun skips those)."""

    def __init__(self, message: str, *, errno_: int = errno.EIO, done_objects: int = 0, done_bytes: int = 0) -> None:
        super().__init__(errno_, message)
        self.done_objects, self.done_bytes = done_objects, done_bytes

    def __str__(self) -> str:
        return str(self.strerror)


@runtime_checkable
class SupportsPutStream(Protocol):
    """A Store that publishes an object from a stream of parts (never whole in memory)."""

    def put_stream(self, key: str, parts: Iterable[Any]) -> ObjectInfo: ...


@runtime_checkable
class SupportsCheckedPutStream(Protocol):
    """A Store whose streamed publish can skip its own per-request payload hashing
    when the caller reads every byte back and checks it (S3: ``UNSIGNED-PAYLOAD``)."""

    def put_stream_checked(self, key: str, parts: Iterable[Any]) -> ObjectInfo: ...


class ResumableUpload(Protocol):
    """A multipart upload a later run can resume (see :class:`SupportsResumableUpload`):
    ``kept`` maps the 0-based indices of parts already there (an earlier run's) to
    their ETags; the caller uploads the others, then completes."""

    kept: dict[int, str]
    part_bytes: int

    @property
    def kept_bytes(self) -> int: ...

    def upload_part(self, index: int, data: Any) -> bool: ...

    def complete(self) -> ObjectInfo | None: ...


@runtime_checkable
class SupportsResumableUpload(Protocol):
    """A Store whose multipart uploads survive their writer (S3: tagged uploads found
    again by a rerun, :mod:`storecomp.store.s3_resume`). Parts are at least
    ``min_part_bytes``, except the last."""

    min_part_bytes: int

    def resumable_upload(self, key: str, size: int, part_bytes: int, tag: str, *, adopt: bool = True) -> ResumableUpload: ...


def put_stream(store: Store, key: str, parts: Iterable[Any], *, checked: bool = False) -> ObjectInfo:
    """Publish the concatenation of ``parts`` under ``key``: streamed when the
    backend can (local files, S3), else joined in memory and put once.
    ``checked``: the caller reads the object back and verifies it, so the
    backend may skip hashing the body for its request signature."""
    if checked and isinstance(store, SupportsCheckedPutStream):
        return store.put_stream_checked(key, parts)
    if isinstance(store, SupportsPutStream):
        return store.put_stream(key, parts)
    inner = getattr(store, "inner", None)
    if isinstance(inner, Store) and hasattr(store, "invalidate"):  # a cache tier: write behind it, then drop its entry
        info = put_stream(inner, key, parts, checked=checked)
        store.invalidate(key)
        return info
    return store.put(key, b"".join(bytes(p) for p in parts))


@dataclass(frozen=True)
class CopyItem:
    """One object to copy: ``size`` bytes from ``src_key`` to ``dst_key``.
    ``checksums``: its crc32c when known (a snapshot blob); None computes them
    from the source while it streams."""

    src_key: str
    dst_key: str
    size: int
    checksums: Checksums | None = None


@dataclass
class TransferReport:
    """What :func:`copy_objects` did (bytes are object bytes)."""

    objects: int = 0  # objects asked for
    copied: int = 0  # objects written (and verified) by this run
    skipped: int = 0  # objects found at the destination, verified, not written
    recopied: int = 0  # copies that failed verification at the destination and were written again
    bytes_copied: int = 0
    bytes_skipped: int = 0
    bytes_verified: int = 0  # bytes read back from the destination and checked
    bytes_uploaded: int = 0  # bytes this run sent to the destination (parts kept from an earlier run excluded)
    bytes_resumed: int = 0  # bytes of parts an earlier (killed) run had uploaded, kept and not sent again
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)
    max_rate: float | None = None  # the cap the copy ran under, bytes/s (None: none)
    yielded_s: float = 0.0  # seconds spent slowed down for readers (YieldPolicy)
    verify_s: float = 0.0  # worker-seconds spent reading copies back from the destination (summed over threads)
    put_s: float = 0.0  # worker-seconds spent streaming source parts into the destination (summed over threads)
    source_s: float = 0.0  # of put_s: worker-seconds waiting for source parts (read and checked)
    yield_rate: float | None = None  # the last rate used while yielding, bytes/s

    @property
    def rate(self) -> float:
        """Bytes copied per second."""
        return self.bytes_copied / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": self.objects,
            "copied": self.copied,
            "skipped": self.skipped,
            "recopied": self.recopied,
            "bytes_copied": self.bytes_copied,
            "bytes_skipped": self.bytes_skipped,
            "bytes_verified": self.bytes_verified,
            "bytes_uploaded": self.bytes_uploaded,
            "bytes_resumed": self.bytes_resumed,
            "seconds": round(self.seconds, 3),
            "bytes_per_s": round(self.rate, 1),
            "max_rate": self.max_rate,
            "yielded_s": round(self.yielded_s, 1),
            "verify_s": round(self.verify_s, 2),
            "put_s": round(self.put_s, 2),
            "source_s": round(self.source_s, 2),
            "yield_rate": self.yield_rate,
        }


class RateLimiter:
    """A token bucket shared by threads: at most ``rate`` bytes/s (None: unlimited),
    bursts up to one second's worth. :meth:`set_rate` changes the rate while
    threads wait (they are served in the order they asked, at the new rate)."""

    def __init__(self, rate: float | None) -> None:
        _check_rate(rate)
        self.rate = rate
        self._tokens = float(rate or 0)
        self._filled = 0.0  # bytes paid back into the bucket since the start (waiters wait for their mark)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        if self.rate is not None:
            add = min((now - self._last) * self.rate, self.rate - self._tokens)
            if add > 0:
                self._tokens += add
                self._filled += add
        self._last = now

    def set_rate(self, rate: float | None) -> None:
        """Move at most ``rate`` bytes/s from now on (None: unlimited)."""
        _check_rate(rate)
        with self._lock:
            self._refill()
            if rate is not None and self.rate is None:
                self._tokens = float(rate)  # a fresh bucket: one second's burst
            self.rate = rate
            if rate is not None:
                self._tokens = min(self._tokens, float(rate))

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may move."""
        if n <= 0:
            return
        with self._lock:
            if self.rate is None:
                return
            self._refill()
            self._tokens -= n
            if self._tokens >= 0:
                return
            mark = self._filled - self._tokens  # paid back once the bucket refilled past this waiter's debt
        while True:
            with self._lock:
                if self.rate is None:
                    return
                self._refill()
                owed = mark - self._filled
                if owed <= 0:
                    return
                wait_s = min(0.25, owed / self.rate)  # re-read the rate: set_rate may change it meanwhile
            time.sleep(wait_s)


def _check_rate(rate: float | None) -> None:
    if rate is not None and not rate > 0:
        raise InvalidArgumentError(f"max_rate must be positive bytes/s, got {rate}")


@dataclass(frozen=True)
class YieldPolicy:
    """How a copy gives way to foreground readers.

    Every ``check_s`` seconds the copy asks ``readers()``; while it is true,
    the copy moves at most ``fraction`` of its own rate measured while no
    reader was there (before that is measured: ``base_rate()``, bytes/s),
    never below ``floor`` bytes/s; when the readers go, the copy's own cap
    (``max_rate`` or none) returns. ``readers`` is called from the copy's
    monitor thread and should be cheap (a listing).
    """

    readers: Callable[[], bool]
    fraction: float = 0.1
    base_rate: Callable[[], float] | None = None
    check_s: float = 1.0
    floor: float = float(1 << 20)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1 or not self.check_s > 0 or not self.floor > 0:
            raise InvalidArgumentError(
                f"YieldPolicy: fraction in (0, 1], check_s and floor positive; got {self.fraction}, {self.check_s}, {self.floor}"
            )


class _Yielder:
    """The monitor thread of one copy that applies a :class:`YieldPolicy` to its limiter."""

    def __init__(self, policy: YieldPolicy, limiter: RateLimiter, max_rate: float | None, copier: _Copier) -> None:
        self.policy, self.limiter, self.max_rate, self.copier = policy, limiter, max_rate, copier
        self.full_rate: float | None = None  # bytes/s measured while no reader was there
        self.yielding = False
        self.yielded_s = 0.0
        self.yield_rate: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sc-copy-yield", daemon=True)

    def start(self) -> None:
        self._apply(self._readers())  # before the first byte moves: a copy that starts under a reader starts slow
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _readers(self) -> bool:
        try:
            return bool(self.policy.readers())
        except StorecompError:
            return self.yielding  # cannot tell now: keep what was decided

    def _apply(self, readers: bool) -> None:
        if not readers:
            if self.yielding:
                self.limiter.set_rate(self.max_rate)
                self.copier.check_limiter.set_rate(None)
            self.yielding = False
            return
        base = self.full_rate
        if base is None and self.policy.base_rate is not None:
            try:
                base = self.policy.base_rate()
            except StorecompError:
                base = None
            self.full_rate = base if base and base > 0 else None
        rate = max(self.policy.floor, self.policy.fraction * (base or 0.0))
        if self.max_rate is not None:
            rate = min(rate, self.max_rate)
        if not self.yielding or rate != self.yield_rate:
            self.limiter.set_rate(rate)
            self.copier.check_limiter.set_rate(rate)  # reading copies back loads the sites too
        self.yielding, self.yield_rate = True, rate

    def _run(self) -> None:
        last_t, last_b = time.monotonic(), self.copier.moved
        while not self._done.wait(self.policy.check_s):
            now, moved = time.monotonic(), self.copier.moved
            if self.yielding:
                self.yielded_s += now - last_t
            elif moved > last_b:  # the copy's own speed without readers (a moving average)
                rate = (moved - last_b) / max(now - last_t, 1e-9)
                self.full_rate = rate if self.full_rate is None else 0.5 * (self.full_rate + rate)
            last_t, last_b = now, moved
            self._apply(self._readers())


# ---------------------------------------------------------------- progress


class Progress:
    """Bytes done out of a total: rich, else tqdm, else a plain line every ``every_s`` seconds."""

    def __init__(self, total: int, label: str, enabled: bool = True, every_s: float = 2.0) -> None:
        self.total, self.label, self.done = total, label, 0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._kind = "off"
        self._every, self._last, self._t0 = every_s, 0.0, time.monotonic()
        if not enabled:
            return
        if sys.stderr.isatty():
            try:
                from rich.progress import BarColumn, DownloadColumn, TransferSpeedColumn
                from rich.progress import Progress as RichProgress

                self._bar = RichProgress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                    transient=True,
                )
                self._bar.start()
                self._task = self._bar.add_task(label, total=total)
                self._kind = "rich"
                return
            except ImportError:
                pass
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label, file=sys.stderr)
                self._kind = "tqdm"
                return
            except ImportError:
                pass
        self._kind = "lines"

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._kind == "rich":
                self._bar.update(self._task, advance=n)
            elif self._kind == "tqdm":
                self._bar.update(n)
            elif self._kind == "lines":
                now = time.monotonic()
                if now - self._last >= self._every:
                    self._last = now
                    rate = self.done / max(1e-9, now - self._t0)
                    print(f"{self.label}: {self.done}/{self.total} bytes, {rate / 2**20:.1f} MiB/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._kind == "rich":
            self._bar.stop()
        elif self._kind == "tqdm":
            self._bar.close()
        self._kind = "off"


# ---------------------------------------------------------------- one object


def _part_size(part_bytes: int, sums: Checksums | None) -> int:
    if sums is None:
        return part_bytes
    return sums.chunk_bytes * max(1, part_bytes // sums.chunk_bytes)


def _upload_part_size(part_bytes: int, min_part: int, sums: Checksums) -> int:
    """Parts of a resumable upload: whole checksum chunks, at least ``min_part`` bytes."""
    c = sums.chunk_bytes
    return c * max(1, -(-max(part_bytes, min_part) // c))


def _upload_tag(sums: Checksums, part_bytes: int) -> str:
    """What a resumable upload is for: the object's size, chunk crc32c list and part size."""
    digest = hashlib.sha256(np.asarray(sums.crcs, np.uint32).tobytes()).hexdigest()[:32]
    return f"{sums.size}/{sums.chunk_bytes}/{digest}/{part_bytes}"


def _read_part(store: Store, key: str, off: int, n: int, version: str | None = None) -> np.ndarray:
    """``n`` bytes of ``key`` at ``off`` (of ``version`` when given: VersionChangedError once replaced)."""
    buf = np.empty(n, np.uint8)
    if n:
        store.read_ranges(key, [off], [n], buf, [0], exact=True, version=version)
    return buf


def verify_object(
    store: Store,
    key: str,
    sums: Checksums,
    part_bytes: int = DEFAULT_PART_BYTES,
    limiter: RateLimiter | None = None,
    depth: int = DEFAULT_VERIFY_DEPTH,
    unservable_is_bad: bool = True,
) -> bool:
    """True when ``key`` in ``store`` has ``sums.size`` bytes and every chunk
    matches ``sums``; False when it is missing, short or differs.

    ``unservable_is_bad``: an object the store lists but cannot serve while
    it answers other requests (:func:`store_answers`) is False (an old copy a
    crash cut short); without it, StoreUnavailableError (an object this run
    has just written is not judged bad because the store could not serve it).

    Reads one version (the one ``stat`` names; a replacement mid-check
    starts the check again, up to 3 times) in parts of about
    ``part_bytes``, up to ``depth`` parts in flight at once (each first
    taken from ``limiter`` when given), each checked as it lands."""
    try:
        for _ in range(3):
            try:
                return _verify_version(store, key, sums, part_bytes, limiter, depth)
            except VersionChangedError:
                continue  # replaced by another writer meanwhile (the same bytes, for a blob): check the new one
        return False
    except (NotFoundError, CorruptDataError):
        return False
    except StoreUnavailableError:
        if unservable_is_bad and store_answers(store, key):
            return False  # the store answers, this object cannot be read (a crash cut it short): not a good copy
        raise
    except StorecompError as e:
        if _is_short(e):
            return False
        raise


def store_answers(store: Store, key: str) -> bool:
    """Whether ``store`` answers requests about ``key`` now (after a read of it
    failed as unavailable): a stat of ``key``, else of a name beside it that
    does not exist, gets an answer. True: the store is up and only that
    object is unreadable (SeaweedFS answers 500 for an object a kill -9 cut
    short); False: the store itself is down."""
    for probe in (key, f"{key}.sc-absent"):
        try:
            store.stat(probe)
            return True
        except NotFoundError:
            return True
        except StorecompError:
            continue
    return False


def _verify_version(store: Store, key: str, sums: Checksums, part_bytes: int, limiter: RateLimiter | None, depth: int) -> bool:
    info = store.stat(key)
    if info.size != sums.size:
        return False
    name = f"{store.url}/{key}"
    step = _part_size(part_bytes, sums)
    offsets = iter(range(0, sums.size, step))
    pending: deque[tuple[int, np.ndarray, RangeFuture]] = deque()
    while True:
        while len(pending) < max(1, depth):
            off = next(offsets, None)
            if off is None:
                break
            n = min(step, sums.size - off)
            if limiter is not None:
                limiter.take(n)
            buf = np.empty(n, np.uint8)
            pending.append((off, buf, store.submit_ranges(key, [off], [n], buf, [0], exact=True, version=info.version)))
        if not pending:
            return True
        off, buf, fut = pending.popleft()
        fut.result()
        sums.verify(buf, off, name)


def _is_short(e: BaseException) -> bool:
    from ..errors import ShortReadError

    return isinstance(e, ShortReadError)


class _Copier:
    """Shared state of one :func:`copy_objects` call."""

    def __init__(
        self,
        src: Store,
        dst: Store,
        part_bytes: int,
        limiter: RateLimiter,
        progress: Progress,
        report: TransferReport,
        delete_bad: bool,
        read_ahead: int = DEFAULT_READ_AHEAD,
        verify_depth: int = DEFAULT_VERIFY_DEPTH,
    ) -> None:
        self.src, self.dst, self.part_bytes = src, dst, part_bytes
        self.read_ahead, self.verify_depth = read_ahead, verify_depth
        # Checks read the copy that was written (a replicated mount's primary, behind any cache).
        self.check = primary_of(dst)
        self.limiter, self.progress, self.report = limiter, progress, report
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.delete_bad = delete_bad
        self.moved = 0  # bytes read from the source for copies (the yield monitor's measure)
        # Reads back from the destination: unlimited, except while yielding to readers (then at the yield rate).
        self.check_limiter = RateLimiter(None)

    def _source_parts(self, item: CopyItem, step: int, crcs: list[int] | None) -> Iterator[np.ndarray]:
        """The parts of ``item`` in order, each read and checked; the reads of the
        next ``read_ahead`` parts are in flight while the destination takes one."""
        for _, part in self._parts_at(item, step, crcs):
            yield part

    def _parts_at(
        self, item: CopyItem, step: int, crcs: list[int] | None, skip: Iterable[int] = ()
    ) -> Generator[tuple[int, np.ndarray], None, None]:
        """(offset, part) of the parts of ``item`` in order, but those whose index is in
        ``skip`` (kept at the destination: neither read nor sent; only with known checksums)."""
        label = f"{self.src.url}/{item.src_key}"
        skipped = frozenset(skip)
        if skipped and item.checksums is None:
            raise InvalidArgumentError(f"{label}: parts may be skipped only when the object's checksums are known")
        # Without known checksums, parts read at different times could come from two
        # versions of a source being replaced: the copy is refused unless one version was read.
        before = self.src.stat(item.src_key) if item.checksums is None else None
        if before is not None and before.size != item.size:
            raise ConflictError(f"{label}: changed while being copied ({item.size} bytes listed, {before.size} now); copy again")
        version = None if before is None else before.version
        offsets = iter(o for o in range(0, item.size, step) if o // step not in skipped)
        pending: deque[tuple[int, np.ndarray, RangeFuture]] = deque()
        while True:
            while len(pending) <= self.read_ahead:
                off = next(offsets, None)
                if off is None:
                    break
                if self.stop.is_set():
                    raise TransferError(f"{self.dst.url}/{item.dst_key}: copy cancelled (another object failed)")
                n = min(step, item.size - off)
                self.limiter.take(n)
                buf = np.empty(n, np.uint8)
                try:  # pinned to the version stat named: a replacement mid-copy is refused, never read torn
                    fut = self.src.submit_ranges(item.src_key, [off], [n], buf, [0], exact=True, version=version)
                except VersionChangedError:
                    raise ConflictError(f"{label}: changed while being copied; nothing was published, copy again") from None
                pending.append((off, buf, fut))
            if not pending:
                break
            off, part, fut = pending.popleft()
            t0 = time.monotonic()
            try:
                fut.result()
            except VersionChangedError:
                raise ConflictError(f"{label}: changed while being copied; nothing was published, copy again") from None
            if item.checksums is not None:
                item.checksums.verify(part, off, label)  # a bad source is never copied
            elif crcs is not None:
                crcs.append(crc32c(part))
            with self.lock:
                self.moved += part.size
                self.report.source_s += time.monotonic() - t0
            yield off, part
            self.progress.add(part.size)
        if before is not None and self.src.stat(item.src_key).version != before.version:
            raise ConflictError(f"{label}: changed while being copied; nothing was published, copy again")

    def copy(self, item: CopyItem) -> None:
        sums = item.checksums
        # Resume: a verified object at the destination is not written again.
        if sums is not None:
            if self._present(item.dst_key, sums):
                self._count(skipped=1, bytes_skipped=item.size, bytes_verified=item.size)
                self.progress.add(item.size)
                return
        elif self._same_as_source(item):
            self._count(skipped=1, bytes_skipped=item.size, bytes_verified=2 * item.size)
            self.progress.add(item.size)
            return
        for attempt in range(2):
            step = _part_size(self.part_bytes, sums)
            crcs: list[int] | None = [] if sums is None else None
            t0 = time.monotonic()
            # The first attempt resumes an upload a killed run left (S3); a second one, after a
            # failed check (a kept part with wrong bytes), starts afresh.
            upload = self._resumable(item, adopt=attempt == 0)
            if upload is not None:
                self._put_parts(item, upload)
            else:
                self._put(item, self._source_parts(item, step, crcs))
                self._count(bytes_uploaded=item.size)
            got = sums if sums is not None else Checksums(item.size, step, tuple(crcs or ()))
            t1 = time.monotonic()
            try:
                ok = verify_object(
                    self.check, item.dst_key, got, self.part_bytes, self.check_limiter, self.verify_depth, unservable_is_bad=False
                )
            except StorecompError as e:
                raise _destination_error(self.dst, item.dst_key, e) from None
            self._count(put_s=t1 - t0, verify_s=time.monotonic() - t1)
            if ok:
                self._count(copied=1, bytes_copied=item.size, bytes_verified=item.size, recopied=attempt)
                return
            self.progress.add(-item.size)  # the next attempt overwrites it
        if self.delete_bad:
            self.dst.delete(item.dst_key)  # never leave a copy that failed its check
        raise CorruptDataError(f"{self.dst.url}/{item.dst_key}: the copy failed crc32c verification at the destination twice")

    def _present(self, key: str, sums: Checksums) -> bool:
        try:
            ok = verify_object(self.check, key, sums, self.part_bytes, self.check_limiter, self.verify_depth)
        except StorecompError as e:
            raise _destination_error(self.dst, key, e) from None
        return ok  # wrong bytes there are replaced by the copy (never deleted: another run may be writing good ones)

    def _same_as_source(self, item: CopyItem) -> bool:
        try:
            info = self.check.stat(item.dst_key)
        except NotFoundError:
            return False
        except StorecompError as e:
            raise _destination_error(self.dst, item.dst_key, e) from None
        if info.size != item.size:
            return False
        step = self.part_bytes
        for off in range(0, item.size, step):
            n = min(step, item.size - off)
            try:
                there = _read_part(self.check, item.dst_key, off, n)
            except StoreUnavailableError as e:
                if store_answers(self.check, item.dst_key):
                    return False  # that object alone is unreadable (cut short by a crash): copy it again
                raise _destination_error(self.dst, item.dst_key, e) from None
            if crc32c(_read_part(self.src, item.src_key, off, n)) != crc32c(there):
                return False
        return True

    def _resumable(self, item: CopyItem, adopt: bool) -> ResumableUpload | None:
        """A resumable upload of ``item`` when the destination offers them and the object
        spans more than one part (its checksums known: kept parts are checked by the
        read-back alone); None: the plain streamed put."""
        dst, sums = self.dst, item.checksums
        if sums is None or not isinstance(dst, SupportsResumableUpload):
            return None
        step = _upload_part_size(self.part_bytes, dst.min_part_bytes, sums)
        if item.size <= step:
            return None
        try:
            up = dst.resumable_upload(item.dst_key, item.size, step, _upload_tag(sums, step), adopt=adopt)
        except MissingPackageError:
            return None  # no boto3 beside obstore: the plain put (a cut upload is then copied again whole)
        except StorecompError as e:
            raise _destination_error(self.dst, item.dst_key, e) from None
        if up.kept:
            self._count(bytes_resumed=up.kept_bytes)
            self.progress.add(up.kept_bytes)
        return up

    def _put_parts(self, item: CopyItem, up: ResumableUpload) -> None:
        """Upload the parts ``up`` lacks, one at a time (at most one part of this object
        in flight: a kill -9 loses at most that one), and complete it. An upload found
        gone (another run completed it, or it was aborted) ends here: the read-back
        then says whether what is at the key is good."""
        step = up.part_bytes
        parts = self._parts_at(item, step, None, skip=up.kept)
        try:
            for off, part in parts:  # a source error propagates as is (the upload stays for a rerun)
                try:
                    if not up.upload_part(off // step, part):
                        return
                except StorecompError as e:
                    raise _destination_error(self.dst, item.dst_key, e) from None
                self._count(bytes_uploaded=part.size)
            try:
                up.complete()
            except StorecompError as e:
                raise _destination_error(self.dst, item.dst_key, e) from None
        finally:
            parts.close()

    def _put(self, item: CopyItem, parts: Iterator[np.ndarray]) -> None:
        failure: list[BaseException] = []

        def guarded() -> Iterator[np.ndarray]:
            try:
                yield from parts
            except BaseException as e:
                failure.append(e)
                raise

        try:
            info = put_stream(self.dst, item.dst_key, guarded(), checked=True)  # verify_object reads it back
        except BaseException as e:
            if failure:  # the source (or a cancel) failed, not the destination
                raise failure[0] from None
            if isinstance(e, StorecompError):
                raise _destination_error(self.dst, item.dst_key, e) from None
            raise
        if failure:
            raise failure[0]
        if info.size != item.size:
            raise CorruptDataError(f"{self.dst.url}/{item.dst_key}: wrote {item.size} bytes, the store reports {info.size}")

    def _count(self, **kw: float) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self.report, k, getattr(self.report, k) + v)


def _destination_error(dst: Store, key: str, e: StorecompError) -> StorecompError:
    """A clear error for a destination that is down or full; others pass through."""
    if isinstance(e, StoreUnavailableError) and e.status is not None and e.status >= 500:
        # It answered: not "unreachable". S3 servers give no cause (SeaweedFS answers a full
        # disk with a bare 500 InternalError), so the message says what is known and where to look.
        return TransferError(
            f"destination {dst.url} failed {key}: it answered HTTP {e.status} to every retry, a fault on the "
            f"server ({e.endpoint}: a full disk or a failed volume; its log says which): {e.detail}",
            errno_=errno.EIO,
        )
    if isinstance(e, StoreUnavailableError):
        return TransferError(f"destination {dst.url} is unreachable ({e.endpoint}): {e.detail}", errno_=errno.EHOSTUNREACH)
    # Decided by errno, which each store sets from what it knows for sure (the OSError's errno;
    # an S3 error code or HTTP status, see store.retry.storage_full_errno), never by words of a
    # message (it names the key, which may hold any word).
    if isinstance(e, StorageIOError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return TransferError(f"destination {dst.url} is full: writing {key} failed ({e.strerror})", errno_=e.errno)
    if isinstance(e, StorageIOError) and e.errno == errno.EFBIG:
        return TransferError(f"destination {dst.url} cannot hold {key}: larger than it takes ({e.strerror})", errno_=errno.EFBIG)
    return e


# ---------------------------------------------------------------- many objects


def _lower_priority(nice: int) -> None:
    """Raise this thread's niceness by ``nice`` (Linux: per thread; elsewhere a no-op)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except OSError:
        pass  # not permitted here: copy at the normal priority


def copy_objects(
    src: Store,
    dst: Store,
    items: Sequence[CopyItem],
    *,
    workers: int = DEFAULT_WORKERS,
    part_bytes: int = DEFAULT_PART_BYTES,
    max_rate: float | None = None,
    progress: bool = False,
    label: str = "copy",
    on_copied: Callable[[CopyItem], None] | None = None,
    delete_bad: bool = True,
    nice: int = 0,
    yield_to: YieldPolicy | None = None,
    read_ahead: int = DEFAULT_READ_AHEAD,
    verify_depth: int = DEFAULT_VERIFY_DEPTH,
) -> TransferReport:
    """Copy ``items`` from ``src`` to ``dst`` (see the module docstring).

    ``workers``: objects in flight; ``part_bytes``: bytes per streamed part;
    ``max_rate``: bytes/s over all workers (None: no cap). ``on_copied`` is
    called (from a worker thread) after each object is verified at the
    destination. ``delete_bad``: delete a copy that failed verification twice
    (False where other runs may write the same content-addressed key at once:
    then only the protocol that publishes it ever deletes). ``nice``: raise the
    copy threads' CPU niceness by this much (Linux threads have their own), so
    that readers on the node go first. ``yield_to``: slow down while its
    ``readers()`` says foreground readers are there (:class:`YieldPolicy`).
    ``read_ahead``: source parts each worker reads ahead of the one being
    uploaded (0: one at a time); ``verify_depth``: parts of one object read
    back at once. Memory: about ``workers`` x (``read_ahead`` + 1 +
    ``verify_depth``) x ``part_bytes`` in the copy's buffers, beside the
    destination client's own upload buffers.
    Raises :class:`TransferError` when the destination is down or full,
    CorruptDataError when the source fails its checksums or a copy fails
    verification twice; objects finished before the failure stay (a
    rerun skips them).
    """
    if workers <= 0 or part_bytes <= 0 or read_ahead < 0 or verify_depth <= 0:
        raise InvalidArgumentError(
            f"workers, part_bytes and verify_depth must be positive and read_ahead >= 0, "
            f"got {workers}, {part_bytes}, {verify_depth}, {read_ahead}"
        )
    report = TransferReport(objects=len(items), max_rate=max_rate)
    bar = Progress(sum(i.size for i in items), label, enabled=progress)
    limiter = RateLimiter(max_rate)
    c = _Copier(src, dst, part_bytes, limiter, bar, report, delete_bad, read_ahead, verify_depth)
    yielder = _Yielder(yield_to, limiter, max_rate, c) if yield_to is not None else None
    t0 = time.monotonic()
    if yielder is not None:
        yielder.start()

    def one(item: CopyItem) -> None:
        c.copy(item)
        if on_copied is not None:
            on_copied(item)

    # Largest first: the long copies start early and the tail is short.
    order = sorted(items, key=lambda i: -i.size)
    try:
        with ThreadPoolExecutor(
            max_workers=min(workers, max(1, len(order))),
            thread_name_prefix="sc-copy",
            initializer=_lower_priority,
            initargs=(nice,),
        ) as pool:
            futs = {pool.submit(one, it): it for it in order}
            done, _ = wait(futs, return_when=FIRST_EXCEPTION)
            errors = [f for f in done if f.exception() is not None]
            if errors:
                c.stop.set()
                for f in futs:
                    f.cancel()
                wait(futs)
                first = errors[0].exception()
                assert first is not None
                report.failed = [futs[f].dst_key for f in futs if f.done() and not f.cancelled() and f.exception() is not None]
                if isinstance(first, TransferError):
                    first.done_objects = report.copied + report.skipped
                    first.done_bytes = report.bytes_copied + report.bytes_skipped
                raise first
    finally:
        bar.close()
        report.seconds = time.monotonic() - t0
        if yielder is not None:
            yielder.stop()
            report.yielded_s, report.yield_rate = yielder.yielded_s, yielder.yield_rate
    return report
