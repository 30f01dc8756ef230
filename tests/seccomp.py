"""A real seccomp filter that makes io_uring_setup fail with EPERM, as container runtimes' default
profiles do (or io_uring_register only, as stricter hand-written profiles do), installed from Python
(prctl through ctypes) so that the production extension carries no test hook. Irreversible for the
process: call it in a child process only."""

from __future__ import annotations

import ctypes
import os
import platform
from typing import Any

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
IORING_REGISTER_PROBE = 8
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


def _program(filters: list[_SockFilter]) -> tuple[Any, _SockFprog]:
    """libc, with no_new_privs set (what installing a filter unprivileged needs), and ``filters`` as a BPF program."""
    prog = (_SockFilter * len(filters))(*filters)
    fprog = _SockFprog(len(filters), prog)  # keeps prog alive
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    return libc, fprog


def _install(filters: list[_SockFilter]) -> None:
    libc, fprog = _program(filters)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.cast(ctypes.byref(fprog), ctypes.c_void_p), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()) + ": prctl(PR_SET_SECCOMP)")


# ---------------------------------------------------------------- a device's DMA alignment, emulated

#: Per machine: (seccomp, statx, pread64) syscall numbers.
_NR_MORE = {"x86_64": (317, 332, 17), "aarch64": (277, 291, 67)}
_BPF_JMP_JSET_K = 0x05 | 0x40 | 0x00
_SECCOMP_RET_USER_NOTIF = 0x7FC00000
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif), 80 bytes
_NOTIF_SEND = 0xC0182101  # _IOWR('!', 1, struct seccomp_notif_resp), 24 bytes
_STATX_DIOALIGN = 0x2000
_STX_DIO_MEM_ALIGN = 152  # offsetof(struct statx, stx_dio_mem_align)
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def emulate_dio_mem_align(mem_align: int, enforce: bool = True) -> None:
    """Make this process meet a device whose O_DIRECT memory alignment is ``mem_align`` bytes
    (statx ``dio_mem_align``; no device here has more than 512): statx answers it for every file
    (the kernel's own answer, with that field raised, served by a supervisor process through
    seccomp user notification), and (``enforce``) a pread64 into memory not aligned to it fails
    with EINVAL, as such a device fails an O_DIRECT read (buffered ones too: the filter cannot
    tell them apart). Other calls are untouched. Needs root (the supervisor writes this process's
    memory). Irreversible: call it in a child process only, before it starts threads; read files
    needed later before calling it."""
    import socket
    import struct

    if platform.machine() not in _NR_MORE:
        raise OSError(f"syscall numbers are not known for {platform.machine()}")
    nr_seccomp, nr_statx, nr_pread = _NR_MORE[platform.machine()]
    parent, child = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # the supervisor: no filter here
        parent.close()
        _, fds, _, _ = socket.recv_fds(child, 1, 1)
        _serve_statx(fds[0], os.getppid(), mem_align)
        os._exit(0)
    child.close()
    filters = [
        _SockFilter(_BPF_LD_W_ABS, 0, 0, 0),  # A = nr
        _SockFilter(_BPF_JMP_JEQ_K, 0, 1, nr_statx),
        _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_USER_NOTIF),
        _SockFilter(_BPF_JMP_JEQ_K, 0, 3, nr_pread if enforce else 0xFFFFFFFF),
        _SockFilter(_BPF_LD_W_ABS, 0, 0, 24),  # A = low 32 bits of args[1] (the buffer's address)
        _SockFilter(_BPF_JMP_JSET_K, 0, 1, mem_align - 1),
        _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | 22),  # EINVAL
        _SockFilter(_BPF_RET_K, 0, 0, _SECCOMP_RET_ALLOW),
    ]
    libc, fprog = _program(filters)
    libc.syscall.restype = ctypes.c_long
    listener = libc.syscall(
        ctypes.c_long(nr_seccomp),
        ctypes.c_long(_SECCOMP_SET_MODE_FILTER),
        ctypes.c_long(_SECCOMP_FILTER_FLAG_NEW_LISTENER),
        ctypes.cast(ctypes.byref(fprog), ctypes.c_void_p),
    )
    if listener < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()) + ": seccomp(NEW_LISTENER)")
    socket.send_fds(parent, [struct.pack("i", 0)], [listener])
    os.close(listener)
    parent.close()


def _serve_statx(listener: int, pid: int, mem_align: int) -> None:
    """The supervisor's loop: each statx of ``pid`` is run here on the same file (through
    /proc/PID), its dio_mem_align raised to ``mem_align``, the answer written into PID's buffer."""
    import fcntl
    import struct

    libc = ctypes.CDLL(None, use_errno=True)
    mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    while True:
        req = bytearray(80)
        try:
            fcntl.ioctl(listener, _NOTIF_RECV, req)
        except OSError:
            return  # the process is gone
        nid = struct.unpack_from("Q", req, 0)[0]
        dirfd, path_at, flags, mask, buf_at = struct.unpack_from("6Q", req, 32)[:5]  # seccomp_data.args
        dirfd = ctypes.c_int32(dirfd & 0xFFFFFFFF).value
        raw = os.pread(mem, 4096, path_at) if path_at else b""
        path = raw.split(b"\0", 1)[0].decode()
        if path.startswith("/"):
            where = path
        elif dirfd == _AT_FDCWD:
            where = f"/proc/{pid}/cwd/{path}"
        else:
            where = f"/proc/{pid}/fd/{dirfd}" + (f"/{path}" if path else "")
        out = ctypes.create_string_buffer(256)
        r = libc.statx(_AT_FDCWD, where.encode(), ctypes.c_int(flags & ~_AT_EMPTY_PATH), ctypes.c_uint(mask), out)
        err = ctypes.get_errno() if r != 0 else 0
        if r == 0:
            got = struct.unpack_from("I", out.raw, 0)[0]
            if got & _STATX_DIOALIGN:
                have = struct.unpack_from("I", out.raw, _STX_DIO_MEM_ALIGN)[0]
                struct.pack_into("I", out, _STX_DIO_MEM_ALIGN, max(have, mem_align))
            os.pwrite(mem, out.raw, buf_at)
        resp = bytearray(struct.pack("QqiI", nid, 0 if r == 0 else -1, -err if r != 0 else 0, 0))
        try:
            fcntl.ioctl(listener, _NOTIF_SEND, resp)
        except OSError:
            pass  # the caller was interrupted meanwhile
