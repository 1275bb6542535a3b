"""The regular sampling grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Grid", "checked_level"]


def _three(value: float | Sequence[float] | np.ndarray, name: str) -> tuple[float, float, float]:
    """One number or three numbers as a tuple of three floats."""
    array = np.asarray(value, dtype=object)
    if array.ndim == 0:
        array = np.array([value] * 3, dtype=object)
    if array.shape != (3,):
        raise ValueError(f"{name} must be one number or three numbers (x, y, z), got {value!r}")
    try:
        floats = tuple(float(v) for v in array)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return floats  # type: ignore[return-value]


def _shape(value: int | Sequence[int] | np.ndarray) -> tuple[int, int, int]:
    """One or three positive integers as a tuple of three ints."""
    array = np.asarray(value)
    if array.ndim == 0:
        array = np.array([value] * 3)
    if array.shape != (3,) or not all(
        isinstance(v, int | np.integer)
        or (isinstance(v, float | np.floating) and float(v).is_integer())
        for v in array.tolist()
    ):
        raise ValueError(f"shape must be one or three integers (nx, ny, nz), got {value!r}")
    shape = tuple(int(v) for v in array.tolist())
    if any(n < 1 for n in shape):
        raise ValueError(f"shape must have at least one sample on every axis, got {shape}")
    return shape  # type: ignore[return-value]


def checked_level(level: object, name: str = "level") -> int:
    """A pyramid level (or count of levels, named ``name`` in the message) as an int,
    if it is a non-negative integer."""
    if isinstance(level, bool) or not isinstance(level, int | np.integer) or level < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {level!r}")
    return int(level)


@dataclass(frozen=True)
class Grid:
    """A regular 3D grid of sample points.

    Sample ``k`` on axis ``d`` sits at ``origin[d] + k * spacing[d]``, for
    ``0 <= k < shape[d]``. Output axis ``d`` of every volume is coordinate
    column ``d`` of the centres (the ``"ij"`` meshgrid convention): axis 0 is x,
    axis 1 is y, axis 2 is z, and z varies fastest in memory.

    Parameters
    ----------
    shape : int or sequence of 3 ints
        Number of samples along x, y, z. One integer means the same on every axis.
    origin : float or sequence of 3 floats
        Coordinate of sample index 0 on each axis (coordinate units).
    spacing : float or sequence of 3 floats
        Distance between neighbouring samples on each axis (coordinate units, > 0).

    Examples
    --------
    >>> grid = Grid(shape=(4, 5, 6), origin=0.0, spacing=(1.0, 0.5, 0.25))
    >>> grid.axes[1]
    array([0. , 0.5, 1. , 1.5, 2. ])
    """

    shape: tuple[int, int, int]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", _shape(self.shape))
        object.__setattr__(self, "origin", _three(self.origin, "origin"))
        spacing = _three(self.spacing, "spacing")
        if any(h <= 0 for h in spacing):
            raise ValueError(f"spacing must be positive on every axis, got {spacing}")
        object.__setattr__(self, "spacing", spacing)

    @classmethod
    def from_bounds(
        cls,
        lower: float | Sequence[float],
        upper: float | Sequence[float],
        shape: int | Sequence[int],
    ) -> Grid:
        """A grid like ``np.linspace(lower[d], upper[d], shape[d])`` on every axis.

        Both bounds are samples. An axis with one sample sits at ``lower`` (its
        spacing is then ``upper - lower``, or 1 where the two are equal).

        Parameters
        ----------
        lower, upper : float or sequence of 3 floats
            Coordinates of the first and last sample on each axis.
        shape : int or sequence of 3 ints
            Number of samples on each axis.
        """
        low = _three(lower, "lower")
        high = _three(upper, "upper")
        counts = _shape(shape)
        spacing = []
        for d in range(3):
            if counts[d] == 1:
                spacing.append(high[d] - low[d] if high[d] > low[d] else 1.0)
            elif high[d] <= low[d]:
                raise ValueError(
                    f"upper must exceed lower on every axis with more than one sample, "
                    f"got lower={low}, upper={high}"
                )
            else:
                spacing.append((high[d] - low[d]) / (counts[d] - 1))
        return cls(shape=counts, origin=low, spacing=tuple(spacing))  # type: ignore[arg-type]

    @classmethod
    def from_box(
        cls,
        lower: float | Sequence[float],
        upper: float | Sequence[float],
        shape: int | Sequence[int],
    ) -> Grid:
        """A grid of cell-centred voxels that tile the box ``[lower, upper)``.

        This is the MRC / OME-NGFF habit, and the natural grid for ``periodic=True``:
        voxel ``k`` covers ``[lower + k h, lower + (k + 1) h)`` and its sample sits
        at its centre, ``h = (upper - lower) / shape``.
        """
        low = _three(lower, "lower")
        high = _three(upper, "upper")
        counts = _shape(shape)
        if any(high[d] <= low[d] for d in range(3)):
            raise ValueError(f"upper must exceed lower on every axis, got {low} and {high}")
        spacing = tuple((high[d] - low[d]) / counts[d] for d in range(3))
        origin = tuple(low[d] + spacing[d] / 2 for d in range(3))
        return cls(shape=counts, origin=origin, spacing=spacing)  # type: ignore[arg-type]

    @property
    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample coordinates along x, y and z: three 1D float64 arrays."""
        return tuple(  # type: ignore[return-value]
            self.origin[d] + np.arange(self.shape[d]) * self.spacing[d] for d in range(3)
        )

    def coords(self) -> dict[str, np.ndarray]:
        """The sample coordinates by axis name, ``{"x": ..., "y": ..., "z": ...}``:
        :attr:`axes` in the form xarray takes as ``coords``."""
        return dict(zip(("x", "y", "z"), self.axes, strict=True))

    def level(self, level: int) -> Grid:
        """The grid of pyramid level ``level``: each sample the mean of ``2**level`` samples
        of this grid per axis.

        Its shape is ``ceil(shape / 2**level)``, its spacing ``spacing * 2**level``, and
        its sample ``i`` sits at the centre of the level-0 samples it averages,
        ``origin + (2**level - 1) / 2 * spacing + i * spacing * 2**level`` (a box at
        the far edge averages fewer samples, but sits on the same regular lattice).
        Level 0 is this grid.
        """
        level = checked_level(level)
        if level == 0:
            return self
        factor = 2 ** int(level)
        return Grid(
            shape=tuple(-(-n // factor) for n in self.shape),  # type: ignore[arg-type]
            origin=tuple(
                o + (factor - 1) / 2 * h for o, h in zip(self.origin, self.spacing, strict=True)
            ),
            spacing=tuple(h * factor for h in self.spacing),  # type: ignore[arg-type]
        )

    def auto_levels(self, largest: int = 256) -> int:
        """How many levels above 0 a pyramid needs for its coarsest level's largest side
        to be at most ``largest`` samples (0 when this grid already is)."""
        levels = 0
        while max(-(-n // 2**levels) for n in self.shape) > largest:
            levels += 1
        return levels

    @property
    def period(self) -> tuple[float, float, float]:
        """Length of the periodic box on each axis, ``shape * spacing``."""
        return tuple(n * h for n, h in zip(self.shape, self.spacing, strict=True))  # type: ignore[return-value]

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel, the product of the spacings (coordinate units cubed)."""
        return float(np.prod(self.spacing))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description, the inverse of :meth:`from_dict`."""
        return {
            "shape": list(self.shape),
            "origin": list(self.origin),
            "spacing": list(self.spacing),
        }

    @classmethod
    def from_dict(cls, description: dict[str, Any]) -> Grid:
        """The grid that :meth:`to_dict` described."""
        return cls(
            shape=tuple(description["shape"]),  # type: ignore[arg-type]
            origin=tuple(description["origin"]),  # type: ignore[arg-type]
            spacing=tuple(description["spacing"]),  # type: ignore[arg-type]
        )
