"""Bounded retries with exponential backoff and full jitter, for remote backends.

A :class:`RetryPolicy` bounds both the number of attempts and the total time
(``deadline_s`` from the first attempt); nothing retries forever. Backends
classify their own exceptions as transient (5xx, 429, timeouts, connection
resets) with a predicate; everything else is raised at once.

The S3 backend hands the same policy to obstore, whose client retries 5xx,
connection errors and timeouts itself (see :meth:`RetryPolicy.obstore_config`);
the loop here covers what the client does not (429 throttling, a connection
dropped while a body streams). The fsspec adapter uses the loop for all of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import random
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

from ..errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry. Times in seconds.

    * ``max_attempts``: attempts in all (1: no retry).
    * ``initial_backoff_s`` / ``max_backoff_s``: the sleep before retry n is
      uniform in ``[0, min(max_backoff_s, initial_backoff_s * 2**n)]``.
    * ``deadline_s``: the overall bound of one call (a stat, a small put, one
      ranged GET) with all its retries: it fails, ``StoreUnavailableError``,
      at most this long after it started, even against a server that accepts
      connections and never answers (SIGSTOP). No retry starts after it.
      A call made of many requests (a multipart put, a read cut into parts)
      bounds each request so, not the whole transfer.
    * ``connect_timeout_s`` / ``request_timeout_s``: per connection and per
      request (a request that stalls longer fails and may be retried); both
      are capped at ``deadline_s`` (:meth:`per_request_s`).
    """

    max_attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    deadline_s: float = 30.0
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigError(f"RetryPolicy: max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("initial_backoff_s", "max_backoff_s", "deadline_s", "connect_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"RetryPolicy: {name} must be a positive number of seconds, got {value!r}")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based): full jitter."""
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2 ** (attempt - 1)))
        return (rng or random).uniform(0, cap)

    def per_request_s(self) -> float:
        """Seconds one request may take: ``request_timeout_s``, at most ``deadline_s``."""
        return min(self.request_timeout_s, self.deadline_s)

    def per_connect_s(self) -> float:
        """Seconds one connection attempt may take: ``connect_timeout_s``, at most ``deadline_s``."""
        return min(self.connect_timeout_s, self.deadline_s)

    def obstore_config(self) -> dict[str, Any]:
        """The same bounds as obstore's ``retry_config`` (its client retries 5xx, resets, timeouts)."""
        return {
            "max_retries": self.max_attempts - 1,
            "retry_timeout": timedelta(seconds=self.deadline_s),
            "backoff": {
                "init_backoff": timedelta(seconds=self.initial_backoff_s),
                "max_backoff": timedelta(seconds=self.max_backoff_s),
                "base": 2,
            },
        }


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, is_transient: Callable[[BaseException], bool]) -> T:
    """``fn()``, retried on transient errors within ``policy``; the last error is raised."""
    start = time.monotonic()
    attempt = 1
    while True:
        try:
            return fn()
        except Exception as e:
            delay = _next_delay(e, policy, is_transient, attempt, start)
            if delay is None:
                raise
        time.sleep(delay)
        attempt += 1


class DeadlineExceeded(TimeoutError):
    """A call ran past its policy's ``deadline_s`` (the backend translates it to StoreUnavailableError)."""


async def acall_with_retry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, is_transient: Callable[[BaseException], bool]
) -> T:
    """The ``async`` twin of :func:`call_with_retry` (for concurrent ranged reads). Every
    attempt is cancelled when the call reaches ``policy.deadline_s``: DeadlineExceeded."""
    start = time.monotonic()
    attempt = 1
    while True:
        left = policy.deadline_s - (time.monotonic() - start)
        try:
            return await asyncio.wait_for(fn(), max(left, 0.001))
        except Exception as e:
            if isinstance(e, TimeoutError) and time.monotonic() - start >= policy.deadline_s:
                raise DeadlineExceeded(f"no answer within the deadline of {policy.deadline_s:g} s") from None
            delay = _next_delay(e, policy, is_transient, attempt, start)
            if delay is None:
                raise
        await asyncio.sleep(delay)
        attempt += 1


def _next_delay(
    e: BaseException, policy: RetryPolicy, is_transient: Callable[[BaseException], bool], attempt: int, start: float
) -> float | None:
    if attempt >= policy.max_attempts or not is_transient(e):
        return None
    delay = policy.backoff(attempt)
    if time.monotonic() - start + delay > policy.deadline_s:
        return None
    return delay


#: HTTP statuses worth another try: timeout, throttling, server errors.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRNOS = frozenset(
    {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE}
    | {errno.EHOSTUNREACH, errno.ENETUNREACH}
)
# Client libraries' connection and timeout errors that do not derive from the
# built-in ConnectionError/TimeoutError (aiohttp, botocore, requests), by class
# name so that none of them has to be imported.
_TRANSIENT_TYPES = frozenset(
    {
        "ClientConnectionError",
        "ClientPayloadError",
        "ServerTimeoutError",
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ResponseStreamingError",
        "ChunkedEncodingError",
    }
)


def http_status(e: BaseException) -> int | None:
    """The HTTP status an exception carries (``status``, ``status_code``, an
    integer ``code``, or botocore's ``response``), on it or on its causes; None
    when it has none. Never read from the message text."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        for attr in ("status", "status_code", "code"):
            v = getattr(cur, attr, None)
            if isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 599:
                return v
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            v = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(v, int):
                return v
        cur = cur.__cause__ or cur.__context__
    return None


#: S3 error codes that say the store will not take the bytes: the errno a store error carries for
#: them. QuotaExceeded: Ceph RGW and others (HTTP 403); XMinioStorageFull: MinIO (507);
#: EntityTooLarge: AWS and others, an object past the store's size limit (400).
_FULL_CODES = {"QuotaExceeded": errno.EDQUOT, "XMinioStorageFull": errno.ENOSPC, "EntityTooLarge": errno.EFBIG}
#: HTTP statuses that say the same: 507 Insufficient Storage; 413 Content Too Large (OpenStack
#: Swift answers a full container quota with it).
_FULL_STATUSES = {507: errno.ENOSPC, 413: errno.EFBIG}


def storage_full_errno(status: int | None, code: str = "") -> int | None:
    """ENOSPC, EDQUOT or EFBIG when an HTTP answer (``status``, S3 error ``code``) says the
    store cannot take the bytes (full, over quota, object too large); None otherwise. By
    status and code only, never by a message's words. (SeaweedFS answers a full disk with
    a bare 500 InternalError, which says nothing more than any other server fault.)"""
    if code in _FULL_CODES:
        return _FULL_CODES[code]
    return _FULL_STATUSES.get(status) if status is not None else None


def looks_transient(e: BaseException) -> bool:
    """Generic test by type and status: timeouts, dropped or refused
    connections, 408/429/5xx. A message's words are never looked at (it holds
    URLs, whose ports and keys may contain anything)."""
    if isinstance(e, (TimeoutError, ConnectionError, asyncio.TimeoutError)):
        return True
    if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
        return True
    if any(t.__name__ in _TRANSIENT_TYPES for t in type(e).__mro__):
        return True
    return http_status(e) in TRANSIENT_STATUSES
