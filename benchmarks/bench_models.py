"""model_map against gemmi's DensityCalculatorX: an X-ray map of a large model in a P 1 box.

Run from the repository root:

    .venv/bin/python -m benchmarks.bench_models                    # 10^5 atoms, about a minute
    .venv/bin/python -m benchmarks.bench_models --atoms 1000000 --anisou 0.5
    .venv/bin/python -m benchmarks.bench_models --atoms 1000000 --zarr /work/daskgauss-bench

The model: one block of 500 atoms (C, N, O, S in protein proportions, B uniform in
[10, 40] Å², occupancy 1, uniform in a 20 Å cube: 0.0625 atoms / Å³, about a protein
crystal's), translated on a lattice of 20 Å steps until ``--atoms`` are placed; the
P 1 cell is the lattice's box, and ``--anisou`` of the atoms get a random ANISOU tensor
(eigenvalues B / (8 pi^2) times [0.5, 1.5]). The grid is gemmi's for ``d_min = 2``,
``rate = 1`` (1 Å samples), blur 0 in both, gemmi's default cutoff (1e-5 e/Å³,
``--cutoff``) and ``tol = 1e-6`` here (``--tol``), float32 in both. ``--chunks`` sets the
block side (default: daskgauss's, which keeps a volume this small in one block).

Timed (best of ``--repeats`` after one warm-up): gemmi's ``put_model_density_on_grid``
(its wall time and CPU time, to show whether it uses more than one thread); the
``model_map(...)`` call alone (reading the atoms, binning); and
``model_map(...).compute()`` on dask's threaded scheduler with 1 and 2 threads, and the
``.compute()`` of a lazy array already made (the blocks alone). Reported: the ratios to
gemmi and the largest difference relative to the peak. With ``--zarr FOLDER`` the model
is also written there as mmCIF and rendered as users do, ``daskgauss model-map FILE STORE
--mode xray --spacing 1 --padding 5`` in a subprocess on its local cluster (molmap's grid
around the atoms, not the cell): wall time and peak RSS of the process tree.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import dask
import gemmi
import numpy as np

import daskgauss as dg
from daskgauss._models import _read_atoms, cell_grid, model_map

BLOCK = 20.0  # Å, side of the translated block
PER_BLOCK = 500


def lattice(blocks: int) -> tuple[int, int, int]:
    """The most cubic nx x ny x nz >= blocks."""
    best = None
    for nx in range(1, blocks + 1):
        for ny in range(1, nx + 1):
            nz = math.ceil(blocks / (nx * ny))
            if nz > ny:
                continue
            key = (nx * ny * nz, nx - nz)
            if best is None or key < best[0]:
                best = (key, (nx, ny, nz))
    return best[1]  # type: ignore[index]


def build(atoms: int, anisou: float, seed: int = 0) -> gemmi.Structure:
    rng = np.random.default_rng(seed)
    unit = rng.uniform(0, BLOCK, size=(PER_BLOCK, 3))
    elements = rng.choice(["C", "N", "O", "S"], p=[0.63, 0.17, 0.19, 0.01], size=PER_BLOCK)
    b_iso = rng.uniform(10, 40, size=PER_BLOCK)
    blocks = math.ceil(atoms / PER_BLOCK)
    shape = lattice(blocks)
    st = gemmi.Structure()
    st.cell = gemmi.UnitCell(*(n * BLOCK for n in shape), 90, 90, 90)
    st.spacegroup_hm = "P 1"
    model = gemmi.Model("1")
    placed = 0
    element_objects = {name: gemmi.Element(name) for name in ("C", "N", "O", "S")}
    for index, (i, j, k) in enumerate(np.ndindex(*shape)):
        if placed >= atoms:
            break
        chain = gemmi.Chain(f"C{index}")
        residue = gemmi.Residue()
        residue.name = "UNK"
        residue.seqid = gemmi.SeqId(1, " ")
        shift = np.array([i, j, k]) * BLOCK
        for n in range(min(PER_BLOCK, atoms - placed)):
            atom = gemmi.Atom()
            atom.name = str(elements[n])
            atom.element = element_objects[elements[n]]
            atom.pos = gemmi.Position(*(unit[n] + shift))
            atom.b_iso = float(b_iso[n])
            if rng.random() < anisou:
                q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
                u = q @ np.diag(b_iso[n] / (8 * math.pi**2) * rng.uniform(0.5, 1.5, 3)) @ q.T
                atom.aniso = gemmi.SMat33f(u[0, 0], u[1, 1], u[2, 2], u[0, 1], u[0, 2], u[1, 2])
            residue.add_atom(atom)
            placed += 1
        chain.add_residue(residue)
        model.add_chain(chain)
    st.add_model(model)
    return st


def best_of(function, repeats: int) -> tuple[float, float, object]:
    """Best wall time, the CPU time of that run, and the result; one warm-up run first."""
    function()
    best = (math.inf, math.inf, None)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if wall < best[0]:
            best = (wall, cpu, result)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=100_000)
    parser.add_argument("--anisou", type=float, default=0.0, help="fraction of atoms with ANISOU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=None, help="block side (default: dask's)")
    parser.add_argument("--cutoff", type=float, default=1e-5, help="gemmi's cutoff (e/Å³)")
    parser.add_argument("--tol", type=float, default=1e-6, help="model_map's tol")
    parser.add_argument(
        "--zarr",
        type=Path,
        default=None,
        help="also render through the CLI into a store in this folder",
    )
    options = parser.parse_args()

    started = time.perf_counter()
    st = build(options.atoms, options.anisou)
    count = st[0].count_atom_sites()
    print(f"daskgauss {dg.__version__}, gemmi {gemmi.__version__}, {os.cpu_count()} CPUs")
    print(f"model: {count} atoms ({options.anisou:.0%} with ANISOU), cell "
          f"{st.cell.a:g} x {st.cell.b:g} x {st.cell.c:g} Å, built in "
          f"{time.perf_counter() - started:.1f} s")  # fmt: skip

    def gemmi_map() -> np.ndarray:
        calculator = gemmi.DensityCalculatorX()
        calculator.d_min = 2.0
        calculator.rate = 1.0
        calculator.blur = 0.0
        calculator.cutoff = options.cutoff
        calculator.set_grid_cell_and_spacegroup(st)
        calculator.put_model_density_on_grid(st[0])
        return np.array(calculator.grid, copy=True)

    gemmi_wall, gemmi_cpu, expected = best_of(gemmi_map, options.repeats)
    grid = cell_grid(st, shape=expected.shape)
    print(f"grid {expected.shape} (spacing {grid.spacing[0]:.3f} Å), float32")
    threading = "one thread" if gemmi_cpu < 1.2 * gemmi_wall else "more than one thread"
    print(f"gemmi put_model_density_on_grid: {gemmi_wall:.3f} s wall, {gemmi_cpu:.3f} s CPU "
          f"({threading})")  # fmt: skip

    chunks = None if options.chunks is None else (options.chunks,) * 3

    def lazy():
        return model_map(st, grid, mode="xray", periodic=True, tol=options.tol, chunks=chunks)

    started = time.perf_counter()
    _read_atoms(st[0], hydrogens=True, waters=True)
    reading = time.perf_counter() - started
    setup, _, array = best_of(lazy, options.repeats)
    print(f"model_map(...) call: {setup:.3f} s (of which reading the {count} atoms from gemmi "
          f"{reading:.3f} s; then {count * 5} Gaussians binned); {array.numblocks} blocks of "
          f"{array.chunksize}")  # fmt: skip
    peak = float(expected.max())
    for threads in (1, 2):
        with dask.config.set(scheduler="threads", num_workers=threads):
            wall, cpu, values = best_of(lambda: lazy().compute(), options.repeats)
            blocks, _, _ = best_of(array.compute, options.repeats)
        difference = float(np.abs(values.astype(np.float64) - expected).max())
        print(f"{threads} thread(s): model_map(...).compute() {wall:.3f} s wall ({cpu:.3f} s CPU), "
              f"{wall / gemmi_wall:.2f} x gemmi; the blocks alone (.compute() of the lazy "
              f"array) {blocks:.3f} s")  # fmt: skip
    print(f"largest difference {difference:.2e} e/Å³ = {difference / peak:.1e} of the peak "
          f"({peak:.3f} e/Å³)")  # fmt: skip
    if options.zarr is not None:
        render_to_store(st, options.zarr)


def render_to_store(st: gemmi.Structure, folder: Path) -> None:
    """``daskgauss model-map`` of ``st`` (written as mmCIF) into a store: time, peak RSS."""
    from benchmarks.measure import GIB, run_measured

    folder.mkdir(parents=True, exist_ok=True)
    model, store = folder / "assembly.cif", folder / "assembly.zarr"
    st.make_mmcif_document().write_file(str(model))
    shutil.rmtree(store, ignore_errors=True)
    command = [sys.executable, "-m", "daskgauss", "model-map", str(model), str(store), "--mode",
               "xray", "--spacing", "1", "--padding", "5"]  # fmt: skip
    seconds, output, memory = run_measured(command)
    summary = output.strip().splitlines()[-1]
    print(f"daskgauss model-map {model.name} (xray, 1 Å): {seconds:.1f} s, peak RSS of the "
          f"process tree {memory.peak / GIB:.2f} GiB; {summary}")  # fmt: skip
    shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
