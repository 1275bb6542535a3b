"""The numba block kernel, called directly with plain numpy arrays (no dask, no binning).

The kernel adds Gaussian ``c`` to a voxel iff the voxel's global index lies in
``[index_low[c], index_high[c]]`` on every axis AND the row's x-y exponent
``0.5 ((x - cx) / sx)^2 + 0.5 ((y - cy) / sy)^2`` is at most ``ln(1/tol)``.
Index ranges here come from an independent scan of the grid's samples.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import daskgauss as dg
from daskgauss._kernel import add_gaussians_to_block
from tests import reference
from tests.conftest import compiled_assembly

GRID = dg.Grid(shape=(30, 28, 26), origin=(-3.0, 1.5, -7.25), spacing=(0.45, 0.6, 0.35))
BLOCK_START = (7, 5, 9)
BLOCK_SHAPE = (13, 11, 15)


# ---------------------------------------------------------------- independent helpers


def _block_axes(grid, start, shape):
    return [grid.axes[d][start[d] : start[d] + shape[d]] for d in range(3)]


def _problem(seed, count=40, weights=(-2.0, 3.0)):
    """Random Gaussians around the block, many of them reaching it from outside."""
    rng = np.random.default_rng(seed)
    lower = np.array(GRID.origin) - 2
    upper = np.array(GRID.origin) + np.array(GRID.period) + 2
    positions = rng.uniform(lower, upper, size=(count, 3))
    sigma = rng.uniform(0.3, 1.6, size=(count, 3))
    amplitude = rng.uniform(*weights, size=count)
    return positions, sigma, amplitude


def _run(
    positions,
    sigma,
    amplitude,
    tol,
    *,
    dtype=np.float64,
    start=BLOCK_START,
    shape=BLOCK_SHAPE,
    strip=16,
    block=None,
    grid=GRID,
    ranges=None,
    overwrite=False,
):
    """Call the kernel on a fresh (or given) block; return the block and the update count."""
    if block is None:
        block = np.zeros(shape, dtype=dtype)
    low, high = (
        ranges if ranges is not None else reference.support_ranges(grid.axes, positions, sigma, tol)
    )
    updates = add_gaussians_to_block(
        block,
        np.asarray(start, dtype=np.int64),
        np.array(grid.origin),
        np.array(grid.spacing),
        np.ascontiguousarray(positions, dtype=np.float64),
        np.ascontiguousarray(sigma, dtype=np.float64),
        np.ascontiguousarray(amplitude, dtype=np.float64),
        low,
        high,
        math.log(1 / tol),
        strip,
        overwrite,
    )
    return block, updates


def _kept(axes, positions, sigma, low, high, start, tol):
    """Per Gaussian, the (x, y, z) masks and row mask of the voxels the kernel must touch."""
    log_inverse_tol = math.log(1 / tol)
    out = []
    for c in range(len(positions)):
        index = [start[d] + np.arange(len(axes[d])) for d in range(3)]
        inside = [(index[d] >= low[c, d]) & (index[d] <= high[c, d]) for d in range(3)]
        exponent = [0.5 * ((axes[d] - positions[c, d]) / sigma[c, d]) ** 2 for d in range(3)]
        rows = (
            inside[0][:, None]
            & inside[1][None, :]
            & (exponent[0][:, None] + exponent[1][None, :] <= log_inverse_tol)
        )
        out.append((rows, inside[2], exponent))
    return out


def _masked_reference(axes, positions, sigma, amplitude, low, high, start, tol):
    """Float64 sum of exactly the voxels the kernel keeps, and sum |a g| for rounding."""
    shape = tuple(len(a) for a in axes)
    total = np.zeros(shape)
    magnitude = np.zeros(shape)
    count = np.zeros(shape, dtype=np.int64)
    kept = _kept(axes, positions, sigma, low, high, start, tol)
    for c, (rows, inside_z, exponent) in enumerate(kept):
        mask = rows[:, :, None] & inside_z[None, None, :]
        value = np.exp(-(exponent[0][:, None, None] + exponent[1][None, :, None]))
        value = value * np.exp(-exponent[2])[None, None, :]
        total += np.where(mask, amplitude[c] * value, 0.0)
        magnitude += np.where(mask, abs(amplitude[c]) * value, 0.0)
        count += mask
    return total, magnitude, count


def _expected_updates(axes, positions, sigma, low, high, start, tol):
    """Sum over Gaussians of (rows kept in the clipped box) x (clipped z length)."""
    total = 0
    for rows, inside_z, _ in _kept(axes, positions, sigma, low, high, start, tol):
        total += int(rows.sum()) * int(inside_z.sum())
    return total


# ---------------------------------------------------------------- against brute force


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tol", [1e-2, 1e-6])
def test_block_inside_larger_grid_meets_the_documented_bound(dtype, tol):
    positions, sigma, amplitude = _problem(1)
    block, _ = _run(positions, sigma, amplitude, tol, dtype=dtype)
    assert block.dtype == dtype
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    unit = reference.unit_gaussians(axes, positions, sigma)
    exact = np.einsum("i,i...->...", amplitude, unit)
    covering = reference.covering_count(axes, positions, sigma, tol)
    bound = reference.error_bound(unit, amplitude, tol, covering, dtype)
    error = np.abs(block.astype(np.float64) - exact)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"error {error[worst]:.3e} > bound {bound[worst]:.3e} at {worst}: "
        f"exact {exact[worst]:.6e}, computed {block[worst]:.6e}"
    )
    assert covering.max() >= 3  # several Gaussians overlap somewhere: the test sums
    if tol == 1e-2:
        assert np.max(error) > 1e-4  # truncation is real, the bound is not vacuous


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_equals_the_kept_voxels_to_rounding(dtype):
    """Exactly the voxels in the box with x-y exponent <= ln(1/tol) are touched."""
    tol = 1e-3
    positions, sigma, amplitude = _problem(2, count=30)
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    block, _ = _run(positions, sigma, amplitude, tol, dtype=dtype, ranges=(low, high))
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    expected, magnitude, count = _masked_reference(
        axes, positions, sigma, amplitude, low, high, BLOCK_START, tol
    )
    eps = np.finfo(dtype).eps
    allowed = (count + 8) * eps * magnitude + np.finfo(dtype).tiny
    error = np.abs(block.astype(np.float64) - expected)
    assert np.all(error <= allowed), float(np.max(error - allowed))
    assert np.all(block[count == 0] == 0)


def test_single_gaussian_touches_exactly_the_kept_voxels():
    tol = 1e-4
    positions = np.array([[GRID.axes[0][12] + 0.1, GRID.axes[1][9], GRID.axes[2][15] - 0.05]])
    sigma = np.array([[1.1, 0.8, 0.9]])
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    block, updates = _run(positions, sigma, np.array([2.5]), tol, ranges=(low, high))
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    rows, inside_z, _ = _kept(axes, positions, sigma, low, high, BLOCK_START, tol)[0]
    mask = rows[:, :, None] & inside_z[None, None, :]
    np.testing.assert_array_equal(block != 0, mask)
    assert updates == int(mask.sum())
    box_rows = [
        min(high[0, d], BLOCK_START[d] + BLOCK_SHAPE[d] - 1) - max(low[0, d], BLOCK_START[d]) + 1
        for d in range(2)
    ]
    assert 0 < rows.sum() < box_rows[0] * box_rows[1]  # the row cut removed the box corners


def test_peak_on_a_sample_is_the_amplitude_exactly():
    grid = dg.Grid(shape=(9, 9, 9), origin=-4.0, spacing=1.0)
    positions = np.array([[0.0, 1.0, -2.0]])
    block, _ = _run(
        positions,
        np.array([[0.7, 1.3, 2.0]]),
        np.array([-1.75]),
        1e-6,
        start=(0, 0, 0),
        shape=(9, 9, 9),
        grid=grid,
    )
    assert block[4, 5, 2] == -1.75
    assert block[5, 5, 2] == pytest.approx(-1.75 * math.exp(-0.5 / 0.7**2), rel=1e-15)
    assert block[4, 5, 3] == pytest.approx(-1.75 * math.exp(-0.5 / 2.0**2), rel=1e-15)


# ---------------------------------------------------------------- update count


@pytest.mark.parametrize("tol", [1e-1, 1e-3, 1e-8])
@pytest.mark.parametrize("seed", [3, 4])
def test_update_count_matches_independent_count(seed, tol):
    positions, sigma, amplitude = _problem(seed)
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    _, updates = _run(positions, sigma, amplitude, tol, ranges=(low, high))
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    expected = _expected_updates(axes, positions, sigma, low, high, BLOCK_START, tol)
    assert updates == expected
    assert expected > 0
    # The row cut really skips rows: fewer updates than the clipped boxes hold.
    boxes = 0
    for c in range(len(positions)):
        lengths = [
            max(
                min(high[c, d], BLOCK_START[d] + BLOCK_SHAPE[d] - 1)
                - max(low[c, d], BLOCK_START[d])
                + 1,
                0,
            )
            for d in range(3)
        ]
        boxes += math.prod(lengths)
    assert updates < boxes


# ---------------------------------------------------------------- accumulation


def test_kernel_adds_into_existing_block_contents_float64():
    tol = 1e-6
    positions, sigma, amplitude = _problem(5)
    rng = np.random.default_rng(0)
    prefill = rng.uniform(-10, 10, size=BLOCK_SHAPE)
    block, updates = _run(positions, sigma, amplitude, tol, block=prefill.copy())
    _, fresh_updates = _run(positions, sigma, amplitude, tol)
    assert updates == fresh_updates
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    expected, magnitude, count = _masked_reference(
        axes, positions, sigma, amplitude, low, high, BLOCK_START, tol
    )
    eps = np.finfo(np.float64).eps
    allowed = (count + 8) * eps * (magnitude + np.abs(prefill))
    assert np.all(np.abs(block - (prefill + expected)) <= allowed)
    np.testing.assert_array_equal(block[count == 0], prefill[count == 0])
    assert np.max(np.abs(block - prefill)) > 0.1  # something was added


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_adds_to_a_constant(dtype):
    tol = 1e-6
    positions, sigma, amplitude = _problem(6)
    constant = dtype(7.0)
    block, _ = _run(
        positions, sigma, amplitude, tol, block=np.full(BLOCK_SHAPE, constant, dtype=dtype)
    )
    fresh, _ = _run(positions, sigma, amplitude, tol, dtype=dtype)
    eps = np.finfo(dtype).eps
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    axes = _block_axes(GRID, BLOCK_START, BLOCK_SHAPE)
    _, magnitude, count = _masked_reference(
        axes, positions, sigma, amplitude, low, high, BLOCK_START, tol
    )
    allowed = (2 * count + 8) * eps * (magnitude + 7.0)
    difference = np.abs(block.astype(np.float64) - (7.0 + fresh.astype(np.float64)))
    assert np.all(difference <= allowed)
    assert np.all(block[count == 0] == constant)
    assert np.any(count > 0)


def test_calling_twice_doubles():
    """Adding the same Gaussians twice into a float64 block is twice the single sum (exact:
    every voxel receives x + x in the same order, and doubling is exact)."""
    positions, sigma, amplitude = _problem(7, count=1)
    once, _ = _run(positions, sigma, amplitude, 1e-6)
    twice, _ = _run(positions, sigma, amplitude, 1e-6, block=once.copy())
    np.testing.assert_array_equal(twice, 2 * once)


# ---------------------------------------------------------------- strips and determinism


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strip_sizes_give_bit_identical_results(dtype):
    tol = 1e-6
    positions, sigma, amplitude = _problem(8, count=60)
    shape = (29, 27, 11)  # 29 planes: several lists of SLAB planes and a partial one
    results = {}
    for strip in (1, 3, 8, 16, 27, 64):
        results[strip] = _run(
            positions, sigma, amplitude, tol, dtype=dtype, start=(1, 1, 2), shape=shape, strip=strip
        )
    reference_block, reference_updates = results[1]
    assert reference_block.any()
    for strip, (block, updates) in results.items():
        np.testing.assert_array_equal(block, reference_block, err_msg=f"strip {strip}")
        assert updates == reference_updates, strip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strip", [1, 4, 64])
def test_overwrite_ignores_what_the_block_held(dtype, strip):
    """Every strip is cleared, including strips no Gaussian reaches."""
    positions, sigma, amplitude = _problem(13, count=5)
    fresh, fresh_updates = _run(positions, sigma, amplitude, 1e-6, dtype=dtype, strip=strip)
    stale = np.full(BLOCK_SHAPE, np.nan, dtype=dtype)
    block, updates = _run(
        positions, sigma, amplitude, 1e-6, block=stale, strip=strip, overwrite=True
    )
    np.testing.assert_array_equal(block, fresh)
    assert updates == fresh_updates
    assert (fresh == 0).any()
    assert fresh.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_at_any_start_assemble_to_the_whole_grid_bit_for_bit(dtype):
    """Every voxel's value depends on global indices only, never on where the block is."""
    tol = 1e-5
    positions, sigma, amplitude = _problem(9, count=50)
    whole, whole_updates = _run(
        positions, sigma, amplitude, tol, dtype=dtype, start=(0, 0, 0), shape=GRID.shape
    )
    pieces = np.full(GRID.shape, np.nan, dtype=dtype)
    total_updates = 0
    cuts = [(0, 4, 17, 30), (0, 13, 28), (0, 1, 9, 25, 26)]
    for i in range(len(cuts[0]) - 1):
        for j in range(len(cuts[1]) - 1):
            for k in range(len(cuts[2]) - 1):
                start = (cuts[0][i], cuts[1][j], cuts[2][k])
                stop = (cuts[0][i + 1], cuts[1][j + 1], cuts[2][k + 1])
                shape = tuple(b - a for a, b in zip(start, stop, strict=True))
                block, updates = _run(
                    positions, sigma, amplitude, tol, dtype=dtype, start=start, shape=shape, strip=3
                )
                pieces[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = block
                total_updates += updates
    np.testing.assert_array_equal(pieces, whole)
    assert total_updates == whole_updates


# ---------------------------------------------------------------- nothing to do


def test_centre_whose_range_misses_the_block_contributes_nothing():
    tol = 1e-6
    positions, sigma, amplitude = _problem(10, count=20)
    low, high = reference.support_ranges(GRID.axes, positions, sigma, tol)
    # Three more Gaussians whose index ranges miss the block on one axis each (before,
    # after, and an empty range), though their positions sit in the block's middle.
    middle = [GRID.axes[d][BLOCK_START[d] + BLOCK_SHAPE[d] // 2] for d in range(3)]
    extra_positions = np.tile(middle, (3, 1))
    extra_sigma = np.ones((3, 3))
    extra_low = np.array([[0, 0, 0], [10, 20, 10], [10, 10, 15]])
    extra_high = np.array([[29, 27, 8], [15, 27, 15], [12, 12, 14]])
    block, updates = _run(positions, sigma, amplitude, tol, ranges=(low, high))
    both, both_updates = _run(
        np.concatenate([extra_positions[:1], positions, extra_positions[1:]]),
        np.concatenate([extra_sigma[:1], sigma, extra_sigma[1:]]),
        np.concatenate([[5.0], amplitude, [6.0, 7.0]]),
        tol,
        ranges=(
            np.concatenate([extra_low[:1], low, extra_low[1:]]),
            np.concatenate([extra_high[:1], high, extra_high[1:]]),
        ),
    )
    np.testing.assert_array_equal(both, block)
    assert both_updates == updates


def test_only_gaussians_out_of_range_leave_the_block_untouched():
    rng = np.random.default_rng(11)
    prefill = rng.uniform(-1, 1, size=BLOCK_SHAPE)
    # The block spans x 0.15..5.55, y 4.5..10.5, z -4.1..0.8; r = 5.26.
    positions = np.array([[-5.85, 7.0, -2.0], [100.0, 5.0, 0.0], [3.0, 7.0, 6.8]])
    low, high = reference.support_ranges(GRID.axes, positions, np.ones((3, 3)), 1e-6)
    assert low[0, 0] <= high[0, 0] < BLOCK_START[0]  # reaches the grid, not the block
    block, updates = _run(
        positions, np.ones((3, 3)), np.array([1.0, 2.0, 3.0]), 1e-6, block=prefill.copy()
    )
    assert updates == 0
    np.testing.assert_array_equal(block, prefill)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_no_gaussians_leave_the_block_untouched_and_return_zero(dtype):
    rng = np.random.default_rng(12)
    prefill = rng.uniform(-1, 1, size=BLOCK_SHAPE).astype(dtype)
    block, updates = _run(
        np.empty((0, 3)),
        np.empty((0, 3)),
        np.empty(0),
        1e-6,
        block=prefill.copy(),
        ranges=(np.empty((0, 3), np.int64), np.empty((0, 3), np.int64)),
    )
    assert updates == 0
    np.testing.assert_array_equal(block, prefill)


def test_no_fused_multiply_add_anywhere_in_the_kernel(tmp_path):
    """Same bits on every CPU needs every multiply and add rounded on its own.

    Compiled afresh in a subprocess (numba cannot show code it loaded from its cache).
    """
    setup = """
from daskgauss import _kernel
from daskgauss.preload import warm_up
warm_up()
"""
    lines = compiled_assembly(
        setup,
        "_kernel.add_gaussians_to_block, _kernel._factors, _kernel._axis_factors, "
        "_kernel._kept_rows, _kernel._strip_entries, _kernel._clip_boxes",
        tmp_path,
    )
    names = {line[0] for line in lines}
    assert {"add_gaussians_to_block", "_axis_factors", "_kept_rows"} <= names
    assert all(line[1] > 0 for line in lines)
    assert any(line[2] for line in lines if line[0] == "add_gaussians_to_block")
    assert not [line for line in lines if line[3]]
