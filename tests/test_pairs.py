"""A binning's pairs grouped by block, and spatial keys recomputed from rows alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dask.array.core import normalize_chunks

import daskgauss as dg
from daskgauss._binning import bin_gaussians
from daskgauss._gaussians import prepare_gaussians
from daskgauss._pairs import block_pairs, entry_keys, reaching


def _binning(rng, count=300, periodic=False, level=0, covariance=False, shared_sigma=False):
    grid = (
        dg.Grid.from_box(0, 20, (24, 20, 16))
        if periodic
        else dg.Grid.from_bounds((0, 0, 0), (20, 20, 20), (24, 20, 16))
    )
    centres = rng.uniform(-2, 22, size=(count, 3))
    weights = rng.normal(size=count)
    if covariance:
        axes = rng.uniform(0.3, 1.0, size=(count, 3))
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        matrices = np.einsum("ij,mj,kj->mik", rotation, axes**2, rotation)
        gaussians = prepare_gaussians(centres, None, covariance=matrices, weights=weights)
    else:
        sigma = 0.6 if shared_sigma else rng.uniform(0.3, 1.0, size=(count, 3))
        gaussians = prepare_gaussians(centres, sigma, weights=weights)
    shape = grid.level(level).shape
    chunks = normalize_chunks((5, 7, 16), shape=shape)
    return bin_gaussians(gaussians, grid, chunks, periodic=periodic, level=level)


def _per_row(values, count):
    return np.broadcast_to(values, (count, *values.shape[1:]))


@pytest.mark.parametrize(
    "options",
    [{}, {"periodic": True}, {"level": 1}, {"covariance": True}, {"shared_sigma": True}],
    ids=["plain", "periodic", "level-1", "covariance", "shared-sigma"],
)
def test_pairs_are_each_block_s_sources_in_summation_order(rng, options):
    binning = _binning(rng, **options)
    pairs = block_pairs(binning)
    counts = np.diff(binning.block_offsets)
    np.testing.assert_array_equal(pairs.blocks, np.flatnonzero(counts))
    np.testing.assert_array_equal(pairs.counts, counts[counts > 0])
    assert pairs.count == binning.pairs
    at = 0
    for flat, count in zip(pairs.blocks, pairs.counts, strict=True):
        index = tuple(int(i) for i in np.unravel_index(flat, binning.numblocks))
        sources = binning.block_sources(index)
        rows = slice(at, at + count)
        np.testing.assert_array_equal(pairs.positions[rows], sources.positions)
        np.testing.assert_array_equal(
            _per_row(pairs.sigma, pairs.count)[rows], _per_row(sources.sigma, sources.count)
        )
        np.testing.assert_array_equal(
            _per_row(pairs.amplitude, pairs.count)[rows], _per_row(sources.amplitude, sources.count)
        )
        if options.get("covariance"):
            np.testing.assert_array_equal(pairs.covariance[rows], sources.covariance)
        at += count


def test_ranges_of_blocks_cut_the_same_pairs(rng):
    binning = _binning(rng)
    whole = block_pairs(binning)
    blocks = int(np.prod(binning.numblocks))
    cuts = [0, 1, 7, 8, blocks - 2, blocks]
    pieces = [block_pairs(binning, a, b) for a, b in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate([p.blocks for p in pieces]), whole.blocks)
    np.testing.assert_array_equal(np.concatenate([p.positions for p in pieces]), whole.positions)
    for piece, (first, stop) in zip(pieces, itertools.pairwise(cuts), strict=True):
        assert np.all((piece.blocks >= first) & (piece.blocks < stop))


def test_empty_binning_has_no_pairs():
    gaussians = prepare_gaussians(np.zeros((3, 3)), 1.0, weights=0.0)
    grid = dg.Grid(shape=10)
    pairs = block_pairs(bin_gaussians(gaussians, grid, normalize_chunks(5, shape=grid.shape)))
    assert pairs.count == 0
    assert pairs.blocks.shape == (0,)


@pytest.mark.parametrize("options", [{}, {"periodic": True}, {"level": 1}])
def test_keys_recomputed_from_rows_are_the_binning_s(rng, options):
    binning = _binning(rng, **options)
    keys = entry_keys(binning.positions, binning.sigma, binning.grid, binning.tol, binning.level)
    np.testing.assert_array_equal(keys, binning.keys)


def test_reaching_is_the_gather_s_test(rng):
    binning = _binning(rng)
    first, last = np.array([3, 0, 2]), np.array([9, 6, 11])
    mask = reaching(binning.positions, binning.sigma, binning.grid, binning.tol, 0, first, last)
    box = binning.box_sources(first, last - first + 1)
    np.testing.assert_array_equal(binning.positions[mask], box.positions)
