"""The napari reader, through npe2's plugin manager as napari uses it (no Qt, no window)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr
from npe2 import PluginManager

import daskgauss as dg


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    """npe2's plugin manager, as napari uses it, after discovering installed manifests:
    daskgauss's is found through its "napari.manifest" entry point."""
    plugins = PluginManager.instance()
    plugins.discover(include_npe1=False)
    assert "daskgauss" in {manifest.name for manifest in plugins.iter_manifests()}
    return plugins


@pytest.fixture
def store(tmp_path, rng):
    grid = dg.Grid(shape=(30, 26, 22), origin=(-50.0, 12.5, 3.0), spacing=(0.5, 0.4, 0.3))
    centres = rng.uniform((-50, 12.5, 3.0), (-35.5, 22.5, 9.3), size=(80, 3))
    path = tmp_path / "map.zarr"
    dg.render_to_zarr(path, centres, 0.8, grid, weights=rng.uniform(0.5, 2.5, 80),
                      unit="angstrom", chunks=(16, 16, 16))  # fmt: skip
    return path, grid


def _read(manager, path):
    readers = [reader for reader in manager.iter_compatible_readers([str(path)])
               if reader.plugin_name == "daskgauss"]  # fmt: skip
    if not readers:
        return None
    # As napari calls a reader: the command with the paths and stack=False, then the
    # callable it returned with the same.
    function = readers[0].exec(kwargs={"path": [str(path)], "stack": False})
    return None if function is None else function([str(path)], stack=False)


def test_the_layer_sits_at_the_grid(manager, store):
    path, grid = store
    ((_, kwargs, kind),) = _read(manager, path)
    assert kind == "image"
    assert tuple(kwargs["scale"]) == grid.spacing
    assert tuple(kwargs["translate"]) == grid.origin
    assert tuple(kwargs["axis_labels"]) == ("x", "y", "z")
    assert tuple(kwargs["units"]) == ("angstrom",) * 3
    assert kwargs["name"] == "map.zarr"
    assert kwargs["multiscale"] is False
    # World position of sample (i, j, k), as napari computes it: translate + index * scale.
    for index in [(0, 0, 0), (29, 25, 21), (7, 3, 11)]:
        world = np.array(kwargs["translate"]) + np.array(index) * np.array(kwargs["scale"])
        np.testing.assert_allclose(world, [grid.axes[d][index[d]] for d in range(3)], rtol=1e-15)


def test_the_data_are_lazy_and_the_store_values(manager, store):
    path, _ = store
    ((data, kwargs, _),) = _read(manager, path)
    assert isinstance(data, da.Array)
    np.testing.assert_array_equal(data.compute(), zarr.open_array(str(path), path="0")[...])
    low, high = kwargs["contrast_limits"]
    weights_peak = zarr.open_group(str(path), mode="r").attrs["daskgauss"]["job"]["amplitude"]
    assert (low, high) == (0.0, weights_peak["max"])


def test_a_partial_store_opens_with_what_is_done(manager, store):
    path, _ = store
    done = zarr.open_group(str(path), mode="r+")["blocks_done"]
    done[0, 0, 0] = 0
    ((_, kwargs, _),) = _read(manager, path)
    assert kwargs["name"] == f"map.zarr ({done.size - 1} of {done.size} blocks)"


def test_other_zarr_stores_and_missing_paths_are_declined(manager, tmp_path):
    other = tmp_path / "other.zarr"
    group = zarr.create_group(str(other))
    group.create_array("0", shape=(4, 4, 4), dtype="f4")
    group.attrs["ome"] = {"version": "0.5", "multiscales": []}
    assert _read(manager, other) is None
    assert _read(manager, tmp_path / "missing.zarr") is None
    (tmp_path / "notes.txt").write_text("x")
    assert _read(manager, tmp_path / "notes.txt") is None
    from daskgauss._napari import get_reader

    assert get_reader([str(other), str(other)]) is None
