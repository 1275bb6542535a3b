"""What a job is: the typed description that decides a volume's bits.

A :class:`JobSpec` is built once when a job is planned, handed to every block task,
written to a store as JSON and compared with what a store holds, once, when a render
is prepared. It knows nothing about dask, numba or zarr.

Identity
--------
Two jobs are the same job exactly when their specs are equal: the Gaussians'
fingerprint (every centre, sigma and amplitude, and the cut), the grid, the
normalisation, periodicity, dtype, the block shape, the codec and the unit. Not the
machine the job was planned on, and not the package version: a store records its
``format``, and every release that writes that format resumes it. The format changes
whenever a release would lay a store out differently or compute other bits for the
same job.

Adding a field (covariance, pyramid levels, a model mode ...): give it a default
that means "as before" and leave it out of :meth:`JobSpec.to_json` while it has that
default, so that stores written before still read as the same jobs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._grid import Grid

__all__ = [
    "FORMAT",
    "FORMAT_READERS",
    "Blocks",
    "Chunks",
    "JobSpec",
    "StoreFormatError",
    "check_format",
    "is_regular",
    "regular_chunks",
]

Chunks = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]

# The store format this release writes and resumes.
FORMAT = 2
# Which releases read each format, for the message that refuses another one.
FORMAT_READERS = {
    1: "daskgauss 0.1.x",
    2: "daskgauss 0.2.0 and later releases that write format 2",
}


@dataclass(frozen=True)
class Blocks:
    """The blocks of a grid: where each starts, its shape and its number.

    Attributes
    ----------
    chunks : tuple of three tuples of ints
        Block sizes along each axis, as dask normalises them.
    """

    chunks: Chunks

    @property
    def numblocks(self) -> tuple[int, int, int]:
        """Number of blocks along each axis."""
        return tuple(len(sizes) for sizes in self.chunks)  # type: ignore[return-value]

    @property
    def count(self) -> int:
        """Number of blocks."""
        x, y, z = self.numblocks
        return x * y * z

    def flat(self, block_index: tuple[int, int, int]) -> int:
        """C-order flat index of the block at ``block_index``."""
        x, y, z = block_index
        _, ny, nz = self.numblocks
        return (int(x) * ny + int(y)) * nz + int(z)

    def index(self, flat: int) -> tuple[int, int, int]:
        """The block index of C-order flat index ``flat``."""
        _, ny, nz = self.numblocks
        return int(flat) // (ny * nz), int(flat) // nz % ny, int(flat) % nz

    def start(self, block_index: tuple[int, int, int]) -> np.ndarray:
        """Sample index of the block's first sample, shape (3,), int64."""
        return np.array([sum(self.chunks[d][: block_index[d]]) for d in range(3)], dtype=np.int64)

    def shape(self, block_index: tuple[int, int, int]) -> tuple[int, int, int]:
        """Shape of the block."""
        return tuple(self.chunks[d][block_index[d]] for d in range(3))  # type: ignore[return-value]

    def slices(self, block_index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Where the block sits (sample indices)."""
        start = self.start(block_index)
        return tuple(  # type: ignore[return-value]
            slice(int(s), int(s) + n) for s, n in zip(start, self.shape(block_index), strict=True)
        )

    def __iter__(self):
        """Every block index, in C order."""
        x, y, z = self.numblocks
        return ((i, j, k) for i in range(x) for j in range(y) for k in range(z))


class StoreFormatError(ValueError):
    """A store was written in a format this release does not read."""


@dataclass(frozen=True)
class JobSpec:
    """Everything that decides the values a job produces, and nothing else.

    Attributes
    ----------
    grid : Grid
    fingerprint : str
        SHA-256 over every centre, sigma, amplitude and the tolerance.
    centres : int
        Number of Gaussians M (for people reading a store; implied by the fingerprint).
    sigma_range : tuple of 3 floats, or None
        Smallest, largest and mean sigma over all Gaussians and axes (coordinate
        units); None when M = 0. Descriptive, implied by the fingerprint.
    amplitude_range : tuple of 2 floats, or None
        Smallest and largest peak value of a Gaussian (weight times normalisation);
        None when M = 0. Descriptive (viewers take contrast limits from it).
    tol : float
        Each Gaussian is cut below ``tol`` times its peak.
    normalize : {"peak", "density"}
    periodic : bool
    dtype : {"float32", "float64"}
    chunks : tuple of three tuples of ints
        The output blocks, as dask normalises them.
    compression : str or None
        The store's chunk codec; None for a job that is not written to a store.
    unit : str or None
        OME-NGFF space unit of the coordinates.
    covariance : bool
        Whether the Gaussians have full covariances (``sigma_range`` then describes
        the square roots of their diagonals). Descriptive, implied by the fingerprint.
    levels : int
        Pyramid levels above level 0 that the store holds (datasets "1" ... "levels",
        each the 2 x 2 x 2 box mean of the one below, in blocks of ``block_shape``).
    """

    grid: Grid
    fingerprint: str
    centres: int
    sigma_range: tuple[float, float, float] | None
    amplitude_range: tuple[float, float] | None
    tol: float
    normalize: str
    periodic: bool
    dtype: str
    chunks: Chunks
    compression: str | None = None
    unit: str | None = None
    covariance: bool = False
    levels: int = 0
    token: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # repr of floats round-trips exactly, so equal specs, and only they, share a token.
        identity = (self.fingerprint, self.grid, self.tol, self.normalize, self.periodic,
                    self.dtype, self.chunks, self.compression, self.unit)  # fmt: skip
        if self.levels:  # stores without levels keep the tokens they always had
            identity += (self.levels,)
        token = hashlib.sha256(repr(identity).encode()).hexdigest()[:32]
        object.__setattr__(self, "token", token)

    @property
    def numblocks(self) -> tuple[int, int, int]:
        """Number of blocks along each axis."""
        return tuple(len(sizes) for sizes in self.chunks)  # type: ignore[return-value]

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Shape of an interior block (the first block on each axis)."""
        return tuple(sizes[0] for sizes in self.chunks)  # type: ignore[return-value]

    @property
    def regular(self) -> bool:
        """Whether all blocks but the last on each axis have the same size, the last no larger.

        Only regular blocks map onto the chunks of a Zarr array.
        """
        return is_regular(self.chunks)

    def level_chunks(self, level: int) -> Chunks:
        """The blocks of pyramid level ``level``: ``block_shape`` over its grid."""
        return self.chunks if level == 0 else regular_chunks(
            self.grid.level(level).shape, self.block_shape)  # fmt: skip

    def block_slices(self, block_index: tuple[int, int, int], level: int = 0
                     ) -> tuple[slice, slice, slice]:  # fmt: skip
        """Where block ``block_index`` of level ``level`` sits in it (global sample indices)."""
        chunks = self.level_chunks(level)
        slices = []
        for d in range(3):
            start = sum(chunks[d][: block_index[d]])
            slices.append(slice(start, start + chunks[d][block_index[d]]))
        return tuple(slices)  # type: ignore[return-value]

    def to_json(self) -> dict[str, Any]:
        """The JSON-ready record a store keeps; :meth:`from_json` inverts it.

        Raises
        ------
        ValueError
            The blocks are not regular (a store's chunks must be).
        """
        if not self.regular:
            raise ValueError(f"only a job of regular blocks can be recorded, got {self.chunks}")
        sigma = self.sigma_range
        return {
            "name": "daskgauss",
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "centres": self.centres,
            "sigma": {
                "min": sigma[0] if sigma else None,
                "max": sigma[1] if sigma else None,
                "mean": sigma[2] if sigma else None,
            },
            "amplitude": {
                "min": self.amplitude_range[0] if self.amplitude_range else None,
                "max": self.amplitude_range[1] if self.amplitude_range else None,
            },
            "tol": self.tol,
            "normalize": self.normalize,
            "periodic": self.periodic,
            "grid": self.grid.to_dict(),
            "dtype": self.dtype,
            "block_shape": list(self.block_shape),
            "unit": self.unit,
            "compression": self.compression,
            "covariance": self.covariance,
            "levels": self.levels,
        }

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> JobSpec:
        """The spec a store recorded.

        Raises
        ------
        StoreFormatError
            The record is of another store format than this release writes.
        """
        check_format(record.get("format"))
        grid = Grid.from_dict(record["grid"])
        sigma = record["sigma"]
        chunks = regular_chunks(grid.shape, tuple(record["block_shape"]))
        return cls(
            grid=grid,
            fingerprint=record["fingerprint"],
            centres=int(record["centres"]),
            sigma_range=None
            if sigma["min"] is None
            else (float(sigma["min"]), float(sigma["max"]), float(sigma["mean"])),
            amplitude_range=None
            if record["amplitude"]["min"] is None
            else (float(record["amplitude"]["min"]), float(record["amplitude"]["max"])),
            tol=float(record["tol"]),
            normalize=record["normalize"],
            periodic=bool(record["periodic"]),
            dtype=record["dtype"],
            chunks=chunks,
            compression=record["compression"],
            unit=record["unit"],
            covariance=bool(record.get("covariance", False)),
            levels=int(record.get("levels", 0)),
        )

    def differences(self, other: JobSpec) -> list[str]:
        """What differs between two specs, in words (empty when they are the same job)."""
        mine, theirs = self.to_json(), other.to_json()
        return [
            f"{key}: store has {json.dumps(mine[key])}, job has {json.dumps(theirs[key])}"
            for key in mine
            if mine[key] != theirs[key]
        ]


def check_format(recorded: object) -> None:
    """Refuse a store format other than :data:`FORMAT`, saying which releases read it."""
    if recorded == FORMAT:
        return
    readers = FORMAT_READERS.get(recorded)  # type: ignore[arg-type]
    if readers is not None:
        where = f"it can be resumed with {readers}"
    elif isinstance(recorded, int) and recorded > FORMAT:
        where = "a newer daskgauss wrote it: upgrade daskgauss to resume it"
    else:
        where = "no daskgauss release reads it"
    raise StoreFormatError(
        f"the store was written in daskgauss store format {recorded}, and this daskgauss "
        f"reads format {FORMAT} only; {where}. Its data are left intact; pass "
        "overwrite=True (--overwrite) to replace it."
    )


def is_regular(chunks: Chunks) -> bool:
    """Whether all blocks but the last on each axis have the same size, the last no larger."""
    return all(
        all(size == sizes[0] for size in sizes[:-1]) and sizes[-1] <= sizes[0] for sizes in chunks
    )


def regular_chunks(shape: tuple[int, int, int], block: tuple[int, int, int]) -> Chunks:
    """dask's chunks of ``shape`` cut into blocks of ``block`` (the last one smaller)."""
    return tuple(  # type: ignore[return-value]
        (b,) * (n // b) + ((n % b,) if n % b else ()) for n, b in zip(shape, block, strict=True)
    )
