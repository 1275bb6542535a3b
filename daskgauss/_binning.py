"""Spatial binning: which Gaussians reach which output block, computed once.

The bins are the output blocks. For every Gaussian (and, on a periodic grid, every
periodic image of it that reaches the grid) the inclusive range of global sample
indices its support box covers is computed with vectorised numpy; from that, the
range of blocks it touches; from that, a CSR table block -> sources. The sources
of each block are stored contiguously, so a block's task reads one slice of each
array and nothing else. Cost: O(M x blocks touched per Gaussian), done once.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._gaussians import Gaussians, support_half_width
from ._grid import Grid
from ._job import Chunks

__all__ = ["Binning", "BlockSources", "Chunks", "bin_gaussians", "block_edges"]


@dataclass(frozen=True, eq=False)
class BlockSources:
    """The Gaussians that reach one block, in the order they are summed.

    Attributes
    ----------
    positions, sigma : ndarray, shape (K, 3), float64
    amplitude : ndarray, shape (K,), float64
    index_low, index_high : ndarray, shape (K, 3), int64
        Inclusive global sample index range of each support box, clipped to the grid.
    """

    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    index_low: np.ndarray
    index_high: np.ndarray

    @property
    def count(self) -> int:
        """Number of sources, K."""
        return int(self.amplitude.shape[0])

    @classmethod
    def from_table(cls, rows: np.ndarray) -> BlockSources:
        """The sources of one block from its rows of :meth:`Binning.source_table`."""
        return cls(
            positions=np.ascontiguousarray(rows[:, 0:3]),
            sigma=np.ascontiguousarray(rows[:, 3:6]),
            amplitude=np.ascontiguousarray(rows[:, 6]),
            index_low=rows[:, 7:10].astype(np.int64),
            index_high=rows[:, 10:13].astype(np.int64),
        )


@dataclass(frozen=True, eq=False)
class Binning:
    """Sources grouped by output block (CSR layout, one contiguous run per block).

    Attributes
    ----------
    grid : Grid
    chunks : tuple of three tuples of ints
        Block sizes along each axis, as dask normalises them.
    tol : float
        The cut, as a fraction of each Gaussian's peak.
    block_offsets : ndarray, shape (blocks + 1,), int64
        The sources of the block with flat (C-order) index ``b`` are rows
        ``block_offsets[b]:block_offsets[b + 1]`` of the arrays below.
    positions, sigma, amplitude, index_low, index_high
        Per-row source data, see :class:`BlockSources`.
    """

    grid: Grid
    chunks: Chunks
    tol: float
    block_offsets: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    index_low: np.ndarray
    index_high: np.ndarray

    @property
    def numblocks(self) -> tuple[int, int, int]:
        """Number of blocks along each axis."""
        return tuple(len(c) for c in self.chunks)  # type: ignore[return-value]

    def flat_index(self, block_index: tuple[int, int, int]) -> int:
        """C-order flat index of a block given by its (i, j, k) block coordinates."""
        return int(np.ravel_multi_index(block_index, self.numblocks))

    def block_start(self, block_index: tuple[int, int, int]) -> np.ndarray:
        """Global sample index of the block's first voxel, shape (3,), int64."""
        return np.array([sum(self.chunks[d][: block_index[d]]) for d in range(3)], dtype=np.int64)

    def block_shape(self, block_index: tuple[int, int, int]) -> tuple[int, int, int]:
        """Shape of the block."""
        return tuple(self.chunks[d][block_index[d]] for d in range(3))  # type: ignore[return-value]

    def block_count(self, block_index: tuple[int, int, int]) -> int:
        """Number of sources that reach the block."""
        flat = self.flat_index(block_index)
        return int(self.block_offsets[flat + 1] - self.block_offsets[flat])

    def block_sources(self, block_index: tuple[int, int, int]) -> BlockSources:
        """The sources that reach the block (views, no copies)."""
        flat = self.flat_index(block_index)
        rows = slice(int(self.block_offsets[flat]), int(self.block_offsets[flat + 1]))
        return BlockSources(
            positions=self.positions[rows],
            sigma=self.sigma[rows],
            amplitude=self.amplitude[rows],
            index_low=self.index_low[rows],
            index_high=self.index_high[rows],
        )

    def source_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The table as two plain arrays, for storing: ``(block_offsets, rows)``.

        ``rows`` (float64, shape (sources, 13)) holds x, y, z, sigma x, y, z,
        amplitude, then the sample index ranges low x, y, z, high x, y, z (integers,
        exact in float64); block ``b`` owns rows ``block_offsets[b]:block_offsets[b+1]``.
        :meth:`BlockSources.from_table` reads a block's rows back.
        """
        rows = np.concatenate(
            [self.positions, self.sigma, self.amplitude[:, None], self.index_low,
             self.index_high], axis=1,
        )  # fmt: skip
        return self.block_offsets, rows

    @property
    def nbytes(self) -> int:
        """Memory held by the table, in bytes."""
        arrays = (self.block_offsets, self.positions, self.sigma, self.amplitude)
        return sum(a.nbytes for a in (*arrays, self.index_low, self.index_high))


def block_edges(chunks: Chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global sample index where each block starts, plus the end, along each axis."""
    return tuple(np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks)  # type: ignore[return-value]


def _check_fits_period(radius: np.ndarray, grid: Grid) -> None:
    """Refuse supports wider than the periodic box: they would overlap their own images."""
    period = np.array(grid.period)
    too_wide = np.any(2 * radius > period, axis=1)
    if np.any(too_wide):
        first = int(np.argmax(too_wide))
        raise ValueError(
            "periodic=True needs every support box (2 sigma sqrt(2 ln(1/tol)) wide) to fit in "
            f"the periodic box {tuple(float(v) for v in period)}; centre {first} has support "
            f"width {tuple(round(float(v), 6) for v in 2 * radius[first])}. Use a larger grid, "
            "a smaller sigma or a larger tol."
        )


def _periodic_images(
    positions: np.ndarray, sigma: np.ndarray, amplitude: np.ndarray, radius: np.ndarray, grid: Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Wrap centres into the periodic box and add the images that reach the grid.

    Images are appended axis by axis, so the order of sources (and with it each
    voxel's summation order) depends only on the input, never on the chunking.
    """
    period = np.array(grid.period)
    origin = np.array(grid.origin)
    spacing = np.array(grid.spacing)
    positions = origin + np.mod(positions - origin, period)
    for d in range(3):
        # An image one period up reaches the grid when the original pokes out below
        # the first sample; one period down when it pokes out past the box end. The
        # half-spacing slack keeps this a superset; the index ranges decide exactly.
        up = positions[:, d] - radius[:, d] <= origin[d] - spacing[d] / 2
        down = positions[:, d] + radius[:, d] >= origin[d] + period[d] - spacing[d] / 2
        shifted_up = positions[up].copy()
        shifted_up[:, d] += period[d]
        shifted_down = positions[down].copy()
        shifted_down[:, d] -= period[d]
        positions = np.concatenate([positions, shifted_up, shifted_down])
        sigma = np.concatenate([sigma, sigma[up], sigma[down]])
        amplitude = np.concatenate([amplitude, amplitude[up], amplitude[down]])
        radius = np.concatenate([radius, radius[up], radius[down]])
    return positions, sigma, amplitude


def _index_boxes(
    positions: np.ndarray, radius: np.ndarray, grid: Grid
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive global sample index range of each support box, clipped to the grid.

    A box that misses the grid on some axis comes out empty there (low > high).
    Written as in-place steps: at M = 1000 numpy's per-call cost, not arithmetic,
    is most of the time.
    """
    # The same value on every axis (a cubic grid) broadcasts as a scalar, which
    # numpy does several times faster than a (3,) row; the results are identical.
    origin = _per_axis(grid.origin)
    spacing = _per_axis(grid.spacing)
    last_sample = _per_axis(grid.shape) - 1
    with np.errstate(over="ignore"):  # centres near the float limits clip below
        low = positions - radius
        low -= origin
        low /= spacing
        np.ceil(low, out=low)
        high = positions + radius
        high -= origin
        high /= spacing
        np.floor(high, out=high)
    # Clip in float first: a centre far outside the grid must not overflow int64.
    np.maximum(low, 0, out=low)
    np.minimum(low, last_sample + 1, out=low)
    np.maximum(high, -1, out=high)
    np.minimum(high, last_sample, out=high)
    return low.astype(np.int64), high.astype(np.int64)


def _per_axis(values: tuple) -> np.ndarray:
    """``values`` as an array of three, or as one scalar where all three are equal."""
    return np.asarray(values[0] if values[0] == values[1] == values[2] else values)


@functools.lru_cache(maxsize=32)
def _block_starts(chunks: Chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every block's first sample, all three axes in one sorted array.

    Axis ``d`` is shifted up by the samples of the axes before it, so one
    ``searchsorted`` finds the block of any sample on any axis: it returns the
    blocks of the earlier axes, plus the sample's block index on its own axis,
    plus one. Returns the starts, each axis's shift, and that count to subtract.
    """
    edges = block_edges(chunks)
    shift = np.cumsum([0, edges[0][-1], edges[1][-1]])
    starts = np.concatenate([edges[d][:-1] + shift[d] for d in range(3)])
    before = np.cumsum([1, len(chunks[0]), len(chunks[1])])
    for array in (starts, shift, before):
        array.setflags(write=False)
    return starts, shift, before


def _block_boxes(
    index_low: np.ndarray, index_high: np.ndarray, chunks: Chunks
) -> tuple[np.ndarray, np.ndarray]:
    """First and last block index, per axis, of each (non-empty) sample index box."""
    starts, shift, before = _block_starts(chunks)
    both = np.concatenate((index_low, index_high))
    both += shift
    blocks = np.searchsorted(starts, both, side="right")
    blocks -= before
    return blocks[: len(index_low)], blocks[len(index_low) :]


def bin_gaussians(
    gaussians: Gaussians, grid: Grid, chunks: Chunks, *, periodic: bool = False
) -> Binning:
    """Group the Gaussians by the output blocks their support boxes reach.

    Parameters
    ----------
    gaussians : Gaussians
    grid : Grid
    chunks : tuple of three tuples of ints
        Block sizes along each axis (dask's normalised chunks for ``grid.shape``).
    periodic : bool
        Treat the grid as one tile of a periodic box (see ``gaussian_sum``).

    Returns
    -------
    Binning
    """
    positions = gaussians.positions
    sigma = gaussians.sigma
    amplitude = gaussians.amplitude
    nonzero = amplitude != 0
    if not nonzero.all():
        positions, sigma, amplitude = positions[nonzero], sigma[nonzero], amplitude[nonzero]
    half_width = support_half_width(gaussians.tol)
    if periodic:
        _check_fits_period(gaussians.radius, grid)
        positions, sigma, amplitude = _periodic_images(
            positions, sigma, amplitude, sigma * half_width, grid
        )
    radius = sigma * half_width

    index_low, index_high = _index_boxes(positions, radius, grid)
    reaches = (index_low <= index_high).all(axis=1)
    if not reaches.all():
        positions, sigma, amplitude = positions[reaches], sigma[reaches], amplitude[reaches]
        index_low, index_high = index_low[reaches], index_high[reaches]

    first_block, last_block = _block_boxes(index_low, index_high, chunks)
    numblocks = tuple(len(c) for c in chunks)
    extent = last_block - first_block + 1
    pairs_per_source = extent[:, 0] * extent[:, 1] * extent[:, 2]
    count = len(amplitude)
    total = int(pairs_per_source.sum())

    if total == count:
        # Every source reaches one block (blocks much wider than the supports).
        source = np.arange(count)
        block_x, block_y, block_z = first_block.T
    else:
        # Expand every source into the (source, block) pairs of its block box, in
        # source order.
        source = np.repeat(np.arange(count), pairs_per_source)
        local = np.arange(total) - np.repeat(
            np.cumsum(pairs_per_source) - pairs_per_source, pairs_per_source
        )
        extent_y = extent[:, 1].take(source)
        extent_z = extent[:, 2].take(source)
        block_x = first_block[:, 0].take(source) + local // (extent_y * extent_z)
        block_y = first_block[:, 1].take(source) + (local // extent_z) % extent_y
        block_z = first_block[:, 2].take(source) + local % extent_z
    flat = (block_x * numblocks[1] + block_y) * numblocks[2] + block_z
    # A stable sort by block keeps each block's sources ascending.
    rows = source.take(np.argsort(flat, kind="stable"))
    block_offsets = np.zeros(numblocks[0] * numblocks[1] * numblocks[2] + 1, dtype=np.int64)
    np.cumsum(np.bincount(flat, minlength=len(block_offsets) - 1), out=block_offsets[1:])

    return Binning(
        grid=grid,
        chunks=chunks,
        tol=gaussians.tol,
        block_offsets=block_offsets,
        # take, not fancy indexing: three times faster on (M, 3) rows.
        positions=positions.take(rows, axis=0),
        sigma=sigma.take(rows, axis=0),
        amplitude=amplitude.take(rows),
        index_low=index_low.take(rows, axis=0),
        index_high=index_high.take(rows, axis=0),
    )
