"""The mount table: :class:`Mount` and :class:`Replica`, and loading it from
TOML files and ``STORECOMP_MOUNT_*`` variables (format in docs/store.md)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InvalidArgumentError
from ..redact import public_url

SCHEME = "sc://"
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ENV_MOUNT = "STORECOMP_MOUNT_"


# ---------------------------------------------------------------- mounts


@dataclass(frozen=True)
class Replica:
    """One copy of a mount's data: a store URL in a site. Lower ``preference`` is read first."""

    url: str
    site: str = ""
    preference: int = 0
    #: Backend options for ``open_store(url, **options)`` (endpoint, region...);
    #: never credentials: those come from the environment.
    options: tuple[tuple[str, Any], ...] = ()

    def __repr__(self) -> str:
        return f"Replica(url={public_url(self.url)!r}, site={self.site!r}, preference={self.preference})"


#: Option names refused in mount tables (credentials belong in the environment).
_SECRET_WORDS = ("secret", "password", "token", "access_key", "credential")


@dataclass(frozen=True)
class Mount:
    """A named entry of the mount table.

    ``replicas`` are copies of the same data; ``primary`` (a site name or a
    replica URL; default the first replica) takes every write.
    """

    name: str
    replicas: tuple[Replica, ...]
    primary: str = ""
    read_only: bool = False
    #: Node-local cache (storecomp.store.cache.CachedStore) in front of the
    #: mount when set: directory, byte budget, block size (None: whole objects).
    cache_dir: str = ""
    cache_max_bytes: int = 0
    cache_block_bytes: int | None = None
    #: Encryption at rest (storecomp.store.encrypted.EncryptedStore, outside the cache):
    #: "" (off), "env" (STORECOMP_ENCRYPTION_KEYS), "file" or "file:PATH" (a key file).
    encryption: str = ""

    def __post_init__(self) -> None:
        if not _MOUNT_NAME.match(self.name):
            raise InvalidArgumentError(f"mount name {self.name!r}: use letters, digits, '_', '.', '-'")
        if not self.replicas:
            raise InvalidArgumentError(f"mount {self.name!r} has no replicas")
        if self.primary and self.primary_replica is None:
            raise InvalidArgumentError(f"mount {self.name!r}: primary {self.primary!r} is no replica's site or url")
        if self.cache_dir and self.cache_max_bytes <= 0:
            raise InvalidArgumentError(f"mount {self.name!r}: cache_dir needs a positive cache_max_bytes")

    @classmethod
    def of(cls, name: str, *urls: str, read_only: bool = False) -> Mount:
        """A mount over ``urls`` (replicas in order of preference)."""
        return cls(name, tuple(Replica(u, preference=i) for i, u in enumerate(urls)), read_only=read_only)

    @property
    def primary_replica(self) -> Replica | None:
        if not self.primary:
            return self.replicas[0]
        for r in self.replicas:
            if self.primary in (r.site, r.url):
                return r
        return None


# ---------------------------------------------------------------- config


def load_mounts(environ: Mapping[str, str] | None = None) -> dict[str, Mount]:
    """The mount table from files and environment (see the module docstring).

    Raises ConfigError naming the file, line and key of a malformed entry.
    """
    env = os.environ if environ is None else environ
    mounts: dict[str, Mount] = {}
    for var in ("STORECOMP_CONFIG", "STORECOMP_MOUNTS"):
        if env.get(var):
            mounts.update(_mounts_from_file(Path(env[var]), var))
    for var, value in sorted(env.items()):
        if var.startswith(_ENV_MOUNT) and len(var) > len(_ENV_MOUNT):
            name = var[len(_ENV_MOUNT) :].lower()
            urls = [u.strip() for u in value.split(",") if u.strip()]
            try:
                mounts[name] = Mount.of(name, *urls)
            except InvalidArgumentError as e:
                raise ConfigError(f"{var}={value!r}: {e}") from None
    return mounts


def _mounts_from_file(path: Path, var: str) -> dict[str, Mount]:
    import tomllib

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
    out: dict[str, Mount] = {}
    for name, spec in table.items():
        out[name] = _mount_from_table(path, text, name, spec)
    return out


def _mount_from_table(path: Path, text: str, name: str, spec: Any) -> Mount:
    def fail(key: str, msg: str) -> ConfigError:
        line = _line_of(text, f"mounts.{name}", key)
        return ConfigError(f"{path}:{line}: [mounts.{name}] {key}: {msg}")

    if not isinstance(spec, dict):
        return _raise(fail("", "a mount must be a table with 'url' or 'replicas'"))
    known = {
        "url",
        "options",
        "replicas",
        "primary",
        "read_only",
        "cache_dir",
        "cache_max_bytes",
        "cache_block_bytes",
        "encryption",
    }
    for key in spec:
        if key not in known:
            raise fail(key, f"unknown key; known: {', '.join(sorted(known))}")
    if ("url" in spec) == ("replicas" in spec):
        raise fail("url", "give exactly one of 'url' or 'replicas'")
    replicas: list[Replica] = []
    if "url" in spec:
        if not isinstance(spec["url"], str) or not spec["url"]:
            raise fail("url", "expected a non-empty string")
        replicas.append(Replica(spec["url"], options=_options(spec.get("options", {}), lambda m: fail("options", m), 0)))
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
            replicas.append(Replica(r["url"], site, pref, _options(r.get("options", {}), lambda m: fail("replicas", m), i)))
    primary, read_only = spec.get("primary", ""), spec.get("read_only", False)
    if not isinstance(primary, str):
        raise fail("primary", "expected a site name or replica url")
    if not isinstance(read_only, bool):
        raise fail("read_only", "expected true or false")
    cache_dir, cache_max, cache_block = spec.get("cache_dir", ""), spec.get("cache_max_bytes", 0), spec.get("cache_block_bytes")
    if not isinstance(cache_dir, str):
        raise fail("cache_dir", "expected a directory path")
    if not isinstance(cache_max, int) or isinstance(cache_max, bool) or cache_max < 0:
        raise fail("cache_max_bytes", "expected a positive integer (bytes)")
    if cache_block is not None and (not isinstance(cache_block, int) or isinstance(cache_block, bool) or cache_block <= 0):
        raise fail("cache_block_bytes", "expected a positive integer (bytes), a multiple of 4096")
    encryption = spec.get("encryption", "")
    if not isinstance(encryption, str) or not (encryption in ("", "off", "env", "file") or encryption.startswith("file:")):
        raise fail("encryption", "expected 'env', 'file', 'file:PATH' or 'off'")
    try:
        return Mount(name, tuple(replicas), primary, read_only, cache_dir, cache_max, cache_block, encryption)
    except InvalidArgumentError as e:
        msg = str(e)
        raise fail("primary" if "primary" in msg else "cache_max_bytes" if "cache" in msg else "url", msg) from None


def _options(obj: Any, fail: Callable[[str], ConfigError], i: int) -> tuple[tuple[str, Any], ...]:
    """Backend options of a replica, refusing anything that looks like a credential."""
    if not isinstance(obj, dict):
        raise fail(f"entry {i}: options must be a table (endpoint, region, ...)")
    for k in obj:
        if any(w in k.lower() for w in _SECRET_WORDS):
            raise fail(f"entry {i}: option {k!r} looks like a credential; set it in the environment (AWS_*), not in a file")
    return tuple(sorted(obj.items()))


def _raise(e: Exception) -> Any:
    raise e


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
    # An inline table: `name = { ... }` under [mounts].
    name = parts[-1]
    for i, line in enumerate(lines):
        if re.match(rf"^\s*[\"']?{re.escape(name)}[\"']?\s*=", line):
            return i + 1
    return 1
