"""prepare_gaussians, Gaussians and support_half_width: every accepted form and every refusal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

import daskgauss as dg
from daskgauss._gaussians import Gaussians, prepare_gaussians, support_half_width

# ---------------------------------------------------------------- support_half_width


@pytest.mark.parametrize("tol", [0.5, 1e-2, 1e-6, 1e-12, 1e-300])
def test_support_half_width_is_where_the_gaussian_falls_to_tol(tol):
    width = support_half_width(tol)
    assert width == pytest.approx(math.sqrt(-2.0 * math.log(tol)), rel=1e-15)
    assert math.exp(-(width**2) / 2) == pytest.approx(tol, rel=1e-12)


@pytest.mark.parametrize("truncate", [0.5, 1.0, 2.5, 4.0, 5.256, 8.0])
def test_support_half_width_inverts_scipy_truncate(truncate):
    """scipy's ``truncate`` t and the tolerance are related by ``tol = exp(-t**2 / 2)``."""
    assert support_half_width(math.exp(-(truncate**2) / 2)) == pytest.approx(truncate, rel=1e-14)


@pytest.mark.parametrize("truncate", [2, 3, 4])
def test_support_half_width_matches_scipy_gaussian_filter_support(truncate):
    """scipy's kernel for ``truncate`` ends at the sample where it is ``tol`` times its peak."""
    impulse = np.zeros(31)
    impulse[15] = 1.0
    kernel = ndimage.gaussian_filter1d(impulse, sigma=1.0, truncate=truncate, mode="constant")
    outermost = kernel[15 + truncate] / kernel[15]
    assert kernel[15 + truncate + 1] == 0.0
    assert kernel[15 - truncate - 1] == 0.0
    assert support_half_width(outermost) == pytest.approx(truncate, rel=1e-12)


def test_support_half_width_is_exported():
    assert dg.support_half_width is support_half_width


# ---------------------------------------------------------------- sigma forms


CENTRES = np.array(
    [[0.0, 1.0, 2.0], [-3.5, 4.0, 0.25], [10.0, -2.0, 7.0], [1e-3, 1e3, -1.0]], dtype=np.float64
)


def test_scalar_sigma_applies_to_every_centre_and_axis():
    gaussians = prepare_gaussians(CENTRES, 0.75)
    assert gaussians.sigma.shape == (1, 3)  # kept once, not once per centre
    assert gaussians.sigma.dtype == np.float64
    np.testing.assert_array_equal(np.broadcast_to(gaussians.sigma, (4, 3)), np.full((4, 3), 0.75))


def test_length_one_sigma_is_a_scalar():
    np.testing.assert_array_equal(prepare_gaussians(CENTRES, [2.0]).sigma, np.full((1, 3), 2.0))


def test_per_centre_sigma_is_isotropic():
    sigma = np.array([0.5, 1.0, 1.5, 2.0])
    gaussians = prepare_gaussians(CENTRES, sigma)
    np.testing.assert_array_equal(gaussians.sigma, np.column_stack([sigma, sigma, sigma]))


def test_per_centre_per_axis_sigma_is_kept():
    sigma = np.arange(1, 13, dtype=float).reshape(4, 3) / 4
    gaussians = prepare_gaussians(CENTRES, sigma)
    np.testing.assert_array_equal(gaussians.sigma, sigma)


def test_one_anisotropic_sigma_for_all():
    gaussians = prepare_gaussians(CENTRES, [[0.5, 0.9, 1.3]])
    np.testing.assert_array_equal(gaussians.sigma, [[0.5, 0.9, 1.3]])
    assert gaussians.sigma.flags.writeable
    assert gaussians.sigma.flags.c_contiguous


def test_per_centre_arrays_whose_rows_are_all_equal_are_kept_once():
    same = prepare_gaussians(CENTRES, np.full((4, 3), 0.5), weights=np.full(4, 2.0))
    assert same.sigma.shape == (1, 3)
    assert same.amplitude.shape == (1,)
    assert same.fingerprint() == prepare_gaussians(CENTRES, 0.5, weights=2.0).fingerprint()
    different = prepare_gaussians(CENTRES, [0.5, 0.5, 0.5, 0.6], weights=[2.0, 2.0, 2.0, 1.0])
    assert different.sigma.shape == (4, 3)
    assert different.amplitude.shape == (4,)


def test_density_with_one_weight_and_per_centre_sigma_is_per_centre():
    sigma = np.array([0.5, 1.0, 1.5, 2.0])
    gaussians = prepare_gaussians(CENTRES, sigma, weights=3.0, normalize="density")
    np.testing.assert_allclose(gaussians.amplitude, 3.0 * (2 * np.pi) ** -1.5 / sigma**3,
                               rtol=1e-15)  # fmt: skip


def test_sigma_of_shape_three_is_refused_with_the_one_by_three_hint():
    with pytest.raises(
        ValueError,
        match=r"got shape \(3,\) \(for one anisotropic sigma for all centres use shape \(1, 3\)\)",
    ):
        prepare_gaussians(CENTRES, [0.5, 0.9, 1.3])


def test_sigma_of_shape_three_with_three_centres_is_per_centre():
    """With M == 3 the (3,) form is ambiguous; it means one isotropic sigma per centre."""
    gaussians = prepare_gaussians(CENTRES[:3], [0.5, 0.9, 1.3])
    np.testing.assert_array_equal(
        gaussians.sigma, [[0.5, 0.5, 0.5], [0.9, 0.9, 0.9], [1.3, 1.3, 1.3]]
    )


@pytest.mark.parametrize(
    "shape", [(5,), (2,), (4, 1), (4, 2), (4, 4), (3, 3), (2, 3), (1, 4, 3), (0,)]
)
def test_sigma_of_other_shapes_is_refused(shape):
    with pytest.raises(
        ValueError, match=r"sigma must be a number, shape \(M,\) = \(4,\), \(M, 3\) = \(4, 3\)"
    ) as info:
        prepare_gaussians(CENTRES, np.ones(shape))
    assert f"got shape {shape}" in str(info.value)
    assert "use shape (1, 3)" not in str(info.value)


# ---------------------------------------------------------------- weights and normalisation


def test_no_weights_means_one():
    gaussians = prepare_gaussians(CENTRES, 1.0)
    np.testing.assert_array_equal(gaussians.amplitude, np.ones(1))  # kept once
    assert gaussians.amplitude.dtype == np.float64


def test_scalar_weight_applies_to_every_centre():
    np.testing.assert_array_equal(
        prepare_gaussians(CENTRES, 1.0, weights=-2.5).amplitude, np.full(1, -2.5)
    )


def test_per_centre_weights_may_be_negative_or_zero():
    weights = np.array([1.5, -2.0, 0.0, 1e-30])
    gaussians = prepare_gaussians(CENTRES, 1.0, weights=weights)
    np.testing.assert_array_equal(gaussians.amplitude, weights)


def test_integer_and_list_inputs_become_float64():
    gaussians = prepare_gaussians([[1, 2, 3], [4, 5, 6]], [1, 2], weights=[3, 4])
    assert gaussians.positions.dtype == np.float64
    assert gaussians.sigma.dtype == np.float64
    assert gaussians.amplitude.dtype == np.float64
    np.testing.assert_array_equal(gaussians.positions, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(gaussians.amplitude, [3.0, 4.0])


def test_positions_are_a_contiguous_float64_copy():
    centres = np.asfortranarray(CENTRES.astype(np.float32))
    gaussians = prepare_gaussians(centres, 1.0)
    assert gaussians.positions.flags.c_contiguous
    np.testing.assert_array_equal(gaussians.positions, centres.astype(np.float64))
    assert gaussians.count == 4


def test_density_amplitude_is_weight_over_normalisation():
    rng = np.random.default_rng(3)
    sigma = rng.uniform(0.2, 3.0, size=(4, 3))
    weights = rng.uniform(-2.0, 2.0, size=4)
    gaussians = prepare_gaussians(CENTRES, sigma, weights=weights, normalize="density")
    for i in range(4):
        sx, sy, sz = sigma[i]
        expected = weights[i] / (math.sqrt(2 * math.pi) ** 3 * sx * sy * sz)
        assert gaussians.amplitude[i] == pytest.approx(expected, rel=1e-14)


def test_density_gaussian_integrates_to_its_weight():
    """The density amplitude times the Gaussian integral (2 pi)^1.5 sx sy sz is the weight."""
    sigma = np.array([[0.5, 1.25, 2.0]])
    gaussians = prepare_gaussians([[0, 0, 0]], sigma, weights=3.0, normalize="density")
    integral = gaussians.amplitude[0] * np.prod([math.sqrt(2 * math.pi) * s for s in sigma[0]])
    assert integral == pytest.approx(3.0, rel=1e-14)


def test_peak_amplitude_is_the_weight():
    weights = np.array([1.0, 2.0, -3.0, 0.5])
    sigma = np.full((4, 3), 7.0)
    gaussians = prepare_gaussians(CENTRES, sigma, weights=weights, normalize="peak")
    np.testing.assert_array_equal(gaussians.amplitude, weights)


def test_density_overflow_is_refused():
    with pytest.raises(ValueError, match='normalize="density" overflows for these sigmas'):
        prepare_gaussians([[0.0, 0.0, 0.0]], 1e-120, normalize="density")


@pytest.mark.parametrize("normalize", ["area", "Peak", "", None, "volume"])
def test_unknown_normalize_is_refused(normalize):
    with pytest.raises(ValueError, match=r"normalize must be one of \('peak', 'density'\)"):
        prepare_gaussians(CENTRES, 1.0, normalize=normalize)


# ---------------------------------------------------------------- tol and radius


@pytest.mark.parametrize("tol", [0.5, 1e-2, 1e-6, 1e-9])
def test_radius_is_sigma_times_half_width(tol):
    sigma = np.array([[0.5, 1.0, 2.0], [3.0, 0.1, 0.7], [1.0, 1.0, 1.0], [4.0, 5.0, 6.0]])
    gaussians = prepare_gaussians(CENTRES, sigma, tol=tol)
    assert gaussians.tol == tol
    assert isinstance(gaussians.tol, float)
    np.testing.assert_allclose(
        gaussians.radius, sigma * math.sqrt(2 * math.log(1 / tol)), rtol=1e-15, atol=0
    )
    assert gaussians.radius.shape == (4, 3)


def test_default_tol_is_one_in_a_million():
    gaussians = prepare_gaussians(CENTRES, 1.0)
    assert gaussians.tol == 1e-6
    np.testing.assert_allclose(gaussians.radius, 5.256521769756932, rtol=1e-15)


@pytest.mark.parametrize("tol", [0.0, 1.0, -1e-6, 1.5, math.nan, math.inf, -math.inf])
def test_tol_outside_open_unit_interval_is_refused(tol):
    with pytest.raises(ValueError, match=r"tol must lie in \(0, 1\)"):
        prepare_gaussians(CENTRES, 1.0, tol=tol)


@pytest.mark.parametrize("tol", ["small", None, [1e-6], object()])
def test_non_numeric_tol_is_refused(tol):
    with pytest.raises(ValueError, match=r"tol must be a number in \(0, 1\)"):
        prepare_gaussians(CENTRES, 1.0, tol=tol)


# ---------------------------------------------------------------- empty centres


@pytest.mark.parametrize("centres", [np.empty((0, 3)), [], np.empty(0), np.zeros((0, 3), int)])
@pytest.mark.parametrize("sigma", [1.0, np.empty(0), np.empty((0, 3)), [[0.5, 1.0, 2.0]]])
def test_empty_centres_give_zero_gaussians(centres, sigma):
    gaussians = prepare_gaussians(centres, sigma, weights=None)
    assert gaussians.count == 0
    assert gaussians.positions.shape == (0, 3)
    assert gaussians.sigma.shape == (0, 3)
    assert gaussians.amplitude.shape == (0,)
    assert gaussians.radius.shape == (0, 3)
    assert gaussians.positions.dtype == np.float64


def test_empty_centres_accept_empty_or_scalar_weights():
    assert prepare_gaussians([], 1.0, weights=np.empty(0)).amplitude.shape == (0,)
    assert prepare_gaussians([], 1.0, weights=2.0).amplitude.shape == (0,)
    density = prepare_gaussians([], 1.0, normalize="density")
    assert density.amplitude.shape == (0,)


@pytest.mark.parametrize("sigma", [0.0, -1.0, [[1.0, -2.0, 3.0]], [[1.0, 0.0, 1.0]]])
def test_non_positive_sigma_is_refused_even_without_centres(sigma):
    with pytest.raises(ValueError, match="sigma must be positive"):
        prepare_gaussians(np.empty((0, 3)), sigma)


def test_centres_with_rows_but_no_columns_are_not_empty():
    """Four centres with no coordinates is a wrong shape, not "no centres"."""
    with pytest.raises(ValueError, match=r"centres must have shape \(M, 3\)"):
        prepare_gaussians(np.empty((4, 0)), 1.0)


# ---------------------------------------------------------------- refusals of bad values


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_centres_are_refused_with_their_index(bad):
    centres = CENTRES.copy()
    centres[2, 1] = bad
    with pytest.raises(ValueError, match=r"centres must be finite: found .* at index \(2, 1\)"):
        prepare_gaussians(centres, 1.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_sigma_is_refused(bad):
    with pytest.raises(ValueError, match=r"sigma must be finite: found .* at index \(\)"):
        prepare_gaussians(CENTRES, bad)
    sigma = np.ones((4, 3))
    sigma[3, 2] = bad
    with pytest.raises(ValueError, match=r"sigma must be finite: found .* at index \(3, 2\)"):
        prepare_gaussians(CENTRES, sigma)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused(bad):
    with pytest.raises(ValueError, match=r"weights must be finite: found .* at index \(1,\)"):
        prepare_gaussians(CENTRES, 1.0, weights=[1.0, bad, 1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be finite"):
        prepare_gaussians(CENTRES, 1.0, weights=bad)


@pytest.mark.parametrize(
    ("sigma", "message"),
    [
        (0.0, r"got 0\.0$"),
        (-0.5, r"got -0\.5$"),
        ([1.0, 2.0, 0.0, 1.0], r"got 0\.0 at index \(2,\)"),
        ([[1.0, 1.0, -1e-300]], r"got -1e-300 at index \(0, 2\)"),
    ],
)
def test_non_positive_sigma_is_refused_naming_the_first_bad_one(sigma, message):
    with pytest.raises(ValueError, match="sigma must be positive, " + message):
        prepare_gaussians(CENTRES, sigma)


def test_error_rows_count_from_first_row():
    """A chunk of a larger input names the rows of the whole input."""
    centres = CENTRES.copy()
    centres[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"centres must be finite: found nan at index \(1002, 1\)"):
        prepare_gaussians(centres, 1.0, first_row=1000)
    with pytest.raises(ValueError, match=r"sigma must be positive, got -1\.0 at index \(503,\)"):
        prepare_gaussians(CENTRES, [1.0, 1.0, 1.0, -1.0], first_row=500)


@pytest.mark.parametrize(
    "centres", [np.zeros((4, 2)), np.zeros((4, 4)), np.zeros(3), np.zeros((2, 3, 1)), 5.0]
)
def test_centres_of_wrong_shape_are_refused(centres):
    with pytest.raises(
        ValueError, match=r"centres must have shape \(M, 3\), one x y z row per centre"
    ):
        prepare_gaussians(centres, 1.0)


@pytest.mark.parametrize("weights", [np.ones(3), np.ones(5), np.ones((4, 1)), np.ones(1)])
def test_weights_of_wrong_shape_are_refused(weights):
    with pytest.raises(
        ValueError, match=r"weights must be None, a number or shape \(M,\) = \(4,\)"
    ):
        prepare_gaussians(CENTRES, 1.0, weights=weights)


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("centres", [["a", "b", "c"]], "centres must be real numbers, got list"),
        ("centres", [[0, 0, 0], [1, 2]], "centres must be real numbers, got list"),
        ("sigma", "wide", "sigma must be real numbers, got str"),
        ("sigma", {"x": 1}, "sigma must be real numbers, got dict"),
        ("weights", object(), "weights must be real numbers, got object"),
        ("weights", ["heavy"] * 4, "weights must be real numbers, got list"),
    ],
)
def test_non_numeric_input_is_refused(argument, value, message):
    arguments = {"centres": CENTRES, "sigma": 1.0, "weights": None} | {argument: value}
    with pytest.raises(ValueError, match=message):
        prepare_gaussians(arguments["centres"], arguments["sigma"], weights=arguments["weights"])


def test_normalize_is_checked_before_the_centres():
    """Errors are reported in a fixed order: normalize, tol, centres, sigma, weights."""
    with pytest.raises(ValueError, match="normalize must be one of"):
        prepare_gaussians([[math.nan, 0, 0]], -1.0, normalize="area", tol=2.0)
    with pytest.raises(ValueError, match="tol must lie"):
        prepare_gaussians([[math.nan, 0, 0]], -1.0, tol=2.0)
    with pytest.raises(ValueError, match="centres must be finite"):
        prepare_gaussians([[math.nan, 0, 0]], -1.0)
    with pytest.raises(ValueError, match="sigma must be positive"):
        prepare_gaussians([[0, 0, 0]], -1.0, weights=math.nan)


# ---------------------------------------------------------------- Gaussians and the fingerprint


def _gaussians(**changes):
    rng = np.random.default_rng(5)
    arguments = {
        "centres": rng.uniform(-10, 10, size=(6, 3)),
        "sigma": rng.uniform(0.5, 2.0, size=(6, 3)),
        "weights": rng.uniform(-1, 1, size=6),
        "tol": 1e-6,
        "normalize": "peak",
    } | changes
    return prepare_gaussians(
        arguments["centres"],
        arguments["sigma"],
        weights=arguments["weights"],
        tol=arguments["tol"],
        normalize=arguments["normalize"],
    )


def test_fingerprint_is_a_sha256_hex_digest_and_equal_for_equal_inputs():
    one, two = _gaussians(), _gaussians()
    assert one is not two
    assert one.fingerprint() == two.fingerprint()
    assert len(one.fingerprint()) == 64
    int(one.fingerprint(), 16)


def test_fingerprint_is_equal_for_equivalent_forms():
    """A scalar, a per-centre vector and a full array of the same sigma are the same job."""
    centres = np.arange(12, dtype=float).reshape(4, 3)
    forms = [
        prepare_gaussians(centres, 0.5, weights=None),
        prepare_gaussians(centres, np.full(4, 0.5), weights=1.0),
        prepare_gaussians(centres.tolist(), np.full((4, 3), 0.5), weights=np.ones(4)),
        prepare_gaussians(centres.astype(np.float32), [[0.5, 0.5, 0.5]], weights=[1, 1, 1, 1]),
    ]
    assert len({g.fingerprint() for g in forms}) == 1


def _perturbed(array, index):
    changed = np.array(array, dtype=float, copy=True)
    changed[index] = np.nextafter(changed[index], np.inf)
    return changed


def test_fingerprint_changes_when_anything_changes():
    rng = np.random.default_rng(5)
    centres = rng.uniform(-10, 10, size=(6, 3))
    sigma = rng.uniform(0.5, 2.0, size=(6, 3))
    weights = rng.uniform(-1, 1, size=6)
    base = _gaussians().fingerprint()
    variants = {
        "positions": _gaussians(centres=_perturbed(centres, (4, 2))),
        "sigma": _gaussians(sigma=_perturbed(sigma, (0, 1))),
        "weights": _gaussians(weights=_perturbed(weights, 5)),
        "tol": _gaussians(tol=np.nextafter(1e-6, 1.0)),
        "normalize": _gaussians(normalize="density"),
        "order": _gaussians(centres=centres[::-1], sigma=sigma[::-1], weights=weights[::-1]),
        "fewer": _gaussians(centres=centres[:5], sigma=sigma[:5], weights=weights[:5]),
    }
    prints = {name: g.fingerprint() for name, g in variants.items()}
    for name, value in prints.items():
        assert value != base, name
    assert len(set(prints.values())) == len(prints)


def test_gaussians_can_be_built_directly():
    gaussians = Gaussians(
        positions=np.zeros((2, 3)), sigma=np.full((1, 3), 2.0), amplitude=np.ones(1), tol=0.01
    )
    assert gaussians.count == 2
    np.testing.assert_allclose(gaussians.radius, 2.0 * math.sqrt(2 * math.log(100)), rtol=1e-15)
    assert (
        gaussians.fingerprint() == prepare_gaussians(np.zeros((2, 3)), 2.0, tol=0.01).fingerprint()
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [(None, "centres must be numeric, got None"), (np.zeros((2, 3)) + 1j, "real numbers")],
)
def test_none_and_complex_centres_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        prepare_gaussians(value, 1.0)
