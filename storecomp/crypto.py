"""Encryption at rest: key providers and the sealed-object format (AES-256-GCM, envelope keys).

Every sealed object gets its own random 256-bit *data key*, wrapped (AES-GCM)
by the tenant's *key-encryption key* from a :class:`KeyProvider`. The object
is cut into segments of ``SEGMENT_BYTES``; each segment has its own nonce
(the object's random nonce base XOR the segment index: unique under its
object's own data key) and its own tag, and its associated data binds the
object's name, the segment index and the segment count, so a segment moved
to another object or index, a flipped tag or nonce, or a truncated object
fails its tag: a ``CorruptDataError``, never bytes. The wrapped data key is
bound to the name, sizes and key id, so a whole object moved to another name
fails too. Rotation (:func:`rewrap`) re-wraps the data key under the
provider's current key and leaves every segment as it is; old objects stay
readable while the provider still holds the key that wrapped them.

Layout (little-endian; format version 2)::

    [0, 256)            header: magic b"SCEN", version u16, key-id length u8, 0 u8,
                        segment bytes u32, plaintext bytes u64, wrap nonce 12s,
                        wrapped data key 48s (32 + tag), nonce base 12s,
                        key id (<= 64 bytes), zero padding
    [256, 256 + 16 S)   the tag table: segment i's 16-byte GCM tag at 256 + 16 i
    zero padding to D, the data offset (a multiple of 4096)
    [D, D + P)          the ciphertext: plaintext byte p at D + p (GCM keeps lengths)

The ciphertext sits at the plaintext's own offsets (shifted by D, aligned),
so a read lands it straight in the caller's buffer with the same I/O as a
plaintext read, and decrypts it there. Version 1 (per-segment records with
their nonces and tags inline) is not read.

The segments' AES work runs in OpenSSL's EVP AES-256-GCM on the native
engine (:mod:`storecomp.io.aead`: libcrypto loaded at run time, one keyed
context per data key and thread, the GIL released), which also opens the
segments of a read on the engine's threads as they land; where libcrypto
cannot be loaded (or ``STORECOMP_AEAD=cryptography``), in the ``cryptography``
package's GCM mode (also OpenSSL). Both produce the same bytes. Key wrapping
(the envelope) always uses ``cryptography``. Nothing here is a hand-written
cipher. Key material never appears in a message or ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import config
from .errors import ConfigError, CorruptDataError, InvalidArgumentError, WrongKeyError
from .optional import require

MAGIC = b"SCEN"
VERSION = 2
HEADER_BYTES = 256
ALIGN = 4096  # the data offset's alignment (O_DIRECT)
SEGMENT_BYTES = 64 << 10
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
MAX_KEY_ID = 64
_FIXED = struct.Struct("<4sHBBIQ12s48s12s")
_PREFIX = struct.Struct("<4sHBBIQ")  # the header bytes before the wrap nonce (bound into the wrap)
_SEG_AAD = struct.Struct("<QQ")
_WRAP_DOMAIN = b"storecomp-wrap\x00"
_SEG_DOMAIN = b"storecomp-seg\x00"

#: Environment variables (read in :mod:`storecomp.config`) for ``encryption="env"`` / ``"file"``.
ENV_KEYS = config.ENV_ENCRYPTION_KEYS
ENV_KEY_FILE = config.ENV_ENCRYPTION_KEY_FILE


# ---------------------------------------------------------------- key providers


@runtime_checkable
class KeyProvider(Protocol):
    """Where key-encryption keys come from (an env variable, a file, a KMS).

    ``current()`` names the key that wraps new data keys; ``key(key_id)``
    returns any key the provider still holds (None when it does not), so data
    wrapped before a rotation stays readable. Keys are 32 bytes.
    """

    def current(self) -> tuple[str, bytes]: ...

    def key(self, key_id: str) -> bytes | None: ...


def key_id_of(key: bytes) -> str:
    """The id given to a key listed without one: 16 hex digits of a domain-separated SHA-256 (reveals nothing of it)."""
    return hashlib.sha256(b"storecomp-key-id\x00" + key).hexdigest()[:16]


def parse_keys(text: str, where: str) -> list[tuple[str, bytes]]:
    """Keys from ``[id:]key`` entries separated by commas or newlines (key in base64 or 64 hex digits).

    The first entry is the current key. Raises ConfigError naming ``where``
    (never the key) on a malformed entry, a key that is not 32 bytes or a
    repeated id.
    """
    out: list[tuple[str, bytes]] = []
    for n, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        entry = raw.strip()
        if not entry or entry.startswith("#"):
            continue
        key_id, sep, material = entry.rpartition(":")
        if not sep:
            key_id, material = "", entry
        key = _decode_key(material.strip())
        if key is None:
            raise ConfigError(f"{where}: entry {n}: expected a 32-byte key in base64 or 64 hex digits, optionally 'id:key'")
        key_id = key_id.strip() or key_id_of(key)
        if len(key_id.encode()) > MAX_KEY_ID or any(c in key_id for c in ",\n\r\x00"):
            raise ConfigError(f"{where}: entry {n}: key id must be 1-{MAX_KEY_ID} bytes without ',' or control characters")
        if any(key_id == k for k, _ in out):
            raise ConfigError(f"{where}: key id {key_id!r} listed twice")
        out.append((key_id, key))
    if not out:
        raise ConfigError(f"{where}: no key found (expected '[id:]key' entries, the first one current)")
    return out


def _decode_key(text: str) -> bytes | None:
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == KEY_BYTES else None


class StaticKeys:
    """A fixed keyring: ``keys`` as ``(id, 32-byte key)`` pairs, the first one current."""

    def __init__(self, keys: Iterable[tuple[str, bytes]] | Mapping[str, bytes], where: str = "StaticKeys") -> None:
        pairs = list(keys.items()) if isinstance(keys, Mapping) else list(keys)
        if not pairs:
            raise ConfigError(f"{where}: no key given")
        for key_id, key in pairs:
            if not isinstance(key, bytes) or len(key) != KEY_BYTES:
                raise ConfigError(f"{where}: key {key_id!r} must be {KEY_BYTES} bytes")
            if not key_id or len(key_id.encode()) > MAX_KEY_ID:
                raise ConfigError(f"{where}: key id must be 1-{MAX_KEY_ID} bytes")
        self._keys = dict(pairs)
        self._current = pairs[0][0]
        self.where = where

    def current(self) -> tuple[str, bytes]:
        return self._current, self._keys[self._current]

    def key(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def key_ids(self) -> list[str]:
        """The ids held, current first."""
        return [self._current] + [k for k in self._keys if k != self._current]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where}, current={self._current!r}, keys={len(self._keys)})"


class EnvKeyProvider(StaticKeys):
    """Keys from an environment variable (default ``STORECOMP_ENCRYPTION_KEYS``): ``[id:]key`` entries,
    comma separated, the first current. Raises ConfigError naming the variable when it is unset or bad."""

    def __init__(self, var: str = ENV_KEYS, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(parse_keys(config.encryption_keys_text(environ, var), var), var)


class FileKeyProvider:
    """Keys from a file of ``[id:]key`` lines (the first current), re-read when the file changes,
    so a key rotated into the file is used for new writes without a restart. Raises ConfigError
    naming the file when it is missing, unreadable or malformed."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys = self._load()

    def _load(self) -> StaticKeys:
        try:
            st = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{self.path}: encryption key file not found") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{self.path}: cannot read the encryption key file: {type(e).__name__}") from None
        self._stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        return StaticKeys(parse_keys(text, str(self.path)), str(self.path))

    def _fresh(self) -> StaticKeys:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            return self._keys  # the file went away: keep the keys we have
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    try:
                        self._keys = self._load()
                    except ConfigError:
                        pass  # a file half-written by an editor: keep the old keys until it parses
        return self._keys

    def current(self) -> tuple[str, bytes]:
        return self._fresh().current()

    def key(self, key_id: str) -> bytes | None:
        return self._fresh().key(key_id)  # one stat: a key retired from the file stops unwrapping at once

    def __repr__(self) -> str:
        return f"FileKeyProvider({str(self.path)!r})"


def key_provider(spec: KeyProvider | str | None, environ: Mapping[str, str] | None = None) -> KeyProvider | None:
    """The provider ``spec`` names: a KeyProvider as is; ``"env"`` (``STORECOMP_ENCRYPTION_KEYS``),
    ``"file:PATH"``, ``"file"`` (``STORECOMP_ENCRYPTION_KEY_FILE``); None or ``"off"``: no encryption.
    Raises ConfigError naming the setting when it is unknown or its keys are missing."""
    if spec is None or spec == "off":
        return None
    if isinstance(spec, str):
        if spec == "env":
            return EnvKeyProvider(ENV_KEYS, environ)
        if spec == "file":
            return FileKeyProvider(config.encryption_key_file(environ))
        if spec.startswith("file:"):
            return FileKeyProvider(spec[5:])
        raise ConfigError(f"encryption={spec!r}: expected 'env', 'file', 'file:PATH', 'off' or a KeyProvider")
    if isinstance(spec, KeyProvider):
        return spec
    raise ConfigError(f"encryption: expected a KeyProvider or a string, got {type(spec).__name__}")


# ---------------------------------------------------------------- the sealed format


def _round_up(n: int, a: int) -> int:
    return -(-n // a) * a


def segment_count(plaintext_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Segments of an object of ``plaintext_bytes`` (an empty object has one, of 0 bytes)."""
    return max(1, -(-plaintext_bytes // segment_bytes))


def data_offset(plaintext_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Where the ciphertext starts in the sealed object: after the header and the tag table, on a 4096-byte boundary."""
    return _round_up(HEADER_BYTES + TAG_BYTES * segment_count(plaintext_bytes, segment_bytes), ALIGN)


def sealed_size(plaintext_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Bytes of the sealed object holding ``plaintext_bytes``."""
    return data_offset(plaintext_bytes, segment_bytes) + plaintext_bytes


def plaintext_size(sealed_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Inverse of :func:`sealed_size` (-1 when no plaintext size gives ``sealed_bytes``).

    The head ``h`` (a multiple of ALIGN) must equal ``data_offset(sealed_bytes - h)``;
    that offset never grows as ``h`` grows, so ``data_offset(sealed_bytes - h) - h``
    strictly falls and a binary search over the heads finds the one zero, if any."""
    lo, hi = 1, sealed_bytes // ALIGN  # heads lo*ALIGN .. hi*ALIGN
    while lo <= hi:
        mid = (lo + hi) // 2
        head = mid * ALIGN
        need = data_offset(sealed_bytes - head, segment_bytes)
        if need == head:
            return sealed_bytes - head
        if need > head:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def is_sealed(head: bytes | np.ndarray | memoryview) -> bool:
    """Whether bytes start like a sealed object (magic only: :func:`open_header` checks the rest)."""
    return bytes(head[:4]) == MAGIC


def peek_plaintext_size(head: Any) -> int | None:
    """The plaintext size a sealed header declares (None: not a sealed header of this format).
    No key is needed and nothing is authenticated: for listings; reads check it with the data key."""
    raw = bytes(memoryview(head).cast("B")[:HEADER_BYTES])
    if len(raw) < HEADER_BYTES or raw[:4] != MAGIC:
        return None
    _, version, _, _, _, plaintext_bytes = _PREFIX.unpack_from(raw)
    return int(plaintext_bytes) if version == VERSION else None


_CIPHERS: dict[bytes, Any] = {}
_CIPHERS_LOCK = threading.Lock()


_GCM_API: tuple[Any, Any, Any] | None = None
_NATIVE: Any = None  # storecomp.io.aead, once imported


def backend_info(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Who runs the segments' AES-GCM here: ``{"backend": "openssl-evp" | "cryptography",
    "reason": why, "openssl": the version text when loaded}`` (``STORECOMP_AEAD`` chooses;
    ``native`` when libcrypto cannot be loaded raises ConfigError naming the setting and why)."""
    choice = config.aead_backend(environ)
    st = _aead().status()
    if choice == "cryptography":
        return {"backend": "cryptography", "reason": f"{config.ENV_AEAD}=cryptography", "openssl": st["version"]}
    if st["available"]:
        return {"backend": "openssl-evp", "reason": "libcrypto loaded at run time", "openssl": st["version"]}
    if choice == "native":
        raise ConfigError(f"{config.ENV_AEAD}=native but OpenSSL's AES-GCM is unavailable: {st['reason']}")
    return {"backend": "cryptography", "reason": f"native AES-GCM unavailable: {st['reason']}", "openssl": ""}


def _aead() -> Any:
    global _NATIVE
    if _NATIVE is None:
        from .io import aead

        _NATIVE = aead
    return _NATIVE


def _native_wanted() -> bool:
    return backend_info()["backend"] == "openssl-evp"


def _gcm_api() -> tuple[Any, Any, Any]:
    """``cryptography``'s (Cipher, AES, GCM), imported once (a segment is opened in microseconds)."""
    global _GCM_API
    if _GCM_API is None:
        ciphers = require("cryptography.hazmat.primitives.ciphers", "encryption")
        _GCM_API = (ciphers.Cipher, ciphers.algorithms.AES, ciphers.modes.GCM)
    return _GCM_API


def _aesgcm(key: bytes) -> Any:
    """An AESGCM object for a key-encryption key, cached per key (a few per process)."""
    aead = _CIPHERS.get(key)
    if aead is None:
        aead = require("cryptography.hazmat.primitives.ciphers.aead", "encryption").AESGCM(key)
        with _CIPHERS_LOCK:
            if len(_CIPHERS) >= 64:
                _CIPHERS.clear()
            _CIPHERS[key] = aead
    return aead


class Envelope:
    """A sealed object's header, its data key unwrapped: enough to open any segment.

    ``tags`` is the tag table (16 bytes per segment; :meth:`tag`) when it was read
    with the header, else None (the caller reads the tags a read needs, :meth:`tag_span`).
    """

    __slots__ = (
        "name",
        "key_id",
        "plaintext_bytes",
        "segment_bytes",
        "segments",
        "data_offset",
        "tags",
        "_nonce",
        "_aes",
        "_aad0",
        "native",
    )

    def __init__(
        self, name: bytes, key_id: str, plaintext_bytes: int, segment_bytes: int, nonce_base: bytes, data_key: bytes
    ) -> None:
        self.name, self.key_id = name, key_id
        self.plaintext_bytes, self.segment_bytes = plaintext_bytes, segment_bytes
        self.segments = segment_count(plaintext_bytes, segment_bytes)
        self.data_offset = data_offset(plaintext_bytes, segment_bytes)
        self.tags: bytes | None = None
        self._nonce = (nonce_base[:4], int.from_bytes(nonce_base[4:], "little"))
        self._aad0 = _SEG_DOMAIN + name + b"\x00"
        #: The native segment cipher (storecomp.io.aead.SegmentCipher), None on the ``cryptography`` path.
        self.native = (
            _aead().segment_cipher(data_key, nonce_base, self._aad0, self.segments, segment_bytes) if _native_wanted() else None
        )
        self._aes = _gcm_api()[1](data_key) if self.native is None else None

    def __repr__(self) -> str:
        return f"Envelope({self.name!r}, key_id={self.key_id!r}, {self.plaintext_bytes} bytes)"

    @property
    def sealed_bytes(self) -> int:
        return self.data_offset + self.plaintext_bytes

    def segment_plain(self, i: int) -> tuple[int, int]:
        """(offset, length) of segment ``i``'s plaintext; its ciphertext is at ``data_offset + offset``."""
        off = i * self.segment_bytes
        return off, max(0, min(self.segment_bytes, self.plaintext_bytes - off))

    def load_tags(self, head: Any, where: str) -> None:
        """Keep the tag table from ``head`` (the object's first :attr:`data_offset` bytes at least).
        Raises CorruptDataError naming ``where`` when the padding after the table is not zero."""
        view = memoryview(head).cast("B")
        table_end = HEADER_BYTES + TAG_BYTES * self.segments
        if len(view) < self.data_offset:
            raise CorruptDataError(f"{where}: encrypted header truncated ({len(view)} of {self.data_offset} bytes)")
        if any(view[table_end : self.data_offset]):
            raise CorruptDataError(f"{where}: encrypted header damaged (non-zero padding after the tag table)")
        self.tags = bytes(view[HEADER_BYTES:table_end])

    def tag(self, i: int) -> bytes:
        """Segment ``i``'s tag from the table (which must be loaded)."""
        assert self.tags is not None
        return self.tags[TAG_BYTES * i : TAG_BYTES * (i + 1)]

    def tag_span(self, first: int, count: int = 1) -> tuple[int, int]:
        """(offset, length) in the sealed object of the tags of segments ``first .. first + count - 1``."""
        return HEADER_BYTES + TAG_BYTES * first, TAG_BYTES * count

    def _gcm(self, i: int, tag: bytes | None) -> Any:
        salt, base = self._nonce
        cipher, _, gcm = _gcm_api()
        return cipher(self._aes, gcm(salt + ((base ^ i) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little"), tag))

    def _aad(self, i: int) -> bytes:
        return self._aad0 + _SEG_AAD.pack(i, self.segments)

    def open_segment(self, i: int, data: Any, out: Any, tag: Any, where: str) -> None:
        """Decrypt segment ``i``'s ciphertext ``data`` into ``out`` (1-D byte buffers of exactly its
        plaintext length; ``out`` may be ``data`` itself: in place) and check it against ``tag`` (16 bytes).

        Raises CorruptDataError naming ``where`` when the tag fails (tampered, moved, truncated,
        or sealed under another data key); ``out`` then holds unauthenticated bytes the caller
        must not use (it clears them)."""
        n = min(self.segment_bytes, self.plaintext_bytes - i * self.segment_bytes)
        if len(data) != n or len(out) != n:
            raise CorruptDataError(f"{where}: encrypted segment {i} truncated ({len(data)} of {n} bytes)")
        if self.native is not None:
            if not self.native.open(i, data, tag, None if out is data else out):
                raise CorruptDataError(f"{where}: encrypted segment {i} failed its authentication tag")
            return
        try:
            d = self._gcm(i, tag).decryptor()
            d.authenticate_additional_data(self._aad(i))
            if n:
                d.update_into(data, out)
            d.finalize()
        except Exception as e:  # InvalidTag: the only failure of an authentic key
            if type(e).__name__ != "InvalidTag":
                raise
            raise CorruptDataError(f"{where}: encrypted segment {i} failed its authentication tag") from None

    def seal_segment(self, i: int, plain: Any, out: Any) -> bytes:
        """Encrypt segment ``i`` of ``plain`` into ``out`` (the same length); returns its 16-byte tag."""
        if self.native is not None:
            return self.native.seal(i, plain, out)
        e = self._gcm(i, None).encryptor()
        e.authenticate_additional_data(self._aad(i))
        if len(plain):
            e.update_into(plain, out)
        e.finalize()
        return bytes(e.tag)


def _wrap_aad(prefix: bytes, key_id: bytes, name: bytes) -> bytes:
    return _WRAP_DOMAIN + prefix + key_id + b"\x00" + name


def _make_header(
    data_key: bytes, nonce_base: bytes, name: bytes, plaintext_bytes: int, segment_bytes: int, keys: KeyProvider
) -> tuple[str, bytes]:
    key_id, kek = keys.current()
    kid = key_id.encode()
    if not 0 < len(kid) <= MAX_KEY_ID:
        raise ConfigError(f"{keys!r}: key id must be 1-{MAX_KEY_ID} bytes")
    prefix = _PREFIX.pack(MAGIC, VERSION, len(kid), 0, segment_bytes, plaintext_bytes)
    nonce = os.urandom(NONCE_BYTES)
    wrapped = _aesgcm(kek).encrypt(nonce, data_key, _wrap_aad(prefix, kid, name))
    head = bytearray(HEADER_BYTES)
    _FIXED.pack_into(head, 0, MAGIC, VERSION, len(kid), 0, segment_bytes, plaintext_bytes, nonce, wrapped, nonce_base)
    head[_FIXED.size : _FIXED.size + len(kid)] = kid
    return key_id, bytes(head)


def open_header(head: Any, name: bytes, keys: KeyProvider, where: str) -> Envelope:
    """Parse a sealed header and unwrap its data key for object ``name``; when ``head`` also holds
    the whole tag table (the first ``data_offset`` bytes of the object), the envelope keeps it.

    Raises CorruptDataError naming ``where`` for a damaged or foreign header
    (not sealed, other version, non-zero padding, moved from another name), WrongKeyError
    (a CorruptDataError) when the provider lacks the key id or holds another key.
    """
    view = memoryview(head).cast("B")
    raw = bytes(view[:HEADER_BYTES])
    if len(raw) < HEADER_BYTES:
        raise CorruptDataError(f"{where}: encrypted header truncated ({len(raw)} of {HEADER_BYTES} bytes)")
    magic, version, kid_len, _, segment_bytes, plaintext_bytes, nonce, wrapped, nonce_base = _FIXED.unpack_from(raw, 0)
    if magic != MAGIC:
        raise CorruptDataError(f"{where}: not an encrypted object (no {MAGIC!r} header)")
    if version != VERSION or not 0 < kid_len <= MAX_KEY_ID or segment_bytes <= 0:
        raise CorruptDataError(f"{where}: encrypted header version {version} / key id / segment size not understood")
    kid = raw[_FIXED.size : _FIXED.size + kid_len]
    if any(raw[_FIXED.size + kid_len :]):
        raise CorruptDataError(f"{where}: encrypted header damaged (non-zero padding)")
    key_id = kid.decode("utf-8", errors="replace")
    kek = keys.key(key_id)
    if kek is None:
        raise WrongKeyError(f"{where}: sealed under key id {key_id!r}, which the key provider {keys!r} does not hold")
    try:
        data_key = _aesgcm(kek).decrypt(nonce, wrapped, _wrap_aad(raw[: _PREFIX.size], kid, name))
    except Exception as e:
        if type(e).__name__ != "InvalidTag":
            raise
        raise WrongKeyError(
            f"{where}: the data key does not unwrap with key id {key_id!r} (a wrong key, or an object moved or altered)"
        ) from None
    env = Envelope(name, key_id, plaintext_bytes, segment_bytes, nonce_base, data_key)
    if len(view) >= env.data_offset:
        env.load_tags(view, where)
    return env


def new_envelope(
    name: bytes, plaintext_bytes: int, keys: KeyProvider, segment_bytes: int = SEGMENT_BYTES
) -> tuple[Envelope, bytes]:
    """A fresh data key for object ``name``: its envelope and the 256-byte header that carries it wrapped."""
    data_key, nonce_base = os.urandom(KEY_BYTES), os.urandom(NONCE_BYTES)
    key_id, header = _make_header(data_key, nonce_base, name, plaintext_bytes, segment_bytes, keys)
    return Envelope(name, key_id, plaintext_bytes, segment_bytes, nonce_base, data_key), header


def seal_into(plain: Any, out: np.ndarray, name: bytes, keys: KeyProvider, segment_bytes: int = SEGMENT_BYTES) -> int:
    """Seal ``plain`` (bytes-like) as object ``name`` into ``out`` (uint8, at least :func:`sealed_size` bytes).

    Returns the sealed size in bytes; bytes of ``out`` past it are left as they were."""
    src = memoryview(plain).cast("B")
    env, header = new_envelope(name, len(src), keys, segment_bytes)
    total = env.sealed_bytes
    if out.nbytes < total:
        raise InvalidArgumentError(f"seal_into: destination of {out.nbytes} bytes, {total} needed")
    dst = out.reshape(-1).data.cast("B")
    dst[:HEADER_BYTES] = header
    base = env.data_offset
    tags = np.zeros(base - HEADER_BYTES, np.uint8)  # the tag table and the zero padding after it
    for i in range(env.segments):
        off, n = env.segment_plain(i)
        tags[TAG_BYTES * i : TAG_BYTES * (i + 1)] = np.frombuffer(
            env.seal_segment(i, src[off : off + n], dst[base + off : base + off + n]), np.uint8
        )
    dst[HEADER_BYTES:base] = tags.data
    return total


def seal(plain: Any, name: bytes, keys: KeyProvider, segment_bytes: int = SEGMENT_BYTES) -> np.ndarray:
    """:func:`seal_into` a new array of exactly the sealed size."""
    n = len(memoryview(plain).cast("B"))
    out = np.empty(sealed_size(n, segment_bytes), np.uint8)
    seal_into(plain, out, name, keys, segment_bytes)
    return out


def unseal_into(sealed: Any, out: np.ndarray, name: bytes, keys: KeyProvider, where: str) -> int:
    """Open a whole sealed object (bytes past its sealed size are ignored) into ``out``; returns the plaintext size.

    Raises CorruptDataError (WrongKeyError for a key problem) naming ``where``;
    on failure ``out``'s first plaintext-size bytes are zeroed (no unauthenticated byte is left)."""
    src = memoryview(sealed).cast("B")
    env = open_header(src, name, keys, where)
    if len(src) < env.sealed_bytes or env.tags is None:
        raise CorruptDataError(f"{where}: encrypted object truncated ({len(src)} of {env.sealed_bytes} bytes)")
    if out.nbytes < env.plaintext_bytes:
        raise CorruptDataError(f"{where}: encrypted object holds {env.plaintext_bytes} bytes, {out.nbytes} expected")
    dst = out.reshape(-1).data.cast("B")
    base = env.data_offset
    try:
        for i in range(env.segments):
            off, n = env.segment_plain(i)
            env.open_segment(i, src[base + off : base + off + n], dst[off : off + n], env.tag(i), where)
    except CorruptDataError:
        out.reshape(-1)[: env.plaintext_bytes] = 0
        raise
    return env.plaintext_bytes


def rewrap(head: Any, name: bytes, keys: KeyProvider, where: str) -> bytes:
    """A new 256-byte header for a sealed object: its data key re-wrapped under the provider's current key.

    The tag table and the ciphertext stay as they are (no data is re-encrypted);
    the old key must still be held by ``keys`` to unwrap. Raises as :func:`open_header`."""
    raw = bytes(memoryview(head).cast("B")[:HEADER_BYTES])
    env = open_header(raw, name, keys, where)
    _, _, kid_len, _, _, _, nonce, wrapped, nonce_base = _FIXED.unpack_from(raw, 0)
    kek = keys.key(env.key_id)
    assert kek is not None  # open_header just used it
    kid = raw[_FIXED.size : _FIXED.size + kid_len]
    data_key = _aesgcm(kek).decrypt(nonce, wrapped, _wrap_aad(raw[: _PREFIX.size], kid, name))
    return _make_header(data_key, nonce_base, name, env.plaintext_bytes, env.segment_bytes, keys)[1]


__all__ = [
    "ALIGN",
    "ENV_KEYS",
    "ENV_KEY_FILE",
    "HEADER_BYTES",
    "SEGMENT_BYTES",
    "TAG_BYTES",
    "EnvKeyProvider",
    "Envelope",
    "FileKeyProvider",
    "KeyProvider",
    "StaticKeys",
    "backend_info",
    "data_offset",
    "is_sealed",
    "key_id_of",
    "key_provider",
    "new_envelope",
    "open_header",
    "parse_keys",
    "peek_plaintext_size",
    "plaintext_size",
    "rewrap",
    "seal",
    "seal_into",
    "sealed_size",
    "segment_count",
    "unseal_into",
]
