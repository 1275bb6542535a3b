"""Connecting to a dask.distributed cluster, or starting a local one.

``distributed`` is imported only when a cluster is used: importing daskgauss, or
computing on dask's local schedulers, does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dask.utils

from . import _config

if TYPE_CHECKING:
    import distributed

__all__ = [
    "IGNORE_INTERRUPT",
    "ClusterError",
    "SchedulerLostError",
    "active_client",
    "connect",
    "default_local_size",
]

# Set for the workers of the LocalCluster that `daskgauss render` starts: they share the
# terminal's process group, and Ctrl-C there is for the CLI (which shuts them down), not
# for them; daskgauss.preload makes them ignore it. Workers started by hand
# (`dask worker --preload daskgauss.preload`) keep Ctrl-C.
IGNORE_INTERRUPT = "DASKGAUSS_WORKER_IGNORES_INTERRUPT"


class ClusterError(RuntimeError):
    """The cluster could not be reached or started."""


class SchedulerLostError(ClusterError):
    """The connection to the scheduler was lost while the render ran."""


def default_local_size() -> tuple[int, int]:
    """(workers, threads per worker) for a LocalCluster on this machine.

    One worker process per four cores (at least one), with two threads per core
    between them. Threads share the numba kernel and the zarr codecs, which release
    the GIL, so fewer, wider processes save the memory each process costs. Twice as
    many threads as cores because a block's write spends part of its time blocked
    in the filesystem (benchmarks/RESULTS.md has the measurements). Each thread
    keeps one block buffer between tasks, and a task also holds its block while
    compressing it: see README for the measured memory per thread.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = max(1, cores or 1)
    workers = max(1, cores // 4)
    return workers, max(1, 2 * cores // workers)


def _wait_for_file(path: str, timeout: str) -> None:
    """Wait for a scheduler file (the scheduler may be starting), up to ``timeout``."""
    deadline = time.monotonic() + dask.utils.parse_timedelta(timeout)
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise ClusterError(f"no scheduler file at {path} after {timeout}")
        time.sleep(0.1)


def active_client() -> distributed.Client | None:
    """The distributed client dask would use now, or None (local schedulers).

    Without ``distributed`` imported no client can exist, so it is not imported here.
    """
    if "distributed" not in sys.modules:
        return None
    import distributed

    try:
        return distributed.default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def connect(
    *,
    scheduler: str | None = None,
    scheduler_file: str | None = None,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    timeout: str | None = None,
    quiet: bool = True,
) -> Iterator[distributed.Client]:
    """A client for an existing scheduler, or for a LocalCluster started here.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, ``tcp://host:port``.
    scheduler_file : str, optional
        The JSON file ``dask scheduler --scheduler-file`` wrote.
    workers, threads_per_worker : int, optional
        Size of the LocalCluster when neither of the above is given; default
        :func:`default_local_size`. Its workers preload ``daskgauss.preload``.
    timeout : str, optional
        How long to wait for the scheduler; default ``daskgauss.connect-timeout``.
    quiet : bool
        Keep the LocalCluster's own log to errors (a failed task's traceback, for
        failures the caller reports itself, such as a full disk); False shows warnings.

    Raises
    ------
    ClusterError
        The scheduler is unreachable within ``timeout``, or both a scheduler
        address and a scheduler file were given.
    """
    import distributed

    if scheduler and scheduler_file:
        raise ClusterError("give --scheduler or --scheduler-file, not both")
    timeout = timeout or str(_config.get("connect-timeout"))
    if scheduler or scheduler_file:
        where = scheduler or f"the scheduler in {scheduler_file}"
        if scheduler_file:
            _wait_for_file(scheduler_file, timeout)
        try:
            client = distributed.Client(
                address=scheduler, scheduler_file=scheduler_file, timeout=timeout
            )
        except (OSError, TimeoutError, ValueError) as error:
            raise ClusterError(f"cannot reach {where} within {timeout}: {error}") from None
        with client:
            yield client
        return
    default_workers, default_threads = default_local_size()
    with (
        distributed.LocalCluster(
            n_workers=workers or default_workers,
            threads_per_worker=threads_per_worker or default_threads,
            processes=True,
            dashboard_address=":0",
            preload=["daskgauss.preload"],
            env={IGNORE_INTERRUPT: "1"},
            silence_logs=logging.CRITICAL if quiet else logging.WARNING,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client
