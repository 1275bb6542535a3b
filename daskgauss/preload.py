"""Worker preload: ``dask worker --preload daskgauss.preload``.

Pins the thread pools that could oversubscribe a worker's cores (numba, OpenMP,
BLAS: dask's threads are the parallelism, one block per thread) and compiles the
block kernel once per worker process, before the first task arrives, so no task
pays for compilation. The LocalCluster that ``daskgauss render`` starts uses it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Any

import numpy as np

# Set before numba or a BLAS reads them; dask's nanny sets the same for OpenMP/BLAS.
THREAD_LIMITS = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
}
for _name, _value in THREAD_LIMITS.items():
    os.environ.setdefault(_name, _value)


def warm_up() -> None:
    """Compile (or load from numba's cache) what block tasks run: the binning's
    gathering and ordering, and both kernels, for float32 and float64 blocks."""
    import dask

    from . import Grid
    from ._binning import bin_gaussians
    from ._block import render_block
    from ._gaussians import prepare_gaussians

    grid = Grid(shape=4)
    for weights in (None, np.array([1.0, 2.0])):
        gaussians = prepare_gaussians(np.full((2, 3), 1.5), 0.7, weights=weights)
        binning = bin_gaussians(gaussians, grid, ((4,), (4,), (4,)))
        sources = binning.block_sources((0, 0, 0))
        for kernel in ("strips", "narrow"):
            for dtype in (np.float32, np.float64):
                with dask.config.set({"daskgauss.kernel": kernel}):
                    render_block(sources, grid, 1e-6, np.zeros(3, np.int64), (4, 4, 4), dtype)


def dask_setup(worker: Any = None) -> None:
    """Entry point dask calls when the worker starts."""
    from ._cluster import IGNORE_INTERRUPT

    if os.environ.get(IGNORE_INTERRUPT) == "1":
        with contextlib.suppress(ValueError):  # not the main thread: nothing to change
            signal.signal(signal.SIGINT, signal.SIG_IGN)
    warm_up()
