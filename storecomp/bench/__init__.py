"""Benchmarks of storecomp next to the hardware limit, measured in the same run.

Each suite is a module ``storecomp.bench.<name>`` with two functions:

* ``run_suite(ctx: Context) -> dict``: measure, return a JSON-able result;
* ``figures(result) -> list[report.Figure]``: the rows of the final table.

and optionally ``hints(result) -> list[str]`` (bottleneck findings for the
advice). ``storecomp bench`` runs them; benchmarks/ holds scripts that run
one suite with more knobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: The data file the read suite writes (and a later ``--dir`` run reuses).
DATA_FILE_NAME = "storecomp-bench.dat"

#: Suites in the order ``storecomp bench all`` runs them.
SUITES = ("read", "loader", "kvcache", "store")
#: Suites run only when named (``storecomp bench vllm``): they need a separate environment and minutes.
ON_REQUEST = ("vllm",)


@dataclass(frozen=True)
class Context:
    """What every suite is told: where to put data and how long to measure.

    ``size_bytes`` is the data size a suite may write under ``directory``;
    ``duration_s`` the length of one measurement; ``compare`` asks for the
    peer libraries (torch DataLoader, boto3, ...) beside the limit;
    ``io_path`` forces the CUDA destination path (gds, bounce, posix, auto).
    """

    directory: str
    size_bytes: int
    duration_s: float
    repeats: int = 2
    fio: bool = True
    compare: bool = False
    io_path: str = "auto"
    progress: Callable[[str], None] | None = None

    def say(self, message: str) -> None:
        if self.progress is not None:
            self.progress(message)


def fio_info() -> dict[str, str | None]:
    """``{"path": ..., "version": ...}`` of the fio the suites measure the storage limit with (None: not installed)."""
    from . import _fio

    exe = _fio.fio_path()
    return {"path": exe, "version": _fio.fio_version() if exe else None}
