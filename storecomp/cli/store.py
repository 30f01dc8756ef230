"""``storecomp ls | stat | cat | cp | du URL`` and ``storecomp mounts``.

URLs are anything :class:`storecomp.store.Namespace` resolves: ``sc://mount/path``,
plain paths, ``file://``, ``s3://bucket/key`` and fsspec URLs. Credentials
come from the usual places (``AWS_*`` variables for S3) and are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import ObjectInfo, Store

#: Bytes per read when streaming an object (cat, cp).
STREAM_BYTES = 8 << 20


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ls", help="list one level under a URL: objects and folders (sc://mount/path, path, file://, s3://...)")
    p.add_argument("url")
    p.add_argument("-r", "--recursive", action="store_true", help="list every object below, not just children")
    p.add_argument("-l", "--long", action="store_true", help="show size, modification time and version")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=main, store_cmd="ls")

    p = sub.add_parser("stat", help="size, version and modification time of one object")
    p.add_argument("url")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main, store_cmd="stat")

    p = sub.add_parser("cat", help="write an object's bytes to stdout")
    p.add_argument("url")
    p.add_argument("--offset", type=int, default=0, help="first byte (default 0)")
    p.add_argument("--length", type=int, default=None, help="bytes to write (default: to the end)")
    p.set_defaults(func=main, store_cmd="cat")

    p = sub.add_parser("cp", help="copy an object (or, with -r, every object under a prefix) to another URL")
    p.add_argument("src")
    p.add_argument("dst", help="destination URL; ending in '/' copies into it under the source's name")
    p.add_argument("-r", "--recursive", action="store_true")
    p.add_argument("-j", "--workers", type=int, default=8, help="objects copied at once (default 8)")
    p.add_argument("--max-rate", type=_rate, default=None, metavar="RATE", help="bandwidth cap, bytes/s (suffixes K, M, G: 50M)")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=main, store_cmd="cp")

    p = sub.add_parser("du", help="bytes and objects under a URL, per child (or in total with -s)")
    p.add_argument("url")
    p.add_argument("-s", "--summarize", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main, store_cmd="du")

    p = sub.add_parser("mounts", help="the sc:// mount table (STORECOMP_CONFIG, STORECOMP_MOUNTS, STORECOMP_MOUNT_*)")
    p.add_argument("--probe", action="store_true", help="measure each replica's latency, health and write/read bandwidth now")
    p.add_argument(
        "--probe-bytes",
        type=int,
        default=4 << 20,
        help="bytes of the object --probe writes, reads back and removes (default 4 MiB)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=main, store_cmd="mounts")


def main(args: Any) -> int:
    from ..store import Namespace

    with Namespace() as ns:
        cmd = {"ls": _ls, "stat": _stat, "cat": _cat, "cp": _cp, "du": _du, "mounts": _mounts}[args.store_cmd]
        try:
            return cmd(ns, args)
        except BrokenPipeError:  # `storecomp cat ... | head`
            return 0


# ---------------------------------------------------------------- helpers


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(mtime: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime)) if mtime is not None else "-"


def _below(store: Store, key: str) -> tuple[str, Iterator[ObjectInfo]]:
    """``(prefix, objects)`` under ``key`` seen as a directory (all objects for the root)."""
    prefix = "" if not key else key if key.endswith("/") else key + "/"
    return prefix, store.list(prefix)


def _warn_skipped(url: str, skipped: list[str]) -> None:
    """One line on stderr naming entries a listing could not read (permission, /proc links)."""
    if skipped:
        names = ", ".join(k.rstrip("/").rsplit("/", 1)[-1] for k in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(f"storecomp: warning: {url}: skipped {len(skipped)} unreadable entries ({names})", file=sys.stderr)


def _join(url: str, rel: str) -> str:
    return url.rstrip("/") + "/" + rel


# ---------------------------------------------------------------- commands


def _ls(ns: Any, args: Any) -> int:
    from ..errors import NotFoundError
    from ..store.base import dir_prefix

    store, key = ns.resolve(args.url)
    if key and not key.endswith("/") and store.exists(key):
        rows: list[tuple[str, ObjectInfo | None]] = [(key.rsplit("/", 1)[-1], store.stat(key))]
    elif args.recursive:
        prefix, infos = _below(store, key)
        rows = [(info.key[len(prefix) :], info) for info in infos]
        if not rows and key:
            raise NotFoundError(2, args.url, None, "ls")
    else:  # one level: a delimiter listing, never a walk of the tree below
        prefix = dir_prefix(key)
        level = store.list_dir(prefix)
        rows = [(p[len(prefix) :], None) for p in level.prefixes] + [(o.key[len(prefix) :], o) for o in level.objects]
        rows.sort(key=lambda r: r[0])
        _warn_skipped(args.url, level.skipped)
        if not rows and key and not level.skipped:
            raise NotFoundError(2, args.url, None, "ls")
    for name, obj in rows:
        if args.json:
            doc: dict[str, Any] = {"name": name, "dir": obj is None}
            if obj is not None:
                doc.update(key=obj.key, size=obj.size, version=obj.version, mtime=obj.mtime)
            print(json.dumps(doc))
        elif args.long:
            if obj is None:
                print(f"{'DIR':>12}  {'':19}  {'':16}  {name}")
            else:
                print(f"{obj.size:>12}  {_when(obj.mtime):19}  {obj.version[:16]:16}  {name}")
        else:
            print(name)
    return 0


def _stat(ns: Any, args: Any) -> int:
    store, key = ns.resolve(args.url)
    from ..store.keys import validate_key

    info = store.stat(validate_key(key))
    doc = {"url": args.url, "store": store.url, "key": info.key, "size": info.size, "version": info.version}
    doc["mtime"] = info.mtime
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for k, v in doc.items():
            print(f"{k + ':':9} {_when(v) if k == 'mtime' else v}")
    return 0


def _stream(store: Store, key: str, offset: int, length: int | None) -> Iterator[memoryview]:
    import numpy as np

    info = store.stat(key)
    end = info.size if length is None else min(info.size, offset + length)
    buf = np.empty(min(STREAM_BYTES, max(0, end - offset)), np.uint8)
    pos = offset
    while pos < end:
        n = min(buf.size, end - pos)
        # Every piece of the stream is of the version stat saw (else VersionChangedError).
        got = int(store.read_ranges(key, [pos], [n], buf, [0], version=info.version)[0])
        yield memoryview(buf.data)[:got]
        pos += got


def _cat(ns: Any, args: Any) -> int:
    from ..errors import InvalidArgumentError
    from ..store.keys import validate_key

    if args.offset < 0 or (args.length is not None and args.length < 0):
        raise InvalidArgumentError("--offset and --length must not be negative")
    store, key = ns.resolve(args.url)
    out = sys.stdout.buffer
    for chunk in _stream(store, validate_key(key), args.offset, args.length):
        out.write(chunk)
    out.flush()
    return 0


def _rate(text: str) -> float:
    """``50M`` -> 52428800.0 (bytes/s; suffixes K, M, G, T are powers of 1024)."""
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I").removesuffix("/S")
    try:
        value = float(t[:-1]) * mult[t[-1]] if t and t[-1] in mult else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: bytes/s, e.g. 50M or 1.5G") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"bad rate {text!r}: must be positive")
    return value


def _cp(ns: Any, args: Any) -> int:
    from ..errors import InvalidArgumentError, NotFoundError
    from ..store.keys import validate_key
    from ..store.transfer import CopyItem, copy_objects

    if args.workers <= 0:
        raise InvalidArgumentError(f"--workers must be positive, got {args.workers}")
    src, skey = ns.resolve(args.src)
    dst, dkey = ns.resolve(args.dst)
    into = args.dst.endswith("/") or not dkey
    items: list[CopyItem] = []
    if args.recursive:
        prefix, infos = _below(src, skey)
        base = skey.rstrip("/").rsplit("/", 1)[-1] if into and skey else ""
        for info in list(infos):
            rel = info.key[len(prefix) :]
            target = "/".join(p for p in (dkey.rstrip("/"), base, rel) if p)
            items.append(CopyItem(info.key, validate_key(target), info.size))
        if not items:
            raise NotFoundError(2, args.src, None, "cp")
    else:
        if not skey or skey.endswith("/"):
            raise InvalidArgumentError(f"{args.src}: not an object (use -r to copy a prefix)")
        if into:
            dkey = "/".join(p for p in (dkey.rstrip("/"), skey.rsplit("/", 1)[-1]) if p)
        items.append(CopyItem(skey, validate_key(dkey), src.stat(skey).size))
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    report = copy_objects(
        src, dst, items, workers=args.workers, max_rate=args.max_rate, progress=progress, label=f"cp {args.src}"
    )
    if args.recursive:
        msg = f"copied {report.copied} objects, {_human(report.bytes_copied)}"
        if report.skipped:
            msg += f"; {report.skipped} already there and verified ({_human(report.bytes_skipped)})"
        print(msg + f" in {report.seconds:.1f} s", file=sys.stderr)
    return 0


def _du(ns: Any, args: Any) -> int:
    from ..errors import NotFoundError

    store, key = ns.resolve(args.url)
    if key and not key.endswith("/") and store.exists(key):
        groups = {key.rsplit("/", 1)[-1]: [store.stat(key).size, 1]}
    else:
        prefix, infos = _below(store, key)
        groups = {}
        for info in infos:
            rel = info.key[len(prefix) :]
            name = rel.split("/", 1)[0] + ("/" if "/" in rel else "")
            g = groups.setdefault(name, [0, 0])
            g[0] += info.size
            g[1] += 1
        if not groups and key:
            raise NotFoundError(2, args.url, None, "du")
    total = sum(g[0] for g in groups.values())
    count = sum(g[1] for g in groups.values())
    if args.json:
        doc = {"url": args.url, "bytes": total, "objects": count}
        if not args.summarize:
            doc["children"] = {k: {"bytes": v[0], "objects": v[1]} for k, v in sorted(groups.items())}
        print(json.dumps(doc, indent=2))
        return 0
    if not args.summarize:
        for name, (n, c) in sorted(groups.items()):
            print(f"{n:>14}  {_human(n):>10}  {c:>8}  {name}")
    print(f"{total:>14}  {_human(total):>10}  {count:>8}  total")
    return 0


def _mounts(ns: Any, args: Any) -> int:
    from ..redact import public_url
    from ..store import CachedStore, ReplicatedStore

    rows = []
    for name, m in sorted(ns.mounts.items()):
        primary = m.primary_replica
        doc: dict[str, Any] = {
            "name": name,
            "url": f"sc://{name}",
            "read_only": m.read_only,
            "replicas": [
                {"url": public_url(r.url), "site": r.site, "preference": r.preference, "primary": r is primary}
                for r in m.replicas
            ],
        }
        if m.cache_dir:
            doc["cache"] = {"dir": m.cache_dir, "max_bytes": m.cache_max_bytes, "block_bytes": m.cache_block_bytes}
        if args.probe:
            store = ns.store(name)
            if isinstance(store, CachedStore):
                store = store.inner
            rs = store if isinstance(store, ReplicatedStore) else ReplicatedStore(m, [store])
            rs.probe()
            for rep, h, st in zip(doc["replicas"], rs.health(), rs.stores, strict=True):
                rep.update(healthy=h["healthy"], latency_s=h["latency_s"], error=h["last_error"])
                if h["healthy"] and not m.read_only and args.probe_bytes > 0:  # never write into a read-only mount
                    from ..store.placement import probe_site

                    bw = probe_site(st, args.probe_bytes)
                    rep.update(write_bytes_per_s=round(bw["write_bps"]), read_bytes_per_s=round(bw["read_bps"]))
                    if bw["error"]:
                        rep["error"] = bw["error"]
        rows.append(doc)
    if args.json:
        print(json.dumps({"site": ns.local_site, "mounts": rows}, indent=2))
        return 0
    if not rows:
        print("no mounts (set STORECOMP_MOUNTS or a [mounts] table in STORECOMP_CONFIG; see docs/store.md)")
        return 0
    for doc in rows:
        flags = " (read-only)" if doc["read_only"] else ""
        if "cache" in doc:
            c = doc["cache"]
            flags += f"  cache={c['dir']} ({_human(c['max_bytes'])}"
            flags += f", blocks of {_human(c['block_bytes'])})" if c["block_bytes"] else ", whole objects)"
        print(f"{doc['url']}{flags}")
        for r in doc["replicas"]:
            line = f"  {'*' if r['primary'] else ' '} {r['url']}"
            if r["site"]:
                line += f"  site={r['site']}"
            line += f"  preference={r['preference']}"
            if args.probe:
                line += f"  {'ok' if r['healthy'] else 'DOWN'} {r['latency_s'] * 1e3:.1f} ms"
                if "read_bytes_per_s" in r:
                    line += f"  write {_human(r['write_bytes_per_s'])}/s read {_human(r['read_bytes_per_s'])}/s"
                if r["error"]:
                    line += f"  ({r['error']})"
            print(line)
    return 0
