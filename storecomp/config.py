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
* ``STORECOMP_ENCRYPTION_KEY_FILE``: the path of a file of such lines.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

_CHOICES = {
    "engine": ("auto", "io_uring", "threads"),
    "direct": ("auto", "on", "off"),
    "io_path": ("auto", "gds", "bounce", "posix"),
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


def vllm_venv(environ: Mapping[str, str] | None = None) -> Path:
    """The virtual environment vLLM runs in (``STORECOMP_VLLM_VENV``, default
    ``~/.cache/storecomp/vllm-venv``; made by scripts/setup-vllm-venv.sh)."""
    env = os.environ if environ is None else environ
    return Path(env.get("STORECOMP_VLLM_VENV") or Path.home() / ".cache" / "storecomp" / "vllm-venv")
