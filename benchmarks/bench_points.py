"""Point clouds of narrow Gaussians, whole calls: daskgauss against FINUFFT's spreader.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_points            # M = 10^6 on 256^3, 1 thread;
                                                           # M = 10^7 on 512^3, 2 threads
    .venv/bin/python -m benchmarks.bench_points --only 6   # just the first case
    .venv/bin/python -m benchmarks.bench_points --rounds 5 # more rounds (default 3)

The same centres (uniform over a grid of spacing 1, seeded) for both tools; sigma =
3.5 / sqrt(2 ln 10^6) = 0.666 samples, so that daskgauss's support at tol = 1e-6 is
7 samples wide, as FINUFFT's kernel is at eps = 1e-6. Each tool runs in its own
fresh process (so that its peak RSS is its own), one after the other in one run:

- daskgauss: ``gaussian_sum(centres, sigma, grid).compute()``, validation, binning
  and graph included, on dask's synchronous scheduler (1 thread) or its threaded
  scheduler with 2 workers; and (``daskgauss-store``) the same array stored into a
  preallocated numpy array with ``volume.store(out)``, which skips dask's final
  concatenation copy (half the peak memory of a large ``compute()``);
- FINUFFT: ``Plan(1, (n, n, n), eps=1e-6, dtype="complex64", spreadinterponly=1,
  nthreads=T)``, then ``setpts`` + ``execute`` timed (the plan made once).

Times are warm (one untimed call first: numba compiled, memory touched), best of 3
per process. Each round runs the three, one after the other; the ratios are per round
(this VM's speed drifts between minutes) and their median is reported. Peak RSS is
the process's maximum resident set (getrusage), imports included.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys

import numpy as np

from benchmarks.measure import best_of

TOL = 1e-6
SIGMA = 3.5 / math.sqrt(2 * math.log(1 / TOL))
GIB = 2**30
CASES = {6: (10**6, 256, 1), 7: (10**7, 512, 2)}  # log10 M: (M, n, threads)


def centres(count: int, n: int) -> np.ndarray:
    return np.random.default_rng(count).uniform(0, n, size=(count, 3))


def run_daskgauss(count: int, n: int, threads: int, store: bool = False) -> dict:
    import dask

    import daskgauss as dg

    points = centres(count, n)
    grid = dg.Grid(shape=n)
    scheduler = {"scheduler": "synchronous"} if threads == 1 else {
        "scheduler": "threads", "num_workers": threads}  # fmt: skip
    out = np.empty(grid.shape, np.float32) if store else None

    def call():
        with dask.config.set(**scheduler):
            volume = dg.gaussian_sum(points, SIGMA, grid, tol=TOL)
            if out is None:
                return volume.compute()
            volume.store(out, lock=False)
            return out

    return {"seconds": best_of(call)[0], "checksum": float(call().sum(dtype=np.float64))}


def run_finufft(count: int, n: int, threads: int) -> dict:
    import finufft

    points = centres(count, n)
    # Type 1 spreads points in [-pi, pi) onto the n-point grid.
    x, y, z = (np.ascontiguousarray(2 * np.pi * points[:, d] / n - np.pi, dtype=np.float32)
               for d in range(3))  # fmt: skip
    del points
    strengths = np.ones(count, dtype=np.complex64)
    plan = finufft.Plan(1, (n, n, n), eps=TOL, dtype="complex64", nthreads=threads,
                        spreadinterponly=1)  # fmt: skip

    def call():
        plan.setpts(x, y, z)
        return plan.execute(strengths)

    return {"seconds": best_of(call)[0], "checksum": float(call().real.sum(dtype=np.float64))}


def child(tool: str, count: int, n: int, threads: int) -> None:
    import resource

    if tool == "finufft":
        result = run_finufft(count, n, threads)
    else:
        result = run_daskgauss(count, n, threads, store=tool == "daskgauss-store")
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(json.dumps(result))


def measure(tool: str, count: int, n: int, threads: int) -> dict:
    environment = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": str(threads),
                   "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_points", "--child", tool, str(count), str(n),
         str(threads)], capture_output=True, text=True, check=True, env=environment,
    ).stdout  # fmt: skip
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=int, choices=sorted(CASES), default=None)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of the three runs, one after the other (default 3)",
    )
    parser.add_argument("--child", nargs=4, metavar=("TOOL", "M", "N", "THREADS"))
    options = parser.parse_args()
    if options.child:
        tool, count, n, threads = options.child
        child(tool, int(count), int(n), int(threads))
        return
    print(f"# bench_points: sigma = {SIGMA:.4f} samples, tol {TOL:g}, best of 3 per process, "
          f"{options.rounds} rounds")  # fmt: skip
    tools = ("daskgauss", "daskgauss-store", "finufft")
    for key, (count, n, threads) in CASES.items():
        if options.only is not None and key != options.only:
            continue
        print(f"M = {count:.0e} on {n}^3, {threads} thread(s):")
        ratios: dict[str, list[float]] = {"daskgauss": [], "daskgauss-store": []}
        for number in range(options.rounds):
            # The three tools one after the other in each round: this VM's speed drifts
            # between minutes, so each ratio is of runs made next to each other.
            results = {tool: measure(tool, count, n, threads) for tool in tools}
            theirs = results["finufft"]["seconds"]
            for tool in ratios:
                ratios[tool].append(results[tool]["seconds"] / theirs)
            print(f"  round {number + 1}: " + ", ".join(
                f"{tool} {result['seconds']:.3f} s ({result['peak_rss_gib']:.2f} GiB)"
                for tool, result in results.items()))  # fmt: skip
            print("    sums: " + ", ".join(f"{tool} {result['checksum']:.6e}"
                                           for tool, result in results.items()))  # fmt: skip
        for tool, values in ratios.items():
            name = "compute()" if tool == "daskgauss" else "store(out)"
            print(f"  daskgauss {name} / FINUFFT: median {statistics.median(values):.2f} "
                  f"(rounds: {', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
