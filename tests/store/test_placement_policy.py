"""The placement policy table of a mount (``[mounts.NAME.placement]``): read and
checked in storecomp.config, applied by storecomp.store.policy and
``storecomp place --auto``, on local-directory sites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storecomp.cli import main
from storecomp.errors import ConfigError, InvalidArgumentError
from storecomp.store import LocalStore, Mount, Namespace, Replica, Repository, auto_decisions, load_mounts, place, place_auto
from storecomp.store import placement as pl
from storecomp.store.mounts import PlacementPolicy

from .placehelpers import complete_at, write_snapshot

URL = "sc://ds/train"


def mounts_toml(tmp_path: Path, placement: str, sites: tuple[str, ...] = ("a", "b", "c")) -> Path:
    reps = ", ".join(f'{{url = "{tmp_path}/{s}", site = "{s}"}}' for s in sites)
    path = tmp_path / "mounts.toml"
    path.write_text(f'[mounts.ds]\nprimary = "a"\nreplicas = [{reps}]\n\n[mounts.ds.placement]\n{placement}')
    return path


def namespace(tmp_path: Path, placement: str) -> Namespace:
    return Namespace(environ={"STORECOMP_MOUNTS": str(mounts_toml(tmp_path, placement))})


def test_policy_table_is_read_into_the_mount(tmp_path: Path) -> None:
    path = mounts_toml(tmp_path, 'near = ["b", "c"]\nmin_copies = 2\nmax_rate = "50M"\nauto = false\nreads = 3\n')
    m = load_mounts({"STORECOMP_MOUNTS": str(path)})["ds"]
    assert m.placement == PlacementPolicy(near=("b", "c"), min_copies=2, max_rate=float(50 << 20), auto=False, reads=3.0)
    inline = tmp_path / "inline.toml"
    inline.write_text(f'[mounts.ds]\nurl = "{tmp_path}/a"\nplacement = {{max_rate = 1000000}}\n')
    assert load_mounts({"STORECOMP_MOUNTS": str(inline)})["ds"].placement == PlacementPolicy(max_rate=1e6)
    plain = tmp_path / "plain.toml"
    plain.write_text(f'[mounts.ds]\nurl = "{tmp_path}/a"\n')
    assert load_mounts({"STORECOMP_MOUNTS": str(plain)})["ds"].placement is None


@pytest.mark.parametrize(
    ("table", "key", "needle"),
    [
        ("bogus = 1\n", "bogus", "unknown key; known: near, min_copies"),
        ('near = "b"\nnear_sites = 1\n', "near_sites", "unknown key"),
        ("near = [1]\n", "near", "array of site names"),
        ('near = ["mars"]\n', "near", "'mars' is no replica's site (sites: a, b, c)"),
        ("min_copies = 0\n", "min_copies", "positive integer"),
        ("min_copies = 4\n", "min_copies", "min_copies=4 but the mount has 3 site(s)"),
        ("min_copies = true\n", "min_copies", "positive integer"),
        ('max_rate = "fast"\n', "max_rate", "not a size: 'fast'"),
        ("max_rate = -5\n", "max_rate", "positive rate in bytes/s"),
        ("max_rate = inf\n", "max_rate", "positive rate in bytes/s"),
        ('auto = "yes"\n', "auto", "expected true or false"),
        ("reads = -1\n", "reads", "number >= 0"),
        ("reads = nan\n", "reads", "number >= 0"),
    ],
)
def test_bad_policy_is_a_one_line_config_error_naming_the_key(tmp_path: Path, table: str, key: str, needle: str) -> None:
    path = mounts_toml(tmp_path, table)
    with pytest.raises(ConfigError) as e:
        load_mounts({"STORECOMP_MOUNTS": str(path)})
    msg = str(e.value)
    line = 1 + next(i for i, text in enumerate(path.read_text().splitlines()) if text.startswith(key))
    assert msg.startswith(f"{path}:{line}: [mounts.ds.placement] {key}: ") and needle in msg and "\n" not in msg, msg


def test_placement_that_is_not_a_table(tmp_path: Path) -> None:
    path = tmp_path / "m.toml"
    path.write_text(f'[mounts.ds]\nurl = "{tmp_path}/a"\nplacement = 5\n')
    with pytest.raises(ConfigError, match=r":3: \[mounts.ds\] placement: expected a table with keys near"):
        load_mounts({"STORECOMP_MOUNTS": str(path)})


def test_policy_in_python_is_checked_too(tmp_path: Path) -> None:
    reps = (Replica(f"{tmp_path}/a", "a"), Replica(f"{tmp_path}/b", "b"))
    with pytest.raises(InvalidArgumentError, match="'z' is no replica's site"):
        Mount("ds", reps, placement=PlacementPolicy(near=("z",)))
    with pytest.raises(InvalidArgumentError, match="max_rate"):
        PlacementPolicy(max_rate=0)


def test_near_sites_copy_only_when_the_rule_pays_off(tmp_path: Path) -> None:
    with namespace(tmp_path, 'near = ["b"]\nreads = 0\n') as ns:
        write_snapshot(LocalStore(tmp_path / "a"))
        [d] = auto_decisions(URL, namespace=ns)
        assert d.site == "b" and not d.copy and "stay on a" in d.why  # nothing will be read: copying only costs
        r = place_auto(URL, namespace=ns)
        assert r.sites == [] and r.placed == []
        # --near on the command line and reads override the table.
        [d] = auto_decisions(URL, near=["c"], reads=2, namespace=ns)
        assert d.site == "c" and set(d.measures) == {"a", "c"} and d.copy == (d.copy_s < d.stay_s)


def test_min_copies_adds_copies_near_sites_first_and_place_auto_makes_them(tmp_path: Path) -> None:
    with namespace(tmp_path, 'near = ["c"]\nmin_copies = 3\nauto = false\n') as ns:
        h, _ = write_snapshot(LocalStore(tmp_path / "a"))
        decisions = auto_decisions(URL, namespace=ns)
        assert [(d.site, d.copy) for d in decisions] == [("c", True), ("b", True)]
        assert decisions[0].why == "min_copies = 3: 1 complete (a): copy to c"
        assert decisions[1].why == "min_copies = 3: 1 complete (a) + c decided: copy to b"
        r = place_auto(URL, namespace=ns)
        assert [p.site for p in r.placed] == ["c", "b"] and all(p.transfer.copied == 6 for p in r.placed)
        manifest = Repository(LocalStore(tmp_path / "a")).get_manifest(h)
        assert complete_at(LocalStore(tmp_path / "b"), manifest) and complete_at(LocalStore(tmp_path / "c"), manifest)
        assert pl.read_record(LocalStore(tmp_path / "a")).sites_of(h) == {"b", "c"}
        again = auto_decisions(URL, namespace=ns)
        assert [(d.site, d.copy, d.why) for d in again] == [("c", False, "c already holds a complete copy")]


def test_auto_false_keeps_near_sites_to_min_copies(tmp_path: Path) -> None:
    with namespace(tmp_path, 'near = ["b"]\nauto = false\n') as ns:
        write_snapshot(LocalStore(tmp_path / "a"))
        [d] = auto_decisions(URL, namespace=ns)
        assert not d.copy and d.why == "policy auto = false: no copy to b by the rule"


def test_policy_max_rate_caps_place(tmp_path: Path) -> None:
    with namespace(tmp_path, "max_rate = 123456789\n") as ns:
        write_snapshot(LocalStore(tmp_path / "a"), n=1)
        assert place(URL, "b", namespace=ns).transfer.max_rate == 123456789.0
        assert place(URL, "c", namespace=ns, max_rate=5e8).transfer.max_rate == 5e8  # the caller's wins


def test_nothing_to_decide_and_unknown_snapshot(tmp_path: Path) -> None:
    with namespace(tmp_path, "min_copies = 1\n") as ns:
        write_snapshot(LocalStore(tmp_path / "a"))
        with pytest.raises(InvalidArgumentError, match=r"nothing to decide: give --near SITE, or a \[mounts.ds.placement\]"):
            auto_decisions(URL, namespace=ns)
        with pytest.raises(InvalidArgumentError, match="no site 'zz'"):
            auto_decisions(URL, near=["zz"], namespace=ns)
        with pytest.raises(FileNotFoundError):
            auto_decisions("sc://ds/missing", near=["b"], namespace=ns)


def test_cli_auto_applies_the_policy_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STORECOMP_MOUNTS", str(mounts_toml(tmp_path, "min_copies = 2\n")))
    write_snapshot(LocalStore(tmp_path / "a"), n=2)
    assert main(["place", URL, "--auto"]) == 0
    out = capsys.readouterr()
    assert "b: copy: min_copies = 2: 1 complete (a): copy to b" in out.err and f"{URL} complete at b: copied 2 blobs" in out.out
    assert main(["place", URL, "--auto", "--near", "b", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(d["site"], d["copy"], d["why"]) for d in doc["decisions"]] == [("b", False, "b already holds a complete copy")]
    monkeypatch.setenv("STORECOMP_MOUNTS", str(mounts_toml(tmp_path, "min_copies = 9\n")))
    assert main(["place", URL, "--auto"]) == 1
    err = capsys.readouterr().err
    assert "[mounts.ds.placement] min_copies: " in err and err.count("\n") == 1
