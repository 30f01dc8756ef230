"""Object keys and put payloads, checked once for every backend.

A key is a ``/``-separated relative name: not empty, no leading ``/``, no
empty, ``.`` or ``..`` segments, no NUL, and no segment starting with
``.sc-`` (reserved for temp and lock files, which are never listed).
"""

from __future__ import annotations

import ctypes
from typing import Any

from ..errors import InvalidArgumentError, UnsupportedBufferError

#: Prefix of file names a backend uses for itself (temp files, lock files).
RESERVED_PREFIX = ".sc-"


def validate_key(key: Any) -> str:
    """``key`` if it is a valid object key; InvalidArgumentError (naming it) otherwise."""
    if not isinstance(key, str):
        raise InvalidArgumentError(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidArgumentError("object key is empty")
    _check_segments(key, key.split("/"), what="object key")
    return key


def validate_prefix(prefix: Any) -> str:
    """A list prefix: like a key, but may be empty or end with ``/``."""
    if not isinstance(prefix, str):
        raise InvalidArgumentError(f"prefix must be a str, got {type(prefix).__name__}")
    if prefix:
        segments = prefix.split("/")
        _check_segments(prefix, segments[:-1] if prefix.endswith("/") else segments, what="prefix")
    return prefix


def _check_segments(key: str, segments: list[str], what: str) -> None:
    if key.startswith("/"):
        raise InvalidArgumentError(f"{what} {key!r} is absolute; keys are relative to the store root")
    if "\0" in key:
        raise InvalidArgumentError(f"{what} {key!r} contains a NUL byte")
    for seg in segments:
        if seg in ("", ".", ".."):
            raise InvalidArgumentError(f"{what} {key!r} has an empty, '.' or '..' segment (path traversal is refused)")
        if seg.startswith(RESERVED_PREFIX):
            raise InvalidArgumentError(f"{what} {key!r}: segments starting with {RESERVED_PREFIX!r} are reserved")


def payload_view(data: Any) -> memoryview:
    """A flat read-only byte view of ``data`` (bytes-like, numpy, torch CPU tensor...).

    The caller keeps ``data`` alive while the view is used. Raises
    UnsupportedBufferError for objects with no host memory (CUDA tensors:
    copy to host first).
    """
    try:
        return memoryview(data).cast("B")
    except TypeError:
        pass
    from ..io import as_buffer

    ref = as_buffer(data, writable=False, what="put data")
    if ref.is_cuda:
        raise UnsupportedBufferError("put data is in CUDA memory; copy it to host first")
    if ref.nbytes == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_uint8 * ref.nbytes).from_address(ref.address)).cast("B")
