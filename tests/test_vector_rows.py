"""The row intrinsic against a plain numpy loop: the same bits, and nothing else touched.

Rows are walked in vectors of 16 float32 or 8 float64 with a masked last vector, so
the cases cross row lengths around those widths, strides that are and are not a
whole number of vectors, and blocks at every offset from a 64-byte boundary.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daskgauss._vector_rows import add_outer_rows

# Element offsets of the block from a 64-byte boundary, and row lengths around the
# float32 (16) and float64 (8) vector widths.
PHASES = (0, 1, 3, 7, 8, 15)
LENGTHS = (0, 1, 7, 8, 9, 14, 15, 16, 17, 31, 32, 33, 54, 70)


@numba.njit
def _call(block, offset, stride, scale, factor_y, y_start, rows, factor_z, z_start, length):
    add_outer_rows(block, offset, stride, scale, factor_y, y_start, rows, factor_z, z_start, length)


def _block_at_phase(shape, dtype, phase, rng):
    """A C-contiguous block of random values starting ``phase`` elements past 64 bytes."""
    size = int(np.prod(shape))
    raw = np.empty(size + 128, dtype=dtype)
    phase %= 64 // raw.itemsize
    first = (-raw.ctypes.data % 64) // raw.itemsize + phase
    block = raw[first : first + size].reshape(shape)
    block[...] = rng.uniform(-1, 1, size=shape)
    assert (block.ctypes.data % 64) // block.itemsize == phase
    return block


def _expected(block, offset, stride, scale, factor_y, y_start, rows, factor_z, z_start, length):
    expected = block.copy().reshape(-1)
    factors = factor_z[z_start : z_start + length]
    for row in range(rows):
        weight = block.dtype.type(scale * factor_y[y_start + row])
        start = offset + row * stride
        expected[start : start + length] = expected[start : start + length] + weight * factors
    return expected.reshape(block.shape)


def _check(dtype, phase, stride, length, rows, offset, z_start, seed):
    rng = np.random.default_rng(seed)
    shape = (2, rows + 1, stride)
    block = _block_at_phase(shape, dtype, phase, rng)
    factor_y = rng.uniform(0, 1, size=rows + 3)
    factor_z = rng.uniform(0, 1, size=z_start + length + 5).astype(dtype)
    scale = float(rng.uniform(-2, 2))
    arguments = (offset, stride, scale, factor_y, 2, rows, factor_z, z_start, length)
    expected = _expected(block, *arguments)
    _call(block, *arguments)
    # Every element: the rows' elements bit for bit, all others untouched.
    np.testing.assert_array_equal(block, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("length", LENGTHS)
def test_rows_match_a_plain_loop_bit_for_bit(dtype, phase, length):
    # stride 80 is a whole number of vectors for both dtypes; 75 is not.
    for stride in (80, 75):
        for offset in (0, 5, stride - length if stride >= length else 0):
            _check(dtype, phase, stride, length, rows=3, offset=offset, z_start=3, seed=length)


@settings(max_examples=200, deadline=None)
@given(
    dtype=st.sampled_from([np.float32, np.float64]),
    phase=st.integers(0, 15),
    vectors=st.integers(1, 6),
    extra=st.integers(0, 15),
    length=st.integers(0, 96),
    rows=st.integers(0, 5),
    offset=st.integers(0, 40),
    z_start=st.integers(0, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_rows_match_a_plain_loop_on_random_layouts(
    dtype, phase, vectors, extra, length, rows, offset, z_start, seed
):
    stride = vectors * 16 + extra  # a whole number of vectors when extra is 0 (or 8, float64)
    length = min(length, stride)
    offset = min(offset, stride - length)
    _check(dtype, phase, stride, length, rows, offset, z_start, seed)
