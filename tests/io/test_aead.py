"""storecomp.io.aead: OpenSSL's AES-256-GCM on the native engine, against the ``cryptography`` reference.

Segments sealed by one side open on the other (the same AES-GCM, nonce and
associated data); reads of sealed objects open on the engine's threads as
pieces land, including segments that span pieces and short reads (which are
reported as not opened: fail closed).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from storecomp import crypto
from storecomp.io import aead, as_buffer
from storecomp.store import EncryptedStore, LocalStore
from tests.conftest import make_engine, run_python

SEG = 8192
KEYS = crypto.StaticKeys([("k", bytes(range(32)))])


def _sealed(tmp_path: Path, data: bytes, backend: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, crypto.Envelope]:
    """``data`` sealed by ``backend`` ('native' or 'cryptography') as object b"obj", in a file; its envelope (native)."""
    monkeypatch.setenv("STORECOMP_AEAD", backend)
    sealed = crypto.seal(data, b"obj", KEYS, SEG)
    path = tmp_path / "obj"
    path.write_bytes(sealed.tobytes())
    monkeypatch.setenv("STORECOMP_AEAD", "native")
    env = crypto.open_header(sealed, b"obj", KEYS, "obj")
    assert env.native is not None
    return path, env


def test_status_and_backend_info(monkeypatch: pytest.MonkeyPatch) -> None:
    st = aead.status()
    assert st["available"], st["reason"]  # libcrypto.so.3 is where Python's ssl module works
    assert st["version"].startswith("OpenSSL 3")
    assert crypto.backend_info()["backend"] == "openssl-evp"
    monkeypatch.setenv("STORECOMP_AEAD", "cryptography")
    info = crypto.backend_info()
    assert info["backend"] == "cryptography" and "STORECOMP_AEAD" in info["reason"]
    monkeypatch.setenv("STORECOMP_AEAD", "bogus")
    with pytest.raises(crypto.ConfigError, match="STORECOMP_AEAD"):
        crypto.backend_info()


@pytest.mark.parametrize("sealer", ["native", "cryptography"])
@pytest.mark.parametrize("opener", ["native", "cryptography"])
def test_sealed_bytes_are_interchangeable(monkeypatch: pytest.MonkeyPatch, sealer: str, opener: str) -> None:
    data = os.urandom(3 * SEG + 100)
    monkeypatch.setenv("STORECOMP_AEAD", sealer)
    sealed = crypto.seal(data, b"obj", KEYS, SEG)
    monkeypatch.setenv("STORECOMP_AEAD", opener)
    out = np.zeros(len(data), np.uint8)
    assert crypto.unseal_into(sealed, out, b"obj", KEYS, "obj") == len(data)
    assert out.tobytes() == data
    env = crypto.open_header(sealed, b"obj", KEYS, "obj")
    assert (env.native is not None) == (opener == "native")
    # Segment by segment too, tags included: the same bytes whoever seals.
    monkeypatch.setenv("STORECOMP_AEAD", "cryptography" if sealer == "native" else "native")
    twin = crypto.open_header(sealed, b"obj", KEYS, "obj")
    for i in range(env.segments):
        off, n = env.segment_plain(i)
        a, b = np.empty(n, np.uint8), np.empty(n, np.uint8)
        assert env.seal_segment(i, data[off : off + n], a) == twin.seal_segment(i, data[off : off + n], b)
        assert a.tobytes() == b.tobytes()


def test_segment_cipher_fails_closed() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    c = aead.segment_cipher(key, nonce, b"aad\x00", 4, SEG)
    assert c is not None and "key" not in repr(c).lower()
    plain = os.urandom(SEG)
    ct = np.empty(SEG, np.uint8)
    tag = c.seal(2, plain, ct)
    buf = ct.copy()
    assert c.open(2, buf, tag) and buf.tobytes() == plain
    for damage in ("tag", "data", "index", "aad", "key"):
        buf, t, i, opener = ct.copy(), bytearray(tag), 2, c
        if damage == "tag":
            t[0] ^= 1
        elif damage == "data":
            buf[100] ^= 1
        elif damage == "index":
            i = 1  # moved to another index
        elif damage == "aad":
            opener = aead.segment_cipher(key, nonce, b"aae\x00", 4, SEG)  # another object's name
        else:
            opener = aead.segment_cipher(os.urandom(32), nonce, b"aad\x00", 4, SEG)  # a wrong key
        assert opener is not None
        assert not opener.open(i, buf, bytes(t)), damage
        assert not buf.any(), damage  # zeroed, never unauthenticated bytes
    assert not c.open(4, ct.copy(), tag)  # past the last segment
    out = np.full(SEG, 7, np.uint8)  # out of place: the ciphertext stays, the plaintext lands in out
    assert c.open(2, ct, tag, out) and out.tobytes() == plain
    bad = bytearray(tag)
    bad[5] ^= 1
    assert not c.open(2, ct, bytes(bad), out) and not out.any()


@pytest.mark.parametrize("direct", ["off", "on"])
def test_engine_opens_segments_as_they_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str, direct: str) -> None:
    """Pieces of 12 KiB, segments of 8 KiB: some segments span two pieces (opened once the last lands)."""
    data = os.urandom(6 * SEG + 1000)
    path, env = _sealed(tmp_path, data, "cryptography", monkeypatch)
    assert env.tags is not None and env.native is not None
    eng = make_engine(backend, direct, split_bytes=12288)
    try:
        f = eng.open(path)
        dst = np.zeros(len(data) + 64, np.uint8)  # unaligned destinations too (the bounce path)
        reqs = [(0, 3 * SEG, 0), (3 * SEG, 3 * SEG + 1000, 3 * SEG + 17)]
        tags = b"".join(env.tags[16 * (o // SEG) : 16 * (o // SEG + -(-n // SEG))] for o, n, _ in reqs)
        fut = aead.submit_sealed(
            eng,
            [f],
            np.zeros(2, np.int64),
            np.array([env.data_offset + o for o, _, _ in reqs], np.uint64),
            np.array([n for _, n, _ in reqs], np.uint64),
            np.array([dst.ctypes.data + d for _, _, d in reqs], np.uint64),
            [as_buffer(dst)],
            [env.native],
            np.zeros(2, np.int32),
            np.array([o // SEG for o, _, _ in reqs], np.uint64),
            np.frombuffer(tags, np.uint8),
            direct,
        )
        assert fut.result().tolist() == [3 * SEG, 3 * SEG + 1000]
        assert fut.failed_segments().tolist() == [-1, -1]
        assert dst[: 3 * SEG].tobytes() == data[: 3 * SEG]
        assert dst[3 * SEG + 17 : 3 * SEG + 17 + 3 * SEG + 1000].tobytes() == data[3 * SEG :]
        # A flipped tag: that segment fails (and is zeroed); a short read: its segments never open.
        bad = bytearray(tags)
        bad[16 * 4] ^= 1
        dst[:] = 0
        with open(path, "r+b") as fh:
            fh.truncate(env.data_offset + 5 * SEG + 10)
        f.close()
        f = eng.open(path)
        fut = aead.submit_sealed(
            eng,
            [f],
            np.zeros(2, np.int64),
            np.array([env.data_offset, env.data_offset + 3 * SEG], np.uint64),
            np.array([3 * SEG, 3 * SEG + 1000], np.uint64),
            np.array([dst.ctypes.data, dst.ctypes.data + 3 * SEG], np.uint64),
            [as_buffer(dst)],
            [env.native],
            np.zeros(2, np.int32),
            np.array([0, 3], np.uint64),
            np.frombuffer(bytes(bad), np.uint8),
            direct,
        )
        assert fut.result().tolist() == [3 * SEG, 2 * SEG + 10]
        assert fut.failed_segments().tolist() == [-1, 4]  # segment 4 failed its tag
        assert not dst[4 * SEG : 5 * SEG].any()
        fut = aead.submit_sealed(
            eng,
            [f],
            np.zeros(1, np.int64),
            np.array([env.data_offset + 3 * SEG], np.uint64),
            np.array([3 * SEG + 1000], np.uint64),
            np.array([dst.ctypes.data + 3 * SEG], np.uint64),
            [as_buffer(dst)],
            [env.native],
            np.zeros(1, np.int32),
            np.array([3], np.uint64),
            np.frombuffer(tags[16 * 3 :], np.uint8),
            direct,
        )
        assert fut.result().tolist() == [2 * SEG + 10]
        assert fut.failed_segments().tolist() == [3]  # all tags good, but segment 5 was never read whole: not opened
    finally:
        eng.close()


def test_bad_arguments_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, env = _sealed(tmp_path, os.urandom(2 * SEG), "native", monkeypatch)
    eng = make_engine("threads")
    try:
        f = eng.open(path)
        dst = np.zeros(2 * SEG, np.uint8)

        def submit(first: int, tags: bytes, index: int = 0) -> None:
            aead.submit_sealed(
                eng,
                [f],
                np.zeros(1, np.int64),
                np.array([env.data_offset], np.uint64),
                np.array([2 * SEG], np.uint64),
                np.array([dst.ctypes.data], np.uint64),
                [as_buffer(dst)],
                [env.native],  # type: ignore[list-item]
                np.full(1, index, np.int32),
                np.array([first], np.uint64),
                np.frombuffer(tags, np.uint8),
            ).result()

        with pytest.raises(ValueError, match="past its object's last segment"):
            submit(1, bytes(32))
        with pytest.raises(ValueError, match="16 bytes per segment"):
            submit(0, bytes(16))
        with pytest.raises(ValueError, match="key_index"):
            submit(0, bytes(32), index=1)
    finally:
        eng.close()
    # Segment sizes the native cipher does not take (a size near 2**64 once wrapped its segment
    # count to 0 and read a tag that was never given): no native cipher, the caller's fallback opens.
    key, nonce = os.urandom(32), os.urandom(12)
    for seg in (0, (1 << 30) + 1, (1 << 64) - 1):
        assert aead.segment_cipher(key, nonce, b"aad\x00", 1, seg) is None
    if aead.status()["available"]:
        with pytest.raises(ValueError, match="segment_bytes"):
            aead.SegmentCipher(key, nonce, b"aad\x00", 1, (1 << 64) - 1)


def test_without_libcrypto_the_cryptography_path_runs_and_says_why(tmp_path: Path) -> None:
    """A process where libcrypto.so.3 cannot be loaded (here: a broken file found first) falls back to
    the ``cryptography`` package, says why in backend_info, crypto_stats and `storecomp info`, and
    writes and reads the same sealed objects; ``STORECOMP_AEAD=native`` is then an error naming it."""
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libcrypto.so.3").write_bytes(b"not a library")
    ld = os.pathsep.join(p for p in (str(tmp_path / "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p)
    proc = run_python(
        f"""
        import json, os
        from storecomp import crypto
        from storecomp.cli.info import gather
        from storecomp.errors import ConfigError
        from storecomp.store import EncryptedStore, LocalStore
        info = crypto.backend_info()
        assert info["backend"] == "cryptography", info
        assert "cannot load libcrypto.so.3" in info["reason"], info
        keys = crypto.StaticKeys([("k", bytes(range(32)))])
        store = EncryptedStore(LocalStore({str(tmp_path / "objects")!r}), keys)
        data = os.urandom(200000)
        store.put("a", data)
        assert store.get("a") == data and store.get("a", 70000, 1000) == data[70000:71000]
        assert store.crypto_stats()["opens_on"] == "worker threads"
        assert gather()["encryption"]["backend"] == "cryptography"
        os.environ["STORECOMP_AEAD"] = "native"
        try:
            crypto.backend_info()
        except ConfigError as e:
            assert "STORECOMP_AEAD=native" in str(e) and "libcrypto" in str(e)
        else:
            raise AssertionError("STORECOMP_AEAD=native without libcrypto must fail")
        print("ok")
        """,
        env={"LD_LIBRARY_PATH": ld},
    )
    assert proc.stdout.strip().endswith("ok")
    # What the fallback sealed, the native path opens.
    store = EncryptedStore(LocalStore(tmp_path / "objects"), crypto.StaticKeys([("k", bytes(range(32)))]))
    assert store.crypto_stats()["opens_on"] == "engine threads"
    assert len(store.get("a")) == 200000
    store.close()


def test_key_schedules_go_with_their_key_and_exit_waits_for_open_jobs(tmp_path: Path) -> None:
    """A data key's keyed AES contexts are freed in every thread that used it (the caller's and
    the engine's AEAD threads) when its cipher goes, not when the thread's cache evicts them; a
    process that exits while sealed reads are still opening on the AEAD threads exits cleanly
    (the threads' jobs finish before libcrypto's exit handler frees its state)."""
    proc = run_python(
        f"""
        import gc, os, sys
        import numpy as np
        from storecomp import crypto
        from storecomp.io import aead
        from storecomp.store import EncryptedStore, LocalStore
        keys = crypto.StaticKeys([("k", bytes(range(32)))])
        store = EncryptedStore(LocalStore({str(tmp_path / "objects")!r}), keys, segment_bytes=65536)
        data = os.urandom(8 << 20)
        store.put("a", data)
        assert aead.cached_contexts() == 0  # the seal's data key is gone, and its contexts with it
        assert store.get("a") == data  # opened on the engine's AEAD threads
        used = aead.cached_contexts()
        assert used >= 1  # the store keeps the header (and its key) of what it read
        store.close()
        del store
        gc.collect()
        assert aead.cached_contexts() == 0, (used, aead.cached_contexts())
        store = EncryptedStore(LocalStore({str(tmp_path / "objects")!r}), keys, segment_bytes=65536)
        out = np.empty(len(data), np.uint8)
        futs = [store.submit_batch([("a", [0], [len(data)], [0])], out) for _ in range(4)]  # left in flight
        print("ok", used, flush=True)
        sys.exit(0)
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip().startswith("ok"), proc.stderr
