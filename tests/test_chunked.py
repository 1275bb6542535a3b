"""Centres as dask arrays (Zarr, Parquet ...): binned per chunk, the same bits as in memory."""

from __future__ import annotations

import os

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._job import JobSpec
from daskgauss._store import StoreMismatchError, open_target


def _problem(rng, count=700):
    grid = dg.Grid.from_bounds((-8, -7, -6), (8, 7, 6), (40, 34, 30))
    centres = rng.uniform(-9, 9, size=(count, 3))
    sigma = rng.uniform(0.2, 1.2, size=(count, 3))
    weights = rng.normal(size=count)
    return grid, centres, sigma, weights


@pytest.mark.parametrize("rows", [7, 97, 350, 700])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"normalize": "density", "dtype": "float64"},
        {"periodic": True, "tol": 1e-4},
        {"chunks": (13, 34, 7)},
    ],
    ids=["peak", "density-float64", "periodic", "odd-blocks"],
)
def test_dask_centres_give_the_bits_of_numpy_centres(rng, rows, options):
    grid, centres, sigma, weights = _problem(rng)
    if options.get("periodic"):
        grid = dg.Grid.from_box(-8, 8, (40, 34, 30))
        sigma = sigma * 0.5
    chunks = options.pop("chunks", (16, 16, 16))
    expected = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=chunks,
                               **options).compute()  # fmt: skip
    lazy = dg.gaussian_sum(da.from_array(centres, chunks=(rows, 3)),
                           da.from_array(sigma, chunks=(rows // 2 + 1, 3)), grid,
                           weights=da.from_array(weights, chunks=rows), chunks=chunks,
                           **options)  # fmt: skip
    assert lazy.chunks == tuple(tuple(c) for c in dg.gaussian_sum(centres, sigma, grid,
                                chunks=chunks, **options).chunks)  # fmt: skip
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_chunks_of_one_row(rng):
    grid, centres, sigma, weights = _problem(rng, count=40)
    expected = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=20).compute()
    lazy = dg.gaussian_sum(da.from_array(centres, chunks=(1, 3)), da.from_array(sigma, chunks=1),
                           grid, weights=da.from_array(weights, chunks=1), chunks=20)  # fmt: skip
    np.testing.assert_array_equal(lazy.compute(), expected)


def test_mixed_forms_shared_and_per_centre(rng):
    """Numpy per-centre weights with dask centres, one sigma for all; and a weight
    column that is constant in some chunks only."""
    grid, centres, _, weights = _problem(rng)
    weights[:350] = 2.0  # the first chunk's weights are all equal: kept as one value there
    expected = dg.gaussian_sum(centres, 0.6, grid, weights=weights, chunks=16).compute()
    lazy = dg.gaussian_sum(da.from_array(centres, chunks=(350, 3)), 0.6, grid, weights=weights,
                           chunks=16)  # fmt: skip
    np.testing.assert_array_equal(lazy.compute(), expected)
    per_centre = dg.gaussian_sum(da.from_array(centres, chunks=(100, 3)),
                                 da.from_array(np.full(700, 0.6), chunks=100), grid,
                                 weights=weights, chunks=16)  # fmt: skip
    np.testing.assert_array_equal(per_centre.compute(), expected)


def test_a_bad_row_names_the_source_and_the_row(rng):
    grid, centres, sigma, _ = _problem(rng)
    centres[523, 1] = np.nan
    lazy = dg.gaussian_sum(da.from_array(centres, chunks=(100, 3)), 0.5, grid, chunks=16)
    with pytest.raises(ValueError, match=r"centres: centres must be finite: found nan at index "
                                         r"\(523, 1\)"):  # fmt: skip
        lazy.compute()
    sigma[611, 2] = -1.0
    lazy = dg.gaussian_sum(da.from_array(centres[:500], chunks=(100, 3)),
                           da.from_array(sigma[:500], chunks=(100, 3)), grid)  # fmt: skip
    lazy.compute()  # rows 0-499 are fine
    bad = dg.gaussian_sum(da.from_array(np.nan_to_num(centres), chunks=(100, 3)),
                          da.from_array(sigma, chunks=(100, 3)), grid)  # fmt: skip
    with pytest.raises(ValueError, match=r"sigma must be positive, got -1\.0 at index \(611, 2\)"):
        bad.compute()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda c: da.from_array(c[:, :2], chunks=10), r"centres must have shape \(M, 3\)"),
        (lambda c: (lazy := da.from_array(c, chunks=10))[lazy[:, 0] > 0], "unknown size"),
    ],
)
def test_shapes_are_checked_without_reading_values(rng, make, message):
    grid, centres, _, _ = _problem(rng)
    with pytest.raises(ValueError, match=message):
        dg.gaussian_sum(make(centres), 1.0, grid)


def test_per_centre_values_of_the_wrong_length_are_refused(rng):
    grid, centres, _, _ = _problem(rng)
    with pytest.raises(ValueError, match=r"weights must be shared .* got shape \(699,\)"):
        dg.gaussian_sum(da.from_array(centres, chunks=100), 1.0, grid, weights=np.ones(699))


def test_render_from_zarr_centres_equals_the_in_memory_render(tmp_path, rng):
    grid, centres, sigma, weights = _problem(rng)
    source = tmp_path / "centres.zarr"
    group = zarr.create_group(str(source))
    group.create_array("centres", data=centres, chunks=(128, 3))
    group.create_array("sigma", data=sigma, chunks=(128, 3))
    group.create_array("weights", data=weights, chunks=(128,))
    store = tmp_path / "from-zarr.zarr"
    stored = {name: da.from_zarr(str(source), component=name)
              for name in ("centres", "sigma", "weights")}  # fmt: skip
    dg.render_to_zarr(store, stored["centres"], stored["sigma"], grid,
                      weights=stored["weights"], chunks=16)  # fmt: skip
    memory = tmp_path / "in-memory.zarr"
    dg.render_to_zarr(memory, centres, sigma, grid, weights=weights, chunks=16)
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...],
                                  zarr.open_array(str(memory), path="0")[...])  # fmt: skip
    record = JobSpec.from_json(zarr.open_group(str(store), mode="r").attrs["daskgauss"]["job"])
    assert record.centres == 700
    assert record.sigma_range[0] == sigma.min()
    assert record.sigma_range[1] == sigma.max()
    assert record.amplitude_range == (weights.min(), weights.max())


def test_interrupted_render_from_zarr_centres_resumes(tmp_path, rng):
    grid, centres, _, _ = _problem(rng)
    source = tmp_path / "centres.zarr"
    zarr.create_array(str(source), data=centres, chunks=(200, 3))
    store = tmp_path / "resume.zarr"

    def render(**options):
        return dg.render_to_zarr(store, da.from_zarr(str(source)), 0.7, grid, chunks=16,
                                 **options)  # fmt: skip

    complete = render()[...]
    group = zarr.open_group(str(store), mode="r+")
    for index in [(0, 0, 0), (2, 1, 1)]:
        group["blocks_done"][index] = 0
        group["0"][tuple(slice(i * 16, (i + 1) * 16) for i in index)] = -1.0
    resumed = render()
    runs = open_target(store).runs()
    assert runs[-1]["resumed"] is True
    assert runs[-1]["rendered"] == 2
    np.testing.assert_array_equal(resumed[...], complete)
    # A changed input is another job: refused, the store left as it is.
    zarr.open_array(str(source), mode="r+")[5] = [0.0, 0.0, 0.0]
    with pytest.raises(StoreMismatchError, match="fingerprint: store has"):
        render()
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], complete)


def test_a_bad_row_fails_the_render_before_anything_is_written(tmp_path, rng):
    grid, centres, _, _ = _problem(rng)
    centres[650] = np.inf
    store = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match=r"centres must be finite: found inf at index \(650, 0\)"):
        dg.render_to_zarr(store, da.from_array(centres, chunks=(100, 3)), 0.5, grid)
    assert not store.exists()
    # An existing store of another job is left intact too.
    good = centres.copy()
    good[650] = 0.0
    dg.render_to_zarr(store, good, 0.5, grid, chunks=16)
    before = zarr.open_array(str(store), path="0")[...]
    with pytest.raises(ValueError, match="must be finite"):
        dg.render_to_zarr(store, da.from_array(centres, chunks=(100, 3)), 0.5, grid,
                          chunks=16)  # fmt: skip
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], before)


def _loaded_where(directory, number: int, rows: np.ndarray) -> np.ndarray:
    """A chunk loader that leaves a mark naming the process that loaded it."""
    (directory / f"chunk-{number}-pid-{os.getpid()}").write_text("")
    return rows


@pytest.mark.slow
def test_the_client_never_loads_a_chunk_of_centres(tmp_path, rng):
    """On a real scheduler and worker processes, every chunk load happens on a worker."""
    from distributed import Client

    from tests.test_cluster import dask_cluster

    grid, centres, _, weights = _problem(rng, count=1200)
    marks = tmp_path / "marks"
    marks.mkdir()
    pieces = [
        da.from_delayed(
            dask.delayed(_loaded_where)(marks, number, centres[start : start + 300]),
            shape=(300, 3),
            dtype=float,
        )
        for number, start in enumerate(range(0, 1200, 300))
    ]
    lazy_centres = da.concatenate(pieces)
    expected = dg.gaussian_sum(centres, 0.6, grid, weights=weights, chunks=16).compute()
    with (
        dask_cluster(tmp_path / "cluster", workers=2) as scheduler_file,
        Client(scheduler_file=str(scheduler_file)),
    ):
        store = tmp_path / "cluster.zarr"
        dg.render_to_zarr(store, lazy_centres, 0.6, grid, weights=weights, chunks=16)
        volume = dg.gaussian_sum(lazy_centres, 0.6, grid, weights=weights, chunks=16).compute()
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], expected)
    np.testing.assert_array_equal(volume, expected)
    loaders = {mark.name.split("-pid-")[1] for mark in marks.iterdir()}
    assert loaders
    assert str(os.getpid()) not in loaders
