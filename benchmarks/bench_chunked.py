"""Centres beyond one process: dask-array (Zarr) centres, their exchange, and their graphs.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_chunked cost      # 10^7 centres: chunked / in memory
    .venv/bin/python -m benchmarks.bench_chunked chunks    # 10 chunks of 10^6 vs 1000 of 10^4
    .venv/bin/python -m benchmarks.bench_chunked exchange  # the exchange: storage vs P2P
    .venv/bin/python -m benchmarks.bench_chunked graph     # lazy graph of 10^8 in 10^4 chunks
    .venv/bin/python -m benchmarks.bench_chunked big [--count 1e9]  # a real scheduler + 2 workers

``cost``: 10^7 centres uniform over a 512^3 grid of spacing 1, sigma 0.666 samples,
``gaussian_sum(...).store(out)`` on dask's threaded scheduler with 2 threads, once with
the centres as a numpy array and once as a Zarr array on disk (chunks of 10^6 rows,
read by the tasks); best of 2 each, in one process; the two volumes are compared bit
for bit.

``chunks``: the same 10^7 centres (uniform in [0, 1024)^3, sigma 0.666 samples) in a
Zarr array of 10 chunks of 10^6 rows and in one of 1000 chunks of 10^4 rows, each
rendered at 1024^3 (spacing 1) by the CLI on its default local cluster, alternately,
``--rounds`` times; the two stores are compared bit for bit.

``exchange``: the exchange alone, both ways, on a LocalCluster of 2 workers x 1 thread:
the same 10^7 centres (``--count``) in chunks of 10^5 rows binned to the 64 blocks of
1024^3, then every block's (Gaussian, block) pairs brought together (counted), through
this package's storage exchange (a part per chunk, an index, each block reading its
ranges) and through distributed's P2P shuffle (a dask dataframe of the pairs' block and
position, ``shuffle("block", npartitions=64, shuffle_method="p2p")``).

``graph``: ``gaussian_sum`` over 10^8 dask-array centres (``da.random``) in 10^4 chunks
on 4096^3 (4096 blocks): the time and memory to build the lazy array, and its tasks.

``big``: ``--count`` float64 centres (10^8, 2.4 GB, by default; 10^9 is 24 GB) in a Zarr
array on disk, chunks of 10^6 rows, rendered at 1024^3 (spacing 1, sigma 1) by the CLI
onto a ``dask scheduler`` and two ``dask worker`` processes (one thread, ``--memory-limit
4GiB`` each), started here as a user would. Reports the wall time, the time per
centre, the peak RSS of the CLI's process tree and of each worker's, and whether any
worker was restarted.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.measure import GIB, TreeMemory, run_measured

SIGMA = 3.5 / np.sqrt(2 * np.log(1e6))


def zarr_centres(
    path: Path, count: int, side: float, rows: int = 10**6, seed: int | None = None
) -> Path:
    """``count`` seeded uniform centres in [0, side)^3 (uncompressed), written in pieces of
    10^6 rows whatever the chunks; the same values for the same ``seed`` and ``count``."""
    import zarr

    if path.exists():
        return path
    array = zarr.create_array(
        str(path), shape=(count, 3), chunks=(rows, 3), dtype="float64", compressors=None
    )
    rng = np.random.default_rng(count if seed is None else seed)
    piece = max(rows, 10**6) // rows * rows
    for start in range(0, count, piece):
        stop = min(start + piece, count)
        array[start:stop] = rng.uniform(0, side, size=(stop - start, 3))
    return path


def cost(scratch: Path, options: argparse.Namespace) -> None:
    import dask
    import dask.array as da
    import zarr

    import daskgauss as dg

    count, n = 10**7, 512
    path = zarr_centres(scratch / "centres-1e7-512.zarr", count, n)
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


def _same_volumes(first: Path, second: Path) -> bool:
    """Whether two stores' level 0 hold the same bits, compared a chunk at a time."""
    import zarr

    a, b = zarr.open_array(str(first), path="0"), zarr.open_array(str(second), path="0")
    step = a.chunks[0]
    return all(np.array_equal(a[i : i + step], b[i : i + step]) for i in range(0, a.shape[0], step))


def chunks(scratch: Path, options: argparse.Namespace) -> None:
    count, n = 10**7, 1024
    inputs = {
        rows: zarr_centres(scratch / f"centres-1e7-rows{rows}.zarr", count, n, rows, seed=7)
        for rows in (10**6, 10**4)
    }
    sigma = f"{SIGMA:.6f}"
    times: dict[int, list[float]] = {rows: [] for rows in inputs}
    peaks: dict[int, list[float]] = {rows: [] for rows in inputs}
    for round_number in range(options.rounds):
        for rows, path in inputs.items():
            store = scratch / f"chunks-rows{rows}.zarr"
            shutil.rmtree(store, ignore_errors=True)
            command = [
                sys.executable,
                "-m",
                "daskgauss",
                "render",
                str(path),
                str(store),
                "--shape",
                str(n),
                "--origin",
                "0",
                "--spacing",
                "1",
                "--sigma",
                sigma,
            ]
            seconds, output, memory = run_measured(command)
            times[rows].append(seconds)
            peaks[rows].append(memory.peak / GIB)
            print(
                f"round {round_number + 1}, {count // rows} chunks of {rows} rows: "
                f"{seconds:.1f} s, peak tree RSS {memory.peak / GIB:.2f} GiB"
            )
            print(f"  CLI: {output.strip().splitlines()[-1]}")
        ratio = times[10**4][-1] / times[10**6][-1]
        print(f"  round {round_number + 1}: 1000 chunks / 10 chunks = {ratio:.2f}")
    equal = _same_volumes(scratch / "chunks-rows1000000.zarr", scratch / "chunks-rows10000.zarr")
    ratios = [a / b for a, b in zip(times[10**4], times[10**6], strict=True)]
    print(
        f"10^7 centres at {n}^3, sigma {SIGMA:.3f}, CLI on the default local cluster: "
        f"10 chunks {min(times[10**6]):.1f}-{max(times[10**6]):.1f} s, 1000 chunks "
        f"{min(times[10**4]):.1f}-{max(times[10**4]):.1f} s; ratio per round "
        f"{', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f}); "
        f"bits equal: {equal}"
    )
    for rows in inputs:
        shutil.rmtree(scratch / f"chunks-rows{rows}.zarr", ignore_errors=True)


def _bin_chunk(path: str, number: int, rows: int, n: int):
    """One chunk of the benchmark's centres, binned to the 64 blocks of n^3: its pairs."""
    import zarr

    import daskgauss as dg
    from daskgauss._binning import bin_gaussians
    from daskgauss._gaussians import prepare_gaussians
    from daskgauss._job import regular_chunks
    from daskgauss._pairs import block_pairs

    centres = zarr.open_array(path)[number * rows : (number + 1) * rows]
    gaussians = prepare_gaussians(centres, SIGMA, first_row=number * rows)
    grid = dg.Grid(shape=n)
    return block_pairs(bin_gaussians(gaussians, grid, regular_chunks(grid.shape, (256,) * 3)))


def _storage_part(path: str, number: int, rows: int, n: int, root: str):
    from daskgauss._exchange import Exchange

    return Exchange(root).write_part(number, _bin_chunk(path, number, rows, n))


def _storage_index(root: str, blocks: int, *summaries):
    from daskgauss._exchange import Exchange

    return Exchange(root).write_index(summaries, blocks)


def _storage_block(root: str, identity: str, flat: int, n: int) -> int:
    import daskgauss as dg
    from daskgauss._exchange import Exchange
    from daskgauss._job import Blocks, regular_chunks

    grid = dg.Grid(shape=n)
    blocks = Blocks(regular_chunks(grid.shape, (256,) * 3))
    index = blocks.index(flat)
    block = (
        Exchange(root)
        .reader(identity)
        .block(flat, grid, 1e-6, 0, blocks.start(index), blocks.shape(index))
    )
    return block.count


def _p2p_frame(path: str, number: int, rows: int, n: int):
    import pandas as pd

    pairs = _bin_chunk(path, number, rows, n)
    return pd.DataFrame(
        {
            "block": np.repeat(pairs.blocks.astype(np.int32), pairs.counts),
            "x": pairs.positions[:, 0],
            "y": pairs.positions[:, 1],
            "z": pairs.positions[:, 2],
        }
    )


def exchange(scratch: Path, options: argparse.Namespace) -> None:
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    count, n, rows = int(options.count or 10**7), 1024, 10**5
    path = str(zarr_centres(scratch / f"centres-{count:.0e}-exchange.zarr", count, n, rows))
    parts = count // rows
    root = str(scratch / "exchange-bench")
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, memory_limit="8GiB", dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(lambda: __import__("daskgauss.preload"))
        results = {}
        for name in ("storage", "p2p", "storage", "p2p"):
            shutil.rmtree(root, ignore_errors=True)
            started = time.perf_counter()
            if name == "storage":
                summaries = [
                    client.submit(_storage_part, path, k, rows, n, root, pure=False)
                    for k in range(parts)
                ]
                identity = client.submit(_storage_index, root, 64, *summaries).result()
                moved = sum(
                    client.gather(
                        [
                            client.submit(_storage_block, root, identity, flat, n, pure=False)
                            for flat in range(64)
                        ]
                    )
                )
            else:
                frame = dd.from_delayed(
                    [dask.delayed(_p2p_frame)(path, k, rows, n) for k in range(parts)],
                    meta={"block": np.int32, "x": float, "y": float, "z": float},
                )
                shuffled = frame.shuffle("block", npartitions=64, shuffle_method="p2p")
                moved = int(shuffled.map_partitions(len).sum().compute())
            seconds = time.perf_counter() - started
            results.setdefault(name, []).append(seconds)
            print(f"{name}: {seconds:.1f} s, {moved:,} pairs brought to their blocks")
    shutil.rmtree(root, ignore_errors=True)
    best = {name: min(times) for name, times in results.items()}
    print(
        f"{count:.0e} centres in {parts} chunks, 64 blocks, 2 workers x 1 thread, best of 2: "
        f"storage exchange {best['storage']:.1f} s, P2P shuffle {best['p2p']:.1f} s "
        f"({best['p2p'] / best['storage']:.1f}x the storage exchange's time)"
    )


def graph(scratch: Path, options: argparse.Namespace) -> None:
    import dask.array as da
    import psutil

    import daskgauss as dg

    count, chunk_rows, n = 10**8, 10**4, 4096
    process = psutil.Process()
    before = process.memory_info().rss
    started = time.perf_counter()
    centres = da.random.default_rng(0).uniform(0, n, size=(count, 3), chunks=(chunk_rows, 3))
    volume = dg.gaussian_sum(centres, SIGMA, dg.Grid(shape=n))
    seconds = time.perf_counter() - started
    tasks = len(volume.__dask_graph__())
    chunks_count, blocks = count // chunk_rows, math.prod(volume.numblocks)
    limit = 5 * (chunks_count + blocks) + 1000
    print(
        f"gaussian_sum over 10^8 dask-array centres in {chunks_count} chunks on {n}^3 "
        f"({blocks} blocks): built in {seconds:.2f} s, {tasks:,} tasks (limit {limit:,}), "
        f"process RSS {process.memory_info().rss / GIB:.2f} GiB "
        f"({(process.memory_info().rss - before) / GIB:.2f} GiB for the graph)"
    )
    assert tasks <= limit


def big(scratch: Path, options: argparse.Namespace) -> None:
    import psutil

    count, n = int(options.count or 10**8), 1024
    started = time.perf_counter()
    path = zarr_centres(scratch / f"centres-{count:.0e}.zarr", count, n)
    print(f"centres: {path} ({time.perf_counter() - started:.0f} s to write if new)")
    cluster = scratch / "cluster"
    shutil.rmtree(cluster, ignore_errors=True)
    cluster.mkdir()
    scheduler_file = cluster / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    logs = [open(cluster / f"{name}.log", "w") for name in ("scheduler", "worker-0", "worker-1")]  # noqa: SIM115
    scheduler = [
        *dask,
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--dashboard-address",
        "127.0.0.1:0",
        "--scheduler-file",
        str(scheduler_file),
    ]
    processes = [subprocess.Popen(scheduler, stdout=logs[0], stderr=logs[0])]
    try:
        while not scheduler_file.exists():
            time.sleep(0.1)
        for number in range(2):
            processes.append(
                subprocess.Popen(
                    [
                        *dask,
                        "worker",
                        "--scheduler-file",
                        str(scheduler_file),
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--memory-limit",
                        "4GiB",
                        "--preload",
                        "daskgauss.preload",
                    ],
                    stdout=logs[number + 1],
                    stderr=logs[number + 1],
                )
            )
        store = scratch / f"big-{count:.0e}.zarr"
        shutil.rmtree(store, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "daskgauss",
            "render",
            str(path),
            str(store),
            "--shape",
            str(n),
            "--origin",
            "0",
            "--spacing",
            "1",
            "--sigma",
            "1",
            "--scheduler-file",
            str(scheduler_file),
        ]
        workers = [TreeMemory(process.pid, interval=0.2) for process in processes[1:]]
        for worker in workers:
            worker.__enter__()
        try:
            seconds, output, memory = run_measured(command)
        finally:
            for worker in workers:
                worker.__exit__()
        worker_log = "".join((cluster / f"worker-{i}.log").read_text() for i in range(2))
        restarts = worker_log.count("Restarting worker") + worker_log.count("restart")
        print(
            f"{count:.0e} centres at {n}^3 on 2 workers x 1 thread (4 GiB each): "
            f"{seconds:.0f} s, {seconds / count * 1e9:.0f} ns per centre, CLI process tree "
            f"peak RSS {memory.peak / GIB:.2f} GiB, worker peaks "
            f"{', '.join(f'{w.peak / GIB:.2f}' for w in workers)} GiB, "
            f"worker restarts: {restarts}"
        )
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
    parser.add_argument("case", choices=["cost", "chunks", "exchange", "graph", "big"])
    parser.add_argument("--scratch", type=Path, default=Path("/work/daskgauss-bench"))
    parser.add_argument("--count", type=float, default=None, help="centres (exchange, big)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (chunks)")
    options = parser.parse_args()
    options.scratch.mkdir(parents=True, exist_ok=True)
    cases = {"cost": cost, "chunks": chunks, "exchange": exchange, "graph": graph, "big": big}
    cases[options.case](options.scratch, options)


if __name__ == "__main__":
    main()
