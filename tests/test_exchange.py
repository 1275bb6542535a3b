"""The exchange in storage: parts from many writers, one index, each block's sources read back
with the bits and the order of the in-memory binning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from dask.array.core import normalize_chunks

import daskgauss as dg
from daskgauss._binning import bin_gaussians
from daskgauss._exchange import Exchange, ExchangedSources, write_binning
from daskgauss._gaussians import prepare_gaussians
from daskgauss._job import Blocks
from daskgauss._pairs import block_pairs

FIELDS = ("positions", "sigma", "amplitude", "index_low", "index_high", "covariance")


def _inputs(rng, count=400, covariance=False):
    centres = rng.uniform(-2, 22, size=(count, 3))
    weights = rng.normal(size=count)
    if covariance:
        axes = rng.uniform(0.3, 1.0, size=(count, 3))
        rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        return centres, None, np.einsum("ij,mj,kj->mik", rotation, axes**2, rotation), weights
    return centres, rng.uniform(0.3, 1.0, size=(count, 3)), None, weights


def _gaussians(centres, sigma, covariance, weights, first_row=0):
    return prepare_gaussians(
        centres, sigma, covariance=covariance, weights=weights, first_row=first_row
    )


def _per_row(values, count):
    return None if values is None else np.broadcast_to(values, (count, *values.shape[1:]))


def _assert_same_sources(got, expected):
    for field in FIELDS:
        mine, theirs = getattr(got, field), getattr(expected, field)
        if field in ("sigma", "amplitude", "covariance"):
            mine, theirs = _per_row(mine, got.count), _per_row(theirs, expected.count)
        if theirs is None:
            assert mine is None, field
            continue
        assert mine.dtype == theirs.dtype, field
        np.testing.assert_array_equal(mine, theirs, err_msg=field)


def _feed(exchange, identity, binning):
    return ExchangedSources(
        exchange.reader(identity), binning.grid, binning.tol, binning.level, Blocks(binning.chunks)
    )


CASES = {
    "plain": {},
    "periodic": {"periodic": True},
    "level-1": {"level": 1},
    "covariance": {"covariance": True},
}


def _grid(periodic):
    if periodic:
        return dg.Grid.from_box(0, 20, (24, 20, 16))
    return dg.Grid.from_bounds(0, 20, (24, 20, 16))


@pytest.mark.parametrize("case", CASES)
def test_chunks_written_as_parts_read_back_as_the_in_memory_binning(tmp_path, rng, case):
    options = CASES[case]
    periodic, level = options.get("periodic", False), options.get("level", 0)
    centres, sigma, covariance, weights = _inputs(rng, covariance=options.get("covariance", False))
    weights[:100] = 2.0  # the first chunk's weights are all equal: shared in its part only
    grid = _grid(periodic)
    chunks = normalize_chunks((5, 7, 16), shape=grid.level(level).shape)
    whole = bin_gaussians(
        _gaussians(centres, sigma, covariance, weights),
        grid,
        chunks,
        periodic=periodic,
        level=level,
    )
    exchange = Exchange(str(tmp_path / "exchange"))
    summaries = []
    edges = [0, 100, 101, 250, 400]
    for number, (first, stop) in enumerate(itertools.pairwise(edges)):
        part = _gaussians(
            centres[first:stop],
            None if sigma is None else sigma[first:stop],
            None if covariance is None else covariance[first:stop],
            weights[first:stop],
            first,
        )
        binning = bin_gaussians(part, grid, chunks, periodic=periodic, level=level)
        summaries.append(exchange.write_part(number, block_pairs(binning)))
    assert exchange.index_id() is None
    identity = exchange.write_index(
        summaries[::-1], whole.numblocks[0] * whole.numblocks[1] * whole.numblocks[2]
    )
    assert exchange.index_id() == identity
    feed = _feed(exchange, identity, whole)
    for index in Blocks(chunks):
        assert feed.block_count(index) == whole.block_count(index)
        block = feed.block(index)
        assert block.count == whole.block_count(index)
        _assert_same_sources(block.sources(), whole.block_sources(index))
        start = whole.block_start(index) + np.array([1, 0, 2])
        shape = np.maximum(np.array(whole.block_shape(index)) - [2, 1, 3], 1)
        _assert_same_sources(block.sources((start, shape)), whole.box_sources(start, shape))


@pytest.mark.parametrize("part_bytes", [1, 2000, 64 * 2**20])
def test_binning_written_in_parts_of_blocks_reads_back(tmp_path, rng, part_bytes):
    centres, sigma, _, weights = _inputs(rng)
    grid = _grid(False)
    binning = bin_gaussians(
        _gaussians(centres, sigma, None, weights),
        grid,
        normalize_chunks((5, 7, 16), shape=grid.shape),
    )
    exchange = Exchange(str(tmp_path / "exchange"))
    identity = write_binning(exchange, binning, part_bytes)
    parts = exchange.parts_present()
    assert len(parts) == (15 if part_bytes == 1 else 1 if part_bytes > 10**6 else len(parts))
    assert len(parts) > 1 or part_bytes > 10**6
    feed = _feed(exchange, identity, binning)
    for index in Blocks(binning.chunks):
        _assert_same_sources(feed.block(index).sources(), binning.block_sources(index))


def test_shared_values_are_written_once(tmp_path, rng):
    centres = rng.uniform(0, 20, size=(200, 3))
    grid = _grid(False)
    binning = bin_gaussians(_gaussians(centres, 0.5, None, 1.5), grid, ((24,), (20,), (16,)))
    exchange = Exchange(str(tmp_path / "exchange"))
    summary = exchange.write_part(0, block_pairs(binning))
    assert summary.columns == 3  # positions only: sigma and amplitude are in the header
    size = (tmp_path / "exchange" / "parts" / "00000000").stat().st_size
    assert size == summary.data_offset + 3 * 8 * binning.pairs
    identity = exchange.write_index([summary], 1)
    sources = _feed(exchange, identity, binning).block((0, 0, 0)).sources()
    assert sources.sigma.shape == (1, 3)
    assert sources.amplitude.shape == (1,)


def test_parts_present_and_their_summaries_survive_a_rerun(tmp_path, rng):
    centres, sigma, _, weights = _inputs(rng)
    grid = _grid(False)
    chunks = normalize_chunks((5, 7, 16), shape=grid.shape)
    exchange = Exchange(str(tmp_path / "exchange"))
    written = []
    for number, first in enumerate((0, 200)):
        part = _gaussians(
            centres[first : first + 200],
            sigma[first : first + 200],
            None,
            weights[first : first + 200],
            first,
        )
        written.append(exchange.write_part(number, block_pairs(bin_gaussians(part, grid, chunks))))
    # A writer killed mid-write leaves a temporary name: not a part.
    (tmp_path / "exchange" / "parts" / "00000002.0123456789ab.partial").write_bytes(b"cut")
    assert exchange.parts_present() == {0, 1}
    for summary in written:
        read = exchange.read_part_summary(summary.number)
        for field in ("number", "data_offset", "columns", "flags"):
            assert getattr(read, field) == getattr(summary, field)
        for field in ("blocks", "counts", "shared"):
            np.testing.assert_array_equal(getattr(read, field), getattr(summary, field))
    with pytest.raises(ValueError, match="needs every part"):
        exchange.write_index(written[1:], 15)
    exchange.remove()
    assert not (tmp_path / "exchange").exists()
    assert exchange.parts_present() == set()


def test_pairs_without_gaussians_are_not_in_the_index(tmp_path, rng):
    """Spatially sorted centres: each chunk reaches a few blocks, and the index holds only
    the (part, block) entries that have pairs; shuffled, every chunk reaches every block."""
    grid = dg.Grid.from_bounds(0, 63, 64)
    chunks = normalize_chunks(16, shape=grid.shape)
    centres = rng.uniform(0, 63, size=(4096, 3))
    order = np.lexsort((centres[:, 2] // 16, centres[:, 1] // 16, centres[:, 0] // 16))
    entries = {}
    for name, arranged in (("sorted", centres[order]), ("shuffled", centres)):
        exchange = Exchange(str(tmp_path / name))
        summaries = [
            exchange.write_part(
                n,
                block_pairs(
                    bin_gaussians(
                        _gaussians(arranged[first : first + 256], 0.3, None, None, first),
                        grid,
                        chunks,
                    )
                ),
            )
            for n, first in enumerate(range(0, 4096, 256))
        ]
        exchange.write_index(summaries, 64)
        entries[name] = sum(len(summary.blocks) for summary in summaries)
        assert entries[name] == sum(
            len(exchange.reader(exchange.index_id()).entries(flat)) for flat in range(64)
        )
    assert entries["shuffled"] >= 0.95 * 16 * 64  # nearly every (chunk, block) pair
    assert entries["sorted"] < entries["shuffled"] / 2, entries
