"""Validation of the Gaussians a user asks for, and the quantities derived from them.

Everything a user can get wrong about the centres, sigmas, weights, normalisation and
tolerance is caught here, before any graph is built, with a message that names the
argument and what it accepts.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "COVARIANCE_ENTRIES",
    "NORMALIZATIONS",
    "Gaussians",
    "check_sigma_or_covariance",
    "checked_tol",
    "diagonal_rows",
    "prepare_gaussians",
    "support_half_width",
]

Normalize = Literal["peak", "density"]
NORMALIZATIONS: tuple[str, ...] = ("peak", "density")


def support_half_width(tol: float) -> float:
    """Half-width of each Gaussian's support in sigmas: ``sqrt(2 ln(1/tol))``.

    At this distance along one axis the Gaussian has fallen to ``tol`` times its
    peak, so every value dropped outside the support box is below ``tol`` times
    the peak (this is scipy's ``truncate``; ``tol = exp(-truncate**2 / 2)``).
    """
    return math.sqrt(2.0 * math.log(1.0 / tol))


@dataclass(frozen=True, eq=False)
class Gaussians:
    """Validated Gaussians in the form the rest of the package uses.

    Values shared by every Gaussian are kept once (a row of one), so that M = 10^8
    Gaussians of one sigma and weight cost no more than their centres. Equal
    Gaussians always take the same form (a per-centre array whose rows are all equal
    is stored as one row), so equal inputs have equal fingerprints.

    Attributes
    ----------
    positions : ndarray, shape (M, 3), float64, C-contiguous
        Centres (coordinate units): the input itself where it is already float64 and
        C-contiguous (the binning keeps its own copy).
    sigma : ndarray, shape (M, 3) or (1, 3), float64, C-contiguous
        Standard deviation along x, y, z of each Gaussian, or of all of them
        (coordinate units).
    amplitude : ndarray, shape (M,) or (1,), float64
        Peak value of each Gaussian, or of all of them: weight times normalisation.
    tol : float
        Each Gaussian is cut where it falls below ``tol`` times its peak.
    covariance : ndarray, shape (M, 6) or (1, 6), float64, or None
        Full covariances (coordinate units squared) as rows ``xx, xy, xz, yy, yz, zz``,
        or None for Gaussians aligned with the axes. When given, ``sigma`` holds the
        square roots of the diagonals (exactly the sigmas a diagonal covariance was
        made from: ``sqrt(s * s) == s`` in binary floating point): the support box
        per axis is still ``sigma_d sqrt(2 ln(1/tol))``, the bounding box of the
        ellipsoid where the Gaussian falls to ``tol``.
    """

    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    tol: float
    covariance: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Number of Gaussians, M."""
        return int(self.positions.shape[0])

    @property
    def radius(self) -> np.ndarray:
        """Half-width of each support box along each axis, shaped like ``sigma`` (coordinate
        units)."""
        return self.sigma * support_half_width(self.tol)

    @functools.cached_property
    def _digest(self) -> str:
        digest = hashlib.sha256()
        arrays = (self.positions, self.sigma, self.amplitude)
        # Axis-aligned Gaussians hash as they always did (stores resume across releases).
        arrays += () if self.covariance is None else (self.covariance,)
        for array in arrays:
            # The shape tells a shared value from a per-centre array of the same bytes.
            digest.update(repr(array.shape).encode())
            digest.update(np.ascontiguousarray(array, dtype="<f8").reshape(-1))
        digest.update(repr(self.tol).encode())
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """A SHA-256 of positions, sigmas, covariances, amplitudes and tolerance: equal
        inputs, equal hash.

        Computed once per object (the job token and the store's record both use it).
        """
        return self._digest


def _finite_float_array(value: ArrayLike, name: str, first_row: int = 0) -> np.ndarray:
    """``value`` as float64 (no copy when it already is), refused unless all finite.

    ``first_row``: the index of ``value``'s first row in the whole input, for the
    message (a chunk of a larger array names the row in the array).
    """
    if value is None:
        raise ValueError(f"{name} must be numeric, got None")
    try:
        raw = np.asarray(value)
        if np.iscomplexobj(raw):
            raise TypeError
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be real numbers, got {type(value).__name__}") from None
    # min and max are NaN or infinite exactly when some element is: two passes and
    # no temporary, where isfinite would allocate a mask as large as the input.
    if array.size and not (math.isfinite(array.min()) and math.isfinite(array.max())):
        bad = np.argwhere(~np.isfinite(array))[0]
        where = tuple(int(i) + (first_row if d == 0 else 0) for d, i in enumerate(bad))
        raise ValueError(f"{name} must be finite: found {array[tuple(bad)]} at index {where}")
    return array


def _centres(centres: ArrayLike, first_row: int) -> np.ndarray:
    array = _finite_float_array(centres, "centres", first_row)
    if array.shape in ((0,), (0, 3)):
        return np.empty((0, 3))
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(
            f"centres must have shape (M, 3), one x y z row per centre; got {array.shape}"
        )
    # No copy: the binning keeps its own, so the lazy array does not change if the
    # caller's array does.
    return np.ascontiguousarray(array)


def _shared_or_per_centre(array: np.ndarray) -> np.ndarray:
    """``array`` (rows per centre) as one row when all its rows are equal, else itself."""
    if len(array) > 1 and (array == array[0]).all():
        return np.ascontiguousarray(array[:1])
    return np.ascontiguousarray(array)


def _sigma(sigma: ArrayLike, count: int, first_row: int) -> np.ndarray:
    array = _finite_float_array(sigma, "sigma", first_row)
    if array.ndim == 0 or array.shape == (1,):
        full = np.full((1, 3), float(array.reshape(-1)[0]))
    elif array.shape == (count,):
        full = _shared_or_per_centre(np.repeat(array[:, None], 3, axis=1))
    elif array.shape in ((count, 3), (1, 3)):
        full = _shared_or_per_centre(array)
    else:
        hint = (
            " (for one anisotropic sigma for all centres use shape (1, 3))"
            if array.shape == (3,)
            else ""
        )
        raise ValueError(
            f"sigma must be a number, shape (M,) = ({count},), (M, 3) = ({count}, 3) or (1, 3); "
            f"got shape {array.shape}{hint}"
        )
    if array.size and array.min() <= 0:
        bad = np.argwhere(array <= 0)[0]
        where = tuple(int(i) + (first_row if d == 0 else 0) for d, i in enumerate(bad))
        where_text = f" at index {where}" if array.ndim else ""
        raise ValueError(f"sigma must be positive, got {array[tuple(bad)]}{where_text}")
    return full if count else np.empty((0, 3))


# Rows of a covariance as stored: the upper triangle, row by row.
COVARIANCE_ENTRIES = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))
# Relative asymmetry accepted (and averaged away): what computing R D R^T in float64 leaves.
_SYMMETRY_TOLERANCE = 1e-10


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _rows_and_pivots(entries):
    """From covariances as (K, 9) entries: rows ``xx, xy, xz, yy, yz, zz`` (the mean of
    each matrix and its transpose), the square roots of their diagonals (K, 3), whether
    each is positive definite and its determinant (K,), per matrix its largest entry and
    its largest difference from its transpose, and whether all rows are the same.

    One pass (numpy's column-by-column passes and fancy indexing over (K, 9) took
    seconds at K = 5 x 10^6). Definiteness and the determinant come from the Cholesky
    pivots, ``xx``, ``yy - xy^2 / xx`` (the variance of y given x) and ``zz -
    beta . (xz, yz)`` (the variance of z given x and y), computed as the covariance
    kernel computes them: a covariance is positive definite exactly when all three are
    positive, and its determinant is their product.
    """
    count = entries.shape[0]
    rows = np.empty((count, 6))
    sigma = np.empty((count, 3))
    definite = np.empty(count, np.bool_)
    determinant = np.empty(count)
    scale = np.empty(count)
    asymmetry = np.empty(count)
    same = True
    for m in range(count):
        e = entries[m]
        largest = 0.0
        for k in range(9):
            largest = max(largest, abs(e[k]))
        scale[m] = largest
        asymmetry[m] = max(abs(e[1] - e[3]), abs(e[2] - e[6]), abs(e[5] - e[7]))
        xx, yy, zz = e[0], e[4], e[8]
        xy, xz, yz = 0.5 * (e[1] + e[3]), 0.5 * (e[2] + e[6]), 0.5 * (e[5] + e[7])
        rows[m, 0], rows[m, 1], rows[m, 2] = xx, xy, xz
        rows[m, 3], rows[m, 4], rows[m, 5] = yy, yz, zz
        determinant_xy = xx * yy - xy * xy
        beta_x = (xz * yy - yz * xy) / determinant_xy
        beta_y = (yz * xx - xz * xy) / determinant_xy
        pivot_y = yy - xy * xy / xx
        pivot_z = zz - (beta_x * xz + beta_y * yz)
        # NaN pivots (a singular leading block) fail the test as they should.
        definite[m] = xx > 0.0 and pivot_y > 0.0 and pivot_z > 0.0
        determinant[m] = xx * pivot_y * pivot_z
        # sqrt(s * s) == s in binary floating point: a diagonal covariance gives back
        # exactly the sigmas it was made from.
        sigma[m, 0], sigma[m, 1], sigma[m, 2] = np.sqrt(xx), np.sqrt(yy), np.sqrt(zz)
        for k in range(6):
            same = same and rows[m, k] == rows[0, k]
    return rows, sigma, definite, determinant, scale, asymmetry, same


def _covariance(
    covariance: ArrayLike, count: int, first_row: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Covariances as rows ``xx, xy, xz, yy, yz, zz`` (shape (1, 6) or (count, 6)), the
    square roots of their diagonals and their determinants, one row each (see
    :func:`_rows_and_pivots`)."""
    array = _finite_float_array(covariance, "covariance", first_row)
    if array.shape == (3, 3):
        array = array[None]
    elif array.shape not in ((count, 3, 3), (1, 3, 3)):
        raise ValueError(
            f"covariance must have shape (3, 3), one for all centres, or (M, 3, 3) = "
            f"({count}, 3, 3), one per centre; got {array.shape}"
        )
    rows, sigma, definite, determinant, scale, asymmetry, same = _rows_and_pivots(
        np.ascontiguousarray(array.reshape(len(array), 9))
    )
    bad = asymmetry > _SYMMETRY_TOLERANCE * scale
    if bad.any():
        index = int(np.argmax(bad))
        where = f"covariance[{index + first_row}]" if len(array) > 1 else "covariance"
        raise ValueError(
            f"covariance must be symmetric: {where} differs from its transpose by "
            f"{asymmetry[index]:.3g} (entries up to {scale[index]:.3g})"
        )
    if not definite.all():
        index = int(np.argmin(definite))
        where = f"covariance[{index + first_row}]" if len(array) > 1 else "covariance"
        eigenvalues = np.linalg.eigvalsh(0.5 * (array[index] + array[index].T))
        raise ValueError(
            f"covariance must be positive definite: {where} is not (eigenvalues "
            f"{', '.join(f'{value:.6g}' for value in eigenvalues)}); a Gaussian needs a "
            "positive variance along every direction"
        )
    if not count:
        return np.empty((0, 6)), np.empty((0, 3)), np.empty(0)
    if same:  # equal Gaussians take one form: one row
        return rows[:1].copy(), sigma[:1].copy(), determinant[:1].copy()
    return rows, sigma, determinant


def diagonal_rows(rows: np.ndarray) -> np.ndarray:
    """Which covariance rows (shape (K, 6)) are diagonal: boolean, shape (K,)."""
    return (rows[:, 1] == 0) & (rows[:, 2] == 0) & (rows[:, 4] == 0)


def _weights(weights: ArrayLike | None, count: int, first_row: int) -> np.ndarray:
    if weights is None:
        return np.ones(1 if count else 0)
    array = _finite_float_array(weights, "weights", first_row)
    if array.ndim == 0:
        return np.full(1 if count else 0, float(array))
    if array.shape != (count,):
        raise ValueError(
            f"weights must be None, a number or shape (M,) = ({count},); got {array.shape}"
        )
    return _shared_or_per_centre(array)


def check_sigma_or_covariance(sigma: object, covariance: object) -> None:
    """Refuse both or neither of ``sigma`` and ``covariance``."""
    if sigma is not None and covariance is not None:
        raise ValueError("give sigma or covariance, not both: pass sigma=None with covariance=")
    if sigma is None and covariance is None:
        raise ValueError(
            "give sigma (Gaussians aligned with the axes) or covariance= (full covariances)"
        )


def checked_tol(tol: float) -> float:
    """``tol`` as a float, if it lies in (0, 1)."""
    try:
        value = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(
            "tol must lie in (0, 1): the fraction of each Gaussian's peak below which it is "
            f"cut; got {tol!r}"
        )
    return value


def prepare_gaussians(
    centres: ArrayLike,
    sigma: ArrayLike | None,
    *,
    covariance: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    normalize: str = "peak",
    tol: float = 1e-6,
    first_row: int = 0,
) -> Gaussians:
    """Validate user input and turn it into :class:`Gaussians`.

    Parameters
    ----------
    centres : array_like, shape (M, 3)
        Centre coordinates; column ``d`` is output axis ``d``.
    sigma : float or array_like, shape (M,), (M, 3) or (1, 3), or None
        Standard deviations (coordinate units). None when ``covariance`` is given.
    covariance : array_like, shape (3, 3) or (M, 3, 3), optional
        Symmetric positive definite covariances (coordinate units squared), instead
        of ``sigma``.
    weights : None, float or array_like, shape (M,)
        Weight of each Gaussian (may be negative); None means 1.
    normalize : {"peak", "density"}
        ``"peak"``: each Gaussian peaks at its weight. ``"density"``: each integrates
        to its weight, amplitude ``w (2 pi)^(-3/2) / (sigma_x sigma_y sigma_z)``, or
        ``w (2 pi)^(-3/2) det(C)^(-1/2)`` with a covariance ``C``.
    tol : float in (0, 1)
        Cut each Gaussian where it falls below ``tol`` times its peak.
    first_row : int
        Index of the first centre in the whole input, for error messages (when
        these centres are one chunk of a larger array).

    Raises
    ------
    ValueError
        For any input outside what is described above.
    """
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    cut = checked_tol(tol)
    check_sigma_or_covariance(sigma, covariance)
    positions = _centres(centres, first_row)
    count = positions.shape[0]
    rows = None
    if covariance is not None:
        rows, sigmas, determinant = _covariance(covariance, count, first_row)
    else:
        sigmas = _sigma(sigma, count, first_row)
    amplitude = _weights(weights, count, first_row)
    if normalize == "density":
        shapes = len(sigmas)
        if shapes > len(amplitude):  # per-centre shapes, one weight for all
            amplitude = np.broadcast_to(amplitude, (shapes,))
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scale = np.prod(sigmas, axis=1)
            if rows is not None:
                # A diagonal covariance is normalised as its sigmas are: the same bits.
                general = np.sqrt(determinant)
                scale = np.where(diagonal_rows(rows), scale, general)
            amplitude = amplitude * (2.0 * math.pi) ** -1.5 / scale
        if not np.all(np.isfinite(amplitude)):
            raise ValueError(
                'normalize="density" overflows for these sigmas: scale the coordinates so that '
                "sigma_x * sigma_y * sigma_z is representable"
            )
    return Gaussians(positions=positions, sigma=sigmas, amplitude=amplitude, tol=cut,
                     covariance=rows)  # fmt: skip
