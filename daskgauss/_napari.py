"""napari reader for daskgauss stores (npe2), placed at their physical position.

napari-ome-zarr reads only the first of a dataset's coordinate transformations, so a
store on [-50, 50]^3 opens on [0, 100]^3 there; this reader gives napari the scale
*and* the translation. It claims only stores daskgauss wrote (others stay with
napari-ome-zarr), reads no volume data (dask arrays), and opens partial stores.
napari is not imported: the reader returns plain layer data.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import dask.array as da

from ._dataarray import _grid_of, _levels
from ._store import open_target

__all__ = ["get_reader", "read_store"]

LayerData = tuple[Any, dict[str, Any], str]


def _is_daskgauss_store(path: str) -> bool:
    """Whether ``path`` is a local store daskgauss wrote, from its zarr.json alone."""
    metadata = pathlib.Path(path) / "zarr.json"
    try:
        attributes = json.loads(metadata.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False
    return isinstance(attributes, dict) and "daskgauss" in attributes and "ome" in attributes


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """npe2 reader contribution: :func:`read_store` for a daskgauss store, else None.

    Declines (returns None, never raises) anything else: other zarr stores, files,
    missing paths, lists of paths.
    """
    if isinstance(path, list | tuple) or not _is_daskgauss_store(str(path)):
        return None
    return read_store


def read_store(path: str) -> list[LayerData]:
    """One image layer: every pyramid level, lazily, at its physical position.

    Returns
    -------
    list of (data, kwargs, "image")
        ``data`` is the level-0 dask array, or the list of all levels (finest first)
        for a pyramid; ``kwargs`` hold ``scale`` (spacing) and ``translate`` (origin)
        of level 0 (napari places coarser levels from their shapes), the axis labels
        and units, a name, and contrast limits from the job (0 to the largest peak
        weight) rather than from a scan of the data.
    """
    target = open_target(path)
    levels = _levels(target.group)
    arrays = [da.from_zarr(target.group[dataset["path"]]) for dataset in levels]
    grid = _grid_of(target.group[levels[0]["path"]], levels[0])
    record = target.record
    unit = record.get("unit")
    amplitude = record.get("amplitude") or {}
    low = min(0.0, amplitude.get("min") or 0.0)
    high = max(0.0, amplitude.get("max") or 0.0)
    if high <= low:
        high = low + 1.0
    done = target.done_mask()
    name = pathlib.Path(str(path).rstrip("/")).name
    kwargs: dict[str, Any] = {
        "name": name if done.all() else f"{name} ({int(done.sum())} of {done.size} blocks)",
        "scale": grid.spacing,
        "translate": grid.origin,
        "axis_labels": ("x", "y", "z"),
        "contrast_limits": (low, high),
        "multiscale": len(arrays) > 1,
        "metadata": {"daskgauss": record, "store": str(path)},
    }
    if unit:
        kwargs["units"] = (unit,) * 3
    return [(arrays if len(arrays) > 1 else arrays[0], kwargs, "image")]
