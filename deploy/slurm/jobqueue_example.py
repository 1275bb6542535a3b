"""Render a daskgauss volume on SLURM with dask-jobqueue.

dask-jobqueue submits one SLURM job per group of workers and runs the scheduler inside this
Python process, so run this script somewhere that stays up for the whole render and that the
compute nodes can reach (a login node in ``tmux``/``screen``, or a small long-running job)::

    pip install dask-jobqueue          # into the same environment as daskgauss
    python deploy/slurm/jobqueue_example.py \\
        --centres $SCRATCH/daskgauss/centres.npy --store $SCRATCH/daskgauss/field.zarr \\
        --shape 4096 --lower -50 --upper 50 --sigma 0.5 --jobs 8

Make demo centres first with
``daskgauss demo-centres $SCRATCH/daskgauss/centres.npy --count 10000000 --box 100 --seed 0``.

The store must be reachable by every worker: a path on a shared filesystem, or an object
store URL (``s3://...`` with ``daskgauss[s3]``). If the worker jobs hit their walltime, or
this process dies, run the identical command again: the render resumes and computes only
the blocks that are missing. A different job into the same store is refused unless
``--overwrite`` is given.

Sizing: each worker process needs about ``block bytes x threads x 3 + 400 MB`` plus the
binned centres (~110 bytes per centre and block it reaches). The defaults below give each
worker 2 threads and 7.5 GB, ample for 256^3 float32 blocks (64 MiB).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# Thread pinning for every worker: the job script exports these before starting the
# workers; daskgauss.preload pins numba/OpenMP/BLAS again and compiles the kernel once.
THREAD_PINS = [
    "export OMP_NUM_THREADS=1",
    "export NUMBA_NUM_THREADS=1",
    "export MKL_NUM_THREADS=1",
    "export OPENBLAS_NUM_THREADS=1",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--centres", required=True, help=".npy file of shape (M, 3)")
    parser.add_argument("--store", required=True, help="Zarr store path or fsspec URL")
    parser.add_argument("--shape", type=int, nargs="+", default=[4096], help="1 or 3 ints")
    parser.add_argument("--lower", type=float, nargs="+", default=[-50.0])
    parser.add_argument("--upper", type=float, nargs="+", default=[50.0])
    parser.add_argument("--sigma", type=float, default=0.5)
    parser.add_argument("--chunks", type=int, default=256, help="block side in samples")
    parser.add_argument("--jobs", type=int, default=8, help="SLURM jobs to submit")
    parser.add_argument("--walltime", default="02:00:00")
    parser.add_argument("--account", default=None)
    parser.add_argument("--queue", default=None, help="SLURM partition")
    parser.add_argument("--overwrite", action="store_true")
    return parser.parse_args(argv)


def _one_or_three(values: list):
    """A single value for all axes, or the three values as given."""
    if len(values) not in (1, 3):
        raise SystemExit(f"give 1 or 3 values, got {values}")
    return values[0] if len(values) == 1 else tuple(values)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    # Imported here so that this file compiles, imports and shows --help without
    # dask-jobqueue installed.
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SystemExit("this example needs dask-jobqueue: pip install dask-jobqueue") from None
    from dask.distributed import Client

    import daskgauss

    cluster = SLURMCluster(
        # Per SLURM job: 16 cores and 60 GB, cut into 8 worker processes of 2 threads and
        # 7.5 GB each. processes = cores / threads-per-worker.
        cores=16,
        processes=8,
        memory="60GB",
        walltime=args.walltime,
        account=args.account,
        queue=args.queue,
        job_name="daskgauss-worker",
        local_directory="$TMPDIR",  # node-local scratch; expanded by the job's shell
        log_directory="daskgauss-logs",
        job_script_prologue=THREAD_PINS,
        worker_extra_args=["--preload", "daskgauss.preload"],
        # job_extra_directives=["--constraint=cpu"],
        # interface="ib0",          # when the nodes' default route is not the fast network
    )
    print(cluster.job_script())
    cluster.scale(jobs=args.jobs)

    with Client(cluster) as client:
        # Start once the first workers are in; the rest join as their jobs start.
        client.wait_for_workers(1, timeout=3600)

        centres = np.load(args.centres, mmap_mode="r")
        grid = daskgauss.Grid.from_bounds(
            _one_or_three(args.lower), _one_or_three(args.upper), _one_or_three(args.shape)
        )

        start = time.perf_counter()
        result = daskgauss.render_to_zarr(
            args.store,
            centres,
            args.sigma,
            grid,
            chunks=args.chunks,
            dtype="float32",
            progress=True,
            overwrite=args.overwrite,
        )
        print(f"wrote {result.shape} {result.dtype} to {args.store}")
        print(f"in {time.perf_counter() - start:.1f} s")

    cluster.close()


if __name__ == "__main__":
    main()
