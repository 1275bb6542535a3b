"""Centres beyond one process: dask-array (Zarr) centres against the same centres in memory.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_chunked cost   # 10^7 centres: chunked / in memory
    .venv/bin/python -m benchmarks.bench_chunked big    # 10^8 centres at 1024^3 on a cluster

``cost``: 10^7 centres uniform over a 512^3 grid of spacing 1, sigma 0.666 samples,
``gaussian_sum(...).store(out)`` on dask's threaded scheduler with 2 threads, once with
the centres as a numpy array and once as a Zarr array on disk (chunks of 10^6 rows,
read by the tasks); best of 2 each, in one process; the two volumes are compared bit
for bit.

``big``: 10^8 float64 centres (2.4 GB) in a Zarr array on disk, chunks of 10^6 rows,
rendered at 1024^3 (spacing 1, sigma 1) by the CLI onto a ``dask scheduler`` and two
``dask worker`` processes (one thread, ``--memory-limit 4GiB`` each), started here as
a user would. Reports the wall time and the peak RSS of the CLI's process tree (the
workers are not its children), and whether any worker was restarted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import GIB, run_measured

SIGMA = 3.5 / np.sqrt(2 * np.log(1e6))


def zarr_centres(path: Path, count: int, side: float, rows: int = 10**6) -> Path:
    """``count`` seeded uniform centres in [0, side)^3, written chunk by chunk."""
    import zarr

    if path.exists():
        return path
    array = zarr.create_array(str(path), shape=(count, 3), chunks=(rows, 3), dtype="float64")
    rng = np.random.default_rng(count)
    for start in range(0, count, rows):
        stop = min(start + rows, count)
        array[start:stop] = rng.uniform(0, side, size=(stop - start, 3))
    return path


def cost(scratch: Path) -> None:
    import dask
    import dask.array as da
    import zarr

    import daskgauss as dg

    count, n = 10**7, 512
    path = zarr_centres(scratch / "centres-1e7.zarr", count, n)
    in_memory = zarr.open_array(str(path))[...]
    grid = dg.Grid(shape=n)
    volumes = {name: np.empty(grid.shape, np.float32) for name in ("memory", "chunked")}
    inputs = {"memory": in_memory, "chunked": da.from_zarr(str(path))}
    seconds = {}
    with dask.config.set(scheduler="threads", num_workers=2):
        for _ in range(2):
            for name in ("memory", "chunked"):
                started = time.perf_counter()
                dg.gaussian_sum(inputs[name], SIGMA, grid).store(volumes[name], lock=False)
                elapsed = time.perf_counter() - started
                seconds[name] = min(seconds.get(name, elapsed), elapsed)
    assert np.array_equal(volumes["memory"], volumes["chunked"]), "chunked bits differ"
    print(f"10^7 centres on {n}^3, sigma {SIGMA:.3f}, 2 threads, store(out), best of 2:")
    print(f"  numpy centres     {seconds['memory']:.2f} s")
    print(f"  Zarr centres      {seconds['chunked']:.2f} s (chunks of 10^6 rows, read by tasks)")
    print(f"  chunked / in memory: {seconds['chunked'] / seconds['memory']:.2f}; bits equal")


def big(scratch: Path) -> None:
    import psutil

    count, n = 10**8, 1024
    started = time.perf_counter()
    path = zarr_centres(scratch / "centres-1e8.zarr", count, n)
    print(f"centres: {path} ({time.perf_counter() - started:.0f} s to write if new)")
    cluster = scratch / "cluster"
    shutil.rmtree(cluster, ignore_errors=True)
    cluster.mkdir()
    scheduler_file = cluster / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    logs = [open(cluster / f"{name}.log", "w") for name in ("scheduler", "worker-0", "worker-1")]  # noqa: SIM115
    scheduler = [*dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                 "127.0.0.1:0", "--scheduler-file", str(scheduler_file)]  # fmt: skip
    processes = [subprocess.Popen(scheduler, stdout=logs[0], stderr=logs[0])]
    try:
        while not scheduler_file.exists():
            time.sleep(0.1)
        for number in range(2):
            processes.append(subprocess.Popen(
                [*dask, "worker", "--scheduler-file", str(scheduler_file), "--host", "127.0.0.1",
                 "--nthreads", "1", "--memory-limit", "4GiB", "--preload", "daskgauss.preload"],
                stdout=logs[number + 1], stderr=logs[number + 1]))  # fmt: skip
        store = scratch / "big-1e8.zarr"
        shutil.rmtree(store, ignore_errors=True)
        command = [sys.executable, "-m", "daskgauss", "render", str(path), str(store), "--shape",
                   str(n), "--origin", "0", "--spacing", "1", "--sigma", "1",
                   "--scheduler-file", str(scheduler_file)]  # fmt: skip
        seconds, output, memory = run_measured(command)
        worker_log = "".join((cluster / f"worker-{i}.log").read_text() for i in range(2))
        restarts = worker_log.count("Restarting worker") + worker_log.count("restart")
        print(f"10^8 centres at {n}^3 on 2 workers x 1 thread (4 GiB each): {seconds:.0f} s, "
              f"CLI process tree peak RSS {memory.peak / GIB:.2f} GiB, "
              f"worker restarts: {restarts}")  # fmt: skip
        print(f"  CLI: {output.strip().splitlines()[-1]}")
        print(f"  machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / GIB:.0f} GiB")
        shutil.rmtree(store, ignore_errors=True)
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=["cost", "big"])
    parser.add_argument("--scratch", type=Path, default=Path("/work/daskgauss-bench"))
    options = parser.parse_args()
    options.scratch.mkdir(parents=True, exist_ok=True)
    {"cost": cost, "big": big}[options.case](options.scratch)


if __name__ == "__main__":
    main()
