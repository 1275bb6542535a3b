"""Out-of-core rendering: one dask task per block renders it and writes it to Zarr."""

from __future__ import annotations

import datetime
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import dask
import numpy as np
import zarr
from numpy.typing import ArrayLike, DTypeLike

from . import _config
from ._block import render_block
from ._cluster import active_client
from ._grid import Grid
from ._lazy import Plan, plan
from ._store import Target, check_target, compressors_for, create_target, open_target_for_job

__all__ = ["RenderJob", "RenderReport", "job_description", "prepare_render", "render_to_zarr"]

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
        Blocks no Gaussian reaches: recorded as done, nothing written.
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


def _render_and_write(location: str, token: str, block_index: tuple[int, int, int]) -> int:
    """One task: render one block from the sidecar, write it; return its source count."""
    target = open_target_for_job(location, token)
    job = target.job
    sources = target.read_sources(block_index)
    slices = target.block_slices(block_index)
    shape = tuple(s.stop - s.start for s in slices)
    dtype = np.dtype(job["dtype"])
    values = render_block(
        sources,
        target.grid,
        job["tol"],
        np.array([s.start for s in slices], dtype=np.int64),
        shape,  # type: ignore[arg-type]
        dtype,
        out=_block_buffer(shape, dtype),  # type: ignore[arg-type]
    )
    target.write_block(block_index, values)
    return sources.count


def job_description(
    job: Plan, unit: str | None, compression: str, normalize: str
) -> dict[str, Any]:
    """The JSON-ready description of a job that its store records.

    Two runs are the same job exactly when their descriptions are equal; the
    fingerprint covers every centre, sigma and amplitude.
    """
    from . import __version__

    gaussians = job.gaussians
    sigma = gaussians.sigma
    block_shape = [axis[0] for axis in job.binning.chunks]
    return {
        "name": "daskgauss",
        "format": 1,
        "version": __version__,
        "fingerprint": gaussians.fingerprint(),
        "centres": gaussians.count,
        "sigma": {
            "min": float(sigma.min()) if sigma.size else None,
            "max": float(sigma.max()) if sigma.size else None,
            "mean": float(sigma.mean()) if sigma.size else None,
        },
        "tol": gaussians.tol,
        "normalize": normalize,
        "periodic": job.periodic,
        "grid": job.binning.grid.to_dict(),
        "dtype": job.dtype.name,
        "block_shape": block_shape,
        "unit": unit,
        "compression": compression,
    }


def _require_regular(chunks: tuple[tuple[int, ...], ...]) -> None:
    for axis, sizes in zip("xyz", chunks, strict=True):
        if any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
            raise ValueError(
                f"chunks for Zarr output must be regular (equal blocks, a smaller last one); "
                f"axis {axis} has {sizes}. Give one block size per axis."
            )


def _execute(tasks: list[Any], progress: bool) -> list[int]:
    """Run the tasks on the active distributed client, or dask's local threads."""
    client = active_client()
    if client is not None:
        from distributed import progress as distributed_progress

        futures = client.compute(tasks)
        if progress:
            distributed_progress(futures)
        return client.gather(futures)
    if progress:
        from dask.diagnostics import ProgressBar

        with ProgressBar():
            return list(dask.compute(*tasks))
    return list(dask.compute(*tasks))


def _record_run(target: Target, report: RenderReport) -> None:
    record = asdict(report)
    record["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    attributes = dict(target.group.attrs["daskgauss"])
    attributes["runs"] = [*attributes.get("runs", []), record]
    target.group.attrs["daskgauss"] = attributes


class RenderJob:
    """A validated render, ready to run: what :func:`prepare_render` returns.

    Everything that can be wrong with the inputs or the store has been checked
    when this exists; nothing has been written yet.
    """

    def __init__(self, store: str, job: Plan, description: dict[str, Any], overwrite: bool):
        self.store = store
        self.plan = job
        self.description = description
        self.overwrite = overwrite
        self.data: zarr.Array | None = None

    def run(self, progress: bool = False) -> RenderReport:
        """Create or resume the store, render the blocks not yet done, record the run."""
        started = time.perf_counter()
        binning = self.plan.binning
        target, resumed = create_target(
            self.store, job=self.description, token=self.plan.token, overwrite=self.overwrite
        )
        # Later runs of the same object resume rather than overwrite.
        self.overwrite = False
        if not target.sources_complete():
            target.write_sources(binning)
        done = target.done_mask()
        counts = np.diff(binning.block_offsets).reshape(binning.numblocks)
        empty = np.argwhere(~done & (counts == 0))
        target.mark_done(empty)
        pending = [tuple(int(i) for i in index) for index in np.argwhere(~done & (counts > 0))]
        tasks = [
            dask.delayed(_render_and_write, pure=True)(
                target.location,
                self.plan.token,
                index,
                dask_key_name=f"daskgauss-render-{self.plan.token}-{index[0]}-{index[1]}-{index[2]}",
            )
            for index in pending
        ]
        if tasks:
            _execute(tasks, progress)
        report = RenderReport(
            blocks=int(counts.size),
            already_done=int(done.sum()),
            empty=len(empty),
            rendered=len(pending),
            seconds=time.perf_counter() - started,
            resumed=resumed,
        )
        _record_run(target, report)
        self.data = target.data
        return report


def prepare_render(
    store: str,
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
    unit: str | None = None,
    compression: str | None = None,
    overwrite: bool = False,
) -> RenderJob:
    """Validate a render and check its store, writing nothing; see :func:`render_to_zarr`."""
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
    _require_regular(job.binning.chunks)
    codec = str(compression if compression is not None else _config.get("compression"))
    compressors_for(codec)
    description = job_description(job, unit, codec, normalize)
    check_target(str(store), job=description, overwrite=overwrite)
    return RenderJob(str(store), job, description, overwrite)


def render_to_zarr(
    store: str,
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
    unit: str | None = None,
    compression: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
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
    centres, sigma, grid, weights, normalize, tol, periodic, chunks, dtype
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
    Gaussian reaches are recorded without writing a chunk (they read as zeros).
    Each run is logged in the store's ``daskgauss.runs`` attribute.
    """
    job = prepare_render(
        store,
        centres,
        sigma,
        grid,
        weights=weights,
        normalize=normalize,
        tol=tol,
        periodic=periodic,
        chunks=chunks,
        dtype=dtype,
        unit=unit,
        compression=compression,
        overwrite=overwrite,
    )
    job.run(progress=progress)
    return job.data  # type: ignore[return-value]
