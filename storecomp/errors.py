"""The storecomp error hierarchy.

Every error raised by storecomp derives from :class:`StorecompError` and also
from the matching built-in, so ``except FileNotFoundError`` keeps working.
Native and backend errors are translated here, at one boundary, with the
path and offset in the message.
"""

from __future__ import annotations

import errno as _errno
import os

from .redact import redact, redact_value


class StorecompError(Exception):
    """Root of every storecomp error.

    Its arguments and notes pass through :func:`storecomp.redact.redact`: a
    URL's password or a presigned URL's signature never reaches a message,
    ``args`` or a traceback.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact_value(a) for a in args))

    def add_note(self, note: str, /) -> None:
        super().add_note(redact(note))


class InvalidArgumentError(StorecompError, ValueError):
    """An argument is out of range or of the wrong kind (checked before any I/O)."""


class ConfigError(StorecompError, ValueError):
    """A configuration file or ``STORECOMP_*`` variable is malformed; the message names where."""


class ReadOnlyDestinationError(InvalidArgumentError):
    """A read was asked to land in memory that is read-only."""


class UnsupportedBufferError(StorecompError, TypeError):
    """An object is not a buffer storecomp can read into or write from."""


class ClosedError(StorecompError, ValueError):
    """I/O on a closed file handle or a shut-down engine."""


class UnavailableError(StorecompError, RuntimeError):
    """A feature was requested that this machine cannot provide (io_uring, GDS, CUDA)."""


class MissingPackageError(UnavailableError, ImportError):
    """An optional package a feature needs is not installed; the message says what to install."""

    def __init__(self, message: str, package: str = "", install: str = "") -> None:
        super().__init__(message)
        self.package, self.install = package, install

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.package, self.install))


class ChildProcessFailedError(StorecompError, RuntimeError):
    """A helper process (fio, a benchmark probe) failed; the message holds its exit status and the tail of its stderr."""


class StorageIOError(StorecompError, OSError):
    """An I/O operation failed; ``errno``, ``filename`` and ``offset`` say which and where."""

    def __init__(self, err: int, path: str, offset: int | None = None, op: str = "read") -> None:
        where = f" at offset {offset}" if offset is not None else ""
        msg = f"{op} failed{where}: {os.strerror(err)} [errno {err} {_errno.errorcode.get(err, '?')}]"
        super().__init__(err, msg, path)
        self.offset = offset
        self.op = op

    def __reduce__(self) -> tuple[object, ...]:  # survive pickling (worker processes, futures)
        return (type(self), (self.errno, self.filename, self.offset, self.op))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


class NotFoundError(StorageIOError, FileNotFoundError):
    """The file or object does not exist."""


class IsADirectoryError_(StorageIOError, IsADirectoryError):
    """A directory was given where a file was expected."""


class PermissionDeniedError(StorageIOError, PermissionError):
    """The operating system or store refused access."""


class CancelledIOError(StorageIOError):
    """The operation was cancelled because its engine shut down."""


class EngineRingLostError(StorageIOError):
    """The I/O engine's io_uring descriptor was closed (or replaced) under it, by code that
    closes descriptors it does not own (``os.closerange``, a ``dup2`` over it), on a kernel
    where the engine cannot keep the ring private (before 5.18). Reads that were in the ring
    fail with this (errno EBADFD); the engine reads everything else with its thread pool."""

    def __init__(self, err: int, path: str, offset: int | None = None, op: str = "read") -> None:
        super().__init__(err, path, offset, op)
        where = f" at offset {offset}" if offset is not None else ""
        self.strerror = (
            f"{op} failed{where}: the engine's io_uring descriptor was closed under it "
            f"[errno {err} {_errno.errorcode.get(err, '?')}]; later reads use its thread pool"
        )


class ShortReadError(StorecompError, EOFError):
    """Fewer bytes than requested were available (the range runs past the end of the file)."""

    def __init__(self, path: str, offset: int, requested: int, got: int) -> None:
        super().__init__(
            f"{path}: short read at offset {offset}: requested {requested} bytes, got {got} (end of file at {offset + got})"
        )
        self.path = redact(path)
        self.offset = offset
        self.requested = requested
        self.got = got

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.path, self.offset, self.requested, self.got))


class VersionChangedError(StorecompError, RuntimeError):
    """An object changed while it was being read (or is no longer the version
    the read was pinned to): no bytes of a mix of versions are returned.

    ``name`` is the object's path or URL, ``expected`` the version the read
    was pinned to, ``found`` the version now there (``""`` when unknown).
    Read again (from a fresh ``stat``) to get the new version.
    """

    def __init__(self, name: str, expected: str, found: str = "") -> None:
        now = f", found {found}" if found else ""
        super().__init__(f"{name}: object changed while reading: expected version {expected}{now}")
        self.name = name
        self.expected = expected
        self.found = found

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.expected, self.found))


class CorruptDataError(StorecompError, ValueError):
    """Bytes failed their integrity check; the message names the object and range."""


class WrongKeyError(CorruptDataError):
    """An encrypted object's data key does not unwrap with the keys at hand (a wrong or
    missing key, or an object moved from another name); the message names the key id, never a key."""


class ConflictError(StorecompError, RuntimeError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


class StoreUnavailableError(StorecompError, ConnectionError):
    """A store could not be reached, or answered only with server errors, after bounded
    retries; ``endpoint`` names it. ``status``: the HTTP status of the last answer (5xx,
    408, 429), or None when nothing answered (refused, timed out, reset)."""

    def __init__(self, endpoint: str, detail: str, status: int | None = None) -> None:
        super().__init__(f"{endpoint}: store unavailable: {detail}")
        self.endpoint = redact(endpoint)
        self.detail = redact(detail)
        self.status = status

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.endpoint, self.detail, self.status))


class CredentialsError(StorecompError, PermissionError):
    """Credentials for a store are missing or were refused; the message never holds a secret."""


class BucketNotFoundError(StorecompError, FileNotFoundError):
    """The bucket (or container) a store URL names does not exist; ``bucket`` names it."""

    def __init__(self, bucket: str, endpoint: str) -> None:
        super().__init__(f"bucket {bucket!r} does not exist at {endpoint} (create it first)")
        self.bucket = bucket
        self.endpoint = redact(endpoint)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.bucket, self.endpoint))


def from_errno(err: int, path: str, offset: int | None = None, op: str = "read") -> StorageIOError:
    """The storecomp error for an errno raised while doing ``op`` on ``path``."""
    cls: type[StorageIOError]
    if err == _errno.ENOENT:
        cls = NotFoundError
    elif err == _errno.EISDIR:
        cls = IsADirectoryError_
    elif err in (_errno.EACCES, _errno.EPERM, _errno.EROFS):
        cls = PermissionDeniedError
    elif err == _errno.ECANCELED:
        cls = CancelledIOError
    elif err == _errno.EBADFD:  # only the native engine's lost ring gives it (a read never does)
        cls = EngineRingLostError
    else:
        cls = StorageIOError
    return cls(err, path, offset, op)


__all__ = [
    "StorecompError",
    "InvalidArgumentError",
    "ConfigError",
    "ReadOnlyDestinationError",
    "UnsupportedBufferError",
    "ClosedError",
    "UnavailableError",
    "StorageIOError",
    "NotFoundError",
    "IsADirectoryError_",
    "PermissionDeniedError",
    "CancelledIOError",
    "EngineRingLostError",
    "ShortReadError",
    "CorruptDataError",
    "VersionChangedError",
    "WrongKeyError",
    "ConflictError",
    "StoreUnavailableError",
    "CredentialsError",
    "BucketNotFoundError",
    "from_errno",
]
