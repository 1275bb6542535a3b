"""Pyramid levels: what `render --levels auto` costs over level 0 alone, and how early the
coarsest level can be opened.

Run from the repository root (outputs go to --scratch, default /work/daskgauss-bench):

    .venv/bin/python -m benchmarks.bench_levels               # 768^3 and 1024^3, about 5 min
    .venv/bin/python -m benchmarks.bench_levels --sizes 512   # a quick look

Inputs as in bench_render: 10^4 centres uniform in [-50, 50]^3 (seeded), sigma = 1,
tol = 1e-6, linspace(-50, 50, n), the CLI in a subprocess on its default local cluster,
default blocks. Each size runs level 0 alone and with ``--levels auto`` side by side,
alternating, ``--repeats`` times; the ratio of the best times is the cost of the levels
(target <= 1.25). A thread polls the store's done flags every 50 ms: "readable" is when
a level's last block is recorded (its data and metadata are then complete).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import threading
import time
from pathlib import Path

from benchmarks.bench_render import LINSPACE, write_centres
from benchmarks.measure import GIB, run_measured


def _flags(store: Path, level: int) -> int:
    folder = store / ("blocks_done" if level == 0 else f"blocks_done_{level}") / "c"
    return sum(1 for path in folder.rglob("*") if path.is_file()) if folder.exists() else 0


def render(scratch: Path, n: int, levels: bool) -> dict:
    """One CLI render; wall time, peak tree RSS and when each level was complete."""
    import daskgauss as dg
    from daskgauss._job import regular_chunks
    from daskgauss._plan import default_block_shape

    store = scratch / f"levels-{n}-{int(levels)}.zarr"
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-m", "daskgauss", "render", str(write_centres(scratch)),
               str(store), "--shape", str(n), *LINSPACE]  # fmt: skip
    count = dg.Grid(shape=n).auto_levels() if levels else 0
    if levels:
        command += ["--levels", "auto"]
    complete: dict[int, float] = {}
    stop = threading.Event()
    started = time.perf_counter()

    def watch(totals: dict[int, int]) -> None:
        while not stop.is_set() and len(complete) < len(totals):
            for level, total in totals.items():
                if level not in complete and _flags(store, level) >= total:
                    complete[level] = time.perf_counter() - started
            time.sleep(0.05)

    grid = dg.Grid(shape=n)
    block = default_block_shape(grid.shape, 4)  # float32; every level has these blocks
    totals = {level: math.prod(len(sizes) for sizes in regular_chunks(grid.level(level).shape,
                                                                     block))
              for level in range(count + 1)}  # fmt: skip
    watcher = threading.Thread(target=watch, args=(totals,), daemon=True)
    watcher.start()
    try:
        seconds, output, memory = run_measured(command)
    finally:
        stop.set()
        watcher.join()
    shutil.rmtree(store, ignore_errors=True)
    return {"seconds": seconds, "peak_gib": memory.peak / GIB, "complete": complete,
            "summary": output.strip().splitlines()[-1]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/work/daskgauss-bench"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[768, 1024])
    parser.add_argument("--repeats", type=int, default=2)
    arguments = parser.parse_args()
    arguments.scratch.mkdir(parents=True, exist_ok=True)
    for n in arguments.sizes:
        plain, pyramid = [], []
        for _ in range(arguments.repeats):
            plain.append(render(arguments.scratch, n, levels=False))
            pyramid.append(render(arguments.scratch, n, levels=True))
        best_plain = min(plain, key=lambda result: result["seconds"])
        best_pyramid = min(pyramid, key=lambda result: result["seconds"])
        ratio = best_pyramid["seconds"] / best_plain["seconds"]
        print(f"{n}^3: level 0 only {best_plain['seconds']:.1f} s "
              f"(peak {best_plain['peak_gib']:.2f} GiB); with --levels auto "
              f"{best_pyramid['seconds']:.1f} s (peak {best_pyramid['peak_gib']:.2f} GiB): "
              f"{ratio:.2f}x (target <= 1.25)")  # fmt: skip
        for level, when in sorted(best_pyramid["complete"].items(), reverse=True):
            print(f"    level {level} complete at {when:.1f} s "
                  f"({when / best_pyramid['seconds']:.0%} of the run)")  # fmt: skip
        print(f"    times: level 0 only {[round(r['seconds'], 1) for r in plain]}, "
              f"with levels {[round(r['seconds'], 1) for r in pyramid]}")  # fmt: skip


if __name__ == "__main__":
    main()
