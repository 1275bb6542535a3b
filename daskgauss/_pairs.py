"""The (Gaussian, block) pairs of a binning, grouped by block, and their order restored.

A binning (:mod:`._binning`) keeps one *entry* per Gaussian (per periodic image) in
summation order and counts, per block, the entries that reach it. Storing the
Gaussians for the blocks (:mod:`._exchange`) needs every *pair*: each entry once for
every block its support reaches, grouped by block, each block's pairs in summation
order. One pass over the entries in that order, placing each pair at its block's
cursor (a stable counting sort by block), gives exactly that in O(pairs + blocks),
however many blocks there are: gathering block by block would cost a search of the
bins around every block.

After the exchange a block holds its pairs from several writers, each writer's in
summation order; :func:`entry_keys` recomputes the spatial key the binning gave each
of them, from the row alone, so that a stable sort by key of the rows laid end to end
in writer order restores the order of the whole input: by key, then by index.

Whether an entry reaches a block is decided here, as in the binning, by
:func:`._binning._index_range` on the same floats, so the pairs found are exactly
the pairs counted (checked).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ._binning import BIN_SHAPE, Binning, Reach, _block_of_sample, _index_range, _spatial_bin
from ._grid import Grid

__all__ = ["BlockPairs", "block_pairs", "entry_keys", "reaching"]


@dataclass(frozen=True, eq=False)
class BlockPairs:
    """The pairs of some blocks, grouped by block (ascending), each block's in summation order.

    Attributes
    ----------
    blocks : ndarray, shape (K,), int64
        C-order flat indices of the blocks that have pairs, ascending.
    counts : ndarray, shape (K,), int64
        Pairs of each of those blocks; their rows follow one another in ``blocks`` order.
    positions : ndarray, shape (P, 3), float64
        Each pair's centre (a periodic image's, shifted), P = ``counts.sum()``.
    sigma : ndarray, shape (P, 3) or (1, 3) shared by all, float64
    amplitude : ndarray, shape (P,) or (1,) shared by all, float64
    covariance : ndarray, shape (P, 6) or (1, 6) shared by all, float64, or None
        As in :class:`._binning.BlockSources`.
    """

    blocks: np.ndarray
    counts: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    covariance: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of pairs, P."""
        return int(self.positions.shape[0])


@numba.njit(nogil=True, cache=True)
def _pair_entries(
    first_entry,
    stop_entry,
    positions,
    sigma,
    half_width,
    margin,
    origin,
    spacing,
    shape,
    block_of_sample,
    numblocks,
    first_block,
    stop_block,
    block_offsets,
    out,
):
    """Write, for blocks ``first_block:stop_block`` in order, the index of each entry that
    reaches the block, entries in order; return whether every block got the count the
    binning gave it."""
    base = block_offsets[first_block]
    cursors = block_offsets[first_block:stop_block] - base
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    low = np.empty(3, np.int64)
    high = np.empty(3, np.int64)
    plane_blocks = numblocks[1] * numblocks[2]
    for e in range(first_entry, stop_entry):
        for d in range(3):
            radius = sigma[e * sigma_step, d] * half_width + margin[d]
            low[d], high[d] = _index_range(
                positions[e, d], radius, origin[d], spacing[d], shape[d] - 1.0
            )
        first_y = block_of_sample[1][low[1]]
        first_z = block_of_sample[2][low[2]]
        last_y = block_of_sample[1][high[1]]
        last_z = block_of_sample[2][high[2]]
        for bx in range(block_of_sample[0][low[0]], block_of_sample[0][high[0]] + 1):
            if (bx + 1) * plane_blocks <= first_block or bx * plane_blocks >= stop_block:
                continue
            for by in range(first_y, last_y + 1):
                row = (bx * numblocks[1] + by) * numblocks[2]
                for bz in range(first_z, last_z + 1):
                    block = row + bz
                    if first_block <= block < stop_block:
                        at = block - first_block
                        out[cursors[at]] = e
                        cursors[at] += 1
    for block in range(first_block, stop_block):
        if cursors[block - first_block] != block_offsets[block + 1] - base:
            return False
    return True


def _entry_window(binning: Binning, first_block: int, stop_block: int) -> tuple[int, int]:
    """The entries that can reach blocks ``first_block:stop_block``: those whose key's x
    bin lies within the widest support of the blocks' x range (keys are x-major)."""
    numblocks = binning.numblocks
    plane_blocks = numblocks[1] * numblocks[2]
    first_x, last_x = first_block // plane_blocks, (stop_block - 1) // plane_blocks
    edges = np.concatenate([[0], np.cumsum(binning.chunks[0])])
    shape = binning.grid.level(binning.level).shape
    low_bin = max(int(edges[first_x]) - int(binning.widths[0]), 0) // BIN_SHAPE[0]
    high_bin = (
        min(int(edges[last_x + 1]) - 1 + int(binning.widths[0]), shape[0] - 1) // (BIN_SHAPE[0])
    )
    per_x_bin = -(-shape[1] // BIN_SHAPE[1]) * -(-shape[2] // BIN_SHAPE[2])
    keys = binning.keys
    start = int(np.searchsorted(keys, low_bin * per_x_bin))
    stop = int(np.searchsorted(keys, (high_bin + 1) * per_x_bin))
    return start, stop


def block_pairs(
    binning: Binning, first_block: int = 0, stop_block: int | None = None
) -> BlockPairs:
    """Every pair of blocks ``first_block:stop_block`` (C-order flat indices; default all),
    grouped by block, each block's in the binning's summation order.

    Raises
    ------
    RuntimeError
        The pairs found differ from those the binning counted (a bug).
    """
    blocks = int(np.prod(binning.numblocks))
    stop_block = blocks if stop_block is None else stop_block
    offsets = binning.block_offsets
    entries = np.empty(int(offsets[stop_block] - offsets[first_block]), np.int64)
    if len(entries):
        reach = Reach.of(binning.grid, binning.tol, binning.level)
        first_entry, stop_entry = _entry_window(binning, first_block, stop_block)
        found = _pair_entries(
            first_entry,
            stop_entry,
            binning.positions,
            binning.sigma,
            reach.half_width,
            reach.margin,
            reach.origin,
            reach.spacing,
            reach.shape,
            _block_of_sample(binning.chunks),
            np.array(binning.numblocks, np.int64),
            first_block,
            stop_block,
            offsets,
            entries,
        )
        if not found:
            raise RuntimeError(
                f"blocks {first_block}:{stop_block}: the pairs found differ from those the "
                "binning counted"
            )
    counts = np.diff(offsets[first_block : stop_block + 1])
    held = np.flatnonzero(counts)

    def per_pair(values: np.ndarray | None) -> np.ndarray | None:
        if values is None or len(values) == 1:
            return values
        return values[entries]

    return BlockPairs(
        blocks=(held + first_block).astype(np.int64),
        counts=counts[held].astype(np.int64),
        positions=binning.positions[entries],
        sigma=per_pair(binning.sigma),  # type: ignore[arg-type]
        amplitude=per_pair(binning.amplitude),  # type: ignore[arg-type]
        covariance=per_pair(binning.covariance),
    )


@numba.njit(nogil=True, cache=True)
def _entry_keys(positions, sigma, half_width, margin, origin, spacing, shape, bin_shape):
    count = positions.shape[0]
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    bins = np.empty(3, np.int64)
    for d in range(3):
        bins[d] = (np.int64(shape[d]) + bin_shape[d] - 1) // bin_shape[d]
    keys = np.empty(count, np.int64)
    for e in range(count):
        key = np.int64(0)
        for d in range(3):
            radius = sigma[e * sigma_step, d] * half_width + margin[d]
            low, high = _index_range(positions[e, d], radius, origin[d], spacing[d], shape[d] - 1.0)
            key = key * bins[d] + _spatial_bin(
                positions[e, d], low, high, origin[d], spacing[d], bin_shape[d]
            )
        keys[e] = key
    return keys


def entry_keys(
    positions: np.ndarray, sigma: np.ndarray, grid: Grid, tol: float, level: int = 0
) -> np.ndarray:
    """The spatial key the binning of pyramid level ``level`` gives each entry (its global
    bin, packed in C order), from its position and sigma alone.

    Parameters
    ----------
    positions : ndarray, shape (K, 3), float64
        Entries' centres as binned (a periodic image's, shifted).
    sigma : ndarray, shape (K, 3) or (1, 3), float64

    Returns
    -------
    ndarray, shape (K,), int64
    """
    reach = Reach.of(grid, tol, level)
    return _entry_keys(
        positions,
        sigma,
        reach.half_width,
        reach.margin,
        reach.origin,
        reach.spacing,
        reach.shape,
        np.array(BIN_SHAPE, np.int64),
    )


@numba.njit(nogil=True, cache=True)
def _reaching(positions, sigma, half_width, margin, origin, spacing, shape, first, last):
    count = positions.shape[0]
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    mask = np.zeros(count, np.bool_)
    for e in range(count):
        reaches = True
        for d in range(3):
            radius = sigma[e * sigma_step, d] * half_width + margin[d]
            low, high = _index_range(positions[e, d], radius, origin[d], spacing[d], shape[d] - 1.0)
            if low > last[d] or high < first[d]:
                reaches = False
                break
        mask[e] = reaches
    return mask


def reaching(
    positions: np.ndarray,
    sigma: np.ndarray,
    grid: Grid,
    tol: float,
    level: int,
    first: np.ndarray,
    last: np.ndarray,
) -> np.ndarray:
    """Which entries reach the samples ``first .. last`` (inclusive, per axis) of pyramid
    level ``level``: the binning's own test. Boolean, shape (K,)."""
    reach = Reach.of(grid, tol, level)
    return _reaching(
        positions,
        sigma,
        reach.half_width,
        reach.margin,
        reach.origin,
        reach.spacing,
        reach.shape,
        np.asarray(first, np.int64),
        np.asarray(last, np.int64),
    )
