"""Redaction: the one place that takes secrets out of text before it is shown.

Every storecomp message, ``repr`` and report that may hold a URL goes
through here: a password in a URL's ``user:password@`` part, the signature
and token of a presigned URL, and any literal secret the caller knows (an
S3 secret key, a session token, an encryption key) become ``***``.
:class:`storecomp.errors.StorecompError` applies :func:`redact` to its
arguments and notes, so an error built from a raw URL is safe to print.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

MASK = "***"

T = TypeVar("T")

# scheme://user:password@host  (the password may hold anything but '@', '/', whitespace)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s/@:]*:)(?P<pw>[^\s/@]+)@")
# query parameters that carry a signature, a credential or a token (presigned S3, GCS, Azure SAS)
_QUERY = re.compile(
    r"(?i)(?P<head>[?&](?:x-amz-signature|x-amz-security-token|x-amz-credential|x-goog-signature|x-goog-credential"
    r"|signature|sig|token|access_token|password|awsaccesskeyid)=)(?P<value>[^&#\s'\"]+)"
)


def public_url(url: str) -> str:
    """``url`` with the password of its ``user:password@host`` part and presigned-URL signatures masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    if parts.password is not None:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.split(':', 1)[0]}:{MASK}@{host}")
    return _QUERY.sub(lambda m: m.group("head") + MASK, urlunsplit(parts))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with URL passwords, presigned-URL signatures and every string in ``secrets`` masked.

    Secrets shorter than 4 characters are masked only where they stand in a URL
    (replacing every ``a`` of a message would leave nothing readable)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, MASK)
    if "@" in text:
        text = _USERINFO.sub(lambda m: m.group("head") + MASK + "@", text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m.group("head") + MASK, text)
    return text


def redact_value(value: object) -> object:
    """``value`` redacted when it is a string; anything else unchanged (for exception args)."""
    return redact(value) if isinstance(value, str) else value


def call_translated(fn: Callable[[], T], translate: Callable[[Exception], BaseException]) -> T:
    """``fn()``; an ``Exception`` it raises is replaced by ``translate(e)``.

    The translated error is raised outside the ``except`` block, so the
    client's exception (whose message may quote an endpoint, a URL with a
    password or a signature) is neither its ``__cause__`` nor its
    ``__context__``: what the translation keeps of it is all that is shown."""
    try:
        return fn()
    except Exception as e:
        err = translate(e)
    raise err


async def acall_translated(fn: Callable[[], Awaitable[T]], translate: Callable[[Exception], BaseException]) -> T:
    """:func:`call_translated` for a coroutine function: ``await fn()``, its failure translated, unchained."""
    try:
        return await fn()
    except Exception as e:
        err = translate(e)
    raise err


__all__ = ["MASK", "acall_translated", "call_translated", "public_url", "redact", "redact_value"]
