"""Import hygiene: importing storecomp loads the native engine and numpy, nothing heavy."""

from __future__ import annotations

import json

import storecomp
import storecomp.io
from tests.conftest import run_python

HEAVY = ("cupy", "kvikio", "torch")


def test_import_does_not_load_optional_gpu_packages() -> None:
    out = run_python(
        f"""
        import json, sys
        import storecomp, storecomp.io
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_host_reads_do_not_load_optional_gpu_packages(tmp_path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 100)
    out = run_python(
        f"""
        import json, sys
        import numpy as np
        import storecomp.io as scio
        dst = np.zeros(1000, np.uint8)
        assert scio.read_into({str(path)!r}, dst) == 1000
        assert scio.io_path_for(dst) == "posix"
        with scio.StagingPool(8192, 4096, pin=False) as pool:
            pool.acquire().release()
        print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))
        """
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_public_names() -> None:
    assert storecomp.__version__
    for name in storecomp.__all__:
        assert hasattr(storecomp, name), name
    for name in storecomp.io.__all__:
        assert hasattr(storecomp.io, name), name
    assert {"Engine", "File", "IOFuture", "ReadRequest", "StagingPool", "read_into", "read_batch"} <= set(storecomp.io.__all__)


def test_native_extension_is_loaded() -> None:
    from storecomp import _native

    assert isinstance(_native.HAVE_LIBURING, bool)
    assert {_native.MODE_BUFFERED, _native.MODE_DIRECT, _native.MODE_AUTO} == {0, 1, 2}
