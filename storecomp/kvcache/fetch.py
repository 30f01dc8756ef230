"""Loading one chunk from a tier into a host buffer, checked layer by layer.

A :class:`Fetch` issues its reads at once (the layout fixes every offset
before the header is seen) and verifies as the caller asks for layers:
header first (magic, version, fingerprint, key, shape, header crc), then
the crc32c of each layer asked for. Anything that fails ends the fetch with
a :class:`FetchOutcome` other than ``HIT``; its bytes are never used.

From an encrypted tier (:class:`Sealing`), one job on a worker thread reads
the sealed object and opens it (AES-GCM, every segment's tag checked) into
the chunk buffer, group by group as the reads land; the checks above then
run on the plaintext.
"""

from __future__ import annotations

import enum
import threading
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import crypto
from ..errors import (
    CorruptDataError,
    InvalidArgumentError,
    NotFoundError,
    ShortReadError,
    StorecompError,
    VersionChangedError,
    WrongKeyError,
)
from ..io import aead
from . import format as fmt
from .tiers import Buffer, BufferPool, DiskTier, SharedTier, Tier, TierReads

#: Plaintext per authenticated segment of a sealed chunk: chunks are read whole, so large
#: segments (less per-segment work: 4.6 GB/s sealing at 1 MiB vs 2.3 at 64 KiB, one core).
SEGMENT_BYTES = 1 << 20
#: Segments of a sealed chunk read from the disk tier per request: each group is opened as it lands.
GROUP_SEGMENTS = 4


class FetchOutcome(enum.Enum):
    """What fetching one chunk from one tier came to (:attr:`Fetch.outcome`), and what the store does then."""

    HIT = "hit"  # every layer arrived and passed its checks: used, and promoted to upper tiers
    MISS = "miss"  # the tier does not hold it (never stored, evicted, vanished): dropped from the index only
    CORRUPT = "corrupt"  # bytes failed a check (truncated, header, crc32c, AES-GCM tag): deleted from the tier
    UNDECRYPTABLE = "undecryptable"  # sealed under a key this store cannot unwrap: a counted failure, never deleted
    UNAVAILABLE = "unavailable"  # the tier could not be read: nothing forgotten or deleted (the shared tier backs off)


@dataclass(frozen=True)
class Sealing:
    """How a KV store encrypts its disk and shared tiers: the keys, where sealed buffers
    come from, and the threads that do the AES work (never the caller's)."""

    keys: crypto.KeyProvider
    namespace: str  # bound into every chunk's associated data with its key
    nbytes: int  # a sealed chunk object, padded to 4096
    pool: BufferPool  # sealed buffers, reused
    executor: Executor
    threads: int  # the executor's workers (reads and opens in flight at once)
    writers: int  # threads that seal (disk and shared tier writers)
    cores: threading.Semaphore  # chunks sealed at once: one per core

    def name(self, key: bytes) -> bytes:
        return f"{self.namespace}/{key.hex()}".encode()

    def reserve(self, jobs: int, at_once: int) -> None:
        """Have the sealed buffers of ``jobs`` reads or writes, ``at_once`` of them at a time, allocated
        now (buffers already free count): a 32 MiB buffer faulted in by a job took 100+ ms while
        the other jobs' AES work held the cores."""
        self.pool.reserve(self.nbytes, min(jobs, at_once))

    def seal(self, key: bytes, plain: Buffer) -> Buffer:
        """A pool buffer holding chunk ``key`` sealed (the caller returns it with ``pool.put``).

        At most one chunk per core is sealed at a time: the writers that wait write the chunks
        already sealed meanwhile (eight chunks sealed at once on two cores all finished together,
        and the disk then had the writes of all eight and nothing to overlap them with)."""
        out = self.pool.get(self.nbytes)
        with self.cores:
            n = crypto.seal_into(plain.array, out.array, self.name(key), self.keys, SEGMENT_BYTES)
        out.array[n:] = 0
        return out

    def read_and_open(self, tier: Tier, key: bytes, dst: Buffer, plain_bytes: int, where: str) -> None:
        """Read the sealed object of ``key`` from ``tier`` and open it into ``dst`` (``plain_bytes``).

        From the disk tier the segments are read in groups of ``GROUP_SEGMENTS``, each opened as soon
        as it lands, so that the AES work overlaps the reads of the rest (all from the one open file:
        one version). The shared tier's object is read in one request (one version: ranged requests
        could each see another object written under the key in between)."""
        seg = SEGMENT_BYTES
        base = crypto.data_offset(plain_bytes, seg)
        if isinstance(tier, DiskTier) and aead.status()["available"] and crypto.backend_info()["backend"] == "openssl-evp":
            return self._read_and_open_on_engine(tier, key, dst, plain_bytes, where)
        sealed = self.pool.get(self.nbytes)
        if isinstance(tier, SharedTier):
            ranges = [(0, self.nbytes)]
        else:
            step = seg * GROUP_SEGMENTS
            ranges = [(0, base)] + [(base + off, min(step, plain_bytes - off)) for off in range(0, plain_bytes, step)]
        try:
            reads = tier.submit_reads(key, sealed.array, ranges)
        except BaseException:
            self.pool.put(sealed)
            raise
        try:
            futures = reads.futures
            futures[0].result()
            env = crypto.open_header(sealed.array[:base], self.name(key), self.keys, where)
            if env.plaintext_bytes != plain_bytes or env.segment_bytes != seg or env.tags is None:
                raise CorruptDataError(
                    f"{where}: sealed chunk of {env.plaintext_bytes} bytes in {env.segment_bytes}-byte segments"
                )
            src, out = sealed.array, dst.array
            for i in range(env.segments):
                if len(futures) > 1 and i % GROUP_SEGMENTS == 0:
                    futures[1 + i // GROUP_SEGMENTS].result()
                off, n = env.segment_plain(i)
                env.open_segment(i, src[base + off : base + off + n], out[off : off + n], env.tag(i), where)
        finally:
            for f in reads.futures:  # none may still write into the sealed buffer once it is back in the pool
                try:
                    f.result()
                except BaseException:  # noqa: BLE001 - the first failure is the one raised
                    pass
            reads.close()
            self.pool.put(sealed)

    def _read_and_open_on_engine(self, tier: DiskTier, key: bytes, dst: Buffer, plain_bytes: int, where: str) -> None:
        """:meth:`read_and_open` from the disk tier: the header and tag table first, then the ciphertext
        straight into ``dst`` at the plaintext's offsets (one native batch, all from the one open file),
        each segment opened in place on the engine's AEAD threads as it lands: no sealed buffer, no copy.
        On any failure ``dst`` is zeroed (CorruptDataError; WrongKeyError for a key problem)."""
        seg = SEGMENT_BYTES
        base = crypto.data_offset(plain_bytes, seg)
        head = np.zeros(base, np.uint8)
        reads = tier.submit_reads(key, head, [(0, base)])
        try:
            reads.futures[0].result()
            env = crypto.open_header(head, self.name(key), self.keys, where)
            if env.plaintext_bytes != plain_bytes or env.segment_bytes != seg or env.tags is None or env.native is None:
                raise CorruptDataError(
                    f"{where}: sealed chunk of {env.plaintext_bytes} bytes in {env.segment_bytes}-byte segments"
                )
            step = seg * GROUP_SEGMENTS
            offs = list(range(0, plain_bytes, step))
            lens = [min(step, plain_bytes - o) for o in offs]
            assert reads.file is not None
            fut = aead.submit_sealed(
                tier.engine,
                [reads.file],
                np.zeros(len(offs), np.int64),
                np.array([base + o for o in offs], np.uint64),
                np.array(lens, np.uint64),
                np.array([dst.address + o for o in offs], np.uint64),
                [dst.array],
                [env.native],
                np.zeros(len(offs), np.int32),
                np.array([o // seg for o in offs], np.uint64),
                np.frombuffer(env.tags, np.uint8),
                tier.page_cache.direct,
            )
            try:
                got = fut.result()
                if (got < np.array(lens, np.uint64)).any():
                    raise CorruptDataError(f"{where}: sealed chunk truncated")
                failed = fut.failed_segments()
                if (failed >= 0).any():
                    raise CorruptDataError(f"{where}: segment {int(failed[failed >= 0].min())} failed its authentication tag")
            except BaseException:
                fut.wait()
                dst.array[:plain_bytes] = 0
                raise
        finally:
            reads.close()


class Fetch:
    """Chunk ``key`` (index ``index`` in the request) on its way from ``tier`` into ``buf``."""

    def __init__(
        self, index: int, key: bytes, tier: Tier, buf: Buffer, layout: fmt.ChunkLayout, sealing: Sealing | None = None
    ) -> None:
        self.index = index
        self.key = key
        self.tier = tier
        self.buf = buf
        self.layout = layout
        self.header: fmt.Header | None = None
        self.futures: list[Any] = []  # [whole] or [header, layer 0, layer 1, ...]
        self.reads: TierReads | None = None
        self.checked: set[int] = set()
        self.outcome: FetchOutcome | None = None  # None while layers are still unchecked
        self.detail = ""  # why the chunk is unusable
        self.t0 = time.perf_counter()
        self.t1 = 0.0
        self.sealing = sealing

    @property
    def _where(self) -> str:
        return f"{self.tier.name} chunk {self.key.hex()[:16]}"

    @property
    def bad(self) -> bool:
        return self.outcome is not None and self.outcome is not FetchOutcome.HIT

    def _end(self, outcome: FetchOutcome, detail: str) -> None:
        self.outcome, self.detail = outcome, detail

    def _ranges(self, per_layer: bool) -> list[tuple[int, int]]:
        lay = self.layout
        if not per_layer:
            return [(0, lay.nbytes)]
        return [(0, lay.header_bytes)] + [(lay.layer_offset(i), lay.layer_bytes) for i in range(lay.fingerprint.layers)]

    def start(self, per_layer: bool) -> None:
        """Issue every read of the chunk (whole, or header and layer by layer); returns at once.
        Raises InvalidArgumentError when ``buf`` cannot hold the chunk (nothing read)."""
        if self.sealing is not None:
            have, need = self.buf.array.nbytes, self.layout.nbytes
            if have < need:
                raise InvalidArgumentError(f"{self._where}: a {have}-byte buffer cannot hold the {need}-byte chunk")
            sealing = self.sealing
            self.futures.append(sealing.executor.submit(sealing.read_and_open, self.tier, self.key, self.buf, need, self._where))
            return
        try:
            self.reads = self.tier.submit_reads(self.key, self.buf.array, self._ranges(per_layer))
        except InvalidArgumentError:
            raise
        except NotFoundError:
            self._end(FetchOutcome.MISS, "missing")
        except (StorecompError, OSError) as e:
            # A shared store that cannot be reached is skipped for a while; a disk chunk that
            # cannot be opened is dropped from the index (as before the Tier protocol).
            self._end(FetchOutcome.UNAVAILABLE if isinstance(self.tier, SharedTier) else FetchOutcome.MISS, str(e))
        else:
            self.futures = list(self.reads.futures)

    def _wait(self, i: int) -> bool:
        if self.bad:
            return False
        f = self.futures[i] if self.futures else None
        if f is None:
            return True  # host: already there
        try:
            f.result()
        except ShortReadError as e:
            self._end(FetchOutcome.CORRUPT, f"truncated: {e}")
        except WrongKeyError as e:  # a wrong or missing key, or a moved object: a miss, but not deleted
            self._end(FetchOutcome.UNDECRYPTABLE, str(e))
        except CorruptDataError as e:  # a segment failed its tag, or not a sealed object
            self._end(FetchOutcome.CORRUPT, str(e))
        except (NotFoundError, VersionChangedError):  # gone or replaced meanwhile: a miss, not a fault
            self._end(FetchOutcome.MISS, "missing")
        except (StorecompError, OSError) as e:
            self._end(FetchOutcome.UNAVAILABLE, str(e))
        return not self.bad

    def wait_layer(self, layer: int) -> bool:
        """Wait for layer ``layer`` (and the header) and verify it; False when unusable."""
        if self.bad:
            return False
        if layer in self.checked:
            return True
        whole = len(self.futures) == 1
        where = self._where
        if self.header is None:
            if not self._wait(0):
                return False
            try:
                self.header = fmt.read_header(self.buf.array, self.layout, self.key, where)
            except CorruptDataError as e:
                self._end(FetchOutcome.CORRUPT, str(e))
                return False
        if not whole and not self._wait(layer + 1):
            return False
        try:
            if self.sealing is None:  # a sealed chunk's every byte passed its AES-GCM tag
                fmt.check_layer(self.buf.array, self.layout, self.header, layer, where)
        except CorruptDataError as e:
            self._end(FetchOutcome.CORRUPT, str(e))
            return False
        self.checked.add(layer)
        if len(self.checked) == self.layout.fingerprint.layers:
            self.outcome = FetchOutcome.HIT
        self.t1 = time.perf_counter()
        return True

    def wait_all(self) -> bool:
        return all(self.wait_layer(i) for i in range(self.layout.fingerprint.layers))

    def drain(self) -> None:
        """Wait for every read still in flight (the buffer must not be reused before)."""
        for f in self.futures:
            try:
                f.result()
            except BaseException:  # noqa: BLE001 - only waiting; errors were or will be reported
                pass
        if self.reads is not None:
            self.reads.close()
            self.reads = None
