"""Spatial binning: every Gaussian in one global spatial order, found again per block.

Done once per job, shared by every block. For every Gaussian (and, on a periodic
grid, every periodic image of it that reaches the grid) the inclusive range of
global sample indices its support box covers is computed once; the Gaussians that
reach the grid become *entries*, each with a spatial key: the global bin
(``BIN_SHAPE`` samples, aligned to sample 0) of the sample nearest its centre.
A stable counting sort by key (O(M), no comparison sort) puts the entries in
order, and the same pass counts each block's (Gaussian, block) pairs. Nothing is
stored per pair: a block's sources are gathered when the block is rendered, from the
bins within the widest support of it (each row of bins along z is one run of the
sorted keys), by the same index ranges that counted them.

Summation order
---------------
The kernels add a block's sources in the order of the entries: by key, ties by
Gaussian index (and image). Consecutive Gaussians touch the same cache lines, and
each voxel sums its Gaussians in an order fixed by the Gaussians and the grid
alone, so the bits do not depend on the chunking (any two Gaussians compare the
same in every block that holds both).

Memory and threads
------------------
The binning keeps its own copy of the entries' positions (a lazy array does not
change when the caller's centres do), one key per entry (int32 while the grid's
bins fit), and sigmas, amplitudes and covariances once where all share them:
about 1.2x the centres' own bytes. Building it reads the centres in order and
writes each entry once to its place; on a thread pool (``executor``) each thread
takes a part of the Gaussians, with the same result.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numba
import numpy as np

from ._gaussians import Gaussians, support_half_width
from ._grid import Grid
from ._job import Chunks

__all__ = [
    "BIN_SHAPE",
    "BinnedBlock",
    "Binning",
    "BlockSources",
    "Chunks",
    "bin_gaussians",
    "block_edges",
    "count_pairs",
    "index_boxes",
    "pair_arguments",
    "spatial_order",
    "stable_order",
    "stable_ranks",
]

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
    index_low, index_high : ndarray, shape (K, 3), int32 (int64 on grids of 2^31 samples
        or more along an axis)
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
def _index_boxes(positions, sigma, half_width, origin, spacing, shape, box_type):
    count = positions.shape[0]
    low = np.empty((count, 3), box_type.dtype)
    high = np.empty((count, 3), box_type.dtype)
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
    index_low, index_high : ndarray, shape (K, 3), int32 or int64
        Empty on an axis (low > high) where the box misses the grid there.
    """
    return _index_boxes(positions, sigma, support_half_width(tol), np.array(grid.origin),
                        np.array(grid.spacing), np.array(grid.shape, np.float64),
                        box_prototype(grid))  # fmt: skip


def box_prototype(grid: Grid) -> np.ndarray:
    """An empty array of the dtype of sample index boxes on ``grid``: int32 where every
    index fits (half the bytes of a block's sources), else int64."""
    return np.empty(0, np.int32 if max(grid.shape) < 2**31 - 1 else np.int64)


@numba.njit(nogil=True, cache=True)
def _entries(positions, sigma, amplitude, half_width, margin, origin, spacing, shape, period,
             periodic, block_of_sample, numblocks, bin_shape, first, stop, fill, rows, images,
             keys, block_counts, widths):  # fmt: skip
    """For Gaussians ``first:stop``, write the entries (where ``fill``, from index 0 of
    ``rows``, ``images`` and ``keys``) and count each block's sources (where
    ``block_counts`` is not empty); return the number of entries.

    An entry is a Gaussian, or on a periodic grid one of its images, whose support box
    reaches the grid; each support reaches ``margin[d]`` further than ``sigma
    half_width`` on axis ``d`` (zero at level 0; on a pyramid level, the half-width
    of the level-0 samples one level sample averages). Filling writes each entry's
    Gaussian index, image code and spatial key (the global bin of
    :func:`spatial_order`, packed in C order) and the widest index range per axis to
    ``widths``; counting adds its (Gaussian, block) pairs to ``block_counts``. Gaussians
    are visited in index order and each one's images in a fixed order. Image code
    ``9 (sx+1) + 3 (sy+1) + (sz+1)`` is the image's shift in periods on each axis (13:
    none).
    """
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
    count_pairs = block_counts.shape[0] > 0
    entries = 0
    for c in range(first, stop):
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
                    if fill:
                        for d, option in ((0, ox), (1, oy), (2, oz)):
                            spatial[d, option] = _spatial_bin(
                                positions[c, d] + shift[d, option] * period[d], low[d, option],
                                high[d, option], origin[d], spacing[d], bin_shape[d])  # fmt: skip
                            widths[d] = max(widths[d], high[d, option] - low[d, option])
                        rows[entries] = c
                        keys[entries] = (spatial[0, ox] * bins[1] + spatial[1, oy]) * bins[2] + (
                            spatial[2, oz])  # fmt: skip
                        if periodic:
                            images[entries] = (9 * (shift[0, ox] + 1) + 3 * (shift[1, oy] + 1)
                                               + shift[2, oz] + 1)  # fmt: skip
                    if count_pairs:
                        first_y = block_of_sample[1][low[1, oy]]
                        first_z = block_of_sample[2][low[2, oz]]
                        for bx in range(block_of_sample[0][low[0, ox]],
                                        block_of_sample[0][high[0, ox]] + 1):  # fmt: skip
                            for by in range(first_y, block_of_sample[1][high[1, oy]] + 1):
                                for bz in range(first_z, block_of_sample[2][high[2, oz]] + 1):
                                    block_counts[(bx * numblocks[1] + by) * numblocks[2] + bz] += 1
                    entries += 1
    return entries


@numba.njit(nogil=True, cache=True, inline="always")
def _spatial_bin(position, low, high, origin, spacing, bin_side):
    """On one axis, the global bin (``bin_side`` samples, aligned to sample 0) of the
    sample nearest ``position``, clipped into the support's index range [low, high]."""
    nearest = np.floor((position - origin) / spacing + 0.5)
    # Clipped in float first: a centre far outside must not overflow int64.
    nearest = min(max(nearest, np.float64(low)), np.float64(high))
    # ``nearest`` is a whole number of at most 2^53, so the float quotient's floor is
    # the integer quotient, and far cheaper than a 64-bit integer division.
    return np.int64(np.floor(nearest / bin_side))


@numba.njit(nogil=True, cache=True)
def _order_keys(positions, origin, spacing, index_low, index_high, bin_shape):
    """:func:`spatial_order`'s keys: each source's bin packed in C order over the bins
    the sources span (an order-preserving key)."""
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
    return keys


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
    return stable_order(_order_keys(positions, origin, spacing, index_low, index_high,
                                    bin_shape))  # fmt: skip


@numba.njit(nogil=True, cache=True)
def _histogram(keys, low, counts):
    """Add each key's count at ``counts[key - low]``."""
    for e in range(keys.shape[0]):
        counts[keys[e] - low] += 1


@numba.njit(nogil=True, cache=True)
def _bucket_starts(counts):
    """Counts of ``parts x buckets`` to where each part's run of each bucket starts,
    buckets in order and within a bucket parts in order (a stable counting sort)."""
    running = 0
    for b in range(counts.shape[1]):
        for p in range(counts.shape[0]):
            count = counts[p, b]
            counts[p, b] = running
            running += count


@numba.njit(nogil=True, cache=True)
def _scatter_ranks(keys, low, cursors, ranks):
    """Each key's rank: the cursor of its bucket, then advanced."""
    for e in range(keys.shape[0]):
        key = keys[e] - low
        ranks[e] = cursors[key]
        cursors[key] += 1


@numba.njit(nogil=True, cache=True)
def _radix_ranks(keys, low, span, ranks):
    """Stable ranks by an LSD radix sort, 16 bits a pass (two passes for keys spanning up
    to 2^32, four at most): the passes permute an order, then ranks invert it."""
    count = keys.shape[0]
    source = np.empty_like(ranks)
    target = np.empty_like(ranks)
    for e in range(count):
        source[e] = e
    shift = 0
    # (A shift by 64 or more is undefined: keys span at most 2^64.)
    while shift == 0 or (shift < 64 and ((span - 1) >> shift) > 0):
        fill = np.zeros(65537, np.int64)
        for j in range(count):
            fill[(((np.int64(keys[source[j]]) - low) >> shift) & 0xFFFF) + 1] += 1
        for b in range(65536):
            fill[b + 1] += fill[b]
        for j in range(count):
            e = source[j]
            digit = ((np.int64(keys[e]) - low) >> shift) & 0xFFFF
            target[fill[digit]] = e
            fill[digit] += 1
        source, target = target, source
        shift += 16
    for j in range(count):
        ranks[source[j]] = j


def stable_ranks(keys: np.ndarray, ranks: np.ndarray, executor: Executor | None = None) -> None:
    """Fill ``ranks`` with where each key goes when ``keys`` (integers) are sorted stably.

    A counting sort where the keys span at most about their number (keys read in
    order, ranks written in order, the bucket cursors in cache), in parts on
    ``executor``'s threads where one is given (each part counts and places its own
    keys; the ranks do not depend on the parts); else an LSD radix sort. O(K) either
    way, with scratch memory bounded by K whatever the keys' range.
    """
    count = len(keys)
    if count == 0:
        return
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    if span > count + 65536:
        _radix_ranks(keys, low, span, ranks)
        return
    parts = _parts(count, executor)
    counts = np.zeros((len(parts), span), ranks.dtype)
    _run(executor, _histogram, [(keys[a:b], low, counts[p]) for p, (a, b) in enumerate(parts)])
    _bucket_starts(counts)
    _run(executor, _scatter_ranks,
         [(keys[a:b], low, counts[p], ranks[a:b]) for p, (a, b) in enumerate(parts)])  # fmt: skip


def stable_order(keys: np.ndarray) -> np.ndarray:
    """The permutation, int64, that sorts ``keys`` (integers) stably: ``keys[order]`` is
    sorted, ties in the given order (:func:`stable_ranks`, inverted)."""
    ranks = np.empty(len(keys), np.int64)
    stable_ranks(keys, ranks)
    order = np.empty(len(keys), np.int64)
    order[ranks] = np.arange(len(keys))
    return order


# Fewest Gaussians per part of a binning split over threads: below this a split costs
# more than it saves.
PART_MINIMUM = 1 << 17


def _parts(count: int, executor: Executor | None) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges cutting ``range(count)`` into one part per thread."""
    threads = 1 if executor is None else executor._max_workers  # type: ignore[attr-defined]
    parts = max(1, min(threads, count // PART_MINIMUM))
    edges = [count * p // parts for p in range(parts + 1)]
    return list(itertools.pairwise(edges))


def _run(executor: Executor | None, function: Callable, arguments: list[tuple]) -> list:
    """``function(*a)`` for each ``a`` of ``arguments``: on ``executor``'s threads (numba
    functions that release the GIL), or here when there is none or one call."""
    if executor is None or len(arguments) == 1:
        return [function(*a) for a in arguments]
    return [future.result() for future in [executor.submit(function, *a) for a in arguments]]


@numba.njit(nogil=True, cache=True)
def _place_entries(ranks, rows, images, keys, positions, sigma, covariance, amplitude, period,
                   periodic, out_keys, out_positions, out_sigma, out_covariance,
                   out_amplitude):  # fmt: skip
    """Put each entry's key, position (a periodic image's shifted), sigma, covariance and
    amplitude at its rank of the ``out_`` arrays (those of one row, shared, are left).

    Entries are read in the order they were made (ascending Gaussian index: the
    Gaussians' arrays are read in order) and written to their ranks.
    """
    per_sigma = sigma.shape[0] != 1
    per_covariance = covariance.shape[0] > 1
    per_amplitude = amplitude.shape[0] != 1
    for e in range(ranks.shape[0]):
        j = ranks[e]
        c = rows[e]
        out_keys[j] = keys[e]
        for d in range(3):
            out_positions[j, d] = positions[c, d]
        if periodic:
            code = images[e]
            shifts = (code // 9 - 1, (code // 3) % 3 - 1, code % 3 - 1)
            for d in range(3):
                if shifts[d] == 1:
                    out_positions[j, d] = positions[c, d] + period[d]
                elif shifts[d] == -1:
                    out_positions[j, d] = positions[c, d] - period[d]
        if per_sigma:
            for d in range(3):
                out_sigma[j, d] = sigma[c, d]
        if per_covariance:
            for d in range(6):
                out_covariance[j, d] = covariance[c, d]
        if per_amplitude:
            out_amplitude[j] = amplitude[c]


@numba.njit(nogil=True, cache=True)
def _gather_block(first, last, count, widths, keys, positions, sigma, covariance, amplitude,
                  half_width, margin, origin, spacing, shape, bin_shape, box_type):  # fmt: skip
    """The entries whose support reaches samples ``first..last`` (inclusive, per axis), in
    summation order: positions, sigmas, covariances, amplitudes, index boxes.

    Only the bins within ``widths`` samples of the block are looked at: an entry's bin
    is that of a sample inside its index range, which is at most ``widths`` wide. For
    each row of bins along z the entries are one run of the sorted ``keys``, and for
    each x slab of the window one run holds its rows; runs are visited in key order,
    so the gathered entries stay in it. Whether an entry reaches the block is decided
    by its index ranges alone (the bins only narrow the search). ``count`` is the
    number the binning counted for the block; the number found is returned first, for
    the caller to check. With ``count`` negative (a box that is not one block) the
    arrays are sized for every candidate; either way they are returned cut to the
    sources found.
    """
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    covariance_step = 1 if covariance.shape[0] > 1 else 0
    amplitude_step = 1 if amplitude.shape[0] > 1 else 0
    bins = np.empty(3, np.int64)
    low_bin = np.empty(3, np.int64)
    high_bin = np.empty(3, np.int64)
    for d in range(3):
        bins[d] = (np.int64(shape[d]) + bin_shape[d] - 1) // bin_shape[d]
        low_bin[d] = max(first[d] - widths[d], 0) // bin_shape[d]
        high_bin[d] = min(last[d] + widths[d], np.int64(shape[d]) - 1) // bin_shape[d]
    if count < 0:
        # At most every entry of the window's bins.
        count = 0
        for bx in range(low_bin[0], high_bin[0] + 1):
            plane = bx * bins[1]
            count += np.searchsorted(keys, (plane + high_bin[1]) * bins[2] + high_bin[2],
                                     side="right") - np.searchsorted(
                keys, (plane + low_bin[1]) * bins[2] + low_bin[2])  # fmt: skip
    out_positions = np.empty((count, 3))
    out_sigma = np.empty((count if sigma_step else 1, 3))
    out_covariance = np.empty((count if covariance_step else covariance.shape[0], 6))
    out_amplitude = np.empty(count if amplitude_step else 1)
    index_low = np.empty((count, 3), box_type.dtype)
    index_high = np.empty((count, 3), box_type.dtype)
    if not sigma_step:
        out_sigma[0] = sigma[0]
    if covariance.shape[0] == 1:
        out_covariance[0] = covariance[0]
    if not amplitude_step:
        out_amplitude[0] = amplitude[0]
    low = np.empty(3, np.int64)
    high = np.empty(3, np.int64)
    found = 0
    rows = high_bin[1] - low_bin[1] + 1
    for bx in range(low_bin[0], high_bin[0] + 1):
        # The slab of bins at bx within the window's first and last row: scanned whole
        # where it holds few entries for its rows (a sparse grid, or a wide window),
        # else row by row.
        plane = bx * bins[1]
        slab_start = np.searchsorted(keys, (plane + low_bin[1]) * bins[2] + low_bin[2])
        slab_stop = np.searchsorted(keys, (plane + high_bin[1]) * bins[2] + high_bin[2],
                                    side="right")  # fmt: skip
        whole = slab_stop - slab_start <= 4 * rows
        for by in range(low_bin[1], low_bin[1] + 1 if whole else high_bin[1] + 1):
            start, stop = slab_start, slab_stop
            if not whole:
                row = (plane + by) * bins[2]
                start = np.searchsorted(keys, row + low_bin[2])
                stop = np.searchsorted(keys, row + high_bin[2], side="right")
            for j in range(start, stop):
                reaches = True
                for d in range(3):
                    radius = sigma[j * sigma_step, d] * half_width + margin[d]
                    low[d], high[d] = _index_range(positions[j, d], radius, origin[d],
                                                   spacing[d], shape[d] - 1.0)  # fmt: skip
                    if low[d] > last[d] or high[d] < first[d]:
                        reaches = False
                        break
                if not reaches:
                    continue
                found += 1
                if found > count:
                    continue
                at = found - 1
                for d in range(3):
                    out_positions[at, d] = positions[j, d]
                    index_low[at, d] = low[d]
                    index_high[at, d] = high[d]
                # Written out as in _place_entries: a helper shared by both loops made
                # each twice as slow (measured: binning 10^6 centres 53 -> 100 ms).
                if sigma_step:
                    for d in range(3):
                        out_sigma[at, d] = sigma[j, d]
                if covariance_step:
                    for d in range(6):
                        out_covariance[at, d] = covariance[j, d]
                if amplitude_step:
                    out_amplitude[at] = amplitude[j]
    # Rows per source (not the one row of a value all share) cut to those found.
    kept = min(found, count)
    out_sigma = out_sigma[:kept] if sigma_step else out_sigma
    out_covariance = out_covariance[:kept] if covariance_step else out_covariance
    out_amplitude = out_amplitude[:kept] if amplitude_step else out_amplitude
    return (found, out_positions[:kept], out_sigma, out_covariance, out_amplitude,
            index_low[:kept], index_high[:kept])  # fmt: skip


@dataclass(frozen=True)
class Reach:
    """What decides whether an entry reaches a block: the arguments of
    :func:`_index_range` on the grid the blocks are of (level ``level`` of the grid)."""

    half_width: float
    margin: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray
    shape: np.ndarray

    @classmethod
    def of(cls, grid: Grid, tol: float, level: int) -> Reach:
        # A level sample averages level-0 samples up to (2^level - 1) / 2 spacings from
        # it; half a spacing more keeps the pairs a superset under rounding (the
        # kernel's own level-0 boxes decide exactly which samples are reached).
        binned = grid.level(level)
        return cls(
            half_width=support_half_width(tol),
            margin=np.array(grid.spacing) * (2**level / 2 if level else 0.0),
            origin=np.array(binned.origin),
            spacing=np.array(binned.spacing),
            shape=np.array(binned.shape, np.float64),
        )


@dataclass(frozen=True, eq=False)
class Binning:
    """Every Gaussian in one global spatial order, and how many reach each output block.

    The binning keeps one entry per Gaussian that reaches the grid (on a periodic
    grid, per image that does), sorted by spatial key (:func:`spatial_order`'s global
    bin, packed in C order), ties by Gaussian index and image: the summation order.
    A block's sources are the entries of the bins near it whose support reaches it
    (:meth:`block_sources`, gathered when the block is rendered), so nothing is
    stored per (Gaussian, block) pair but a count per block.

    Attributes
    ----------
    grid : Grid
    chunks : tuple of three tuples of ints
        Block sizes along each axis, as dask normalises them.
    tol : float
        The cut, as a fraction of each Gaussian's peak.
    block_offsets : ndarray, shape (blocks + 1,), int64
        Block ``b`` (C-order flat index) has ``block_offsets[b + 1] - block_offsets[b]``
        sources.
    keys : ndarray, shape (entries,), int32 or int64
        Each entry's spatial key, ascending.
    positions : ndarray, shape (entries, 3), float64
        Each entry's centre (on a periodic grid, its image's); the binning's own copy.
    sigma : ndarray, shape (entries, 3) or (1, 3), float64
        Per entry, or one row shared by all.
    amplitude : ndarray, shape (entries,) or (1,), float64
        Per entry, or one value shared by all.
    covariance : ndarray, shape (entries, 6) or (1, 6), float64, or None
        Full covariances, as in :class:`BlockSources`; None for axis-aligned Gaussians.
    widths : ndarray, shape (3,), int64
        The widest index range of an entry along each axis (samples, minus one).
    level : int
        The pyramid level the blocks are of (``chunks`` divide ``grid.level(level)``);
        ``grid`` is level 0's, and the sources' index boxes are level-0 boxes.
    """

    grid: Grid
    chunks: Chunks
    tol: float
    block_offsets: np.ndarray
    keys: np.ndarray
    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    widths: np.ndarray
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
        """Number of (Gaussian, block) pairs."""
        return int(self.block_offsets[-1])

    def _gather(self, block_index: tuple[int, int, int]) -> tuple:
        """:func:`_gather_block` for one block, checked."""
        start = self.block_start(block_index)
        count = self.block_count(block_index)
        found, *gathered = self._gather_box(start, self.block_shape(block_index), count)
        if found != count:
            raise RuntimeError(f"block {block_index}: the binning counted {count} sources, "
                               f"the gather found {found}")  # fmt: skip
        return tuple(gathered)

    def _gather_box(self, start: np.ndarray, shape: Sequence[int], count: int) -> tuple:
        """:func:`_gather_block` for samples ``start .. start + shape - 1``."""
        last = start + np.array(shape, np.int64) - 1
        reach = Reach.of(self.grid, self.tol, self.level)
        covariance = np.empty((0, 6)) if self.covariance is None else self.covariance
        return _gather_block(
            start, last, count, self.widths, self.keys, self.positions, self.sigma, covariance,
            self.amplitude, reach.half_width, reach.margin, reach.origin, reach.spacing,
            reach.shape, np.array(BIN_SHAPE, np.int64), box_prototype(self.grid))  # fmt: skip

    def block_sources(self, block_index: tuple[int, int, int]) -> BlockSources:
        """The sources that reach the block, in summation order."""
        return self._sources(self._gather(block_index))

    def box_sources(self, start: np.ndarray, shape: Sequence[int]) -> BlockSources:
        """The sources that reach samples ``start .. start + shape - 1`` (inclusive, on the
        grid the blocks are of: any box, such as part of a block), in summation order."""
        _, *gathered = self._gather_box(np.asarray(start, np.int64), shape, -1)
        return self._sources(tuple(gathered))

    def block(self, block_index: tuple[int, int, int]) -> BinnedBlock:
        """The block, its sources gathered when asked (a feed of
        :func:`._block.render_fed_block`)."""
        return BinnedBlock(self, block_index)

    def _sources(self, gathered: tuple) -> BlockSources:
        """Gathered positions, sigmas, covariances, amplitudes and boxes as sources."""
        positions, sigma, covariance, amplitude, index_low, index_high = gathered
        if self.level:
            # The boxes above are of the level's samples; the kernels want level 0's.
            index_low, index_high = index_boxes(positions, sigma, self.grid, self.tol)
        covariance = None if self.covariance is None else covariance
        return BlockSources(positions, sigma, amplitude, index_low, index_high, covariance)

    @property
    def nbytes(self) -> int:
        """Memory held by the binning, in bytes."""
        arrays = (self.block_offsets, self.keys, self.positions, self.sigma, self.amplitude)
        arrays += () if self.covariance is None else (self.covariance,)
        return sum(array.nbytes for array in arrays)


@dataclass(frozen=True, eq=False)
class BinnedBlock:
    """One block of a binning: its sources gathered when asked, all or a box's."""

    binning: Binning
    index: tuple[int, int, int]

    @property
    def start(self) -> np.ndarray:
        return self.binning.block_start(self.index)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.binning.block_shape(self.index)

    @property
    def count(self) -> int:
        return self.binning.block_count(self.index)

    def sources(self, box: tuple[np.ndarray, tuple[int, int, int]] | None = None) -> BlockSources:
        """The block's sources in summation order; with ``box`` = (first sample, shape),
        only those that reach that box of it."""
        if box is None:
            return self.binning.block_sources(self.index)
        return self.binning.box_sources(*box)


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
    level: int = 0,
    executor: Executor | None = None,
) -> Binning:
    """Put the Gaussians in their summation order and count the sources of every block.

    Parameters
    ----------
    gaussians : Gaussians
    grid : Grid
    chunks : tuple of three tuples of ints
        Block sizes along each axis (dask's normalised chunks for ``grid.shape``).
    periodic : bool
        Treat the grid as one tile of a periodic box (see ``gaussian_sum``).
    level : int
        Bin the blocks of pyramid level ``level`` (``chunks`` divide
        ``grid.level(level)``): a Gaussian reaches a level block where its level-0
        support box reaches a level-0 sample the block averages.
    executor : concurrent.futures.ThreadPoolExecutor, optional
        Threads to bin on, a part of the Gaussians each (the binning does not depend
        on the parts); here, on one thread, without one.

    Returns
    -------
    Binning
        Gaussians of weight zero, and those whose support reaches no sample, are in
        no block.
    """
    positions, arguments = pair_arguments(gaussians, grid, chunks, periodic, level)
    period = np.array(grid.period)
    blocks = math.prod(len(c) for c in chunks)
    row_type = np.int32 if len(positions) < 2**31 else np.int64
    # Keys are global bins packed in C order: int32 while they fit (any grid of up to
    # about 2 x 10^9 bins of BIN_SHAPE samples).
    bins = np.prod([-(-n // b) for n, b in zip(grid.level(level).shape, BIN_SHAPE, strict=True)])
    key_type = np.int32 if bins < 2**31 else np.int64
    parts = _parts(len(positions), executor)
    # Without images a Gaussian is at most one entry; with them, each part counts first.
    capacities = [stop - first for first, stop in parts]
    if periodic:
        nothing = (np.empty(0, row_type), np.empty(0, np.int8), np.empty(0, key_type),
                   np.empty(0, np.int64), np.empty(3, np.int64))  # fmt: skip
        counting = [(*arguments, first, stop, False, *nothing) for first, stop in parts]
        capacities = _run(executor, _entries, counting)
    offsets = np.concatenate([[0], np.cumsum(capacities)]).astype(np.int64)
    rows = np.empty(offsets[-1], row_type)
    images = np.empty(offsets[-1] if periodic else 0, np.int8)
    keys = np.empty(offsets[-1], key_type)
    counts = np.zeros((len(parts), blocks), np.int64)
    widths = np.zeros((len(parts), 3), np.int64)

    def part(p: int) -> tuple:
        at = slice(offsets[p], offsets[p + 1])
        return (*arguments, *parts[p], True, rows[at], images[at] if periodic else images,
                keys[at], counts[p], widths[p])  # fmt: skip

    made = _run(executor, _entries, [part(p) for p in range(len(parts))])
    # Each part's entries follow the last part's (a no-op unless some Gaussians reach
    # nothing).
    entries = 0
    for p, count in enumerate(made):
        if offsets[p] != entries:
            for values in (rows, keys) + ((images,) if periodic else ()):
                values[entries : entries + count] = values[offsets[p] : offsets[p] + count].copy()
        entries += count
    rows, keys = rows[:entries], keys[:entries]
    images = images[:entries] if periodic else images
    block_offsets = np.zeros(blocks + 1, np.int64)
    np.cumsum(counts.sum(axis=0), out=block_offsets[1:])
    ranks = np.empty(entries, np.int32 if entries < 2**31 else np.int64)
    stable_ranks(keys, ranks, executor)
    covariance = gaussians.covariance
    covariance = np.empty((0, 6)) if covariance is None else covariance
    sigma, amplitude = gaussians.sigma, gaussians.amplitude
    # One row where shared by all, one per entry otherwise (none for no covariances).
    out = (np.empty(entries, key_type), np.empty((entries, 3)),
           np.empty((entries, 3)) if len(sigma) != 1 else sigma.copy(),
           np.empty((entries, 6)) if len(covariance) > 1 else covariance.copy(),
           np.empty(entries) if len(amplitude) != 1 else amplitude.copy())  # fmt: skip
    _run(executor, _place_entries,
         [(ranks[first:stop], rows[first:stop], images[first:stop] if periodic else images,
           keys[first:stop], positions, sigma, covariance, amplitude, period, bool(periodic),
           *out) for first, stop in _parts(entries, executor)])  # fmt: skip
    sorted_keys, sorted_positions, sorted_sigma, sorted_covariance, sorted_amplitude = out
    return Binning(
        grid=grid,
        chunks=chunks,
        tol=gaussians.tol,
        block_offsets=block_offsets,
        keys=sorted_keys,
        positions=sorted_positions,
        sigma=sorted_sigma,
        amplitude=sorted_amplitude,
        widths=widths.max(axis=0),
        covariance=None if gaussians.covariance is None else sorted_covariance,
        level=level,
    )


def pair_arguments(gaussians: Gaussians, grid: Grid, chunks: Chunks, periodic: bool,
                   level: int = 0) -> tuple[np.ndarray, tuple]:  # fmt: skip
    """The positions (wrapped into the periodic box where ``periodic``) and the leading
    arguments of :func:`_entries` for the blocks ``chunks`` of pyramid level ``level``."""
    positions = gaussians.positions
    period = np.array(grid.period)
    if periodic:
        _check_fits_period(gaussians.radius, grid)
        origin = np.array(grid.origin)
        positions = origin + np.mod(positions - origin, period)
    reach = Reach.of(grid, gaussians.tol, level)
    numblocks = np.array([len(c) for c in chunks], np.int64)
    arguments = (positions, gaussians.sigma, gaussians.amplitude, reach.half_width, reach.margin,
                 reach.origin, reach.spacing, reach.shape, period, bool(periodic),
                 _block_of_sample(chunks), numblocks, np.array(BIN_SHAPE, np.int64))  # fmt: skip
    return positions, arguments


def count_pairs(gaussians: Gaussians, grid: Grid, chunks: Chunks, periodic: bool,
                level: int = 0) -> np.ndarray:  # fmt: skip
    """(Gaussian, block) pairs per block of ``chunks`` (of pyramid level ``level``), shape
    (blocks,), int64, as :func:`bin_gaussians` counts them, without binning."""
    _, arguments = pair_arguments(gaussians, grid, chunks, periodic, level)
    counts = np.zeros(math.prod(len(c) for c in chunks), np.int64)
    nothing = np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0, np.int32)
    _entries(*arguments, 0, len(arguments[0]), False, *nothing, counts, np.empty(3, np.int64))
    return counts
