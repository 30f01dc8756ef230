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
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

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


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (named by STORECOMP_CONFIG)") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
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
