"""A missing optional package: the feature that needs it says, in one line, what to install.

Each case runs in a fresh interpreter where the package is made unimportable
(``sys.modules[name] = None``, which is what Python itself does for a module
that failed to import), then uses the feature as a user would: through the
CLI or the public API. Never a traceback, always the exact ``pip install``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from storecomp.errors import MissingPackageError, StorecompError, UnavailableError
from storecomp.optional import INSTALL, install_hint, require


def _run_without(packages: tuple[str, ...], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python in which ``packages`` cannot be imported."""
    prelude = "import sys\n" + "".join(f"sys.modules[{p!r}] = None\n" for p in packages)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _cli_without(packages: tuple[str, ...], args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return _run_without(packages, f"from storecomp.cli import main\nsys.exit(main({args!r}))\n", cwd)


def _assert_one_line_hint(proc: subprocess.CompletedProcess[str], package: str) -> None:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("storecomp: error: "), proc.stderr
    assert f"pip install '{INSTALL[package][0]}'" in lines[0], lines[0]


def test_require_returns_the_module_and_names_the_install_otherwise() -> None:
    assert require("json", "parsing") is json
    with pytest.raises(MissingPackageError) as info:
        require("storecomp_no_such_package_xyz", "a test feature")
    e = info.value
    assert isinstance(e, ImportError) and isinstance(e, UnavailableError) and isinstance(e, StorecompError)
    assert str(e) == "a test feature needs storecomp_no_such_package_xyz: pip install 'storecomp_no_such_package_xyz'"
    assert install_hint("zarr.storage") == "pip install 'zarr' (or pip install 'storecomp[formats]')"


def test_every_optional_package_is_declared_in_an_extra() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, (dist, extra) in INSTALL.items():
        assert extra in extras, (module, extra)
        names = {req.split(">")[0].split("=")[0].split("[")[0].strip().lower() for req in extras[extra]}
        if extra == "test":
            assert dist.lower() in names, (module, dist)
        else:
            assert dist.lower() in names or any(r.startswith("storecomp[") for r in extras[extra]), (module, extra)


def test_transformers_missing_integration_and_ttft_case(tmp_path: Path) -> None:
    proc = _run_without(("transformers",), "import storecomp.integrations.transformers\n", tmp_path)
    assert proc.returncode == 1 and "Traceback" in proc.stderr  # an import in user code raises, as imports do
    assert "MissingPackageError: storecomp.integrations.transformers needs transformers: pip install 'transformers'" in (
        proc.stderr
    )
    code = """
        from storecomp.bench import kvcache
        from storecomp.bench.report import table
        try:
            kvcache.bench_ttft(32, 1)
        except Exception as e:
            print(type(e).__name__, e)
    """
    proc = _run_without(("transformers",), code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingPackageError the kvcache TTFT case") and "pip install 'transformers'" in proc.stdout


def test_ttft_skip_is_a_reported_row_not_a_crash() -> None:
    from storecomp.bench import kvcache
    from storecomp.bench.report import table

    result = {
        "loadavg_start": (0.5, 0.5, 0.5),
        "cpu_count": 2,
        "host": {"chunks_per_round": 1, "gbps": dict.fromkeys(("store", "retrieve", "store_hf", "retrieve_hf", "memcpy"), 1.0)},
        "disk": {"chunks_per_round": 1, "gbps": {"store": 1.0, "retrieve": 1.0, "fio_write": 0, "fio_read": 0},
                 "fio_skipped": "fio disabled (--no-fio)"},
        "lookup": {"tokens": 32768, "ms": {"numpy": 0.2, "list": 1.0, "tensor": 0.3}},
        "rebuild": {"chunks": 200, "seconds": 0.01},
        "ttft": {"skipped": "the kvcache TTFT case needs transformers: pip install 'transformers'"},
    }  # fmt: skip
    rows = kvcache.figures(result)
    assert rows[-1].case == "ttft_90pct_hit" and np.isnan(rows[-1].value)
    assert "kvcache/ttft_90pct_hit: skipped: the kvcache TTFT case needs transformers: pip install 'transformers'" in (
        table(rows)
    )


def test_matplotlib_missing_plot_is_refused_before_measuring(tmp_path: Path) -> None:
    args = ["bench", "read", "--size", "1M", "--duration", "0.01", "--no-fio", "--plot", str(tmp_path / "p.png")]
    proc = _cli_without(("matplotlib",), args, tmp_path)
    _assert_one_line_hint(proc, "matplotlib")
    assert "--plot needs matplotlib" in proc.stderr


def test_rich_missing_progress_falls_back_to_plain_lines(tmp_path: Path) -> None:
    code = """
        import io
        from storecomp.cli import bench
        class Tty(io.StringIO):
            def isatty(self): return True
        sys.stderr = Tty()
        p = bench._Progress()
        p("suite read")
        p.close()
        out = sys.stderr.getvalue()
        sys.stderr = sys.__stderr__
        print(repr(out))
    """
    proc = _run_without(("rich", "rich.console"), code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "suite read" in proc.stdout


def test_tqdm_missing_progress_bar_says_what_to_install(tmp_path: Path) -> None:
    from storecomp.data import write_dataset

    write_dataset(str(tmp_path / "ds"), {"x": np.arange(64, dtype=np.int64).reshape(16, 4)})
    code = f"""
        from storecomp.data import DataLoader
        try:
            for _ in DataLoader({str(tmp_path / "ds")!r}, 4, progress=True):
                pass
        except Exception as e:
            print(type(e).__name__, e)
    """
    proc = _run_without(("tqdm",), code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip()
        == "MissingPackageError DataLoader(progress=True) needs tqdm: pip install 'tqdm' (or pip install 'storecomp[bench]')"
    )


def test_obstore_missing_s3_url_says_what_to_install(tmp_path: Path) -> None:
    proc = _cli_without(("obstore", "obstore.store"), ["ls", "s3://bucket/prefix"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install obstore" in proc.stderr


def test_s3fs_missing_peer_is_skipped_with_a_reason(tmp_path: Path) -> None:
    code = """
        from storecomp.bench._store_s3 import load_peers
        ok, skipped = load_peers(("boto3", "s3fs"))
        print(ok, skipped["s3fs"])
    """
    proc = _run_without(("s3fs",), code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("['boto3'] s3fs not installed") and "pip install s3fs" in proc.stdout


@pytest.mark.parametrize(
    ("package", "fmt"),
    [("pyarrow", "parquet"), ("zarr", "zarr"), ("safetensors", "safetensors")],
)
def test_format_package_missing_convert_says_what_to_install(tmp_path: Path, package: str, fmt: str) -> None:
    src = tmp_path / f"src.{fmt}"
    if fmt == "zarr":
        src.mkdir()
    else:
        src.write_bytes(b"not really data")
    proc = _cli_without((package,), ["dataset", "convert", "--from", fmt, str(src), str(tmp_path / "out")], tmp_path)
    _assert_one_line_hint(proc, package)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_zarr_missing_open_dataset_says_what_to_install(tmp_path: Path) -> None:
    import zarr

    arr = zarr.create_array(str(tmp_path / "z.zarr"), shape=(8, 4), chunks=(2, 4), dtype="f4", compressors=None)
    arr[:] = np.ones((8, 4), np.float32)
    proc = _cli_without(("zarr",), ["dataset", "inspect", str(tmp_path / "z.zarr")], tmp_path)
    _assert_one_line_hint(proc, "zarr")
