"""Out-of-core rendering: one dask task per block renders it and writes it to Zarr."""

from __future__ import annotations

import datetime
import functools
import threading
import time
from dataclasses import asdict, dataclass, replace

import dask
import numpy as np
import zarr
from numpy.typing import ArrayLike, DTypeLike

from . import _config
from ._binning import Binning, bin_gaussians
from ._block import render_fed_block
from ._chunked import (
    SUMMARY_FAN_IN,
    ChunkedInputs,
    ChunkSettings,
    combine_summaries,
    fingerprint,
    is_chunked,
    part_tasks,
    summary_tasks,
    write_index,
)
from ._exchange import Exchange, ExchangedSources, write_binning
from ._grid import Grid, checked_level
from ._job import Blocks, Chunks, JobSpec, is_regular, regular_chunks
from ._lock import holding_lock
from ._phases import Progress, run_phase
from ._plan import (
    ChunkedPlan,
    Plan,
    Request,
    build_executor,
    build_threads,
    check_pyramid,
    plan,
    plan_chunked,
)
from ._store import (
    StoreMismatchError,
    Target,
    check_creatable,
    check_unit,
    compressors_for,
    create_target,
    normalise_location,
    open_target,
    open_target_for_job,
    recorded_job,
)

__all__ = ["RenderJob", "RenderReport", "prepare_render", "render_to_zarr"]

_buffers = threading.local()


@dataclass(frozen=True)
class RenderReport:
    """What one run of :func:`render_to_zarr` did (also recorded in the store).

    Attributes
    ----------
    blocks : int
        Blocks in the volume.
    already_done : int
        Blocks recorded as done by an earlier run, left untouched.
    empty : int
        Blocks no Gaussian reaches, first seen done by this run: nothing written.
    rendered : int
        Blocks rendered and written by this run.
    seconds : float
        Wall time of this run, validation and binning included.
    resumed : bool
        Whether the run continued an existing store.
    """

    blocks: int
    already_done: int
    empty: int
    rendered: int
    seconds: float
    resumed: bool


def _block_buffer(shape: tuple[int, int, int], dtype: np.dtype) -> np.ndarray:
    """A per-thread render buffer, reused while the block shape stays the same.

    Fresh memory is slow to touch the first time; reusing one buffer per thread
    keeps that cost out of every block but the first, and memory at one block per
    thread.
    """
    buffer = getattr(_buffers, "block", None)
    if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
        buffer = np.zeros(shape, dtype=dtype)
        _buffers.block = buffer
    return buffer


@functools.lru_cache(maxsize=16)
def _recorded_pairs(location: str, token: str, level: int) -> np.ndarray:
    """The store's Gaussians per block of a level, read once per process, job and level."""
    pairs = open_target_for_job(location, token, level).block_pairs()
    if pairs is None:
        raise RuntimeError(f"{location}: level {level} has no record of its blocks' Gaussians")
    return pairs


def _render_and_write(location: str, spec: JobSpec, level: int,
                      block_index: tuple[int, int, int], exchange_id: str) -> int:  # fmt: skip
    """One task: render one block of a level from the level's exchange and write it;
    return its source count."""
    target = open_target_for_job(location, spec.token, level)
    reader = Exchange(target.exchange_root).reader(exchange_id)
    feed = ExchangedSources(reader, spec.grid, spec.tol, level, Blocks(spec.level_chunks(level)))
    count = feed.block_count(block_index)
    recorded = int(_recorded_pairs(location, spec.token, level)[block_index])
    if count != recorded:
        raise RuntimeError(f"block {block_index} of level {level}: the exchange holds {count} "
                           f"Gaussians, the check counted {recorded}")  # fmt: skip
    shape = feed.blocks.shape(block_index)
    dtype = np.dtype(spec.dtype)
    values = render_fed_block(feed, block_index, dtype, out=_block_buffer(shape, dtype))
    target.write_block(block_index, values)
    return count


def _record_run(target: Target, report: RenderReport, source: str) -> None:
    from . import __version__

    record = asdict(report)
    record["version"] = __version__
    record["source"] = source
    record["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    target.record_run(record)


@dataclass(frozen=True, eq=False)
class MemoryFeed:
    """A level's Gaussians binned in this process: its exchange is written from here."""

    binning: Binning

    def fill(self, exchange: Exchange, progress: Progress | None) -> str:
        """Write the level's exchange; return its index id."""
        return write_binning(exchange, self.binning)


@dataclass(frozen=True, eq=False)
class ChunkedFeed:
    """A level's Gaussians in chunks (dask arrays): each chunk's task writes its part."""

    inputs: ChunkedInputs
    settings: ChunkSettings

    def fill(self, exchange: Exchange, progress: Progress | None) -> str:
        """Run the exchange on the cluster (parts written before are kept); return its
        index id."""
        present = exchange.parts_present()
        if progress is not None and present:
            progress.note = f" ({len(present)} chunks binned by an earlier run)"
        tasks = part_tasks(self.inputs, self.settings, exchange, present)
        return run_phase(tasks, progress, finish=write_index,
                         finish_arguments=(exchange, self.settings.blocks.count))  # fmt: skip


@dataclass(frozen=True, eq=False)
class LevelWork:
    """What rendering one pyramid level takes.

    Attributes
    ----------
    level : int
    pairs : ndarray, shape (the level's numblocks), int64
        Gaussians reaching each block of the level (0: nothing to render).
    feed : MemoryFeed or ChunkedFeed
        Where the level's exchange comes from.
    rows : tuple of int, optional
        Rows of centres per chunk (chunked inputs), for the exchange's progress.
    """

    level: int
    pairs: np.ndarray
    feed: MemoryFeed | ChunkedFeed
    rows: tuple[int, ...] | None = None


class RenderJob:
    """A validated render, ready to run: what :func:`prepare_render` returns.

    Everything that can be wrong with the inputs or the store has been checked
    when this exists; nothing has been written yet.

    Attributes
    ----------
    store : str
        Where the store is (a local path or an fsspec URL).
    plan : Plan or ChunkedPlan
        The validated job: binned in memory, or (dask-array centres) to be binned
        where the chunks live.
    spec : JobSpec
        What the store records.
    levels : list of LevelWork
        Level 0 and each pyramid level, coarsest first (the order they are rendered
        in, so that a viewer can open the store before level 0 is complete).
    resume : bool
        Whether the store holds this job already (to be continued).
    overwrite : bool
        Whether whatever is at ``store`` is to be replaced first.
    data : zarr.Array or None
        The volume, once :meth:`run` has created or opened the store.
    """

    def __init__(self, store: str, job: Plan | ChunkedPlan, spec: JobSpec,
                 levels: list[LevelWork], *, resume: bool, overwrite: bool,
                 source: str):  # fmt: skip
        self.store = store
        self.source = source
        self.plan = job
        self.spec = spec
        self.levels = levels
        self.resume = resume
        self.overwrite = overwrite
        self.data: zarr.Array | None = None

    def _phase(self, work: LevelWork, name: str, unit: str,
               rows: tuple[int, ...] | None = None) -> Progress:  # fmt: skip
        """The progress line of one phase of a level's work."""
        label = name if not self.spec.levels else f"level {work.level}: {name}"
        return Progress(label, unit, rows)

    def _render_level(self, target: Target, work: LevelWork,
                      pending: list[tuple[int, int, int]], progress: bool) -> None:  # fmt: skip
        """Fill the level's exchange where it is not complete, then render ``pending``."""
        spec = self.spec
        exchange = Exchange(target.exchange_root)
        identity = exchange.index_id()
        if identity is None:
            target.open_exchange()
            shown = self._phase(work, "exchange", "chunks", work.rows) if progress else None
            identity = work.feed.fill(exchange, shown)
        name = f"daskgauss-render-{spec.token}-{work.level}"
        tasks = [
            dask.delayed(_render_and_write, pure=True)(
                target.location,
                spec,
                work.level,
                index,
                identity,
                dask_key_name=f"{name}-{index[0]}-{index[1]}-{index[2]}",
            )
            for index in pending
        ]
        run_phase(tasks, self._phase(work, "render", "blocks") if progress else None)

    def run(self, progress: bool = False) -> RenderReport:
        """Create or resume the store, render the blocks not yet done, record the run.

        Holds the store's lock meanwhile (:mod:`._lock`): a second job on the same store
        is refused with :class:`StoreBusyError` while this one is alive.
        """
        with holding_lock(self.store):
            return self._run(progress)

    def _run(self, progress: bool) -> RenderReport:
        started = time.perf_counter()
        level_zero = create_target(self.store, spec=self.spec, overwrite=self.overwrite)
        # Later runs of the same object resume rather than overwrite.
        resumed, self.resume, self.overwrite = self.resume, True, False
        blocks = already_done = empty = rendered = 0
        for work in self.levels:
            # Level by level, coarsest first: each is complete, and readable, before
            # the next one starts.
            target = open_target(self.store, work.level) if work.level else level_zero
            done = target.done_mask()
            if target.block_pairs() is None:
                target.write_block_pairs(work.pairs)
            pending = [tuple(int(i) for i in index)
                       for index in np.argwhere(~done & (work.pairs > 0))]  # fmt: skip
            if pending:
                self._render_level(target, work, pending, progress)
            # The level is complete: its exchange is no longer needed.
            Exchange(target.exchange_root).remove()
            target.remove_legacy_sources()
            blocks += int(work.pairs.size)
            already_done += int(done.sum())
            empty += int(np.count_nonzero(~done & (work.pairs == 0)))
            rendered += len(pending)
        level_zero.remove_exchanges()
        report = RenderReport(
            blocks=blocks,
            already_done=already_done,
            empty=empty,
            rendered=rendered,
            seconds=time.perf_counter() - started,
            resumed=resumed,
        )
        _record_run(level_zero, report, self.source)
        self.data = level_zero.data
        return report


def _chunked_spec(job: ChunkedPlan, levels: tuple[ChunkSettings, ...], progress: bool
                  ) -> tuple[JobSpec, list[np.ndarray]]:  # fmt: skip
    """The checking phase over dask-array centres, where their chunks live: validate and
    hash every chunk and count its pairs per block. Returns the job's spec (without store
    settings) and the pairs per block of level 0 and of each level's settings in ``levels``."""
    settings = job.settings
    shown = None
    if progress:
        shown = Progress(f"checking {settings.source}", "chunks", job.inputs.row_chunks)
    summary = run_phase(summary_tasks(job.inputs, settings, levels), shown,
                        finish=combine_summaries, fan_in=SUMMARY_FAN_IN)  # fmt: skip
    count = summary.count
    pairs = [
        summary.pairs[number].reshape(level.blocks.numblocks)
        for number, level in enumerate((settings, *levels))
    ]
    spec = JobSpec(
        grid=settings.grid,
        fingerprint=fingerprint(summary),
        centres=count,
        sigma_range=(summary.sigma_min, summary.sigma_max, summary.sigma_sum / (3 * count))
        if count else None,
        amplitude_range=(summary.amplitude_min, summary.amplitude_max) if count else None,
        tol=settings.tol,
        normalize=settings.normalize,
        periodic=settings.periodic,
        dtype=job.dtype.name,
        chunks=settings.chunks,
        covariance=job.inputs.covariance is not None,
    )  # fmt: skip
    return spec, pairs


def prepare_render(
    store: str,
    request: Request,
    *,
    unit: str | None = None,
    compression: str | None = None,
    overwrite: bool = False,
    source: str = "centres",
    levels: int | str | None = None,
    progress: bool = False,
) -> RenderJob:
    """Validate a render and check its store, writing nothing; see :func:`render_to_zarr`.

    Without explicit ``request.chunks`` a store that already holds a job lends it
    its block shape, so a rerun resumes whatever the machine's defaults are. With
    dask-array centres the values are validated and hashed where their chunks live
    (on the active ``distributed.Client``, if any): an error there, naming
    ``source`` and the row, is raised here, before anything is written. ``progress``
    shows that checking phase's progress.
    """
    check_unit(unit)
    codec = str(compression if compression is not None else _config.get("compression"))
    compressors_for(codec)
    location = normalise_location(store)
    check_creatable(location)
    recorded = None if overwrite else recorded_job(location)
    if recorded is not None and request.chunks is None:
        request = replace(request, chunks=recorded.block_shape)
    count = pyramid_levels(levels, request.grid)
    if count:
        check_pyramid(request.covariance)
    job: Plan | ChunkedPlan
    work: list[LevelWork]
    if is_chunked(request.centres, request.sigma, request.weights, request.covariance):
        job = plan_chunked(request, source=source)
        _check_regular(job.settings.chunks)
        block = tuple(sizes[0] for sizes in job.settings.chunks)
        settings = [job.settings] + [
            replace(job.settings, level=level,
                    chunks=regular_chunks(request.grid.level(level).shape, block))
            for level in range(1, count + 1)
        ]  # fmt: skip
        spec, pairs = _chunked_spec(job, tuple(settings[1:]), progress)
        work = [LevelWork(level, pairs[level], ChunkedFeed(job.inputs, settings[level]),
                          job.inputs.row_chunks) for level in range(count + 1)]  # fmt: skip
    else:
        job = plan(request)
        _check_regular(job.spec.chunks)
        spec = replace(job.spec, levels=count)
        with build_executor(build_threads()) as executor:
            binnings = [job.binning] + [
                bin_gaussians(job.gaussians, spec.grid, spec.level_chunks(level),
                              periodic=spec.periodic, level=level, executor=executor)
                for level in range(1, count + 1)
            ]  # fmt: skip
        work = [LevelWork(binning.level, np.diff(binning.block_offsets).reshape(
                    binning.numblocks), MemoryFeed(binning)) for binning in binnings]  # fmt: skip
    spec = replace(spec, unit=unit, compression=codec, levels=count)
    if recorded is not None and recorded != spec:
        raise StoreMismatchError(
            f"{location} holds a different daskgauss job "
            f"({', '.join(recorded.differences(spec))}). Its data are left intact. "
            "Use another path, or pass overwrite=True (--overwrite) to replace it."
        )
    # Coarsest first: a viewer can open the store while level 0 is still being written.
    return RenderJob(location, job, spec, work[::-1], resume=recorded is not None,
                     overwrite=overwrite, source=source)  # fmt: skip


def pyramid_levels(levels: int | str | None, grid: Grid) -> int:
    """The number of levels above 0 that ``levels`` asks for: None is none, ``"auto"``
    as many as make the coarsest level's largest side at most 256 samples."""
    if levels is None:
        return 0
    if levels == "auto":
        return grid.auto_levels()
    try:
        return checked_level(levels, "levels")
    except ValueError:
        raise ValueError(
            f"levels must be None, 'auto' or a non-negative integer, got {levels!r}"
        ) from None


def _check_regular(chunks: Chunks) -> None:
    if not is_regular(chunks):
        raise ValueError(
            "chunks for Zarr output must be regular (equal blocks, a smaller last one on each "
            f"axis); got {chunks}. Give one block size per axis."
        )


def render_to_zarr(
    store: str,
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
    unit: str | None = None,
    compression: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
    levels: int | str | None = None,
) -> zarr.Array:
    """Render the sum of Gaussians straight into a Zarr v3 store, block by block.

    The volume never sits in memory: each dask task renders one block and writes
    it, so peak memory is about one block per running task. Runs on the active
    ``distributed.Client`` if there is one, else on dask's local threads. The
    Gaussians reach the tasks through an exchange in the store (``exchange/``,
    removed once the store is complete): each task reads only the rows of its own
    block, so nothing large is in the graph. Dask-array centres are binned chunk by
    chunk on the cluster and written there by the chunks' own tasks.

    Parameters
    ----------
    store : str
        Local path or fsspec URL (``file://``, ``s3://``, ``gs://`` ...) of the
        store to create. Every worker must be able to reach it.
    centres, sigma, grid, covariance, weights, normalize, tol, periodic, chunks, dtype
        As for :func:`gaussian_sum`. ``chunks`` must be regular: one chunk of the
        Zarr array per block.
    unit : str, optional
        OME-NGFF space unit of the coordinates, e.g. ``"angstrom"``.
    compression : {"lz4", "none", "zstd", "zstd-plain"}, optional
        Chunk codec; default ``daskgauss.compression`` (``"lz4"``).
    overwrite : bool
        Replace whatever is at ``store``. Without it, an existing store is only
        ever resumed, and only by the identical job; anything else is refused and
        left intact.
    progress : bool
        Show a progress bar while blocks complete.
    levels : int, "auto" or None
        Pyramid levels above level 0 to render too (datasets "1" ... "levels" of the
        OME-NGFF multiscale image): level ``l`` is ``gaussian_sum(..., level=l)``, each
        sample the mean of the ``2^l``-cubed level-0 samples it covers, rendered from
        the Gaussians (never read back from level 0) in blocks of the same shape.
        ``"auto"`` adds levels until the coarsest one's largest side is at most 256
        samples. The coarsest level is written first, so a viewer can open the store
        before level 0 is complete. Axis-aligned Gaussians only.

    Returns
    -------
    zarr.Array
        The volume, at path ``"0"`` of the store's OME-NGFF image group.

    Raises
    ------
    ValueError
        Bad input (see :func:`gaussian_sum`), irregular chunks, an unknown unit
        or codec; raised before anything is written.
    StoreMismatchError
        ``store`` holds something other than this job and ``overwrite`` is False.

    Notes
    -----
    Resuming: running the identical job again computes only the blocks not yet
    recorded as done. A block is recorded after its chunk is written, so a job
    killed at any point never leaves a block recorded but unwritten. Blocks no
    Gaussian reaches cost nothing: the store records how many Gaussians reach each
    block, once, and such blocks are done by definition (they read as zeros).
    Each run is logged in the store's run log (``runs/``, one object per run).
    """
    request = Request(centres, sigma, grid, weights=weights, normalize=normalize, tol=tol,
                      periodic=periodic, chunks=chunks, dtype=dtype,
                      covariance=covariance)  # fmt: skip
    job = prepare_render(store, request, unit=unit, compression=compression, overwrite=overwrite,
                         levels=levels, progress=progress)  # fmt: skip
    job.run(progress=progress)
    return job.data  # type: ignore[return-value]
