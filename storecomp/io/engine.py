"""The Python side of the native engine: :class:`Engine`, :class:`File` and
:class:`IOFuture`.

The engine holds a native handle; all I/O happens in native code with the
GIL released. Arguments are checked here, before the native call, so that
bad input gets a clear storecomp error. Errors that come back from the
kernel are translated by :func:`storecomp.errors.from_errno`.

Read modes (``IOOptions.direct``):

* ``auto`` (default): try the page cache without blocking (``RWF_NOWAIT``);
  what is not cached is read with O_DIRECT. The page cache is a tier.
* ``on``: O_DIRECT always (unaligned heads and tails through an aligned
  bounce area); falls back to buffered reads, counted in
  ``stats()["direct_fallbacks"]``, on file systems without O_DIRECT.
* ``off``: buffered reads.

Per call (``File.read_many_into(direct=...)``) a fourth mode:

* ``mapped``: copies out of a read-only mapping of the file that the engine
  keeps (made on first use, remade when the file grows, dropped on close),
  on the engine's threads, with the crc32c of ``crc_step`` chunks computed in
  the same pass; no system call and no page-cache lookup per read. For files
  already in the page cache (what is not faults in from the device, as a
  buffered read would read it) that do not change: a file truncated under
  the mapping fails the read with :class:`~storecomp.errors.StorageIOError`
  (``ESTALE``, "file changed under the read"), it never crashes the process.
  Counted in ``stats()["mapped_pieces"]``; files that cannot be mapped are
  read buffered.

Writes are buffered unless ``direct="on"`` (then O_DIRECT when aligned).
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import os
import threading
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import _native
from ..config import IOOptions
from ..errors import (
    CancelledIOError,
    ClosedError,
    InvalidArgumentError,
    ShortReadError,
    UnavailableError,
    from_errno,
)
from .buffers import BufferRef, StagingPool, as_buffer, span

_MODES = {
    "auto": _native.MODE_AUTO,
    "on": _native.MODE_DIRECT,
    "off": _native.MODE_BUFFERED,
    "mapped": _native.MODE_BUFFERED | _native.MODE_MAPPED,
}
_MAX_OFFSET = (1 << 63) - 1


class IOFuture:
    """Completion of a batch of reads or writes.

    ``result()`` returns the bytes transferred per request (a uint64 array)
    or raises the first failure as a storecomp error naming path and offset.
    With ``exact`` (the default for reads), a request that ran past end of
    file raises :class:`ShortReadError`. Past the count read, the requested
    part of the destination keeps its old bytes or holds zeros (an O_DIRECT
    read may zero the rest of the file's last block, as the kernel does);
    it never holds other data, and memory outside the requested ranges is
    never touched. The future keeps every destination alive until the I/O is done;
    dropping it early waits for the I/O.
    """

    def __init__(
        self,
        parts: list[Any],
        paths: list[str],
        file_index: np.ndarray,
        offsets: np.ndarray,
        lengths: np.ndarray,
        ops: str,
        exact: bool,
        keepalive: list[Any],
        io_paths: tuple[str, ...],
        device_part: Future[np.ndarray] | None = None,
        order: np.ndarray | None = None,
    ) -> None:
        self._pid = os.getpid()
        self._parts = parts  # native batches, in request order
        self._paths = paths
        self._file_index = file_index
        self._offsets = offsets
        self._lengths = lengths
        self._op = ops
        self._exact = exact
        self._keepalive = keepalive
        self._device_part = device_part  # yields bytes per request (device paths)
        self._order = order  # request index of each result, when parts are reordered
        self.io_paths = io_paths
        self._result: np.ndarray | None = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return all(p.done() for p in self._parts) and (self._device_part is None or self._device_part.done())

    def wait(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: until done); True when done."""
        for p in self._parts:
            if not p.wait(-1.0 if timeout is None else timeout):
                return False
        if self._device_part is not None:
            try:
                self._device_part.result(timeout)
            except TimeoutError:
                return False
            except BaseException:
                pass  # reported by result()
        return True

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Bytes transferred per request. Raises TimeoutError or the first failure."""
        if self._result is None and self._error is None:
            if not self.wait(timeout):
                raise TimeoutError(f"I/O not finished within {timeout} s")
            self._collect()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _collect(self) -> None:
        if len(self._parts) == 1 and self._device_part is None and self._order is None:
            # One native batch (a loader's batch, a plain read): no concatenation.
            nbytes, err, err_off = self._parts[0].results()
            self._keepalive = []
            if err.any():
                self._fail(nbytes, err, err_off)
                return
            self._check_exact(nbytes)
            return
        counts, errs, err_offsets = [], [], []
        for p in self._parts:
            n, e, o = p.results()
            counts.append(n)
            errs.append(e)
            err_offsets.append(o)
        self._keepalive = []
        if self._device_part is not None:
            try:
                counts.append(self._device_part.result())
            except concurrent.futures.CancelledError:  # queued when the engine closed: never ran
                self._error = CancelledIOError(errno.ECANCELED, self._paths[0], None, self._op)
                return
            except BaseException as e:  # reported as raised by the device path
                self._error = e
                return
            errs.append(np.zeros(counts[-1].size, np.int32))
            err_offsets.append(np.zeros(counts[-1].size, np.uint64))
        nbytes = np.concatenate(counts) if counts else np.zeros(0, np.uint64)
        err = np.concatenate(errs) if errs else np.zeros(0, np.int32)
        err_off = np.concatenate(err_offsets) if err_offsets else np.zeros(0, np.uint64)
        if err.any():
            self._fail(nbytes, err, err_off)
        elif self._check_exact(nbytes) and self._order is not None:
            ordered = np.empty_like(nbytes)
            ordered[self._order] = nbytes
            self._result = ordered

    def _fail(self, nbytes: np.ndarray, err: np.ndarray, err_off: np.ndarray) -> None:
        failed = np.flatnonzero(err)
        i = int(failed[0])
        op = self._op
        if int(err[i]) == errno.ESTALE and op == "read":  # a mapped copy met the file's new end (SIGBUS, caught)
            op = "read (file changed under the read: it shrank while mapped)"
        exc = from_errno(int(err[i]), self._path(i), int(err_off[i]), op)
        if failed.size > 1:
            exc.add_note(f"{failed.size - 1} more of {err.size} requests in this batch failed too")
        self._error = exc

    def _check_exact(self, nbytes: np.ndarray) -> bool:
        """Set the result, or (``exact``) ShortReadError for the first request that got fewer bytes than asked."""
        if self._exact and nbytes.size and (nbytes < self._lengths).any():
            i = int(np.flatnonzero(nbytes < self._lengths)[0])
            self._error = ShortReadError(self._path(i), int(self._offsets[i]), int(self._lengths[i]), int(nbytes[i]))
            return False
        self._result = nbytes
        return True

    def checksums(self, timeout: float | None = None) -> np.ndarray:
        """crc32c (uint32) of each ``crc_steps[i]``-byte chunk of each request submitted with
        ``crc_steps``, in request order, computed on the engine's threads as each request
        landed. Raises like :meth:`result`; empty when no checks were asked for."""
        self.result(timeout)
        crcs = [p.crcs() for p in self._parts if hasattr(p, "crcs")]
        return np.concatenate(crcs) if crcs else np.zeros(0, np.uint32)

    def _path(self, i: int) -> str:
        return self._paths[int(self._file_index[i])] if self._file_index.size else self._paths[0]

    def __del__(self) -> None:
        # The kernel may still be writing into destinations this future keeps
        # alive: never let them go before the I/O is done. (In a forked child
        # the I/O belongs to the parent; nothing here would ever finish it.)
        if self._keepalive and os.getpid() == self._pid:
            self.wait()


class File:
    """An open file; reads and writes at explicit offsets into any buffer.

    Not positioned (no seek): every call names its offset. Thread-safe.
    Every read goes to the inode this File opened (:meth:`fstat` names it),
    even after its path is replaced or removed.
    """

    def __init__(self, engine: Engine, path: str | os.PathLike[str], writable: bool, create: bool) -> None:
        self._engine = engine
        self.path = os.fspath(path)
        self.writable = writable
        self._id = engine._open_native(self.path, writable, create)
        self._finalizer = weakref.finalize(self, engine._native.close_file, self._id)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _check_open(self) -> int:
        if self.closed:
            raise ClosedError(f"{self.path}: I/O on a closed file")
        return self._id

    def fstat(self) -> tuple[int, int, int, int]:
        """``(st_dev, st_ino, st_size, st_mtime_ns)`` of the opened file (not of
        what its path names now). Sizes in bytes, times in nanoseconds."""
        fid = self._check_open()
        try:
            dev, ino, size, mtime_ns = self._engine._native.file_stat(fid)
        except OSError as e:
            raise from_errno(e.errno or errno.EIO, self.path, None, "fstat") from None
        return int(dev), int(ino), int(size), int(mtime_ns)

    def size(self) -> int:
        """Current size in bytes of the opened file."""
        return self.fstat()[2]

    def release_mapping(self) -> None:
        """Drop the engine's mapping of this file (made by mapped reads and by the
        page-cache tier's background population), so that its pages are no longer
        mapped in this process: the kernel may then drop them from the page cache
        (``posix_fadvise(DONTNEED)`` skips mapped pages). Reads in flight keep what
        they copy from; the next mapped read maps the file again."""
        if not self.closed:
            self._engine._native.release_mapping(self._id)

    def direct_alignment(self) -> tuple[int, int] | None:
        """``(memory, offset)`` alignment in bytes that an O_DIRECT read of this file
        needs to go to the kernel as it is (anything else bounces through aligned
        memory): what the kernel reports (statx ``STATX_DIOALIGN``, Linux 6.1+; on
        NVMe any 4-byte aligned address), else the engine's ``align``. None when
        the file system refuses O_DIRECT (reads are buffered)."""
        fid = self._check_open()
        out = self._engine._native.direct_alignment(fid)
        return None if out is None else (int(out[0]), int(out[1]))

    def pread_into(
        self, dst: Any, offset: int = 0, *, length: int | None = None, dst_offset: int = 0, exact: bool = False
    ) -> int:
        """Read ``length`` bytes (default: the rest of ``dst``) at file ``offset``.

        Returns the bytes read, fewer at end of file (``exact=True`` raises
        ShortReadError instead). Destinations on a CUDA device take the
        device path chosen by ``IOOptions.io_path``.
        """
        ref = as_buffer(dst)
        _, n = span(ref, dst_offset, length)
        if ref.is_cuda:  # waited for at once: the device path runs on this thread
            fid = self._check_open()
            offs, lens, douts = checked_ranges([offset], [n], [dst_offset], ref, self.path)
            fut = self._engine._submit_reads(self, fid, ref, offs, lens, douts, exact, inline=True)
        else:
            fut = self.read_many_into(ref, [offset], [n], [dst_offset], exact=exact)
        return int(fut.result()[0])

    def read_many_into(
        self,
        dst: Any,
        offsets: Sequence[int] | np.ndarray,
        lengths: Sequence[int] | np.ndarray | int,
        dst_offsets: Sequence[int] | np.ndarray,
        *,
        exact: bool = True,
        crc_step: int = 0,
        direct: str | None = None,
    ) -> IOFuture:
        """Submit many reads from this file into one destination; returns at once.

        Request i reads ``lengths[i]`` bytes at file offset ``offsets[i]``
        into ``dst`` at byte ``dst_offsets[i]``. This is the hot path for
        batches of samples: no per-request Python. ``crc_step`` (bytes, host
        destinations): the engine's threads compute the crc32c of each chunk
        of that many bytes of every request as it lands (``checksums()``).
        ``direct``: the read mode for these reads (``auto``, ``on``, ``off``,
        as ``IOOptions.direct``, or ``mapped``, see the module's docstring; a
        :class:`~storecomp.io.TierChoice`'s ``direct``); None: the engine's option.
        """
        fid = self._check_open()
        ref = as_buffer(dst)
        if np.isscalar(lengths):
            lengths = np.full(np.asarray(offsets).size, lengths)
        offs, lens, douts = checked_ranges(offsets, lengths, dst_offsets, ref, self.path)
        return self._engine._submit_reads(self, fid, ref, offs, lens, douts, exact, crc_step, _read_mode(direct))

    def read_checked(
        self,
        ref: BufferRef,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        *,
        exact: bool = True,
        crc_step: int = 0,
        direct: str | None = None,
    ) -> IOFuture:
        """:meth:`read_many_into` for ranges that :func:`checked_ranges` has
        already checked against ``ref`` (uint64 arrays): no second check."""
        fid = self._check_open()
        return self._engine._submit_reads(self, fid, ref, offs, lens, douts, exact, crc_step, _read_mode(direct))

    def pwrite(self, src: Any, offset: int = 0) -> int:
        """Write all of ``src`` at file ``offset``; returns the bytes written."""
        fid = self._check_open()
        if not self.writable:
            raise InvalidArgumentError(f"{self.path}: file is open read-only")
        ref = as_buffer(src, writable=False, what="source")
        if ref.is_cuda:
            raise InvalidArgumentError(f"{self.path}: writes from CUDA memory: copy to host first")
        offs = _as_u64([offset], "offset")
        lens = np.array([ref.nbytes], np.uint64)
        _check_ranges(offs, lens, np.zeros(1, np.uint64), ref, self.path)
        fut = self._engine._submit(
            [self.path],
            np.array([fid], np.uint32),
            1,
            offs,
            lens,
            np.array([ref.address], np.uint64),
            self._engine._write_mode,
            [ref],
            exact=False,
            io_paths=("posix",),
        )
        return int(fut.result()[0])

    def sync(self) -> None:
        """fsync: written data and metadata reach stable storage."""
        fid = self._check_open()
        try:
            self._engine._native.fsync(fid)
        except OSError as e:
            raise from_errno(e.errno or 5, self.path, None, "fsync") from None

    def close(self) -> None:
        """Close; I/O still in flight finishes first. Idempotent."""
        self._finalizer()

    def __enter__(self) -> File:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("rw" if self.writable else "r")
        return f"<storecomp.io.File {self.path!r} {state}>"


def _read_mode(direct: str | None) -> int | None:
    """The native read mode for an ``IOOptions.direct`` value (None: the engine's own)."""
    if direct is None:
        return None
    try:
        return int(_MODES[direct])
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"direct must be auto, on, off or mapped, got {direct!r}") from None


def _as_u64(values: Any, name: str) -> np.ndarray:
    """Non-negative integers below 2**63 as a 1-D uint64 array (InvalidArgumentError otherwise)."""
    if isinstance(values, np.ndarray) and values.dtype == np.uint64 and values.ndim == 1:  # already checked once
        if values.size and int(values.max()) > _MAX_OFFSET:
            raise InvalidArgumentError(f"{name} must be below 2**63, got {int(values.max())}")
        return values
    arr = np.asarray(values).reshape(-1)
    if arr.size and arr.dtype.kind == "O":  # Python ints too large for int64
        if not all(isinstance(v, int) and 0 <= v <= _MAX_OFFSET for v in arr.tolist()):
            raise InvalidArgumentError(f"{name} must be integers in [0, 2**63), got {arr.tolist()[:4]}...")
        arr = arr.astype(np.uint64)
    if arr.size and arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.size and arr.dtype.kind == "i" and int(arr.min()) < 0:
        raise InvalidArgumentError(f"{name} must be non-negative, got {int(arr.min())}")
    out = arr.astype(np.uint64, copy=False)
    if out.size and int(out.max()) > _MAX_OFFSET:
        raise InvalidArgumentError(f"{name} must be below 2**63, got {int(out.max())}")
    return out


def checked_ranges(
    offsets: Any, lengths: Any, dst_offsets: Any, ref: BufferRef, where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranges of a batched read as uint64 arrays, checked before any I/O: the
    same count of each, every value in [0, 2**63), no offset + length
    overflow, every destination range inside ``ref``. ``where`` (a path or
    URL) names the object in errors. Raises InvalidArgumentError.
    """
    offs = _as_u64(offsets, "offsets")
    lens = _as_u64(lengths, "lengths")
    douts = _as_u64(dst_offsets, "dst_offsets")
    if not (offs.size == lens.size == douts.size):
        raise InvalidArgumentError(f"offsets, lengths and dst_offsets differ in length ({offs.size}, {lens.size}, {douts.size})")
    _check_ranges(offs, lens, douts, ref, where)
    return offs, lens, douts


def _check_ranges(offs: np.ndarray, lens: np.ndarray, douts: np.ndarray, ref: BufferRef, path: str) -> None:
    """File ranges must not overflow; destination ranges must fit ``ref``.

    All inputs are uint64 below 2**63 (from _as_u64), so sums cannot wrap.
    """
    if not offs.size:
        return
    if int((offs + lens).max()) > _MAX_OFFSET:
        raise InvalidArgumentError(f"{path}: offset + length overflows (exceeds 2**63-1)")
    dend = douts + lens
    if int(dend.max()) > ref.nbytes:
        i = int(np.argmax(dend))
        raise InvalidArgumentError(
            f"destination too small: request {i} needs bytes [{int(douts[i])}, {int(dend[i])}) of a {ref.nbytes}-byte buffer"
        )


class Engine:
    """A native I/O engine with its own backend, threads and descriptor cache.

    ``Engine()`` reads :class:`~storecomp.config.IOOptions` from the
    environment; keyword arguments override single options. Use as a context
    manager or call :meth:`close`; in-flight work is cancelled cleanly
    (``CancelledIOError``) on close.
    """

    def __init__(self, options: IOOptions | None = None, **overrides: Any) -> None:
        opts = IOOptions.load(**overrides) if options is None else options.replace(**overrides)
        self.options = opts
        try:
            self._native = _native.Engine(
                opts.engine,
                opts.queue_depth,
                opts.threads,
                opts.split_bytes,
                opts.align,
                max(1 << 20, 2 * opts.align),
            )
        except RuntimeError as e:
            raise UnavailableError(f"{e} (set STORECOMP_ENGINE=threads or auto)") from None
        self._read_mode = _MODES[opts.direct]
        self._write_mode = _native.MODE_DIRECT if opts.direct == "on" else _native.MODE_BUFFERED
        self._lock = threading.Lock()
        # path -> (File, its (st_dev, st_ino, st_size, st_mtime_ns) at open)
        self._files: collections.OrderedDict[tuple[str, bool], tuple[File, tuple[int, int, int, int]]] = collections.OrderedDict()
        self._staging: StagingPool | None = None
        self._copier: ThreadPoolExecutor | None = None
        self._closed = False
        self._pid = os.getpid()  # engines do not survive fork: their threads stay in the parent

    # ------------------------------------------------------------ properties

    @property
    def backend(self) -> str:
        """``io_uring`` or ``threads``: what completes the I/O."""
        return str(self._native.backend)

    @property
    def backend_reason(self) -> str:
        """Why this backend (for example why io_uring is not used)."""
        return str(self._native.backend_reason)

    @property
    def closed(self) -> bool:
        """True after close(), and in a process forked after the engine was made."""
        return self._closed or os.getpid() != self._pid

    def stats(self) -> dict[str, int]:
        """Counters since creation: requests, pieces, bytes, bounces, page-cache hits, errors;
        and ``bounce_arena_bytes``, the size now of the io_uring bounce arena (aligned memory,
        registered and so pinned, that unaligned O_DIRECT reads land in; at most 64 MiB).
        ``bounce_handoffs``: bounced pieces whose copy out of the arena ran on the pool's threads.
        ``mapped_pieces``: pieces copied out of a file mapping (``direct="mapped"``); ``mapped_faults``:
        those that met a file shrunk under its mapping. ``populated_bytes``: bytes that the page-cache
        tier's buffered reads mapped into the engine's mappings in the background, ready for mapped
        reads (:class:`~storecomp.io.TierChoice` ``populate``); ``populate_skipped``: bytes it left
        (queue full, file shrunk or its mapping released meanwhile). ``ring_lost``: 1 once the
        io_uring backend's descriptor was closed under it (possible only on kernels before 5.18,
        where the ring cannot be kept private): the reads then in the ring failed with
        :class:`~storecomp.errors.EngineRingLostError`, and the thread pool serves the rest."""
        return dict(self._native.stats())

    # ------------------------------------------------------------ files

    def open(self, path: str | os.PathLike[str], mode: str = "r") -> File:
        """Open ``path``: ``"r"`` read-only, ``"r+"`` read-write, ``"w"`` read-write, created if missing."""
        if mode not in ("r", "r+", "w"):
            raise InvalidArgumentError(f"mode must be 'r', 'r+' or 'w', got {mode!r}")
        self._check_open()
        return File(self, path, writable=mode != "r", create=mode == "w")

    def cached_file(self, path: str | os.PathLike[str]) -> File:
        """A read-only File for ``path`` from the descriptor cache (LRU, ``max_open_files``).

        A cached File is served only while ``path`` still names the file it
        opened (same st_dev, st_ino, size and mtime as at open): a path
        replaced or rewritten since is opened afresh, a removed one raises
        NotFoundError.
        """
        key = (os.fspath(path), False)
        with self._lock:
            hit = self._files.get(key)
        if hit is not None and not hit[0].closed:
            try:
                st = os.stat(key[0])
            except OSError as e:
                raise from_errno(e.errno or errno.EIO, key[0], None, "open") from None
            if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == hit[1]:
                with self._lock:
                    if key in self._files:
                        self._files.move_to_end(key)
                return hit[0]
        f = self.open(key[0])
        with self._lock:
            self._files[key] = (f, f.fstat())
            while len(self._files) > self.options.max_open_files:
                # Dropped, not closed: a caller may still hold it; the
                # descriptor closes when the last reference goes.
                self._files.popitem(last=False)
        return f

    def release_mappings(self, paths: Iterable[str | os.PathLike[str]]) -> None:
        """:meth:`File.release_mapping` of the cached files of ``paths`` (those not cached are skipped)."""
        with self._lock:
            files = [hit[0] for p in paths if (hit := self._files.get((os.fspath(p), False))) is not None]
        for f in files:
            f.release_mapping()

    def _open_native(self, path: str, writable: bool, create: bool) -> int:
        self._check_open()
        if not isinstance(path, str) or not path:
            raise InvalidArgumentError(f"path must be a non-empty string, got {path!r}")
        try:
            return int(self._native.open(path, writable, create))
        except OSError as e:
            raise from_errno(e.errno or 5, path, None, "open") from None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("engine is closed")
        if os.getpid() != self._pid:
            raise ClosedError(
                f"engine was created in process {self._pid}, before a fork; its I/O threads are not in this "
                "process: create a new Engine here (storecomp.io.default_engine() does so by itself)"
            )

    # ------------------------------------------------------------ submission

    def _submit(
        self,
        paths: list[str],
        fids: np.ndarray,
        op: int,
        offs: np.ndarray,
        lens: np.ndarray,
        addrs: np.ndarray,
        mode: int,
        keepalive: list[Any],
        *,
        exact: bool,
        io_paths: tuple[str, ...],
        file_index: np.ndarray | None = None,
        crc_steps: np.ndarray | None = None,
    ) -> IOFuture:
        """Submit one native batch. ``crc_steps`` (reads; uint64 per request, 0: none): the engine
        computes the crc32c of each chunk of that many bytes (see :meth:`IOFuture.checksums`)."""
        self._check_open()
        n = offs.size
        try:
            batch = self._native.submit(
                fids if fids.size == n else np.full(n, fids[0], np.uint32),
                np.full(n, op, np.uint8),
                offs,
                lens,
                addrs,
                mode,
                None if crc_steps is None else np.asarray(crc_steps, np.uint64),
            )
        except RuntimeError as e:
            raise ClosedError(str(e)) from None
        index = np.zeros(0, np.int64) if file_index is None else file_index
        return IOFuture([batch], paths, index, offs, lens, "write" if op else "read", exact, keepalive, io_paths)

    def _submit_reads(
        self,
        f: File,
        fid: int,
        ref: BufferRef,
        offs: np.ndarray,
        lens: np.ndarray,
        douts: np.ndarray,
        exact: bool,
        crc_step: int = 0,
        mode: int | None = None,
        *,
        inline: bool = False,
    ) -> IOFuture:
        if ref.is_cuda:
            if crc_step:
                raise InvalidArgumentError(f"{f.path}: crc_step needs a host destination")
            from . import paths

            return paths.submit_device_reads(self, f, ref, offs, lens, douts, exact, inline=inline)
        addrs = douts + np.uint64(ref.address)
        return self._submit(
            [f.path],
            np.array([fid], np.uint32),
            0,
            offs,
            lens,
            addrs,
            self._read_mode if mode is None else mode,
            [ref, f],
            exact=exact,
            io_paths=("posix",),
            crc_steps=np.full(offs.size, crc_step, np.uint64) if crc_step else None,
        )

    def read_batch(self, requests: Sequence[ReadRequest], *, exact: bool = True) -> IOFuture:
        """Submit reads from any files into any destinations; returns an IOFuture at once."""
        self._check_open()
        if not requests:
            return IOFuture(
                [], [""], np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.uint64), "read", exact, [], ()
            )
        for i, r in enumerate(requests):
            if not isinstance(r, ReadRequest):
                raise InvalidArgumentError(f"requests[{i}] is {type(r).__name__}, expected ReadRequest")
        refs = [as_buffer(r.dst) for r in requests]
        files = [self.cached_file(r.path) for r in requests]
        host = [i for i, ref in enumerate(refs) if not ref.is_cuda]
        device = [i for i, ref in enumerate(refs) if ref.is_cuda]
        if not device:
            return self._host_batch(requests, refs, files, host, exact)
        parts = [self._host_batch(requests, refs, files, host, exact)] if host else []
        for i in device:
            r = requests[i]
            parts.append(files[i].read_many_into(refs[i], [r.offset], [_length(r, refs[i])], [r.dst_offset], exact=exact))
        return _join(parts, exact, np.array(host + device, np.int64))

    def _host_batch(
        self, requests: Sequence[ReadRequest], refs: list[BufferRef], files: list[File], idx: list[int], exact: bool
    ) -> IOFuture:
        paths: list[str] = []
        slot: dict[str, int] = {}
        file_index = np.empty(len(idx), np.int64)
        fids = np.empty(len(idx), np.uint32)
        offs = np.empty(len(idx), np.uint64)
        lens = np.empty(len(idx), np.uint64)
        addrs = np.empty(len(idx), np.uint64)
        for k, i in enumerate(idx):
            r, ref, f = requests[i], refs[i], files[i]
            if f.path not in slot:
                slot[f.path] = len(paths)
                paths.append(f.path)
            file_index[k] = slot[f.path]
            fids[k] = f._check_open()
            n = _length(r, ref)
            offs[k : k + 1] = _as_u64([r.offset], "offset")
            lens[k] = n
            addrs[k] = span(ref, r.dst_offset, n)[0]
            _check_ranges(offs[k : k + 1], lens[k : k + 1], np.array([r.dst_offset], np.uint64), ref, f.path)
        return self._submit(
            paths,
            fids,
            0,
            offs,
            lens,
            addrs,
            self._read_mode,
            [refs, files],
            exact=exact,
            io_paths=("posix",) * len(idx),
            file_index=file_index,
        )

    # ------------------------------------------------------------ staging

    def staging_pool(self) -> StagingPool:
        """This engine's staging pool for the bounce path, created on first use."""
        with self._lock:
            if self._staging is None:
                self._staging = StagingPool(self.options.staging_bytes, self.options.staging_slot_bytes, engine=self)
            return self._staging

    def _copier_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._copier is None:
                self._copier = ThreadPoolExecutor(2, thread_name_prefix="storecomp-device")
            return self._copier

    def _register_buffer(self, address: int, nbytes: int) -> bool:
        return bool(self._native.register_buffer(address, nbytes))

    def _unregister_buffer(self, address: int) -> None:
        if not self.closed:  # nor in a forked child: the parent's ring is not this process's to change
            self._native.unregister_buffer(address)

    # ------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Cancel queued work, wait for in-flight work, release threads and descriptors."""
        if self._closed:
            return
        self._closed = True
        if self._copier is not None:
            self._copier.shutdown(wait=True, cancel_futures=True)
        self._native.shutdown()
        if self._staging is not None:
            self._staging.close()
        with self._lock:
            files = [f for f, _ in self._files.values()]
            self._files.clear()
        for f in files:
            f.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<storecomp.io.Engine backend={self.backend} qd={self.options.queue_depth} threads={self.options.threads}>"


class ReadRequest:
    """One read: ``length`` bytes (default: the rest of ``dst``) at ``offset`` of ``path``."""

    __slots__ = ("path", "dst", "offset", "length", "dst_offset")

    def __init__(
        self, path: str | os.PathLike[str], dst: Any, offset: int = 0, length: int | None = None, dst_offset: int = 0
    ) -> None:
        self.path = os.fspath(path)
        self.dst = dst
        self.offset = offset
        self.length = length
        self.dst_offset = dst_offset

    def __repr__(self) -> str:
        return f"ReadRequest({self.path!r}, offset={self.offset}, length={self.length})"


def _length(r: ReadRequest, ref: BufferRef) -> int:
    return span(ref, r.dst_offset, r.length)[1]


class _Joined:
    """Adapts an IOFuture to the part interface of another IOFuture."""

    def __init__(self, fut: IOFuture) -> None:
        self.fut = fut

    def done(self) -> bool:
        return self.fut.done()

    def wait(self, timeout: float) -> bool:
        return self.fut.wait(None if timeout < 0 else timeout)

    def results(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.fut.result()
        return n, np.zeros(n.size, np.int32), np.zeros(n.size, np.uint64)


def _join(parts: list[IOFuture], exact: bool, order: np.ndarray) -> IOFuture:
    """One future over several; ``order`` maps results back to request order."""
    offs = np.concatenate([p._offsets for p in parts])
    lens = np.concatenate([p._lengths for p in parts])
    io_paths = np.empty(order.size, object)
    io_paths[order] = [x for p in parts for x in p.io_paths]
    return IOFuture(
        [_Joined(p) for p in parts],
        [""],
        np.zeros(0, np.int64),
        offs,
        lens,
        "read",
        exact,
        list(parts),
        tuple(io_paths),
        order=order,
    )
