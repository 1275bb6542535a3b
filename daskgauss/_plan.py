"""Planning: from what a user asked for to a validated, binned job and its spec.

Both front doors, the lazy array (``_lazy``) and the Zarr renderer (``_render``),
start here. A :class:`Request` carries the arguments the two share, unvalidated;
:func:`plan` validates all of them, chooses the blocks, bins the Gaussians once and
describes the job in a :class:`~daskgauss._job.JobSpec`.

Default blocks
--------------
Chosen from the grid, the dtype and dask.config alone, never from the machine, so
that a lazy array has the same chunks everywhere and a store started on a laptop
resumes on a cluster:

1. near-cubic blocks of about ``daskgauss.block-bytes`` (64 MiB: 256^3 float32),
   sides a multiple of 16, an axis shorter than the block side taken whole;
2. a volume of fewer than ``daskgauss.min-blocks`` (8) such blocks is cut into x
   slabs, halving them until it has that many or a slab would be smaller than
   ``daskgauss.smallest-split-bytes`` (4 MiB), so that small volumes still run on
   several cores and tiny ones are not cut into blocks that cost more in task
   overhead than they save.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import dask.config
import dask.utils
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from . import _config
from ._binning import Binning, bin_gaussians
from ._chunked import ChunkedInputs, ChunkSettings, chunked_inputs
from ._gaussians import (
    NORMALIZATIONS,
    Gaussians,
    check_sigma_or_covariance,
    checked_tol,
    prepare_gaussians,
)
from ._grid import Grid, checked_level
from ._job import Chunks, JobSpec

__all__ = [
    "ChunkedPlan",
    "Plan",
    "Request",
    "block_chunks",
    "build_executor",
    "build_threads",
    "check_lazy_blocks",
    "check_pyramid",
    "default_block_shape",
    "output_dtype",
    "plan",
    "plan_chunked",
]

# Default block sides are multiples of this, so that the kernel's slabs of planes
# (SLAB = 8) and vector rows fill them evenly.
_BLOCK_MULTIPLE = 16


@dataclass(frozen=True)
class Request:
    """The arguments :func:`~daskgauss.gaussian_sum` and :func:`~daskgauss.render_to_zarr`
    share, as the user gave them (see ``gaussian_sum`` for each). Validated by :func:`plan`.
    """

    centres: ArrayLike
    sigma: ArrayLike
    grid: Grid
    weights: ArrayLike | None = None
    normalize: str = "peak"
    tol: float = 1e-6
    periodic: bool = False
    chunks: object = None
    dtype: DTypeLike = "float32"
    covariance: ArrayLike | None = None
    # Dask-array centres read several stored chunks at a time: the stored chunks' sizes
    # (the job's fingerprint hashes each; see _chunked.chunked_inputs).
    pieces: tuple[int, ...] | None = None


@dataclass(frozen=True, eq=False)
class Plan:
    """A validated, binned job: what both the lazy array and the Zarr writer start from.

    Attributes
    ----------
    gaussians : Gaussians
    binning : Binning
    spec : JobSpec
        What decides the job's values; ``spec.token`` names it.
    """

    gaussians: Gaussians
    binning: Binning
    spec: JobSpec


def output_dtype(dtype: DTypeLike) -> np.dtype:
    """``dtype`` as a numpy dtype, if it is float32 or float64."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


def default_block_shape(shape: tuple[int, int, int], itemsize: int) -> tuple[int, int, int]:
    """The default block for a grid of ``shape`` and items of ``itemsize`` bytes.

    See the module docstring for the rule; it reads dask.config, nothing else.
    """
    block = _near_cubic_block(shape, itemsize)
    min_blocks = int(_config.get("min-blocks"))
    smallest = dask.utils.parse_bytes(_config.get("smallest-split-bytes"))
    blocks = _block_count(shape, block)
    while (
        blocks < min_blocks
        and block[0] > 1
        and math.ceil(block[0] / 2) * block[1] * block[2] * itemsize >= smallest
    ):
        block = (math.ceil(block[0] / 2), block[1], block[2])
        blocks = _block_count(shape, block)
    return block


def _block_count(shape: tuple[int, int, int], block: tuple[int, int, int]) -> int:
    return math.prod(math.ceil(n / b) for n, b in zip(shape, block, strict=True))


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
        chunks = default_block_shape(shape, dtype.itemsize)
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


def _check_grid_and_periodic(request: Request) -> bool:
    if not isinstance(request.grid, Grid):
        raise TypeError(
            f"grid must be a daskgauss.Grid (e.g. Grid.from_bounds(lower, upper, shape)), "
            f"got {type(request.grid).__name__}"
        )
    if not isinstance(request.periodic, bool | np.bool_):
        raise ValueError(f"periodic must be True or False, got {request.periodic!r}")
    return bool(request.periodic)


def check_lazy_blocks(chunks: Chunks, shape: tuple[int, int, int]) -> None:
    """Refuse a lazy array of more blocks than ``daskgauss.max-lazy-blocks``: its task graph
    would not fit in memory. Raised before anything of that size is allocated."""
    blocks = math.prod(len(sizes) for sizes in chunks)
    limit = int(_config.get("max-lazy-blocks"))
    if blocks > limit:
        block = tuple(sizes[0] for sizes in chunks)
        larger = tuple(min(n, 4 * b) for n, b in zip(shape, block, strict=True))
        fewer = math.prod(math.ceil(n / b) for n, b in zip(shape, larger, strict=True))
        raise ValueError(
            f"a grid of shape {shape} in blocks of {block} makes {blocks:,} blocks, more than a "
            f"lazy array can hold (daskgauss.max-lazy-blocks = {limit:,}: each block is a task "
            f"in memory). Give larger chunks (chunks={larger} makes {fewer:,}), or render to "
            "Zarr with render_to_zarr or `daskgauss render`, which handle any number of blocks."
        )


def check_pyramid(covariance: object) -> None:
    """Refuse pyramid levels for full covariances (``covariance`` not None): a box mean of
    a Gaussian that is not separable is not a product of 1D means."""
    if covariance is not None:
        raise ValueError(
            "pyramid levels are rendered from 1D box means of separable Gaussians; full "
            "covariances are not separable: render level 0 only (levels=None, level=0)"
        )


# Schedulers that run a graph on the calling thread alone.
_ONE_THREAD_SCHEDULERS = ("sync", "synchronous", "single-threaded")


def build_threads() -> int:
    """Threads that validate and bin Gaussians while a job is planned.

    ``daskgauss.build-threads``; ``auto``: one under dask's synchronous scheduler,
    else dask's ``num_workers`` where set, else the machine's cores. The binning
    does not depend on it.
    """
    if str(_config.get("build-threads")) != "auto":
        return _config.positive("build-threads", int,  # type: ignore[arg-type]
                                "'auto' or a whole number of at least 1")  # fmt: skip
    if dask.config.get("scheduler", None) in _ONE_THREAD_SCHEDULERS:
        return 1
    workers = dask.config.get("num_workers", None)
    return int(workers) if workers else os.cpu_count() or 1


@contextlib.contextmanager
def build_executor(threads: int) -> Iterator[ThreadPoolExecutor | None]:
    """A pool of ``threads`` threads for :func:`bin_gaussians`, or None for one."""
    if threads <= 1:
        yield None
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="daskgauss-build") as executor:
        yield executor


def plan(request: Request, *, lazy: bool = False, level: int = 0) -> Plan:
    """Validate every argument of a request, choose the blocks and bin the Gaussians.

    ``lazy``: the plan is for a lazy array, whose blocks are all tasks in memory:
    refuse more than ``daskgauss.max-lazy-blocks`` (:func:`check_lazy_blocks`).
    ``level``: bin the blocks of that pyramid level (``request.chunks`` then divide
    ``grid.level(level)``); the spec still describes level 0.

    Raises
    ------
    TypeError
        ``grid`` is not a :class:`Grid`.
    ValueError
        Anything else the user gave is not valid; the message names it.
    """
    grid = request.grid
    periodic = _check_grid_and_periodic(request)
    level = checked_level(level)
    threads = build_threads()
    gaussians = prepare_gaussians(
        request.centres,
        request.sigma,
        covariance=request.covariance,
        weights=request.weights,
        normalize=request.normalize,
        tol=request.tol,
    )
    if level:
        check_pyramid(gaussians.covariance)
    dtype = output_dtype(request.dtype)
    chunks = block_chunks(request.chunks, grid.shape, dtype)
    binned_shape = grid.level(level).shape
    binned_chunks = block_chunks(request.chunks, binned_shape, dtype) if level else chunks
    if lazy:
        check_lazy_blocks(binned_chunks, binned_shape)
    with build_executor(threads) as executor:
        # The centres are hashed on one thread while the others bin them.
        fingerprint = executor.submit(gaussians.fingerprint) if executor else None
        binning = bin_gaussians(gaussians, grid, binned_chunks, periodic=periodic, level=level,
                                executor=executor)  # fmt: skip
        if fingerprint is not None:
            fingerprint.result()
    sigma = gaussians.sigma
    amplitude = gaussians.amplitude
    spec = JobSpec(
        grid=grid,
        fingerprint=gaussians.fingerprint(),
        centres=gaussians.count,
        sigma_range=(float(sigma.min()), float(sigma.max()), float(sigma.mean()))
        if sigma.size
        else None,
        amplitude_range=(float(amplitude.min()), float(amplitude.max()))
        if amplitude.size
        else None,
        tol=gaussians.tol,
        normalize=request.normalize,
        periodic=periodic,
        dtype=dtype.name,
        chunks=chunks,
        covariance=gaussians.covariance is not None,
    )
    return Plan(gaussians, binning, spec)


@dataclass(frozen=True, eq=False)
class ChunkedPlan:
    """A request whose centres (or sigmas or weights) are dask arrays: checked as far as
    possible without reading them. Their values are validated, hashed and binned by
    tasks where the chunks live (:mod:`._chunked`).

    Attributes
    ----------
    inputs : ChunkedInputs
    settings : ChunkSettings
    dtype : numpy.dtype
    """

    inputs: ChunkedInputs
    settings: ChunkSettings
    dtype: np.dtype


def plan_chunked(request: Request, *, source: str = "centres", lazy: bool = False,
                 level: int = 0) -> ChunkedPlan:  # fmt: skip
    """Check a request with dask-array inputs, reading none of their data.

    ``source`` names the input in the messages of errors found in its values; ``lazy``
    and ``level`` as for :func:`plan` (``settings.chunks`` are the level's blocks).

    Raises
    ------
    TypeError, ValueError
        As :func:`plan`, for everything that can be checked without the values.
    """
    periodic = _check_grid_and_periodic(request)
    if request.normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {request.normalize!r}")
    tol = checked_tol(request.tol)
    level = checked_level(level)
    if level:
        check_pyramid(request.covariance)
    dtype = output_dtype(request.dtype)
    shape = request.grid.level(level).shape
    chunks = block_chunks(request.chunks, shape, dtype)
    if lazy:
        check_lazy_blocks(chunks, shape)
    check_sigma_or_covariance(request.sigma, request.covariance)
    inputs = chunked_inputs(request.centres, request.sigma, request.weights, request.covariance,
                            request.pieces)  # fmt: skip
    settings = ChunkSettings(request.grid, chunks, tol, request.normalize, periodic, source,
                             level)  # fmt: skip
    return ChunkedPlan(inputs, settings, dtype)
