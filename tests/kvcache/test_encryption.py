"""Encrypted KV tiers: sealed on disk and in the shared store, host RAM plaintext.

Faults (a test each): a wrong key, a missing key provider, a chunk moved to
another key, a flipped tag, nonce or ciphertext byte, a truncated chunk,
key rotation while readers run (disk; and shared, under a tenant, with the old chunks
rewrapped meanwhile), and encrypted and plaintext chunks side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from storecomp import crypto
from storecomp.errors import ConfigError
from storecomp.kvcache import KVCacheStore, Tenant
from storecomp.kvcache.fetch import SEGMENT_BYTES
from storecomp.store import open_store
from storecomp.store.retry import RetryPolicy
from storecomp.testing.seaweedfs import SeaweedFS
from tests.kvcache.kvhelpers import CHUNK, make_kv, same_prefix, zeros_kv

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 132))
TOKENS = list(range(4 * CHUNK))
ACME = Tenant("acme", b"acme-secret-0123456789abcdef")
RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5, deadline_s=60.0, connect_timeout_s=5.0)


def _keys(*pairs: tuple[str, bytes]) -> crypto.StaticKeys:
    return crypto.StaticKeys(list(pairs))


@contextlib.contextmanager
def _readers_running(readers: list[KVCacheStore], rounds: int) -> Iterator[list[int]]:
    """Each of ``readers`` retrieves TOKENS in a thread of its own, up to ``rounds``
    times, while the block runs; yields the tokens each retrieve got (all of them
    once the block has ended)."""
    results: list[int] = []
    stop = threading.Event()

    def read(store: KVCacheStore) -> None:
        for _ in range(rounds):
            results.append(store.retrieve(TOKENS, zeros_kv(len(TOKENS))))
            if stop.is_set():
                return

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        stop.set()
        for t in threads:
            t.join(60)


def _rotate_to_k2(key_file: Path) -> None:
    """k2 wraps new data keys, k1 still unwraps; a new mtime even within the file system's timestamp granularity."""
    key_file.write_text(f"k2:{KEY2.hex()}\nk1:{KEY1.hex()}\n")
    os.utime(key_file, ns=(1, 1))


def _chunk_files(store: KVCacheStore) -> list[Path]:
    assert store.disk is not None
    return [Path(store.disk.path(k)) for k in store._keys(TOKENS)]


def _stored(kvstore: Callable[..., KVCacheStore], tmp_path: Path, keys: crypto.KeyProvider, **kw: object) -> KVCacheStore:
    s = kvstore(disk_dir=tmp_path / "disk", shared=str(tmp_path / "shared"), encryption=keys, write_through=True, **kw)
    s.store(TOKENS, make_kv(len(TOKENS), seed=5))
    s.flush()
    return s


def _retrieve(
    kvstore: Callable[..., KVCacheStore], tmp_path: Path, keys: crypto.KeyProvider, tier: str
) -> tuple[int, KVCacheStore]:
    where = {"disk_dir": tmp_path / "disk"} if tier == "disk" else {"shared": str(tmp_path / "shared")}
    s = kvstore(encryption=keys, host_bytes=0, **where)
    out = zeros_kv(len(TOKENS))
    n = s.retrieve(TOKENS, out)
    if n:
        assert same_prefix(out, make_kv(len(TOKENS), seed=5), n)
    return n, s


@pytest.mark.parametrize("tier", ["disk", "shared"])
def test_round_trip_and_no_plaintext_at_rest(kvstore: Callable[..., KVCacheStore], tmp_path: Path, tier: str) -> None:
    keys = _keys(("k1", KEY1))
    writer = _stored(kvstore, tmp_path, keys)
    plain = writer.host.acquire(writer._keys(TOKENS)[0])
    assert plain is not None
    probe = plain.array[writer.layout.layer_offset(0) : writer.layout.layer_offset(0) + 64].tobytes()
    writer.host.release(writer._keys(TOKENS)[0], plain)
    at_rest = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert at_rest
    for p in at_rest:
        data = p.read_bytes()
        assert data[:4] == crypto.MAGIC and probe not in data and b"SCKV" not in data
    n, reader = _retrieve(kvstore, tmp_path, keys, tier)
    assert n == len(TOKENS) and reader.stats()["verify_failures"] == 0


@pytest.mark.parametrize("tier", ["disk", "shared"])
def test_wrong_key_fails_closed_as_counted_misses(kvstore: Callable[..., KVCacheStore], tmp_path: Path, tier: str) -> None:
    _stored(kvstore, tmp_path, _keys(("k1", KEY1)))
    for wrong in (_keys(("k1", KEY2)), _keys(("other", KEY1))):  # another key under the same id; an unknown id
        n, reader = _retrieve(kvstore, tmp_path, wrong, tier)
        assert n == 0 and reader.lookup(TOKENS) == len(TOKENS)  # present, but never returned
        assert reader.stats()["verify_failures"] == 1
    # nothing was deleted: the right key still reads everything
    n, _ = _retrieve(kvstore, tmp_path, _keys(("k1", KEY1)), tier)
    assert n == len(TOKENS)


def test_missing_key_provider_is_a_clear_error_naming_the_setting(
    kvstore: Callable[..., KVCacheStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(crypto.ENV_KEYS, raising=False)
    monkeypatch.delenv(crypto.ENV_KEY_FILE, raising=False)
    with pytest.raises(ConfigError, match=crypto.ENV_KEYS):
        kvstore(disk_dir=tmp_path, encryption="env")
    with pytest.raises(ConfigError, match=crypto.ENV_KEY_FILE):
        kvstore(disk_dir=tmp_path, encryption="file")
    with pytest.raises(ConfigError, match="no-such-file"):
        kvstore(disk_dir=tmp_path, encryption=f"file:{tmp_path / 'no-such-file'}")
    with pytest.raises(ConfigError, match="encryption="):
        kvstore(disk_dir=tmp_path, encryption="rot13")
    monkeypatch.setenv(crypto.ENV_KEYS, "k1:not-a-key")
    with pytest.raises(ConfigError, match=crypto.ENV_KEYS) as exc:
        kvstore(disk_dir=tmp_path, encryption="env")
    assert "not-a-key" not in str(exc.value)


def test_chunk_moved_to_another_key_is_a_miss(kvstore: Callable[..., KVCacheStore], tmp_path: Path) -> None:
    keys = _keys(("k1", KEY1))
    writer = _stored(kvstore, tmp_path, keys)
    files = _chunk_files(writer)
    shutil.copyfile(files[0], files[1])  # chunk 0's sealed bytes under chunk 1's name
    n, reader = _retrieve(kvstore, tmp_path, keys, "disk")
    assert n == CHUNK and reader.stats()["verify_failures"] == 1


@pytest.mark.parametrize("aead", ["native", "cryptography"])
@pytest.mark.parametrize(
    "damage",
    ["tag", "nonce", "ciphertext", "header", "truncate"],
)
def test_flipped_or_truncated_chunk_is_a_counted_miss(
    kvstore: Callable[..., KVCacheStore], tmp_path: Path, damage: str, aead: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both AES paths (the disk tier's chunks opened on the engine's threads, or the cryptography fallback)."""
    monkeypatch.setenv("STORECOMP_AEAD", aead)
    keys = _keys(("k1", KEY1))
    writer = _stored(kvstore, tmp_path, keys)
    path = _chunk_files(writer)[2]
    data = bytearray(path.read_bytes())
    base = crypto.data_offset(writer.layout.nbytes, SEGMENT_BYTES)
    # the first tag; the header's nonce base (bytes 80-92); a ciphertext byte; the wrapped data key
    pos = {"tag": crypto.HEADER_BYTES + 3, "nonce": 85, "ciphertext": base + 100, "header": 40}.get(damage)
    if pos is None:
        data = data[: len(data) // 2]
    else:
        data[pos] ^= 0x01
    path.write_bytes(bytes(data))
    n, reader = _retrieve(kvstore, tmp_path, keys, "disk")
    assert n == 2 * CHUNK  # chunks 0 and 1, never the damaged one or past it
    assert reader.stats()["verify_failures"] == 1


def test_key_rotation_while_readers_run(kvstore: Callable[..., KVCacheStore], tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"k1:{KEY1.hex()}\n")
    provider = crypto.FileKeyProvider(key_file)
    writer = _stored(kvstore, tmp_path, provider, host_bytes=0)
    old_files = _chunk_files(writer)
    readers = [kvstore(disk_dir=tmp_path / "disk", encryption=crypto.FileKeyProvider(key_file), host_bytes=0) for _ in range(2)]
    more = list(range(1000, 1000 + 2 * CHUNK))
    with _readers_running(readers, 200) as results:
        _rotate_to_k2(key_file)
        writer.store(more, make_kv(len(more), seed=9))
        writer.flush()
    assert results and all(n == len(TOKENS) for n in results)  # every read during the rotation got every chunk
    new_file = Path(writer.disk.path(writer._keys(more)[0]))  # type: ignore[union-attr]
    assert b"k2" in new_file.read_bytes()[: crypto.HEADER_BYTES]
    assert b"k1" in old_files[0].read_bytes()[: crypto.HEADER_BYTES]

    # rewrap the old chunks' data keys under k2 (segments untouched), then retire k1
    for p in old_files:
        blob = p.read_bytes()
        name = f"{writer.namespace}/{p.name[:64]}".encode()
        head = crypto.rewrap(blob, name, provider, str(p))
        assert blob[crypto.HEADER_BYTES :] == p.read_bytes()[crypto.HEADER_BYTES :]
        p.write_bytes(head + blob[crypto.HEADER_BYTES :])
    key_file.write_text(f"k2:{KEY2.hex()}\n")
    only_k2 = _keys(("k2", KEY2))
    n, _ = _retrieve(kvstore, tmp_path, only_k2, "disk")
    assert n == len(TOKENS)
    n, reader = _retrieve(kvstore, tmp_path, _keys(("k1", KEY1)), "disk")  # the retired key reads nothing
    assert n == 0 and reader.stats()["verify_failures"] == 1


def test_encrypted_and_plaintext_chunks_are_separate_pools(kvstore: Callable[..., KVCacheStore], tmp_path: Path) -> None:
    keys = _keys(("k1", KEY1))
    enc = _stored(kvstore, tmp_path, keys)
    plain = kvstore(disk_dir=tmp_path / "disk", shared=str(tmp_path / "shared"), host_bytes=0)
    assert plain.lookup(TOKENS) == 0  # a plaintext store never reads (nor deletes) sealed chunks
    plain.store(
        TOKENS,
        make_kv(len(TOKENS), seed=5),
    )
    plain.flush()
    assert plain.retrieve(TOKENS, zeros_kv(len(TOKENS))) == len(TOKENS)
    # a plaintext chunk planted where a sealed one belongs is refused (a counted miss, removed)
    src = Path(plain.disk.path(plain._keys(TOKENS)[0]))  # type: ignore[union-attr]
    dst = _chunk_files(enc)[0]
    shutil.copyfile(src, dst)
    n, reader = _retrieve(kvstore, tmp_path, keys, "disk")
    assert n == 0 and reader.stats()["verify_failures"] == 1 and not dst.exists()


def test_shared_tier_key_rotation_under_a_tenant_while_readers_run(
    kvstore: Callable[..., KVCacheStore], tmp_path: Path, running_seaweedfs: SeaweedFS
) -> None:
    """A tenant's sealed chunks in SeaweedFS: the key rotates and the old chunks are rewrapped
    (compare-and-swap of whole objects) while readers retrieve; every read gets every chunk
    (one request per chunk: one version, old or rewrapped). Then the old key retires."""
    sw = running_seaweedfs
    shared = open_store(sw.url(), retry=RETRY, **sw.store_options())
    key_file = tmp_path / "keys"
    key_file.write_text(f"k1:{KEY1.hex()}\n")
    provider = crypto.FileKeyProvider(key_file)
    opts = {"shared": shared, "tenant": ACME, "host_bytes": 0}
    writer = kvstore(encryption=provider, write_through=True, **opts)
    writer.store(TOKENS, make_kv(len(TOKENS), seed=5))
    writer.flush()
    assert writer.shared is not None
    okeys = [writer.shared.object_key(k) for k in writer._keys(TOKENS)]
    assert all(k.split("/").count("enc") == 1 and "tenants/acme/" in k for k in okeys)
    readers = [kvstore(encryption=crypto.FileKeyProvider(key_file), **opts) for _ in range(2)]
    more = list(range(1000, 1000 + 2 * CHUNK))
    with _readers_running(readers, 100) as results:
        _rotate_to_k2(key_file)
        writer.store(more, make_kv(len(more), seed=9))
        writer.flush()
        for okey, key in zip(okeys, writer._keys(TOKENS), strict=True):  # rewrap while the readers run
            info = shared.stat(okey)
            raw = np.empty(info.size, np.uint8)
            shared.read_ranges(okey, [0], [info.size], raw, [0], version=info.version)
            head = crypto.rewrap(raw, f"{writer.namespace}/{key.hex()}".encode(), provider, okey)
            raw[: crypto.HEADER_BYTES] = np.frombuffer(head, np.uint8)
            shared.compare_and_swap(okey, info.version, raw)
    assert results and all(n == len(TOKENS) for n in results), results
    assert all(r.stats()["verify_failures"] == 0 for r in readers)
    new_head = shared.get(writer.shared.object_key(writer._keys(more)[0]), 0, crypto.HEADER_BYTES)
    assert b"k2" in new_head

    key_file.write_text(f"k2:{KEY2.hex()}\n")  # retire k1: every chunk is under k2 now
    only_k2 = kvstore(encryption=_keys(("k2", KEY2)), **opts)
    assert only_k2.retrieve(TOKENS, zeros_kv(len(TOKENS))) == len(TOKENS)
    only_k1 = kvstore(encryption=_keys(("k1", KEY1)), **opts)
    assert only_k1.retrieve(TOKENS, zeros_kv(len(TOKENS))) == 0
    assert only_k1.stats()["verify_failures"] == 1 and all(shared.exists(k) for k in okeys)  # counted, not deleted
    shared.close()
