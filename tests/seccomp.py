"""A real seccomp filter that makes io_uring_setup fail with EPERM, as container runtimes' default
profiles do (or io_uring_register only, as stricter hand-written profiles do), installed from Python
(prctl through ctypes) so that the production extension carries no test hook. Irreversible for the
process: call it in a child process only."""

from __future__ import annotations

import ctypes
import os
import platform

# linux/filter.h, linux/seccomp.h, linux/prctl.h
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_RET_K = 0x06 | 0x00
_SECCOMP_RET_ALLOW = 0x7FFF0000
_SECCOMP_RET_ERRNO = 0x00050000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
#: The io_uring system calls' numbers in the unified syscall table (x86_64, aarch64, ...).
_NR = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def block_io_uring(syscall: str = "io_uring_setup") -> None:
    """Install the filter, which fails ``syscall`` with EPERM, in this process (OSError when the kernel refuses it)."""
    _install(
        [
            _SockFilter(_BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
            _SockFilter(_BPF_JMP_JEQ_K, 0, 1, _nr(syscall)),
            _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 1),  # EPERM
            _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        ]
    )


#: io_uring_register opcodes (linux/io_uring.h), and the flag that addresses the ring by its registered index.
IORING_REGISTER_RING_FDS = 20
IORING_REGISTER_VIA_INDEX = 1 << 31  # IORING_REGISTER_USE_REGISTERED_RING, Linux 6.3


def refuse_io_uring_register(opcode: int) -> None:
    """Install a filter that fails io_uring_register with ``opcode`` (its whole second argument,
    flags included; EINVAL, as a kernel that does not know it answers) and lets every other call
    through: e.g. IORING_REGISTER_RING_FDS, to run as on a kernel before 5.18, where a ring is
    reached only through its descriptor."""
    _install(
        [
            _SockFilter(_BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
            _SockFilter(_BPF_JMP_JEQ_K, 0, 3, _nr("io_uring_register")),
            _SockFilter(_BPF_LD_W_ABS, 0, 0, 24),  # A = low 32 bits of args[1] (the opcode; little-endian)
            _SockFilter(_BPF_JMP_JEQ_K, 0, 1, opcode),
            _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 22),  # EINVAL
            _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
        ]
    )


def _nr(syscall: str) -> int:
    if platform.machine() not in ("x86_64", "aarch64"):
        raise OSError(f"{syscall}'s syscall number is not known for {platform.machine()}")
    return _NR[syscall]


def _install(filters: list[_SockFilter]) -> None:
    prog = (_SockFilter * len(filters))(*filters)
    fprog = _SockFprog(len(filters), prog)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.cast(ctypes.byref(fprog), ctypes.c_void_p), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()) + ": prctl(PR_SET_SECCOMP)")
