"""What every benchmark measures with: warm best-of timing, and a command run with the peak
resident memory of its whole process tree."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

GIB = 2**30


class TreeMemory:
    """Peak summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_by_process: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for process in processes:
                try:
                    rss = process.memory_info().rss
                    if process.pid not in self.names:
                        self.names[process.pid] = " ".join(process.cmdline()[:4])
                except psutil.NoSuchProcess:
                    continue
                total += rss
                self.peak_by_process[process.pid] = max(
                    self.peak_by_process.get(process.pid, 0), rss
                )
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def best_of(function: Callable[[], Any], repeats: int = 3, *, warm: bool = True
            ) -> tuple[float, Any]:  # fmt: skip
    """The best wall time of ``repeats`` calls, and the last call's result; one untimed call
    first where ``warm`` (compiled, memory touched)."""
    if warm:
        function()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return min(times), result


def run_measured(command: Sequence[str]) -> tuple[float, str, TreeMemory]:
    """Run ``command``: its wall time, its standard output and the memory monitor of its
    process tree. A failed command raises, with the end of its standard error."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeMemory(process.pid) as memory:
        output, errors = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError(f"{' '.join(command[2:4])} failed: {errors[-3000:]}")
    return seconds, output, memory
