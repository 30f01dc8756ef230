"""A :class:`~storecomp.store.base.RangeFuture` over a ``concurrent.futures.Future`` (remote backends)."""

from __future__ import annotations

import concurrent.futures
from typing import Any

import numpy as np

from ..errors import ClosedError


class PendingRanges:
    """Completion of a remote ``submit_ranges``: bytes read per range, or the first failure.

    Holds the destination until the reads are done; dropping it early waits.
    """

    def __init__(self, fut: concurrent.futures.Future[np.ndarray], keepalive: Any) -> None:
        self._fut = fut
        self._keepalive = keepalive

    def done(self) -> bool:
        return self._fut.done()

    def result(self, timeout: float | None = None) -> np.ndarray:
        """Bytes read per range (uint64). Raises TimeoutError after ``timeout`` seconds,
        ClosedError when the store was closed before the read finished, or the failure."""
        try:
            return self._fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"ranged read not finished within {timeout} s") from None
        except concurrent.futures.CancelledError:
            raise ClosedError("ranged read cancelled: its store was closed") from None

    def __del__(self) -> None:
        # Parts may still be copied into the destination: never free it early.
        if not self._fut.done():
            try:
                self._fut.result()
            except BaseException:
                pass


def settle(futures: Any) -> None:
    """Wait for every future of reads already submitted, ignoring their errors: a caller that
    is raising another error lets them land before anyone reuses their destination."""
    for f in futures:
        try:
            f.result()
        except BaseException:  # noqa: BLE001 - the error being raised is the one that counts
            pass


class JoinedRanges:
    """Completion of :meth:`~storecomp.store.base.Store.submit_batch`: the parts' bytes read per
    range, concatenated in order. ``result()`` waits for every part (none may still write into the
    destination) and raises the first failure."""

    def __init__(self, parts: list[Any]) -> None:
        self._parts = parts

    def done(self) -> bool:
        return all(p.done() for p in self._parts)

    def result(self, timeout: float | None = None) -> np.ndarray:
        out, error = [], None
        for p in self._parts:
            try:
                out.append(np.asarray(p.result(timeout), np.uint64))
            except TimeoutError:
                raise
            except BaseException as e:  # noqa: BLE001 - the first failure, raised once all parts are done
                error = error or e
        if error is not None:
            raise error
        return np.concatenate(out) if out else np.zeros(0, np.uint64)
