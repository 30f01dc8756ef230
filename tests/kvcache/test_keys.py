"""Chunk keys: the documented test vector, the prefix property, determinism across processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storecomp.errors import InvalidArgumentError
from storecomp.kvcache.keys import ModelFingerprint, chunk_keys, keys_from_prefix_hashes, prefix_hashes, token_array

FP = ModelFingerprint("meta-llama/Llama-3.1-8B", "bfloat16", layers=32, kv_heads=8, head_dim=128, revision="main")
SMALL = ModelFingerprint("m", "float16", layers=2, kv_heads=2, head_dim=8)

# The test vector printed in docs/kvcache.md: another engine must get these bytes.
VECTOR_CANONICAL = (
    '{"dtype":"bfloat16","head_dim":128,"kv_heads":8,"layers":32,"layout_version":1,'
    '"model":"meta-llama/Llama-3.1-8B","revision":"main","tag":"","tp_rank":0,"tp_size":1}'
)
VECTOR_DIGEST = "8728a96a3a7ce55f75b8f8149690e040a2a99dd92618b8a244fcc01bce7ca605"
VECTOR_KEYS = [
    "aacf1c84466f11b77c57a933fa8f6645a24ca6e90e3074aef032e87128774ad2",
    "82f542350a512994387d0ff5ec0deb2c4c142a320303048593454e735b4ff224",
]
# The token chain alone (no fingerprint): what SGLang passes as page hashes.
VECTOR_PREFIX_HASHES = [
    "8808405eec6fbe306fe3369f88daed79dd5613ddbb5e801f632b01d6218c5f08",
    "705440bca5981da70aa2be86254ecd2a1d66e6b280edf72ba0c3b17074bb9061",
]


def test_documented_vector() -> None:
    assert FP.canonical().decode() == VECTOR_CANONICAL
    assert FP.digest.hex() == VECTOR_DIGEST
    assert [k.hex() for k in chunk_keys(FP, list(range(512)), 256)] == VECTOR_KEYS
    assert [h.hex() for h in prefix_hashes(list(range(512)), 256)] == VECTOR_PREFIX_HASHES
    assert [k.hex() for k in keys_from_prefix_hashes(FP, VECTOR_PREFIX_HASHES)] == VECTOR_KEYS


def test_vector_from_first_principles() -> None:
    """The scheme as docs/kvcache.md states it, written with hashlib and struct only."""
    import struct

    canonical = json.dumps(
        {
            "dtype": "bfloat16",
            "head_dim": 128,
            "kv_heads": 8,
            "layers": 32,
            "layout_version": 1,
            "model": "meta-llama/Llama-3.1-8B",
            "revision": "main",
            "tag": "",
            "tp_rank": 0,
            "tp_size": 1,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    digest = hashlib.sha256(b"storecomp-kv-fingerprint\x00" + canonical).digest()
    parent = b""
    keys, chain = [], []
    for c in range(2):
        parent = hashlib.sha256(parent + struct.pack("<256i", *range(c * 256, (c + 1) * 256))).digest()
        chain.append(parent.hex())
        keys.append(hashlib.sha256(b"storecomp-kv-chunk\x00" + digest + parent).hexdigest())
    assert chain == VECTOR_PREFIX_HASHES
    assert keys == VECTOR_KEYS


tokens_st = st.lists(st.integers(0, 2**31 - 1), max_size=40)


@settings(max_examples=60, deadline=None)
@given(a=tokens_st, b=tokens_st, n=st.integers(1, 8))
def test_prefix_property(a: list[int], b: list[int], n: int) -> None:
    """Key i of two token lists agree exactly when their first (i+1)*n tokens agree."""
    ka, kb = chunk_keys(SMALL, a, n), chunk_keys(SMALL, b, n)
    assert len(ka) == len(a) // n
    for i in range(min(len(ka), len(kb))):
        assert (ka[i] == kb[i]) == (a[: (i + 1) * n] == b[: (i + 1) * n])
    # keys of a prefix are a prefix of the keys
    assert chunk_keys(SMALL, a + b, n)[: len(a) // n] == ka


@settings(max_examples=30, deadline=None)
@given(t=tokens_st.filter(lambda t: len(t) >= 4))
def test_fingerprint_separates(t: list[int]) -> None:
    for other in (
        ModelFingerprint("m", "bfloat16", layers=2, kv_heads=2, head_dim=8),
        ModelFingerprint("m", "float16", layers=2, kv_heads=2, head_dim=8, tp_size=2, tp_rank=1),
        ModelFingerprint("m", "float16", layers=2, kv_heads=2, head_dim=8, tag="lora-7"),
        ModelFingerprint("m", "float16", layers=2, kv_heads=2, head_dim=8, revision="v2"),
    ):
        assert chunk_keys(other, t, 4)[0] != chunk_keys(SMALL, t, 4)[0]


def test_deterministic_across_processes() -> None:
    rng = np.random.default_rng(3)
    toks = rng.integers(0, 128_000, 1000).tolist()
    code = (
        "import json,sys\n"
        "from storecomp.kvcache.keys import ModelFingerprint, chunk_keys\n"
        "fp = ModelFingerprint(**json.loads(sys.argv[1]))\n"
        "print(json.dumps([k.hex() for k in chunk_keys(fp, json.loads(sys.argv[2]), 64)]))\n"
    )
    fp_json = json.dumps(json.loads(FP.canonical()))
    out = subprocess.run(
        [sys.executable, "-c", code, fp_json, json.dumps(toks)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert json.loads(out.stdout) == [k.hex() for k in chunk_keys(FP, toks, 64)]


def test_token_inputs() -> None:
    torch = pytest.importorskip("torch")
    toks = list(range(20))
    ref = chunk_keys(SMALL, toks, 4)
    assert chunk_keys(SMALL, np.array(toks, np.int64), 4) == ref
    assert chunk_keys(SMALL, torch.tensor([toks]), 4) == ref
    assert token_array([]).size == 0
    with pytest.raises(InvalidArgumentError, match="token ids"):
        chunk_keys(SMALL, [1, -1], 1)
    with pytest.raises(InvalidArgumentError, match="token ids"):
        chunk_keys(SMALL, [2**31], 1)
    with pytest.raises(InvalidArgumentError, match="integers"):
        chunk_keys(SMALL, [1.5], 1)
    with pytest.raises(InvalidArgumentError, match="1-D"):
        chunk_keys(SMALL, [[1, 2], [3, 4]], 1)
    with pytest.raises(InvalidArgumentError, match="chunk_tokens"):
        chunk_keys(SMALL, [1], 0)


def test_fingerprint_validation() -> None:
    with pytest.raises(InvalidArgumentError, match="dtype"):
        ModelFingerprint("m", "float64x", 1, 1, 1)
    with pytest.raises(InvalidArgumentError, match="layers"):
        ModelFingerprint("m", "float16", 0, 1, 1)
    with pytest.raises(InvalidArgumentError, match="tp_rank"):
        ModelFingerprint("m", "float16", 1, 1, 1, tp_size=2, tp_rank=2)
    with pytest.raises(InvalidArgumentError, match="model"):
        ModelFingerprint("", "float16", 1, 1, 1)


def test_from_hf_config() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2)
    fp = ModelFingerprint.from_hf_config(cfg, "float32", model="tiny")
    assert (fp.layers, fp.kv_heads, fp.head_dim) == (2, 2, 16)


def test_keys_and_format_do_not_import_torch() -> None:
    code = (
        "import sys, storecomp, storecomp.kvcache as k\n"
        "fp = k.ModelFingerprint('m', 'float16', 1, 1, 8)\n"
        "k.chunk_keys(fp, list(range(16)), 8); k.ChunkLayout(fp, 8).nbytes\n"
        "assert 'KVCacheStore' in storecomp.__all__\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
