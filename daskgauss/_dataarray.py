"""Labelled arrays: volumes and stores as xarray DataArrays with physical coordinates.

xarray is optional (``pip install 'daskgauss[xarray]'``); without it these functions
say which extra to install. Nothing here reads volume data: the DataArrays are lazy
(dask-backed) and values are read only when computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import zarr

from ._extras import require
from ._grid import Grid
from ._store import AXES, open_target

if TYPE_CHECKING:
    import xarray

__all__ = ["open_dataarray", "open_grid", "to_dataarray"]


def _levels(group: zarr.Group) -> list[dict[str, Any]]:
    """The store's NGFF datasets, finest first."""
    return list(group.attrs["ome"]["multiscales"][0]["datasets"])


def _dataset(location: str, level: int) -> tuple[Any, dict[str, Any]]:
    target = open_target(location)
    levels = _levels(target.group)
    if not isinstance(level, int | np.integer) or not 0 <= level < len(levels):
        raise ValueError(
            f"level must be an integer from 0 to {len(levels) - 1} for {location}, got {level!r}"
        )
    return target, levels[int(level)]


def _grid_of(array: zarr.Array, dataset: dict[str, Any]) -> Grid:
    transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
    scale = transforms["scale"]["scale"]
    translation = transforms.get("translation", {"translation": [0.0, 0.0, 0.0]})["translation"]
    return Grid(shape=tuple(array.shape), origin=tuple(translation), spacing=tuple(scale))  # type: ignore[arg-type]


def open_grid(store: str, *, level: int = 0) -> Grid:
    """The grid of a rendered store, from its OME-NGFF coordinate transformations.

    Parameters
    ----------
    store : str
        Path or fsspec URL of a store written by :func:`render_to_zarr` or the CLI.
    level : int
        Pyramid level (0: full resolution, the only level of a single-scale store).

    Raises
    ------
    FileNotFoundError
        Nothing is at ``store``.
    StoreMismatchError
        Something is there that daskgauss did not write.
    ValueError
        ``level`` is not one of the store's levels.
    """
    target, dataset = _dataset(str(store), level)
    return _grid_of(target.group[dataset["path"]], dataset)


def to_dataarray(volume: da.Array, grid: Grid, *, unit: str | None = None) -> xarray.DataArray:
    """A lazy volume (e.g. from :func:`gaussian_sum`) as a DataArray with coordinates.

    Parameters
    ----------
    volume : dask.array.Array or ndarray, shape ``grid.shape``
    grid : Grid
        Where the samples are: coordinate ``x`` of index ``i`` is ``grid.axes[0][i]``.
    unit : str, optional
        Unit of the coordinates, recorded in each coordinate's ``units`` attribute.

    Returns
    -------
    xarray.DataArray
        Dims ``("x", "y", "z")``; nothing is computed.
    """
    xr = require("xarray", extra="xarray", purpose="to_dataarray")
    if tuple(volume.shape) != grid.shape:
        raise ValueError(f"volume has shape {tuple(volume.shape)}, the grid {grid.shape}")
    coords = {
        name: xr.Variable(name, values, attrs={"units": unit} if unit else {})
        for name, values in grid.coords().items()
    }
    return xr.DataArray(volume, dims=AXES, coords=coords)


def open_dataarray(store: str, *, level: int = 0) -> xarray.DataArray:
    """A rendered store as a lazy DataArray with physical coordinates.

    Parameters
    ----------
    store : str
        Path or fsspec URL of a store written by :func:`render_to_zarr` or the CLI.
    level : int
        Pyramid level (0: full resolution, the only level of a single-scale store).

    Returns
    -------
    xarray.DataArray
        Dims ``("x", "y", "z")``, coordinates from the store's NGFF transformations
        (in its unit, the ``units`` attribute of each coordinate), dask-backed with
        the store's chunks. ``attrs`` hold the job: ``unit``, ``centres``,
        ``sigma_min``, ``sigma_max``, ``tol``, ``normalize``, ``periodic``, ``dtype``,
        and the progress: ``blocks``, ``blocks_done`` and ``complete`` (1 or 0). A
        store still being rendered, or interrupted, opens too: blocks not done read
        as zeros, and ``complete`` is 0.

    Raises
    ------
    FileNotFoundError
        Nothing is at ``store``.
    StoreMismatchError
        Something is there that daskgauss did not write.
    ValueError
        ``level`` is not one of the store's levels.
    """
    require("xarray", extra="xarray", purpose="open_dataarray")
    target, dataset = _dataset(str(store), level)
    array = target.group[dataset["path"]]
    grid = _grid_of(array, dataset)
    record = target.record
    done = target.done_mask()
    unit = record.get("unit")
    labelled = to_dataarray(da.from_zarr(array), grid, unit=unit)
    sigma = record.get("sigma") or {}
    labelled.attrs = {
        "store": str(store),
        "level": int(level),
        "unit": unit or "",
        "centres": record.get("centres"),
        "sigma_min": sigma.get("min"),
        "sigma_max": sigma.get("max"),
        "tol": record.get("tol"),
        "normalize": record.get("normalize"),
        # 0 or 1, not a bool: netCDF attributes cannot be booleans.
        "periodic": int(bool(record.get("periodic"))),
        "dtype": str(array.dtype),
        "blocks": int(done.size),
        "blocks_done": int(done.sum()),
        "complete": int(bool(done.all())),
    }
    labelled.name = "density" if record.get("normalize") == "density" else "intensity"
    return labelled
