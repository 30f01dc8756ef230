"""A black-box fault campaign (issue 16): kill -9 during every kind of write, and full disks.

Each kill test runs ``STORECOMP_TEST_KILL_ROUNDS`` rounds (default 5; the full
campaign, recorded in docs/reliability.md, is ``STORECOMP_TEST_KILL_ROUNDS=20``).
A round starts a writer process that writes without end (a new version of an
object, dataset, KV chunk or cache entry after another), lets it run for a
random moment while the test reads what is visible, kills it with SIGKILL, and
then checks, as a user would, that

* every reader, during the writes and after the kill, sees a whole version
  (the one before or one of the new ones: each payload describes itself, so a
  partial or mixed object cannot pass), never a partial one;
* what was there before is intact;
* a rerun of the same write completes.

The writer raises a flag while it is inside a write; the kills that find it
raised are counted as landed mid-write and printed (``-s`` shows the tally).
Full disks are small tmpfs mounts (root; skipped with the reason elsewhere).
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import random
import signal
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storecomp.errors import InvalidArgumentError, NotFoundError, StorageIOError
from storecomp.store import LocalStore, open_store
from storecomp.testing.seaweedfs import SeaweedFS

#: Read at import: the autouse fixture clears STORECOMP_* variables before each test.
ROUNDS = int(os.environ.get("STORECOMP_TEST_KILL_ROUNDS", "5"))
_MAGIC = b"SCFAULT1"
_HEAD = struct.Struct("<8sQQ")  # magic, version number, total size


def _context() -> Any:
    """forkserver: children fork from a clean server with the heavy modules imported (fast,
    and no client runtime threads inherited from the test process)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "torch", "storecomp.store", "storecomp.store.s3", "storecomp.data", "storecomp.kvcache"])
    return ctx


# ---------------------------------------------------------------- self-describing payloads


def payload(n: int, base: int = 3 << 20) -> np.ndarray:
    """Version ``n`` of an object: a header naming ``n`` and its size, then bytes derived
    from ``n``. Sizes alternate, so a size from one version and bytes from another fail."""
    size = base + (n % 3) * (base // 2)
    out = np.full(size, n % 251, np.uint8)
    out[: _HEAD.size] = np.frombuffer(_HEAD.pack(_MAGIC, n, size), np.uint8)
    return out


def version_of(data: bytes | np.ndarray, base: int = 3 << 20) -> int:
    """The version a whole payload is; AssertionError when it is partial, mixed or foreign."""
    arr = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    assert arr.size >= _HEAD.size, f"{arr.size} bytes: not even a header"
    magic, n, size = _HEAD.unpack(arr[: _HEAD.size].tobytes())
    assert magic == _MAGIC and size == arr.size, f"header says {size} bytes of version {n}, read {arr.size}"
    assert np.array_equal(arr, payload(n, base)), f"version {n}: bytes of another version inside"
    return int(n)


# ---------------------------------------------------------------- the kill loop


class Tally:
    """Rounds run and kills that landed while the writer was inside a write."""

    def __init__(self, kind: str) -> None:
        self.kind, self.rounds, self.mid_write, self.reads = kind, 0, 0, 0

    def report(self) -> None:
        print(f"\ncampaign {self.kind}: {self.rounds} rounds, {self.mid_write} kills mid-write, {self.reads} reads checked")


def kill_rounds(
    kind: str,
    target: Callable[..., None],
    args: tuple[Any, ...],
    after_kill: Callable[[int], None],
    read_during: Callable[[], int] = lambda: 0,
    *,
    window_s: tuple[float, float] = (0.2, 0.8),
) -> Tally:
    """Run ``ROUNDS`` rounds: start ``target(*args, round, started, writing)``, call
    ``read_during`` (it returns how many reads it checked) until a random moment in
    ``window_s``, kill -9 the writer, then ``after_kill(round)``."""
    ctx = _context()
    rng = random.Random(16)
    tally = Tally(kind)
    for r in range(ROUNDS):
        started, writing = ctx.Event(), ctx.Value("i", 0, lock=False)
        p = ctx.Process(target=target, args=(*args, r, started, writing), daemon=True)
        p.start()
        try:
            assert started.wait(120), f"{kind}: the writer did not start"
            deadline = time.monotonic() + rng.uniform(*window_s)
            while time.monotonic() < deadline:
                tally.reads += read_during()
                time.sleep(0.005)
            landed = writing.value == 1
            assert p.is_alive(), f"{kind}: the writer died before the kill (exit code {p.exitcode})"
            os.kill(p.pid, signal.SIGKILL)
            p.join(30)
            assert p.exitcode == -signal.SIGKILL
        finally:
            if p.is_alive():
                p.kill()
                p.join(10)
        tally.rounds += 1
        tally.mid_write += landed
        after_kill(r)
    tally.report()
    return tally


# ---------------------------------------------------------------- store puts: local and S3 single PUT


def _put_worker(url: str, options: dict[str, Any], rnd: int, started: Any, writing: Any) -> None:
    store = open_store(url, **options)
    started.set()
    i = 0
    while True:
        data = payload(1 + rnd * 10_000 + i)
        writing.value = 1
        store.put("victim", data)
        writing.value = 0
        i += 1


def _put_campaign(kind: str, url: str, options: dict[str, Any]) -> Tally:
    store = open_store(url, **options)
    store.put("before", payload(0))  # another object, there before the campaign
    store.put("victim", payload(0))

    def read() -> int:
        version_of(store.get("victim"))  # old or new, whole: a partial or torn read fails here
        return 1

    def after(r: int) -> None:
        version_of(store.get("victim"))
        assert version_of(store.get("before")) == 0
        assert sorted(i.key for i in store.list()) == ["before", "victim"]  # no partial object, under any name
        info = store.put("victim", payload(7 + r))  # the rerun completes
        assert version_of(store.get("victim")) == 7 + r and info.size == payload(7 + r).size

    tally = kill_rounds(kind, _put_worker, (url, options), after, read)
    store.close()
    return tally


def test_kill_during_local_put(tmp_path: Path) -> None:
    root = tmp_path / "store"
    tally = _put_campaign("LocalStore.put", str(root), {})
    assert tally.rounds == ROUNDS
    time.sleep(1.1)  # a temp file's mtime is the publish stamp it would have had: up to a second ahead
    LocalStore(root).sweep_temp(max_age_s=0)  # the dead writers' hidden temp files
    assert sorted(os.listdir(root)) == ["before", "victim"]


def test_kill_during_s3_single_put(running_seaweedfs: SeaweedFS) -> None:
    options = dict(running_seaweedfs.store_options(), multipart_bytes=1 << 40)
    tally = _put_campaign("S3Store.put (single PUT)", running_seaweedfs.url(), options)
    assert tally.rounds == ROUNDS


# ---------------------------------------------------------------- dataset write


def _rows(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(0, 255, (2048, 512), dtype=np.uint8), "id": np.full(2048, seed, np.int64)}


def _dataset_worker(url: str, options: dict[str, Any], rnd: int, started: Any, writing: Any) -> None:
    from storecomp.data import write_dataset

    started.set()
    i = 0
    while True:
        writing.value = 1
        write_dataset(f"{url}/ds-{rnd}-{i}", _rows(rnd * 1000 + i), shard_bytes=64 << 10, store_options=options or None)
        writing.value = 0
        i += 1


def _check_dataset(url: str, options: dict[str, Any], seed: int) -> bool:
    """True when the dataset at ``url`` is published (then whole and right), False when it is not visible."""
    from storecomp.data import open_dataset

    try:
        ds = open_dataset(url, store_options=options or None)
    except NotFoundError:
        return False
    except InvalidArgumentError as e:  # a local folder holding only the dead writer's hidden staging
        assert "without manifest.json" in str(e)
        return False
    want = _rows(seed)
    assert len(ds) == len(want["x"])
    for i in (0, len(ds) // 2, len(ds) - 1):
        row = ds[i]
        assert np.array_equal(row["x"], want["x"][i]) and int(row["id"]) == seed
    return True


@pytest.mark.parametrize("where", ["local", "s3"])
def test_kill_during_dataset_write(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from storecomp.data import write_dataset

    if where == "s3":
        sw: SeaweedFS = request.getfixturevalue("running_seaweedfs")
        url, options = sw.url(), sw.store_options()
        listing = open_store(url, **options)
        names = lambda: sorted({i.key.split("/")[0] for i in listing.list("")})  # noqa: E731
    else:
        url, options = str(tmp_path / "data"), {}
        names = lambda: sorted(n for n in os.listdir(url) if not n.startswith("."))  # noqa: E731
    write_dataset(f"{url}/before", _rows(-1 % 1000), shard_bytes=64 << 10, store_options=options or None)

    def after(r: int) -> None:
        assert _check_dataset(f"{url}/before", options, -1 % 1000)
        mine = sorted((n for n in names() if n.startswith(f"ds-{r}-")), key=lambda n: int(n.rsplit("-", 1)[1]))
        published = [n for n in mine if _check_dataset(f"{url}/{n}", options, r * 1000 + int(n.rsplit("-", 1)[1]))]
        last = int(mine[-1].rsplit("-", 1)[1]) if mine else 0
        if f"ds-{r}-{last}" not in published:  # the one the kill interrupted: rerun it
            write_dataset(f"{url}/ds-{r}-{last}", _rows(r * 1000 + last), shard_bytes=64 << 10, store_options=options or None)
        assert _check_dataset(f"{url}/ds-{r}-{last}", options, r * 1000 + last)

    tally = kill_rounds(f"dataset write ({where})", _dataset_worker, (url, options), after)
    assert tally.rounds == ROUNDS


# ---------------------------------------------------------------- KV disk tier and shared tier


def _kv_fingerprint() -> Any:
    from storecomp.kvcache import ModelFingerprint

    return ModelFingerprint("fault-campaign", "bfloat16", layers=4, kv_heads=4, head_dim=64)


KV_CHUNK = 64
BEFORE = 9_999_999  # the sequence stored before the campaign
KV_TOKENS = 4 * KV_CHUNK  # 4 chunks of 4 x 128 KiB layers per sequence


def _kv_tokens(seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 50_000, KV_TOKENS)]


_KV_DATA: dict[int, Any] = {}


def _kv_data(seed: int) -> Any:
    """The KV of sequence ``seed`` (one of four tensors sets, made once per process: the writer
    spends its time writing, not drawing random numbers)."""
    from tests.kvcache.kvhelpers import make_kv

    if seed % 4 not in _KV_DATA:
        _KV_DATA[seed % 4] = make_kv(KV_TOKENS, seed=seed % 4, fp=_kv_fingerprint())
    return _KV_DATA[seed % 4]


def _kv_store(tier: str, where: str, options: dict[str, Any]) -> Any:
    from storecomp.kvcache import KVCacheStore

    if tier == "disk":
        return KVCacheStore(_kv_fingerprint(), chunk_tokens=KV_CHUNK, host_bytes=0, disk_dir=where, write_through=True)
    shared = open_store(where, **options)
    return KVCacheStore(_kv_fingerprint(), chunk_tokens=KV_CHUNK, host_bytes=0, shared=shared, write_through=True)


def _kv_worker(tier: str, where: str, options: dict[str, Any], rnd: int, started: Any, writing: Any) -> None:
    kv = _kv_store(tier, where, options)
    [_kv_data(s) for s in range(4)]
    started.set()
    i = 0
    while True:
        seed = rnd * 10_000 + i
        data = _kv_data(seed)
        writing.value = 1
        kv.store(_kv_tokens(seed), data)
        writing.value = 0
        i += 1


def _kv_check(kv: Any, seed: int) -> int:
    """Tokens ``kv`` serves for sequence ``seed``: always the right KV (a prefix, maybe empty)."""
    from tests.kvcache.kvhelpers import same_prefix, zeros_kv

    out = zeros_kv(KV_TOKENS, _kv_fingerprint())
    n = kv.retrieve(_kv_tokens(seed), out)
    assert same_prefix(_kv_data(seed), out, n), f"sequence {seed}: wrong KV in the first {n} tokens"
    return n


@pytest.mark.parametrize("tier", ["disk", "shared"])
def test_kill_during_kv_store(tier: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:

    if tier == "shared":
        sw: SeaweedFS = request.getfixturevalue("running_seaweedfs")
        where, options = sw.url(), sw.store_options()
    else:
        where, options = str(tmp_path / "kvdisk"), {}
    first = _kv_store(tier, where, options)
    assert first.store(_kv_tokens(BEFORE), _kv_data(BEFORE)) == KV_TOKENS
    first.close()

    def after(r: int) -> None:
        kv = _kv_store(tier, where, options)  # a fresh process's view: nothing in memory
        try:
            assert kv.lookup(_kv_tokens(BEFORE)) == KV_TOKENS  # what was there before is intact
            last = 0  # the sequence in flight at the kill: the first not whole (maybe a prefix of it)
            while kv.lookup(_kv_tokens(r * 10_000 + last)) == KV_TOKENS:
                last += 1
            for i in sorted({0, last // 2, max(0, last - 2), max(0, last - 1)} - {last}) if last else []:
                assert _kv_check(kv, r * 10_000 + i) == KV_TOKENS  # whole, and the right KV
            _kv_check(kv, r * 10_000 + last)  # the one in flight: a prefix at most, and right
            assert _kv_check(kv, r * 10_000 + last + 1) == 0  # nothing of a sequence never begun
            stats = kv.stats()[tier]
            assert stats["verify_failures"] == 0, stats  # a torn chunk would fail its check here
            seed = r * 10_000 + last
            assert kv.store(_kv_tokens(seed), _kv_data(seed)) == KV_TOKENS  # the rerun completes
            assert _kv_check(kv, seed) == KV_TOKENS
        finally:
            kv.close()

    tally = kill_rounds(f"KVCacheStore {tier} tier", _kv_worker, (tier, where, options), after, window_s=(0.3, 1.0))
    assert tally.rounds == ROUNDS


# ---------------------------------------------------------------- cache fill


CACHE_OBJECTS = 8


def _cache_worker(inner_root: str, cache_dir: str, rnd: int, started: Any, writing: Any) -> None:
    from storecomp.store.cache import CachedStore

    inner = LocalStore(inner_root)
    cache = CachedStore(inner, cache_dir, max_bytes=12 << 20)  # smaller than the data: fills never stop
    started.set()
    i = rnd
    while True:
        writing.value = 1
        cache.get(f"obj/{i % CACHE_OBJECTS}")
        writing.value = 0
        i += 3


def test_kill_during_cache_fill(tmp_path: Path) -> None:
    from storecomp.store.cache import CachedStore

    inner = LocalStore(tmp_path / "inner")
    for i in range(CACHE_OBJECTS):
        inner.put(f"obj/{i}", payload(i))
    cache_dir = tmp_path / "cache"
    reader = CachedStore(inner, cache_dir, max_bytes=12 << 20)

    def read() -> int:
        for i in range(CACHE_OBJECTS):
            assert version_of(reader.get(f"obj/{i}")) == i
        return CACHE_OBJECTS

    def after(r: int) -> None:
        fresh = CachedStore(inner, cache_dir, max_bytes=12 << 20)
        for i in range(CACHE_OBJECTS):  # every entry the dead filler left is whole, or absent (refilled)
            assert version_of(fresh.get(f"obj/{i}")) == i
            assert version_of(fresh.get(f"obj/{i}")) == i
        assert fresh.stats.corrupt_discarded == 0, fresh.stats  # no torn entry was ever visible
        fresh.close()

    tally = kill_rounds("CachedStore fill", _cache_worker, (str(tmp_path / "inner"), str(cache_dir)), after, read)
    assert tally.rounds == ROUNDS and reader.stats.corrupt_discarded == 0


# ---------------------------------------------------------------- full disks


def test_local_put_on_a_full_disk(mount_tmpfs: Callable[..., Path]) -> None:
    """ENOSPC mid-put: a StorageIOError naming the key, the old version intact, no temp file
    left, no false success; once space is back the same put completes."""
    disk = mount_tmpfs(4 << 20)
    store = LocalStore(disk / "store")
    old = payload(1, base=1 << 20)
    store.put("k", old)
    for op in (lambda: store.put("k", payload(2)), lambda: store.put_if_absent("k2", payload(2))):
        with pytest.raises(StorageIOError) as info:
            op()
        assert info.value.errno == errno.ENOSPC and str(disk / "store") in str(info.value)
    with pytest.raises(StorageIOError):
        store.compare_and_swap("k", store.stat("k").version, payload(2))
    assert version_of(store.get("k"), base=1 << 20) == 1
    assert [i.key for i in store.list()] == ["k"] and not store.exists("k2")
    assert sorted(n for n in os.listdir(disk / "store") if not n.startswith(".sc-lock.")) == ["k"]  # no temp file
    store.delete("k")  # space is back: the same kind of put completes
    assert store.put("k2", payload(2, base=1 << 20)).size == payload(2, base=1 << 20).size
    assert version_of(store.get("k2"), base=1 << 20) == 2


@pytest.fixture
def small_disk(mount_tmpfs: Callable[..., Path]) -> Iterator[Path]:
    yield mount_tmpfs(1 << 20)


def test_kv_disk_tier_on_a_full_disk(small_disk: Path) -> None:
    """A KV disk tier on a 1 MiB disk with 1 MiB sequences: writes that do not fit are counted
    failures (the store call still succeeds from the tiers above), nothing torn is left on
    the disk, and a fresh store over it serves only right KV."""
    from storecomp.kvcache import KVCacheStore

    fp = _kv_fingerprint()
    kv = KVCacheStore(fp, chunk_tokens=KV_CHUNK, disk_dir=small_disk / "kv", write_through=True)
    for seed in range(3):
        assert kv.store(_kv_tokens(seed), _kv_data(seed)) == KV_TOKENS
    stats = kv.stats()["disk"]
    assert stats["write_failures"] >= 1, stats
    for seed in range(3):  # served whole from the host tier
        assert _kv_check(kv, seed) == KV_TOKENS
    kv.close()
    fresh = KVCacheStore(fp, chunk_tokens=KV_CHUNK, host_bytes=0, disk_dir=small_disk / "kv")
    served = [_kv_check(fresh, seed) for seed in range(3)]
    assert fresh.stats()["disk"]["verify_failures"] == 0 and sum(served) < 3 * KV_TOKENS
    fresh.close()
    leftovers = [f for _, _, fs in os.walk(small_disk / "kv") for f in fs if "tmp" in f]
    assert leftovers == []
