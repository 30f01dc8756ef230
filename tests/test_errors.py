"""storecomp.errors: one root, built-in bases, translation of errno values."""

from __future__ import annotations

import errno
import pickle

import pytest

from storecomp import errors
from storecomp.errors import (
    CancelledIOError,
    EngineRingLostError,
    IsADirectoryError_,
    NotFoundError,
    PermissionDeniedError,
    ShortReadError,
    StorageIOError,
    StorecompError,
    from_errno,
)


def test_every_error_has_the_one_root() -> None:
    for name in errors.__all__:
        obj = getattr(errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, StorecompError), name


@pytest.mark.parametrize(
    "cls,builtin",
    [
        (errors.InvalidArgumentError, ValueError),
        (errors.ConfigError, ValueError),
        (errors.ReadOnlyDestinationError, ValueError),
        (errors.UnsupportedBufferError, TypeError),
        (errors.ClosedError, ValueError),
        (errors.UnavailableError, RuntimeError),
        (StorageIOError, OSError),
        (NotFoundError, FileNotFoundError),
        (IsADirectoryError_, IsADirectoryError),
        (PermissionDeniedError, PermissionError),
        (ShortReadError, EOFError),
        (errors.CorruptDataError, ValueError),
        (errors.VersionChangedError, RuntimeError),
    ],
)
def test_errors_also_inherit_the_matching_builtin(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)


@pytest.mark.parametrize(
    "err,cls",
    [
        (errno.ENOENT, NotFoundError),
        (errno.EISDIR, IsADirectoryError_),
        (errno.EACCES, PermissionDeniedError),
        (errno.EPERM, PermissionDeniedError),
        (errno.EROFS, PermissionDeniedError),
        (errno.ECANCELED, CancelledIOError),
        (errno.EBADFD, EngineRingLostError),
        (errno.EIO, StorageIOError),
        (errno.EINVAL, StorageIOError),
    ],
)
def test_from_errno_picks_the_class_and_names_path_offset_errno(err: int, cls: type) -> None:
    e = from_errno(err, "/data/shard-7", 123456, "read")
    assert type(e) is cls
    assert (e.errno, e.filename, e.offset, e.op) == (err, "/data/shard-7", 123456, "read")
    text = str(e)
    assert text.startswith("/data/shard-7: read failed at offset 123456")
    assert errno.errorcode[err] in text and f"errno {err}" in text


def test_from_errno_without_offset() -> None:
    e = from_errno(errno.ENOENT, "/x", None, "open")
    assert str(e).startswith("/x: open failed: ") and "offset" not in str(e)


def test_short_read_error_fields() -> None:
    e = ShortReadError("/f", 100, 50, 20)
    assert (e.path, e.offset, e.requested, e.got) == ("/f", 100, 50, 20)
    assert str(e) == "/f: short read at offset 100: requested 50 bytes, got 20 (end of file at 120)"


def test_storage_errors_can_be_caught_as_os_errors() -> None:
    with pytest.raises(OSError):
        raise from_errno(errno.EIO, "/f", 0)
    with pytest.raises(FileNotFoundError):
        raise from_errno(errno.ENOENT, "/f", 0)


def test_config_error_round_trips_through_pickle() -> None:
    e = pickle.loads(pickle.dumps(errors.ConfigError("STORECOMP_ENGINE: bad")))
    assert isinstance(e, errors.ConfigError) and "STORECOMP_ENGINE" in str(e)


def test_storage_io_error_round_trips_through_pickle() -> None:
    e = pickle.loads(pickle.dumps(from_errno(errno.EIO, "/data/f", 4096, "read")))
    assert type(e) is StorageIOError
    assert (e.errno, e.filename, e.offset, e.op) == (errno.EIO, "/data/f", 4096, "read")
    assert str(e) == str(from_errno(errno.EIO, "/data/f", 4096, "read"))


def test_short_read_error_round_trips_through_pickle() -> None:
    e = pickle.loads(pickle.dumps(ShortReadError("/f", 100, 50, 20)))
    assert (e.path, e.offset, e.requested, e.got) == ("/f", 100, 50, 20)


def test_version_changed_error_names_the_object_and_round_trips_through_pickle() -> None:
    e = errors.VersionChangedError("s3://b/k", '"etag-1"', '"etag-2"')
    assert str(e) == 's3://b/k: object changed while reading: expected version "etag-1", found "etag-2"'
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is errors.VersionChangedError and (back.name, back.expected, back.found) == (e.name, e.expected, e.found)
