"""read_centres: every supported layout read back to known values, every malformed one refused."""

from __future__ import annotations

import io
import re
import uuid

import dask
import numpy as np
import pytest

from daskgauss._centres_io import CentresFile, CentresFileError, read_centres

# Values chosen so that their decimal text is exact enough to compare with ==.
XYZ = np.array([[1.5, -2.25, 3.0], [-0.5, 4.0, 10.125], [7.0, 0.0, -8.75]])
WEIGHT = np.array([0.5, 2.0, -1.25])
SIGMA = np.array([0.8, 1.25, 2.0])
SXYZ = np.array([[0.5, 1.0, 1.5], [2.0, 2.5, 3.0], [0.25, 0.75, 1.75]])


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(path, line: int | None, *fragments: str) -> str:
    """A regex for a message naming ``path`` (and ``line``) and containing each fragment."""
    head = re.escape(str(path)) + (f", line {line}:" if line is not None else ":")
    return head + "".join(f"(?=.*{re.escape(fragment)})" for fragment in fragments)


# ----------------------------------------------------------------------------- .npy


def test_npy_round_trip(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, XYZ)
    read = read_centres(path)
    assert isinstance(read, CentresFile)
    np.testing.assert_array_equal(read.centres, XYZ)
    assert read.centres.dtype == np.float64
    assert read.centres.shape == (3, 3)
    assert read.weights is None
    assert read.sigma is None


def test_npy_integer_and_float32_arrays_become_float64(tmp_path):
    ints = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int32)
    np.save(tmp_path / "i.npy", ints)
    read = read_centres(str(tmp_path / "i.npy"))  # a str path works as well as a Path
    assert read.centres.dtype == np.float64
    np.testing.assert_array_equal(read.centres, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.save(tmp_path / "f.npy", XYZ.astype(np.float32))
    np.testing.assert_array_equal(read_centres(tmp_path / "f.npy").centres, XYZ)


def test_npy_suffix_is_case_insensitive(tmp_path):
    path = tmp_path / "C.NPY"
    with path.open("wb") as stream:
        np.save(stream, XYZ)
    np.testing.assert_array_equal(read_centres(path).centres, XYZ)


# ----------------------------------------------------------------------------- text with headers


def test_csv_with_header(tmp_path):
    rows = "\n".join(",".join(repr(float(v)) for v in row) for row in XYZ)
    path = _write(tmp_path, "c.csv", f"x,y,z\n{rows}\n")
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres, XYZ)
    assert read.weights is None
    assert read.sigma is None


def test_csv_with_spaces_after_commas(tmp_path):
    path = _write(tmp_path, "c.csv", "x, y, z\n1.5, -2.25, 3\n-0.5, 4, 10.125\n7, 0, -8.75\n")
    np.testing.assert_array_equal(read_centres(path).centres, XYZ)


@pytest.mark.parametrize("suffix", [".txt", ".xyz"])
def test_whitespace_columns_in_any_order_and_case_with_ignored_columns(tmp_path, suffix):
    lines = ["Element  Z Weight  x\tY"]
    for element, (x, y, z), w in zip("CNO", XYZ, WEIGHT, strict=True):
        lines.append(f"{element}  {z} {w}   {x}\t{y}")
    path = _write(tmp_path, f"atoms{suffix}", "\n".join(lines) + "\n")
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.weights, WEIGHT)
    assert read.sigma is None


def test_element_x_y_z_weight(tmp_path):
    body = "\n".join(
        f"{e} {x} {y} {z} {w}" for e, (x, y, z), w in zip("CNO", XYZ, WEIGHT, strict=True)
    )
    path = _write(tmp_path, "atoms.txt", f"element x y z weight\n{body}\n")
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.weights, WEIGHT)
    assert read.weights.shape == (3,)


def test_sigma_column(tmp_path):
    body = "\n".join(f"{s},{x},{y},{z}" for s, (x, y, z) in zip(SIGMA, XYZ, strict=True))
    path = _write(tmp_path, "c.csv", f"SIGMA,X,Y,Z\n{body}\n")
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.sigma, SIGMA)
    assert read.sigma.shape == (3,)
    assert read.weights is None


def test_sx_sy_sz_columns_with_weight(tmp_path):
    body = "\n".join(
        f"{x} {y} {z} {sz} {sy} {sx} {w}"
        for (x, y, z), (sx, sy, sz), w in zip(XYZ, SXYZ, WEIGHT, strict=True)
    )
    path = _write(tmp_path, "c.txt", f"x y z sz sy sx weight\n{body}\n")
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.sigma, SXYZ)
    assert read.sigma.shape == (3, 3)
    np.testing.assert_array_equal(read.weights, WEIGHT)


def test_comments_and_blank_lines_are_skipped(tmp_path):
    text = (
        "# produced by a script\n"
        "\n"
        "x y z weight   # the header may carry a comment too\n"
        "   \n"
        "1.5 -2.25 3 0.5\n"
        "# a comment between rows\n"
        "-0.5 4 10.125 2   # trailing comment\n"
        "\n"
        "7 0 -8.75 -1.25\n"
        "\n"
    )
    read = read_centres(_write(tmp_path, "c.txt", text))
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.weights, WEIGHT)


def test_windows_line_endings(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes(b"x,y,z\r\n1.5,-2.25,3\r\n-0.5,4,10.125\r\n7,0,-8.75\r\n")
    np.testing.assert_array_equal(read_centres(path).centres, XYZ)


@pytest.mark.parametrize("separator", [",", " ", "\t"])
def test_headerless_three_columns(tmp_path, separator):
    body = "\n".join(separator.join(repr(float(v)) for v in row) for row in XYZ)
    read = read_centres(_write(tmp_path, "c.txt", "# x y z, no header line\n" + body + "\n"))
    np.testing.assert_array_equal(read.centres, XYZ)
    assert read.weights is None
    assert read.sigma is None


def test_headerless_scientific_notation(tmp_path):
    read = read_centres(_write(tmp_path, "c.csv", "1e-3,-2.5E2,+3\n"))
    np.testing.assert_array_equal(read.centres, [[1e-3, -250.0, 3.0]])


def test_single_centre(tmp_path):
    read = read_centres(_write(tmp_path, "one.csv", "x,y,z\n1,2,3\n"))
    assert read.centres.shape == (1, 3)
    np.testing.assert_array_equal(read.centres, [[1.0, 2.0, 3.0]])


# ----------------------------------------------------------------------------- chemistry XYZ


def test_chemistry_xyz(tmp_path):
    text = (
        "3\n"
        "water-ish, energy = -76.4 (the comment line is free text: 1 2 3)\n"
        "C 1.5 -2.25 3.0\n"
        "N\t-0.5   4.0 10.125\n"
        "O 7.0 0.0 -8.75\n"
    )
    read = read_centres(_write(tmp_path, "mol.xyz", text))
    np.testing.assert_array_equal(read.centres, XYZ)
    assert read.weights is None
    assert read.sigma is None


def test_chemistry_xyz_with_an_empty_comment_line(tmp_path):
    text = "2\n\nC 1.0 2.0 3.0\nH 4.0 5.0 6.0\n"
    read = read_centres(_write(tmp_path, "mol.xyz", text))
    np.testing.assert_array_equal(read.centres, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])


def test_chemistry_xyz_comment_line_that_looks_like_data_is_skipped(tmp_path):
    text = "1\n9 9 9\nC 1.0 2.0 3.0\n"
    np.testing.assert_array_equal(
        read_centres(_write(tmp_path, "m.xyz", text)).centres, [[1.0, 2.0, 3.0]]
    )


# ----------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    path = tmp_path / "absent.csv"
    with pytest.raises(CentresFileError, match=_error(path, None, "no such file")):
        read_centres(path)


def test_a_directory_is_not_a_centres_file(tmp_path):
    path = tmp_path / "folder.csv"
    path.mkdir()
    with pytest.raises(CentresFileError, match=re.escape(str(path))):
        read_centres(path)


@pytest.mark.parametrize("name", ["c.dat", "c.json", "centres"])
def test_unknown_suffix(tmp_path, name):
    path = _write(tmp_path, name, "x,y,z\n1,2,3\n")
    suffix = path.suffix or "(no suffix)"
    expected = _error(path, None, "unknown format", suffix, ".npy")
    with pytest.raises(CentresFileError, match=expected):
        read_centres(path)


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only a comment\n\n"])
def test_empty_file(tmp_path, text):
    path = _write(tmp_path, "c.csv", text)
    with pytest.raises(CentresFileError, match=_error(path, None, "holds no centres")):
        read_centres(path)


def test_header_only(tmp_path):
    path = _write(tmp_path, "c.csv", "x,y,z\n# nothing follows\n")
    with pytest.raises(CentresFileError, match=_error(path, None, "holds no centres")):
        read_centres(path)


def test_wrong_column_count_names_the_line(tmp_path):
    # Line 5 (counting the comment and the blank line) has two values for three columns.
    path = _write(tmp_path, "c.csv", "# comment\nx,y,z\n\n1,2,3\n4,5\n6,7,8\n")
    with pytest.raises(CentresFileError, match=_error(path, 5, "expected 3 values, got 2")):
        read_centres(path)


def test_too_many_values_on_a_line(tmp_path):
    path = _write(tmp_path, "c.txt", "element x y z\nC 1 2 3\nN 4 5 6 7\n")
    with pytest.raises(CentresFileError, match=_error(path, 3, "expected 4 values, got 5")):
        read_centres(path)


def test_text_in_a_numeric_column_names_the_column(tmp_path):
    path = _write(tmp_path, "c.txt", "x y z weight\n1 2 3 1\n4 five 6 1\n")
    with pytest.raises(CentresFileError, match=_error(path, 3, "'y'", "not a number", "'five'")):
        read_centres(path)
    path = _write(tmp_path, "w.txt", "x y z weight\n1 2 3 heavy\n")
    with pytest.raises(CentresFileError, match=_error(path, 2, "'weight'", "'heavy'")):
        read_centres(path)


def test_text_in_a_headerless_file(tmp_path):
    path = _write(tmp_path, "c.csv", "1,2,3\n4,oops,6\n")
    with pytest.raises(CentresFileError, match=_error(path, 2, "'y'", "'oops'")):
        read_centres(path)


def test_header_missing_z(tmp_path):
    path = _write(tmp_path, "c.csv", "# header on line 2\nx,y,weight\n1,2,3\n")
    with pytest.raises(CentresFileError, match=_error(path, 2, "x, y and z", "missing z")):
        read_centres(path)


def test_header_missing_x_and_y(tmp_path):
    path = _write(tmp_path, "c.txt", "a b z\n1 2 3\n")
    with pytest.raises(CentresFileError, match=_error(path, 1, "missing x, y")):
        read_centres(path)


def test_sigma_and_sx_together(tmp_path):
    path = _write(tmp_path, "c.txt", "x y z sigma sx sy sz\n1 2 3 1 1 1 1\n")
    with pytest.raises(CentresFileError, match=_error(path, 1, "one of sigma or sx sy sz")):
        read_centres(path)


def test_covariance_columns_read_as_matrices(tmp_path):
    path = _write(tmp_path, "c.csv", "x,y,z,weight,cxx,cxy,cxz,cyy,cyz,czz\n"
                  "1,2,3,2,4,1,0.5,5,0.25,6\n0,0,0,1,1,0,0,1,0,1\n")  # fmt: skip
    read = read_centres(path)
    assert read.sigma is None
    np.testing.assert_array_equal(read.covariance[0], [[4, 1, 0.5], [1, 5, 0.25], [0.5, 0.25, 6]])
    np.testing.assert_array_equal(read.covariance[1], np.eye(3))
    np.testing.assert_array_equal(read.weights, [2, 1])


@pytest.mark.parametrize(
    ("header", "words"),
    [
        ("x y z cxx cxy cxz cyy cyz", ["cxx cxy cxz cyy cyz czz go together", "found only"]),
        ("x y z sigma cxx cxy cxz cyy cyz czz", ["one of sigma or cxx ... czz", "not both"]),
        ("x y z sx sy sz cxx cxy cxz cyy cyz czz", ["sx sy sz or cxx ... czz"]),
    ],
)
def test_covariance_columns_partial_or_with_sigma(tmp_path, header, words):
    values = " ".join(["1"] * len(header.split()))
    path = _write(tmp_path, "c.txt", f"{header}\n{values}\n")
    with pytest.raises(CentresFileError, match=_error(path, 1, *words)):
        read_centres(path)


def test_only_sx_and_sy(tmp_path):
    path = _write(tmp_path, "c.txt", "\nx y z sx sy\n1 2 3 1 1\n")
    with pytest.raises(CentresFileError, match=_error(path, 2, "sx sy sz go together", "sx sy")):
        read_centres(path)


def test_headerless_four_columns(tmp_path):
    path = _write(tmp_path, "c.txt", "# no header\n1 2 3 4\n5 6 7 8\n")
    with pytest.raises(
        CentresFileError, match=_error(path, 2, "without a header", "3 values", "got 4")
    ):
        read_centres(path)


def test_headerless_row_with_two_values_after_good_rows(tmp_path):
    path = _write(tmp_path, "c.txt", "1 2 3\n4 5 6\n7 8\n")
    with pytest.raises(CentresFileError, match=_error(path, 3, "expected 3 values, got 2")):
        read_centres(path)


def test_xyz_count_mismatch(tmp_path):
    path = _write(tmp_path, "mol.xyz", "3\ncomment\nC 1 2 3\nH 4 5 6\n")
    with pytest.raises(CentresFileError, match=_error(path, 1, "declares 3 atoms", "found 2")):
        read_centres(path)
    path = _write(tmp_path, "more.xyz", "1\ncomment\nC 1 2 3\nH 4 5 6\n")
    with pytest.raises(CentresFileError, match=_error(path, 1, "declares 1 atoms", "found 2")):
        read_centres(path)


def test_xyz_bad_coordinate(tmp_path):
    path = _write(tmp_path, "mol.xyz", "2\ncomment\nC 1 2 3\nH 4 x 6\n")
    with pytest.raises(CentresFileError, match=_error(path, 4, "'y'", "'x'")):
        read_centres(path)


@pytest.mark.parametrize("shape", [(4, 2), (3, 4), (6,), (2, 3, 3)])
def test_npy_with_wrong_shape(tmp_path, shape):
    path = tmp_path / "c.npy"
    np.save(path, np.zeros(shape))
    with pytest.raises(CentresFileError, match=_error(path, None, "(M, 3)", str(shape))):
        read_centres(path)


def test_npy_empty(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.empty((0, 3)))
    with pytest.raises(CentresFileError, match=_error(path, None, "holds no centres")):
        read_centres(path)


def test_npy_of_strings(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.array([["a", "b", "c"]]))
    with pytest.raises(CentresFileError, match=_error(path, None, "expected numbers")):
        read_centres(path)


def test_npy_that_is_not_npy(tmp_path):
    path = _write(tmp_path, "c.npy", "x,y,z\n1,2,3\n")
    with pytest.raises(CentresFileError, match=_error(path, None, "not a readable .npy file")):
        read_centres(path)


def test_npy_of_objects_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.array([[1, 2, {}]], dtype=object), allow_pickle=True)
    with pytest.raises(CentresFileError, match=_error(path, None, "not a readable .npy file")):
        read_centres(path)


def test_binary_file_with_a_text_suffix_is_a_centres_file_error(tmp_path):
    """A file that is not text (a spreadsheet saved as .csv, a latin-1 .xyz) is malformed:
    read_centres promises CentresFileError naming the file, not a bare UnicodeDecodeError."""
    path = tmp_path / "c.csv"
    path.write_bytes(b"x,y,z\n1,2,3\n\xff\xfe\x00\x81 4,5,6\n")
    with pytest.raises(CentresFileError, match=re.escape(str(path))):
        read_centres(path)


# ----------------------------------------------------------------------------- URLs


@pytest.fixture
def memory_folder():
    """A folder on fsspec's in-memory filesystem, removed afterwards."""
    import fsspec

    filesystem = fsspec.filesystem("memory")
    folder = f"/daskgauss-test-{uuid.uuid4().hex}"
    filesystem.mkdir(folder)
    yield filesystem, folder
    filesystem.rm(folder, recursive=True)


def test_file_url_reads_like_the_path(tmp_path):
    np.save(tmp_path / "u.npy", XYZ)
    np.testing.assert_array_equal(read_centres(f"file://{tmp_path}/u.npy").centres, XYZ)
    path = _write(tmp_path, "u.csv", "x,y,z,weight\n1.5,-2.25,3,2\n-0.5,4,10.125,1\n7,0,-8.75,0\n")
    read = read_centres(path.as_uri())
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.weights, [2.0, 1.0, 0.0])


def test_fsspec_url_on_another_filesystem(memory_folder):
    filesystem, folder = memory_folder
    buffer = io.BytesIO()
    np.save(buffer, XYZ)
    filesystem.pipe(f"{folder}/c.npy", buffer.getvalue())
    text = b"x y z sigma\n1.5 -2.25 3 0.5\n-0.5 4 10.125 1\n7 0 -8.75 2\n"
    filesystem.pipe(f"{folder}/c.xyz", text)
    np.testing.assert_array_equal(read_centres(f"memory://{folder}/c.npy").centres, XYZ)
    read = read_centres(f"memory://{folder}/c.xyz")
    np.testing.assert_array_equal(read.centres, XYZ)
    np.testing.assert_array_equal(read.sigma, [0.5, 1.0, 2.0])


def test_url_errors_name_the_url(memory_folder):
    filesystem, folder = memory_folder
    filesystem.pipe(f"{folder}/c.dat", b"x,y,z\n1,2,3\n")
    filesystem.pipe(f"{folder}/bad.csv", b"x,y,z\n1,2,3\n4,five,6\n")
    filesystem.mkdir(f"{folder}/sub.csv")
    cases = {
        f"memory://{folder}/absent.npy": "no such file",
        f"memory://{folder}/c.dat": "unknown format .dat",
        f"memory://{folder}/sub.csv": "is a directory",
        f"memory://{folder}/bad.csv": "line 3: column 'y' is not a number: 'five'",
    }
    for url, message in cases.items():
        with pytest.raises(CentresFileError, match=re.escape(f"{url}") + ".*" + re.escape(message)):
            read_centres(url)


# ----------------------------------------------------------------------------- Zarr and Parquet


def test_zarr_array_reads_lazily(tmp_path):
    import dask.array as da
    import zarr

    path = tmp_path / "c.zarr"
    zarr.create_array(str(path), data=XYZ, chunks=(2, 3))
    read = read_centres(path)
    assert isinstance(read.centres, da.Array)
    # Stored chunks are read several at a time (daskgauss.chunk-rows), hashed one by one.
    assert read.pieces == (2, 1)
    assert read.centres.chunks[0] == (3,)
    with dask.config.set({"daskgauss.chunk-rows": 2}):
        assert read_centres(path).centres.chunks[0] == (2, 1)
    np.testing.assert_array_equal(read.centres.compute(), XYZ)
    assert read.weights is None
    assert read.sigma is None
    assert read.source == f"Zarr {path}"


def test_zarr_group_with_weights_and_sigma(tmp_path):
    import zarr

    path = tmp_path / "g.zarr"
    group = zarr.create_group(str(path))
    group.create_array("centres", data=XYZ, chunks=(2, 3))
    group.create_array("weights", data=WEIGHT, chunks=(2,))
    group.create_array("sigma", data=SXYZ, chunks=(2, 3))
    read = read_centres(path)
    np.testing.assert_array_equal(read.centres.compute(), XYZ)
    np.testing.assert_array_equal(read.weights.compute(), WEIGHT)
    np.testing.assert_array_equal(read.sigma.compute(), SXYZ)


def test_zarr_group_without_centres_is_refused(tmp_path):
    import zarr

    path = tmp_path / "g.zarr"
    zarr.create_group(str(path)).create_array("points", data=XYZ)
    with pytest.raises(CentresFileError, match=r"needs an array 'centres' .* \['points'\]"):
        read_centres(path)


def test_zarr_array_of_the_wrong_shape_is_refused(tmp_path):
    import zarr

    path = tmp_path / "c.zarr"
    zarr.create_array(str(path), data=XYZ[:, :2])
    with pytest.raises(CentresFileError, match=r"centres must have shape \(M, 3\), got \(3, 2\)"):
        read_centres(path)


def _parquet(path, columns: dict, row_group_size: int = 2):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), str(path), row_group_size=row_group_size)


def test_parquet_file_row_groups_are_the_stored_pieces(tmp_path):
    path = tmp_path / "c.parquet"
    _parquet(path, {"x": XYZ[:, 0], "y": XYZ[:, 1], "z": XYZ[:, 2], "weight": WEIGHT,
                    "sigma": SIGMA, "name": ["a", "b", "c"]})  # fmt: skip
    read = read_centres(path)
    assert read.pieces == (2, 1)
    assert read.centres.chunks[0] == (3,)  # consecutive row groups read together
    with dask.config.set({"daskgauss.chunk-rows": 1}):
        assert read_centres(path).centres.chunks[0] == (2, 1)
    np.testing.assert_array_equal(read.centres.compute(), XYZ)
    np.testing.assert_array_equal(read.weights.compute(), WEIGHT)
    np.testing.assert_array_equal(read.sigma.compute(), SIGMA)
    assert read.source == f"Parquet {path} (1 files)"


def test_parquet_directory_with_sx_sy_sz(tmp_path):
    directory = tmp_path / "parts"
    directory.mkdir()
    for part, rows in enumerate((slice(0, 2), slice(2, 3))):
        _parquet(directory / f"part-{part}.parquet",
                 {"z": XYZ[rows, 2], "y": XYZ[rows, 1], "x": XYZ[rows, 0],
                  "sx": SXYZ[rows, 0], "sy": SXYZ[rows, 1], "sz": SXYZ[rows, 2]})  # fmt: skip
    read = read_centres(directory)
    np.testing.assert_array_equal(read.centres.compute(), XYZ)
    np.testing.assert_array_equal(read.sigma.compute(), SXYZ)
    assert read.weights is None


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"x": [1.0], "y": [2.0]}, "missing z"),
        ({"x": [1.0], "y": [2.0], "z": [3.0], "sigma": [1.0], "sx": [1.0]}, "not both"),
        ({"x": [1.0], "y": [2.0], "z": [3.0], "sx": [1.0], "sy": [1.0]}, "sx sy sz go together"),
    ],
)
def test_bad_parquet_columns_are_refused(tmp_path, columns, message):
    path = tmp_path / "bad.parquet"
    _parquet(path, columns)
    with pytest.raises(CentresFileError, match=message):
        read_centres(path)
