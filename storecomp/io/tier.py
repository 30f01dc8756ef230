"""The page cache as a tier, chosen on purpose per data set.

When the bytes a reader will touch fit the page-cache budget, reads go
through the page cache (buffered): the first pass fills it and every later
pass (epoch) runs at memory speed. When they do not fit, reads use O_DIRECT:
a data set larger than memory would only churn the cache, evicting what the
rest of the machine uses, and every pass would still come from the device.

The budget is half of what the kernel says can be had without swapping
(``MemAvailable``, or the cgroup's headroom when that is smaller); what is
already resident (``cachestat(2)``, else ``mincore(2)``) costs nothing
more. While buffered, :meth:`PageCachePolicy.check` watches ``MemAvailable``
and moves to O_DIRECT under memory pressure, so a reader never pushes the
machine towards the OOM killer.

``IOOptions.direct`` forces a tier: ``"off"`` buffered, ``"on"`` O_DIRECT;
``"auto"`` (the default) lets the policy choose.

Mapped reads: when the page cache is chosen for a data set whose files are
all resident already (a later epoch), reads copy out of a mapping of each
file that the engine keeps, with the checks in the same pass, instead of a
``preadv`` per sample (no system call, no page-cache lookup: about a quarter
less CPU per 64 KiB sample here). ``TierChoice.read_path`` says
``"mapped"``; ``IOOptions.mapped = "off"`` (``STORECOMP_MAPPED=off``) keeps
read system calls. A page evicted meanwhile faults in from the device, as a
buffered read would read it; under memory pressure the tier moves to O_DIRECT
and the mapping is no longer read. While a buffered pass fills the page
cache, what it reads is mapped into the engine's mappings in the background
(``MODE_POPULATE``, on CPU the pass leaves idle waiting for the device), so the
first mapped pass takes no page fault per 4 KiB. What is resident is sampled
for large files (:data:`RESIDENCY_SAMPLES`): a choice at every epoch then
costs about a millisecond, not ~9 ms per GiB of data. A file estimated whole
with a few pages evicted is still read right: a mapped read faults them in.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from .. import _native
from ..errors import InvalidArgumentError

#: Share of the available memory the page-cache tier may fill.
BUDGET_FRACTION = 0.5
#: While buffered: below this many available bytes (or this share of the
#: machine's memory, whichever is smaller) reads move to O_DIRECT.
PRESSURE_BYTES = 1 << 30
PRESSURE_FRACTION = 0.05
#: Seconds between two memory-pressure checks.
CHECK_INTERVAL_S = 0.5

BUFFERED = "buffered"
DIRECT = "direct"

_MODES = {BUFFERED: _native.MODE_BUFFERED, DIRECT: _native.MODE_DIRECT}
MAPPED = "mapped"


@dataclass(frozen=True)
class MemoryInfo:
    """Memory the page cache may use, in bytes."""

    total: int
    available: int  # MemAvailable, capped by the cgroup's headroom
    cgroup_limit: int | None  # memory.max of this process's cgroup (None: no limit)


def memory_info() -> MemoryInfo:
    """``MemTotal``/``MemAvailable`` from /proc/meminfo, capped by the cgroup v2 limit when one is set."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    fields[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    total = fields.get("MemTotal", 0)
    available = fields.get("MemAvailable", total)
    limit = _cgroup_limit()
    if limit is not None:
        used = _cgroup_int("memory.current") or 0
        # Page cache charged to the cgroup is reclaimable too.
        reclaimable = _cgroup_stat("inactive_file") + _cgroup_stat("active_file")
        available = min(available, max(0, limit - used + reclaimable))
    return MemoryInfo(total, available, limit)


def _cgroup_dir() -> str | None:
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return "/sys/fs/cgroup" + line[3:].strip()
    except OSError:
        pass
    return None


def _cgroup_int(name: str) -> int | None:
    d = _cgroup_dir()
    if d is None:
        return None
    try:
        with open(os.path.join(d, name)) as f:
            raw = f.read().strip()
    except OSError:
        return None
    return None if raw == "max" or not raw.isdigit() else int(raw)


def _cgroup_limit() -> int | None:
    return _cgroup_int("memory.max")


def _cgroup_stat(key: str) -> int:
    d = _cgroup_dir()
    if d is None:
        return 0
    try:
        with open(os.path.join(d, "memory.stat")) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


#: Ranges of 64 KiB a tier choice samples, spread over the files (at least 16 a file), to estimate
#: what of large files is resident (see :func:`resident_bytes`).
RESIDENCY_SAMPLES = 512


def resident_bytes(path: str, *, samples: int = 0) -> int:
    """Bytes of ``path`` in the page cache now (0 when it cannot be told). ``samples`` > 0: a file
    larger than ``4 * samples`` * 64 KiB is estimated from that many 64 KiB ranges spread over it,
    placed differently at each call (about 1 us a range instead of about 9 ms per GiB for the
    whole file); its whole size when every sampled page is resident."""
    try:
        return int(_native.resident_bytes(path, samples))
    except OSError:
        return 0


@dataclass(frozen=True)
class TierChoice:
    """Which tier reads of a data set use, and why. Sizes in bytes."""

    tier: str  # "buffered" | "direct"
    reason: str
    data_bytes: int
    resident_bytes: int
    available_bytes: int
    budget_bytes: int
    forced: bool = False
    #: Buffered, and every file resident: reads copy out of the engine's mappings of the files.
    mapped: bool = False
    #: Buffered, not every file resident yet, and mapped reads allowed: what is read is mapped
    #: into the engine's mappings in the background (on idle CPU), ready for the mapped passes.
    populate: bool = False

    @property
    def mode(self) -> int:
        """The native engine's read mode for this tier. Mapped reads of a data set write with
        streaming stores: a reader's batch slots rotate through more memory than the CPU's
        cache holds, so their lines are not worth reading before they are written. Buffered
        reads before them populate the mappings (``MODE_POPULATE``): the first mapped pass then
        takes no page fault per 4 KiB."""
        if self.tier != BUFFERED:
            return _MODES[self.tier]
        if self.mapped:
            return _MODES[self.tier] | _native.MODE_MAPPED | _native.MODE_STREAM
        return _MODES[self.tier] | (_native.MODE_POPULATE if self.populate else 0)

    @property
    def direct(self) -> str:
        """This tier as a read mode of :meth:`~storecomp.io.File.read_many_into`: ``"off"`` (buffered),
        ``"mapped"`` (buffered, copied out of a mapping) or ``"on"`` (O_DIRECT)."""
        if self.tier != BUFFERED:
            return "on"
        return MAPPED if self.mapped else "off"

    @property
    def read_path(self) -> str:
        """How the bytes are read: ``"mapped"``, ``"buffered"`` (``preadv`` through the page cache) or ``"direct"``."""
        return MAPPED if self.tier == BUFFERED and self.mapped else self.tier

    def as_dict(self) -> dict[str, object]:
        return {
            "tier": self.tier,
            "reason": self.reason,
            "data_bytes": self.data_bytes,
            "resident_bytes": self.resident_bytes,
            "available_bytes": self.available_bytes,
            "budget_bytes": self.budget_bytes,
            "forced": self.forced,
            "read_path": self.read_path,
        }


class PageCachePolicy:
    """Chooses the page cache or O_DIRECT for a set of files, and leaves the
    page cache under memory pressure.

    ``direct``: ``"auto"`` (choose), ``"off"`` (always buffered) or ``"on"``
    (always O_DIRECT), as ``IOOptions.direct``. ``mapped``: ``"auto"`` (a
    buffered choice over files that are all resident reads them mapped) or
    ``"off"``, as ``IOOptions.mapped``. ``floor_bytes``: available
    memory below which buffered reads give way to O_DIRECT (default
    :func:`pressure_floor`). Shared by every reader of local files (the
    DataLoader's :class:`~storecomp.data.readers.LocalReader`, stores and
    cache tiers on local disks).
    """

    def __init__(self, direct: str = "auto", *, mapped: str = "auto", floor_bytes: int | None = None) -> None:
        if direct not in ("auto", "on", "off"):
            raise InvalidArgumentError(f"direct must be auto, on or off, got {direct!r}")
        if mapped not in ("auto", "off"):
            raise InvalidArgumentError(f"mapped must be auto or off, got {mapped!r}")
        self.direct = direct
        self.mapped = mapped
        self.floor_bytes = floor_bytes
        self._next_check = 0.0
        self._mem: tuple[float, MemoryInfo] | None = None  # (good until, info)

    def choose(self, paths: Iterable[str], data_bytes: int | None = None) -> TierChoice:
        """The tier for reading ``paths`` (``data_bytes``: how much of them will be read; default all)."""
        paths = list(dict.fromkeys(paths))
        samples = max(16, RESIDENCY_SAMPLES // max(1, len(paths)))
        sizes = resident = 0
        whole = bool(paths)  # every file entirely in the page cache
        for p in paths:
            try:
                size = os.stat(p).st_size
            except OSError:
                whole = False
                continue
            sizes += size
            r = min(resident_bytes(p, samples=samples), size)
            resident += r
            whole = whole and r == size
        need = sizes if data_bytes is None else min(sizes, data_bytes)
        choice = self.choose_size(need, min(need, resident))
        if choice.tier == BUFFERED and self.mapped == "auto":
            if whole:
                choice = replace(choice, mapped=True, reason=choice.reason + "; every file resident: copied out of mappings")
            else:
                choice = replace(choice, populate=True)
        return choice

    def choose_size(self, data_bytes: int, resident: int = 0) -> TierChoice:
        """The tier for a working set of ``data_bytes`` bytes of which ``resident`` are in the page
        cache already (a store's object, a cache tier's capacity). Raises InvalidArgumentError for
        negative sizes."""
        if data_bytes < 0 or resident < 0:
            raise InvalidArgumentError(f"sizes must be non-negative, got data_bytes={data_bytes} resident={resident}")
        need, resident = data_bytes, min(resident, data_bytes)
        mem = self._memory()
        budget = int(mem.available * BUDGET_FRACTION)
        fields: dict[str, Any] = {
            "data_bytes": need,
            "resident_bytes": resident,
            "available_bytes": mem.available,
            "budget_bytes": budget,
        }
        self._next_check = 0.0  # the first check() looks at once
        if self.direct == "off":
            return TierChoice(BUFFERED, "forced: direct=off", forced=True, **fields)
        if self.direct == "on":
            return TierChoice(DIRECT, "forced: direct=on", forced=True, **fields)
        missing = need - resident
        gib = 1 << 30
        if missing <= budget:
            why = (
                f"fits the page cache: {missing / gib:.2f} GiB to cache ({resident / gib:.2f} of {need / gib:.2f} GiB "
                f"resident) <= budget {budget / gib:.2f} GiB ({BUDGET_FRACTION:.0%} of {mem.available / gib:.2f} GiB available)"
            )
            return TierChoice(BUFFERED, why, **fields)
        why = (
            f"larger than the page-cache budget: {missing / gib:.2f} GiB to cache ({resident / gib:.2f} of "
            f"{need / gib:.2f} GiB resident) > budget {budget / gib:.2f} GiB ({BUDGET_FRACTION:.0%} of "
            f"{mem.available / gib:.2f} GiB available)"
        )
        return TierChoice(DIRECT, why, **fields)

    def _memory(self) -> MemoryInfo:
        """:func:`memory_info`, read again at most once per :data:`CHECK_INTERVAL_S` (a store
        chooses per object it opens: /proc/meminfo and the cgroup files once per open would cost
        more than a small read)."""
        now = time.monotonic()
        if self._mem is None or now >= self._mem[0]:
            self._mem = (now + CHECK_INTERVAL_S, memory_info())
        return self._mem[1]

    def check(self, choice: TierChoice) -> TierChoice:
        """``choice``, or O_DIRECT when memory runs short while buffered (at
        most one /proc/meminfo read per :data:`CHECK_INTERVAL_S`)."""
        if choice.tier != BUFFERED or choice.forced:
            return choice
        now = time.monotonic()
        if now < self._next_check:
            return choice
        self._next_check = now + CHECK_INTERVAL_S
        mem = memory_info()
        floor = pressure_floor(mem) if self.floor_bytes is None else self.floor_bytes
        if mem.available >= floor:
            return choice
        gib = 1 << 30
        why = (
            f"memory pressure: {mem.available / gib:.2f} GiB available < {floor / gib:.2f} GiB "
            f"while buffered; O_DIRECT leaves the page cache to the rest of the machine"
        )
        return replace(choice, tier=DIRECT, reason=why, available_bytes=mem.available, mapped=False, populate=False)


def pressure_floor(mem: MemoryInfo) -> int:
    """Available bytes below which buffered reads give way to O_DIRECT."""
    return int(min(PRESSURE_BYTES, PRESSURE_FRACTION * mem.total))
