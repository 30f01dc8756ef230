"""Tier options shared by the engine integrations (vLLM connector, SGLang backend): checked once, one meaning.

An engine passes a plain dict (vLLM's ``kv_connector_extra_config``, SGLang's
``--hicache-storage-backend-extra-config``); :func:`parse_options` checks
every key and names the offending one, and :func:`open_kv_store` opens the
:class:`~storecomp.kvcache.KVCacheStore` they describe. No engine import here.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, PermissionDeniedError, StorageIOError
from ..kvcache import KVCacheStore, ModelFingerprint, SharedTierOptions
from ..store import RetryPolicy

__all__ = ["TierOptions", "open_kv_store", "parse_options"]

GiB = 1 << 30


@dataclass(frozen=True)
class TierOptions:
    """Where chunks live and how they are named. Bytes in bytes, rates in units per second."""

    host_bytes: int
    disk_dir: str | None
    disk_bytes: int = 64 * GiB
    shared: str | None = None
    shared_options: dict[str, Any] = field(default_factory=dict)
    shared_prefix: str = "kvcache"
    shared_retry_seconds: float = 60.0
    chunk_tokens: int | None = None  # None: the engine's block / page size
    model_id: str | None = None  # None: the engine's model name or path
    revision: str = ""
    tag: str = ""
    break_even: bool = True
    prefill_tokens_per_s: float | None = None
    copy_threads: int = 1
    stats_file: str | None = None  # at shutdown, stats appended as one JSON line


REQUIRED = ("host_bytes", "disk_dir")
_TYPES: dict[str, tuple[type, ...]] = {
    "host_bytes": (int,),
    "disk_dir": (str, os.PathLike, type(None)),
    "disk_bytes": (int,),
    "shared": (str, type(None)),
    "shared_options": (dict,),
    "shared_prefix": (str,),
    "shared_retry_seconds": (int, float),
    "chunk_tokens": (int, type(None)),
    "model_id": (str, type(None)),
    "revision": (str,),
    "tag": (str,),
    "break_even": (bool,),
    "prefill_tokens_per_s": (int, float, type(None)),
    "copy_threads": (int,),
    "stats_file": (str, type(None)),
}


def parse_options(extra: Mapping[str, Any], who: str, *, what: str, ignore: Iterable[str] = ()) -> TierOptions:
    """Check ``extra`` (the engine's ``what`` dict, for messages): ConfigError naming an unknown,
    missing or mistyped key; keys in ``ignore`` belong to the engine. ``disk_dir`` is created if
    needed and must be writable (PermissionDeniedError, or StorageIOError for another OS error,
    naming it)."""
    mine = {k: v for k, v in extra.items() if k not in set(ignore)}
    unknown = sorted(set(mine) - set(_TYPES))
    if unknown:
        raise ConfigError(f"{who}: unknown {what} key {unknown[0]!r} (known: {', '.join(sorted(_TYPES))})")
    for key in REQUIRED:
        if key not in mine:
            raise ConfigError(
                f"{who}: {what} needs {key!r} "
                "(host_bytes: host RAM budget in bytes; disk_dir: a directory, or None for no disk tier)"
            )
    for key, value in mine.items():
        types = _TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(f"{who}: {what}[{key!r}] must be {names}, got {value!r}")
    for key in ("host_bytes", "disk_bytes"):
        if mine.get(key, 0) < 0:
            raise ConfigError(f"{who}: {what}[{key!r}] must be >= 0, got {mine[key]}")
    opts = TierOptions(**{k: (os.fspath(v) if k == "disk_dir" and v is not None else v) for k, v in mine.items()})
    if opts.chunk_tokens is not None and opts.chunk_tokens <= 0:
        raise ConfigError(f"{who}: {what}['chunk_tokens'] must be positive, got {opts.chunk_tokens}")
    if opts.disk_dir is not None:
        _check_writable(opts.disk_dir, who)
    return opts


def _check_writable(path: str, who: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".storecomp-probe-"):
            pass
    except OSError as e:
        err = e.errno or errno.EACCES
        cls = PermissionDeniedError if err in (errno.EACCES, errno.EPERM, errno.EROFS) else StorageIOError
        raise cls(err, path, op=f"{who}: disk_dir write check") from e


def open_kv_store(fp: ModelFingerprint, chunk_tokens: int, opts: TierOptions, *, host_bytes: int | None = None) -> KVCacheStore:
    """The store ``opts`` describe (``host_bytes`` overrides the host budget: 0 for a lookup-only store)."""
    shared_options = dict(opts.shared_options)
    if isinstance(shared_options.get("retry"), dict):
        shared_options["retry"] = RetryPolicy(**shared_options["retry"])
    return KVCacheStore(
        fp,
        chunk_tokens=chunk_tokens,
        host_bytes=opts.host_bytes if host_bytes is None else host_bytes,
        disk_dir=opts.disk_dir,
        disk_bytes=opts.disk_bytes,
        shared=None
        if opts.shared is None
        else SharedTierOptions(
            store=opts.shared, store_options=shared_options, prefix=opts.shared_prefix, retry_seconds=opts.shared_retry_seconds
        ),
        copy_threads=opts.copy_threads,
    )
