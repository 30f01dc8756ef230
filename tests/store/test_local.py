"""LocalStore specifics: atomic publishing, hidden temp files, stale handles, sweeping."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from storecomp.errors import ConflictError, InvalidArgumentError, NotFoundError, StorecompError
from storecomp.store import LocalStore
from tests.conftest import run_processes


def test_overwrite_is_read_through_a_fresh_handle(tmp_path):
    s = LocalStore(tmp_path)
    s.put("k", b"a" * 4096)
    assert s.get("k") == b"a" * 4096  # caches a handle on the first inode
    s.put("k", b"b" * 100)
    assert s.get("k") == b"b" * 100


def test_temp_and_lock_files_are_hidden(tmp_path):
    s = LocalStore(tmp_path)
    s.compare_and_swap("refs/main", None, b"v1")
    (tmp_path / "refs" / ".sc-tmp-crashed").write_bytes(b"partial")
    assert [i.key for i in s.list()] == ["refs/main"]
    assert s.sweep_temp(max_age_s=3600) == 0
    old = time.time() - 7200
    os.utime(tmp_path / "refs" / ".sc-tmp-crashed", (old, old))
    assert s.sweep_temp(max_age_s=3600) == 1
    assert sorted(os.listdir(tmp_path / "refs")) == [".sc-lock.main", "main"]


def test_cas_then_put_then_stale_cas(tmp_path):
    s = LocalStore(tmp_path)
    v1 = s.compare_and_swap("r", None, b"1").version
    s.put("r", b"2")
    with pytest.raises(ConflictError):
        s.compare_and_swap("r", v1, b"3")
    assert s.get("r") == b"2"


def test_key_under_an_object_and_object_over_a_directory(tmp_path):
    s = LocalStore(tmp_path)
    s.put("a", b"x")
    with pytest.raises(InvalidArgumentError):
        s.put("a/b", b"y")
    s.put("d/e", b"z")
    with pytest.raises(InvalidArgumentError):
        s.put("d", b"w")
    with pytest.raises(NotFoundError):
        s.stat("d")
    assert s.get("d/e") == b"z"


def test_root_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(InvalidArgumentError):
        LocalStore(tmp_path / "f")


def test_reads_use_the_native_engine(tmp_path):
    s = LocalStore(tmp_path)
    assert s.capabilities.native_reads and s.capabilities.local
    s.put("x", np.arange(1000, dtype=np.uint8))
    assert s.path_of("x") == tmp_path / "x"
    fut = s.submit_ranges("x", [10], [5], np.zeros(5, np.uint8), [0])
    assert fut.io_paths == ("posix",)


def test_long_names_take_put_and_cas(tmp_path):
    s = LocalStore(tmp_path)
    key = "d/" + "n" * 250  # a valid file name; ".sc-lock." + it is not
    info = s.put(key, b"one")  # before: OSError ENAMETOOLONG from the lock file
    info = s.compare_and_swap(key, info.version, b"two")
    s.put(key, b"three")  # takes the same (digest-named) lock as the CAS
    with pytest.raises(ConflictError):
        s.compare_and_swap(key, info.version, b"stale")
    assert s.get(key) == b"three" and [i.key for i in s.list("d/")] == [key]


def test_os_errors_become_storecomp_errors(tmp_path):
    s = LocalStore(tmp_path)
    with pytest.raises(StorecompError):
        s.put("x" * 300 + "/y", b"1")  # mkdir of a too-long name: was a bare OSError
    with pytest.raises(StorecompError):
        s.compare_and_swap("x" * 300, None, b"1")


@pytest.mark.parametrize("op", ["put", "put_stream"])
def test_a_write_reports_its_own_version_when_another_replaces_it_at_once(tmp_path, monkeypatch, op):
    """The info a write returns is that of the file it published, even when another
    writer replaces the key between its rename and its return (review finding: put
    stat'ed the path after the rename and reported the other writer's version)."""
    import storecomp.store.local as local_mod

    s = LocalStore(tmp_path)
    other = LocalStore(tmp_path)
    s.put("k", b"0")
    real_rename = local_mod._publish_rename
    raced: list = []

    def rename_then_another_writer(tmp, final):  # the race window, made certain
        real_rename(tmp, final)
        if not raced:  # a writer that takes no lock: delete, then put_if_absent
            other.delete("k")
            assert other.put_if_absent("k", b"x" * 5000)
            raced.append(other.stat("k"))

    monkeypatch.setattr(local_mod, "_publish_rename", rename_then_another_writer)
    if op == "put":
        info = s.put("k", b"y" * 1000)
    else:
        info = s.put_stream("k", [b"y" * 500, b"y" * 500])
    assert raced, "the injected writer did not run"
    assert info.size == 1000
    assert info.version != raced[0].version
    assert s.stat("k").version == raced[0].version
    with pytest.raises(ConflictError):  # the version it reported is its own, now replaced
        s.compare_and_swap("k", info.version, b"z")


def test_delete_if_removes_only_the_version_named(tmp_path):
    s = LocalStore(tmp_path)
    v1 = s.put("d/k", b"1").version
    v2 = s.put("d/k", b"22").version
    assert not s.delete_if("d/k", v1) and s.get("d/k") == b"22"
    assert s.delete_if("d/k", v2) and not s.exists("d/k")
    assert not s.delete_if("d/k", v2) and not s.delete_if("nowhere/k", v2)
    assert [i.key for i in s.list()] == []
    assert os.listdir(tmp_path / "d") == []  # the lock file went with the key


def test_deleted_keys_leave_no_lock_files_and_cas_stays_exclusive(tmp_path):
    """delete and delete_if remove the key's lock file; CAS writers that raced
    with the removal lock the new file, so no two of them win the same version."""
    s = LocalStore(tmp_path)
    info = s.compare_and_swap("k", None, b"0")
    s.delete("k")
    assert sorted(os.listdir(tmp_path)) == []
    info = s.compare_and_swap("k", None, b"0")
    assert s.delete_if("k", info.version) and os.listdir(tmp_path) == []

    import multiprocessing as mp

    ctx = mp.get_context("fork")
    wins = ctx.Queue()

    def writer(n: int) -> None:
        st = LocalStore(tmp_path)
        log = []  # (expected version, published version, deleted it after)
        for i in range(40):
            try:
                cur = st.stat("c").version
            except NotFoundError:
                cur = None
            try:
                new = st.compare_and_swap("c", cur, f"{n}-{i}".encode())
            except ConflictError:
                continue
            log.append((cur, new.version, i % 3 == 0 and st.delete_if("c", new.version)))
        wins.put(log)

    logs = run_processes(ctx, writer, [(n,) for n in range(3)], wins, 3, get_timeout=60)
    won = [entry for log in logs for entry in log]
    from_version = [cur for cur, _, _ in won if cur is not None]
    assert len(from_version) == len(set(from_version))  # no version was swapped away twice
    deletes = sum(1 for _, _, deleted in won if deleted)
    assert sum(1 for cur, _, _ in won if cur is None) <= 1 + deletes  # "absent" won once per absence
    assert len(won) >= 3
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".sc-")]
    assert leftovers == ([".sc-lock.c"] if s.exists("c") else []), leftovers  # only a live key has a lock file


def test_delete_under_an_object_is_a_no_op(tmp_path):
    s = LocalStore(tmp_path)
    s.put("a", b"x")
    s.delete("a/b")  # "a" is an object, so "a/b" cannot exist
    assert not s.delete_if("a/b", "0" * 16) and s.get("a") == b"x"
