"""Bad input and error translation for the backends: schemes, credentials, buckets, retries."""

from __future__ import annotations

import errno
import logging
import time
import traceback
from pathlib import Path

import numpy as np
import pytest

from storecomp.errors import (
    BucketNotFoundError,
    ConfigError,
    CredentialsError,
    InvalidArgumentError,
    StoreUnavailableError,
    UnavailableError,
)
from storecomp.store import LocalStore, backends, open_store, register_backend
from storecomp.store.retry import RetryPolicy, call_with_retry, looks_transient
from storecomp.testing.seaweedfs import SeaweedFS
from tests.conftest import closed_port_with_416

AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------- schemes


@pytest.mark.parametrize(("url", "package"), [("gs://bucket/data", "gcsfs"), ("az://container/data", "adlfs")])
def test_scheme_with_missing_package_names_it(url: str, package: str) -> None:
    with pytest.raises(UnavailableError) as exc:
        open_store(url)
    assert f"pip install {package}" in str(exc.value)


def test_unknown_scheme() -> None:
    with pytest.raises(InvalidArgumentError) as exc:
        open_store("nosuchproto://x/y")
    assert "nosuchproto" in str(exc.value) and "pip install" in str(exc.value)


def test_paths_and_file_urls_open_local_stores(tmp_path: Path) -> None:
    assert isinstance(open_store(tmp_path / "a"), LocalStore)
    s = open_store((tmp_path / "b").as_uri())
    assert isinstance(s, LocalStore) and s.root == tmp_path / "b"
    with pytest.raises(InvalidArgumentError):
        open_store("file://otherhost/dir")
    with pytest.raises(InvalidArgumentError):
        open_store("")
    with pytest.raises(InvalidArgumentError):
        open_store("s3:///no-bucket")


class UrlLocalStore(LocalStore):
    """A registered backend: ``sctestlocal://NAME`` is a directory under a temp root."""

    root_dir = Path("/nonexistent")

    def __init__(self, url: str) -> None:
        super().__init__(self.root_dir / url.split("://", 1)[1])


def test_register_backend(tmp_path: Path) -> None:
    UrlLocalStore.root_dir = tmp_path
    register_backend("sctestlocal", f"{__name__}:UrlLocalStore")
    assert "sctestlocal" in backends()
    store = open_store("sctestlocal://x")  # imported on first use, called with the URL
    assert isinstance(store, UrlLocalStore) and store.root == tmp_path / "x"
    register_backend("sctestmissing", "no_such_module_xyz:Store", "pip install no-such-module")
    with pytest.raises(UnavailableError) as exc:
        open_store("sctestmissing://x")
    assert "pip install no-such-module" in str(exc.value)
    with pytest.raises(InvalidArgumentError):
        register_backend("bad scheme", "x:y")


# ---------------------------------------------------------------- credentials


def test_missing_credentials_are_named(no_aws_env: None) -> None:
    with pytest.raises(CredentialsError) as exc:
        open_store("s3://bucket/prefix", endpoint="http://127.0.0.1:1")
    assert "AWS_ACCESS_KEY_ID" in str(exc.value) and "s3://bucket/prefix" in str(exc.value)
    with pytest.raises(CredentialsError) as exc:
        open_store("s3://bucket/prefix", endpoint="http://127.0.0.1:1", access_key_id="AKIDONLY")
    assert "AWS_SECRET_ACCESS_KEY" in str(exc.value)


def test_credentials_from_environment(running_seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in running_seaweedfs.env().items():
        monkeypatch.setenv(var, value)
    store = open_store(running_seaweedfs.url())
    store.put("k", b"v")
    assert store.get("k") == b"v"


def test_refused_credentials_never_leak_the_secret(
    running_seaweedfs: SeaweedFS, no_aws_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "WRONG-secret-value-8d1f"
    caplog.set_level(logging.DEBUG)
    store = open_store(
        running_seaweedfs.url(),
        endpoint=running_seaweedfs.endpoint,
        access_key_id=running_seaweedfs.access_key,
        secret_access_key=secret,
        retry=RetryPolicy(max_attempts=1),
    )
    for call in (lambda: store.stat("k"), lambda: store.put("k", b"x"), lambda: store.get("k", 0, 1)):
        with pytest.raises(CredentialsError) as exc:
            call()
        text = "".join(traceback.format_exception(exc.value)) + repr(exc.value) + str(exc.value.__dict__)
        assert secret not in text
        assert running_seaweedfs.access_key in str(exc.value)  # the key id is named, never the secret
    assert secret not in caplog.text
    assert secret not in repr(store) and secret not in store.url


# ---------------------------------------------------------------- buckets and endpoints


def test_missing_bucket_is_named(running_seaweedfs: SeaweedFS) -> None:
    store = open_store("s3://no-such-bucket-here/p", **running_seaweedfs.store_options())
    for call in (
        lambda: store.stat("k"),
        lambda: store.get("k", 0, 1),
        lambda: store.put("k", b"x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(BucketNotFoundError) as exc:
            call()
        assert exc.value.bucket == "no-such-bucket-here"
        assert "no-such-bucket-here" in str(exc.value) and isinstance(exc.value, FileNotFoundError)


def test_unreachable_endpoint_fails_fast_and_names_it(no_aws_env: None) -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.2, deadline_s=2.0, connect_timeout_s=0.5)
    store = open_store("s3://b/p", endpoint="http://127.0.0.1:9", access_key_id="a", secret_access_key="s" * 20, retry=policy)
    t0 = time.monotonic()
    with pytest.raises(StoreUnavailableError) as exc:
        store.stat("k")
    assert time.monotonic() - t0 < 10
    assert exc.value.endpoint == "http://127.0.0.1:9" and "127.0.0.1:9" in str(exc.value)


@pytest.mark.parametrize("key", ["k", "416", "a/416 Range Not Satisfiable"])
def test_unreachable_endpoint_with_416_in_the_url_is_never_zero_bytes(no_aws_env: None, key: str) -> None:
    """Issue 16, 0b: every read of an unreachable store raises StoreUnavailableError, whatever digits
    or words the endpoint and key hold: never 0 bytes, never ShortReadError."""
    port = closed_port_with_416()
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.02, deadline_s=2.0, connect_timeout_s=0.5)
    store = open_store(
        "s3://b416/p416", endpoint=f"http://127.0.0.1:{port}", access_key_id="a", secret_access_key="s" * 20, retry=policy
    )
    buf = np.zeros(10, np.uint8)
    reads = {
        "get range": lambda: store.get(key, 0, 10),
        "get": lambda: store.get(key),
        "read_ranges exact=False": lambda: store.read_ranges(key, [0], [10], buf, [0], exact=False),
        "read_ranges exact=True": lambda: store.read_ranges(key, [0], [10], buf, [0]),
        "stat": lambda: store.stat(key),
    }
    for what, read in reads.items():
        with pytest.raises(StoreUnavailableError) as exc:
            read()
        assert f"127.0.0.1:{port}" in str(exc.value), what
    store.close()


# ---------------------------------------------------------------- retry policy


def test_retry_policy_validates() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(deadline_s=-1)


def test_backoff_is_jittered_and_capped() -> None:
    p = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0)
    samples = [p.backoff(a) for a in range(1, 12) for _ in range(20)]
    assert all(0 <= s <= 1.0 for s in samples)
    assert len(set(samples)) > 100  # jitter


def test_call_with_retry_is_bounded_in_count_and_time() -> None:
    calls = []

    def flaky() -> int:
        calls.append(time.monotonic())
        raise ConnectionResetError("connection reset by peer")

    p = RetryPolicy(max_attempts=4, initial_backoff_s=0.01, max_backoff_s=0.02, deadline_s=5)
    with pytest.raises(ConnectionResetError):
        call_with_retry(flaky, p, looks_transient)
    assert len(calls) == 4
    calls.clear()
    p = RetryPolicy(max_attempts=1000, initial_backoff_s=0.05, max_backoff_s=0.05, deadline_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(ConnectionResetError):
        call_with_retry(flaky, p, looks_transient)
    assert time.monotonic() - t0 < 1.0 and len(calls) < 1000


def test_call_with_retry_recovers_and_skips_permanent_errors() -> None:
    attempts = []

    def twice_then_ok() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise TimeoutError("timed out")
        return "ok"

    p = RetryPolicy(max_attempts=5, initial_backoff_s=0.001, max_backoff_s=0.002)
    assert call_with_retry(twice_then_ok, p, looks_transient) == "ok" and len(attempts) == 3

    def permanent() -> None:
        attempts.append(1)
        raise ValueError("403 Forbidden")

    attempts.clear()
    with pytest.raises(ValueError):
        call_with_retry(permanent, p, looks_transient)
    assert len(attempts) == 1


class _HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"request to http://example.invalid:41699/x failed with status {status}")
        self.status = status


class _BotoError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__("An error occurred")
        self.response = {"ResponseMetadata": {"HTTPStatusCode": status}, "Error": {"Code": "X"}}


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (_HTTPError(503), True),
        (_HTTPError(429), True),
        (_BotoError(500), True),
        (ConnectionRefusedError("refused"), True),
        (OSError(errno.ECONNRESET, "reset"), True),
        (_HTTPError(404), False),
        (_HTTPError(412), False),
        (_BotoError(403), False),
        # words and numbers in a message (a URL's port, a key) never decide
        (RuntimeError("GET http://127.0.0.1:41699/b/k: 503 Service Unavailable, timed out, SlowDown"), False),
    ],
)
def test_transient_classification(error: BaseException, transient: bool) -> None:
    assert looks_transient(error) is transient


def test_s3_without_obstore_names_the_package(monkeypatch: pytest.MonkeyPatch, no_aws_env: None) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "obstore", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "obstore.store", None)
    with pytest.raises(UnavailableError) as exc:  # before: a bare ModuleNotFoundError
        open_store("s3://bucket/prefix", anonymous=True)
    assert "pip install obstore" in str(exc.value)


def test_fsspec_url_password_is_never_shown() -> None:
    from storecomp.errors import NotFoundError
    from storecomp.store.fsspec_store import FsspecStore, public_url

    assert public_url("ftp://ann:s3cret@host:21/dir") == "ftp://ann:***@host:21/dir"
    assert public_url("ftp://ann@host/dir") == "ftp://ann@host/dir"
    assert public_url("gs://bucket/dir") == "gs://bucket/dir"
    store = FsspecStore("memory://ann:s3cret@host/dir")
    with pytest.raises(NotFoundError) as exc:
        store.stat("missing")
    for shown in (store.url, repr(store), str(exc.value)):
        assert "s3cret" not in shown  # before: the URL was kept and printed as given
    with pytest.raises(InvalidArgumentError) as bad:
        open_store("nosuchproto://ann:s3cret@x/y")
    assert "s3cret" not in str(bad.value)
    store.close()
