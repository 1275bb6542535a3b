"""render_block: the glue between a block's sources and the kernel."""

from __future__ import annotations

import dask
import numpy as np

import daskgauss as dg
from daskgauss._binning import bin_gaussians
from daskgauss._block import render_block, strip_rows
from daskgauss._gaussians import prepare_gaussians


def test_reused_buffer_gives_the_same_block_as_a_fresh_one(rng):
    grid = dg.Grid.from_bounds(0, 10, (20, 18, 16))
    binning = bin_gaussians(prepare_gaussians(rng.uniform(0, 10, (50, 3)), 0.8), grid,
                            ((10, 10), (9, 9), (16,)))  # fmt: skip
    buffer = np.full((10, 9, 16), 123.0, dtype=np.float32)  # stale contents must not leak
    for index in np.ndindex(*binning.numblocks):
        start, shape = binning.block_start(index), binning.block_shape(index)
        arguments = (binning.block_sources(index), grid, binning.tol, start, shape, np.float32)
        fresh = render_block(*arguments)
        reused = render_block(*arguments, out=buffer)
        assert reused is buffer
        np.testing.assert_array_equal(reused, fresh)
        assert fresh.any()


def test_strip_rows_fit_the_budget():
    assert strip_rows(256, 4) == 32  # 32 x 256 float32 = 32 KiB
    assert strip_rows(208, 8) == 19
    assert strip_rows(16, 4) == 256  # capped
    assert strip_rows(100_000, 8) == 1  # floor
    with dask.config.set({"daskgauss.kernel-strip-bytes": "64 KiB"}):
        assert strip_rows(256, 4) == 64
