"""Pyramid levels rendered straight from the Gaussians (``add_level_gaussians_to_block``).

Level ``l`` (``m = 2**l``) sample ``(i, j, k)`` is the mean of the level-0 samples
``[i m, (i + 1) m) x [j m, (j + 1) m) x [k m, (k + 1) m)`` that exist. References here
are float64 numpy: the level-0 volume by brute force (every Gaussian evaluated on the
whole grid and cut to its support box, no row cut), box-meaned with ragged far edges.

The documented bound: per level voxel,
``|level - boxmean(reference)| <= tol * sum |a_c| + rounding``, the sum over the
Gaussians whose level box holds the voxel (a row is skipped only where every level-0
row it averages is below ``tol`` times the peak), rounding being
``(n + 3 m + 8) eps(dtype) M + (m^3 + n + 8) eps(float64) M`` with ``n`` those
Gaussians' count and ``M`` the box mean of ``sum |a_c| g_c``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskgauss._kernel import add_gaussians_to_block, add_level_gaussians_to_block
from tests import reference
from tests.conftest import compiled_assembly

FINE_SHAPE = (37, 29, 45)
ORIGIN = np.array([-3.1, 0.7, 12.25])
SPACING = np.array([0.45, 0.8, 0.3])


# ---------------------------------------------------------------- independent helpers


def _axes(fine_shape):
    return [ORIGIN[d] + np.arange(fine_shape[d]) * SPACING[d] for d in range(3)]


def _level_shape(fine_shape, m):
    return tuple(-(-n // m) for n in fine_shape)


def _problem(seed, count=30, *, shared=False, fine_shape=FINE_SHAPE):
    """Signed Gaussians over the grid and around it (many cut by its faces)."""
    rng = np.random.default_rng(seed)
    period = np.array(fine_shape) * SPACING
    positions = rng.uniform(ORIGIN - 2.5, ORIGIN + period + 2.5, size=(count, 3))
    rows = 1 if shared else count
    sigma = rng.uniform(0.4, 1.8, size=(rows, 3))
    amplitude = rng.uniform(-2.0, 3.0, size=rows)
    return positions, sigma, amplitude


def _support(positions, sigma, tol, fine_shape):
    """Inclusive level-0 support boxes on the grid by scanning its samples; empty: low > high."""
    return reference.support_ranges(_axes(fine_shape), positions, sigma, tol)


def _render(m, positions, sigma, amplitude, boxes, tol, *, dtype=np.float64,
            fine_shape=FINE_SHAPE, start=(0, 0, 0), shape=None, strip=5, block=None,
            overwrite=False):  # fmt: skip
    """Call the level kernel on a fresh (or given) block; return the block and the updates."""
    if shape is None:
        shape = tuple(n - s for n, s in zip(_level_shape(fine_shape, m), start, strict=True))
    if block is None:
        block = np.zeros(shape, dtype=dtype)
    updates = add_level_gaussians_to_block(
        block,
        np.asarray(start, dtype=np.int64),
        ORIGIN,
        SPACING,
        np.ascontiguousarray(positions, dtype=np.float64),
        np.ascontiguousarray(sigma, dtype=np.float64),
        np.ascontiguousarray(amplitude, dtype=np.float64),
        boxes[0],
        boxes[1],
        np.asarray(fine_shape, dtype=np.int64),
        m,
        math.log(1 / tol),
        strip,
        overwrite,
    )
    return block, updates


def _box_mean(volume, m):
    """Mean over m x m x m boxes; the last box of an axis holds what is left."""
    for axis in range(3):
        n = volume.shape[axis]
        starts = np.arange(0, n, m)
        counts = np.minimum(starts + m, n) - starts
        shape = [1, 1, 1]
        shape[axis] = len(starts)
        volume = np.add.reduceat(volume, starts, axis=axis) / counts.reshape(shape)
    return volume


def _exponents(axis, positions, sigma, fine_shape):
    """Level-0 exponents ``0.5 s s``, ``s = (x - p) / sigma``, per Gaussian over a whole axis."""
    coordinates = _axes(fine_shape)[axis]
    sigma = np.broadcast_to(sigma, positions.shape)
    scaled = (coordinates[None, :] - positions[:, axis, None]) / sigma[:, axis, None]
    return 0.5 * scaled * scaled


def _inside(low, high, fine_shape, axis):
    """Per Gaussian, whether each level-0 sample of an axis lies in its support box."""
    index = np.arange(fine_shape[axis])
    return (index[None, :] >= low[:, axis, None]) & (index[None, :] <= high[:, axis, None])


def _brute_force_level(m, positions, sigma, amplitude, boxes, fine_shape):
    """Box mean of the level-0 sum (no row cut), of its magnitude, and per-voxel covering."""
    low, high = boxes
    amplitude = np.broadcast_to(amplitude, len(positions))
    exponent = [_exponents(d, positions, sigma, fine_shape) for d in range(3)]
    inside = [_inside(low, high, fine_shape, d) for d in range(3)]
    total = np.zeros(fine_shape)
    magnitude = np.zeros(fine_shape)
    level = _level_shape(fine_shape, m)
    covering = np.zeros(level, dtype=np.int64)
    covering_abs = np.zeros(level)
    for c in range(len(positions)):
        mask = inside[0][c][:, None, None] & inside[1][c][None, :, None]
        mask = mask & inside[2][c][None, None, :]
        x, y, z = (exponent[d][c] for d in range(3))
        summed = (x[:, None, None] + y[None, :, None]) + z[None, None, :]
        value = np.where(mask, np.exp(-summed), 0.0)
        total += amplitude[c] * value
        magnitude += abs(amplitude[c]) * value
        reached = _box_mean(mask.astype(np.float64), m) > 0
        covering += reached
        covering_abs += np.where(reached, abs(amplitude[c]), 0.0)
    return _box_mean(total, m), _box_mean(magnitude, m), covering, covering_abs


def _kept_level(m, positions, sigma, amplitude, boxes, tol, fine_shape):
    """Exactly what the level kernel computes, in float64: box-mean factors on the rows
    whose smallest level-0 x-y exponent over the box is within the cut; and its update count."""
    low, high = boxes
    amplitude = np.broadcast_to(amplitude, len(positions))
    cut = math.log(1 / tol)
    level = _level_shape(fine_shape, m)
    total = np.zeros(level)
    updates = 0
    sigma = np.broadcast_to(sigma, positions.shape)
    for c in range(len(positions)):
        means, smallest = [], []
        for d in range(3):
            inside = _inside(low[c : c + 1], high[c : c + 1], fine_shape, d)[0]
            exponent = _exponents(d, positions[c : c + 1], sigma[c : c + 1], fine_shape)[0]
            factor = np.where(inside, np.exp(-exponent), 0.0)
            padded = np.full(level[d] * m, np.inf)
            padded[: fine_shape[d]] = np.where(inside, exponent, np.inf)
            smallest.append(padded.reshape(-1, m).min(axis=1))
            starts = np.arange(0, fine_shape[d], m)
            counts = np.minimum(starts + m, fine_shape[d]) - starts
            means.append(np.add.reduceat(factor, starts) / counts)
        rows = smallest[0][:, None] + smallest[1][None, :] <= cut
        reached_z = np.isfinite(smallest[2])
        value = amplitude[c] * (means[0][:, None] * means[1][None, :])
        total += np.where(rows[:, :, None] & reached_z, value[:, :, None] * means[2], 0.0)
        updates += int(rows.sum()) * int(reached_z.sum())
    return total, updates


def _cuts(rng, length, pieces):
    inner = rng.choice(np.arange(1, length), size=min(pieces - 1, length - 1), replace=False)
    return [0, *sorted(int(x) for x in inner), length]


def _render_in_pieces(m, problem, boxes, tol, dtype, fine_shape, cuts, strip):
    level = _level_shape(fine_shape, m)
    pieces = np.full(level, np.nan, dtype=dtype)
    total = 0
    for i in range(len(cuts[0]) - 1):
        for j in range(len(cuts[1]) - 1):
            for k in range(len(cuts[2]) - 1):
                start = (cuts[0][i], cuts[1][j], cuts[2][k])
                stop = (cuts[0][i + 1], cuts[1][j + 1], cuts[2][k + 1])
                shape = tuple(b - a for a, b in zip(start, stop, strict=True))
                block, updates = _render(m, *problem, boxes, tol, dtype=dtype,
                                         fine_shape=fine_shape, start=start, shape=shape,
                                         strip=strip)  # fmt: skip
                pieces[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = block
                total += updates
    return pieces, total


def _assert_within_bound(block, m, problem, boxes, tol, fine_shape):
    """The documented bound against the box mean of the brute-force level 0."""
    expected, magnitude, covering, covering_abs = _brute_force_level(m, *problem, boxes,
                                                                     fine_shape)  # fmt: skip
    eps = np.finfo(block.dtype).eps
    rounding = (covering + 3 * m + 8) * eps * magnitude
    rounding += (m**3 + covering + 8) * np.finfo(np.float64).eps * magnitude
    allowed = tol * covering_abs + rounding + np.finfo(block.dtype).tiny
    error = np.abs(block.astype(np.float64) - expected)
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert np.all(error <= allowed), (
        f"error {error[worst]:.3e} > bound {allowed[worst]:.3e} at {worst}: "
        f"expected {expected[worst]:.6e}, computed {block[worst]:.6e}"
    )
    assert np.all(block[covering == 0] == 0)
    return error, covering


# ---------------------------------------------------------------- against the references


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [2, 4, 8, 64])
@pytest.mark.parametrize("shared", [False, True])
def test_level_is_the_box_mean_of_level_0_within_the_bound(m, dtype, shared):
    tol = 1e-2
    problem = _problem(1, shared=shared)
    boxes = _support(*problem[:2], tol, FINE_SHAPE)
    block, _ = _render(m, *problem, boxes, tol, dtype=dtype)
    assert block.shape == _level_shape(FINE_SHAPE, m)
    assert block.dtype == dtype
    error, covering = _assert_within_bound(block, m, problem, boxes, tol, FINE_SHAPE)
    assert covering.max() >= 3  # several Gaussians overlap somewhere: the test sums
    if m <= 4:
        assert np.max(error) > 1e-5  # rows really are cut: the bound is not vacuous


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [2, 4, 8])
def test_level_is_exactly_the_kept_rows_of_the_box_mean_factors(m, dtype):
    """A level row is kept iff the smallest level-0 x-y exponent over its box is within the
    cut; kept rows hold the product of the box-mean factors, to rounding."""
    tol = 1e-3
    problem = _problem(2, count=25)
    boxes = _support(*problem[:2], tol, FINE_SHAPE)
    block, updates = _render(m, *problem, boxes, tol, dtype=dtype)
    expected, expected_updates = _kept_level(m, *problem, boxes, tol, FINE_SHAPE)
    _, magnitude, covering, _ = _brute_force_level(m, *problem, boxes, FINE_SHAPE)
    allowed = (covering + 3 * m + 8) * np.finfo(dtype).eps * magnitude + np.finfo(dtype).tiny
    error = np.abs(block.astype(np.float64) - expected)
    assert np.all(error <= allowed), float(np.max(error - allowed))
    assert updates == expected_updates
    assert expected_updates < sum(
        math.prod(int(b) for b in (boxes[1][c] // m - boxes[0][c] // m + 1))
        for c in range(len(problem[0]))
        if np.all(boxes[1][c] >= boxes[0][c])
    )  # the row cut skipped some level rows of the boxes


def test_a_peak_alone_in_its_box_is_its_mean():
    """One Gaussian narrow enough that only its peak sample survives the cut: the level
    value is the amplitude over the number of level-0 samples of the (ragged) box."""
    fine_shape = (7, 6, 5)
    position = ORIGIN + np.array([6, 5, 4]) * SPACING  # the grid's last sample
    problem = (position[None], np.full((1, 3), 0.01), np.array([-3.5]))
    boxes = _support(*problem[:2], 1e-6, fine_shape)
    block, updates = _render(4, *problem, boxes, 1e-6, fine_shape=fine_shape)
    assert block.shape == (2, 2, 2)
    assert updates == 1
    assert block[1, 1, 1] == -3.5 / (3 * 2 * 1)
    assert np.count_nonzero(block) == 1


# ---------------------------------------------------------------- bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("overwrite", [False, True])
def test_scale_1_is_the_level_0_kernel_bit_for_bit(dtype, shared, overwrite):
    tol = 1e-4
    positions, sigma, amplitude = _problem(3, count=40, shared=shared)
    low, high = _support(positions, sigma, tol, FINE_SHAPE)
    for start, shape, strip in [((0, 0, 0), FINE_SHAPE, 7), ((5, 3, 11), (20, 17, 30), 1),
                                ((30, 20, 0), (7, 9, 45), 64)]:  # fmt: skip
        prefill = np.random.default_rng(0).uniform(-1, 1, size=shape).astype(dtype)
        level, level_updates = _render(1, positions, sigma, amplitude, (low, high), tol,
                                       start=start, shape=shape, strip=strip,
                                       block=prefill.copy(), overwrite=overwrite)  # fmt: skip
        block = prefill.copy()
        updates = add_gaussians_to_block(
            block, np.asarray(start, np.int64), ORIGIN, SPACING, positions, sigma, amplitude,
            low, high, math.log(1 / tol), strip, overwrite,
        )  # fmt: skip
        np.testing.assert_array_equal(level, block)
        assert level_updates == updates
        assert updates > 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [2, 4, 8])
def test_blocks_at_any_start_assemble_to_the_whole_level_bit_for_bit(m, dtype):
    tol = 1e-5
    problem = _problem(4, count=40)
    boxes = _support(*problem[:2], tol, FINE_SHAPE)
    whole, whole_updates = _render(m, *problem, boxes, tol, dtype=dtype, strip=3)
    assert whole.any()
    rng = np.random.default_rng(m)
    level = _level_shape(FINE_SHAPE, m)
    for strip in (1, 4, 64):
        cuts = [_cuts(rng, n, 4) for n in level]
        pieces, updates = _render_in_pieces(m, problem, boxes, tol, dtype, FINE_SHAPE, cuts,
                                            strip)  # fmt: skip
        np.testing.assert_array_equal(pieces, whole, err_msg=f"cuts {cuts}, strip {strip}")
        assert updates == whole_updates


# ---------------------------------------------------------------- edges, empties, overwrite


def test_gaussians_outside_the_grid_or_with_empty_boxes_add_nothing():
    tol = 1e-6
    m = 4
    problem = _problem(5, count=20)
    low, high = _support(*problem[:2], tol, FINE_SHAPE)
    block, updates = _render(m, *problem, (low, high), tol)
    # Far outside (empty on every axis), empty on z only, and an empty y box that
    # sits inside one level box (low // m == high // m must not make it non-empty).
    middle = ORIGIN + np.array(FINE_SHAPE) // 2 * SPACING
    extra_positions = np.array([[-100.0, 100.0, -100.0], middle, middle])
    extra_low = np.array([[0, 0, 0], [10, 10, 20], [10, 13, 20]])
    extra_high = np.array([[-1, -1, -1], [20, 20, 19], [20, 12, 30]])
    outside = _support(extra_positions[:1], np.ones((1, 3)), tol, FINE_SHAPE)
    assert np.all(outside[0] > outside[1])
    positions = np.concatenate([extra_positions[:1], problem[0], extra_positions[1:]])
    both, both_updates = _render(
        m,
        positions,
        np.concatenate([np.ones((1, 3)), problem[1], np.ones((2, 3))]),
        np.concatenate([[5.0], problem[2], [6.0, 7.0]]),
        (
            np.concatenate([extra_low[:1], low, extra_low[1:]]),
            np.concatenate([extra_high[:1], high, extra_high[1:]]),
        ),
        tol,
    )
    np.testing.assert_array_equal(both, block)
    assert both_updates == updates
    # Boxes cut by the grid's faces: the problem has Gaussians centred outside the grid
    # that reach it, and its level boxes end at the last (ragged) level sample.
    last = ORIGIN + (np.array(FINE_SHAPE) - 1) * SPACING
    centred_outside = np.any((problem[0] < ORIGIN) | (problem[0] > last), axis=1)
    assert np.any(centred_outside & np.all(high >= low, axis=1))
    assert np.any(high == np.array(FINE_SHAPE) - 1)


def test_no_gaussians_leave_the_block_untouched_and_return_zero():
    prefill = np.random.default_rng(6).uniform(-1, 1, size=(5, 4, 6))
    empty = np.empty((0, 3), np.int64)
    nothing = (np.empty((0, 3)), np.empty((0, 3)), np.empty(0))
    block, updates = _render(2, *nothing, (empty, empty), 1e-6, start=(3, 2, 1),
                             block=prefill.copy())  # fmt: skip
    assert updates == 0
    np.testing.assert_array_equal(block, prefill)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("strip", [1, 4, 64])
def test_overwrite_ignores_what_the_block_held_and_add_adds(dtype, strip):
    tol = 1e-6
    m = 2
    problem = _problem(7, count=6)
    boxes = _support(*problem[:2], tol, FINE_SHAPE)
    start, shape = (2, 1, 3), (15, 12, 17)
    fresh, fresh_updates = _render(m, *problem, boxes, tol, dtype=dtype, start=start,
                                   shape=shape, strip=strip)  # fmt: skip
    assert fresh.any()
    assert (fresh == 0).any()
    stale = np.full(shape, np.nan, dtype=dtype)
    block, updates = _render(m, *problem, boxes, tol, start=start, shape=shape, strip=strip,
                             block=stale, overwrite=True)  # fmt: skip
    np.testing.assert_array_equal(block, fresh)
    assert updates == fresh_updates
    # Adding to zeros is the fresh render; adding to a constant adds it, to rounding.
    block, _ = _render(m, *problem, boxes, tol, start=start, shape=shape, strip=strip,
                       block=np.zeros(shape, dtype))  # fmt: skip
    np.testing.assert_array_equal(block, fresh)
    block, _ = _render(m, *problem, boxes, tol, start=start, shape=shape, strip=strip,
                       block=np.full(shape, 7.0, dtype))  # fmt: skip
    np.testing.assert_array_equal(block[fresh == 0], dtype(7.0))
    magnitude, _ = _render(m, problem[0], problem[1], np.abs(problem[2]), boxes, tol,
                           start=start, shape=shape)  # fmt: skip
    difference = np.abs(block.astype(np.float64) - (7.0 + fresh.astype(np.float64)))
    assert np.all(difference <= 24 * np.finfo(dtype).eps * (7.0 + magnitude))


# ---------------------------------------------------------------- any valid input


@settings(max_examples=20, deadline=None)
@given(
    fine_shape=st.tuples(*[st.integers(1, 19)] * 3),
    level=st.integers(0, 3),
    count=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
    shared=st.booleans(),
    double=st.booleans(),
    tol=st.sampled_from([1e-1, 1e-3, 1e-6]),
    strip=st.integers(1, 9),
)
def test_any_problem_meets_the_bound_and_splits_bit_for_bit(
    fine_shape, level, count, seed, shared, double, tol, strip
):
    m = 2**level
    dtype = np.float64 if double else np.float32
    problem = _problem(seed, count, shared=shared, fine_shape=fine_shape)
    boxes = _support(*problem[:2], tol, fine_shape)
    whole, whole_updates = _render(m, *problem, boxes, tol, dtype=dtype, fine_shape=fine_shape,
                                   strip=strip)  # fmt: skip
    _assert_within_bound(whole, m, problem, boxes, tol, fine_shape)
    rng = np.random.default_rng(seed)
    cuts = [_cuts(rng, n, 2) for n in _level_shape(fine_shape, m)]
    pieces, updates = _render_in_pieces(m, problem, boxes, tol, dtype, fine_shape, cuts, strip)
    np.testing.assert_array_equal(pieces, whole)
    assert updates == whole_updates


# ---------------------------------------------------------------- portable bits


def test_no_fused_multiply_add_in_the_level_kernel(tmp_path):
    """Compiled afresh in a subprocess (numba cannot show code it loaded from its cache), for
    float64 blocks: the level factors do not depend on the block's type, and the strip loop
    both levels share is checked for both types through ``add_gaussians_to_block``."""
    setup = """
import numpy as np
from daskgauss import _kernel
boxes = np.zeros((1, 3), np.int64)
_kernel.add_level_gaussians_to_block(
    np.zeros((2, 2, 2)), np.zeros(3, np.int64), np.zeros(3), np.ones(3), np.zeros((1, 3)),
    np.ones((1, 3)), np.ones(1), boxes, boxes + 1, np.full(3, 4, np.int64), 2, 13.8, 2, True)
"""
    lines = compiled_assembly(
        setup,
        "_kernel.add_level_gaussians_to_block, _kernel._level_axis, "
        "_kernel._level_boxes, _kernel._sweep_strips",
        tmp_path,
    )
    names = {line[0] for line in lines}
    assert {"add_level_gaussians_to_block", "_level_axis", "_sweep_strips"} <= names
    assert all(line[1] > 0 for line in lines)
    assert any(line[2] for line in lines if line[0] == "_sweep_strips")
    assert not [line for line in lines if line[3]]
