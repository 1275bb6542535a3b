"""Kernel density estimates: ``scipy.stats.gaussian_kde`` on a grid, through ``gaussian_sum``.

The bandwidth rules are scipy's (1.17), reproduced here so that scipy stays a test
dependency only; the density itself is the one core, ``gaussian_sum`` with a full
covariance and ``normalize="density"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from ._grid import Grid, _shape

__all__ = ["KdeBandwidth", "kde", "kde_bandwidth", "kde_grid"]

#: Smallest eigenvalue of the data covariance, relative to its largest, below which the
#: points count as flat (on a plane, a line or one spot): a kernel a million times
#: thinner than it is wide. Rounding leaves exactly flat data at about 1e-16 of it.
_FLAT_RATIO = 1e-12

#: What ``bw_method`` may be, as scipy documents it.
BwMethod = str | float | Callable[[Any], float] | None

_BW_METHOD_MESSAGE = (
    "`bw_method` should be 'scott', 'silverman', a scalar or a callable "
    "(taking an object with d, n, neff, dataset, weights, scotts_factor() and "
    "silverman_factor(), and returning the factor)"
)


@dataclass(frozen=True, eq=False)
class KdeBandwidth:
    """The kernel of a Gaussian KDE, as ``scipy.stats.gaussian_kde`` chooses it.

    Attributes
    ----------
    factor : float
        The bandwidth factor (scipy's ``kde.factor``): the kernel covariance is
        ``factor**2`` times the weighted data covariance. Dimensionless, > 0.
    covariance : numpy.ndarray, shape (3, 3), float64
        The kernel covariance (scipy's ``kde.covariance``), coordinate units squared;
        symmetric positive definite. Read-only.
    weights : numpy.ndarray, shape (M,), float64
        The point weights normalised to sum to 1 (scipy's ``kde.weights``; ``1/M``
        each without weights). Read-only.
    neff : float
        Effective number of points, ``1 / sum(weights**2)`` (scipy's ``kde.neff``);
        ``M`` (up to rounding) without weights.
    """

    factor: float
    covariance: np.ndarray
    weights: np.ndarray
    neff: float


class _KdeView:
    """What a callable ``bw_method`` is given: the attributes scipy's ``gaussian_kde``
    has when it calls one (``d``, ``n``, ``neff``, ``dataset`` (d, n), ``weights``,
    ``scotts_factor()``, ``silverman_factor()``). Its arrays are read-only copies."""

    def __init__(self, dataset: np.ndarray, weights: np.ndarray, neff: float) -> None:
        self.dataset = dataset
        self.weights = weights
        self.neff = neff
        self.d, self.n = dataset.shape

    def scotts_factor(self) -> float:
        """Scott's factor, ``neff ** (-1 / (d + 4))``."""
        return np.power(self.neff, -1.0 / (self.d + 4))

    def silverman_factor(self) -> float:
        """Silverman's factor, ``(neff (d + 2) / 4) ** (-1 / (d + 4))``."""
        return np.power(self.neff * (self.d + 2.0) / 4.0, -1.0 / (self.d + 4))

    def __repr__(self) -> str:
        return f"<kde data: d={self.d}, n={self.n}, neff={self.neff:g}>"


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _points(points: ArrayLike) -> np.ndarray:
    """The points as a float64 (M, 3) array, validated."""
    try:
        array = np.array(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            "points must be an array of numbers of shape (M, 3), one row (x, y, z) per point"
        ) from None
    if array.ndim != 2 or array.shape[1] != 3:
        hint = (
            " (scipy's gaussian_kde takes (3, M): pass dataset.T)"
            if array.ndim == 2 and array.shape[0] == 3
            else ""
        )
        raise ValueError(
            f"points must have shape (M, 3), one row (x, y, z) per point, "
            f"got shape {array.shape}{hint}"
        )
    if array.shape[0] < 4:
        raise ValueError(
            f"a 3D kernel density estimate needs at least 4 points not all in one plane "
            f"(fewer give a singular covariance), got {array.shape[0]}"
        )
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ValueError(
            f"points must be finite; {int(bad.sum())} rows hold NaN or inf, "
            f"the first is row {int(np.flatnonzero(bad)[0])}: drop or fix them"
        )
    return array


def _weights(weights: ArrayLike | None, m: int) -> np.ndarray:
    """The weights normalised to sum to 1, as scipy normalises them."""
    if weights is None:
        return np.ones(m) / m
    try:
        array = np.array(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be None or {m} numbers, one per point") from None
    if array.shape != (m,):
        raise ValueError(
            f"weights must be None or shape ({m},), one per point, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("weights must be finite; some are NaN or inf")
    if (array < 0).any():
        raise ValueError(
            f"weights must be non-negative (a density), got {array.min():g} at row "
            f"{int(np.argmin(array))}"
        )
    total = np.sum(array)
    if not total > 0:
        raise ValueError("weights must have a positive sum; all are zero")
    return array / total


def _neff(weights: np.ndarray) -> float:
    """``1 / sum(w**2)``, computed as scipy computes it."""
    if hasattr(np, "vecdot"):
        return float(1 / np.vecdot(weights, weights))
    return float(1 / np.sum(weights * weights))  # pragma: no cover - numpy < 2


def _factor(bw_method: BwMethod, view: _KdeView) -> float:
    """The bandwidth factor ``bw_method`` asks for."""
    if bw_method is None or (isinstance(bw_method, str) and bw_method == "scott"):
        value, source = view.scotts_factor(), "Scott's rule"
    elif isinstance(bw_method, str) and bw_method == "silverman":
        value, source = view.silverman_factor(), "Silverman's rule"
    elif isinstance(bw_method, str):
        raise ValueError(f"{_BW_METHOD_MESSAGE}; got the string {bw_method!r}")
    elif _is_real(bw_method):
        value, source = bw_method, "bw_method"
    elif callable(bw_method):
        value = bw_method(view)
        source = f"the bw_method callable {getattr(bw_method, '__name__', bw_method)!r}"
        if not _is_real(value):
            raise ValueError(
                f"{source} must return a scalar number (the bandwidth factor), "
                f"got {value!r} of type {type(value).__name__}"
            )
    else:
        raise ValueError(f"{_BW_METHOD_MESSAGE}; got {bw_method!r}")
    factor = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"the bandwidth factor from {source} must be finite and > 0, got {factor}")
    return factor


def _is_real(value: object) -> bool:
    """A real scalar number (numpy scalars and 0-d arrays included), not a bool."""
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iuf"


def _check_spread(data_covariance: np.ndarray, weights: np.ndarray, scale: float) -> None:
    """Raise unless the data covariance is positive definite: scipy's Cholesky test, plus
    thresholds that rounding cannot pass for exactly flat data. An eigenvalue counts as
    zero below ``_FLAT_RATIO`` times the largest, or below the variance that rounding of
    coordinates of magnitude ``scale`` can make, ``(64 eps scale)**2``."""
    eigenvalues = np.linalg.eigvalsh(data_covariance)
    noise = (64 * np.finfo(np.float64).eps * scale) ** 2
    threshold = max(_FLAT_RATIO * eigenvalues[-1], noise)
    rank = int(np.sum(eigenvalues > threshold))
    if rank == 3:
        try:
            np.linalg.cholesky(data_covariance)
            return
        except np.linalg.LinAlgError:  # pragma: no cover - eigenvalues said otherwise
            rank = 2
    where = {0: "all at one location", 1: "on one line", 2: "in one plane"}[rank]
    used = int(np.count_nonzero(weights))
    counted = f" (the {used} with non-zero weight)" if used < weights.size else ""
    raise ValueError(
        f"the points{counted} lie {where}: their covariance is singular "
        f"(eigenvalues {np.array2string(eigenvalues, precision=3)}), so no 3D Gaussian "
        f"kernel fits them. A 3D density needs points that spread in all three "
        f"directions; for flat data, estimate the density in fewer dimensions "
        f"(e.g. after a principal component projection)"
    )


def kde_bandwidth(
    points: ArrayLike,
    *,
    bw_method: BwMethod = None,
    weights: ArrayLike | None = None,
) -> KdeBandwidth:
    """The kernel ``scipy.stats.gaussian_kde(points.T, bw_method, weights)`` would use.

    Parameters
    ----------
    points : array_like, shape (M, 3)
        The data, one row (x, y, z) per point (coordinate units); scipy's
        ``dataset`` is ``points.T``. Finite, at least 4 points, not all in one plane.
    bw_method : None, "scott", "silverman", float or callable
        The bandwidth factor rule, as in scipy: None and ``"scott"`` give
        ``neff ** (-1/7)``; ``"silverman"`` gives ``(5 neff / 4) ** (-1/7)``; a number
        is the factor itself (> 0); a callable is called with an object holding
        ``d`` (3), ``n`` (M), ``neff``, ``dataset`` (shape (3, M)), ``weights``
        (normalised), ``scotts_factor()`` and ``silverman_factor()`` and returns
        the factor (a number > 0).
    weights : None or array_like, shape (M,)
        Non-negative weight of each point, with a positive sum; normalised to sum
        to 1. None means equal weights.

    Returns
    -------
    KdeBandwidth
        The factor, the kernel covariance (data covariance weighted as
        ``np.cov(points.T, aweights=weights)`` times ``factor**2``), the normalised
        weights and ``neff``.

    Raises
    ------
    ValueError
        For points or weights that are not finite or not the right shape, negative
        weights or a zero sum, an unknown ``bw_method``, a factor that is not a
        positive number, or points that do not spread in three dimensions.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.random.default_rng(0).normal(size=(100, 3))
    >>> bandwidth = kde_bandwidth(points)
    >>> round(bandwidth.factor, 6), round(bandwidth.neff, 9)  # 100 ** (-1/7), 100
    (0.517947, 100.0)
    """
    data = _points(points)
    w = _weights(weights, data.shape[0])
    neff = _neff(w)
    dataset = data.T
    used = np.count_nonzero(w)
    if used < 4:
        raise ValueError(
            f"weights are non-zero on only {used} points; a 3D kernel density estimate "
            f"needs at least 4 points of non-zero weight, not all in one plane"
        )
    view = _KdeView(_readonly(dataset.copy()), _readonly(w.copy()), neff)
    factor = _factor(bw_method, view)
    data_covariance = np.atleast_2d(np.cov(dataset, rowvar=1, bias=False, aweights=w))
    _check_spread(data_covariance, w, float(np.abs(data[w > 0]).max()))
    return KdeBandwidth(
        factor=factor,
        covariance=_readonly(data_covariance * factor**2),
        weights=_readonly(w),
        neff=neff,
    )


def kde_grid(
    points: ArrayLike,
    shape: int | Sequence[int],
    *,
    bw_method: BwMethod = None,
    weights: ArrayLike | None = None,
    padding: float = 3.0,
) -> Grid:
    """A grid that holds a kernel density estimate of ``points``.

    Per axis, the grid spans the points' bounding box extended on each side by
    ``padding`` kernel standard deviations (``sqrt`` of the kernel covariance's
    diagonal), with samples at both ends (:meth:`Grid.from_bounds`).

    Parameters
    ----------
    points : array_like, shape (M, 3)
        The data, one row (x, y, z) per point (coordinate units).
    shape : int or sequence of 3 ints
        Number of samples along x, y, z; one integer means the same on every axis.
    bw_method, weights
        As for :func:`kde_bandwidth`; they set the kernel width.
    padding : float
        Margin on each side, in kernel standard deviations (>= 0). 3 leaves about
        1 % of a kernel's peak at the edge next to an extreme point.

    Returns
    -------
    Grid
        Of ``shape``, from ``min - padding * s`` to ``max + padding * s`` on every
        axis, ``s`` the kernel standard deviation on that axis.

    Examples
    --------
    >>> import numpy as np
    >>> points = np.random.default_rng(0).normal(size=(100, 3))
    >>> grid = kde_grid(points, 32)
    >>> grid.shape
    (32, 32, 32)
    >>> bool(np.all(grid.origin < points.min(axis=0)))
    True
    """
    counts = _shape(shape)
    if not _is_real(padding):
        raise ValueError(f"padding must be a number of kernel standard deviations, got {padding!r}")
    margin = float(padding)  # type: ignore[arg-type]
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(
            f"padding must be finite and >= 0 kernel standard deviations, got {margin}"
        )
    data = _points(points)
    bandwidth = kde_bandwidth(data, bw_method=bw_method, weights=weights)
    reach = margin * np.sqrt(np.diag(bandwidth.covariance))
    lower = data.min(axis=0) - reach
    upper = data.max(axis=0) + reach
    return Grid.from_bounds(tuple(lower.tolist()), tuple(upper.tolist()), counts)


def kde(
    points: ArrayLike,
    grid: Grid,
    *,
    bw_method: BwMethod = None,
    weights: ArrayLike | None = None,
    tol: float = 1e-6,
    chunks: object = None,
    dtype: DTypeLike = "float32",
) -> da.Array:
    r"""A Gaussian kernel density estimate on a grid, as a lazy dask array.

    The density ``scipy.stats.gaussian_kde(points.T, bw_method, weights)`` evaluates,

    .. math::

        f(x) = \sum_i w_i\, (2\pi)^{-3/2} \det(C)^{-1/2}
               \exp\big(-\tfrac12 (x - p_i)^T C^{-1} (x - p_i)\big),

    with weights ``w_i`` summing to 1 and ``C`` the kernel covariance of
    :func:`kde_bandwidth`, sampled at the points of ``grid``. It is
    ``gaussian_sum(points, None, grid, covariance=C, weights=w,
    normalize="density")``: nothing is evaluated point by point, and the volume
    may be any size.

    Parameters
    ----------
    points : array_like, shape (M, 3)
        The data, one row (x, y, z) per point (coordinate units); scipy's
        ``dataset`` is ``points.T``. At least 4 points, not all in one plane.
    grid : Grid
        Where to sample; :func:`kde_grid` makes one that holds the whole density.
    bw_method : None, "scott", "silverman", float or callable
        The bandwidth factor rule, scipy's; see :func:`kde_bandwidth`.
    weights : None or array_like, shape (M,)
        Non-negative weight of each point, positive sum; None means equal.
    tol : float in (0, 1)
        Each kernel is cut where it falls below ``tol`` times its peak, as in
        :func:`gaussian_sum`.
    chunks : optional
        Output block shape, as in :func:`gaussian_sum`.
    dtype : {"float32", "float64"}
        Output dtype.

    Returns
    -------
    dask.array.Array
        Shape ``grid.shape``, the density in inverse coordinate units cubed; its
        sum times ``grid.voxel_volume`` is about 1 when the grid holds the data.

    Notes
    -----
    Against scipy's value at each grid point, the error is at most
    ``tol * (2 pi)^(-3/2) det(C)^(-1/2)`` (the cut: the weights sum to 1) plus
    rounding in ``dtype``; see :func:`gaussian_sum` for the bound.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.stats import gaussian_kde
    >>> points = np.random.default_rng(0).normal(size=(100, 3)) * (1.0, 2.0, 0.5)
    >>> grid = kde_grid(points, 16)
    >>> density = kde(points, grid, dtype="float64").compute()
    >>> x, y, z = np.meshgrid(*grid.axes, indexing="ij")
    >>> reference = gaussian_kde(points.T)(np.stack([x.ravel(), y.ravel(), z.ravel()]))
    >>> peak = (2 * np.pi) ** -1.5 / np.sqrt(np.linalg.det(kde_bandwidth(points).covariance))
    >>> bool(np.all(np.abs(density.ravel() - reference) <= 1e-6 * peak))  # the cut at tol
    True
    """
    from ._lazy import gaussian_sum

    data = _points(points)
    bandwidth = kde_bandwidth(data, bw_method=bw_method, weights=weights)
    return gaussian_sum(
        data,
        None,
        grid,
        covariance=bandwidth.covariance,
        weights=bandwidth.weights,
        normalize="density",
        tol=tol,
        chunks=chunks,
        dtype=dtype,
    )
