"""Out-of-core rendering: wall time and whole-process-tree peak memory of `daskgauss render`.

Run from the repository root (outputs go to --scratch, default /work/daskgauss-bench):

    .venv/bin/python -m benchmarks.bench_render floor    # 1024^3 render vs writing it from memory
    .venv/bin/python -m benchmarks.bench_render big      # 2048^3: 32 GiB, larger than RAM
    .venv/bin/python -m benchmarks.bench_render small-chunks   # 768^3 in 128^3 blocks
    .venv/bin/python -m benchmarks.bench_render workers  # 768^3 on 1 and 2 worker processes
    .venv/bin/python -m benchmarks.bench_render overhead # per-task overhead with 64^3 blocks
    .venv/bin/python -m benchmarks.bench_render memory   # peak RSS per worker thread, 256^3 blocks
    .venv/bin/python -m benchmarks.bench_render points   # 10^7 narrow Gaussians at 1024^3
    .venv/bin/python -m benchmarks.bench_render sparse   # 10^4 centres in a corner of 16384^3

Inputs as everywhere: centres uniform in [-50, 50]^3 (seeded), sigma = 1, tol = 1e-6,
the grid linspace(-50, 50, n) per axis. The render runs as users run it, the CLI in a
subprocess; a monitor samples the resident memory (RSS) of that process and all its
descendants every 20 ms and reports the peak of their sum (shared library pages are
counted once per process, so this overstates, never understates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from benchmarks.measure import GIB, run_measured


def write_centres(scratch: Path, count: int = 10000, box: tuple = (-50, 50)) -> Path:
    path = scratch / f"centres-{count}-{box[0]}-{box[1]}.npy"
    if not path.exists():
        np.save(path, np.random.default_rng(count).uniform(*box, size=(count, 3)))
    return path


# The grid and sigma of every case but `points`: linspace(-50, 50, n), sigma 1.
LINSPACE = ("--lower", "-50", "--upper", "50", "--sigma", "1")


def run_cli(
    scratch: Path,
    n: int,
    *extra: str,
    count: int = 10000,
    name: str | None = None,
    grid: tuple[str, ...] = LINSPACE,
    box: tuple = (-50, 50),
) -> dict:
    """`daskgauss render` into a fresh store; wall time, peak tree RSS, per-process peaks."""
    store = scratch / (name or f"render-{n}.zarr")
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-m", "daskgauss", "render", str(write_centres(scratch, count, box)),
               str(store), "--shape", str(n), *grid, *extra]  # fmt: skip
    seconds, output, memory = run_measured(command)
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    workers = {
        pid: peak for pid, peak in memory.peak_by_process.items()
        if "spawn" in memory.names.get(pid, "") or "multiprocessing" in memory.names.get(pid, "")
    }  # fmt: skip
    return {
        "n": n,
        "seconds": seconds,
        "peak_tree_gib": memory.peak / GIB,
        "worker_peaks_gib": sorted(v / GIB for v in workers.values()),
        "bytes_on_disk": size,
        "summary": output.strip().splitlines()[-1],
        "store": store,
    }


def floor(scratch: Path, n: int = 1024, repeats: int = 2) -> None:
    """The render against writing the same volume from memory, same chunks and codec.

    Each timed run starts after ``sync`` so that no run pays for an earlier one's
    dirty pages; renders and floors are each repeated and all times are printed.
    """
    import dask
    import dask.array as da
    import zarr

    import daskgauss as dg
    from daskgauss._store import compressors_for

    renders = []
    for _ in range(repeats):
        os.sync()
        renders.append(run_cli(scratch, n))
        render = renders[-1]
        print(f"render {n}^3: {render['seconds']:.1f} s wall (process start to exit), "
              f"peak tree RSS {render['peak_tree_gib']:.2f} GiB, "
              f"{render['bytes_on_disk'] / GIB:.2f} GiB on disk", flush=True)  # fmt: skip
        print(f"  CLI: {render['summary']}")
    written = zarr.open_array(str(renders[-1]["store"]), path="0", mode="r")
    chunks = written.chunks
    shutil.rmtree(renders[-1]["store"], ignore_errors=True)
    centres = np.load(write_centres(scratch))
    grid = dg.Grid.from_bounds(-50, 50, n)
    with dask.config.set(scheduler="threads"):
        volume = dg.gaussian_sum(centres, 1.0, grid, chunks=chunks).compute()
    floors = []
    # zarr: one bulk write with zarr's empty-chunk test on (its default); zarr-nocheck:
    # the same without it (write_empty_chunks=True), faster; dask: dask's store, one
    # chunk write per task. The ratio is printed against the first (the floor the
    # issue names) and against the fastest of all.
    methods = {"zarr": False, "zarr-nocheck": True, "dask": False}
    for _ in range(repeats):
        for method, write_empty in methods.items():
            target = scratch / f"floor-{method}.zarr"
            shutil.rmtree(target, ignore_errors=True)
            array = zarr.create_array(
                str(target), shape=volume.shape, chunks=chunks, dtype=volume.dtype,
                compressors=compressors_for("lz4"), fill_value=0,
                config={"write_empty_chunks": write_empty},
            )  # fmt: skip
            os.sync()
            started = time.perf_counter()
            if method == "dask":
                with dask.config.set(scheduler="threads", num_workers=2 * os.cpu_count()):
                    da.from_array(volume, chunks=chunks).store(array, lock=False)
            else:
                array[...] = volume
            seconds = time.perf_counter() - started
            floors.append(seconds)
            print(f"floor ({method}): writing the same {volume.nbytes / GIB:.0f} GiB from memory, "
                  f"chunks {chunks}, lz4: {seconds:.1f} s", flush=True)  # fmt: skip
            shutil.rmtree(target, ignore_errors=True)
    best_render = min(r["seconds"] for r in renders)
    worst_render = max(r["seconds"] for r in renders)
    # floors holds the methods in order, repeated: zarr, zarr-nocheck, dask, zarr, ...
    by_method = {m: floors[i :: len(methods)] for i, m in enumerate(methods)}
    for label, floor_seconds in (("zarr as configured by default", min(by_method["zarr"])),
                                 ("fastest floor of all", min(floors))):  # fmt: skip
        print(f"ratio render / floor ({label}, {floor_seconds:.1f} s): best "
              f"{best_render / floor_seconds:.2f}, worst {worst_render / floor_seconds:.2f} "
              f"(the render's time includes interpreter and cluster start-up)")  # fmt: skip


def report(label: str, result: dict) -> None:
    print(f"{label}: {result['seconds']:.1f} s, peak tree RSS {result['peak_tree_gib']:.2f} GiB, "
          f"worker peaks {[round(w, 2) for w in result['worker_peaks_gib']]} GiB, "
          f"{result['bytes_on_disk'] / GIB:.2f} GiB on disk")  # fmt: skip
    print(f"  CLI: {result['summary']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "case",
        choices=[
            "floor",
            "big",
            "small-chunks",
            "workers",
            "overhead",
            "memory",
            "points",
            "sparse",
        ],
    )
    parser.add_argument("--scratch", type=Path, default=Path("/work/daskgauss-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    options = parser.parse_args()
    scratch = options.scratch
    scratch.mkdir(parents=True, exist_ok=True)
    print(f"# bench_render {options.case}: {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / GIB:.0f} GiB RAM")  # fmt: skip
    if options.case == "floor":
        floor(scratch)
        return
    if options.case == "big":
        result = run_cli(scratch, 2048)
        report("2048^3", result)
    elif options.case == "small-chunks":
        result = run_cli(scratch, 768, "--chunks", "128")
        report("768^3, chunks 128", result)
    elif options.case == "memory":
        # One worker process, 1, 2 and 4 threads, 256^3 float32 blocks (64 MiB): the
        # worker's peak grows by what each thread holds.
        peaks = []
        for threads in (1, 2, 4):
            flags = ["--chunks", "256", "--workers", "1", "--threads-per-worker", str(threads)]
            result = run_cli(scratch, 1024, *flags, name=f"t{threads}.zarr")
            report(f"1024^3, blocks 256^3, 1 worker x {threads} threads", result)
            peaks.append(max(result["worker_peaks_gib"]))
            shutil.rmtree(result["store"], ignore_errors=True)
        per_thread = (peaks[2] - peaks[0]) / 3
        print(f"worker peak {peaks[0]:.2f} / {peaks[1]:.2f} / {peaks[2]:.2f} GiB with 1 / 2 / 4 "
              f"threads: {per_thread:.3f} GiB per thread ({per_thread * 1024 / 64:.1f} blocks "
              f"of 64 MiB), {peaks[0] - per_thread:.2f} GiB for the process itself")  # fmt: skip
    elif options.case == "points":
        # 10^7 centres uniform on a 1024^3 grid of spacing 1, sigma 0.666 samples
        # (7-sample supports, the narrow regime), the CLI's defaults otherwise.
        sigma = f"{3.5 / np.sqrt(2 * np.log(1e6)):.6f}"
        points = ("--origin", "0", "--spacing", "1", "--sigma", sigma)
        result = run_cli(scratch, 1024, count=10**7, grid=points, box=(0, 1024), name="points.zarr")
        report("1024^3, 10^7 centres, sigma 0.666 samples", result)
    elif options.case == "sparse":
        # 10^4 centres in [0, 64)^3 of a 16384^3 grid of spacing 1 (262,144 default blocks of
        # 256^3, one of them reached), sigma 1: a job, then the identical rerun.
        points = ("--origin", "0", "--spacing", "1", "--sigma", "1")
        for label in ("first run", "identical rerun"):
            store = scratch / "sparse.zarr"
            if label == "first run":
                shutil.rmtree(store, ignore_errors=True)
            command = [sys.executable, "-m", "daskgauss", "render",
                       str(write_centres(scratch, 10**4, (0, 64))), str(store), "--shape",
                       "16384", *points]  # fmt: skip
            seconds, output, memory = run_measured(command)
            files = sum(1 for p in store.rglob("*") if p.is_file())
            print(f"16384^3, 10^4 centres in a corner, {label}: "
                  f"{seconds:.1f} s, peak tree RSS "
                  f"{memory.peak / GIB:.2f} GiB, {files} files in the store")  # fmt: skip
            print(f"  CLI: {output.strip().splitlines()[-1]}")
        result = {"store": scratch / "sparse.zarr"}
    elif options.case == "workers":
        one = run_cli(scratch, 768, "--workers", "1", "--threads-per-worker", "1", name="w1.zarr")
        report("768^3, 1 worker x 1 thread", one)
        two = run_cli(scratch, 768, "--workers", "2", "--threads-per-worker", "1", name="w2.zarr")
        report("768^3, 2 workers x 1 thread", two)
        print(f"speed-up 2 workers / 1 worker: {one['seconds'] / two['seconds']:.2f}x")
        result = two
    else:
        # One tiny Gaussian in each 64^3 block: every block is a task, each does little.
        n, block = 512, 64
        edges = np.arange(block // 2, n, block) * (100 / (n - 1)) - 50
        centres = np.stack(np.meshgrid(edges, edges, edges, indexing="ij"), -1).reshape(-1, 3)
        path = scratch / "overhead.npy"
        np.save(path, centres)
        store = scratch / "overhead.zarr"
        shutil.rmtree(store, ignore_errors=True)
        started = time.perf_counter()
        output = subprocess.run(
            [sys.executable, "-m", "daskgauss", "render", str(path), str(store), "--shape", str(n),
             "--lower", "-50", "--upper", "50", "--sigma", "0.05", "--chunks", str(block)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        seconds = time.perf_counter() - started
        runs = json.loads(subprocess.run(
            [sys.executable, "-m", "daskgauss", "info", str(store), "--json"],
            capture_output=True, text=True, check=True).stdout)["runs"]  # fmt: skip
        run = runs[-1]
        rate = run["rendered"] / run["seconds"]
        print(f"{run['rendered']} tasks of {block}^3 in {run['seconds']:.2f} s inside render "
              f"({seconds:.1f} s for the whole command): {rate:.0f} tasks/s")  # fmt: skip
        print(f"  CLI: {output.strip().splitlines()[-1]}")
        result = {"store": store}
    if not options.keep:
        shutil.rmtree(result["store"], ignore_errors=True)


if __name__ == "__main__":
    main()
