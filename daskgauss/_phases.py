"""Running a job's phases (checking, exchange, render) on the cluster, with progress shown.

A render of chunked centres runs in phases, each one graph: checking every chunk (its
values, hash and pairs per block), the exchange (binning each chunk and writing its
part, then the index), and rendering the blocks. Each phase is computed on the active
``distributed.Client``, or on dask's local scheduler where there is none, and reports
its own progress in one line: what it works through (chunks, blocks) and, where given,
the rows of centres behind them, so that a long exchange is not a frozen bar.

A phase's results stay on the workers until one task combines them (``finish``),
through a tree where a fan-in is given: only the combined result reaches this process.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import dask
import dask.callbacks

from ._cluster import SchedulerLostError, active_client

__all__ = ["Progress", "run_phase"]

# Seconds between progress lines where the output is not a terminal (a log file).
LOG_INTERVAL = 10.0


@dataclass
class Progress:
    """One phase's progress line.

    Attributes
    ----------
    label : str
        What the phase does, e.g. ``"exchange"``.
    unit : str
        What its tasks are, e.g. ``"chunks"``.
    rows : sequence of ints, optional
        Rows of centres behind each task, to report rows done as well.
    """

    label: str
    unit: str
    rows: Sequence[int] | None = None
    # Said at the end of the line, e.g. how much an earlier run had done.
    note: str = ""

    def __post_init__(self) -> None:
        self._started = time.perf_counter()
        self._shown = self._started
        self._done = 0
        self._rows_done = 0
        self._terminal = sys.stdout.isatty()

    def _line(self, total: int) -> str:
        seconds = time.perf_counter() - self._started
        line = f"{self.label}: {self._done} of {total} {self.unit}"
        if self.rows is not None:
            line += f", {self._rows_done:,} of {sum(self.rows):,} rows"
        return f"{line}{self.note}, {seconds:.1f} s"

    def advance(self, task: int, total: int) -> None:
        """Task number ``task`` (of ``total``) finished."""
        self._done += 1
        if self.rows is not None:
            self._rows_done += int(self.rows[task])
        now = time.perf_counter()
        if self._terminal:
            if now - self._shown > 0.1 or self._done == total:
                print(f"\r{self._line(total)}", end="", flush=True)
                self._shown = now
        elif now - self._shown > LOG_INTERVAL and self._done < total:
            print(self._line(total), flush=True)
            self._shown = now

    def finish(self, total: int) -> None:
        print(f"\r{self._line(total)}" if self._terminal else self._line(total), flush=True)


def _tree(level: list[Any], combine: Callable, fan_in: int, submit: Callable) -> list[Any]:
    """Combine ``level`` ``fan_in`` at a time until at most ``fan_in`` are left."""
    while fan_in and len(level) > fan_in:
        level = [submit(combine, *level[i : i + fan_in]) for i in range(0, len(level), fan_in)]
    return level


def run_phase(
    tasks: Sequence[Any],
    progress: Progress | None = None,
    *,
    finish: Callable | None = None,
    finish_arguments: tuple = (),
    fan_in: int = 0,
) -> Any:
    """Compute ``tasks`` (dask delayed objects); return their results, or with ``finish``
    the result of ``finish(*finish_arguments, *results)`` computed on the cluster, the
    results combined ``fan_in`` at a time by ``finish`` itself first where ``fan_in`` is
    given (``finish`` must then be associative and take no ``finish_arguments``).

    Raises
    ------
    SchedulerLostError
        The connection to the scheduler was lost.
    """
    tasks = list(tasks)
    client = active_client()
    if client is None:
        return _run_locally(tasks, progress, finish, finish_arguments, fan_in)
    from distributed import as_completed
    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    try:
        futures = client.compute(tasks)
        if progress is not None:
            number = {future.key: n for n, future in enumerate(futures)}
            for future in as_completed(futures):
                if future.status == "error":
                    break
                progress.advance(number[future.key], len(futures))
        if finish is None:
            results = client.gather(futures)
            if progress is not None:
                progress.finish(len(futures))
            return results
        combined = _tree(futures, finish, fan_in, lambda *a: client.submit(*a, pure=False))
        result = client.submit(finish, *finish_arguments, *combined, pure=False).result()
    except (FutureCancelledError, CommClosedError):
        raise SchedulerLostError("the render lost its connection to the scheduler") from None
    if progress is not None:
        progress.finish(len(futures))
    return result


def _run_locally(
    tasks: list[Any],
    progress: Progress | None,
    finish: Callable | None,
    finish_arguments: tuple,
    fan_in: int,
) -> Any:
    """:func:`run_phase` on dask's local scheduler: one graph, ``finish`` included."""
    delayed = dask.delayed(pure=False)
    outputs = tasks
    if finish is not None:
        level = _tree(tasks, finish, fan_in, lambda function, *a: delayed(function)(*a))
        outputs = [delayed(finish)(*finish_arguments, *level)]
    watching = _LocalProgress(progress, tasks) if progress is not None else nullcontext()
    with watching:
        results = dask.compute(*outputs)
    if progress is not None:
        progress.finish(len(tasks))
    return results[0] if finish is not None else list(results)


class _LocalProgress(dask.callbacks.Callback):
    """Advances a :class:`Progress` as the phase's own tasks finish on a local scheduler."""

    def __init__(self, progress: Progress, tasks: list[Any]) -> None:
        super().__init__()
        self._progress = progress
        self._numbers = {task.key: n for n, task in enumerate(tasks)}

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        number = self._numbers.get(key)
        if number is not None:
            self._progress.advance(number, len(self._numbers))
