"""Tenant-isolated KV keys: HMAC-SHA-256 under the tenant's secret, per-tenant pools.

A tenant cannot compute, look up or probe another tenant's chunks; tenants
that share a Tenant (namespace + secret) share one prefix pool.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import KVCacheStore, Tenant
from storecomp.kvcache.keys import chunk_key_hex, chunk_keys
from tests.kvcache.kvhelpers import CHUNK, make_kv, same_prefix, zeros_kv
from tests.kvcache.test_keys import FP, VECTOR_KEYS

ACME = Tenant("acme", b"acme-secret-0123456789abcdef")
# The tenant test vector printed in docs/kvcache.md.
TENANT_VECTOR_KEYS = [
    "b834e90b14da1fa5c3289d9db59ada631176473ee28efa071a8b4637813765bc",
    "49bcdb8663b8bda1b277b84c069cc384e63f09aa5195cb51cd136a696edb32b3",
]


def test_tenant_vector_from_first_principles() -> None:
    """The keyed scheme as docs/kvcache.md states it, written with hmac and struct only."""
    secret = b"acme-secret-0123456789abcdef"
    chain = b""  # the token chain t_i, the engines' common page hash
    keys = []
    for i in range(2):
        chain = hashlib.sha256(chain + struct.pack("<256i", *range(i * 256, (i + 1) * 256))).digest()
        keys.append(hmac.new(secret, b"storecomp-kv-tenant-chunk\x00" + FP.digest + chain, hashlib.sha256).hexdigest())
    assert keys == TENANT_VECTOR_KEYS
    assert chunk_key_hex(FP, list(range(512)), 256, tenant=ACME) == TENANT_VECTOR_KEYS
    # the untenanted keys and the positional signature are unchanged
    assert chunk_key_hex(FP, list(range(512)), 256) == VECTOR_KEYS
    assert [k.hex() for k in chunk_keys(FP, list(range(512)), 256, max_chunks=1)] == VECTOR_KEYS[:1]


def test_keys_depend_on_the_secret_only() -> None:
    tokens = list(range(1024))
    other = Tenant("acme", b"another-secret-0123456789")
    same_secret = Tenant("acme", "acme-secret-0123456789abcdef")  # a str secret is its UTF-8 bytes
    assert chunk_keys(FP, tokens, 256, tenant=other) != chunk_keys(FP, tokens, 256, tenant=ACME)
    assert chunk_keys(FP, tokens, 256, tenant=same_secret) == chunk_keys(FP, tokens, 256, tenant=ACME)
    assert set(chunk_keys(FP, tokens, 256, tenant=ACME)).isdisjoint(chunk_keys(FP, tokens, 256))


def test_tenant_validates_and_hides_its_secret() -> None:
    assert "acme-secret" not in repr(ACME) and "acme-secret" not in str(ACME)
    with pytest.raises(InvalidArgumentError, match="at least 16 bytes"):
        Tenant("acme", b"short")
    for bad in ("", "../up", "a/b", "x" * 65):
        with pytest.raises(InvalidArgumentError, match="namespace"):
            Tenant(bad, b"0123456789abcdef0")
    with pytest.raises(InvalidArgumentError):
        chunk_keys(FP, [1, 2], 1, tenant="acme")  # type: ignore[arg-type]


def test_tenants_cannot_see_each_other_and_a_shared_secret_shares_the_pool(
    kvstore: Callable[..., KVCacheStore], tmp_path: Path
) -> None:
    disk = tmp_path / "kv"
    shared = tmp_path / "shared"
    tokens = list(range(4 * CHUNK))
    kv = make_kv(len(tokens), seed=3)
    a = kvstore(disk_dir=disk, shared=str(shared), tenant=ACME, write_through=True, host_bytes=0)
    assert a.store(tokens, kv) == len(tokens)
    a.flush()
    # on disk and in the store, only under tenants/acme/ and under names no one else can compute
    files = [p for p in disk.rglob("*.kv")]
    objects = [p for p in shared.rglob("*") if p.is_file() and ".sc" not in p.as_posix()]
    assert files and objects
    assert all(p.relative_to(disk).parts[:2] == ("tenants", "acme") for p in files)
    assert all(p.relative_to(shared).parts[:3] == ("kvcache", "tenants", "acme") for p in objects)
    public = {k.hex() for k in chunk_keys(a.fingerprint, tokens, CHUNK)}
    assert not public & {p.name.split(".")[0] for p in files + objects}

    # another tenant, and the untenanted store, over the same directories: nothing to find or probe
    for other in (Tenant("bob", b"bob-secret-0123456789abcdef"), Tenant("acme", b"guessed-secret-0123456789"), None):
        b = kvstore(disk_dir=disk, shared=str(shared), tenant=other, host_bytes=0)
        assert b.lookup(tokens) == 0
        out = zeros_kv(len(tokens))
        assert b.retrieve(tokens, out) == 0

    # the same Tenant in another store (another process, another node): one pool
    c = kvstore(disk_dir=tmp_path / "other-disk", shared=str(shared), tenant=Tenant("acme", b"acme-secret-0123456789abcdef"))
    assert c.lookup(tokens) == len(tokens)
    out = zeros_kv(len(tokens))
    assert c.retrieve(tokens, out) == len(tokens)
    assert same_prefix(out, kv, len(tokens))
