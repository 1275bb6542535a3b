"""Reading stores back: store_summary, export_mrc and preview_png on a real rendered store."""

from __future__ import annotations

import io
import math
import re

import matplotlib.image
import mrcfile
import numpy as np
import pytest
import zarr

import daskgauss as dg
from daskgauss._export import export_mrc, preview_png, store_summary
from daskgauss._store import StoreMismatchError

# Non-cubic, anisotropic, away from the origin; chunks that divide no axis.
SHAPE = (30, 22, 17)
ORIGIN = (-3.5, 2.0, 10.25)
SPACING = (0.5, 0.75, 1.25)
CHUNKS = (8, 10, 6)
BLOCKS = tuple(math.ceil(n / c) for n, c in zip(SHAPE, CHUNKS, strict=True))  # (4, 3, 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _job(count: int = 60):
    rng = np.random.default_rng(314)
    grid = dg.Grid(shape=SHAPE, origin=ORIGIN, spacing=SPACING)
    low = np.array(ORIGIN)
    high = low + (np.array(SHAPE) - 1) * np.array(SPACING)
    return {
        "centres": rng.uniform(low, high, size=(count, 3)),
        "sigma": np.array([[0.9, 1.1, 1.6]]),
        "grid": grid,
        "weights": rng.uniform(-0.5, 2.0, size=count),  # negative ones too: dmin < 0
        "chunks": CHUNKS,
    }


def _render(store, unit="angstrom", dtype="float32"):
    job = _job()
    dg.render_to_zarr(
        str(store), job["centres"], job["sigma"], job["grid"], weights=job["weights"],
        chunks=job["chunks"], unit=unit, dtype=dtype,
    )  # fmt: skip
    return job


def _expected(job, dtype="float32"):
    return dg.gaussian_sum(
        job["centres"], job["sigma"], job["grid"], weights=job["weights"], chunks=job["chunks"],
        dtype=dtype,
    ).compute()  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One store, rendered once for the module: (path, volume as numpy)."""
    store = tmp_path_factory.mktemp("export") / "map.zarr"
    job = _render(store)
    volume = np.asarray(zarr.open_array(str(store), path="0", mode="r")[...])
    np.testing.assert_array_equal(volume, _expected(job))
    return store, volume


# ----------------------------------------------------------------------------- store_summary


def test_store_summary(rendered):
    store, volume = rendered
    summary = store_summary(str(store))
    assert summary["location"] == str(store)
    assert summary["shape"] == list(SHAPE)
    assert summary["dtype"] == "float32"
    assert summary["block_shape"] == list(CHUNKS)
    assert summary["blocks"] == math.prod(BLOCKS) == 36
    assert summary["blocks_done"] == 36
    assert summary["grid"] == {
        "shape": list(SHAPE),
        "origin": list(ORIGIN),
        "spacing": list(SPACING),
    }
    assert summary["unit"] == "angstrom"
    job = summary["job"]
    assert job["centres"] == 60
    assert job["sigma"]["min"] == 0.9
    assert job["sigma"]["max"] == 1.6
    assert job["tol"] == 1e-6
    assert job["normalize"] == "peak"
    assert job["periodic"] is False
    assert len(summary["runs"]) == 1
    assert summary["runs"][0]["blocks"] == 36
    on_disk = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert summary["bytes_on_disk"] > 0
    assert summary["bytes_on_disk"] == on_disk
    # The volume holds the summary's shape; the summary did not touch it.
    assert volume.shape == tuple(summary["shape"])


def test_store_summary_of_a_partial_and_resumed_store(tmp_path):
    store = tmp_path / "partial.zarr"
    job = _render(store, unit=None)
    done = zarr.open_group(str(store), mode="r+")["blocks_done"]
    forgotten = [(0, 0, 0), (3, 2, 2), (1, 1, 0)]
    for index in forgotten:
        done[index] = 0
    partial = store_summary(str(store))
    assert partial["blocks"] == 36
    assert partial["blocks_done"] == 36 - len(forgotten)
    assert partial["unit"] is None
    assert len(partial["runs"]) == 1
    dg.render_to_zarr(
        str(store), job["centres"], job["sigma"], job["grid"], weights=job["weights"],
        chunks=job["chunks"],
    )  # fmt: skip
    resumed = store_summary(str(store))
    assert resumed["blocks_done"] == 36
    assert len(resumed["runs"]) == 2
    assert resumed["runs"][1]["already_done"] == 36 - len(forgotten)
    assert resumed["runs"][1]["rendered"] + resumed["runs"][1]["empty"] == len(forgotten)


def test_store_summary_accepts_a_file_url(rendered):
    store, _ = rendered
    summary = store_summary(store.as_uri())
    assert summary["shape"] == list(SHAPE)
    assert summary["blocks_done"] == 36
    assert summary["bytes_on_disk"] > 0


# ----------------------------------------------------------------------------- export_mrc


def test_export_mrc(rendered, tmp_path):
    store, volume = rendered
    output = tmp_path / "map.mrc"
    export_mrc(str(store), output)
    report = io.StringIO()
    assert mrcfile.validate(str(output), print_file=report), report.getvalue()
    with mrcfile.open(str(output), permissive=False) as mrc:
        data = np.asarray(mrc.data)
        header = mrc.header
        assert data.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
        assert data.dtype == np.float32
        np.testing.assert_array_equal(data, volume.transpose(2, 1, 0))
        assert int(header.mode) == 2
        assert (int(header.nx), int(header.ny), int(header.nz)) == SHAPE
        assert (int(header.mapc), int(header.mapr), int(header.maps)) == (1, 2, 3)
        voxel = mrc.voxel_size
        np.testing.assert_allclose([voxel.x, voxel.y, voxel.z], SPACING, rtol=1e-6)
        origin = header.origin
        np.testing.assert_allclose([origin.x, origin.y, origin.z], ORIGIN, rtol=1e-6)
        as64 = volume.astype(np.float64)
        assert float(header.dmin) == pytest.approx(as64.min(), rel=1e-6)
        assert float(header.dmax) == pytest.approx(as64.max(), rel=1e-6)
        assert float(header.dmean) == pytest.approx(as64.mean(), rel=1e-5)
        assert float(header.rms) == pytest.approx(as64.std(), rel=1e-5)
    # The fixture's weights include negative ones, so min and max are both informative.
    assert volume.min() < 0 < volume.max()


def test_export_mrc_of_a_float64_store_is_float32(tmp_path):
    store = tmp_path / "f64.zarr"
    job = _render(store, dtype="float64")
    output = tmp_path / "f64.mrc"
    export_mrc(str(store), str(output))
    expected = _expected(job, dtype="float64").astype(np.float32)
    with mrcfile.open(str(output)) as mrc:
        assert int(mrc.header.mode) == 2
        np.testing.assert_array_equal(mrc.data, expected.transpose(2, 1, 0))


def test_export_mrc_refuses_to_overwrite(rendered, tmp_path):
    store, volume = rendered
    output = tmp_path / "taken.mrc"
    output.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match=re.escape(str(output))):
        export_mrc(str(store), output)
    assert output.read_bytes() == b"precious"
    export_mrc(str(store), output, overwrite=True)
    with mrcfile.open(str(output)) as mrc:
        np.testing.assert_array_equal(mrc.data, volume.transpose(2, 1, 0))


def test_export_mrc_voxel_size_is_in_angstrom_whatever_the_store_unit(tmp_path):
    """MRC2014 gives the cell (so the voxel size) and origin in angstroms, and ChimeraX reads
    them so. A nanometer store must come out 10x larger in the MRC header, or be refused;
    writing nanometer numbers as angstroms puts the map at the wrong physical place."""
    store = tmp_path / "nm.zarr"
    _render(store, unit="nanometer")
    output = tmp_path / "nm.mrc"
    refusal = None
    try:
        export_mrc(str(store), output)
    except ValueError as error:
        refusal = str(error)
    if refusal is not None:  # a clear refusal is acceptable too
        assert "nanometer" in refusal
        return
    with mrcfile.open(str(output)) as mrc:
        voxel = mrc.voxel_size
        np.testing.assert_allclose(
            [voxel.x, voxel.y, voxel.z], [10 * h for h in SPACING], rtol=1e-6
        )
        origin = mrc.header.origin
        np.testing.assert_allclose(
            [origin.x, origin.y, origin.z], [10 * o for o in ORIGIN], rtol=1e-6
        )


# ----------------------------------------------------------------------------- preview_png


def _read_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3
    assert image.shape[2] in (3, 4)
    assert image.shape[0] > 50
    assert image.shape[1] > 50
    assert float(image[..., :3].std()) > 0.01  # a picture, not a blank canvas
    return image


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_preview_plane(rendered, tmp_path, axis):
    store, _ = rendered
    output = tmp_path / f"plane{axis}.png"
    preview_png(str(store), output, axis=axis, index=SHAPE[axis] // 3)
    _read_png(output)


def test_preview_default_plane_is_the_middle(rendered, tmp_path):
    store, _ = rendered
    preview_png(str(store), tmp_path / "default.png")
    preview_png(str(store), tmp_path / "middle.png", axis=2, index=SHAPE[2] // 2)
    preview_png(str(store), tmp_path / "other.png", axis=2, index=1)
    default = _read_png(tmp_path / "default.png")
    middle = _read_png(tmp_path / "middle.png")
    other = _read_png(tmp_path / "other.png")
    assert default.shape == middle.shape
    np.testing.assert_array_equal(default, middle)
    assert other.shape != middle.shape or not np.array_equal(other, middle)


def test_preview_projection(rendered, tmp_path):
    store, _ = rendered
    output = tmp_path / "max.png"
    preview_png(str(store), output, axis=1, projection=True)
    projection = _read_png(output)
    preview_png(str(store), tmp_path / "plane.png", axis=1, index=0)
    plane = _read_png(tmp_path / "plane.png")
    assert projection.shape != plane.shape or not np.array_equal(projection, plane)


@pytest.mark.parametrize("axis", [3, -1, "x"])
def test_preview_bad_axis(rendered, tmp_path, axis):
    store, _ = rendered
    output = tmp_path / "bad.png"
    with pytest.raises(ValueError, match="axis must be 0, 1 or 2"):
        preview_png(str(store), output, axis=axis)
    assert not output.exists()


@pytest.mark.parametrize(("axis", "index"), [(0, 30), (1, 22), (2, 17), (2, -1), (0, 1000)])
def test_preview_index_out_of_range(rendered, tmp_path, axis, index):
    store, _ = rendered
    output = tmp_path / "bad.png"
    last = SHAPE[axis] - 1
    expected = re.escape(f"[0, {last}]") + f".*axis {'xyz'[axis]}.*got {index}"
    with pytest.raises(ValueError, match=expected):
        preview_png(str(store), output, axis=axis, index=index)
    assert not output.exists()


# ----------------------------------------------------------------------------- not a store

# Every command that reads a store, each refusing the same bad locations.
READERS = pytest.mark.parametrize(
    "read",
    [
        store_summary,
        lambda location: export_mrc(location, location + ".mrc"),
        lambda location: preview_png(location, location + ".png"),
    ],
    ids=["summary", "export", "preview"],
)


@READERS
def test_nothing_there(tmp_path, read):
    missing = str(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no store at {missing}")):
        read(missing)
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no store at"):
        read(str(empty))
    assert not (tmp_path / "missing.zarr.mrc").exists()
    assert not (tmp_path / "missing.zarr.png").exists()


@READERS
def test_not_a_daskgauss_store(tmp_path, read):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("do not delete")
    with pytest.raises(StoreMismatchError, match=re.escape(str(folder)) + ".*not a daskgauss"):
        read(str(folder))
    assert (folder / "thesis.txt").read_text() == "do not delete"
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]

    group = tmp_path / "other.zarr"
    zarr.create_group(str(group))
    with pytest.raises(StoreMismatchError, match="daskgauss did not write"):
        read(str(group))

    array = tmp_path / "array.zarr"
    zarr.create_array(str(array), shape=(4,), dtype="int8")
    with pytest.raises(StoreMismatchError, match="not a daskgauss store"):
        read(str(array))


def test_a_store_missing_its_volume_is_incomplete(tmp_path):
    store = tmp_path / "broken.zarr"
    _render(store)
    group = zarr.open_group(str(store), mode="r+")
    del group["0"]
    with pytest.raises(StoreMismatchError, match="incomplete daskgauss store"):
        store_summary(str(store))


@READERS
def test_a_regular_file_is_not_a_daskgauss_store(tmp_path, read):
    """open_target promises StoreMismatchError when something that is not a store is there;
    a plain file must not surface as '[Errno 17] File exists'."""
    occupied = tmp_path / "occupied.zarr"
    occupied.write_text("a file, not a store")
    with pytest.raises(StoreMismatchError, match=re.escape(str(occupied)) + ".*not a daskgauss"):
        read(str(occupied))
    assert occupied.read_text() == "a file, not a store"
