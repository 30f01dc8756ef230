"""The sealed-object format and key parsing (storecomp.crypto), property-tested."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from storecomp import crypto
from storecomp.errors import CorruptDataError, WrongKeyError

KEYS = crypto.StaticKeys([("k1", bytes(range(32)))])


@given(st.integers(0, 10 << 20), st.sampled_from([4096, 16384, 65536, 1 << 20]))
@example(2027521, 4096)  # a head guess past the answer once gave -1 (the search overshot and gave up)
def test_plaintext_size_inverts_sealed_size(n: int, seg: int) -> None:
    assert crypto.plaintext_size(crypto.sealed_size(n, seg), seg) == n


def test_plaintext_size_refuses_sizes_no_plaintext_has() -> None:
    seg = 4096
    sealed = {crypto.sealed_size(n, seg) for n in range(0, 3 * seg)}
    for size in range(0, crypto.sealed_size(3 * seg, seg)):
        got = crypto.plaintext_size(size, seg)
        assert (got >= 0) == (size in sealed) and (got < 0 or crypto.sealed_size(got, seg) == size)


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=20_000), st.sampled_from([4096, 8192]), st.binary(min_size=1, max_size=40))
def test_seal_round_trip_and_name_binding(data: bytes, seg: int, name: bytes) -> None:
    sealed = crypto.seal(data, name, KEYS, seg)
    assert len(sealed) == crypto.sealed_size(len(data), seg)
    out = np.empty(len(data), np.uint8)
    assert crypto.unseal_into(sealed, out, name, KEYS, "t") == len(data) and out.tobytes() == data
    with pytest.raises(WrongKeyError):
        crypto.unseal_into(sealed, out, name + b"x", KEYS, "t")


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_flipped_byte_fails_closed(data: st.DataObject) -> None:
    plain = os.urandom(3 * 4096 + 100)
    sealed = crypto.seal(plain, b"obj", KEYS, 4096)
    pos = data.draw(st.integers(0, len(sealed) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = sealed.copy()
    bad[pos] ^= 1 << bit
    out = np.zeros(len(plain), np.uint8)
    with pytest.raises(CorruptDataError):
        crypto.unseal_into(bad, out, b"obj", KEYS, "t")


def test_rewrap_changes_only_the_header_and_moves_to_the_current_key() -> None:
    plain = os.urandom(10_000)
    old = crypto.StaticKeys([("old", bytes(32))])
    sealed = crypto.seal(plain, b"n", old, 4096)
    both = crypto.StaticKeys([("new", bytes([7]) * 32), ("old", bytes(32))])
    head = crypto.rewrap(sealed, b"n", both, "t")
    rewrapped = np.frombuffer(head + sealed[crypto.HEADER_BYTES :].tobytes(), np.uint8)
    only_new = crypto.StaticKeys([("new", bytes([7]) * 32)])
    out = np.empty(len(plain), np.uint8)
    crypto.unseal_into(rewrapped, out, b"n", only_new, "t")
    assert out.tobytes() == plain
    with pytest.raises(WrongKeyError, match="'old'"):
        crypto.unseal_into(sealed, out, b"n", only_new, "t")
