"""Configuration, read in one place.

Precedence: explicit arguments > ``STORECOMP_*`` environment variables >
the TOML file named by ``STORECOMP_CONFIG`` > defaults. Nothing here is
global: each call builds a fresh, immutable options object.

``[io]`` table keys and their variables:

=================  ==========================  =====================================
key                variable                    meaning
=================  ==========================  =====================================
engine             STORECOMP_ENGINE            auto | io_uring | threads
queue_depth        STORECOMP_QUEUE_DEPTH       io_uring requests in flight
threads            STORECOMP_THREADS           thread-pool workers
split_bytes        STORECOMP_SPLIT_BYTES       large requests split into pieces of this size
align              STORECOMP_ALIGN             O_DIRECT alignment in bytes
direct             STORECOMP_DIRECT            auto | on | off  (reads; see io.engine; data sets: io.tier)
io_path            STORECOMP_IO_PATH           auto | gds | bounce | posix (CUDA destinations)
staging_bytes      STORECOMP_STAGING_BYTES     bounce staging pool size in bytes
staging_slot_bytes STORECOMP_STAGING_SLOT      one staging slot in bytes
max_open_files     STORECOMP_MAX_OPEN_FILES    descriptors cached by path
mapped             STORECOMP_MAPPED            auto | off  (page-cache tier reads of resident
                                               data sets and cache hits copy out of a kept
                                               mapping; off: read system calls; see io.tier)
=================  ==========================  =====================================

``storecomp bench`` reads three more (the command-line options win):
``STORECOMP_BENCH_SIZE`` (data size, e.g. ``32M``), ``STORECOMP_BENCH_DURATION``
(seconds per measurement) and ``STORECOMP_BENCH_DIR`` (where the temporary
data goes). CI runs the README's ``storecomp bench`` verbatim with a small size
through them.

Encryption at rest (storecomp.crypto) names its keys explicitly
(``encryption="env"`` / ``"file"`` / ``"file:PATH"``); the variables those
settings read are read here, by :func:`encryption_keys_text` and
:func:`encryption_key_file`:

* ``STORECOMP_ENCRYPTION_KEYS``: ``[id:]key`` entries (32-byte keys in base64
  or hex), comma separated, the first one current;
* ``STORECOMP_ENCRYPTION_KEY_FILE``: the path of a file of such lines;
* ``STORECOMP_AEAD``: who runs AES-GCM on sealed segments: ``auto`` (OpenSSL's EVP
  on the native engine when libcrypto.so.3 loads, else the ``cryptography`` package),
  ``native`` (that or an error) or ``cryptography``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

_CHOICES = {
    "engine": ("auto", "io_uring", "threads"),
    "direct": ("auto", "on", "off"),
    "io_path": ("auto", "gds", "bounce", "posix"),
    "mapped": ("auto", "off"),
}
_ENV = {
    "engine": "STORECOMP_ENGINE",
    "queue_depth": "STORECOMP_QUEUE_DEPTH",
    "threads": "STORECOMP_THREADS",
    "split_bytes": "STORECOMP_SPLIT_BYTES",
    "align": "STORECOMP_ALIGN",
    "direct": "STORECOMP_DIRECT",
    "io_path": "STORECOMP_IO_PATH",
    "staging_bytes": "STORECOMP_STAGING_BYTES",
    "staging_slot_bytes": "STORECOMP_STAGING_SLOT",
    "max_open_files": "STORECOMP_MAX_OPEN_FILES",
    "mapped": "STORECOMP_MAPPED",
}

# Encryption at rest (storecomp.crypto) names its keys explicitly (encryption="env" / "file" /
# "file:PATH"); the variables those settings read are read here:
# STORECOMP_ENCRYPTION_KEYS: "[id:]key" entries (32-byte keys in base64 or hex), comma separated,
#   the first one current;
# STORECOMP_ENCRYPTION_KEY_FILE: the path of a file of such lines.
ENV_ENCRYPTION_KEYS = "STORECOMP_ENCRYPTION_KEYS"
ENV_ENCRYPTION_KEY_FILE = "STORECOMP_ENCRYPTION_KEY_FILE"


def encryption_keys_text(environ: Mapping[str, str] | None = None, var: str = ENV_ENCRYPTION_KEYS) -> str:
    """The key list in ``var`` (default ``STORECOMP_ENCRYPTION_KEYS``). Raises ConfigError naming it when unset."""
    text = (os.environ if environ is None else environ).get(var)
    if not text:
        raise ConfigError(f"encryption is on but {var} is not set (expected '[id:]key' entries, 32-byte keys in base64 or hex)")
    return text


def encryption_key_file(environ: Mapping[str, str] | None = None) -> str:
    """The key file named by ``STORECOMP_ENCRYPTION_KEY_FILE``. Raises ConfigError naming it when unset."""
    path = (os.environ if environ is None else environ).get(ENV_ENCRYPTION_KEY_FILE)
    if not path:
        raise ConfigError(f"encryption='file' but {ENV_ENCRYPTION_KEY_FILE} is not set (the path of a key file)")
    return path


ENV_AEAD = "STORECOMP_AEAD"
AEAD_BACKENDS = ("auto", "native", "cryptography")


def aead_backend(environ: Mapping[str, str] | None = None) -> str:
    """``STORECOMP_AEAD`` (default ``auto``). Raises ConfigError naming it when not one of AEAD_BACKENDS."""
    value = (os.environ if environ is None else environ).get(ENV_AEAD, "auto").strip().lower() or "auto"
    if value not in AEAD_BACKENDS:
        raise ConfigError(f"{ENV_AEAD}={value!r}: expected one of {', '.join(AEAD_BACKENDS)}")
    return value


# The native engine's limits (csrc/engine.cpp Engine::Engine).
_MAX = {"queue_depth": 4096, "threads": 1024, "split_bytes": 1 << 30, "align": 1 << 20}


@dataclass(frozen=True)
class IOOptions:
    """Settings of an I/O engine. Sizes in bytes."""

    engine: str = "auto"
    queue_depth: int = 64
    threads: int = max(4, 2 * (os.cpu_count() or 2))
    split_bytes: int = 1 << 20
    align: int = 4096
    direct: str = "auto"
    io_path: str = "auto"
    staging_bytes: int = 64 << 20
    staging_slot_bytes: int = 4 << 20
    max_open_files: int = 256
    mapped: str = "auto"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            _check(field.name, getattr(self, field.name), "IOOptions")
        if self.split_bytes % self.align:
            raise ConfigError(f"IOOptions: split_bytes={self.split_bytes} is not a multiple of align={self.align}")
        if self.staging_slot_bytes % self.align or self.staging_slot_bytes > self.staging_bytes:
            raise ConfigError(
                f"IOOptions: staging_slot_bytes={self.staging_slot_bytes} must be a multiple of "
                f"align={self.align} and at most staging_bytes={self.staging_bytes}"
            )

    def replace(self, **changes: Any) -> IOOptions:
        """A copy with ``changes`` applied (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> IOOptions:
        """Options from the config file, then the environment, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        cfg = env.get("STORECOMP_CONFIG")
        if cfg:
            table = _read_toml(Path(cfg)).get("io", {})
            if not isinstance(table, dict):
                raise ConfigError(f"{cfg}: [io] must be a table, not {type(table).__name__}")
            values.update(table)
            unknown = set(values) - set(_ENV)
            if unknown:
                raise ConfigError(f"{cfg}: [io]: unknown key {sorted(unknown)[0]!r}; known: {', '.join(_ENV)}")
            for key, value in values.items():
                _check(key, value, f"{cfg}: [io].{key}")
        for key, var in _ENV.items():
            if var in env:
                values[key] = _parse_env(key, var, env[var])
                _check(key, values[key], f"{var}={env[var]!r}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5g', '4096' -> bytes (binary units); ValueError unless a positive size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 4096, 512M, 4G)")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n


@dataclass(frozen=True)
class BenchDefaults:
    """``storecomp bench`` settings from the environment (None: not set). Bytes, seconds."""

    size_bytes: int | None = None
    duration_s: float | None = None
    directory: str | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> BenchDefaults:
        """STORECOMP_BENCH_SIZE, STORECOMP_BENCH_DURATION, STORECOMP_BENCH_DIR; ConfigError naming a bad one."""
        env = os.environ if environ is None else environ
        size = duration = None
        if env.get("STORECOMP_BENCH_SIZE"):
            try:
                size = parse_size(env["STORECOMP_BENCH_SIZE"])
            except ValueError as e:
                raise ConfigError(f"STORECOMP_BENCH_SIZE: {e}") from None
        if env.get("STORECOMP_BENCH_DURATION"):
            raw = env["STORECOMP_BENCH_DURATION"]
            try:
                duration = float(raw)
            except ValueError:
                duration = -1.0
            if not duration > 0:
                raise ConfigError(f"STORECOMP_BENCH_DURATION={raw!r}: expected a positive number of seconds")
        return cls(size, duration, env.get("STORECOMP_BENCH_DIR") or None)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (named by STORECOMP_CONFIG)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files are UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file (named by STORECOMP_CONFIG): {e.strerror}") from None


def _parse_env(key: str, var: str, raw: str) -> Any:
    if key in _CHOICES:
        return raw.strip().lower()
    try:
        return int(raw.strip(), 0)
    except ValueError:
        raise ConfigError(f"{var}={raw!r}: expected an integer") from None


def _check(key: str, value: Any, where: str) -> None:
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ConfigError(f"{where}: {key}={value!r}: expected one of {', '.join(_CHOICES[key])}")
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: {key}={value!r}: expected a positive integer")
    if key in _MAX and value > _MAX[key]:
        raise ConfigError(f"{where}: {key}={value}: at most {_MAX[key]}")
    if key == "align" and (value < 512 or value & (value - 1)):
        raise ConfigError(f"{where}: align={value}: expected a power of two of at least 512")
    if key == "split_bytes" and value % 4096:
        raise ConfigError(f"{where}: split_bytes={value}: expected a multiple of 4096")


# ---------------------------------------------------------------- mount tables

_ENV_MOUNT = "STORECOMP_MOUNT_"
#: Option names refused in mount tables (credentials belong in the environment).
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")
_MOUNT_KEYS = (
    "url",
    "options",
    "replicas",
    "primary",
    "read_only",
    "cache_dir",
    "cache_max_bytes",
    "cache_block_bytes",
    "encryption",
    "placement",
)
#: ``[mounts.NAME.placement]`` keys (storecomp.store.mounts.PlacementPolicy; rule in docs/placement.md).
_PLACEMENT_KEYS = ("near", "min_copies", "max_rate", "auto", "reads")


@dataclass(frozen=True)
class MountEntry:
    """One mount as configured, checked: ``values`` are the keyword arguments of
    :class:`storecomp.store.mounts.Mount` (``replicas`` as dicts of Replica's,
    ``placement`` as a dict of PlacementPolicy's or None). ``source`` names the
    file or variable; :meth:`error` builds a one-line ConfigError naming it,
    the line and the key."""

    name: str
    values: Mapping[str, Any]
    source: str
    text: str = ""  # the TOML text ("" for an environment variable)

    def error(self, key: str, msg: str) -> ConfigError:
        """A ConfigError for ``key`` of this mount (``placement.near`` names a key of the placement table)."""
        if not self.text:
            return ConfigError(f"{self.source}: {msg}")
        table, _, leaf = f"mounts.{self.name}.{key}".rpartition(".")
        return ConfigError(f"{self.source}:{_line_of(self.text, table, leaf)}: [{table}] {leaf}: {msg}")


def mount_entries(environ: Mapping[str, str] | None = None) -> list[MountEntry]:
    """The configured mounts, lowest precedence first (a later entry of the same
    name replaces an earlier one): the ``[mounts]`` table of ``STORECOMP_CONFIG``,
    then of ``STORECOMP_MOUNTS``, then ``STORECOMP_MOUNT_<NAME>=url[,url...]``.
    Raises ConfigError naming the file, line and key of a malformed entry."""
    env = os.environ if environ is None else environ
    out: list[MountEntry] = []
    for var in ("STORECOMP_CONFIG", "STORECOMP_MOUNTS"):
        if env.get(var):
            out += _mounts_from_file(Path(env[var]), var)
    for var, value in sorted(env.items()):
        if var.startswith(_ENV_MOUNT) and len(var) > len(_ENV_MOUNT):
            urls = [u.strip() for u in value.split(",") if u.strip()]
            entry = MountEntry(var[len(_ENV_MOUNT) :].lower(), {}, f"{var}={value!r}")
            if not urls:
                raise entry.error("url", "expected url[,url...]: mount has no replicas")
            replicas = [{"url": u, "preference": i} for i, u in enumerate(urls)]
            out.append(dataclasses.replace(entry, values={"replicas": replicas}))
    return out


def local_site(environ: Mapping[str, str] | None = None) -> str:
    """This node's site (``STORECOMP_SITE``; "" when unset): its replicas are read first."""
    return (os.environ if environ is None else environ).get("STORECOMP_SITE", "")


def _mounts_from_file(path: Path, var: str) -> list[MountEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (named by {var})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file (named by {var}): {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); TOML files are UTF-8 (named by {var})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    table = doc.get("mounts", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}:{_line_of(text, 'mounts')}: [mounts] must be a table of mounts")
    return [_mount_entry(MountEntry(name, {}, str(path), text), spec) for name, spec in table.items()]


def _mount_entry(entry: MountEntry, spec: Any) -> MountEntry:
    fail = entry.error
    if not isinstance(spec, dict):
        raise fail("", "a mount must be a table with 'url' or 'replicas'")
    for key in spec:
        if key not in _MOUNT_KEYS:
            raise fail(key, f"unknown key; known: {', '.join(sorted(_MOUNT_KEYS))}")
    if ("url" in spec) == ("replicas" in spec):
        raise fail("url", "give exactly one of 'url' or 'replicas'")
    replicas: list[dict[str, Any]] = []
    if "url" in spec:
        if not isinstance(spec["url"], str) or not spec["url"]:
            raise fail("url", "expected a non-empty string")
        replicas.append({"url": spec["url"], "options": _options(spec.get("options", {}), lambda m: fail("options", m), 0)})
    else:
        reps = spec["replicas"]
        if not isinstance(reps, list) or not reps:
            raise fail("replicas", "expected a non-empty array of tables {url, site, preference}")
        for i, r in enumerate(reps):
            if isinstance(r, str):
                r = {"url": r}
            if not isinstance(r, dict) or not isinstance(r.get("url"), str) or not r["url"]:
                raise fail("replicas", f"entry {i}: expected a table with a string 'url'")
            extra = set(r) - {"url", "site", "preference", "options"}
            if extra:
                raise fail("replicas", f"entry {i}: unknown key {sorted(extra)[0]!r}; known: url, site, preference, options")
            site, pref = r.get("site", ""), r.get("preference", i)
            if not isinstance(site, str):
                raise fail("replicas", f"entry {i}: site must be a string")
            if not isinstance(pref, int) or isinstance(pref, bool):
                raise fail("replicas", f"entry {i}: preference must be an integer")
            options = _options(r.get("options", {}), lambda m: fail("replicas", m), i)
            replicas.append({"url": r["url"], "site": site, "preference": pref, "options": options})
    primary, read_only = spec.get("primary", ""), spec.get("read_only", False)
    if not isinstance(primary, str):
        raise fail("primary", "expected a site name or replica url")
    if not isinstance(read_only, bool):
        raise fail("read_only", "expected true or false")
    cache_dir, cache_max, cache_block = spec.get("cache_dir", ""), spec.get("cache_max_bytes", 0), spec.get("cache_block_bytes")
    if not isinstance(cache_dir, str):
        raise fail("cache_dir", "expected a directory path")
    if not _is_int(cache_max) or cache_max < 0:
        raise fail("cache_max_bytes", "expected a positive integer (bytes)")
    if cache_block is not None and (not _is_int(cache_block) or cache_block <= 0):
        raise fail("cache_block_bytes", "expected a positive integer (bytes), a multiple of 4096")
    encryption = spec.get("encryption", "")
    if not isinstance(encryption, str) or not (encryption in ("", "off", "env", "file") or encryption.startswith("file:")):
        raise fail("encryption", "expected 'env', 'file', 'file:PATH' or 'off'")
    values = {
        "replicas": replicas,
        "primary": primary,
        "read_only": read_only,
        "cache_dir": cache_dir,
        "cache_max_bytes": cache_max,
        "cache_block_bytes": cache_block,
        "encryption": encryption,
        "placement": _placement(spec["placement"], entry) if "placement" in spec else None,
    }
    return dataclasses.replace(entry, values=values)


def _placement(spec: Any, entry: MountEntry) -> dict[str, Any]:
    """``[mounts.NAME.placement]``, checked for types and ranges (site names are
    checked against the replicas where the mount is built)."""

    def fail(key: str, msg: str) -> ConfigError:
        return entry.error(f"placement.{key}" if key else "placement", msg)

    if not isinstance(spec, dict):
        raise fail("", f"expected a table with keys {', '.join(_PLACEMENT_KEYS)}")
    for key in spec:
        if key not in _PLACEMENT_KEYS:
            raise fail(key, f"unknown key; known: {', '.join(_PLACEMENT_KEYS)}")
    out: dict[str, Any] = {}
    if "near" in spec:
        near = spec["near"]
        if isinstance(near, str):
            near = [near]
        if not isinstance(near, list) or not all(isinstance(s, str) and s for s in near):
            raise fail("near", 'expected an array of site names, e.g. ["siteB"]')
        out["near"] = tuple(near)
    if "min_copies" in spec:
        if not _is_int(spec["min_copies"]) or spec["min_copies"] < 1:
            raise fail("min_copies", "expected a positive integer (complete copies, the primary's included)")
        out["min_copies"] = spec["min_copies"]
    if "max_rate" in spec:
        rate = spec["max_rate"]
        if isinstance(rate, str):
            try:
                rate = parse_size(rate)
            except ValueError as e:
                raise fail("max_rate", f"{e}; expected bytes/s such as 50M or 1G") from None
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0 or rate == float("inf"):
            raise fail("max_rate", "expected a positive rate in bytes/s (a number, or a size such as '50M')")
        out["max_rate"] = float(rate)
    if "auto" in spec:
        if not isinstance(spec["auto"], bool):
            raise fail("auto", "expected true or false")
        out["auto"] = spec["auto"]
    if "reads" in spec:
        reads = spec["reads"]
        if isinstance(reads, bool) or not isinstance(reads, (int, float)) or not 0 <= reads < float("inf"):
            raise fail("reads", "expected a number >= 0 (expected full reads of each snapshot)")
        out["reads"] = float(reads)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _options(obj: Any, fail: Callable[[str], ConfigError], i: int) -> tuple[tuple[str, Any], ...]:
    """Backend options of a replica, refusing anything that looks like a credential."""
    if not isinstance(obj, dict):
        raise fail(f"entry {i}: options must be a table (endpoint, region, ...)")
    for k in obj:
        if any(w in k.lower() for w in _SECRET_WORDS):
            raise fail(f"entry {i}: option {k!r} looks like a credential; set it in the environment (AWS_*), not in a file")
    return tuple(sorted(obj.items()))


def _line_of(text: str, table: str, key: str = "") -> int:
    """Best-effort 1-based line of ``key`` inside ``[table]`` (the header's line without a key)."""
    parts = table.split(".")
    header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(rf"[\"']?{re.escape(p)}[\"']?" for p in parts) + r"\s*\]")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if header.match(line):
            if key:
                for j in range(i + 1, len(lines)):
                    if lines[j].lstrip().startswith("["):
                        break
                    if re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", lines[j]):
                        return j + 1
            return i + 1
    # An inline table: `name = { ... }` under its parent.
    name = parts[-1]
    for i, line in enumerate(lines):
        if re.match(rf"^\s*[\"']?{re.escape(name)}[\"']?\s*=", line):
            return i + 1
    return 1


@dataclass(frozen=True)
class AwsEnvironment:
    """The standard ``AWS_*`` variables an S3 store falls back on when not given
    explicitly. Secrets are left out of the repr."""

    endpoint: str | None
    region: str | None
    access_key_id: str | None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)


def aws_environment(environ: Mapping[str, str] | None = None) -> AwsEnvironment:
    """``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``), ``AWS_REGION`` (else
    ``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``; empty values read as unset."""
    env = os.environ if environ is None else environ
    return AwsEnvironment(
        endpoint=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
    )


#: ``storecomp bench store``'s S3 target (``s3://bucket[/prefix]`` or an ``http(s)://`` endpoint) and,
#: for an endpoint, its bucket (default ``storecomp-bench``).
ENV_BENCH_S3_URL = "STORECOMP_BENCH_S3_URL"
ENV_BENCH_S3_BUCKET = "STORECOMP_BENCH_S3_BUCKET"


def bench_s3(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """``(STORECOMP_BENCH_S3_URL or None, STORECOMP_BENCH_S3_BUCKET or "storecomp-bench")``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_BENCH_S3_URL) or None, env.get(ENV_BENCH_S3_BUCKET) or "storecomp-bench"


def vllm_venv(environ: Mapping[str, str] | None = None) -> Path:
    """The virtual environment vLLM runs in (``STORECOMP_VLLM_VENV``, default
    ``~/.cache/storecomp/vllm-venv``; made by scripts/setup-vllm-venv.sh)."""
    env = os.environ if environ is None else environ
    return Path(env.get("STORECOMP_VLLM_VENV") or Path.home() / ".cache" / "storecomp" / "vllm-venv")
