"""The shared tier's settings in one object: ``KVCacheStore(shared=SharedTierOptions(...))``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from storecomp.errors import InvalidArgumentError
from storecomp.kvcache import KVCacheStore, SharedTierOptions
from storecomp.store import open_store
from tests.kvcache.kvhelpers import CHUNK, FP, make_kv, same_prefix, zeros_kv

Make = Callable[..., KVCacheStore]
TOKENS = list(range(2 * CHUNK))


def _objects(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_options_object_round_trip(kvstore: Make, tmp_path: Path) -> None:
    opts = SharedTierOptions(str(tmp_path / "s"), prefix="team/kv", retry_seconds=5.0, backoff=0.1, max_backoff=1.0)
    s = kvstore(host_bytes=0, shared=opts, write_through=True)
    kv = make_kv(len(TOKENS))
    assert s.store(TOKENS, kv) == len(TOKENS)
    files = _objects(tmp_path / "s")
    assert len(files) == 2 and all(f.startswith(f"team/kv/{s.namespace}/") for f in files)
    assert s.shared is not None and (s.shared.base_backoff, s.shared.max_backoff) == (0.1, 1.0)
    out = zeros_kv(len(TOKENS))
    assert s.retrieve(TOKENS, out) == len(TOKENS) and same_prefix(kv, out, len(TOKENS))


def test_old_keywords_still_work_with_a_deprecation_warning(kvstore: Make, tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning, match=r"shared_prefix=.*SharedTierOptions\(store, prefix=, backoff="):
        old = kvstore(host_bytes=0, shared=str(tmp_path / "old"), shared_prefix="p", shared_backoff=0.2, write_through=True)
    new = kvstore(host_bytes=0, shared=SharedTierOptions(str(tmp_path / "new"), prefix="p", backoff=0.2), write_through=True)
    for s in (old, new):
        assert s.store(TOKENS, make_kv(len(TOKENS))) == len(TOKENS)
        assert s.shared is not None and s.shared.base_backoff == 0.2
    assert _objects(tmp_path / "old") == _objects(tmp_path / "new")


def test_a_store_in_the_options_stays_the_callers(kvstore: Make, tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s"))
    s = kvstore(shared=SharedTierOptions(store))
    s.close()
    assert not store.exists("anything")  # still usable: not closed by the KV store
    store.close()


def test_options_and_old_keywords_together_are_refused(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidArgumentError, match="set prefix= in it"):
        KVCacheStore(FP, shared=SharedTierOptions(str(tmp_path)), shared_prefix="p")


def test_an_unknown_keyword_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'shared_backof'"):
        KVCacheStore(FP, shared=str(tmp_path), shared_backof=1.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("store", 42),
        ("store_options", ["endpoint"]),
        ("prefix", None),
        ("backoff", -1.0),
        ("max_backoff", "30"),
        ("retry_seconds", True),
    ],
)
def test_bad_options_are_refused_naming_the_field(tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match=f"SharedTierOptions.{field}"):
        SharedTierOptions(**({"store": str(tmp_path)} | {field: value}))


def test_options_are_frozen(tmp_path: Path) -> None:
    opts = SharedTierOptions(str(tmp_path))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.prefix = "other"  # type: ignore[misc]
