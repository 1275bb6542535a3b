"""The narrow-Gaussian kernel against the strip kernel and FINUFFT's spreader, one thread.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_narrow            # a few minutes
    .venv/bin/python -m benchmarks.bench_narrow --quick    # skips sigma = 5 at M = 10^6

Every case: M centres uniform over a 256^3 grid of spacing 1, weights 1, tol 1e-6,
one 256^3 float32 block. Times are warm (compiled, one untimed run first), best of 3,
all in this one process, one thread (this VM's speed drifts by tens of percent over
minutes, so only ratios taken side by side mean much). "narrow path" includes
``spatial_order`` and gathering the sources into that order; the strip kernel gets the
sources in their given (random) order, as the binning hands them over today, and, for
comparison, in the spatial order.
"""

from __future__ import annotations

import os

for _variable in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                  "MKL_NUM_THREADS"):  # fmt: skip
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402

import daskgauss as dg  # noqa: E402
from benchmarks.measure import best_of  # noqa: E402
from daskgauss._binning import BIN_SHAPE, spatial_order  # noqa: E402
from daskgauss._block import strip_rows  # noqa: E402
from daskgauss._kernel import add_gaussians_to_block  # noqa: E402
from daskgauss._narrow_kernel import add_narrow_gaussians_to_block  # noqa: E402

N = 256
TOL = 1e-6
FINUFFT_SIGMA = 3.5 / math.sqrt(2 * math.log(1 / TOL))  # a 7-sample support, as FINUFFT's


class Problem:
    """M centres on the 256^3 grid, their boxes, and a reusable output block."""

    def __init__(self, count: int, sigma: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.grid = dg.Grid(shape=(N, N, N), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
        self.origin = np.zeros(3)
        self.spacing = np.ones(3)
        self.start = np.zeros(3, dtype=np.int64)
        self.count = count
        self.sigma_value = sigma
        self.positions = rng.uniform(0, N, size=(count, 3))
        self.sigma = np.full((count, 3), sigma)
        self.amplitude = np.ones(count)
        radius = self.sigma * math.sqrt(2 * math.log(1 / TOL))
        # The binning's boxes: ceil and floor of (p -+ r) on the grid, clipped to it.
        low = np.maximum(np.ceil(self.positions - radius), 0)
        high = np.minimum(np.floor(self.positions + radius), N - 1)
        self.low, self.high = low.astype(np.int64), high.astype(np.int64)
        self.block = np.empty((N, N, N), dtype=np.float32)
        self.strip = strip_rows(N, 4)
        self.bins = np.array(BIN_SHAPE, dtype=np.int64)

    def sources(self, order=None):
        arrays = (self.positions, self.sigma, self.amplitude, self.low, self.high)
        if order is None:
            return arrays
        return tuple(a.take(order, axis=0) for a in arrays)

    def order(self):
        return spatial_order(self.positions, self.origin, self.spacing, self.low, self.high,
                             self.bins)  # fmt: skip

    def strip_kernel(self, sources):
        geometry = (self.start, self.origin, self.spacing)
        cut = math.log(1 / TOL)
        return add_gaussians_to_block(self.block, *geometry, *sources, cut, self.strip, True)

    def narrow_kernel(self, sources):
        geometry = (self.start, self.origin, self.spacing)
        cut = math.log(1 / TOL)
        return add_narrow_gaussians_to_block(self.block, *geometry, *sources, cut, True)

    def narrow_path(self):
        return self.narrow_kernel(self.sources(self.order()))


def finufft_spread(problem: Problem) -> float | None:
    try:
        import finufft
    except ImportError:
        return None
    # Type 1 spreads points in [-pi, pi) onto the N modes' grid.
    x, y, z = (2 * np.pi * problem.positions[:, d] / N - np.pi for d in range(3))
    x, y, z = (np.ascontiguousarray(a, dtype=np.float32) for a in (x, y, z))
    strengths = np.ones(problem.count, dtype=np.complex64)
    plan = finufft.Plan(1, (N, N, N), eps=TOL, dtype="complex64", nthreads=1, spreadinterponly=1)

    def run():
        plan.setpts(x, y, z)
        return plan.execute(strengths)

    seconds, _ = best_of(run)
    return seconds


def headline() -> None:
    problem = Problem(10**6, FINUFFT_SIGMA)
    print(f"M = 10^6 on {N}^3, sigma = {FINUFFT_SIGMA:.3f} (7-sample support), tol {TOL:g}, "
          "one thread, best of 3")  # fmt: skip
    finufft_seconds = finufft_spread(problem)
    given = problem.sources()
    ordered = problem.sources(problem.order())
    strip_given, updates = best_of(lambda: problem.strip_kernel(given))
    strip_ordered, _ = best_of(lambda: problem.strip_kernel(ordered))
    order_seconds, _ = best_of(problem.order)
    gather_seconds, _ = best_of(lambda: problem.sources(problem.order()))
    kernel_seconds, _ = best_of(lambda: problem.narrow_kernel(ordered))
    path_seconds, path_updates = best_of(problem.narrow_path)
    assert path_updates == updates
    rows = [
        ("FINUFFT spread (setpts + execute)", finufft_seconds),
        ("strip kernel, sources in given order", strip_given),
        ("strip kernel, sources in spatial order", strip_ordered),
        ("narrow: spatial_order", order_seconds),
        ("narrow: spatial_order + gather sources", gather_seconds),
        ("narrow: kernel alone", kernel_seconds),
        ("narrow path (order + gather + kernel)", path_seconds),
    ]
    for name, seconds in rows:
        if seconds is None:
            print(f"  {name:42s}  (finufft not installed)")
            continue
        ratio = f"  {seconds / path_seconds:5.2f} x narrow path"
        print(f"  {name:42s} {seconds:7.3f} s{ratio}")
    print(f"  voxel updates: {updates:.3e}")


def table(quick: bool) -> None:
    print()
    print("Throughput per thread (narrow path includes ordering and gathering)")
    header = ("sigma", "M", "updates", "strip s", "narrow s", "speed-up", "strip G/s",
              "narrow G/s", "narrow upd/s")  # fmt: skip
    print("  {:>5} {:>8} {:>10} {:>9} {:>9} {:>8} {:>10} {:>10} {:>12}".format(*header))
    for sigma in (0.5, 1.0, 2.0, 5.0):
        for count in (10**4, 10**6):
            if quick and sigma == 5.0 and count == 10**6:
                continue
            problem = Problem(count, sigma, seed=1)
            given = problem.sources()
            strip_seconds, updates = best_of(lambda p=problem, s=given: p.strip_kernel(s))
            narrow_seconds, narrow_updates = best_of(problem.narrow_path)
            assert narrow_updates == updates
            print(
                f"  {sigma:5.1f} {count:8.0e} {updates:10.3e} {strip_seconds:9.4f} "
                f"{narrow_seconds:9.4f} {strip_seconds / narrow_seconds:8.2f} "
                f"{count / strip_seconds:10.3e} {count / narrow_seconds:10.3e} "
                f"{updates / narrow_seconds:12.3e}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip sigma = 5 at M = 10^6")
    arguments = parser.parse_args()
    headline()
    table(arguments.quick)


if __name__ == "__main__":
    main()
