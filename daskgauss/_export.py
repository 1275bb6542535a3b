"""Reading a finished (or partial) store back: summary, MRC export, PNG preview.

Each reads the volume block by block or plane by plane; none holds the volume.
"""

from __future__ import annotations

import pathlib
from typing import Any

import fsspec
import numpy as np

from ._extras import require
from ._store import Target, level_targets, open_target

__all__ = [
    "angstroms_per_unit",
    "export_mrc",
    "preview_image",
    "preview_png",
    "store_summary",
]

_METRE_PREFIXES = {
    "yocto": 1e-24, "zepto": 1e-21, "atto": 1e-18, "femto": 1e-15, "pico": 1e-12,
    "nano": 1e-9, "micro": 1e-6, "milli": 1e-3, "centi": 1e-2, "deci": 1e-1, "": 1.0,
    "hecto": 1e2, "kilo": 1e3, "mega": 1e6, "giga": 1e9, "tera": 1e12, "peta": 1e15,
    "exa": 1e18, "zetta": 1e21, "yotta": 1e24,
}  # fmt: skip
_OTHER_UNITS_IN_METRES = {
    "foot": 0.3048, "inch": 0.0254, "yard": 0.9144, "mile": 1609.344,
    "parsec": 3.0856775814913673e16,
}  # fmt: skip


def angstroms_per_unit(unit: str | None) -> float:
    """How many angstroms one coordinate unit is; None (no unit recorded) means angstrom."""
    if unit is None or unit == "angstrom":
        return 1.0
    if unit in _OTHER_UNITS_IN_METRES:
        return _OTHER_UNITS_IN_METRES[unit] * 1e10
    if unit.endswith("meter") and unit[: -len("meter")] in _METRE_PREFIXES:
        return _METRE_PREFIXES[unit[: -len("meter")]] * 1e10
    raise ValueError(f"unknown length unit {unit!r}")


def store_summary(location: str) -> dict[str, Any]:
    """What is in a store: geometry, the job, how many blocks are done, its runs."""
    targets = level_targets(location)
    target = targets[0]
    filesystem, path = fsspec.core.url_to_fs(str(location))
    try:
        size = filesystem.du(path, total=True)
    except (OSError, NotImplementedError):
        size = None
    job = target.record
    levels = []
    for level_target in targets:
        level_done = level_target.done_mask()
        levels.append({
            "level": level_target.level,
            "shape": list(level_target.data.shape),
            "spacing": list(level_target.grid.spacing),
            "origin": list(level_target.grid.origin),
            "blocks": int(level_done.size),
            "blocks_done": int(level_done.sum()),
        })  # fmt: skip
    return {
        "location": str(location),
        "shape": list(target.data.shape),
        "dtype": str(target.data.dtype),
        "block_shape": list(target.block_shape),
        "blocks": sum(level["blocks"] for level in levels),
        "blocks_done": sum(level["blocks_done"] for level in levels),
        "levels": levels,
        "grid": job["grid"],
        "unit": job["unit"],
        "job": job,
        "runs": target.runs(),
        "bytes_on_disk": size,
    }


def _block_indices(target: Target) -> list[tuple[int, int, int]]:
    return [tuple(int(i) for i in index) for index in np.ndindex(*target.numblocks)]


def export_mrc(location: str, output: str | pathlib.Path, *, overwrite: bool = False,
               level: int = 0) -> None:  # fmt: skip
    """Write the volume (or its pyramid level ``level``) as an MRC 2014 file (mode 2,
    float32), block by block.

    MRC stores sections along z, rows along y and columns along x, so the file's
    array is the transpose of ours. MRC measures lengths in angstroms: the voxel
    size is the grid spacing and the header origin the coordinate of sample
    (0, 0, 0), as ChimeraX reads it, both converted from the store's unit (a store
    without a unit is taken to be in angstroms).

    Raises
    ------
    FileExistsError
        ``output`` exists and ``overwrite`` is False.
    MissingExtraError
        mrcfile is not installed (``pip install daskgauss[mrc]``).
    """
    mrcfile = require("mrcfile", extra="mrc", purpose="MRC export")
    target = open_target(location, level)
    output = pathlib.Path(output)
    if output.exists() and not overwrite:
        raise FileExistsError(
            f"{output} exists; choose another name or pass overwrite=True (--overwrite)"
        )
    nx, ny, nz = target.data.shape
    grid = target.grid
    scale = angstroms_per_unit(target.record["unit"])
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
        mrc.voxel_size = tuple(h * scale for h in grid.spacing)
        origin = tuple(o * scale for o in grid.origin)
        mrc.header.origin.x, mrc.header.origin.y, mrc.header.origin.z = origin
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = minimum, maximum, mean
        mrc.header.rms = float(np.sqrt(max(squares / count - mean * mean, 0.0)))


def preview_image(
    location: str,
    *,
    axis: int = 2,
    index: int | None = None,
    projection: bool = False,
    level: int = 0,
) -> tuple[np.ndarray, tuple[float, float, float, float], str]:
    """The image :func:`preview_png` draws: a plane, or the maximum along ``axis``, of
    pyramid level ``level``.

    Returns
    -------
    image : ndarray, 2D
        Indexed by the two other axes, in x y z order.
    extent : tuple of 4 floats
        First and last sample coordinates of the image's two axes.
    title : str
    """
    import dask.array as da

    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2 (x, y, z), got {axis}")
    target = open_target(location, level)
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
    if level:
        title += f", level {level}"
    axes_values = target.grid.axes
    shown = [d for d in range(3) if d != axis]
    extent = (
        axes_values[shown[0]][0], axes_values[shown[0]][-1],
        axes_values[shown[1]][0], axes_values[shown[1]][-1],
    )  # fmt: skip
    return image, extent, title


def preview_png(
    location: str,
    output: str | pathlib.Path,
    *,
    axis: int = 2,
    index: int | None = None,
    projection: bool = False,
    level: int = 0,
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
    level : int
        The pyramid level shown (0: full resolution).
    """
    require("matplotlib", extra="preview", purpose="preview").use("Agg")
    plt = require("matplotlib.pyplot", extra="preview", purpose="preview")
    image, extent, title = preview_image(location, axis=axis, index=index, projection=projection,
                                         level=level)  # fmt: skip
    shown = [d for d in range(3) if d != axis]
    unit = open_target(location).record["unit"] or "coordinate units"
    figure, frame = plt.subplots(figsize=(6, 5))
    shown_image = frame.imshow(image.T, origin="lower", extent=extent, cmap="magma", aspect="equal")
    frame.set_xlabel(f"{'xyz'[shown[0]]} ({unit})")
    frame.set_ylabel(f"{'xyz'[shown[1]]} ({unit})")
    frame.set_title(title)
    figure.colorbar(shown_image, ax=frame)
    figure.savefig(str(output), dpi=100, bbox_inches="tight")
    plt.close(figure)
