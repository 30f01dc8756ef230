"""Shared fixtures for the storecomp test suite.

Everything runs on real files in ``tmp_path`` (ext4 here, so O_DIRECT is
real) and on the real native engine; nothing is mocked.

* ``data_file``: a read-only random file (3 MiB + 1234 bytes: not a multiple
  of any alignment, so the last O_DIRECT block is partial).
* ``engine``: an :class:`storecomp.io.Engine` parametrised over backend
  (io_uring, threads) and direct mode (auto, on, off); io_uring cases skip
  where the kernel or a seccomp profile refuses it.
* ``dst_kind`` / ``make_dst``: destinations of every supported kind (numpy,
  torch cpu float32, bytearray, memoryview, ctypes array, a DLPack-only
  object, a staging slot as numpy and as torch), each with a uint8 numpy view
  of its memory for checking.
* ``seaweedfs`` (session): one real SeaweedFS server for every test area
  (:class:`storecomp.testing.seaweedfs.SeaweedFS`: ``url(prefix)``,
  ``make_bucket()``, ``store_options()``, ``env()``, ``stop()`` / ``kill()``
  / ``restart()``), started once (~3 s) and stopped by pid at the end;
  ``running_seaweedfs`` restarts it first when a fault test left it stopped.
* ``gpu`` marker: tests marked ``@pytest.mark.gpu`` skip with a reason when
  no CUDA device is usable.
* Every test runs under a watchdog: a hang dumps all thread stacks and ends
  the run instead of blocking CI forever.
"""

from __future__ import annotations

import ctypes
import faulthandler
import math
import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp import _native
from storecomp.io import Engine, StagingPool

BACKENDS = ("io_uring", "threads")
DIRECT_MODES = ("auto", "on", "off")
DATA_SIZE = (3 << 20) + 1234
WATCHDOG_S = 120

_probe = _native.probe_io_uring()
IO_URING_OK: bool = bool(_native.HAVE_LIBURING and _probe["permitted"])
#: Running under scripts/sanitize.sh with ThreadSanitizer (its runtime preloaded).
UNDER_TSAN: bool = "libtsan" in os.environ.get("LD_PRELOAD", "")
IO_URING_REASON: str = str(_probe["reason"])
needs_io_uring = pytest.mark.skipif(not IO_URING_OK, reason=f"io_uring unavailable: {IO_URING_REASON}")


# ---------------------------------------------------------------- markers, hygiene


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped with a reason when none exists)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    from storecomp.io import cuda

    if cuda.device_count() == 0:
        reason = "no CUDA device: " + ("no CUDA driver (libcuda.so.1)" if not cuda.driver_loaded() else "torch sees 0 devices")
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's STORECOMP_* settings."""
    for key in list(os.environ):
        if key.startswith("STORECOMP_"):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# ---------------------------------------------------------------- files


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def write_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def resident_pages(path: str | os.PathLike[str]) -> int:
    """Pages of ``path`` in the page cache (mincore on a fresh mapping; reads nothing)."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(address, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec)


def drop_cache(path: str | os.PathLike[str]) -> bool:
    """Evict ``path`` from the page cache; True when none of its pages stay cached."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_pages(path) == 0


def warm_cache(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass


@dataclass(frozen=True)
class DataFile:
    path: Path
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, np.uint8)


@pytest.fixture(scope="session")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> DataFile:
    """A read-only random file of DATA_SIZE bytes; tests must not write it."""
    data = random_bytes(DATA_SIZE, seed=1)
    path = write_file(tmp_path_factory.mktemp("data") / "random.bin", data)
    os.chmod(path, 0o444)
    return DataFile(path, data)


@pytest.fixture
def small_file(tmp_path: Path) -> DataFile:
    """A 10,000-byte file (ends inside a 4 KiB block) private to the test."""
    data = random_bytes(10_000, seed=2)
    return DataFile(write_file(tmp_path / "small.bin", data), data)


# ---------------------------------------------------------------- engines


def make_engine(backend: str, direct: str = "auto", **overrides: Any) -> Engine:
    if backend == "io_uring" and not IO_URING_OK:
        pytest.skip(f"io_uring unavailable: {IO_URING_REASON}")
    return Engine(engine=backend, direct=direct, **overrides)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "io_uring" and not IO_URING_OK:
        pytest.skip(f"io_uring unavailable: {IO_URING_REASON}")
    return str(request.param)


@pytest.fixture(params=DIRECT_MODES)
def direct(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine(backend: str, direct: str) -> Iterator[Engine]:
    """An engine for every (backend, direct mode); closed after the test."""
    eng = Engine(engine=backend, direct=direct, threads=4, queue_depth=32)
    assert eng.backend == backend
    yield eng
    eng.close()


# ---------------------------------------------------------------- destinations


class DLPackOnly:
    """Exposes a numpy array through DLPack only (no buffer protocol)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._array.__dlpack_device__()


class NoMemory:
    """Has nothing storecomp could read into."""


@dataclass
class Dest:
    """A destination object and a uint8 numpy view of exactly its memory."""

    kind: str
    obj: Any
    view: np.ndarray
    keep: Any = None  # e.g. the staging pool behind a slot

    @property
    def nbytes(self) -> int:
        return int(self.view.nbytes)

    def fill(self, value: int) -> None:
        self.view[:] = value


DST_KINDS = ("numpy", "torch_f32", "bytearray", "memoryview", "ctypes", "dlpack", "slot_numpy", "slot_torch")


def _build_dst(kind: str, nbytes: int, pools: list[StagingPool]) -> Dest:
    if kind == "numpy":
        a = np.empty(nbytes, np.uint8)
        return Dest(kind, a, a)
    if kind == "torch_f32":
        torch = pytest.importorskip("torch")
        t = torch.empty(math.ceil(nbytes / 4), dtype=torch.float32)
        return Dest(kind, t, t.numpy().view(np.uint8))
    if kind == "bytearray":
        b = bytearray(nbytes)
        return Dest(kind, b, np.frombuffer(b, np.uint8))
    if kind == "memoryview":
        b = bytearray(nbytes)
        return Dest(kind, memoryview(b), np.frombuffer(b, np.uint8))
    if kind == "ctypes":
        c = (ctypes.c_uint8 * nbytes)()
        return Dest(kind, c, np.ctypeslib.as_array(c))
    if kind == "dlpack":
        a = np.empty(nbytes, np.uint8)
        return Dest(kind, DLPackOnly(a), a)
    if kind in ("slot_numpy", "slot_torch"):
        slot_bytes = max(4096, -(-nbytes // 4096) * 4096)
        pool = StagingPool(2 * slot_bytes, slot_bytes, pin=False)
        pools.append(pool)
        slot = pool.acquire()
        if kind == "slot_numpy":
            return Dest(kind, slot.array, slot.array, keep=slot)
        pytest.importorskip("torch")
        return Dest(kind, slot.tensor(), slot.array, keep=slot)
    raise AssertionError(kind)


@pytest.fixture(params=DST_KINDS)
def dst_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_dst() -> Iterator[Callable[[str, int], Dest]]:
    """``make_dst(kind, nbytes)``: a destination of at least ``nbytes`` bytes."""
    pools: list[StagingPool] = []
    yield lambda kind, nbytes: _build_dst(kind, nbytes, pools)
    for pool in pools:
        pool.close()


# ---------------------------------------------------------------- subprocesses


def run_processes(
    ctx: Any,
    target: Callable[..., None],
    args: list[tuple[Any, ...]],
    results: Any,
    n_results: int,
    get_timeout: float = 120,
    join_timeout: float = 60,
) -> list[Any]:
    """Run ``target(*a)`` for each ``a`` of ``args`` in a process of ``ctx``; the ``n_results``
    items the processes put on ``results``, collected before joining (a full queue blocks its
    writer's exit). Every process must exit 0."""
    procs = [ctx.Process(target=target, args=a) for a in args]
    for p in procs:
        p.start()
    out = [results.get(timeout=get_timeout) for _ in range(n_results)]
    for p in procs:
        p.join(join_timeout)
        assert p.exitcode == 0
    return out


def kill_when(proc: subprocess.Popen[Any], ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """SIGKILL ``proc`` once ``ready()`` holds (polled every 20 ms): a kill -9 mid-work. Fails when
    ``proc`` ends first (its output in the message) or ``what`` has not happened within ``timeout``
    seconds; the process is reaped either way."""
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else proc.stderr.read() if proc.stderr else b""
                raise AssertionError(f"the process ended before the kill: {out!r}")
            assert time.monotonic() < deadline, f"{what} did not happen within {timeout:g} s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(30)


def run_python(code: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (same environment); raises on a non-zero exit."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STORECOMP_")}
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from storecomp.testing.seaweedfs import SeaweedFS

    with SeaweedFS.start(tmp_path_factory.mktemp("seaweedfs")) as sw:
        yield sw


@pytest.fixture
def running_seaweedfs(seaweedfs: Any) -> Any:
    """The session server, restarted first if an earlier (fault) test left it stopped."""
    if not seaweedfs.running:
        seaweedfs.restart()
    return seaweedfs


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount_tmpfs(size_bytes, read_only=False)``: a fresh tmpfs (a small disk to fill, or a read-only one).

    Needs root (CI runs as root); elsewhere the test is skipped with the reason.
    Unmounted at teardown, whatever the test left in it.
    """
    mounted: list[Path] = []

    def mount(size_bytes: int, read_only: bool = False) -> Path:
        target = tmp_path / f"tmpfs{len(mounted)}"
        target.mkdir()
        opts = f"size={size_bytes}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def closed_port_with_416() -> int:
    """A closed local port whose number contains "416" (41600-41699): an error
    message naming the URL then holds "416", which once read as HTTP 416.
    Skips the test when every port there is taken."""
    import socket

    for port in range(41699, 41599, -1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.skip("no free port in 41600-41699")


def fill_disk(directory: Path) -> Path:
    """Write a filler file in ``directory`` until its file system is full (ENOSPC); returns the filler."""
    import errno

    filler = directory / "filler"
    chunk = b"\0" * 4096
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler
