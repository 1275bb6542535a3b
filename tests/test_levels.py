"""Pyramid levels rendered from the Gaussians: box means of level 0, stores, viewers, resume."""

from __future__ import annotations

import math
import signal
import subprocess

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import daskgauss as dg
from daskgauss._store import StoreMismatchError
from daskgauss.cli import cli
from tests import reference
from tests.long_render import long_render, wait_for_blocks


def box_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each factor^3 box of ``volume`` (of the samples that exist at the edges)."""
    for axis in range(3):
        size = volume.shape[axis]
        starts = np.arange(0, size, factor)
        sums = np.add.reduceat(volume, starts, axis=axis)
        counts = np.diff(np.append(starts, size)).astype(float)
        shape = [1, 1, 1]
        shape[axis] = len(starts)
        volume = sums / counts.reshape(shape)
    return volume


def assert_level_is_the_box_mean(level_values, level, centres, sigma, weights, grid, *, tol,
                                 dtype, periodic=False):  # fmt: skip
    """Level ``level`` against the box mean of the exact level 0, with the documented
    level-0 bound box-averaged (a level drops only what level 0 drops) and the rounding
    of averaging ``2^level`` factors per axis."""
    count = len(centres)
    sigma3 = np.broadcast_to(np.asarray(sigma, float), (count, 3)).copy()
    amplitude = reference.amplitudes(sigma3, np.broadcast_to(weights, (count,)), "peak")
    period = grid.period if periodic else None
    unit = reference.unit_gaussians(grid.axes, centres, sigma3, period)
    exact = np.einsum("i,i...->...", amplitude, unit)
    covering = reference.covering_count(grid.axes, centres, sigma3, tol, period)
    bound = reference.error_bound(unit, amplitude, tol, covering, dtype)
    scale = np.einsum("i,i...->...", np.abs(amplitude), unit)
    factor = 2**level
    allowed = box_mean(bound, factor) + 6 * factor * np.finfo(dtype).eps * box_mean(scale, factor)
    error = np.abs(np.asarray(level_values, float) - box_mean(exact, factor))
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert np.all(error <= allowed), f"error {error[worst]:.3e} > {allowed[worst]:.3e} at {worst}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(32, 32, 32), (37, 29, 45)])
def test_each_level_is_the_box_mean_of_level_0(rng, dtype, shape):
    grid = dg.Grid(shape=shape, origin=(-4.0, -3.0, 2.0), spacing=(0.3, 0.35, 0.25))
    centres = rng.uniform(-5, 12, size=(40, 3))
    sigma = rng.uniform(0.3, 1.2, size=(40, 3))
    weights = rng.uniform(-1, 2, size=40)
    for level in (1, 2, 3):
        volume = dg.gaussian_sum(centres, sigma, grid, weights=weights, dtype=dtype,
                                 level=level, chunks=7)  # fmt: skip
        assert (
            volume.shape == grid.level(level).shape == tuple(math.ceil(n / 2**level) for n in shape)
        )
        assert_level_is_the_box_mean(volume.compute(), level, centres, sigma, weights, grid,
                                     tol=1e-6, dtype=dtype)  # fmt: skip


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_periodic_levels(rng, dtype):
    grid = dg.Grid.from_box(0.0, 10.0, (20, 22, 18))
    centres = rng.uniform(0, 10, size=(30, 3))
    for level in (1, 2):
        volume = dg.gaussian_sum(centres, 0.7, grid, periodic=True, dtype=dtype, level=level)
        assert_level_is_the_box_mean(volume.compute(), level, centres, 0.7, 1.0, grid,
                                     tol=1e-6, dtype=dtype, periodic=True)  # fmt: skip


def test_level_grid_and_auto_levels():
    grid = dg.Grid(shape=(1000, 300, 7), origin=(-1.0, 0.0, 5.0), spacing=(0.5, 1.0, 2.0))
    level = grid.level(2)
    assert level.shape == (250, 75, 2)
    assert level.spacing == (2.0, 4.0, 8.0)
    assert level.origin == (-1.0 + 1.5 * 0.5, 1.5, 5.0 + 1.5 * 2.0)
    assert grid.level(0) is grid
    assert grid.auto_levels() == 2  # 1000 -> 500 -> 250
    assert dg.Grid(shape=256).auto_levels() == 0
    assert dg.Grid(shape=257).auto_levels() == 1
    with pytest.raises(ValueError, match="non-negative integer"):
        grid.level(-1)


def test_stored_levels_are_the_lazy_levels_bit_for_bit(rng, tmp_path):
    grid = dg.Grid.from_bounds(-10, 10, (41, 37, 30))
    centres = rng.uniform(-11, 11, size=(120, 3))
    sigma = rng.uniform(0.4, 1.5, size=120)
    store = str(tmp_path / "pyramid.zarr")
    dg.render_to_zarr(store, centres, sigma, grid, chunks=8, levels=3, unit="angstrom")
    group = zarr.open_group(store, mode="r")
    for level in range(4):
        lazy = dg.gaussian_sum(centres, sigma, grid, level=level).compute()
        other_chunks = dg.gaussian_sum(centres, sigma, grid, level=level, chunks=5).compute()
        np.testing.assert_array_equal(group[str(level)][...], lazy)
        np.testing.assert_array_equal(other_chunks, lazy)
    summary = dg._export.store_summary(store)
    assert [level["shape"] for level in summary["levels"]] == [
        list(grid.level(level).shape) for level in range(4)
    ]
    assert summary["blocks_done"] == summary["blocks"]


def test_ngff_multiscales_metadata_validates_and_reads(rng, tmp_path):
    import ome_zarr.io as ome_io
    import ome_zarr.reader as ome_reader
    import ome_zarr_models.v05.image as image

    grid = dg.Grid.from_bounds(-5, 5, 33)
    centres = rng.uniform(-5, 5, size=(30, 3))
    store = tmp_path / "ngff.zarr"
    dg.render_to_zarr(str(store), centres, 0.8, grid, chunks=16, levels=2, unit="nanometer")
    model = image.Image.from_zarr(zarr.open_group(str(store), mode="r"))
    multiscale = model.attributes.ome.multiscales[0]
    assert [dataset.path for dataset in multiscale.datasets] == ["0", "1", "2"]
    assert multiscale.type == "mean"
    (node,) = list(ome_reader.Reader(ome_io.parse_url(str(store)))())
    assert len(node.data) == 3
    for level, (data, transforms) in enumerate(
        zip(node.data, node.metadata["coordinateTransformations"], strict=True)
    ):
        level_grid = grid.level(level)
        assert tuple(data.shape) == level_grid.shape
        assert transforms[0]["scale"] == list(level_grid.spacing)
        assert transforms[1]["translation"] == pytest.approx(
            [o + (2**level - 1) / 2 * h for o, h in zip(grid.origin, grid.spacing, strict=True)]
        )
        stored = zarr.open_array(str(store), path=str(level))[...]
        np.testing.assert_array_equal(np.asarray(data), stored)


def test_the_napari_reader_gives_every_level_placed_right(rng, tmp_path):
    from daskgauss._napari import read_store

    grid = dg.Grid.from_bounds(-5, 5, 40)
    store = tmp_path / "napari.zarr"
    dg.render_to_zarr(str(store), rng.uniform(-5, 5, (20, 3)), 0.8, grid, chunks=8, levels=2)
    ((data, keywords, kind),) = read_store(str(store))
    assert kind == "image"
    assert keywords["multiscale"]
    assert [tuple(level.shape) for level in data] == [grid.level(level).shape for level in range(3)]
    assert tuple(keywords["scale"]) == pytest.approx(grid.spacing)
    assert tuple(keywords["translate"]) == pytest.approx(grid.origin)


def test_levels_are_part_of_the_job(rng, tmp_path):
    grid = dg.Grid.from_bounds(-5, 5, 20)
    centres = rng.uniform(-5, 5, size=(10, 3))
    store = str(tmp_path / "job.zarr")
    dg.render_to_zarr(store, centres, 1.0, grid, chunks=8)
    with pytest.raises(StoreMismatchError, match="levels: store has 0, job has 1"):
        dg.render_to_zarr(store, centres, 1.0, grid, chunks=8, levels=1)
    assert sorted(zarr.open_group(store, mode="r").array_keys()) == [
        "0", "block_pairs", "blocks_done"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"levels": -1}, "levels must be None, 'auto' or a non-negative integer"),
        ({"levels": "many"}, "levels must be None, 'auto' or a non-negative integer"),
        ({"levels": 1, "covariance": np.eye(3), "sigma": None}, "not separable"),
    ],
)
def test_bad_levels_are_refused_before_anything_is_written(tmp_path, arguments, words):
    store = tmp_path / "bad.zarr"
    options = {"sigma": 1.0, **arguments}
    sigma = options.pop("sigma")
    with pytest.raises(ValueError, match=words):
        dg.render_to_zarr(str(store), np.zeros((3, 3)), sigma, dg.Grid(shape=8), **options)
    assert not store.exists()


def test_lazy_level_errors():
    grid = dg.Grid(shape=8)
    with pytest.raises(ValueError, match="level must be a non-negative integer"):
        dg.gaussian_sum(np.zeros((1, 3)), 1.0, grid, level=-2)
    with pytest.raises(ValueError, match="not separable"):
        dg.gaussian_sum(np.zeros((1, 3)), None, grid, covariance=np.eye(3), level=1)


def test_cli_levels_info_preview_and_export(tmp_path):
    pytest.importorskip("mrcfile")
    pytest.importorskip("matplotlib")
    centres = np.random.default_rng(2).uniform(-5, 5, size=(25, 3))
    np.save(tmp_path / "c.npy", centres)
    store = tmp_path / "cli.zarr"
    runner = CliRunner()
    result = runner.invoke(cli, ["render", str(tmp_path / "c.npy"), str(store), "--shape", "40",
                                 "--lower", "-5", "--upper", "5", "--sigma", "0.7", "--chunks",
                                 "16", "--levels", "2", "--workers", "1",
                                 "--threads-per-worker", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    grid = dg.Grid.from_bounds(-5, 5, 40)
    np.testing.assert_array_equal(
        zarr.open_array(str(store), path="2")[...],
        dg.gaussian_sum(centres, 0.7, grid, level=2).compute(),
    )
    info = runner.invoke(cli, ["info", str(store)])
    assert "level 2     (10, 10, 10)" in info.output, info.output
    assert runner.invoke(cli, ["preview", str(store), str(tmp_path / "p.png"), "--level", "1"]
                         ).exit_code == 0  # fmt: skip
    result = runner.invoke(cli, ["export", str(store), str(tmp_path / "e.mrc"), "--level", "1"])
    assert result.exit_code == 0, result.output
    import mrcfile

    with mrcfile.open(str(tmp_path / "e.mrc")) as mrc:
        assert mrc.data.shape == (20, 20, 20)
        assert float(mrc.voxel_size.x) == pytest.approx(grid.level(1).spacing[0])
    missing = runner.invoke(cli, ["export", str(store), str(tmp_path / "f.mrc"), "--level", "3"])
    assert missing.exit_code == 1
    assert "no level 3" in missing.output


@pytest.mark.slow
def test_kill_9_mid_pyramid_then_resume_gives_every_level(tmp_path):
    """Coarsest first: once level 0 has blocks, levels 2 and 1 are complete (readable)."""
    store = tmp_path / "killed.zarr"
    centres, command = long_render(tmp_path, store)
    command += ["--levels", "2", "--workers", "1", "--threads-per-worker", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_blocks(store, process)
    coarse = [dg._store.open_target(str(store), level).done_mask() for level in (1, 2)]
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert all(mask.all() for mask in coarse)
    level_0 = dg._store.open_target(str(store)).done_mask()
    assert 0 < level_0.sum() < level_0.size
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    grid = dg.Grid.from_bounds(-30, 30, 96)
    for level in range(3):
        expected = dg.gaussian_sum(centres, 0.8, grid, chunks=8, level=level).compute()
        np.testing.assert_array_equal(zarr.open_array(str(store), path=str(level))[...], expected)


def test_levels_of_chunked_centres_are_the_same_bits(rng, tmp_path):
    import dask.array as da

    grid = dg.Grid.from_bounds(-10, 10, (37, 30, 33))
    centres = rng.uniform(-11, 11, size=(200, 3))
    sigma = rng.uniform(0.4, 1.2, size=200)
    store = str(tmp_path / "chunked.zarr")
    dg.render_to_zarr(store, da.from_array(centres, chunks=45), da.from_array(sigma, chunks=45),
                      grid, chunks=8, levels=2)  # fmt: skip
    for level in range(3):
        expected = dg.gaussian_sum(centres, sigma, grid, level=level).compute()
        lazy = dg.gaussian_sum(da.from_array(centres, chunks=45), sigma, grid, level=level,
                               chunks=6)  # fmt: skip
        np.testing.assert_array_equal(zarr.open_array(store, path=str(level))[...], expected)
        np.testing.assert_array_equal(lazy.compute(), expected)


def test_levels_reopen_as_dataarrays_on_their_grids(rng, tmp_path):
    pytest.importorskip("xarray")
    grid = dg.Grid(shape=(30, 21, 17), origin=(-3.0, 1.0, 0.5), spacing=(0.4, 0.5, 0.6))
    centres = rng.uniform(-3, 9, size=(15, 3))
    store = str(tmp_path / "xr.zarr")
    dg.render_to_zarr(store, centres, 0.9, grid, chunks=8, levels=2)
    for level in range(3):
        level_grid = dg.open_grid(store, level=level)
        expected = grid.level(level)
        assert level_grid.shape == expected.shape
        np.testing.assert_allclose(level_grid.spacing, expected.spacing, rtol=1e-15)
        np.testing.assert_allclose(level_grid.origin, expected.origin, rtol=1e-15)
        array = dg.open_dataarray(store, level=level)
        np.testing.assert_allclose(array.coords["x"].values, expected.axes[0], rtol=1e-14)
        np.testing.assert_array_equal(
            array.values, dg.gaussian_sum(centres, 0.9, grid, level=level).compute()
        )
