"""Spatial binning: which Gaussians reach which output block, computed once.

The bins are the output blocks. For every Gaussian (and, on a periodic grid, every
periodic image of it that reaches the grid) the inclusive range of global sample
indices its support box covers gives the range of blocks it touches; a counting sort
turns those (Gaussian, block) pairs into a CSR table block -> Gaussian indices. Two
passes over the Gaussians in numba, no comparison sort, no per-Gaussian Python:
O(M x blocks touched per Gaussian).

Summation order
---------------
Each block's run is then put in spatial order (:func:`spatial_order`): by a global bin
of the Gaussian's centre (``BIN_SHAPE`` samples, aligned to sample 0), ties by
Gaussian index (and image). The kernels add a block's sources in this order, so
consecutive Gaussians touch the same cache lines, and each voxel sums its Gaussians
in an order fixed by the Gaussians and the grid alone: the bits do not depend on the
chunking (any two Gaussians compare the same in every block that holds both).

Nothing that is cheap to recompute is stored: the table holds one Gaussian index per
pair (int32 while M allows), plus a periodic image code per pair on periodic grids,
and shares the Gaussians' own arrays; a block's positions, sigmas, amplitudes and
sample index ranges are gathered when the block is rendered.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from ._gaussians import Gaussians, support_half_width
from ._grid import Grid
from ._job import Chunks

__all__ = [
    "BIN_SHAPE",
    "COVARIANCE_TABLE_COLUMNS",
    "Binning",
    "BlockSources",
    "Chunks",
    "bin_gaussians",
    "block_edges",
    "index_boxes",
    "pair_arguments",
    "spatial_order",
]

# Columns of a source table row (see Binning.table_rows), and with covariances.
TABLE_COLUMNS = 7
COVARIANCE_TABLE_COLUMNS = TABLE_COLUMNS + 6
# Samples per spatial-order bin along x, y, z (z is contiguous in memory); bin shapes
# from 2 x 2 x 16 to 16 x 4 x 4 measured the same.
BIN_SHAPE = (4, 4, 16)


@dataclass(frozen=True, eq=False)
class BlockSources:
    """The Gaussians that reach one block, in the order they are summed.

    Attributes
    ----------
    positions : ndarray, shape (K, 3), float64
    sigma : ndarray, shape (K, 3), or (1, 3) shared by all, float64
    amplitude : ndarray, shape (K,), or (1,) shared by all, float64
    index_low, index_high : ndarray, shape (K, 3), int64
        Inclusive global sample index range of each support box, clipped to the grid.
    covariance : ndarray, shape (K, 6), or (1, 6) shared by all, float64, or None
        Full covariances (rows ``xx, xy, xz, yy, yz, zz``); None for axis-aligned
        Gaussians. ``sigma`` then holds the square roots of their diagonals.
    """

    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    index_low: np.ndarray
    index_high: np.ndarray
    covariance: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of sources, K."""
        return int(self.positions.shape[0])

    @classmethod
    def from_table(cls, rows: np.ndarray, grid: Grid, tol: float) -> BlockSources:
        """The sources of one block from its rows of :meth:`Binning.table_rows`."""
        positions = np.ascontiguousarray(rows[:, 0:3])
        sigma = np.ascontiguousarray(rows[:, 3:6])
        covariance = None
        if rows.shape[1] == COVARIANCE_TABLE_COLUMNS:
            covariance = np.ascontiguousarray(rows[:, TABLE_COLUMNS:])
        index_low, index_high = index_boxes(positions, sigma, grid, tol)
        return cls(positions, sigma, np.ascontiguousarray(rows[:, 6]), index_low, index_high,
                   covariance)  # fmt: skip


@numba.njit(nogil=True, cache=True, inline="always")
def _index_range(position, radius, origin, spacing, last):
    """Inclusive sample index range of ``[position - radius, position + radius]`` on one
    axis, clipped to ``[0, last]``; empty (low > high) where it misses the axis.

    Clipped in floating point first: a centre far outside must not overflow an int.
    """
    low = np.ceil(((position - radius) - origin) / spacing)
    high = np.floor(((position + radius) - origin) / spacing)
    low = min(max(low, 0.0), last + 1.0)
    high = min(max(high, -1.0), last)
    return np.int64(low), np.int64(high)


@numba.njit(nogil=True, cache=True)
def _index_boxes(positions, sigma, half_width, origin, spacing, shape):
    count = positions.shape[0]
    low = np.empty((count, 3), np.int64)
    high = np.empty((count, 3), np.int64)
    sigma_step = 1 if sigma.shape[0] > 1 else 0  # one row shared by all, or one per source
    for c in range(count):
        for d in range(3):
            radius = sigma[c * sigma_step, d] * half_width
            low[c, d], high[c, d] = _index_range(positions[c, d], radius, origin[d], spacing[d],
                                                 shape[d] - 1.0)  # fmt: skip
    return low, high


def index_boxes(
    positions: np.ndarray, sigma: np.ndarray, grid: Grid, tol: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive global sample index ranges of support boxes, clipped to the grid.

    Parameters
    ----------
    positions, sigma : ndarray, shape (K, 3), float64
    grid : Grid
    tol : float

    Returns
    -------
    index_low, index_high : ndarray, shape (K, 3), int64
        Empty on an axis (low > high) where the box misses the grid there.
    """
    return _index_boxes(positions, sigma, support_half_width(tol), np.array(grid.origin),
                        np.array(grid.spacing), np.array(grid.shape, np.float64))  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _pairs(positions, sigma, amplitude, half_width, margin, origin, spacing, shape, period,
           periodic, block_of_sample, numblocks, bin_shape, fill, cursor, rows, images,
           keys):  # fmt: skip
    """Count (``fill`` false) or write (``fill`` true) every (Gaussian, block) pair.

    Each support reaches ``margin[d]`` further than ``sigma half_width`` on axis ``d``
    (zero at level 0; on a pyramid level, the half-width of the level-0 samples one
    level sample averages).

    Counting adds pair counts at ``cursor[b + 1]``; filling writes, at ``cursor[b]``
    (then advanced), the Gaussian's index, its image code and its spatial key (the
    global bin of :func:`spatial_order`, packed in C order). Gaussians are visited in
    index order and each one's images in a fixed order, so each block's run comes
    out in that order (a stable counting sort). Image code ``9 (sx+1) + 3 (sy+1) +
    (sz+1)`` is the image's shift in periods on each axis (13: none).
    """
    count = positions.shape[0]
    shared_sigma = sigma.shape[0] == 1
    shared_amplitude = amplitude.shape[0] == 1
    # Per axis, up to three options (no image, one period up, one period down): the
    # index range and the shift in periods of each.
    low = np.empty((3, 3), np.int64)
    high = np.empty((3, 3), np.int64)
    shift = np.zeros((3, 3), np.int64)
    spatial = np.empty((3, 3), np.int64)
    options = np.empty(3, np.int64)
    bins = np.empty(3, np.int64)
    for d in range(3):
        bins[d] = (np.int64(shape[d]) + bin_shape[d] - 1) // bin_shape[d]
    for c in range(count):
        if amplitude[0 if shared_amplitude else c] == 0.0:
            continue
        row = 0 if shared_sigma else c
        for d in range(3):
            radius = sigma[row, d] * half_width + margin[d]
            last = shape[d] - 1.0
            low[d, 0], high[d, 0] = _index_range(positions[c, d], radius, origin[d],
                                                 spacing[d], last)  # fmt: skip
            options[d] = 1
            if not periodic:
                continue
            # An image one period up can reach the grid when the support pokes out below
            # the first sample, one period down when it pokes out past the box end. The
            # half-spacing slack keeps this a superset; the index ranges decide exactly.
            if positions[c, d] - radius <= origin[d] - spacing[d] / 2:
                option = options[d]
                low[d, option], high[d, option] = _index_range(
                    positions[c, d] + period[d], radius, origin[d], spacing[d], last)  # fmt: skip
                shift[d, option] = 1
                options[d] += 1
            if positions[c, d] + radius >= origin[d] + period[d] - spacing[d] / 2:
                option = options[d]
                low[d, option], high[d, option] = _index_range(
                    positions[c, d] - period[d], radius, origin[d], spacing[d], last)  # fmt: skip
                shift[d, option] = -1
                options[d] += 1
        for ox in range(options[0]):
            if low[0, ox] > high[0, ox]:
                continue
            for oy in range(options[1]):
                if low[1, oy] > high[1, oy]:
                    continue
                for oz in range(options[2]):
                    if low[2, oz] > high[2, oz]:
                        continue
                    code = 9 * (shift[0, ox] + 1) + 3 * (shift[1, oy] + 1) + shift[2, oz] + 1
                    if fill:
                        for d, option in ((0, ox), (1, oy), (2, oz)):
                            spatial[d, option] = _spatial_bin(
                                positions[c, d] + shift[d, option] * period[d], low[d, option],
                                high[d, option], origin[d], spacing[d], bin_shape[d])  # fmt: skip
                        key = (spatial[0, ox] * bins[1] + spatial[1, oy]) * bins[2] + spatial[2, oz]
                    first_x = block_of_sample[0][low[0, ox]]
                    first_y = block_of_sample[1][low[1, oy]]
                    first_z = block_of_sample[2][low[2, oz]]
                    for bx in range(first_x, block_of_sample[0][high[0, ox]] + 1):
                        for by in range(first_y, block_of_sample[1][high[1, oy]] + 1):
                            for bz in range(first_z, block_of_sample[2][high[2, oz]] + 1):
                                flat = (bx * numblocks[1] + by) * numblocks[2] + bz
                                if fill:
                                    at = cursor[flat]
                                    rows[at] = c
                                    keys[at] = key
                                    if periodic:
                                        images[at] = code
                                    cursor[flat] = at + 1
                                else:
                                    cursor[flat + 1] += 1


@numba.njit(nogil=True, cache=True, inline="always")
def _spatial_bin(position, low, high, origin, spacing, bin_side):
    """On one axis, the global bin (``bin_side`` samples, aligned to sample 0) of the
    sample nearest ``position``, clipped into the support's index range [low, high]."""
    nearest = np.floor((position - origin) / spacing + 0.5)
    # Clipped in float first: a centre far outside must not overflow int64.
    nearest = min(max(nearest, np.float64(low)), np.float64(high))
    return np.int64(nearest) // bin_side


@numba.njit(nogil=True, cache=True)
def _stable_ranks(keys):
    """Where each key goes when ``keys`` (integers) are sorted stably: a counting sort over
    the range the keys span, O(K), walking the keys in order (the bucket cursors stay
    in cache); where that range is far larger than K, a stable merge sort."""
    count = keys.shape[0]
    ranks = np.empty(count, np.int64)
    if count == 0:
        return ranks
    low = np.int64(keys.min())
    span = np.int64(keys.max()) - low + 1
    if span > 4 * count + 65536:
        order = np.argsort(keys, kind="mergesort")
        for j in range(count):
            ranks[order[j]] = j
        return ranks
    fill = np.zeros(span + 1, np.int64)
    for c in range(count):
        fill[keys[c] - low + 1] += 1
    for b in range(span):
        fill[b + 1] += fill[b]
    for c in range(count):
        key = keys[c] - low
        ranks[c] = fill[key]
        fill[key] += 1
    return ranks


@numba.njit(nogil=True, cache=True)
def spatial_order(
    positions: np.ndarray,
    origin: np.ndarray,
    spacing: np.ndarray,
    index_low: np.ndarray,
    index_high: np.ndarray,
    bin_shape: np.ndarray,
) -> np.ndarray:
    """A stable permutation of the sources into a spatially local order: the summation order.

    Source ``c``'s bin is the global bin (``bin_shape`` samples along x, y, z,
    aligned to global sample 0) of the grid sample nearest its centre, clipped
    into its support box ``[index_low[c], index_high[c]]``; the sources are
    ordered by bin (bins in C order: x, then y, then z), ties in the given order.
    The bin depends on the Gaussian and the global grid only, so the order of any
    two sources is the same in every block that holds both, whatever the
    chunking: render every block's sources in this order (with either kernel) and
    the output bits do not depend on the chunking. :func:`bin_gaussians` puts each
    block's sources in this order.

    Returns
    -------
    ndarray, shape (K,), int64
        ``order``: render source ``order[0]`` first, then ``order[1]``, ...
    """
    count = positions.shape[0]
    bins = np.empty((count, 3), np.int64)
    for c in range(count):
        for d in range(3):
            bins[c, d] = _spatial_bin(positions[c, d], index_low[c, d], index_high[c, d],
                                      origin[d], spacing[d], bin_shape[d])  # fmt: skip
    # Bins packed in C order over the range they span (an order-preserving key).
    keys = np.empty(count, np.int64)
    if count:
        low = bins[0].copy()
        high = bins[0].copy()
        for c in range(count):
            for d in range(3):
                low[d] = min(low[d], bins[c, d])
                high[d] = max(high[d], bins[c, d])
        extent = high - low + 1
        for c in range(count):
            along_xy = (bins[c, 0] - low[0]) * extent[1] + bins[c, 1] - low[1]
            keys[c] = along_xy * extent[2] + bins[c, 2] - low[2]
    order = np.empty(count, np.int64)
    order[_stable_ranks(keys)] = np.arange(count)
    return order


@numba.njit(nogil=True, cache=True)
def _ordered_sources(block_offsets, rows, images, keys, positions, sigma, covariance, amplitude,
                     period, periodic, keep_keys):  # fmt: skip
    """Every pair's position (images shifted), sigma, covariance and amplitude, each
    block's run in the stable order of its ``keys``; sigma, covariance and amplitude stay
    one row where shared. ``covariance`` of no rows (axis-aligned Gaussians) stays empty.
    """
    pairs = rows.shape[0]
    out_keys = np.empty(pairs if keep_keys else 0, keys.dtype)
    out_positions = np.empty((pairs, 3))
    out_sigma = np.empty((pairs if sigma.shape[0] != 1 else 1, 3))
    covariances = covariance.shape[0]
    out_covariance = np.empty((pairs if covariances > 1 else covariances, 6))
    out_amplitude = np.empty(pairs if amplitude.shape[0] != 1 else 1)
    if sigma.shape[0] == 1:
        out_sigma[0] = sigma[0]
    if covariances == 1:
        out_covariance[0] = covariance[0]
    if amplitude.shape[0] == 1:
        out_amplitude[0] = amplitude[0]
    # Pairs are read in the order they were filled (each block's run in ascending
    # Gaussian index: sequential reads) and written to their ranks.
    for b in range(block_offsets.shape[0] - 1):
        start = block_offsets[b]
        ranks = _stable_ranks(keys[start : block_offsets[b + 1]])
        for j in range(ranks.shape[0]):
            at = start + j
            c = rows[at]
            out = start + ranks[j]
            if keep_keys:
                out_keys[out] = keys[at]
            for d in range(3):
                out_positions[out, d] = positions[c, d]
            if periodic:
                code = images[at]
                shifts = (code // 9 - 1, (code // 3) % 3 - 1, code % 3 - 1)
                for d in range(3):
                    if shifts[d] == 1:
                        out_positions[out, d] = positions[c, d] + period[d]
                    elif shifts[d] == -1:
                        out_positions[out, d] = positions[c, d] - period[d]
            if sigma.shape[0] != 1:
                for d in range(3):
                    out_sigma[out, d] = sigma[c, d]
            if covariances > 1:
                for d in range(6):
                    out_covariance[out, d] = covariance[c, d]
            if amplitude.shape[0] != 1:
                out_amplitude[out] = amplitude[c]
    return out_positions, out_sigma, out_covariance, out_amplitude, out_keys


@dataclass(frozen=True, eq=False)
class Binning:
    """The sources of every output block, block after block (CSR layout).

    Attributes
    ----------
    grid : Grid
    chunks : tuple of three tuples of ints
        Block sizes along each axis, as dask normalises them.
    tol : float
        The cut, as a fraction of each Gaussian's peak.
    block_offsets : ndarray, shape (blocks + 1,), int64
        The sources of the block with flat (C-order) index ``b`` are rows
        ``block_offsets[b]:block_offsets[b + 1]`` of the arrays below, in summation
        order (:func:`spatial_order`).
    positions : ndarray, shape (pairs, 3), float64
        One row per (Gaussian, block) pair: the Gaussian's centre, or on a periodic
        grid the centre of its image that reaches the block.
    sigma : ndarray, shape (pairs, 3) or (1, 3), float64
        Per pair, or one row shared by all.
    amplitude : ndarray, shape (pairs,) or (1,), float64
        Per pair, or one value shared by all.
    keys : ndarray, shape (pairs,), int64, or None
        Each pair's spatial key (its global bin packed in C order), kept only when
        asked for: what merging binnings of several chunks of centres sorts by.
    covariance : ndarray, shape (pairs, 6) or (1, 6), float64, or None
        Full covariances, as in :class:`BlockSources`; None for axis-aligned Gaussians.
    level : int
        The pyramid level the blocks are of (``chunks`` divide ``grid.level(level)``);
        ``grid`` is level 0's, and the sources' index boxes are level-0 boxes.
    """

    grid: Grid
    chunks: Chunks
    tol: float
    block_offsets: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    keys: np.ndarray | None = None
    covariance: np.ndarray | None = None
    level: int = 0

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

    @property
    def pairs(self) -> int:
        """Number of (Gaussian, block) pairs: the rows of the table."""
        return int(self.block_offsets[-1])

    def _rows(
        self, start: int, stop: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Positions, sigmas, amplitudes and covariances of rows ``start:stop`` (shared
        values as one row)."""

        def rows(array: np.ndarray) -> np.ndarray:
            return array[start:stop] if len(array) != 1 else array

        covariance = None if self.covariance is None else rows(self.covariance)
        return self.positions[start:stop], rows(self.sigma), rows(self.amplitude), covariance

    def block_sources(self, block_index: tuple[int, int, int]) -> BlockSources:
        """The sources that reach the block, in summation order."""
        flat = self.flat_index(block_index)
        positions, sigma, amplitude, covariance = self._rows(
            int(self.block_offsets[flat]), int(self.block_offsets[flat + 1])
        )
        index_low, index_high = index_boxes(positions, sigma, self.grid, self.tol)
        return BlockSources(positions, sigma, amplitude, index_low, index_high, covariance)

    def table_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the source table, for storing.

        Row ``p`` (float64, :data:`TABLE_COLUMNS` columns: x, y, z, sigma x, y, z,
        amplitude, then with covariances the six entries ``xx, xy, xz, yy, yz, zz``:
        :data:`COVARIANCE_TABLE_COLUMNS`) is pair ``p``; block ``b`` owns rows
        ``block_offsets[b]:block_offsets[b + 1]``. :meth:`BlockSources.from_table`
        reads a block's rows back (recomputing the sample index ranges).
        """
        positions, sigma, amplitude, covariance = self._rows(start, stop)
        count = stop - start
        columns = (positions, np.broadcast_to(sigma, (count, 3)),
                   np.broadcast_to(amplitude, (count,))[:, None])  # fmt: skip
        if covariance is not None:
            columns += (np.broadcast_to(covariance, (count, 6)),)
        return np.concatenate(columns, axis=1)

    @property
    def table(self) -> tuple[np.ndarray, int, Callable[[int, int], np.ndarray]]:
        """``(block_offsets, columns, table_rows)``: what a store needs to keep the table."""
        columns = TABLE_COLUMNS if self.covariance is None else COVARIANCE_TABLE_COLUMNS
        return self.block_offsets, columns, self.table_rows

    @property
    def nbytes(self) -> int:
        """Memory held by the binning, in bytes."""
        arrays = (self.block_offsets, self.positions, self.sigma, self.amplitude)
        arrays += () if self.covariance is None else (self.covariance,)
        return sum(array.nbytes for array in arrays)


def block_edges(chunks: Chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global sample index where each block starts, plus the end, along each axis."""
    return tuple(np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks)  # type: ignore[return-value]


@functools.lru_cache(maxsize=32)
def _block_of_sample(chunks: Chunks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per axis, the block index of every sample (int32), for O(1) look-ups."""
    lookups = []
    for sizes in chunks:
        lookup = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        lookup.setflags(write=False)
        lookups.append(lookup)
    return tuple(lookups)  # type: ignore[return-value]


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


def bin_gaussians(
    gaussians: Gaussians,
    grid: Grid,
    chunks: Chunks,
    *,
    periodic: bool = False,
    keep_keys: bool = False,
    level: int = 0,
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
    keep_keys : bool
        Keep each pair's spatial key (``Binning.keys``).
    level : int
        Bin the blocks of pyramid level ``level`` (``chunks`` divide
        ``grid.level(level)``): a Gaussian reaches a level block where its level-0
        support box reaches a level-0 sample the block averages.

    Returns
    -------
    Binning
        Gaussians of weight zero, and those whose support reaches no sample, are in
        no block.
    """
    positions, arguments = pair_arguments(gaussians, grid, chunks, periodic, level)
    numblocks = [len(c) for c in chunks]
    period = np.array(grid.period)
    row_type = np.int32 if len(positions) < 2**31 else np.int64
    block_offsets = np.zeros(int(np.prod(numblocks)) + 1, np.int64)
    nothing = np.empty(0, row_type), np.empty(0, np.int8), np.empty(0, np.int64)
    _pairs(*arguments, False, block_offsets, *nothing)
    np.cumsum(block_offsets, out=block_offsets)
    pairs = int(block_offsets[-1])
    rows = np.empty(pairs, row_type)
    images = np.empty(pairs if periodic else 0, np.int8)
    # Keys are global bins packed in C order: int32 while they fit (any grid of up to
    # about 2 x 10^9 bins of BIN_SHAPE samples).
    bins = np.prod([-(-n // b) for n, b in zip(grid.level(level).shape, BIN_SHAPE, strict=True)])
    keys = np.empty(pairs, np.int32 if bins < 2**31 else np.int64)
    _pairs(*arguments, True, block_offsets[:-1].copy(), rows, images, keys)
    covariance = gaussians.covariance
    positions, sigma, covariance_rows, amplitude, keys = _ordered_sources(
        block_offsets, rows, images, keys, positions, gaussians.sigma,
        np.empty((0, 6)) if covariance is None else covariance, gaussians.amplitude, period,
        bool(periodic), keep_keys)  # fmt: skip
    return Binning(
        grid=grid,
        chunks=chunks,
        tol=gaussians.tol,
        block_offsets=block_offsets,
        positions=positions,
        sigma=sigma,
        amplitude=amplitude,
        keys=keys if keep_keys else None,
        covariance=None if covariance is None else covariance_rows,
        level=level,
    )


def pair_arguments(gaussians: Gaussians, grid: Grid, chunks: Chunks, periodic: bool,
                   level: int = 0) -> tuple[np.ndarray, tuple]:  # fmt: skip
    """The positions (wrapped into the periodic box where ``periodic``) and the leading
    arguments of :func:`_pairs` for the blocks ``chunks`` of pyramid level ``level``."""
    positions = gaussians.positions
    period = np.array(grid.period)
    if periodic:
        _check_fits_period(gaussians.radius, grid)
        origin = np.array(grid.origin)
        positions = origin + np.mod(positions - origin, period)
    binned = grid.level(level)
    # A level sample averages level-0 samples up to (2^level - 1) / 2 spacings from it;
    # half a spacing more keeps the pairs a superset under rounding (the kernel's own
    # level-0 boxes decide exactly which samples are reached).
    margin = np.array(grid.spacing) * (2**level / 2 if level else 0.0)
    numblocks = np.array([len(c) for c in chunks], np.int64)
    arguments = (positions, gaussians.sigma, gaussians.amplitude,
                 support_half_width(gaussians.tol), margin, np.array(binned.origin),
                 np.array(binned.spacing), np.array(binned.shape, np.float64), period,
                 bool(periodic), _block_of_sample(chunks), numblocks,
                 np.array(BIN_SHAPE, np.int64))  # fmt: skip
    return positions, arguments
