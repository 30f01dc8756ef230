"""No secret is ever printed: planted secrets, grepped in every output.

Passwords in URLs (``user:password@host``), S3 secret keys and session
tokens, presigned-URL signatures and encryption keys must not appear in
``repr``/``str`` of stores, in exception args, messages, notes and chained
causes, in tracebacks, in CLI stdout/stderr, in ``storecomp info --json`` or
in KV store stats.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from storecomp.errors import InvalidArgumentError, StorageIOError, StorecompError
from storecomp.redact import public_url, redact
from storecomp.store import RetryPolicy, open_store
from storecomp.testing.seaweedfs import SeaweedFS, free_port

PASSWORD = "PLANTED-pw-7f3a9c"
SECRET = "PLANTED-sk-9b1c2e"
TOKEN = "PLANTED-tok-55e1d0"
SIGNATURE = "PLANTEDSIG0123abcdef"
PLANTED = (PASSWORD, SECRET, TOKEN, SIGNATURE)
FAST = RetryPolicy(max_attempts=1, deadline_s=3.0, connect_timeout_s=0.5, request_timeout_s=5.0)


def _clean(text: str, where: str) -> None:
    for s in PLANTED:
        assert s not in text, f"planted secret {s!r} leaked through {where}:\n{text}"


def _exception_texts(e: BaseException) -> Iterator[str]:
    """Every way an exception shows itself: str, repr, args, attributes, notes, traceback, causes."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield str(x)
        yield repr(x)
        yield repr(x.args)
        yield repr({k: v for k, v in vars(x).items() if not k.startswith("__")})
        yield "\n".join(getattr(x, "__notes__", []))
        yield "".join(traceback.format_exception(x))
        stack += [x.__cause__, x.__context__]


def _check_raises(call: Callable[[], Any], what: str) -> BaseException | None:
    try:
        call()
    except Exception as e:  # noqa: BLE001 - every failure is grepped
        for text in _exception_texts(e):
            _clean(text, f"{what}: {type(e).__name__}")
        return e
    return None


def test_redact_masks_url_passwords_signatures_and_known_secrets() -> None:
    assert public_url(f"http://ann:{PASSWORD}@host:8333/b") == "http://ann:***@host:8333/b"
    assert public_url("http://ann@host/b") == "http://ann@host/b"
    assert public_url("s3://bucket/key") == "s3://bucket/key"
    presigned = f"https://h/b/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature={SIGNATURE}&X-Amz-Security-Token={TOKEN}"
    shown = public_url(presigned)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in shown and "X-Amz-Signature=***" in shown
    _clean(shown, "public_url")
    text = f"GET http://ann:{PASSWORD}@h/k failed; key {SECRET}; see {presigned}"
    _clean(redact(text, [SECRET]), "redact")
    assert redact("nothing secret here, a=1 @ b") == "nothing secret here, a=1 @ b"
    assert redact("a short secret is left alone", ["a"]) == "a short secret is left alone"


def test_errors_redact_their_own_args_and_notes() -> None:
    e = StorageIOError(5, f"ftp://ann:{PASSWORD}@host/x", None, "read")
    e.add_note(f"from http://u:{PASSWORD}@h?sig={SIGNATURE}")
    for text in _exception_texts(e):
        _clean(text, "StorageIOError")
    assert "ftp://ann:***@host/x" in str(e)
    _clean(repr(InvalidArgumentError(f"bad http://x:{PASSWORD}@y")), "InvalidArgumentError")


def test_s3_url_with_credentials_is_refused_without_echoing_them() -> None:
    e = _check_raises(lambda: open_store(f"s3://AKID:{PASSWORD}@bucket/prefix"), "open_store")
    assert isinstance(e, InvalidArgumentError) and "s3://bucket/prefix" in str(e)


CALLS: dict[str, Callable[[Any, np.ndarray], Any]] = {
    "put": lambda s, b: s.put("k", b"x"),
    "get": lambda s, b: s.get("k"),
    "get range": lambda s, b: s.get("k", 0, 4),
    "stat": lambda s, b: s.stat("k"),
    "list": lambda s, b: list(s.list("")),
    "delete": lambda s, b: s.delete("k"),
    "put_if_absent": lambda s, b: s.put_if_absent("k", b"x"),
    "compare_and_swap": lambda s, b: s.compare_and_swap("k", "etag", b"x"),
    "read_ranges": lambda s, b: s.read_ranges("k", [0], [16], b, [0]),
}


@pytest.fixture
def leaky_endpoint(running_seaweedfs: SeaweedFS) -> str:
    return running_seaweedfs.endpoint.replace("http://", f"http://ann:{PASSWORD}@")


def test_s3_store_never_shows_endpoint_password_secret_or_token(running_seaweedfs: SeaweedFS, leaky_endpoint: str) -> None:
    sw = running_seaweedfs
    stores = [
        # the server refuses these (an endpoint with user info, a wrong secret): every error path runs
        open_store(sw.url(), endpoint=leaky_endpoint, region=sw.region, access_key_id=sw.access_key,
                   secret_access_key=SECRET, session_token=TOKEN, retry=FAST),
        open_store(sw.url(), endpoint=leaky_endpoint, region=sw.region, access_key_id=sw.access_key,
                   secret_access_key=sw.secret_key, retry=FAST),
        # nobody listens here: the unreachable path
        open_store("s3://b/p", endpoint=f"http://ann:{PASSWORD}@127.0.0.1:{free_port()}", access_key_id="AKID",
                   secret_access_key=SECRET, retry=FAST),
    ]  # fmt: skip
    buf = np.zeros(16, np.uint8)
    failures = 0
    for store in stores:
        _clean(repr(store) + str(store) + str(store.url) + str(getattr(store, "endpoint", "")), "repr(store)")
        for name, call in CALLS.items():
            failures += _check_raises(functools.partial(call, store, buf), f"{store!r}.{name}") is not None
        store.close()
    assert failures >= 2 * len(CALLS)  # the refused and the unreachable stores fail every call


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STORECOMP_", "AWS_"))}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "storecomp", *args], capture_output=True, text=True, env=full, timeout=60)


def test_cli_never_prints_planted_secrets(running_seaweedfs: SeaweedFS, leaky_endpoint: str, tmp_path: Any) -> None:
    sw = running_seaweedfs
    local = tmp_path / "f.bin"
    local.write_bytes(b"hello")
    mounts = tmp_path / "mounts.toml"
    mounts.write_text(f'[mounts.m]\nurl = "ftp://ann:{PASSWORD}@127.0.0.1:{free_port()}/data"\n')
    env = {
        "AWS_ENDPOINT_URL": leaky_endpoint,
        "AWS_ACCESS_KEY_ID": sw.access_key,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_REGION": sw.region,
        "STORECOMP_MOUNTS": str(mounts),
    }
    url = sw.url("leak")
    cases = [
        ["stat", f"{url}/k"],
        ["ls", url],
        ["cat", f"{url}/k"],
        ["cp", str(local), f"{url}/k"],
        ["du", url],
        ["stat", f"s3://AKID:{PASSWORD}@{sw.bucket}/k"],
        ["stat", f"ftp://ann:{PASSWORD}@127.0.0.1:{free_port()}/k"],
        ["mounts"],
        ["mounts", "--json"],
        ["info", "--json", str(tmp_path)],
        ["info", str(tmp_path)],
    ]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one interpreter start each: run them side by side
        procs = list(pool.map(lambda args: _cli(args, env), cases))
    failed = 0
    for args, proc in zip(cases, procs, strict=True):
        _clean(proc.stdout + proc.stderr, f"storecomp {' '.join(args)}")
        assert "Traceback" not in proc.stderr, f"storecomp {' '.join(args)}:\n{proc.stderr}"
        failed += proc.returncode != 0
    assert failed >= 6  # the S3 commands are refused (endpoint with user info, wrong secret)
    doc = json.loads(procs[cases.index(["info", "--json", str(tmp_path)])].stdout)
    _clean(json.dumps(doc), "info --json")


def test_kv_store_stats_never_show_shared_store_secrets(leaky_endpoint: str, running_seaweedfs: SeaweedFS, tmp_path: Any) -> None:
    torch = pytest.importorskip("torch")
    from storecomp.kvcache import KVCacheStore, ModelFingerprint, SharedTierOptions

    sw = running_seaweedfs
    fp = ModelFingerprint("leak-test", "float32", layers=1, kv_heads=1, head_dim=8)
    options = dict(endpoint=leaky_endpoint, region=sw.region, access_key_id=sw.access_key, secret_access_key=SECRET, retry=FAST)
    kv = KVCacheStore(fp, chunk_tokens=4, host_bytes=1 << 20, shared=SharedTierOptions(sw.url(), options, retry_seconds=0.5))
    try:
        cache = [(torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))]
        kv.store(list(range(8)), cache)
        kv.flush(10)
        kv.lookup(list(range(100, 108)))  # not in host: asks the (refusing) shared store
        stats = kv.stats()
    finally:
        kv.close()
    assert stats["shared"]["last_error"] or stats["shared"]["write_failures"]
    _clean(json.dumps(stats, default=str) + repr(kv), "KVCacheStore.stats()")


def test_bench_s3_target_shows_only_the_masked_endpoint() -> None:
    from storecomp.bench._store_s3 import endpoint_target

    env = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN}
    target = endpoint_target(f"http://ann:{PASSWORD}@127.0.0.1:8333", env)
    _clean(repr(target) + target.endpoint + target.source, "bench S3 target")
    assert "127.0.0.1:8333" in target.endpoint


def test_storecomp_errors_are_redacted_at_the_root() -> None:
    class Custom(StorecompError):
        pass

    _clean(str(Custom(f"https://h/o?X-Amz-Signature={SIGNATURE}&X-Amz-Credential=AKID")), "StorecompError subclass")
