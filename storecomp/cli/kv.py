"""``storecomp kv stats | ls | verify | gc URL``: the shared KV-cache tier, for its operators.

``URL`` is the shared store as given to ``KVCacheStore(shared=...)`` (an
``s3://bucket/prefix``, a directory, an ``sc://`` mount path); ``--prefix``
is its ``shared_prefix`` (default ``kvcache``). Chunks are found by name
under ``URL/prefix``, one namespace per model configuration (see
:mod:`storecomp.kvcache.maintenance` for the GC's safety rules).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from typing import Any

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def size(text: str) -> int:
    """``"500M"``, ``"2GiB"``, ``"1024"`` -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 500M, 20G, 1T)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def seconds(text: str) -> float:
    """A finite number of seconds >= 0 (``nan``, ``inf`` and negatives are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text!r}")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("kv", help="the shared KV-cache tier: stats, ls, verify, gc")
    kv = p.add_subparsers(dest="kv_cmd", metavar="ACTION", required=True)

    def common(q: Any) -> None:
        q.add_argument("url", help="the shared store (s3://bucket/prefix, a directory, sc://mount/path)")
        q.add_argument("--prefix", default="kvcache", help="the KV store's shared_prefix (default: kvcache)")
        q.add_argument("--json", action="store_true")

    q = kv.add_parser("stats", help="chunks, bytes and ages per namespace (model configuration)")
    common(q)
    q.set_defaults(func=main)
    q = kv.add_parser("ls", help="one line per chunk: namespace, key, size, age")
    common(q)
    q.set_defaults(func=main)
    q = kv.add_parser("verify", help="read every chunk and check its header and layer checksums")
    common(q)
    q.add_argument("--delete", action="store_true", help="delete chunks that fail (they would shadow good ones)")
    q.set_defaults(func=main)
    q = kv.add_parser("gc", help="delete chunks past a TTL or over a byte budget, oldest first")
    common(q)
    q.add_argument("--max-bytes", type=size, default=None, metavar="SIZE", help="keep at most this much (e.g. 500G)")
    q.add_argument("--ttl", type=seconds, default=None, metavar="SECONDS", help="delete chunks written longer ago than this")
    q.add_argument(
        "--grace", type=seconds, default=3600.0, metavar="SECONDS", help="never delete a chunk younger than this (default 3600)"
    )
    q.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    q.set_defaults(func=main)


def main(args: Any) -> int:
    from ..errors import InvalidArgumentError
    from ..kvcache import maintenance
    from ..store import Namespace

    with Namespace() as ns:
        store, key = ns.resolve(args.url)
        prefix = "/".join(p for p in (key.strip("/"), args.prefix.strip("/")) if p)
        if args.kv_cmd == "stats":
            per_ns = maintenance.stats(store, prefix)
            doc = {
                "url": args.url,
                "prefix": prefix,
                "chunks": sum(int(s["chunks"]) for s in per_ns.values()),
                "bytes": sum(int(s["bytes"]) for s in per_ns.values()),
                "namespaces": per_ns,
            }
            if args.json:
                print(json.dumps(doc, indent=2))
            else:
                for name, s in sorted(per_ns.items()):
                    print(
                        f"{name or '.'}  {int(s['chunks'])} chunks  {int(s['bytes'])} bytes  "
                        f"oldest {s['oldest_age_s']:.0f} s  newest {s['newest_age_s']:.0f} s"
                    )
                print(f"total  {doc['chunks']} chunks  {doc['bytes']} bytes  under {store.url}/{prefix}")
            return 0
        if args.kv_cmd == "ls":
            now = time.time()
            for c in maintenance.chunks(store, prefix):
                age = None if c.mtime is None else round(now - c.mtime, 1)
                if args.json:
                    print(
                        json.dumps({"namespace": c.namespace, "key": c.key, "size": c.size, "age_s": age, "object": c.object_key})
                    )
                else:
                    print(f"{c.namespace or '.'}  {c.key}  {c.size:>12}  {'-' if age is None else f'{age:.0f} s'}")
            return 0
        if args.kv_cmd == "verify":
            report = maintenance.verify(store, prefix, delete_bad=args.delete)
            if args.json:
                doc = {"good": report.good, "sealed": report.sealed, "vanished": report.vanished, "deleted": report.deleted}
                doc["bad"] = [{"object": k, "error": e} for k, e in report.bad]
                print(json.dumps(doc, indent=2))
            else:
                for k, e in report.bad:
                    print(f"BAD  {k}: {e}")
                print(
                    f"{report.good} good, {len(report.bad)} bad{f' ({report.deleted} deleted)' if args.delete else ''}, "
                    f"{report.sealed} sealed (encrypted: not checked), {report.vanished} vanished while checking"
                )
            return 1 if report.bad else 0
        if args.max_bytes is None and args.ttl is None:
            raise InvalidArgumentError("kv gc: give --max-bytes and/or --ttl")
        gc = maintenance.collect(
            store, prefix, max_bytes=args.max_bytes, ttl_s=args.ttl, grace_s=args.grace, dry_run=args.dry_run
        )
        doc = {
            "chunks": gc.chunks,
            "bytes": gc.bytes,
            "deleted": gc.deleted,
            "deleted_bytes": gc.deleted_bytes,
            "kept_young": gc.kept_young,
            "dry_run": gc.dry_run,
        }
        if args.json:
            print(json.dumps(doc | {"victims": gc.victims}, indent=2))
        else:
            verb = "would delete" if gc.dry_run else "deleted"
            print(
                f"{verb} {gc.deleted} of {gc.chunks} chunks ({gc.deleted_bytes} of {gc.bytes} bytes); "
                f"{gc.kept_young} kept inside the {args.grace:g} s grace period"
            )
        return 0
