"""render_to_zarr: a real Zarr v3 store on disk, resumed, refused, killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._store import StoreMismatchError, open_target


def _render(store, job, **options):
    return dg.render_to_zarr(
        store, job["centres"], job["sigma"], job["grid"], weights=job["weights"],
        chunks=job["chunks"], **options,
    )  # fmt: skip


def _expected(job, **options):
    return dg.gaussian_sum(
        job["centres"], job["sigma"], job["grid"], weights=job["weights"], chunks=job["chunks"],
        **options,
    ).compute()  # fmt: skip


def _last_run(store):
    return open_target(store).runs()[-1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_store_equals_the_lazy_array(tmp_path, small_job, dtype):
    array = _render(tmp_path / "out.zarr", small_job, dtype=dtype)
    assert array.shape == small_job["grid"].shape
    assert array.dtype == np.dtype(dtype)
    assert array.chunks == small_job["chunks"]
    np.testing.assert_array_equal(array[...], _expected(small_job, dtype=dtype))


def test_periodic_and_density_options_reach_the_store(tmp_path, small_job):
    small_job["grid"] = dg.Grid.from_box(-10, 10, (40, 36, 32))
    array = _render(tmp_path / "p.zarr", small_job, periodic=True, normalize="density")
    expected = _expected(small_job, periodic=True, normalize="density")
    np.testing.assert_array_equal(array[...], expected)


def test_empty_blocks_are_done_but_not_written(tmp_path, small_job):
    small_job["centres"] = np.array([[-9.0, -8.0, -7.0]])
    small_job["sigma"] = 0.1  # support 0.53 wide: one block
    small_job["weights"] = None
    store = tmp_path / "sparse.zarr"
    array = _render(store, small_job)
    run = _last_run(store)
    assert run["rendered"] == 1
    assert run["empty"] == run["blocks"] - 1
    chunk_files = [p for p in (store / "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunk_files) == 1
    # Only the rendered block has a done flag; the others are done by having no Gaussians.
    flags = zarr.open_group(str(store), mode="r")["blocks_done"][...]
    assert flags.sum() == 1
    flag_files = [p for p in (store / "blocks_done").rglob("*") if p.name != "zarr.json"]
    assert len([p for p in flag_files if p.is_file()]) == 1
    assert open_target(store).done_mask().all()
    np.testing.assert_array_equal(array[...], _expected(small_job))


def test_identical_job_resumes_and_computes_nothing(tmp_path, small_job):
    store = tmp_path / "out.zarr"
    _render(store, small_job)
    first = _last_run(store)
    stamps = {p: p.stat().st_mtime_ns for p in (store / "0").rglob("*") if p.is_file()}
    _render(store, small_job)
    second = _last_run(store)
    assert second["resumed"] is True
    assert second["rendered"] == 0
    assert second["already_done"] == first["blocks"]
    assert stamps == {p: p.stat().st_mtime_ns for p in (store / "0").rglob("*") if p.is_file()}


def test_interrupted_run_resumes_only_missing_blocks(tmp_path, small_job):
    """Forget some done flags (as a crash would leave them): only those are rendered again."""
    store = tmp_path / "out.zarr"
    complete = _render(store, small_job)[...]
    group = zarr.open_group(str(store), mode="r+")
    forgotten = [(0, 0, 0), (1, 2, 0), (3, 3, 2)]
    for index in forgotten:
        group["blocks_done"][index] = 0
        slices = tuple(slice(i * 16, (i + 1) * 16) for i in index)
        group["0"][slices] = -1.0  # what a half-written block could hold
    resumed = _render(store, small_job)
    assert _last_run(store)["rendered"] == len(forgotten)
    np.testing.assert_array_equal(resumed[...], complete)


@pytest.mark.parametrize(
    "change",
    [
        {"sigma": 1.0},
        {"tol": 1e-4},
        {"dtype": "float64"},
        {"normalize": "density"},
        {"chunks": (20, 20, 20)},
        {"unit": "nanometer"},
        {"weights": None},
    ],
)
def test_a_different_job_is_refused_and_data_stay_intact(tmp_path, small_job, change):
    store = tmp_path / "out.zarr"
    before = _render(store, small_job)[...]
    files = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    job = dict(small_job)
    options = {}
    for key, value in change.items():
        if key in job:
            job[key] = value
        else:
            options[key] = value
    with pytest.raises(StoreMismatchError, match="holds a different daskgauss job"):
        _render(store, job, **options)
    assert files == {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0", mode="r")[...], before)


def test_overwrite_replaces_a_different_job(tmp_path, small_job):
    store = tmp_path / "out.zarr"
    _render(store, small_job)
    small_job["sigma"] = 1.2
    array = _render(store, small_job, overwrite=True)
    np.testing.assert_array_equal(array[...], _expected(small_job))
    assert len(open_target(store).runs()) == 1


def test_something_else_at_the_path_is_refused(tmp_path, small_job):
    occupied = tmp_path / "notes"
    occupied.mkdir()
    (occupied / "thesis.txt").write_text("do not delete")
    with pytest.raises(StoreMismatchError, match="refusing to touch it"):
        _render(occupied, small_job)
    assert (occupied / "thesis.txt").read_text() == "do not delete"
    foreign = tmp_path / "foreign.zarr"
    zarr.create_array(str(foreign), shape=(4,), dtype="int8")
    with pytest.raises(StoreMismatchError, match="not a daskgauss store"):
        _render(foreign, small_job)
    foreign_group = tmp_path / "group.zarr"
    zarr.create_group(str(foreign_group))
    with pytest.raises(StoreMismatchError, match="daskgauss did not write"):
        _render(foreign_group, small_job)


def test_bad_input_is_refused_before_anything_is_written(tmp_path, small_job):
    store = tmp_path / "never.zarr"
    with pytest.raises(ValueError, match="sigma must be positive"):
        dg.render_to_zarr(store, small_job["centres"], -1.0, small_job["grid"])
    with pytest.raises(ValueError, match="chunks for Zarr output must be regular"):
        dg.render_to_zarr(store, small_job["centres"], 1.0, small_job["grid"],
                          chunks=((20, 40), (52,), (44,)))  # fmt: skip
    with pytest.raises(ValueError, match="unit must be an OME-NGFF space unit"):
        dg.render_to_zarr(store, small_job["centres"], 1.0, small_job["grid"], unit="parsecs")
    with pytest.raises(ValueError, match="compression must be one of"):
        dg.render_to_zarr(store, small_job["centres"], 1.0, small_job["grid"], compression="rar")
    assert not store.exists()


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd", "zstd-plain"])
def test_every_codec_round_trips(tmp_path, small_job, compression):
    array = _render(tmp_path / f"{compression}.zarr", small_job, compression=compression)
    np.testing.assert_array_equal(array[...], _expected(small_job))


def test_file_url_store(tmp_path, small_job):
    url = (tmp_path / "url.zarr").as_uri()
    assert url.startswith("file://")
    array = _render(url, small_job)
    np.testing.assert_array_equal(array[...], _expected(small_job))
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "url.zarr"), path="0", mode="r")[...], _expected(small_job)
    )


_KILLABLE_JOB = """
import json, sys
import numpy as np
import daskgauss as dg
rng = np.random.default_rng(5)
centres = rng.uniform(-30, 30, size=(3000, 3))
grid = dg.Grid.from_bounds(-30, 30, 96)
dg.render_to_zarr(sys.argv[1], centres, 0.8, grid, chunks=8)
"""


def _reference_for_killable_job():
    rng = np.random.default_rng(5)
    centres = rng.uniform(-30, 30, size=(3000, 3))
    return dg.gaussian_sum(centres, 0.8, dg.Grid.from_bounds(-30, 30, 96), chunks=8).compute()


@pytest.mark.timeout(300)
def test_sigkill_mid_job_then_resume_is_correct(tmp_path):
    store = tmp_path / "killed.zarr"
    process = subprocess.Popen([sys.executable, "-c", _KILLABLE_JOB, str(store)])
    done_path = store / "blocks_done" / "c"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            done = sum(1 for p in done_path.rglob("*") if p.is_file()) if done_path.exists() else 0
            if done >= 40 or process.poll() is not None:
                break
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, "the job finished before it could be killed"
    group = zarr.open_group(str(store), mode="r")
    done = group["blocks_done"][...].astype(bool)
    assert 0 < done.sum() < done.size
    expected = _reference_for_killable_job()
    data = group["0"]
    # Nothing is recorded done that is not written, and written right.
    for index in np.argwhere(done):
        slices = tuple(slice(8 * i, 8 * (i + 1)) for i in index)
        np.testing.assert_array_equal(data[slices], expected[slices])
    rng = np.random.default_rng(5)
    resumed = dg.render_to_zarr(store, rng.uniform(-30, 30, size=(3000, 3)), 0.8,
                                dg.Grid.from_bounds(-30, 30, 96), chunks=8)  # fmt: skip
    run = open_target(store).runs()[-1]
    assert run["resumed"] is True
    assert run["already_done"] == int(done.sum())
    assert run["rendered"] + run["empty"] == done.size - int(done.sum())
    np.testing.assert_array_equal(resumed[...], expected)
    json.dumps(run)  # the run record is plain JSON


def test_resume_across_worker_counts_and_adopted_blocks_gives_the_same_bits(tmp_path, small_job):
    """Started where dask sees 2 workers with one block size, finished where it sees 16 and
    the configured block size differs: the rerun without chunks adopts the store's blocks."""
    import dask

    del small_job["chunks"]
    store = tmp_path / "portable.zarr"
    options = {"weights": small_job["weights"]}
    with dask.config.set({"num_workers": 2, "daskgauss.block-bytes": "32 KiB"}):
        complete = dg.render_to_zarr(store, small_job["centres"], small_job["sigma"],
                                     small_job["grid"], **options)[...]  # fmt: skip
        block_shape = zarr.open_array(str(store), path="0").chunks
    group = zarr.open_group(str(store), mode="r+")
    group["blocks_done"][0, 0, 0] = 0  # as a crash would leave it
    with dask.config.set({"num_workers": 16, "daskgauss.block-bytes": "1 MiB"}):
        default = dg.gaussian_sum(small_job["centres"], small_job["sigma"], small_job["grid"])
        assert default.chunksize != block_shape  # so the rerun really adopts the store's
        resumed = dg.render_to_zarr(store, small_job["centres"], small_job["sigma"],
                                    small_job["grid"], **options)  # fmt: skip
        assert resumed.chunks == block_shape
        assert _last_run(store)["resumed"] is True
        assert _last_run(store)["rendered"] == 1
        np.testing.assert_array_equal(resumed[...], complete)
        # An explicit, different block shape is another job.
        with pytest.raises(StoreMismatchError, match="block_shape: store has"):
            dg.render_to_zarr(store, small_job["centres"], small_job["sigma"],
                              small_job["grid"], chunks=7, **options)  # fmt: skip


def test_resume_after_an_upgrade_of_the_same_format(tmp_path, small_job, monkeypatch):
    store = tmp_path / "upgraded.zarr"
    complete = _render(store, small_job)[...]
    group = zarr.open_group(str(store), mode="r+")
    group["blocks_done"][1, 1, 1] = 0
    group["0"][16:32, 16:32, 16:32] = -1.0  # what a half-written block could hold
    monkeypatch.setattr(dg, "__version__", "0.2.99")
    resumed = _render(store, small_job)
    np.testing.assert_array_equal(resumed[...], complete)
    runs = open_target(store).runs()
    assert runs[0]["version"] != "0.2.99"
    assert runs[1]["version"] == "0.2.99"
    assert runs[1]["resumed"] is True
    assert runs[1]["rendered"] == 1


def test_a_store_of_another_format_is_refused_and_left_intact(tmp_path, small_job):
    from daskgauss._job import StoreFormatError

    store = tmp_path / "old.zarr"
    before = _render(store, small_job)[...]
    group = zarr.open_group(str(store), mode="r+")
    attributes = dict(group.attrs["daskgauss"])
    attributes["job"] = dict(attributes["job"]) | {"format": 1}
    group.attrs["daskgauss"] = attributes
    with pytest.raises(StoreFormatError, match=r"resumed with daskgauss 0\.1\.x"):
        _render(store, small_job)
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], before)
    again = _render(store, small_job, overwrite=True)
    np.testing.assert_array_equal(again[...], before)
