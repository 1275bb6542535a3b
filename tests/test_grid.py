"""Grid: sample coordinates, the two convenience constructors, and every refusal."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import daskgauss as dg

EPS = np.finfo(np.float64).eps


# ---------------------------------------------------------------- axes and derived values


@pytest.mark.parametrize(
    ("shape", "origin", "spacing"),
    [
        ((4, 5, 6), (0.0, 0.0, 0.0), (1.0, 0.5, 0.25)),
        ((1, 7, 2), (-3.25, 1e3, 0.1), (0.3, 2.0, 1e-3)),
        ((13, 1, 9), (1e-7, -42.0, 5.5), (0.7, 0.01, 3.0)),
    ],
)
def test_axes_are_origin_plus_index_times_spacing(shape, origin, spacing):
    grid = dg.Grid(shape=shape, origin=origin, spacing=spacing)
    axes = grid.axes
    assert len(axes) == 3
    for d in range(3):
        expected = np.array([origin[d] + k * spacing[d] for k in range(shape[d])])
        assert axes[d].dtype == np.float64
        assert axes[d].shape == (shape[d],)
        np.testing.assert_array_equal(axes[d], expected)


def test_scalar_arguments_mean_the_same_on_every_axis():
    grid = dg.Grid(shape=6, origin=-1.5, spacing=0.25)
    assert grid.shape == (6, 6, 6)
    assert grid.origin == (-1.5, -1.5, -1.5)
    assert grid.spacing == (0.25, 0.25, 0.25)
    assert grid == dg.Grid(shape=(6, 6, 6), origin=(-1.5,) * 3, spacing=(0.25,) * 3)


def test_fields_are_plain_python_numbers():
    """numpy inputs are normalised, so grids compare equal and serialise as JSON."""
    grid = dg.Grid(
        shape=np.array([3, 4, 5], dtype=np.int32),
        origin=np.array([1.0, 2.0, 3.0], dtype=np.float32),
        spacing=np.float64(0.5),
    )
    assert grid.shape == (3, 4, 5)
    assert all(type(n) is int for n in grid.shape)
    assert all(type(v) is float for v in (*grid.origin, *grid.spacing))
    assert grid == dg.Grid(shape=(3, 4, 5), origin=(1.0, 2.0, 3.0), spacing=0.5)


def test_integral_float_shape_is_accepted():
    assert dg.Grid(shape=(4.0, np.float64(5), 6)).shape == (4, 5, 6)


def test_default_origin_and_spacing():
    grid = dg.Grid(shape=(2, 3, 4))
    assert grid.origin == (0.0, 0.0, 0.0)
    assert grid.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(grid.axes[2], [0.0, 1.0, 2.0, 3.0])


def test_period_and_voxel_volume():
    grid = dg.Grid(shape=(10, 4, 7), origin=(5.0, -2.0, 0.5), spacing=(0.5, 0.25, 3.0))
    assert grid.period == (5.0, 1.0, 21.0)
    assert grid.voxel_volume == 0.5 * 0.25 * 3.0
    assert isinstance(grid.voxel_volume, float)


def test_grid_is_frozen_and_hashable():
    grid = dg.Grid(shape=3)
    with pytest.raises(AttributeError):
        grid.shape = (4, 4, 4)  # type: ignore[misc]
    assert hash(grid) == hash(dg.Grid(shape=(3, 3, 3)))


# ---------------------------------------------------------------- from_bounds


def _assert_matches_linspace(axis, lower, upper, n):
    """All samples but the last are linspace's bit for bit; the last is within rounding.

    ``np.linspace`` computes ``lower + k * step`` too but then overwrites the last
    sample with ``upper``; a Grid cannot, since sample ``k`` is by definition
    ``origin + k * spacing``. The last sample is ``lower + (n - 1) * step``, within a
    few roundings of ``upper``: at most ``3.5 eps max(|lower|, |upper|)`` in theory.
    """
    expected, step = np.linspace(lower, upper, n, retstep=True)
    np.testing.assert_array_equal(axis[:-1], expected[:-1])
    scale = max(abs(lower), abs(upper))
    assert abs(axis[-1] - upper) <= 3.5 * EPS * scale
    if n > 1:
        assert axis[-1] == lower + (n - 1) * step


@pytest.mark.parametrize(
    ("lower", "upper", "shape"),
    [
        (-50.0, 50.0, (64, 64, 64)),
        ((-3.0, 0.0, 10.0), (5.0, 1.0, 11.5), (9, 17, 4)),  # non-cubic, anisotropic
        ((0.1, -7.3, 2.2), (0.9, 13.1, 1e4), (31, 2, 5)),
        (-1.0, (1.0, 2.0, 3.0), 7),  # scalar lower, 3-tuple upper
        ((-2.0, -3.0, -4.0), 6.0, (5, 6, 7)),  # 3-tuple lower, scalar upper
    ],
)
def test_from_bounds_is_linspace_on_every_axis(lower, upper, shape):
    grid = dg.Grid.from_bounds(lower, upper, shape)
    lower3 = np.broadcast_to(np.asarray(lower, dtype=float), (3,))
    upper3 = np.broadcast_to(np.asarray(upper, dtype=float), (3,))
    shape3 = np.broadcast_to(np.asarray(shape), (3,))
    assert grid.shape == tuple(int(n) for n in shape3)
    for d in range(3):
        _assert_matches_linspace(grid.axes[d], lower3[d], upper3[d], int(shape3[d]))
        _, step = np.linspace(lower3[d], upper3[d], int(shape3[d]), retstep=True)
        assert grid.spacing[d] == step
        assert grid.origin[d] == lower3[d]


def test_from_bounds_random_cases_match_linspace():
    rng = np.random.default_rng(11)
    for _ in range(300):
        lower = rng.uniform(-100, 100, size=3)
        upper = lower + rng.uniform(1e-3, 200, size=3)
        shape = rng.integers(2, 300, size=3)
        grid = dg.Grid.from_bounds(lower, upper, shape)
        for d in range(3):
            _assert_matches_linspace(grid.axes[d], lower[d], upper[d], int(shape[d]))


@pytest.mark.parametrize(
    ("lower", "upper", "n"), [(-10.0, 10.0, 33), (0.0, 10.0, 11), (-5.0, 5.0, 11), (0.0, 1.0, 5)]
)
def test_from_bounds_is_bit_equal_to_linspace_where_the_last_sample_rounds_exactly(lower, upper, n):
    """For these common bounds even the forced end point of linspace is reproduced."""
    grid = dg.Grid.from_bounds(lower, upper, n)
    for d in range(3):
        np.testing.assert_array_equal(grid.axes[d], np.linspace(lower, upper, n))


def test_from_bounds_last_sample_is_not_always_exactly_upper():
    """Documents the rounding: bounds where linspace's forced end point differs by 1 ulp."""
    lower, upper, n = -65.8022295489491, 41.57214725557364, 26
    axis = dg.Grid.from_bounds(lower, upper, n).axes[0]
    assert axis[-1] != upper
    assert abs(axis[-1] - upper) == np.spacing(upper) * 2  # two ulps of upper, one of |lower|
    np.testing.assert_array_equal(axis[:-1], np.linspace(lower, upper, n)[:-1])


def test_from_bounds_one_sample_axis_sits_at_lower():
    grid = dg.Grid.from_bounds((0.0, -1.0, 2.0), (4.0, 1.0, 7.0), (5, 3, 1))
    np.testing.assert_array_equal(grid.axes[2], np.linspace(2.0, 7.0, 1))
    np.testing.assert_array_equal(grid.axes[0], np.linspace(0.0, 4.0, 5))
    np.testing.assert_array_equal(grid.axes[1], np.linspace(-1.0, 1.0, 3))
    assert grid.spacing == (1.0, 1.0, 5.0)  # one-sample axis: upper - lower


@pytest.mark.parametrize(("lower", "upper"), [(3.0, 3.0), (3.0, -2.0)])
def test_from_bounds_one_sample_axis_accepts_any_upper_and_spacing_is_one(lower, upper):
    """With one sample nothing depends on upper; the spacing falls back to 1."""
    grid = dg.Grid.from_bounds((0.0, 0.0, lower), (1.0, 1.0, upper), (2, 2, 1))
    assert grid.axes[2].tolist() == [lower]
    assert grid.spacing[2] == 1.0
    assert grid.period[2] == 1.0


def test_from_bounds_accepts_numpy_arrays():
    lower = np.array([-1.0, -2.0, -3.0])
    upper = np.array([1.0, 2.0, 3.0])
    grid = dg.Grid.from_bounds(lower, upper, np.array([3, 5, 7]))
    assert grid.spacing == (1.0, 1.0, 1.0)
    assert grid.origin == (-1.0, -2.0, -3.0)


# ---------------------------------------------------------------- from_box


@pytest.mark.parametrize(
    ("lower", "upper", "shape"),
    [
        (0.0, 10.0, 20),
        ((-3.0, 0.0, 10.0), (5.0, 1.0, 11.5), (8, 17, 3)),
        ((0.1, -7.3, 2.2), (0.9, 13.1, 1e4), (31, 1, 5)),
        (-1.0, (1.0, 2.0, 3.0), (7, 6, 5)),
    ],
)
def test_from_box_is_cell_centred(lower, upper, shape):
    grid = dg.Grid.from_box(lower, upper, shape)
    lower3 = np.broadcast_to(np.asarray(lower, dtype=float), (3,))
    upper3 = np.broadcast_to(np.asarray(upper, dtype=float), (3,))
    shape3 = np.broadcast_to(np.asarray(shape), (3,))
    for d in range(3):
        n = int(shape3[d])
        h = (upper3[d] - lower3[d]) / n
        axis = grid.axes[d]
        assert axis.shape == (n,)
        assert grid.spacing[d] == h
        assert axis[0] == lower3[d] + h / 2
        scale = max(abs(lower3[d]), abs(upper3[d]))
        assert abs(axis[-1] - (upper3[d] - h / 2)) <= 3 * EPS * scale
        # The voxels tile the box: the midpoints between neighbours are the cell edges.
        edges = np.linspace(lower3[d], upper3[d], n + 1)
        np.testing.assert_allclose(axis, (edges[:-1] + edges[1:]) / 2, rtol=0, atol=4 * EPS * scale)
        # The periodic box is the box, up to the rounding of (upper - lower) / n * n.
        length = upper3[d] - lower3[d]
        assert abs(grid.period[d] - length) <= np.spacing(length)


def test_from_box_period_random_cases_within_one_ulp():
    rng = np.random.default_rng(12)
    for _ in range(300):
        lower = rng.uniform(-100, 100, size=3)
        upper = lower + rng.uniform(1e-3, 200, size=3)
        shape = rng.integers(1, 3000, size=3)
        grid = dg.Grid.from_box(lower, upper, shape)
        length = upper - lower
        assert np.all(np.abs(np.array(grid.period) - length) <= np.spacing(length))
        np.testing.assert_array_equal(
            [grid.axes[d][0] for d in range(3)], lower + (length / shape) / 2
        )


def test_from_box_voxel_volume_is_box_volume_over_count():
    grid = dg.Grid.from_box((0.0, 0.0, 0.0), (2.0, 3.0, 4.0), (4, 6, 16))
    assert grid.voxel_volume == 0.5 * 0.5 * 0.25
    assert grid.voxel_volume * math.prod(grid.shape) == pytest.approx(24.0, rel=1e-15)


# ---------------------------------------------------------------- to_dict / from_dict


@pytest.mark.parametrize(
    "grid",
    [
        dg.Grid(shape=(4, 5, 6), origin=(0.1, -2.0, 1e-9), spacing=(1.0, 0.3, 7.5)),
        dg.Grid.from_bounds(-50, 50, (64, 33, 1)),
        dg.Grid.from_box((0.1, 0.2, 0.3), (1.7, 2.9, 3.1), (7, 11, 13)),
    ],
)
def test_to_dict_from_dict_round_trip_through_json(grid):
    description = grid.to_dict()
    assert description == {
        "shape": list(grid.shape),
        "origin": list(grid.origin),
        "spacing": list(grid.spacing),
    }
    assert dg.Grid.from_dict(description) == grid
    restored = dg.Grid.from_dict(json.loads(json.dumps(description)))
    assert restored == grid
    for d in range(3):
        np.testing.assert_array_equal(restored.axes[d], grid.axes[d])


def test_from_dict_validates():
    with pytest.raises(ValueError, match="spacing must be positive"):
        dg.Grid.from_dict({"shape": [2, 2, 2], "origin": [0, 0, 0], "spacing": [1, 0, 1]})


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("shape", [0, (3, 0, 3), (4, 4, -1), -5])
def test_shape_below_one_is_refused(shape):
    with pytest.raises(ValueError, match="shape must have at least one sample on every axis"):
        dg.Grid(shape=shape)


@pytest.mark.parametrize("shape", [2.5, (3, 3.5, 3), "4", (4, 4, None), float("nan"), math.inf])
def test_non_integer_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"shape must be one or three integers \(nx, ny, nz\)"):
        dg.Grid(shape=shape)


@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 5, 6), [[3, 4, 5]], ()])
def test_shape_with_wrong_number_of_values_is_refused(shape):
    with pytest.raises(ValueError, match=r"shape must be one or three integers \(nx, ny, nz\)"):
        dg.Grid(shape=shape)


@pytest.mark.parametrize("name", ["origin", "spacing"])
@pytest.mark.parametrize("value", [(1.0, 2.0), (1.0, 2.0, 3.0, 4.0), [[1.0, 2.0, 3.0]], ()])
def test_origin_or_spacing_with_wrong_number_of_values_is_refused(name, value):
    with pytest.raises(
        ValueError, match=rf"{name} must be one number or three numbers \(x, y, z\)"
    ):
        dg.Grid(shape=4, **{name: value})


@pytest.mark.parametrize("name", ["origin", "spacing"])
@pytest.mark.parametrize("value", ["abc", None, (1.0, "x", 2.0), (1.0, None, 2.0)])
def test_non_numeric_origin_or_spacing_is_refused(name, value):
    with pytest.raises(ValueError, match=f"{name} must be numbers"):
        dg.Grid(shape=4, **{name: value})


@pytest.mark.parametrize("spacing", [0.0, -1.0, (1.0, 0.0, 1.0), (1.0, 1.0, -0.5), -0.0])
def test_spacing_not_positive_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing must be positive on every axis"):
        dg.Grid(shape=4, spacing=spacing)


@pytest.mark.parametrize("name", ["origin", "spacing"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_origin_or_spacing_is_refused(name, bad):
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        dg.Grid(shape=4, **{name: (1.0, bad, 1.0)})
    with pytest.raises(ValueError, match=f"{name} must be finite"):
        dg.Grid(shape=4, **{name: bad})


@pytest.mark.parametrize(
    ("lower", "upper", "shape"),
    [
        (0.0, 0.0, 5),
        (1.0, -1.0, 5),
        ((0.0, 0.0, 0.0), (1.0, 1.0, 0.0), (5, 5, 2)),
        ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0), (1, 2, 1)),  # only the axis with >1 sample matters
    ],
)
def test_from_bounds_refuses_upper_not_above_lower(lower, upper, shape):
    with pytest.raises(
        ValueError, match="upper must exceed lower on every axis with more than one sample"
    ):
        dg.Grid.from_bounds(lower, upper, shape)


@pytest.mark.parametrize(
    ("lower", "upper", "shape"),
    [
        (0.0, 0.0, 5),
        (1.0, -1.0, 5),
        ((0.0, 0.0, 0.0), (1.0, 1.0, 0.0), (5, 5, 1)),  # one cell still needs a box
        ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0), 3),
    ],
)
def test_from_box_refuses_upper_not_above_lower(lower, upper, shape):
    with pytest.raises(ValueError, match="upper must exceed lower on every axis"):
        dg.Grid.from_box(lower, upper, shape)


@pytest.mark.parametrize("constructor", [dg.Grid.from_bounds, dg.Grid.from_box])
def test_constructors_validate_their_arguments(constructor):
    with pytest.raises(ValueError, match="lower must be finite"):
        constructor((0.0, math.nan, 0.0), 1.0, 4)
    with pytest.raises(ValueError, match="upper must be finite"):
        constructor(0.0, math.inf, 4)
    with pytest.raises(ValueError, match=r"lower must be one number or three numbers"):
        constructor((0.0, 1.0), 5.0, 4)
    with pytest.raises(ValueError, match="upper must be numbers"):
        constructor(0.0, "far", 4)
    with pytest.raises(ValueError, match="shape must have at least one sample"):
        constructor(0.0, 1.0, (4, 0, 4))
    with pytest.raises(ValueError, match="shape must be one or three integers"):
        constructor(0.0, 1.0, 4.5)
