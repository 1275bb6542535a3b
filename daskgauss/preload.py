"""Worker preload: ``dask worker --preload daskgauss.preload``.

Pins the thread pools that could oversubscribe a worker's cores (numba, OpenMP,
BLAS: dask's threads are the parallelism, one block per thread) and compiles the
block kernel once per worker process, before the first task arrives, so no task
pays for compilation. The LocalCluster that ``daskgauss render`` starts uses it too.
"""

from __future__ import annotations

import os
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
    """Compile (or load from numba's cache) the kernel for float32 and float64 blocks."""
    from ._kernel import add_gaussians_to_block

    one = np.ones((1, 3))
    for dtype in (np.float32, np.float64):
        add_gaussians_to_block(
            np.zeros((2, 2, 2), dtype=dtype),
            np.zeros(3, dtype=np.int64),
            np.zeros(3),
            np.ones(3),
            np.zeros((1, 3)),
            one,
            np.ones(1),
            np.zeros((1, 3), dtype=np.int64),
            np.ones((1, 3), dtype=np.int64),
            13.8,
            16,
            True,
        )


def dask_setup(worker: Any = None) -> None:
    """Entry point dask calls when the worker starts."""
    warm_up()
