"""``storecomp info``: what this machine can do, and which path data takes.

The JSON document (``--json``) is stable; its schema is in docs/info.md.
Fields are only ever added, never renamed, within one ``schema`` version.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from .. import __version__
from ..bench import fio_info
from ..config import IOOptions
from ..errors import StorecompError
from ..io import cuda, io_uring_status, paths
from ..optional import INSTALL, install_hint

SCHEMA = "storecomp.info/1"


def gather(path: str | None = None, options: IOOptions | None = None) -> dict[str, Any]:
    """The info document as a dict (see docs/info.md)."""
    opts = options or IOOptions.load()
    ring = io_uring_status()
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "storecomp": {"version": __version__, "native": {"liburing": ring["compiled"]}},
        "python": platform.python_version(),
        "platform": {"system": platform.system(), "kernel": platform.release(), "machine": platform.machine()},
        "cpus": os.cpu_count() or 1,
        "packages": {
            name: cuda.package_version(name)
            for name in ("numpy", "torch", "kvikio-cu12", "kvikio-cu13", "cupy-cuda12x", "cupy-cuda13x")
        },
        "io_uring": ring,
        "engine": _engine_info(opts),
        "path": _path_info(Path(path), opts.align) if path else None,
        "cuda": {"driver": cuda.driver_loaded(), "devices": cuda.devices()},
        "gds": dict(cuda.gds_status()),
        "io_paths": _io_paths(opts),
        "fio": fio_info(),
        "optional": {module: cuda.package_version(dist) for module, (dist, _extra) in INSTALL.items()},
        "page_cache": _page_cache_info(Path(path) if path else None, opts),
        "encryption": _encryption_info(),
    }
    doc["advice"] = advice(doc)
    return doc


def _encryption_info() -> dict[str, Any]:
    """Who runs encrypted stores' AES-GCM (storecomp.crypto.backend_info), or the setting's error."""
    from .. import crypto

    try:
        return dict(crypto.backend_info())
    except StorecompError as e:
        return {"backend": None, "reason": str(e), "openssl": ""}


def _engine_info(opts: IOOptions) -> dict[str, Any]:
    from ..io import Engine

    info: dict[str, Any] = {
        "requested": opts.engine,
        "queue_depth": opts.queue_depth,
        "threads": opts.threads,
        "direct": opts.direct,
        "io_path": opts.io_path,
    }
    try:
        with Engine(opts) as eng:
            info["backend"] = eng.backend
            info["reason"] = eng.backend_reason
    except StorecompError as e:
        info["backend"] = None
        info["reason"] = str(e)
    return info


def _page_cache_info(path: Path | None, opts: IOOptions) -> dict[str, Any]:
    """Memory the page-cache tier may use and, for PATH (a file, or every file below a directory), the tier
    a reader of local data would choose now, and why."""
    from ..io import PageCachePolicy, memory_info
    from ..io.tier import BUDGET_FRACTION, pressure_floor

    mem = memory_info()
    out: dict[str, Any] = {
        "mem_total_bytes": mem.total,
        "mem_available_bytes": mem.available,
        "cgroup_limit_bytes": mem.cgroup_limit,
        "budget_bytes": int(mem.available * BUDGET_FRACTION),
        "pressure_floor_bytes": pressure_floor(mem),
        "direct": opts.direct,
        "mapped": opts.mapped,
        "choice": None,
    }
    if path is not None and path.exists():
        files = [str(path)] if path.is_file() else [str(p) for p in sorted(path.rglob("*")) if p.is_file()]
        out["choice"] = PageCachePolicy(opts.direct, mapped=opts.mapped).choose(files).as_dict()
    return out


def _io_paths(opts: IOOptions) -> dict[str, Any]:
    out: dict[str, Any] = {"host": paths.choose(opts.io_path, "cpu")}
    if not cuda.device_count():
        out["cuda"] = None
        out["cuda_reason"] = "no CUDA device"
        return out
    try:
        out["cuda"] = paths.choose(opts.io_path, "cuda")
        out["cuda_reason"] = cuda.gds_status()["reason"]
    except StorecompError as e:
        out["cuda"] = None
        out["cuda_reason"] = str(e)
    return out


def _mount_of(path: Path) -> tuple[str, str]:
    """(mount point, file system type) holding ``path``, from /proc/self/mountinfo."""
    best = ("/", "unknown")
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mount = fields[4].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[0]):
            best = (mount, right.split()[0])
    return best


def _path_info(path: Path, align: int) -> dict[str, Any]:
    info: dict[str, Any] = {"path": str(path), "exists": path.exists()}
    if not path.exists():
        info["o_direct"] = {"supported": None, "alignment": None, "reason": "path does not exist"}
        return info
    mount, fstype = _mount_of(path)
    info["mount"] = mount
    info["filesystem"] = fstype
    st = os.statvfs(path if path.is_dir() else path.parent)
    info["free_bytes"] = st.f_bavail * st.f_frsize
    info["o_direct"] = probe_direct(path, align)
    return info


def probe_direct(path: Path, align: int = 4096) -> dict[str, Any]:
    """Whether O_DIRECT reads work under ``path``, and the smallest alignment that works.

    A directory is probed with a temporary file written in it; a file is
    probed by reading its first block.
    """
    cleanup = None
    if path.is_dir():
        try:
            fd, name = tempfile.mkstemp(prefix=".storecomp-probe-", dir=path)
        except OSError as e:
            return {"supported": None, "alignment": None, "reason": f"cannot write a probe file: {e.strerror}"}
        os.write(fd, b"\0" * 8192)
        os.fsync(fd)
        os.close(fd)
        target, cleanup = name, name
    else:
        target = str(path)
    try:
        try:
            fd = os.open(target, os.O_RDONLY | os.O_DIRECT)
        except OSError as e:
            return {"supported": False, "alignment": None, "reason": f"open(O_DIRECT): {e.strerror}"}
        try:
            buf = mmap.mmap(-1, 8192)
            for a in (512, 1024, 2048, 4096):
                if a > align * 2 and a > 4096:
                    break
                try:
                    os.preadv(fd, [memoryview(buf)[:a]], 0)
                    return {"supported": True, "alignment": a, "reason": f"O_DIRECT reads work at {a}-byte alignment"}
                except OSError:
                    continue
            return {"supported": False, "alignment": None, "reason": "O_DIRECT reads fail at every alignment"}
        finally:
            os.close(fd)
    finally:
        if cleanup:
            os.unlink(cleanup)


def advice(doc: dict[str, Any]) -> list[str]:
    """Plain-language advice from the gathered facts."""
    out = []
    if not doc["io_uring"]["compiled"]:
        out.append("Built without liburing: install liburing-dev and reinstall storecomp for the io_uring engine.")
    elif not doc["io_uring"]["permitted"]:
        out.append(
            f"io_uring is refused here ({doc['io_uring']['reason']}); the thread-pool engine is used. "
            "Allow io_uring_setup in the container's seccomp profile for higher IOPS at lower CPU."
        )
    p = doc.get("path")
    if p and p.get("o_direct", {}).get("supported") is False:
        out.append(
            f"{p['path']} ({p.get('filesystem')}) has no O_DIRECT: reads go through the page cache "
            "(storecomp falls back automatically)."
        )
    if doc["cuda"]["devices"] and not doc["gds"]["available"]:
        out.append(
            "CUDA destinations take the pinned bounce path (" + doc["gds"]["reason"] + "). "
            "That is often as fast as GDS; `storecomp bench --path gds|bounce` measures both."
        )
    if not doc["cuda"]["devices"]:
        out.append("No CUDA device: every read lands in host memory (CPU is a first-class device).")
    if doc.get("fio") and not doc["fio"]["path"]:
        out.append("fio not found: `storecomp bench` reports the storage limit as skipped (apt-get install -y fio).")
    return out


def render(doc: dict[str, Any]) -> str:
    """The human-readable report."""
    eng = doc["engine"]
    lines = [
        f"storecomp {doc['storecomp']['version']}  python {doc['python']}  "
        f"{doc['platform']['system']} {doc['platform']['kernel']} {doc['platform']['machine']}  cpus {doc['cpus']}",
        "packages:     " + ", ".join(f"{k} {v}" for k, v in doc["packages"].items() if v),
        f"native:       liburing {'yes' if doc['storecomp']['native']['liburing'] else 'no'}",
        f"io_uring:     {'permitted' if doc['io_uring']['permitted'] else 'not permitted'} ({doc['io_uring']['reason']})",
        f"engine:       {eng['backend']} (queue depth {eng['queue_depth']}, threads {eng['threads']}, "
        f"direct {eng['direct']}, io_path {eng['io_path']})",
    ]
    p = doc["path"]
    if p:
        od = p["o_direct"]
        lines.append(
            f"path:         {p['path']}"
            + (f" on {p['mount']} ({p['filesystem']}), {p['free_bytes'] / 2**30:.1f} GiB free" if p["exists"] else "")
        )
        lines.append(f"O_DIRECT:     {od['reason']}")
    devs = doc["cuda"]["devices"]
    lines.append(
        "CUDA:         "
        + (", ".join(f"{d['index']}: {d['name']} ({d['memory_bytes'] / 2**30:.0f} GiB)" for d in devs) or "no device")
    )
    lines.append(f"GDS:          {'available' if doc['gds']['available'] else 'unavailable'} ({doc['gds']['reason']})")
    io = doc["io_paths"]
    lines.append(f"paths:        host memory -> {io['host']}; CUDA memory -> {io['cuda'] or 'n/a'} ({io['cuda_reason']})")
    fio = doc["fio"]
    lines.append(f"fio:          {fio['version'] or fio['path'] if fio['path'] else 'not found (apt-get install -y fio)'}")
    have = [f"{m} {v}" for m, v in doc["optional"].items() if v]
    lines.append("optional:     " + (", ".join(have) or "none installed"))
    for m, v in doc["optional"].items():
        if not v:
            lines.append(f"  missing:    {m} ({install_hint(m)})")
    pc = doc["page_cache"]
    lines.append(
        f"page cache:   {pc['mem_available_bytes'] / 2**30:.1f} of {pc['mem_total_bytes'] / 2**30:.1f} GiB available, "
        f"tier budget {pc['budget_bytes'] / 2**30:.1f} GiB, direct {pc['direct']}, mapped {pc['mapped']}"
    )
    if pc["choice"]:
        c = pc["choice"]
        lines.append(f"tier:         {c['tier']} ({c['read_path']} reads) for {p['path'] if p else 'PATH'}: {c['reason']}")
    for a in doc["advice"]:
        lines.append(f"advice:       {a}")
    return "\n".join(lines)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("info", help="versions, engine, io_uring, O_DIRECT on PATH, CUDA/GDS, chosen paths")
    p.add_argument("path", nargs="?", help="a file or directory to probe for O_DIRECT")
    p.add_argument("--json", action="store_true", help="print the stable JSON document (docs/info.md)")
    p.set_defaults(func=main)


def main(args: Any) -> int:
    import json

    doc = gather(args.path)
    if args.json:
        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print(render(doc))
    return 0
