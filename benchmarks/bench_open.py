"""Opening a 2048^3 store as a DataArray: time, and proof that no volume data is read.

    .venv/bin/python -m benchmarks.bench_open [--scratch DIR]

Renders a 2048^3 float32 store (32 GiB of volume, 512 blocks of 256^3) from 20 centres
near the middle, so that it is quick to make (blocks no Gaussian reaches are recorded
done without a chunk), then opens it with ``open_dataarray`` five times in fresh
processes (imports not counted) and reports the time of each open; the store's volume
chunks are then moved away and the open repeated, so any read of volume data would fail
or show.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OPEN = """
import time, daskgauss as dg, xarray
started = time.perf_counter()
array = dg.open_dataarray({store!r})
seconds = time.perf_counter() - started
print(seconds, array.shape, array.attrs["blocks_done"], array.attrs["blocks"])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/work/daskgauss-bench"))
    options = parser.parse_args()
    options.scratch.mkdir(parents=True, exist_ok=True)
    store = options.scratch / "open-2048.zarr"
    import daskgauss as dg

    started = time.perf_counter()
    centres = np.random.default_rng(0).uniform(-2, 2, size=(20, 3))
    dg.render_to_zarr(str(store), centres, 0.5, dg.Grid.from_bounds(-50, 50, 2048),
                      unit="angstrom", overwrite=True)  # fmt: skip
    print(f"rendered 2048^3 store in {time.perf_counter() - started:.1f} s")
    for label in ("as written", "volume chunks moved away"):
        if label != "as written":
            shutil.move(store / "0" / "c", options.scratch / "moved-chunks")
        for _ in range(5):
            output = subprocess.run([sys.executable, "-c", OPEN.format(store=str(store))],
                                    capture_output=True, text=True, check=True).stdout  # fmt: skip
            print(f"open_dataarray ({label}): {output.strip()}")
    shutil.rmtree(options.scratch / "moved-chunks", ignore_errors=True)
    shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
