"""Fault campaign, parser part: random and mutated bytes into every parser storecomp has.

Dataset manifest, shard (trailer, index, records), the shard index alone, the checksum sidecar
of `storecomp dataset index`, Megatron .idx, .npy headers, Zarr metadata, the KV chunk header,
the mounts TOML and the config TOML. The
only acceptable failure is a storecomp error (``StorecompError``); any other exception type,
a hang or a crash fails the test. Deterministic (``derandomize``) and bounded: about 1,000
cases in all, a few seconds. Figures are recorded in docs/reliability.md ("Parsers and CLI").
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storecomp.config import IOOptions
from storecomp.data import index_dataset, open_dataset, read_megatron_index, write_dataset
from storecomp.data.convert import verify
from storecomp.data.format import TRAILER, decode_index, parse_trailer
from storecomp.errors import StorecompError
from storecomp.kvcache import ChunkLayout, ModelFingerprint
from storecomp.kvcache.format import verify as verify_chunk
from storecomp.kvcache.format import write_header
from storecomp.store import load_mounts

# A longer, random campaign: STORECOMP_FUZZ_EXAMPLES=2000 (per parser; not derandomized then).
_EXAMPLES = int(os.environ.get("STORECOMP_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_EXAMPLES or 100,
    deadline=None,
    derandomize=not _EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_names = itertools.count()
TRIES: dict[str, int] = {}


def only_storecomp_errors(name: str, fn: Callable[[], Any]) -> None:
    """Run one case: success or a StorecompError; anything else fails the test (and names the parser)."""
    TRIES[name] = TRIES.get(name, 0) + 1
    try:
        fn()
    except StorecompError:
        pass


def mutations(valid: bytes, max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """``valid`` with a few bytes replaced, then maybe truncated or extended."""

    def apply(edits: list[tuple[int, int]], cut: int | None, tail: bytes) -> bytes:
        b = bytearray(valid)
        for pos, val in edits:
            b[pos % len(b)] = val
        if cut is not None:
            del b[cut % (len(b) + 1) :]
        return bytes(b) + tail

    edit = st.tuples(st.integers(0, len(valid) - 1), st.integers(0, 255))
    return st.builds(
        apply,
        st.lists(edit, min_size=1, max_size=max_edits),
        st.none() | st.integers(0, len(valid)),
        st.just(b"") | st.binary(max_size=16),
    )


def fuzzed(valid: bytes, max_size: int = 2048) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size) | mutations(valid)


# ---------------------------------------------------------------- datasets


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "ds"
    rng = np.random.default_rng(0)
    cols = {"x": rng.random((40, 3)).astype(np.float32), "t": [rng.integers(0, 9, i % 4, dtype=np.int32) for i in range(40)]}
    write_dataset(root, cols, var=["t"], shard_bytes=1 << 20)
    return root


def _fresh(parent: Path) -> Path:
    """A folder never used before (the engine caches open files by path)."""
    d = parent / f"case-{next(_names)}"
    d.mkdir()
    return d


def _first(ds: Any) -> None:
    """Read the first and last samples (an empty dataset has none: indexing it is an IndexError by design)."""
    if len(ds):
        ds[0]
        ds[len(ds) - 1]


def _open_and_read(folder: Path) -> None:
    ds = open_dataset(folder)
    if len(ds):
        ds[0]
        ds[len(ds) - 1]
    verify(ds)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(data=st.data())
def test_dataset_manifest(dataset: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    valid = (dataset / "manifest.json").read_bytes()
    doc = json.loads(valid)
    how = data.draw(st.sampled_from(["bytes", "json-field", "shard-entry"]))
    if how == "bytes":
        raw = data.draw(fuzzed(valid))
    elif how == "json-field":
        doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(JSON)
        raw = json.dumps(doc).encode()
    else:
        entry = doc["shards"][0]
        entry[data.draw(st.sampled_from(sorted(entry)))] = data.draw(JSON | st.sampled_from(["../x", "/etc/passwd", "a/../../b"]))
        raw = json.dumps(doc).encode()
    folder = _fresh(tmp_path_factory.getbasetemp())
    (folder / "shards").symlink_to(dataset / "shards")
    (folder / "manifest.json").write_bytes(raw)
    only_storecomp_errors("dataset manifest", lambda: _open_and_read(folder))


@FUZZ
@given(data=st.data())
def test_shard_file(dataset: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """A damaged shard under a manifest that agrees with its size: trailer, index, records, checksums."""
    doc = json.loads((dataset / "manifest.json").read_bytes())
    key = doc["shards"][0]["key"]
    valid = (dataset / key).read_bytes()
    raw = data.draw(
        mutations(valid, max_edits=4)
        | mutations(valid[-TRAILER.size - 600 :], max_edits=4).map(lambda t: valid[: len(valid) - len(t)] + t)
    )
    folder = _fresh(tmp_path_factory.getbasetemp())
    (folder / "shards").mkdir()
    (folder / key).write_bytes(raw)
    doc["shards"][0]["size"] = len(raw)
    (folder / "manifest.json").write_text(json.dumps(doc))
    only_storecomp_errors("shard", lambda: _open_and_read(folder))


@FUZZ
@given(data=st.data())
def test_shard_index_and_trailer(dataset: Path, data: st.DataObject) -> None:
    doc = json.loads((dataset / "manifest.json").read_bytes())
    shard = (dataset / doc["shards"][0]["key"]).read_bytes()
    ioff, ilen, _ = parse_trailer(shard[-TRAILER.size :], len(shard), "shard")
    index = data.draw(fuzzed(shard[ioff : ioff + ilen]))
    only_storecomp_errors("shard index", lambda: decode_index(index, "index"))
    trailer = data.draw(fuzzed(shard[-TRAILER.size :], max_size=TRAILER.size))
    size = data.draw(st.integers(0, 2**64))
    only_storecomp_errors("shard trailer", lambda: parse_trailer(trailer, size, "shard"))


def _megatron_idx(sizes: list[int]) -> bytes:
    s = np.array(sizes, np.int32)
    ptr = np.concatenate([[0], np.cumsum(s[:-1].astype(np.int64) * 2)]).astype(np.int64)
    head = (
        b"MMIDIDX\x00\x00"
        + (1).to_bytes(8, "little")
        + bytes([8])
        + len(s).to_bytes(8, "little")
        + (len(s) + 1).to_bytes(8, "little")
    )
    return head + s.tobytes() + ptr.tobytes() + np.arange(len(s) + 1, dtype=np.int64).tobytes()


@FUZZ
@given(data=st.data())
def test_megatron_index(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    valid = _megatron_idx([5, 7, 3])
    raw = data.draw(fuzzed(valid))
    only_storecomp_errors("megatron .idx", lambda: read_megatron_index(raw, "x.idx"))
    folder = _fresh(tmp_path_factory.getbasetemp())
    (folder / "t.idx").write_bytes(raw)
    (folder / "t.bin").write_bytes(np.arange(15, dtype=np.uint16).tobytes())
    only_storecomp_errors("megatron .idx", lambda: _first(open_dataset(folder / "t.bin", seq_len=4)))


@FUZZ
@given(data=st.data())
def test_npy_header(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    folder = _fresh(tmp_path_factory.getbasetemp())
    np.save(folder / "v.npy", np.arange(24, dtype=np.int32).reshape(8, 3))
    valid = (folder / "v.npy").read_bytes()
    raw = data.draw(st.binary(max_size=300) | mutations(valid[:128]).map(lambda h: h + valid[128:]))
    (folder / "x.npy").write_bytes(raw)
    seq = data.draw(st.none() | st.integers(1, 4))
    only_storecomp_errors(".npy header", lambda: _first(open_dataset(folder / "x.npy", seq_len=seq)))


@FUZZ
@given(data=st.data())
def test_dataset_index_sidecar(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    """The checksum sidecar `storecomp dataset index` writes, damaged: opening and reading the dataset."""
    folder = _fresh(tmp_path_factory.getbasetemp())
    np.save(folder / "tok.npy", np.arange(3000, dtype=np.uint16))
    ds = open_dataset(folder / "tok.npy", seq_len=8)
    index_dataset(ds, chunk_bytes=1024)
    side = folder / "tok.npy.crc32c"
    side.write_bytes(data.draw(fuzzed(side.read_bytes(), max_size=64)))
    only_storecomp_errors("dataset index sidecar", lambda: verify(open_dataset(folder / "tok.npy", seq_len=8)))


@settings(FUZZ, max_examples=max(50, _EXAMPLES // 4))
@given(data=st.data())
def test_zarr_metadata(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    zarr = pytest.importorskip("zarr")
    folder = _fresh(tmp_path_factory.getbasetemp())
    z = zarr.create_array(str(folder / "z"), shape=(8, 2), chunks=(4, 2), dtype="int32", compressors=None)
    z[:] = np.arange(16, dtype=np.int32).reshape(8, 2)
    meta = folder / "z" / "zarr.json"
    meta.write_bytes(data.draw(fuzzed(meta.read_bytes(), max_size=600)))
    only_storecomp_errors("zarr metadata", lambda: _first(open_dataset(folder / "z")))


# ---------------------------------------------------------------- KV chunk header

FP = ModelFingerprint("fuzz", "bfloat16", layers=2, kv_heads=1, head_dim=8)
KEY = bytes(range(32))


def _chunk() -> np.ndarray:
    layout = ChunkLayout(FP, 4)
    obj = np.zeros(layout.nbytes, np.uint8)
    from storecomp.crc import crc32c

    crcs = []
    for i in range(FP.layers):
        view = layout.layer_view(obj, i)
        view[:] = np.arange(view.size, dtype=np.uint8)
        crcs.append(crc32c(view))
    write_header(obj, layout, KEY, crcs)
    verify_chunk(obj, layout, KEY, "chunk")  # the valid one passes
    return obj


@FUZZ
@given(data=st.data())
def test_kv_chunk_header(data: st.DataObject) -> None:
    obj = _chunk()
    layout = ChunkLayout(FP, 4)
    hb = layout.header_bytes
    head = data.draw(
        st.binary(min_size=0, max_size=hb + 8) | mutations(obj[:256].tobytes()).map(lambda h: h + obj[len(h) : hb].tobytes())
    )
    damaged = obj.copy()
    n = min(len(head), obj.size)
    damaged[:n] = np.frombuffer(head[:n], np.uint8)
    size = data.draw(st.sampled_from([obj.size, n, obj.size - 1]))
    only_storecomp_errors("KV chunk header", lambda: verify_chunk(damaged[:size], layout, KEY, "chunk"))


# ---------------------------------------------------------------- TOML

VALID_MOUNTS = b"""[mounts.data]
url = "/tmp/data"
cache_dir = "/tmp/cache"
cache_max_bytes = 1048576

[mounts.mirror]
primary = "b"
read_only = true
replicas = [{url = "/tmp/m1", site = "a"}, {url = "s3://bucket/p", site = "b", preference = 5, options = {region = "x"}}]
"""
TOML_ALPHABET = st.sampled_from(
    list("[]{}=\"\n., -_#'\\") + ["mounts", "url", "replicas", "primary", "site", "true", "1", "0x", "\u00ff", "\ud7ff"]
)
TOMLISH = st.lists(TOML_ALPHABET, max_size=60).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass"))


@FUZZ
@given(raw=st.binary(max_size=400) | mutations(VALID_MOUNTS) | TOMLISH)
def test_mounts_toml(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = _fresh(tmp_path_factory.getbasetemp()) / "mounts.toml"
    path.write_bytes(raw)
    only_storecomp_errors("mounts TOML", lambda: load_mounts({"STORECOMP_MOUNTS": str(path)}))


VALID_CONFIG = b'[io]\nengine = "threads"\nqueue_depth = 32\ndirect = "auto"\n'


@FUZZ
@given(raw=st.binary(max_size=200) | mutations(VALID_CONFIG) | TOMLISH)
def test_config_toml(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = _fresh(tmp_path_factory.getbasetemp()) / "storecomp.toml"
    path.write_bytes(raw)
    only_storecomp_errors("config TOML", lambda: IOOptions.load({"STORECOMP_CONFIG": str(path)}))


def test_campaign_size() -> None:
    """The campaign above ran (when this file runs whole): at least 500 cases in all."""
    if len(TRIES) < 10:
        pytest.skip("run the whole file to count the campaign")
    assert sum(TRIES.values()) >= 500, TRIES
    print("parser fuzz cases:", json.dumps(TRIES), "total", sum(TRIES.values()))
    os.environ.get("STORECOMP_FUZZ_REPORT") and Path(os.environ["STORECOMP_FUZZ_REPORT"]).write_text(json.dumps(TRIES))
