"""A vLLM KV connector on :class:`~storecomp.kvcache.KVCacheStore` (host RAM, local disk, a shared store).

>>> from vllm import LLM
>>> from vllm.config import KVTransferConfig
>>> llm = LLM(model, kv_transfer_config=KVTransferConfig(
...     kv_connector="StorecompConnector", kv_connector_module_path="storecomp.integrations.vllm",
...     kv_role="kv_both", kv_load_failure_policy="recompute",
...     kv_connector_extra_config={"host_bytes": 8 << 30, "disk_dir": "/nvme/kv", "shared": "s3://bucket/kv"}))

See docs/vllm.md. Only this module imports vllm; ``import storecomp`` never does.

Scheduler side: the longest stored prefix of a prompt, in whole chunks
(``chunk_tokens``, a multiple of the block size), past the blocks vLLM
already holds, is looked up in the disk and shared tiers (and the chunks this
engine saved to its worker's host tier); a load the break-even control finds
slower than recomputing is declined. Worker side: loads are layer-pipelined
(every read issued at ``start_load_kv``, layer i verified and scattered into
the paged cache before ``wait_for_layer_load`` of layer i returns); a chunk
that fails verification or cannot be read is reported through
``get_block_ids_with_load_errors`` and vLLM recomputes it. Saves copy each
new whole chunk of a prompt into the host tier on a background thread
after the step (the lower tiers are written behind it); a finished request's
blocks are freed only once its save has copied them.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
    KVConnectorWorkerMetadata,
)

from ..errors import ConfigError
from ..kvcache import KVCacheStore, ModelFingerprint, PagedLayout
from ..kvcache.keys import DTYPE_SIZES
from .breakeven import BreakEven
from .options import TierOptions, open_kv_store, parse_options

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

__all__ = ["StorecompConnector", "parse_extra_config"]

log = logging.getLogger("storecomp.vllm")


#: attention backend -> where K and V lie in a block's content dim C of the standardized
#: per-layer view [blocks, kv_heads, block_size, C] (read from each backend's source, vLLM 0.32):
#: "rows": C = 2*head_dim viewed as [2*block_size, head_dim], K rows then V rows (cpu_attn.py);
#: "cols": K = C[..., :head_dim], V = C[..., head_dim:] (flash_attn.py, triton_attn.py).
SPLITS = {"CPU_ATTN": "rows", "FLASH_ATTN": "cols", "TRITON_ATTN": "cols"}
#: the KV cache layouts (CacheConfig.kv_cache_layout) the views above are checked for
LAYOUTS = {"LBHNC": ("rows", "cols"), "LBNHC": ("cols",)}


# ---------------------------------------------------------------- configuration


def parse_extra_config(extra: Mapping[str, Any]) -> TierOptions:
    """Check ``kv_connector_extra_config`` (:func:`~storecomp.integrations.options.parse_options`):
    ConfigError naming an unknown, missing or mistyped key; PermissionDeniedError for a disk_dir
    that is not writable."""
    return parse_options(extra, "StorecompConnector", what="kv_connector_extra_config")


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Geometry:
    """What both sides derive from the vLLM config and the KV cache config."""

    layer_names: tuple[str, ...]
    block_size: int
    chunk_tokens: int
    kv_heads: int
    head_dim: int
    dtype: str
    layout: str

    @property
    def blocks_per_chunk(self) -> int:
        return self.chunk_tokens // self.block_size


def _geometry(vllm_config: VllmConfig, kv_cache_config: KVCacheConfig, cfg: TierOptions) -> _Geometry:
    groups = kv_cache_config.kv_cache_groups
    if len(groups) != 1:
        raise ConfigError(f"StorecompConnector: {len(groups)} KV cache groups (hybrid model); it supports one")
    spec = groups[0].kv_cache_spec
    head_dim = int(getattr(spec, "head_size", 0))
    if not hasattr(spec, "num_kv_heads") or getattr(spec, "head_size_v", head_dim) != head_dim:
        raise ConfigError(f"StorecompConnector: unsupported KV cache spec {type(spec).__name__} (needs K and V of one head size)")
    cache = vllm_config.cache_config
    if cache.cache_dtype not in ("auto", None):
        raise ConfigError(f"StorecompConnector: kv cache dtype {cache.cache_dtype!r} is not supported (use 'auto')")
    dtype = str(spec.dtype).removeprefix("torch.")
    if dtype not in DTYPE_SIZES:
        raise ConfigError(f"StorecompConnector: KV dtype {dtype} is not supported")
    layout = cache.kv_cache_layout or getattr(kv_cache_config, "kv_cache_layout", None)
    if layout not in LAYOUTS:
        raise ConfigError(
            f"StorecompConnector: vLLM chose KV cache layout {layout!r}; this connector understands {', '.join(LAYOUTS)}"
        )
    block = int(spec.block_size)
    chunk = cfg.chunk_tokens or block
    if chunk % block:
        raise ConfigError(f"StorecompConnector: chunk_tokens {chunk} is not a multiple of the block size {block}")
    return _Geometry(tuple(groups[0].layer_names), block, chunk, int(spec.num_kv_heads), head_dim, dtype, layout)


def _fingerprint(vllm_config: VllmConfig, geo: _Geometry, cfg: TierOptions, tp_rank: int) -> ModelFingerprint:
    """Model, revision, KV dtype, layers, KV heads and head dim of this rank's shard, TP size and rank.

    vLLM's block size and cache layout are not in it on purpose: the stored
    payload is canonical ([2, tokens, kv_heads, head_dim] per layer,
    converted at the boundary), so engines with other block sizes, layouts or
    other engines altogether share chunks; the chunk size is in every key.
    """
    mc = vllm_config.model_config
    return ModelFingerprint(
        model=cfg.model_id or str(mc.model),
        revision=cfg.revision or str(getattr(mc, "revision", None) or ""),
        dtype=geo.dtype,
        layers=len(geo.layer_names),
        kv_heads=geo.kv_heads,
        head_dim=geo.head_dim,
        tp_size=int(vllm_config.parallel_config.tensor_parallel_size),
        tp_rank=tp_rank,
        tag=cfg.tag,
    )


def _open_store(fp: ModelFingerprint, geo: _Geometry, cfg: TierOptions, host_bytes: int) -> KVCacheStore:
    return open_kv_store(fp, geo.chunk_tokens, cfg, host_bytes=host_bytes)


# ---------------------------------------------------------------- metadata


@dataclass
class _Transfer:
    """Chunks ``keys`` of request ``req_id``; chunk i lies in blocks ``block_ids[i*bpc:(i+1)*bpc]``."""

    req_id: str
    keys: list[bytes]
    block_ids: list[int]


@dataclass
class StorecompMetadata(KVConnectorMetadata):
    loads: list[_Transfer] = field(default_factory=list)
    saves: list[_Transfer] = field(default_factory=list)
    preempted: set[str] = field(default_factory=set)
    step_tokens: int = 0


@dataclass
class StorecompWorkerMetadata(KVConnectorWorkerMetadata):
    """Measurements a worker sends back: prefill (tokens, seconds) and per tier (bytes, seconds) loaded."""

    prefill: list[tuple[int, float]] = field(default_factory=list)
    loads: list[tuple[str, int, float]] = field(default_factory=list)

    def aggregate(self, other: KVConnectorWorkerMetadata) -> KVConnectorWorkerMetadata:
        assert isinstance(other, StorecompWorkerMetadata)
        return StorecompWorkerMetadata(self.prefill + other.prefill, self.loads + other.loads)


@dataclass
class _Request:
    tokens: list[int]
    keys: list[bytes]  # every whole chunk of the prompt
    blocks: list[int] = field(default_factory=list)
    saved: int = 0  # chunks sent to be saved
    load: tuple[int, int] | None = None  # (first chunk, chunks) matched for loading
    matched_at: int = -1  # num_computed_tokens of the last match


# ---------------------------------------------------------------- connector


class StorecompConnector(KVConnectorBase_V1):
    """vLLM KV connector (scheduler and worker roles) over a :class:`KVCacheStore`; see the module docstring."""

    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        self.cfg = parse_extra_config(ktc.kv_connector_extra_config or {})
        if ktc.kv_load_failure_policy != "recompute":
            raise ConfigError(
                "StorecompConnector needs KVTransferConfig(kv_load_failure_policy='recompute'): a chunk that fails "
                f"verification is recomputed, never used (got {ktc.kv_load_failure_policy!r})"
            )
        self.geo = _geometry(vllm_config, kv_cache_config, self.cfg)
        self.loads_enabled = bool(ktc.is_kv_consumer)
        self.saves_enabled = bool(ktc.is_kv_producer)
        self.breakeven = BreakEven(self.cfg.break_even, self.cfg.prefill_tokens_per_s)
        self._store: KVCacheStore | None = None
        if role == KVConnectorRole.SCHEDULER:
            self._init_scheduler(vllm_config)
        else:
            self._init_worker(vllm_config)

    # ------------------------------------------------------------ scheduler side

    def _init_scheduler(self, vllm_config: VllmConfig) -> None:
        # Lookups only: the disk index and the shared store; the worker's host tier is
        # tracked by the keys this engine sent to be saved (bounded like that tier).
        self.fp = _fingerprint(vllm_config, self.geo, self.cfg, tp_rank=0)
        self._store = _open_store(self.fp, self.geo, self.cfg, host_bytes=0)
        self._chunk_bytes = self._store.layout.nbytes
        self._host_keys: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._host_capacity = self.cfg.host_bytes // self._chunk_bytes
        self._requests: dict[str, _Request] = {}
        self._saving: set[str] = set()
        self.counts = collections.Counter[str]()

    def _host_has(self, key: bytes) -> bool:
        if key in self._host_keys:
            self._host_keys.move_to_end(key)
            return True
        return False

    def _matched(self, keys: list[bytes]) -> tuple[int, str]:
        """Leading chunks of ``keys`` stored somewhere, and the slowest tier they come from."""
        assert self._store is not None
        disk = self._store.disk
        n, tier, asked_shared = 0, "host", False
        while n < len(keys):
            if self._host_has(keys[n]):
                n += 1
            elif disk is not None and disk.has(keys[n]):
                n, tier = n + 1, ("disk" if tier == "host" else tier)
            elif asked_shared:
                break
            else:  # one batch of existence checks in the shared store for the rest
                asked_shared = True
                found = self._store.lookup_keys(keys[n:])
                if found == 0:
                    break
                n, tier = n + found, "shared"
        return n, tier

    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int) -> tuple[int | None, bool]:
        if not self.loads_enabled and not self.saves_enabled:
            return 0, False
        req = self._requests.get(request.request_id)
        if req is None:
            tokens = list(request.prompt_token_ids or [])
            assert self._store is not None
            req = _Request(tokens, self._store.chunk_keys(tokens) if tokens else [])
            self._requests[request.request_id] = req
        req.load, req.matched_at = None, num_computed_tokens
        chunk = self.geo.chunk_tokens
        if not self.loads_enabled or num_computed_tokens % chunk:
            return 0, False
        limit = (len(req.tokens) - 1) // chunk  # at least one prompt token is computed (vLLM needs its logits)
        first = num_computed_tokens // chunk
        if first >= limit:
            return 0, False
        n, tier = self._matched(req.keys[first:limit])
        if n == 0:
            self.counts["lookup_misses"] += 1
            return 0, False
        if not self.breakeven.worth_loading(tier, n * self._chunk_bytes, n * chunk):
            self.counts["declined_tokens"] += n * chunk
            return 0, False
        req.load = (first, n)
        return n * chunk, False

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int) -> None:
        req = self._requests.get(request.request_id)
        if req is None:
            return
        if num_external_tokens <= 0 or req.load is None:
            req.load = None
            return
        first, n = req.load
        req.load = (first, min(n, num_external_tokens // self.geo.chunk_tokens))

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = StorecompMetadata(
            preempted=set(scheduler_output.preempted_req_ids or ()), step_tokens=scheduler_output.total_num_scheduled_tokens
        )
        so = scheduler_output
        progress: list[tuple[str, int]] = []
        for new in so.scheduled_new_reqs:
            req = self._requests.get(new.req_id)
            if req is None:
                continue
            req.blocks = list(new.block_ids[0])
            progress.append((new.req_id, new.num_computed_tokens + so.num_scheduled_tokens.get(new.req_id, 0)))
        cached = so.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            req = self._requests.get(req_id)
            if req is None:
                continue
            new_ids = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                req.blocks = list(new_ids[0]) if new_ids is not None else []
            elif new_ids is not None:
                req.blocks.extend(new_ids[0])
            progress.append((req_id, cached.num_computed_tokens[i] + so.num_scheduled_tokens.get(req_id, 0)))
        bpc = self.geo.blocks_per_chunk
        for req_id, computed in progress:
            req = self._requests[req_id]
            if req.load is not None:
                first, n = req.load
                meta.loads.append(_Transfer(req_id, req.keys[first : first + n], req.blocks[first * bpc : (first + n) * bpc]))
                self.counts["loads"] += 1
                self.counts["loaded_tokens"] += n * self.geo.chunk_tokens
                req.load = None
            if self.saves_enabled:
                done = min(computed, len(req.tokens)) // self.geo.chunk_tokens
                if done > req.saved and len(req.blocks) >= done * bpc:
                    keys = req.keys[req.saved : done]
                    meta.saves.append(_Transfer(req_id, keys, req.blocks[req.saved * bpc : done * bpc]))
                    req.saved = done
                    self._saving.add(req_id)
                    for k in keys:
                        self._host_keys[k] = None
                        self._host_keys.move_to_end(k)
                    while len(self._host_keys) > self._host_capacity:
                        self._host_keys.popitem(last=False)
        return meta

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        meta = connector_output.kv_connector_worker_meta
        if isinstance(meta, StorecompWorkerMetadata):
            for tokens, secs in meta.prefill:
                self.breakeven.add_prefill(tokens, secs)
            for tier, nbytes, secs in meta.loads:
                self.breakeven.add_load(tier, nbytes, secs)

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._requests.pop(request.request_id, None)
        if request.request_id in self._saving:
            self._saving.discard(request.request_id)
            return True, None  # blocks freed once the worker reports the save done (get_finished)
        return False, None

    # ------------------------------------------------------------ worker side

    def _init_worker(self, vllm_config: VllmConfig) -> None:
        from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

        self.fp = _fingerprint(vllm_config, self.geo, self.cfg, tp_rank=int(get_tensor_model_parallel_rank()))
        self._vllm_config = vllm_config
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._layer_index: dict[str, int] = {}
        self._io = ThreadPoolExecutor(1, thread_name_prefix="storecomp-vllm-io")  # saves and loads in order
        self._load_job: Future[None] | None = None
        self._layer_done: list[threading.Event] = []
        self._load_errors: set[int] = set()
        self._errors_lock = threading.Lock()
        self._saves: dict[str, list[Future[Any]]] = {}
        self._finishing: set[str] = set()
        self._step_t0 = 0.0
        self._measured = StorecompWorkerMetadata()
        self._measured_lock = threading.Lock()

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        geo = self.geo
        ctx = self._vllm_config.compilation_config.static_forward_context
        names = [n for n in geo.layer_names if n in kv_caches]
        if len(names) != len(geo.layer_names):
            raise ConfigError(f"StorecompConnector: KV caches for {len(names)} of {len(geo.layer_names)} layers registered")
        backends = {ctx[n].attn_backend.get_name() for n in names if n in ctx and hasattr(ctx[n], "attn_backend")}
        if len(backends) != 1 or next(iter(backends)) not in SPLITS:
            raise ConfigError(
                f"StorecompConnector: attention backend {sorted(backends)} is not one whose KV layout it knows "
                f"({', '.join(SPLITS)})"
            )
        split = SPLITS[next(iter(backends))]
        if split not in LAYOUTS[geo.layout]:
            raise ConfigError(f"StorecompConnector: layout {geo.layout} with backend {next(iter(backends))} is not supported")
        self._pairs = [_kv_views(kv_caches[n], n, geo, split) for n in names]
        self._layer_index = {n: i for i, n in enumerate(names)}
        self._store = _open_store(self.fp, geo, self.cfg, host_bytes=self.cfg.host_bytes)
        log.info(
            "StorecompConnector: %d layers, %s %s, chunk %d tokens (%d bytes), fingerprint %s",
            len(names), geo.layout, split, geo.chunk_tokens, self._store.layout.nbytes, self.fp.namespace[:16],
        )  # fmt: skip

    def _paged(self, t: _Transfer) -> PagedLayout:
        return PagedLayout(self._pairs, t.block_ids, self.geo.block_size)

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        self._step_t0 = time.perf_counter()

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        assert isinstance(meta, StorecompMetadata)
        if not meta.loads or self._store is None:
            return
        self._layer_done = [threading.Event() for _ in self._pairs]
        self._load_job = self._io.submit(self._load, meta.loads, self._layer_done)

    def _load(self, loads: list[_Transfer], done: list[threading.Event]) -> None:
        """All requests' reads at once; layer by layer, verified chunks scattered, then the layer released."""
        assert self._store is not None
        t0 = time.perf_counter()
        before = self._tier_bytes()
        gens, good = [], [0] * len(loads)
        try:
            for t in loads:
                gens.append(self._store.retrieve_layerwise_keys(t.keys, self._paged(t)))
            for layer in range(len(self._pairs)):
                for j, g in enumerate(gens):
                    _, good[j] = next(g)
                done[layer].set()
        except Exception:  # noqa: BLE001 - a failed load is a recompute, never an engine failure
            log.exception("StorecompConnector: load failed; its blocks are recomputed")
            # Layers up to the failure may already be in use, the rest never arrived: every block of
            # every request in this step is reported, so vLLM recomputes them all (never partial KV).
            good = [0] * len(loads)
        finally:
            for g in gens:
                g.close()
            for ev in done:
                ev.set()
            bpc = self.geo.blocks_per_chunk
            with self._errors_lock:
                for t, n in zip(loads, good, strict=False):
                    self._load_errors.update(t.block_ids[n * bpc :])
            secs = time.perf_counter() - t0
            after = self._tier_bytes()
            with self._measured_lock:
                for tier, n in after.items():
                    if n > before.get(tier, 0):
                        self._measured.loads.append((tier, n - before.get(tier, 0), secs))

    def _tier_bytes(self) -> dict[str, int]:
        st = self._store.stats() if self._store is not None else {}
        return {t: int(st[t]["bytes_read"]) for t in ("disk", "shared") if t in st}

    def wait_for_layer_load(self, layer_name: str) -> None:
        if self._load_job is None:
            return
        i = self._layer_index.get(layer_name)
        if i is not None:
            self._layer_done[i].wait()

    def _join_load(self) -> None:
        job, self._load_job = self._load_job, None
        if job is not None:
            job.result()  # _load never raises; after this no load writes into any block

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        return  # whole chunks are saved after the step (wait_for_save), off the forward pass

    def wait_for_save(self) -> None:
        self._join_load()
        meta = self._get_connector_metadata()
        assert isinstance(meta, StorecompMetadata)
        if meta.step_tokens >= self.geo.chunk_tokens and not meta.loads:  # a step with loads is not pure prefill
            with self._measured_lock:
                self._measured.prefill.append((meta.step_tokens, time.perf_counter() - self._step_t0))
        if self._store is None:
            return
        for t in meta.saves:
            fut = self._io.submit(self._store.store_keys, t.keys, self._paged(t))
            self._saves.setdefault(t.req_id, []).append(fut)

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        assert isinstance(kv_connector_metadata, StorecompMetadata)
        for req_id in kv_connector_metadata.preempted:  # their blocks are about to be reused
            for fut in self._saves.get(req_id, ()):
                _quiet_result(fut)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        self._finishing.update(r for r in finished_req_ids if r in self._saves)
        done = {r for r in self._finishing if all(f.done() for f in self._saves[r])}
        for r in done:
            for fut in self._saves.pop(r):
                _quiet_result(fut)
        self._finishing -= done
        return (done or None), None

    def get_block_ids_with_load_errors(self) -> set[int]:
        self._join_load()
        with self._errors_lock:
            errors, self._load_errors = self._load_errors, set()
        return errors

    def build_connector_worker_meta(self) -> KVConnectorWorkerMetadata | None:
        with self._measured_lock:
            meta, self._measured = self._measured, StorecompWorkerMetadata()
        return meta if (meta.prefill or meta.loads) else None

    # ------------------------------------------------------------ both

    def stats(self) -> dict[str, Any]:
        """The store's counters, the break-even counts and rates (and the scheduler's lookup counts)."""
        out: dict[str, Any] = {"breakeven": self.breakeven.counts() | self.breakeven.rates()}
        if self._store is not None:
            out["store"] = self._store.stats()
        if hasattr(self, "counts"):
            out["scheduler"] = dict(self.counts)
        return out

    def shutdown(self) -> None:
        if self._role == KVConnectorRole.WORKER:
            self._io.shutdown(wait=True)
        if self._store is not None:
            try:
                self._store.flush(timeout=self.cfg.shared_retry_seconds + 30)
            except TimeoutError:
                log.warning("StorecompConnector: background writes still running at shutdown")
            stats = {"role": self._role.name.lower(), "tp_rank": self.fp.tp_rank} | self.stats()
            log.info("StorecompConnector stats: %s", stats)
            if self.cfg.stats_file:
                with open(self.cfg.stats_file, "a") as f:
                    f.write(json.dumps(stats, default=str) + "\n")
            self._store.close()
            self._store = None


def _quiet_result(fut: Future[Any]) -> None:
    try:
        fut.result()
    except Exception:  # noqa: BLE001 - a failed save is a future miss
        log.exception("StorecompConnector: save failed")


def _kv_views(kv: torch.Tensor, name: str, geo: _Geometry, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, V) views ``[blocks, block_size, kv_heads, head_dim]`` of one layer's standardized cache
    ``[blocks, kv_heads, block_size, C]``; ConfigError when the tensor does not have that geometry."""
    h, n, d = geo.kv_heads, geo.block_size, geo.head_dim
    if kv.dim() != 4 or tuple(kv.shape[1:]) != (h, n, 2 * d):
        raise ConfigError(
            f"StorecompConnector: layer {name} KV cache has shape {tuple(kv.shape)}, expected "
            f"[blocks, {h}, {n}, {2 * d}] for layout {geo.layout} (kv_heads, block_size, 2*head_dim)"
        )
    if split == "rows":  # [B, H, 2N, D]: K rows [0, N), V rows [N, 2N); needs N and C dense
        if kv.stride(3) != 1 or kv.stride(2) != 2 * d:
            raise ConfigError(f"StorecompConnector: layer {name} KV cache strides {kv.stride()} do not fit layout {geo.layout}")
        rows = kv.as_strided((kv.shape[0], h, 2 * n, d), (kv.stride(0), kv.stride(1), d, 1))
        k, v = rows[:, :, :n], rows[:, :, n:]
    else:
        k, v = kv[..., :d], kv[..., d:]
    return k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
