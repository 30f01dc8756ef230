"""The Store interface: the few operations every backend provides.

A store holds objects under string keys ("a/b/c", no leading slash, no
``..``). Objects are whole and immutable once visible: a put either
publishes all of its bytes or nothing. Small mutable *refs* are changed only
by :meth:`Store.compare_and_swap`, which is how names move between
immutable snapshots without a lock server (see docs/store.md).

Backends implement :class:`Store`; capabilities are properties, so callers
ask rather than catch. Every method raises storecomp errors only:
``NotFoundError`` for a missing key, ``ConflictError`` when a conditional
write loses, ``StoreUnavailableError`` (naming the endpoint) when the store
cannot be reached after bounded retries, ``InvalidArgumentError`` for a bad
key or range.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import NotFoundError, ShortReadError, VersionChangedError
from ..io import BufferRef, as_buffer, checked_ranges
from .futures import JoinedRanges, settle
from .keys import validate_key, validate_prefix

#: Times a whole-object read restarts from a fresh stat when the object is
#: replaced under it, before it raises VersionChangedError.
VERSION_RETRIES = 5


@dataclass(frozen=True)
class ObjectInfo:
    """What :meth:`Store.stat` and :meth:`Store.list` report about one object.

    ``version`` is an opaque token (an S3 ETag, a local inode/mtime digest)
    that :meth:`Store.compare_and_swap` takes as ``expected``.
    """

    key: str
    size: int
    version: str
    mtime: float | None = None


@dataclass(frozen=True)
class Listing:
    """One level of a store under a directory prefix (what S3 lists with ``delimiter="/"``).

    ``objects``: objects directly under the prefix, in key order;
    ``prefixes``: the child "directories" (full keys ending in ``/``), sorted;
    ``skipped``: keys of entries that could not be read (a local file that
    vanished or refused ``stat``), left out of both lists.
    """

    objects: list[ObjectInfo]
    prefixes: list[str]
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, so callers choose a strategy instead of catching."""

    conditional_writes: bool  # put_if_absent and compare_and_swap are atomic on the server
    ranged_reads: bool  # read_ranges fetches only the requested bytes
    native_reads: bool  # reads go through storecomp's native engine (O_DIRECT, io_uring)
    local: bool  # objects are files on this machine (path_of works)


class RangeFuture(Protocol):
    """Completion of :meth:`Store.submit_ranges` (an ``IOFuture`` for local stores)."""

    def done(self) -> bool: ...

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Bytes read per range (uint64); raises the first failure."""
        ...


class ExactRanges:
    """A :class:`RangeFuture` that raises ``ShortReadError`` (naming ``name``)
    when a range got fewer bytes than it asked for."""

    def __init__(self, fut: RangeFuture, name: str, offs: np.ndarray, lens: np.ndarray) -> None:
        self._fut, self._name, self._offs, self._lens = fut, name, offs, lens

    def __getattr__(self, name: str) -> Any:  # the backend future's extras (io_paths, wait)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._fut, name)

    def done(self) -> bool:
        return self._fut.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        got = self._fut.result(timeout)
        short = got < self._lens
        if short.any():
            i = int(np.argmax(short))
            raise ShortReadError(self._name, int(self._offs[i]), int(self._lens[i]), int(got[i]))
        return got


class Store(abc.ABC):
    """One place objects live: a directory, a bucket prefix, an fsspec URL.

    Reads are a template: :meth:`submit_ranges` checks its arguments, pins the
    read to one version and checks ``exact`` here, once, around each backend's
    one small :meth:`_submit_ranges`.
    """

    #: URL of the store's root, without credentials (safe to print).
    url: str

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    def name_of(self, key: str) -> str:
        """``key`` as named in errors: the store's URL and the key."""
        return f"{self.url.rstrip('/')}/{key}"

    # ------------------------------------------------------------ reads

    def submit_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
        version: str | None = None,
    ) -> RangeFuture:
        """Start reading ranges of ``key`` into ``dst`` (any buffer storecomp.io
        accepts); range i is ``lengths[i]`` bytes at ``offsets[i]``, landing
        at byte ``dst_offsets[i]`` of ``dst``. Returns at once.

        Every range of one call reads the same version of the object. With
        ``version`` (an :attr:`ObjectInfo.version` from :meth:`stat`), that
        version or ``VersionChangedError``: a caller that took a size from
        ``stat`` never gets bytes of another version. With ``exact``, a range
        past the end raises ``ShortReadError``; without it the count read is
        shorter. Raises InvalidArgumentError for bad ranges (before any I/O).
        """
        validate_key(key)
        ref = as_buffer(dst)
        name = self.name_of(key)
        offs, lens, douts = checked_ranges(offsets, lengths, dst_offsets, ref, name)
        fut = self._submit_ranges(key, offs, lens, ref, douts, version)
        return ExactRanges(fut, name, offs, lens) if exact else fut

    def submit_batch(self, reads: Sequence[tuple[str, Any, Any, Any]], dst: Any) -> RangeFuture:
        """Start the reads of a batch over several objects: ``(key, offsets, lengths, dst_offsets)``
        each, as :meth:`submit_ranges` (``exact``, unpinned) into the one destination ``dst``.
        The future gives the bytes read per range, all reads in order, and raises the first failure
        once every read is done. Backends that can submit a batch at once override this (one call
        per object here)."""
        futures: list[Any] = []
        try:
            for key, offs, lens, douts in reads:
                futures.append(self.submit_ranges(key, offs, lens, dst, douts))
        except BaseException:
            settle(futures)  # the reads already submitted land before the caller reuses dst
            raise
        return JoinedRanges(futures)

    @abc.abstractmethod
    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> RangeFuture:
        """The backend's part of :meth:`submit_ranges`: start reading checked
        ranges (uint64 arrays) into ``ref``. The future gives the bytes read
        per range, fewer past the end of the object (never an error for
        that). All ranges read one version: ``version`` when given (else
        ``VersionChangedError``), else whichever is current."""

    def read_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
        version: str | None = None,
    ) -> np.ndarray:
        """:meth:`submit_ranges` and wait: bytes read per range (uint64)."""
        return self.submit_ranges(key, offsets, lengths, dst, dst_offsets, exact=exact, version=version).result()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of ``key`` from ``offset`` (to the end when ``length`` is None),
        all of one version: the size and the bytes come from the same object
        (a replacement while reading restarts the read from a fresh ``stat``,
        at most a few times, then raises ``VersionChangedError``)."""
        if length is not None:
            buf = np.empty(length, np.uint8)
            n = int(self.read_ranges(key, [offset], [length], buf, [0], exact=False)[0])
            return buf[:n].tobytes()
        for attempt in range(VERSION_RETRIES):
            info = self.stat(key)
            buf = np.empty(max(0, info.size - offset), np.uint8)
            try:
                n = int(self.read_ranges(key, [offset], [buf.size], buf, [0], exact=False, version=info.version)[0])
            except VersionChangedError:
                if attempt == VERSION_RETRIES - 1:
                    raise
                continue
            return buf[:n].tobytes()
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ writes

    @abc.abstractmethod
    def put(self, key: str, data: Any) -> ObjectInfo:
        """Publish ``data`` (bytes-like) under ``key``, replacing what was
        there; readers see the old object or the new one, never a mix."""

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: Any) -> bool:
        """Publish only if ``key`` does not exist. True when this call wrote
        it, False when an object was already there (left untouched)."""

    @abc.abstractmethod
    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        """Replace ``key`` only if its current version is ``expected``
        (``None``: only if it does not exist). Raises ``ConflictError`` when
        another writer got there first; returns the new object's info."""

    # ------------------------------------------------------------ metadata

    @abc.abstractmethod
    def stat(self, key: str) -> ObjectInfo:
        """Size and version of ``key``; ``NotFoundError`` when missing."""

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except NotFoundError:
            return False
        return True

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order."""

    def list_dir(self, prefix: str = "") -> Listing:
        """The objects and child prefixes directly under directory ``prefix``
        (``""`` is the root; ``"a/b"`` and ``"a/b/"`` both mean directory
        ``a/b``), without walking the levels below. Backends override this
        with one delimiter listing; this default walks :meth:`list`."""
        prefix = dir_prefix(prefix)
        objects: list[ObjectInfo] = []
        prefixes: set[str] = set()
        for info in self.list(prefix):
            rest = info.key[len(prefix) :]
            if "/" in rest:
                prefixes.add(prefix + rest.split("/", 1)[0] + "/")
            else:
                objects.append(info)
        return Listing(objects, sorted(prefixes))

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def delete_if(self, key: str, version: str) -> bool:
        """Remove ``key`` only while ``version`` is its current version (compare and
        delete); True when this call removed it, False when the key is absent or holds
        another version (a writer replaced it meanwhile: that object is left alone).
        LocalStore and S3Store compare and delete as one step; this default, for
        backends without a conditional delete, compares with a ``stat`` just before
        the delete (a window of one round trip remains)."""
        try:
            if self.stat(key).version != version:
                return False
        except NotFoundError:
            return False
        self.delete(key)
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and descriptors. Idempotent."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def dir_prefix(prefix: str) -> str:
    """``prefix`` as a directory: ``""`` or ending in ``/`` (InvalidArgumentError when malformed)."""
    prefix = validate_prefix(prefix)
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


class WrapperStore(Store):
    """A Store in front of other stores (the cache tier, a mount's replicas).

    :attr:`primary` is the wrapped store that takes writes and holds the
    freshest state; writes and metadata go to it unless a subclass says
    otherwise. Reads are the subclass's :meth:`_submit_ranges`, inside the
    same template as every backend (checks, version pinning, ``exact``).
    """

    @property
    @abc.abstractmethod
    def primary(self) -> Store:
        """The wrapped store that takes writes."""

    @property
    def wrapped(self) -> list[Store]:
        """Every store this one reads from (closed with it)."""
        return [self.primary]

    def put(self, key: str, data: Any) -> ObjectInfo:
        return self.primary.put(key, data)

    def put_if_absent(self, key: str, data: Any) -> bool:
        return self.primary.put_if_absent(key, data)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        return self.primary.compare_and_swap(key, expected, data)

    def stat(self, key: str) -> ObjectInfo:
        return self.primary.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.primary.list(prefix)

    def list_dir(self, prefix: str = "") -> Listing:
        return self.primary.list_dir(prefix)

    def delete(self, key: str) -> None:
        self.primary.delete(key)

    def delete_if(self, key: str, version: str) -> bool:
        return self.primary.delete_if(key, version)

    def close(self) -> None:
        for s in self.wrapped:
            s.close()


def primary_of(store: Store) -> Store:
    """The store behind wrappers that takes writes and holds the freshest state
    (a ReplicatedStore's primary, a CachedStore's inner store, recursively).
    An encrypting wrapper stays: its primary is the same encryption over its
    inner store's primary (refs and manifests never bypass the encryption)."""
    if isinstance(store, WrapperStore) and getattr(store, "decrypts", False):
        inner = store.primary
        primary = primary_of(inner)
        return store if primary is inner else store.over(primary)  # type: ignore[attr-defined]
    while isinstance(store, WrapperStore):
        store = store.primary
        if getattr(store, "decrypts", False):
            return primary_of(store)
    return store
