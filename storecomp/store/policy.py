"""A mount's placement policy applied: ``storecomp place --auto`` and :func:`place_auto`.

The policy is the mount's ``[mounts.NAME.placement]`` table
(:class:`~storecomp.store.mounts.PlacementPolicy`: ``near``, ``min_copies``,
``max_rate``, ``auto``, ``reads``). :func:`auto_decisions` turns it into one
:class:`~storecomp.store.placement.Decision` per site, each saying why;
:func:`place_auto` carries out the copies. The rule, in order (docs/placement.md,
"The policy table"):

1. a site that already holds a complete copy is left alone;
2. with ``auto = true``, each ``near`` site gets a copy when the measured rule
   of :func:`~storecomp.store.placement.decide` says copying and then reading
   there ``reads`` times beats reading from the nearest complete copy;
3. while fewer than ``min_copies`` complete copies (the primary's included)
   exist or are decided, copies are added, ``near`` sites first, then the
   other sites in the mount's read order; a site that cannot be measured is
   still a candidate here (durability does not depend on speed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidArgumentError
from .mounts import SCHEME, PlacementPolicy
from .namespace import Namespace
from .placement import Decision, PlaceReport, decide, place
from .placement_record import read_record, site_named, snapshot_at, split_snapshot_url
from .transfer import DEFAULT_WORKERS

__all__ = ["AutoPlacement", "auto_decisions", "place_auto", "policy_of"]


def policy_of(namespace: Namespace, mount: str) -> PlacementPolicy:
    """The placement policy of ``mount`` (the defaults when its table has none)."""
    m = namespace.mounts.get(mount)
    if m is None:
        known = ", ".join(sorted(namespace.mounts)) or "none"
        raise InvalidArgumentError(f"{SCHEME}{mount}: no such mount (known: {known}); see `storecomp mounts`")
    return m.placement or PlacementPolicy()


@dataclass
class AutoPlacement:
    """What :func:`place_auto` decided (one Decision per site considered) and the copies it made."""

    url: str
    decisions: list[Decision]
    placed: list[PlaceReport] = field(default_factory=list)

    @property
    def sites(self) -> list[str]:
        """Sites the policy copies to, in order."""
        return [d.site for d in self.decisions if d.copy]

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "decisions": [d.to_json() for d in self.decisions],
            "placed": [p.to_json() for p in self.placed],
        }


def auto_decisions(
    url: str,
    *,
    near: list[str] | tuple[str, ...] | None = None,
    reads: float | None = None,
    namespace: Namespace | None = None,
) -> list[Decision]:
    """Where the mount's policy puts snapshot ``sc://mount/name`` (no copy is made).

    ``near`` and ``reads`` override the policy's. Returns one Decision per
    site considered, in order; ``copy`` says whether to copy there and ``why``
    says why. Raises InvalidArgumentError for an unknown mount or site, or when
    neither ``near`` nor the policy names a site and ``min_copies`` asks nothing.
    """
    ns = namespace or Namespace()
    try:
        mount, _ = split_snapshot_url(url)
        policy = policy_of(ns, mount)
        _, sites, primary, _, h, _ = snapshot_at(ns, url)  # NotFoundError for an unknown snapshot
        wanted = tuple(near) if near is not None else policy.near
        for s in wanted:
            site_named(sites, s, mount)  # an unknown site is an error, not a "stay"
        n_reads = policy.reads if reads is None else reads
        if not wanted and policy.min_copies <= 1:
            raise InvalidArgumentError(
                f"{url}: nothing to decide: give --near SITE, or a [mounts.{mount}.placement] table with near = [...] "
                "or min_copies > 1"
            )
        complete = {primary.name} | read_record(primary.store).sites_of(h)
        out: list[Decision] = []
        for s in wanted:
            if s in complete:
                out.append(Decision(url, s, False, f"{s} already holds a complete copy", 0.0, 0.0, {}))
            elif not policy.auto and near is None:
                out.append(Decision(url, s, False, f"policy auto = false: no copy to {s} by the rule", 0.0, 0.0, {}))
            else:
                out.append(decide(url, s, reads=n_reads, namespace=ns))
        have = len(complete) + sum(d.copy for d in out)
        if have < policy.min_copies:
            chosen = {d.site for d in out if d.copy}
            order = [*wanted, *(s.name for s in sites if s.name not in wanted)]
            for s in order:
                if have >= policy.min_copies:
                    break
                if s in complete or s in chosen:
                    continue
                why = (
                    f"min_copies = {policy.min_copies}: {len(complete)} complete ({', '.join(sorted(complete))})"
                    f"{' + ' + ', '.join(sorted(chosen)) + ' decided' if chosen else ''}: copy to {s}"
                )
                out = [d for d in out if d.site != s]
                out.append(Decision(url, s, True, why, 0.0, 0.0, {}))
                chosen.add(s)
                have += 1
        return out
    finally:
        if namespace is None:
            ns.close()


def place_auto(
    url: str,
    *,
    near: list[str] | tuple[str, ...] | None = None,
    reads: float | None = None,
    namespace: Namespace | None = None,
    max_rate: float | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    nice: int = 0,
    yield_to_readers: bool = True,
) -> AutoPlacement:
    """Apply the mount's placement policy to snapshot ``sc://mount/name``:
    decide (:func:`auto_decisions`) and copy to each site decided, one after
    the other, with :func:`~storecomp.store.placement.place` (``max_rate``:
    bytes/s, None: the policy's, else the copy engine's default). Errors of
    a copy propagate (the copies before it stay published)."""
    ns = namespace or Namespace()
    try:
        result = AutoPlacement(url, auto_decisions(url, near=near, reads=reads, namespace=ns))
        for d in result.decisions:
            if d.copy:
                result.placed.append(
                    place(
                        url,
                        d.site,
                        namespace=ns,
                        max_rate=max_rate,
                        workers=workers,
                        progress=progress,
                        nice=nice,
                        yield_to_readers=yield_to_readers,
                    )
                )
        return result
    finally:
        if namespace is None:
            ns.close()
