"""Bad input and faults: mismatched KV, corrupted chunks, a full disk, an unreachable shared store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from storecomp import KVCacheStore
from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import ModelFingerprint, PagedLayout, SharedTierOptions
from storecomp.store import LocalStore, open_store
from storecomp.testing.relay import Relay
from storecomp.testing.seaweedfs import SeaweedFS, free_port
from tests.conftest import closed_port_with_416
from tests.kvcache.kvhelpers import CHUNK, FAST_RETRY, FP, make_kv, same_prefix, untouched_after, zeros_kv

Make = Callable[..., KVCacheStore]
TOKENS = list(range(50, 50 + 4 * CHUNK))


# ---------------------------------------------------------------- KV not matching the fingerprint


@pytest.mark.parametrize(
    "bad,match",
    [
        (lambda: [(k.half(), v.half()) for k, v in make_kv(4 * CHUNK)], "dtype float16, the fingerprint says bfloat16"),
        (lambda: make_kv(4 * CHUNK)[:2], "2 layers, the fingerprint says 3"),
        (
            lambda: make_kv(4 * CHUNK, fp=ModelFingerprint("x", "bfloat16", layers=3, kv_heads=4, head_dim=16)),
            "kv_heads=2",
        ),
        (lambda: make_kv(4 * CHUNK, fp=ModelFingerprint("x", "bfloat16", layers=3, kv_heads=2, head_dim=8)), "head_dim=16"),
        (lambda: [(k[0], v[0]) for k, v in make_kv(4 * CHUNK)], "expected"),
        (lambda: [(k, v[:, :, :5]) for k, v in make_kv(4 * CHUNK)], "positions"),
        (lambda: "not a cache", "cannot read KV"),
    ],
)
def test_kv_not_matching_fingerprint(kvstore: Make, bad: Callable[[], object], match: str) -> None:
    s = kvstore()
    with pytest.raises(InvalidArgumentError, match=match):
        s.store(TOKENS, bad())
    with pytest.raises(InvalidArgumentError, match=match):
        s.retrieve(TOKENS, bad())
    assert s.stats()["host"]["used_bytes"] == 0


def test_paged_bad_input(kvstore: Make) -> None:
    s = kvstore()
    s.store(TOKENS, make_kv(len(TOKENS)))
    caches = [torch.zeros(8, 2, 4, 2, 16, dtype=torch.bfloat16) for _ in range(3)]
    with pytest.raises(InvalidArgumentError, match=r"block ids \[0, 9\] out of range for 8 blocks"):
        s.retrieve(TOKENS, PagedLayout(caches, [0, 9], 4))
    with pytest.raises(InvalidArgumentError, match=r"block ids \[-1, 1\] out of range"):
        s.retrieve(TOKENS, PagedLayout(caches, [1, -1], 4))  # negative ids would wrap in Python slicing
    with pytest.raises(InvalidArgumentError, match="block_size"):
        s.retrieve(TOKENS, PagedLayout(caches, [0, 1], 8))
    odd = [torch.zeros(8, 2, 3, 2, 16, dtype=torch.bfloat16) for _ in range(3)]
    with pytest.raises(InvalidArgumentError, match="whole blocks"):
        s.retrieve(TOKENS, PagedLayout(odd, list(range(8)), 3))


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="ModelFingerprint"):
        KVCacheStore("llama")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="chunk_tokens"):
        KVCacheStore(FP, chunk_tokens=0)
    with pytest.raises(InvalidArgumentError, match="scheme|URL"):
        KVCacheStore(FP, shared="nosuchscheme-xyz://a/b")
    s = KVCacheStore(FP, chunk_tokens=CHUNK)
    with pytest.raises(InvalidArgumentError, match="token ids"):
        s.lookup([-1] * CHUNK)
    s.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        s.lookup(TOKENS)


# ---------------------------------------------------------------- corrupted chunks


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("where", ["payload", "header", "truncated"])
def test_corrupt_chunk_on_disk_is_a_counted_miss(kvstore: Make, tmp_path: Path, where: str) -> None:
    kv = make_kv(len(TOKENS))
    kvstore(disk_dir=tmp_path / "d", write_through=True).store(TOKENS, kv)
    s = kvstore(disk_dir=tmp_path / "d")  # empty host tier: every chunk comes from disk
    path = Path(s.disk.path(s._keys(TOKENS)[2]))  # type: ignore[union-attr]
    if where == "payload":
        _flip(path, s.layout.layer_offset(2) + 100)
    elif where == "header":
        _flip(path, 40)
    else:
        os.truncate(path, s.layout.nbytes - 4096)
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 2 * CHUNK
    assert same_prefix(kv, out, 2 * CHUNK) and untouched_after(out, 2 * CHUNK)
    st = s.stats()
    assert st["disk"]["verify_failures"] == 1 and st["verify_failures"] == 1
    assert not path.exists()  # dropped, so the caller's recompute can store it again
    assert s.lookup(TOKENS) == 2 * CHUNK
    s.store(TOKENS, kv)  # the caller recomputed and stores again
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)


def test_corrupt_chunk_layerwise(kvstore: Make, tmp_path: Path) -> None:
    kv = make_kv(len(TOKENS))
    kvstore(disk_dir=tmp_path / "d", write_through=True).store(TOKENS, kv)
    s = kvstore(disk_dir=tmp_path / "d")
    _flip(Path(s.disk.path(s._keys(TOKENS)[1])), s.layout.layer_offset(1) + 5)  # type: ignore[union-attr]
    got = list(s.retrieve_layerwise(TOKENS, zeros_kv(len(TOKENS))))
    assert got == [(0, 4 * CHUNK), (1, CHUNK), (2, CHUNK)]  # shrinks at the failing layer, never grows
    assert s.stats()["disk"]["verify_failures"] == 1


def test_corrupt_chunk_in_shared_store(kvstore: Make, tmp_path: Path) -> None:
    kv = make_kv(len(TOKENS))
    kvstore(shared=str(tmp_path / "shared"), write_through=True).store(TOKENS, kv)
    s = kvstore(shared=str(tmp_path / "shared"))
    store = s.shared.store  # type: ignore[union-attr]
    assert isinstance(store, LocalStore)
    okey = s.shared.object_key(s._keys(TOKENS)[1])  # type: ignore[union-attr]
    _flip(store.path_of(okey), s.layout.layer_offset(0))
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == CHUNK and untouched_after(out, CHUNK)
    assert s.stats()["shared"]["verify_failures"] == 1
    assert not store.exists(okey)  # removed so that a fresh put_if_absent can replace it


@pytest.mark.parametrize("sealed", [False, True], ids=["plain", "sealed"])
def test_shared_tier_deletes_only_the_version_that_failed(kvstore: Make, tmp_path: Path, sealed: bool) -> None:
    """A failed chunk is read again pinned to one version and deleted only at that version while
    it still fails: a good chunk written in its place between the failed read and the delete
    stays, a chunk sealed under another key stays, a still-bad one goes."""
    from storecomp import crypto

    enc = crypto.StaticKeys([("k", bytes(range(32)))]) if sealed else None
    kv = make_kv(len(TOKENS))
    shared = str(tmp_path / "shared")
    kvstore(shared=shared, write_through=True, encryption=enc).store(TOKENS, kv)
    s = kvstore(shared=shared, encryption=enc)
    tier = s.shared
    assert tier is not None and isinstance(tier.store, LocalStore)
    key = s._keys(TOKENS)[1]
    path = tier.store.path_of(tier.object_key(key))
    good = path.read_bytes()
    at = s.layout.layer_offset(0) + 100 + (crypto.data_offset(s.layout.nbytes) if sealed else 0)  # layer 0's bytes
    _flip(path, at)
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == CHUNK  # the real failure path: counted, and the bad version deleted
    assert s.stats()["shared"]["verify_failures"] == 1 and not path.exists()
    # A good chunk published in its place after the failed read: the delete leaves it.
    path.write_bytes(good)
    tier.forget(key, delete=True)
    assert path.read_bytes() == good
    assert s.retrieve(TOKENS, zeros_kv(len(TOKENS))) == 4 * CHUNK
    if sealed:  # sealed under a key this store does not hold: a miss, never deleted
        other = kvstore(shared=shared, encryption=crypto.StaticKeys([("other", bytes(range(1, 33)))]))
        assert other.shared is not None
        other.shared.forget(key, delete=True)
        assert path.read_bytes() == good
    _flip(path, at)
    tier.forget(key, delete=True)  # still bad when read again: deleted
    assert not path.exists()


def test_disk_tier_counts_a_corrupt_chunk_it_cannot_delete(kvstore: Make, tmp_path: Path) -> None:
    """A corrupt chunk whose file cannot be removed (a directory stands at its name: unlink
    fails even as root) is a counted miss, and the failed cleanup is counted, not silent."""
    kvstore(disk_dir=tmp_path / "d", write_through=True).store(TOKENS, make_kv(len(TOKENS)))
    s = kvstore(disk_dir=tmp_path / "d")
    tier = s.disk
    assert tier is not None
    key = s._keys(TOKENS)[1]
    path = Path(tier.path(key))
    path.unlink()
    path.mkdir()
    (path / "x").write_bytes(b"x")
    tier.forget(key, delete=True)
    assert path.is_dir() and s.stats()["disk"]["cleanup_failures"] == 1
    tier.forget(s._keys(TOKENS)[2], delete=True)  # an ordinary delete: not a failure
    assert s.stats()["disk"]["cleanup_failures"] == 1


def test_shared_tier_counts_a_cleanup_the_store_refused(kvstore: Make, tmp_path: Path, running_seaweedfs: SeaweedFS) -> None:
    """The shared store becomes unreachable between a failed read and its cleanup: the object
    stays (nothing could re-check or delete it) and the failed cleanup is counted in the tier's
    stats instead of vanishing."""
    sw = running_seaweedfs
    proxy = Relay(int(sw.endpoint.rsplit(":", 1)[1]))
    url = sw.url()
    opts = dict(sw.store_options(), endpoint=f"http://127.0.0.1:{proxy.port}", retry=FAST_RETRY)
    try:
        s = kvstore(shared=SharedTierOptions(url, opts, backoff=0.05, max_backoff=0.1))
        assert s.store(TOKENS, make_kv(len(TOKENS))) == 4 * CHUNK
        s.flush(timeout=60)
        tier = s.shared
        assert tier is not None
        key = s._keys(TOKENS)[1]
        direct = open_store(url, **sw.store_options())
        okey = tier.object_key(key)
        assert direct.exists(okey)
        proxy.close()
        tier.forget(key, delete=True)
        assert s.stats()["shared"]["cleanup_failures"] == 1
        assert direct.exists(okey)  # still there: a later cleanup can find it
        direct.close()
    finally:
        proxy.close()


def test_chunk_of_another_model_is_a_miss(kvstore: Make, tmp_path: Path) -> None:
    """An object copied under the right key but written for another fingerprint is never returned."""
    other = ModelFingerprint("tiny-test", "bfloat16", layers=3, kv_heads=2, head_dim=16, tag="other")
    kvstore(fingerprint=other, shared=str(tmp_path / "s"), write_through=True).store(TOKENS, make_kv(len(TOKENS)))
    s = kvstore(shared=str(tmp_path / "s"))
    store = s.shared.store  # type: ignore[union-attr]
    theirs = f"kvcache/{other.namespace}/"
    ours = s.shared.object_key(s._keys(TOKENS)[0])  # type: ignore[union-attr]
    src = next(i.key for i in store.list(theirs))
    store.put(ours, store.get(src))
    assert s.lookup(TOKENS) == CHUNK  # the key exists...
    assert s.retrieve(TOKENS, zeros_kv(len(TOKENS))) == 0  # ...but its header says another model
    assert s.stats()["shared"]["verify_failures"] == 1


# ---------------------------------------------------------------- a full disk


def test_disk_budget_too_small_skips_and_serves(kvstore: Make, tmp_path: Path) -> None:
    s = kvstore(disk_dir=tmp_path / "d", disk_bytes=4096, write_through=True)
    kv = make_kv(len(TOKENS))
    s.store(TOKENS, kv)
    assert s.stats()["disk"]["skipped"] == 4
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)


def test_full_disk_write_errors_are_counted_and_serving_goes_on(tmp_path: Path) -> None:
    """Writes fail for real: RLIMIT_FSIZE below one chunk makes every chunk write fail with EFBIG
    (no small filesystem can be mounted here; ENOSPC takes the same path)."""
    code = textwrap.dedent(
        f"""
        import os, resource, signal, sys
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        from tests.kvcache.kvhelpers import CHUNK, FP, make_kv, same_prefix, zeros_kv
        from storecomp import KVCacheStore
        tokens = list(range(4 * CHUNK))
        kv = make_kv(len(tokens))
        s = KVCacheStore(FP, chunk_tokens=CHUNK, disk_dir={str(tmp_path / "d")!r}, write_through=True)
        assert s.store(tokens, kv) == 4 * CHUNK
        st = s.stats()["disk"]
        assert st["write_failures"] == 4, st
        out = zeros_kv(len(tokens))
        assert s.retrieve(tokens, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)
        leftovers = [f for _, _, fs in os.walk({str(tmp_path / "d")!r}) for f in fs]
        assert leftovers == [], leftovers
        s.close()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


# ---------------------------------------------------------------- an unreachable shared store


def test_shared_store_unreachable(kvstore: Make, tmp_path: Path) -> None:
    """Nothing listens at the endpoint: requests succeed from the upper tiers, writes retry then give up."""
    url = "s3://nobucket/kv"
    opts = {
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "access_key_id": "a",
        "secret_access_key": "b",
        "retry": FAST_RETRY,
    }
    s = kvstore(disk_dir=tmp_path / "d", shared=SharedTierOptions(url, opts, retry_seconds=1.0, backoff=0.1))
    kv = make_kv(len(TOKENS))
    t0 = time.perf_counter()
    assert s.store(TOKENS, kv) == 4 * CHUNK
    assert s.lookup(TOKENS) == 4 * CHUNK
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)
    other = list(range(900, 900 + 2 * CHUNK))
    assert s.lookup(other) == 0  # asks the shared store, which fails: a miss, not an error
    assert s.retrieve(other, zeros_kv(2 * CHUNK)) == 0
    assert time.perf_counter() - t0 < 10
    s.flush(timeout=30)
    st = s.stats()["shared"]
    assert st["unavailable"] >= 1 and st["write_failures"] == 4 and not st["last_error"] == ""


def test_shared_tier_keeps_good_chunks_when_a_416_port_is_unreachable(
    kvstore: Make, tmp_path: Path, running_seaweedfs: SeaweedFS
) -> None:
    """Issue 16, 0b: the S3 endpoint's port holds "416"; the server becomes unreachable while
    a reader knows its chunks. Reads are misses counted as unavailable, never corrupt chunks,
    and every object is still in the bucket (before: read as 0 bytes, taken for truncated
    chunks and deleted)."""
    sw = running_seaweedfs
    proxy = Relay(int(sw.endpoint.rsplit(":", 1)[1]), port=closed_port_with_416())
    url = sw.url()
    opts = dict(sw.store_options(), endpoint=f"http://127.0.0.1:{proxy.port}", retry=FAST_RETRY)
    try:
        writer = kvstore(shared=SharedTierOptions(url, opts))
        kv = make_kv(len(TOKENS))
        assert writer.store(TOKENS, kv) == 4 * CHUNK
        writer.flush(timeout=60)
        direct = open_store(url, **sw.store_options())
        before = sorted(i.key for i in direct.list(""))
        assert len(before) >= 4
        reader = kvstore(shared=SharedTierOptions(url, opts, backoff=0.05, max_backoff=0.1))
        assert reader.lookup(TOKENS) == 4 * CHUNK  # the reader knows the chunks are there
        proxy.close()
        for _ in range(3):  # what the lookup brought to the host tier is served; the rest is unreachable
            assert reader.retrieve(TOKENS, zeros_kv(len(TOKENS))) < 4 * CHUNK
            time.sleep(0.1)  # past the tier's backoff: it asks the store again
        st = reader.stats()
        assert st["verify_failures"] == 0 and st["shared"]["unavailable"] >= 1, st
        assert sorted(i.key for i in direct.list("")) == before  # nothing deleted
        proxy.start()  # back: the same chunks serve again
        out = zeros_kv(len(TOKENS))
        deadline = time.monotonic() + 10
        while reader.retrieve(TOKENS, out) != 4 * CHUNK and time.monotonic() < deadline:
            time.sleep(0.1)
        assert same_prefix(kv, out, 4 * CHUNK)
        direct.close()
    finally:
        proxy.close()


def test_shared_store_down_then_back(kvstore: Make, tmp_path: Path, running_seaweedfs: SeaweedFS) -> None:
    """SeaweedFS stops mid-run: serving goes on; background writes retry and land once it is back."""
    sw = running_seaweedfs
    url = sw.url()
    opts = dict(sw.store_options(), retry=FAST_RETRY)
    sw.stop()
    try:
        s = kvstore(shared=SharedTierOptions(url, opts, retry_seconds=60.0, backoff=0.2, max_backoff=0.5))
        kv = make_kv(len(TOKENS))
        assert s.store(TOKENS, kv) == 4 * CHUNK
        out = zeros_kv(len(TOKENS))
        assert s.retrieve(TOKENS, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)
        time.sleep(0.5)
        assert s.stats()["shared"]["unavailable"] >= 1
    finally:
        sw.restart()
    s.flush(timeout=60)
    assert s.stats()["shared"]["write_failures"] == 0
    b = kvstore(shared=SharedTierOptions(url, opts))
    out = zeros_kv(len(TOKENS))
    assert b.retrieve(TOKENS, out) == 4 * CHUNK and same_prefix(kv, out, 4 * CHUNK)
