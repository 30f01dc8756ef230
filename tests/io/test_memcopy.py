"""storecomp.io.memcopy: batched strided copies, checked before any byte moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from storecomp import _native
from storecomp.io import memcopy
from tests.conftest import UNDER_TSAN, run_python

CASES = {
    # name: (source tensor maker, view of it), destination is a fresh contiguous tensor of the view's shape
    "contiguous": lambda t: t,
    "transpose": lambda t: t.transpose(0, 1),
    "slice rows": lambda t: t[:, 3:17],
    "heads x tokens": lambda t: t[:, 2:10, :].transpose(0, 1),
    "single row": lambda t: t[1:2, 4:5],
    "empty": lambda t: t[:, 5:5],
}


def _ops_for(dst: torch.Tensor, src: torch.Tensor) -> np.ndarray | None:
    tpl = memcopy.template(tuple(dst.shape), dst.stride(), src.stride(), dst.element_size())
    if tpl is None:
        return None
    return memcopy.instantiate(tpl, 0, dst.storage_offset() * dst.element_size(), 0, src.storage_offset() * src.element_size())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("nontemporal", [None, True, False])
def test_copies_equal_torch_both_ways(case: str, threads: int, nontemporal: bool | None) -> None:
    src_full = torch.randn(6, 24, 40).to(torch.bfloat16)
    view = CASES[case](src_full)
    dst = torch.zeros(view.shape, dtype=view.dtype)
    ops = _ops_for(dst, view)
    assert ops is not None
    memcopy.run(ops, [memcopy.tensor_region(dst)], [memcopy.tensor_region(src_full)], threads=threads, nontemporal=nontemporal)
    assert torch.equal(dst, view)
    # Back into a zeroed copy of the source: exactly the view's elements change.
    back = torch.zeros_like(src_full)
    memcopy.run(memcopy.swapped(ops), [memcopy.tensor_region(back)], [memcopy.tensor_region(dst)], threads=threads)
    expect = torch.zeros_like(src_full)
    CASES[case](expect).copy_(view)
    assert torch.equal(back, expect)


def test_large_batch_streams_over_threads() -> None:
    """Above the streaming threshold (4 MiB) and 1 MiB per thread: 5 threads, unaligned rows."""
    src = torch.randint(0, 255, (96, 1 << 16), dtype=torch.uint8)
    view = src[:, 3:-5]  # rows start at odd addresses: stream stores need a plain head
    dst = torch.empty(view.shape, dtype=torch.uint8)
    ops = _ops_for(dst, view)
    assert ops is not None
    memcopy.run(ops, [memcopy.tensor_region(dst)], [memcopy.tensor_region(src)], threads=5)
    assert torch.equal(dst, view)


def test_callers_on_several_threads_share_the_copy_pool() -> None:
    """Eight threads at once, each asking for 4 copy threads (GIL released): every copy is whole."""
    import threading

    srcs = [torch.randint(0, 255, (64, 1 << 16), dtype=torch.uint8) for _ in range(8)]
    dsts = [torch.empty(s.shape, dtype=torch.uint8) for s in srcs]
    errors: list[BaseException] = []

    def copy(i: int) -> None:
        try:
            for _ in range(3):
                ops = _ops_for(dsts[i], srcs[i])
                assert ops is not None
                memcopy.run(ops, [memcopy.tensor_region(dsts[i])], [memcopy.tensor_region(srcs[i])], threads=4)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=copy, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert all(torch.equal(d, s) for d, s in zip(dsts, srcs, strict=True))


@pytest.mark.skipif(UNDER_TSAN, reason="ThreadSanitizer does not support threads in the child of a threaded fork")
def test_a_forked_child_gets_a_copy_pool_of_its_own() -> None:
    """The parent's copy threads do not exist in a forked child: its multi-threaded copies still finish."""
    run_python(
        """
        import multiprocessing as mp
        import numpy as np
        from storecomp.io import memcopy

        def copy():
            src = np.arange(8 << 20, dtype=np.uint8)
            dst = np.zeros_like(src)
            ops = np.array([[0, 0, 0, 0, 1, 0, 0, 8, 1 << 20, 1 << 20, 1 << 20]], np.int64)
            memcopy.run(ops, [memcopy.array_region(dst, writable=True)], [memcopy.array_region(src)], threads=4)
            assert np.array_equal(dst, src)

        def child(q):
            copy()
            q.put("ok")

        copy()  # the parent's pool starts its workers
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        assert q.get(timeout=60) == "ok"
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        """,
        timeout=120,
    )


def test_template_declines_what_is_not_row_copies() -> None:
    assert memcopy.template((4, 8), (8, 1), (1, 4), 2) is None  # innermost source dimension strided
    many = memcopy.template((2,) * 16 + (3,), tuple(2 ** (17 - i) for i in range(16)) + (1,), (7,) * 16 + (1,), 1)
    assert many is None  # 2**14 ops per block: more than MAX_TEMPLATE_OPS
    tpl = memcopy.template((3, 5), (5, 1), (5, 1), 4)
    assert tpl is not None and len(tpl) == 1 and not tpl.flags.writeable


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({1: 1 << 20}, "destination out of bounds"),
        ({3: 1}, "source out of bounds"),  # the row ends one byte past the source
        ({0: 1}, "no such region"),
        ({2: 5}, "no such region"),
        ({5: -8}, "negative field 5"),
        ({7: 1 << 40, 8: 1 << 40}, "destination out of bounds"),  # (rows - 1) * stride overflows int64
        ({4: 2, 6: 1 << 62}, "source out of bounds"),
        ({4: 1 << 40, 5: 0, 6: 0, 7: 1 << 30, 8: 0, 9: 0}, "the batch moves more than 2\\*\\*63 bytes"),
    ],
)
def test_bad_ops_are_refused_before_any_byte_moves(change: dict[int, int], message: str) -> None:
    src = torch.arange(64, dtype=torch.uint8).reshape(8, 8)
    dst = torch.zeros(8, 8, dtype=torch.uint8)
    ops = _ops_for(dst, src)
    assert ops is not None
    ops = np.concatenate([ops, ops])  # op 0 is good: it must not run either
    for field, value in change.items():
        ops[1, field] = value
    with pytest.raises(ValueError, match=f"copy op 1: {message}"):
        memcopy.run(ops, [memcopy.tensor_region(dst)], [memcopy.tensor_region(src)])
    assert not dst.any()


def test_malformed_arrays_are_refused() -> None:
    region = np.asarray([[0, 0]], dtype=np.int64)
    with pytest.raises(ValueError, match=r"int64 \[n, 11\]"):
        _native.copy_ops(np.zeros((1, 8), dtype=np.int64), region, region)
    with pytest.raises(ValueError, match=r"dst regions must be an int64 \[n, 2\]"):
        _native.copy_ops(np.zeros((0, 11), dtype=np.int64), np.zeros(3, dtype=np.int64), region)
    with pytest.raises(TypeError):
        _native.copy_ops(np.zeros((1, 11)), region, region)  # float ops: refused, never truncated
    with pytest.raises(ValueError, match="negative size"):
        _native.copy_ops(np.zeros((0, 11), dtype=np.int64), np.asarray([[0, -1]]), region)
    with pytest.raises(ValueError, match="C-contiguous"):
        memcopy.array_region(np.zeros((4, 4))[:, 1])
