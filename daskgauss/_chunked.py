"""Centres in chunks: dask-array inputs, validated and binned where the chunks live.

When the centres (or per-centre sigmas, covariances or weights) are dask arrays, no process holds
all of them. Each chunk of rows is validated and binned to the output blocks its
supports reach by a task of its own (the binning of :mod:`._binning`, per chunk,
keeping each pair's spatial key); one small task per (chunk, block) picks that
block's piece; each block's task merges its pieces in chunk order and sorts them
stably by key. That is the summation order of the in-memory path (by spatial key,
then by index), so the bits are the same. The graph holds chunks x blocks piece tasks
and grows with neither M nor the data; dask moves the pieces.

This module builds task graphs; it knows nothing of numba (the binning and the
kernels are called through :mod:`._binning` and :mod:`._block`) or of zarr.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import is_dask_collection, tokenize

from ._binning import (
    BlockSources,
    Piece,
    bin_gaussians,
    count_pairs,
    index_boxes,
    stable_order,
)
from ._block import render_block
from ._gaussians import Gaussians, prepare_gaussians
from ._grid import Grid
from ._job import Chunks

__all__ = [
    "ChunkSettings",
    "ChunkSummary",
    "ChunkedInputs",
    "block_tasks",
    "chunked_inputs",
    "is_chunked",
    "summaries",
]


def is_chunked(*values: object) -> bool:
    """Whether any of ``values`` is a dask collection."""
    return any(is_dask_collection(value) for value in values)


@dataclass(frozen=True)
class ChunkSettings:
    """What every chunk and block task needs to know (small: pickled into each task)."""

    grid: Grid
    chunks: Chunks
    tol: float
    normalize: str
    periodic: bool
    source: str
    # The pyramid level whose blocks ``chunks`` are (``grid`` is level 0's).
    level: int = 0

    @property
    def blocks(self) -> int:
        return math.prod(len(sizes) for sizes in self.chunks)


@dataclass(frozen=True, eq=False)
class ChunkedInputs:
    """Centres, sigmas, covariances and weights as row-aligned dask arrays (or values
    shared by all).

    Attributes
    ----------
    centres : dask.array.Array, shape (M, 3), float
        Chunked along rows only.
    sigma : dask.array.Array of shape (M,) or (M, 3) with the same row chunks, a
        numpy value shared by all (a number or shape (1, 3)), or None.
    weights : dask.array.Array of shape (M,) with the same row chunks, a number, or None.
    covariance : dask.array.Array of shape (M, 3, 3) with the same row chunks, a numpy
        value shared by all (shape (3, 3)), or None.
    """

    centres: da.Array
    sigma: Any
    weights: Any
    covariance: Any = None

    @property
    def count(self) -> int:
        return int(self.centres.shape[0])

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.centres.chunks[0])

    @property
    def first_rows(self) -> list[int]:
        return [0, *np.cumsum(self.row_chunks)[:-1].tolist()]

    def chunk_arguments(self) -> list[tuple[Any, Any, Any, Any, int]]:
        """Per chunk: (centres, sigma, covariance, weights, first row), dask objects or
        shared values."""
        centres = self.centres.to_delayed().ravel()
        sigma = _per_chunk(self.sigma, len(centres))
        covariance = _per_chunk(self.covariance, len(centres))
        weights = _per_chunk(self.weights, len(centres))
        return list(zip(centres, sigma, covariance, weights, self.first_rows, strict=True))

    def token(self) -> str:
        return tokenize(self.centres, self.sigma, self.covariance, self.weights)


def _per_chunk(value: Any, chunks: int) -> list[Any]:
    if is_dask_collection(value):
        return list(value.to_delayed().ravel())
    return [value] * chunks


def _aligned(value: Any, name: str, count: int, row_chunks: tuple, shapes: tuple,
             shared: tuple = ((1, 3),)) -> Any:  # fmt: skip
    """A per-centre ``value`` as a dask array with the centres' row chunks; shared ones
    (a number, or of a shape in ``shared``) as they are."""
    if value is None or np.ndim(value) == 0 or (np.shape(value) in shared):
        return value
    shape = tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
    if shape not in shapes:
        wanted = " or ".join(map(str, shapes))
        raise ValueError(
            f"{name} must be shared by all centres or one per centre ({wanted} for {count} "
            f"centres), got shape {shape}"
        )
    array = value if is_dask_collection(value) else da.from_array(np.asarray(value))
    if any(math.isnan(size) for axis in array.chunks for size in axis):
        raise ValueError(f"{name} has chunks of unknown size: call .compute_chunk_sizes() first")
    return array.rechunk((row_chunks, *(-1,) * (array.ndim - 1)))


def chunked_inputs(centres: Any, sigma: Any, weights: Any, covariance: Any = None
                   ) -> ChunkedInputs:  # fmt: skip
    """Check the shapes of chunked inputs (reading no data) and align their chunks.

    Raises
    ------
    ValueError
        Shapes that do not match, or chunks of unknown size.
    """
    centres = centres if is_dask_collection(centres) else da.from_array(np.asarray(centres))
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise ValueError(
            f"centres must have shape (M, 3), one x y z row per centre; got {centres.shape}"
        )
    if any(math.isnan(size) for size in centres.chunks[0]):
        raise ValueError(
            "centres have chunks of unknown size (e.g. from a dask dataframe): call "
            ".compute_chunk_sizes() on the array first"
        )
    if not np.issubdtype(centres.dtype, np.number) or np.issubdtype(
        centres.dtype, np.complexfloating
    ):
        raise ValueError(f"centres must be real numbers, got dtype {centres.dtype}")
    centres = centres.rechunk((centres.chunks[0], 3))
    count = int(centres.shape[0])
    rows = tuple(int(size) for size in centres.chunks[0])
    return ChunkedInputs(
        centres=centres,
        sigma=_aligned(sigma, "sigma", count, rows, ((count,), (count, 3))),
        weights=_aligned(weights, "weights", count, rows, ((count,),)),
        covariance=_aligned(covariance, "covariance", count, rows, ((count, 3, 3),),
                            shared=((3, 3), (1, 3, 3))),
    )  # fmt: skip


def _gaussians(centres, sigma, covariance, weights, first_row: int, settings: ChunkSettings
               ) -> Gaussians:  # fmt: skip
    try:
        return prepare_gaussians(np.asarray(centres), sigma, covariance=covariance,
                                 weights=weights, normalize=settings.normalize, tol=settings.tol,
                                 first_row=first_row)  # fmt: skip
    except ValueError as error:
        raise ValueError(f"{settings.source}: {error}") from None


@dataclass(frozen=True)
class ChunkSummary:
    """What pass 1 learns of one chunk: its hash, statistics and pairs per block."""

    digest: str
    count: int
    sigma_min: float
    sigma_max: float
    sigma_sum: float
    amplitude_min: float
    amplitude_max: float
    # Pairs per block of the chunk's settings' level, then of each further level asked for.
    pairs: tuple[np.ndarray, ...]


def _summarise(centres, sigma, covariance, weights, first_row: int, settings: ChunkSettings,
               levels: tuple[ChunkSettings, ...] = ()) -> ChunkSummary:  # fmt: skip
    """Validate one chunk, hash it and count its (Gaussian, block) pairs per block, of
    ``settings``' blocks and of each pyramid level's in ``levels``."""
    gaussians = _gaussians(centres, sigma, covariance, weights, first_row, settings)
    sigma_values = np.broadcast_to(gaussians.sigma, (gaussians.count, 3)) if gaussians.count else (
        np.zeros((0, 3)))  # fmt: skip
    amplitude = gaussians.amplitude
    empty = gaussians.count == 0
    return ChunkSummary(
        digest=gaussians.fingerprint(),
        count=gaussians.count,
        sigma_min=math.inf if empty else float(gaussians.sigma.min()),
        sigma_max=-math.inf if empty else float(gaussians.sigma.max()),
        sigma_sum=float(sigma_values.sum()),
        amplitude_min=math.inf if empty else float(amplitude.min()),
        amplitude_max=-math.inf if empty else float(amplitude.max()),
        pairs=tuple(
            count_pairs(gaussians, level.grid, level.chunks, level.periodic, level.level)
            for level in (settings, *levels)
        ),
    )


def _chunk_tasks(inputs: ChunkedInputs, settings: ChunkSettings, function: Callable, name: str,
                 *extra: Any) -> list[Any]:  # fmt: skip
    """``function(centres, sigma, covariance, weights, first_row, settings, *extra)`` as a
    task per chunk."""
    token = tokenize(inputs.token(), settings, name, *extra)
    return [
        dask.delayed(function, pure=True)(*arguments, settings, *extra,
                                          dask_key_name=f"{name}-{token}-{number}")
        for number, arguments in enumerate(inputs.chunk_arguments())
    ]  # fmt: skip


def summaries(inputs: ChunkedInputs, settings: ChunkSettings,
              levels: tuple[ChunkSettings, ...] = ()) -> list[Any]:  # fmt: skip
    """Pass 1, as delayed tasks: one :class:`ChunkSummary` per chunk (with the pairs of
    each pyramid level's settings in ``levels``)."""
    return _chunk_tasks(inputs, settings, _summarise, "daskgauss-summary", levels)


def fingerprint(parts: list[ChunkSummary]) -> str:
    """The job's fingerprint: a SHA-256 over the chunks' own (in row order)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.count}:{part.digest};".encode())
    return digest.hexdigest()


def _bin_chunk(centres, sigma, covariance, weights, first_row: int, settings: ChunkSettings):
    gaussians = _gaussians(centres, sigma, covariance, weights, first_row, settings)
    return bin_gaussians(gaussians, settings.grid, settings.chunks, periodic=settings.periodic,
                         level=settings.level)  # fmt: skip


def _piece(binning, flat: int) -> Piece:
    """Block ``flat``'s sources of one chunk's binning, with their spatial keys."""
    return binning.block_piece(tuple(int(i) for i in np.unravel_index(flat, binning.numblocks)))


def merge(pieces: tuple[Piece, ...], settings: ChunkSettings) -> BlockSources:
    """A block's sources from its pieces (in chunk order), in summation order.

    A stable sort by spatial key of the pieces laid end to end in chunk order gives
    the order (key, then index over the whole input): the in-memory path's.
    """
    counts = [len(piece[0]) for piece in pieces]
    keys = np.concatenate([piece[3] for piece in pieces])
    order = stable_order(keys)

    def joined(column: int) -> np.ndarray:
        parts = [np.broadcast_to(piece[column], (count, *piece[column].shape[1:]))
                 if len(piece[column]) == 1 else piece[column]
                 for piece, count in zip(pieces, counts, strict=True)]  # fmt: skip
        return np.concatenate(parts).take(order, axis=0) if parts else np.empty((0,))

    positions = joined(0).reshape(-1, 3)
    sigma = np.ascontiguousarray(joined(1).reshape(-1, 3))
    amplitude = np.ascontiguousarray(joined(2))
    covariance = None
    if pieces and pieces[0][4] is not None:
        covariance = np.ascontiguousarray(joined(4).reshape(-1, 6))
    index_low, index_high = index_boxes(positions, sigma, settings.grid, settings.tol)
    return BlockSources(positions, sigma, amplitude, index_low, index_high, covariance)


def _render(settings: ChunkSettings, dtype: str, index: tuple, *pieces: Piece) -> np.ndarray:
    grid = settings.grid
    start = np.array([sum(settings.chunks[d][: index[d]]) for d in range(3)], np.int64)
    shape = tuple(settings.chunks[d][index[d]] for d in range(3))
    return render_block(merge(pieces, settings), grid, settings.tol, start, shape, dtype,
                        level=settings.level)  # fmt: skip


def block_tasks(
    inputs: ChunkedInputs,
    settings: ChunkSettings,
    blocks: list[tuple[int, int, int]],
    finish: Callable[..., Any],
    finish_arguments: tuple,
    name: str,
) -> dict[tuple[int, int, int], Any]:
    """Delayed tasks, one per block of ``blocks``: ``finish(*finish_arguments, index,
    sources)`` with the block's merged sources; the binning of each chunk is shared.
    """
    token = tokenize(inputs.token(), settings, blocks, name)
    binned = _chunk_tasks(inputs, settings, _bin_chunk, "daskgauss-chunk-bins")
    numblocks = tuple(len(sizes) for sizes in settings.chunks)
    tasks = {}
    for index in blocks:
        flat = int(np.ravel_multi_index(index, numblocks))
        pieces = [
            dask.delayed(_piece, pure=True)(
                chunk, flat, dask_key_name=f"daskgauss-piece-{token}-{number}-{flat}"
            )
            for number, chunk in enumerate(binned)
        ]
        tasks[index] = dask.delayed(finish, pure=True)(
            *finish_arguments, index, *pieces,
            dask_key_name=f"{name}-{token}-{index[0]}-{index[1]}-{index[2]}",
        )  # fmt: skip
    return tasks


def lazy_volume(inputs: ChunkedInputs, settings: ChunkSettings, dtype: np.dtype) -> da.Array:
    """The volume of chunked inputs as a lazy dask array: blocks computed from pieces."""
    numblocks = tuple(len(sizes) for sizes in settings.chunks)
    blocks = [tuple(int(i) for i in index) for index in np.ndindex(*numblocks)]
    tasks = block_tasks(inputs, settings, blocks, _render, (settings, dtype.str),
                        "daskgauss-chunked-block")  # fmt: skip
    arrays = np.empty(numblocks, dtype=object)
    for index, task in tasks.items():
        shape = tuple(settings.chunks[d][index[d]] for d in range(3))
        arrays[index] = da.from_delayed(task, shape=shape, dtype=dtype)
    return da.block(arrays.tolist())
