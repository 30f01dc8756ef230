"""Pieces shared by the benchmarks: the data file, page-cache eviction, CPU time."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ChildProcessFailedError
from . import DATA_FILE_NAME

_WRITE_CHUNK = 64 << 20
_STDERR_TAIL = 2000  # characters of a failed child's stderr kept in the error
MIB = 1 << 20


def data_file(directory: str, size_bytes: int, progress: Callable[[str], None] | None = None) -> str:
    """Path of a ``size_bytes`` file of random-looking bytes in ``directory``.

    The file is named :data:`DATA_FILE_NAME`. An existing file of that name
    and size is reused; otherwise it is (re)written
    with large buffered writes, fsynced, and renamed into place (a partly
    written file is never reused). ``size_bytes`` must be a positive
    multiple of 1 MiB (O_DIRECT reads of the whole file stay aligned).
    """
    if size_bytes <= 0 or size_bytes % MIB:
        raise ValueError(f"size_bytes={size_bytes}: expected a positive multiple of 1 MiB")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, DATA_FILE_NAME)
    try:
        if os.stat(path).st_size == size_bytes:
            return path
    except FileNotFoundError:
        pass
    if progress:
        progress(f"writing {size_bytes / 2**30:.2f} GiB data file {path}")
    block = np.random.default_rng(0x5C).integers(0, 256, min(_WRITE_CHUNK, size_bytes), np.uint8)
    view = block.data
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written, i = 0, 0
        while written < size_bytes:
            # Each chunk is the block rotated by a different odd amount, so no
            # two 4 KiB blocks of the file are alike.
            rot = (i * 4099) % len(block)
            n = min(len(block), size_bytes - written)
            piece = (view[rot:].tobytes() + view[:rot].tobytes())[:n] if rot else view[:n]
            done = 0
            while done < n:
                done += os.pwrite(fd, memoryview(piece)[done:], written + done)
            written += n
            i += 1
            if progress and (written * 20 // size_bytes) != ((written - n) * 20 // size_bytes):
                progress(f"writing data file: {100 * written // size_bytes}%")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    return path


def evict(path: str) -> bool:
    """Drop ``path``'s pages from the page cache (``posix_fadvise`` DONTNEED,
    after fsync so that every page is clean). Needs no root and leaves every
    other file's pages alone, unlike ``/proc/sys/vm/drop_caches``: a
    benchmark here does not disturb whatever else runs on the machine. True
    when it worked."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def evict_tree(path: str | os.PathLike[str]) -> None:
    """:func:`evict` a file, or every file below a directory."""
    if os.path.isdir(path):
        for root, _dirs, files in os.walk(path):
            for name in files:
                evict(os.path.join(root, name))
    else:
        evict(os.fspath(path))


def cache_file(path: str) -> None:
    """Read ``path`` once through the page cache so that later reads hit it."""
    buf = bytearray(16 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


class Window:
    """Wall time, this process's CPU time (all threads) and the whole machine's
    busy CPU time over a measured window."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = _cpu()
        self._busy0 = machine_busy_seconds()

    def close(self) -> tuple[float, float, float | None]:
        """(wall seconds, own CPU seconds, machine busy CPU seconds or None) since creation."""
        busy1 = machine_busy_seconds()
        busy = None if busy1 is None or self._busy0 is None else busy1 - self._busy0
        return time.perf_counter() - self._t0, _cpu() - self._cpu0, busy


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_seconds() -> float | None:
    """CPU-seconds all CPUs spent busy since boot (/proc/stat, without idle,
    iowait and steal); None where /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def background_cores(busy_seconds: float | None, own_cpu_seconds: float, wall_seconds: float) -> float | None:
    """Average cores kept busy by everything else on the machine during a window."""
    if busy_seconds is None or wall_seconds <= 0:
        return None
    return max(0.0, (busy_seconds - own_cpu_seconds) / wall_seconds)


@dataclass
class Run:
    """One measurement: bytes moved, requests, wall seconds, CPU seconds."""

    nbytes: int
    requests: int
    seconds: float
    cpu_seconds: float
    busy_seconds: float | None = None

    def figures(self) -> dict[str, Any]:
        gb = self.nbytes / 1e9
        return {
            "gbps": gb / self.seconds if self.seconds > 0 else 0.0,
            "iops": self.requests / self.seconds if self.seconds > 0 else 0.0,
            "cpu_s_per_gb": self.cpu_seconds / gb if gb > 0 else 0.0,
            "bytes": self.nbytes,
            "seconds": self.seconds,
            "background_cores": background_cores(self.busy_seconds, self.cpu_seconds, self.seconds),
        }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of gbps, iops and cpu_s_per_gb over runs, with the runs themselves."""
    out: dict[str, Any] = {}
    for key in ("gbps", "iops", "cpu_s_per_gb"):
        out[key] = statistics.median(r[key] for r in runs)
    background = [r["background_cores"] for r in runs if r.get("background_cores") is not None]
    out["background_cores_max"] = max(background) if background else None
    out["runs"] = runs
    return out


def run_child(cmd: list[str], what: str, timeout_s: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` to completion, capturing text output; ``what`` names it in errors.

    A non-zero exit, a death by signal or a hang past ``timeout_s`` is
    ChildProcessFailedError carrying the exit status and the tail of the
    child's stderr: a benchmark never swallows why its helper died.
    """
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kw)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise ChildProcessFailedError(f"{what} did not finish within {timeout_s:.0f} s{_tail(err)}") from None
    except OSError as e:
        raise ChildProcessFailedError(f"{what} could not start: {e}") from None
    if proc.returncode != 0:
        status = f"was killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited {proc.returncode}"
        raise ChildProcessFailedError(f"{what} {status}{_tail(proc.stderr)}")
    return proc


def _tail(stderr: str) -> str:
    text = stderr.strip()
    if not text:
        return " (no stderr)"
    cut = text[-_STDERR_TAIL:]
    return f"; stderr{' (tail)' if len(text) > len(cut) else ''}:\n{cut}"
