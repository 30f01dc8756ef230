"""KVCacheStore: reused prefixes' KV cache in host memory, on local disk and in a shared store.

>>> fp = ModelFingerprint("llama-3-8b", "bfloat16", layers=32, kv_heads=8, head_dim=128)
>>> kv = KVCacheStore(fp, host_bytes=8 << 30, disk_dir="/nvme/kv", shared="s3://bucket/kv")
>>> n = kv.lookup(tokens)             # tokens of the longest stored prefix
>>> n = kv.retrieve(tokens, out=cache)  # loaded into the engine's KV tensors
>>> kv.store(tokens, cache)          # after prefill

Only whole chunks of ``chunk_tokens`` tokens are stored and returned; a
trailing partial chunk is the caller's to recompute. Every chunk loaded
from disk or the shared store is checked (fingerprint, key, shape, crc32c
per layer) before any of it is used; a failed check is counted and treated
as a miss.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import crypto
from ..config import IOOptions
from ..crc import crc32c
from ..errors import CorruptDataError, InvalidArgumentError, StorecompError
from ..io import Engine, PageCachePolicy
from ..store.base import Store
from . import format as fmt
from .fetch import SEGMENT_BYTES, Fetch, FetchOutcome, Sealing
from .keys import ModelFingerprint, Tenant, chunk_keys, token_array
from .tiers import Buffer, BufferPool, DiskTier, HostTier, SharedTier, SharedTierOptions, TierStats

GiB = 1 << 30

#: The shared-tier keywords of earlier releases and the SharedTierOptions field each one became.
#: Still accepted, with a DeprecationWarning, for one release.
_LEGACY_SHARED = {
    "shared_options": "store_options",
    "shared_prefix": "prefix",
    "shared_retry_seconds": "retry_seconds",
    "shared_backoff": "backoff",
    "shared_max_backoff": "max_backoff",
    "shared_max_bytes": "max_bytes",
    "shared_ttl_s": "ttl_s",
    "shared_gc_grace_s": "gc_grace_s",
    "shared_gc_interval_s": "gc_interval_s",
}


def _shared_tier_options(
    shared: str | os.PathLike[str] | Store | SharedTierOptions | None, legacy: dict[str, Any]
) -> SharedTierOptions | None:
    """``shared=`` as one options object, with any deprecated ``shared_*`` keywords folded in."""
    unknown = sorted(set(legacy) - _LEGACY_SHARED.keys())
    if unknown:
        raise TypeError(f"KVCacheStore() got an unexpected keyword argument {unknown[0]!r}")
    if legacy:
        old = ", ".join(f"{k}=" for k in legacy)
        new = ", ".join(f"{_LEGACY_SHARED[k]}=" for k in legacy)
        warnings.warn(
            f"KVCacheStore({old}) is deprecated: pass shared=SharedTierOptions(store, {new})", DeprecationWarning, stacklevel=3
        )
        if isinstance(shared, SharedTierOptions):
            raise InvalidArgumentError(f"shared= is a SharedTierOptions: set {new} in it instead of passing {old}")
    if shared is None or isinstance(shared, SharedTierOptions):
        return shared
    fields = {_LEGACY_SHARED[k]: v for k, v in legacy.items() if not (k == "shared_options" and v is None)}
    return SharedTierOptions(shared, **fields)


def _open_shared(opts: SharedTierOptions) -> Store:
    if isinstance(opts.store, Store):
        return opts.store
    from ..store.registry import open_store

    return open_store(opts.store, **opts.store_options)


class KVCacheStore:
    """A tiered KV-cache store for one model configuration (its ``fingerprint``).

    ``host_bytes`` and ``disk_bytes`` are the tiers' budgets in bytes;
    ``disk_dir`` (None: no disk tier) and ``shared`` (a
    :class:`~storecomp.kvcache.tiers.SharedTierOptions`, or just its store: a
    URL or a :class:`~storecomp.store.Store`; None: no shared tier) enable the
    lower tiers. The disk tier reads (and writes) through the page cache when
    ``disk_bytes`` fits the page-cache budget and with O_DIRECT when it does
    not (:class:`~storecomp.io.PageCachePolicy`; ``stats()["disk"]`` says which
    and why); ``disk_direct`` forces either (True: O_DIRECT, False: buffered).
    Writes land in host memory during :meth:`store` and reach the
    lower tiers in the background, unless ``write_through`` (then
    :meth:`store` returns once every tier has the chunk). A shared store
    that cannot be reached never fails a request: it is skipped, and
    background writes retry for up to ``SharedTierOptions.retry_seconds``.
    ``SharedTierOptions.max_bytes`` (bytes) and ``ttl_s`` (seconds) bound this
    model's chunks in the shared store (None: unbounded): a writer runs a GC
    pass at most every ``gc_interval_s`` seconds, deleting the oldest chunks,
    never one younger than ``gc_grace_s`` (see
    :mod:`storecomp.kvcache.maintenance`; ``storecomp kv gc`` does the same
    for a whole shared store). The keywords ``shared_options``,
    ``shared_prefix``, ``shared_retry_seconds``, ``shared_backoff``,
    ``shared_max_backoff``, ``shared_max_bytes``, ``shared_ttl_s``,
    ``shared_gc_grace_s`` and ``shared_gc_interval_s`` still work, deprecated:
    they are the options' fields of the same names without ``shared_``
    (``store_options`` for ``shared_options``).
    ``spare_bytes`` (default: 16 chunks) of freed chunk buffers are kept for
    reuse: a fresh buffer costs page faults. ``copy_threads``: threads for
    each chunk's copy between CPU KV tensors and the host tier (1: the
    calling thread only, leaving the other cores to the model).
    ``tenant`` (a :class:`~storecomp.kvcache.keys.Tenant`): chunk keys are
    HMAC-SHA-256 under its secret and its chunks live under
    ``tenants/<namespace>/`` in the disk and shared tiers, so another tenant
    can neither compute nor probe them; None: the public SHA-256 keys.
    ``encryption`` (a :class:`~storecomp.crypto.KeyProvider`, ``"env"``,
    ``"file:PATH"``; None: off): chunks in the disk and shared tiers are
    sealed with AES-256-GCM (a data key per chunk, wrapped by the provider's
    key; the chunk's namespace and key bound to every segment) by the writer
    threads and opened by worker threads; they live in their own pool
    (an ``enc/`` level in the path, after any tenant prefix), apart from plaintext chunks. The host
    tier stays plaintext. Raises ConfigError naming the setting when the
    provider's keys are missing.
    """

    def __init__(
        self,
        fingerprint: ModelFingerprint,
        *,
        chunk_tokens: int = 256,
        host_bytes: int = 4 * GiB,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_bytes: int = 64 * GiB,
        shared: str | os.PathLike[str] | Store | SharedTierOptions | None = None,
        write_through: bool = False,
        disk_direct: bool | None = None,
        io_options: IOOptions | None = None,
        workers: int = 8,
        spare_bytes: int | None = None,
        copy_threads: int = 1,
        tenant: Tenant | None = None,
        encryption: crypto.KeyProvider | str | None = None,
        **legacy: Any,
    ) -> None:
        if not isinstance(fingerprint, ModelFingerprint):
            raise InvalidArgumentError(f"fingerprint must be a ModelFingerprint, got {type(fingerprint).__name__}")
        if chunk_tokens <= 0:
            raise InvalidArgumentError(f"chunk_tokens must be positive, got {chunk_tokens}")
        if host_bytes < 0 or disk_bytes < 0:
            raise InvalidArgumentError("tier budgets must be non-negative byte counts")
        if copy_threads < 1:
            raise InvalidArgumentError(f"copy_threads must be at least 1, got {copy_threads}")
        if tenant is not None and not isinstance(tenant, Tenant):
            raise InvalidArgumentError(f"tenant must be a Tenant, got {type(tenant).__name__}")
        shared_opts = _shared_tier_options(shared, legacy)
        self.copy_threads = copy_threads
        self.tenant = tenant
        keys = crypto.key_provider(encryption)
        #: Directory / key prefix of this store's chunks below a tier's root.
        # [tenants/<name>/][enc/]<fingerprint>: the tenant's prefix first, so store permissions can scope it.
        self.namespace = "/".join(
            part for part in (tenant.prefix if tenant else "", "enc" if keys is not None else "", fingerprint.namespace) if part
        )
        self.fingerprint = fingerprint
        self.chunk_tokens = chunk_tokens
        self.layout = fmt.ChunkLayout(fingerprint, chunk_tokens)
        self.write_through = write_through
        self._shared_opts = shared_opts
        # Spare buffers kept for reuse (loads from lower tiers, chunks evicted from host).
        self.pool = BufferPool(keep_bytes=16 * self.layout.nbytes if spare_bytes is None else spare_bytes)
        self.host = HostTier(host_bytes, self.pool)
        opts = io_options or IOOptions.load()
        # The disk tier's page-cache tier: forced by disk_direct, else chosen for its budget.
        policy = PageCachePolicy("auto" if disk_direct is None else "on" if disk_direct else "off")
        direct = policy.choose_size(disk_bytes).direct if disk_dir is not None else "auto"
        self.engine = Engine(opts, direct=direct)  # writes too: O_DIRECT when the tier reads with it
        # A shared store opened here from a URL is ours to close; one passed in is the caller's.
        self._own_shared: Store | None = None
        try:
            self.disk = DiskTier(disk_dir, self.namespace, disk_bytes, self.engine, policy) if disk_dir is not None else None
            if shared_opts is not None:
                store = _open_shared(shared_opts)
                if store is not shared_opts.store:
                    self._own_shared = store
        except BaseException:
            self.engine.close()
            raise
        self.shared = (
            SharedTier(
                store,
                self.namespace,
                shared_opts.prefix,
                backoff=shared_opts.backoff,
                max_backoff=shared_opts.max_backoff,
                max_bytes=shared_opts.max_bytes,
                ttl_s=shared_opts.ttl_s,
                grace_s=shared_opts.gc_grace_s,
                gc_interval_s=shared_opts.gc_interval_s,
                check=self._check_object,
            )
            if shared_opts is not None
            else None
        )
        # Up to eight writers: while some checksum a chunk or fsync and rename
        # its file, the others' writes keep the device busy (32 MiB chunks on a
        # 2-core VM, one run: 2 writers 0.80x fio write, 4 0.83x, 8 0.94x; the
        # writes of 4 finished together at each group commit and left the device
        # idle while all 4 checksummed their next chunk). Chunks being written
        # hold budget that cannot be evicted, so at most half the budget is in flight.
        writers = max(1, min(8, disk_bytes // self.layout.nbytes // 2))
        self._disk_writer = ThreadPoolExecutor(writers, thread_name_prefix="storecomp-kv-disk")
        self._shared_writer = ThreadPoolExecutor(max(1, workers // 2), thread_name_prefix="storecomp-kv-shared")
        self._meta = ThreadPoolExecutor(workers, thread_name_prefix="storecomp-kv-meta")
        self._requests = ThreadPoolExecutor(2, thread_name_prefix="storecomp-kv-req")
        sealed_bytes = fmt.round_up(crypto.sealed_size(self.layout.nbytes, SEGMENT_BYTES))
        sealers = writers + max(1, workers // 2)
        self._sealing = (
            Sealing(
                keys,
                self.namespace,
                sealed_bytes,
                BufferPool(keep_bytes=(workers + sealers) * sealed_bytes),  # its own: sealed and plain sizes differ
                ThreadPoolExecutor(workers, thread_name_prefix="storecomp-kv-open"),
                workers,
                sealers,
                threading.BoundedSemaphore(max(1, len(os.sched_getaffinity(0)))),
            )
            if keys is not None
            else None
        )
        self._pending: set[Future[Any]] = set()
        self._pending_lock = threading.Lock()
        self._counts = TierStats()  # store-level: hits = chunks served, misses = chunks not found
        self._closed = False

    # ------------------------------------------------------------ helpers

    def _keys(self, tokens: Any, max_tokens: int | None = None) -> list[bytes]:
        arr = token_array(tokens)
        limit = None if max_tokens is None else max_tokens // self.chunk_tokens
        return chunk_keys(self.fingerprint, arr, self.chunk_tokens, max_chunks=limit, tenant=self.tenant)

    def _layout_of(self, kv: Any) -> Any:
        from .layouts import as_layout

        layout = as_layout(kv)
        layout.check(self.fingerprint)
        return layout

    def _check_room(self, keys: list[bytes], layout: Any) -> None:
        if len(keys) * self.chunk_tokens > layout.tokens:
            n = len(keys) * self.chunk_tokens
            raise InvalidArgumentError(f"{len(keys)} chunks need {n} token positions, the KV has {layout.tokens}")

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgumentError("KVCacheStore is closed")

    def _track(self, fut: Future[Any]) -> Future[Any]:
        with self._pending_lock:
            self._pending.add(fut)
        fut.add_done_callback(lambda f: self._discard(f))
        return fut

    def _discard(self, fut: Future[Any]) -> None:
        with self._pending_lock:
            self._pending.discard(fut)

    # ------------------------------------------------------------ lookup

    def lookup(self, tokens: Any) -> int:
        """Tokens of the longest prefix of ``tokens`` whose chunks are all stored (a multiple of chunk_tokens).

        Host and disk answer from their in-memory index; the shared store
        gets one batch of concurrent existence checks for the chunks the
        upper tiers lack (skipped while it is unreachable).
        """
        self._check_open()
        return self.lookup_keys(self._keys(tokens)) * self.chunk_tokens

    def chunk_keys(self, tokens: Any, max_tokens: int | None = None) -> list[bytes]:
        """The keys of the whole chunks of ``tokens`` (at most ``max_tokens`` tokens' worth) under this
        store's fingerprint and chunk size (:func:`~storecomp.kvcache.keys.chunk_keys`)."""
        return self._keys(tokens, max_tokens)

    def lookup_keys(self, keys: list[bytes]) -> int:
        """How many leading chunks of ``keys`` are stored in some tier (chunks, not tokens).

        The ``*_keys`` methods take keys an engine computed itself (:meth:`chunk_keys`, or
        :func:`~storecomp.kvcache.keys.keys_from_prefix_hashes`); key i is chunk i of the
        layout passed with them.
        """
        self._check_open()
        n = 0
        disk = self.disk
        for k in keys:
            if k in self.host.entries or (disk is not None and disk.has(k)):
                n += 1
            else:
                break
        if n < len(keys) and self.shared is not None:
            rest = keys[n:]
            present = self.shared.exists_many(rest, self._meta)
            for k in rest:
                if k not in present:
                    break
                n += 1
        return n

    # ------------------------------------------------------------ store

    def store(self, tokens: Any, kv: Any) -> int:
        """Store every whole chunk of ``tokens`` whose KV is in ``kv``.

        ``kv``: per-layer (key, value) tensors ``[batch, kv_heads, seq,
        head_dim]``, a transformers ``DynamicCache`` or a :mod:`layouts`
        adapter (paged caches). Returns the tokens now covered by stored
        chunks (chunks already stored are not rewritten). Raises
        InvalidArgumentError when the tensors do not match the fingerprint
        (layers, heads, head_dim, dtype).
        """
        self._check_open()
        layout = self._layout_of(kv)
        return self._store_keys(self._keys(tokens, layout.tokens), layout) * self.chunk_tokens

    def store_keys(self, keys: list[bytes], kv: Any) -> int:
        """:meth:`store` for chunks named by ``keys`` (chunk i: tokens ``[i*N, (i+1)*N)`` of ``kv``);
        returns the chunks now stored."""
        self._check_open()
        layout = self._layout_of(kv)
        self._check_room(keys, layout)
        return self._store_keys(list(keys), layout)

    def _store_keys(self, keys: list[bytes], layout: Any) -> int:
        lower: list[Future[Any]] = []
        todo = []
        for i, key in enumerate(keys):
            if key in self.host.entries or (self.disk is not None and self.disk.has(key)):
                if self.write_through:
                    lower.extend(self._write_missing_lower(key))
            else:
                todo.append((i, key))
        self._reserve_buffers(len(todo))
        if self._sealing is not None and todo:
            copies = (self.disk is not None) + (self.shared is not None)  # a sealed buffer per lower-tier write
            self._sealing.reserve(len(todo) * copies, self._sealing.writers)
        for i, key in todo:
            buf = self._build(key, layout, i * self.chunk_tokens)
            self.host.put(key, buf)
            lower.extend(self._write_lower(key, buf, disk=True))
            self.host.unref(buf)  # the host tier and the writers hold their own references
            self._counts.add(bytes_written=buf.array.nbytes)
        if self.write_through:
            for f in lower:
                f.result()
        return len(keys)

    def _reserve_buffers(self, chunks: int) -> None:
        """Allocate, before this call's copies and writes start, the buffers its ``chunks`` new chunks
        will not get from host-tier evictions. Faulting in a 32 MiB buffer took 4 ms on a quiet
        2-core machine and 100+ ms once the disk writers' checksums had the cores."""
        n = self.layout.nbytes
        host = self.host
        fits = (host.budget - host.used) // n if host.budget >= n else chunks  # past that, evictions supply buffers
        self.pool.reserve(n, min(chunks, max(0, fits)))

    def _write_missing_lower(self, key: bytes) -> list[Future[Any]]:
        buf = self.host.acquire(key)
        if buf is None:
            return []
        try:
            return self._write_lower(key, buf, disk=self.disk is not None and key not in self.disk.entries)
        finally:
            self.host.release(key, buf)

    def _build(self, key: bytes, layout: Any, start: int) -> Buffer:
        lay = self.layout
        self.host.make_room(lay.nbytes)  # an evicted buffer is reused: no page faults
        buf = self._new_buf()
        layout.gather_chunk(start, buf.array, lay, threads=self.copy_threads)
        return buf

    def _seal(self, key: bytes, buf: Buffer) -> None:
        """Checksums and header, computed once, by the first lower-tier writer (not on the request path)."""
        with buf.seal_lock:
            if buf.sealed:
                return
            lay = self.layout
            # Sealed tiers: the AES-GCM tags cover every byte, so the layer crcs are 0 and unchecked.
            crcs = (
                [crc32c(lay.layer_view(buf.array, i)) for i in range(self.fingerprint.layers)]
                if self._sealing is None
                else [0] * self.fingerprint.layers
            )
            fmt.write_header(buf.array, lay, key, crcs)
            buf.sealed = True

    def _write_lower(self, key: bytes, buf: Buffer, *, disk: bool) -> list[Future[Any]]:
        futs = []
        if disk and self.disk is not None:
            self.host.ref(buf)
            futs.append(self._track(self._disk_writer.submit(self._disk_job, key, buf)))
        if self.shared is not None and key not in self.shared.known:
            self.host.ref(buf)
            futs.append(self._track(self._shared_writer.submit(self._shared_job, key, buf)))
        return futs

    def _disk_job(self, key: bytes, buf: Buffer) -> bool:
        try:
            assert self.disk is not None
            self._seal(key, buf)
            if self._sealing is None:
                return self.disk.put(key, buf.array)
            sealed = self._sealing.seal(key, buf)  # on this writer thread
            try:
                return self.disk.put(key, sealed.array)
            finally:
                self._sealing.pool.put(sealed)
        finally:
            self.host.unref(buf)

    def _shared_job(self, key: bytes, buf: Buffer) -> bool:
        shared, opts = self.shared, self._shared_opts
        assert shared is not None and opts is not None
        deadline = time.monotonic() + opts.retry_seconds
        sealed: Buffer | None = None
        try:
            self._seal(key, buf)
            if self._sealing is not None:
                sealed = self._sealing.seal(key, buf)  # on this writer thread
            data = buf.array if sealed is None else sealed.array
            while True:
                wait = shared.down_until - time.monotonic()
                if wait > 0:
                    if time.monotonic() + wait > deadline or self._closed:
                        shared.stats.add(write_failures=1)
                        return False
                    time.sleep(wait)
                try:
                    return shared.put(key, data)
                except (StorecompError, OSError) as e:
                    shared.mark_down(e)
        finally:
            if sealed is not None:
                assert self._sealing is not None
                self._sealing.pool.put(sealed)
            self.host.unref(buf)

    # ------------------------------------------------------------ retrieve

    def _plan(self, keys: list[bytes], per_layer: bool) -> list[Fetch]:
        """Start loading the chunks of ``keys`` in order; stops at the first chunk no tier may hold."""
        fetches: list[Fetch] = []
        shared_present: set[bytes] | None = None
        reserved = self._sealing is None
        for i, key in enumerate(keys):
            buf = self.host.acquire(key)
            if buf is None and not reserved:
                # Before the first sealed read starts: the sealed buffers its open jobs will use, so that
                # none is faulted in by a job while the others' reads and decryption hold the cores.
                assert self._sealing is not None
                self._sealing.reserve(len(keys) - i, self._sealing.threads)
                reserved = True
            if buf is not None:
                f = Fetch(i, key, self.host, buf, self.layout)
                f.header = fmt.Header(self.chunk_tokens, ())
                f.checked = set(range(self.fingerprint.layers))
                f.outcome = FetchOutcome.HIT  # read in place: host chunks were checked on the way in
                fetches.append(f)
                continue
            self.host.stats.add(misses=1)
            if self.disk is not None and self.disk.has(key) and self.disk.pin(key):
                f = Fetch(i, key, self.disk, self._new_buf(), self.layout, self._sealing)
                f.start(per_layer)
                fetches.append(f)
                continue
            if self.disk is not None:
                self.disk.stats.add(misses=1)
            if self.shared is None or not self.shared.up:
                break
            if shared_present is None:
                shared_present = self.shared.exists_many(keys[i:], self._meta)
            if key not in shared_present:
                self.shared.stats.add(misses=1)
                break
            f = Fetch(i, key, self.shared, self._new_buf(), self.layout, self._sealing)
            f.start(per_layer)
            fetches.append(f)
        return fetches

    def _new_buf(self) -> Buffer:
        buf = self.pool.get(self.layout.nbytes)
        buf.refs = 1
        buf.sealed = False
        return buf

    def _finish(self, fetches: list[Fetch], good: int) -> None:
        """Account, promote the good chunks upward, release everything."""
        for f in fetches:
            f.drain()
            tier = f.tier
            if f.index < good:
                n = self.layout.nbytes
                secs = (f.t1 or time.perf_counter()) - f.t0 if tier is not self.host else 0.0
                tier.stats.add(hits=1, bytes_read=n, read_seconds=secs)
                self._counts.add(hits=1, bytes_read=n)
            elif f.bad:
                self._fail(f)
            if tier is self.host:
                self.host.release(f.key, f.buf)
                continue
            if isinstance(tier, DiskTier):
                tier.unpin(f.key)
            if f.index < good and len(f.checked) == self.fingerprint.layers:  # only fully verified chunks move up
                f.buf.sealed = True
                self.host.put(f.key, f.buf)
                if isinstance(tier, SharedTier) and self.disk is not None:
                    self._write_lower(f.key, f.buf, disk=True)
            self.host.unref(f.buf)

    def _check_object(self, key: bytes, obj: np.ndarray, where: str) -> None:
        """Check chunk ``key``'s whole stored object as a read does (opened first when sealed);
        raises CorruptDataError (WrongKeyError: not openable with this store's keys)."""
        if self._sealing is not None:
            plain = np.empty(self.layout.nbytes, np.uint8)
            if crypto.unseal_into(obj, plain, self._sealing.name(key), self._sealing.keys, where) != plain.size:
                raise CorruptDataError(f"{where}: sealed chunk does not hold {plain.size} bytes")
            obj = plain
        if obj.size != self.layout.nbytes:
            raise CorruptDataError(f"{where}: {obj.size} bytes, a chunk is {self.layout.nbytes}")
        header = fmt.read_header(obj, self.layout, key, where)
        if self._sealing is None:  # a sealed chunk's layers carry no crc32c: every byte passed its tag
            for layer in range(self.fingerprint.layers):
                fmt.check_layer(obj, self.layout, header, layer, where)

    def _fail(self, f: Fetch) -> None:
        tier, outcome = f.tier, f.outcome
        if outcome is FetchOutcome.CORRUPT:
            tier.stats.add(verify_failures=1, misses=1)
            self._counts.add(verify_failures=1)
            tier.forget(f.key, delete=True)
        elif outcome is FetchOutcome.UNAVAILABLE:
            tier.stats.add(unavailable=1, misses=1)
            if isinstance(tier, SharedTier):
                tier.mark_down(RuntimeError(f"unavailable: {f.detail}"))
        else:
            tier.stats.add(misses=1)
            if outcome is FetchOutcome.UNDECRYPTABLE:  # counted, never deleted: the key may be what is wrong
                tier.stats.add(verify_failures=1)
                self._counts.add(verify_failures=1)
            tier.forget(f.key, delete=False)

    def retrieve(self, tokens: Any, out: Any) -> int:
        """Load the longest stored prefix of ``tokens`` into ``out``; returns its length in tokens.

        ``out`` takes the same forms as ``kv`` in :meth:`store` and must have
        room for the tokens (its positions past the returned count are left
        as they were). Every chunk is verified before any of it is written
        to ``out`` (chunks are written in order, each once verified, while
        later ones load); a chunk that fails is a counted miss and ends the
        prefix.
        """
        self._check_open()
        layout = self._layout_of(out)
        return self._retrieve_keys(self._keys(tokens, layout.tokens), layout) * self.chunk_tokens

    def retrieve_keys(self, keys: list[bytes], out: Any) -> int:
        """:meth:`retrieve` for chunks named by ``keys``; returns the chunks loaded (a prefix of ``keys``)."""
        self._check_open()
        layout = self._layout_of(out)
        self._check_room(keys, layout)
        return self._retrieve_keys(list(keys), layout)

    def _retrieve_keys(self, keys: list[bytes], layout: Any) -> int:
        fetches = self._plan(keys, per_layer=False)
        good = 0
        try:
            # Chunk i is scattered as soon as it is verified, while the reads of
            # the later chunks are still in flight (copies overlap the I/O).
            for f in fetches:
                if not f.wait_all():
                    break
                layout.scatter_chunk(f.index * self.chunk_tokens, f.buf.array, self.layout, threads=self.copy_threads)
                good += 1
        finally:
            self._finish(fetches, good)
        self._counts.add(misses=len(keys) - good)
        return good

    def retrieve_layerwise(self, tokens: Any, out: Any) -> Iterator[tuple[int, int]]:
        """Load layer by layer: yields ``(layer, tokens)`` once ``layer`` is in ``out``.

        All reads are issued at once; layer i is verified and scattered as
        soon as its bytes arrive, so the caller can run layer i while i+1
        loads. ``tokens`` is the prefix valid for that layer. It can only
        shrink from one layer to the next (a chunk whose later layer fails
        its check is dropped), so use the last value yielded as the
        retrieved length and recompute from there.
        """
        self._check_open()
        layout = self._layout_of(out)
        gen = self._retrieve_layerwise_keys(self._keys(tokens, layout.tokens), layout)
        try:
            for layer, n in gen:
                yield layer, n * self.chunk_tokens
        finally:
            gen.close()  # an early stop releases the chunks now

    def retrieve_layerwise_keys(self, keys: list[bytes], out: Any) -> Generator[tuple[int, int], None, None]:
        """:meth:`retrieve_layerwise` for chunks named by ``keys``; yields ``(layer, chunks)``."""
        self._check_open()
        layout = self._layout_of(out)
        self._check_room(keys, layout)
        return self._retrieve_layerwise_keys(list(keys), layout)

    def _retrieve_layerwise_keys(self, keys: list[bytes], layout: Any) -> Generator[tuple[int, int], None, None]:
        fetches = self._plan(keys, per_layer=True)
        good = len(fetches)
        try:
            for layer in range(self.fingerprint.layers):
                for f in fetches[:good]:
                    if not f.wait_layer(layer):
                        good = f.index
                        break
                for f in fetches[:good]:
                    start = f.index * self.chunk_tokens
                    layout.scatter_chunk(start, f.buf.array, self.layout, [layer], threads=self.copy_threads)
                yield layer, good
        finally:
            self._finish(fetches, good)
            self._counts.add(misses=len(keys) - good)

    # ------------------------------------------------------------ non-blocking

    def lookup_async(self, tokens: Any) -> Future[int]:
        """:meth:`lookup` in the background."""
        return self._requests.submit(self.lookup, tokens)

    def store_async(self, tokens: Any, kv: Any) -> Future[int]:
        """:meth:`store` in the background; ``kv`` must not change until the future is done."""
        return self._requests.submit(self.store, tokens, kv)

    def retrieve_async(self, tokens: Any, out: Any) -> Future[int]:
        """:meth:`retrieve` in the background; do not read ``out`` before the future is done."""
        return self._requests.submit(self.retrieve, tokens, out)

    # ------------------------------------------------------------ lifetime, stats

    def flush(self, timeout: float | None = None) -> None:
        """Wait until background writes to the lower tiers finish (or give up)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._pending_lock:
                pending = list(self._pending)
            if not pending:
                return
            for f in pending:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    f.result(left)
                except TimeoutError:
                    raise
                except BaseException:  # noqa: BLE001 - counted by the job
                    pass

    def stats(self) -> dict[str, Any]:
        """Counters per tier (hits, misses, bytes, GB/s, evictions, verification and write failures)."""
        out: dict[str, Any] = {"chunk_tokens": self.chunk_tokens, "chunk_bytes": self.layout.nbytes}
        total = self._counts.as_dict()
        out["chunks_hit"] = total["hits"]
        out["chunks_missed"] = total["misses"]
        out["verify_failures"] = total["verify_failures"]
        out["host"] = self.host.stats.as_dict() | {"used_bytes": self.host.used, "budget_bytes": self.host.budget}
        if self.disk is not None:
            pc = self.disk.page_cache
            out["disk"] = self.disk.stats.as_dict() | {
                "used_bytes": self.disk.used,
                "budget_bytes": self.disk.budget,
                "rebuild_seconds": self.disk.rebuild_seconds,
                "page_cache": pc.tier,  # buffered | direct, and why
                "page_cache_reason": pc.reason,
                "page_cache_buffered": int(pc.tier == "buffered"),
            }
        if self.shared is not None:
            out["shared"] = self.shared.stats.as_dict() | {
                "url": self.shared.store.url,
                "up": self.shared.up,
                "last_error": self.shared.last_error,
            }
        return out

    def close(self) -> None:
        """Finish background writes (shared ones while the store is up), stop threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._requests.shutdown(wait=True)
        self._disk_writer.shutdown(wait=True)
        self._shared_writer.shutdown(wait=True)
        self._meta.shutdown(wait=True)
        if self._sealing is not None:
            self._sealing.executor.shutdown(wait=True)
        self.engine.close()
        if self._own_shared is not None:
            self._own_shared.close()

    def __enter__(self) -> KVCacheStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
