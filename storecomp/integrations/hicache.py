"""HiCache-style page storage on :class:`~storecomp.kvcache.KVCacheStore`, without importing SGLang.

SGLang's HiCache hands its L3 storage backend page hashes (hex strings, the
token chain of docs/kvcache.md: see :func:`~storecomp.kvcache.keys.prefix_hashes`)
and token indices into its host KV pool. :class:`HostPages` is the
host pool seen as a paged KV cache (one storecomp chunk per page), and
:class:`PageStore` implements the zero-copy contract on it: ``exists``
(how many leading pages are stored), ``get`` / ``set`` (pages straight
between the pool and the tiers, one verified chunk per page). The SGLang
subclass (:mod:`storecomp.integrations.sglang`) is a thin shell over these.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError, InvalidArgumentError
from ..kvcache import KVCacheStore, ModelFingerprint, PagedLayout
from ..kvcache.keys import keys_from_prefix_hashes
from .breakeven import BreakEven

__all__ = ["HOST_LAYOUTS", "HostPages", "PageStore"]

#: SGLang host pool layouts (``--hicache-mem-layout``) and their ``kv_buffer`` dims
HOST_LAYOUTS = {
    "layer_first": "(2, layers, tokens, heads, head_dim)",
    "page_first": "(2, tokens, layers, heads, head_dim)",
    "page_first_direct": "(2, pages, layers, page_size, heads, head_dim)",
}


class HostPages:
    """Per-layer ``(K, V)`` views ``[pages, page_size, heads, head_dim]`` of a host pool's ``kv_buffer``.

    Raises ConfigError for a layout outside :data:`HOST_LAYOUTS` or a buffer
    whose shape does not match (layers, heads, head_dim, page_size).
    """

    def __init__(self, kv_buffer: torch.Tensor, layout: str, page_size: int, layers: int, heads: int, head_dim: int) -> None:
        if layout not in HOST_LAYOUTS:
            raise ConfigError(f"host KV layout {layout!r} is not supported (supported: {', '.join(HOST_LAYOUTS)})")
        shape = tuple(kv_buffer.shape)
        if layout == "page_first_direct":
            ok = len(shape) == 6 and shape[0] == 2 and shape[2:] == (layers, page_size, heads, head_dim)
        else:
            pos = (1, 2) if layout == "layer_first" else (2, 1)  # (layers dim, tokens dim)
            ok = len(shape) == 5 and shape[0] == 2 and shape[pos[0]] == layers and shape[3:] == (heads, head_dim)
            ok = ok and shape[pos[1]] % page_size == 0
        if not ok:
            raise ConfigError(f"host KV buffer of shape {shape} does not match layout {layout} {HOST_LAYOUTS[layout]}")
        self.page_size = page_size
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        for layer in range(layers):
            kv = []
            for part in (0, 1):
                if layout == "layer_first":
                    t = kv_buffer[part, layer].unflatten(0, (-1, page_size))
                elif layout == "page_first":
                    t = kv_buffer[part, :, layer].unflatten(0, (-1, page_size))
                else:
                    t = kv_buffer[part, :, layer]
                kv.append(t)
            self.pairs.append((kv[0], kv[1]))

    def pages_of(self, host_indices: torch.Tensor, pages: int) -> list[int] | None:
        """Page numbers of ``pages`` pages given as token indices (page-aligned runs), else None."""
        idx = torch.as_tensor(host_indices).reshape(-1).to("cpu", torch.long)
        ps = self.page_size
        if idx.numel() != pages * ps:
            return None
        rows = idx.view(pages, ps)
        first = rows[:, 0]
        if bool((first % ps != 0).any()) or not torch.equal(rows - first[:, None], torch.arange(ps).expand(pages, ps)):
            return None
        return (first // ps).tolist()

    def layout(self, pages: Sequence[int]) -> PagedLayout:
        return PagedLayout(self.pairs, list(pages), self.page_size)


class PageStore:
    """Pages named by prefix hashes, between a host pool and a KVCacheStore (chunk = page).

    ``breakeven`` (optional) may shorten what :meth:`exists` reports: pages
    whose load would cost more than their recompute are reported missing
    (counted), so the engine recomputes them.
    """

    def __init__(self, store: KVCacheStore, pages: HostPages, breakeven: BreakEven | None = None) -> None:
        if store.chunk_tokens != pages.page_size:
            raise ConfigError(f"chunk_tokens {store.chunk_tokens} must equal the page size {pages.page_size}")
        self.store = store
        self.pages = pages
        self.breakeven = breakeven
        self.fingerprint: ModelFingerprint = store.fingerprint
        self._lock = threading.Lock()
        self.counts = {"exists_pages": 0, "get_pages": 0, "get_ok": 0, "set_pages": 0, "set_ok": 0, "bad_indices": 0}

    def keys(self, hashes: Sequence[str | bytes]) -> list[bytes]:
        """The storecomp keys of SGLang page hashes (docs/kvcache.md: the engine-neutral scheme)."""
        return keys_from_prefix_hashes(self.fingerprint, hashes, tenant=self.store.tenant)

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self.counts[k] += v

    def exists(self, hashes: Sequence[str]) -> int:
        """How many leading pages of ``hashes`` are stored (and worth loading)."""
        n = self.store.lookup_keys(self.keys(hashes)) if hashes else 0
        self._count(exists_pages=n)
        if n and self.breakeven is not None:
            tier = self._slowest_tier()
            if not self.breakeven.worth_loading(tier, n * self.store.layout.nbytes, n * self.pages.page_size):
                return 0
        return n

    def _slowest_tier(self) -> str:
        return "shared" if self.store.shared is not None else ("disk" if self.store.disk is not None else "host")

    def get(self, hashes: Sequence[str], host_indices: Any) -> list[bool]:
        """Load pages into the host pool; per page True when it is there, verified (a prefix)."""
        pages = self.pages.pages_of(host_indices, len(hashes))
        if pages is None:
            self._count(bad_indices=1)
            return [False] * len(hashes)
        before = self._bytes_by_tier()
        t0 = time.perf_counter()
        n = self.store.retrieve_keys(self.keys(hashes), self.pages.layout(pages))
        if self.breakeven is not None:
            secs = time.perf_counter() - t0
            for tier, b in self._bytes_by_tier().items():
                if b > before.get(tier, 0):
                    self.breakeven.add_load(tier, b - before.get(tier, 0), secs)
        self._count(get_pages=len(hashes), get_ok=n)
        return [i < n for i in range(len(hashes))]

    def set(self, hashes: Sequence[str], host_indices: Any) -> list[bool]:
        """Store pages from the host pool (pages already stored are not rewritten); per page True."""
        pages = self.pages.pages_of(host_indices, len(hashes))
        if pages is None:
            self._count(bad_indices=1)
            return [False] * len(hashes)
        try:
            n = self.store.store_keys(self.keys(hashes), self.pages.layout(pages))
        except InvalidArgumentError:
            return [False] * len(hashes)
        self._count(set_pages=len(hashes), set_ok=n)
        return [i < n for i in range(len(hashes))]

    def _bytes_by_tier(self) -> dict[str, int]:
        st = self.store.stats()
        return {t: int(st[t]["bytes_read"]) for t in ("disk", "shared") if t in st}
