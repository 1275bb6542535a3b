"""Reading centres (and optional weights and sigmas) from files.

Formats
-------
``.npy``
    An (M, 3) array of x y z.
``.csv``, ``.txt``, ``.xyz``
    One centre per line, values separated by commas or whitespace, ``#`` starts a
    comment. A header line names the columns: ``x y z`` and optionally ``weight``
    and either ``sigma`` or ``sx sy sz``; other named columns (an element or atom
    name, say) are ignored. Without a header the file must have exactly three
    numeric columns, x y z. The chemistry XYZ layout (atom count, comment line,
    then ``symbol x y z``) is read too.

A centres file is a local path or an fsspec URL (``s3://``, ``gs://``, ``https://``,
``file://`` ...; remote protocols need their fsspec package, e.g. ``s3fs``).
"""

from __future__ import annotations

import io
import os
import pathlib
import re
from dataclasses import dataclass

import fsspec
import numpy as np

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
    centres : ndarray, shape (M, 3), float64
    weights : ndarray, shape (M,), or None when the file has no weight column
    sigma : ndarray, shape (M,) or (M, 3), or None when the file has no sigma columns
    """

    centres: np.ndarray
    weights: np.ndarray | None
    sigma: np.ndarray | None


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
    if "sigma" in position and any(name in position for name in ("sx", "sy", "sz")):
        raise CentresFileError(
            f"{path}, line {line_number}: give either a sigma column or sx sy sz, not both"
        )
    partial = [name for name in ("sx", "sy", "sz") if name in position]
    if partial and len(partial) != 3:
        raise CentresFileError(
            f"{path}, line {line_number}: per-axis sigmas need all of sx, sy and sz; got {partial}"
        )
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
    known = ("x", "y", "z", "weight", "sigma", "sx", "sy", "sz")
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
    sigma = None
    if "sigma" in by_name:
        sigma = by_name["sigma"]
    elif "sx" in by_name:
        sigma = np.stack([by_name["sx"], by_name["sy"], by_name["sz"]], axis=1)
    return CentresFile(
        centres=np.stack([by_name["x"], by_name["y"], by_name["z"]], axis=1),
        weights=by_name.get("weight"),
        sigma=sigma,
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
        if filesystem.isdir(inner):
            raise CentresFileError(f"{name}: is a directory, not a centres file")
        if not filesystem.isfile(inner):
            raise CentresFileError(f"{name}: no such file")
        suffix = pathlib.PurePosixPath(inner).suffix.lower()
        if suffix not in (".npy", *TEXT_SUFFIXES):
            raise CentresFileError(
                f"{name}: unknown format {suffix or '(no suffix)'}; use .npy (M x 3) or "
                f"{', '.join(TEXT_SUFFIXES)} (x y z columns)"
            )
        data = filesystem.cat_file(inner)
    except OSError as error:
        raise CentresFileError(f"{name}: cannot be read ({error})") from None
    return _read_npy(name, data) if suffix == ".npy" else _read_text(name, data)
