"""Render one output block from the Gaussians that reach it.

The glue between the binning (which says what reaches a block) and the kernel (which
adds it in): the only place that turns package objects into the kernel's plain arrays.
"""

from __future__ import annotations

import math

import dask.utils
import numpy as np
from numpy.typing import DTypeLike

from . import _config
from ._binning import BlockSources
from ._grid import Grid
from ._kernel import add_gaussians_to_block

__all__ = ["render_block"]


def render_block(
    sources: BlockSources,
    grid: Grid,
    tol: float,
    block_start: np.ndarray,
    block_shape: tuple[int, int, int],
    dtype: DTypeLike,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The sum of ``sources`` over one block of ``grid``.

    Parameters
    ----------
    sources : BlockSources
        The Gaussians whose support reaches the block, in summation order.
    grid : Grid
    tol : float
        The cut, as a fraction of each Gaussian's peak.
    block_start : ndarray, shape (3,), int64
        Global sample index of the block's first voxel.
    block_shape : tuple of 3 ints
    dtype : float32 or float64
    out : ndarray, optional
        A C-contiguous buffer of ``block_shape`` and ``dtype`` to render into
        (overwritten), so that a caller can reuse memory between blocks.

    Returns
    -------
    ndarray, shape ``block_shape``
    """
    if not sources.count:
        if out is None:
            return np.zeros(block_shape, dtype=dtype)
        out.fill(0)
        return out
    if out is None:
        out = np.empty(block_shape, dtype=dtype)
    # overwrite: the kernel clears each strip while it is in cache, not the
    # whole block beforehand (one pass over memory instead of two).
    add_gaussians_to_block(
        out,
        np.asarray(block_start, dtype=np.int64),
        np.array(grid.origin),
        np.array(grid.spacing),
        sources.positions,
        sources.sigma,
        sources.amplitude,
        sources.index_low,
        sources.index_high,
        math.log(1.0 / tol),
        strip_rows(block_shape[2], out.dtype.itemsize),
        True,
    )
    return out


def strip_rows(length_z: int, itemsize: int) -> int:
    """Rows per kernel strip: as many (1 to 256) as fit the cache budget."""
    budget = dask.utils.parse_bytes(_config.get("kernel-strip-bytes"))
    return max(1, min(256, budget // (length_z * itemsize)))
