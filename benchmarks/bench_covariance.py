"""Full-covariance Gaussians against axis-aligned ones, and daskgauss.kde against scipy.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_covariance            # about five minutes
    .venv/bin/python -m benchmarks.bench_covariance --quick    # scipy on 32^3 and 48^3 only

1. Issue 11's target: M = 10^4 centres uniform over a 256^3 grid of spacing 1, random
   orientations with standard deviations along their axes drawn from [1.5, 3.5]
   voxels (about 2.5), against the axis-aligned call of the same size (isotropic
   sigma 2.5 voxels); tol 1e-6, float32, ``gaussian_sum(...).compute()`` on this
   machine's threads. Target: covariance <= 3x axis-aligned.
2. ``daskgauss.kde`` against ``scipy.stats.gaussian_kde.evaluate`` on grids from 32^3 up,
   10^4 correlated points, Scott's rule, float64 (scipy's dtype), and the largest
   difference as a fraction of the documented bound (tol times the kernel's peak).

Times are warm (one untimed run first), best of three, side by side in this process.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import daskgauss as dg
from benchmarks.measure import best_of

N = 256
TOL = 1e-6


def random_covariances(rng: np.random.Generator, count: int, smallest: float, largest: float
                       ) -> np.ndarray:  # fmt: skip
    rotations, _ = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    scales = rng.uniform(smallest, largest, size=(count, 3))
    matrices = np.einsum("mij,mj,mkj->mik", rotations, scales**2, rotations)
    return 0.5 * (matrices + matrices.transpose(0, 2, 1))


def covariance_against_axis_aligned(count: int = 10_000) -> None:
    rng = np.random.default_rng(0)
    grid = dg.Grid(shape=(N, N, N), origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0))
    centres = rng.uniform(0, N, size=(count, 3))
    covariance = random_covariances(rng, count, 1.5, 3.5)
    aligned, _ = best_of(lambda: dg.gaussian_sum(centres, 2.5, grid, tol=TOL).compute())
    full, _ = best_of(
        lambda: dg.gaussian_sum(centres, None, grid, covariance=covariance, tol=TOL).compute()
    )
    print(f"M = {count}, 256^3 float32: axis-aligned sigma 2.5 {aligned:.3f} s, "
          f"random covariances {full:.3f} s: ratio {full / aligned:.2f} (target <= 3)")  # fmt: skip


def kde_against_scipy(sides: list[int], count: int = 10_000) -> None:
    from scipy.stats import gaussian_kde

    rng = np.random.default_rng(1)
    mixing = np.array([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.3, -0.4, 0.5]])
    points = rng.normal(size=(count, 3)) @ mixing.T
    reference = gaussian_kde(points.T)
    for side in sides:
        grid = dg.kde_grid(points, side)
        mesh = np.stack(np.meshgrid(*grid.axes, indexing="ij")).reshape(3, -1)
        scipy_seconds = time.perf_counter()
        expected = reference(mesh).reshape(grid.shape)
        scipy_seconds = time.perf_counter() - scipy_seconds
        ours, values = best_of(lambda grid=grid: dg.kde(points, grid, dtype="float64").compute())
        # The documented bound: tol times the kernel's peak (the weights sum to 1).
        bound = TOL * (2 * math.pi) ** -1.5 / math.sqrt(np.linalg.det(reference.covariance))
        difference = float(np.abs(values - expected).max())
        print(f"{side}^3, M = {count}: scipy {scipy_seconds:.2f} s, daskgauss {ours:.4f} s: "
              f"{scipy_seconds / ours:,.0f}x; largest difference {difference:.2e} = "
              f"{difference / bound:.2f} x the bound (tol x kernel peak)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    print(f"numpy threads as configured; {dg.__version__}")
    covariance_against_axis_aligned()
    kde_against_scipy([32, 48] if arguments.quick else [32, 48, 64, 96])
    print(f"(tol {TOL}; support half-width {math.sqrt(2 * math.log(1 / TOL)):.2f} sigmas)")


if __name__ == "__main__":
    main()
