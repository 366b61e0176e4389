"""Thread limits for latency-bound numeric work.

A single query is a matrix-vector product: memory-bound, microseconds to milliseconds of
work. OpenBLAS splits it over all its threads anyway, and on a small shared machine (2 cores,
other processes busy) waking and joining the second thread costs far more than it saves: a
1 x 2048 by 2048 x 25,000 product measured about 25x slower with 2 OpenBLAS threads than
with 1 under load (bench/RESULTS.md). Batches of queries are compute-bound and keep every
thread.

:func:`single_thread_blas` limits every loaded BLAS library (numpy's, scipy's, faiss's
OpenBLAS) to one thread for the duration of a ``with`` block, through one
``threadpoolctl.ThreadpoolController`` built once per process (building one scans the
loaded libraries, about a millisecond; switching limits on a built one costs microseconds).
It is not a per-thread setting: threads of the same process that run BLAS at the same time
share the limit, which only ever makes them single-threaded for a moment.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()
_controller: Any = None
_unavailable = False


def _blas_controller() -> Any:
    global _controller, _unavailable
    if _controller is None and not _unavailable:
        with _lock:
            if _controller is None and not _unavailable:
                try:
                    from threadpoolctl import ThreadpoolController

                    ctl = ThreadpoolController().select(user_api="blas")
                    _controller = ctl if len(ctl.lib_controllers) else None
                    _unavailable = _controller is None
                except Exception:  # noqa: BLE001 - limits are an optimisation, never an error
                    _unavailable = True
    return _controller


def refresh() -> None:
    """Forget the cached controller (after importing a library that brings its own BLAS)."""
    global _controller, _unavailable
    with _lock:
        _controller, _unavailable = None, False


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run the block with every BLAS library limited to one thread."""
    ctl = _blas_controller()
    if ctl is None:
        yield
        return
    with ctl.limit(limits=1):
        yield
