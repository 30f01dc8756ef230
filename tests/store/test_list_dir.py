"""Store.list_dir: one level of a store (objects and child prefixes), on every backend,
and `storecomp ls` / `du` over trees with entries nobody can stat."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storecomp import crypto
from storecomp.cli import main
from storecomp.errors import InvalidArgumentError
from storecomp.store import CachedStore, EncryptedStore, Listing, LocalStore, Store


def _fill(store: Store) -> None:
    for key in ("a.bin", "b/c.bin", "b/d/e.bin", "b/d/f/g.bin", "bb.bin", "z/y.bin"):
        store.put(key, key.encode() * 3)


def test_list_dir_is_one_level_on_every_backend(any_store: Store) -> None:
    _fill(any_store)
    top = any_store.list_dir()
    assert isinstance(top, Listing)
    assert [o.key for o in top.objects] == ["a.bin", "bb.bin"]
    assert top.prefixes == ["b/", "z/"]
    assert top.objects[0].size == len(b"a.bin" * 3) and top.objects[0].version
    for prefix in ("b", "b/"):
        level = any_store.list_dir(prefix)
        assert [o.key for o in level.objects] == ["b/c.bin"] and level.prefixes == ["b/d/"]
    assert [o.key for o in any_store.list_dir("b/d").objects] == ["b/d/e.bin"]
    assert any_store.list_dir("b/d").prefixes == ["b/d/f/"]
    empty = any_store.list_dir("nothing/here/")
    assert empty.objects == [] and empty.prefixes == []
    assert any_store.list_dir("a.bin").objects == []  # an object is not a directory
    with pytest.raises(InvalidArgumentError):
        any_store.list_dir("../up")


def test_list_dir_through_the_cache_and_the_default_walk(tmp_path: Path) -> None:
    inner = LocalStore(tmp_path / "inner")
    _fill(inner)
    cached = CachedStore(inner, tmp_path / "cache", 1 << 20)
    assert cached.list_dir("b/").prefixes == ["b/d/"]
    default = Store.list_dir(inner, "b/")  # the base class's walk agrees with the backend's listing
    assert default == inner.list_dir("b/")


def test_list_dir_of_an_encrypted_store_reports_plaintext_sizes(tmp_path: Path) -> None:
    enc = EncryptedStore(LocalStore(tmp_path / "objects"), crypto.StaticKeys([("k1", bytes(range(32)))]))
    _fill(enc)
    level = enc.list_dir("b")
    assert [(o.key, o.size) for o in level.objects] == [("b/c.bin", len(b"b/c.bin" * 3))]  # not the sealed size
    assert level.prefixes == ["b/d/"]
    assert level.objects == [i for i in enc.list("b/") if i.key == "b/c.bin"]  # the same info as list()
    enc.close()


def test_local_list_dir_reports_entries_it_cannot_stat(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "s")
    _fill(store)
    os.symlink("loop", store.root / "b" / "loop")  # stat: ELOOP, even for root
    os.symlink(store.root / "z", store.root / "link-to-dir")
    level = store.list_dir("b")
    assert level.skipped == ["b/loop"] and [o.key for o in level.objects] == ["b/c.bin"]
    assert "link-to-dir/" in store.list_dir().prefixes
    assert [o.key for o in store.list("b/")] == ["b/c.bin", "b/d/e.bin", "b/d/f/g.bin"]  # the walk skips it too


def test_ls_lists_one_level_and_skips_unreadable_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "tree"
    (root / "sub" / "deep" / "deeper").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"A" * 10)
    (root / "sub" / "deep" / "deeper" / "x.bin").write_bytes(b"X")
    os.symlink("loop", root / "sub" / "deep" / "loop")  # a walk of the tree would trip on it
    assert main(["ls", str(root)]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["a.bin", "sub/"] and out.err == ""  # the level below was never read
    assert main(["ls", str(root / "sub" / "deep")]) == 0
    out = capsys.readouterr()
    assert out.out.split() == ["deeper/"] and "skipped 1 unreadable entries (loop)" in out.err
    assert main(["ls", "-r", str(root)]) == 0
    assert capsys.readouterr().out.split() == ["a.bin", "sub/deep/deeper/x.bin"]
    assert main(["du", "-s", str(root)]) == 0
    assert capsys.readouterr().out.split()[:1] == ["11"]


def test_ls_of_the_root_and_of_proc_never_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """`ls /` died on /proc/1/cwd (EACCES in a container) with an OSError from a walk of the whole disk."""
    assert main(["ls", "/"]) == 0
    assert "proc/" in capsys.readouterr().out.split()
    assert main(["ls", "-l", "/proc/1"]) == 0  # cwd, root, exe: listed, or named in one warning line
    out = capsys.readouterr()
    assert "Traceback" not in out.err and len(out.err.splitlines()) <= 1
