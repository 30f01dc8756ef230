"""Namespace: mount tables (TOML, environment, Python API), URL resolution,
path traversal, replicas with preference, latency order and failover."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storecomp.errors import ConfigError, InvalidArgumentError, NotFoundError, PermissionDeniedError, StoreUnavailableError
from storecomp.io import BufferRef
from storecomp.store import LocalStore, Mount, Namespace, Replica, ReplicatedStore, load_mounts
from storecomp.store.base import Capabilities, ObjectInfo, RangeFuture, Store
from storecomp.store.namespace import split_url


class FlakyStore(Store):
    """A real LocalStore behind a switch that makes it unreachable (fault injection)."""

    def __init__(self, inner: Store, name: str) -> None:
        self.inner, self.url, self.down, self.calls = inner, f"flaky://{name}", False, 0

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailableError(self.url, "connection refused")

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def _submit_ranges(
        self, key: str, offs: np.ndarray, lens: np.ndarray, ref: BufferRef, douts: np.ndarray, version: str | None
    ) -> RangeFuture:
        self._check()
        return self.inner.submit_ranges(key, offs, lens, ref, douts, exact=False, version=version)

    def put(self, key: str, data: Any) -> ObjectInfo:
        self._check()
        return self.inner.put(key, data)

    def put_if_absent(self, key: str, data: Any) -> bool:
        self._check()
        return self.inner.put_if_absent(key, data)

    def compare_and_swap(self, key: str, expected: str | None, data: Any) -> ObjectInfo:
        self._check()
        return self.inner.compare_and_swap(key, expected, data)

    def stat(self, key: str) -> ObjectInfo:
        self._check()
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._check()
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self._check()
        self.inner.delete(key)


def write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mount_table_from_config_file_env_file_env_var_and_api(tmp_path: Path) -> None:
    cfg = write_toml(
        tmp_path / "c.toml",
        f'[io]\nthreads = 4\n\n[mounts.data]\nurl = "{tmp_path}/a"\n\n[mounts.ckpt]\nurl = "{tmp_path}/x"\n',
    )
    mnt = write_toml(tmp_path / "m.toml", f'[mounts.ckpt]\nurl = "{tmp_path}/b"\nread_only = true\n')
    env = {"STORECOMP_CONFIG": str(cfg), "STORECOMP_MOUNTS": str(mnt), "STORECOMP_MOUNT_LOGS": f"{tmp_path}/c"}
    mounts = load_mounts(env)
    assert mounts["data"].replicas[0].url == f"{tmp_path}/a"
    assert mounts["ckpt"].replicas[0].url == f"{tmp_path}/b" and mounts["ckpt"].read_only  # STORECOMP_MOUNTS wins
    assert mounts["logs"].replicas[0].url == f"{tmp_path}/c"
    ns = Namespace([Mount.of("data", str(tmp_path / "d"))], environ=env)  # the API wins
    store, key = ns.resolve("sc://data/x/y.bin")
    store.put(key, b"hello")
    assert (tmp_path / "d" / "x" / "y.bin").read_bytes() == b"hello"
    with ns.open("sc://data/x/y.bin") as f:
        assert f.read() == b"hello"
    with pytest.raises(PermissionDeniedError):
        ns.resolve("sc://ckpt/k")[0].put("k", b"no")
    ns.close()


def test_plain_path_file_url_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "f.bin").write_bytes(b"abc")
    ns = Namespace(environ={})
    for url in (str(tmp_path / "f.bin"), (tmp_path / "f.bin").as_uri()):
        store, key = ns.resolve(url)
        assert key == str(tmp_path / "f.bin").lstrip("/")
        assert store.get(key) == b"abc"
    monkeypatch.chdir(tmp_path)
    assert ns.open("f.bin").read() == b"abc"
    assert split_url("s3://bucket/a/b") == ("s3://bucket", "a/b")
    assert split_url("s3://bucket") == ("s3://bucket", "")


@pytest.mark.parametrize(
    "url",
    ["sc://data/../etc/passwd", "sc://data/a/../../x", "sc://data//etc/passwd", "sc://data/a/./b", "sc://data/a\0b", "sc:///x"],
)
def test_path_traversal_is_refused(tmp_path: Path, url: str) -> None:
    ns = Namespace([Mount.of("data", str(tmp_path))], environ={})
    with pytest.raises(InvalidArgumentError):
        ns.resolve(url)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "..", ".", "", "/", "c.d"]), min_size=1, max_size=6))
def test_resolved_keys_never_escape_the_mount(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    root = tmp_path_factory.getbasetemp() / "ns-prop"
    ns = Namespace([Mount.of("m", str(root))], environ={})
    path = "/".join(parts)
    try:
        store, key = ns.resolve("sc://m/" + path)
    except InvalidArgumentError:
        return
    assert isinstance(store, LocalStore)
    if key:
        target = os.path.normpath(store.root / key)
        assert target.startswith(str(store.root) + os.sep)


def test_unknown_mount_and_malformed_urls(tmp_path: Path) -> None:
    ns = Namespace(environ={})
    with pytest.raises(InvalidArgumentError, match="no such mount"):
        ns.resolve("sc://nope/x")
    with pytest.raises(InvalidArgumentError):
        ns.resolve("file://relative/x")
    with pytest.raises(InvalidArgumentError):
        ns.resolve("s3:///key")


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        ("[mounts.data]\nurl = 5\n", 2, "url"),
        ('[mounts.data]\nurl = "/x"\nbogus = 1\n', 3, "bogus"),
        ('[mounts.data]\nreplicas = [{url = "/a", site = 3}]\n', 2, "replicas"),
        ('[mounts.data]\nurl = "/a"\nprimary = "mars"\n', 3, "primary"),
        ('[mounts.data]\nurl = "/a"\nread_only = "yes"\n', 3, "read_only"),
        ("[mounts]\ndata = 7\n", 2, ""),
        ('[mounts.data\nurl = "/a"\n', 1, ""),
    ],
)
def test_malformed_config_names_file_line_and_key(tmp_path: Path, text: str, line: int, key: str) -> None:
    path = write_toml(tmp_path / "mounts.toml", text)
    with pytest.raises(ConfigError) as e:
        load_mounts({"STORECOMP_MOUNTS": str(path)})
    msg = str(e.value)
    assert str(path) in msg
    assert f"line {line}" in msg or f"{path}:{line}:" in msg
    assert key in msg


def test_missing_config_file_and_bad_env_mount(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_mounts({"STORECOMP_MOUNTS": str(tmp_path / "none.toml")})
    with pytest.raises(ConfigError, match="STORECOMP_MOUNT_X"):
        load_mounts({"STORECOMP_MOUNT_X": " , "})


def _replicated(
    tmp_path: Path, prefs: Sequence[int], sites: Sequence[str] = (), **kw: Any
) -> tuple[ReplicatedStore, list[FlakyStore]]:
    sites = list(sites) or [f"s{i}" for i in range(len(prefs))]
    mount = Mount("m", tuple(Replica(f"{tmp_path}/r{i}", sites[i], p) for i, p in enumerate(prefs)), primary=sites[0])
    flaky = [FlakyStore(LocalStore(tmp_path / f"r{i}"), f"r{i}") for i in range(len(prefs))]
    for f in flaky:
        f.inner.put("obj", b"0123456789")
    return ReplicatedStore(mount, flaky, **kw), flaky


def test_reads_prefer_configured_replica_then_fail_over(tmp_path: Path) -> None:
    rs, flaky = _replicated(tmp_path, [1, 0, 2])
    assert rs.read_order()[0] == 1
    assert rs.get("obj") == b"0123456789" and flaky[1].calls == 2 and flaky[0].calls == 0  # stat + read
    flaky[1].down = True
    buf = np.zeros(4, np.uint8)
    assert int(rs.read_ranges("obj", [2], [4], buf, [0])[0]) == 4 and bytes(buf) == b"2345"
    assert flaky[0].calls >= 1
    assert rs.read_order()[-1] == 1  # marked down: tried last during the cooldown
    assert not rs.health()[1]["healthy"] and "connection refused" in rs.health()[1]["last_error"]
    assert rs.stat("obj").size == 10
    for f in flaky:
        f.down = True
    with pytest.raises(StoreUnavailableError):
        rs.get("obj")
    rs.close()


def test_local_site_and_latency_order(tmp_path: Path) -> None:
    rs, _ = _replicated(tmp_path, [0, 0, 0], ["eu", "us", "us"], local_site="us")
    assert rs.read_order()[:2] == [1, 2]
    rs._succeeded(1, 0.5)
    rs._succeeded(2, 0.01)
    assert rs.read_order()[0] == 2
    rs.probe("obj")
    assert all(h["latency_s"] > 0 for h in rs.health())


def test_not_found_does_not_fail_over_and_writes_go_to_primary(tmp_path: Path) -> None:
    rs, flaky = _replicated(tmp_path, [0, 1])
    with pytest.raises(NotFoundError):
        rs.stat("missing")
    assert flaky[1].calls == 0
    rs.put("new", b"x")
    assert flaky[0].inner.exists("new") and not flaky[1].inner.exists("new")
    flaky[0].down = True
    with pytest.raises(StoreUnavailableError):
        rs.put("new2", b"x")  # no failover for writes: the primary takes them


def test_mount_with_a_cache_tier(tmp_path: Path) -> None:
    from storecomp.store import CachedStore

    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "obj").write_bytes(b"x" * 10_000)
    text = (
        f'[mounts.ds]\nurl = "{tmp_path}/remote"\ncache_dir = "{tmp_path}/cache"\n'
        "cache_max_bytes = 1048576\ncache_block_bytes = 4096\n"
    )
    path = write_toml(tmp_path / "m.toml", text)
    ns = Namespace(environ={"STORECOMP_MOUNTS": str(path)})
    store, key = ns.resolve("sc://ds/obj")
    assert isinstance(store, CachedStore) and store.block_bytes == 4096
    assert ns.open("sc://ds/obj").read() == b"x" * 10_000
    assert store.stats.misses == 3 and len(store.entries()) == 3
    bad = write_toml(tmp_path / "bad.toml", f'[mounts.ds]\nurl = "/x"\ncache_dir = "{tmp_path}/c"\n')
    with pytest.raises(ConfigError, match="cache_max_bytes"):
        load_mounts({"STORECOMP_MOUNTS": str(bad)})


def test_fsspec_urls_resolve_through_the_registry() -> None:
    ns = Namespace(environ={})
    store, key = ns.resolve("memory://sc-ns-test/a/b.bin")
    assert key == "a/b.bin"
    store.put(key, b"in memory")
    assert ns.open("memory://sc-ns-test/a/b.bin").read() == b"in memory"
    ns.close()


def test_toml_replicas_build_a_replicated_store(tmp_path: Path) -> None:
    text = (
        '[mounts.ds]\nprimary = "west"\nreplicas = [\n'
        f'  {{url = "{tmp_path}/e", site = "east", preference = 0}},\n'
        f'  {{url = "{tmp_path}/w", site = "west", preference = 1}},\n]\n'
    )
    path = write_toml(tmp_path / "m.toml", text)
    ns = Namespace(environ={"STORECOMP_MOUNTS": str(path)})
    store, key = ns.resolve("sc://ds/a/b")
    assert isinstance(store, ReplicatedStore)
    store.put(key, b"w")
    assert (tmp_path / "w" / "a" / "b").exists() and not (tmp_path / "e" / "a" / "b").exists()


# ---------------------------------------------------------------- replicas on S3 (SeaweedFS)


def test_s3_replica_failover(tmp_path: Path, running_seaweedfs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sw = running_seaweedfs
    for k, v in sw.env().items():  # credentials from the environment, never from the mount file
        monkeypatch.setenv(k, v)
    good = sw.url()
    text = (
        '[mounts.ds]\nprimary = "far"\nreplicas = [\n'
        f'  {{url = "{good}", site = "near", preference = 0, options = {{endpoint = "http://127.0.0.1:9"}}}},\n'
        f'  {{url = "{good}", site = "far", preference = 1, options = {{endpoint = "{sw.endpoint}"}}}},\n]\n'
        '[mounts.x]\nurl = "s3://b/p"\noptions = {endpoint = "http://127.0.0.1:9"}\n'
    )
    ns = Namespace(environ={"STORECOMP_MOUNTS": str(write_toml(tmp_path / "m.toml", text))})
    store, key = ns.resolve("sc://ds/a/obj")
    store.put(key, b"replicated")
    assert ns.open("sc://ds/a/obj").read() == b"replicated"  # the near replica is down: read from far
    assert isinstance(store, ReplicatedStore)
    health = store.health()
    assert not health[0]["healthy"] and health[1]["healthy"]
    assert "127.0.0.1:9" in health[0]["last_error"]
    assert [i.key for i in store.list("a/")] == ["a/obj"]
    with pytest.raises(StoreUnavailableError, match="127.0.0.1:9"):
        ns.resolve("sc://x/a/obj")[0].get("a/obj")
    bad = write_toml(tmp_path / "bad.toml", '[mounts.y]\nurl = "s3://b"\noptions = {secret_access_key = "x"}\n')
    with pytest.raises(ConfigError, match="credential") as e:
        load_mounts({"STORECOMP_MOUNTS": str(bad)})
    assert 'x"' not in str(e.value)


def test_store_opened_twice_at_once_keeps_one_and_closes_the_other(tmp_path: Path) -> None:
    import threading

    closed: list[Store] = []
    both_opening = threading.Barrier(2, timeout=10)

    class Tracked(LocalStore):
        def close(self) -> None:
            closed.append(self)
            super().close()

    def opener(url: str, **options: Any) -> Store:
        both_opening.wait()  # two threads miss the table at the same time
        return Tracked(url)

    ns = Namespace([Mount.of("m", str(tmp_path / "m"))], environ={}, opener=opener)
    got: list[Store] = []
    threads = [threading.Thread(target=lambda: got.append(ns.store("m"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(got) == 2 and got[0] is got[1]
    assert len(closed) == 1 and closed[0] is not got[0]  # the loser is closed, not leaked
    ns.close()
    assert closed[-1] is got[0]


# ---------------------------------------------------------------- a lagging replica (issue 16, item 3)


def _lagging_mount(tmp_path: Path) -> Path:
    """Mount "data": primary site a, replicas b and c; site c lags (lacks ds/a.txt)."""
    for site in "abc":
        LocalStore(tmp_path / site).put("ds/old.txt", b"old")
    for site in "ab":
        LocalStore(tmp_path / site).put("ds/a.txt", b"hello from the primary")
    text = '[mounts.data]\nprimary = "a"\nreplicas = [\n' + "".join(
        f'  {{url = "{tmp_path}/{s}", site = "{s}", preference = {i}}},\n' for i, s in enumerate("abc")
    )
    return write_toml(tmp_path / "m.toml", text + "]\n")


def test_not_found_on_a_lagging_replica_falls_back(tmp_path: Path) -> None:
    ns = Namespace(environ={"STORECOMP_MOUNTS": str(_lagging_mount(tmp_path)), "STORECOMP_SITE": "c"})
    store, key = ns.resolve("sc://data/ds/a.txt")
    assert isinstance(store, ReplicatedStore) and store.read_order()[0] == 2  # site c is asked first
    assert store.get(key) == b"hello from the primary"
    assert store.stat(key).size == 22 and store.exists(key)
    buf = np.zeros(5, np.uint8)
    assert int(store.read_ranges(key, [0], [5], buf, [0])[0]) == 5 and bytes(buf) == b"hello"
    assert ns.open("sc://data/ds/a.txt").read() == b"hello from the primary"
    assert all(h["healthy"] for h in store.health())  # lagging is not down: c stays first for what it has
    assert store.get("ds/old.txt") == b"old"
    with pytest.raises(NotFoundError):  # nobody has it: NotFound is then the answer
        store.get("ds/none.txt")
    with pytest.raises(NotFoundError):
        store.read_ranges("ds/none.txt", [0], [1], buf, [0])
    ns.close()


def test_cat_through_a_lagging_near_replica(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfdbinary: Any) -> None:
    from storecomp.cli import main

    monkeypatch.setenv("STORECOMP_MOUNTS", str(_lagging_mount(tmp_path)))
    monkeypatch.setenv("STORECOMP_SITE", "c")
    assert main(["cat", "sc://data/ds/a.txt"]) == 0
    assert capfdbinary.readouterr().out == b"hello from the primary"
