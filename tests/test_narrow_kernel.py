"""The narrow-Gaussian kernel: bit-identical to the strip kernel, and the spatial order.

The contract tested here: for any inputs, ``add_narrow_gaussians_to_block`` leaves the
block bit for bit as ``add_gaussians_to_block`` does (whatever its ``strip``) and returns
the same number of voxel updates; and rendering each block's sources in
``spatial_order`` gives the same volume bits under every chunking.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import daskgauss as dg
from daskgauss._binning import BIN_SHAPE, bin_gaussians, spatial_order
from daskgauss._gaussians import prepare_gaussians
from daskgauss._kernel import add_gaussians_to_block
from daskgauss._narrow_kernel import add_narrow_gaussians_to_block
from tests import reference
from tests.conftest import compiled_assembly

STRIPS = (1, 3, 16, 256)
BINS = np.array(BIN_SHAPE, dtype=np.int64)


# ---------------------------------------------------------------- helpers


def _index_boxes(positions, radius, grid):
    """Inclusive global sample ranges of the support boxes, clipped to the grid (low > high: empty).

    The binning's formula: ceil and floor of ``(p -+ r - origin) / spacing``.
    """
    origin = np.array(grid.origin)
    spacing = np.array(grid.spacing)
    last = np.array(grid.shape) - 1
    with np.errstate(over="ignore", invalid="ignore"):
        low = np.ceil((positions - radius - origin) / spacing)
        high = np.floor((positions + radius - origin) / spacing)
    low = np.minimum(np.maximum(low, 0), last + 1)
    high = np.minimum(np.maximum(high, -1), last)
    return low.astype(np.int64), high.astype(np.int64)


def _bits(block: np.ndarray) -> np.ndarray:
    return block.view(np.uint32 if block.dtype == np.float32 else np.uint64)


def _assert_same_bits(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype
    mismatch = np.flatnonzero(_bits(actual) != _bits(expected))
    assert mismatch.size == 0, (
        f"{mismatch.size} voxels differ, first at {np.unravel_index(mismatch[0], actual.shape)}: "
        f"{actual.flat[mismatch[0]]!r} != {expected.flat[mismatch[0]]!r}"
    )


def _arguments(problem):
    return (
        problem["start"],
        problem["origin"],
        problem["spacing"],
        problem["positions"],
        problem["sigma"],
        problem["amplitude"],
        problem["low"],
        problem["high"],
        problem["log_inverse_tol"],
    )


def _compare(problem, dtype, overwrite, prefill=None, strips=STRIPS):
    """Run both kernels on the problem; assert identical bits and update counts."""
    shape = problem["shape"]
    if prefill is None:
        prefill = np.zeros(shape, dtype=dtype)
    narrow = prefill.copy()
    updates = add_narrow_gaussians_to_block(narrow, *_arguments(problem), overwrite)
    for strip in strips:
        expected = prefill.copy()
        expected_updates = add_gaussians_to_block(expected, *_arguments(problem), strip, overwrite)
        _assert_same_bits(narrow, expected)
        assert updates == expected_updates
    return narrow, updates


def _random_problem(rng: np.random.Generator, count: int, *, wide: bool = False) -> dict:
    """Gaussians around a block at a non-zero start; boxes as the binning computes them.

    Sigma in samples is 0.3 to 3 per axis independently (and 5 to 8 for some when
    ``wide``); some centres sit exactly on samples and on block faces; some boxes
    are narrowed, shifted or emptied so that every clipping case occurs.
    """
    shape = tuple(int(v) for v in rng.integers(1, 22, size=3))
    start = rng.integers(0, 12, size=3).astype(np.int64)
    spacing = rng.uniform(0.3, 1.7, size=3)
    origin = rng.uniform(-20, 20, size=3)
    grid_shape = tuple(int(start[d] + shape[d] + rng.integers(0, 12)) for d in range(3))
    grid = dg.Grid(shape=grid_shape, origin=tuple(origin), spacing=tuple(spacing))
    tol = float(10.0 ** -rng.uniform(2, 9))

    samples = rng.uniform(0.3, 3.0, size=(count, 3))
    if wide:
        widen = rng.random(count) < 0.3
        samples[widen] = rng.uniform(5, 8, size=(int(widen.sum()), 3))
    sigma = samples * spacing
    # Centres over the block and a margin around it (many boxes cross its faces).
    first = origin + (start - 4) * spacing
    last = origin + (start + np.array(shape) + 3) * spacing
    positions = rng.uniform(first, last, size=(count, 3))
    # Some centres exactly on a sample, some on the block's first or last sample.
    on_sample = rng.random((count, 3)) < 0.2
    index = rng.integers(start - 2, start + np.array(shape) + 2, size=(count, 3))
    on_face = rng.random((count, 3)) < 0.15
    face = np.where(rng.random((count, 3)) < 0.5, start, start + np.array(shape) - 1)
    index = np.where(on_face, face, index)
    positions = np.where(on_sample | on_face, origin + index * spacing, positions)
    amplitude = rng.uniform(-2, 3, size=count)

    radius = sigma * math.sqrt(2 * math.log(1 / tol))
    low, high = _index_boxes(positions, radius, grid)
    # Disturb some boxes: arbitrary (narrower, shifted, beyond the grid) or empty.
    disturb = rng.random(count) < 0.15
    low[disturb] += rng.integers(-3, 4, size=(int(disturb.sum()), 3))
    high[disturb] += rng.integers(-3, 4, size=(int(disturb.sum()), 3))
    empty = rng.random(count) < 0.05
    axis = rng.integers(0, 3, size=count)
    high[empty, axis[empty]] = low[empty, axis[empty]] - 1
    return {
        "shape": shape,
        "start": start,
        "origin": origin,
        "spacing": spacing,
        "positions": np.ascontiguousarray(positions),
        "sigma": np.ascontiguousarray(sigma),
        "amplitude": amplitude,
        "low": np.ascontiguousarray(low),
        "high": np.ascontiguousarray(high),
        "log_inverse_tol": math.log(1 / tol),
    }


def _prefill(rng, shape, dtype):
    """A non-zero starting block with some signed zeros in it."""
    block = rng.uniform(-1, 1, size=shape).astype(dtype)
    block[rng.random(shape) < 0.1] = -0.0
    block[rng.random(shape) < 0.1] = 0.0
    return block


# ---------------------------------------------------------------- bit-identity


@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 60),
    dtype=st.sampled_from([np.float32, np.float64]),
    overwrite=st.booleans(),
    wide=st.booleans(),
)
def test_bit_identical_to_the_strip_kernel(seed, count, dtype, overwrite, wide):
    rng = np.random.default_rng(seed)
    problem = _random_problem(rng, count, wide=wide)
    _compare(problem, dtype, overwrite, prefill=_prefill(rng, problem["shape"], dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("overwrite", [True, False])
def test_bit_identical_with_many_sorted_sources_across_batches(dtype, overwrite):
    """Thousands of narrow Gaussians (many factor batches), in spatial order, two widths."""
    rng = np.random.default_rng(5)
    shape = (40, 36, 44)
    grid = dg.Grid(shape=(50, 48, 60), origin=(-3.0, 2.0, 0.5), spacing=(0.5, 0.5, 0.5))
    start = np.array([4, 7, 9], dtype=np.int64)
    count = 6000
    positions = rng.uniform(-3, 22, size=(count, 3)) + np.array([-3.0, 2.0, 0.5])
    sigma = 0.5 * np.where(rng.random((count, 1)) < 0.5, 0.666, 1.8) * np.ones((1, 3))
    low, high = _index_boxes(positions, sigma * math.sqrt(2 * math.log(1e6)), grid)
    order = spatial_order(positions, np.array(grid.origin), np.array(grid.spacing), low, high, BINS)
    problem = {
        "shape": shape,
        "start": start,
        "origin": np.array(grid.origin),
        "spacing": np.array(grid.spacing),
        "positions": positions[order],
        "sigma": sigma[order],
        "amplitude": rng.uniform(-1, 2, size=count)[order],
        "low": low[order],
        "high": high[order],
        "log_inverse_tol": math.log(1e6),
    }
    _, updates = _compare(
        problem, dtype, overwrite, prefill=_prefill(rng, shape, dtype), strips=(32,)
    )
    assert updates > 100 * count


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_identical_with_a_row_longer_than_the_factor_buffers(dtype):
    """A block wider than the batch buffers along z, and Gaussians spanning it."""
    rng = np.random.default_rng(6)
    shape = (3, 4, 1300)
    count = 5
    problem = {
        "shape": shape,
        "start": np.array([10, 20, 30], dtype=np.int64),
        "origin": np.zeros(3),
        "spacing": np.ones(3),
        "positions": np.column_stack(
            [rng.uniform(10, 13, count), rng.uniform(20, 24, count), rng.uniform(30, 1330, count)]
        ),
        "sigma": np.tile([1.0, 1.5, 250.0], (count, 1)),
        "amplitude": rng.uniform(-1, 1, count),
        "low": np.tile([5, 15, 0], (count, 1)).astype(np.int64),
        "high": np.tile([16, 29, 2000], (count, 1)).astype(np.int64),
        "log_inverse_tol": math.log(1e6),
    }
    _compare(problem, dtype, False, prefill=_prefill(rng, shape, dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("overwrite", [True, False])
def test_no_sources_leave_the_block_as_the_strip_kernel_does(dtype, overwrite):
    rng = np.random.default_rng(7)
    problem = _random_problem(rng, 0)
    _, updates = _compare(problem, dtype, overwrite, _prefill(rng, problem["shape"], dtype))
    assert updates == 0


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-6, 1e-9])
def test_bit_identical_at_each_tolerance_on_a_dense_block(tol):
    rng = np.random.default_rng(int(-math.log10(tol)))
    problem = _random_problem(rng, 400)
    problem["log_inverse_tol"] = math.log(1 / tol)
    _compare(problem, np.float32, True)


@pytest.mark.parametrize(
    "change",
    ["nan_cut", "infinite_cut", "negative_cut", "nan_position", "zero_sigma", "huge_position"],
)
def test_bit_identical_on_degenerate_values(change):
    """NaN and infinite exponents: the narrow kernel falls back to the strip kernel's scan."""
    rng = np.random.default_rng(8)
    problem = _random_problem(rng, 50)
    if change == "nan_cut":
        problem["log_inverse_tol"] = math.nan
    elif change == "infinite_cut":
        problem["log_inverse_tol"] = math.inf
    elif change == "negative_cut":
        problem["log_inverse_tol"] = -1.0
    elif change == "nan_position":
        problem["positions"][3, 1] = math.nan
    elif change == "zero_sigma":
        problem["sigma"][4] = 0.0
        problem["positions"][4] = problem["origin"] + problem["start"] * problem["spacing"]
    else:
        problem["positions"][5, 0] = 1e300
    for dtype in (np.float32, np.float64):
        _compare(problem, dtype, False, prefill=_prefill(rng, problem["shape"], dtype))


# ---------------------------------------------------------------- spatial order


def _reference_order(positions, origin, spacing, low, high, bins):
    nearest = np.floor((positions - origin) / spacing + 0.5)
    nearest = np.minimum(np.maximum(nearest, low), high).astype(np.int64)
    key = nearest // bins
    # lexsort: last key is primary; the index last makes ties keep the given order.
    return np.lexsort((np.arange(len(positions)), key[:, 2], key[:, 1], key[:, 0]))


@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 300),
    bins=st.tuples(st.integers(1, 17), st.integers(1, 17), st.integers(1, 33)),
    spread=st.sampled_from([10.0, 1e5]),
)
def test_spatial_order_is_the_stable_sort_by_global_bin(seed, count, bins, spread):
    rng = np.random.default_rng(seed)
    origin = rng.uniform(-5, 5, size=3)
    spacing = rng.uniform(0.2, 2, size=3)
    # Few distinct centres, so that many sources share a bin (stability matters).
    distinct = rng.uniform(-spread, spread, size=(max(count // 4, 1), 3))
    positions = distinct[rng.integers(0, len(distinct), size=count)]
    grid = dg.Grid(shape=(10**7,) * 3, origin=tuple(origin - spread), spacing=tuple(spacing))
    low, high = _index_boxes(positions, np.full((count, 3), 2.0), grid)
    bin_shape = np.array(bins, dtype=np.int64)
    order = spatial_order(positions, origin - spread, spacing, low, high, bin_shape)
    assert order.dtype == np.int64
    assert np.array_equal(np.sort(order), np.arange(count))
    expected = _reference_order(positions, origin - spread, spacing, low, high, bin_shape)
    np.testing.assert_array_equal(order, expected)


def _render(gaussians, grid, chunks, kernel):
    """The volume assembled block by block, each block's sources in spatial order."""
    binning = bin_gaussians(gaussians, grid, chunks)
    volume = np.empty(grid.shape, dtype=np.float32)
    origin = np.array(grid.origin)
    spacing = np.array(grid.spacing)
    for i in range(len(chunks[0])):
        for j in range(len(chunks[1])):
            for k in range(len(chunks[2])):
                index = (i, j, k)
                sources = binning.block_sources(index)
                start = binning.block_start(index)
                order = spatial_order(
                    sources.positions, origin, spacing, sources.index_low, sources.index_high, BINS
                )
                block = np.full(binning.block_shape(index), np.nan, dtype=np.float32)
                arguments = [
                    block,
                    start,
                    origin,
                    spacing,
                    sources.positions[order],
                    sources.sigma[order],
                    sources.amplitude[order],
                    sources.index_low[order],
                    sources.index_high[order],
                    math.log(1 / gaussians.tol),
                ]
                if kernel == "strip":
                    arguments.append(8)
                add = (
                    add_narrow_gaussians_to_block if kernel == "narrow" else add_gaussians_to_block
                )
                add(*arguments, True)
                view = tuple(slice(start[d], start[d] + block.shape[d]) for d in range(3))
                volume[view] = block
    return volume


def _chunks(shape, sizes):
    return tuple(
        tuple(min(size, n - s) for s in range(0, n, size))
        for n, size in zip(shape, sizes, strict=True)
    )


def test_volume_bits_do_not_depend_on_the_chunking():
    rng = np.random.default_rng(9)
    grid = dg.Grid.from_bounds((-10, -9, -8), (10, 9, 8), (41, 37, 45))
    count = 3000
    centres = rng.uniform(-11, 11, size=(count, 3))
    sigma = rng.uniform(0.25, 1.2, size=(count, 3))
    gaussians = prepare_gaussians(centres, sigma, weights=rng.uniform(-1, 2, count), tol=1e-5)
    whole = _render(gaussians, grid, _chunks(grid.shape, grid.shape), "narrow")
    assert np.isfinite(whole).all()
    for sizes in [(16, 16, 16), (7, 20, 45), (41, 5, 9)]:
        chunks = _chunks(grid.shape, sizes)
        _assert_same_bits(_render(gaussians, grid, chunks, "narrow"), whole)
    # The same order through the strip kernel gives the same bits too.
    _assert_same_bits(_render(gaussians, grid, _chunks(grid.shape, (16, 16, 16)), "strip"), whole)


def test_accurate_against_the_float64_brute_force():
    rng = np.random.default_rng(10)
    grid = dg.Grid.from_bounds((-4, -3, -5), (4, 3, 5), (21, 17, 23))
    count = 30
    centres = rng.uniform(-5, 5, size=(count, 3))
    sigma = rng.uniform(0.3, 1.2, size=(count, 3))
    weights = rng.uniform(-1, 2, count)
    tol = 1e-6
    gaussians = prepare_gaussians(centres, sigma, weights=weights, tol=tol)
    volume = _render(gaussians, grid, _chunks(grid.shape, (8, 9, 23)), "narrow")
    amplitude = reference.amplitudes(sigma, weights, "peak")
    unit = reference.unit_gaussians(grid.axes, centres, sigma)
    exact = np.einsum("m,mijk->ijk", amplitude, unit)
    covering = reference.covering_count(grid.axes, centres, sigma, tol)
    bound = reference.error_bound(unit, amplitude, tol, covering, np.float32)
    error = np.abs(volume.astype(np.float64) - exact)
    assert (error <= bound).all(), float((error / bound).max())


# ---------------------------------------------------------------- machine code


def test_no_fused_multiply_add_in_the_narrow_kernel(tmp_path):
    """Same bits on every CPU needs every multiply and add rounded on its own.

    Compiled afresh in a subprocess (numba cannot show code it loaded from its cache),
    for both block dtypes.
    """
    setup = """
import numpy as np
from daskgauss import _narrow_kernel as nk
for dtype in (np.float32, np.float64):
    block = np.zeros((4, 5, 20), dtype)
    nk.add_narrow_gaussians_to_block(block, np.zeros(3, np.int64), np.zeros(3), np.ones(3),
        np.full((2, 3), 2.0), np.ones((2, 3)), np.ones(2), np.zeros((2, 3), np.int64),
        np.full((2, 3), 4, np.int64), 5.0, True)
"""
    lines = compiled_assembly(
        setup,
        "nk.add_narrow_gaussians_to_block, nk._evaluate, nk._evaluate_unscaled, "
        "nk._add_scanned_rows",
        tmp_path,
    )
    names = {line[0] for line in lines}
    assert {"add_narrow_gaussians_to_block", "_evaluate", "_evaluate_unscaled"} <= names
    assert len([line for line in lines if line[0] == "add_narrow_gaussians_to_block"]) == 2
    assert all(line[1] > 0 for line in lines)
    # Vectorised: the row updates and the factor loops multiply packed vectors.
    assert all(line[2] for line in lines)
    assert not [line for line in lines if line[3]]


def _boxes(count: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    low = np.zeros((count, 3), np.int64)
    return low, low + width - 1


def test_prefer_narrow_rule():
    from daskgauss._narrow_kernel import prefer_narrow

    voxels = 256**3
    assert prefer_narrow(voxels, *_boxes(10**6, 7))  # dense
    assert prefer_narrow(voxels, *_boxes(10**5, 53))  # dense, wide
    assert prefer_narrow(voxels, *_boxes(10**4, 5))  # sparse, narrow
    assert prefer_narrow(voxels, *_boxes(10**4, 8))  # the narrow edge
    assert not prefer_narrow(voxels, *_boxes(10**4, 9))
    assert not prefer_narrow(voxels, *_boxes(10**4, 21))  # sparse, wide
    assert not prefer_narrow(voxels, *_boxes(0, 5))
    # The widest side counts: 3 x 3 x 21 boxes are wide.
    low, high = _boxes(10**4, 3)
    high[:, 2] = 20
    assert not prefer_narrow(voxels, low, high)
