"""A long render for tests that stop one part-way (Ctrl-C, a lost scheduler, a deleted
store, two jobs at once): 3000 centres on 96^3 in 1728 blocks of 8^3, about 20 s on one
worker thread."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np

import daskgauss as dg


def long_render(folder: Path, store: Path) -> tuple[np.ndarray, list[str]]:
    """The centres of the long render (saved in ``folder``) and its CLI command, without
    cluster options."""
    centres = np.random.default_rng(11).uniform(-30, 30, size=(3000, 3))
    np.save(folder / "long.npy", centres)
    command = [sys.executable, "-m", "daskgauss", "render", str(folder / "long.npy"), str(store),
               "--shape", "96", "--lower", "-30", "--upper", "30", "--sigma", "0.8",
               "--chunks", "8"]  # fmt: skip
    return centres, command


def long_render_expected(centres: np.ndarray) -> np.ndarray:
    """What the long render's store holds once complete."""
    with dask.config.set(scheduler="threads"):
        volume = dg.gaussian_sum(centres, 0.8, dg.Grid.from_bounds(-30, 30, 96), chunks=8)
        return volume.compute()


def wait_for_blocks(store: Path, process: subprocess.Popen, count: int = 20) -> None:
    """Wait until ``count`` blocks of ``store`` are recorded done (or the process ended)."""
    flags = store / "blocks_done" / "c"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if flags.exists() and sum(1 for p in flags.rglob("*") if p.is_file()) >= count:
            return
        time.sleep(0.01)
