"""Centres as dask arrays (Zarr, Parquet ...): binned per chunk, exchanged through storage,
the same bits as in memory, in a graph of chunks + blocks tasks."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._job import JobSpec
from daskgauss._store import StoreMismatchError, open_target


@pytest.fixture(params=[1, 300], ids=["chunks-as-given", "merged-to-300-rows"])
def chunk_rows(request):
    """Chunks of centres exchanged as given (one part each), or merged to 300 rows."""
    with dask.config.set({"daskgauss.chunk-rows": request.param}):
        yield request.param


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
def test_dask_centres_give_the_bits_of_numpy_centres(rng, rows, options, chunk_rows):
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


def test_chunks_of_one_row(rng, chunk_rows):
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


def test_render_from_zarr_centres_equals_the_in_memory_render(tmp_path, rng, chunk_rows):
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


def _covariances(rng, count):
    axes = rng.uniform(0.3, 1.0, size=(count, 3))
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    return np.einsum("ij,mj,kj->mik", rotation, axes**2, rotation)


@pytest.mark.parametrize("chunks_of_centres", [1, 7, 100])
@pytest.mark.parametrize("kind", ["sigma", "covariance", "periodic"])
def test_any_number_of_chunks_gives_the_in_memory_bits(rng, chunks_of_centres, kind):
    """1, 7 and 100 chunks (the last one ragged) of centres with per-centre sigmas or full
    covariances and signed weights, on an open and on a periodic grid."""
    grid, centres, sigma, weights = _problem(rng, count=703)
    covariance = None
    if kind == "covariance":
        sigma, covariance = None, _covariances(rng, 703)
    if kind == "periodic":
        grid, sigma = dg.Grid.from_box(-8, 8, (40, 34, 30)), sigma * 0.5
    rows = -(-703 // chunks_of_centres)
    expected = dg.gaussian_sum(
        centres,
        sigma,
        grid,
        weights=weights,
        covariance=covariance,
        periodic=kind == "periodic",
        chunks=16,
    ).compute()

    def lazy(value):
        if value is None:
            return None
        return da.from_array(value, chunks=(rows, *value.shape[1:]))

    with dask.config.set({"daskgauss.chunk-rows": 1}):
        volume = dg.gaussian_sum(
            lazy(centres),
            lazy(sigma),
            grid,
            weights=lazy(weights),
            covariance=lazy(covariance),
            periodic=kind == "periodic",
            chunks=16,
        )
        assert volume.chunks == dg.gaussian_sum(centres, 1.0, grid, chunks=16).chunks
        np.testing.assert_array_equal(volume.compute(), expected)


@pytest.mark.parametrize("level", [1, 2])
def test_pyramid_levels_of_chunked_centres_are_the_in_memory_ones(tmp_path, rng, level):
    grid, centres, sigma, weights = _problem(rng)
    chunked = {
        "centres": da.from_array(centres, chunks=(64, 3)),
        "sigma": da.from_array(sigma, chunks=(64, 3)),
        "weights": da.from_array(weights, chunks=64),
    }
    with dask.config.set({"daskgauss.chunk-rows": 1}):
        lazy = dg.gaussian_sum(
            chunked["centres"],
            chunked["sigma"],
            grid,
            weights=chunked["weights"],
            chunks=8,
            level=level,
        ).compute()
        dg.render_to_zarr(
            tmp_path / "chunked.zarr",
            chunked["centres"],
            chunked["sigma"],
            grid,
            weights=chunked["weights"],
            chunks=8,
            levels=level,
        )
    expected = dg.gaussian_sum(
        centres, sigma, grid, weights=weights, chunks=8, level=level
    ).compute()
    np.testing.assert_array_equal(lazy, expected)
    np.testing.assert_array_equal(
        zarr.open_array(str(tmp_path / "chunked.zarr"), path=str(level))[...], expected
    )


def test_the_lazy_graph_grows_with_chunks_plus_blocks(rng):
    """300 chunks on 512 blocks: the inputs' tasks, one per chunk, the index and one per
    block, where a task per (chunk, block) pair would be 153,600."""
    centres = da.from_array(rng.uniform(0, 64, size=(3000, 3)), chunks=(10, 3))
    grid = dg.Grid(shape=64)
    with dask.config.set({"daskgauss.chunk-rows": 1}):
        volume = dg.gaussian_sum(centres, 0.5, grid, chunks=8)
    chunks, blocks = 300, 512
    inputs = len(centres.__dask_graph__())
    tasks = len(volume.__dask_graph__())
    assert tasks == inputs + chunks + 1 + blocks
    assert tasks <= 5 * (chunks + blocks) + 1000
    part_keys = [key for key in volume.__dask_graph__() if "daskgauss-part" in str(key)]
    assert len(part_keys) == chunks
    # A slice computes only its own blocks (and the exchange, which every block needs).
    np.testing.assert_array_equal(
        volume[8:16, :8, 40:48].compute(),
        dg.gaussian_sum(centres.compute(), 0.5, grid, chunks=8)[8:16, :8, 40:48].compute(),
    )


def test_small_chunks_are_merged_and_the_fingerprint_does_not_change(tmp_path, rng):
    grid, centres, _, _ = _problem(rng)
    source = tmp_path / "centres.zarr"
    zarr.create_array(str(source), data=centres, chunks=(20, 3))
    store = tmp_path / "merged.zarr"
    with dask.config.set({"daskgauss.chunk-rows": 1}):
        as_given = dg.render_to_zarr(store, da.from_zarr(str(source)), 0.7, grid, chunks=16)[...]
        recorded = open_target(store).record["fingerprint"]
    with dask.config.set({"daskgauss.chunk-rows": 256}):
        lazy = dg.gaussian_sum(da.from_zarr(str(source)), 0.7, grid, chunks=16)
        part_keys = {key for key in lazy.__dask_graph__() if "daskgauss-part" in str(key)}
        assert len(part_keys) == 3  # 35 chunks of 20 rows, read 13, 13 and 9 at a time
        np.testing.assert_array_equal(lazy.compute(), as_given)
        # The same job: resumed (nothing to do), not refused as another.
        dg.render_to_zarr(store, da.from_zarr(str(source)), 0.7, grid, chunks=16)
    assert open_target(store).runs()[-1]["already_done"] > 0
    assert open_target(store).record["fingerprint"] == recorded


def test_a_block_with_many_sources_renders_in_slabs_from_the_exchange(tmp_path, rng):
    grid, centres, sigma, weights = _problem(rng)
    expected = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=20).compute()
    lazy_centres = da.from_array(centres, chunks=(100, 3))
    with dask.config.set({"daskgauss.chunk-rows": 1, "daskgauss.block-source-bytes": "2 KiB"}):
        volume = dg.gaussian_sum(lazy_centres, sigma, grid, weights=weights, chunks=20)
        np.testing.assert_array_equal(volume.compute(), expected)
        store = dg.render_to_zarr(
            tmp_path / "slabs.zarr", lazy_centres, sigma, grid, weights=weights, chunks=20
        )
        np.testing.assert_array_equal(store[...], expected)


def test_a_lazy_array_s_exchange_lives_as_long_as_the_array(tmp_path, rng):
    grid, centres, _, _ = _problem(rng)
    with dask.config.set({"daskgauss.scratch": str(tmp_path / "scratch")}):
        volume = dg.gaussian_sum(da.from_array(centres, chunks=(100, 3)), 0.6, grid, chunks=16)
        plane = volume[5]
        first = plane.compute()
        assert any((tmp_path / "scratch").iterdir())
        del volume
        gc.collect()
        assert not any((tmp_path / "scratch").iterdir())
        # An array derived from it still computes: it writes the exchange again.
        np.testing.assert_array_equal(plane.compute(), first)


def test_an_interrupted_exchange_resumes_with_the_parts_written(tmp_path, rng, monkeypatch):
    """A render stopped after some chunks wrote their parts: the rerun bins only the rest."""
    import daskgauss._chunked as chunked_module

    grid, centres, _, weights = _problem(rng)
    source = tmp_path / "centres.zarr"
    zarr.create_array(str(source), data=centres, chunks=(50, 3))
    store = tmp_path / "resumed.zarr"
    written = []
    original = chunked_module._write_part

    def stopping(*arguments):
        if len(written) == 8:
            raise KeyboardInterrupt
        written.append(arguments[-1])
        return original(*arguments)

    def counting(*arguments):
        written.append(arguments[-1])
        return original(*arguments)

    def render():
        return dg.render_to_zarr(
            store, da.from_zarr(str(source)), 0.7, grid, chunks=16, weights=weights
        )

    with dask.config.set({"daskgauss.chunk-rows": 1, "scheduler": "sync"}):
        monkeypatch.setattr(chunked_module, "_write_part", stopping)
        with pytest.raises(KeyboardInterrupt):
            render()
        parts = store / "exchange" / "0" / "parts"
        first = sorted(written)
        assert sorted(int(p.name) for p in parts.iterdir()) == first
        monkeypatch.setattr(chunked_module, "_write_part", counting)
        written.clear()
        array = render()
    assert sorted(written) == sorted(set(range(14)) - set(first))
    np.testing.assert_array_equal(
        array[...], dg.gaussian_sum(centres, 0.7, grid, weights=weights, chunks=16)
    )
    assert not (store / "exchange").exists()  # removed once the store is complete


def test_spatially_sorted_centres_exchange_fewer_ranges(tmp_path, rng, monkeypatch):
    """Chunks of centres sorted in space reach few blocks: the index holds far fewer
    (part, block) ranges to read than for the same centres shuffled, the bits the same."""
    from daskgauss._exchange import Exchange

    grid = dg.Grid.from_bounds(0, 63, 64)
    centres = rng.uniform(0, 63, size=(6400, 3))
    order = np.lexsort((centres[:, 2] // 16, centres[:, 1] // 16, centres[:, 0] // 16))
    ranges = {}
    original = Exchange.write_index

    def counting(self, summaries, blocks):
        ranges[name] = sum(len(summary.blocks) for summary in summaries)
        return original(self, summaries, blocks)

    monkeypatch.setattr(Exchange, "write_index", counting)
    stores = {}
    with dask.config.set({"daskgauss.chunk-rows": 1}):
        for name, arranged in (("sorted", centres[order]), ("shuffled", centres)):
            stores[name] = dg.render_to_zarr(
                tmp_path / f"{name}.zarr",
                da.from_array(arranged, chunks=(200, 3)),
                0.3,
                grid,
                chunks=16,
            )[...]
    assert ranges["shuffled"] >= 0.9 * 32 * 64
    assert ranges["sorted"] < ranges["shuffled"] / 3, ranges
    np.testing.assert_allclose(stores["sorted"], stores["shuffled"], rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ a real scheduler


def _long_exchange(tmp_path, store):
    """2 x 10^6 centres in a Zarr array of 2000 chunks on 96^3 (27 blocks): an exchange of
    a few seconds on two worker threads; its CLI command and the in-memory volume."""
    centres = np.random.default_rng(21).uniform(0, 96, size=(2_000_000, 3))
    source = tmp_path / "many-chunks.zarr"
    zarr.create_array(str(source), data=centres, chunks=(1000, 3), compressors=None)
    command = [
        sys.executable,
        "-m",
        "daskgauss",
        "render",
        str(source),
        str(store),
        "--shape",
        "96",
        "--origin",
        "0",
        "--spacing",
        "1",
        "--sigma",
        "0.7",
        "--chunks",
        "32",
    ]
    with dask.config.set(scheduler="threads"):
        expected = dg.gaussian_sum(centres, 0.7, dg.Grid(shape=96), chunks=32).compute()
    return command, expected


def _wait_mid_exchange(store, process, parts=100):
    """Wait until ``parts`` parts of level 0's exchange are written and its index is not."""
    folder = store / "exchange" / "0"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        written = folder / "parts"
        if written.exists() and sum(1 for p in written.iterdir() if p.name.isdigit()) >= parts:
            assert not (folder / "index").exists(), "the exchange finished before the kill"
            return
        time.sleep(0.005)
    raise AssertionError(f"no exchange under way: {process.poll()}")


CHUNKS_AS_STORED = {"DASK_DASKGAUSS__CHUNK_ROWS": "1000"}


@pytest.mark.slow
def test_a_worker_killed_mid_exchange_costs_only_its_chunks(tmp_path):
    from distributed import Client

    from tests.test_cluster import dask_cluster

    store = tmp_path / "worker-killed.zarr"
    command, expected = _long_exchange(tmp_path, store)
    with dask_cluster(tmp_path / "cluster", workers=2) as scheduler_file:
        with Client(scheduler_file=str(scheduler_file)) as client:
            victim = sorted(client.run(os.getpid).values())[0]
        render = subprocess.Popen(
            [*command, "--scheduler-file", str(scheduler_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | CHUNKS_AS_STORED,
        )
        _wait_mid_exchange(store, render)
        os.kill(victim, signal.SIGKILL)
        output, errors = render.communicate(timeout=300)
    assert render.returncode == 0, errors
    assert "exchange: 2000 of 2000 chunks, 2,000,000 of 2,000,000 rows" in output
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], expected)
    assert not (store / "exchange").exists()


@pytest.mark.slow
def test_the_client_killed_mid_exchange_resumes_with_the_same_bits(tmp_path):
    from tests.test_cluster import dask_cluster

    store = tmp_path / "client-killed.zarr"
    command, expected = _long_exchange(tmp_path, store)
    with dask_cluster(tmp_path / "cluster", workers=2) as scheduler_file:
        command += ["--scheduler-file", str(scheduler_file)]
        render = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ | CHUNKS_AS_STORED,
        )
        _wait_mid_exchange(store, render)
        render.kill()
        render.communicate(timeout=60)
        again = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env=os.environ | CHUNKS_AS_STORED
        )
    assert again.returncode == 0, again.stderr
    assert "binned by an earlier run" in again.stdout
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...], expected)


@pytest.mark.slow
def test_a_lazy_array_on_workers_of_two_hosts_needs_a_shared_scratch(tmp_path, rng):
    """Workers on 127.0.0.1 and 127.0.0.2 are two hosts to dask: the default scratch
    directory (this machine's) is refused with the setting to change; a shared one works."""
    from distributed import Client

    from tests.test_cluster import dask_cluster

    grid, centres, sigma, weights = _problem(rng)
    expected = dg.gaussian_sum(centres, sigma, grid, weights=weights, chunks=16).compute()
    lazy = {
        "centres": da.from_array(centres, chunks=(100, 3)),
        "sigma": da.from_array(sigma, chunks=(100, 3)),
    }
    with (
        dask_cluster(tmp_path / "cluster", workers=2, hosts=("127.0.0.1", "127.0.0.2")) as file,
        Client(scheduler_file=str(file)) as client,
    ):
        hosts = {info["host"] for info in client.scheduler_info()["workers"].values()}
        assert hosts == {"127.0.0.1", "127.0.0.2"}
        with pytest.raises(ValueError, match=r"2 hosts.*daskgauss\.scratch"):
            dg.gaussian_sum(lazy["centres"], lazy["sigma"], grid, weights=weights, chunks=16)
        with dask.config.set({"daskgauss.scratch": str(tmp_path / "shared")}):
            volume = dg.gaussian_sum(
                lazy["centres"], lazy["sigma"], grid, weights=weights, chunks=16
            )
            np.testing.assert_array_equal(volume.compute(), expected)
