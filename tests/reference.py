"""An independent float64 brute-force reference and the documented error bound.

Nothing here uses daskgauss: the reference evaluates every Gaussian at every grid
point from the formula, and the bound is the one ``gaussian_sum`` documents.
"""

from __future__ import annotations

import math

import numpy as np


def amplitudes(sigma: np.ndarray, weights: np.ndarray, normalize: str) -> np.ndarray:
    """Peak value of each Gaussian: weight times normalisation, shape (M,)."""
    if normalize == "peak":
        return weights.astype(np.float64)
    return weights / ((2 * math.pi) ** 1.5 * sigma[:, 0] * sigma[:, 1] * sigma[:, 2])


def _displacements(axes, centre, period):
    """Per-axis displacement of every sample from ``centre``; minimum image if periodic."""
    out = []
    for d in range(3):
        delta = axes[d] - centre[d]
        if period is not None:
            delta = delta - period[d] * np.round(delta / period[d])
        out.append(delta)
    return out


def unit_gaussians(axes, centres, sigma, period=None):
    """Every unweighted Gaussian on the grid, shape (M, nx, ny, nz), float64.

    With ``period``, each Gaussian sits at its nearest periodic image per axis.
    """
    shape = tuple(len(a) for a in axes)
    values = np.empty((len(centres), *shape))
    for i, (centre, s) in enumerate(zip(centres, sigma, strict=True)):
        dx, dy, dz = _displacements(axes, centre, period)
        exponent = (
            (dx[:, None, None] / s[0]) ** 2
            + (dy[None, :, None] / s[1]) ** 2
            + (dz[None, None, :] / s[2]) ** 2
        )
        values[i] = np.exp(-0.5 * exponent)
    return values


def covariance_amplitudes(covariance: np.ndarray, weights: np.ndarray, normalize: str
                          ) -> np.ndarray:  # fmt: skip
    """Peak value of each full-covariance Gaussian (covariance shape (M, 3, 3))."""
    if normalize == "peak":
        return weights.astype(np.float64)
    return weights / ((2 * math.pi) ** 1.5 * np.sqrt(np.linalg.det(covariance)))


def unit_covariance_gaussians(axes, centres, covariance, period=None):
    """Every unweighted full-covariance Gaussian on the grid, shape (M, nx, ny, nz).

    ``exp(-d^T C^-1 d / 2)`` from the inverse by numpy's LU; with ``period`` each
    Gaussian sits at its nearest periodic image per axis.
    """
    shape = tuple(len(a) for a in axes)
    values = np.empty((len(centres), *shape))
    for i, (centre, matrix) in enumerate(zip(centres, covariance, strict=True)):
        dx, dy, dz = _displacements(axes, centre, period)
        d = np.stack(np.broadcast_arrays(dx[:, None, None], dy[None, :, None],
                                         dz[None, None, :]), axis=-1)  # fmt: skip
        exponent = np.einsum("...i,ij,...j->...", d, np.linalg.inv(matrix), d)
        values[i] = np.exp(-0.5 * exponent)
    return values


def covariance_covering_count(axes, centres, covariance, tol, period=None):
    """K(x) for full covariances: how many tol-ellipsoid bounding boxes contain each point."""
    sigma = np.sqrt(np.diagonal(covariance, axis1=1, axis2=2))
    return covering_count(axes, centres, sigma, tol, period)


def support_ranges(axes, positions, sigma, tol):
    """Inclusive sample index range of each support box on each axis, by scanning the
    samples (independent of the binning's arithmetic); empty where low > high."""
    sigma = np.broadcast_to(sigma, np.shape(positions))
    radius = sigma * math.sqrt(2 * math.log(1 / tol))
    count = len(positions)
    low = np.zeros((count, 3), dtype=np.int64)
    high = np.full((count, 3), -1, dtype=np.int64)
    for c in range(count):
        for d in range(3):
            hits = np.flatnonzero(np.abs(axes[d] - positions[c, d]) <= radius[c, d])
            if hits.size:
                low[c, d], high[c, d] = hits[0], hits[-1]
    return low, high


def lattice_sum(axes, centres, sigma, amplitude, period, images=2):
    """The full periodic sum over lattice images within ``images`` periods, float64."""
    shape = tuple(len(a) for a in axes)
    total = np.zeros(shape)
    shifts = range(-images, images + 1)
    for centre, s, a in zip(centres, sigma, amplitude, strict=True):
        factors = []
        for d in range(3):
            factor = np.zeros(shape[d])
            for k in shifts:
                factor += np.exp(-0.5 * ((axes[d] - centre[d] - k * period[d]) / s[d]) ** 2)
            factors.append(factor)
        total += (
            a * factors[0][:, None, None] * factors[1][None, :, None] * factors[2][None, None, :]
        )
    return total


def covering_count(axes, centres, sigma, tol, period=None):
    """K(x): how many support boxes contain each grid point."""
    half_width = math.sqrt(2 * math.log(1 / tol))
    shape = tuple(len(a) for a in axes)
    count = np.zeros(shape, dtype=np.int64)
    for centre, s in zip(centres, sigma, strict=True):
        dx, dy, dz = _displacements(axes, centre, period)
        inside = [np.abs(delta) <= half_width * s[d] for d, delta in enumerate((dx, dy, dz))]
        count += inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return count


def error_bound(unit, amplitude, tol, covering, dtype, condition=1.0):
    """The documented bound on |computed - exact| at every grid point.

    ``sum_i |a_i| min(tol, g_i)`` for the truncation, plus float rounding of
    ``(K + 8 + 6 kappa ln(1/tol)) eps sum_i |a_i| g_i``, with ``kappa`` (``condition``)
    the largest condition number of a covariance (1 for axis-aligned Gaussians); the
    reference's own float64 rounding is of the same form and is added once more.
    """
    magnitude = np.abs(amplitude)[:, None, None, None]
    truncation = np.sum(magnitude * np.minimum(tol, unit), axis=0)
    scale = np.sum(magnitude * unit, axis=0)
    exponent = 6 * condition * math.log(1 / tol)
    rounding = (covering + 8 + exponent) * np.finfo(dtype).eps / 2 * scale
    reference_rounding = (8 + exponent) * np.finfo(np.float64).eps / 2 * scale
    return truncation + rounding + reference_rounding + np.finfo(dtype).tiny
