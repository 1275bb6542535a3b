"""gaussian_sum against the independent float64 brute force, plus laziness and the graph."""

from __future__ import annotations

import math

import dask
import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback
from dask.core import get_dependencies
from hypothesis import assume, given
from hypothesis import strategies as st

import daskgauss as dg
from tests import reference


def _full_sigma(sigma, count):
    array = np.asarray(sigma, dtype=float)
    if array.ndim == 0:
        return np.full((count, 3), float(array))
    if array.ndim == 1:
        return np.repeat(array[:, None], 3, axis=1)
    return np.broadcast_to(array, (count, 3)).astype(float)


def assert_within_bound(
    volume,
    centres,
    sigma,
    weights,
    grid,
    *,
    normalize="peak",
    tol=1e-6,
    periodic=False,
    dtype="float32",
):
    """Compute ``volume`` and assert the documented bound against brute force."""
    computed = np.asarray(volume.compute(), dtype=np.float64)
    count = len(centres)
    sigma3 = _full_sigma(sigma, count)
    weights = (
        np.ones(count) if weights is None else np.broadcast_to(weights, (count,)).astype(float)
    )
    amplitude = reference.amplitudes(sigma3, weights, normalize)
    period = grid.period if periodic else None
    unit = reference.unit_gaussians(grid.axes, centres, sigma3, period)
    exact = np.einsum("i,i...->...", amplitude, unit) if count else np.zeros(grid.shape)
    covering = reference.covering_count(grid.axes, centres, sigma3, tol, period)
    bound = reference.error_bound(unit, amplitude, tol, covering, dtype)
    error = np.abs(computed - exact)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"error {error[worst]:.3e} exceeds bound {bound[worst]:.3e} at {worst} "
        f"(exact {exact[worst]:.6e}, computed {computed[worst]:.6e})"
    )
    return computed, exact, amplitude, sigma3


# ---------------------------------------------------------------- fixed cases


def test_single_gaussian_peak_and_profile():
    grid = dg.Grid.from_bounds(-5, 5, 11)
    volume = dg.gaussian_sum(np.zeros((1, 3)), 1.0, grid, dtype="float64")
    values = volume.compute()
    assert values[5, 5, 5] == 1.0
    axis = grid.axes[0]
    np.testing.assert_allclose(
        values[:, 5, 5],
        np.exp(-0.5 * axis**2) * (np.exp(-0.5 * axis**2) >= 1e-6),
        rtol=1e-14,
        atol=0,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("normalize", ["peak", "density"])
def test_random_anisotropic_against_brute_force(rng, dtype, normalize):
    grid = dg.Grid(shape=(23, 17, 29), origin=(-3.0, 1.0, -7.5), spacing=(0.45, 0.6, 0.35))
    centres = rng.uniform(-6, 9, size=(40, 3))  # some outside the grid, reaching in
    sigma = rng.uniform(0.3, 1.8, size=(40, 3))
    weights = rng.uniform(-2, 3, size=40)
    volume = dg.gaussian_sum(
        centres, sigma, grid, weights=weights, normalize=normalize, chunks=(7, 9, 10), dtype=dtype
    )
    assert volume.dtype == np.dtype(dtype)
    assert volume.shape == grid.shape
    assert_within_bound(volume, centres, sigma, weights, grid, normalize=normalize, dtype=dtype)


@pytest.mark.parametrize("sigma_kind", ["scalar", "per-centre", "one-anisotropic"])
def test_sigma_forms(rng, sigma_kind):
    centres = rng.uniform(-4, 4, size=(12, 3))
    sigma = {
        "scalar": 0.8,
        "per-centre": rng.uniform(0.4, 1.2, 12),
        "one-anisotropic": np.array([[0.5, 0.9, 1.3]]),
    }[sigma_kind]
    grid = dg.Grid.from_bounds(-5, 5, (21, 19, 17))
    volume = dg.gaussian_sum(centres, sigma, grid, dtype="float64", chunks=8)
    assert_within_bound(volume, centres, sigma, None, grid, dtype="float64")


@pytest.mark.parametrize("tol", [1e-2, 1e-4, 1e-9])
def test_tolerance_bound_is_tight_enough_to_matter(rng, tol):
    """A looser tol really drops more, and the bound still holds exactly."""
    centres = rng.uniform(-3, 3, size=(15, 3))
    grid = dg.Grid.from_bounds(-6, 6, 25)
    volume = dg.gaussian_sum(centres, 0.9, grid, tol=tol, dtype="float64")
    computed, exact, _, _ = assert_within_bound(
        volume, centres, 0.9, None, grid, tol=tol, dtype="float64"
    )
    if tol >= 1e-4:
        assert np.max(np.abs(computed - exact)) > tol / 10  # truncation is real, not zero


def test_centres_outside_grid_reach_in():
    grid = dg.Grid.from_bounds(0, 10, 21)
    centres = np.array([[-2.0, 5.0, 5.0], [5.0, 12.5, 5.0], [5.0, 5.0, -40.0]])
    volume = dg.gaussian_sum(centres, 1.0, grid, dtype="float64")
    values, _, _, _ = assert_within_bound(volume, centres, 1.0, None, grid, dtype="float64")
    assert values[0, 10, 10] == pytest.approx(math.exp(-2.0), rel=1e-12)
    assert values[10, 20, 10] == pytest.approx(math.exp(-0.5 * 2.5**2), rel=1e-12)
    assert not np.any(values[:, :, :] > 1.0)


def test_empty_centres_give_zeros():
    grid = dg.Grid(shape=(10, 12, 14))
    volume = dg.gaussian_sum(np.empty((0, 3)), 1.0, grid, chunks=5)
    values = volume.compute()
    assert values.shape == (10, 12, 14)
    assert values.dtype == np.float32
    assert not values.any()


def test_classic_formulation():
    """linspace grid and 1/sqrt(2 pi sigma^2) exp(-|x-c|^2 / 2 sigma^2), as in the README."""
    rng = np.random.default_rng(7)
    side, n, sigma = 20.0, 33, 1.3
    centres = rng.uniform(-side / 2, side / 2, size=(25, 3))
    axis = np.linspace(-side / 2, side / 2, n)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    classic = np.zeros((n, n, n))
    for cx, cy, cz in centres:
        classic += (
            1
            / np.sqrt(2 * np.pi * sigma**2)
            * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
        )
    grid = dg.Grid.from_bounds(-side / 2, side / 2, n)
    np.testing.assert_array_equal(grid.axes[0], axis)
    volume = dg.gaussian_sum(
        centres,
        sigma,
        grid,
        weights=1 / np.sqrt(2 * np.pi * sigma**2),
        normalize="peak",
        dtype="float64",
    )
    peak = 1 / np.sqrt(2 * np.pi * sigma**2)
    assert np.max(np.abs(volume.compute() - classic)) <= 25 * peak * 1e-6


def test_density_integrates_to_weights(rng):
    """Voxel sum x voxel volume = sum of weights for Gaussians well inside the grid."""
    centres = rng.uniform(-4, 4, size=(30, 3))
    weights = rng.uniform(0.5, 2.0, size=30)
    grid = dg.Grid.from_bounds(-12, 12, (49, 61, 55))
    volume = dg.gaussian_sum(
        centres,
        rng.uniform(0.8, 1.2, size=(30, 3)),
        grid,
        weights=weights,
        normalize="density",
        dtype="float64",
    )
    total = float(volume.sum().compute()) * grid.voxel_volume
    assert total == pytest.approx(weights.sum(), rel=1e-5)


# ---------------------------------------------------------------- periodic


def test_periodic_wraps_against_minimum_image_and_lattice(rng):
    grid = dg.Grid.from_box(0, (12.0, 14.0, 13.0), (24, 28, 26))
    centres = rng.uniform(-20, 30, size=(20, 3))  # anywhere: wrapped into the box
    sigma = rng.uniform(0.4, 1.0, size=(20, 3))
    weights = rng.uniform(-1, 2, size=20)
    volume = dg.gaussian_sum(
        centres, sigma, grid, weights=weights, periodic=True, chunks=(7, 11, 13), dtype="float64"
    )
    computed, _, amplitude, sigma3 = assert_within_bound(
        volume, centres, sigma, weights, grid, periodic=True, dtype="float64"
    )
    tol = 1e-6
    lattice = reference.lattice_sum(grid.axes, centres, sigma3, amplitude, grid.period)
    unit = reference.unit_gaussians(grid.axes, centres, sigma3, grid.period)
    image_tol = tol * (1 + 3 * tol**3)
    bound = np.sum(np.abs(amplitude)[:, None, None, None] * np.minimum(tol, unit), axis=0)
    bound += np.sum(np.abs(amplitude)) * ((1 + image_tol) ** 3 - 1) + 1e-12
    assert np.all(np.abs(computed - lattice) <= bound)


def test_periodic_matches_tiled_nonperiodic_sum():
    """A Gaussian next to a face of the box shows up on the opposite face."""
    grid = dg.Grid.from_box(0, 10, 20)
    centre = np.array([[0.1, 5.0, 5.0]])
    wrapped = dg.gaussian_sum(centre, 0.7, grid, periodic=True, dtype="float64").compute()
    images = np.array([[0.1, 5.0, 5.0], [10.1, 5.0, 5.0], [-9.9, 5.0, 5.0]])
    tiled = dg.gaussian_sum(images, 0.7, grid, dtype="float64").compute()
    np.testing.assert_allclose(wrapped, tiled, rtol=0, atol=1e-15)
    assert wrapped[-1, 10, 10] > 0.1


def test_periodic_refuses_support_wider_than_box():
    grid = dg.Grid.from_box(0, 5, 10)
    with pytest.raises(ValueError, match="periodic box"):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, grid, periodic=True)


# ---------------------------------------------------------------- property tests


@st.composite
def problems(draw):
    shape = tuple(draw(st.integers(1, 18)) for _ in range(3))
    spacing = tuple(draw(st.floats(0.25, 1.5)) for _ in range(3))
    origin = tuple(draw(st.floats(-5, 5)) for _ in range(3))
    grid = dg.Grid(shape=shape, origin=origin, spacing=spacing)
    count = draw(st.integers(0, 10))
    lower = np.array(origin) - 3
    upper = np.array(origin) + np.array(shape) * np.array(spacing) + 3
    unit = np.array(draw(st.lists(st.floats(0, 1), min_size=3 * count, max_size=3 * count)))
    centres = (lower + unit.reshape(count, 3) * (upper - lower)) if count else np.empty((0, 3))
    sigma_form = draw(st.sampled_from(["scalar", "per-centre", "per-axis", "one-anisotropic"]))
    sigma_values = st.floats(0.2, 2.0)
    if sigma_form == "scalar" or count == 0:
        sigma = draw(sigma_values)
    elif sigma_form == "per-centre":
        sigma = np.array(draw(st.lists(sigma_values, min_size=count, max_size=count)))
    elif sigma_form == "per-axis":
        sigma = np.array(
            draw(st.lists(sigma_values, min_size=3 * count, max_size=3 * count))
        ).reshape(count, 3)
    else:
        sigma = np.array([draw(st.lists(sigma_values, min_size=3, max_size=3))])
    weights = draw(
        st.one_of(
            st.none(),
            st.floats(-3, 3),
            st.lists(st.floats(-3, 3), min_size=count, max_size=count).map(np.array),
        )
    )
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    return dict(
        grid=grid,
        centres=centres,
        sigma=sigma,
        weights=weights,
        chunks=chunks,
        normalize=draw(st.sampled_from(["peak", "density"])),
        tol=draw(st.sampled_from([1e-2, 1e-4, 1e-6, 1e-8])),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        periodic=draw(st.booleans()),
    )


@given(problems())
def test_property_any_valid_input_meets_the_bound(problem):
    grid = problem["grid"]
    if problem["periodic"]:
        sigma3 = _full_sigma(problem["sigma"], len(problem["centres"]))
        half = dg.support_half_width(problem["tol"])
        assume(np.all(2 * half * sigma3 <= np.array(grid.period)))
    volume = dg.gaussian_sum(
        problem["centres"],
        problem["sigma"],
        grid,
        weights=problem["weights"],
        normalize=problem["normalize"],
        tol=problem["tol"],
        periodic=problem["periodic"],
        chunks=problem["chunks"],
        dtype=problem["dtype"],
    )
    assert volume.chunks == da.core.normalize_chunks(problem["chunks"], grid.shape)
    assert_within_bound(
        volume,
        problem["centres"],
        problem["sigma"],
        problem["weights"],
        grid,
        normalize=problem["normalize"],
        tol=problem["tol"],
        periodic=problem["periodic"],
        dtype=problem["dtype"],
    )


@given(problems(), st.data())
def test_property_chunking_does_not_change_a_bit(problem, data):
    grid = problem["grid"]
    assume(not problem["periodic"])
    other_chunks = tuple(data.draw(st.integers(1, n)) for n in grid.shape)
    kwargs = dict(
        weights=problem["weights"],
        normalize=problem["normalize"],
        tol=problem["tol"],
        dtype=problem["dtype"],
    )
    one = dg.gaussian_sum(
        problem["centres"], problem["sigma"], grid, chunks=problem["chunks"], **kwargs
    )
    two = dg.gaussian_sum(problem["centres"], problem["sigma"], grid, chunks=other_chunks, **kwargs)
    np.testing.assert_array_equal(one.compute(), two.compute())


# ---------------------------------------------------------------- laziness and the graph


class _CountTasks(Callback):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix
        self.keys = []

    def _pretask(self, key, dsk, state):
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(self.prefix):
            self.keys.append(key)


def test_nothing_runs_until_compute_and_a_slice_runs_only_its_blocks(rng):
    centres = rng.uniform(0, 40, size=(200, 3))
    grid = dg.Grid.from_bounds(0, 40, 64)
    with _CountTasks("gaussian-sum") as counter:
        volume = dg.gaussian_sum(centres, 1.0, grid, chunks=16)
        assert counter.keys == []
        plane = volume[20].compute()
    assert volume.numblocks == (4, 4, 4)
    # Plane 20 lies in block row 1: only the 4 x 4 blocks of that row run (dask may
    # fuse each with its slicing, so the keys are those of the plane's blocks).
    assert len(counter.keys) == 16
    assert sorted(k[-2:] for k in counter.keys) == [(j, k) for j in range(4) for k in range(4)]
    np.testing.assert_array_equal(plane, volume.compute()[20])


def test_binned_centres_enter_the_graph_once(rng):
    centres = rng.uniform(0, 40, size=(5000, 3))
    grid = dg.Grid.from_bounds(0, 40, 64)
    volume = dg.gaussian_sum(centres, 1.0, grid, chunks=16)
    graph = dict(volume.__dask_graph__())
    holders = [key for key, task in graph.items() if "binning" in str(key)]
    assert len(holders) == 1
    assert len(graph) == 1 + 64
    # Every block task refers to the binning by key; none embeds a copy of it.
    binning = graph[holders[0]]
    binning = getattr(binning, "value", binning)
    assert binning.positions.shape[0] >= 5000
    for key, task in graph.items():
        if key in holders:
            continue
        assert get_dependencies(graph, key) == {holders[0]}
        assert "positions" not in repr(task)


def test_block_far_from_all_centres_does_no_work(rng):
    """A block no support reaches gets no sources, so its task never calls the kernel."""
    centres = rng.uniform(0, 5, size=(50, 3))
    grid = dg.Grid.from_bounds(0, 63, 64)
    volume = dg.gaussian_sum(centres, 0.5, grid, chunks=16)
    binning = dict(volume.__dask_graph__())
    binning = next(v for k, v in binning.items() if "binning" in str(k))
    binning = getattr(binning, "value", binning)
    assert binning.block_count((3, 3, 3)) == 0
    assert binning.block_count((0, 0, 0)) == 50
    assert not volume.blocks[3, 3, 3].compute().any()


# ---------------------------------------------------------------- bad input, at call time


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(centres=[[0, 0, np.nan]]), "centres must be finite"),
        (dict(centres=[[0, 0, np.inf]]), "centres must be finite"),
        (dict(centres=np.zeros((4, 2))), r"centres must have shape \(M, 3\)"),
        (dict(sigma=0.0), "sigma must be positive"),
        (dict(sigma=-1.0), "sigma must be positive"),
        (dict(sigma=np.nan), "sigma must be finite"),
        (dict(sigma=np.ones(5)), r"sigma must be a number, shape \(M,\)"),
        (dict(sigma=np.ones(3)), r"use shape \(1, 3\)"),
        (dict(weights=np.ones(3)), r"weights must be None, a number or shape \(M,\)"),
        (dict(weights=[1, np.inf]), "weights must be finite"),
        (dict(normalize="area"), "normalize must be one of"),
        (dict(dtype="int32"), "dtype must be float32 or float64"),
        (dict(dtype="float16"), "dtype must be float32 or float64"),
        (dict(tol=0.0), r"tol must lie in \(0, 1\)"),
        (dict(tol=1.0), r"tol must lie in \(0, 1\)"),
        (dict(tol="small"), "tol must be a number"),
        (dict(chunks=(5, 5)), "chunks"),
        (dict(chunks=((3, 3), (10,), (10,))), "do not fit a grid of shape"),
        (dict(periodic="yes"), "periodic must be True or False"),
    ],
)
def test_bad_input_raises_before_any_work(kwargs, message):
    arguments = {"centres": np.zeros((2, 3)), "sigma": 1.0, "grid": dg.Grid(shape=10)} | kwargs
    centres = arguments.pop("centres")
    sigma = arguments.pop("sigma")
    grid = arguments.pop("grid")
    with pytest.raises(ValueError, match=message):
        dg.gaussian_sum(centres, sigma, grid, **arguments)


def test_grid_must_be_a_grid():
    with pytest.raises(TypeError, match=r"grid must be a daskgauss\.Grid"):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, (10, 10, 10))


@pytest.mark.parametrize("workers", [1, 2, 16])
def test_default_chunks_follow_the_grid_and_config_never_the_machine(workers):
    with dask.config.set(num_workers=workers):
        # Large volume: near-cubic blocks of about 64 MiB, sides multiples of 16.
        big = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=(1024, 1000, 600)))
        # Fewer than 8 blocks: x slabs, halved until 8 blocks ...
        cube = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=256))
        # ... but never below 4 MiB a slab.
        small = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=128))
        tiny = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=(64, 64, 64)))
        flat = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=(1000, 600, 40)))
        with dask.config.set({"daskgauss.block-bytes": "8 MiB"}):
            smaller = dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=(1024, 1000, 600)))
    assert big.chunksize == (256, 256, 256)
    assert cube.chunksize == (32, 256, 256)
    assert cube.numblocks == (8, 1, 1)
    assert small.chunksize == (64, 128, 128)
    assert small.numblocks == (2, 1, 1)
    assert tiny.numblocks == (1, 1, 1)
    # 1000 x 600 x 40: z and y whole, x 688 (64 MiB), then halved to 86 for 12 blocks.
    assert flat.chunksize == (86, 600, 40)
    assert smaller.chunksize == (128, 128, 128)


@pytest.mark.parametrize("module", ["daskgauss._lazy", "daskgauss._grid"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module(module))
    assert tried > 0
    assert failures == 0


def test_changing_the_inputs_afterwards_does_not_change_the_lazy_array(rng):
    """The array is what was asked for when it was made, not what the buffers hold later."""
    centres = rng.uniform(-4, 4, size=(30, 3))
    sigma = rng.uniform(0.5, 1.0, size=(30, 3))
    weights = rng.normal(size=30)
    grid = dg.Grid.from_bounds(-5, 5, 16)
    volume = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=8)
    expected = dg.gaussian_sum(centres.copy(), sigma.copy(), grid, weights=weights.copy(),
                               chunks=8).compute()  # fmt: skip
    centres += 1.0
    sigma *= 2.0
    weights[:] = 0.0
    np.testing.assert_array_equal(volume.compute(), expected)


# ---------------------------------------------------------------- narrow Gaussians, many per block


@pytest.mark.parametrize("kernel", ["auto", "narrow", "strips"])
@pytest.mark.parametrize("sigma_voxels", [0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("periodic", [False, True])
def test_narrow_gaussians_against_brute_force(rng, kernel, sigma_voxels, periodic):
    grid = dg.Grid.from_box(-6, 6, (24, 20, 28)) if periodic else dg.Grid.from_bounds(
        -6, 6, (25, 21, 29))  # fmt: skip
    spacing = np.array(grid.spacing)
    count = 300
    centres = rng.uniform(-6.5, 6.5, size=(count, 3))
    sigma = sigma_voxels * spacing * rng.uniform(0.8, 1.2, size=(count, 3))
    weights = rng.normal(size=count)
    dtype = "float64" if sigma_voxels == 0.5 else "float32"
    with dask.config.set({"daskgauss.kernel": kernel}):
        volume = dg.gaussian_sum(centres, sigma, grid, weights=weights, periodic=periodic,
                                 chunks=(8, 7, 16), dtype=dtype)  # fmt: skip
        assert_within_bound(volume, centres, sigma, weights, grid, periodic=periodic, dtype=dtype)


def test_centres_on_samples_and_block_edges(rng):
    """Centres exactly on samples, on block faces and half-way between samples."""
    grid = dg.Grid(shape=(24, 24, 24), origin=(0.0, 0.0, 0.0), spacing=(0.5, 0.5, 0.5))
    edges = np.array([0.0, 3.5, 4.0, 4.25, 7.75, 8.0, 11.5])  # block faces at 4.0, 8.0
    centres = np.array(np.meshgrid(edges, edges, edges, indexing="ij")).reshape(3, -1).T
    sigma = 0.35  # 0.7 samples
    weights = rng.uniform(0.5, 1.5, size=len(centres))
    for chunks in ((8, 8, 8), (24, 5, 7), (1, 24, 3)):
        volume = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=chunks)
        computed, *_ = assert_within_bound(volume, centres, sigma, weights, grid)
        # A centre on a sample peaks there at its weight (other Gaussians add little).
        assert computed[8, 8, 8] >= weights[int(np.flatnonzero(
            (centres == [4.0, 4.0, 4.0]).all(axis=1))[0])] * (1 - 1e-6)  # fmt: skip


def test_a_hundred_thousand_gaussians_in_one_block_on_sampled_planes(rng):
    """10^5 narrow Gaussians in one 40^3 block, checked against brute force on planes."""
    grid = dg.Grid(shape=40)
    count = 100_000
    centres = rng.uniform(-1, 41, size=(count, 3))
    sigma = rng.uniform(0.3, 1.0, size=count)
    weights = rng.normal(size=count)
    tol = 1e-6
    computed = dg.gaussian_sum(centres, sigma, grid, weights=weights, tol=tol,
                               chunks=40, dtype="float64").compute()  # fmt: skip
    sigma3 = np.repeat(sigma[:, None], 3, axis=1)
    radius = sigma * math.sqrt(2 * math.log(1 / tol))
    axes = grid.axes
    for plane in (0, 13, 27, 39):
        near = np.abs(centres[:, 0] - axes[0][plane]) <= radius
        plane_axes = (axes[0][plane : plane + 1], axes[1], axes[2])
        unit = reference.unit_gaussians(plane_axes, centres[near], sigma3[near])
        exact = np.einsum("i,i...->...", weights[near], unit)
        covering = reference.covering_count(plane_axes, centres[near], sigma3[near], tol)
        bound = reference.error_bound(unit, weights[near], tol, covering, "float64")
        assert np.all(np.abs(computed[plane : plane + 1] - exact) <= bound), f"plane {plane}"


def test_narrow_bits_do_not_depend_on_chunks_threads_or_kernel(rng):
    """Chunkings, thread counts and the dispatcher's choice (forced either way, or auto
    with some blocks dense enough for the narrow kernel and some not) give one result."""
    grid = dg.Grid(shape=(48, 40, 64))
    dense = rng.uniform(0, 16, size=(6000, 3))  # about one per voxel in one corner ...
    sparse = rng.uniform(0, 48, size=(60, 3))  # ... few elsewhere
    centres = np.concatenate([dense, sparse])
    sigma = np.concatenate([rng.uniform(0.4, 0.9, 6000), rng.uniform(2.0, 3.0, 60)])
    weights = rng.normal(size=len(centres))

    def render(chunks, kernel="auto", **compute):
        with dask.config.set({"daskgauss.kernel": kernel}):
            volume = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=chunks)
            return volume.compute(**compute)

    expected = render((32, 32, 32), "narrow", scheduler="synchronous")
    # The auto choice really differs between blocks here.
    from daskgauss._binning import bin_gaussians
    from daskgauss._block import choose_kernel
    from daskgauss._gaussians import prepare_gaussians
    from daskgauss._plan import block_chunks

    chunks = block_chunks((32, 32, 32), grid.shape, np.dtype("float32"))
    binning = bin_gaussians(prepare_gaussians(centres, sigma, weights=weights), grid, chunks)
    choices = {
        choose_kernel(binning.block_sources(index), binning.block_shape(index))
        for index in np.ndindex(*binning.numblocks)
        if binning.block_count(index)
    }
    assert choices == {"narrow", "strips"}
    for chunks in ((32, 32, 32), (16, 16, 16), (48, 40, 64), (7, 13, 64), (5, 40, 9)):
        for kernel in ("auto", "narrow", "strips"):
            np.testing.assert_array_equal(render(chunks, kernel), expected, err_msg=f"{chunks}")
    for workers in (1, 2, 4):
        result = render((32, 32, 32), scheduler="threads", num_workers=workers)
        np.testing.assert_array_equal(result, expected, err_msg=f"{workers} workers")


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("budget", ["1 KiB", "40 KiB"])
def test_blocks_rendered_in_slabs_for_memory_are_the_same_bits(rng, periodic, budget):
    """A block whose sources exceed daskgauss.block-source-bytes renders in x slabs, each
    gathering its own sources (1 KiB: one plane per slab; 40 KiB: a few slabs): the
    same bits, also with per-centre sigmas, signed weights and on a pyramid level."""
    grid = dg.Grid.from_box(0, 24, (24, 20, 28)) if periodic else dg.Grid(shape=(24, 20, 28))
    centres = rng.uniform(-2, 26, size=(3000, 3))
    sigma = rng.uniform(0.3, 1.2, size=(3000, 3))
    weights = rng.normal(size=3000)
    for level in (0, 1):
        if periodic and level:
            continue
        arguments = dict(weights=weights, periodic=periodic, chunks=(12, 20, 28), level=level)
        expected = dg.gaussian_sum(centres, sigma, grid, **arguments).compute()
        with dask.config.set({"daskgauss.block-source-bytes": budget}):
            sliced = dg.gaussian_sum(centres, sigma, grid, **arguments).compute()
        np.testing.assert_array_equal(sliced, expected, err_msg=f"level {level}")
    assert np.abs(expected).max() > 0.1


def test_periodic_narrow_bits_do_not_depend_on_the_chunking(rng):
    grid = dg.Grid.from_box(0, 10, (20, 24, 16))
    centres = rng.uniform(-1, 11, size=(2000, 3))
    sigma = rng.uniform(0.2, 0.5, size=2000)
    one = dg.gaussian_sum(centres, sigma, grid, periodic=True, chunks=(20, 24, 16)).compute()
    for chunks in ((8, 8, 8), (3, 24, 5)):
        other = dg.gaussian_sum(centres, sigma, grid, periodic=True, chunks=chunks).compute()
        np.testing.assert_array_equal(one, other)


def test_unknown_kernel_setting_is_refused():
    with (
        dask.config.set({"daskgauss.kernel": "fastest"}),
        pytest.raises(ValueError, match=r"daskgauss\.kernel must be one of"),
    ):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=8)).compute()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("block-source-bytes", "0 B", r"block-source-bytes must be a positive size.*'0 B'"),
        ("block-source-bytes", "lots", r"block-source-bytes must be a positive size.*'lots'"),
        ("build-threads", 0, r"build-threads must be 'auto' or a whole number.*got 0"),
        ("build-threads", "many", r"build-threads must be 'auto' or a whole number.*'many'"),
    ],
)
def test_bad_build_settings_are_refused_before_any_work(setting, value, message):
    with (
        dask.config.set({f"daskgauss.{setting}": value}),
        pytest.raises(ValueError, match=message),
    ):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=8))  # no compute: refused now


def test_a_lazy_array_of_too_many_blocks_is_refused_quickly():
    """100000^3 in default blocks is 6 x 10^7 tasks: a clear error, nothing allocated."""
    import time

    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"makes 59,776,471 blocks, more than a lazy array"):
        dg.gaussian_sum(np.zeros((10, 3)), 1.0, dg.Grid(shape=100_000))
    assert time.perf_counter() - started < 10
    # The limit is a setting, and larger chunks stay under it.
    dg.gaussian_sum(np.zeros((10, 3)), 1.0, dg.Grid(shape=100_000), chunks=2048)
    with (
        dask.config.set({"daskgauss.max-lazy-blocks": 7}),
        pytest.raises(ValueError, match="render_to_zarr"),
    ):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=32), chunks=16)
