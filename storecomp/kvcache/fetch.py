"""Loading one chunk from a tier into a host buffer, checked layer by layer.

A :class:`Fetch` issues its reads at once (the layout fixes every offset
before the header is seen) and verifies as the caller asks for layers:
header first (magic, version, fingerprint, key, shape, header crc), then
the crc32c of each layer asked for. Anything that fails makes the fetch
``bad``; it is never returned as data.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import CorruptDataError, NotFoundError, ShortReadError, StorecompError, VersionChangedError
from . import format as fmt
from .tiers import Buffer, DiskTier, SharedTier


class Fetch:
    """Chunk ``key`` (index ``index`` in the request) on its way from ``tier`` into ``buf``."""

    def __init__(self, index: int, key: bytes, tier: str, buf: Buffer, layout: fmt.ChunkLayout) -> None:
        self.index = index
        self.key = key
        self.tier = tier
        self.buf = buf
        self.layout = layout
        self.header: fmt.Header | None = None
        self.futures: list[Any] = []  # [whole] or [header, layer 0, layer 1, ...]
        self.file: Any = None
        self.checked: set[int] = set()
        self.error: str | None = None  # why the chunk is unusable
        self.corrupt = False
        self.t0 = time.perf_counter()
        self.t1 = 0.0

    @property
    def bad(self) -> bool:
        return self.error is not None

    def _ranges(self, per_layer: bool) -> list[tuple[int, int]]:
        lay = self.layout
        if not per_layer:
            return [(0, lay.nbytes)]
        return [(0, lay.header_bytes)] + [(lay.layer_offset(i), lay.layer_bytes) for i in range(lay.fingerprint.layers)]

    def start_disk(self, disk: DiskTier, per_layer: bool) -> None:
        try:
            self.file = disk.engine.open(disk.path(self.key), "r")
            for off, n in self._ranges(per_layer):
                self.futures.append(self.file.read_many_into(self.buf.array, [off], [n], [off]))
        except NotFoundError:
            self.error = "vanished"
        except StorecompError as e:
            self.error = str(e)

    def start_shared(self, shared: SharedTier, per_layer: bool) -> None:
        okey = shared.object_key(self.key)
        try:
            for off, n in self._ranges(per_layer):
                self.futures.append(shared.store.submit_ranges(okey, [off], [n], self.buf.array, [off]))
        except NotFoundError:
            self.error = "missing"
        except (StorecompError, OSError) as e:
            self.error = f"unavailable: {e}"

    def _wait(self, i: int) -> bool:
        if self.bad:
            return False
        f = self.futures[i] if self.futures else None
        if f is None:
            return True  # host: already there
        try:
            f.result()
        except ShortReadError as e:
            self.error, self.corrupt = f"truncated: {e}", True
        except (NotFoundError, VersionChangedError):  # gone or replaced meanwhile: a miss, not a fault
            self.error = "missing"
        except (StorecompError, OSError) as e:
            self.error = f"unavailable: {e}"
        return not self.bad

    def wait_layer(self, layer: int) -> bool:
        """Wait for layer ``layer`` (and the header) and verify it; False when unusable."""
        if self.bad:
            return False
        if layer in self.checked:
            return True
        whole = len(self.futures) == 1
        where = f"{self.tier} chunk {self.key.hex()[:16]}"
        if self.header is None:
            if not self._wait(0):
                return False
            try:
                self.header = fmt.read_header(self.buf.array, self.layout, self.key, where)
            except CorruptDataError as e:
                self.error, self.corrupt = str(e), True
                return False
        if not whole and not self._wait(layer + 1):
            return False
        try:
            fmt.check_layer(self.buf.array, self.layout, self.header, layer, where)
        except CorruptDataError as e:
            self.error, self.corrupt = str(e), True
            return False
        self.checked.add(layer)
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
        if self.file is not None:
            self.file.close()
            self.file = None
