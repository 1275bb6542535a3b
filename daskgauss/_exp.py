"""``exp(-x)`` for ``x >= 0`` in plain IEEE arithmetic, for the kernel's 1D factors.

Why not ``math.exp``: the C library's ``exp`` is a call that LLVM cannot
vectorise (it was a tenth of the kernel's time), and its last bit depends on the
library build and the CPU (glibc picks an FMA variant where the CPU has FMA), so
the same job could give different bits on two machines. This is fdlibm's
algorithm written out: ``x = m ln2 - r`` with ``|r| <= ln2 / 2`` (Cody-Waite: ``m ln2``
split in two parts), a rational approximation of ``exp(r)``, then a scale by
``2^-m`` built from its bits. Only ``+ - * /`` and conversions are used, none of
them fused, so every CPU gives the same bits; loops calling it vectorise.

Accuracy: within 1 ulp of the correctly rounded value; exactly 1 at ``x = 0``;
subnormal results are rounded once; 0 beyond about 745.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["exp_negative"]

# fdlibm e_exp.c constants.
_LN2_HIGH = 6.93147180369123816490e-01  # the high bits of ln 2: m * _LN2_HIGH is exact
_LN2_LOW = 1.90821492927058770002e-10  # ln 2 - _LN2_HIGH
_INVERSE_LN2 = 1.44269504088896338700e00
_P1 = 1.66666666666666019037e-01
_P2 = -2.77777777770155933842e-03
_P3 = 6.61375632143793436117e-05
_P4 = -1.65339022054652515390e-06
_P5 = 4.13813679705723846039e-08
# exp(-762) underflows to 0 by far; clamping keeps 2^-m's exponent bits in range.
_LARGEST = 762.0


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float64 whose IEEE bits are the int64 ``bits``."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, arguments):
        return builder.bitcast(arguments[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(inline="always", error_model="numpy")
def exp_negative(x: float) -> float:
    """``exp(-x)`` for ``x >= 0`` (float64), bit-identical on every CPU."""
    x = x if x < _LARGEST else _LARGEST
    multiple = np.int64(x * _INVERSE_LN2 + 0.5)  # round(x / ln 2), x >= 0
    m = np.float64(multiple)
    high = m * _LN2_HIGH - x
    low = -(m * _LN2_LOW)
    r = high - low  # exp(-x) = 2^-m exp(r)
    square = r * r
    c = r - square * (_P1 + square * (_P2 + square * (_P3 + square * (_P4 + square * _P5))))
    y = 1.0 - ((low - (r * c) / (2.0 - c)) - high)
    # 2^-m in two normal factors, so that a subnormal result is rounded only once.
    half = multiple >> 1
    first = _float_from_bits((1023 - half) << 52)
    second = _float_from_bits((1023 - (multiple - half)) << 52)
    return y * first * second
