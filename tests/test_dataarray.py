"""Stores and lazy volumes as xarray DataArrays with physical coordinates."""

from __future__ import annotations

import pathlib
import re
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr

import daskgauss as dg
from daskgauss._export import preview_image
from daskgauss._extras import MissingExtraError
from daskgauss._store import StoreMismatchError

GRIDS = {
    "linspace": dg.Grid.from_bounds((-6, -5, -4), (6, 5, 4), (25, 21, 17)),
    "cell-centred": dg.Grid.from_box(-6, 6, (24, 20, 16)),
    "anisotropic": dg.Grid(shape=(20, 18, 30), origin=(10.0, -3.5, 0.25), spacing=(0.5, 0.7, 0.3)),
}


def _render(tmp_path, grid, rng, **options):
    store = tmp_path / "volume.zarr"
    low = np.array(grid.origin)
    high = low + (np.array(grid.shape) - 1) * np.array(grid.spacing)
    centres = rng.uniform(low, high, size=(150, 3))
    weights = rng.uniform(0.5, 1.5, size=150)
    arguments = dict(weights=weights, chunks=(8, 8, 8)) | options
    dg.render_to_zarr(store, centres, 0.6, grid, unit="angstrom", **arguments)
    lazy = dg.gaussian_sum(centres, 0.6, grid, **arguments)
    return store, lazy


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_store_round_trips_with_its_grid(tmp_path, rng, name):
    grid = GRIDS[name]
    store, lazy = _render(tmp_path, grid, rng)
    array = dg.open_dataarray(store)
    assert array.dims == ("x", "y", "z")
    assert isinstance(array.data, da.Array)
    assert dg.open_grid(store) == grid
    for axis, values in grid.coords().items():
        np.testing.assert_array_equal(array[axis].values, values)
        assert array[axis].attrs["units"] == "angstrom"
    np.testing.assert_array_equal(array.values, zarr.open_array(str(store), path="0")[...])
    np.testing.assert_array_equal(array.values, lazy.compute())
    assert array.attrs["unit"] == "angstrom"
    assert array.attrs["centres"] == 150
    assert array.attrs["sigma_min"] == array.attrs["sigma_max"] == 0.6
    assert array.attrs["tol"] == 1e-6
    assert array.attrs["normalize"] == "peak"
    assert array.attrs["complete"] == 1
    assert array.attrs["blocks_done"] == array.attrs["blocks"]
    assert array.chunks == tuple(tuple(c) for c in lazy.chunks)


def test_grid_coords_are_the_axes():
    grid = GRIDS["anisotropic"]
    coords = grid.coords()
    assert list(coords) == ["x", "y", "z"]
    for d, name in enumerate("xyz"):
        np.testing.assert_array_equal(coords[name], grid.axes[d])


def test_sel_nearest_picks_the_expected_plane(tmp_path, rng):
    grid = GRIDS["anisotropic"]
    store, _ = _render(tmp_path, grid, rng)
    array = dg.open_dataarray(store)
    # z samples at 0.25 + 0.3 k: 3.0 is nearest to k = 9 (2.95), 3.12 to k = 10 (3.25).
    np.testing.assert_array_equal(array.sel(z=3.0, method="nearest").values, array.values[:, :, 9])
    np.testing.assert_array_equal(array.sel(z=3.12, method="nearest").values,
                                  array.values[:, :, 10])  # fmt: skip
    np.testing.assert_array_equal(array.sel(x=12.0).values, array.values[4])


def test_opening_reads_no_volume_data(tmp_path, rng):
    """Opening needs the metadata and the done record only: with every chunk of the
    volume deleted it still opens, and no dask task runs until asked."""
    store, _ = _render(tmp_path, GRIDS["linspace"], rng)
    chunks = [p for p in (store / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert chunks
    for path in chunks:
        path.unlink()
    ran = []
    with dask.callbacks.Callback(pretask=lambda key, dsk, state: ran.append(key)):
        array = dg.open_dataarray(store)
        plane = array.sel(z=0.0, method="nearest")
        assert not ran
        assert float(plane.max().compute()) == 0.0  # now read: the deleted chunks are zeros
    assert ran


def test_a_partial_store_opens_and_says_how_much_is_done(tmp_path, rng):
    store, _ = _render(tmp_path, GRIDS["linspace"], rng)
    done = zarr.open_group(str(store), mode="r+")["blocks_done"]
    done[0, 0, 0] = 0
    done[1, 1, 1] = 0
    array = dg.open_dataarray(store)
    assert array.attrs["blocks"] - array.attrs["blocks_done"] == 2
    assert array.attrs["complete"] == 0


def test_lazy_volume_as_a_dataarray(rng):
    grid = GRIDS["cell-centred"]
    centres = rng.uniform(-6, 6, size=(40, 3))
    volume = dg.gaussian_sum(centres, 0.7, grid, chunks=8)
    array = dg.to_dataarray(volume, grid, unit="nanometer")
    assert array.data is volume
    assert array.x.attrs["units"] == "nanometer"
    np.testing.assert_array_equal(array.values, volume.compute())
    assert dg.to_dataarray(volume, grid).x.attrs == {}
    with pytest.raises(ValueError, match=r"volume has shape \(24, 20, 16\), the grid \(5, 5, 5\)"):
        dg.to_dataarray(volume, dg.Grid(shape=5))


@pytest.mark.parametrize(("axis", "name"), [(0, "x"), (1, "y"), (2, "z")])
def test_preview_and_the_dataarray_agree(tmp_path, rng, axis, name):
    store, _ = _render(tmp_path, GRIDS["anisotropic"], rng)
    array = dg.open_dataarray(store)
    image, extent, _ = preview_image(str(store), axis=axis, index=5)
    np.testing.assert_array_equal(image, array.isel({name: 5}).values)
    projection, _, _ = preview_image(str(store), axis=axis, projection=True)
    np.testing.assert_array_equal(projection, array.max(name).values)
    other = [n for n in "xyz" if n != name]
    assert extent == (array[other[0]].values[0], array[other[0]].values[-1],
                      array[other[1]].values[0], array[other[1]].values[-1])  # fmt: skip


@pytest.mark.parametrize("make", ["missing", "not-daskgauss", "file"])
def test_not_a_store_is_a_one_line_error(tmp_path, make):
    location = tmp_path / "thing.zarr"
    if make == "not-daskgauss":
        zarr.create_group(str(location)).create_array("data", shape=(2,), dtype="f4")
    elif make == "file":
        location.write_text("hello")
    error_type = FileNotFoundError if make == "missing" else StoreMismatchError
    with pytest.raises(error_type) as info:
        dg.open_dataarray(location)
    assert "\n" not in str(info.value)
    assert str(location) in str(info.value)


def test_a_level_the_store_does_not_have_is_refused(tmp_path, rng):
    store, _ = _render(tmp_path, GRIDS["linspace"], rng)
    with pytest.raises(ValueError, match=r"level must be an integer from 0 to 0 .* got 1"):
        dg.open_dataarray(store, level=1)


def test_without_xarray_the_error_names_the_extra(tmp_path, rng, monkeypatch):
    store, _ = _render(tmp_path, GRIDS["linspace"], rng)
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now fails
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'daskgauss[xarray]'")):
        dg.open_dataarray(store)


def test_readme_notebook_section_runs(tmp_path, monkeypatch):
    """The README's "In a notebook" example, run as written (plotting to a file-less backend)."""
    import matplotlib

    matplotlib.use("Agg")
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## In a notebook", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert isinstance(namespace["density"], xr.DataArray)
    assert namespace["projection"].dims == ("x", "y")
    assert (tmp_path / "notebook.zarr").exists()
