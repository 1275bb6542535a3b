"""Real dask.distributed: a `dask scheduler` and `dask worker` processes on 127.0.0.1.

Everything here starts real processes with the dask command line, as users do on a
cluster, and renders onto them through the Python API and through `daskgauss render`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from distributed import Client, get_task_stream

import daskgauss as dg
from tests.long_render import long_render, long_render_expected, wait_for_blocks

pytestmark = pytest.mark.slow

DASK = [sys.executable, "-m", "dask"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def dask_cluster(directory: Path, workers: int = 2, threads: int = 1, hosts=("127.0.0.1",),
                 environment: dict | None = None):  # fmt: skip
    """A scheduler and ``workers`` nanny-managed worker processes, via the dask CLI, the
    workers on ``hosts`` in turn (loopback addresses: one machine seen as several)."""
    directory.mkdir(parents=True, exist_ok=True)
    scheduler_file = directory / "scheduler.json"
    environment = os.environ | {"PYTHONUNBUFFERED": "1"} | (environment or {})
    processes = [
        subprocess.Popen(
            [
                *DASK,
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(_free_port()),
                "--dashboard-address",
                "127.0.0.1:0",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.1)
        for number in range(workers):
            processes.append(
                subprocess.Popen(
                    [
                        *DASK,
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        hosts[number % len(hosts)],
                        "--nthreads",
                        str(threads),
                        "--name",
                        f"w{number}",
                        "--dashboard-address",
                        "127.0.0.1:0",
                        "--memory-limit",
                        "2GB",
                        "--local-directory",
                        str(directory / f"w{number}"),
                        "--preload",
                        "daskgauss.preload",
                    ],
                    env=environment,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
            client.wait_for_workers(workers, timeout=120)
        yield scheduler_file
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("cluster")) as scheduler_file:
        yield scheduler_file


@pytest.fixture
def job(rng):
    return {
        "centres": rng.uniform(-20, 20, size=(2000, 3)),
        "sigma": 1.1,
        "grid": dg.Grid.from_bounds(-20, 20, (64, 56, 48)),
        "chunks": 16,
    }


def _local_volume(job):
    with dask_scheduler_threads():
        return dg.gaussian_sum(
            job["centres"], job["sigma"], job["grid"], chunks=job["chunks"]
        ).compute()


@contextlib.contextmanager
def dask_scheduler_threads():
    import dask

    with dask.config.set(scheduler="threads"):
        yield


def test_gaussian_sum_on_real_workers_is_bit_identical(cluster, job):
    expected = _local_volume(job)
    with Client(scheduler_file=str(cluster)) as client:
        volume = dg.gaussian_sum(job["centres"], job["sigma"], job["grid"], chunks=job["chunks"])
        computed = volume.compute()
        assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_array_equal(computed, expected)


def test_scattered_binning_lives_as_long_as_the_array(cluster, job):
    # The array alone must keep the scattered Gaussians on the cluster: computed
    # after every other reference is gone and the client has told the scheduler.
    expected = _local_volume(job)
    with Client(scheduler_file=str(cluster)):
        volume = dg.gaussian_sum(job["centres"], job["sigma"], job["grid"], chunks=job["chunks"])
        gc.collect()
        time.sleep(0.5)
        np.testing.assert_array_equal(volume.compute(), expected)


def test_render_to_zarr_on_real_workers_is_bit_identical(cluster, job, tmp_path):
    expected = _local_volume(job)
    with Client(scheduler_file=str(cluster)) as client, get_task_stream(client) as stream:
        array = dg.render_to_zarr(tmp_path / "c.zarr", job["centres"], job["sigma"], job["grid"],
                                  chunks=job["chunks"])  # fmt: skip
    # The blocks ran as tasks on both workers, not in the client.
    render_tasks = [task for task in stream.data if "daskgauss-render" in str(task["key"])]
    assert len(render_tasks) == array.nchunks
    assert len({task["worker"] for task in render_tasks}) == 2
    np.testing.assert_array_equal(array[...], expected)


def test_cli_renders_onto_the_scheduler_file_and_address(cluster, job, tmp_path):
    centres_file = tmp_path / "centres.npy"
    np.save(centres_file, job["centres"])
    expected = _local_volume(job)
    address = json.loads(cluster.read_text())["address"]
    for flag, value in (("--scheduler-file", str(cluster)), ("--scheduler", address)):
        store = tmp_path / f"cli{flag}.zarr"
        result = subprocess.run(
            [sys.executable, "-m", "daskgauss", "render", str(centres_file), str(store),
             "--shape", "64", "56", "48", "--lower", "-20", "--upper", "20", "--sigma", "1.1",
             "--chunks", "16", flag, value],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"wrote {store}" in result.stdout
        assert "dashboard" in result.stdout
        np.testing.assert_array_equal(
            zarr.open_array(str(store), path="0", mode="r")[...], expected
        )


def test_a_million_centres_travel_without_a_large_graph(cluster, tmp_path, caplog):
    """The binned centres reach workers by scatter or sidecar, never inside the graph."""
    rng = np.random.default_rng(3)
    centres = rng.uniform(-50, 50, size=(1_000_000, 3))
    grid = dg.Grid.from_bounds(-50, 50, 96)
    with Client(scheduler_file=str(cluster)), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level("WARNING"):
            total = float(dg.gaussian_sum(centres, 0.5, grid, chunks=48).sum().compute())
            array = dg.render_to_zarr(tmp_path / "m.zarr", centres, 0.5, grid, chunks=48)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "large graph" in m.lower()], messages
    assert float(np.sum(array[...], dtype=np.float64)) == pytest.approx(total, rel=1e-6)
    assert total > 0


def test_worker_killed_mid_job_costs_only_its_blocks(tmp_path, job):
    job = dict(job, centres=np.random.default_rng(9).uniform(-20, 20, size=(20000, 3)), chunks=8)
    centres_file = tmp_path / "centres.npy"
    np.save(centres_file, job["centres"])
    store = tmp_path / "killed.zarr"
    expected = _local_volume(job)
    with dask_cluster(tmp_path / "own", workers=2) as scheduler_file:
        with Client(scheduler_file=str(scheduler_file)) as client:
            worker_pids = client.run(os.getpid)
        render = subprocess.Popen(
            [sys.executable, "-m", "daskgauss", "render", str(centres_file), str(store),
             "--shape", "64", "56", "48", "--lower", "-20", "--upper", "20", "--sigma", "1.1",
             "--chunks", "8", "--scheduler-file", str(scheduler_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        flags = store / "blocks_done" / "c"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and render.poll() is None:
            if flags.exists() and sum(1 for p in flags.rglob("*") if p.is_file()) >= 30:
                break
            time.sleep(0.02)
        assert render.poll() is None, "the render finished before a worker could be killed"
        victim = sorted(worker_pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        output, errors = render.communicate(timeout=300)
    assert render.returncode == 0, errors
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0", mode="r")[...], expected)
    group = zarr.open_group(str(store), mode="r")
    assert group["blocks_done"][...].all()
    assert "rendered" in output


def test_unreachable_scheduler_fails_fast_and_writes_nothing(tmp_path, job):
    centres_file = tmp_path / "centres.npy"
    np.save(centres_file, job["centres"])
    store = tmp_path / "never.zarr"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "daskgauss", "render", str(centres_file), str(store),
         "--shape", "32", "--lower", "-20", "--upper", "20", "--sigma", "1",
         "--scheduler", f"tcp://127.0.0.1:{_free_port()}"],
        capture_output=True, text=True, timeout=120,
        env=os.environ | {"DASK_DASKGAUSS__CONNECT_TIMEOUT": "3s"},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "cannot reach tcp://127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 60
    assert not store.exists()


def test_a_lost_scheduler_is_one_line_and_the_rerun_resumes(tmp_path):
    """The scheduler dies mid-render: one line saying so and how far it got, exit status 1,
    no traceback; the same command on a new cluster finishes to the same bits."""
    import psutil

    store = tmp_path / "lost.zarr"
    centres, render = long_render(tmp_path, store)

    def command(scheduler_file):
        return [*render, "--scheduler-file", str(scheduler_file)]

    with dask_cluster(tmp_path / "first", workers=1) as scheduler_file:
        process = subprocess.Popen(command(scheduler_file), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for_blocks(store, process)
        for candidate in psutil.process_iter(["cmdline"]):
            line = " ".join(candidate.info["cmdline"] or [])
            if "scheduler" in line and str(scheduler_file) in line and "render" not in line:
                candidate.kill()
        output, errors = process.communicate(timeout=120)
    assert process.returncode == 1, errors
    assert "Traceback" not in output + errors, errors
    assert errors.strip().startswith("Error: the render lost its connection to the scheduler")
    assert "run the same command to resume" in errors
    assert len(errors.strip().splitlines()) == 1, errors
    with dask_cluster(tmp_path / "second", workers=1) as scheduler_file:
        again = subprocess.run(command(scheduler_file), capture_output=True, text=True,
                               timeout=240)  # fmt: skip
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(zarr.open_array(str(store), path="0")[...],
                                  long_render_expected(centres))  # fmt: skip
