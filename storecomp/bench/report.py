"""One table for every suite: each figure next to its limit and its peers.

Every suite (read, store, loader, kvcache) turns its result into
:class:`Figure` rows; :func:`table` prints them with the ratio to the limit
and to each peer measured in the same run, :func:`plot` draws the ratios,
and :func:`advice` says which stage bounds the data path and what to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figure:
    """One measured figure of one case.

    ``value`` is storecomp's; ``limit`` is the hardware limit measured in
    the same run (fio, memcpy) as ``(name, value)``; ``peers`` are other
    libraries measured in the same run, name -> value. ``higher_is_better``
    is False for times (lookup latency, time to first token). ``bottleneck``
    is what the component itself blamed for its waits (the DataLoader's
    stall attribution, ``metrics()["bottleneck"]``), when it has one.
    """

    suite: str
    case: str
    unit: str
    value: float
    limit: tuple[str, float] | None = None
    target: float | None = None  # the ratio to the limit this case aims at
    peers: dict[str, float] = field(default_factory=dict)
    higher_is_better: bool = True
    note: str = ""
    bottleneck: str = ""

    def ratio_to(self, other: float) -> float | None:
        if not (other and self.value) or math.isnan(other) or math.isnan(self.value):
            return None
        return self.value / other if self.higher_is_better else other / self.value

    @property
    def ratio(self) -> float | None:
        """storecomp / limit (limit / storecomp for times); >= 1 is at or past the limit."""
        return None if self.limit is None else self.ratio_to(self.limit[1])

    @property
    def meets_target(self) -> bool | None:
        r = self.ratio
        return None if r is None or self.target is None else r >= self.target

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"], d["meets_target"] = self.ratio, self.meets_target
        d["peer_ratios"] = {k: self.ratio_to(v) for k, v in self.peers.items()}
        return d


def fmt_value(value: float, unit: str) -> str:
    if unit in ("IOPS", "samples/s", "tokens/s") and value >= 1000:
        return f"{value / 1000:.1f}k {unit}"
    if unit in ("ms", "s"):
        return f"{value:.3g} {unit}"
    return f"{value:.2f} {unit}"


def _fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def table(figures: Sequence[Figure]) -> str:
    """Plain text: case, storecomp, limit, ratio, target, peers (with ratios)."""
    head = ("suite", "case", "storecomp", "limit", "ratio", "target", "peers (storecomp / peer)")
    rows = []
    for f in figures:
        limit = "-" if f.limit is None else f"{fmt_value(f.limit[1], f.unit)} {f.limit[0]}"
        target = "-" if f.target is None else f">={f.target}" + {None: "", True: " ok", False: " MISSED"}[f.meets_target]
        peers = "; ".join(f"{n} {fmt_value(v, f.unit)} ({_fmt_ratio(f.ratio_to(v))})" for n, v in f.peers.items())
        rows.append((f.suite, f.case, fmt_value(f.value, f.unit), limit, _fmt_ratio(f.ratio), target, peers or "-"))
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in (head, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [f"{f.suite}/{f.case}: {f.note}" for f in figures if f.note]
    return "\n".join(lines)


def plot(figures: Sequence[Figure], path: str) -> None:
    """A bar chart of each case's ratio to its limit and to each peer (PNG).

    Raises UnavailableError when matplotlib is not installed.
    """
    from ..optional import require

    matplotlib = require("matplotlib", "--plot")
    matplotlib.use("Agg")
    plt = require("matplotlib.pyplot", "--plot")
    labels = [f"{f.suite}/{f.case}" for f in figures]
    series: dict[str, list[float]] = {"limit": [f.ratio or 0.0 for f in figures]}
    for f in figures:
        for name in f.peers:
            series.setdefault(name, [0.0] * len(figures))
    for i, f in enumerate(figures):
        for name, v in f.peers.items():
            series[name][i] = f.ratio_to(v) or 0.0
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(figures) + 2), 4.5))
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(figures))]
        ax.bar(xs, values, width, label=f"vs {name}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(figures)), labels, rotation=30, ha="right")
    ax.set_ylabel("storecomp / other (higher is better)")
    ax.set_title("storecomp next to the limit and the peers, measured in one run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


#: What to change when the DataLoader's stall attribution names a cause other than storage.
_CURES = {
    "producer CPU": (
        "the producer thread's per-batch work (planning, checksums, collation) bounds it; "
        "a faster engine or a deeper queue will not help: larger batches or free CPU cores will "
        "(verify=False skips the per-sample crc32c)"
    ),
    "host-to-device": "the host-to-device copy bounds it: check the copies run from pinned memory",
    "consumer": "the consumer (the training step) is slower than the data: nothing to change in storage",
    "consumer holds every staging slot": "the consumer keeps every batch: drop batches once used, or raise max_memory",
}


def advice(figures: Sequence[Figure], hints: Sequence[str] = ()) -> list[str]:
    """What bounds the data path, from the measured figures, and what to change.

    ``hints`` are suite-specific findings (for example the loader's
    bottleneck hint) passed through first.
    """
    out = list(hints)
    for f in figures:
        r = f.ratio
        if r is None or f.limit is None:
            continue
        name = f.limit[0]
        cached = name.startswith("fio buffered")  # the limit is fio reading the page cache, not the device
        if cached and r >= 0.9:
            out.append(f"{f.suite}/{f.case}: at the page-cache limit ({r:.2f}x {name}): memory copies are the limit here")
        elif name.startswith("fio") and r > 1.5:
            out.append(
                f"{f.suite}/{f.case}: {r:.2f}x {name}: faster than the device, so the page cache served part of it "
                "(a dataset smaller than the run reads, or already cached); use a larger --size for a cold figure"
            )
        elif name.startswith("fio") and r >= 0.9:
            out.append(f"{f.suite}/{f.case}: storage-bound ({r:.2f}x {name}): the device is the limit here")
        elif name.startswith("fio") and f.bottleneck and not f.bottleneck.startswith("storage"):
            # Below the limit, but the component's own stall attribution says storage was not what it waited for.
            cure = _CURES.get(f.bottleneck.split(" (")[0], _CURES["producer CPU"])
            out.append(
                f"{f.suite}/{f.case}: {r:.2f}x {name}, below the {'page-cache' if cached else 'storage'} limit, and the "
                f"loader's own stall attribution names the {f.bottleneck} as the limit, not storage: {cure}"
            )
        elif cached:
            out.append(
                f"{f.suite}/{f.case}: {r:.2f}x {name}, below the page-cache limit: these reads are copies out of "
                "memory, bound by CPU (O_DIRECT and the queue depth do not apply): free cores, fewer and larger "
                "samples, or a larger max_memory (more reads in flight, when the loader says it waits at that limit) help"
            )
        elif name.startswith("fio"):
            out.append(
                f"{f.suite}/{f.case}: {r:.2f}x {name}, below the storage limit: try STORECOMP_ENGINE=threads or a "
                "larger STORECOMP_QUEUE_DEPTH, and check `storecomp info` for io_uring and O_DIRECT"
            )
        elif name.startswith("memcpy") and r < 0.8:
            out.append(f"{f.suite}/{f.case}: {r:.2f}x memcpy: copies are CPU-bound; fewer, larger requests help")
    return out
