"""The job spec: what decides a job's bits, its JSON record and its format."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import daskgauss as dg
from daskgauss._job import FORMAT, JobSpec, StoreFormatError, check_format, regular_chunks
from daskgauss._plan import Request, plan

finite = st.floats(-1e6, 1e6, allow_nan=False)
positive = st.floats(1e-3, 1e3, allow_nan=False)


@st.composite
def specs(draw) -> JobSpec:
    shape = tuple(draw(st.integers(1, 600)) for _ in range(3))
    grid = dg.Grid(shape=shape, origin=tuple(draw(finite) for _ in range(3)),
                   spacing=tuple(draw(positive) for _ in range(3)))  # fmt: skip
    block = tuple(draw(st.integers(1, n)) for n in shape)
    low, high = sorted((draw(positive), draw(positive)))
    return JobSpec(
        grid=grid,
        fingerprint=draw(st.text("0123456789abcdef", min_size=64, max_size=64)),
        centres=draw(st.integers(0, 10**10)),
        sigma_range=draw(st.none() | st.just((low, high, (low + high) / 2))),
        amplitude_range=draw(st.none() | st.tuples(finite, finite).map(sorted).map(tuple)),
        tol=draw(st.floats(1e-12, 0.5)),
        normalize=draw(st.sampled_from(["peak", "density"])),
        periodic=draw(st.booleans()),
        dtype=draw(st.sampled_from(["float32", "float64"])),
        chunks=regular_chunks(shape, block),
        compression=draw(st.sampled_from(["lz4", "none", "zstd", "zstd-plain"])),
        unit=draw(st.sampled_from([None, "angstrom", "nanometer"])),
    )


@given(specs())
def test_spec_round_trips_through_json_text(spec):
    record = json.loads(json.dumps(spec.to_json()))
    again = JobSpec.from_json(record)
    assert again == spec
    assert again.token == spec.token
    assert again.differences(spec) == []


def test_planned_spec_round_trips_and_names_its_differences(rng):
    request = Request(rng.uniform(-5, 5, (50, 3)), rng.uniform(0.5, 1, 50), dg.Grid(shape=20),
                      weights=rng.normal(size=50), chunks=8)  # fmt: skip
    spec = replace(plan(request).spec, unit="angstrom", compression="lz4")
    assert JobSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    other = replace(plan(Request(**{**request.__dict__, "tol": 1e-4})).spec, unit="angstrom",
                    compression="lz4")  # fmt: skip
    assert other != spec
    assert other.token != spec.token
    changed = {difference.split(":")[0] for difference in spec.differences(other)}
    assert changed == {"fingerprint", "tol"}  # the cut is part of the Gaussians' fingerprint


def test_same_inputs_same_spec_whatever_the_worker_count(rng):
    import dask

    request = Request(rng.uniform(-5, 5, (50, 3)), 1.0, dg.Grid(shape=(300, 200, 100)))
    specs_by_workers = []
    for workers in (1, 2, 16):
        with dask.config.set(num_workers=workers):
            specs_by_workers.append(plan(request).spec)
    assert specs_by_workers[0] == specs_by_workers[1] == specs_by_workers[2]


def test_irregular_blocks_have_no_record():
    spec = JobSpec(grid=dg.Grid(shape=10), fingerprint="0", centres=0, sigma_range=None,
                   amplitude_range=None, tol=1e-6, normalize="peak", periodic=False,
                   dtype="float32", chunks=((3, 7), (10,), (10,)))  # fmt: skip
    assert not spec.regular
    with pytest.raises(ValueError, match="regular blocks"):
        spec.to_json()


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        (1, r"format 1, .*reads format 2 only; it can be resumed with daskgauss 0\.1\.x"),
        (FORMAT + 1, "a newer daskgauss wrote it: upgrade daskgauss"),
        (None, "no daskgauss release reads it"),
    ],
)
def test_other_formats_are_refused_saying_who_reads_them(recorded, message):
    check_format(FORMAT)
    with pytest.raises(StoreFormatError, match=message):
        check_format(recorded)


def test_importing_daskgauss_does_not_import_distributed():
    # Importing and building a lazy array only; dask's own compute() imports
    # distributed to look for a client, which is not ours to change.
    code = (
        "import sys, numpy as np, daskgauss as dg\n"
        "dg.gaussian_sum(np.zeros((1, 3)), 1.0, dg.Grid(shape=8))\n"
        "assert 'distributed' not in sys.modules, 'distributed was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_block_slices_follow_the_chunks():
    spec = JobSpec(grid=dg.Grid(shape=(10, 9, 8)), fingerprint="0", centres=0,
                   sigma_range=None, amplitude_range=None, tol=1e-6, normalize="peak",
                   periodic=False, dtype="float32",
                   chunks=regular_chunks((10, 9, 8), (4, 4, 8)))  # fmt: skip
    assert spec.numblocks == (3, 3, 1)
    assert spec.block_slices((2, 1, 0)) == (slice(8, 10), slice(4, 8), slice(0, 8))
    volume = np.zeros((10, 9, 8))
    for index in np.ndindex(*spec.numblocks):
        volume[spec.block_slices(index)] += 1
    assert np.all(volume == 1)
