"""Reading centres (and optional weights, sigmas or covariances) from files.

Formats
-------
``.npy``
    An (M, 3) array of x y z.
``.csv``, ``.txt``, ``.xyz``
    One centre per line, values separated by commas or whitespace, ``#`` starts a
    comment. A header line names the columns: ``x y z`` and optionally ``weight``
    and one of ``sigma``, ``sx sy sz`` or the covariance ``cxx cxy cxz cyy cyz czz``
    (coordinate units squared); other named columns (an element or atom
    name, say) are ignored. Without a header the file must have exactly three
    numeric columns, x y z. The chemistry XYZ layout (atom count, comment line,
    then ``symbol x y z``) is read too.

Zarr (an array of shape (M, 3), or a group with ``centres`` (M, 3) and optional
    ``weights`` (M,) and ``sigma`` (M,) or (M, 3), or ``covariance`` (M, 3, 3)) and
    Parquet (a file, or a directory of files, with columns ``x y z`` and optionally
    ``weight`` and ``sigma``, ``sx sy sz`` or ``cxx cxy cxz cyy cyz czz``; needs
    pyarrow, the ``parquet`` extra) are read lazily, as dask
    arrays chunked as stored (Zarr chunks, Parquet row groups): their values are
    read, validated and binned where the chunks are rendered, never all in one
    process.

A centres file is a local path or an fsspec URL (``s3://``, ``gs://``, ``https://``,
``file://`` ...; remote protocols need their fsspec package, e.g. ``s3fs``).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import fsspec
import numpy as np
import zarr

from ._config import chunk_rows
from ._extras import require

__all__ = ["CentresFile", "CentresFileError", "is_number", "read_centres"]

TEXT_SUFFIXES = (".csv", ".txt", ".xyz")
_SPLIT = re.compile(r"[,\s]+")


class CentresFileError(ValueError):
    """A centres file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class CentresFile:
    """What a centres file holds.

    Attributes
    ----------
    centres : ndarray or dask array, shape (M, 3)
    weights : ndarray or dask array, shape (M,), or None when the file has no weights
    sigma : ndarray or dask array, shape (M,) or (M, 3), or None when it has no sigmas
    source : str
        Where the centres came from, in words (for messages and the store's run log).
    covariance : ndarray or dask array, shape (M, 3, 3), or None when it has none
    pieces : tuple of int, or None
        For centres read lazily several stored chunks (Zarr chunks, Parquet row groups)
        at a time: the stored chunks' sizes, in row order (a job's fingerprint hashes
        each); None otherwise.
    """

    centres: Any
    weights: Any
    sigma: Any
    source: str = ""
    covariance: Any = None
    pieces: tuple[int, ...] | None = None


# Per-axis sigmas and covariance entries: columns that only come as a whole set.
PER_AXIS_COLUMNS = ("sx", "sy", "sz")
COVARIANCE_COLUMNS = ("cxx", "cxy", "cxz", "cyy", "cyz", "czz")
SHAPE_COLUMNS = ("sigma", *PER_AXIS_COLUMNS, *COVARIANCE_COLUMNS)
# Each (row, column) of a 3 x 3 covariance from its six columns.
_MATRIX_ENTRIES = (0, 1, 2, 1, 3, 4, 2, 4, 5)


def _check_shape_columns(names: Any, where: str) -> None:
    """Refuse partial sets and more than one of sigma, sx sy sz and the covariance."""
    present = [name for name in SHAPE_COLUMNS if name in names]
    kinds = [kind for kind, group in (("sigma", ("sigma",)), ("sx sy sz", PER_AXIS_COLUMNS),
                                      ("cxx ... czz", COVARIANCE_COLUMNS))
             if any(name in present for name in group)]  # fmt: skip
    if len(kinds) > 1:
        raise CentresFileError(f"{where}: give one of {' or '.join(kinds)} columns, not both")
    for group in (PER_AXIS_COLUMNS, COVARIANCE_COLUMNS):
        partial = [name for name in group if name in present]
        if partial and len(partial) != len(group):
            raise CentresFileError(
                f"{where}: columns {' '.join(group)} go together; found only {' '.join(partial)}"
            )


def _shapes(columns: dict[str, Any], stack: Any) -> tuple[Any, Any]:
    """(sigma, covariance) from named columns (numpy or dask), either None where absent."""
    if "sigma" in columns:
        return columns["sigma"], None
    if "sx" in columns:
        return stack([columns[name] for name in PER_AXIS_COLUMNS], axis=1), None
    if "cxx" in columns:
        entries = [columns[COVARIANCE_COLUMNS[k]] for k in _MATRIX_ENTRIES]
        return None, stack(entries, axis=1).reshape(-1, 3, 3)
    return None, None


def _fields(line: str) -> list[str]:
    return [field for field in _SPLIT.split(line.split("#", 1)[0].strip()) if field]


def is_number(field: str) -> bool:
    """Whether a text field reads as a number (negative and exponent forms included)."""
    try:
        float(field)
    except ValueError:
        return False
    return True


def _read_npy(path: str, data: bytes) -> CentresFile:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CentresFileError(f"{path}: not a readable .npy file ({error})") from None
    if array.ndim != 2 or array.shape[1] != 3:
        raise CentresFileError(
            f"{path}: expected an (M, 3) array of x y z, got shape {array.shape}"
        )
    if array.shape[0] == 0:
        raise CentresFileError(f"{path}: the file holds no centres")
    if not np.issubdtype(array.dtype, np.number):
        raise CentresFileError(f"{path}: expected numbers, got dtype {array.dtype}")
    return CentresFile(centres=array.astype(np.float64), weights=None, sigma=None)


def _columns(header: list[str], path: str, line_number: int) -> dict[str, int]:
    names = [name.lower() for name in header]
    position = {name: i for i, name in enumerate(names)}
    missing = [axis for axis in ("x", "y", "z") if axis not in position]
    if missing:
        raise CentresFileError(
            f"{path}, line {line_number}: the header must name columns x, y and z "
            f"(missing {', '.join(missing)}); got {' '.join(header)}"
        )
    _check_shape_columns(position, f"{path}, line {line_number}")
    return position


def _read_text(path: str, data: bytes) -> CentresFile:
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CentresFileError(
            f"{path}: not a text file (byte {error.start} is not UTF-8); use .npy for binary arrays"
        ) from None
    numbered = [(number, _fields(line)) for number, line in enumerate(lines, start=1)]
    numbered = [(number, fields) for number, fields in numbered if fields]
    if not numbered:
        raise CentresFileError(f"{path}: the file holds no centres")

    first_number, first = numbered[0]
    if len(first) == 1 and first[0].isdigit() and len(numbered) >= 2:
        # Chemistry XYZ: an atom count, a free comment line, then "symbol x y z".
        declared = int(first[0])
        comment_line = first_number + 1
        body = [(n, f) for n, f in numbered[1:] if n > comment_line]
        position = {"x": 1, "y": 2, "z": 3}
        if len(body) != declared:
            raise CentresFileError(
                f"{path}, line {first_number}: XYZ file declares {declared} atoms, "
                f"found {len(body)} atom lines"
            )
        width = 4
    elif all(is_number(field) for field in first):
        if len(first) != 3:
            raise CentresFileError(
                f"{path}, line {first_number}: without a header a line must have 3 values "
                f"(x y z), got {len(first)}; add a header naming the columns"
            )
        position = {"x": 0, "y": 1, "z": 2}
        body = numbered
        width = 3
    else:
        position = _columns(first, path, first_number)
        body = numbered[1:]
        width = len(first)

    if not body:
        raise CentresFileError(f"{path}: the file holds no centres")
    known = ("x", "y", "z", "weight", *SHAPE_COLUMNS)
    wanted = [name for name in known if name in position]
    values = np.empty((len(body), len(wanted)))
    for row, (number, fields) in enumerate(body):
        if len(fields) != width:
            raise CentresFileError(
                f"{path}, line {number}: expected {width} values, got {len(fields)}"
            )
        for column, name in enumerate(wanted):
            field = fields[position[name]]
            try:
                values[row, column] = float(field)
            except ValueError:
                raise CentresFileError(
                    f"{path}, line {number}: column {name!r} is not a number: {field!r}"
                ) from None
    by_name = {name: values[:, column] for column, name in enumerate(wanted)}
    sigma, covariance = _shapes(by_name, np.stack)
    return CentresFile(
        centres=np.stack([by_name["x"], by_name["y"], by_name["z"]], axis=1),
        weights=by_name.get("weight"),
        sigma=sigma,
        covariance=covariance,
    )


def read_centres(path: str | os.PathLike[str]) -> CentresFile:
    """Read centres, and any weights and sigmas, from ``path``.

    Parameters
    ----------
    path : str or path-like
        A local path, or an fsspec URL such as ``s3://bucket/centres.npy``.

    Raises
    ------
    CentresFileError
        The file is missing, unreadable, empty, of an unknown format, or
        malformed; the message names the file and, for text files, the line.
    """
    name = os.fspath(path)
    if "://" in name:
        filesystem, inner = fsspec.core.url_to_fs(name)
    else:
        filesystem, inner = fsspec.filesystem("file"), name
    try:
        if _is_zarr(filesystem, inner):
            return _read_zarr(name)
        if _is_parquet(filesystem, inner):
            return _read_parquet(name, filesystem, inner)
        if filesystem.isdir(inner):
            raise CentresFileError(
                f"{name}: is a directory, neither a Zarr store nor a directory of .parquet files"
            )
        if not filesystem.isfile(inner):
            raise CentresFileError(f"{name}: no such file")
        suffix = pathlib.PurePosixPath(inner).suffix.lower()
        if suffix not in (".npy", *TEXT_SUFFIXES):
            raise CentresFileError(
                f"{name}: unknown format {suffix or '(no suffix)'}; use .npy (M x 3), "
                f"{', '.join(TEXT_SUFFIXES)} (x y z columns), Zarr or Parquet"
            )
        data = filesystem.cat_file(inner)
    except OSError as error:
        raise CentresFileError(f"{name}: cannot be read ({error})") from None
    read = _read_npy(name, data) if suffix == ".npy" else _read_text(name, data)
    return replace(read, source=name)


def _is_zarr(filesystem: Any, inner: str) -> bool:
    return filesystem.isdir(inner) and any(
        filesystem.exists(f"{inner.rstrip('/')}/{marker}")
        for marker in ("zarr.json", ".zarray", ".zgroup")
    )


def _parquet_files(filesystem: Any, inner: str) -> list[str]:
    if filesystem.isdir(inner):
        return sorted(f for f in filesystem.ls(inner, detail=False) if f.endswith(".parquet"))
    return [inner] if inner.lower().endswith(".parquet") else []


def _is_parquet(filesystem: Any, inner: str) -> bool:
    return bool(_parquet_files(filesystem, inner))


def _read_zarr(name: str) -> CentresFile:
    """Centres (and weights, sigmas) of a Zarr array or group, as dask arrays."""
    try:
        node = zarr.open(name, mode="r")
    except (OSError, ValueError, KeyError) as error:
        raise CentresFileError(f"{name}: not a readable Zarr store ({error})") from None
    if isinstance(node, zarr.Array):
        parts = {"centres": node}
    else:
        if "centres" not in node:
            raise CentresFileError(
                f"{name}: a Zarr group needs an array 'centres' (M x 3), and may hold "
                f"'weights' (M) and 'sigma' (M or M x 3) or 'covariance' (M x 3 x 3); it has "
                f"{sorted(node.array_keys())}"
            )
        parts = {key: node[key] for key in ("centres", "weights", "sigma", "covariance")
                 if key in node}  # fmt: skip
        if "sigma" in parts and "covariance" in parts:
            raise CentresFileError(f"{name}: give 'sigma' or 'covariance', not both")
    stored = parts["centres"]
    if stored.ndim != 2 or stored.shape[1] != 3:
        raise CentresFileError(f"{name}: centres must have shape (M, 3), got {stored.shape}")
    if stored.shape[0] == 0:
        raise CentresFileError(f"{name}: the store holds no centres")
    # Several stored chunks a task (one read each), the stored ones hashed one by one.
    count, stored_rows = stored.shape[0], stored.chunks[0]
    pieces = tuple(min(stored_rows, count - start) for start in range(0, count, stored_rows))
    read_rows = stored_rows * max(1, -(-chunk_rows() // stored_rows))
    arrays = {key: da.from_zarr(array, chunks=(read_rows, *array.shape[1:]))
              for key, array in parts.items()}  # fmt: skip
    return CentresFile(centres=arrays["centres"], weights=arrays.get("weights"),
                       sigma=arrays.get("sigma"), source=f"Zarr {name}",
                       covariance=arrays.get("covariance"), pieces=pieces)  # fmt: skip


def _parquet_rows(path: str, groups: list[int], columns: list[str], storage: dict) -> np.ndarray:
    """Consecutive row groups' columns as one float64 (rows, columns) array."""
    parquet = require("pyarrow.parquet", extra="parquet", purpose="reading Parquet centres")
    filesystem = fsspec.filesystem(**storage)
    with filesystem.open(path, "rb") as stream:
        table = parquet.ParquetFile(stream).read_row_groups(groups, columns=columns)
    return np.stack([table.column(c).to_numpy().astype(np.float64) for c in columns], axis=1)


def _read_parquet(name: str, filesystem: Any, inner: str) -> CentresFile:
    """Centres (and weights, sigmas) of Parquet files, one dask chunk per row group."""
    parquet = require("pyarrow.parquet", extra="parquet", purpose="reading Parquet centres")
    files = _parquet_files(filesystem, inner)
    with filesystem.open(files[0], "rb") as stream:
        schema = parquet.ParquetFile(stream).schema_arrow.names
    missing = [axis for axis in "xyz" if axis not in schema]
    if missing:
        raise CentresFileError(
            f"{name}: Parquet centres need columns x y z (and may have weight, and sigma, "
            f"sx sy sz or cxx cxy cxz cyy cyz czz); missing {' '.join(missing)} in {schema}"
        )
    _check_shape_columns(schema, name)
    columns = ["x", "y", "z"] + [c for c in ("weight", *SHAPE_COLUMNS) if c in schema]
    protocol = filesystem.protocol if isinstance(filesystem.protocol, str) else (
        filesystem.protocol[0])  # fmt: skip
    storage = {"protocol": protocol, **filesystem.storage_options}
    reads, pieces = [], []
    for path in files:
        with filesystem.open(path, "rb") as stream:
            metadata = parquet.ParquetFile(stream).metadata
        sizes = [metadata.row_group(group).num_rows for group in range(metadata.num_row_groups)]
        groups = [group for group, rows in enumerate(sizes) if rows]
        pieces.extend(sizes[group] for group in groups)
        # Consecutive row groups of a file read together, until a read holds chunk-rows.
        while groups:
            run = [groups.pop(0)]
            while groups and sum(sizes[group] for group in run) < chunk_rows():
                run.append(groups.pop(0))
            task = dask.delayed(_parquet_rows, pure=True)(path, run, columns, storage)
            rows = sum(sizes[group] for group in run)
            reads.append(da.from_delayed(task, shape=(rows, len(columns)), dtype=np.float64))
    if not reads:
        raise CentresFileError(f"{name}: the Parquet files hold no centres")
    table = da.concatenate(reads)
    named = {column: table[:, k] for k, column in enumerate(columns)}
    sigma, covariance = _shapes(named, da.stack)
    return CentresFile(centres=table[:, 0:3], weights=named.get("weight"), sigma=sigma,
                       source=f"Parquet {name} ({len(files)} files)",
                       covariance=covariance, pieces=tuple(pieces))  # fmt: skip
