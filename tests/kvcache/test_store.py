"""KVCacheStore on real tiers: host memory, local disk (O_DIRECT files), a LocalStore as shared store."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from storecomp import KVCacheStore
from storecomp.kvcache import PagedLayout
from tests.kvcache.kvhelpers import CHUNK, FP, make_kv, same_prefix, untouched_after, zeros_kv

Make = Callable[..., KVCacheStore]
TOKENS = list(range(1000, 1000 + 5 * CHUNK + 3))  # 5 whole chunks and 3 tokens


def test_host_round_trip(kvstore: Make) -> None:
    s = kvstore()
    kv = make_kv(len(TOKENS))
    assert s.lookup(TOKENS) == 0
    assert s.store(TOKENS, kv) == 5 * CHUNK
    assert s.lookup(TOKENS) == 5 * CHUNK
    assert s.lookup(TOKENS[: 3 * CHUNK + 1]) == 3 * CHUNK
    assert s.lookup([7] + TOKENS[1:]) == 0  # first token differs: nothing shared
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 5 * CHUNK
    assert same_prefix(kv, out, 5 * CHUNK) and untouched_after(out, 5 * CHUNK)
    st = s.stats()
    assert st["host"]["hits"] == 5 and st["chunks_hit"] == 5


def test_longer_prompt_retrieves_shared_prefix(kvstore: Make) -> None:
    s = kvstore()
    kv = make_kv(len(TOKENS))
    s.store(TOKENS, kv)
    longer = TOKENS[: 2 * CHUNK] + [5] * (4 * CHUNK)
    assert s.lookup(longer) == 2 * CHUNK
    out = zeros_kv(len(longer))
    assert s.retrieve(longer, out) == 2 * CHUNK
    assert same_prefix(kv, out, 2 * CHUNK) and untouched_after(out, 2 * CHUNK)


def test_partial_chunk_is_not_stored(kvstore: Make) -> None:
    """Fewer tokens than one chunk: nothing stored, nothing found; the caller recomputes them."""
    s = kvstore()
    kv = make_kv(CHUNK - 1)
    assert s.store(TOKENS[: CHUNK - 1], kv) == 0
    assert s.lookup(TOKENS[: CHUNK - 1]) == 0
    assert s.retrieve(TOKENS[: CHUNK - 1], zeros_kv(CHUNK - 1)) == 0
    assert s.lookup([]) == 0 and s.store([], make_kv(0)) == 0
    assert s.stats()["host"]["used_bytes"] == 0


def test_kv_shorter_than_tokens_stores_what_it_has(kvstore: Make) -> None:
    s = kvstore()
    assert s.store(TOKENS, make_kv(2 * CHUNK + 1)) == 2 * CHUNK
    assert s.lookup(TOKENS) == 2 * CHUNK


def test_host_lru_then_disk_then_promotion(kvstore: Make, tmp_path: Path) -> None:
    chunk_bytes = KVCacheStore(FP, chunk_tokens=CHUNK, host_bytes=0).layout.nbytes
    s = kvstore(host_bytes=2 * chunk_bytes, disk_dir=tmp_path / "disk")
    kv = make_kv(len(TOKENS))
    s.store(TOKENS, kv)
    s.flush()
    st = s.stats()
    assert st["host"]["evictions"] == 3 and st["host"]["used_bytes"] == 2 * chunk_bytes
    assert st["disk"]["bytes_written"] == 5 * chunk_bytes
    assert s.lookup(TOKENS) == 5 * CHUNK  # the evicted ones are on disk
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 5 * CHUNK
    assert same_prefix(kv, out, 5 * CHUNK)
    st = s.stats()
    assert st["disk"]["hits"] >= 3 and st["disk"]["verify_failures"] == 0
    # promoted: the last chunks read are now in host memory
    keys = s._keys(TOKENS)
    assert keys[4] in s.host and keys[3] in s.host


def test_pinned_entries_are_not_evicted(kvstore: Make) -> None:
    chunk_bytes = KVCacheStore(FP, chunk_tokens=CHUNK, host_bytes=0).layout.nbytes
    s = kvstore(host_bytes=chunk_bytes)
    a, b = TOKENS[:CHUNK], TOKENS[CHUNK : 2 * CHUNK]
    kv = make_kv(CHUNK)
    s.store(a, kv)
    key = s._keys(a)[0]
    buf = s.host.acquire(key)  # as a reader does
    assert buf is not None
    s.store(b, make_kv(CHUNK, seed=1))  # no room: a is pinned
    assert s.lookup(a) == CHUNK and s.lookup(b) == 0
    assert s.stats()["host"]["skipped"] == 1
    s.host.release(key, buf)
    s.store(b, make_kv(CHUNK, seed=1))
    assert s.lookup(b) == CHUNK and s.lookup(a) == 0
    assert s.stats()["host"]["evictions"] == 1


def test_disk_index_rebuilt_on_restart(kvstore: Make, tmp_path: Path) -> None:
    s = kvstore(disk_dir=tmp_path / "disk", write_through=True)
    kv = make_kv(len(TOKENS))
    s.store(TOKENS, kv)
    s.close()
    ns = tmp_path / "disk" / FP.namespace
    stale = ns / "ab" / ("ab" * 32 + ".kv.tmp-999999999-deadbeef")  # left by a dead writer
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    s2 = kvstore(disk_dir=tmp_path / "disk")
    assert not stale.exists()
    assert s2.stats()["disk"]["rebuild_seconds"] < 5
    assert s2.lookup(TOKENS) == 5 * CHUNK
    out = zeros_kv(len(TOKENS))
    assert s2.retrieve(TOKENS, out) == 5 * CHUNK and same_prefix(kv, out, 5 * CHUNK)
    assert s2.stats()["disk"]["hits"] == 5


def test_disk_budget_lru(kvstore: Make, tmp_path: Path) -> None:
    chunk_bytes = KVCacheStore(FP, chunk_tokens=CHUNK, host_bytes=0).layout.nbytes
    s = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", disk_bytes=3 * chunk_bytes)
    s.store(TOKENS, make_kv(len(TOKENS)))
    s.flush()
    st = s.stats()["disk"]
    assert st["evictions"] == 2 and st["used_bytes"] == 3 * chunk_bytes
    files = [f for _, _, fs in os.walk(tmp_path / "disk") for f in fs]
    assert len(files) == 3
    assert s.lookup(TOKENS) <= CHUNK  # one of the first two chunks went first (two writers race)


def test_shared_tier_local_store(kvstore: Make, tmp_path: Path) -> None:
    a = kvstore(disk_dir=tmp_path / "disk-a", shared=str(tmp_path / "shared"), write_through=True)
    kv = make_kv(len(TOKENS))
    a.store(TOKENS, kv)
    b = kvstore(disk_dir=tmp_path / "disk-b", shared=f"file://{tmp_path / 'shared'}")
    assert b.lookup(TOKENS) == 5 * CHUNK
    out = zeros_kv(len(TOKENS))
    assert b.retrieve(TOKENS, out) == 5 * CHUNK and same_prefix(kv, out, 5 * CHUNK)
    b.flush()
    st = b.stats()
    assert st["shared"]["hits"] == 5 and st["disk"]["bytes_written"] == 5 * b.layout.nbytes  # promoted to disk too
    # a second read hits host memory
    assert b.retrieve(TOKENS, zeros_kv(len(TOKENS))) == 5 * CHUNK
    assert b.stats()["host"]["hits"] == 5


@pytest.mark.parametrize("tier", ["disk", "shared"])
def test_layerwise(kvstore: Make, tmp_path: Path, tier: str) -> None:
    where = {"disk_dir": tmp_path / "disk"} if tier == "disk" else {"shared": str(tmp_path / "shared")}
    a = kvstore(write_through=True, **where)
    kv = make_kv(len(TOKENS))
    a.store(TOKENS, kv)
    a.close()
    s = kvstore(**where)
    out = zeros_kv(len(TOKENS))
    seen = []
    for layer, n in s.retrieve_layerwise(TOKENS, out):
        assert n == 5 * CHUNK
        # layer i is complete when yielded; later layers may still be loading
        assert same_prefix([kv[layer]], [out[layer]], n)
        seen.append(layer)
    assert seen == [0, 1, 2]
    assert same_prefix(kv, out, 5 * CHUNK)
    assert s.stats()[tier]["hits"] == 5


def test_async_variants(kvstore: Make) -> None:
    s = kvstore()
    kv = make_kv(len(TOKENS))
    assert s.store_async(TOKENS, kv).result(10) == 5 * CHUNK
    assert s.lookup_async(TOKENS).result(10) == 5 * CHUNK
    out = zeros_kv(len(TOKENS))
    assert s.retrieve_async(TOKENS, out).result(10) == 5 * CHUNK
    assert same_prefix(kv, out, 5 * CHUNK)


@pytest.mark.parametrize("combined", [True, False])
def test_paged_layouts(kvstore: Make, combined: bool) -> None:
    """Store from transformers tensors, load into a paged cache with scattered blocks, and back."""
    s = kvstore()
    kv = make_kv(len(TOKENS))
    s.store(TOKENS, kv)
    bs, nblocks = 4, 16
    ids = [9, 3, 14, 0, 7, 11, 2, 5, 12, 1]  # 10 blocks = 40 tokens = 5 chunks
    shape = (nblocks, 2, bs, FP.kv_heads, FP.head_dim) if combined else (nblocks, bs, FP.kv_heads, FP.head_dim)
    if combined:
        caches: list = [torch.zeros(shape, dtype=torch.bfloat16) for _ in range(FP.layers)]
    else:
        caches = [(torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.bfloat16)) for _ in range(FP.layers)]
    paged = PagedLayout(caches, ids, bs)
    assert s.retrieve(TOKENS, paged) == 5 * CHUNK
    for layer in range(FP.layers):
        for j, b in enumerate(ids):
            k = caches[layer][b, 0] if combined else caches[layer][0][b]
            v = caches[layer][b, 1] if combined else caches[layer][1][b]
            assert torch.equal(k, kv[layer][0][0, :, j * bs : (j + 1) * bs].transpose(0, 1))
            assert torch.equal(v, kv[layer][1][0, :, j * bs : (j + 1) * bs].transpose(0, 1))
    # paged -> store under other tokens -> contiguous: same bytes
    other = [t + 1 for t in TOKENS[: 5 * CHUNK]]
    s.store(other, paged)
    out = zeros_kv(5 * CHUNK)
    assert s.retrieve(other, out) == 5 * CHUNK
    assert same_prefix(kv, out, 5 * CHUNK)


def test_dynamic_cache_layout(kvstore: Make) -> None:
    transformers = pytest.importorskip("transformers")
    s = kvstore()
    kv = make_kv(2 * CHUNK)
    cache = transformers.DynamicCache(ddp_cache_data=kv)
    assert s.store(TOKENS[: 2 * CHUNK], cache) == 2 * CHUNK
    out = transformers.DynamicCache(ddp_cache_data=zeros_kv(2 * CHUNK))
    assert s.retrieve(TOKENS[: 2 * CHUNK], out) == 2 * CHUNK
    assert all(torch.equal(out.layers[i].keys, kv[i][0]) for i in range(FP.layers))


def test_two_stores_share_a_disk_directory(kvstore: Make, tmp_path: Path) -> None:
    """A chunk file written by another process after this one built its index is still found."""
    reader = kvstore(host_bytes=0, disk_dir=tmp_path / "disk")
    writer = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", write_through=True)
    kv = make_kv(len(TOKENS))
    writer.store(TOKENS, kv)
    assert reader.lookup(TOKENS) == 5 * CHUNK
    out = zeros_kv(len(TOKENS))
    assert reader.retrieve(TOKENS, out) == 5 * CHUNK and same_prefix(kv, out, 5 * CHUNK)


def test_layerwise_stopped_early_promotes_nothing_unverified(kvstore: Make, tmp_path: Path) -> None:
    kv = make_kv(len(TOKENS))
    kvstore(disk_dir=tmp_path / "disk", write_through=True).store(TOKENS, kv)
    s = kvstore(disk_dir=tmp_path / "disk")
    gen = s.retrieve_layerwise(TOKENS, zeros_kv(len(TOKENS)))
    assert next(gen) == (0, 5 * CHUNK)
    gen.close()  # the caller stops after layer 0: layers 1 and 2 were never checked
    assert not any(k in s.host for k in s._keys(TOKENS))
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 5 * CHUNK and same_prefix(kv, out, 5 * CHUNK)
    assert all(k in s.host for k in s._keys(TOKENS))


def test_disk_entry_being_read_is_not_evicted(kvstore: Make, tmp_path: Path) -> None:
    chunk_bytes = KVCacheStore(FP, chunk_tokens=CHUNK, host_bytes=0).layout.nbytes
    s = kvstore(host_bytes=0, disk_dir=tmp_path / "disk", disk_bytes=chunk_bytes, write_through=True)
    a, b = TOKENS[:CHUNK], TOKENS[CHUNK : 2 * CHUNK]
    s.store(a, make_kv(CHUNK))
    key = s._keys(a)[0]
    assert s.disk is not None and s.disk.pin(key)  # as a reader does while its reads are in flight
    s.store(b, make_kv(CHUNK, seed=1))
    assert s.lookup(a) == CHUNK and s.lookup(b) == 0 and s.stats()["disk"]["skipped"] == 1
    s.disk.unpin(key)
    s.store(b, make_kv(CHUNK, seed=1))
    assert s.lookup(b) == CHUNK and s.lookup(a) == 0 and s.stats()["disk"]["evictions"] == 1


def test_close_closes_a_shared_store_opened_from_a_url_only(
    kvstore: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from storecomp.store import LocalStore, registry

    closed: list[str] = []

    class Spy(LocalStore):
        def close(self) -> None:
            closed.append(self.url)
            super().close()

    monkeypatch.setattr(registry, "open_store", lambda url, **kw: Spy(url))
    kv = kvstore(shared=str(tmp_path / "by-url"))
    kv.close()
    assert closed == [(tmp_path / "by-url").as_uri()]  # opened here: closed here (its threads, descriptors)

    mine = Spy(tmp_path / "passed-in")
    kvstore(shared=mine).close()
    assert len(closed) == 1  # passed in: the caller's to close
    mine.close()
