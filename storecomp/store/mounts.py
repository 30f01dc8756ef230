"""The mount table's data model: :class:`Mount`, :class:`Replica` and a mount's
:class:`PlacementPolicy`. The TOML files and ``STORECOMP_MOUNT_*`` variables
are read and checked by :func:`storecomp.config.mount_entries` (format in
docs/store.md); :func:`load_mounts` builds the table from them."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .. import config
from ..errors import InvalidArgumentError
from ..redact import public_url

SCHEME = "sc://"
_MOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _BadField(InvalidArgumentError):
    """A mount field out of range; ``key`` names it as the mount table spells it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


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


@dataclass(frozen=True)
class PlacementPolicy:
    """Where ``storecomp place --auto`` puts a mount's snapshots (``[mounts.NAME.placement]``;
    the rule is in docs/placement.md, section "The policy table").

    ``near``: sites where the readers run, nearest first (candidates for a copy);
    ``min_copies``: complete copies to keep, the primary's included (copied
    whatever the rule says); ``max_rate``: bytes/s cap of this mount's copies
    (None: the copy engine's default, which yields to readers); ``auto``: let
    the decision rule add a copy at a ``near`` site when it pays off;
    ``reads``: expected full reads of a snapshot at each ``near`` site.
    """

    near: tuple[str, ...] = ()
    min_copies: int = 1
    max_rate: float | None = None
    auto: bool = True
    reads: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.near, str) or not all(isinstance(s, str) and s for s in self.near):
            raise _BadField("placement.near", f"near={self.near!r}: expected a sequence of site names")
        object.__setattr__(self, "near", tuple(self.near))
        if isinstance(self.min_copies, bool) or not isinstance(self.min_copies, int) or self.min_copies < 1:
            raise _BadField("placement.min_copies", f"min_copies={self.min_copies!r}: expected a positive integer")
        if self.max_rate is not None and not (0 < self.max_rate < math.inf):
            raise _BadField("placement.max_rate", f"max_rate={self.max_rate!r}: expected a positive rate in bytes/s")
        if not isinstance(self.auto, bool):
            raise _BadField("placement.auto", f"auto={self.auto!r}: expected True or False")
        if not (0 <= self.reads < math.inf):
            raise _BadField("placement.reads", f"reads={self.reads!r}: expected a number >= 0")


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
    #: Where ``place --auto`` puts its snapshots (None: only ``--near`` decides).
    placement: PlacementPolicy | None = None

    def __post_init__(self) -> None:
        if not _MOUNT_NAME.match(self.name):
            raise _BadField("url", f"mount name {self.name!r}: use letters, digits, '_', '.', '-'")
        if not self.replicas:
            raise _BadField("url", f"mount {self.name!r} has no replicas")
        if self.primary and self.primary_replica is None:
            raise _BadField("primary", f"mount {self.name!r}: primary {self.primary!r} is no replica's site or url")
        if self.cache_dir and self.cache_max_bytes <= 0:
            raise _BadField("cache_max_bytes", f"mount {self.name!r}: cache_dir needs a positive cache_max_bytes")
        if self.placement is not None:
            sites = self.site_names
            for s in self.placement.near:
                if s not in sites:
                    raise _BadField(
                        "placement.near", f"mount {self.name!r}: {s!r} is no replica's site (sites: {', '.join(sites)})"
                    )
            if self.placement.min_copies > len(sites):
                raise _BadField(
                    "placement.min_copies",
                    f"mount {self.name!r}: min_copies={self.placement.min_copies} but the mount has {len(sites)} site(s)",
                )

    @classmethod
    def of(cls, name: str, *urls: str, read_only: bool = False) -> Mount:
        """A mount over ``urls`` (replicas in order of preference)."""
        return cls(name, tuple(Replica(u, preference=i) for i, u in enumerate(urls)), read_only=read_only)

    @property
    def site_names(self) -> list[str]:
        """Each replica's site name (its URL when it has none), in table order, without repeats."""
        return list(dict.fromkeys(r.site or r.url for r in self.replicas))

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
    """The mount table from files and environment (read by :func:`storecomp.config.mount_entries`).

    Raises ConfigError naming the file, line and key of a malformed entry.
    """
    mounts: dict[str, Mount] = {}
    for entry in config.mount_entries(environ):
        mounts[entry.name] = mount_from_entry(entry)
    return mounts


def mount_from_entry(entry: config.MountEntry) -> Mount:
    """The :class:`Mount` a checked config entry describes; ConfigError naming the key it breaks."""
    values = dict(entry.values)
    replicas = tuple(Replica(**r) for r in values.pop("replicas"))
    policy = values.pop("placement", None)
    try:
        placement = None if policy is None else PlacementPolicy(**policy)
        return Mount(entry.name, replicas, placement=placement, **values)
    except _BadField as e:
        raise entry.error(e.key, str(e)) from None
