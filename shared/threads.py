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

:func:`calm_openmp` shortens how long OpenMP's idle threads spin after a parallel region, in
processes that answer queries one at a time (the workers).
"""

from __future__ import annotations

import contextlib
import os
import sys
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


# GNU OpenMP (torch's and faiss's libgomp) keeps an idle thread spinning for GOMP_SPINCOUNT
# iterations after each parallel region before it sleeps; the default, 300,000, measured 8-9 ms
# of a core after every single-image ResNet50 forward on the 2-core development machine,
# while the worker writes the answer and the API sends it. 20,000 keeps the forward's own
# speed (the pauses between its layers are shorter) and left 0.1 ms (bench/RESULTS.md, 7).
OPENMP_SPINCOUNT = "20000"


def calm_openmp() -> bool:
    """Set ``GOMP_SPINCOUNT`` for this process and its children unless the user set it or
    ``OMP_WAIT_POLICY``. It must run before torch or faiss is imported (libgomp reads it once,
    when it loads): returns whether it was set in time."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
    return not any(m in sys.modules for m in ("torch", "faiss"))
