"""The two implementations users come to daskgauss from, written as they usually are.

Both compute the classic formulation: ``linspace(-side/2, side/2, n)`` on every axis and
``sum_i 1/sqrt(2 pi sigma^2) exp(-|x - c_i|^2 / (2 sigma^2))``. They are baselines for the
benchmarks, deliberately kept independent of the package.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


def meshgrid_loop(centres: np.ndarray, sigma: float, axis: np.ndarray) -> np.ndarray:
    """Per-centre loop over a flattened meshgrid: the formulation in most notebooks.

    Parameters
    ----------
    centres : ndarray, shape (M, 3)
    sigma : float
    axis : ndarray, shape (n,)
        Sample coordinates, the same on every axis.

    Returns
    -------
    ndarray, shape (n, n, n), float64
    """
    x, y, z = (a.ravel() for a in np.meshgrid(axis, axis, axis, indexing="ij"))
    volume = np.zeros(x.size)
    norm = 1.0 / math.sqrt(2.0 * math.pi * sigma**2)
    for cx, cy, cz in centres:
        volume += norm * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    n = axis.size
    return volume.reshape(n, n, n)


def kdtree_slabs(
    centres: np.ndarray, sigma: float, axis: np.ndarray, radius: float, slab: int = 16
) -> np.ndarray:
    """KD-tree pairs within ``radius``, grid processed in x slabs to bound memory.

    Parameters
    ----------
    centres : ndarray, shape (M, 3)
    sigma : float
    axis : ndarray, shape (n,)
    radius : float
        Cut-off distance (coordinate units).
    slab : int
        Number of x planes per KD-tree over grid points.

    Returns
    -------
    ndarray, shape (n, n, n), float64
    """
    n = axis.size
    volume = np.zeros((n, n, n))
    norm = 1.0 / math.sqrt(2.0 * math.pi * sigma**2)
    centre_tree = cKDTree(centres)
    for start in range(0, n, slab):
        stop = min(start + slab, n)
        points = np.stack(
            [a.ravel() for a in np.meshgrid(axis[start:stop], axis, axis, indexing="ij")], axis=1
        )
        grid_tree = cKDTree(points)
        pairs = grid_tree.sparse_distance_matrix(centre_tree, radius, output_type="coo_matrix")
        values = norm * np.exp(-(pairs.data**2) / (2 * sigma**2))
        slab_values = np.bincount(pairs.row, weights=values, minlength=points.shape[0])
        volume[start:stop] = slab_values.reshape(stop - start, n, n)
    return volume
