"""The full-covariance block kernel, called directly with plain numpy arrays.

Everything is checked against an independent float64 brute force written here:
every Gaussian ``a exp(-d^T inv(S) d / 2)`` at every voxel, with ``inv(S)`` from
numpy's LU. The kernel adds Gaussian ``c`` to a voxel iff the voxel's global index
lies in the support box ``[index_low[c], index_high[c]]`` and ``q / 2 <= ln(1/tol)``;
everything else is dropped, so at every voxel

    |computed - exact| <= sum_i |a_i| min(tol, g_i)
                          + (K(x) + 8 + 6 kappa ln(1/tol)) eps(dtype) sum_i |a_i| g_i
                          + (8 + 6 kappa ln(1/tol)) eps(float64) sum_i |a_i| g_i,

where ``g_i`` is the exact unit-peak Gaussian, ``K(x)`` the number of support boxes
holding the voxel and ``kappa`` the largest condition number of a covariance. The
last term is the reference's own float64 rounding (the same form: its ``q`` carries
the same conditioning). Against an 80-bit reference the kernel's float64 rounding
measured at most a quarter of the middle term (13 eps at kappa = 1, 190 eps at
kappa = 100). The form holds for coordinates of the order of the supports, as here:
the rounding of ``origin + k spacing`` and of the centres adds up to about
``sqrt(2 ln(1/tol)) eps |x| / sigma_min`` (measured: 140 eps at ``|x| / sigma`` =
350), for the separable kernel too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daskgauss as dg
from daskgauss._binning import index_boxes
from daskgauss._covariance_kernel import add_covariance_gaussians_to_block
from tests.conftest import compiled_assembly

GRID = dg.Grid(shape=(22, 19, 24), origin=(-3.0, 1.5, -7.25), spacing=(0.45, 0.6, 0.35))
BLOCK_START = (5, 4, 7)
BLOCK_SHAPE = (12, 11, 13)
# Upper triangle (xx, xy, xz, yy, yz, zz) of a symmetric 3 x 3 matrix, and back.
PACKED = ([0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2])
UNPACKED = [0, 1, 2, 1, 3, 4, 2, 4, 5]


# ---------------------------------------------------------------- independent helpers


def _covariances(rng, count, sigma=(0.35, 1.6), max_ratio=10.0):
    """Random symmetric positive definite covariances, packed, shape (count, 6).

    A uniformly random rotation (QR of a Gaussian matrix, signs fixed) of principal
    standard deviations whose ratio to the largest is up to ``max_ratio``.
    """
    rotation, upper = np.linalg.qr(rng.standard_normal((count, 3, 3)))
    rotation = rotation * np.sign(np.diagonal(upper, axis1=1, axis2=2))[:, None, :]
    largest = rng.uniform(*sigma, size=count)
    ratio = np.exp(rng.uniform(0.0, math.log(max_ratio), size=(count, 3)))
    ratio[:, 0] = 1.0
    principal = largest[:, None] / ratio
    matrices = np.einsum("mij,mj,mkj->mik", rotation, principal**2, rotation)
    return np.ascontiguousarray(matrices[:, PACKED[0], PACKED[1]])


def _matrices(packed):
    """The symmetric matrices of packed covariances, shape (count, 3, 3)."""
    return packed[:, UNPACKED].reshape(-1, 3, 3)


def _problem(seed, count=30, *, grid=GRID, margin=1.5, max_ratio=10.0, sigma=(0.35, 1.6)):
    """Random Gaussians over and around the grid, signed amplitudes."""
    rng = np.random.default_rng(seed)
    lower = np.array(grid.origin) - margin
    upper = np.array(grid.origin) + np.array(grid.period) + margin
    positions = rng.uniform(lower, upper, size=(count, 3))
    covariance = _covariances(rng, count, sigma, max_ratio)
    amplitude = rng.uniform(-2.0, 3.0, size=count)
    return positions, covariance, amplitude


def _boxes(positions, covariance, tol, grid=GRID):
    sigma = np.sqrt(np.broadcast_to(covariance, (len(positions), 6))[:, [0, 3, 5]])
    return index_boxes(positions, np.ascontiguousarray(sigma), grid, tol)


def _render(positions, covariance, amplitude, tol, *, dtype=np.float64, start=BLOCK_START,
            shape=BLOCK_SHAPE, grid=GRID, boxes=None, block=None, overwrite=True):  # fmt: skip
    """Call the kernel on a fresh (or given) block; return the block and the update count."""
    if block is None:
        block = np.zeros(shape, dtype=dtype)
    low, high = boxes if boxes is not None else _boxes(positions, covariance, tol, grid)
    updates = add_covariance_gaussians_to_block(
        block,
        np.asarray(start, dtype=np.int64),
        np.array(grid.origin),
        np.array(grid.spacing),
        np.ascontiguousarray(positions, dtype=np.float64),
        np.ascontiguousarray(covariance, dtype=np.float64),
        np.ascontiguousarray(amplitude, dtype=np.float64),
        low,
        high,
        math.log(1 / tol),
        overwrite,
    )
    return block, updates


def _brute_force(positions, covariance, amplitude, tol, *, start=BLOCK_START,
                 shape=BLOCK_SHAPE, grid=GRID):  # fmt: skip
    """Float64 reference on the block: every Gaussian at every voxel.

    Returns the exact sum, ``sum |a| min(tol, g)``, ``sum |a| g``, the number of
    boxes holding each voxel, the largest condition number, and the number of
    (Gaussian, voxel) pairs in the box with ``q / 2`` within the cut, counted with the
    cut moved by -1e-9 and +1e-9 relatively (pairs that close are rounding's call).
    """
    count = len(positions)
    matrices = _matrices(np.broadcast_to(covariance, (count, 6)))
    amplitude = np.broadcast_to(amplitude, (count,))
    low, high = _boxes(positions, covariance, tol, grid)
    index = [start[d] + np.arange(shape[d]) for d in range(3)]
    points = np.stack(np.meshgrid(*[grid.axes[d][index[d]] for d in range(3)], indexing="ij"), -1)
    indices = np.stack(np.meshgrid(*index, indexing="ij"), axis=-1)
    exact = np.zeros(shape)
    truncation = np.zeros(shape)
    magnitude = np.zeros(shape)
    covering = np.zeros(shape, dtype=np.int64)
    kept = [0, 0]
    cut = math.log(1 / tol)
    for c in range(count):
        d = points - positions[c]
        q = np.einsum("...i,ij,...j->...", d, np.linalg.inv(matrices[c]), d)
        g = np.exp(-0.5 * q)
        exact += amplitude[c] * g
        truncation += abs(amplitude[c]) * np.minimum(tol, g)
        magnitude += abs(amplitude[c]) * g
        inside = np.all((indices >= low[c]) & (indices <= high[c]), axis=-1)
        covering += inside
        kept[0] += int(np.sum(inside & (0.5 * q <= cut * (1 - 1e-9))))
        kept[1] += int(np.sum(inside & (0.5 * q <= cut * (1 + 1e-9))))
    kappa = float(np.max(np.linalg.cond(matrices))) if count else 1.0
    return exact, truncation, magnitude, covering, kappa, kept


def _bound(truncation, magnitude, covering, kappa, tol, dtype):
    """The bound of the module docstring."""
    conditioning = 6 * kappa * math.log(1 / tol)
    rounding = (covering + 8 + conditioning) * np.finfo(dtype).eps * magnitude
    reference = (8 + conditioning) * np.finfo(np.float64).eps * magnitude
    return truncation + rounding + reference + np.finfo(dtype).tiny


def _assert_within_bound(block, reference, tol):
    exact, truncation, magnitude, covering, kappa, _ = reference
    bound = _bound(truncation, magnitude, covering, kappa, tol, block.dtype)
    excess = np.abs(block.astype(np.float64) - exact) - bound
    worst = np.unravel_index(np.argmax(excess), excess.shape)
    assert np.all(excess <= 0), f"bound exceeded by {excess[worst]:.3g} at {worst}"


# ---------------------------------------------------------------- against brute force


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(("shared_covariance", "shared_amplitude"),
                         [(False, False), (True, False), (False, True), (True, True)])  # fmt: skip
@pytest.mark.parametrize("tol", [1e-3, 1e-8])
def test_block_meets_the_bound_and_counts_the_kept_voxels(dtype, shared_covariance,
                                                          shared_amplitude, tol):  # fmt: skip
    positions, covariance, amplitude = _problem(seed=11)
    if shared_covariance:
        covariance = covariance[3:4]
    if shared_amplitude:
        amplitude = amplitude[:1]
    block, updates = _render(positions, covariance, amplitude, tol, dtype=dtype)
    reference = _brute_force(positions, covariance, amplitude, tol)
    _assert_within_bound(block, reference, tol)
    low, high = reference[-1]
    assert low <= updates <= high
    assert updates > 0


def test_float64_rounding_of_the_kept_voxels_is_small():
    """Against the reference restricted to the kept pairs, the rounding alone is a few
    dozen eps of sum |a| g even at axis ratio 10 (condition number 100)."""
    tol = 1e-6
    positions, covariance, amplitude = _problem(seed=5, count=40)
    block, _ = _render(positions, covariance, amplitude, tol)
    matrices = _matrices(covariance)
    low, high = _boxes(positions, covariance, tol)
    index = [BLOCK_START[d] + np.arange(BLOCK_SHAPE[d]) for d in range(3)]
    points = np.stack(np.meshgrid(*[GRID.axes[d][index[d]] for d in range(3)], indexing="ij"), -1)
    indices = np.stack(np.meshgrid(*index, indexing="ij"), axis=-1)
    kept = np.zeros(BLOCK_SHAPE)
    magnitude = np.zeros(BLOCK_SHAPE)
    ambiguous = np.zeros(BLOCK_SHAPE, dtype=bool)
    for c in range(len(positions)):
        d = points - positions[c]
        half_q = 0.5 * np.einsum("...i,ij,...j->...", d, np.linalg.inv(matrices[c]), d)
        inside = np.all((indices >= low[c]) & (indices <= high[c]), axis=-1)
        keep = inside & (half_q <= math.log(1 / tol))
        kept += np.where(keep, amplitude[c] * np.exp(-half_q), 0.0)
        magnitude += np.where(keep, abs(amplitude[c]) * np.exp(-half_q), 0.0)
        ambiguous |= inside & (np.abs(half_q - math.log(1 / tol)) < 1e-9 * math.log(1 / tol))
    clear = ~ambiguous & (magnitude > 0)
    relative = np.abs(block - kept)[clear] / (np.finfo(np.float64).eps * magnitude[clear])
    kappa = float(np.max(np.linalg.cond(matrices)))
    assert kappa > 50
    assert relative.max() <= 8 + 6 * kappa * math.log(1 / tol)
    assert relative.max() < 1000


def test_a_centre_on_a_sample_peaks_at_the_amplitude_exactly():
    covariance = _covariances(np.random.default_rng(2), 1)
    positions = np.array([[GRID.axes[d][BLOCK_START[d] + 4] for d in range(3)]])
    block, _ = _render(positions, covariance, np.array([2.75]), 1e-6)
    assert block[4, 4, 4] == 2.75
    assert block.max() == 2.75


def test_diagonal_covariance_is_within_the_bound_of_the_separable_reference():
    tol = 1e-6
    rng = np.random.default_rng(4)
    positions, _, amplitude = _problem(seed=4)
    sigma = rng.uniform(0.3, 1.5, size=(len(positions), 3))
    covariance = np.zeros((len(positions), 6))
    covariance[:, [0, 3, 5]] = sigma**2
    block, _ = _render(positions, covariance, amplitude, tol)
    axes = [GRID.axes[d][BLOCK_START[d] : BLOCK_START[d] + BLOCK_SHAPE[d]] for d in range(3)]
    exact = np.zeros(BLOCK_SHAPE)
    truncation = np.zeros(BLOCK_SHAPE)
    magnitude = np.zeros(BLOCK_SHAPE)
    for c in range(len(positions)):
        fx, fy, fz = (np.exp(-0.5 * ((axes[d] - positions[c, d]) / sigma[c, d]) ** 2)
                      for d in range(3))  # fmt: skip
        g = fx[:, None, None] * fy[None, :, None] * fz[None, None, :]
        exact += amplitude[c] * g
        truncation += abs(amplitude[c]) * np.minimum(tol, g)
        magnitude += abs(amplitude[c]) * g
    bound = _bound(truncation, magnitude, len(positions), 1.0, tol, np.float64)
    assert np.all(np.abs(block - exact) <= bound)


def test_gaussians_outside_the_grid_and_the_block():
    tol = 1e-6
    rng = np.random.default_rng(8)
    top = np.array(GRID.origin) + np.array(GRID.period)
    below = rng.uniform(np.array(GRID.origin) - 3, np.array(GRID.origin), size=(8, 3))
    above = rng.uniform(top, top + 3, size=(8, 3))
    far = np.array(GRID.origin) + np.array([[-40.0, 2.0, 3.0], [2.0, 80.0, 1.0], [1e6, -1e6, 1e30]])
    positions = np.concatenate([below, above, far])
    covariance = _covariances(rng, len(positions))
    amplitude = rng.uniform(-1.0, 2.0, size=len(positions))
    for start, shape in [((0, 0, 0), GRID.shape), ((14, 0, 17), (8, 19, 7))]:
        block, updates = _render(positions, covariance, amplitude, tol, start=start, shape=shape)
        reference = _brute_force(positions, covariance, amplitude, tol, start=start, shape=shape)
        _assert_within_bound(block, reference, tol)
        assert reference[-1][0] <= updates <= reference[-1][1]


def test_only_boxes_that_miss_the_block_leave_it_untouched():
    positions, covariance, amplitude = _problem(seed=9, count=10)
    positions[:, 0] = GRID.axes[0][0]  # every centre on plane 0: far from the block's planes
    covariance[:, [0, 1, 2]] = [0.01, 0.0, 0.0]
    _, high = _boxes(positions, covariance, 1e-6)
    assert np.all(high[:, 0] < BLOCK_START[0])
    block = np.full(BLOCK_SHAPE, 7.0)
    _, updates = _render(positions, covariance, amplitude, 1e-6, block=block, overwrite=False)
    assert updates == 0
    assert np.all(block == 7.0)


def test_no_gaussians_return_zero_and_clear_only_with_overwrite():
    empty = np.empty((0, 3)), np.empty((0, 6)), np.empty(0)
    block = np.full(BLOCK_SHAPE, 3.0, dtype=np.float32)
    _, updates = _render(*empty, 1e-6, block=block, overwrite=False)
    assert updates == 0
    assert np.all(block == 3.0)
    _, updates = _render(*empty, 1e-6, block=block, overwrite=True)
    assert updates == 0
    assert np.all(block == 0.0)


def test_covariances_not_positive_definite_or_centres_not_finite_draw_nothing():
    positions, covariance, amplitude = _problem(seed=12, count=4)
    positions[:, :] = np.array(GRID.origin) + np.array(GRID.period) / 2
    covariance[0] = [1.0, 2.0, 0.0, 1.0, 0.0, 1.0]  # indefinite
    covariance[1] = [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]  # singular
    covariance[2] = [-1.0, 0.0, 0.0, 1.0, 0.0, 1.0]  # negative variance
    boxes = _boxes(positions, np.abs(covariance), 1e-6)
    positions[3, 1] = np.nan
    block, updates = _render(positions, covariance, amplitude, 1e-6, boxes=boxes)
    assert updates == 0
    assert not np.any(block)


# ---------------------------------------------------------------- chunking and contents


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sub_blocks_assemble_to_the_whole_volume_bit_for_bit(dtype):
    tol = 1e-6
    positions, covariance, amplitude = _problem(seed=21, count=40)
    boxes = _boxes(positions, covariance, tol)
    whole, total = _render(positions, covariance, amplitude, tol, dtype=dtype, start=(0, 0, 0),
                           shape=GRID.shape, boxes=boxes)  # fmt: skip
    assembled = np.full(GRID.shape, np.nan, dtype=dtype)
    updates = 0
    edges = [np.linspace(0, n, parts + 1).astype(int)
             for n, parts in zip(GRID.shape, (2, 3, 2), strict=True)]  # fmt: skip
    for x0, x1 in zip(edges[0][:-1], edges[0][1:], strict=True):
        for y0, y1 in zip(edges[1][:-1], edges[1][1:], strict=True):
            for z0, z1 in zip(edges[2][:-1], edges[2][1:], strict=True):
                block, count = _render(positions, covariance, amplitude, tol, dtype=dtype,
                                       start=(x0, y0, z0), shape=(x1 - x0, y1 - y0, z1 - z0),
                                       boxes=boxes)  # fmt: skip
                assembled[x0:x1, y0:y1, z0:z1] = block
                updates += count
    assert np.array_equal(assembled, whole)
    assert updates == total


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_overwrite_ignores_what_the_block_held(dtype):
    positions, covariance, amplitude = _problem(seed=3)
    fresh, updates = _render(positions, covariance, amplitude, 1e-6, dtype=dtype)
    garbage = np.full(BLOCK_SHAPE, np.nan, dtype=dtype)
    again, updates_again = _render(positions, covariance, amplitude, 1e-6, block=garbage)
    assert np.array_equal(again, fresh)
    assert updates_again == updates
    zeros = np.zeros(BLOCK_SHAPE, dtype=dtype)
    added, _ = _render(positions, covariance, amplitude, 1e-6, block=zeros, overwrite=False)
    assert np.array_equal(added, fresh)


def test_without_overwrite_gaussians_are_added_to_the_contents():
    tol = 1e-6
    positions, covariance, amplitude = _problem(seed=6)
    contents = np.random.default_rng(6).uniform(-1.0, 1.0, size=BLOCK_SHAPE)
    block, _ = _render(positions, covariance, amplitude, tol, block=contents.copy(),
                       overwrite=False)  # fmt: skip
    reference = _brute_force(positions, covariance, amplitude, tol)
    exact, truncation, magnitude, covering, kappa, _ = reference
    bound = _bound(truncation, magnitude + np.abs(contents), covering, kappa, tol, np.float64)
    assert np.all(np.abs(block - (contents + exact)) <= bound)


def test_the_kernel_releases_the_gil_and_is_cached():
    from numba.core.caching import FunctionCache

    assert add_covariance_gaussians_to_block.targetoptions["nogil"] is True
    assert isinstance(add_covariance_gaussians_to_block._cache, FunctionCache)


# ---------------------------------------------------------------- property


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 12),
    tol=st.sampled_from([1e-2, 1e-4, 1e-6, 1e-10]),
    max_ratio=st.sampled_from([1.0, 3.0, 10.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=st.tuples(*[st.integers(1, 9)] * 3),
    start=st.tuples(*[st.integers(0, 10)] * 3),
    spacing=st.tuples(*[st.floats(0.2, 1.0)] * 3),
    origin=st.tuples(*[st.floats(-5.0, 5.0)] * 3),
)
def test_any_small_case_meets_the_bound(seed, count, tol, max_ratio, dtype, shape, start,
                                        spacing, origin):  # fmt: skip
    grid = dg.Grid(shape=(12, 13, 14), origin=origin, spacing=spacing)
    shape = tuple(min(n, total - s) for n, s, total in zip(shape, start, grid.shape, strict=True))
    positions, covariance, amplitude = _problem(seed, count, grid=grid, margin=2.0,
                                                max_ratio=max_ratio, sigma=(0.2, 2.0))  # fmt: skip
    block, updates = _render(positions, covariance, amplitude, tol, dtype=dtype, start=start,
                             shape=shape, grid=grid)  # fmt: skip
    reference = _brute_force(positions, covariance, amplitude, tol, start=start, shape=shape,
                             grid=grid)  # fmt: skip
    _assert_within_bound(block, reference, tol)
    assert reference[-1][0] <= updates <= reference[-1][1]


def test_no_fused_multiply_add_in_the_covariance_kernel(tmp_path):
    """Same bits on every CPU needs every multiply and add rounded on its own; the
    exponentials are evaluated in a loop that multiplies packed vectors."""
    setup = """
import numpy as np
from daskgauss import _covariance_kernel as ck
for dtype in (np.float32, np.float64):
    ck.add_covariance_gaussians_to_block(
        np.zeros((4, 5, 20), dtype), np.zeros(3, np.int64), np.zeros(3), np.ones(3),
        np.full((1, 3), 2.0), np.array([[2.0, 0.5, 0.1, 1.5, 0.2, 1.0]]), np.ones(1),
        np.zeros((1, 3), np.int64), np.full((1, 3), 4, np.int64), 5.0, True)
"""
    lines = compiled_assembly(
        setup, "ck.add_covariance_gaussians_to_block, ck._prepare, ck._values", tmp_path
    )
    names = {line[0] for line in lines}
    assert {"add_covariance_gaussians_to_block", "_prepare", "_values"} <= names
    assert all(line[1] > 0 for line in lines)
    assert any(line[2] for line in lines if line[0] == "_values")
    assert not [line for line in lines if line[3]]
