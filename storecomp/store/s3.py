"""S3Store: any S3-compatible object store (AWS S3, SeaweedFS, MinIO, Ceph RGW) via obstore.

* Reads: each range is cut into parts of ``part_bytes``; all parts of a call
  are fetched concurrently (at most ``max_concurrency`` requests in flight)
  on a background event loop and copied straight into the caller's
  destination (numpy, torch CPU, anything :func:`storecomp.io.as_buffer`
  takes; CUDA destinations get one host-to-device copy per part).
* ``put``: one atomic PUT (multipart past ``multipart_bytes``; an unfinished
  multipart upload is never visible).
* ``put_if_absent``: PUT with ``If-None-Match: *``; ``compare_and_swap``:
  PUT with ``If-Match: <etag>``, sent only by the writer that first creates
  a hidden claim object for that version (``cas_claims``, on by default:
  SeaweedFS 4.48's If-Match check races with concurrent PUTs, its
  If-None-Match does not). A 412 becomes False / ``ConflictError``.
  Versions are ETags.
* Errors are translated at one boundary (:meth:`S3Store._translate`):
  missing key → ``NotFoundError`` naming ``s3://bucket/prefix/key``; missing
  bucket → ``BucketNotFoundError``; refused or missing credentials →
  ``CredentialsError`` (the secret is never in a message); unreachable →
  ``StoreUnavailableError`` naming the endpoint.
* Retries: obstore's client retries 5xx, connection errors and timeouts
  within :class:`~storecomp.store.retry.RetryPolicy`; the loop in
  ``retry.py`` adds 429 and dropped bodies, within the same bounds.

Credentials come from the arguments, else the standard variables
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``.
With none, a ``CredentialsError`` is raised up front (``anonymous=True``
for public buckets), instead of a slow probe of instance metadata.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import errno
import hashlib
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from ..config import aws_environment
from ..errors import (
    BucketNotFoundError,
    ClosedError,
    ConflictError,
    CredentialsError,
    InvalidArgumentError,
    NotFoundError,
    StorageIOError,
    StorecompError,
    StoreUnavailableError,
    UnavailableError,
    VersionChangedError,
)
from ..io import BufferRef, as_buffer, land_bytes
from ..redact import acall_translated, call_translated, public_url, redact
from .base import VERSION_RETRIES, Capabilities, Listing, ObjectInfo, Store, dir_prefix
from .futures import PendingRanges
from .keys import RESERVED_PREFIX, payload_view, validate_key, validate_prefix
from .retry import DeadlineExceeded, RetryPolicy, acall_with_retry, call_with_retry, http_status, storage_full_errno
from .s3_resume import MIN_PART_BYTES, ResumableUpload, marker_body, marker_key, open_upload

#: An unfinished multipart upload: (key, upload id, initiated as Unix seconds by the server's clock).
Upload = tuple[str, str, float]

_MAX_KNOWN = 4096  # (ETag, size) of recently read objects that reads pin to


class _Loop:
    """A private asyncio loop on a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child (DataLoader workers): the parent's loop thread does not
                # exist here, and work queued on its loop would never run. Start afresh.
                self._loop, self._thread, self._pid = None, None, os.getpid()
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=_run_loop, args=(loop,), name="storecomp-s3", daemon=True)
                self._thread.start()
                self._loop = loop
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        """Stop the loop. Reads still in flight are cancelled first, so that
        their futures complete (with CancelledError) instead of never."""
        with self._lock:
            if self._pid != os.getpid():  # the parent's loop: not ours to stop (its thread is not here)
                self._loop, self._thread, self._pid = None, None, os.getpid()
            if self._loop is not None and not self._loop.is_closed():
                loop = self._loop
                loop.call_soon_threadsafe(_cancel_all_and_stop, loop)
                if self._thread is not None and self._thread is not threading.current_thread():
                    self._thread.join(10)
                self._loop = None
                self._thread = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()


def _cancel_all_and_stop(loop: asyncio.AbstractEventLoop) -> None:
    """On the loop's thread: cancel every task, let the cancellations run, then stop."""
    tasks = asyncio.all_tasks(loop)
    for t in tasks:
        t.cancel()
    if not tasks:
        loop.stop()
        return
    done = asyncio.gather(*tasks, return_exceptions=True)
    done.add_done_callback(lambda _: loop.stop())


class S3Store(Store):
    """Objects under ``s3://bucket/prefix`` of an S3-compatible store.

    Times in seconds, sizes in bytes. ``endpoint`` is the server URL
    (``http://`` allowed); ``retry`` bounds retries and timeouts. Raises
    CredentialsError when no credentials are given or found in the
    environment (unless ``anonymous``), InvalidArgumentError for a bad
    bucket name or option.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        anonymous: bool = False,
        retry: RetryPolicy | None = None,
        part_bytes: int = 8 << 20,
        max_concurrency: int = 32,
        multipart_bytes: int = 64 << 20,
        cas_claims: bool = True,
        claim_lease_s: float = 60.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        try:
            from obstore.store import S3Store as _ObS3Store
        except ImportError:
            raise UnavailableError(f"s3://{bucket}: the s3:// backend needs obstore: pip install obstore") from None

        aws = aws_environment(environ)
        if not bucket or "/" in bucket:
            raise InvalidArgumentError(f"bad bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        if part_bytes <= 0 or max_concurrency <= 0 or multipart_bytes < (5 << 20):
            raise InvalidArgumentError("part_bytes and max_concurrency must be positive, multipart_bytes >= 5 MiB")
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        raw_endpoint = endpoint or aws.endpoint
        #: The endpoint as shown (a ``user:password@`` part masked); the raw one goes only to the client.
        self.endpoint = public_url(raw_endpoint) if raw_endpoint else None
        self.region = region or aws.region or "us-east-1"
        self.retry = retry or RetryPolicy()
        self.part_bytes = part_bytes
        self.max_concurrency = max_concurrency
        self.multipart_bytes = multipart_bytes
        self.cas_claims = cas_claims
        self.claim_lease_s = claim_lease_s
        key_id = access_key_id if access_key_id is not None else aws.access_key_id
        secret = secret_access_key if secret_access_key is not None else aws.secret_access_key
        token = session_token if session_token is not None else aws.session_token
        endpoint_password = _password_of(raw_endpoint)
        self._secrets = tuple(s for s in (secret, token, endpoint_password) if s)
        self.access_key_id = key_id
        config: dict[str, Any] = {"region": self.region}
        if anonymous:
            config["skip_signature"] = True
        elif not key_id or not secret:
            missing = "AWS_ACCESS_KEY_ID" if not key_id else "AWS_SECRET_ACCESS_KEY"
            raise CredentialsError(
                f"{self.url}: no S3 credentials ({missing} missing): pass access_key_id= and "
                "secret_access_key=, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or anonymous=True for a public bucket"
            )
        else:
            config["access_key_id"] = key_id
            config["secret_access_key"] = secret
            if token:
                config["session_token"] = token
        if raw_endpoint:
            config["endpoint"] = raw_endpoint
        client: dict[str, Any] = {
            "allow_http": bool(self.endpoint and self.endpoint.startswith("http://")),
            "connect_timeout": f"{int(self.retry.per_connect_s() * 1000)}ms",
            "timeout": f"{int(self.retry.per_request_s() * 1000)}ms",  # no request outlives the deadline
            "pool_max_idle_per_host": str(max_concurrency),
        }

        def client_with(**extra: Any) -> Any:
            return call_translated(
                lambda: _ObS3Store(
                    bucket,
                    prefix=prefix or None,
                    config={**config, **extra},  # type: ignore[arg-type]
                    client_options=client,  # type: ignore[arg-type]
                    retry_config=self.retry.obstore_config(),  # type: ignore[arg-type]
                ),
                lambda e: InvalidArgumentError(f"{self.url}: bad S3 configuration: {self._redact(str(e))}"),
            )

        self._store = client_with()
        self._client_with = client_with
        self._unsigned_store: Any = None  # see put_stream_checked
        self._loop = _Loop()
        self._bucket_checked = False
        self._known: OrderedDict[str, tuple[str, int]] = OrderedDict()  # key -> (ETag, size) reads pin to
        self._known_lock = threading.Lock()
        self._blocking: concurrent.futures.ThreadPoolExecutor | None = None  # see _capped
        self._blocking_pid = os.getpid()
        self._config = config  # for the boto3 client of upload hygiene (_uploads_client)
        self._admin: Any = None
        self._copier: Any = None  # see _copy_client
        self._orphans: list[tuple[str, float, float]] = []  # (key, started, failed): multipart puts to abort
        self._orphans_lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional_writes=True, ranged_reads=True, native_reads=False, local=False)

    @property
    def where(self) -> str:
        """The endpoint as named in errors (``s3://bucket`` on AWS's default endpoint)."""
        return self.endpoint or f"s3://{self.bucket} ({self.region})"

    # ------------------------------------------------------------ errors

    def _redact(self, text: str) -> str:
        return redact(text, self._secrets)

    def _translate(self, e: BaseException, key: str | None, op: str) -> StorecompError:
        """The storecomp error for an obstore error raised by ``op`` on ``key``.

        Classified by the exception's type, its HTTP status and S3 error code
        (:func:`_status`), never by words of its message: a message holds the
        URL, whose port or key may contain any digits or words.
        """
        import obstore.exceptions as oe

        if isinstance(e, StorecompError):
            return e
        name = self.name_of(key) if key else self.url
        if isinstance(e, DeadlineExceeded):
            return StoreUnavailableError(self.where, f"{op} {name}: {e}")
        first_line = self._redact(str(e).split("\n", 1)[0])[:400]
        status, code, kind = _status(e)
        if code == "NoSuchBucket":
            return BucketNotFoundError(self.bucket, self.where)
        if isinstance(e, (oe.NotFoundError, FileNotFoundError)) or status == 404:
            if key is not None and not self._bucket_exists():
                return BucketNotFoundError(self.bucket, self.where)
            return NotFoundError(errno.ENOENT, name, None, op)
        full = storage_full_errno(status, code)  # before the 403 check: QuotaExceeded comes as a 403
        if full is not None:
            err = StorageIOError(full, name, None, op)
            err.add_note(first_line)
            return err
        # DeleteObjects answers 200 and reports a refusal per key: obstore gives a generic error
        # carrying the S3 error code "(code: AccessDenied)", the one structured field it has.
        if (
            isinstance(e, (oe.PermissionDeniedError, oe.UnauthenticatedError))
            or status in (401, 403)
            or code == "AccessDenied"
            or "(code: AccessDenied)" in str(e)
        ):
            return CredentialsError(
                f"{name}: {op} refused by {self.where} for access key id {self.access_key_id!r}: "
                "check the credentials and the bucket policy"
            )
        if (
            isinstance(e, (ConnectionError, TimeoutError))
            or kind in _UNREACHABLE_KINDS
            or (status is not None and (status >= 500 or status in (408, 429)))
        ):
            return StoreUnavailableError(self.where, f"{op} {name}: {first_line}", status)
        err = StorageIOError(errno.EIO, name, None, op)
        err.add_note(first_line)
        return err

    def _capped(self, fn: Any) -> Any:
        """``fn()`` on a helper thread, given up at ``retry.deadline_s`` (DeadlineExceeded).
        A request still stalled then ends by itself within its own timeout (at most the deadline)."""
        with self._orphans_lock:
            if self._blocking is None or self._blocking_pid != os.getpid():
                self._blocking = concurrent.futures.ThreadPoolExecutor(32, thread_name_prefix="storecomp-s3-call")
                self._blocking_pid = os.getpid()
            pool = self._blocking
        fut = pool.submit(fn)
        try:
            return fut.result(timeout=self.retry.deadline_s)
        except concurrent.futures.TimeoutError:
            raise DeadlineExceeded(f"no answer within the deadline of {self.retry.deadline_s:g} s") from None

    def _bucket_exists(self) -> bool:
        """Probe once whether the bucket exists (a HEAD 404 cannot tell a key from a bucket)."""
        if self._bucket_checked:
            return True
        import obstore

        try:
            obstore.list_with_delimiter(self._store, prefix="storecomp-probe/")
        except Exception as e:
            status, code, _ = _status(e)
            if code == "NoSuchBucket" or status == 404 or isinstance(e, FileNotFoundError):
                return False
            return True  # unknown: do not mask the original error
        self._bucket_checked = True
        return True

    def _call(self, fn: Any, key: str | None, op: str, *, capped: bool = True) -> Any:
        """``fn()`` with retries; obstore errors translated (a lost precondition becomes ``_Lost``).
        ``capped``: the call, retries included, fails at ``retry.deadline_s`` (for calls of
        one request; a multipart put or a listing of many pages bounds each request only)."""

        def attempt() -> Any:
            if capped:
                return self._capped(lambda: call_with_retry(fn, self.retry, _outer_transient))
            return call_with_retry(fn, self.retry, _outer_transient)

        return call_translated(
            attempt, lambda e: _Lost(self._redact(str(e))) if _is_precondition(e) else self._translate(e, key, op)
        )

    # ------------------------------------------------------------ reads

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> PendingRanges:
        return PendingRanges(self._loop.submit(self._read(key, offs, lens, douts, ref, version)), ref)

    def _remember(self, key: str, etag: str, size: int) -> None:
        with self._known_lock:
            self._known[key] = (etag, size)
            self._known.move_to_end(key)
            while len(self._known) > _MAX_KNOWN:
                self._known.popitem(last=False)

    def _forget(self, key: str) -> None:
        with self._known_lock:
            self._known.pop(key, None)

    async def _pin(self, key: str, version: str | None, fresh: bool) -> tuple[str, int]:
        """(ETag, size) of the version a read is pinned to: the remembered
        ETag of ``key`` (from a stat or an earlier read) unless ``fresh``,
        else a HEAD. ``VersionChangedError`` when ``version`` is not current."""
        import obstore

        with self._known_lock:
            known = None if fresh else self._known.get(key)
        if known is None or (version is not None and known[0] != version):

            def failed(e: Exception) -> StorecompError:
                self._forget(key)
                return self._translate(e, key, "stat")

            meta = await acall_translated(
                lambda: acall_with_retry(lambda: obstore.head_async(self._store, key), self.retry, _outer_transient), failed
            )
            known = (str(meta.get("e_tag") or ""), int(meta["size"]))
            self._remember(key, *known)
        if version is not None and known[0] != version:
            raise VersionChangedError(self.name_of(key), version, known[0])
        return known

    async def _read(
        self, key: str, offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, version: str | None
    ) -> np.ndarray:
        """Every part is a GET with ``If-Match`` on one ETag, clipped to that
        version's size: all bytes come from one version. A 412 (the object
        was replaced) restarts from a fresh HEAD, at most ``VERSION_RETRIES``
        times, unless the caller pinned ``version`` (then VersionChangedError)."""
        first: tuple[int, Any] | None = None
        for attempt in range(VERSION_RETRIES):
            try:
                if attempt == 0 and version is None and not self._knows(key):
                    probed = await self._probe(key, offs, lens)
                    if probed is None:  # nothing to read, or the first part starts past the end
                        etag, size = await self._pin(key, None, fresh=True)
                    else:
                        etag, size, first = probed
                else:
                    etag, size = await self._pin(key, version, fresh=attempt > 0)
                return await self._read_pinned(key, offs, lens, douts, ref, etag, size, first)
            except _Lost:
                self._forget(key)
                first = None
                if version is not None:
                    raise VersionChangedError(self.name_of(key), version) from None
            except BaseException:
                self._forget(key)  # gone or unreachable: the next read asks afresh
                raise
        raise VersionChangedError(self.name_of(key), etag, "replaced on every try") from None

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of ``key`` from ``offset``. The whole object (``length`` None)
        comes with its size in one response: one GET for objects up to
        ``part_bytes``, larger ones pinned to that response's ETag."""
        if length is not None:
            return super().get(key, offset, length)
        validate_key(key)
        fut = self._loop.submit(self._get_rest(key, offset))
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise ClosedError(f"{self.name_of(key)}: read cancelled: its store was closed") from None

    async def _get_rest(self, key: str, offset: int) -> bytes:
        for _ in range(VERSION_RETRIES):
            probed = await self._probe(key, np.array([offset], np.uint64), np.array([self.part_bytes], np.uint64))
            if probed is None:  # at or past the end
                _, size = await self._pin(key, None, fresh=True)
                if offset >= size:
                    return b""
                continue  # it grew meanwhile
            etag, size, (_, head) = probed
            if offset + len(head) >= size:
                return bytes(head)
            buf = np.empty(size - offset, np.uint8)
            buf[: len(head)] = np.frombuffer(head, np.uint8)
            rest = np.array([offset + len(head)], np.uint64), np.array([size - offset - len(head)], np.uint64)
            try:
                got = await self._read_pinned(key, *rest, np.array([len(head)], np.uint64), as_buffer(buf), etag, size)
            except _Lost:
                self._forget(key)
                continue
            return buf[: len(head) + int(got[0])].tobytes()
        raise VersionChangedError(self.name_of(key), "", "replaced on every try")

    def _knows(self, key: str) -> bool:
        with self._known_lock:
            return key in self._known

    async def _probe(self, key: str, offs: np.ndarray, lens: np.ndarray) -> tuple[str, int, tuple[int, Any]] | None:
        """The first part of the first non-empty range, fetched without a
        condition: its response names the version (ETag, size) the other parts
        are then pinned to, so a read of an object not seen before costs no
        HEAD. None when there is nothing to read or the part starts past the
        end (HTTP 416: the caller asks a HEAD)."""
        import obstore

        todo = np.flatnonzero(lens)
        if not todo.size:
            return None
        i = int(todo[0])
        off, n = int(offs[i]), min(int(lens[i]), self.part_bytes)

        async def fetch() -> Any:
            try:
                res = await obstore.get_async(self._store, key, options={"range": (off, off + n)})
            except Exception as e:
                if _status(e)[0] == 416:  # the range starts at or past the end: nothing to read
                    return None
                raise
            return res.meta, await res.bytes_async()

        got = await acall_translated(
            lambda: acall_with_retry(fetch, self.retry, _outer_transient), lambda e: self._translate(e, key, "read")
        )
        if got is None:
            return None
        meta, data = got
        etag, size = str(meta.get("e_tag") or ""), int(meta["size"])
        self._remember(key, etag, size)
        return etag, size, (i, data)

    async def _read_pinned(
        self,
        key: str,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        ref: BufferRef,
        etag: str,
        size: int,
        first: tuple[int, Any] | None = None,
    ) -> np.ndarray:
        """All parts with ``If-Match: etag``, clipped to ``size``; ``first`` is
        the first part of range ``first[0]``, already fetched (by _probe)."""
        import obstore

        if TYPE_CHECKING:
            from obstore import GetOptions

        got = np.zeros(offs.size, np.uint64)
        sem = asyncio.Semaphore(self.max_concurrency)
        store = self._store

        async def fetch(off: int, n: int) -> Any:
            options: GetOptions = {"range": (off, off + n)}
            if etag:
                options["if_match"] = etag
            res = await obstore.get_async(store, key, options=options)
            if etag and str(res.meta.get("e_tag") or "") != etag:
                raise _Lost(f"{self.name_of(key)}: answered with another version (server ignores If-Match)")
            return await res.bytes_async()

        async def part(i: int, off: int, n: int, dpos: int) -> None:
            async with sem:
                data = await acall_with_retry(lambda: fetch(off, n), self.retry, _outer_transient)
                got[i] += land_bytes(ref, dpos, data, n)

        tasks = []
        step = self.part_bytes
        for i in range(offs.size):
            off, d = int(offs[i]), int(douts[i])
            n = max(0, min(int(lens[i]), size - off))  # clipped to this version's end
            for p in range(0, n, step):
                if p == 0 and first is not None and first[0] == i:
                    got[i] += land_bytes(ref, d, first[1], min(step, n))
                    continue
                tasks.append(part(i, off + p, min(step, n - p), d + p))
        # Wait for every part, even after a failure: none may write into the
        # destination once the caller has seen the result.
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if any(isinstance(o, _Lost) or _is_precondition(o) for o in errors):
            raise _Lost(self.name_of(key))
        if errors:
            raise self._translate(errors[0], key, "read") from None
        return got

    # ------------------------------------------------------------ writes

    def _put(self, key: str, data: Any, mode: Any) -> dict[str, Any]:
        import obstore

        view = payload_view(data)
        multipart = mode is None and len(view) > self.multipart_bytes
        self._forget(key)  # reads pin to a fresh HEAD from now on
        if self._orphans:
            self._abort_orphans()
        started = time.time()
        try:
            return dict(
                self._call(
                    lambda: obstore.put(
                        self._store,
                        key,
                        view,
                        mode=mode,
                        use_multipart=multipart,
                        chunk_size=max(5 << 20, self.part_bytes),
                        max_concurrency=min(self.max_concurrency, 16),
                    ),
                    key,
                    "put",
                    capped=not multipart,  # a long upload is many requests, each bounded
                )
            )
        except BaseException as e:
            if multipart:
                self._orphaned(key, started, e)
            raise

    def _orphaned(self, key: str, started: float, e: BaseException) -> None:
        """Note a failed multipart put of ``key`` begun at ``started`` (Unix seconds). obstore
        aborts a failed multipart upload itself, but that DELETE fails too when the server is
        what failed: the upload's parts would hold storage forever."""
        with self._orphans_lock:
            self._orphans.append((key, started, time.time()))
            del self._orphans[:-1000]
        if not isinstance(e, StoreUnavailableError):  # unreachable: try at the next put or close
            self._abort_orphans()

    def put(self, key: str, data: Any) -> ObjectInfo:
        validate_key(key)
        res = self._put(key, data, None)
        return ObjectInfo(key, len(payload_view(data)), str(res["e_tag"]), None)

    def put_stream(self, key: str, parts: Iterable[Any]) -> ObjectInfo:
        """Publish the concatenation of ``parts`` (bytes-like, pulled one at a
        time) under ``key`` as one multipart upload: never whole in memory,
        invisible until complete. Not retried as a whole (the parts cannot be
        replayed); each request is retried by the client."""
        return self._put_stream(self._store, key, parts)

    def put_stream_checked(self, key: str, parts: Iterable[Any]) -> ObjectInfo:
        """:meth:`put_stream` for a caller that reads the object back from this
        store and checks every byte before anyone relies on it (the copy engine,
        :mod:`storecomp.store.transfer`). The requests are still signed, but the
        body goes with SigV4's ``UNSIGNED-PAYLOAD``: its SHA-256 is neither
        computed here nor checked by the server (a fifth to a quarter of a
        SeaweedFS server's CPU per byte written, measured). Over HTTPS this is
        what AWS's own SDKs send; over plain HTTP, where reads are unsigned
        anyway, the caller's crc32c read-back is the body's check."""
        with self._orphans_lock:
            if self._unsigned_store is None:
                self._unsigned_store = self._client_with(unsigned_payload=True)
        return self._put_stream(self._unsigned_store, key, parts)

    def _put_stream(self, client: Any, key: str, parts: Iterable[Any]) -> ObjectInfo:
        import obstore

        validate_key(key)
        size = 0

        def counted() -> Iterator[memoryview]:
            nonlocal size
            for part in parts:
                view = payload_view(part)
                size += len(view)
                yield view

        self._forget(key)  # reads pin to a fresh HEAD from now on
        if self._orphans:
            self._abort_orphans()
        started = time.time()

        def failed(e: Exception) -> StorecompError:
            err = e if isinstance(e, StorecompError) else self._translate(e, key, "put")  # ours: from a part's producer
            self._orphaned(key, started, err)
            return err

        res = call_translated(
            lambda: obstore.put(
                client,
                key,
                counted(),
                use_multipart=True,
                chunk_size=max(5 << 20, self.part_bytes),
                max_concurrency=min(self.max_concurrency, 16),
            ),
            failed,
        )
        return ObjectInfo(key, size, str(res["e_tag"]), None)

    def put_if_absent(self, key: str, data: Any) -> bool:
        validate_key(key)
        try:
            self._put(key, data, "create")
        except _Lost:
            return False
        return True

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        validate_key(key)
        what = "no object" if expected is None else f"version {expected}"
        lost = ConflictError(f"{self.url}/{key}: compare-and-swap expected {what}, but the object changed")
        if expected is None:
            try:
                res = self._put(key, data, "create")
            except _Lost:
                raise lost from None
            return ObjectInfo(key, len(payload_view(data)), str(res["e_tag"]), None)
        claim = self._claim_key(key, expected) if self.cas_claims else None
        if claim is not None and not self._take_claim(claim):
            raise lost
        try:
            res = self._put(key, data, {"e_tag": expected})
        except _Lost:
            raise lost from None
        finally:
            if claim is not None:
                self._release_claim(claim)
        return ObjectInfo(key, len(payload_view(data)), str(res["e_tag"]), None)

    # A claim is a hidden object ``<dir>/.sc-cas/<name>/<digest of expected>``
    # created with If-None-Match: of all writers holding the same expected
    # version, only the one that creates the claim sends its If-Match PUT.
    # Servers whose If-Match check races with concurrent writes (SeaweedFS
    # 4.48 lets two PUTs with the same If-Match both succeed) then still have
    # exactly one winner per version. The claim is deleted after the PUT; a
    # claim older than ``claim_lease_s`` (its writer died) is removed by the
    # next writer, which then reports a conflict so that its caller retries.

    def _claim_key(self, key: str, expected: str) -> str:
        head, _, name = key.rpartition("/")
        digest = hashlib.sha256(expected.encode()).hexdigest()[:32]
        return f"{head + '/' if head else ''}{RESERVED_PREFIX}cas/{name}/{digest}"

    def _take_claim(self, claim: str) -> bool:
        import obstore

        try:
            self._call(lambda: obstore.put(self._store, claim, b"claim", mode="create"), claim, "claim")
            return True
        except _Lost:
            pass
        try:
            meta = self._call(lambda: obstore.head(self._store, claim), claim, "claim")
        except NotFoundError:
            return False  # released meanwhile: the caller's expected version is likely stale anyway
        modified = meta.get("last_modified")
        if modified is not None and time.time() - modified.timestamp() > self.claim_lease_s:
            self._release_claim(claim)
        return False

    def _release_claim(self, claim: str) -> None:
        import obstore

        try:
            self._call(lambda: obstore.delete(self._store, claim), claim, "release claim")
        except StorecompError:
            pass  # a leftover claim expires after claim_lease_s

    # ------------------------------------------------------------ metadata

    def stat(self, key: str) -> ObjectInfo:
        import obstore

        validate_key(key)
        try:
            meta = self._call(lambda: obstore.head(self._store, key), key, "stat")
        except NotFoundError:
            self._forget(key)
            raise
        info = _info(key, meta)
        self._remember(key, info.version, info.size)
        return info

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        import obstore

        validate_prefix(prefix)
        # obstore lists whole path segments: list the directory, filter by string prefix.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""

        def collect() -> list[Any]:
            out: list[Any] = []
            for batch in obstore.list(self._store, prefix=base or None, chunk_size=1000):
                out.extend(batch)
            return out

        metas = self._call(collect, None, "list", capped=False)  # many pages: each request is bounded
        found = [_info(str(m["path"]), m) for m in metas if str(m["path"]).startswith(prefix) and not _hidden(str(m["path"]))]
        found.sort(key=lambda info: info.key)
        yield from found

    def list_dir(self, prefix: str = "") -> Listing:
        """One delimiter listing (``ListObjectsV2`` with ``delimiter=/``)."""
        import obstore

        prefix = dir_prefix(prefix)
        res = self._call(lambda: obstore.list_with_delimiter(self._store, prefix=prefix.rstrip("/") or None), None, "list")
        objects = [_info(str(m["path"]), m) for m in res["objects"] if not _hidden(str(m["path"]))]
        dirs = [str(p).rstrip("/") + "/" for p in res["common_prefixes"] if not _hidden(str(p))]
        objects.sort(key=lambda info: info.key)
        return Listing(objects, sorted(dirs))

    def delete(self, key: str) -> None:
        import obstore

        validate_key(key)
        self._forget(key)
        self._call(lambda: obstore.delete(self._store, key), key, "delete")

    def delete_if(self, key: str, version: str) -> bool:
        """DELETE with ``If-Match: <version>`` (the server compares; needs boto3, since
        obstore sends no conditional DELETE). A 412 or a missing key is False."""
        validate_key(key)
        client = self._uploads_client()
        try:
            full = self._full_key(key)
            self._admin_call(lambda: client.delete_object(Bucket=self.bucket, Key=full, IfMatch=version), key, "delete")
        except (NotFoundError, ConflictError):
            return False
        finally:
            self._forget(key)
        return True

    # ------------------------------------------------------------ unfinished multipart uploads
    #
    # obstore offers neither the listing nor the abort of multipart uploads, so
    # these few calls go through boto3 (lazily imported, one client per store).

    def _uploads_client(self) -> Any:
        """The boto3 client of upload hygiene and conditional deletes (one try per call:
        a sweep that fails is run again later)."""
        if self._admin is None:
            self._admin = self._boto3_client("listing and aborting multipart uploads", {"retries": {"max_attempts": 1}})
        return self._admin

    def _copy_client(self) -> Any:
        """The boto3 client of resumable uploads (:mod:`storecomp.store.s3_resume`): retried
        within this store's RetryPolicy; parts go with ``UNSIGNED-PAYLOAD`` (botocore honours
        ``payload_signing_enabled=False`` over plain HTTP too) and without botocore's own
        request checksum, for callers that read every byte back (the copy engine)."""
        with self._orphans_lock:
            if self._copier is None:
                self._copier = self._boto3_client(
                    "resumable uploads",
                    {
                        "retries": {"mode": "standard", "max_attempts": self.retry.max_attempts},
                        "s3": {"payload_signing_enabled": False},
                        "request_checksum_calculation": "when_required",
                        "response_checksum_validation": "when_required",
                        "max_pool_connections": self.max_concurrency,
                    },
                )
            return self._copier

    def _boto3_client(self, purpose: str, extra: dict[str, Any]) -> Any:
        from ..optional import require

        boto3 = require("boto3", f"{self.url}: {purpose}")
        from botocore import UNSIGNED
        from botocore.config import Config

        c = self._config
        options: dict[str, Any] = {
            "connect_timeout": self.retry.per_connect_s(),
            "read_timeout": self.retry.per_request_s(),
            **extra,
        }
        if c.get("skip_signature"):
            options["signature_version"] = UNSIGNED
        try:
            return boto3.session.Session().client(
                "s3",
                endpoint_url=c.get("endpoint"),
                region_name=c.get("region"),
                aws_access_key_id=c.get("access_key_id"),
                aws_secret_access_key=c.get("secret_access_key"),
                aws_session_token=c.get("session_token"),
                config=Config(**options),
            )
        except ValueError as e:  # botocore's "Invalid endpoint: <the URL, password and all>"
            err = InvalidArgumentError(
                f"{self._redact(self.where)}: boto3 refuses this endpoint (it serves the listing and abort of "
                f"multipart uploads, resumable uploads and conditional deletes): {self._redact(str(e))[:300]}"
            )
        raise err  # outside the handler: botocore's message is not chained

    def _full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uploads(self, prefix: str = "") -> builtins.list[Upload]:
        """Unfinished multipart uploads under ``prefix``: (key, upload id, initiated as
        Unix seconds by the server's clock), oldest first. Needs boto3."""
        validate_prefix(prefix)
        client = self._uploads_client()
        full = self._full_key(prefix) if prefix else (f"{self.prefix}/" if self.prefix else "")
        out: builtins.list[Upload] = []
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": full}
        while True:
            page = self._admin_call(lambda kw=dict(kwargs): client.list_multipart_uploads(**kw), prefix or None, "list uploads")
            for u in page.get("Uploads", []):
                key = str(u["Key"])[len(self.prefix) + 1 :] if self.prefix else str(u["Key"])
                out.append((key, str(u["UploadId"]), u["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                break
            kwargs.update(KeyMarker=page.get("NextKeyMarker", ""), UploadIdMarker=page.get("NextUploadIdMarker", ""))
        out.sort(key=lambda u: u[2])
        return out

    def sweep_uploads(self, older_than: float = 86400.0, *, dry_run: bool = False) -> builtins.list[Upload]:
        """Abort unfinished multipart uploads under this store's prefix that started more
        than ``older_than`` seconds ago (writers that died: ``kill -9``, a lost node), as an
        S3 lifecycle rule's AbortIncompleteMultipartUpload would. Younger uploads may still
        be in progress and are left alone. Returns the uploads aborted (or, with ``dry_run``,
        that would be). Ages use this machine's clock against the server's: keep the
        grace period well above any clock skew. Needs boto3."""
        if older_than < 0:
            raise InvalidArgumentError(f"older_than must be >= 0 seconds, got {older_than}")
        cutoff = time.time() - older_than
        # A resumable upload's age is that of its marker, rewritten while a run owns it (s3_resume's lease).
        old = [u for u in self.uploads() if u[2] < cutoff and self._upload_renewed(u[0], u[1]) < cutoff]
        if not dry_run:
            for key, upload_id, _ in old:
                self._abort_upload(key, upload_id)
        return old

    def _abort_upload(self, key: str, upload_id: str) -> None:
        client = self._uploads_client()
        try:
            self._admin_call(
                lambda: client.abort_multipart_upload(Bucket=self.bucket, Key=self._full_key(key), UploadId=upload_id),
                key,
                "abort upload",
            )
        except NotFoundError:
            pass  # finished or aborted meanwhile
        self._delete_upload_marker(client, key, upload_id)

    # ------------------------------------------------------------ resumable uploads (s3_resume)

    #: The smallest part a multipart upload takes (all but the last), bytes.
    min_part_bytes = MIN_PART_BYTES

    def resumable_upload(self, key: str, size: int, part_bytes: int, tag: str, *, adopt: bool = True) -> ResumableUpload:
        """A multipart upload of ``key`` (``size`` bytes in parts of ``part_bytes`` >=
        :attr:`min_part_bytes`, the last shorter) that a later run can resume: with
        ``adopt``, the newest unfinished upload an earlier call with the same ``tag``
        started (a run killed mid-copy), its parts of the right size kept
        (``.kept``); else a new one. Parts go unsigned: the caller must read the
        object back and check it (see :mod:`storecomp.store.s3_resume`). Needs boto3."""
        validate_key(key)
        if part_bytes < MIN_PART_BYTES or size <= 0:
            raise InvalidArgumentError(
                f"{self.name_of(key)}: parts of >= {MIN_PART_BYTES} bytes and a positive size, got {part_bytes}, {size}"
            )
        if self._orphans:
            self._abort_orphans()
        self._forget(key)
        return open_upload(self, key, size, part_bytes, tag, adopt)

    def _write_upload_marker(self, client: Any, key: str, upload_id: str, size: int, part_bytes: int, tag: str) -> None:
        full = self._full_key(key)
        body = marker_body(full, upload_id, size, part_bytes, tag)
        self._admin_call(
            lambda: client.put_object(Bucket=self.bucket, Key=marker_key(full, upload_id), Body=body), key, "write upload marker"
        )

    def _delete_upload_marker(self, client: Any, key: str, upload_id: str) -> None:
        full = self._full_key(key)
        try:
            self._admin_call(lambda: client.delete_object(Bucket=self.bucket, Key=marker_key(full, upload_id)), key, "delete")
        except NotFoundError:
            pass

    def _upload_renewed(self, key: str, upload_id: str) -> float:
        """When the marker of a resumable upload was last written (Unix seconds, server clock); 0 without one."""
        client = self._uploads_client()
        try:
            head = self._admin_call(
                lambda: client.head_object(Bucket=self.bucket, Key=marker_key(self._full_key(key), upload_id)), key, "stat"
            )
        except NotFoundError:
            return 0.0
        return float(head["LastModified"].timestamp())

    def _abort_orphans(self) -> None:
        """Abort the uploads of this store's failed multipart puts (best effort: what
        cannot be aborted now is tried again at the next put and at close)."""
        with self._orphans_lock:
            todo, self._orphans = self._orphans, []
        left = []
        for key, started, failed in todo:
            try:
                for k, upload_id, initiated in self.uploads(key):
                    # Only this put's upload: that key, started while the put ran (2 s of clock slack).
                    if k == key and started - 2.0 <= initiated <= failed + 2.0:
                        self._abort_upload(key, upload_id)
            except StorecompError:
                left.append((key, started, failed))
        if left:
            with self._orphans_lock:
                self._orphans[:0] = left

    def _admin_call(self, fn: Any, key: str | None, op: str) -> Any:
        """A boto3 call, its errors translated (no secret is in botocore's messages)."""
        return call_translated(fn, lambda e: self._translate_boto(e, key, op))

    def _translate_boto(self, e: BaseException, key: str | None, op: str) -> StorecompError:
        name = self.name_of(key) if key else self.url
        code = ""
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
        if code == "NoSuchBucket":
            return BucketNotFoundError(self.bucket, self.where)
        if code in ("NoSuchUpload", "NoSuchKey", "404", "NotFound"):
            return NotFoundError(errno.ENOENT, name, None, op)
        if code in ("PreconditionFailed", "412"):
            return ConflictError(f"{name}: {op}: the object is not at the version expected")
        full = storage_full_errno(http_status(e), code)
        if full is not None:
            err = StorageIOError(full, name, None, op)
            err.add_note(f"{code}: {self._redact(str(e))[:300]}")
            return err
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return CredentialsError(f"{name}: {op} refused by {self.where} for access key id {self.access_key_id!r}")
        if not code:  # no answer: connection refused, timed out, endpoint unreachable
            return StoreUnavailableError(self.where, f"{op} {name}: {type(e).__name__}: {self._redact(str(e))[:300]}")
        err = StorageIOError(errno.EIO, name, None, op)
        err.add_note(f"{code}: {self._redact(str(e))[:300]}")
        return err

    def close(self) -> None:
        if self._orphans:
            self._abort_orphans()
        self._loop.close()
        with self._orphans_lock:
            pool, self._blocking = self._blocking, None
        if pool is not None and self._blocking_pid == os.getpid():
            pool.shutdown(wait=False)  # a call still stalled ends within its own timeout

    def __repr__(self) -> str:
        return f"S3Store({self.url!r}, endpoint={self.endpoint!r})"

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("S3Store cannot be pickled (it holds connections); pass its URL and options instead")


class _Lost(StorecompError):
    """A conditional put lost (412 / already exists); mapped by the caller."""


def _password_of(url: str | None) -> str | None:
    """The password of ``url``'s ``user:password@`` part, if any."""
    if not url:
        return None
    try:
        return urlsplit(url).password or None
    except ValueError:
        return None


def _hidden(key: str) -> bool:
    return any(seg.startswith(RESERVED_PREFIX) for seg in key.split("/"))


def _is_precondition(e: BaseException | None) -> bool:
    import obstore.exceptions as oe

    return isinstance(e, (oe.AlreadyExistsError, oe.PreconditionError))


def _outer_transient(e: BaseException) -> bool:
    """What the loop retries beyond obstore's client: throttling (429, 503
    SlowDown) and a connection dropped while a body streams."""
    status, code, kind = _status(e)
    return status == 429 or code in ("SlowDown", "Throttling") or kind in ("Decode", "Interrupted")


#: obstore HttpError kinds that mean the server could not be reached or stopped answering.
_UNREACHABLE_KINDS = ("Connect", "Timeout", "Request", "Interrupted", "Decode")

# obstore's errors carry no attributes; their text ends with the Debug form of
# the Rust error, whose fields are structured: "inner: Status { status: 416,",
# "HttpError { kind: Connect,", and the S3 body's "<Code>NoSuchBucket</Code>".
# These patterns read those fields only (anchored to the field syntax), never
# free words, so a URL holding "416" or "timeout" changes nothing.
_STATUS_RE = re.compile(r"^\s*status: (\d{3}),$", re.MULTILINE)
_KIND_RE = re.compile(r"HttpError \{\s*kind: (\w+),")
_CODE_RE = re.compile(r"<Code>(\w+)</Code>")


def _status(e: BaseException) -> tuple[int | None, str, str]:
    """(HTTP status or None, S3 error code or "", obstore HttpError kind or "") of an obstore error."""
    text = str(e)
    debug = text.split("\nDebug source:\n", 1)
    if len(debug) != 2:
        return None, "", ""
    status = _STATUS_RE.search(debug[1])
    kind = _KIND_RE.search(debug[1])
    code = _CODE_RE.search(debug[0])
    return (int(status.group(1)) if status else None, code.group(1) if code else "", kind.group(1) if kind else "")


def _info(key: str, meta: Mapping[str, Any]) -> ObjectInfo:
    mtime = meta.get("last_modified")
    return ObjectInfo(key, int(meta["size"]), str(meta.get("e_tag") or ""), mtime.timestamp() if mtime else None)
