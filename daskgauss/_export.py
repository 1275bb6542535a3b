"""Reading a finished (or partial) store back: summary, MRC export, PNG preview.

Each reads the volume block by block or plane by plane; none holds the volume.
"""

from __future__ import annotations

import pathlib
from typing import Any

import fsspec
import numpy as np

from ._store import Target, open_target

__all__ = ["export_mrc", "preview_png", "store_summary"]


def store_summary(location: str) -> dict[str, Any]:
    """What is in a store: geometry, the job, how many blocks are done, its runs."""
    target = open_target(location)
    done = target.done_mask()
    filesystem, path = fsspec.core.url_to_fs(str(location))
    try:
        size = filesystem.du(path, total=True)
    except (OSError, NotImplementedError):
        size = None
    job = target.job
    return {
        "location": str(location),
        "shape": list(target.data.shape),
        "dtype": str(target.data.dtype),
        "block_shape": list(target.block_shape),
        "blocks": int(done.size),
        "blocks_done": int(done.sum()),
        "grid": job["grid"],
        "unit": job["unit"],
        "job": job,
        "runs": list(target.group.attrs["daskgauss"].get("runs", [])),
        "bytes_on_disk": size,
    }


def _block_indices(target: Target) -> list[tuple[int, int, int]]:
    return [tuple(int(i) for i in index) for index in np.ndindex(*target.numblocks)]


def export_mrc(location: str, output: str | pathlib.Path, *, overwrite: bool = False) -> None:
    """Write the volume as an MRC 2014 file (mode 2, float32), block by block.

    MRC stores sections along z, rows along y and columns along x, so the file's
    array is the transpose of ours; the voxel size is the grid spacing and the
    header origin is the coordinate of sample (0, 0, 0), as ChimeraX reads it.

    Raises
    ------
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    ImportError
        mrcfile is not installed (``pip install daskgauss[mrc]``).
    """
    try:
        import mrcfile
    except ImportError:
        raise ImportError("MRC export needs mrcfile: pip install 'daskgauss[mrc]'") from None
    target = open_target(location)
    output = pathlib.Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; choose another name or pass --overwrite")
    nx, ny, nz = target.data.shape
    grid = target.grid
    minimum, maximum, total, squares = np.inf, -np.inf, 0.0, 0.0
    with mrcfile.new_mmap(str(output), shape=(nz, ny, nx), mrc_mode=2, overwrite=True) as mrc:
        for index in _block_indices(target):
            x, y, z = target.block_slices(index)
            block = np.asarray(target.data[x, y, z], dtype=np.float32)
            mrc.data[z, y, x] = block.T
            minimum = min(minimum, float(block.min()))
            maximum = max(maximum, float(block.max()))
            total += float(block.sum(dtype=np.float64))
            squares += float(np.square(block, dtype=np.float64).sum())
        count = nx * ny * nz
        mean = total / count
        mrc.voxel_size = tuple(grid.spacing)
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = grid.origin
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = minimum, maximum, mean
        mrc.header.rms = float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def preview_png(
    location: str,
    output: str | pathlib.Path,
    *,
    axis: int = 2,
    index: int | None = None,
    projection: bool = False,
) -> None:
    """Save one plane, or the maximum projection along ``axis``, as a PNG.

    Parameters
    ----------
    axis : {0, 1, 2}
        The axis cut (x, y or z).
    index : int, optional
        Which plane; default the middle one. Ignored with ``projection``.
    projection : bool
        Show the maximum along ``axis`` instead of one plane (reads the whole
        volume, block by block, through dask).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("preview needs matplotlib: pip install 'daskgauss[preview]'") from None
    import dask.array as da

    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (x, y, z), got {axis}")
    target = open_target(location)
    size = target.data.shape[axis]
    if projection:
        image = da.from_zarr(target.data).max(axis=axis).compute()
        title = f"maximum along {'xyz'[axis]}"
    else:
        plane = size // 2 if index is None else index
        if not 0 <= plane < size:
            raise ValueError(
                f"index must lie in [0, {size - 1}] on axis {'xyz'[axis]}, got {plane}"
            )
        selection = [slice(None)] * 3
        selection[axis] = plane  # type: ignore[call-overload]
        image = np.asarray(target.data[tuple(selection)])
        title = f"{'xyz'[axis]} index {plane}"
    grid = target.grid
    shown = [d for d in range(3) if d != axis]
    axes_values = grid.axes
    extent = (
        axes_values[shown[0]][0], axes_values[shown[0]][-1],
        axes_values[shown[1]][0], axes_values[shown[1]][-1],
    )  # fmt: skip
    unit = target.job["unit"] or "coordinate units"
    figure, frame = plt.subplots(figsize=(6, 5))
    shown_image = frame.imshow(image.T, origin="lower", extent=extent, cmap="magma", aspect="equal")
    frame.set_xlabel(f"{'xyz'[shown[0]]} ({unit})")
    frame.set_ylabel(f"{'xyz'[shown[1]]} ({unit})")
    frame.set_title(title)
    figure.colorbar(shown_image, ax=frame)
    figure.savefig(str(output), dpi=100, bbox_inches="tight")
    plt.close(figure)
