"""LocalStore: objects are files under a root directory.

Reads go through the native engine (io_uring or a pread pool, O_DIRECT when
the page cache misses). Writes publish atomically:

* ``put``: write a temp file ``.sc-tmp-*`` in the target's directory, fsync
  it, ``rename(2)`` it over the key, fsync the directory. Readers see the old
  file or the new one; a crash leaves at most a hidden temp file.
* ``put_if_absent``: the same temp file, published with ``link(2)``, which
  fails with EEXIST when the key exists (then False, nothing changed).
* ``delete_if``: holding that lock, compares the version and unlinks (a
  ``put`` or ``delete`` of a key that has a lock file takes it too, and a
  ``put_if_absent`` cannot replace a file that exists).
* ``compare_and_swap``: the temp file is written first; then, holding
  ``flock(2)`` on a sidecar lock file ``.sc-lock.<name>`` next to the key
  (``.sc-lock.h-<digest of name>`` when that name would be too long),
  the current version is compared with ``expected`` and the temp file is
  renamed over the key. ``delete`` and ``delete_if`` remove the lock file
  with the key (a waiter that then holds the unlinked file locks again). Every CAS writer of a key on this machine (any
  process) serialises on that lock; no server is involved. The lock is
  advisory and local: it is not safe on NFS mounts shared by several nodes.

Version tokens are ``"<st_dev>-<st_ino>-<st_size>-<st_mtime_ns>"`` digested
to 16 hex digits: every publish puts a new inode in place, so the token
changes even when size and mtime happen to match (ctime is left out: it
moves when the temp name of a linked file is removed).

Temp and lock files (names starting with ``.sc-``) are never listed;
:meth:`LocalStore.sweep_temp` removes temp files left by crashed writers.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IOOptions
from ..errors import ConflictError, InvalidArgumentError, NotFoundError, StorecompError, VersionChangedError, from_errno
from ..io import BufferRef, Engine, File, IOFuture, PageCachePolicy, TierChoice, default_engine, resident_bytes
from .base import Capabilities, Listing, ObjectInfo, Store, dir_prefix
from .keys import RESERVED_PREFIX, payload_view, validate_key, validate_prefix

_TMP = RESERVED_PREFIX + "tmp-"
_LOCK = RESERVED_PREFIX + "lock."
_MAX_CACHED_FILES = 128


def _unique_mtime_ns() -> int:
    """Now to the second, with 30 random bits below it.

    Every published file gets one, so a version token (below) never repeats
    even when a new file reuses a freed inode with the same size within one
    clock tick (the file system's coarse mtime would repeat, and a stale
    compare-and-swap would then win: an ABA lost update).
    """
    return time.time_ns() // 1_000_000_000 * 1_000_000_000 + secrets.randbelow(1_000_000_000)


def version_of(st: os.stat_result) -> str:
    """The version token of a file from its stat result (16 hex digits)."""
    return _token(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _token(dev: int, ino: int, size: int, mtime_ns: int) -> str:
    raw = f"{dev}-{ino}-{size}-{mtime_ns}".encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class LocalStore(Store):
    """A directory as a store. ``root`` is created if missing.

    ``options`` configures a private native engine; without it the
    process-wide default engine is used. Raises InvalidArgumentError when
    ``root`` exists and is not a directory.

    Reads choose the page cache or O_DIRECT per object, by the rule of
    :class:`~storecomp.io.PageCachePolicy` (the DataLoader's): an object whose
    uncached bytes fit the page-cache budget is read buffered, so the next
    read of it runs from memory; a larger one with O_DIRECT, so it does not
    evict what the rest of the machine uses; under memory pressure, O_DIRECT.
    ``page_cache`` sets the policy (default: one following the engine's
    ``direct`` option, which forces either: ``off`` buffered, ``on``
    O_DIRECT). :meth:`tier_stats` says what was chosen and why.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        options: IOOptions | None = None,
        *,
        engine: Engine | None = None,
        page_cache: PageCachePolicy | None = None,
    ):
        self.root = Path(root).expanduser().absolute()
        if self.root.exists() and not self.root.is_dir():
            raise InvalidArgumentError(f"{self.root}: not a directory, cannot be a store root")
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = self.root.as_uri()
        self._own_engine = engine is None and options is not None
        self._engine = engine if engine is not None else (Engine(options) if options is not None else None)
        self._files: OrderedDict[str, tuple[File, tuple[int, int, int, int]]] = OrderedDict()
        self._lock = threading.Lock()
        self._policy, self._own_policy = page_cache, page_cache is not None
        # The tier of each file read lately (by identity), with the policy that chose it.
        self._tiers: OrderedDict[tuple[int, int, int, int], tuple[PageCachePolicy, TierChoice]] = OrderedDict()
        self._tier_reads = {"buffered": 0, "direct": 0}  # ranges read per tier
        self._last_tier: TierChoice | None = None

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(conditional_writes=True, ranged_reads=True, native_reads=True, local=True)

    @property
    def engine(self) -> Engine:
        return self._engine if self._engine is not None else default_engine()

    def path_of(self, key: str) -> Path:
        """The file that holds ``key`` (it may not exist)."""
        return self.root / validate_key(key)

    # ------------------------------------------------------------ page-cache tier

    def policy(self) -> PageCachePolicy:
        """The page-cache policy: the one given, else one following the engine's ``direct`` option."""
        p = self._policy
        if p is None or (not self._own_policy and p.direct != self.engine.options.direct):
            p = self._policy = PageCachePolicy(self.engine.options.direct)
        return p

    def _tier(self, path: str, ident: tuple[int, int, int, int]) -> TierChoice:
        """The tier for reading the file ``ident`` at ``path``: chosen once per file (its size,
        what of it is resident), then moved to O_DIRECT if memory runs short."""
        policy = self.policy()
        with self._lock:
            hit = self._tiers.get(ident)
        if hit is not None and hit[0] is policy:
            choice = hit[1]
        else:  # a file not seen yet, or a new policy
            choice = policy.choose_size(ident[2], resident_bytes(path) if policy.direct == "auto" else 0)
        checked = policy.check(choice)
        with self._lock:
            self._tiers[ident] = (policy, checked)
            self._tiers.move_to_end(ident)
            while len(self._tiers) > _MAX_CACHED_FILES:
                self._tiers.popitem(last=False)
            self._tier_reads[checked.tier] += 1
            self._last_tier = checked
        return checked

    def tier_stats(self) -> dict[str, Any]:
        """Page-cache tier of this store's reads: ``reads_buffered`` and ``reads_direct``
        (read calls per tier), and the latest choice (``tier``, ``reason``, sizes in bytes)."""
        with self._lock:
            out: dict[str, Any] = {f"reads_{k}": v for k, v in self._tier_reads.items()}
            last = self._last_tier
        out["policy"] = self.policy().direct
        out.update(last.as_dict() if last is not None else {"tier": "none", "reason": "nothing read yet"})
        return out

    # ------------------------------------------------------------ reads

    def _open(self, key: str) -> tuple[File, tuple[int, int, int, int]]:
        """A read handle on the file published under ``key`` now, and its
        identity ``(st_dev, st_ino, st_size, st_mtime_ns)``.

        The version comes from the open file itself (fstat), never from the
        path: what is read is exactly that version. Handles are cached by
        path; a cached one is used only while the path still names the very
        file it opened (same device, inode, size and mtime; versions never
        repeat), so a replaced object is never read through a stale handle.
        """
        path = str(self.path_of(key))
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise NotFoundError(errno.ENOENT, path, None, "open") from None
            raise from_errno(e.errno or errno.EIO, path, None, "open") from None
        if not _is_file(st):
            raise NotFoundError(errno.ENOENT, path, None, "open")
        with self._lock:
            hit = self._files.get(path)
            if hit is not None and hit[1] == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) and not hit[0].closed:
                self._files.move_to_end(path)
                return hit

        f = self.engine.open(path)
        ident = f.fstat()
        with self._lock:
            self._files[path] = (f, ident)
            while len(self._files) > _MAX_CACHED_FILES:
                self._files.popitem(last=False)  # closed when the last reference goes
        return f, ident

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> IOFuture:
        f, direct = self.open_version(key, version)
        return f.read_checked(ref, offs, lens, douts, exact=False, direct=direct)

    def open_version(self, key: str, version: str | None) -> tuple[File, str]:
        """The open file of ``key`` (for reads on this store's engine, e.g. sealed reads that decrypt
        on its threads) and the page-cache tier to read it with (``direct``: ``on`` or ``off``).
        Raises NotFoundError, or VersionChangedError when ``version`` is given and the key holds another."""
        f, ident = self._open(key)
        if version is not None and _token(*ident) != version:
            raise VersionChangedError(self.name_of(key), version, _token(*ident))
        return f, self._tier(f.path, ident).direct

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of ``key``; the size and the bytes both come from the file opened."""
        if length is not None:
            return super().get(key, offset, length)
        f, ident = self._open(key)
        buf = np.empty(max(0, ident[2] - offset), np.uint8)
        direct = self._tier(f.path, ident).direct
        n = int(f.read_many_into(buf, [offset], [buf.size], [0], exact=False, direct=direct).result()[0])
        return buf[:n].tobytes()

    # ------------------------------------------------------------ writes

    def _write_temp(self, key: str, data: Any) -> tuple[Path, Path]:
        """Write ``data`` to a fsynced temp file beside ``key``; returns (temp, final)."""
        return self._write_temp_parts(key, (data,))

    def _write_temp_parts(self, key: str, parts: Iterable[Any]) -> tuple[Path, Path]:
        """Write the bytes-like ``parts``, in order, to a fsynced temp file beside ``key``."""
        final = self.path_of(key)
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise InvalidArgumentError(f"{key!r}: a parent of this key is an object, not a directory") from None
        except NotADirectoryError:
            raise InvalidArgumentError(f"{key!r}: a parent of this key is an object, not a directory") from None
        except OSError as e:
            raise from_errno(e.errno or errno.EIO, str(parent), None, "mkdir") from None
        tmp = parent / f"{_TMP}{uuid.uuid4().hex}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise from_errno(e.errno or errno.EIO, str(tmp), None, "create") from None
        try:
            try:
                for part in parts:
                    view = payload_view(part)
                    done = 0
                    while done < len(view):
                        done += os.write(fd, view[done : done + (64 << 20)])
                os.utime(fd, ns=(stamp := _unique_mtime_ns(), stamp))
                os.fsync(fd)
            finally:
                os.close(fd)
        except StorecompError:  # raised by a part's producer (a streamed copy's source)
            _unlink_quiet(tmp)
            raise
        except OSError as e:
            _unlink_quiet(tmp)
            raise from_errno(e.errno or errno.EIO, str(final), None, "write") from None
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return tmp, final

    def put(self, key: str, data: Any) -> ObjectInfo:
        return self._publish(key, (data,))

    def put_stream(self, key: str, parts: Iterable[Any]) -> ObjectInfo:
        """Publish the concatenation of ``parts`` (bytes-like, consumed one at a
        time: the object is never whole in memory) under ``key``, atomically."""
        return self._publish(key, parts)

    def _publish(self, key: str, parts: Iterable[Any]) -> ObjectInfo:
        """put and put_stream. The returned info is that of the file this call
        published (stat'ed before its rename): a writer that replaces or deletes
        the key right after cannot lend its version to this put."""
        tmp, final = self._write_temp_parts(validate_key(key), parts)
        try:
            st = os.stat(tmp)
            # A key that CAS writers use has a lock file: take it so that a
            # put never lands between a CAS's compare and its rename.
            with _flock(_lock_path(final), create=False):
                _publish_rename(tmp, final)
        except BaseException:
            _unlink_quiet(tmp)
            raise
        return ObjectInfo(key, st.st_size, version_of(st), st.st_mtime)

    def put_if_absent(self, key: str, data: Any) -> bool:
        tmp, final = self._write_temp(validate_key(key), data)
        try:
            return _publish_link(tmp, final)
        finally:
            _unlink_quiet(tmp)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        tmp, final = self._write_temp(validate_key(key), data)
        try:
            st = os.stat(tmp)  # the version this call publishes, whatever replaces it after
            with _flock(_lock_path(final)) as lock:
                if expected is None:
                    if not _publish_link(tmp, final):
                        raise ConflictError(f"{self.url}/{key}: compare-and-swap expected no object, but one exists")
                else:
                    try:
                        current = version_of(os.stat(final))
                    except FileNotFoundError:
                        lock.remove()  # no key, so no lock file either
                        raise ConflictError(
                            f"{self.url}/{key}: compare-and-swap expected version {expected}, but the object is gone"
                        ) from None
                    if current != expected:
                        raise ConflictError(f"{self.url}/{key}: compare-and-swap expected version {expected}, found {current}")
                    _publish_rename(tmp, final)
                return ObjectInfo(key, st.st_size, version_of(st), st.st_mtime)
        finally:
            _unlink_quiet(tmp)

    # ------------------------------------------------------------ metadata

    def stat(self, key: str) -> ObjectInfo:
        path = self.path_of(key)
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ENOTDIR:
                raise NotFoundError(errno.ENOENT, str(path), None, "stat") from None
            raise from_errno(e.errno or errno.EIO, str(path), None, "stat") from None
        if not _is_file(st):
            raise NotFoundError(errno.ENOENT, str(path), None, "stat")
        return ObjectInfo(key, st.st_size, version_of(st), st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        prefix = validate_prefix(prefix)
        # Walk only the directory that holds every match.
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root / base_rel if base_rel else self.root
        found: list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(RESERVED_PREFIX)]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                if name.startswith(RESERVED_PREFIX):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except OSError:
                    continue  # deleted while listing, or unreadable (a /proc link, a dangling symlink)
                if _is_file(st):
                    found.append(ObjectInfo(key, st.st_size, version_of(st), st.st_mtime))
        found.sort(key=lambda info: info.key)
        yield from found

    def list_dir(self, prefix: str = "") -> Listing:
        """One directory (``os.scandir``), not the tree below it. Entries that
        cannot be stat'ed are reported in ``skipped``; a prefix that is not a
        directory lists nothing; an unreadable directory is PermissionDeniedError."""
        prefix = dir_prefix(prefix)
        base = self.root / prefix if prefix else self.root
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        skipped: list[str] = []
        try:
            it = os.scandir(base)
        except (FileNotFoundError, NotADirectoryError):
            return Listing([], [])
        except OSError as e:
            raise from_errno(e.errno or errno.EIO, str(base), None, "list") from None
        with it:
            for entry in it:
                if entry.name.startswith(RESERVED_PREFIX):
                    continue
                key = prefix + entry.name
                try:
                    st = entry.stat()  # follows symlinks, as a path given to ls would
                except FileNotFoundError:
                    continue  # deleted while listing
                except OSError:
                    skipped.append(key)
                    continue
                if _is_file(st):
                    objects.append(ObjectInfo(key, st.st_size, version_of(st), st.st_mtime))
                elif stat.S_ISDIR(st.st_mode):
                    prefixes.append(key + "/")
        objects.sort(key=lambda info: info.key)
        return Listing(objects, sorted(prefixes), sorted(skipped))

    def delete(self, key: str) -> None:
        path = self.path_of(key)
        with _flock(_lock_path(path), create=False) as lock:  # never between a delete_if's compare and its unlink
            if _unlink_object(path):
                lock.remove()

    def delete_if(self, key: str, version: str) -> bool:
        path = self.path_of(key)
        if not path.parent.is_dir():
            return False
        with _flock(_lock_path(path)) as lock:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                lock.remove()  # made just now for a key that is not there
                return False
            except OSError as e:
                raise from_errno(e.errno or errno.EIO, str(path), None, "stat") from None
            if not _is_file(st) or version_of(st) != version:
                return False
            deleted = _unlink_object(path)
            lock.remove()
            return deleted

    # ------------------------------------------------------------ maintenance

    def sweep_temp(self, max_age_s: float = 3600.0) -> int:
        """Remove temp files older than ``max_age_s`` seconds (left by crashed writers); returns how many."""
        removed = 0
        cutoff = time.time() - max_age_s
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(_TMP):
                    p = os.path.join(dirpath, name)
                    try:
                        if os.stat(p).st_mtime < cutoff:
                            os.unlink(p)
                            removed += 1
                    except FileNotFoundError:
                        pass
        return removed

    def close(self) -> None:
        with self._lock:
            files = [f for f, _ in self._files.values()]
            self._files.clear()
        for f in files:
            f.close()
        if self._own_engine and self._engine is not None:
            self._engine.close()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"


def _lock_path(final: Path) -> Path:
    """The CAS lock file of ``final``: ``.sc-lock.<name>``, or a digest of the name
    when that would pass the file system's 255-byte name limit."""
    name = f"{_LOCK}{final.name}"
    if len(name.encode()) > 255:
        name = f"{_LOCK}h-{hashlib.blake2b(final.name.encode(), digest_size=16).hexdigest()}"
    return final.parent / name


def _is_file(st: os.stat_result) -> bool:
    import stat as _stat

    return _stat.S_ISREG(st.st_mode)


def _unlink_object(path: Path) -> bool:
    """Unlink an object's file and make that durable; False when it was not there."""
    try:
        os.unlink(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except IsADirectoryError:
        return False  # a "directory" is not an object
    except OSError as e:
        raise from_errno(e.errno or errno.EIO, str(path), None, "delete") from None
    _fsync_dir(path.parent)
    return True


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish_rename(tmp: Path, final: Path) -> None:
    try:
        os.rename(tmp, final)
    except IsADirectoryError:
        raise InvalidArgumentError(f"{final}: a directory of other objects exists under this key") from None
    except OSError as e:
        raise from_errno(e.errno or errno.EIO, str(final), None, "rename") from None
    _fsync_dir(final.parent)


def _publish_link(tmp: Path, final: Path) -> bool:
    try:
        os.link(tmp, final)
    except FileExistsError:
        return False
    except OSError as e:
        raise from_errno(e.errno or errno.EIO, str(final), None, "link") from None
    _fsync_dir(final.parent)
    return True


class _flock:
    """Exclusive flock(2) on ``path`` (created if missing) for a ``with`` block.

    The lock file may be unlinked by its holder (:meth:`remove`, after the key
    itself is gone), so a waiter that wakes up holding an unlinked inode opens
    the path again: the lock is held only on the file the path names."""

    def __init__(self, path: Path, create: bool = True) -> None:
        self.path = path
        self.create = create
        self.fd = -1

    def __enter__(self) -> _flock:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if self.create else 0), 0o644)
            except (FileNotFoundError, NotADirectoryError) as e:
                if self.create:
                    raise from_errno(e.errno or errno.ENOENT, str(self.path), None, "lock") from None
                return self  # no lock file (or no such directory): nobody uses CAS on this key
            except OSError as e:
                raise from_errno(e.errno or errno.EIO, str(self.path), None, "lock") from None
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                self.fd = fd
                return self
            os.close(fd)  # removed (or replaced) while we waited: lock what the path names now

    def remove(self) -> None:
        """Unlink the lock file while holding it (the key it guards is gone)."""
        if self.fd >= 0:
            _unlink_quiet(self.path)

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1
