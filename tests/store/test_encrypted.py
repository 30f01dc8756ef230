"""EncryptedStore: sealed objects over any store, and every fault the format must catch.

Faults (a test each): a wrong key, a missing key provider, an object moved to
another key, segments swapped, a flipped tag or nonce, a truncated object,
key rotation while readers run, and plaintext objects under an encrypted store.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storecomp import crypto
from storecomp.errors import ConfigError, CorruptDataError, InvalidArgumentError, ShortReadError, WrongKeyError
from storecomp.store import CachedStore, EncryptedStore, LocalStore, Mount, Namespace, open_store
from storecomp.store.mounts import load_mounts

SEG = crypto.SEGMENT_BYTES
KEY1 = bytes(range(32))
KEY2 = bytes(range(50, 82))
DATA = np.random.default_rng(7).integers(0, 256, 3 * SEG + 1000, dtype=np.uint8).tobytes()


def _keys(*pairs: tuple[str, bytes]) -> crypto.StaticKeys:
    return crypto.StaticKeys(list(pairs))


@pytest.fixture(params=["native", "cryptography"])
def aead_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Who opens segments: OpenSSL's EVP on the native engine, or the ``cryptography`` fallback."""
    monkeypatch.setenv("STORECOMP_AEAD", request.param)
    return str(request.param)


@pytest.fixture
def enc(tmp_path: Path) -> EncryptedStore:
    s = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k1", KEY1)))
    yield s
    s.close()


def test_round_trip_sizes_and_no_plaintext_at_rest(enc: EncryptedStore, tmp_path: Path) -> None:
    info = enc.put("d/a.bin", DATA)
    assert info.size == len(DATA)
    assert enc.get("d/a.bin") == DATA
    assert enc.stat("d/a.bin").size == len(DATA)
    assert [(i.key, i.size) for i in enc.list("d/")] == [("d/a.bin", len(DATA))]
    assert enc.put_if_absent("d/a.bin", b"other") is False
    assert enc.put_if_absent("d/empty", b"") is True and enc.get("d/empty") == b""
    raw = (tmp_path / "objects" / "d" / "a.bin").read_bytes()
    assert raw[:4] == crypto.MAGIC and len(raw) == crypto.sealed_size(len(DATA))
    assert DATA[SEG : SEG + 64] not in raw and DATA[:64] not in raw
    v = enc.stat("d/a.bin").version
    enc.compare_and_swap("d/a.bin", v, b"swapped")
    assert enc.get("d/a.bin") == b"swapped"  # the cached header of the old version is not used
    assert "KEY" not in repr(enc) and KEY1.hex() not in repr(enc)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(DATA) + 10), st.integers(0, 2 * SEG)), min_size=1, max_size=5))
def test_ranges_across_segments_match_the_plaintext(
    tmp_path_factory: pytest.TempPathFactory, ranges: list[tuple[int, int]]
) -> None:
    store = _shared_store(tmp_path_factory)
    out = np.zeros(sum(n for _, n in ranges), np.uint8)
    douts = np.cumsum([0] + [n for _, n in ranges])[:-1]
    got = store.read_ranges("a", [o for o, _ in ranges], [n for _, n in ranges], out, douts, exact=False)
    for (o, n), g, d in zip(ranges, got, douts, strict=True):
        want = DATA[o : o + n]
        assert int(g) == len(want) and out[d : d + len(want)].tobytes() == want
    if any(n and o + n > len(DATA) for o, n in ranges):  # a zero-length range is never short
        with pytest.raises(ShortReadError):
            store.read_ranges("a", [o for o, _ in ranges], [n for _, n in ranges], out, douts)


_STORES: dict[str, EncryptedStore] = {}


def _shared_store(factory: pytest.TempPathFactory) -> EncryptedStore:
    if "s" not in _STORES:
        _STORES["s"] = EncryptedStore(LocalStore(factory.mktemp("ranges")), _keys(("k1", KEY1)))
        _STORES["s"].put("a", DATA)
    return _STORES["s"]


def test_wrong_key_fails_closed(enc: EncryptedStore, tmp_path: Path, aead_backend: str) -> None:
    enc.put("a", DATA)
    for keys in (_keys(("k1", KEY2)), _keys(("k9", KEY1))):
        other = EncryptedStore(LocalStore(tmp_path / "objects"), keys)
        buf = np.zeros(100, np.uint8)
        with pytest.raises(WrongKeyError, match="k1"):
            other.get("a")
        with pytest.raises(CorruptDataError):
            other.read_ranges("a", [SEG], [100], buf, [0])
        assert not buf.any()  # not a byte of garbage
        other.close()


def test_missing_key_provider_is_a_clear_error_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(crypto.ENV_KEYS, raising=False)
    with pytest.raises(ConfigError, match=crypto.ENV_KEYS):
        open_store(tmp_path, encryption="env")
    with pytest.raises(ConfigError, match="key provider"):
        EncryptedStore(LocalStore(tmp_path), None)
    with pytest.raises(ConfigError, match="missing-keys"):
        open_store(tmp_path, encryption=f"file:{tmp_path / 'missing-keys'}")
    ns = Namespace([Mount("m", (Mount.of("m", str(tmp_path)).replicas), encryption="env")])
    with pytest.raises(ConfigError, match=crypto.ENV_KEYS):
        ns.store("m")
    monkeypatch.setenv(crypto.ENV_KEYS, "k1:" + KEY1.hex())
    ns.store("m").put("x", b"hello")
    assert (tmp_path / "x").read_bytes()[:4] == crypto.MAGIC and ns.store("m").get("x") == b"hello"


def test_mount_table_takes_an_encryption_setting(tmp_path: Path) -> None:
    cfg = tmp_path / "mounts.toml"
    cfg.write_text(f'[mounts.m]\nurl = "{tmp_path / "data"}"\nencryption = "file:{tmp_path / "keys"}"\n')
    assert load_mounts(environ={"STORECOMP_MOUNTS": str(cfg)})["m"].encryption == f"file:{tmp_path / 'keys'}"
    cfg.write_text(f'[mounts.m]\nurl = "{tmp_path / "data"}"\nencryption = "rot13"\n')
    with pytest.raises(ConfigError, match="encryption"):
        load_mounts(environ={"STORECOMP_MOUNTS": str(cfg)})


def test_object_moved_to_another_key_fails(enc: EncryptedStore, tmp_path: Path) -> None:
    enc.put("a", DATA)
    root = tmp_path / "objects"
    (root / "b").write_bytes((root / "a").read_bytes())
    with pytest.raises(WrongKeyError, match="moved"):
        enc.get("b")


NONCE_BASE_AT = 80  # the header's nonce base: bytes 80-92 (storecomp.crypto's layout)


@pytest.mark.parametrize("damage", ["swap", "tag", "nonce", "ciphertext", "padding", "truncate", "truncate-header"])
def test_tampered_objects_fail_closed(enc: EncryptedStore, tmp_path: Path, damage: str, aead_backend: str) -> None:
    enc.put("a", DATA)
    path = tmp_path / "objects" / "a"
    raw = bytearray(path.read_bytes())
    env = crypto.open_header(raw, b"a", enc.keys, "a")
    base = env.data_offset
    (t0, _), (t1, _) = env.tag_span(0), env.tag_span(1)
    if damage == "swap":  # segments 0 and 1 change places, each with its tag
        raw[base : base + SEG], raw[base + SEG : base + 2 * SEG] = raw[base + SEG : base + 2 * SEG], raw[base : base + SEG]
        raw[t0 : t0 + 16], raw[t1 : t1 + 16] = raw[t1 : t1 + 16], raw[t0 : t0 + 16]
    elif damage == "tag":
        raw[t1 + 15] ^= 1
    elif damage == "nonce":
        raw[NONCE_BASE_AT + 3] ^= 1
    elif damage == "ciphertext":
        raw[base + SEG + 500] ^= 1
    elif damage == "padding":  # between the tag table and the ciphertext
        raw[base - 1] ^= 1
    elif damage == "truncate":
        raw = raw[: len(raw) - 10]
    else:
        raw = raw[:100]
    path.write_bytes(bytes(raw))
    fresh = EncryptedStore(LocalStore(tmp_path / "objects"), enc.keys)
    buf = np.zeros(2 * SEG, np.uint8)
    if damage == "truncate":  # the segments a range needs are whole: they read; the cut tail does not
        fresh.read_ranges("a", [0], [2 * SEG], buf, [0])
        assert buf.tobytes() == DATA[: 2 * SEG]
        with pytest.raises(CorruptDataError, match="truncated"):
            fresh.read_ranges("a", [len(DATA) - 10], [10], buf, [0])
    else:
        with pytest.raises(CorruptDataError):
            fresh.read_ranges("a", [0], [2 * SEG], buf, [0])
        assert not buf.any()  # nothing is left in the destination unless every segment authenticates
    with pytest.raises(CorruptDataError):
        fresh.get("a")
    if damage in ("tag", "ciphertext"):
        assert fresh.get("a", 0, SEG) == DATA[:SEG]  # an untouched segment still reads
    fresh.close()


def test_reads_land_in_place_and_through_the_edges(tmp_path: Path) -> None:
    """Ranges that cover whole segments are decrypted in the destination, their edges through
    scratch; a tag table too large to cache is read per call, with the segments."""
    for max_head in (1 << 20, 0):
        store = EncryptedStore(LocalStore(tmp_path / "o"), _keys(("k1", KEY1)), segment_bytes=4096)
        store.max_cached_head = max_head
        store.put("a", DATA)
        offs = [0, 4096, 5000, 3 * 4096 - 1, len(DATA) - 4096 - 10, 7]
        lens = [4096, 3 * 4096, 100, 2, 4096 + 10, 0]
        out = np.zeros(sum(lens), np.uint8)
        douts = np.cumsum([0] + lens[:-1])
        assert store.read_ranges("a", offs, lens, out, douts).tolist() == lens
        assert out.tobytes() == b"".join(DATA[o : o + n] for o, n in zip(offs, lens, strict=True))
        store.close()


def test_key_rotation_while_readers_run(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(f"k1:{KEY1.hex()}\n")
    writer = EncryptedStore(LocalStore(tmp_path / "objects"), crypto.FileKeyProvider(key_file))
    for i in range(4):
        writer.put(f"old/{i}", DATA[i:])
    readers = [EncryptedStore(LocalStore(tmp_path / "objects"), crypto.FileKeyProvider(key_file)) for _ in range(2)]
    errors: list[BaseException] = []
    reads = [0]
    done = threading.Event()

    def read(store: EncryptedStore) -> None:
        try:
            while not done.is_set() and reads[0] < 2000:
                for i in range(4):
                    assert store.get(f"old/{i}") == DATA[i:]
                    reads[0] += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    key_file.write_text(f"k2:{KEY2.hex()}\nk1:{KEY1.hex()}\n")  # rotate: k2 current, k1 kept
    os.utime(key_file, ns=(1, 1))
    writer.put("new", b"after rotation")
    rewrapped = [writer.rewrap(f"old/{i}") for i in range(4)]  # while the readers run
    done.set()
    for t in threads:
        t.join(60)
    assert not errors and reads[0] > 0 and all(rewrapped)
    assert writer.rewrap("new") is False  # already under the current key
    key_file.write_text(f"k2:{KEY2.hex()}\n")  # retire k1: everything is under k2 now
    only_k2 = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k2", KEY2)))
    assert [only_k2.get(f"old/{i}") for i in range(4)] == [DATA[i:] for i in range(4)]
    assert only_k2.get("new") == b"after rotation"
    for s in [writer, only_k2, *readers]:
        s.close()


def test_plaintext_objects_are_refused_or_read_explicitly(enc: EncryptedStore, tmp_path: Path) -> None:
    LocalStore(tmp_path / "objects").put("plain", b"written around the encrypted store")
    with pytest.raises(CorruptDataError, match="not an encrypted object"):
        enc.get("plain")
    with pytest.raises(CorruptDataError, match="allow_plaintext"):
        enc.stat("plain")
    mixed = EncryptedStore(LocalStore(tmp_path / "objects"), enc.keys, allow_plaintext=True)
    enc.put("sealed", b"secret bytes")
    assert mixed.get("plain") == b"written around the encrypted store"
    assert mixed.get("sealed") == b"secret bytes" and mixed.stat("sealed").size == len(b"secret bytes")
    mixed.close()


def test_mixed_listings_give_plaintext_sizes(enc: EncryptedStore, tmp_path: Path) -> None:
    """With allow_plaintext, a listing tells sealed objects from plain ones by their headers:
    every size is the bytes a read returns, under any segment size."""
    inner = LocalStore(tmp_path / "objects")
    inner.put("d/plain", b"written around the encrypted store")
    inner.put("d/short", b"SCEN")  # shorter than a header, starting like one
    enc.put("d/sealed", DATA)
    other = EncryptedStore(inner, enc.keys, segment_bytes=4096)
    other.put("d/small-segments", DATA[:50_000])
    mixed = EncryptedStore(inner, enc.keys, allow_plaintext=True)
    want = {k: len(mixed.get(k)) for k in ("d/plain", "d/sealed", "d/short", "d/small-segments")}
    assert want == {"d/plain": 34, "d/sealed": len(DATA), "d/short": 4, "d/small-segments": 50_000}
    assert {i.key: i.size for i in mixed.list("d/")} == want
    assert {i.key: i.size for i in mixed.list_dir("d").objects} == want
    assert {i.key: i.version for i in mixed.list("d/")} == {i.key: i.version for i in inner.list("d/")}
    assert enc.stat("d/sealed").size == len(DATA)
    mixed.close()
    other.close()


def test_cache_tier_under_an_encrypted_store_holds_ciphertext(tmp_path: Path) -> None:
    store = EncryptedStore(CachedStore(LocalStore(tmp_path / "remote"), tmp_path / "cache", 64 << 20), _keys(("k1", KEY1)))
    store.put("a", DATA)
    assert store.get("a") == DATA and store.get("a", SEG + 5, 100) == DATA[SEG + 5 : SEG + 105]
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached
    for p in cached:
        assert DATA[:64] not in p.read_bytes() and DATA[SEG : SEG + 64] not in p.read_bytes()
    store.close()


def test_parse_keys_formats_and_errors_never_show_key_material() -> None:
    import base64

    b64 = base64.b64encode(KEY1).decode()
    keys = crypto.parse_keys(f"new:{KEY2.hex()}, {b64}", "X")
    assert keys[0] == ("new", KEY2) and keys[1] == (crypto.key_id_of(KEY1), KEY1)
    for bad in ("", "k:short", f"a:{b64},a:{b64}", "k:" + "zz" * 32):
        with pytest.raises(ConfigError) as exc:
            crypto.parse_keys(bad, "X")
        assert b64 not in str(exc.value) and "zz" * 8 not in str(exc.value)
    assert KEY1.hex() not in repr(crypto.StaticKeys([("k", KEY1)]))


def test_snapshots_over_an_encrypted_store(tmp_path: Path) -> None:
    from storecomp.store import Repository

    keys = _keys(("k1", KEY1))
    repo = Repository(EncryptedStore(LocalStore(tmp_path), keys), "repo", chunk_bytes=4096)
    w = repo.writer()
    w.add("a.bin", DATA[:10_000])
    h = w.commit("main", expected=None)
    assert repo.snapshot("main").hash == h and repo.snapshot("main").read("a.bin") == DATA[:10_000]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".sc-")]  # LocalStore's empty CAS locks
    assert len(files) == 4  # blob, its checksum sidecar, manifest, ref: all sealed
    for p in files:
        assert p.read_bytes()[:4] == crypto.MAGIC and DATA[:64] not in p.read_bytes()
    wrong = Repository(EncryptedStore(LocalStore(tmp_path), _keys(("k1", KEY2))), "repo", chunk_bytes=4096)
    with pytest.raises(CorruptDataError):
        wrong.snapshot("main").read("a.bin")


def test_datasets_read_through_an_encrypted_store_and_its_cache(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from storecomp.data import DataLoader, open_dataset, write_dataset

    x = np.random.default_rng(1).integers(0, 256, (64, 4096), np.uint8)
    write_dataset(tmp_path / "plain", {"x": x})
    sealed = EncryptedStore(LocalStore(tmp_path / "sealed"), _keys(("k1", KEY1)))
    plain = LocalStore(tmp_path / "plain")
    for info in plain.list(""):
        sealed.put(info.key, plain.get(info.key))
    for ds in (open_dataset(sealed), open_dataset(sealed, remote="cache", cache_dir=tmp_path / "cache")):
        batch = next(iter(DataLoader(ds, 64, shuffle=False)))
        assert np.array_equal(np.asarray(batch["x"]), x)
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert cached and all(x[0].tobytes()[:64] not in p.read_bytes() for p in cached)
    with pytest.raises(InvalidArgumentError, match="inside the encryption"):
        CachedStore(sealed, tmp_path / "cache2", 1 << 20)  # would hold plaintext
    sealed.close()


@pytest.mark.gpu
def test_reads_into_a_cuda_tensor(tmp_path: Path) -> None:
    """A CUDA destination gets the plaintext through host scratch (whole segments and edges);
    a failed tag leaves nothing of the object in it."""
    import torch

    store = EncryptedStore(LocalStore(tmp_path / "o"), _keys(("k1", KEY1)), segment_bytes=4096)
    store.put("a", DATA)
    offs, lens = [0, 4096 + 7, len(DATA) - 100], [2 * 4096, 5000, 100]
    dst = torch.zeros(sum(lens), dtype=torch.uint8, device="cuda")
    assert store.read_ranges("a", offs, lens, dst, np.cumsum([0] + lens[:-1])).tolist() == lens
    assert dst.cpu().numpy().tobytes() == b"".join(DATA[o : o + n] for o, n in zip(offs, lens, strict=True))
    wrong = EncryptedStore(LocalStore(tmp_path / "o"), _keys(("k1", KEY2)))
    dst.zero_()
    with pytest.raises(CorruptDataError):
        wrong.read_ranges("a", [0], [4096], dst, [0])
    assert not bool(dst.any())
    store.close()
    wrong.close()


def test_delete_if_forgets_the_cached_header(enc: EncryptedStore) -> None:
    v = enc.put("a", DATA).version
    assert enc.stat("a").size == len(DATA) and enc._cached("a") is not None  # the header is cached
    assert enc.delete_if("a", "not-the-version") is False
    assert enc.get("a") == DATA
    assert enc.delete_if("a", v) is True
    assert enc._cached("a") is None and not enc.exists("a")
    enc.put("a", b"new")
    assert enc.get("a") == b"new"


def test_a_read_with_nothing_to_read_is_done_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero-length ranges and ranges past the end: the future says done() without a result() call."""
    monkeypatch.setenv("STORECOMP_AEAD", "native")
    store = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k1", KEY1)))
    try:
        store.put("a", DATA)
        store.stat("a")
        dst = np.zeros(SEG, np.uint8)
        for offs, lens in (([0], [0]), ([len(DATA) + 10], [100])):
            fut = store.submit_ranges("a", offs, lens, dst, [0], exact=False)
            assert fut.done() and fut.result().tolist() == [0]
    finally:
        store.close()


@pytest.mark.parametrize("ranges", [[(10, 100)], [(0, SEG)], [(0, SEG), (SEG + 5, 50)]], ids=["edge", "whole", "both"])
def test_a_native_submit_that_fails_reports_it_and_leaves_no_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranges: list[tuple[int, int]]
) -> None:
    """The engine refusing the sealed batch (closed meanwhile, out of memory): the read raises and
    its destination ranges are zeroed, never left with stale or unauthenticated bytes."""
    from storecomp.errors import ClosedError
    from storecomp.store import encrypted as encrypted_mod

    monkeypatch.setenv("STORECOMP_AEAD", "native")
    store = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k1", KEY1)))
    try:
        store.put("a", DATA)
        store.stat("a")  # the header is cached: a single-object read goes native
        assert store.crypto_stats()["opens_on"] == "engine threads"

        def refuse(*args: object, **kwargs: object) -> None:
            raise ClosedError("engine closed while the read was being submitted")

        monkeypatch.setattr(encrypted_mod.aead, "submit_sealed", refuse)
        dst = np.full(2 * SEG, 0xAA, np.uint8)
        douts = [i * SEG for i in range(len(ranges))]
        with pytest.raises(ClosedError):
            store.read_ranges("a", [o for o, _ in ranges], [n for _, n in ranges], dst, douts)
        for (_, n), d in zip(ranges, douts, strict=True):
            assert not dst[d : d + n].any()
    finally:
        store.close()


@pytest.mark.parametrize("damage", ["none", "swap", "tag", "nonce", "ciphertext", "truncate", "wrong-key"])
def test_batches_open_on_the_engine_and_fail_closed(tmp_path: Path, aead_backend: str, damage: str) -> None:
    """submit_batch over several objects (whole segments and edges): one native batch on the engine's
    threads (or the cryptography fallback); any damage to one object fails the batch closed, with
    nothing of the damaged object left in the destination; the other objects still read alone."""
    store = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k1", KEY1)))
    other = np.random.default_rng(3).integers(0, 256, 2 * SEG, dtype=np.uint8).tobytes()
    store.put("a", DATA)
    store.put("b", other)
    assert store.crypto_stats()["opens_on"] == ("engine threads" if aead_backend == "native" else "worker threads")
    path = tmp_path / "objects" / "a"
    raw = bytearray(path.read_bytes())
    env = crypto.open_header(raw, b"a", store.keys, "a")
    base, (t1, _), (t2, _) = env.data_offset, env.tag_span(1), env.tag_span(2)
    if damage == "swap":  # segments 1 and 2 change places, each with its tag
        raw[base + SEG : base + 2 * SEG], raw[base + 2 * SEG : base + 3 * SEG] = (
            raw[base + 2 * SEG : base + 3 * SEG],
            raw[base + SEG : base + 2 * SEG],
        )
        raw[t1 : t1 + 16], raw[t2 : t2 + 16] = raw[t2 : t2 + 16], raw[t1 : t1 + 16]
    elif damage == "tag":
        raw[t2 + 3] ^= 1
    elif damage == "nonce":
        raw[NONCE_BASE_AT + 5] ^= 1
    elif damage == "ciphertext":
        raw[base + 2 * SEG + 7] ^= 1
    elif damage == "truncate":
        raw = raw[: base + 2 * SEG + 100]
    path.write_bytes(bytes(raw))
    reader = EncryptedStore(LocalStore(tmp_path / "objects"), _keys(("k1", KEY2) if damage == "wrong-key" else ("k1", KEY1)))
    if damage != "wrong-key":
        reader.stat("b")
    if damage not in ("nonce", "wrong-key", "truncate"):
        reader.stat("a")  # headers known: every read goes into the one native batch
    dst = np.zeros(7 * SEG, np.uint8)
    reads = [
        ("a", [SEG, 0], [2 * SEG, 100], [0, 2 * SEG]),  # whole segments 1-2, and an edge of segment 0
        ("b", [0], [2 * SEG], [3 * SEG]),
        ("a", [2 * SEG + 5], [SEG], [5 * SEG + 16]),  # edges of segments 2 and 3
    ]
    fut = reader.submit_batch(reads, dst)
    if damage == "none":
        assert fut.result().tolist() == [2 * SEG, 100, 2 * SEG, SEG]
        assert dst[: 2 * SEG].tobytes() == DATA[SEG : 3 * SEG] and dst[2 * SEG : 2 * SEG + 100].tobytes() == DATA[:100]
        assert dst[3 * SEG : 5 * SEG].tobytes() == other
        assert dst[5 * SEG + 16 : 6 * SEG + 16].tobytes() == DATA[2 * SEG + 5 : 3 * SEG + 5]
    else:
        with pytest.raises(CorruptDataError):
            fut.result()
        a_ranges = [(0, 2 * SEG), (2 * SEG, 100), (5 * SEG + 16, SEG)]
        assert not any(dst[d : d + n].any() for d, n in a_ranges)  # nothing of the damaged object
        if damage == "wrong-key":  # every object fails closed: not a byte of garbage anywhere
            with pytest.raises(CorruptDataError):
                reader.submit_batch([reads[1]], dst).result()
            assert not dst.any()
            reader.close()
            store.close()
            return
        dst[:] = 0
        assert reader.submit_batch([reads[1]], dst).result().tolist() == [2 * SEG]
        assert dst[3 * SEG : 5 * SEG].tobytes() == other
    reader.close()
    store.close()
