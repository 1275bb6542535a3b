"""The block kernel: add truncated, separable 3D Gaussians into one block.

This module knows nothing about dask, zarr or the binning. It is handed a block
(a C-contiguous float32 or float64 array), where the block sits in the global
grid, and the Gaussians whose support reaches the block, and it adds them in.
It is serial and releases the GIL: dask runs one block per thread or process.

Why it is fast
--------------
* Separable: inside a Gaussian's support box the value is ``fx[i] fy[j] fz[k]``.
  The 1D factors are computed once per Gaussian and block; the innermost
  operation adds ``(fx[i] fy[j]) * fz[k0:k1]`` to a run of rows ``j`` of plane
  ``i`` (:func:`add_outer_rows`, 64-byte vectors with a masked tail).
* Rows whose ``fx fy`` factor is already below the cut are skipped: that turns
  the box into a cylinder-like support and saves about a fifth of the work. The
  dropped values are below ``tol`` times the peak, so the error bound holds.
* Strips in L1: the block is swept one strip at a time, ``strip`` rows of one x
  plane (a few tens of KiB), and every Gaussian reaching the strip is added while
  it sits in the core's first-level cache; each voxel is loaded from memory once.
  The Gaussians reaching each strip come from a list made once per slab of
  ``SLAB`` planes, whose entries carry everything the strip loop reads.
* With ``overwrite`` each strip is zeroed just before it is filled, instead of
  the caller clearing the whole block first: one pass over memory instead of two.

Pyramid levels
--------------
:func:`add_level_gaussians_to_block` renders level ``l`` of a multiscale pyramid
(each sample the mean of the ``2^l x 2^l x 2^l`` level-0 samples it covers)
straight from the Gaussians: a box mean of a separable function is separable, so
only the 1D factors change (box means of the level-0 factors, with box minima of
the exponents for the row cut). The strip sweep is the same code for both.

Why it is deterministic
-----------------------
Every decision (which voxels a Gaussian covers, each 1D factor, which rows are
skipped) is computed from global sample indices, never from the block's position,
and each voxel receives its Gaussians in the order they are given. The result is
therefore bit-identical whatever the chunking, the strip size, the CPU's vector
width or the order in which blocks are computed. No multiply-add is fused and the
exponential is :func:`exp_negative`, not the C library's, so the bits do not
depend on the CPU or the C library either.
"""

from __future__ import annotations

import numba
import numpy as np

from ._exp import exp_negative
from ._vector_rows import add_outer_rows

__all__ = ["add_gaussians_to_block", "add_level_gaussians_to_block"]

# x planes per list of the Gaussians reaching a strip: a list is scanned once per
# plane, and an entry whose x range misses the plane is skipped (about one in
# eight at sigma / spacing = 5).
SLAB = 8

# Columns of a strip entry (one row of ``entries``).
_X_LOW, _X_HIGH, _X_BASE, _Y_BASE, _Z_LOW, _Z_START, _Z_LENGTH = range(7)


@numba.njit(nogil=True, cache=True)
def _clip_boxes(block_shape, block_start, index_low, index_high):
    """Support boxes clipped to the block (block-local, inclusive) and factor offsets.

    ``offset[c, d]`` is where Gaussian ``c``'s factors along axis ``d`` start in
    the flat factor buffers; ``offset[count, d]`` is their total length.
    """
    count = index_low.shape[0]
    low = np.empty((count, 3), np.int64)
    high = np.empty((count, 3), np.int64)
    offset = np.zeros((count + 1, 3), np.int64)
    for c in range(count):
        for d in range(3):
            low[c, d] = max(index_low[c, d] - block_start[d], 0)
            high[c, d] = min(index_high[c, d] - block_start[d], block_shape[d] - 1)
            offset[c + 1, d] = offset[c, d] + max(high[c, d] - low[c, d] + 1, 0)
    return low, high, offset


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _axis_factors(axis, block_start, origin, spacing, positions, sigma, scale, low, high, offset,
                  exponents, factors):  # fmt: skip
    """Fill one axis's exponents ``((t - p) / s)^2 / 2`` and factors ``scale exp(-e)``.

    Gaussian ``c``'s values over its clipped range start at ``offset[c, axis]``.
    ``error_model="numpy"``: no division-by-zero branch (sigma > 0), so the inner
    loop vectorises.
    """
    # sigma and scale may hold one row shared by every Gaussian.
    sigma_step = 1 if sigma.shape[0] > 1 else 0
    scale_step = 1 if scale.shape[0] > 1 else 0
    for c in range(positions.shape[0]):
        # Views indexed from 0, so that the loop provably writes contiguous memory.
        gaussian_exponents = exponents[offset[c, axis] : offset[c + 1, axis]]
        gaussian_factors = factors[offset[c, axis] : offset[c + 1, axis]]
        first = block_start[axis] + low[c, axis]
        width = sigma[c * sigma_step, axis]
        weight = scale[c * scale_step]
        for j in range(gaussian_factors.shape[0]):
            coordinate = origin[axis] + (first + j) * spacing[axis]
            scaled = (coordinate - positions[c, axis]) / width
            exponent = 0.5 * scaled * scaled
            gaussian_exponents[j] = exponent
            gaussian_factors[j] = weight * exp_negative(exponent)


@numba.njit(nogil=True, cache=True)
def _factors(block_start, origin, spacing, positions, sigma, amplitude, low, high, offset):
    """Each Gaussian's 1D factors over its clipped box, and the x and y exponents.

    All float64; ``factor_x`` carries the amplitude.
    """
    count = positions.shape[0]
    ones = np.ones(1)
    exponent_x = np.empty(offset[count, 0])
    factor_x = np.empty(offset[count, 0])
    exponent_y = np.empty(offset[count, 1])
    factor_y = np.empty(offset[count, 1])
    exponent_z = np.empty(offset[count, 2])
    factor_z = np.empty(offset[count, 2])
    arguments = (block_start, origin, spacing, positions, sigma)
    _axis_factors(0, *arguments, amplitude, low, high, offset, exponent_x, factor_x)
    _axis_factors(1, *arguments, ones, low, high, offset, exponent_y, factor_y)
    _axis_factors(2, *arguments, ones, low, high, offset, exponent_z, factor_z)
    return factor_x, exponent_x, factor_y, exponent_y, factor_z, exponent_z


@numba.njit(nogil=True, cache=True)
def _kept_rows(low, high, offset, exponent_x, exponent_y, log_inverse_tol):
    """First and last kept y row (block-local) of each Gaussian on each x plane.

    A row is kept where its x-y exponent is within the cut. The y exponent is
    convex in y (and monotone in floating point on each side of its minimum), so
    the kept rows are one contiguous run; ``first > last`` when there is none.
    Runs of neighbouring planes are nested (one threshold on the same exponents),
    so each plane starts from its neighbour's run and only moves its ends.
    """
    count = low.shape[0]
    first_row = np.empty(offset[count, 0], np.int64)
    last_row = np.empty(offset[count, 0], np.int64)
    cut = log_inverse_tol
    for c in range(count):
        # Row j (block-local) of Gaussian c has exponent exponent_y[row_base + j].
        row_base = offset[c, 1] - low[c, 1]
        first = low[c, 1]
        last = low[c, 1] - 1
        for i in range(low[c, 0], high[c, 0] + 1):
            at = offset[c, 0] + i - low[c, 0]
            ex = exponent_x[at]
            if first > last:  # no run to start from: scan the whole range
                first = low[c, 1]
                last = high[c, 1]
            # Grow the run while the rows beyond its ends are kept ...
            while first > low[c, 1] and ex + exponent_y[row_base + first - 1] <= cut:
                first -= 1
            while last < high[c, 1] and ex + exponent_y[row_base + last + 1] <= cut:
                last += 1
            # ... or shrink it while its ends are not.
            while first <= last and ex + exponent_y[row_base + first] > cut:
                first += 1
            while last >= first and ex + exponent_y[row_base + last] > cut:
                last -= 1
            first_row[at] = first
            last_row[at] = last
    return first_row, last_row


@numba.njit(nogil=True, cache=True)
def _strip_entries(block_shape, low, high, offset, strip):
    """For each (slab of SLAB planes, strip of rows), the Gaussians reaching it.

    A counting sort: entries of list ``t`` are ``entries[list_start[t]:list_start[t+1]]``,
    in the given order of the Gaussians (a stable fill), which fixes each voxel's
    summation order.
    """
    count = low.shape[0]
    strips = (block_shape[1] + strip - 1) // strip
    slabs = (block_shape[0] + SLAB - 1) // SLAB
    sizes = np.zeros(slabs * strips + 1, np.int64)
    for c in range(count):
        if low[c, 0] > high[c, 0] or low[c, 1] > high[c, 1] or low[c, 2] > high[c, 2]:
            continue
        for slab in range(low[c, 0] // SLAB, high[c, 0] // SLAB + 1):
            for s in range(low[c, 1] // strip, high[c, 1] // strip + 1):
                sizes[slab * strips + s + 1] += 1
    list_start = np.cumsum(sizes)
    entries = np.empty((list_start[-1], 7), np.int64)
    fill = list_start[:-1].copy()
    for c in range(count):
        if low[c, 0] > high[c, 0] or low[c, 1] > high[c, 1] or low[c, 2] > high[c, 2]:
            continue
        for slab in range(low[c, 0] // SLAB, high[c, 0] // SLAB + 1):
            for s in range(low[c, 1] // strip, high[c, 1] // strip + 1):
                e = fill[slab * strips + s]
                entries[e, _X_LOW] = low[c, 0]
                entries[e, _X_HIGH] = high[c, 0]
                entries[e, _X_BASE] = offset[c, 0] - low[c, 0]
                entries[e, _Y_BASE] = offset[c, 1] - low[c, 1]
                entries[e, _Z_LOW] = low[c, 2]
                entries[e, _Z_START] = offset[c, 2]
                entries[e, _Z_LENGTH] = offset[c + 1, 2] - offset[c, 2]
                fill[slab * strips + s] += 1
    return list_start, entries


@numba.njit(nogil=True, cache=True)
def _level_boxes(fine_low, fine_high, scale):
    """Level support boxes ``[fine_low // scale, fine_high // scale]``; empty stays empty."""
    count = fine_low.shape[0]
    low = np.empty((count, 3), np.int64)
    high = np.empty((count, 3), np.int64)
    for c in range(count):
        for d in range(3):
            low[c, d] = fine_low[c, d] // scale
            if fine_high[c, d] < fine_low[c, d]:
                high[c, d] = low[c, d] - 1
            else:
                high[c, d] = fine_high[c, d] // scale
    return low, high


@numba.njit(nogil=True, cache=True)
def _level_axis(axis, block_start, scale, fine_length, low, offset, fine_start, fine_low,
                fine_offset, fine_exponents, fine_factors):  # fmt: skip
    """One axis's level exponents and factors from the level-0 ones (box minima and means).

    Level sample ``i`` covers level-0 samples ``i * scale`` to ``(i + 1) * scale - 1``
    (the last box stops at ``fine_length``). Its factor is the sum of the level-0
    factors there (zero outside the support), in ascending order, divided by the
    number of level-0 samples the box holds; its exponent is the smallest level-0
    exponent there. Gaussian ``c``'s level-0 values start at ``fine_offset[c, axis]``
    for global level-0 sample ``fine_start[axis] + fine_low[c, axis]``, and cover
    exactly the level boxes of its clipped level range (``low``, ``offset``).
    """
    count = low.shape[0]
    exponents = np.empty(offset[count, axis])
    factors = np.empty(offset[count, axis])
    for c in range(count):
        at = fine_offset[c, axis]
        end = fine_offset[c + 1, axis]
        k = fine_start[axis] + fine_low[c, axis]  # global level-0 index of fine_*[at]
        for j in range(offset[c + 1, axis] - offset[c, axis]):
            i = block_start[axis] + low[c, axis] + j
            box_end = min((i + 1) * scale, fine_length[axis])
            # The support reaches every box of the level range: at least one term.
            total = fine_factors[at]
            smallest = fine_exponents[at]
            at += 1
            k += 1
            while at < end and k < box_end:
                total += fine_factors[at]
                smallest = min(smallest, fine_exponents[at])
                at += 1
                k += 1
            factors[offset[c, axis] + j] = total / (box_end - i * scale)
            exponents[offset[c, axis] + j] = smallest
    return exponents, factors


@numba.njit(nogil=True, cache=True)
def _sweep_strips(block, low, high, offset, factor_x, exponent_x, factor_y, exponent_y, factor_z,
                  log_inverse_tol, strip, overwrite):  # fmt: skip
    """Add the Gaussians, given by their clipped boxes and 1D factors, strip by strip.

    ``factor_z`` is in the block's dtype; the rest as :func:`add_gaussians_to_block`.
    Returns the number of voxel updates.
    """
    shape = block.shape
    first_row, last_row = _kept_rows(low, high, offset, exponent_x, exponent_y, log_inverse_tol)
    list_start, entries = _strip_entries(shape, low, high, offset, strip)

    strips = (shape[1] + strip - 1) // strip
    updates = 0
    for i in range(shape[0]):
        plane_lists = (i // SLAB) * strips
        for s in range(strips):
            row_low = s * strip
            row_high = min(row_low + strip, shape[1]) - 1
            if overwrite:
                block[i, row_low : row_high + 1, :] = 0
            for e in range(list_start[plane_lists + s], list_start[plane_lists + s + 1]):
                if i < entries[e, _X_LOW] or i > entries[e, _X_HIGH]:
                    continue
                at = entries[e, _X_BASE] + i
                first = max(first_row[at], row_low)
                last = min(last_row[at], row_high)
                if first > last:
                    continue
                add_outer_rows(
                    block,
                    (i * shape[1] + first) * shape[2] + entries[e, _Z_LOW],
                    shape[2],
                    factor_x[at],
                    factor_y,
                    entries[e, _Y_BASE] + first,
                    last - first + 1,
                    factor_z,
                    entries[e, _Z_START],
                    entries[e, _Z_LENGTH],
                )
                updates += (last - first + 1) * entries[e, _Z_LENGTH]
    return updates


@numba.njit(nogil=True, cache=True)
def add_gaussians_to_block(
    block: np.ndarray,
    block_start: np.ndarray,
    origin: np.ndarray,
    spacing: np.ndarray,
    positions: np.ndarray,
    sigma: np.ndarray,
    amplitude: np.ndarray,
    index_low: np.ndarray,
    index_high: np.ndarray,
    log_inverse_tol: float,
    strip: int,
    overwrite: bool,
) -> int:
    """Add truncated Gaussians into ``block`` in place.

    Parameters
    ----------
    block : ndarray, shape (nx, ny, nz), float32 or float64, C-contiguous
        The output block; Gaussians are added to what it holds.
    block_start : ndarray, shape (3,), int64
        Global sample index of ``block[0, 0, 0]`` on each axis.
    origin, spacing : ndarray, shape (3,), float64
        Grid geometry: global sample ``k`` on axis ``d`` sits at
        ``origin[d] + k * spacing[d]`` (coordinate units).
    positions : ndarray, shape (K, 3), float64
        Gaussian centres (coordinate units).
    sigma : ndarray, shape (K, 3), or (1, 3) shared by all, float64
        Standard deviation of each Gaussian along each axis (coordinate units).
    amplitude : ndarray, shape (K,), or (1,) shared by all, float64
        Peak value of each Gaussian (weight times normalisation).
    index_low, index_high : ndarray, shape (K, 3), int32 or int64
        Inclusive global sample index range of each Gaussian's support box.
    log_inverse_tol : float
        ``ln(1 / tol)``. A row is skipped where its x-y exponent exceeds it,
        that is, where the Gaussian is below ``tol`` times its peak all along it.
    strip : int
        Rows (y samples) of one x plane swept together, sized to stay in L1.
    overwrite : bool
        If true, ignore what ``block`` holds (render as if it were zeros); if
        false, add to it.

    Returns
    -------
    int
        The number of voxel updates (one multiply-add of one Gaussian into one
        voxel) performed.
    """
    low, high, offset = _clip_boxes(block.shape, block_start, index_low, index_high)
    factor_x, exponent_x, factor_y, exponent_y, factor_z, _ = _factors(
        block_start, origin, spacing, positions, sigma, amplitude, low, high, offset
    )
    return _sweep_strips(
        block, low, high, offset, factor_x, exponent_x, factor_y, exponent_y,
        factor_z.astype(block.dtype), log_inverse_tol, strip, overwrite,
    )  # fmt: skip


@numba.njit(nogil=True, cache=True)
def add_level_gaussians_to_block(
    block: np.ndarray,
    block_start: np.ndarray,
    origin: np.ndarray,
    spacing: np.ndarray,
    positions: np.ndarray,
    sigma: np.ndarray,
    amplitude: np.ndarray,
    fine_low: np.ndarray,
    fine_high: np.ndarray,
    fine_shape: np.ndarray,
    scale: int,
    log_inverse_tol: float,
    strip: int,
    overwrite: bool,
) -> int:
    """Add truncated Gaussians into a block of pyramid level ``l`` (``scale = 2**l``).

    Level sample ``(i, j, k)`` is the mean of the level-0 samples of its box,
    ``scale`` of them per axis (fewer in the last box of an axis, which stops at
    the level-0 grid's edge). The box mean of a separable Gaussian is separable:
    the value is ``Fx[i] Fy[j] Fz[k]``, each factor the mean of the level-0
    factors over the box, zero outside the Gaussian's level-0 support box.

    Parameters
    ----------
    block : ndarray, shape (nx, ny, nz), float32 or float64, C-contiguous
        The output block of the level; Gaussians are added to what it holds.
    block_start : ndarray, shape (3,), int64
        Global level sample index of ``block[0, 0, 0]`` on each axis.
    origin, spacing : ndarray, shape (3,), float64
        Geometry of the level-0 grid (coordinate units).
    positions, sigma, amplitude
        As :func:`add_gaussians_to_block`.
    fine_low, fine_high : ndarray, shape (K, 3), int64
        Inclusive level-0 sample range of each Gaussian's support box, inside
        the level-0 grid (empty where low > high): what
        :func:`add_gaussians_to_block` takes as ``index_low, index_high`` at level 0.
        The level support box is ``[fine_low // scale, fine_high // scale]``.
    fine_shape : ndarray, shape (3,), int64
        Shape of the level-0 grid; the level's is ``ceil(fine_shape / scale)``.
    scale : int
        Level-0 samples per level sample along each axis, ``2**l`` (at least 1).
    log_inverse_tol, strip, overwrite
        As :func:`add_gaussians_to_block`. A level row is skipped where the x-y
        exponent, each axis's being the smallest level-0 exponent of the box, exceeds
        ``log_inverse_tol``: where every level-0 row it averages would have been
        skipped. So the level differs from the box mean of the untruncated-row
        render by less than ``tol`` times the peak per Gaussian.

    Returns
    -------
    int
        The number of voxel updates performed.

    Notes
    -----
    Each factor is ``total / n``: ``total`` the level-0 factors (computed as
    :func:`add_gaussians_to_block` does, amplitude on x) summed in ascending index
    order, ``n`` the number of level-0 samples in the box. Everything follows from
    global indices, so the level's bits do not depend on its blocks; with
    ``scale == 1`` they are those of :func:`add_gaussians_to_block`.
    """
    low, high = _level_boxes(fine_low, fine_high, scale)
    low, high, offset = _clip_boxes(block.shape, block_start, low, high)
    # The level-0 samples under the block: the supports clipped to them are exactly
    # the level-0 samples of the clipped level boxes.
    fine_start = block_start * scale
    fine_block = (block.shape[0] * scale, block.shape[1] * scale, block.shape[2] * scale)
    fine_low_local, fine_high_local, fine_offset = _clip_boxes(
        fine_block, fine_start, fine_low, fine_high
    )
    fine = _factors(fine_start, origin, spacing, positions, sigma, amplitude, fine_low_local,
                    fine_high_local, fine_offset)  # fmt: skip
    level = (block_start, scale, fine_shape, low, offset, fine_start, fine_low_local, fine_offset)
    exponent_x, factor_x = _level_axis(0, *level, fine[1], fine[0])
    exponent_y, factor_y = _level_axis(1, *level, fine[3], fine[2])
    _, factor_z = _level_axis(2, *level, fine[5], fine[4])
    return _sweep_strips(
        block, low, high, offset, factor_x, exponent_x, factor_y, exponent_y,
        factor_z.astype(block.dtype), log_inverse_tol, strip, overwrite,
    )  # fmt: skip
