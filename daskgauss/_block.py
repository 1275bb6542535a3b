"""Render one output block from the Gaussians that reach it.

The glue between the binning (which says what reaches a block) and the kernels (which
add it in): the only place that turns package objects into the kernels' plain arrays.

Which kernel
------------
A block's sources arrive in their summation order (the binning's spatial order).
Two kernels add them, with the same bits for the same order: the strip kernel
(:mod:`._kernel`) for few, wide Gaussians, the narrow kernel (:mod:`._narrow_kernel`)
for many or narrow ones. The choice is per block and only a matter of speed
(``daskgauss.kernel``: ``auto``, ``strips`` or ``narrow``). Gaussians with full
covariances have a kernel of their own (:mod:`._covariance_kernel`).
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

import dask.utils
import numpy as np
from numpy.typing import DTypeLike

from . import _config
from ._binning import BlockSources
from ._covariance_kernel import add_covariance_gaussians_to_block
from ._gaussians import diagonal_rows
from ._grid import Grid
from ._kernel import add_gaussians_to_block, add_level_gaussians_to_block
from ._narrow_kernel import add_narrow_gaussians_to_block, prefer_narrow

__all__ = [
    "KERNELS",
    "BlockFeed",
    "FedBlock",
    "block_source_bytes",
    "choose_kernel",
    "render_block",
    "render_fed_block",
]

KERNELS = ("auto", "strips", "narrow")


def choose_kernel(sources: BlockSources, block_shape: tuple[int, int, int]) -> str:
    """``"strips"`` or ``"narrow"``: the faster kernel for these sources, unless
    ``daskgauss.kernel`` names one."""
    setting = str(_config.get("kernel"))
    if setting not in KERNELS:
        raise ValueError(f"daskgauss.kernel must be one of {KERNELS}, got {setting!r}")
    if setting != "auto":
        return setting
    narrow = prefer_narrow(math.prod(block_shape), sources.index_low, sources.index_high)
    return "narrow" if narrow else "strips"


def render_block(
    sources: BlockSources,
    grid: Grid,
    tol: float,
    block_start: np.ndarray,
    block_shape: tuple[int, int, int],
    dtype: DTypeLike,
    out: np.ndarray | None = None,
    level: int = 0,
) -> np.ndarray:
    """The sum of ``sources`` over one block of ``grid``, or of its pyramid level ``level``.

    Parameters
    ----------
    sources : BlockSources
        The Gaussians whose support reaches the block, in summation order; their index
        boxes are on ``grid`` (level 0).
    grid : Grid
        Level 0's grid.
    tol : float
        The cut, as a fraction of each Gaussian's peak.
    block_start : ndarray, shape (3,), int64
        Global sample index of the block's first voxel (on ``grid.level(level)``).
    block_shape : tuple of 3 ints
    dtype : float32 or float64
    out : ndarray, optional
        A C-contiguous buffer of ``block_shape`` and ``dtype`` to render into
        (overwritten), so that a caller can reuse memory between blocks.
    level : int
        Pyramid level: each voxel the mean of the ``2**level``-cubed level-0 samples
        it covers (the strip kernel with averaged 1D factors). Axis-aligned only.

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
    # A block whose covariances are all diagonal takes the axis-aligned kernels: the
    # same bits as the sigmas they hold (the choice depends on the block's sources
    # only, so it is the same however the centres arrive).
    full_covariance = (sources.covariance is not None
                       and not diagonal_rows(sources.covariance).all())  # fmt: skip
    if level:
        if full_covariance:
            raise ValueError("pyramid levels need Gaussians aligned with the axes")
        add_level_gaussians_to_block(
            out, np.asarray(block_start, dtype=np.int64), np.array(grid.origin),
            np.array(grid.spacing), sources.positions, sources.sigma, sources.amplitude,
            sources.index_low, sources.index_high, np.array(grid.shape, dtype=np.int64),
            2**level, math.log(1.0 / tol), strip_rows(block_shape[2], out.dtype.itemsize), True,
        )  # fmt: skip
        return out
    if full_covariance:
        add_covariance_gaussians_to_block(
            out, np.asarray(block_start, dtype=np.int64), np.array(grid.origin),
            np.array(grid.spacing), sources.positions, sources.covariance, sources.amplitude,
            sources.index_low, sources.index_high, math.log(1.0 / tol), True,
        )  # fmt: skip
        return out
    arguments = (
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
    )
    # overwrite=True: the kernel ignores what ``out`` holds (the strip kernel clears
    # each strip while it is in cache instead of the whole block beforehand).
    if choose_kernel(sources, block_shape) == "narrow":
        add_narrow_gaussians_to_block(*arguments, True)
    else:
        add_gaussians_to_block(*arguments, strip_rows(block_shape[2], out.dtype.itemsize), True)
    return out


# Bytes a gathered source takes while its block renders: position (3 float64) and index
# box (6 int32).
SOURCE_BYTES = 48


def block_source_bytes() -> int:
    """``daskgauss.block-source-bytes`` in bytes; a clear error unless a positive size."""
    return _config.positive("block-source-bytes", dask.utils.parse_bytes,
                            "a positive size such as '32 MiB'")  # fmt: skip


class FedBlock(Protocol):
    """One block and its Gaussians, from wherever they come (see :class:`BlockFeed`)."""

    start: np.ndarray
    shape: tuple[int, int, int]

    @property
    def count(self) -> int: ...

    def sources(
        self, box: tuple[np.ndarray, tuple[int, int, int]] | None = None
    ) -> BlockSources: ...


class BlockFeed(Protocol):
    """Where blocks get their sources: a :class:`._binning.Binning` in memory, or a
    complete exchange in storage (:class:`._exchange.ExchangedSources`)."""

    grid: Grid
    tol: float
    level: int

    def block(self, block_index: tuple[int, int, int]) -> FedBlock: ...


def render_fed_block(
    feed: BlockFeed,
    index: tuple[int, int, int],
    dtype: DTypeLike,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Block ``index`` of the volume ``feed`` has the sources of (into ``out`` if given).

    A block whose sources would take more than ``daskgauss.block-source-bytes`` while
    it renders is rendered in x slabs, each taking only the sources that reach it, so
    that a thread holds about one block plus that much (and, from an exchange, the
    block's rows as read), however its sources arrive: the same bits (the kernels
    compute from global indices, in the summation order), a little more work where a
    support spans two slabs.
    """
    block = feed.block(index)
    start, shape = block.start, block.shape
    budget = block_source_bytes()
    slabs = min(shape[0], max(1, -(-block.count * SOURCE_BYTES // budget)))
    if slabs == 1:
        return render_block(block.sources(), feed.grid, feed.tol, start, shape, dtype, out=out,
                            level=feed.level)  # fmt: skip
    if out is None:
        out = np.empty(shape, dtype=dtype)
    edges = [shape[0] * s // slabs for s in range(slabs + 1)]
    for low, high in itertools.pairwise(edges):
        slab_start = start + np.array([low, 0, 0])
        slab_shape = (high - low, shape[1], shape[2])
        render_block(block.sources((slab_start, slab_shape)), feed.grid, feed.tol, slab_start,
                     slab_shape, dtype, out=out[low:high], level=feed.level)  # fmt: skip
    return out


def strip_rows(length_z: int, itemsize: int) -> int:
    """Rows per kernel strip: as many (1 to 256) as fit the cache budget."""
    budget = dask.utils.parse_bytes(_config.get("kernel-strip-bytes"))
    return max(1, min(256, budget // (length_z * itemsize)))
