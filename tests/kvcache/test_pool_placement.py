"""A KV shared pool placed at a near site (docs/placement.md, "KV shared prefixes"):
``storecomp.store.placement.place_prefix`` copies the pool's chunk objects from
the mount's primary to another site; a KV store whose shared tier is that site
then loads the prefix from there, verified."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from storecomp.cli import main
from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import KVCacheStore, SharedTierOptions
from storecomp.store import Mount, Namespace, Replica
from storecomp.store.placement import place_prefix
from tests.kvcache.kvhelpers import CHUNK, make_kv, same_prefix, zeros_kv

Make = Callable[..., KVCacheStore]
TOKENS = list(range(3 * CHUNK))


def test_a_kv_pool_placed_near_is_loaded_there(kvstore: Make, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    mount = Mount("kv", (Replica(str(a), "a", 0), Replica(str(b), "b", 1)), primary="a")
    kv = make_kv(len(TOKENS))
    writer = kvstore(host_bytes=0, shared=SharedTierOptions(str(a)), write_through=True)
    assert writer.store(TOKENS, kv) == len(TOKENS)
    with Namespace([mount], environ={}) as ns:
        rep = place_prefix("sc://kv/kvcache/", "b", namespace=ns)
        assert rep.copied == 3 and rep.bytes_verified == rep.bytes_copied > 0
        near = kvstore(host_bytes=0, shared=SharedTierOptions(str(b)))  # site b alone
        out = zeros_kv(len(TOKENS))
        assert near.retrieve(TOKENS, out) == len(TOKENS) and same_prefix(kv, out, len(TOKENS))
        # A rerun moves nothing; a chunk damaged at b is found and copied again.
        again = place_prefix("sc://kv/kvcache/", "b", namespace=ns)
        assert again.copied == 0 and again.skipped == 3
        victim = sorted(p for p in (b / "kvcache").rglob("*") if p.is_file())[0]
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0xFF
        victim.write_bytes(bytes(raw))
        fixed = place_prefix("sc://kv/kvcache/", "b", namespace=ns)
        assert fixed.copied == 1 and fixed.skipped == 2
        assert victim.read_bytes() == (a / victim.relative_to(b)).read_bytes()
        assert place_prefix("sc://kv/kvcache/", "a", namespace=ns).objects == 0  # the primary holds the pool
        with pytest.raises(InvalidArgumentError, match="ending in '/'"):
            place_prefix("sc://kv/kvcache", "b", namespace=ns)
        with pytest.raises(InvalidArgumentError, match="no site 'zz'"):
            place_prefix("sc://kv/kvcache/", "zz", namespace=ns)


def test_place_cli_copies_a_prefix(
    kvstore: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "m.toml"
    cfg.write_text(
        f'[mounts.kv]\nprimary = "a"\nreplicas = [{{url = "{tmp_path}/a", site = "a"}}, {{url = "{tmp_path}/b", site = "b"}}]\n'
    )
    monkeypatch.setenv("STORECOMP_MOUNTS", str(cfg))
    writer = kvstore(host_bytes=0, shared=SharedTierOptions(str(tmp_path / "a")), write_through=True)
    assert writer.store(TOKENS, make_kv(len(TOKENS))) == len(TOKENS)
    assert main(["place", "sc://kv/kvcache/", "--to", "b"]) == 0
    assert "sc://kv/kvcache/ at b: copied 3 objects" in capsys.readouterr().out
