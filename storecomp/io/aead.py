"""AES-256-GCM segments on the native engine: OpenSSL's EVP, with libcrypto loaded at run time.

:class:`SegmentCipher` opens and seals the segments of one sealed object (the
format is :mod:`storecomp.crypto`'s); each thread keeps one EVP context per
data key, keyed once. :func:`submit_sealed` reads ranges of sealed objects
as one native batch and opens every segment in place, on the engine's
threads, as it lands (the GIL released throughout). Nothing here is a cipher
of its own: every AES operation is OpenSSL's. Where ``libcrypto.so.3``
cannot be loaded, :func:`status` says why and :func:`segment_cipher`
returns None (storecomp.crypto then uses the ``cryptography`` package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import _native
from ..errors import ClosedError
from .engine import Engine, File, IOFuture, _read_mode

_STATUS: dict[str, Any] | None = None


def status() -> dict[str, Any]:
    """``{"available": bool, "reason": str, "version": str}``: whether OpenSSL's AES-256-GCM
    could be loaded (libcrypto.so.3, version 3.0 or later), why not, and its version text."""
    global _STATUS
    if _STATUS is None:
        _STATUS = dict(_native.aead_status())
    return dict(_STATUS)


def cached_contexts() -> int:
    """How many keyed AES contexts the native threads hold now; a cipher's are freed with it,
    in every thread (no key schedule outlives its data key)."""
    return int(_native.aead_cached_contexts())


class SegmentCipher:
    """One sealed object's data key, nonce base and associated-data prefix (see storecomp.crypto).

    :meth:`open` and :meth:`seal` work on segment ``i`` of ``segments`` (each
    ``segment_bytes``, the last one shorter), the GIL released. Key material
    is never shown (no ``repr`` of it) and is wiped when the cipher goes."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes, nonce_base: bytes, aad_prefix: bytes, segments: int, segment_bytes: int) -> None:
        self._key = _native.AeadKey(key, nonce_base, aad_prefix, segments, segment_bytes)

    def open(self, i: int, data: Any, tag: Any, out: Any = None) -> bool:
        """Decrypt segment ``i`` (``data``: a contiguous buffer of exactly its bytes) in place, or into
        ``out`` (as long), and check it against ``tag`` (16 bytes); True when authentic, else False
        with the plaintext's buffer zeroed."""
        return bool(self._key.open(i, data, tag, out))

    def seal(self, i: int, plain: Any, out: Any) -> bytes:
        """Encrypt segment ``i`` of ``plain`` into ``out`` (the same length; may be ``plain``); its 16-byte tag."""
        return bytes(self._key.seal(i, plain, out))

    def __repr__(self) -> str:
        return f"SegmentCipher({self._key.segments} segments of {self._key.segment_bytes} bytes)"


#: The largest segment the native cipher takes (csrc/aead.cpp checks the same bound).
MAX_SEGMENT_BYTES = 1 << 30


def segment_cipher(key: bytes, nonce_base: bytes, aad_prefix: bytes, segments: int, segment_bytes: int) -> SegmentCipher | None:
    """A :class:`SegmentCipher`, or None when OpenSSL's AES-GCM is not available here (:func:`status`)
    or the segments are larger than the native path takes (1 GiB; the caller's fallback opens them)."""
    if not status()["available"] or not 0 < segment_bytes <= MAX_SEGMENT_BYTES:
        return None
    return SegmentCipher(key, nonce_base, aad_prefix, segments, segment_bytes)


class SealedFuture(IOFuture):
    """An :class:`IOFuture` of sealed reads; :meth:`failed_segments` says which failed their tags."""

    def failed_segments(self, timeout: float | None = None) -> np.ndarray:
        """Per request (int64): the first segment (the object's index) whose tag failed, -1 when
        every segment read opened. Waits like ``result`` (and raises what it raises)."""
        self.result(timeout)
        return np.asarray(_native.sealed_failures(self._parts[0]), np.int64)


def submit_sealed(
    engine: Engine,
    files: Sequence[File],
    file_index: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    addrs: np.ndarray,
    keep: Sequence[Any],
    ciphers: Sequence[SegmentCipher],
    cipher_index: np.ndarray,
    first_segments: np.ndarray,
    tags: np.ndarray,
    direct: str | None = None,
) -> SealedFuture:
    """Read ranges of sealed objects (request ``k``: ``lengths[k]`` bytes at ``offsets[k]`` of
    ``files[file_index[k]]`` into host memory at address ``addrs[k]``, inside one of the buffers
    ``keep``, which the future holds until the reads are done) as one native batch,
    and open them in place as segments ``first_segments[k]``.. of ``ciphers[cipher_index[k]]``
    (a request starts at a segment's start and holds whole segments), on the engine's threads
    as each lands. ``tags``: uint8, 16 bytes per segment read, requests in order.

    The caller has checked the ranges (they lie inside ``keep``'s buffers). The future's
    ``result()`` gives the bytes read per request (fewer past the end of a file: the caller
    checks) and raises read errors as every IOFuture; :meth:`SealedFuture.failed_segments`
    reports tags that failed and segments never opened (a failed one is zeroed; a request
    that did not read whole is left as it landed: the caller zeroes it)."""
    engine._check_open()
    n = int(offsets.size)
    fids = np.array([f._check_open() for f in files], np.uint32)[file_index]
    chosen = _read_mode(direct)
    mode = engine._read_mode if chosen is None else chosen
    try:
        batch = _native.submit_sealed(
            engine._native,
            fids,
            offsets,
            lengths,
            np.asarray(addrs, np.uint64),
            mode,
            [c._key for c in ciphers],
            np.asarray(cipher_index, np.int32),
            np.asarray(first_segments, np.uint64),
            np.ascontiguousarray(tags, np.uint8).reshape(-1),
        )
    except RuntimeError as e:
        raise ClosedError(str(e)) from None
    return SealedFuture(
        [batch],
        [f.path for f in files],
        np.asarray(file_index, np.int64),
        offsets,
        lengths,
        "read",
        False,
        [list(keep), list(files)],
        ("posix",) * n,
    )


__all__ = ["SealedFuture", "SegmentCipher", "cached_contexts", "segment_cipher", "status", "submit_sealed"]
