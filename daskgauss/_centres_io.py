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
"""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass

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


def _read_npy(path: pathlib.Path) -> CentresFile:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as error:
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


def _columns(header: list[str], path: pathlib.Path, line_number: int) -> dict[str, int]:
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


def _read_text(path: pathlib.Path) -> CentresFile:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
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


def read_centres(path: str | pathlib.Path) -> CentresFile:
    """Read centres, and any weights and sigmas, from ``path``.

    Raises
    ------
    CentresFileError
        The file is missing, empty, of an unknown format, or malformed; the
        message names the file and, for text files, the line.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise CentresFileError(f"{path}: is a directory, not a centres file")
    if not path.is_file():
        raise CentresFileError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path)
    if suffix in TEXT_SUFFIXES:
        return _read_text(path)
    raise CentresFileError(
        f"{path}: unknown format {suffix or '(no suffix)'}; use .npy (M x 3) or "
        f"{', '.join(TEXT_SUFFIXES)} (x y z columns)"
    )
