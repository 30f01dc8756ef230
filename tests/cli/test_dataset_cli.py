"""``storecomp dataset``: bad input is a one-line error and exit 1, never a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storecomp.cli import main


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.npy", "missing.npy: No such file or directory"),
        (lambda d: (d / "bad.npy").write_text("hello") and d / "bad.npy", "bad.npy: not a readable .npy file"),
        (lambda d: np.savez(d / "z.npz", a=np.arange(3)) or d / "z.npz", "z.npz: not a .npy file"),
    ],
    ids=["missing", "not-npy", "npz"],
)
def test_write_from_a_bad_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    src = make(tmp_path)  # type: ignore[operator]
    assert main(["dataset", "write", str(tmp_path / "out"), f"x={src}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("storecomp: error: ") and message in err and "Traceback" not in err


def test_write_into_an_impossible_place_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.arange(10))
    (tmp_path / "file").write_text("")
    assert main(["dataset", "write", str(tmp_path / "file" / "ds"), f"x={tmp_path / 'a.npy'}"]) == 1
    assert capsys.readouterr().err.startswith("storecomp: error: ")
