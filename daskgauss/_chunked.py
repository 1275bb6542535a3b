"""Centres in chunks: dask-array inputs, validated, binned and exchanged where they live.

When the centres (or per-centre sigmas, covariances or weights) are dask arrays, no
process holds all of them. Each chunk of rows is validated and binned to the output
blocks its supports reach by a task of its own, which writes the chunk's (Gaussian,
block) pairs, grouped by block, as one part of an exchange in storage
(:mod:`._exchange`): the store of a render, or a lazy array's scratch directory
(:mod:`._scratch`). One task writes the exchange's index once every part is there;
each block's task reads its own pairs and renders. So the graph holds chunks + blocks
+ 1 tasks beyond the inputs' own, whatever the data and however many (chunk, block)
pairs hold Gaussians: pairs are rows in storage, not tasks, and a (chunk, block) pair
without a Gaussian is not even a row of the index.

The bits are the in-memory path's: within a part, a block's pairs are in summation
order; parts are read in chunk order, and a stable sort by spatial key of the rows
laid end to end gives the order by key, then index over the whole input, whatever the
chunking of the centres, the number of workers or the order tasks finish in.

A render first checks every chunk (its values, its hash, its pairs per block; the
results combined through a tree, so that only the totals reach the client), then runs
the exchange, then the blocks: :mod:`._render` runs each phase. This module builds the
tasks; it knows nothing of numba or zarr.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from dask.base import is_dask_collection, tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from . import _config
from ._binning import bin_gaussians, count_pairs
from ._block import render_fed_block
from ._exchange import Exchange, ExchangedSources, PartSummary
from ._gaussians import Gaussians, prepare_gaussians
from ._grid import Grid
from ._job import Blocks, Chunks
from ._pairs import block_pairs

__all__ = [
    "ChunkSettings",
    "ChunkedInputs",
    "InputSummary",
    "chunked_inputs",
    "combine_summaries",
    "fingerprint",
    "is_chunked",
    "lazy_volume",
    "part_tasks",
    "summary_tasks",
    "write_index",
]

# Chunk summaries combined this many at a time on their way to the client.
SUMMARY_FAN_IN = 32


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
    def blocks(self) -> Blocks:
        return Blocks(self.chunks)


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
    # Per chunk, the sizes of the chunks as given that it was merged from (the job's
    # fingerprint hashes those, so that it does not depend on the merging).
    pieces: tuple[tuple[int, ...], ...] = ()

    @property
    def count(self) -> int:
        return int(self.centres.shape[0])

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(int(size) for size in self.centres.chunks[0])

    @property
    def first_rows(self) -> list[int]:
        return [0, *np.cumsum(self.row_chunks)[:-1].tolist()]

    @property
    def collections(self) -> list[da.Array]:
        values = (self.centres, self.sigma, self.covariance, self.weights)
        return [value for value in values if is_dask_collection(value)]

    def chunk_arguments(self) -> list[tuple[Any, Any, Any, Any, int]]:
        """Per chunk: (centres, sigma, covariance, weights, first row), each the graph key
        of the chunk or a value shared by all."""
        chunks = len(self.row_chunks)
        columns = [
            list(flatten(value.__dask_keys__())) if is_dask_collection(value) else [value] * chunks
            for value in (self.centres, self.sigma, self.covariance, self.weights)
        ]
        return list(zip(*columns, self.first_rows, strict=True))

    def token(self) -> str:
        return tokenize(self.centres, self.sigma, self.covariance, self.weights)


def _aligned(
    value: Any, name: str, count: int, row_chunks: tuple, shapes: tuple, shared: tuple = ((1, 3),)
) -> Any:
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


def merged_row_chunks(row_chunks: tuple[int, ...], minimum: int) -> tuple[tuple[int, ...], ...]:
    """Row chunks with consecutive ones read together until each holds at least ``minimum``
    rows (a smaller last one holds what is left), as the sizes each merged chunk is made
    of: every chunk costs a task in each phase and a range read per block it reaches, so
    thousands of small chunks would cost more than their rows."""
    merged: list[tuple[int, ...]] = []
    run: list[int] = []
    for size in row_chunks:
        run.append(size)
        if sum(run) >= minimum:
            merged.append(tuple(run))
            run = []
    if run or not merged:
        merged.append(tuple(run))
    return tuple(merged)


def _pieces_of(stored: tuple[int, ...], rows: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The stored pieces each chunk of ``rows`` rows is made of (chunks are runs of pieces)."""
    grouped: list[tuple[int, ...]] = []
    remaining = iter(stored)
    for size in rows:
        run: list[int] = []
        while sum(run) < size:
            run.append(next(remaining))
        if sum(run) != size:
            raise ValueError(f"chunks of {rows} rows do not follow the stored pieces {stored}")
        grouped.append(tuple(run) or (0,))
    return tuple(grouped)


def chunked_inputs(
    centres: Any,
    sigma: Any,
    weights: Any,
    covariance: Any = None,
    pieces: tuple[int, ...] | None = None,
) -> ChunkedInputs:
    """Check the shapes of chunked inputs (reading no data) and align their chunks:
    small consecutive chunks of rows merged (:func:`merged_row_chunks`, at least
    ``daskgauss.chunk-rows`` rows each), every input cut in the centres' row chunks.

    ``pieces``: the sizes of the chunks the centres are stored in, where the dask arrays
    read several at a time (each dask chunk a run of them); the job's fingerprint hashes
    each piece, so that it does not depend on how they are read. Default: the dask chunks.

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
    given = tuple(int(size) for size in centres.chunks[0])
    rows = tuple(sum(sizes) for sizes in merged_row_chunks(given, _config.chunk_rows()))
    pieces = _pieces_of(given if pieces is None else tuple(pieces), rows)
    centres = centres.rechunk((rows, 3))
    count = int(centres.shape[0])
    return ChunkedInputs(
        centres=centres,
        sigma=_aligned(sigma, "sigma", count, rows, ((count,), (count, 3))),
        weights=_aligned(weights, "weights", count, rows, ((count,),)),
        covariance=_aligned(
            covariance, "covariance", count, rows, ((count, 3, 3),), shared=((3, 3), (1, 3, 3))
        ),
        pieces=pieces,
    )


def _gaussians(
    centres, sigma, covariance, weights, first_row: int, settings: ChunkSettings
) -> Gaussians:
    try:
        return prepare_gaussians(
            np.asarray(centres),
            sigma,
            covariance=covariance,
            weights=weights,
            normalize=settings.normalize,
            tol=settings.tol,
            first_row=first_row,
        )
    except ValueError as error:
        raise ValueError(f"{settings.source}: {error}") from None


@dataclass(frozen=True)
class InputSummary:
    """What checking a run of consecutive chunks learns: hashes, statistics, pairs.

    Attributes
    ----------
    digests : tuple of str
        Each chunk's SHA-256 (:meth:`Gaussians.fingerprint`), in row order.
    counts : tuple of int
        Each chunk's rows.
    sigma_min, sigma_max, sigma_sum : float
        Over every Gaussian and axis (the sum for the mean).
    amplitude_min, amplitude_max : float
    pairs : tuple of ndarray
        (Gaussian, block) pairs per block (flat, int64) of the settings' level, then
        of each further level asked for.
    """

    digests: tuple[str, ...]
    counts: tuple[int, ...]
    sigma_min: float
    sigma_max: float
    sigma_sum: float
    amplitude_min: float
    amplitude_max: float
    pairs: tuple[np.ndarray, ...]

    @property
    def count(self) -> int:
        return sum(self.counts)


def _summarise(
    centres,
    sigma,
    covariance,
    weights,
    first_row: int,
    settings: ChunkSettings,
    levels: tuple[ChunkSettings, ...],
    pieces: tuple[int, ...],
    per_row: tuple[bool, bool, bool],
) -> InputSummary:
    """Validate one chunk, hash it and count its (Gaussian, block) pairs per block, of
    ``settings``' blocks and of each pyramid level's in ``levels``: piece by piece, the
    chunks as given that it was merged from (``pieces``, their sizes); ``per_row`` says
    which of sigma, covariance and weights are per centre (the others shared by all)."""
    parts = []
    start = 0
    for size in pieces:
        rows = slice(start, start + size)
        values = [
            value[rows] if cut else value
            for value, cut in zip((sigma, covariance, weights), per_row, strict=True)
        ]
        parts.append(_summarise_piece(centres[rows], *values, first_row + start, settings, levels))
        start += size
    return combine_summaries(*parts)


def _summarise_piece(
    centres,
    sigma,
    covariance,
    weights,
    first_row: int,
    settings: ChunkSettings,
    levels: tuple[ChunkSettings, ...],
) -> InputSummary:
    gaussians = _gaussians(centres, sigma, covariance, weights, first_row, settings)
    empty = gaussians.count == 0
    sigma_values = (
        np.broadcast_to(gaussians.sigma, (gaussians.count, 3)) if not empty else (np.zeros((0, 3)))
    )
    amplitude = gaussians.amplitude
    return InputSummary(
        digests=(gaussians.fingerprint(),),
        counts=(gaussians.count,),
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


def combine_summaries(*parts: InputSummary) -> InputSummary:
    """The summary of consecutive runs of chunks, given in row order."""
    return InputSummary(
        digests=tuple(digest for part in parts for digest in part.digests),
        counts=tuple(count for part in parts for count in part.counts),
        sigma_min=min(part.sigma_min for part in parts),
        sigma_max=max(part.sigma_max for part in parts),
        sigma_sum=sum(part.sigma_sum for part in parts),
        amplitude_min=min(part.amplitude_min for part in parts),
        amplitude_max=max(part.amplitude_max for part in parts),
        pairs=tuple(np.sum(level, axis=0) for level in zip(*(p.pairs for p in parts), strict=True)),
    )


def fingerprint(summary: InputSummary) -> str:
    """The job's fingerprint: a SHA-256 over the chunks' own (in row order)."""
    digest = hashlib.sha256()
    for count, chunk in zip(summary.counts, summary.digests, strict=True):
        digest.update(f"{count}:{chunk};".encode())
    return digest.hexdigest()


def _chunk_graph(inputs: ChunkedInputs, name: str, tasks: dict[int, tuple]) -> HighLevelGraph:
    """A graph of the inputs and one layer ``name`` of ``tasks``, keyed ``(name, chunk)``."""
    layer = {(name, number): task for number, task in tasks.items()}
    return HighLevelGraph.from_collections(name, layer, dependencies=inputs.collections)


def summary_tasks(
    inputs: ChunkedInputs, settings: ChunkSettings, levels: tuple[ChunkSettings, ...] = ()
) -> list[Delayed]:
    """The checking phase: one :class:`InputSummary` per chunk (with the pairs of each
    pyramid level's settings in ``levels``), as delayed tasks; combine them with
    :func:`combine_summaries`."""
    name = f"daskgauss-check-{tokenize(inputs.token(), settings, levels)}"
    per_row = tuple(
        is_dask_collection(v) for v in (inputs.sigma, inputs.covariance, inputs.weights)
    )
    tasks = {
        number: (_summarise, *arguments, settings, levels, pieces, per_row)
        for number, (arguments, pieces) in enumerate(
            zip(inputs.chunk_arguments(), inputs.pieces, strict=True)
        )
    }
    graph = _chunk_graph(inputs, name, tasks)
    return [Delayed((name, number), graph, layer=name) for number in tasks]


def _write_part(
    centres,
    sigma,
    covariance,
    weights,
    first_row: int,
    settings: ChunkSettings,
    exchange: Exchange,
    number: int,
) -> PartSummary:
    """One chunk's task in the exchange: validate, bin, write its part."""
    gaussians = _gaussians(centres, sigma, covariance, weights, first_row, settings)
    binning = bin_gaussians(
        gaussians, settings.grid, settings.chunks, periodic=settings.periodic, level=settings.level
    )
    return exchange.write_part(number, block_pairs(binning))


def _part_layer(
    inputs: ChunkedInputs,
    settings: ChunkSettings,
    exchange: Exchange,
    present: frozenset[int] | set[int],
) -> tuple[str, dict]:
    name = f"daskgauss-part-{tokenize(inputs.token(), settings, exchange.root)}"
    layer = {}
    for number, arguments in enumerate(inputs.chunk_arguments()):
        if number in present:
            layer[(name, number)] = (exchange.read_part_summary, number)
        else:
            layer[(name, number)] = (_write_part, *arguments, settings, exchange, number)
    return name, layer


def part_tasks(
    inputs: ChunkedInputs,
    settings: ChunkSettings,
    exchange: Exchange,
    present: frozenset[int] | set[int] = frozenset(),
) -> list[Delayed]:
    """The exchange's tasks, one per chunk, each a :class:`PartSummary`: the chunk binned
    and its part written, or for a part in ``present`` (written whole before) its summary
    read back, without reading the chunk."""
    name, layer = _part_layer(inputs, settings, exchange, present)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=inputs.collections)
    return [Delayed(key, graph, layer=name) for key in layer]


def write_index(exchange: Exchange, blocks: int, *summaries: PartSummary) -> str:
    """The exchange's last task: its index, from every part's summary; returns its id."""
    return exchange.write_index(summaries, blocks)


def _render_exchanged(
    exchange: Exchange,
    identity: str,
    settings: ChunkSettings,
    dtype: str,
    index: tuple[int, int, int],
) -> np.ndarray:
    """One block of a lazy array, from a complete exchange."""
    feed = ExchangedSources(
        exchange.reader(identity), settings.grid, settings.tol, settings.level, settings.blocks
    )
    return render_fed_block(feed, index, dtype)


def lazy_volume(inputs: ChunkedInputs, settings: ChunkSettings, dtype: np.dtype) -> da.Array:
    """The volume of chunked inputs as a lazy dask array: a part task per chunk, the index,
    and a task per block reading its pairs (through a scratch directory, :mod:`._scratch`).

    Computing a slice runs the exchange and the blocks the slice touches.
    """
    from ._scratch import keep_while, scratch_exchange

    token = tokenize(inputs.token(), settings, dtype.str)
    exchange = scratch_exchange(token)
    parts_name, parts = _part_layer(inputs, settings, exchange, frozenset())
    index_key = (f"daskgauss-index-{token}", 0)
    name = f"daskgauss-chunked-{token}"
    index = {index_key: (write_index, exchange, settings.blocks.count, *parts)}
    blocks = {
        (name, *block): (_render_exchanged, exchange, index_key, settings, dtype.str, block)
        for block in settings.blocks
    }
    inputs_graph = HighLevelGraph.from_collections(parts_name, parts, inputs.collections)
    graph = HighLevelGraph(
        {
            **inputs_graph.layers,
            index_key[0]: MaterializedLayer(index),
            name: MaterializedLayer(blocks),
        },
        {**inputs_graph.dependencies, index_key[0]: {parts_name}, name: {index_key[0]}},
    )
    volume = da.Array(graph, name, settings.chunks, meta=np.empty((0, 0, 0), dtype=dtype))
    keep_while(exchange, volume)
    return volume
