"""``storecomp place sc://mount/name --to SITE | --status | --plan | --drop SITE | --auto --near SITE``
and ``storecomp warm sc://mount/name`` (see docs/placement.md)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .store import _human, _rate


def add_parser(sub: Any) -> None:
    p = sub.add_parser("place", help="copy a snapshot to a site (or show, plan, drop copies): sc://mount/name --to SITE")
    p.add_argument(
        "url",
        help="sc://mount/name (a snapshot); sc://mount/prefix/ with --to (plain objects: a KV pool); sc://mount with --status",
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--to", metavar="SITE", help="site to copy the snapshot to")
    what.add_argument("--status", action="store_true", help="where each snapshot of the mount lives, what is in flight, leases")
    what.add_argument("--plan", metavar="SITE", help="dry run: bytes to move to SITE and the estimated time")
    what.add_argument("--drop", metavar="SITE", help="remove SITE's copy (refused for the only copy or a leased one)")
    what.add_argument(
        "--auto",
        action="store_true",
        help="apply the mount's placement policy ([mounts.NAME.placement]) or decide for --near SITE, and say why",
    )
    p.add_argument("--near", metavar="SITE[,SITE]", help="with --auto: the site(s) where the readers run (default: the policy's)")
    p.add_argument(
        "--reads", type=float, default=None, help="with --auto: expected full reads of the snapshot (default: the policy's, 1)"
    )
    p.add_argument("--max-rate", type=_rate, default=None, metavar="RATE", help="bandwidth cap, bytes/s (50M, 1G)")
    p.add_argument("-j", "--workers", type=int, default=8, help="blobs copied at once (default 8)")
    p.add_argument(
        "--nice",
        type=int,
        default=10,
        help="CPU niceness of the copy, so readers on this node go first (default 10; 0 keeps the current priority)",
    )
    p.add_argument(
        "--yield",
        dest="yield_to_readers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="slow the copy while readers hold leases at either site (default: on; --no-yield copies at full speed)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main, place_cmd="place")

    p = sub.add_parser("warm", help="fill the node-local cache tier with a snapshot: sc://mount/name")
    p.add_argument("url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main, place_cmd="warm")


def main(args: Any) -> int:
    from ..errors import InvalidArgumentError
    from ..store import Namespace, placement

    with Namespace() as ns:
        if args.place_cmd == "warm":
            doc = placement.warm(args.url, namespace=ns)
            print(
                json.dumps(doc, indent=2)
                if args.json
                else f"warmed {doc['blobs']} blobs, {_human(doc['bytes'])} in {doc['cache']}"
            )
            return 0
        if args.status:
            mount = args.url[len("sc://") :].split("/", 1)[0] if args.url.startswith("sc://") else ""
            if not mount:
                raise InvalidArgumentError(f"{args.url!r}: expected sc://mount")
            return _print_status(placement.status(mount, namespace=ns), args.json)
        if args.plan:
            p = placement.plan(args.url, args.plan, namespace=ns)
            if args.json:
                print(json.dumps(p.to_json(), indent=2))
            else:
                print(
                    f"{p.url} -> {p.site}: {p.blobs_missing} of {p.blobs} blobs missing, {_human(p.bytes_missing)} of "
                    f"{_human(p.bytes_total)} to move; about {p.seconds:.1f} s at {_human(p.rate)}/s ({p.rate_from})"
                )
            return 0
        if args.drop:
            freed = placement.drop(args.url, args.drop, namespace=ns)
            print(
                json.dumps({"dropped": args.drop, "bytes_freed": freed})
                if args.json
                else f"dropped {args.drop}: {_human(freed)} freed"
            )
            return 0
        progress = sys.stderr.isatty() if args.progress is None else args.progress
        # The copy options, one set for every way this command copies (--auto, a prefix, --to).
        copy_opts: dict[str, Any] = {
            "namespace": ns,
            "max_rate": args.max_rate,
            "workers": args.workers,
            "progress": progress,
            "nice": args.nice,
            "yield_to_readers": args.yield_to_readers,
        }
        if args.auto:
            from ..store import policy

            near = [s.strip() for s in args.near.split(",") if s.strip()] if args.near else None
            decisions = policy.auto_decisions(args.url, near=near, reads=args.reads, namespace=ns)
            if not args.json:
                for d in decisions:
                    print(f"{d.site}: {'copy' if d.copy else 'stay'}: {d.why}", file=sys.stderr)
            reports = [placement.place(args.url, d.site, **copy_opts) for d in decisions if d.copy]
            if args.json:
                print(json.dumps(policy.AutoPlacement(args.url, decisions, reports).to_json(), indent=2))
            for r in reports:
                if not args.json:
                    _print_placed(args.url, r)
            return 0
        if args.to and args.url.endswith("/"):
            t = placement.place_prefix(args.url, args.to, **copy_opts)
            print(
                json.dumps(t.to_json(), indent=2)
                if args.json
                else f"{args.url} at {args.to}: copied {t.copied} objects ({_human(t.bytes_copied)}), {t.skipped} already "
                f"there and verified ({_human(t.bytes_skipped)}), {t.seconds:.1f} s"
            )
            return 0
        if args.to:
            to = args.to
        else:
            raise InvalidArgumentError("say what to do: --to SITE, --status, --plan SITE, --drop SITE or --auto --near SITE")
        r = placement.place(args.url, to, **copy_opts)
        if args.json:
            print(json.dumps(r.to_json(), indent=2))
        else:
            _print_placed(args.url, r)
    return 0


def _print_placed(url: str, r: Any) -> None:
    if r.already_complete:
        print(f"{url} is already complete at {r.site}")
        return
    t = r.transfer
    resumed = f"; resumed {_human(t.bytes_resumed)} of parts an earlier run had uploaded" if t.bytes_resumed else ""
    copied = f"{_human(t.bytes_copied)}, {_human(t.bytes_uploaded)} sent{resumed}"
    print(
        f"{url} complete at {r.site}: copied {t.copied} blobs ({copied}), "
        f"{t.skipped} already there and verified ({_human(t.bytes_skipped)}), {t.seconds:.1f} s"
    )


def _print_status(doc: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"{doc['mount']}  primary={doc['primary']}  sites={','.join(doc['sites'])}")
    for s in doc["snapshots"]:
        print(f"  {s['name']}  {s['manifest'][:12]}  {_human(max(0, s['bytes']))}  complete: {', '.join(s['complete'])}")
        for site, runs in s["in_flight"].items():
            for r in runs:
                print(f"    in flight to {site}: run {r['run']} by {r['holder']}, {r['age_s']:.0f} s")
        for le in s["leases"]:
            print(f"    lease at {le['site']} by {le['holder']} ({le['expires_in_s']:.0f} s left)")
    return 0
