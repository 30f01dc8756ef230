"""Who may read what: two SeaweedFS identities restricted to their own buckets and prefixes.

A server of its own (``-s3.config`` with an admin and two tenants): tenant A
holds bucket ``tenant-a`` and the KV prefix ``pool/kvcache/tenants/a/``,
tenant B the same for ``b``. With A's credentials, no storecomp call reads,
lists, overwrites or deletes anything of B's (objects, encrypted objects or
KV chunks), even when A knows B's tenant secret and encryption key; B's data
is intact afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp import crypto
from storecomp.errors import CredentialsError
from storecomp.store import RetryPolicy, open_store
from storecomp.testing.seaweedfs import SeaweedFS

torch = pytest.importorskip("torch")
from storecomp.kvcache import KVCacheStore, ModelFingerprint, SharedTierOptions, Tenant  # noqa: E402

SECRETS = {"a": "tenant-a-secret-key-0123456789", "b": "tenant-b-secret-key-0123456789"}
FAST = RetryPolicy(max_attempts=1, deadline_s=5.0, connect_timeout_s=1.0)
FP = ModelFingerprint("isolation", "float32", layers=2, kv_heads=1, head_dim=8)
CHUNK = 4
TOKENS = list(range(3 * CHUNK))
TENANTS = {t: Tenant(t, f"kv-secret-of-{t}-0123456789") for t in "ab"}
KEYS = {t: crypto.StaticKeys([(f"key-{t}", bytes([i + 1]) * 32)]) for i, t in enumerate("ab")}


def _identity(t: str) -> dict[str, Any]:
    scopes = [f"tenant-{t}", f"pool/kvcache/tenants/{t}/*"]
    return {
        "name": f"tenant-{t}",
        "credentials": [{"accessKey": f"AK-{t}", "secretKey": SECRETS[t]}],
        "actions": [f"{a}:{s}" for a in ("Read", "Write", "List") for s in scopes],
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS.start(tmp_path_factory.mktemp("isolation"), bucket="pool", identities=[_identity("a"), _identity("b")]) as sw:
        for t in "ab":
            sw.make_bucket(f"tenant-{t}")
        yield sw


def _creds(sw: SeaweedFS, t: str) -> dict[str, Any]:
    return {
        "endpoint": sw.endpoint,
        "region": sw.region,
        "access_key_id": f"AK-{t}",
        "secret_access_key": SECRETS[t],
        "retry": FAST,
    }


def _kv(sw: SeaweedFS, creds: str, tenant: str, **kw: Any) -> KVCacheStore:
    return KVCacheStore(
        FP,
        chunk_tokens=CHUNK,
        host_bytes=0,
        shared=SharedTierOptions("s3://pool", _creds(sw, creds), retry_seconds=2.0),
        tenant=TENANTS[tenant],
        encryption=KEYS[tenant],
        **kw,
    )


def _cache(seed: int) -> list[tuple[Any, Any]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 1, len(TOKENS), 8, generator=g), torch.randn(1, 1, len(TOKENS), 8, generator=g)) for _ in range(2)]


def _zeros() -> list[tuple[Any, Any]]:
    return [(torch.zeros(1, 1, len(TOKENS), 8), torch.zeros(1, 1, len(TOKENS), 8)) for _ in range(2)]


def test_tenant_a_cannot_read_or_touch_tenant_b(server: SeaweedFS, tmp_path: Path) -> None:
    sw = server
    # each tenant writes its own objects (plain and encrypted) and KV chunks
    for t in "ab":
        with open_store(f"s3://tenant-{t}/data", **_creds(sw, t)) as s:
            s.put("plain.bin", f"plain of {t}".encode())
        with open_store(f"s3://tenant-{t}/data", encryption=KEYS[t], **_creds(sw, t)) as s:
            s.put("sealed.bin", f"sealed of {t}".encode())
        with _kv(sw, t, t, write_through=True) as kv:
            kv.store(TOKENS, _cache(seed=ord(t)))
            assert kv.stats()["shared"]["write_failures"] == 0

    # A's own data works with A's credentials
    with open_store("s3://tenant-a/data", **_creds(sw, "a")) as s:
        assert s.get("plain.bin") == b"plain of a"
    with _kv(sw, "a", "a") as kv:
        assert kv.retrieve(TOKENS, _zeros()) == len(TOKENS)

    # With A's credentials, every call on B's bucket and B's KV prefix is refused
    refused = 0
    buf = np.zeros(8, np.uint8)
    targets = [
        open_store("s3://tenant-b/data", **_creds(sw, "a")),
        open_store("s3://tenant-b/data", encryption=KEYS["b"], **_creds(sw, "a")),  # even holding B's key
        open_store("s3://pool/kvcache/tenants/b", **_creds(sw, "a")),
    ]
    calls = {
        "get": lambda s: s.get("plain.bin"),
        "get sealed": lambda s: s.get("sealed.bin"),
        "read_ranges": lambda s: s.read_ranges("plain.bin", [0], [4], buf, [0]),
        "stat": lambda s: s.stat("plain.bin"),
        "exists": lambda s: s.exists("plain.bin"),
        "list": lambda s: list(s.list("")),
        "put": lambda s: s.put("plain.bin", b"overwritten by a"),
        "put_if_absent": lambda s: s.put_if_absent("new.bin", b"planted by a"),
        "compare_and_swap": lambda s: s.compare_and_swap("plain.bin", None, b"x"),
        "delete": lambda s: s.delete("plain.bin"),
    }
    for store in targets:
        for call in calls.values():
            with pytest.raises(CredentialsError):
                call(store)
            refused += 1
        store.close()
    assert refused == len(targets) * len(calls)

    # A's KV store pointed at B's pool (with B's tenant secret and key, the worst case) finds nothing
    with _kv(sw, "a", "b") as kv:
        assert kv.lookup(TOKENS) == 0
        assert kv.retrieve(TOKENS, _zeros()) == 0
        assert kv.stats()["shared"]["unavailable"] >= 1
        kv.store(TOKENS, _cache(seed=99))  # writes into B's prefix are refused too
        kv.flush(10)
        assert kv.stats()["shared"]["bytes_written"] == 0

    # the CLI with A's environment: refused, exit 1, no traceback
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORECOMP_"))}
    env.update(AWS_ENDPOINT_URL=sw.endpoint, AWS_REGION=sw.region, AWS_ACCESS_KEY_ID="AK-a", AWS_SECRET_ACCESS_KEY=SECRETS["a"])
    for args in (["cat", "s3://tenant-b/data/plain.bin"], ["ls", "-r", "s3://pool/kvcache/tenants/b"]):
        proc = subprocess.run([sys.executable, "-m", "storecomp", *args], capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 1 and "refused" in proc.stderr and "Traceback" not in proc.stderr
        assert "plain of b" not in proc.stdout and SECRETS["a"] not in proc.stderr

    # B's data is intact
    with open_store("s3://tenant-b/data", **_creds(sw, "b")) as s:
        assert s.get("plain.bin") == b"plain of b"
        assert not s.exists("new.bin")
    with open_store("s3://tenant-b/data", encryption=KEYS["b"], **_creds(sw, "b")) as s:
        assert s.get("sealed.bin") == b"sealed of b"
    with _kv(sw, "b", "b") as kv:
        out = _zeros()
        assert kv.retrieve(TOKENS, out) == len(TOKENS)
        assert all(torch.equal(o[0], c[0]) for o, c in zip(out, _cache(seed=ord("b")), strict=True))
