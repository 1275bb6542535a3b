"""The lazy array: ``gaussian_sum`` builds a dask graph of one task per output block."""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, DTypeLike

from ._binning import Binning
from ._block import block_source_bytes, render_fed_block
from ._chunked import is_chunked, lazy_volume
from ._cluster import active_client
from ._grid import Grid
from ._plan import Request, plan, plan_chunked

__all__ = ["gaussian_sum"]


def _render_task(binning: Binning, index: tuple[int, int, int], dtype: str) -> np.ndarray:
    """One dask task: the block at ``index`` of the binned volume."""
    return render_fed_block(binning, index, dtype)


def gaussian_sum(
    centres: ArrayLike,
    sigma: ArrayLike | None,
    grid: Grid,
    *,
    covariance: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    normalize: str = "peak",
    tol: float = 1e-6,
    periodic: bool = False,
    chunks: object = None,
    dtype: DTypeLike = "float32",
    level: int = 0,
) -> da.Array:
    r"""The sum of 3D Gaussians sampled on a grid, as a lazy dask array.

    .. math::

        V(x) = \sum_i w_i N_i
               \exp\Big(-\tfrac12 \sum_d \big((x_d - c_{id}) / \sigma_{id}\big)^2\Big)

    or, with full covariances :math:`C_i`,
    :math:`V(x) = \sum_i w_i N_i \exp(-\tfrac12 (x - c_i)^T C_i^{-1} (x - c_i))`.

    Parameters
    ----------
    centres : array_like or dask array, shape (M, 3)
        Centre coordinates (coordinate units). Column ``d`` is output axis ``d``
        (x, y, z: the ``"ij"`` meshgrid convention). M = 0 gives zeros. Centres
        outside the grid count wherever their support reaches in. A dask array
        (from Zarr, Parquet, HDF5 ...) stays lazy: each chunk of rows is validated
        and binned by a task where it lives, which writes its Gaussians for the
        blocks they reach to a scratch directory (``daskgauss.scratch``); each block
        reads its own, so no process holds all centres and the graph holds chunks +
        blocks tasks; the values are the same bits as for the same centres in
        memory. Errors in the values then surface at compute time, naming the row.
        ``sigma``, ``weights`` and ``covariance`` may be dask arrays too.
    sigma : float or array_like, shape (M,), (M, 3) or (1, 3), or None
        Standard deviation (coordinate units): one for all, one per centre, one per
        centre and axis, or one anisotropic sigma for all. None when ``covariance``
        is given.
    grid : Grid
        Where to sample; see :class:`Grid`.
    covariance : array_like, shape (3, 3) or (M, 3, 3), optional
        Full covariances (coordinate units squared), one for all centres or one per
        centre, for Gaussians not aligned with the axes; pass ``sigma=None``. Each
        must be symmetric (to 1e-10 of its largest entry; the mean of it and its
        transpose is used) and positive definite. A diagonal covariance gives the
        same bits as the sigmas it holds. Each Gaussian then contributes inside the
        bounding box of its ``tol`` ellipsoid, ``|x_d - c_d| <= sqrt(C_dd)
        sqrt(2 ln(1/tol))``, and only where it is at least ``tol`` times its peak.
    weights : None, float or array_like, shape (M,), optional
        Weight ``w_i`` of each Gaussian, may be negative. None means 1.
    normalize : {"peak", "density"}
        ``"peak"``: ``N_i = 1``, each Gaussian peaks at its weight. ``"density"``:
        ``N_i = (2 pi)^(-3/2) / (sigma_x sigma_y sigma_z)``, or
        ``(2 pi)^(-3/2) det(C_i)^(-1/2)`` with covariances: each integrates to its weight.
    tol : float in (0, 1)
        Each Gaussian is cut where it falls below ``tol`` times its own peak: it
        contributes only inside the box ``|x_d - c_d| <= sigma_d sqrt(2 ln(1/tol))``
        (``truncate = sqrt(2 ln(1/tol))`` sigmas in scipy's terms; 1e-6 is 5.26
        sigmas), and rows of the box where it is below ``tol`` all along are skipped.
    periodic : bool
        Treat the grid as one tile of the periodic box
        ``[origin, origin + shape * spacing)`` on every axis: each Gaussian wraps
        around (use :meth:`Grid.from_box` for cell-centred periodic grids). A
        support box wider than the periodic box is refused.
    chunks : optional
        Output block shape, anything ``dask.array`` accepts. The values do not
        depend on it at all (bit for bit). Default: near-cubic blocks of about
        ``daskgauss.block-bytes`` (64 MiB, 256^3 in float32); a volume of fewer than
        8 such blocks is cut into x slabs of at least 4 MiB. The default depends on
        the grid, the dtype and dask.config only, never on the machine.
    dtype : {"float32", "float64"}
        Output dtype; Gaussians are summed in it.
    level : int
        Pyramid level: sample ``(i, j, k)`` is the mean of the ``2**level``-cubed
        grid samples it covers (at the far edges, of those that exist), on the grid
        ``grid.level(level)``, rendered from the Gaussians' 1D box means, never from
        level 0. The same bits as level ``level`` of a store :func:`render_to_zarr`
        writes with ``levels``. Axis-aligned Gaussians only. ``chunks`` then divide
        the level's shape.

    Returns
    -------
    dask.array.Array
        Shape ``grid.level(level).shape``. Nothing is computed until asked;
        computing a slice runs only the blocks it touches.

    Notes
    -----
    Error bound. With ``a_i = w_i N_i`` and ``g_i(x) <= 1`` the exact unweighted
    Gaussian ``i`` at ``x``, at every grid point

    .. math::

        |V_\text{computed}(x) - V(x)| \le \sum_i |a_i| \min(\text{tol}, g_i(x))
            + (K(x) + 8 + 6 \ln(1/\text{tol}))\,\varepsilon \sum_i |a_i| g_i(x)

    where the second term is float rounding: ``K(x)`` Gaussians are summed at
    ``x`` and ``eps`` is the unit roundoff of ``dtype`` (6e-8 in float32, 1.1e-16
    in float64). With covariances, ``6 ln(1/tol)`` becomes ``6 kappa ln(1/tol)``,
    ``kappa`` the largest condition number of a covariance. The rounding term assumes
    coordinates of the order of the grid's own extent from the origin: sample
    coordinates and centres are rounded to ``eps`` of their magnitude, so far from the
    origin (``|x| >> sigma``) add up to about ``2 sqrt(2 ln(1/tol)) (max|x| / sigma_min)
    eps sum_i |a_i| g_i(x)``; place the origin near the data. With ``periodic=True``
    the same bound holds against the minimum-image sum (each Gaussian at its nearest
    periodic image on each axis);
    the full lattice sum differs from that by at most
    ``sum_i |a_i| ((1 + tol')^3 - 1)`` with ``tol' = tol (1 + 3 tol^3)``, about 3 tol.

    Each block is computed only from the Gaussians whose support box intersects
    it, found by a binning done once when this function is called; the binned
    Gaussians enter the task graph once (one task every block depends on), never
    once per block. When a ``distributed.Client`` is active they are scattered to
    the cluster at this call instead (workers fetch them once each), so no large
    graph is sent.

    The classic formulation, ``linspace(-L/2, L/2, n)`` on every axis and
    ``sum_i (2 pi sigma^2)^(-1/2) exp(-|x - c_i|^2 / (2 sigma^2))``, is
    ``gaussian_sum(centres, sigma, Grid.from_bounds(-L/2, L/2, n),
    weights=1 / sqrt(2 pi sigma^2))``.

    Examples
    --------
    >>> import numpy as np, daskgauss as dg
    >>> grid = dg.Grid.from_bounds(-5, 5, 11)
    >>> volume = dg.gaussian_sum(np.zeros((1, 3)), 1.0, grid)
    >>> float(volume[5, 5, 5].compute())
    1.0
    >>> round(float(volume[6, 5, 5].compute()), 6)
    0.606531
    """
    request = Request(centres, sigma, grid, weights=weights, normalize=normalize, tol=tol,
                      periodic=periodic, chunks=chunks, dtype=dtype,
                      covariance=covariance)  # fmt: skip
    if is_chunked(centres, sigma, weights, covariance):
        chunked = plan_chunked(request, lazy=True, level=level)
        return lazy_volume(chunked.inputs, chunked.settings, chunked.dtype)
    block_source_bytes()  # a bad setting is refused now, not in every block's task
    job = plan(request, lazy=True, level=level)
    # One graph key holds the binning; every block task depends on it, so the
    # centres are in the graph (and on each worker) once, not once per block. On a
    # distributed cluster they are scattered to one worker now (workers fetch them
    # from there when first needed) rather than shipped inside the graph; the
    # future in the graph keeps them there for as long as the array exists. The
    # graph is written out directly: map_blocks took longer to build it than a
    # small volume takes to compute.
    client = active_client()
    shared = client.scatter(job.binning, hash=False) if client is not None else job.binning
    spec = job.spec
    token = spec.token if not level else f"{spec.token}-level{level}"
    binning_key = f"daskgauss-binning-{token}"
    name = f"gaussian-sum-{token}"
    layer: dict = {binning_key: shared}
    for index in np.ndindex(*job.binning.numblocks):
        layer[(name, *index)] = (_render_task, binning_key, index, spec.dtype)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    meta = np.empty((0, 0, 0), dtype=spec.dtype)
    return da.Array(graph, name, job.binning.chunks, meta=meta)
