"""exp_negative against exp computed to 50 digits with the decimal module."""

from __future__ import annotations

import decimal
import math

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daskgauss._exp import exp_negative


@numba.njit(error_model="numpy")
def _apply(values: np.ndarray) -> np.ndarray:
    out = np.empty_like(values)
    for i in range(values.shape[0]):
        out[i] = exp_negative(values[i])
    return out


def _reference(x: float) -> float:
    """exp(-x) correctly rounded to float64 (50 significant digits, then one rounding)."""
    with decimal.localcontext() as context:
        context.prec = 50
        return float((-decimal.Decimal(x)).exp())


def _ulps(computed: np.ndarray, expected: np.ndarray) -> np.ndarray:
    spacing = np.spacing(np.maximum(np.abs(expected), np.finfo(np.float64).smallest_subnormal))
    return np.abs(computed - expected) / spacing


@pytest.mark.parametrize(("low", "high"), [(0, 1), (0, 20), (0, 708), (700, 746)])
def test_within_one_ulp_of_the_correctly_rounded_value(low, high):
    values = np.random.default_rng(int(high)).uniform(low, high, 4000)
    expected = np.array([_reference(x) for x in values])
    assert np.max(_ulps(_apply(values), expected)) <= 1.0


@given(st.floats(min_value=0.0, max_value=800.0))
def test_property_within_one_ulp(x):
    assert _ulps(_apply(np.array([x])), np.array([_reference(x)]))[0] <= 1.0


def test_special_values():
    values = np.array([0.0, 5e-324, 1e-300, 1e-17, math.log(2), 745.2, 746.0, 1e10, 1e308])
    computed = _apply(values)
    assert computed[0] == 1.0  # a Gaussian's peak on a sample is its amplitude exactly
    assert computed[1] == 1.0
    assert computed[2] == 1.0
    assert computed[3] == 1.0 - 1e-17  # rounds to 1
    assert computed[4] == 0.5
    assert np.all(computed[5:] == 0.0)


def test_subnormal_results_are_rounded_once():
    values = np.linspace(708.0, 745.1, 2001)
    expected = np.array([_reference(x) for x in values])
    computed = _apply(values)
    assert np.all(expected[-5:] > 0)  # the range really reaches the subnormals
    assert np.max(_ulps(computed, expected)) <= 1.0


def test_no_fused_multiply_add_in_the_compiled_code():
    """Every CPU gives the same bits only if no multiply-add is fused (FMA rounds once)."""
    _apply(np.ones(3))
    for assembly in _apply.inspect_asm().values():
        assert "vfmadd" not in assembly
        assert "vfnmadd" not in assembly
        assert "vfmsub" not in assembly
