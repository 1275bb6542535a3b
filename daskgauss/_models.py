"""Atomic models (PDB, mmCIF) as density maps: ChimeraX ``molmap`` and gemmi's tables.

gemmi reads the model (PDB or mmCIF, gzipped or not) and supplies the scattering
tables (``Element.it92`` for X-rays, ``Element.c4322`` for electrons); every atom
becomes a few Gaussians, and the map is the one core, ``gaussian_sum`` with
``normalize="density"``. No table is typed here.
"""

from __future__ import annotations

import math
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import dask.array as da
import gemmi
import numpy as np
from numpy.typing import DTypeLike

from ._gaussians import checked_tol
from ._grid import Grid, _shape, _three

__all__ = ["ModelGaussians", "cell_grid", "model_gaussians", "model_grid", "model_map"]

#: The map kinds :func:`model_map` makes.
MODES: tuple[str, ...] = ("molmap", "xray", "electron")

#: B = 8 pi^2 U: a table term of width b (Å²) is a Gaussian of variance b / (8 pi^2) per axis.
_U_TO_B = 8.0 * math.pi**2

#: How far from 90 degrees a cell angle may be and still count as orthogonal.
_ANGLE_TOLERANCE = 1e-6

#: What ``model`` may be.
ModelSource = str | os.PathLike | gemmi.Structure


@dataclass(frozen=True, eq=False)
class _Atoms:
    """The atoms of one model, one row each, in file order (the filters applied).

    Attributes
    ----------
    positions : ndarray, shape (N, 3), float64
        Cartesian coordinates (Å).
    occupancy, b_iso : ndarray, shape (N,), float64
        Occupancy and isotropic B (Å²) as the file gives them.
    atomic_number : ndarray, shape (N,), int64
        gemmi's element of each atom; 0 where gemmi does not know it.
    aniso : ndarray, shape (N, 6), float64
        ``u11, u22, u33, u12, u13, u23`` (Å², Cartesian), zero rows for atoms without
        ANISOU.
    has_aniso : ndarray, shape (N,), bool
        The atoms whose ANISOU gemmi uses (any of its six entries non-zero).
    index : ndarray, shape (N,), int64
        Position of each atom among all atoms of the model (before the filters), to
        name it in messages.
    """

    positions: np.ndarray
    occupancy: np.ndarray
    b_iso: np.ndarray
    atomic_number: np.ndarray
    aniso: np.ndarray
    has_aniso: np.ndarray
    index: np.ndarray


def _structure(model: ModelSource) -> tuple[gemmi.Structure, str]:
    """The structure ``model`` names, and how to name it in messages."""
    if isinstance(model, gemmi.Structure):
        name = f"structure {model.name!r}" if model.name else "the gemmi.Structure"
        return model, name
    if isinstance(model, bytes):
        model = os.fsdecode(model)
    if not isinstance(model, str | os.PathLike):
        raise TypeError(
            "model must be a path to a PDB or mmCIF file (gzipped or not) or a "
            f"gemmi.Structure, got {type(model).__name__}"
        )
    path = os.fspath(model)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a PDB or mmCIF file")
    try:
        structure = gemmi.read_structure(path)
    except (RuntimeError, ValueError, OSError) as error:
        reason = " ".join(str(error).split())
        raise ValueError(
            f"{path}: not a PDB or mmCIF structure that gemmi reads ({reason})"
        ) from None
    return structure, path


def _first_model(structure: gemmi.Structure, name: str) -> gemmi.Model:
    if len(structure) == 0:
        raise ValueError(f"{name}: no models, so no atoms")
    return structure[0]


def _read_atoms(model: gemmi.Model, *, hydrogens: bool, waters: bool) -> _Atoms:
    """Every atom of ``model`` as arrays: one pass over the atoms (about 1-2 µs each),
    collected in flat ``array('d')`` buffers (8 bytes a value, not a Python float each)."""
    values = array("d")  # x, y, z, occupancy, B, atomic number, water: 7 per atom
    anisou = array("d")  # atom number, u11, u22, u33, u12, u13, u23: 7 per atom with ANISOU
    add, add_anisou = values.extend, anisou.extend
    number = 0
    for chain in model:
        for residue in chain:
            water = residue.is_water()
            for atom in residue:
                add((*atom.pos.tolist(), atom.occ, atom.b_iso, atom.element.atomic_number, water))
                u = atom.aniso
                if u.nonzero():
                    add_anisou((number, *u.elements_pdb()))
                number += 1
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, 7)
    count = table.shape[0]
    tensors = np.zeros((count, 6))
    has_aniso = np.zeros(count, bool)
    if anisou:
        entries = np.frombuffer(anisou, dtype=np.float64).reshape(-1, 7)
        which = entries[:, 0].astype(np.int64)
        tensors[which] = entries[:, 1:]
        has_aniso[which] = True
    atomic_number = table[:, 5].astype(np.int64)
    keep = np.ones(count, bool)
    if not hydrogens:
        keep &= atomic_number != 1  # H and D
    if not waters:
        keep &= table[:, 6] == 0
    index = np.flatnonzero(keep)
    return _Atoms(
        positions=np.ascontiguousarray(table[keep, :3]),
        occupancy=table[keep, 3],
        b_iso=table[keep, 4],
        atomic_number=atomic_number[keep],
        aniso=tensors[keep],
        has_aniso=has_aniso[keep],
        index=index,
    )


def _describe(model: gemmi.Model, index: int) -> str:
    """Atom number ``index`` (0-based, all atoms of the model) as a reader finds it."""
    for n, cra in enumerate(model.all()):
        if n == index:
            atom, residue = cra.atom, cra.residue
            altloc = f" altloc {atom.altloc}" if atom.altloc != "\0" else ""
            return (
                f"atom {atom.name!r}{altloc} of residue {residue.name} {residue.seqid} "
                f"in chain {cra.chain.name!r} (element {atom.element.name!r})"
            )
    return f"atom {index}"  # pragma: no cover - indices come from the same model


def _positive(value: object, name: str) -> float:
    """A finite number > 0, validated."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return number


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def model_grid(
    model: ModelSource,
    *,
    resolution: float | None = None,
    spacing: float | Sequence[float] | None = None,
    padding: float | Sequence[float] | None = None,
) -> Grid:
    """The grid ChimeraX ``molmap`` puts a model's map on.

    Per axis: step ``resolution / 3``, padding ``3 * resolution``, origin the atoms'
    smallest coordinate minus the padding, and ``ceil((extent + 2 * padding) / step)``
    samples (at least 1), ``extent`` the atoms' largest minus smallest coordinate.

    Parameters
    ----------
    model : path or gemmi.Structure
        A PDB or mmCIF file (gzipped or not), or a structure gemmi has read. All atoms
        of the first model count (hydrogens and waters too).
    resolution : float, optional
        Map resolution (Å, > 0): sets the step and the padding not given.
    spacing : float or sequence of 3 floats, optional
        Sample spacing (Å, > 0) on every axis or per axis, instead of
        ``resolution / 3``.
    padding : float or sequence of 3 floats, optional
        Margin beyond the atoms on each side (Å, >= 0), instead of ``3 * resolution``.

    Returns
    -------
    Grid
        Origin ``min - padding``, ``spacing`` as asked, enough samples to reach
        ``max + padding`` (the last sample may fall short of it by less than a step,
        as in ChimeraX).

    Raises
    ------
    ValueError
        Without ``resolution`` and without ``spacing`` (or ``padding``); for a
        resolution, spacing or padding that is not finite and positive; for a file
        that is not a structure, or one without atoms.
    FileNotFoundError
        For a path that does not exist.

    Examples
    --------
    >>> import gemmi
    >>> st = gemmi.Structure()
    >>> _ = st.add_model(gemmi.Model("1"))
    >>> _ = st[0].add_chain(gemmi.Chain("A"))
    >>> residue = gemmi.Residue()
    >>> for x in (0.0, 10.0):
    ...     atom = gemmi.Atom()
    ...     atom.pos = gemmi.Position(x, 0.0, 0.0)
    ...     _ = residue.add_atom(atom)
    >>> _ = st[0][0].add_residue(residue)
    >>> grid = model_grid(st, resolution=3.0)
    >>> grid.spacing, grid.origin, grid.shape  # step 1, padding 9: (10 + 18) / 1, 18 / 1
    ((1.0, 1.0, 1.0), (-9.0, -9.0, -9.0), (28, 18, 18))
    """
    if resolution is not None:
        resolution = _positive(resolution, "resolution")
    if spacing is None and resolution is None:
        raise ValueError("model_grid needs resolution (step resolution / 3) or spacing")
    if padding is None and resolution is None:
        raise ValueError("model_grid needs resolution (padding 3 * resolution) or padding")
    step = np.array(_three(spacing if spacing is not None else resolution / 3, "spacing"))  # type: ignore[operator]
    if np.any(step <= 0):
        raise ValueError(f"spacing must be > 0 on every axis, got {spacing!r}")
    margin = np.array(_three(padding if padding is not None else 3 * resolution, "padding"))  # type: ignore[operator]
    if np.any(margin < 0):
        raise ValueError(f"padding must be >= 0 on every axis, got {padding!r}")
    structure, name = _structure(model)
    first = _first_model(structure, name)
    # The box of the first model alone, computed by gemmi (C++) on a copy of it.
    alone = gemmi.Structure()
    alone.add_model(first)
    if alone[0].count_atom_sites() == 0:
        raise ValueError(f"{name}: the first model has no atoms")
    box = alone.calculate_box()
    lower = np.array(box.minimum.tolist())
    extent = np.array(box.maximum.tolist()) - lower
    counts = np.maximum(np.ceil((extent + 2 * margin) / step), 1).astype(np.int64)
    return Grid(
        shape=tuple(int(n) for n in counts),  # type: ignore[arg-type]
        origin=tuple(float(v) for v in lower - margin),  # type: ignore[arg-type]
        spacing=tuple(float(v) for v in step),  # type: ignore[arg-type]
    )


def cell_grid(
    model: ModelSource,
    *,
    spacing: float | Sequence[float] | None = None,
    shape: int | Sequence[int] | None = None,
) -> Grid:
    """The grid of a crystal's orthogonal unit cell, for ``model_map(..., periodic=True)``.

    Sample ``k`` on axis ``d`` sits at ``k * L_d / n_d`` (fractional ``k / n_d``), for
    ``0 <= k < n_d``, ``L = (a, b, c)``: the samples of gemmi's and CCP4's maps of
    the cell, and a periodic box of exactly the cell.

    Parameters
    ----------
    model : path or gemmi.Structure
        A PDB or mmCIF file (gzipped or not) with a unit cell (CRYST1 or ``_cell``),
        or a structure gemmi has read. The cell must be orthogonal (all angles 90°)
        with its axes along x, y and z.
    spacing : float or sequence of 3 floats, optional
        Largest sample spacing wanted (Å, > 0): ``n_d = ceil(L_d / spacing_d)``.
    shape : int or sequence of 3 ints, optional
        Number of samples along a, b, c instead. Give exactly one of the two.

    Returns
    -------
    Grid
        Origin 0, spacing ``L / n``, shape ``n``.

    Raises
    ------
    ValueError
        Without a cell, for a cell that is not orthogonal (or not aligned with x, y,
        z), or unless exactly one of ``spacing`` and ``shape`` is given.

    Notes
    -----
    :func:`model_map` renders the atoms the model holds, nothing more: for a space
    group other than P 1 expand the model to the whole cell first.
    """
    if (spacing is None) == (shape is None):
        raise ValueError("cell_grid needs exactly one of spacing and shape")
    structure, name = _structure(model)
    cell = structure.cell
    if not cell.is_crystal():
        raise ValueError(f"{name}: no unit cell (CRYST1 record or _cell category)")
    lengths = np.array([cell.a, cell.b, cell.c])
    angles = np.array([cell.alpha, cell.beta, cell.gamma])
    if np.any(np.abs(angles - 90.0) > _ANGLE_TOLERANCE):
        raise ValueError(
            f"{name}: the unit cell is not orthogonal (angles {tuple(angles.tolist())} "
            f"degrees); cell_grid and periodic maps need alpha = beta = gamma = 90"
        )
    orth = np.array(cell.orth.mat.tolist())
    shift = np.array(cell.orth.vec.tolist())
    if not (np.allclose(orth, np.diag(lengths), rtol=0, atol=1e-9 * lengths.max())
            and np.allclose(shift, 0.0, rtol=0, atol=1e-9 * lengths.max())):  # fmt: skip
        raise ValueError(
            f"{name}: the cell axes are not along x, y and z (SCALE records say "
            "otherwise); cell_grid needs a cell aligned with the coordinate axes"
        )
    if spacing is not None:
        step = np.array(_three(spacing, "spacing"))
        if np.any(step <= 0):
            raise ValueError(f"spacing must be > 0 on every axis, got {spacing!r}")
        counts = tuple(int(max(1, math.ceil(float(n)))) for n in lengths / step)
    else:
        counts = _shape(shape)  # type: ignore[arg-type]
    return Grid(
        shape=counts,  # type: ignore[arg-type]
        origin=(0.0, 0.0, 0.0),
        spacing=tuple(float(L / n) for L, n in zip(lengths, counts, strict=True)),  # type: ignore[arg-type]
    )


def _table(mode: str, atomic_number: int) -> tuple[list[float], list[float]] | None:
    """The (a, b) coefficients of one element: IT92 with its constant as a term of
    b = 0 (xray), or C4322's five Gaussians (electron); None without a table.

    gemmi's ``a``, ``b`` and ``c`` give the published decimals as float64;
    ``get_coefs()`` gives the float32 copies its DensityCalculator computes with
    (1e-8 apart, relative).
    """
    element = gemmi.Element(int(atomic_number))
    if mode == "xray":
        coef = element.it92
        if coef is None:
            return None
        return [*coef.a, coef.c], [*coef.b, 0.0]
    coef = element.c4322
    if coef is None:
        return None
    return list(coef.a), list(coef.b)


def _bad_atom(model: gemmi.Model, atoms: _Atoms, row: int, name: str, problem: str) -> ValueError:
    return ValueError(f"{name}: {_describe(model, int(atoms.index[row]))} {problem}")


def model_map(
    model: ModelSource,
    grid: Grid,
    *,
    mode: str = "molmap",
    resolution: float | None = None,
    blur: float = 0.0,
    hydrogens: bool = True,
    waters: bool = True,
    periodic: bool = False,
    tol: float = 1e-6,
    chunks: object = None,
    dtype: DTypeLike = "float32",
) -> da.Array:
    r"""The density map of an atomic model on a grid, as a lazy dask array.

    Every atom of the first model counts (alternate conformations each with their
    occupancy); each becomes one Gaussian (``"molmap"``) or one per table term
    (``"xray"``, ``"electron"``), and the map is their sum through
    :func:`gaussian_sum` with ``normalize="density"``.

    Parameters
    ----------
    model : path or gemmi.Structure
        A PDB or mmCIF file (gzipped or not; gemmi reads it), or a structure gemmi has
        read. Coordinates in Å.
    grid : Grid
        Where to sample (Å): :func:`model_grid` for molmap's grid, :func:`cell_grid`
        for a crystal's unit cell.
    mode : {"molmap", "xray", "electron"}
        ``"molmap"``: ChimeraX's ``molmap``, one Gaussian per atom of standard
        deviation ``resolution / (pi sqrt 2)`` and integral ``Z * occupancy`` (Z the
        atomic number); ANISOU and B are not used. ``"xray"``: the electron density
        (electrons / Å³) from gemmi's International Tables 1992 coefficients
        (``Element.it92``: four Gaussians and a constant); ``"electron"``: the
        electrostatic potential from gemmi's ``Element.c4322`` (five Gaussians), in
        Å⁻² as gemmi's ``DensityCalculatorE`` gives it (coefficients in Å per Å³;
        times ``h^2 / (2 pi m_e e)`` = 47.88 V Å² for volts), both smeared by each
        atom's B or ANISOU.
    resolution : float, optional
        Map resolution (Å, > 0). Required for ``"molmap"``; not used otherwise.
    blur : float
        Extra B (Å²) added to every atom in ``"xray"`` and ``"electron"`` modes, as
        gemmi's ``DensityCalculator.blur``; must be 0 with ``"molmap"``.
    hydrogens : bool
        False drops hydrogen and deuterium atoms.
    waters : bool
        False drops water residues (gemmi's ``Residue.is_water()``: HOH, WAT, DOD,
        H2O ...).
    periodic : bool
        Treat the grid as one tile of a periodic box (a crystal's unit cell from
        :func:`cell_grid`): atoms are first wrapped into the box, then each Gaussian
        wraps around its edges, as in :func:`gaussian_sum`.
    tol : float in (0, 1)
        Each Gaussian is cut where it falls below ``tol`` times its peak.
    chunks : optional
        Output block shape, as in :func:`gaussian_sum`.
    dtype : {"float32", "float64"}
        Output dtype.

    Returns
    -------
    dask.array.Array
        Shape ``grid.shape``: atomic number / Å³ (``"molmap"``), electrons / Å³
        (``"xray"``), or the potential in Å⁻² (``"electron"``).

    Raises
    ------
    FileNotFoundError
        For a path that does not exist.
    ValueError
        Naming the file (or structure) and the problem, before any map work: a file
        gemmi cannot read as a structure; no atoms (after the hydrogen and water
        filters); an element gemmi does not know (``X``) or has no table for; an atom
        whose Gaussian would not be positive definite (B + blur <= 0 for the X-ray
        constant term, an ANISOU tensor that is not positive definite); an unknown
        mode; molmap without resolution or with blur.

    Notes
    -----
    Term ``j`` of an atom of occupancy ``q``, position ``p`` and isotropic ``B``
    (table coefficients ``a_j``, ``b_j``; the IT92 constant ``c`` is a term with
    ``b = 0``) is

    .. math::

        q\, a_j \left(\frac{4\pi}{b_j + B + \text{blur}}\right)^{3/2}
        \exp\left(-\frac{4\pi^2 |x - p|^2}{b_j + B + \text{blur}}\right),

    a density-normalised Gaussian of weight ``q a_j`` and variance
    ``(b_j + B + blur) / (8 pi^2)`` per axis: gemmi's ``DensityCalculator``. With
    ANISOU (Cartesian ``U`` in Å², as PDB and mmCIF store it and gemmi holds it in
    ``Atom.aniso``) the covariance is ``U + (b_j + blur) / (8 pi^2) I`` and ``B`` is
    not used. When any atom has ANISOU every term is passed as a covariance
    (isotropic atoms as diagonal ones). Against gemmi's map of the same model on the
    same grid the differences are gemmi's float32 arithmetic and both cut-offs
    (gemmi's absolute ``cutoff``, 1e-5 by default; ``tol`` here).

    molmap follows ChimeraX: ``sigma = resolution / (pi sqrt 2)`` and weight
    ``Z * occupancy``, each Gaussian integrating to its weight.
    """
    from ._lazy import gaussian_sum

    tol = checked_tol(tol)
    gaussians = model_gaussians(model, grid, mode=mode, resolution=resolution, blur=blur,
                                hydrogens=hydrogens, waters=waters, periodic=periodic)  # fmt: skip
    return gaussian_sum(gaussians.centres, gaussians.sigma, grid,
                        covariance=gaussians.covariance, weights=gaussians.weights,
                        normalize="density", tol=tol, periodic=periodic, chunks=chunks,
                        dtype=dtype)  # fmt: skip


@dataclass(frozen=True, eq=False)
class ModelGaussians:
    """The Gaussians of an atomic model's map (what :func:`model_map` sums, density
    normalised).

    Attributes
    ----------
    centres : ndarray, shape (M, 3)
        Å; wrapped into the grid's periodic box where asked.
    sigma : float or ndarray, shape (M,), or None
        Å; None when ``covariance`` is given.
    covariance : ndarray, shape (M, 3, 3), or None
        Å², when any atom has ANISOU.
    weights : ndarray, shape (M,)
    source : str
        The file (or structure) read, for messages and the store's run log.
    """

    centres: np.ndarray
    sigma: float | np.ndarray | None
    covariance: np.ndarray | None
    weights: np.ndarray
    source: str


def model_gaussians(
    model: ModelSource,
    grid: Grid,
    *,
    mode: str = "molmap",
    resolution: float | None = None,
    blur: float = 0.0,
    hydrogens: bool = True,
    waters: bool = True,
    periodic: bool = False,
) -> ModelGaussians:
    """Read and check ``model`` and turn it into the Gaussians of its map; arguments and
    errors as for :func:`model_map` (which sums them)."""
    if not isinstance(grid, Grid):
        raise TypeError(
            f"grid must be a daskgauss.Grid (e.g. model_grid(model, resolution=...)), "
            f"got {type(grid).__name__}"
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if mode == "molmap":
        if resolution is None:
            raise ValueError("mode='molmap' needs resolution (Å): sigma = resolution / (pi sqrt 2)")
        resolution = _positive(resolution, "resolution")
    if isinstance(blur, bool | np.bool_) or not isinstance(blur, int | float | np.number):
        raise ValueError(f"blur must be a number of Å², got {blur!r}")
    blur = float(blur)
    if not math.isfinite(blur):
        raise ValueError(f"blur must be finite, got {blur!r}")
    if mode == "molmap" and blur != 0:
        raise ValueError("blur applies to mode='xray' and 'electron'; molmap's width is resolution")
    hydrogens = _flag(hydrogens, "hydrogens")
    waters = _flag(waters, "waters")
    periodic = _flag(periodic, "periodic")

    structure, name = _structure(model)
    first = _first_model(structure, name)
    atoms = _read_atoms(first, hydrogens=hydrogens, waters=waters)
    if atoms.positions.shape[0] == 0:
        dropped = [w for w, kept in (("hydrogens", hydrogens), ("waters", waters)) if not kept]
        after = f" after dropping {' and '.join(dropped)}" if dropped else ""
        raise ValueError(f"{name}: the first model has no atoms{after}")
    bad = ~(np.isfinite(atoms.positions).all(axis=1) & np.isfinite(atoms.occupancy))
    if bad.any():
        row = int(np.argmax(bad))
        raise _bad_atom(first, atoms, row, name, "has a coordinate or occupancy that is not finite")
    unknown = atoms.atomic_number == 0
    if unknown.any():
        row = int(np.argmax(unknown))
        raise _bad_atom(first, atoms, row, name,
                        "has an element gemmi does not know; fix its element column")  # fmt: skip

    positions = atoms.positions
    if periodic:
        origin, period = np.array(grid.origin), np.array(grid.period)
        positions = origin + np.mod(positions - origin, period)

    if mode == "molmap":
        sigma = resolution / (math.pi * math.sqrt(2.0))  # type: ignore[operator]
        weights = atoms.atomic_number * atoms.occupancy
        return ModelGaussians(positions, sigma, None, weights, name)

    # The elements present and each atom's row among them (a lookup, not a sort).
    elements = np.flatnonzero(np.bincount(atoms.atomic_number))
    lookup = np.zeros(int(elements[-1]) + 1, np.int64)
    lookup[elements] = np.arange(elements.size)
    kind = lookup[atoms.atomic_number]
    a_rows, b_rows = [], []
    for z in elements:
        coefficients = _table(mode, int(z))
        if coefficients is None:
            row = int(np.argmax(atoms.atomic_number == z))
            table = "IT92 (X-ray)" if mode == "xray" else "C4322 (electron)"
            raise _bad_atom(first, atoms, row, name,
                            f"has an element without gemmi's {table} scattering table")  # fmt: skip
        a_rows.append(coefficients[0])
        b_rows.append(coefficients[1])
    a = np.array(a_rows, dtype=np.float64)[kind]  # (N, T)
    b = np.array(b_rows, dtype=np.float64)[kind]
    terms = a.shape[1]
    weights = (a * atoms.occupancy[:, None]).ravel()
    centres = np.repeat(positions, terms, axis=0)

    iso = ~atoms.has_aniso
    b_total = b + atoms.b_iso[:, None] + blur  # (N, T), Å²; unused rows with ANISOU
    not_positive = iso[:, None] & ~(b_total > 0)
    if not_positive.any():
        row, term = np.unravel_index(int(np.argmax(not_positive)), not_positive.shape)
        raise _bad_atom(
            first, atoms, int(row), name,
            f"has B = {atoms.b_iso[row]:g} Å², so with blur = {blur:g} table term {term} "
            f"(b = {b[row, term]:g}) has width b + B + blur = {b_total[row, term]:g} <= 0; "
            "pass a blur that makes it positive")  # fmt: skip
    variance = b_total / _U_TO_B
    if not atoms.has_aniso.any():
        return ModelGaussians(centres, np.sqrt(variance).ravel(), None, weights, name)

    # u11, u22, u33, u12, u13, u23 as symmetric (N, 3, 3) matrices.
    tensor = atoms.aniso[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(-1, 3, 3)
    smallest = np.linalg.eigvalsh(tensor[atoms.has_aniso])[:, 0]
    narrowest_term = (b[atoms.has_aniso].min(axis=1) + blur) / _U_TO_B
    not_positive = ~(smallest + narrowest_term > 0)
    if not_positive.any():
        row = int(np.flatnonzero(atoms.has_aniso)[np.argmax(not_positive)])
        raise _bad_atom(
            first, atoms, row, name,
            "has an ANISOU tensor that is not positive definite (smallest eigenvalue "
            f"{smallest[np.argmax(not_positive)]:g} Å²) even with blur = {blur:g}; "
            "fix it or pass a larger blur")  # fmt: skip
    # Isotropic atoms have zero tensors here, so their covariances are diagonal with
    # exactly the variances the sigma path would use.
    covariance = np.zeros((a.shape[0], terms, 3, 3))
    covariance[...] = tensor[:, None, :, :]
    extra = np.where(iso[:, None], variance, (b + blur) / _U_TO_B)
    diagonal = np.arange(3)
    covariance[:, :, diagonal, diagonal] += extra[:, :, None]
    return ModelGaussians(centres, None, covariance.reshape(-1, 3, 3), weights, name)
