"""KV-cache keys: a model fingerprint, its namespace, and the chunk keys.

The scheme is byte-exact, engine-neutral and documented in docs/kvcache.md,
so that another engine (vLLM, SGLang, transformers; C++, Rust, another
Python) computes the same keys:

* the fingerprint's canonical form is compact JSON (sorted keys, no spaces,
  UTF-8) of its ten fields;
* ``fingerprint digest = SHA-256(b"storecomp-kv-fingerprint\\x00" + canonical)``;
* the *prefix hash* of chunk ``i`` (tokens ``[i*N, (i+1)*N)``) is
  ``t_i = SHA-256(t_{i-1} + tokens as little-endian int32)``, with
  ``t_{-1}`` empty (nothing is prepended for chunk 0): the token chain alone,
  the same bytes SGLang's HiCache computes as a page hash (page size N, a
  request without ``cache_salt``/``extra_key``);
* chunk ``i``'s key is ``k_i = SHA-256(b"storecomp-kv-chunk\\x00" + digest + t_i)``.

With a :class:`Tenant` (namespace + secret) the last step is keyed:
``k_i = HMAC-SHA-256(secret, b"storecomp-kv-tenant-chunk\x00" + digest + t_i)``.
Without the secret nobody can compute, look up or probe a tenant's keys;
tenants that share a prefix pool share a Tenant (the same secret and
namespace). The token chain ``t_i`` stays the engines' common page hash.

Key i therefore names the whole prefix ``tokens[: (i+1)*N]`` under one
model configuration: two prompts share key i exactly when they share that
prefix; an engine that only has the prefix hashes (SGLang's storage API)
derives the same keys as one that has the tokens. Python's ``hash()`` is
never used.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..errors import InvalidArgumentError

#: Version of the KV payload layout inside an object (see format.py). Part of
#: the fingerprint so that a layout change never reads old bytes as new.
KV_LAYOUT_VERSION = 1

#: Element sizes in bytes of the dtypes a fingerprint may name (torch names).
DTYPE_SIZES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "int8": 1,
    "uint8": 1,
}

_FP_DOMAIN = b"storecomp-kv-fingerprint\x00"
_CHUNK_DOMAIN = b"storecomp-kv-chunk\x00"
_MAX_TOKEN = (1 << 31) - 1


@dataclass(frozen=True)
class ModelFingerprint:
    """Everything that makes two KV caches interchangeable.

    Two engines may share a chunk only when every field is equal: the model
    (name and revision), the KV dtype, the number of layers, KV heads and
    head dimension *of this rank's shard*, the payload layout version, the
    tensor-parallel size and rank, and a free user tag (for example a LoRA
    adapter id or a RoPE scaling setting the other fields miss).
    """

    model: str
    dtype: str
    layers: int
    kv_heads: int
    head_dim: int
    revision: str = ""
    tp_size: int = 1
    tp_rank: int = 0
    tag: str = ""
    layout_version: int = KV_LAYOUT_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidArgumentError(f"ModelFingerprint.model must be a non-empty string, got {self.model!r}")
        if self.dtype not in DTYPE_SIZES:
            raise InvalidArgumentError(f"ModelFingerprint.dtype {self.dtype!r} is not one of {', '.join(DTYPE_SIZES)}")
        for name in ("layers", "kv_heads", "head_dim", "tp_size", "layout_version"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InvalidArgumentError(f"ModelFingerprint.{name} must be a positive int, got {value!r}")
        if not isinstance(self.tp_rank, int) or not 0 <= self.tp_rank < self.tp_size:
            raise InvalidArgumentError(f"ModelFingerprint.tp_rank must be in [0, tp_size={self.tp_size}), got {self.tp_rank!r}")
        for name in ("revision", "tag"):
            if not isinstance(getattr(self, name), str):
                raise InvalidArgumentError(f"ModelFingerprint.{name} must be a string")

    @property
    def itemsize(self) -> int:
        """Bytes per KV element."""
        return DTYPE_SIZES[self.dtype]

    def canonical(self) -> bytes:
        """The canonical serialization: compact sorted-key JSON in UTF-8."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @cached_property
    def digest(self) -> bytes:
        """SHA-256 of the domain tag and :meth:`canonical` (32 bytes)."""
        return hashlib.sha256(_FP_DOMAIN + self.canonical()).digest()

    @cached_property
    def namespace(self) -> str:
        """Hex fingerprint digest: the directory / key prefix of this model's chunks."""
        return self.digest.hex()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelFingerprint:
        return cls(**d)

    @classmethod
    def from_hf_config(cls, config: Any, dtype: str, *, model: str | None = None, **extra: Any) -> ModelFingerprint:
        """A fingerprint from a transformers config (``num_hidden_layers``,
        ``num_key_value_heads``, ``head_dim`` or ``hidden_size // num_attention_heads``)."""
        heads = int(config.num_attention_heads)
        kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
        name = model or getattr(config, "_name_or_path", "") or getattr(config, "model_type", "model")
        return cls(
            model=str(name),
            dtype=dtype,
            layers=int(config.num_hidden_layers),
            kv_heads=kv_heads,
            head_dim=head_dim,
            **extra,
        )


_TENANT_CHUNK_DOMAIN = b"storecomp-kv-tenant-chunk\x00"
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MIN_TENANT_SECRET_BYTES = 16


@dataclass(frozen=True, repr=False)
class Tenant:
    """Who owns a pool of KV chunks: ``namespace`` names the pool (its directory and
    key prefix, ``tenants/<namespace>/``), ``secret`` (at least 16 bytes, or a
    string of as many UTF-8 bytes) keys its chunk hashes. The secret is never shown.
    Raises InvalidArgumentError for a bad name or a short secret.
    """

    namespace: str
    secret: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.namespace, str) or not _TENANT_NAME.match(self.namespace):
            raise InvalidArgumentError(
                f"Tenant.namespace {self.namespace!r}: 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
            )
        secret = self.secret.encode("utf-8") if isinstance(self.secret, str) else self.secret
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < MIN_TENANT_SECRET_BYTES:
            raise InvalidArgumentError(f"Tenant {self.namespace!r}: the secret must be at least {MIN_TENANT_SECRET_BYTES} bytes")
        object.__setattr__(self, "secret", bytes(secret))

    @property
    def prefix(self) -> str:
        """Where this tenant's chunks live below a tier's root: ``tenants/<namespace>``."""
        return f"tenants/{self.namespace}"

    def __repr__(self) -> str:
        return f"Tenant(namespace={self.namespace!r}, secret=***)"


def token_array(tokens: Any) -> np.ndarray:
    """Token ids as a 1-D little-endian int32 array.

    Accepts a sequence of ints, a numpy array or a 1-D torch tensor (or a
    [1, n] batch of one). Raises InvalidArgumentError for ids outside
    [0, 2**31) or a tensor of more than one row.
    """
    if hasattr(tokens, "detach") and hasattr(tokens, "cpu"):  # torch tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1:
        raise InvalidArgumentError(f"tokens must be 1-D (or a batch of one), got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, "<i4")
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"tokens must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi > _MAX_TOKEN:
        raise InvalidArgumentError(f"token ids must be in [0, 2**31), got values in [{lo}, {hi}]")
    return arr.astype("<i4", copy=False)


def prefix_hashes(tokens: Any, chunk_tokens: int = 256, *, max_chunks: int | None = None) -> list[bytes]:
    """The token chain ``t_i`` (32-byte digests) of every *full* chunk of ``tokens``; no fingerprint in it.

    ``t_i = SHA-256(t_{i-1} + LE32(tokens[i*N:(i+1)*N]))``, ``t_{-1}`` empty.
    """
    if chunk_tokens <= 0:
        raise InvalidArgumentError(f"chunk_tokens must be positive, got {chunk_tokens}")
    arr = token_array(tokens)
    n = arr.size // chunk_tokens
    if max_chunks is not None:
        n = min(n, max_chunks)
    data = arr[: n * chunk_tokens].tobytes()
    step = 4 * chunk_tokens
    out: list[bytes] = []
    parent = b""
    sha = hashlib.sha256
    for i in range(n):
        parent = sha(parent + data[i * step : (i + 1) * step]).digest()
        out.append(parent)
    return out


def keys_from_prefix_hashes(
    fingerprint: ModelFingerprint, hashes: Sequence[bytes | str], *, tenant: Tenant | None = None
) -> list[bytes]:
    """Chunk keys from prefix hashes (32 bytes, or 64 hex characters as SGLang passes them);
    with ``tenant``, HMAC-SHA-256 under its secret (see the module docstring)."""
    if tenant is not None and not isinstance(tenant, Tenant):
        raise InvalidArgumentError(f"tenant must be a Tenant, got {type(tenant).__name__}")
    head = (_CHUNK_DOMAIN if tenant is None else _TENANT_CHUNK_DOMAIN) + fingerprint.digest
    out: list[bytes] = []
    for h in hashes:
        raw = bytes.fromhex(h) if isinstance(h, str) else bytes(h)
        if len(raw) != 32:
            raise InvalidArgumentError(f"a prefix hash is 32 bytes (64 hex characters), got {h!r}")
        if tenant is None:
            out.append(hashlib.sha256(head + raw).digest())
        else:
            out.append(hmac.digest(tenant.secret, head + raw, "sha256"))
    return out


def chunk_keys(
    fingerprint: ModelFingerprint,
    tokens: Any,
    chunk_tokens: int = 256,
    *,
    max_chunks: int | None = None,
    tenant: Tenant | None = None,
) -> list[bytes]:
    """Keys (32-byte digests) of every *full* chunk of ``tokens``.

    A trailing partial chunk (fewer than ``chunk_tokens`` tokens) has no key:
    it is never stored, and callers recompute it. With ``tenant``, the keys
    are HMAC-SHA-256 under the tenant's secret (see the module docstring).
    """
    hashes = prefix_hashes(tokens, chunk_tokens, max_chunks=max_chunks)
    return keys_from_prefix_hashes(fingerprint, hashes, tenant=tenant)


def chunk_key_hex(
    fingerprint: ModelFingerprint, tokens: Sequence[int], chunk_tokens: int = 256, *, tenant: Tenant | None = None
) -> list[str]:
    """:func:`chunk_keys` as lowercase hex strings."""
    return [k.hex() for k in chunk_keys(fingerprint, tokens, chunk_tokens, tenant=tenant)]
