"""CUDA, found at run time.

Nothing here imports torch, cupy or kvikio at module import. ``libcuda`` is
probed first (a dlopen, cheap); torch and kvikio are imported only when a
driver exists, because kvikio's reads fail without libcuda even into host
memory.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.metadata
from typing import Any


@functools.cache
def driver_loaded() -> bool:
    """Whether the CUDA driver library can be loaded on this machine."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def import_torch() -> Any:
    """The torch module, or None when it is not installed."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


@functools.cache
def device_count() -> int:
    """CUDA devices visible through torch; 0 without a driver or torch."""
    if not driver_loaded():
        return 0
    torch = import_torch()
    if torch is None:
        return 0
    try:
        return int(torch.cuda.device_count())
    except Exception:  # a broken driver install reads as no device
        return 0


def devices() -> list[dict[str, Any]]:
    """Name, memory and compute capability of each CUDA device."""
    out = []
    if device_count():
        torch = import_torch()
        for i in range(device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(
                {
                    "index": i,
                    "name": p.name,
                    "memory_bytes": int(p.total_memory),
                    "compute_capability": f"{p.major}.{p.minor}",
                }
            )
    return out


_HOST_REGISTER_PORTABLE = 1  # cudaHostRegisterPortable


def host_register(address: int, nbytes: int) -> bool:
    """Pin host memory for DMA (cudaHostRegister); False when not possible.

    Registered as portable: pinned for every device's context, not only the
    one current in the calling thread (a pool made on device 0 may feed
    copies to device 1, and the copier threads start on device 0).
    """
    if not device_count():
        return False
    torch = import_torch()
    try:
        err = torch.cuda.cudart().cudaHostRegister(address, nbytes, _HOST_REGISTER_PORTABLE)
    except Exception:
        return False
    if int(getattr(err, "value", err)) == 0:
        return True
    # A failed runtime call stays the thread's "last error" until someone reads
    # it, and torch reads it after its next kernel launch: the caller's next
    # unrelated op would raise this error (seen on an H200: a range still
    # registered failed the next index_copy_). Read it here, where it belongs.
    _clear_last_error()
    return False


@functools.cache
def _cudart() -> Any:
    """The CUDA runtime library torch loaded (the one whose per-thread last error torch reads), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if "/libcudart.so" in path:
                    return ctypes.CDLL(path)
    except OSError:
        pass
    return None


def _clear_last_error() -> None:
    lib = _cudart()
    if lib is not None:
        lib.cudaGetLastError()


def host_unregister(address: int) -> None:
    torch = import_torch()
    if torch is not None and device_count():
        torch.cuda.cudart().cudaHostUnregister(address)


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def gds_status() -> dict[str, Any]:
    """Whether GPUDirect Storage works here, through kvikio, and why not."""
    version = next(
        (v for v in (package_version(n) for n in ("kvikio-cu13", "kvikio-cu12", "kvikio-cu11", "kvikio")) if v),
        None,
    )
    status: dict[str, Any] = {"kvikio": version, "available": False, "reason": ""}
    if version is None:
        status["reason"] = "kvikio is not installed (pip install kvikio-cu12)"
    elif not device_count():
        status["reason"] = "no CUDA device"
    else:
        try:
            kvikio = importlib.import_module("kvikio")
            status["available"] = _kvikio_gds_available(kvikio)
            status["reason"] = (
                "cuFile reports GDS available"
                if status["available"]
                else (
                    "cuFile reports GDS unavailable (nvidia-fs not loaded or file system unsupported); "
                    "kvikio would run in compat mode"
                )
            )
        except Exception as e:  # kvikio present but broken: report, never crash
            status["reason"] = f"kvikio failed to load: {e}"
    return status


def _kvikio_gds_available(kvikio: Any) -> bool:
    # kvikio's compat-mode flag is False whenever libcufile loads, even when
    # cuFile then falls back to POSIX; ask cuFile's driver properties instead.
    try:
        return bool(importlib.import_module("kvikio.cufile_driver").properties.is_gds_available)
    except Exception:
        pass
    try:
        return bool(kvikio.DriverProperties().is_gds_available)
    except Exception:
        return False
