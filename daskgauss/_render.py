"""Out-of-core rendering: one dask task per block renders it and writes it to Zarr."""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import dask
import numpy as np
import zarr
from numpy.typing import ArrayLike, DTypeLike

from . import _config
from ._binning import Binning, BlockSources, bin_gaussians
from ._block import render_block
from ._chunked import ChunkSettings, Piece, block_tasks, fingerprint, is_chunked, merge, summaries
from ._cluster import SchedulerLostError, active_client
from ._grid import Grid, checked_level
from ._job import Chunks, JobSpec, is_regular, regular_chunks
from ._lock import holding_lock
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


def _render_and_write(location: str, spec: JobSpec, level: int,
                      block_index: tuple[int, int, int]) -> int:  # fmt: skip
    """One task: render one block of a level from the sidecar, write it; return its
    source count."""
    target = open_target_for_job(location, spec.token, level)
    sources = BlockSources.from_table(target.source_rows(block_index), spec.grid, spec.tol)
    return _write(target, spec, block_index, sources)


def _write_pieces(location: str, spec: JobSpec, settings: ChunkSettings,
                  block_index: tuple[int, int, int], *pieces: Piece) -> int:  # fmt: skip
    """One task (chunked centres): render one block from its pieces, write it."""
    target = open_target_for_job(location, spec.token, settings.level)
    return _write(target, spec, block_index, merge(pieces, settings))


def _write(target: Target, spec: JobSpec, block_index: tuple[int, int, int],
           sources: BlockSources) -> int:  # fmt: skip
    """Render one block's sources into the thread's buffer and write it; return the count."""
    slices = spec.block_slices(block_index, target.level)
    shape = tuple(s.stop - s.start for s in slices)
    dtype = np.dtype(spec.dtype)
    values = render_block(
        sources,
        spec.grid,
        spec.tol,
        np.array([s.start for s in slices], dtype=np.int64),
        shape,  # type: ignore[arg-type]
        dtype,
        out=_block_buffer(shape, dtype),  # type: ignore[arg-type]
        level=target.level,
    )
    target.write_block(block_index, values)
    return sources.count


def _execute(tasks: list[Any], progress: bool) -> list[int]:
    """Run the tasks on the active distributed client, or dask's local threads."""
    client = active_client()
    if client is not None:
        from distributed import progress as distributed_progress
        from distributed.client import FutureCancelledError
        from distributed.comm import CommClosedError

        futures = client.compute(tasks)
        try:
            if progress:
                distributed_progress(futures)
            return client.gather(futures)
        except (FutureCancelledError, CommClosedError):
            raise SchedulerLostError("the render lost its connection to the scheduler") from None
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def _record_run(target: Target, report: RenderReport, source: str) -> None:
    from . import __version__

    record = asdict(report)
    record["version"] = __version__
    record["source"] = source
    record["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    target.record_run(record)


@dataclass(frozen=True, eq=False)
class LevelWork:
    """What rendering one pyramid level takes.

    Attributes
    ----------
    level : int
    pairs : ndarray, shape (the level's numblocks), int64
        Gaussians reaching each block of the level (0: nothing to render).
    binning : Binning or None
        The level's binning (centres in memory); None for chunked centres.
    settings : ChunkSettings or None
        The level's chunk settings (dask-array centres); None in memory.
    """

    level: int
    pairs: np.ndarray
    binning: Binning | None = None
    settings: ChunkSettings | None = None


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

    def _tasks(self, target: Target, work: LevelWork, pending: list[tuple[int, int, int]]
               ) -> list[Any]:  # fmt: skip
        """One render-and-write task per pending block of one level."""
        spec = self.spec
        name = f"daskgauss-render-{spec.token}-{work.level}"
        if work.settings is not None:
            assert isinstance(self.plan, ChunkedPlan)
            tasks = block_tasks(self.plan.inputs, work.settings, pending, _write_pieces,
                                (target.location, spec, work.settings), name)  # fmt: skip
            return list(tasks.values())
        assert work.binning is not None
        if not target.sources_complete():
            target.write_sources(*work.binning.table)
        return [
            dask.delayed(_render_and_write, pure=True)(
                target.location,
                spec,
                work.level,
                index,
                dask_key_name=f"{name}-{index[0]}-{index[1]}-{index[2]}",
            )
            for index in pending
        ]

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
                _execute(self._tasks(target, work, pending), progress)
            blocks += int(work.pairs.size)
            already_done += int(done.sum())
            empty += int(np.count_nonzero(~done & (work.pairs == 0)))
            rendered += len(pending)
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


def _chunked_spec(job: ChunkedPlan, levels: tuple[ChunkSettings, ...]
                  ) -> tuple[JobSpec, list[np.ndarray]]:  # fmt: skip
    """Pass 1 over dask-array centres, where their chunks live: validate and hash every
    chunk and count its pairs per block. Returns the job's spec (without store settings)
    and the pairs per block of level 0 and of each level's settings in ``levels``."""
    parts = _execute(summaries(job.inputs, job.settings, levels), progress=False)
    settings = job.settings
    count = sum(part.count for part in parts)
    pairs = [
        np.sum([part.pairs[number] for part in parts], axis=0).reshape(
            tuple(len(sizes) for sizes in level.chunks))
        for number, level in enumerate((settings, *levels))
    ]  # fmt: skip
    spec = JobSpec(
        grid=settings.grid,
        fingerprint=fingerprint(parts),
        centres=count,
        sigma_range=(min(p.sigma_min for p in parts), max(p.sigma_max for p in parts),
                     sum(p.sigma_sum for p in parts) / (3 * count)) if count else None,
        amplitude_range=(min(p.amplitude_min for p in parts),
                         max(p.amplitude_max for p in parts)) if count else None,
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
) -> RenderJob:
    """Validate a render and check its store, writing nothing; see :func:`render_to_zarr`.

    Without explicit ``request.chunks`` a store that already holds a job lends it
    its block shape, so a rerun resumes whatever the machine's defaults are. With
    dask-array centres the values are validated and hashed where their chunks live
    (on the active ``distributed.Client``, if any): an error there, naming
    ``source`` and the row, is raised here, before anything is written.
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
        spec, pairs = _chunked_spec(job, tuple(settings[1:]))
        work = [LevelWork(level, pairs[level], settings=settings[level])
                for level in range(count + 1)]  # fmt: skip
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
                    binning.numblocks), binning=binning) for binning in binnings]  # fmt: skip
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
    Gaussians reach the tasks through a sidecar in the store (``sources/``): each
    task reads only the rows of its own block, so nothing large is in the graph.

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
                         levels=levels)  # fmt: skip
    job.run(progress=progress)
    return job.data  # type: ignore[return-value]
