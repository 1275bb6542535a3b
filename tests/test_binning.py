"""The spatial binning against an independent brute force over blocks and samples.

Gaussian ``i`` belongs to block ``b`` iff its support box ``[c - r, c + r]``,
``r = sigma sqrt(2 ln(1/tol))``, contains at least one sample of ``b`` on every
axis. Sources are identified by distinct weights (the binning copies positions,
so identity is lost otherwise); with ``normalize="peak"`` amplitude == weight.
"""

from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import pytest
from dask.array.core import normalize_chunks
from hypothesis import given
from hypothesis import strategies as st

import daskgauss as dg
from daskgauss import _binning as binning_module
from daskgauss._binning import (
    BIN_SHAPE,
    Binning,
    BlockSources,
    bin_gaussians,
    block_edges,
    index_boxes,
    stable_ranks,
)
from daskgauss._gaussians import prepare_gaussians
from daskgauss._pairs import block_pairs

# ---------------------------------------------------------------- independent brute force


def _radius(sigma, tol):
    return np.asarray(sigma, dtype=float) * math.sqrt(2.0 * math.log(1.0 / tol))


def _edges(chunks):
    return [np.concatenate([[0], np.cumsum(c)]).astype(int) for c in chunks]


def _blocks(chunks):
    return itertools.product(*(range(len(c)) for c in chunks))


def _inside(axis, centre, radius):
    """Which samples of one axis lie in ``[centre - radius, centre + radius]``."""
    return (axis >= centre - radius) & (axis <= centre + radius)


def _reaches(axes, edges, block, centre, radius):
    """True iff the support box holds a sample of ``block`` on every axis."""
    for d in range(3):
        samples = axes[d][edges[d][block[d]] : edges[d][block[d] + 1]]
        if not np.any(_inside(samples, centre[d], radius[d])):
            return False
    return True


def _index_range(axes, centre, radius):
    """Inclusive (low, high) sample indices inside the box on each axis, or None."""
    low, high = [], []
    for d in range(3):
        hits = np.flatnonzero(_inside(axes[d], centre[d], radius[d]))
        if hits.size == 0:
            return None
        low.append(hits[0])
        high.append(hits[-1])
    return np.array(low), np.array(high)


def _summation_order(ids, positions, low, high, grid) -> list[int]:
    """``ids`` sorted as the spatial order defines it: by the global bin (BIN_SHAPE
    samples) of the sample nearest each centre, clipped into its box; ties by id."""
    if not len(ids):
        return []
    nearest = np.floor((np.asarray(positions) - grid.origin) / grid.spacing + 0.5)
    nearest = np.clip(nearest, low, high).astype(np.int64)
    bins = nearest // np.array(BIN_SHAPE)
    order = np.lexsort((np.asarray(ids), bins[:, 2], bins[:, 1], bins[:, 0]))
    return [int(ids[k]) for k in order]


def _identify(sources: BlockSources) -> list[int]:
    """Original indices of a block's sources, from weights ``1, 2, 3, ...``."""
    ids = np.broadcast_to(sources.amplitude, (sources.count,)) - 1  # one shared, or per source
    assert np.all(ids == np.round(ids))
    return [int(i) for i in ids]


def _bin(centres, sigma, weights, grid, chunks, tol=1e-6, periodic=False):
    gaussians = prepare_gaussians(centres, sigma, weights=weights, tol=tol)
    return bin_gaussians(gaussians, grid, chunks, periodic=periodic)


def _check_against_brute_force(centres, sigma3, weights, grid, chunks, tol):
    """Every block's sources, their order, rows and index ranges, and the total pairs."""
    binning = _bin(centres, sigma3, weights, grid, chunks, tol)
    axes = grid.axes
    edges = _edges(chunks)
    radius = _radius(sigma3, tol)
    total = 0
    for block in _blocks(chunks):
        expected = [
            i
            for i in range(len(centres))
            if weights[i] != 0 and _reaches(axes, edges, block, centres[i], radius[i])
        ]
        sources = binning.block_sources(block)
        got = _identify(sources)
        assert set(got) == set(expected), f"block {block}"
        boxes = [_index_range(axes, centres[i], radius[i]) for i in expected]
        assert got == _summation_order(
            expected, centres[expected].reshape(-1, 3), [box[0] for box in boxes],
            [box[1] for box in boxes], grid,
        ), f"block {block}: sources not in summation order"  # fmt: skip
        assert binning.block_count(block) == len(expected)
        for row, i in enumerate(got):
            np.testing.assert_array_equal(sources.positions[row], centres[i])
            sigma_row = sources.sigma[row if len(sources.sigma) > 1 else 0]  # or shared by all
            np.testing.assert_array_equal(sigma_row, sigma3[i])
            low, high = _index_range(axes, centres[i], radius[i])
            np.testing.assert_array_equal(sources.index_low[row], low)
            np.testing.assert_array_equal(sources.index_high[row], high)
        total += len(expected)
    assert binning.block_offsets[-1] == total
    return binning


def _blocks_touched(low, high, edges):
    """Number of blocks whose index range meets [low, high] on every axis."""
    count = 1
    for d in range(3):
        starts, ends = edges[d][:-1], edges[d][1:] - 1
        count *= int(np.sum((starts <= high[d]) & (ends >= low[d])))
    return count


# ---------------------------------------------------------------- fixed random cases


@pytest.mark.parametrize(
    ("seed", "shape", "chunks", "tol"),
    [
        (0, (23, 17, 29), (7, 9, 10), 1e-6),
        (1, (30, 30, 30), (8, 8, 8), 1e-2),
        (2, (16, 20, 12), ((3, 5, 8), (20,), (1, 1, 10)), 1e-9),
        (3, (9, 1, 14), (2, 1, 5), 1e-4),
    ],
)
def test_block_sources_match_brute_force(seed, shape, chunks, tol):
    rng = np.random.default_rng(seed)
    grid = dg.Grid(
        shape=shape, origin=tuple(rng.uniform(-5, 5, 3)), spacing=tuple(rng.uniform(0.2, 1.2, 3))
    )
    chunks = normalize_chunks(chunks, shape=shape)
    count = 60
    end = np.array(grid.origin) + np.array(grid.period)
    centres = rng.uniform(np.array(grid.origin) - 4, end + 4, size=(count, 3))
    sigma3 = rng.uniform(0.1, 1.5, size=(count, 3))
    weights = np.arange(1.0, count + 1)
    weights[rng.choice(count, 5, replace=False)] = 0.0
    binning = _check_against_brute_force(centres, sigma3, weights, grid, chunks, tol)
    assert binning.block_offsets[-1] > 0
    assert binning.tol == tol
    assert binning.grid == grid
    assert binning.chunks == chunks


def test_total_pairs_is_sum_over_sources_of_blocks_touched(rng):
    grid = dg.Grid.from_bounds(-10, 10, (30, 25, 20))
    chunks = normalize_chunks((7, 6, 5), shape=grid.shape)
    centres = rng.uniform(-14, 14, size=(80, 3))
    sigma3 = rng.uniform(0.3, 2.5, size=(80, 3))
    binning = _bin(centres, sigma3, np.arange(1.0, 81), grid, chunks)
    edges = _edges(chunks)
    radius = _radius(sigma3, 1e-6)
    expected = reaching = 0
    for i in range(80):
        ranges = _index_range(grid.axes, centres[i], radius[i])
        if ranges is not None:
            expected += _blocks_touched(*ranges, edges)
            reaching += 1
    assert int(binning.block_offsets[-1]) == expected
    assert binning.pairs == expected
    # One entry per Gaussian that reaches the grid, however many blocks it reaches.
    assert binning.positions.shape == (reaching, 3)
    assert binning.keys.shape == (reaching,)
    assert np.all(np.diff(binning.keys) >= 0)
    assert sum(binning.block_sources(block).count for block in _blocks(chunks)) == expected


def test_block_far_from_all_centres_has_no_sources(rng):
    grid = dg.Grid.from_bounds(0, 63, 64)
    chunks = normalize_chunks(16, shape=grid.shape)
    centres = rng.uniform(0, 5, size=(50, 3))
    binning = _bin(centres, 0.5, np.arange(1.0, 51), grid, chunks)
    assert binning.block_count((3, 3, 3)) == 0
    assert binning.block_sources((3, 3, 3)).count == 0
    assert binning.block_sources((3, 3, 3)).positions.shape == (0, 3)
    assert sorted(_identify(binning.block_sources((0, 0, 0)))) == list(range(50))


def test_zero_weight_centres_are_dropped():
    grid = dg.Grid(shape=10)
    chunks = normalize_chunks(5, shape=grid.shape)
    centres = np.full((4, 3), 4.5)
    binning = _bin(centres, 1.0, [1.0, 0.0, 3.0, 0.0], grid, chunks)
    for block in _blocks(chunks):
        assert _identify(binning.block_sources(block)) == [0, 2]
    assert np.all(block_pairs(binning).amplitude != 0)
    assert binning.block_offsets[-1] == 2 * 8


def test_all_zero_weights_give_an_empty_table():
    grid = dg.Grid(shape=10)
    chunks = normalize_chunks(5, shape=grid.shape)
    binning = _bin(np.zeros((3, 3)), 1.0, 0.0, grid, chunks)
    np.testing.assert_array_equal(binning.block_offsets, np.zeros(9))
    assert binning.pairs == 0
    assert binning.positions.shape == (0, 3)


def test_centres_far_outside_the_grid_are_dropped():
    """Including centres so far away that their index would overflow int64."""
    grid = dg.Grid(shape=(12, 10, 8), origin=(-1.0, 2.0, 0.5), spacing=0.5)
    chunks = normalize_chunks((5, 5, 4), shape=grid.shape)
    centres = np.array(
        [
            [1.0, 4.0, 2.0],  # inside
            [1e300, 4.0, 2.0],
            [-1e300, -1e300, -1e300],
            [1.0, 4.0, 100.0],
            [1.0, -30.0, 2.0],
            [1.7e308, 1.7e308, 1.7e308],
            [-3.5, 4.0, 2.0],  # outside, support reaches in
        ]
    )
    binning = _check_against_brute_force(
        centres, np.full((7, 3), 0.6), np.arange(1.0, 8), grid, chunks, 1e-6
    )
    present = {i for block in _blocks(chunks) for i in _identify(binning.block_sources(block))}
    assert present == {0, 6}


def test_empty_centres_give_an_empty_table():
    grid = dg.Grid(shape=(10, 12, 14))
    chunks = normalize_chunks(5, shape=grid.shape)
    binning = _bin(np.empty((0, 3)), 1.0, None, grid, chunks)
    assert binning.block_offsets.shape == (2 * 3 * 3 + 1,)
    assert not binning.block_offsets.any()
    assert binning.positions.shape == (0, 3)
    assert binning.nbytes == binning.block_offsets.nbytes + binning.sigma.nbytes + (
        binning.amplitude.nbytes)  # fmt: skip


def test_index_ranges_are_exact_inclusive_and_clipped():
    """With r = 2.5 on a unit grid the box ends fall between samples."""
    tol = 1e-6
    sigma = 2.5 / math.sqrt(2 * math.log(1 / tol))
    grid = dg.Grid(shape=10)
    chunks = ((10,), (10,), (10,))
    centres = np.array([[0.3, 5.0, 8.9], [-2.2, 11.3, 4.0], [9.0, 9.0, 9.0]])
    binning = _bin(centres, sigma, [1.0, 2.0, 3.0], grid, chunks, tol)
    sources = binning.block_sources((0, 0, 0))
    assert _identify(sources) == [0, 1, 2]
    np.testing.assert_array_equal(sources.index_low, [[0, 3, 7], [0, 9, 2], [7, 7, 7]])
    np.testing.assert_array_equal(sources.index_high, [[2, 7, 9], [0, 9, 6], [9, 9, 9]])
    assert sources.index_low.dtype == np.int32  # int32 while the grid allows
    assert sources.index_high.dtype == np.int32


def test_index_boxes_widen_to_int64_on_grids_past_int32():
    centres = np.array([[0.0, 0.0, 2.0**31 - 1]])
    huge = dg.Grid(shape=(4, 4, 2**31 + 8))
    low, high = index_boxes(centres, np.ones((1, 3)), huge, 1e-6)
    assert low.dtype == high.dtype == np.int64
    assert low[0, 2] == 2**31 - 6
    assert high[0, 2] == 2**31 + 4
    low, _ = index_boxes(centres, np.ones((1, 3)), dg.Grid(shape=(4, 4, 2**31 - 2)), 1e-6)
    assert low.dtype == np.int32


def test_index_ranges_on_anisotropic_grid():
    grid = dg.Grid(shape=(20, 8, 5), origin=(-3.0, 10.0, 0.0), spacing=(0.25, 2.0, 10.0))
    tol = 1e-2
    sigma = np.array([[0.4, 3.0, 8.0]])
    # r = (1.214, 9.105, 24.28): x in [-1.114, 1.314] holds samples 8..17 (-1.0 .. 1.25);
    # y and z reach past both grid ends and are clipped.
    binning = _bin([[0.1, 16.7, 21.0]], sigma, 1.0, grid, normalize_chunks(4, grid.shape), tol)
    rows = binning.pairs
    assert rows == 3 * 2 * 2  # x blocks 2..4, all y and z blocks
    every = [binning.block_sources(block) for block in _blocks(binning.chunks)]
    index_low = np.concatenate([sources.index_low for sources in every])
    index_high = np.concatenate([sources.index_high for sources in every])
    np.testing.assert_array_equal(index_low, np.tile([8, 0, 0], (rows, 1)))
    np.testing.assert_array_equal(index_high, np.tile([17, 7, 4], (rows, 1)))
    assert grid.axes[0][8] == -1.0
    assert grid.axes[0][17] == 1.25


def test_source_order_in_a_block_follows_the_input_order_within_a_spatial_bin():
    """All centres reach every block and lie in one spatial bin (samples 4-7 on x and y,
    0-15 on z): each block lists them in input order."""
    grid = dg.Grid(shape=12)
    chunks = normalize_chunks(4, shape=grid.shape)
    rng = np.random.default_rng(4)
    centres = rng.uniform(5, 7, size=(25, 3))
    order = rng.permutation(25)
    weights = np.arange(1.0, 26)
    binning = _bin(centres[order], 3.0, weights, grid, chunks)
    for block in _blocks(chunks):
        sources = binning.block_sources(block)
        assert _identify(sources) == list(range(25))
        np.testing.assert_array_equal(sources.positions, centres[order])


# ---------------------------------------------------------------- periodic images
#
# The periodic box is [origin, origin + shape * spacing) on every axis (for a
# from_box grid that is the box shifted by half a voxel; the sum is the same).
# Images are identified by their shift in whole periods from the *input* centre.


def _wrap(centres, grid):
    """Each centre moved by whole periods into [origin, origin + period), independently."""
    origin = np.array(grid.origin)
    period = np.array(grid.period)
    return centres - np.floor((centres - origin) / period) * period


def _found_images(binning, centres, grid):
    """Per block: (source id, shift from the input centre in periods) of every row."""
    period = np.array(grid.period)
    found = {}
    for block in _blocks(binning.chunks):
        sources = binning.block_sources(block)
        rows = []
        for row, i in enumerate(_identify(sources)):
            shift = np.round((sources.positions[row] - centres[i]) / period).astype(int)
            scale = float(np.max(np.abs(centres[i]) + period))
            np.testing.assert_allclose(
                sources.positions[row], centres[i] + shift * period, rtol=0, atol=1e-12 * scale
            )
            rows.append((i, tuple(int(s) for s in shift)))
        found[block] = rows
    return found


def _expected_images(centres, sigma3, weights, grid, chunks, tol):
    """Per block: every image ``c + k period`` whose support holds a sample of the block.

    Separable: an image reaches a block iff on every axis its interval holds a sample
    of that axis' block range, so each axis is scanned once per centre and shift.
    """
    period = np.array(grid.period)
    home = _wrap(centres, grid)
    radius = _radius(sigma3, tol)
    axes = grid.axes
    edges = _edges(chunks)
    expected = {block: [] for block in _blocks(chunks)}
    for i in range(len(centres)):
        if weights[i] == 0:
            continue
        to_home = np.round((home[i] - centres[i]) / period).astype(int)
        per_axis = []
        for d in range(3):
            hits = []
            for shift in range(-2, 3):
                inside = _inside(axes[d], home[i, d] + shift * period[d], radius[i, d])
                for b in range(len(chunks[d])):
                    if inside[edges[d][b] : edges[d][b + 1]].any():
                        hits.append((int(to_home[d]) + shift, b))
            per_axis.append(hits)
        for (sx, bx), (sy, by), (sz, bz) in itertools.product(*per_axis):
            expected[(bx, by, bz)].append((i, (sx, sy, sz)))
    return expected


def _check_periodic(centres, sigma3, weights, grid, chunks, tol):
    """Sources of every block against the brute force over images, plus index ranges."""
    binning = _bin(centres, sigma3, weights, grid, chunks, tol, periodic=True)
    found = _found_images(binning, centres, grid)
    expected = _expected_images(centres, sigma3, weights, grid, chunks, tol)
    for block, rows in expected.items():
        assert sorted(found[block]) == sorted(rows), f"block {block}"
        assert len(set(found[block])) == len(found[block]), f"block {block}: duplicate image"
    assert binning.block_offsets[-1] == sum(len(rows) for rows in expected.values())
    radius = _radius(sigma3, tol)
    for block in _blocks(chunks):
        sources = binning.block_sources(block)
        for row, i in enumerate(_identify(sources)):
            low, high = _index_range(grid.axes, sources.positions[row], radius[i])
            np.testing.assert_array_equal(sources.index_low[row], low)
            np.testing.assert_array_equal(sources.index_high[row], high)
    return binning, found


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_periodic_images_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    grid = dg.Grid.from_box(
        tuple(rng.uniform(-3, 0, 3)), tuple(rng.uniform(9, 14, 3)), tuple(rng.integers(8, 20, 3))
    )
    chunks = normalize_chunks(tuple(rng.integers(2, 9, 3)), shape=grid.shape)
    count = 30
    centres = rng.uniform(-30, 40, size=(count, 3))  # anywhere: wrapped into the box
    sigma3 = rng.uniform(0.2, 0.85, size=(count, 3))  # 2 r <= 8.9 < 9
    weights = np.arange(1.0, count + 1)
    weights[3] = 0.0
    binning, _ = _check_periodic(centres, sigma3, weights, grid, chunks, 1e-6)
    assert 3 not in {int(a) - 1 for a in binning.amplitude}


def _image_positions(binning):
    return {tuple(np.round(p, 9)) for p in block_pairs(binning).positions}


# from_box(0, 10, 20): samples 0.25 ... 9.75, periodic box [0.25, 10.25), r = 2.63.
@pytest.mark.parametrize(
    ("centre", "images"),
    [
        ((5.0, 5.0, 5.0), [(5.0, 5.0, 5.0)]),
        ((5.0, 3.0, 5.0), [(5.0, 3.0, 5.0)]),  # 3 - r = 0.37 > 0: no image needed
        ((5.0, 5.0, 0.9), [(5.0, 5.0, 0.9), (5.0, 5.0, 10.9)]),  # face
        ((0.9, 5.0, 9.6), [(x, 5.0, z) for x in (0.9, 10.9) for z in (9.6, -0.4)]),  # edge
        # corner: the wrapped centre plus 7 images
        ((0.9, 1.3, 0.7), list(itertools.product((0.9, 10.9), (1.3, 11.3), (0.7, 10.7)))),
        ((9.8, 9.7, 9.9), list(itertools.product((9.8, -0.2), (9.7, -0.3), (9.9, -0.1)))),
        ((-27.3, 45.0, 15.0), [(2.7, 5.0, 5.0)]),  # wrapped; 2.7 - r = 0.07 > 0
    ],
)
def test_periodic_images_of_a_centre_near_faces_edges_and_corners(centre, images):
    grid = dg.Grid.from_box(0, 10, 20)
    chunks = normalize_chunks(5, shape=grid.shape)
    binning, _ = _check_periodic(
        np.array([centre]), np.full((1, 3), 0.5), [1.0], grid, chunks, 1e-6
    )
    assert _image_positions(binning) == {tuple(np.round(p, 9)) for p in images}
    inside = [p for p in images if all(0.25 <= v < 10.25 for v in p)]
    assert len(inside) == 1  # exactly one image is the wrapped centre


def test_centre_on_the_box_face_wraps_to_the_box_start():
    grid = dg.Grid.from_box(0, 10, 20)
    centres = np.array([[0.25, 10.25, 5.0]])
    binning, _ = _check_periodic(centres, np.full((1, 3), 0.5), [1.0], grid, ((20,),) * 3, 1e-6)
    expected = set(itertools.product((0.25, 10.25), (0.25, 10.25), (5.0,)))
    assert _image_positions(binning) == expected


def test_periodic_image_that_would_not_reach_a_sample_is_dropped():
    """The support ends 0.1 below the box start: the image one period up would end 0.1
    below the box end, between the last sample (9.75) and the box end, so it is no source."""
    tol = 1e-6
    grid = dg.Grid.from_box(0, 10, 20)
    radius = _radius(0.5, tol)
    centre = np.array([[0.15 + radius, 5.0, 5.0]])
    binning, found = _check_periodic(
        centre, np.full((1, 3), 0.5), [1.0], grid, normalize_chunks(10, grid.shape), tol
    )
    assert {shift for rows in found.values() for _, shift in rows} == {(0, 0, 0)}
    np.testing.assert_array_equal(block_pairs(binning).positions[:, 0], centre[0, 0])


def test_periodic_with_samples_at_both_box_ends():
    """A Grid not made by from_box: the box is [origin, origin + shape * spacing)."""
    grid = dg.Grid(shape=(10, 12, 8), origin=(-2.0, 0.0, 1.0), spacing=(1.0, 0.5, 1.5))
    rng = np.random.default_rng(9)
    centres = rng.uniform(-15, 15, size=(20, 3))
    sigma3 = rng.uniform(0.2, 0.5, size=(20, 3))
    _check_periodic(
        centres, sigma3, np.arange(1.0, 21), grid, normalize_chunks((3, 5, 4), grid.shape), 1e-4
    )


@pytest.mark.parametrize(
    ("grid", "sigma"),
    [
        (dg.Grid.from_box(0, 5, 10), 1.0),
        (dg.Grid.from_box(0, (50, 50, 5), 10), 1.0),  # only z is too short
        (dg.Grid(shape=4), [[0.1, 0.1, 0.5]]),  # 2 r = 5.26 > 4
    ],
)
def test_periodic_refuses_support_wider_than_the_box(grid, sigma):
    gaussians = prepare_gaussians(np.zeros((1, 3)), sigma)
    chunks = normalize_chunks(5, shape=grid.shape)
    with pytest.raises(ValueError, match="periodic box"):
        bin_gaussians(gaussians, grid, chunks, periodic=True)
    bin_gaussians(gaussians, grid, chunks, periodic=False)  # fine without wrapping


def test_periodic_accepts_support_just_narrower_than_the_box():
    grid = dg.Grid.from_box(0, 5, 10)
    sigma = 0.999 * 2.5 / math.sqrt(2 * math.log(1e6))
    binning = _bin([[2.5, 2.5, 2.5]], sigma, 1.0, grid, ((10,),) * 3, periodic=True)
    assert binning.block_count((0, 0, 0)) == 1


# ---------------------------------------------------------------- property test


@st.composite
def binning_problems(draw, periodic=False):
    shape = tuple(draw(st.integers(1, 12)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.25, 1.5)) for _ in range(3))
    origin = tuple(draw(st.floats(-5, 5)) for _ in range(3))
    grid = dg.Grid(shape=shape, origin=origin, spacing=spacing)
    chunks = []
    for n in shape:
        sizes = []
        while sum(sizes) < n:
            sizes.append(draw(st.integers(1, n - sum(sizes))))
        chunks.append(tuple(sizes))
    count = draw(st.integers(0, 10))
    period = np.array(grid.period)
    margin = 2 * period if periodic else 4.0
    lower = np.array(origin) - margin
    upper = np.array(origin) + period + margin
    unit = np.array(draw(st.lists(st.floats(0, 1), min_size=3 * count, max_size=3 * count)))
    centres = lower + unit.reshape(count, 3) * (upper - lower)
    tol = draw(st.sampled_from([1e-1, 1e-2, 1e-4, 1e-6, 1e-9]))
    if periodic:
        # Supports from 2 % to 99 % of the box on each axis (periodic refuses wider). The
        # irrational factor keeps support ends off the samples: at an exact tie the
        # binning's rounding and this brute force's may legitimately differ.
        fraction = draw(st.lists(st.floats(0.02, 0.99), min_size=3 * count, max_size=3 * count))
        width = np.array(fraction, dtype=float).reshape(count, 3) * period * math.sqrt(0.999)
        sigma3 = width / (2 * math.sqrt(2 * math.log(1 / tol)))
    else:
        sigma = draw(st.lists(st.floats(0.1, 2.0), min_size=3 * count, max_size=3 * count))
        sigma3 = np.array(sigma, dtype=float).reshape(count, 3)
    zero = draw(st.lists(st.booleans(), min_size=count, max_size=count))
    weights = np.where(zero, 0.0, np.arange(1.0, count + 1)) if count else np.empty(0)
    return grid, tuple(chunks), centres, sigma3, weights, tol


@given(binning_problems())
def test_property_block_sources_match_brute_force(problem):
    grid, chunks, centres, sigma3, weights, tol = problem
    _check_against_brute_force(centres, sigma3, weights, grid, chunks, tol)


@given(binning_problems(periodic=True))
def test_property_periodic_images_match_brute_force(problem):
    grid, chunks, centres, sigma3, weights, tol = problem
    _check_periodic(centres, sigma3, weights, grid, chunks, tol)


# ---------------------------------------------------------------- block helpers


CHUNKS = ((3, 4, 3), (5, 5), (2, 2, 2, 1))


def test_block_edges_are_cumulative_sums():
    edges = block_edges(CHUNKS)
    assert len(edges) == 3
    np.testing.assert_array_equal(edges[0], [0, 3, 7, 10])
    np.testing.assert_array_equal(edges[1], [0, 5, 10])
    np.testing.assert_array_equal(edges[2], [0, 2, 4, 6, 7])
    assert all(e.dtype == np.int64 for e in edges)


def test_block_helpers_agree_with_numpy_and_dask(rng):
    grid = dg.Grid(shape=(10, 10, 7), spacing=(1.0, 1.0, 1.5))
    centres = rng.uniform(-1, 11, size=(40, 3))
    binning = _bin(centres, rng.uniform(0.3, 1.2, 40), np.arange(1.0, 41), grid, CHUNKS)
    assert isinstance(binning, Binning)
    reference = da.zeros(grid.shape, chunks=CHUNKS)
    assert binning.numblocks == reference.numblocks == (3, 2, 4)
    flat = np.arange(np.prod(reference.numblocks)).reshape(reference.numblocks)
    counts = []
    for block in _blocks(CHUNKS):
        assert binning.flat_index(block) == flat[block]
        start = [int(np.sum(CHUNKS[d][: block[d]])) for d in range(3)]
        np.testing.assert_array_equal(binning.block_start(block), start)
        assert binning.block_start(block).dtype == np.int64
        assert binning.block_shape(block) == reference.blocks[block].shape
        counts.append(binning.block_count(block))
        assert binning.block_sources(block).count == counts[-1]
    np.testing.assert_array_equal(np.diff(binning.block_offsets), counts)
    assert binning.block_offsets[0] == 0
    assert binning.block_offsets.dtype == np.int64
    # Per entry (a Gaussian that reaches the grid) a key, a position, a sigma and an
    # amplitude (all per centre here); nothing per (Gaussian, block) pair.
    entries = len(binning.keys)
    assert entries <= 40 < int(binning.block_offsets[-1])
    assert binning.nbytes == (len(flat.ravel()) + 1) * 8 + entries * (
        binning.keys.itemsize + (3 + 3 + 1) * 8)  # fmt: skip


def test_the_binning_keeps_its_own_copy_and_shared_values_once(rng):
    grid = dg.Grid(shape=10)
    centres = rng.uniform(0, 10, size=(5, 3))
    gaussians = prepare_gaussians(centres, 1.0, weights=np.arange(1.0, 6))
    binning = bin_gaussians(gaussians, grid, CHUNKS[:1] * 3)
    assert not np.shares_memory(binning.positions, centres)
    assert binning.sigma.shape == (1, 3)  # one sigma for all is kept once
    assert binning.amplitude.shape == (5,)  # per entry, not per (Gaussian, block) pair
    assert binning.pairs > 5


def test_block_sources_are_contiguous_with_fixed_dtypes(rng):
    grid = dg.Grid(shape=10)
    binning = _bin(rng.uniform(0, 10, size=(5, 3)), 1.0, np.arange(1.0, 6), grid, CHUNKS[:1] * 3)
    sources = binning.block_sources((1, 1, 1))
    for name, dtype, shape in [
        ("positions", np.float64, (sources.count, 3)),
        ("sigma", np.float64, (1, 3)),  # one sigma for all: kept as one row
        ("amplitude", np.float64, (sources.count,)),
        ("index_low", np.int32, (sources.count, 3)),  # int32 while the grid allows
        ("index_high", np.int32, (sources.count, 3)),
    ]:
        array = getattr(sources, name)
        assert array.dtype == dtype, name
        assert array.shape == shape, name
        assert array.flags.c_contiguous, name


# ------------------------------------------------------------------ in parts, on threads


def _same_binning(first: Binning, second: Binning) -> None:
    np.testing.assert_array_equal(first.block_offsets, second.block_offsets)
    for name in ("keys", "positions", "sigma", "amplitude", "widths"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("threads", [2, 3, 5])
def test_a_binning_on_threads_is_the_binning_on_one(rng, monkeypatch, periodic, threads):
    # Parts of a few hundred Gaussians, some reaching nothing (outside, weight zero), so
    # that parts make different numbers of entries.
    monkeypatch.setattr(binning_module, "PART_MINIMUM", 64)
    grid = dg.Grid(shape=(24, 20, 33), spacing=(1.0, 1.5, 1.0))
    count = 2000
    centres = rng.uniform(-6, 36, size=(count, 3))
    weights = rng.choice([0.0, 1.0, -2.5], size=count)
    gaussians = prepare_gaussians(centres, rng.uniform(0.3, 1.5, (count, 3)), weights=weights)
    chunks = normalize_chunks((7, 8, 16), shape=grid.shape)
    alone = bin_gaussians(gaussians, grid, chunks, periodic=periodic)
    with ThreadPoolExecutor(threads) as executor:
        shared = bin_gaussians(gaussians, grid, chunks, periodic=periodic, executor=executor)
    _same_binning(alone, shared)
    for block in _blocks(chunks):
        one, other = alone.block_sources(block), shared.block_sources(block)
        np.testing.assert_array_equal(one.positions, other.positions)
        np.testing.assert_array_equal(one.amplitude, other.amplitude)


@pytest.mark.parametrize("threads", [None, 3])
@pytest.mark.parametrize("span", [50, 10**6, 2**40, 2**62])
def test_stable_ranks_sort_stably_over_any_span(rng, monkeypatch, threads, span):
    # Small spans take the counting sort (in parts on threads), large ones the radix sort.
    monkeypatch.setattr(binning_module, "PART_MINIMUM", 16)
    keys = rng.integers(-(2**62), -(2**62) + span, size=3000, dtype=np.int64)
    keys[::7] = keys[0]  # many ties
    ranks = np.empty(len(keys), np.int64)
    if threads is None:
        stable_ranks(keys, ranks)
    else:
        with ThreadPoolExecutor(threads) as executor:
            stable_ranks(keys, ranks, executor)
    order = np.empty_like(ranks)
    order[ranks] = np.arange(len(keys))
    np.testing.assert_array_equal(order, np.argsort(keys, kind="stable"))


def test_a_wide_gaussian_on_a_huge_sparse_grid(rng):
    # One support as wide as the grid makes every block's search window the whole grid:
    # 2^12 x 2^12 rows of bins. The gather scans the few entries of each x slab instead
    # of searching each row (seconds per block).
    grid = dg.Grid(shape=2**14)
    centres = np.vstack([rng.uniform(0, 2**14, size=(50, 3)), [[8000.0, 8000.0, 8000.0]]])
    sigma = np.r_[np.full(50, 2.0), 1500.0]
    weights = np.arange(1.0, 52)
    binning = _bin(centres, sigma, weights, grid, normalize_chunks(1024, shape=grid.shape))
    assert binning.widths.max() > 2**13
    for block in [(0, 0, 0), (7, 7, 7), (15, 3, 9)]:
        sources = binning.block_sources(block)
        expected = {
            int(w) for w, c, s in zip(weights, centres, sigma, strict=True)
            if _reaches(grid.axes, _edges(binning.chunks), block, c, _radius(np.full(3, s), 1e-6))
        }  # fmt: skip
        assert {int(a) for a in sources.amplitude} == expected
        assert sources.count == binning.block_count(block)
