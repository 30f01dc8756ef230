"""fio, the storage limit storecomp is compared with, run in the same process tree."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from ._common import Window, background_cores, run_child


def fio_path() -> str | None:
    return shutil.which("fio")


def skip_reason(enabled: bool) -> str | None:
    """Why a suite measures no fio limit (with the install hint), or None when fio runs."""
    if not enabled:
        return "fio disabled (--no-fio)"
    if fio_path() is None:
        return "fio not found on PATH (Debian/Ubuntu: apt-get install -y fio)"
    return None


def fio_version() -> str | None:
    exe = fio_path()
    if exe is None:
        return None
    try:
        return subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def fio_read(
    path: str, rw: str, block_bytes: int, iodepth: int, duration_s: float, *, buffered: bool = False, jobs: int = 1
) -> dict[str, Any]:
    """One time-based fio read job on ``path``: O_DIRECT, io_uring; or with
    ``buffered``, ``jobs`` psync jobs through the page cache (``--invalidate=0``:
    a cached file stays cached), the page-cache limit.

    Returns figures like :meth:`storecomp.bench._common.Run.figures` plus the
    command line; raises RuntimeError with fio's message when fio fails.
    """
    exe = fio_path()
    if exe is None:
        raise RuntimeError("fio not found on PATH")
    cmd = [
        exe,
        "--name=storecomp-limit",
        f"--filename={path}",
        "--readonly",
        *(
            ["--direct=0", "--ioengine=psync", "--invalidate=0", f"--numjobs={jobs}", "--group_reporting"]
            if buffered
            else ["--direct=1", "--ioengine=io_uring", f"--iodepth={iodepth}"]
        ),
        f"--bs={block_bytes}",
        f"--rw={rw}",
        "--time_based",
        f"--runtime={max(1, round(duration_s * 1000))}ms",
        "--norandommap",
        "--randrepeat=0",
        "--output-format=json",
    ]
    job, cpu_s, background = _run_job(cmd, duration_s + 120)
    read = job["read"]
    seconds = read["runtime"] / 1000.0
    gb = read["io_bytes"] / 1e9
    return {
        "gbps": read["bw_bytes"] / 1e9,
        "iops": read["iops"],
        "cpu_s_per_gb": cpu_s / gb if gb > 0 else 0.0,
        "bytes": int(read["io_bytes"]),
        "seconds": seconds,
        "background_cores": background,
        "command": " ".join(cmd[1:]),
    }


def fio_write(path: str, block_bytes: int, iodepth: int, size_bytes: int) -> dict[str, Any]:
    """One sequential O_DIRECT write job of ``size_bytes`` to ``path`` (io_uring, fsync at the end).

    Returns the same figures as :func:`fio_read`; raises RuntimeError with fio's message when fio fails.
    """
    exe = fio_path()
    if exe is None:
        raise RuntimeError("fio not found on PATH")
    cmd = [
        exe,
        "--name=storecomp-limit-write",
        f"--filename={path}",
        "--direct=1",
        "--ioengine=io_uring",
        f"--iodepth={iodepth}",
        f"--bs={block_bytes}",
        "--rw=write",
        f"--size={size_bytes}",
        "--end_fsync=1",
        "--output-format=json",
    ]
    job, cpu_s, background = _run_job(cmd, 600)
    write = job["write"]
    gb = write["io_bytes"] / 1e9
    seconds = job["job_runtime"] / 1000.0  # includes the final fsync
    return {
        "gbps": gb / seconds if seconds > 0 else 0.0,
        "iops": write["iops"],
        "cpu_s_per_gb": cpu_s / gb if gb > 0 else 0.0,
        "bytes": int(write["io_bytes"]),
        "seconds": seconds,
        "background_cores": background,
        "command": " ".join(cmd[1:]),
    }


def _run_job(cmd: list[str], timeout_s: float) -> tuple[dict[str, Any], float, float | None]:
    """Run one fio job: (its JSON job record, CPU seconds it used, background cores busy meanwhile).

    Every failure (fio's exit status, a job error, a hang past ``timeout_s``,
    output that is not fio's JSON) is RuntimeError with fio's message.
    """
    window = Window()
    proc = run_child(cmd, "fio", timeout_s)
    wall, _own, busy = window.close()
    try:
        job = json.loads(proc.stdout[proc.stdout.find("{") :])["jobs"][0]  # fio may print notes before the JSON
        if job.get("error"):
            raise RuntimeError(f"fio job error {job['error']}")
        cpu_s = (job["usr_cpu"] + job["sys_cpu"]) / 100.0 * job["job_runtime"] / 1000.0
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RuntimeError(f"fio printed no readable JSON ({e!r}): {proc.stdout.strip()[:200]}") from None
    return job, cpu_s, background_cores(busy, cpu_s, wall)
