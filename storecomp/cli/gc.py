"""``storecomp gc URL``: remove what failed writers left behind in a store.

* S3-compatible stores: unfinished multipart uploads (a client killed with
  ``kill -9`` mid-put, a lost node) older than ``--older-than`` seconds are
  aborted, as a lifecycle rule's AbortIncompleteMultipartUpload would. Their
  parts are invisible but hold storage until then. A resumable upload of the
  copy engine (``storecomp place``) is as old as its marker, which the run that
  owns it renews every minute: it is kept while a run resumes it.
* Local directories: temp files (``.sc-tmp-*``) of crashed writers older than
  ``--older-than``.

Younger leftovers may belong to writers still running and are kept.
Content-addressed garbage (blobs no snapshot names) is the repository GC's
(:meth:`storecomp.store.Repository.gc`); the shared KV tier's is ``storecomp kv gc``.
"""

from __future__ import annotations

import json
import time
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("gc", help="abort stale multipart uploads (S3) and remove stale temp files (local) under a store URL")
    p.add_argument("url", help="a store URL: s3://bucket/prefix, a local directory or file:///dir")
    p.add_argument(
        "--older-than",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="only leftovers older than this (default 86400: writers still running are younger)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main)


def main(args: Any) -> int:
    from ..errors import InvalidArgumentError
    from ..store import LocalStore, open_store

    if args.older_than < 0:
        raise InvalidArgumentError(f"--older-than must be >= 0 seconds, got {args.older_than}")
    if str(args.url).startswith("sc://"):
        raise InvalidArgumentError(f"{args.url}: gc takes a store URL (s3://..., a directory), not an sc:// mount path")
    with open_store(args.url) as store:
        doc: dict[str, Any] = {"url": store.url, "older_than_s": args.older_than, "dry_run": args.dry_run}
        if isinstance(store, LocalStore):
            if args.dry_run:
                raise InvalidArgumentError("--dry-run is for S3 stores (local temp files are removed or kept, not listed)")
            doc["temp_files_removed"] = store.sweep_temp(args.older_than)
        elif hasattr(store, "sweep_uploads"):
            swept = store.sweep_uploads(args.older_than, dry_run=args.dry_run)
            now = time.time()
            doc["uploads_aborted"] = [{"key": k, "upload_id": u, "age_s": round(now - t, 1)} for k, u, t in swept]
        else:
            raise InvalidArgumentError(f"{store.url}: nothing to collect for this kind of store")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif "temp_files_removed" in doc:
        print(f"removed {doc['temp_files_removed']} temp files older than {args.older_than:g} s under {doc['url']}")
    else:
        verb = "would abort" if args.dry_run else "aborted"
        for u in doc["uploads_aborted"]:
            print(f"{verb} upload of {u['key']} ({u['age_s']:.0f} s old)")
        n = len(doc["uploads_aborted"])
        print(f"{verb} {n} unfinished multipart uploads older than {args.older_than:g} s under {doc['url']}")
    return 0
