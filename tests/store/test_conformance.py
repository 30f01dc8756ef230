"""One conformance suite, run against every backend (local, s3 on SeaweedFS, fsspec memory:// and
file://) and the wrappers (CachedStore, ReplicatedStore)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storecomp.errors import (
    ConflictError,
    InvalidArgumentError,
    NotFoundError,
    ShortReadError,
    StorecompError,
)
from storecomp.store import Capabilities, ObjectInfo, Store


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_capabilities(any_store: Store, backend_name: str) -> None:
    caps = any_store.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.ranged_reads
    assert caps.conditional_writes == (backend_name in ("local", "s3", "cached", "replicated"))
    assert caps.native_reads == (backend_name in ("local", "cached", "replicated"))
    assert any_store.url and "secret" not in any_store.url


def test_put_get_overwrite(any_store: Store) -> None:
    data = payload(100_000)
    info = any_store.put("dir/obj", data)
    assert isinstance(info, ObjectInfo) and info.key == "dir/obj" and info.size == len(data)
    assert any_store.get("dir/obj") == data
    assert any_store.get("dir/obj", 10, 20) == data[10:30]
    assert any_store.get("dir/obj", 99_990) == data[99_990:]
    info2 = any_store.put("dir/obj", b"short")
    assert info2.version != info.version
    assert any_store.get("dir/obj") == b"short"
    assert any_store.stat("dir/obj").size == 5


def test_put_from_numpy_and_torch(any_store: Store) -> None:
    arr = np.arange(1000, dtype=np.float32)
    any_store.put("np", arr)
    assert np.frombuffer(any_store.get("np"), np.float32).tolist() == arr.tolist()
    t = torch.arange(500, dtype=torch.int64)
    any_store.put("pt", t)
    assert np.frombuffer(any_store.get("pt"), np.int64).tolist() == list(range(500))
    any_store.put("empty", b"")
    assert any_store.get("empty") == b"" and any_store.stat("empty").size == 0


def test_ranged_reads_into_numpy_many_ranges(any_store: Store) -> None:
    data = payload(1 << 20, seed=1)
    any_store.put("big", data)
    rng = np.random.default_rng(2)
    n = 200
    lengths = rng.integers(1, 8192, n)
    offsets = rng.integers(0, len(data) - 8192, n)
    dst_offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    dst = np.zeros(int(lengths.sum()), np.uint8)
    got = any_store.read_ranges("big", offsets, lengths, dst, dst_offsets)
    assert got.dtype == np.uint64 and got.tolist() == lengths.tolist()
    expect = b"".join(data[o : o + ln] for o, ln in zip(offsets.tolist(), lengths.tolist(), strict=True))
    assert dst.tobytes() == expect


def test_ranged_reads_into_torch_cpu(any_store: Store) -> None:
    values = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    any_store.put("t", values)
    out = torch.zeros(4096)
    # two halves swapped: bytes land exactly where asked
    fut = any_store.submit_ranges("t", [0, 8192], [8192, 8192], out, [8192, 0])
    assert fut.result(timeout=30).tolist() == [8192, 8192]
    assert fut.done()
    assert torch.equal(out[:2048], values[2048:]) and torch.equal(out[2048:], values[:2048])


@pytest.mark.gpu
def test_ranged_reads_into_torch_cuda(any_store: Store) -> None:
    """Every backend lands bytes in CUDA memory (the engine's device paths for local files,
    storecomp.io.land_bytes for the others), in place, past the end short with exact=False."""
    data = payload(100_000, seed=3)
    any_store.put("c", data)
    out = torch.zeros(300, dtype=torch.uint8, device="cuda")
    got = any_store.read_ranges("c", [5, 70_000, 99_990], [100, 150, 50], out, [0, 100, 250], exact=False)
    assert got.tolist() == [100, 150, 10]
    assert bytes(out[:260].cpu().numpy()) == data[5:105] + data[70_000:70_150] + data[99_990:]
    assert not out[260:].any()


def test_large_object_spans_many_parts(any_store: Store) -> None:
    data = payload(20 << 20, seed=3)  # more than two S3 read parts (8 MiB)
    any_store.put("large", data)
    dst = np.empty(len(data), np.uint8)
    assert any_store.read_ranges("large", [0], [len(data)], dst, [0]).tolist() == [len(data)]
    assert dst.tobytes() == data


def test_exact_and_short_reads(any_store: Store) -> None:
    any_store.put("k", b"0123456789")
    dst = np.zeros(32, np.uint8)
    with pytest.raises(ShortReadError) as exc:
        any_store.read_ranges("k", [5], [10], dst, [0])
    assert "k" in str(exc.value)
    got = any_store.read_ranges("k", [5, 10, 20, 0], [10, 4, 4, 0], dst, [0, 10, 14, 18], exact=False)
    assert got.tolist() == [5, 0, 0, 0]
    assert dst[:5].tobytes() == b"56789"
    assert any_store.get("k", 8, 100) == b"89"


def test_destination_too_small_is_refused_before_io(any_store: Store) -> None:
    any_store.put("k", b"x" * 100)
    with pytest.raises(InvalidArgumentError):
        any_store.read_ranges("k", [0], [100], np.zeros(50, np.uint8), [0])
    with pytest.raises(InvalidArgumentError):
        any_store.read_ranges("k", [0, 1], [10], np.zeros(50, np.uint8), [0])


def test_put_if_absent(any_store: Store) -> None:
    assert any_store.put_if_absent("once", b"first") is True
    assert any_store.put_if_absent("once", b"second") is False
    assert any_store.get("once") == b"first"


def test_compare_and_swap(any_store: Store) -> None:
    v1 = any_store.compare_and_swap("refs/main", None, b"snapshot-1")
    assert v1.version and any_store.get("refs/main") == b"snapshot-1"
    with pytest.raises(ConflictError):
        any_store.compare_and_swap("refs/main", None, b"again")
    assert any_store.stat("refs/main").version == v1.version
    v2 = any_store.compare_and_swap("refs/main", v1.version, b"snapshot-2")
    assert v2.version != v1.version and any_store.stat("refs/main").version == v2.version
    with pytest.raises(ConflictError) as exc:
        any_store.compare_and_swap("refs/main", v1.version, b"stale writer")
    assert "refs/main" in str(exc.value)
    assert any_store.get("refs/main") == b"snapshot-2"
    with pytest.raises(ConflictError):
        any_store.compare_and_swap("refs/missing", v2.version, b"x")
    assert not any_store.exists("refs/missing")


def test_stat_list_delete(any_store: Store) -> None:
    for key in ("a/1", "a/2", "a/b/3", "ab", "c"):
        any_store.put(key, key.encode())
    assert [i.key for i in any_store.list()] == ["a/1", "a/2", "a/b/3", "ab", "c"]
    assert [i.key for i in any_store.list("a/")] == ["a/1", "a/2", "a/b/3"]
    assert [i.key for i in any_store.list("a")] == ["a/1", "a/2", "a/b/3", "ab"]
    assert [i.key for i in any_store.list("a/b")] == ["a/b/3"]
    assert list(any_store.list("nothing/")) == []
    infos = {i.key: i for i in any_store.list()}
    st = any_store.stat("a/b/3")
    assert st.size == 5 and infos["a/b/3"].version == st.version
    any_store.delete("a/2")
    any_store.delete("a/2")  # a missing key is not an error
    assert not any_store.exists("a/2") and any_store.exists("a/1")
    assert [i.key for i in any_store.list("a/")] == ["a/1", "a/b/3"]


def test_delete_if_removes_only_the_version_named(any_store: Store) -> None:
    v1 = any_store.put("cd/k", b"one").version
    v2 = any_store.put("cd/k", b"two!").version
    assert not any_store.delete_if("cd/k", v1)
    assert any_store.get("cd/k") == b"two!"
    assert any_store.delete_if("cd/k", v2)
    assert not any_store.exists("cd/k")
    assert not any_store.delete_if("cd/k", v2)


def test_missing_key_errors_name_the_key(any_store: Store) -> None:
    for call in (
        lambda: any_store.stat("no/such"),
        lambda: any_store.get("no/such"),
        lambda: any_store.read_ranges("no/such", [0], [1], np.zeros(1, np.uint8), [0]),
    ):
        with pytest.raises(NotFoundError) as exc:
            call()
        assert "no/such" in str(exc.value)
        assert isinstance(exc.value, FileNotFoundError)
    assert any_store.exists("no/such") is False


@pytest.mark.parametrize("key", ["../escape", "a/../../etc/passwd", "/abs/path", "a//b", "", "a/./b", "a/.sc-tmp-x"])
def test_bad_keys_are_refused(any_store: Store, key: str, tmp_path) -> None:
    for call in (
        lambda: any_store.put(key, b"x"),
        lambda: any_store.put_if_absent(key, b"x"),
        lambda: any_store.compare_and_swap(key, None, b"x"),
        lambda: any_store.stat(key),
        lambda: any_store.get(key),
        lambda: any_store.delete(key),
    ):
        with pytest.raises(InvalidArgumentError):
            call()
    with pytest.raises(InvalidArgumentError):
        list(any_store.list("../"))
    assert not (tmp_path / "escape").exists()


def test_errors_are_storecomp_errors(any_store: Store) -> None:
    with pytest.raises(StorecompError):
        any_store.put("k", object())
