"""The measurement every peer run shares; stdlib + numpy only (both Pythons import it).

A run iterates a loader for ``duration`` seconds (or ``max_samples``,
when given), sleeps
``step_s`` after each batch (a simulated training step that needs no host
CPU, like a GPU step) and reports:

* ``samples_per_s``: samples delivered per wall second;
* ``cpu_s_per_sample`` / ``cpu_s_per_gb``: CPU-seconds of the whole process
  tree (the loader's workers included; /proc) per sample and per 1e9 bytes;
* ``peak_rss_mib`` / ``peak_pss_mib``: the largest sum over the process tree
  of resident (RSS) and proportional (PSS: shared pages split between the
  processes sharing them) memory, sampled every 0.25 s;
* ``data_wait_fraction``: time blocked in ``next()`` over wall time, also
  after the first 10 batches.

The first batch (worker start-up, index loading) is not in the window. When
a pass over the data ends inside the window, ``on_pass_end`` runs (the
driver evicts the data files again, so the next pass starts cold too) and a
new pass starts; its start-up is in the window, as in a multi-epoch run
(the eviction itself is not: it is taken out of the wall and wait times).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

SAMPLE_BYTES = 64 << 10
BATCH = 64
CHUNK = 256  # samples generated at a time; every format holds a multiple of this
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- data


def sample_chunks(n: int, sample_bytes: int = SAMPLE_BYTES, seed: int = 0x5C) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The synthetic data set, the same in every format: (uint8 (k, sample_bytes), int64 (k,)) chunks.

    Sample ``i`` is random bytes (a generator seeded by its chunk) and label ``i % 1000``.
    """
    for start in range(0, n, CHUNK):
        yield make_chunk(start, min(CHUNK, n - start), sample_bytes, seed)


def make_chunk(start: int, k: int, sample_bytes: int = SAMPLE_BYTES, seed: int = 0x5C) -> tuple[np.ndarray, np.ndarray]:
    """Samples ``start .. start + k`` (``start`` a multiple of CHUNK) of :func:`sample_chunks`."""
    rng = np.random.default_rng((seed, start))
    x = np.frombuffer(rng.bytes(k * sample_bytes), np.uint8).reshape(k, sample_bytes)
    return x, np.arange(start, start + k, dtype=np.int64) % 1000


def data_files(directory: str) -> list[str]:
    """Every regular file under ``directory``."""
    out = []
    for root, _dirs, files in os.walk(directory):
        out.extend(os.path.join(root, f) for f in files)
    return sorted(out)


def evict(directory: str) -> int:
    """Drop every file under ``directory`` from the page cache (fsync, then
    posix_fadvise DONTNEED: no root needed, other files' pages stay). Returns
    the number of files evicted."""
    done = 0
    for path in data_files(directory):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            done += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return done


# ---------------------------------------------------------------- process tree


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants alive now."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime, stime (fields 14-15; index 11-12 after the name)
    return (int(fields[11]) + int(fields[12])) / _TICK


def _proc_mem(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) << 10
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) << 10
    except OSError:
        pass
    return rss, pss


class TreeMonitor:
    """CPU-seconds and peak memory of this process and its descendants.

    Each process's own utime + stime, as last sampled: a process that
    exits during the window keeps what it had at the last sample (at most
    ``interval`` of its CPU is missed); one started during the window counts
    whole (its start-up is part of the run).
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.pid = os.getpid()
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._cpu0 = 0.0

    def _sample(self) -> None:
        rss = pss = 0
        for p in tree(self.pid):
            r, s = _proc_mem(p)
            rss += r
            pss += s
            self._cpu[p] = _proc_cpu(p)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._sample()
        self._cpu0 = sum(self._cpu.values())
        self._thread.start()

    def stop(self) -> float:
        """Stop sampling; CPU-seconds spent by the tree since :meth:`start`."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self._cpu.values()) - self._cpu0


# ---------------------------------------------------------------- the run


def measure(
    epochs: Callable[[], Iterable[Any]],
    count: Callable[[Any], int],
    *,
    duration: float,
    max_samples: int = 0,
    step_s: float = 0.0,
    sample_bytes: int = SAMPLE_BYTES,
    on_pass_end: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Iterate ``epochs()`` (a fresh iterable per pass) until ``duration``
    seconds or ``max_samples`` samples (0: no cap); ``count(batch)`` is the
    batch's sample count. Returns the figures described in the module docstring."""
    mon = TreeMonitor()
    it = iter(epochs())
    t_first = time.perf_counter()
    first = next(it)  # start-up: workers, index, first reads
    startup_s = time.perf_counter() - t_first
    samples = count(first)  # counts toward one pass, not toward the window
    del first
    delivered = 0
    mon.start()
    t0 = time.perf_counter()
    wait = wait10 = 0.0
    batches = 0
    deadline = t0 + duration
    passes = 1
    pass_end_s = 0.0
    cap = max_samples or float("inf")
    while samples < cap and time.perf_counter() < deadline:
        if step_s:
            time.sleep(step_s)
        t1 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            if on_pass_end is not None:
                t_evict = time.perf_counter()
                on_pass_end()
                between = time.perf_counter() - t_evict
                t1 += between  # eviction is the benchmark's own work: not a data wait
                pass_end_s += between
            passes += 1
            it = iter(epochs())
            batch = next(it)
        w = time.perf_counter() - t1
        wait += w
        if batches < 10:
            wait10 += w
        n = count(batch)
        del batch
        samples += n
        delivered += n
        batches += 1
    wall = time.perf_counter() - t0 - pass_end_s
    cpu = mon.stop()
    gb = delivered * sample_bytes / 1e9
    after10 = wall - wait10
    return {
        "samples": delivered,
        "batches": batches,
        "seconds": wall,
        "startup_s": startup_s,
        "samples_per_s": delivered / wall if wall > 0 else 0.0,
        "gbps": gb / wall if wall > 0 else 0.0,
        "cpu_s": cpu,
        "cpu_s_per_sample": cpu / delivered if delivered else None,
        "cpu_s_per_gb": cpu / gb if gb else None,
        "cores_used": cpu / wall if wall > 0 else 0.0,
        "peak_rss_mib": mon.peak_rss / 2**20,
        "peak_pss_mib": mon.peak_pss / 2**20,
        "data_wait_s": wait,
        "data_wait_fraction": wait / wall if wall > 0 else 0.0,
        "data_wait_fraction_after_10": (wait - wait10) / after10 if after10 > 0 else 0.0,
        "step_s": step_s,
        "passes": passes,
        "pass_end_s": pass_end_s,
    }
