"""daskgauss._kde against scipy.stats.gaussian_kde: the bandwidth, the grid and the density."""

from __future__ import annotations

import math

import numpy as np
import pytest

from daskgauss._grid import Grid
from daskgauss._kde import KdeBandwidth, kde, kde_bandwidth, kde_grid

stats = pytest.importorskip("scipy.stats")

TOL = 1e-6


def _scott_half(k) -> float:
    return k.scotts_factor() / 2


def _from_counts(k) -> float:
    """Uses n, neff, d and the arrays, as a user's rule might."""
    assert k.dataset.shape == (k.d, k.n)
    assert k.weights.shape == (k.n,)
    assert math.isclose(float(np.sum(k.weights)), 1.0)
    return 0.8 * (k.neff / k.n) ** 0.1 * k.n ** (-1.0 / (k.d + 4))


BW_METHODS = {
    "none": None,
    "scott": "scott",
    "silverman": "silverman",
    "number": 0.37,
    "numpy-number": np.float64(0.52),
    "callable-scott-half": _scott_half,
    "callable-counts": _from_counts,
    "callable-silverman": lambda k: k.silverman_factor() * 1.5,
}


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    """200 anisotropic, correlated points, off the origin."""
    rng = np.random.default_rng(7)
    mixing = np.array([[2.0, 0.0, 0.0], [0.9, 0.7, 0.0], [-0.5, 0.4, 0.3]])
    return rng.normal(size=(200, 3)) @ mixing.T + (10.0, -4.0, 2.5)


@pytest.fixture(scope="module")
def weights(points) -> np.ndarray:
    """Uneven weights, some zero."""
    rng = np.random.default_rng(8)
    w = rng.gamma(0.8, size=len(points))
    w[::17] = 0.0
    return w


def _weights(request_weights: bool, weights: np.ndarray) -> np.ndarray | None:
    return weights if request_weights else None


# --- the bandwidth ------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", list(BW_METHODS))
def test_bandwidth_matches_scipy(points, weights, name, weighted):
    bw = BW_METHODS[name]
    w = _weights(weighted, weights)
    reference = stats.gaussian_kde(points.T, bw_method=bw, weights=w)
    ours = kde_bandwidth(points, bw_method=bw, weights=w)
    assert isinstance(ours, KdeBandwidth)
    np.testing.assert_allclose(ours.factor, reference.factor, rtol=1e-12)
    np.testing.assert_allclose(ours.covariance, reference.covariance, rtol=1e-12)
    np.testing.assert_allclose(ours.weights, reference.weights, rtol=1e-12)
    np.testing.assert_allclose(ours.neff, reference.neff, rtol=1e-12)
    assert ours.covariance.shape == (3, 3)
    assert ours.weights.shape == (len(points),)


def test_bandwidth_rules(points):
    n = len(points)
    assert kde_bandwidth(points).neff == pytest.approx(n, rel=1e-12)
    assert kde_bandwidth(points).factor == pytest.approx(n ** (-1 / 7), rel=1e-12)
    silverman = kde_bandwidth(points, bw_method="silverman").factor
    assert silverman == pytest.approx((n * 5 / 4) ** (-1 / 7), rel=1e-12)
    data = np.cov(points.T)
    assert kde_bandwidth(points, bw_method=0.5).covariance == pytest.approx(data / 4, rel=1e-12)


def test_bandwidth_is_read_only(points):
    bandwidth = kde_bandwidth(points)
    with pytest.raises(ValueError, match="read-only"):
        bandwidth.covariance[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        bandwidth.weights[0] = 1.0


def test_callable_sees_read_only_copies(points):
    seen = {}

    def rule(k):
        seen["k"] = k
        return 0.4

    kde_bandwidth(points, bw_method=rule)
    k = seen["k"]
    assert (k.d, k.n) == (3, len(points))
    np.testing.assert_array_equal(k.dataset, points.T)
    with pytest.raises(ValueError, match="read-only"):
        k.dataset[0, 0] = 0.0


def test_list_input_and_integer_points():
    points = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    reference = stats.gaussian_kde(np.array(points).T)
    np.testing.assert_allclose(kde_bandwidth(points).covariance, reference.covariance, rtol=1e-12)


# --- errors ---------------------------------------------------------------------------------


def _cloud(m: int = 20) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(m, 3))


def _plane(m: int = 50) -> np.ndarray:
    """Points exactly in a tilted plane: rounding leaves a tiny non-zero eigenvalue."""
    rng = np.random.default_rng(4)
    normal = np.array([0.3, -0.7, 1.0]) / np.linalg.norm([0.3, -0.7, 1.0])
    u = np.cross(normal, [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    ab = rng.normal(size=(m, 2)) * (5.0, 0.3)
    return ab[:, :1] * u + ab[:, 1:] * v + (10.0, 20.0, -3.0)


@pytest.mark.parametrize(
    ("points", "kwargs", "match"),
    [
        (np.where(np.arange(60).reshape(20, 3) == 7, np.nan, _cloud()), {}, "finite.*row 2"),
        (np.r_[_cloud(), [[np.inf, 0, 0]]], {}, "finite.*row 20"),
        (_cloud().T, {}, r"shape \(M, 3\).*pass dataset\.T"),
        (_cloud()[:, :2], {}, r"shape \(M, 3\)"),
        (np.zeros((4, 3, 1)), {}, r"shape \(M, 3\)"),
        (np.zeros((1, 3)), {}, "at least 4 points"),
        (np.zeros((0, 3)), {}, "at least 4 points"),
        ([["a", "b", "c"]] * 5, {}, "numbers"),
        (np.c_[_cloud()[:, :2], np.full(20, 2.0)], {}, "in one plane"),
        (_plane(), {}, "in one plane"),
        (np.outer(np.arange(10.0), [1.0, 2.0, -1.0]), {}, "on one line"),
        (np.ones((10, 3)), {}, "at one location"),
        (_cloud(), {"weights": -np.ones(20)}, "non-negative"),
        (_cloud(), {"weights": np.zeros(20)}, "positive sum"),
        (_cloud(), {"weights": np.r_[np.ones(19), np.nan]}, "weights must be finite"),
        (_cloud(), {"weights": np.ones(19)}, r"shape \(20,\)"),
        (_cloud(), {"weights": np.r_[np.ones(3), np.zeros(17)]}, "non-zero on only 3"),
        (
            np.r_[np.c_[_cloud(10)[:, :2], np.zeros(10)], _cloud(3)],
            {"weights": np.r_[np.ones(10), np.zeros(3)]},
            r"the 10 with non-zero weight\) lie in one plane",
        ),
        (_cloud(), {"bw_method": "scot"}, "'scott', 'silverman', a scalar or a callable"),
        (_cloud(), {"bw_method": [0.5]}, "'scott', 'silverman', a scalar or a callable"),
        (_cloud(), {"bw_method": True}, "'scott', 'silverman', a scalar or a callable"),
        (_cloud(), {"bw_method": 0.0}, "finite and > 0"),
        (_cloud(), {"bw_method": -0.5}, "finite and > 0"),
        (_cloud(), {"bw_method": math.nan}, "finite and > 0"),
        (_cloud(), {"bw_method": lambda k: "0.5"}, "must return a scalar number"),
        (_cloud(), {"bw_method": lambda k: [0.5]}, "must return a scalar number"),
        (_cloud(), {"bw_method": lambda k: None}, "must return a scalar number"),
        (_cloud(), {"bw_method": lambda k: -k.scotts_factor()}, "finite and > 0"),
    ],
)
def test_errors(points, kwargs, match):
    with pytest.raises(ValueError, match=match):
        kde_bandwidth(points, **kwargs)


def test_errors_reach_kde_and_kde_grid():
    grid = Grid.from_bounds(-1, 1, 4)
    with pytest.raises(ValueError, match="in one plane"):
        kde(np.c_[_cloud()[:, :2], np.zeros(20)], grid)
    with pytest.raises(ValueError, match="at least 4 points"):
        kde_grid(np.zeros((1, 3)), 8)


def test_callable_returning_numpy_scalar_or_0d_array():
    points = _cloud()
    a = kde_bandwidth(points, bw_method=lambda k: np.float32(0.5)).factor
    b = kde_bandwidth(points, bw_method=lambda k: np.array(0.5)).factor
    assert a == b == 0.5


# --- the grid -------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize(("shape", "padding"), [(24, 3.0), ((10, 20, 30), 0.0), (8, 1.5)])
def test_kde_grid_holds_points_with_padding(points, weights, shape, padding, weighted):
    w = _weights(weighted, weights)
    grid = kde_grid(points, shape, weights=w, bw_method="silverman", padding=padding)
    expected = (shape,) * 3 if isinstance(shape, int) else shape
    assert grid.shape == expected
    s = np.sqrt(np.diag(kde_bandwidth(points, bw_method="silverman", weights=w).covariance))
    first = np.array([a[0] for a in grid.axes])
    last = np.array([a[-1] for a in grid.axes])
    np.testing.assert_allclose(first, points.min(axis=0) - padding * s, rtol=1e-12)
    np.testing.assert_allclose(last, points.max(axis=0) + padding * s, rtol=1e-12)
    slack = 1e-12 * np.abs(points).max()  # Grid.from_bounds: origin + (n - 1) spacing
    assert np.all(first <= points.min(axis=0))
    assert np.all(last >= points.max(axis=0) - slack)


@pytest.mark.parametrize(
    ("shape", "padding", "match"),
    [
        (0, 3.0, "at least one sample"),
        ((8, 8), 3.0, "shape must be"),
        (8.5, 3.0, "shape must be"),
        (8, -1.0, "finite and >= 0"),
        (8, math.inf, "finite and >= 0"),
        (8, "3", "padding must be a number"),
        (8, None, "padding must be a number"),
    ],
)
def test_kde_grid_errors(points, shape, padding, match):
    with pytest.raises(ValueError, match=match):
        kde_grid(points, shape, padding=padding)


# --- the density against scipy's evaluation ----------------------------------------------


def _grid_points(grid: Grid) -> np.ndarray:
    mesh = np.meshgrid(*grid.axes, indexing="ij")
    return np.stack([axis.ravel() for axis in mesh])


@pytest.fixture(scope="module")
def cases(points, weights) -> list[tuple[str, object, np.ndarray | None]]:
    return [
        (name, bw, w)
        for name, bw in BW_METHODS.items()
        if name not in ("none", "numpy-number")
        for w in (None, weights)
    ]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kde_matches_scipy(points, weights, cases, dtype):
    eps = float(np.finfo(dtype).eps) / 2  # unit roundoff
    for name, bw, w in cases:
        grid = kde_grid(points, 24, bw_method=bw, weights=w)
        bandwidth = kde_bandwidth(points, bw_method=bw, weights=w)
        volume = kde(points, grid, bw_method=bw, weights=w, tol=TOL, dtype=dtype, chunks=12)
        assert volume.shape == (24, 24, 24)
        assert volume.dtype == np.dtype(dtype)
        ours = volume.compute().astype(np.float64)
        reference = stats.gaussian_kde(points.T, bw, w)(_grid_points(grid)).reshape(grid.shape)
        peak = (2 * np.pi) ** -1.5 / np.sqrt(np.linalg.det(bandwidth.covariance))
        cut = TOL * np.sum(bandwidth.weights * peak)
        bound = cut + 1e-12 * reference.max()
        if dtype == "float32":
            # gaussian_sum's rounding term: (K + 8 + 6 ln(1/tol)) eps sum_i |a_i| g_i(x),
            # K <= M Gaussians at x, and sum_i |a_i| g_i(x) is the density itself.
            bound = bound + (len(points) + 8 + 6 * math.log(1 / TOL)) * eps * reference
        error = np.abs(ours - reference)
        worst = np.unravel_index(np.argmax(error - bound), grid.shape)
        assert np.all(error <= bound), (name, w is not None, worst, error[worst], bound)


def test_kde_integrates_to_one(points):
    grid = kde_grid(points, 40, padding=5.0)
    total = float(kde(points, grid, dtype="float64").sum().compute()) * grid.voxel_volume
    assert total == pytest.approx(1.0, rel=2e-2)


def test_kde_is_lazy_and_chunked(points):
    grid = kde_grid(points, (20, 16, 12))
    volume = kde(points, grid, chunks=(10, 8, 6))
    assert volume.chunks == ((10, 10), (8, 8), (6, 6))
    assert volume.dtype == np.float32
