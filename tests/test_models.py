"""daskgauss._models against gemmi's DensityCalculator and the molmap formula; files, filters,
grids and errors.

Structures are built with gemmi in the tests (no network, no stored entries): a few atoms of
several elements in an orthorhombic P 1 cell, some with ANISOU, some outside the cell.
"""

from __future__ import annotations

import gzip
import math
import shutil

import gemmi
import numpy as np
import pytest

import daskgauss as dg
from daskgauss._models import cell_grid, model_grid, model_map

CELL = (20.0, 22.0, 24.0)
ELEMENTS = ("C", "N", "O", "S", "H", "Fe", "P", "D")


def _atom(name: str, element: str, pos, *, b: float = 20.0, occ: float = 1.0,
          aniso=None, altloc: str = "\0") -> gemmi.Atom:  # fmt: skip
    atom = gemmi.Atom()
    atom.name = name
    atom.element = gemmi.Element(element)
    atom.pos = gemmi.Position(*(float(v) for v in pos))
    atom.b_iso = b
    atom.occ = occ
    atom.altloc = altloc
    if aniso is not None:
        u = np.asarray(aniso, dtype=np.float64)
        atom.aniso = gemmi.SMat33f(u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2])
    return atom


def _structure(residues: list[tuple[str, list[gemmi.Atom]]], cell=CELL) -> gemmi.Structure:
    """A one-model, one-chain P 1 structure; ``residues`` are (name, atoms)."""
    st = gemmi.Structure()
    st.name = "test"
    if cell is not None:
        st.cell = gemmi.UnitCell(*cell, 90, 90, 90)
        st.spacegroup_hm = "P 1"
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for number, (name, atoms) in enumerate(residues, start=1):
        residue = gemmi.Residue()
        residue.name = name
        residue.seqid = gemmi.SeqId(number, " ")
        for atom in atoms:
            residue.add_atom(atom)
        chain.add_residue(residue)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st


def _random_structure(rng: np.random.Generator, count: int = 14, *, aniso: bool = False,
                      rounded: bool = False) -> gemmi.Structure:  # fmt: skip
    """``count`` atoms of mixed elements, B, occupancy, half with ANISOU if asked; some
    outside the cell. ``rounded`` keeps every value exact at PDB precision."""
    residues = []
    for i in range(count):
        element = ELEMENTS[i % len(ELEMENTS)]
        pos = rng.uniform(-4, 28, 3)
        b, occ = float(rng.uniform(5, 40)), float(rng.uniform(0.3, 1.0))
        u = None
        if aniso and i % 2 == 0:
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            u = q @ np.diag(rng.uniform(0.05, 0.3, 3)) @ q.T
        if rounded:
            pos, b, occ = np.round(pos, 3), round(b, 2), round(occ, 2)
            u = None if u is None else np.round(u, 4)
        atom = _atom(f"{element}{i}"[:4], element, pos, b=b, occ=occ, aniso=u)
        residues.append(("ALA", [atom]))
    return _structure(residues)


def _gemmi_map(st: gemmi.Structure, mode: str, blur: float) -> np.ndarray:
    calculator = gemmi.DensityCalculatorX() if mode == "xray" else gemmi.DensityCalculatorE()
    calculator.d_min = 1.25
    calculator.rate = 1.5
    calculator.blur = blur
    calculator.cutoff = 1e-9  # absolute (e/Å³); gemmi's default 1e-5 would dominate
    calculator.set_grid_cell_and_spacegroup(st)
    calculator.put_model_density_on_grid(st[0])
    return np.array(calculator.grid, copy=True).astype(np.float64)


# gemmi computes and stores in float32 (measured 3-4e-6 of the peak against float64 here); the
# two cut-offs (gemmi's 1e-9 e/Å³, tol = 1e-9 of each Gaussian's peak) are far below that.
GEMMI_AGREEMENT = 1e-5


@pytest.mark.parametrize("aniso", [False, True], ids=["isotropic", "anisou"])
@pytest.mark.parametrize("mode", ["xray", "electron"])
def test_matches_gemmi_density_calculator(rng, mode, aniso):
    st = _random_structure(rng, aniso=aniso)
    assert any(cra.atom.aniso.nonzero() for cra in st[0].all()) == aniso
    blur = 8.0
    expected = _gemmi_map(st, mode, blur)
    # gemmi's grid: (nu, nv, nw) = (x, y, z) for this cell, sample i at fractional i / n.
    grid = cell_grid(st, shape=expected.shape)
    assert grid.origin == (0.0, 0.0, 0.0)
    assert grid.spacing == pytest.approx(np.array(CELL) / np.array(expected.shape), rel=1e-15)
    ours = model_map(st, grid, mode=mode, blur=blur, periodic=True, tol=1e-9, dtype="float64")
    ours = ours.compute()
    peak = expected.max()
    assert np.abs(ours - expected).max() <= GEMMI_AGREEMENT * peak
    assert np.abs(ours - expected).max() > 0  # two computations, not one


def test_isotropic_atoms_give_the_same_bits_on_the_covariance_path(rng):
    """One atom with ANISOU sends every term through covariances; the isotropic atoms then
    become diagonal covariances of exactly the variances of the sigma path."""
    st = _random_structure(rng, count=10)
    grid = cell_grid(st, spacing=0.5)
    with_anisou = st.clone()
    tensor = np.diag([0.1, 0.2, 0.3]) + 0.01
    _ = with_anisou[0][0][0].add_atom(_atom("Z", "C", (10, 10, 10), occ=0.0, aniso=tensor))
    for mode in ("xray", "electron"):
        np.testing.assert_array_equal(
            model_map(with_anisou, grid, mode=mode, periodic=True).compute(),
            model_map(st, grid, mode=mode, periodic=True).compute(),
        )


def test_xray_map_integrates_to_the_electrons(rng):
    """In a periodic cell every term integrates to its weight: the map sums to sum(Z occ)
    (the IT92 coefficients sum to Z within about 0.3 %)."""
    st = _random_structure(rng, count=8)
    grid = cell_grid(st, spacing=0.4)
    volume = model_map(st, grid, mode="xray", blur=10.0, periodic=True, tol=1e-10,
                       dtype="float64").compute()  # fmt: skip
    electrons = sum(cra.atom.element.atomic_number * cra.atom.occ for cra in st[0].all())
    tables = sum((sum(cra.atom.element.it92.a) + cra.atom.element.it92.c) * cra.atom.occ
                 for cra in st[0].all())  # fmt: skip
    assert volume.sum() * grid.voxel_volume == pytest.approx(tables, rel=1e-9)
    assert tables == pytest.approx(electrons, rel=5e-3)


def _molmap_reference(st: gemmi.Structure, grid: dg.Grid, resolution: float) -> np.ndarray:
    sigma = resolution / (math.pi * math.sqrt(2.0))
    x, y, z = np.meshgrid(*grid.axes, indexing="ij")
    total = np.zeros(grid.shape)
    for cra in st[0].all():
        p = cra.atom.pos
        r2 = (x - p.x) ** 2 + (y - p.y) ** 2 + (z - p.z) ** 2
        weight = cra.atom.element.atomic_number * cra.atom.occ
        total += weight * (2 * math.pi * sigma**2) ** -1.5 * np.exp(-r2 / (2 * sigma**2))
    return total


def test_molmap_matches_the_formula(rng):
    st = _random_structure(rng, count=12, aniso=True)  # ANISOU and B play no part
    resolution = 4.0
    grid = model_grid(st, resolution=resolution)
    ours = model_map(st, grid, resolution=resolution, tol=1e-12, dtype="float64").compute()
    expected = _molmap_reference(st, grid, resolution)
    assert np.abs(ours - expected).max() <= 1e-10 * expected.max()


def test_model_grid_is_molmaps_rule(rng):
    st = _random_structure(rng, count=10)
    _ = st[0][0][0].add_atom(_atom("O", "O", (1.0, 2.0, 3.0)))
    positions = np.array([cra.atom.pos.tolist() for cra in st[0].all()])
    lower, upper = positions.min(axis=0), positions.max(axis=0)
    for resolution in (2.0, 3.7, 6.0):
        grid = model_grid(st, resolution=resolution)
        step, pad = resolution / 3, 3 * resolution
        assert grid.spacing == (step,) * 3
        assert grid.origin == tuple((lower - pad).tolist())
        assert grid.shape == tuple(int(n) for n in np.ceil((upper - lower + 2 * pad) / step))
        # The last sample reaches to within a step of max + padding.
        last = np.array(grid.origin) + (np.array(grid.shape) - 1) * step
        assert np.all(last > upper + pad - step - 1e-9)
    # Overrides: spacing alone, padding alone, both without resolution, per-axis spacing.
    grid = model_grid(st, resolution=3.0, spacing=0.5)
    assert grid.spacing == (0.5,) * 3
    assert grid.origin == tuple((lower - 9.0).tolist())
    assert grid.shape == tuple(int(n) for n in np.ceil((upper - lower + 18.0) / 0.5))
    grid = model_grid(st, resolution=3.0, padding=2.0)
    assert grid.spacing == (1.0,) * 3
    assert grid.origin == tuple((lower - 2.0).tolist())
    grid = model_grid(st, spacing=(0.5, 1.0, 2.0), padding=0.0)
    assert grid.origin == tuple(lower.tolist())
    assert grid.shape == tuple(int(n) for n in np.ceil((upper - lower) / (0.5, 1.0, 2.0)))


def test_model_grid_uses_only_the_first_model(rng):
    st = _random_structure(rng, count=5)
    one = st.clone()
    second = st[0].clone()
    second.num = 2
    for cra in second.all():
        cra.atom.pos = gemmi.Position(100.0, 100.0, 100.0)
    st.add_model(second)
    assert model_grid(st, resolution=3.0) == model_grid(one, resolution=3.0)


def test_one_atom_grid_has_at_least_one_sample():
    st = _structure([("ALA", [_atom("C", "C", (1, 2, 3))])])
    grid = model_grid(st, spacing=1.0, padding=0.0)
    assert grid.shape == (1, 1, 1)
    assert grid.origin == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("aniso", [False, True], ids=["isotropic", "anisou"])
def test_files_give_the_same_map_as_the_structure(rng, tmp_path, aniso):
    st = _random_structure(rng, count=10, aniso=aniso, rounded=True)
    pdb = tmp_path / "model.pdb"
    cif = tmp_path / "model.cif"
    st.write_pdb(str(pdb))
    st.make_mmcif_document().write_file(str(cif))
    paths = [pdb, cif]
    for path in (pdb, cif):
        zipped = path.with_name(path.name + ".gz")
        with open(path, "rb") as source, gzip.open(zipped, "wb") as target:
            shutil.copyfileobj(source, target)
        paths.append(zipped)
    grid = cell_grid(st, spacing=0.7)
    for mode, options in (("xray", {}), ("electron", {}), ("molmap", {"resolution": 3.0})):
        expected = model_map(st, grid, mode=mode, periodic=True, **options).compute()
        for path in paths:
            assert cell_grid(path, spacing=0.7) == grid
            for given in (path, str(path)):
                ours = model_map(given, grid, mode=mode, periodic=True, **options).compute()
                if aniso and mode != "molmap" and ".pdb" in path.name:
                    # gemmi reads ANISOU as an integer times 1e-4 in float32: one ulp (of
                    # float32) from the float32 of the decimal the structure holds.
                    difference = np.abs(ours - expected).max()
                    assert difference <= 1e-6 * expected.max(), f"{mode} {path.name}"
                else:
                    np.testing.assert_array_equal(ours, expected, err_msg=f"{mode} {path.name}")
    assert model_grid(pdb, resolution=3.0) == model_grid(st, resolution=3.0)


def test_alternate_conformations_count_with_their_occupancy():
    p, q = (5.0, 6.0, 7.0), (6.5, 6.0, 7.5)
    alternates = _structure([("SER", [_atom("OG", "O", p, occ=0.625, altloc="A"),
                                      _atom("OG", "O", q, occ=0.375, altloc="B"),
                                      _atom("CB", "C", (4, 5, 6))])])  # fmt: skip
    plain = _structure([("SER", [_atom("OG", "O", p, occ=0.625), _atom("OG", "O", q, occ=0.375),
                                 _atom("CB", "C", (4, 5, 6))])])  # fmt: skip
    only_a = _structure([("SER", [_atom("OG", "O", p), _atom("CB", "C", (4, 5, 6))])])
    only_b = _structure([("SER", [_atom("OG", "O", q), _atom("CB", "C", (4, 5, 6))])])
    grid = cell_grid(plain, spacing=0.5)
    for mode, options in (("xray", {}), ("molmap", {"resolution": 2.5})):
        maps = [model_map(st, grid, mode=mode, periodic=True, dtype="float64", **options).compute()
                for st in (alternates, plain, only_a, only_b)]  # fmt: skip
        np.testing.assert_array_equal(maps[0], maps[1])
        np.testing.assert_allclose(maps[0], 0.625 * maps[2] + 0.375 * maps[3], rtol=0,
                                   atol=1e-12 * maps[0].max())  # fmt: skip


def test_hydrogen_and_water_filters(rng):
    protein = [
        _atom("N", "N", (3, 4, 5)),
        _atom("CA", "C", (4.2, 4.5, 5.1)),
        _atom("H", "H", (2.5, 4.0, 5.5)),
        _atom("HA", "D", (4.5, 5.3, 5.0), b=15.0),
    ]
    water = [_atom("O", "O", (8, 9, 10), b=30.0), _atom("H1", "H", (8.8, 9.2, 10))]
    everything = _structure([("GLY", protein), ("HOH", water)])
    no_water = _structure([("GLY", protein)])
    no_h = _structure([("GLY", protein[:2]), ("HOH", water[:1])])
    neither = _structure([("GLY", protein[:2])])
    grid = cell_grid(everything, spacing=0.6)
    for mode, options in (("xray", {}), ("electron", {}), ("molmap", {"resolution": 3.0})):

        def render(st, **flags):
            return model_map(st, grid, mode=mode, periodic=True, **options, **flags).compute()  # noqa: B023

        full = render(everything)
        np.testing.assert_array_equal(render(everything, waters=False), render(no_water))
        np.testing.assert_array_equal(render(everything, hydrogens=False), render(no_h))
        np.testing.assert_array_equal(render(everything, hydrogens=False, waters=False),
                                      render(neither))  # fmt: skip
        assert not np.array_equal(full, render(no_water))
        assert not np.array_equal(full, render(no_h))


def test_atoms_outside_the_cell_wrap_when_periodic():
    inside = _structure([("ALA", [_atom("C", "C", (1.0, 2.0, 3.0))])])
    outside = _structure([("ALA", [_atom("C", "C", (1.0 + 3 * CELL[0], 2.0 - 2 * CELL[1], 3.0))])])
    grid = cell_grid(inside, spacing=0.5)
    a = model_map(inside, grid, mode="xray", periodic=True, dtype="float64").compute()
    b = model_map(outside, grid, mode="xray", periodic=True, dtype="float64").compute()
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-12 * a.max())


def test_cell_grid():
    st = _structure([("ALA", [_atom("C", "C", (1, 2, 3))])])
    grid = cell_grid(st, spacing=0.7)
    assert grid.shape == (29, 32, 35)  # ceil(20 / 0.7), ceil(22 / 0.7), ceil(24 / 0.7)
    assert grid.origin == (0.0, 0.0, 0.0)
    assert grid.spacing == (20 / 29, 22 / 32, 24 / 35)
    assert grid.period == pytest.approx(CELL, rel=1e-15)
    assert cell_grid(st, shape=(10, 11, 12)).spacing == (2.0, 2.0, 2.0)
    assert cell_grid(st, spacing=(1.0, 2.0, 4.0)).shape == (20, 11, 6)


def test_docstring_examples_run():
    import doctest
    import importlib

    failures, tried = doctest.testmod(importlib.import_module("daskgauss._models"))
    assert tried > 0
    assert failures == 0


# ----------------------------------------------------------------------------- bad input


def _written(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pdb"
    grid = dg.Grid(shape=4)
    with pytest.raises(FileNotFoundError, match=r"absent\.pdb: no such file"):
        model_map(path, grid, resolution=3.0)
    with pytest.raises(FileNotFoundError, match=r"absent\.pdb"):
        model_grid(path, resolution=3.0)
    with pytest.raises(FileNotFoundError, match=r"absent\.pdb"):
        cell_grid(path, spacing=1.0)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("notes.txt", "hello\nworld\n", r"notes\.txt: not a PDB or mmCIF structure"),
        ("broken.cif", "data_x\n_foo.bar 1 2\n", r"broken\.cif: not a PDB or mmCIF structure"),
        ("empty.cif", "data_x\n_foo.bar 1\n", r"empty\.cif: no models"),
        ("words.pdb", "hello\nworld\n", r"words\.pdb: the first model has no atoms"),
    ],
)
def test_files_that_are_not_structures(tmp_path, name, text, message):
    path = _written(tmp_path, name, text)
    with pytest.raises(ValueError, match=message):
        model_map(path, dg.Grid(shape=4), resolution=3.0)
    with pytest.raises(ValueError, match=re_escape_name(name)):
        model_grid(path, resolution=3.0)


def re_escape_name(name: str) -> str:
    import re

    return re.escape(name)


def test_directory_is_not_a_structure(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        model_map(tmp_path, dg.Grid(shape=4), resolution=3.0)


def test_no_atoms_after_the_filters(tmp_path):
    st = _structure([("HOH", [_atom("O", "O", (1, 2, 3)), _atom("H1", "H", (1.9, 2, 3))])])
    path = tmp_path / "water.pdb"
    st.write_pdb(str(path))
    grid = dg.Grid(shape=4)
    with pytest.raises(ValueError, match=r"water\.pdb: the first model has no atoms after "
                                         r"dropping waters"):  # fmt: skip
        model_map(path, grid, resolution=3.0, waters=False)
    only_h = _structure([("ALA", [_atom("H", "H", (1, 2, 3))])])
    with pytest.raises(ValueError, match="no atoms after dropping hydrogens"):
        model_map(only_h, grid, mode="xray", hydrogens=False)
    with pytest.raises(ValueError, match="no models"):
        model_map(gemmi.Structure(), grid, resolution=3.0)


def test_unknown_element(tmp_path):
    st = _structure([("LIG", [_atom("C1", "C", (1, 2, 3)), _atom("Q1", "X", (2, 2, 3))])])
    path = tmp_path / "ligand.pdb"
    st.write_pdb(str(path))
    for mode, options in (("molmap", {"resolution": 3.0}), ("xray", {}), ("electron", {})):
        message = r"ligand\.pdb: atom 'Q1' of residue LIG 1 in chain 'A' .* element gemmi does not"
        with pytest.raises(ValueError, match=message):
            model_map(path, dg.Grid(shape=4), mode=mode, **options)


def test_element_without_a_table():
    st = _structure([("ES", [_atom("ES", "Es", (1, 2, 3))])])  # einsteinium: no IT92, no C4322
    with pytest.raises(ValueError, match=r"'ES' .* without gemmi's IT92"):
        model_map(st, dg.Grid(shape=4), mode="xray")
    with pytest.raises(ValueError, match=r"without gemmi's C4322"):
        model_map(st, dg.Grid(shape=4), mode="electron")
    assert model_map(st, dg.Grid(shape=4), resolution=3.0).shape == (4, 4, 4)  # molmap: Z = 99


def test_widths_that_are_not_positive():
    st = _structure([("ALA", [_atom("CA", "C", (1, 2, 3), b=0.0)])])
    grid = dg.Grid(shape=4)
    with pytest.raises(ValueError, match=r"structure 'test': atom 'CA' .* B = 0 .* pass a blur"):
        model_map(st, grid, mode="xray")
    model_map(st, grid, mode="xray", blur=1.0)  # the constant term now has a width
    model_map(st, grid, mode="electron")  # no constant term: every b_j > 0
    flat = np.diag([0.2, 0.2, -0.5])
    st = _structure([("ALA", [_atom("CA", "C", (1, 2, 3), aniso=flat)])])
    with pytest.raises(ValueError, match=r"ANISOU tensor that is not positive definite"):
        model_map(st, grid, mode="xray", blur=20.0)
    model_map(st, grid, mode="xray", blur=50.0)  # 50 / (8 pi^2) = 0.63 > 0.5


def test_bad_arguments():
    st = _structure([("ALA", [_atom("CA", "C", (1, 2, 3))])])
    grid = dg.Grid(shape=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        model_map(st, grid, mode="neutron")
    with pytest.raises(ValueError, match="needs resolution"):
        model_map(st, grid)
    with pytest.raises(ValueError, match="resolution must be finite and > 0"):
        model_map(st, grid, resolution=0.0)
    with pytest.raises(ValueError, match="blur applies to"):
        model_map(st, grid, resolution=3.0, blur=5.0)
    with pytest.raises(ValueError, match="blur must be finite"):
        model_map(st, grid, mode="xray", blur=float("nan"))
    with pytest.raises(ValueError, match="hydrogens must be True or False"):
        model_map(st, grid, resolution=3.0, hydrogens="no")
    with pytest.raises(ValueError, match="tol"):
        model_map(st, grid, resolution=3.0, tol=2.0)
    with pytest.raises(TypeError, match=r"grid must be a daskgauss\.Grid"):
        model_map(st, (4, 4, 4), resolution=3.0)
    with pytest.raises(TypeError, match="model must be a path"):
        model_map(42, grid, resolution=3.0)
    with pytest.raises(ValueError, match=r"needs resolution .* or spacing"):
        model_grid(st)
    with pytest.raises(ValueError, match=r"needs resolution .* or padding"):
        model_grid(st, spacing=1.0)
    with pytest.raises(ValueError, match="padding must be >= 0"):
        model_grid(st, resolution=3.0, padding=-1.0)
    with pytest.raises(ValueError, match="spacing must be > 0"):
        model_grid(st, resolution=3.0, spacing=0.0)
    with pytest.raises(ValueError, match="exactly one of spacing and shape"):
        cell_grid(st)
    with pytest.raises(ValueError, match="exactly one of spacing and shape"):
        cell_grid(st, spacing=1.0, shape=10)


def test_cells_cell_grid_refuses():
    st = _structure([("ALA", [_atom("CA", "C", (1, 2, 3))])], cell=None)
    with pytest.raises(ValueError, match="structure 'test': no unit cell"):
        cell_grid(st, spacing=1.0)
    st.cell = gemmi.UnitCell(20, 22, 24, 90, 100, 90)
    with pytest.raises(ValueError, match=r"not orthogonal \(angles \(90.0, 100.0, 90.0\)"):
        cell_grid(st, spacing=1.0)
