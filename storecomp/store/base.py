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

from .keys import validate_prefix


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


class Store(abc.ABC):
    """One place objects live: a directory, a bucket prefix, an fsspec URL."""

    #: URL of the store's root, without credentials (safe to print).
    url: str

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities: ...

    # ------------------------------------------------------------ reads

    @abc.abstractmethod
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
        """Start reading ranges of ``key`` into ``dst`` (any buffer storecomp.io
        accepts); range i is ``lengths[i]`` bytes at ``offsets[i]``, landing
        at byte ``dst_offsets[i]`` of ``dst``. Returns at once. With
        ``exact``, a range past the end raises ``ShortReadError``."""

    def read_ranges(
        self,
        key: str,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray,
        dst: Any,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
    ) -> np.ndarray:
        """:meth:`submit_ranges` and wait: bytes read per range (uint64)."""
        return self.submit_ranges(key, offsets, lengths, dst, dst_offsets, exact=exact).result()

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of ``key`` from ``offset`` (to the end when ``length`` is None)."""
        if length is None:
            length = max(0, self.stat(key).size - offset)
        buf = np.empty(length, np.uint8)
        n = int(self.read_ranges(key, [offset], [length], buf, [0], exact=False)[0])
        return buf[:n].tobytes()

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
        from ..errors import NotFoundError

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
