"""The Zarr store: OME-NGFF metadata, the completion record and the sources sidecar."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._job import JobSpec, StoreFormatError, regular_chunks
from daskgauss._store import (
    StoreMismatchError,
    check_unit,
    create_target,
    location_exists,
    normalise_location,
    open_target,
    recorded_job,
)


def make_spec(grid, block_shape, dtype="float32", compression="none", **changes) -> JobSpec:
    """A job spec for store tests that need a store, not Gaussians."""
    arguments = {
        "grid": grid, "fingerprint": "f" * 64, "centres": 0, "sigma_range": None,
        "amplitude_range": None, "tol": 1e-6, "normalize": "peak", "periodic": False,
        "dtype": dtype,
        "chunks": regular_chunks(grid.shape, block_shape), "compression": compression,
    }  # fmt: skip
    return JobSpec(**(arguments | changes))


@pytest.fixture
def rendered(tmp_path, rng):
    grid = dg.Grid(shape=(30, 26, 22), origin=(-4.0, 2.5, 10.0), spacing=(0.5, 0.4, 0.3))
    centres = rng.uniform((-4, 2.5, 10), (11, 12.5, 16.6), size=(60, 3))
    store = tmp_path / "image.zarr"
    dg.render_to_zarr(store, centres, 0.7, grid, chunks=(8, 8, 8), unit="nanometer")
    return store, grid


def test_ngff_multiscales_round_trip(rendered):
    store, grid = rendered
    group = zarr.open_group(str(store), mode="r")
    assert group.metadata.zarr_format == 3
    ome = group.attrs["ome"]
    assert ome["version"] == "0.5"
    (multiscale,) = ome["multiscales"]
    assert multiscale["axes"] == [
        {"name": axis, "type": "space", "unit": "nanometer"} for axis in ("x", "y", "z")
    ]
    (dataset,) = multiscale["datasets"]
    assert dataset["path"] == "0"
    transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == list(grid.spacing)
    assert transforms["translation"]["translation"] == list(grid.origin)
    assert [t["type"] for t in dataset["coordinateTransformations"]] == ["scale", "translation"]
    array = group["0"]
    assert array.metadata.dimension_names == ("x", "y", "z")
    assert array.shape == grid.shape
    assert array.chunks == (8, 8, 8)


def test_job_parameters_recorded(rendered):
    store, grid = rendered
    job = zarr.open_group(str(store), mode="r").attrs["daskgauss"]["job"]
    assert job["grid"] == grid.to_dict()
    assert job["centres"] == 60
    assert job["sigma"] == {"min": 0.7, "max": 0.7, "mean": pytest.approx(0.7)}
    assert job["tol"] == 1e-6
    assert job["normalize"] == "peak"
    assert job["periodic"] is False
    assert job["dtype"] == "float32"
    assert job["block_shape"] == [8, 8, 8]
    assert job["unit"] == "nanometer"
    assert job["format"] == 2
    assert "version" not in job  # the package version is in the run log, not the identity
    (run,) = open_target(store).runs()
    assert run["version"] == dg.__version__
    assert len(job["fingerprint"]) == 64


def test_ome_zarr_reader_places_the_image(rendered):
    # The test extra installs ome-zarr: a missing reader fails here, it is not skipped.
    import ome_zarr.io as ome_io
    import ome_zarr.reader as ome_reader

    store, grid = rendered
    location = ome_io.parse_url(str(store))
    assert location.version == "0.5"
    (node,) = list(ome_reader.Reader(location)())
    assert [axis["name"] for axis in node.metadata["axes"]] == ["x", "y", "z"]
    (transforms,) = node.metadata["coordinateTransformations"]
    assert transforms[0]["scale"] == list(grid.spacing)
    assert transforms[1]["translation"] == list(grid.origin)
    np.testing.assert_array_equal(
        np.asarray(node.data[0]), zarr.open_array(str(store), path="0")[...]
    )


def test_ngff_05_schema_validates(rendered):
    import ome_zarr_models.v05.image as image

    store, _ = rendered
    model = image.Image.from_zarr(zarr.open_group(str(store), mode="r"))
    assert [axis.name for axis in model.attributes.ome.multiscales[0].axes] == ["x", "y", "z"]


def test_done_record_and_block_writes(tmp_path):
    grid = dg.Grid(shape=(10, 9, 8))
    target = create_target(tmp_path / "d.zarr", spec=make_spec(grid, (4, 4, 4)), overwrite=False)
    assert target.numblocks == (3, 3, 2)
    assert not target.done_mask().any()
    target.write_block((2, 2, 1), np.full((2, 1, 4), 7.0, dtype=np.float32))
    assert sorted(map(tuple, np.argwhere(target.done_mask()))) == [(2, 2, 1)]
    # Blocks no Gaussian reaches are done by definition once the pairs are recorded.
    pairs = np.ones((3, 3, 2), dtype=np.int64)
    pairs[0, 0, 0] = pairs[1, 2, 0] = 0
    assert target.block_pairs() is None
    target.write_block_pairs(pairs)
    np.testing.assert_array_equal(target.block_pairs(), pairs)
    done = target.done_mask()
    assert sorted(map(tuple, np.argwhere(done))) == [(0, 0, 0), (1, 2, 0), (2, 2, 1)]
    np.testing.assert_array_equal(target.recorded_done(), done & (pairs > 0))
    volume = target.data[...]
    assert np.all(volume[8:, 8:, 4:] == 7.0)
    assert volume.sum() == 7.0 * 8
    assert target.block_slices((2, 2, 1)) == (slice(8, 10), slice(8, 9), slice(4, 8))


def test_a_sparse_job_writes_objects_for_its_non_empty_blocks_only(tmp_path, rng):
    """10^5 blocks, Gaussians in one corner: the store's objects scale with the blocks they
    reach, and so do the reads that find what is done."""
    grid = dg.Grid(shape=(800, 800, 640))
    store = tmp_path / "sparse.zarr"
    centres = rng.uniform(0, 20, size=(200, 3))
    dg.render_to_zarr(store, centres, 0.8, grid, chunks=16)
    target = open_target(store)
    assert np.prod(target.numblocks) == 100_000
    objects = [p for p in store.rglob("*") if p.is_file()]
    reached = int((target.block_pairs() > 0).sum())
    assert reached <= 8
    # data chunks and done flags of the reached blocks, plus a handful of metadata objects
    assert len(objects) <= 2 * reached + 12, sorted(str(p.relative_to(store)) for p in objects)
    assert target.done_mask().all()
    assert target.recorded_done().sum() == reached
    # An identical rerun finds everything done, by one listing.
    dg.render_to_zarr(store, centres, 0.8, grid, chunks=16)
    run = open_target(store).runs()[-1]
    assert run["rendered"] == 0
    assert run["already_done"] == 100_000


def test_all_zero_blocks_are_recorded_done_without_a_chunk(tmp_path):
    grid = dg.Grid(shape=(8, 8, 8))
    spec = make_spec(grid, (4, 4, 4), compression="lz4")
    target = create_target(tmp_path / "z.zarr", spec=spec, overwrite=False)
    target.write_block((0, 0, 0), np.zeros((4, 4, 4), dtype=np.float32))
    target.write_block((0, 0, 1), np.full((4, 4, 4), -0.0, dtype=np.float32))
    late = np.zeros((4, 4, 4), dtype=np.float32)
    late[-1, -1, -1] = 1e-30  # one non-zero value, at the very end
    target.write_block((1, 1, 1), late)
    chunks = sorted(p.relative_to(tmp_path / "z.zarr" / "0").as_posix()
                    for p in (tmp_path / "z.zarr" / "0").rglob("*") if p.is_file() and
                    p.name != "zarr.json")  # fmt: skip
    assert chunks == ["c/1/1/1"]
    assert sorted(map(tuple, np.argwhere(target.done_mask()))) == [(0, 0, 0), (0, 0, 1), (1, 1, 1)]
    volume = target.data[...]
    assert volume[7, 7, 7] == np.float32(1e-30)
    assert np.count_nonzero(volume) == 1


@pytest.mark.parametrize("position", [0, 2**18 - 1, 2**18, 2 * 2**18 + 5, 3 * 2**18 - 1])
def test_all_zero_finds_a_single_non_zero_anywhere(position):
    from daskgauss._store import _all_zero

    values = np.zeros((3, 2**9, 2**9), dtype=np.float32)  # three 1 MiB pieces
    assert _all_zero(values)
    values.reshape(-1)[position] = -2.5
    assert not _all_zero(values)
    assert _all_zero(np.zeros((5, 7, 3), dtype=np.float64))


def test_recorded_job_reads_without_writing(tmp_path):
    spec = make_spec(dg.Grid(shape=4), (4, 4, 4))
    location = tmp_path / "c.zarr"
    assert recorded_job(location) is None
    assert not location.exists()
    create_target(location, spec=spec, overwrite=False)
    before = sorted(p.as_posix() for p in location.rglob("*"))
    assert recorded_job(location) == spec
    assert sorted(p.as_posix() for p in location.rglob("*")) == before
    (location.parent / "other").mkdir()
    (location.parent / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreMismatchError, match="refusing to touch it"):
        recorded_job(location.parent / "other")
    assert (location.parent / "other" / "notes.txt").read_text() == "mine"


def test_a_store_of_another_format_is_refused_with_its_readers(tmp_path):
    location = tmp_path / "old.zarr"
    create_target(location, spec=make_spec(dg.Grid(shape=4), (4, 4, 4)), overwrite=False)
    group = zarr.open_group(str(location), mode="r+")
    attributes = dict(group.attrs["daskgauss"])
    attributes["job"] = dict(attributes["job"]) | {"format": 1, "version": "0.1.0"}
    group.attrs["daskgauss"] = attributes
    with pytest.raises(StoreFormatError, match=r"format 1.*resumed with daskgauss 0\.1\.x"):
        recorded_job(location)
    attributes["job"] = dict(attributes["job"]) | {"format": 7}
    group.attrs["daskgauss"] = attributes
    with pytest.raises(StoreFormatError, match="a newer daskgauss wrote it: upgrade"):
        recorded_job(location)
    # Reading it for people (info, export) still works: the layout is the same.
    assert open_target(location).grid == dg.Grid(shape=4)


def test_unknown_units_are_refused():
    check_unit("angstrom")
    check_unit(None)
    with pytest.raises(ValueError, match="unit must be an OME-NGFF space unit"):
        check_unit("furlong")


def test_locations(tmp_path):
    assert normalise_location((tmp_path / "a.zarr").as_uri()) == str(tmp_path / "a.zarr")
    assert normalise_location("s3://bucket/a.zarr") == "s3://bucket/a.zarr"
    assert not location_exists(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    assert not location_exists(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    assert location_exists(tmp_path / "file")
    with pytest.raises(FileNotFoundError, match="no store at"):
        open_target(tmp_path / "nothing")


def test_the_done_listing_ignores_what_a_killed_writer_left(tmp_path):
    """zarr writes each object to "<key>.<id>.partial" first: a kill leaves such files."""
    grid = dg.Grid(shape=8)
    target = create_target(tmp_path / "k.zarr", spec=make_spec(grid, (4, 4, 4)), overwrite=False)
    target.write_block((1, 0, 1), np.ones((4, 4, 4), dtype=np.float32))
    leftover = tmp_path / "k.zarr" / "blocks_done" / "c" / "0" / "1"
    leftover.mkdir(parents=True)
    (leftover / "1.7f3a9c.partial").write_bytes(b"\x01")
    assert sorted(map(tuple, np.argwhere(target.recorded_done()))) == [(1, 0, 1)]
