"""The ``daskgauss`` command line: CliRunner for most cases, real subprocesses for exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import traceback

import matplotlib.image
import mrcfile
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

import daskgauss as dg
from daskgauss._centres_io import read_centres
from daskgauss._store import open_target
from daskgauss.cli import cli, join_per_axis_values
from tests.long_render import long_render, long_render_expected, wait_for_blocks

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The basic job: non-cubic grid, negative lower bounds, chunks that divide no axis.
SHAPE = (40, 36, 32)
LOWER = (-8.0, -7.0, -6.0)
UPPER = (8.0, 7.0, 6.0)
CHUNKS = (16, 12, 20)
BLOCKS = 3 * 3 * 2
GRID_OPTIONS = ["--shape", "40", "36", "32", "--lower", "-8", "-7", "-6", "--upper", "8", "7", "6"]
SMALL_CLUSTER = ["--workers", "1", "--threads-per-worker", "1"]
BASIC = [*GRID_OPTIONS, "--sigma", "1", "--chunks", "16", "12", "20", *SMALL_CLUSTER]


def _invoke(*arguments) -> tuple:
    """Run the CLI in-process; return (result, wall seconds)."""
    started = time.perf_counter()
    result = CliRunner().invoke(cli, [str(argument) for argument in arguments])
    return result, time.perf_counter() - started


def _succeeded(result) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"uncaught exception:\n{trace}\noutput:\n{result.output}")
    assert result.exit_code == 0, result.output


def _user_error(result, *fragments: str) -> str:
    """Assert a clean user error: non-zero exit, exactly one ``Error:`` line, no traceback."""
    if not isinstance(result.exception, SystemExit):
        trace = "".join(traceback.format_exception(*result.exc_info))
        pytest.fail(f"a user error escaped as a traceback:\n{trace}\noutput:\n{result.output}")
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr
    if result.exit_code == 1:  # a ClickException: the reason alone, on one line
        assert result.stderr.strip() == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def _volume(store) -> np.ndarray:
    return np.asarray(zarr.open_array(str(store), path="0", mode="r")[...])


def _basic_grid() -> dg.Grid:
    return dg.Grid.from_bounds(LOWER, UPPER, SHAPE)


def _files(store) -> dict:
    return {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Centres files shared by the module's tests."""
    folder = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(7)
    centres = rng.uniform(-7, 7, size=(120, 3))
    np.save(folder / "centres.npy", centres)
    sigma = rng.uniform(0.6, 1.4, size=120)
    weight = rng.uniform(-0.5, 2.0, size=120)
    rows = [
        f"{float(w)!r},{float(x)!r},{float(y)!r},{float(z)!r},{float(s)!r}"
        for (x, y, z), s, w in zip(centres, sigma, weight, strict=True)
    ]
    (folder / "with_sigma.csv").write_text("Weight,X,Y,Z,Sigma\n" + "\n".join(rows) + "\n")
    (folder / "bad.csv").write_text("x,y,z\n1,2,3\n4,two,6\n")
    return {
        "folder": folder,
        "centres": centres,
        "sigma": sigma,
        "weight": weight,
        "npy": folder / "centres.npy",
        "sigma_csv": folder / "with_sigma.csv",
        "bad_csv": folder / "bad.csv",
    }


@pytest.fixture(scope="module")
def basic(inputs, tmp_path_factory):
    """The basic render, run once through CliRunner on a real LocalCluster."""
    store = tmp_path_factory.mktemp("basic") / "basic.zarr"
    result, seconds = _invoke("render", inputs["npy"], store, *BASIC)
    _succeeded(result)
    return {"store": store, "result": result, "seconds": seconds}


# ----------------------------------------------------------------------------- argument joining


@pytest.mark.parametrize(
    ("arguments", "joined"),
    [
        ([], []),
        (["render", "--shape", "256"], ["render", "--shape", "256"]),
        (["--shape", "256", "256", "128"], ["--shape", "256,256,128"]),
        (["--lower", "-5", "-4.5", "-1e3"], ["--lower", "-5,-4.5,-1e3"]),
        (["--origin", "-5", "--spacing", "0.5"], ["--origin", "-5", "--spacing", "0.5"]),
        (
            ["--lower", "-5", "--upper", "5", "6", "7", "out.zarr"],
            ["--lower", "-5", "--upper", "5,6,7", "out.zarr"],
        ),
        (["--sigma", "1", "2", "3", "4"], ["--sigma", "1,2,3", "4"]),
        (["--sigma", "1", "c.npy", "o.zarr"], ["--sigma", "1", "c.npy", "o.zarr"]),
        (["--shape=256", "7"], ["--shape=256", "7"]),
        (["--lower=-5", "--upper", "5"], ["--lower=-5", "--upper", "5"]),
        (["--shape", "--lower", "1"], ["--shape", "--lower", "1"]),
        (["--tol", "1e-3", "2"], ["--tol", "1e-3", "2"]),
        (["--chunks", "64", "--overwrite"], ["--chunks", "64", "--overwrite"]),
    ],
)
def test_join_per_axis_values(arguments, joined):
    assert join_per_axis_values(arguments) == joined


def test_join_per_axis_values_leaves_its_input_alone():
    arguments = ["--shape", "1", "2", "3"]
    join_per_axis_values(arguments)
    assert arguments == ["--shape", "1", "2", "3"]


# ----------------------------------------------------------------------------- covariances, kde

COVARIANCE = (2.0, -0.6, 0.3, 1.5, 0.4, 1.0)  # xx xy xz yy yz zz


def _matrix(entries):
    xx, xy, xz, yy, yz, zz = entries
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def test_render_with_one_covariance_is_the_api_bits(inputs, tmp_path):
    store = tmp_path / "covariance.zarr"
    result, _ = _invoke("render", inputs["npy"], store, *GRID_OPTIONS, "--covariance",
                        *COVARIANCE, "--chunks", "16", *SMALL_CLUSTER)  # fmt: skip
    _succeeded(result)
    centres = np.load(inputs["npy"])
    expected = dg.gaussian_sum(centres, None, _basic_grid(), covariance=_matrix(COVARIANCE))
    np.testing.assert_array_equal(_volume(store), expected.compute())
    info, _ = _invoke("info", store)
    assert "full covariances" in info.output


def test_render_with_covariance_columns(tmp_path):
    rng = np.random.default_rng(3)
    centres = rng.uniform(-6, 6, size=(30, 3))
    entries = np.tile(COVARIANCE, (30, 1)) * rng.uniform(0.5, 1.5, size=(30, 1))
    path = tmp_path / "with_covariance.csv"
    header = "x,y,z,weight,cxx,cxy,cxz,cyy,cyz,czz"
    weights = rng.uniform(-1, 1, size=30)
    np.savetxt(path, np.column_stack([centres, weights, entries]), delimiter=",", header=header,
               comments="")  # fmt: skip
    store = tmp_path / "columns.zarr"
    result, _ = _invoke("render", path, store, *GRID_OPTIONS, "--normalize", "density",
                        *SMALL_CLUSTER)  # fmt: skip
    _succeeded(result)
    read = np.loadtxt(path, delimiter=",", skiprows=1)
    expected = dg.gaussian_sum(read[:, :3], None, _basic_grid(), weights=read[:, 3],
                               covariance=np.stack([_matrix(row) for row in read[:, 4:]]),
                               normalize="density")  # fmt: skip
    np.testing.assert_array_equal(_volume(store), expected.compute())


def test_kde_command_is_scipy_gaussian_kde_on_the_grid(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    points = rng.normal(size=(300, 3)) @ np.array([[1, 0, 0], [0.5, 0.8, 0], [0.2, -0.3, 0.6]])
    weights = rng.uniform(0.2, 1.0, size=300)
    path = tmp_path / "points.csv"
    np.savetxt(path, np.column_stack([points, weights]), delimiter=",", header="x,y,z,weight",
               comments="")  # fmt: skip
    store = tmp_path / "kde.zarr"
    result, _ = _invoke("kde", path, store, "--shape", "20", "18", "16", "--bw", "silverman",
                        "--dtype", "float64", *SMALL_CLUSTER)  # fmt: skip
    _succeeded(result)
    assert "bandwidth factor" in result.output
    read = np.loadtxt(path, delimiter=",", skiprows=1)
    grid = dg.kde_grid(read[:, :3], (20, 18, 16), bw_method="silverman", weights=read[:, 3])
    assert dg.open_grid(str(store)) == grid
    values = _volume(store)
    expected = dg.kde(read[:, :3], grid, bw_method="silverman", weights=read[:, 3],
                      dtype="float64")  # fmt: skip
    np.testing.assert_array_equal(values, expected.compute())
    estimate = scipy_stats.gaussian_kde(read[:, :3].T, "silverman", read[:, 3])
    mesh = np.stack(np.meshgrid(*grid.axes, indexing="ij")).reshape(3, -1)
    scipy_values = estimate(mesh).reshape(grid.shape)
    peak = (2 * np.pi) ** -1.5 / np.sqrt(np.linalg.det(estimate.covariance))
    assert np.abs(values - scipy_values).max() <= 1e-6 * peak + 1e-12 * scipy_values.max()


def test_model_map_command_writes_the_api_map_and_an_mrc_placed_right(tmp_path):
    pytest.importorskip("mrcfile")
    import gzip

    import gemmi
    import mrcfile

    from tests.test_models import _random_structure

    structure = _random_structure(np.random.default_rng(4), 20, aniso=True)
    path = tmp_path / "model.cif"
    structure.make_mmcif_document().write_file(str(path))
    zipped = tmp_path / "model.cif.gz"
    zipped.write_bytes(gzip.compress(path.read_bytes()))
    store = tmp_path / "model.zarr"
    result, _ = _invoke("model-map", zipped, store, "--mode", "xray", "--resolution", "3",
                        "--blur", "5", *SMALL_CLUSTER)  # fmt: skip
    _succeeded(result)
    grid = dg.model_grid(str(zipped), resolution=3)
    assert dg.open_grid(str(store)) == grid
    expected = dg.model_map(gemmi.read_structure(str(path)), grid, mode="xray", blur=5)
    np.testing.assert_array_equal(_volume(store), expected.compute())
    assert open_target(str(store)).record["unit"] == "angstrom"
    mrc_path = tmp_path / "model.mrc"
    exported, _ = _invoke("export", store, mrc_path)
    _succeeded(exported)
    with mrcfile.open(str(mrc_path)) as mrc:
        assert float(mrc.voxel_size.x) == pytest.approx(grid.spacing[0])
        assert float(mrc.header.origin.x) == pytest.approx(grid.origin[0])
        np.testing.assert_array_equal(mrc.data.T, _volume(store))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda folder: folder / "absent.pdb", ["absent.pdb", "no such file"]),
        (lambda folder: _text(folder / "junk.pdb", "this is not a structure\n"), ["junk.pdb"]),
    ],
)
def test_model_map_bad_files_are_one_line_and_no_store(tmp_path, make, words):
    store = tmp_path / "never.zarr"
    result, seconds = _invoke("model-map", make(tmp_path), store, "--resolution", "3")
    assert seconds < 10  # refused before any cluster is started
    _user_error(result, *words)
    assert not store.exists()


def _text(path, content: str):
    path.write_text(content)
    return path


def test_version_and_help():
    result, _ = _invoke("--version")
    _succeeded(result)
    assert dg.__version__ in result.output
    result, _ = _invoke("render", "--help")
    _succeeded(result)
    for option in ("--shape", "--lower", "--origin", "--sigma", "--scheduler-file"):
        assert option in result.output


# ----------------------------------------------------------------------------- demo-centres


def test_demo_centres_npy(tmp_path):
    output = tmp_path / "demo.npy"
    result, _ = _invoke("demo-centres", output, "--count", "50", "--box", "10", "--seed", "3")
    _succeeded(result)
    assert result.output.strip() == f"wrote 50 centres in [-5, 5]^3 to {output}"
    centres = np.load(output)
    assert centres.shape == (50, 3)
    assert centres.min() >= -5
    assert centres.max() <= 5
    assert centres.min() < -4  # fills the box, not a corner of it
    assert centres.max() > 4
    np.testing.assert_array_equal(centres, np.random.default_rng(3).uniform(-5, 5, (50, 3)))


def test_demo_centres_defaults(tmp_path):
    output = tmp_path / "demo.npy"
    result, _ = _invoke("demo-centres", output)
    _succeeded(result)
    centres = np.load(output)
    assert centres.shape == (10000, 3)
    assert -50 <= centres.min() < -49
    assert 49 < centres.max() <= 50


def test_demo_centres_csv_is_readable_as_centres(tmp_path):
    output = tmp_path / "demo.csv"
    result, _ = _invoke("demo-centres", output, "--count", "40", "--box", "8", "--seed", "11")
    _succeeded(result)
    lines = output.read_text().splitlines()
    assert lines[0] == "x,y,z"
    assert len(lines) == 41
    expected = np.random.default_rng(11).uniform(-4, 4, (40, 3))
    read = read_centres(output)
    assert read.centres.shape == (40, 3)
    np.testing.assert_allclose(read.centres, expected, rtol=0, atol=5e-7)
    assert np.abs(read.centres).max() <= 4


def test_demo_centres_bad_suffix_and_box(tmp_path):
    _user_error(_invoke("demo-centres", tmp_path / "c.dat")[0], "must end in .npy, .csv or .txt")
    assert not (tmp_path / "c.dat").exists()
    _user_error(_invoke("demo-centres", tmp_path / "c.npy", "--box", "0")[0], "--box")
    _user_error(_invoke("demo-centres", tmp_path / "c.npy", "--count", "-1")[0], "--count")
    assert not (tmp_path / "c.npy").exists()


# ----------------------------------------------------------------------------- render


def test_render_with_bounds_equals_gaussian_sum(basic, inputs):
    expected = dg.gaussian_sum(inputs["centres"], 1.0, _basic_grid(), chunks=CHUNKS).compute()
    volume = _volume(basic["store"])
    assert volume.shape == SHAPE
    assert volume.dtype == np.float32
    np.testing.assert_array_equal(volume, expected)
    assert volume.max() > 0.5


def test_render_writes_ngff_and_job_metadata(basic):
    group = zarr.open_group(str(basic["store"]), mode="r")
    grid = _basic_grid()
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert group.attrs["ome"]["version"] == "0.5"
    assert [axis["name"] for axis in multiscale["axes"]] == ["x", "y", "z"]
    assert all("unit" not in axis for axis in multiscale["axes"])
    dataset = multiscale["datasets"][0]
    assert dataset["path"] == "0"
    transforms = {t["type"]: t for t in dataset["coordinateTransformations"]}
    np.testing.assert_allclose(transforms["scale"]["scale"], grid.spacing, rtol=1e-15)
    assert transforms["translation"]["translation"] == list(LOWER)
    job = group.attrs["daskgauss"]["job"]
    assert job["centres"] == 120
    assert job["sigma"] == {"min": 1.0, "max": 1.0, "mean": 1.0}
    assert job["tol"] == 1e-6
    assert job["normalize"] == "peak"
    assert job["periodic"] is False
    assert job["dtype"] == "float32"
    assert job["block_shape"] == list(CHUNKS)
    assert job["unit"] is None
    assert job["compression"] == "lz4"
    assert job["grid"] == grid.to_dict()
    assert group["0"].metadata.dimension_names == ("x", "y", "z")
    assert group["0"].chunks == CHUNKS
    assert open_target(basic["store"]).done_mask().all()
    runs = open_target(basic["store"]).runs()
    assert len(runs) == 1
    assert runs[0]["blocks"] == BLOCKS


_SUMMARY = re.compile(
    r"^wrote (?P<store>.+): shape \((?P<shape>[\d, ]+)\) (?P<dtype>float\d\d), "
    r"(?P<blocks>\d+) blocks \((?P<rendered>\d+) rendered, (?P<empty>\d+) empty, "
    r"(?P<done>\d+) already done\) in (?P<seconds>[\d.]+) s, "
    r"(?P<rate>[\d.]+) (?P<prefix>[kMG]?)voxel/s$"
)
_PREFIX = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9}


def _summary(result) -> re.Match:
    last = result.stdout.strip().splitlines()[-1]
    match = _SUMMARY.match(last)
    assert match, f"unexpected summary line: {last!r}"
    return match


def test_render_summary_line(basic):
    result = basic["result"]
    assert "rendering (40, 36, 32) on a local cluster" in result.stdout
    match = _summary(result)
    assert match["store"] == str(basic["store"])
    assert match["shape"] == "40, 36, 32"
    assert match["dtype"] == "float32"
    assert int(match["blocks"]) == BLOCKS
    assert int(match["rendered"]) + int(match["empty"]) == BLOCKS
    assert int(match["rendered"]) > 0
    assert int(match["done"]) == 0
    seconds = float(match["seconds"])
    assert 0 < seconds <= basic["seconds"] + 0.05
    assert match["prefix"] in _PREFIX
    # The rate printed is voxels / seconds, to its printed precision.
    voxels = float(np.prod(SHAPE))
    rate = float(match["rate"]) * _PREFIX[match["prefix"]]
    slowest, fastest = voxels / (seconds + 0.05), voxels / max(seconds - 0.05, 1e-3)
    assert slowest * 0.99 <= rate <= fastest * 1.01


def test_render_summary_throughput_is_not_rounded_to_zero(basic):
    """A render that wrote 46,080 voxels must not report '0 Mvoxel/s'."""
    match = _summary(basic["result"])
    rate = float(match["rate"]) * _PREFIX[match["prefix"]]
    actual = float(np.prod(SHAPE)) / float(match["seconds"])
    assert rate > 0, f"throughput printed as {match['rate']} {match['prefix']}voxel/s"
    assert 0.5 * actual <= rate <= 2 * actual


def test_rerun_resumes_and_renders_nothing(basic, inputs, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(basic["store"], store)
    before = _files(store / "0")
    result, _ = _invoke("render", inputs["npy"], store, *BASIC)
    _succeeded(result)
    match = _summary(result)
    assert int(match["done"]) == int(match["blocks"]) == BLOCKS
    assert int(match["rendered"]) == 0
    assert int(match["empty"]) == 0
    assert _files(store / "0") == before
    runs = open_target(store).runs()
    assert len(runs) == 2
    assert runs[1]["resumed"] is True
    assert runs[1]["already_done"] == BLOCKS


def test_different_sigma_is_refused_then_overwritten(basic, inputs, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(basic["store"], store)
    before = _files(store)
    changed = [*GRID_OPTIONS, "--sigma", "1.3", "--chunks", "16", "12", "20", *SMALL_CLUSTER]
    result, _ = _invoke("render", inputs["npy"], store, *changed)
    line = _user_error(result, "different daskgauss job", "sigma", str(store))
    assert result.exit_code == 1
    assert "--overwrite" in line
    assert _files(store) == before
    result, _ = _invoke("render", inputs["npy"], store, *changed, "--overwrite")
    _succeeded(result)
    expected = dg.gaussian_sum(inputs["centres"], 1.3, _basic_grid(), chunks=CHUNKS).compute()
    np.testing.assert_array_equal(_volume(store), expected)
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["daskgauss"]["job"]["sigma"]["max"] == 1.3
    assert len(open_target(store).runs()) == 1


def test_render_with_origin_spacing_and_options(inputs, tmp_path):
    store = tmp_path / "placed.zarr"
    grid = dg.Grid(shape=(24, 30, 18), origin=(-6.0, -7.5, -4.25), spacing=(0.5, 0.5, 0.5))
    result, _ = _invoke(
        "render", inputs["npy"], store, "--shape", "24", "30", "18",
        "--origin", "-6", "-7.5", "-4.25", "--spacing", "0.5",
        "--sigma", "0.9", "--tol", "1e-4", "--normalize", "density", "--periodic",
        "--chunks", "10", "--dtype", "float64", "--unit", "nanometer",
        "--compression", "zstd", *SMALL_CLUSTER,
    )  # fmt: skip
    _succeeded(result)
    expected = dg.gaussian_sum(
        inputs["centres"], 0.9, grid, tol=1e-4, normalize="density", periodic=True,
        chunks=10, dtype="float64",
    ).compute()  # fmt: skip
    volume = _volume(store)
    assert volume.dtype == np.float64
    np.testing.assert_array_equal(volume, expected)
    match = _summary(result)
    assert match["shape"] == "24, 30, 18"
    assert match["dtype"] == "float64"
    assert int(match["blocks"]) == 3 * 3 * 2
    group = zarr.open_group(str(store), mode="r")
    multiscale = group.attrs["ome"]["multiscales"][0]
    assert [axis["unit"] for axis in multiscale["axes"]] == ["nanometer"] * 3
    transforms = {t["type"]: t for t in multiscale["datasets"][0]["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == [0.5, 0.5, 0.5]
    assert transforms["translation"]["translation"] == [-6.0, -7.5, -4.25]
    job = group.attrs["daskgauss"]["job"]
    assert (job["tol"], job["normalize"], job["periodic"]) == (1e-4, "density", True)
    assert (job["dtype"], job["unit"], job["compression"]) == ("float64", "nanometer", "zstd")
    assert job["block_shape"] == [10, 10, 10]
    info, _ = _invoke("info", store)
    _succeeded(info)
    assert "(nanometer)" in info.output
    assert "density, periodic" in info.output


def test_render_anisotropic_sigma(inputs, tmp_path):
    store = tmp_path / "aniso.zarr"
    result, _ = _invoke(
        "render", inputs["npy"], store, *GRID_OPTIONS, "--sigma", "0.7", "1.1", "1.5",
        "--chunks", "16", "12", "20", *SMALL_CLUSTER,
    )  # fmt: skip
    _succeeded(result)
    sigma = np.array([[0.7, 1.1, 1.5]])
    expected = dg.gaussian_sum(inputs["centres"], sigma, _basic_grid(), chunks=CHUNKS).compute()
    np.testing.assert_array_equal(_volume(store), expected)
    isotropic = dg.gaussian_sum(inputs["centres"], 0.7, _basic_grid(), chunks=CHUNKS).compute()
    assert not np.array_equal(expected, isotropic)
    job = zarr.open_group(str(store), mode="r").attrs["daskgauss"]["job"]
    assert (job["sigma"]["min"], job["sigma"]["max"]) == (0.7, 1.5)


def test_render_sigma_and_weight_columns(inputs, tmp_path):
    store = tmp_path / "columns.zarr"
    result, _ = _invoke(
        "render", inputs["sigma_csv"], store, *GRID_OPTIONS, "--chunks", "16", "12", "20",
        *SMALL_CLUSTER,
    )  # fmt: skip
    _succeeded(result)
    expected = dg.gaussian_sum(
        inputs["centres"], inputs["sigma"], _basic_grid(), weights=inputs["weight"],
        chunks=CHUNKS,
    ).compute()  # fmt: skip
    volume = _volume(store)
    np.testing.assert_array_equal(volume, expected)
    assert volume.min() < 0  # the negative weights arrived
    job = zarr.open_group(str(store), mode="r").attrs["daskgauss"]["job"]
    assert job["sigma"]["min"] == inputs["sigma"].min()
    assert job["sigma"]["max"] == inputs["sigma"].max()


def test_render_reads_centres_from_an_fsspec_url(inputs, tmp_path):
    """CENTRES may be a URL: here fsspec's in-memory filesystem (the CLI runs in-process)."""
    import fsspec

    url = f"memory://daskgauss-cli-{tmp_path.name}/centres.csv"
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in inputs["centres"])
    with fsspec.open(url, "w") as handle:
        handle.write("x,y,z\n" + rows + "\n")
    store = tmp_path / "from-url.zarr"
    try:
        result, _ = _invoke("render", url, store, *BASIC)
    finally:
        fsspec.filesystem("memory").rm(url)
    _succeeded(result)
    expected = dg.gaussian_sum(inputs["centres"], 1.0, _basic_grid(), chunks=CHUNKS).compute()
    np.testing.assert_array_equal(_volume(store), expected)


def test_render_sx_sy_sz_columns(inputs, tmp_path):
    centres = inputs["centres"][:30]
    sxyz = np.random.default_rng(3).uniform(0.5, 1.5, size=(30, 3))
    rows = [" ".join(repr(float(v)) for v in (*c, *s)) for c, s in zip(centres, sxyz, strict=True)]
    source = tmp_path / "aniso.txt"
    source.write_text("# per-axis sigmas\nx y z sx sy sz\n" + "\n".join(rows) + "\n")
    store = tmp_path / "sxyz.zarr"
    grid = dg.Grid.from_bounds(-7, 7, 24)
    result, _ = _invoke(
        "render", source, store, "--shape", "24", "--lower", "-7", "--upper", "7",
        "--chunks", "10", *SMALL_CLUSTER,
    )  # fmt: skip
    _succeeded(result)
    expected = dg.gaussian_sum(centres, sxyz, grid, chunks=10).compute()
    np.testing.assert_array_equal(_volume(store), expected)


# ----------------------------------------------------------------------------- user errors

GOOD_GRID = ["--shape", "12", "--lower", "-5", "--upper", "5"]
RENDER = ["render", "{npy}", "{out}"]
SIGMA = ["--sigma", "1"]
USER_ERRORS = {
    "missing-centres": (
        ["render", "{folder}/absent.npy", "{out}", *GOOD_GRID, *SIGMA],
        ["absent.npy", "no such file"],
    ),
    "bad-csv": (
        ["render", "{bad_csv}", "{out}", *GOOD_GRID, *SIGMA],
        ["bad.csv, line 3", "'y'", "'two'"],
    ),
    "bounds-and-placement": (
        [*RENDER, *GOOD_GRID, "--origin", "0", "--spacing", "1", *SIGMA],
        ["give either --lower and --upper, or --origin and --spacing"],
    ),
    "no-placement": (
        [*RENDER, "--shape", "12", *SIGMA],
        ["give either --lower and --upper, or --origin and --spacing"],
    ),
    "only-lower": (
        [*RENDER, "--shape", "12", "--lower", "-5", *SIGMA],
        ["--lower and --upper go together"],
    ),
    "only-spacing": (
        [*RENDER, "--shape", "12", "--spacing", "1", *SIGMA],
        ["--origin and --spacing go together"],
    ),
    "upper-below-lower": (
        [*RENDER, "--shape", "12", "--lower", "5", "--upper", "-5", *SIGMA],
        ["upper must exceed lower"],
    ),
    "no-sigma": (
        [*RENDER, *GOOD_GRID],
        ["give --sigma or --covariance", "sigma (sx sy sz) or covariance", "centres.npy"],
    ),
    "sigma-twice": (
        ["render", "{sigma_csv}", "{out}", *GOOD_GRID, *SIGMA],
        ["give one of --sigma or sigma columns", "not both", "with_sigma.csv"],
    ),
    "sigma-and-covariance": (
        [*RENDER, *GOOD_GRID, *SIGMA, "--covariance", "1", "0", "0", "1", "0", "1"],
        ["give one of --sigma or --covariance", "not both"],
    ),
    "covariance-not-positive-definite": (
        [*RENDER, *GOOD_GRID, "--covariance", "1", "2", "0", "1", "0", "1"],
        ["covariance must be positive definite", "eigenvalues -1"],
    ),
    "kde-bad-bandwidth": (
        ["kde", "{npy}", "{out}", "--shape", "12", "--bw", "wide"],
        ["--bw must be scott, silverman or a positive number", "'wide'"],
    ),
    "negative-sigma": ([*RENDER, *GOOD_GRID, "--sigma", "-1"], ["sigma must be positive"]),
    "two-sigmas": ([*RENDER, *GOOD_GRID, "--sigma", "1", "2"], ["--sigma", "one value or three"]),
    "shape-two-values": (
        [*RENDER, "--shape", "40", "36", "--lower", "-5", "--upper", "5", *SIGMA],
        ["--shape", "one value or three", "'40,36'"],
    ),
    "tol-above-one": ([*RENDER, *GOOD_GRID, *SIGMA, "--tol", "2"], ["tol must lie in (0, 1)"]),
    "tol-zero": ([*RENDER, *GOOD_GRID, *SIGMA, "--tol", "0"], ["tol must lie in (0, 1)"]),
    "tol-text": ([*RENDER, *GOOD_GRID, *SIGMA, "--tol", "abc"], ["--tol", "'abc'"]),
    "bad-unit": (
        [*RENDER, *GOOD_GRID, *SIGMA, "--unit", "parsecs"],
        ["--unit", "'parsecs' is not one of", "'angstrom'"],
    ),
    "bad-dtype": ([*RENDER, *GOOD_GRID, *SIGMA, "--dtype", "float16"], ["--dtype", "'float16'"]),
    "chunks-two-values": (
        [*RENDER, *GOOD_GRID, *SIGMA, "--chunks", "6", "6"],
        ["--chunks", "one value or three"],
    ),
    "chunks-text": ([*RENDER, *GOOD_GRID, *SIGMA, "--chunks", "big"], ["--chunks", "'big'"]),
    "non-store-directory": (
        ["render", "{npy}", "{notes}", *GOOD_GRID, *SIGMA],
        ["notes", "not a daskgauss store", "refusing to touch it", "--overwrite"],
    ),
    "two-schedulers": (
        [*RENDER, *GOOD_GRID, *SIGMA, "--scheduler", "tcp://127.0.0.1:1", "--scheduler-file", "x"],
        ["give --scheduler or --scheduler-file, not both"],
    ),
    "info-missing": (["info", "{out}"], ["no store at", "out.zarr"]),
    "info-non-store": (["info", "{notes}"], ["not a daskgauss store"]),
    "preview-missing": (["preview", "{out}", "{folder}/p.png"], ["no store at"]),
    "export-missing": (["export", "{out}", "{folder}/m.mrc"], ["no store at"]),
}


@pytest.mark.parametrize(
    ("arguments", "fragments"), list(USER_ERRORS.values()), ids=list(USER_ERRORS)
)
def test_user_errors(inputs, tmp_path, arguments, fragments):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("do not delete")
    out = tmp_path / "out.zarr"
    names = {**{k: v for k, v in inputs.items() if k != "folder"}, "folder": inputs["folder"]}
    names.update(out=out, notes=notes)
    result, seconds = _invoke(*(argument.format(**names) for argument in arguments))
    _user_error(result, *fragments)
    assert seconds < 10  # refused before any cluster is started
    assert not out.exists()
    assert sorted(p.name for p in notes.iterdir()) == ["thesis.txt"]
    assert (notes / "thesis.txt").read_text() == "do not delete"
    assert not (inputs["folder"] / "p.png").exists()
    assert not (inputs["folder"] / "m.mrc").exists()


@pytest.mark.parametrize(
    ("option", "arguments"),
    [
        ("--shape", ["--shape", "0", "--lower", "-5", "--upper", "5", "--sigma", "1"]),
        ("--shape", ["--shape", "12", "12", "0", "--lower", "-5", "--upper", "5", "--sigma", "1"]),
        ("--chunks", [*GOOD_GRID, "--sigma", "1", "--chunks", "0"]),
        ("--chunks", [*GOOD_GRID, "--sigma", "1", "--chunks", "-4"]),
    ],
    ids=["shape-0", "shape-12-12-0", "chunks-0", "chunks-negative"],
)
def test_non_positive_sizes_are_not_called_non_numbers(inputs, tmp_path, option, arguments):
    """'--shape 0' is a number, just not a valid size: the message must say what is wrong."""
    out = tmp_path / "out.zarr"
    result, _ = _invoke("render", inputs["npy"], out, *arguments)
    line = _user_error(result, option)
    assert "not a number" not in line, line
    assert re.search(r"positive|at least 1|>= ?1|≥ ?1", line), line
    assert not out.exists()


def test_store_that_is_a_regular_file_is_refused_like_any_non_store(inputs, tmp_path):
    """Anything at STORE that is not a daskgauss store is refused with the same message as a
    foreign directory, not with '[Errno 17] File exists'."""
    occupied = tmp_path / "occupied.zarr"
    occupied.write_text("a file, not a store")
    result, _ = _invoke("render", inputs["npy"], occupied, *GOOD_GRID, "--sigma", "1")
    _user_error(result, str(occupied), "not a daskgauss store")
    assert occupied.read_text() == "a file, not a store"
    result, _ = _invoke("info", occupied)
    _user_error(result, str(occupied), "not a daskgauss store")


def test_store_inside_a_regular_file_is_a_user_error(inputs, tmp_path):
    """STORE below a path that is a file cannot be created: one line, not a traceback."""
    blocker = tmp_path / "results"
    blocker.write_text("a file where a folder was expected")
    store = blocker / "out.zarr"
    result, _ = _invoke("render", inputs["npy"], store, *GOOD_GRID, "--sigma", "1",
                        *SMALL_CLUSTER)  # fmt: skip
    _user_error(result, "results")
    assert blocker.read_text() == "a file where a folder was expected"


# ------------------------------------------------------------------------ info, preview, export


def test_info_text(basic):
    store = basic["store"]
    result, _ = _invoke("info", store)
    _succeeded(result)
    fields = {}
    for line in result.output.strip().splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    grid = _basic_grid()
    assert fields["store"] == str(store)
    assert fields["shape"] == "(40, 36, 32) float32, blocks of (16, 12, 20)"
    assert fields["grid"] == (
        f"origin {tuple(grid.origin)}, spacing {tuple(grid.spacing)} (coordinate units)"
    )
    assert fields["gaussians"] == "120 centres, sigma 1.0..1.0, tol 1e-06, peak"
    assert fields["progress"] == f"{BLOCKS} of {BLOCKS} blocks done"
    assert fields["runs"] == "1"
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert re.fullmatch(r"disk\s+[\d.]+ MiB", fields["on"]), fields["on"]
    assert fields["on"].split()[1] == f"{size / 2**20:.1f}"


def test_info_json(basic):
    store = basic["store"]
    result, _ = _invoke("info", store, "--json")
    _succeeded(result)
    summary = json.loads(result.output)
    assert summary["location"] == str(store)
    assert summary["shape"] == list(SHAPE)
    assert summary["dtype"] == "float32"
    assert summary["block_shape"] == list(CHUNKS)
    assert summary["blocks"] == BLOCKS
    assert summary["blocks_done"] == BLOCKS
    assert summary["grid"] == _basic_grid().to_dict()
    assert summary["unit"] is None
    assert summary["job"]["centres"] == 120
    assert summary["job"]["sigma"]["min"] == summary["job"]["sigma"]["max"] == 1.0
    assert len(summary["runs"]) == 1
    assert summary["runs"][0]["rendered"] + summary["runs"][0]["empty"] == BLOCKS
    assert summary["bytes_on_disk"] == sum(
        p.stat().st_size for p in store.rglob("*") if p.is_file()
    )


def _png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(str(path))
    assert image.ndim == 3
    assert image.shape[0] > 50
    assert image.shape[1] > 50
    assert float(image[..., :3].std()) > 0.01
    return image


@pytest.mark.parametrize(
    "options",
    [[], ["--axis", "x", "--index", "3"], ["--axis", "1", "--max"], ["--axis", "y"]],
    ids=["default", "x-3", "max-1", "y-middle"],
)
def test_preview(basic, tmp_path, options):
    output = tmp_path / "preview.png"
    result, _ = _invoke("preview", basic["store"], output, *options)
    _succeeded(result)
    assert result.output.strip() == f"wrote {output}"
    _png(output)


def test_preview_errors(basic, tmp_path):
    output = tmp_path / "p.png"
    store = basic["store"]
    _user_error(_invoke("preview", store, output, "--index", "3", "--max")[0], "not both")
    _user_error(_invoke("preview", store, output, "--axis", "q")[0], "--axis", "'q'")
    _user_error(
        _invoke("preview", store, output, "--axis", "y", "--index", "36")[0],
        "[0, 35]",
        "axis y",
    )
    assert not output.exists()


def test_export(basic, tmp_path):
    output = tmp_path / "map.mrc"
    result, _ = _invoke("export", basic["store"], output)
    _succeeded(result)
    assert result.output.strip() == f"wrote {output}"
    volume = _volume(basic["store"])
    grid = _basic_grid()
    with mrcfile.open(str(output)) as mrc:
        np.testing.assert_array_equal(mrc.data, volume.transpose(2, 1, 0))
        voxel = mrc.voxel_size
        np.testing.assert_allclose([voxel.x, voxel.y, voxel.z], grid.spacing, rtol=1e-6)
        origin = mrc.header.origin
        np.testing.assert_allclose([origin.x, origin.y, origin.z], LOWER, rtol=1e-6)
    written = output.read_bytes()
    line = _user_error(_invoke("export", basic["store"], output)[0], str(output), "exists")
    assert "--overwrite" in line
    assert output.read_bytes() == written
    output.write_bytes(b"stale")
    result, _ = _invoke("export", basic["store"], output, "--overwrite")
    _succeeded(result)
    # The same bytes but for the creation time mrcfile stamps into the first label.
    rewritten = output.read_bytes()
    label = slice(224, 304)
    assert len(rewritten) == len(written)
    assert rewritten[: label.start] == written[: label.start]
    assert rewritten[label.stop :] == written[label.stop :]


# ----------------------------------------------------------------------------- real processes


def _run(*arguments, timeout: float = 120, env: dict | None = None):
    command = [sys.executable, "-m", "daskgauss", *(str(a) for a in arguments)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    ("arguments", "code", "fragments"),
    [
        (["render", "{bad_csv}", "{out}", *GOOD_GRID, "--sigma", "1"], 1, ["bad.csv, line 3"]),
        (["info", "{out}"], 1, ["no store at"]),
        (["render", "{npy}", "{out}", "--shape", "12", "12", "--sigma", "1"], 2, ["--shape"]),
    ],
    ids=["bad-csv", "info-missing", "usage"],
)
def test_process_exit_code_and_no_traceback(inputs, tmp_path, arguments, code, fragments):
    names = {"bad_csv": inputs["bad_csv"], "npy": inputs["npy"], "out": tmp_path / "out.zarr"}
    process = _run(*(argument.format(**names) for argument in arguments))
    assert process.returncode == code, process.stderr
    assert "Traceback" not in process.stderr + process.stdout
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, process.stderr
    if code == 1:
        assert process.stderr.strip() == errors[0]
        assert process.stdout == ""
    for fragment in fragments:
        assert fragment in errors[0]
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.slow
def test_process_render_with_negative_bounds(inputs, tmp_path):
    store = tmp_path / "process.zarr"
    process = _run(
        "render", inputs["npy"], store, "--shape", "24", "20", "16",
        "--lower", "-6", "-5", "-4", "--upper", "6", "5", "4", "--sigma", "1", "--chunks", "10",
        *SMALL_CLUSTER,
    )  # fmt: skip
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert f"wrote {store}: shape (24, 20, 16) float32" in process.stdout
    grid = dg.Grid.from_bounds((-6, -5, -4), (6, 5, 4), (24, 20, 16))
    expected = dg.gaussian_sum(inputs["centres"], 1.0, grid, chunks=10).compute()
    np.testing.assert_array_equal(_volume(store), expected)


@pytest.mark.slow
def test_missing_scheduler_file_fails_within_the_timeout(inputs, tmp_path):
    """A mistyped --scheduler-file must end in a one-line error after the connect timeout,
    not wait for ever (distributed's Client polls for the file without a deadline)."""
    missing = tmp_path / "no-such-scheduler.json"
    try:
        process = _run(
            "render", inputs["npy"], tmp_path / "out.zarr", *GOOD_GRID, "--sigma", "1",
            "--scheduler-file", missing, timeout=25,
            env={"DASK_DASKGAUSS__CONNECT_TIMEOUT": "3s"},
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail(f"--scheduler-file {missing} (absent) hung for 25 s with a 3 s timeout")
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, process.stderr
    assert str(missing) in errors[0]


def test_an_internal_error_shows_its_traceback_and_asks_for_a_report(
    inputs, tmp_path, monkeypatch, capsys
):
    """A bug (here a TypeError inside planning) is not dressed up as a user error."""
    import daskgauss.cli

    def broken(*arguments, **options):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(daskgauss.cli, "prepare_render", broken)
    with pytest.raises(SystemExit) as exit_info:
        daskgauss.cli.main(["render", str(inputs["npy"]), str(tmp_path / "out.zarr"),
                            *GOOD_GRID, "--sigma", "1"])  # fmt: skip
    assert exit_info.value.code == daskgauss.cli.EXIT_INTERNAL_ERROR
    error = capsys.readouterr().err
    assert "Traceback (most recent call last)" in error
    assert "TypeError: unsupported operand type(s)" in error
    assert "please report it" in error.lower()
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("layout", ["zarr-group", "parquet"])
def test_render_from_chunked_centres_equals_gaussian_sum(inputs, tmp_path, layout):
    """Zarr and Parquet centres are read on the cluster, chunk by chunk; same bits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    centres, sigma, weight = inputs["centres"], inputs["sigma"], inputs["weight"]
    if layout == "zarr-group":
        source = tmp_path / "centres.zarr"
        group = zarr.create_group(str(source))
        group.create_array("centres", data=centres, chunks=(50, 3))
        group.create_array("weights", data=weight, chunks=(50,))
        group.create_array("sigma", data=sigma, chunks=(50,))
    else:
        source = tmp_path / "centres.parquet"
        table = pa.table({"x": centres[:, 0], "y": centres[:, 1], "z": centres[:, 2],
                          "weight": weight, "sigma": sigma})  # fmt: skip
        pq.write_table(table, str(source), row_group_size=50)
    store = tmp_path / "out.zarr"
    result, _ = _invoke("render", source, store, *GRID_OPTIONS, "--chunks", "16", "12", "20",
                        *SMALL_CLUSTER)  # fmt: skip
    _succeeded(result)
    assert "reading and checking" in result.output
    rows = len(centres)
    # The phases report their own progress: the chunks read (the stored ones read several
    # at a time), then the exchange, then the blocks.
    assert f"1 of 1 chunks, {rows:,} of {rows:,} rows" in result.output
    assert f"exchange: 1 of 1 chunks, {rows:,} of {rows:,} rows" in result.output
    assert "render: " in result.output
    expected = dg.gaussian_sum(centres, sigma, _basic_grid(), weights=weight,
                               chunks=CHUNKS).compute()  # fmt: skip
    np.testing.assert_array_equal(_volume(store), expected)
    info, _ = _invoke("info", store)
    _succeeded(info)
    assert f"centres     {'Zarr' if layout == 'zarr-group' else 'Parquet'} {source}" in info.output


def test_a_bad_row_in_chunked_centres_is_one_line_and_no_store(inputs, tmp_path):
    centres = inputs["centres"].copy()
    centres[77, 2] = np.nan
    source = tmp_path / "bad.zarr"
    zarr.create_array(str(source), data=centres, chunks=(50, 3))
    store = tmp_path / "out.zarr"
    result, _ = _invoke("render", source, store, *GRID_OPTIONS, "--sigma", "1", *SMALL_CLUSTER)
    _user_error(result, "centres must be finite", "(77, 2)", str(source))
    assert not store.exists()


@pytest.mark.slow
def test_ctrl_c_reports_progress_exits_130_and_resumes(tmp_path):
    """SIGINT to the process group, as a terminal sends it: one line saying how far the
    render got, exit status 130, no traceback from any process; the rerun completes."""
    import signal

    store = tmp_path / "interrupted.zarr"
    centres, command = long_render(tmp_path, store)
    command += SMALL_CLUSTER
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    wait_for_blocks(store, process)
    os.killpg(process.pid, signal.SIGINT)
    output, errors = process.communicate(timeout=120)
    assert process.returncode == 130, errors
    assert "Traceback" not in output + errors, errors
    match = re.search(r"interrupted after (\d+) of 1728 blocks; run the same command to resume",
                      errors)  # fmt: skip
    assert match, errors
    assert 0 < int(match.group(1)) < 1728
    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(_volume(store), long_render_expected(centres))


@contextlib.contextmanager
def _tmpfs(directory, size: str):
    """A tmpfs of ``size`` mounted at ``directory`` (skips the test where that is not allowed)."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(directory)], capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=False)


@pytest.mark.slow
def test_disk_full_is_one_line_and_the_rerun_resumes_to_the_same_bits(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.uniform(-30, 30, size=(2000, 3))
    np.save(tmp_path / "c.npy", centres)
    with _tmpfs(tmp_path / "small", "2m") as small:
        store = small / "full.zarr"
        command = [sys.executable, "-m", "daskgauss", "render", str(tmp_path / "c.npy"),
                   str(store), "--shape", "96", "--lower", "-30", "--upper", "30", "--sigma", "2",
                   "--chunks", "32", "--compression", "none", *SMALL_CLUSTER]  # fmt: skip
        full = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert full.returncode == 1, full.stderr
        assert "Traceback" not in full.stdout + full.stderr, full.stderr
        assert full.stderr.strip().startswith(
            "Error: no space left on the device holding the store"
        )
        match = re.search(r"after (\d+) of 27 blocks: free some space, then run the same command",
                          full.stderr)  # fmt: skip
        assert match, full.stderr
        assert int(match.group(1)) < 27
        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        again = subprocess.run(command, capture_output=True, text=True, timeout=240)
        assert again.returncode == 0, again.stderr
        expected = dg.gaussian_sum(centres, 2.0, dg.Grid.from_bounds(-30, 30, 96), chunks=32)
        np.testing.assert_array_equal(_volume(store), expected.compute())


@pytest.mark.slow
def test_a_store_deleted_mid_render_is_one_line_and_the_rerun_starts_again(tmp_path):
    store = tmp_path / "deleted.zarr"
    centres, command = long_render(tmp_path, store)
    command += SMALL_CLUSTER
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_blocks(store, process)
    # As `rm -rf` would, retry while writers still add files (they remove their own
    # once they see the store gone).
    while store.exists():
        shutil.rmtree(store, ignore_errors=True)
    output, errors = process.communicate(timeout=120)
    assert not store.exists(), sorted(path.name for path in store.rglob("*"))
    assert process.returncode == 1, errors
    assert "Traceback" not in output + errors, errors
    assert errors.strip() == (f"Error: {store} was deleted while it was being rendered; run the "
                              "same command to start it again")  # fmt: skip
    again = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert again.returncode == 0, again.stderr
    np.testing.assert_array_equal(_volume(store), long_render_expected(centres))
