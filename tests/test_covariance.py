"""Full-covariance Gaussians through gaussian_sum and render_to_zarr, against brute force."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import daskgauss as dg
from tests import reference


def random_covariances(rng, count, smallest=0.6, largest=2.0):
    """``count`` covariances of random orientation with standard deviations along their
    axes in [smallest, largest] (eccentricities up to largest / smallest)."""
    rotations, _ = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    scales = rng.uniform(smallest, largest, size=(count, 3))
    matrices = np.einsum("mij,mj,mkj->mik", rotations, scales**2, rotations)
    return 0.5 * (matrices + matrices.transpose(0, 2, 1))


def assert_within_bound(volume, centres, covariance, weights, grid, *, normalize="peak",
                        tol=1e-6, periodic=False, dtype="float32"):  # fmt: skip
    """Compute ``volume`` and assert the documented bound against brute force."""
    computed = np.asarray(volume.compute(), dtype=np.float64)
    count = len(centres)
    matrices = np.broadcast_to(covariance, (count, 3, 3))
    weights = np.ones(count) if weights is None else np.broadcast_to(weights, (count,))
    amplitude = reference.covariance_amplitudes(matrices, weights, normalize)
    period = grid.period if periodic else None
    unit = reference.unit_covariance_gaussians(grid.axes, centres, matrices, period)
    exact = np.einsum("i,i...->...", amplitude, unit)
    covering = reference.covariance_covering_count(grid.axes, centres, matrices, tol, period)
    condition = float(np.max(np.linalg.cond(matrices)))
    bound = reference.error_bound(unit, amplitude, tol, covering, dtype, condition)
    error = np.abs(computed - exact)
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    assert np.all(error <= bound), (
        f"error {error[worst]:.3e} exceeds bound {bound[worst]:.3e} at {worst} "
        f"(exact {exact[worst]:.6e}, computed {computed[worst]:.6e})"
    )
    return computed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("normalize", ["peak", "density"])
def test_per_centre_covariances_signed_weights_anisotropic_spacing(rng, dtype, normalize):
    grid = dg.Grid(shape=(23, 19, 27), origin=(-3.0, -2.5, 1.0), spacing=(0.5, 0.6, 0.35))
    count = 30
    low, high = np.array(grid.origin), np.array(grid.origin) + np.array(grid.spacing) * 22
    centres = rng.uniform(low - 1, high + 1, size=(count, 3))
    covariance = random_covariances(rng, count)
    weights = rng.uniform(-1, 2, size=count)
    volume = dg.gaussian_sum(centres, None, grid, covariance=covariance, weights=weights,
                             normalize=normalize, dtype=dtype, chunks=(9, 7, 11))  # fmt: skip
    assert volume.dtype == np.dtype(dtype)
    computed = assert_within_bound(volume, centres, covariance, weights, grid,
                                   normalize=normalize, dtype=dtype)  # fmt: skip
    assert np.abs(computed).max() > 0.1 * np.abs(weights).max() * (
        1 if normalize == "peak" else 1e-3
    )


@pytest.mark.parametrize("tol", [1e-3, 1e-6, 1e-10])
def test_one_shared_covariance(rng, tol):
    grid = dg.Grid.from_bounds(-6, 6, 31)
    centres = rng.uniform(-6, 6, size=(40, 3))
    covariance = random_covariances(rng, 1, 0.5, 1.8)[0]
    volume = dg.gaussian_sum(centres, None, grid, covariance=covariance, tol=tol,
                             dtype="float64")  # fmt: skip
    assert_within_bound(volume, centres, covariance, None, grid, tol=tol, dtype="float64")


def test_very_eccentric_covariances(rng):
    """Needles and sheets (condition numbers up to 400) keep the bound."""
    grid = dg.Grid.from_bounds(-5, 5, 29)
    centres = rng.uniform(-4, 4, size=(12, 3))
    covariance = random_covariances(rng, 12, 0.15, 3.0)
    volume = dg.gaussian_sum(centres, None, grid, covariance=covariance, dtype="float64")
    assert_within_bound(volume, centres, covariance, None, grid, dtype="float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_periodic_against_the_minimum_image(rng, dtype):
    grid = dg.Grid.from_box(0.0, 12.0, 24)
    centres = rng.uniform(0, 12, size=(25, 3))
    covariance = random_covariances(rng, 25, 0.4, 1.0)
    volume = dg.gaussian_sum(centres, None, grid, covariance=covariance, periodic=True,
                             dtype=dtype, chunks=10)  # fmt: skip
    assert_within_bound(volume, centres, covariance, None, grid, periodic=True, dtype=dtype)


@pytest.mark.parametrize("normalize", ["peak", "density"])
def test_a_diagonal_covariance_gives_the_bits_of_its_sigmas(rng, normalize):
    grid = dg.Grid.from_bounds(-5, 5, 26)
    centres = rng.uniform(-5, 5, size=(50, 3))
    sigma = rng.uniform(0.4, 1.5, size=(50, 3))
    weights = rng.uniform(-1, 1, size=50)
    by_sigma = dg.gaussian_sum(centres, sigma, grid, weights=weights, normalize=normalize)
    diagonal = np.einsum("mi,ij->mij", sigma**2, np.eye(3))
    by_covariance = dg.gaussian_sum(centres, None, grid, covariance=diagonal, weights=weights,
                                    normalize=normalize)  # fmt: skip
    np.testing.assert_array_equal(by_covariance.compute(), by_sigma.compute())
    shared = dg.gaussian_sum(centres, None, grid, covariance=np.diag(sigma[0] ** 2),
                             weights=weights, normalize=normalize)  # fmt: skip
    np.testing.assert_array_equal(
        shared.compute(),
        dg.gaussian_sum(centres, sigma[:1], grid, weights=weights, normalize=normalize).compute(),
    )


def test_chunking_and_where_the_centres_live_change_no_bit(rng, tmp_path):
    grid = dg.Grid.from_bounds(-6, 6, 33)
    centres = rng.uniform(-7, 7, size=(80, 3))
    covariance = random_covariances(rng, 80, 0.3, 1.6)
    covariance[::4] = np.diag([0.5, 0.7, 0.9])  # some diagonal, some not, in one job
    weights = rng.uniform(-1, 1, size=80)
    arguments = {"covariance": covariance, "weights": weights, "normalize": "density"}
    whole = dg.gaussian_sum(centres, None, grid, chunks=33, **arguments).compute()
    for chunks in [(11, 33, 33), (8, 13, 5), 16]:
        pieces = dg.gaussian_sum(centres, None, grid, chunks=chunks, **arguments).compute()
        np.testing.assert_array_equal(pieces, whole)
    lazy = dg.gaussian_sum(
        da.from_array(centres, chunks=17), None, grid, chunks=(8, 13, 5),
        covariance=da.from_array(covariance, chunks=(23, 3, 3)),
        weights=da.from_array(weights, chunks=31), normalize="density",
    )  # fmt: skip
    np.testing.assert_array_equal(lazy.compute(), whole)
    stored = dg.render_to_zarr(str(tmp_path / "c.zarr"), centres, None, grid, chunks=16,
                               **arguments)  # fmt: skip
    np.testing.assert_array_equal(stored[...], whole)
    stored = dg.render_to_zarr(str(tmp_path / "d.zarr"), da.from_array(centres, chunks=30),
                               None, grid, chunks=16, **arguments)  # fmt: skip
    np.testing.assert_array_equal(stored[...], whole)


def test_a_store_records_covariances_and_resumes_only_the_same_job(rng, tmp_path):
    grid = dg.Grid.from_bounds(-4, 4, 20)
    centres = rng.uniform(-4, 4, size=(20, 3))
    covariance = random_covariances(rng, 20)
    store = str(tmp_path / "c.zarr")
    dg.render_to_zarr(store, centres, None, grid, covariance=covariance, chunks=10)
    dg.render_to_zarr(store, centres, None, grid, covariance=covariance, chunks=10)  # resumes
    other = covariance.copy()
    other[3] *= 1.01
    with pytest.raises(dg._store.StoreMismatchError, match="different daskgauss job"):
        dg.render_to_zarr(store, centres, None, grid, covariance=other, chunks=10)
    assert dg.open_dataarray(store).attrs is not None


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 12),
    shared=st.booleans(),
    smallest=st.floats(0.2, 1.0),
    eccentricity=st.floats(1.0, 8.0),
    tol=st.sampled_from([1e-2, 1e-6, 1e-9]),
    dtype=st.sampled_from(["float32", "float64"]),
    block=st.integers(3, 17),
)
def test_property_random_covariances_keep_the_bound(seed, count, shared, smallest, eccentricity,
                                                     tol, dtype, block):  # fmt: skip
    rng = np.random.default_rng(seed)
    grid = dg.Grid(shape=(14, 11, 17), origin=tuple(rng.uniform(-5, -3, 3)),
                   spacing=tuple(rng.uniform(0.3, 0.7, 3)))  # fmt: skip
    centres = rng.uniform(-6, 4, size=(count, 3))
    covariance = random_covariances(rng, 1 if shared else count, smallest,
                                    smallest * eccentricity)  # fmt: skip
    covariance = covariance[0] if shared else covariance
    weights = rng.uniform(-2, 2, size=count)
    volume = dg.gaussian_sum(centres, None, grid, covariance=covariance, weights=weights,
                             tol=tol, dtype=dtype, chunks=block)  # fmt: skip
    assert_within_bound(volume, centres, covariance, weights, grid, tol=tol, dtype=dtype)


GOOD = np.array([[2.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.5]])


@pytest.mark.parametrize(
    ("sigma", "covariance", "words"),
    [
        (None, GOOD + np.triu(np.ones((3, 3)), 1) * 1e-3, "covariance must be symmetric"),
        (None, np.diag([1.0, -1.0, 1.0]), "positive definite"),
        (None, np.diag([1.0, 0.0, 1.0]), "positive definite"),
        (None, np.ones((3, 3)), r"positive definite: covariance is not \(eigenvalues"),
        (None, np.where(np.eye(3) > 0, np.nan, 0.0), "covariance must be finite"),
        (None, np.diag([1.0, np.inf, 1.0]), "covariance must be finite"),
        (None, np.eye(2), r"shape \(3, 3\).*\(M, 3, 3\) = \(4, 3, 3\)"),
        (None, np.stack([GOOD] * 3), r"\(M, 3, 3\) = \(4, 3, 3\), one per centre; got \(3, 3, 3\)"),
        (1.0, GOOD, "sigma or covariance, not both"),
        (None, None, "give sigma .* or covariance="),
    ],
)
def test_bad_covariances_are_refused_before_any_work(sigma, covariance, words):
    centres = np.zeros((4, 3))
    with pytest.raises(ValueError, match=words):
        dg.gaussian_sum(centres, sigma, dg.Grid.from_bounds(-1, 1, 5), covariance=covariance)


def test_a_bad_covariance_among_many_is_named():
    covariance = np.stack([GOOD] * 5)
    covariance[3] = np.diag([1.0, 1.0, -2.0])
    with pytest.raises(ValueError, match=r"covariance\[3\] is not"):
        dg.gaussian_sum(np.zeros((5, 3)), None, dg.Grid.from_bounds(-1, 1, 5),
                        covariance=covariance)  # fmt: skip
