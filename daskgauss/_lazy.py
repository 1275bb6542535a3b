"""The lazy array: ``gaussian_sum`` builds a dask graph of one task per output block."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass

import dask
import dask.array as da
import numpy as np
from dask.highlevelgraph import HighLevelGraph
from numpy.typing import ArrayLike, DTypeLike

from . import _config
from ._binning import Binning, Chunks, bin_gaussians
from ._block import render_block
from ._cluster import active_client
from ._gaussians import Gaussians, prepare_gaussians
from ._grid import Grid

__all__ = ["Plan", "block_chunks", "gaussian_sum", "output_dtype", "plan"]

# Default block sides are multiples of this, so that the kernel's slabs of planes
# (SLAB = 8) and vector rows fill them evenly.
_BLOCK_MULTIPLE = 16
# Below this a block's task overhead outweighs splitting it across cores.
_SMALLEST_SPLIT_BYTES = 2**20


def output_dtype(dtype: DTypeLike) -> np.dtype:
    """``dtype`` as a numpy dtype, if it is float32 or float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def _default_block_shape(shape: tuple[int, int, int], itemsize: int) -> tuple[int, int, int]:
    """Near-cubic blocks of about ``daskgauss.block-bytes``; short axes are taken whole.

    A volume of fewer blocks than cores is cut into x slabs, one per core, down to
    ``_SMALLEST_SPLIT_BYTES`` a slab: a 256^3 float32 sum of 10^4 Gaussians took
    131 ms as one block and 98 ms as two on two cores, the cost of joining them
    included.
    """
    block = _near_cubic_block(shape, itemsize)
    cores = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    blocks = math.prod(math.ceil(n / b) for n, b in zip(shape, block, strict=True))
    while (
        blocks < cores
        and block[0] > 1
        and math.ceil(block[0] / 2) * block[1] * block[2] * itemsize >= _SMALLEST_SPLIT_BYTES
    ):
        block = (math.ceil(block[0] / 2), block[1], block[2])
        blocks = math.prod(math.ceil(n / b) for n, b in zip(shape, block, strict=True))
    return block


def _near_cubic_block(shape: tuple[int, int, int], itemsize: int) -> tuple[int, int, int]:
    budget = dask.utils.parse_bytes(_config.get("block-bytes")) / itemsize
    block = [0, 0, 0]
    remaining = sorted(range(3), key=lambda d: shape[d])
    while remaining:
        # The small excess keeps exact powers (64 MiB / 4 B = 256^3) from rounding down.
        side = budget ** (1 / len(remaining)) * (1 + 1e-9)
        axis = remaining.pop(0)
        if shape[axis] <= side:
            block[axis] = shape[axis]
        else:
            block[axis] = max(_BLOCK_MULTIPLE, int(side) // _BLOCK_MULTIPLE * _BLOCK_MULTIPLE)
            block[axis] = min(block[axis], shape[axis])
        budget /= block[axis]
    return tuple(block)  # type: ignore[return-value]


def block_chunks(chunks: object, shape: tuple[int, int, int], dtype: np.dtype) -> Chunks:
    """Normalise ``chunks`` (anything dask accepts, or None for the default) for ``shape``."""
    if chunks is None:
        chunks = _default_block_shape(shape, dtype.itemsize)
    try:
        if _is_block_shape(chunks):
            normalised = _normalize_block_shape(chunks, shape, dtype)
        else:
            normalised = da.core.normalize_chunks(chunks, shape=shape, dtype=dtype)
    except (ValueError, TypeError, IndexError) as error:
        raise ValueError(
            f"chunks {chunks!r} do not fit a grid of shape {shape}: {error}. Give one block "
            "size per axis (e.g. 128 or (128, 128, 64)), explicit sizes per axis that sum to "
            "the shape, or 'auto'."
        ) from None
    if len(normalised) != 3 or any(size < 1 for axis in normalised for size in axis):
        raise ValueError(f"chunks {chunks!r} must give positive block sizes on all three axes")
    return normalised  # type: ignore[return-value]


def _is_block_shape(chunks: object) -> bool:
    """Whether ``chunks`` is one block side or a tuple of them: a cacheable form."""
    sides = chunks if isinstance(chunks, tuple) else (chunks,)
    return all(isinstance(side, int) and not isinstance(side, bool) for side in sides)


@functools.lru_cache(maxsize=64)
def _normalize_block_shape(
    block_shape: int | tuple[int, ...], shape: tuple[int, int, int], dtype: np.dtype
) -> Chunks:
    # dask's normalisation takes longer than binning a thousand Gaussians does.
    return da.core.normalize_chunks(block_shape, shape=shape, dtype=dtype)


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated, binned job: what both the lazy array and the Zarr writer start from.

    Attributes
    ----------
    gaussians : Gaussians
    binning : Binning
    dtype : numpy.dtype
    periodic : bool
    token : str
        Identifies the job: equal inputs, equal token.
    """

    gaussians: Gaussians
    binning: Binning
    dtype: np.dtype
    periodic: bool
    token: str


def plan(
    centres: ArrayLike,
    sigma: ArrayLike,
    grid: Grid,
    *,
    weights: ArrayLike | None = None,
    normalize: str = "peak",
    tol: float = 1e-6,
    periodic: bool = False,
    chunks: object = None,
    dtype: DTypeLike = "float32",
) -> Plan:
    """Validate every argument of :func:`gaussian_sum` and bin the Gaussians."""
    if not isinstance(grid, Grid):
        raise TypeError(
            f"grid must be a daskgauss.Grid (e.g. Grid.from_bounds(lower, upper, shape)), "
            f"got {type(grid).__name__}"
        )
    if not isinstance(periodic, bool | np.bool_):
        raise ValueError(f"periodic must be True or False, got {periodic!r}")
    gaussians = prepare_gaussians(centres, sigma, weights=weights, normalize=normalize, tol=tol)
    resolved = output_dtype(dtype)
    normalised = block_chunks(chunks, grid.shape, resolved)
    binning = bin_gaussians(gaussians, grid, normalised, periodic=bool(periodic))
    # repr of floats round-trips exactly, so equal jobs, and only they, share a token.
    job = (gaussians.fingerprint(), grid, normalised, bool(periodic), resolved.str)
    token = hashlib.sha256(repr(job).encode()).hexdigest()[:32]
    return Plan(gaussians, binning, resolved, bool(periodic), token)


def _render_task(binning: Binning, index: tuple[int, int, int], dtype: str) -> np.ndarray:
    """One dask task: the block at ``index`` of the binned volume."""
    return render_block(
        binning.block_sources(index),
        binning.grid,
        binning.tol,
        binning.block_start(index),
        binning.block_shape(index),
        dtype,
    )


def gaussian_sum(
    centres: ArrayLike,
    sigma: ArrayLike,
    grid: Grid,
    *,
    weights: ArrayLike | None = None,
    normalize: str = "peak",
    tol: float = 1e-6,
    periodic: bool = False,
    chunks: object = None,
    dtype: DTypeLike = "float32",
) -> da.Array:
    r"""The sum of 3D Gaussians sampled on a grid, as a lazy dask array.

    .. math::

        V(x) = \sum_i w_i N_i
               \exp\Big(-\tfrac12 \sum_d \big((x_d - c_{id}) / \sigma_{id}\big)^2\Big)

    Parameters
    ----------
    centres : array_like, shape (M, 3)
        Centre coordinates (coordinate units). Column ``d`` is output axis ``d``
        (x, y, z: the ``"ij"`` meshgrid convention). M = 0 gives zeros. Centres
        outside the grid count wherever their support reaches in.
    sigma : float or array_like, shape (M,), (M, 3) or (1, 3)
        Standard deviation (coordinate units): one for all, one per centre, one per
        centre and axis, or one anisotropic sigma for all.
    grid : Grid
        Where to sample; see :class:`Grid`.
    weights : None, float or array_like, shape (M,), optional
        Weight ``w_i`` of each Gaussian, may be negative. None means 1.
    normalize : {"peak", "density"}
        ``"peak"``: ``N_i = 1``, each Gaussian peaks at its weight. ``"density"``:
        ``N_i = (2 pi)^(-3/2) / (sigma_x sigma_y sigma_z)``, each integrates to its weight.
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
        ``daskgauss.block-bytes`` (64 MiB, 256^3 in float32).
    dtype : {"float32", "float64"}
        Output dtype; Gaussians are summed in it.

    Returns
    -------
    dask.array.Array
        Shape ``grid.shape``. Nothing is computed until asked; computing a slice
        runs only the blocks it touches.

    Notes
    -----
    Error bound. With ``a_i = w_i N_i`` and ``g_i(x) <= 1`` the exact unweighted
    Gaussian ``i`` at ``x``, at every grid point

    .. math::

        |V_\text{computed}(x) - V(x)| \le \sum_i |a_i| \min(\text{tol}, g_i(x))
            + (K(x) + 8 + 6 \ln(1/\text{tol}))\,\varepsilon \sum_i |a_i| g_i(x)

    where the second term is float rounding: ``K(x)`` Gaussians are summed at
    ``x`` and ``eps`` is the unit roundoff of ``dtype`` (6e-8 in float32, 1.1e-16
    in float64). With ``periodic=True`` the same bound holds against the
    minimum-image sum (each Gaussian at its nearest periodic image on each axis);
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
    job = plan(
        centres,
        sigma,
        grid,
        weights=weights,
        normalize=normalize,
        tol=tol,
        periodic=periodic,
        chunks=chunks,
        dtype=dtype,
    )
    # One graph key holds the binning; every block task depends on it, so the
    # centres are in the graph (and on each worker) once, not once per block. On a
    # distributed cluster they are scattered to one worker now (workers fetch them
    # from there when first needed) rather than shipped inside the graph; the
    # future in the graph keeps them there for as long as the array exists. The
    # graph is written out directly: map_blocks took longer to build it than a
    # small volume takes to compute.
    client = active_client()
    shared = client.scatter(job.binning, hash=False) if client is not None else job.binning
    binning_key = f"daskgauss-binning-{job.token}"
    name = f"gaussian-sum-{job.token}"
    layer: dict = {binning_key: shared}
    for index in np.ndindex(*job.binning.numblocks):
        layer[(name, *index)] = (_render_task, binning_key, index, job.dtype.str)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=())
    return da.Array(graph, name, job.binning.chunks, meta=np.empty((0, 0, 0), dtype=job.dtype))
