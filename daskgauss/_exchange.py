"""The exchange: every (Gaussian, block) pair written once, by the task that binned it,
and read by the block it reaches, through storage.

Centres in many chunks reach output blocks all-to-all. The graph must not hold a task
per (chunk, block) pair: 10^4 chunks on 4096^3 would be 4 x 10^7 of them. Each chunk's
task instead bins its Gaussians and writes one *part*: its pairs grouped by block, each
block's pairs in summation order. Once every part is written, one task writes the
*index*: per block, the parts holding its pairs and where. Each block's task reads
its own byte ranges, so the graph holds chunks + blocks + 1 tasks, and a (chunk, block)
pair with no Gaussian costs nothing at all (it is not in the index). Centres in memory
use the same exchange, written by the process that binned them, a range of blocks per
part.

Why storage, not distributed's P2P shuffle (measured on the 2-core development VM,
``python -m benchmarks.bench_chunked exchange [--count 1e8]``, 2 workers x 1 thread,
benchmarks/RESULTS.md, issue 21): bringing the pairs of 10^7 centres in 100 chunks to
their 64 blocks took 2.4 s through this exchange and 8.2 s through the P2P shuffle of a
dask dataframe of the same pairs (block and position); 10^8 centres in 1000 chunks 19.4 s
and 70.6 s. The storage exchange also makes the exchange resumable (a part written is
not binned again), needs nothing a render to Zarr does not have already (every worker
reaches the store), and keeps the rows' bytes exact. Lazy arrays of chunked centres
exchange through a scratch directory (``daskgauss.scratch``).

Layout of one exchange (a pyramid level's, under the store's ``exchange/<level>``)::

    ROOT/parts/<n>   part n: b"DGXPART1", the JSON header's length (uint64), the JSON
                     header (rows, columns, what its Gaussians share), then the ids of
                     the blocks it has pairs for (int64), their pair counts (int64) and
                     the rows (float64, the blocks' rows one after another)
    ROOT/index       written last: b"DGXINDX1", header length, JSON header (parts,
                     blocks, entries, an id), each part's layout (int64 x 3: where its
                     rows start, columns, flags) and shared values (float64 x 10), the
                     block offsets into the entries (int64, blocks + 1), and the entries
                     (int64 x 3: part, first row, rows), by block, parts in order

A row holds only what cannot be recomputed on arrival: the position (a periodic image's,
shifted); sigma, amplitude and covariance only where the part's Gaussians do not all
share them (shared values are written once); the sigmas of full covariances are the
square roots of their diagonals, recomputed. A block restores the summation order of
its pairs, laid end to end in part order, with a stable sort by the spatial key
recomputed from each row (:func:`._pairs.entry_keys`): key, then index, as in memory.

Every object is written whole or not at all (to a temporary name, then renamed, on a
local disk; object stores write objects whole), and the same part written twice holds
the same bytes: a writer killed at any instant leaves nothing that reads as a part.

This module knows nothing of dask or of the kernels.
"""

from __future__ import annotations

import contextlib
import functools
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from ._binning import Binning, BlockSources, index_boxes, stable_order
from ._grid import Grid
from ._job import Blocks
from ._pairs import BlockPairs, block_pairs, entry_keys, reaching

__all__ = ["Exchange", "ExchangeReader", "ExchangedSources", "PartSummary", "write_binning"]

PART_MAGIC = b"DGXPART1"
INDEX_MAGIC = b"DGXINDX1"
# Layout flags: which values a part's rows hold, beyond the position.
SIGMA_ROWS, AMPLITUDE_ROWS, COVARIANCE_ROWS, COVARIANCE_SHARED = 1, 2, 4, 8
# Shared values of a part, per index row: sigma (3), amplitude (1), covariance (6).
SHARED_VALUES = 10
# The most bytes of rows in one part written from memory (write_binning).
PART_BYTES = 64 * 2**20
# The most bytes of rows read at a time (ranges of a block are read in batches up to this).
READ_BYTES = 32 * 2**20


@dataclass(frozen=True, eq=False)
class PartSummary:
    """What a writer reports of the part it wrote, for the index (small).

    Attributes
    ----------
    number : int
        The part's number (a chunk's, in row order).
    blocks : ndarray, shape (K,), int64
        Flat indices of the blocks it has pairs for, ascending.
    counts : ndarray, shape (K,), int64
        Pairs of each.
    data_offset : int
        Byte offset of its first row.
    columns : int
        float64 values per row.
    flags : int
        Which values its rows hold (``SIGMA_ROWS``, ...).
    shared : ndarray, shape (10,), float64
        Values all its Gaussians share: sigma, amplitude, covariance (unused ones zero).
    """

    number: int
    blocks: np.ndarray
    counts: np.ndarray
    data_offset: int
    columns: int
    flags: int
    shared: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.counts.sum())


def _layout(
    sigma: np.ndarray, amplitude: np.ndarray, covariance: np.ndarray | None
) -> tuple[int, np.ndarray, int]:
    """Flags, shared values and columns of the rows of Gaussians of these values."""
    flags = 0
    shared = np.zeros(SHARED_VALUES)
    columns = 3
    if covariance is None:
        if len(sigma) == 1:
            shared[0:3] = sigma[0]
        else:
            flags |= SIGMA_ROWS
            columns += 3
    if len(amplitude) == 1:
        shared[3] = amplitude[0]
    else:
        flags |= AMPLITUDE_ROWS
        columns += 1
    if covariance is not None:
        if len(covariance) == 1:
            flags |= COVARIANCE_SHARED
            shared[4:10] = covariance[0]
        else:
            flags |= COVARIANCE_ROWS
            columns += 6
    return flags, shared, columns


def _header_bytes(magic: bytes, header: dict[str, Any]) -> bytes:
    """Magic, length and JSON header, padded with spaces to a multiple of 8 bytes."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return magic + np.uint64(len(text)).tobytes() + text


class Exchange:
    """One exchange in storage: its parts, its index, and writing them.

    Parameters
    ----------
    root : str
        Local path or fsspec URL of the exchange (a level's, in a store; or a lazy
        array's scratch directory). Every writer and reader must reach it.
    """

    def __init__(self, root: str) -> None:
        self.root = str(root).rstrip("/")

    def __repr__(self) -> str:
        return f"Exchange({self.root!r})"

    def __reduce__(self) -> tuple:
        return Exchange, (self.root,)

    @functools.cached_property
    def _filesystem(self) -> Any:
        return fsspec.core.url_to_fs(self.root)[0]

    @functools.cached_property
    def _path(self) -> str:
        return fsspec.core.url_to_fs(self.root)[1].rstrip("/")

    @functools.cached_property
    def _local(self) -> bool:
        protocols = self._filesystem.protocol
        return "file" in (protocols if isinstance(protocols, tuple) else (protocols,))

    def _part(self, number: int) -> str:
        return f"{self._path}/parts/{number:08d}"

    @property
    def _index(self) -> str:
        return f"{self._path}/index"

    def _write(self, path: str, pieces: Sequence[bytes | memoryview]) -> None:
        """Write ``pieces`` to ``path`` whole or not at all."""
        filesystem = self._filesystem
        target = path
        if self._local:
            filesystem.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            target = f"{path}.{uuid.uuid4().hex[:12]}.partial"
        with filesystem.open(target, "wb") as stream:
            for piece in pieces:
                stream.write(piece)
        if self._local:
            filesystem.mv(target, path)

    def write_part(self, number: int, pairs: BlockPairs) -> PartSummary:
        """Write part ``number`` holding ``pairs``; return its summary."""
        flags, shared, columns = _layout(pairs.sigma, pairs.amplitude, pairs.covariance)
        rows = np.empty((pairs.count, columns))
        rows[:, 0:3] = pairs.positions
        at = 3
        if flags & SIGMA_ROWS:
            rows[:, at : at + 3], at = pairs.sigma, at + 3
        if flags & AMPLITUDE_ROWS:
            rows[:, at], at = pairs.amplitude, at + 1
        if flags & COVARIANCE_ROWS:
            rows[:, at : at + 6] = pairs.covariance
        header = _header_bytes(
            PART_MAGIC,
            {
                "rows": pairs.count,
                "blocks": len(pairs.blocks),
                "columns": columns,
                "flags": flags,
                "shared": shared.tolist(),
            },
        )
        blocks = np.ascontiguousarray(pairs.blocks, "<i8")
        counts = np.ascontiguousarray(pairs.counts, "<i8")
        self._write(self._part(number), [header, blocks.data, counts.data, rows.data])
        return PartSummary(
            number=number,
            blocks=blocks,
            counts=counts,
            data_offset=len(header) + blocks.nbytes + counts.nbytes,
            columns=columns,
            flags=flags,
            shared=shared,
        )

    def parts_present(self) -> set[int]:
        """Numbers of the parts written whole (one listing)."""
        try:
            names = self._filesystem.ls(f"{self._path}/parts", detail=False)
        except FileNotFoundError:
            return set()
        numbers = (name.rstrip("/").rsplit("/", 1)[-1] for name in names)
        return {int(name) for name in numbers if name.isdigit()}

    def read_part_summary(self, number: int) -> PartSummary:
        """The summary of part ``number``, read from its header (a part written before)."""
        path = self._part(number)
        prelude = self._filesystem.cat_file(path, start=0, end=16)
        if prelude[:8] != PART_MAGIC:
            raise ValueError(f"{path} is not a daskgauss exchange part")
        length = int(np.frombuffer(prelude[8:16], "<u8")[0])
        header = json.loads(self._filesystem.cat_file(path, start=16, end=16 + length))
        blocks = header["blocks"]
        start = 16 + length
        arrays = self._filesystem.cat_file(path, start=start, end=start + 16 * blocks)
        ids = np.frombuffer(arrays, "<i8")
        return PartSummary(
            number=number,
            blocks=ids[:blocks].copy(),
            counts=ids[blocks:].copy(),
            data_offset=start + 16 * blocks,
            columns=int(header["columns"]),
            flags=int(header["flags"]),
            shared=np.array(header["shared"], np.float64),
        )

    def write_index(self, summaries: Sequence[PartSummary], blocks: int) -> str:
        """Write the index of parts ``0 .. len(summaries) - 1`` over ``blocks`` blocks, last:
        from now on the exchange is complete. Returns the index's id."""
        summaries = sorted(summaries, key=lambda summary: summary.number)
        if [summary.number for summary in summaries] != list(range(len(summaries))):
            raise ValueError("an exchange's index needs every part, numbered from 0")
        parts = np.concatenate(
            [np.full(len(s.blocks), s.number, np.int64) for s in summaries] or [np.empty(0)]
        ).astype(np.int64)
        block_ids = np.concatenate([s.blocks for s in summaries] or [np.empty(0)]).astype(np.int64)
        counts = np.concatenate([s.counts for s in summaries] or [np.empty(0)]).astype(np.int64)
        first_rows = np.concatenate(
            [np.cumsum(s.counts) - s.counts for s in summaries] or [np.empty(0)]
        ).astype(np.int64)
        # By block, and within a block in part order (the sort is stable).
        order = stable_order(block_ids)
        entries = np.stack([parts, first_rows, counts], axis=1)[order]
        offsets = np.zeros(blocks + 1, np.int64)
        np.cumsum(np.bincount(block_ids, minlength=blocks), out=offsets[1:])
        layouts = np.array(
            [[s.data_offset, s.columns, s.flags] for s in summaries], np.int64
        ).reshape(-1, 3)
        shared = np.array([s.shared for s in summaries], np.float64).reshape(-1, SHARED_VALUES)
        identity = uuid.uuid4().hex
        header = _header_bytes(
            INDEX_MAGIC,
            {
                "parts": len(summaries),
                "blocks": blocks,
                "entries": len(entries),
                "pairs": int(counts.sum()),
                "id": identity,
            },
        )
        self._write(
            self._index,
            [header, *(np.ascontiguousarray(a).data for a in (layouts, shared, offsets, entries))],
        )
        return identity

    def index_id(self) -> str | None:
        """The id of the index, or None while the exchange is not complete."""
        try:
            return _read_index_header(self._filesystem, self._index)[0]["id"]
        except FileNotFoundError:
            return None

    def remove(self) -> None:
        """Delete the exchange (parts, index and leftovers of killed writers)."""
        with contextlib.suppress(FileNotFoundError):
            self._filesystem.rm(self._path, recursive=True)

    def reader(self, identity: str) -> ExchangeReader:
        """The complete exchange opened for reading (cached per process and index id)."""
        return _open_reader(self.root, identity)


def _read_index_header(filesystem: Any, path: str) -> tuple[dict[str, Any], int]:
    """The index's JSON header and where its arrays start."""
    prelude = filesystem.cat_file(path, start=0, end=16)
    if prelude[:8] != INDEX_MAGIC:
        raise ValueError(f"{path} is not a daskgauss exchange index")
    length = int(np.frombuffer(prelude[8:16], "<u8")[0])
    return json.loads(filesystem.cat_file(path, start=16, end=16 + length)), 16 + length


@dataclass(frozen=True, eq=False)
class ExchangeReader:
    """A complete exchange's index, held by a process: part layouts and block offsets
    (the entries are read per block)."""

    exchange: Exchange
    layouts: np.ndarray
    shared: np.ndarray
    offsets: np.ndarray
    entries_at: int

    def entries(self, flat: int) -> np.ndarray:
        """Block ``flat``'s entries: rows of (part, first row, rows), parts in order."""
        low, high = int(self.offsets[flat]), int(self.offsets[flat + 1])
        if low == high:
            return np.empty((0, 3), np.int64)
        data = self.exchange._filesystem.cat_file(
            self.exchange._index, start=self.entries_at + 24 * low, end=self.entries_at + 24 * high
        )
        return np.frombuffer(data, "<i8").reshape(-1, 3)

    def count(self, flat: int) -> int:
        """Pairs of block ``flat``."""
        return int(self.entries(flat)[:, 2].sum())

    def _batches(self, entries: np.ndarray) -> Iterator[list[tuple[int, np.ndarray]]]:
        """Each entry's rows, read ``READ_BYTES`` or fewer at a time (a long range in
        pieces): batches of (part, rows)."""
        ranges = []
        for part, first, rows in entries:
            data_offset, columns, _ = self.layouts[part]
            per_read = max(1, READ_BYTES // (8 * int(columns)))
            for start in range(int(first), int(first + rows), per_read):
                stop = min(start + per_read, int(first + rows))
                ranges.append((int(part), start, stop, int(columns), int(data_offset)))
        batch: list = []
        size = 0
        for item in ranges:
            batch.append(item)
            size += (item[2] - item[1]) * item[3] * 8
            if size >= READ_BYTES:
                yield self._read(batch)
                batch, size = [], 0
        if batch:
            yield self._read(batch)

    def _read(self, batch: list) -> list[tuple[int, np.ndarray]]:
        paths = [self.exchange._part(part) for part, *_ in batch]
        starts = [offset + 8 * columns * start for _, start, _, columns, offset in batch]
        ends = [offset + 8 * columns * stop for _, _, stop, columns, offset in batch]
        data = self.exchange._filesystem.cat_ranges(paths, starts, ends)
        return [
            (part, np.frombuffer(chunk, "<f8").reshape(-1, columns))
            for (part, _, _, columns, _), chunk in zip(batch, data, strict=True)
        ]

    def _forms(self, parts: np.ndarray) -> tuple[np.ndarray | None, ...]:
        """For the parts holding a block's rows: the one sigma, amplitude and covariance row
        all of them share (None where some part has them per row, or they differ), and
        whether they are Gaussians with covariances."""
        flags = self.layouts[parts, 2]
        shared = self.shared[parts]

        def common(flag: int, columns: slice) -> np.ndarray | None:
            if not len(parts) or np.any(flags & flag):
                return None
            values = shared[:, columns]
            return values[:1].copy() if np.all(values == values[0]) else None

        covariance = bool(np.any(flags & (COVARIANCE_ROWS | COVARIANCE_SHARED)))
        sigma = None if covariance else common(SIGMA_ROWS, slice(0, 3))
        amplitude = common(AMPLITUDE_ROWS, slice(3, 4))
        covariance_row = common(COVARIANCE_ROWS, slice(4, 10)) if covariance else None
        amplitude = None if amplitude is None else amplitude.reshape(1)
        return sigma, amplitude, covariance_row, covariance

    def block(
        self,
        flat: int,
        grid: Grid,
        tol: float,
        level: int,
        start: np.ndarray,
        shape: tuple[int, int, int],
    ) -> ExchangedBlock:
        """Block ``flat``'s Gaussians, every part's rows read once (in batches, into arrays
        of their final size: what is held is the block's rows and one batch)."""
        entries = self.entries(flat)
        count = int(entries[:, 2].sum())
        sigma_shared, amplitude_shared, covariance_shared, covariance = self._forms(entries[:, 0])
        positions = np.empty((count, 3))
        sigma = np.empty((count, 3)) if sigma_shared is None else sigma_shared
        amplitude = np.empty(count) if amplitude_shared is None else amplitude_shared
        covariances = None
        if covariance:
            covariances = np.empty((count, 6)) if covariance_shared is None else covariance_shared
        at = 0
        for batch in self._batches(entries):
            for part, rows in batch:
                stop = at + len(rows)
                positions[at:stop] = rows[:, 0:3]
                flags = self.layouts[part, 2]
                column = 3
                if flags & SIGMA_ROWS:
                    sigma[at:stop] = rows[:, column : column + 3]
                    column += 3
                elif sigma_shared is None and not covariance:
                    sigma[at:stop] = self.shared[part, 0:3]
                if flags & AMPLITUDE_ROWS:
                    amplitude[at:stop] = rows[:, column]
                    column += 1
                elif amplitude_shared is None:
                    amplitude[at:stop] = self.shared[part, 3]
                if flags & COVARIANCE_ROWS:
                    covariances[at:stop] = rows[:, column : column + 6]
                elif covariance and covariance_shared is None:
                    covariances[at:stop] = self.shared[part, 4:10]
                at = stop
        if covariances is not None:
            # As the validation computes them: a correctly rounded square root.
            sigma = np.sqrt(covariances[:, [0, 3, 5]])
        return ExchangedBlock(
            start=start,
            shape=shape,
            positions=positions,
            sigma=sigma,
            amplitude=amplitude,
            covariance=covariances,
            ordered=len(entries) <= 1,
            grid=grid,
            tol=tol,
            level=level,
        )


@dataclass(frozen=True, eq=False)
class ExchangedBlock:
    """One block's Gaussians as read from an exchange: each part's rows in summation order,
    parts laid end to end in part order.

    Attributes
    ----------
    start : ndarray, shape (3,), int64
        The block's first sample (of its level).
    shape : tuple of 3 ints
    positions, sigma, amplitude, covariance
        As in :class:`._binning.BlockSources` (values all share as one row).
    ordered : bool
        Whether the rows are in summation order already (they came from one part).
    grid : Grid
        Level 0's grid.
    tol : float
    level : int
    """

    start: np.ndarray
    shape: tuple[int, int, int]
    positions: np.ndarray
    sigma: np.ndarray
    amplitude: np.ndarray
    covariance: np.ndarray | None
    ordered: bool
    grid: Grid
    tol: float
    level: int

    @property
    def count(self) -> int:
        """Gaussians that reach the block."""
        return int(self.positions.shape[0])

    def sources(self, box: tuple[np.ndarray, tuple[int, int, int]] | None = None) -> BlockSources:
        """The block's sources in summation order; with ``box`` = (first sample, shape), a
        box of the block's level, only those that reach it."""
        values = (self.positions, self.sigma, self.amplitude, self.covariance)
        count = self.count
        if box is not None:
            first = np.asarray(box[0], np.int64)
            last = first + np.asarray(box[1], np.int64) - 1
            keep = reaching(
                self.positions, self.sigma, self.grid, self.tol, self.level, first, last
            )
            # Per-row values keep the rows kept (a value all share stays one row).
            values = tuple(
                value if value is None or len(value) != count else value[keep] for value in values
            )
        positions, sigma, amplitude, covariance = values
        if not self.ordered and len(positions) > 1:
            # Parts in order, each in summation order: a stable sort by key restores the
            # order of the whole input (key, then index).
            order = stable_order(entry_keys(positions, sigma, self.grid, self.tol, self.level))
            positions, sigma, amplitude, covariance = (
                value if value is None or len(value) == 1 else value[order]
                for value in (positions, sigma, amplitude, covariance)
            )
        positions, sigma, amplitude = (
            np.ascontiguousarray(v) for v in (positions, sigma, amplitude)
        )
        if covariance is not None:
            covariance = np.ascontiguousarray(covariance)
        index_low, index_high = index_boxes(positions, sigma, self.grid, self.tol)
        return BlockSources(positions, sigma, amplitude, index_low, index_high, covariance)


@functools.lru_cache(maxsize=8)
def _open_reader(root: str, identity: str) -> ExchangeReader:
    exchange = Exchange(root)
    filesystem = exchange._filesystem
    header, at = _read_index_header(filesystem, exchange._index)
    if header["id"] != identity:
        raise RuntimeError(f"{exchange.root}: the exchange was rewritten while it was read")
    parts, blocks = int(header["parts"]), int(header["blocks"])
    sizes = (24 * parts, 8 * SHARED_VALUES * parts, 8 * (blocks + 1))
    data = filesystem.cat_file(exchange._index, start=at, end=at + sum(sizes))
    layouts = np.frombuffer(data[: sizes[0]], "<i8").reshape(parts, 3)
    shared = np.frombuffer(data[sizes[0] : sizes[0] + sizes[1]], "<f8").reshape(
        parts, SHARED_VALUES
    )
    offsets = np.frombuffer(data[sizes[0] + sizes[1] :], "<i8")
    return ExchangeReader(exchange, layouts, shared, offsets, at + sum(sizes))


def write_binning(exchange: Exchange, binning: Binning, part_bytes: int = PART_BYTES) -> str:
    """Write the exchange of Gaussians binned in this process: parts of consecutive blocks,
    each of at most ``part_bytes`` of rows (or one block), so that no more than that is
    held at once; returns the index's id."""
    _, _, columns = _layout(binning.sigma, binning.amplitude, binning.covariance)
    offsets = binning.block_offsets
    blocks = len(offsets) - 1
    rows_per_part = max(1, part_bytes // (8 * columns))
    summaries = []
    first = 0
    while first < blocks or not summaries:
        stop = int(np.searchsorted(offsets, offsets[first] + rows_per_part, side="right")) - 1
        stop = min(max(stop, first + 1), blocks)
        summaries.append(exchange.write_part(len(summaries), block_pairs(binning, first, stop)))
        first = stop
    return exchange.write_index(summaries, blocks)


@dataclass(frozen=True, eq=False)
class ExchangedSources:
    """The blocks of one level fed from a complete exchange: what a block task renders from
    (a feed of :func:`._block.render_fed_block`, as a :class:`._binning.Binning` is).

    Attributes
    ----------
    reader : ExchangeReader
    grid : Grid
        Level 0's grid.
    tol : float
    level : int
    blocks : Blocks
        The level's blocks.
    """

    reader: ExchangeReader
    grid: Grid
    tol: float
    level: int
    blocks: Blocks

    def block_count(self, block_index: tuple[int, int, int]) -> int:
        """Gaussians that reach the block (its index entries alone are read)."""
        return self.reader.count(self.blocks.flat(block_index))

    def block(self, block_index: tuple[int, int, int]) -> ExchangedBlock:
        """The block's Gaussians, read."""
        return self.reader.block(
            self.blocks.flat(block_index),
            self.grid,
            self.tol,
            self.level,
            self.blocks.start(block_index),
            self.blocks.shape(block_index),
        )
