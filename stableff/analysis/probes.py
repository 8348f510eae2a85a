"""Probes that find holes in a potential before MD does (docs/method.md, "Holes").

* Dimer curves E(r) of every species pair the model knows, for the isolated pair, from 0.3 A to the
  cutoff, relative to the separated atoms. A **hole**: below the shortest distance of that pair in
  the training data, the curve falls as r shrinks (attraction where there must be repulsion); it is
  reported with its radius (where the curve is lowest) and depth (eV below the value at the training
  minimum).
* In-situ scans: inside a given structure, the closest pair of each species pair is pushed together
  and pulled apart along its axis (both atoms move, the rest stays fixed or is relaxed), from 0.3 A
  to past its present distance; E(d) is relative to the structure as given. A hole is defined as for
  dimers. A close contact in a condensed phase can be a many-body effect that the isolated dimer does
  not show (the neighbours of the pair change what the model predicts), which this scan sees.
* Energy-volume curves of given cells under isotropic strain, fitted with ASE's Birch-Murnaghan
  equation of state: V0 (A^3), B0 (GPa), E0 (eV).
"""

from __future__ import annotations

import numpy as np
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import Frame
from stableff.data.species import pair_key, pair_label

#: an energy drop below this (eV) inside the training minimum counts as a hole
HOLE_TOLERANCE_EV = 1e-3


def _energies(model, frames: list[Frame], batch_size: int | None = None) -> np.ndarray:
    if batch_size is None:  # about 4096 atoms per call: small molecules in large batches, big cells alone
        batch_size = max(1, min(64, 4096 // max(1, len(frames[0].numbers))))
    out = []
    for start in range(0, len(frames), batch_size):
        graphs = [frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in frames[start : start + batch_size]]
        batch = collate(graphs)
        batch = {k: v.to(next(model.parameters()).device) for k, v in batch.items()}
        with torch.no_grad():
            out.append(model(batch, compute_forces=False, compute_stress=False)[keys.TOTAL_ENERGY].cpu().double().numpy())
    return np.concatenate(out)


def find_hole(r: np.ndarray, energy: np.ndarray, training_min: float | None) -> dict | None:
    """The hole of one dimer curve (r ascending), or None: the lowest energy at r < training_min,
    if it lies more than HOLE_TOLERANCE_EV below the energy at the training minimum."""
    if training_min is None:
        return None
    inside = r <= training_min + 1e-9
    if inside.sum() < 2:
        return None
    reference = float(np.interp(training_min, r, energy))
    k = int(np.argmin(np.where(inside, energy, np.inf)))
    depth = reference - float(energy[k])
    if depth <= HOLE_TOLERANCE_EV or r[k] >= training_min - 1e-9:
        return None
    return {"radius_A": float(r[k]), "depth_eV": depth, "energy_at_training_min_eV": reference}


def dimer_curves(model, statistics=None, r_start: float = 0.3, step: float = 0.01) -> list[dict]:
    """One curve per species pair: r (A), E(r) - E(separated) (eV), the training minimum and the hole."""
    r = np.arange(r_start, model.r_max + step / 2, step)
    curves = []
    numbers = model.type_numbers
    for a_index, za in enumerate(numbers):
        for zb in numbers[a_index:]:
            frames = [Frame(numbers=np.array([za, zb]), positions=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, d]]), cell=np.zeros((3, 3)), pbc=np.zeros(3, bool)) for d in r]
            separated = Frame(numbers=np.array([za, zb]), positions=np.array([[0.0, 0.0, 0.0], [0.0, 0.0, model.r_max + 1.0]]), cell=np.zeros((3, 3)), pbc=np.zeros(3, bool))
            energy = _energies(model, frames + [separated])
            relative = energy[:-1] - energy[-1]
            training_min = None if statistics is None else statistics.min_pair_distance.get(pair_key(za, zb))
            curves.append({
                "pair": pair_label(za, zb), "r_A": r.tolist(), "energy_eV": relative.tolist(),
                "training_min_A": training_min, "hole": find_hole(r, relative, training_min),
            })
    return curves


def closest_pairs(frame: Frame, za: int, zb: int, cutoff: float, count: int = 1, neighbours=None) -> list[dict]:
    """The ``count`` closest distinct pairs (i < j) of species (za, zb) within ``cutoff`` (periodic
    images included): atoms, distance (A) and the vector from i to the image of j that is closest.
    ``neighbours``: the frame's (i, j, shifts, distances) within ``cutoff`` when already built."""
    from stableff.data.neighbors import neighbor_list

    if neighbours is None:
        neighbours = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff, with_distances=True)
    i, j, shifts, d = neighbours
    numbers = frame.numbers
    keep = (i < j) & (((numbers[i] == za) & (numbers[j] == zb)) | ((numbers[i] == zb) & (numbers[j] == za)))
    order = np.argsort(d[keep], kind="stable")[:count]
    i, j, shifts, d = i[keep][order], j[keep][order], shifts[keep][order], d[keep][order]
    cell = np.asarray(frame.cell, dtype=float).reshape(3, 3)
    return [{"atoms": [int(a), int(b)], "distance_A": float(r), "vector": frame.positions[b] + s @ cell - frame.positions[a]}
            for a, b, s, r in zip(i, j, shifts, d)]


def _placed(frame: Frame, positions: np.ndarray, pair: dict, distance: float) -> Frame:
    """``frame`` at ``positions`` with the pair's two atoms set symmetrically about their midpoint in
    the unmoved structure, along their axis there, ``distance`` apart (the image of the second atom
    that was closest stays the partner)."""
    a, b = pair["atoms"]
    original = frame.positions
    unit = pair["vector"] / pair["distance_A"]
    centre = original[a] + 0.5 * pair["vector"]
    image_offset = original[a] + pair["vector"] - original[b]  # a lattice vector (zero without periodic images)
    positions = positions.copy()
    positions[a] = centre - 0.5 * distance * unit
    positions[b] = centre + 0.5 * distance * unit - image_offset
    return Frame(numbers=frame.numbers, positions=positions, cell=frame.cell, pbc=frame.pbc)


def _relaxed_energies(frame: Frame, pair: dict, r: np.ndarray, calculator, steps: int, fmax: float) -> tuple[np.ndarray, int]:
    """E(d) with the pair held at each distance and every other atom relaxed (FIRE, at most
    ``steps`` steps to ``fmax`` eV/A), each point starting from the relaxed geometry of its neighbour
    point nearer the present distance; returns the energies and how many points did not reach ``fmax``."""
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    energies = np.empty(len(r))
    unconverged = 0
    start = int(np.argmin(np.abs(r - pair["distance_A"])))
    for direction in (range(start, -1, -1), range(start + 1, len(r))):
        positions = frame.positions
        for k in direction:
            atoms = _placed(frame, positions, pair, r[k]).to_atoms()
            atoms.set_constraint(FixAtoms(indices=pair["atoms"]))
            atoms.calc = calculator
            if not FIRE(atoms, logfile=None).run(fmax=fmax, steps=steps):
                unconverged += 1
            energies[k] = atoms.get_potential_energy()
            positions = atoms.positions.copy()
    return energies, unconverged


def in_situ_scans(model, statistics, frame: Frame, r_start: float = 0.3, step: float = 0.02, beyond: float = 0.3,
                  count: int = 1, relax_steps: int = 0, fmax: float = 0.05, calculator=None, progress=None) -> list[dict]:
    """One scan per species pair of the model found within its cutoff in ``frame`` (``count`` closest
    pairs each): the pair's distance d from ``r_start`` to ``beyond`` A past the larger of its present
    distance and the training minimum, E(d) - E(structure as given) in eV, the training minimum and the
    hole (:func:`find_hole`). With ``relax_steps`` > 0 every other atom is relaxed at each d (needs an
    ASE ``calculator`` of the same model)."""
    if relax_steps > 0 and calculator is None:
        raise ValueError("a relaxed in-situ scan needs an ASE calculator of the model")
    numbers = model.type_numbers
    present = set(int(z) for z in frame.numbers)
    if relax_steps > 0:  # the same evaluator for the reference as for the points
        atoms = frame.to_atoms()
        atoms.calc = calculator
        reference = float(atoms.get_potential_energy())
    else:
        reference = float(_energies(model, [frame])[0])
    from stableff.data.neighbors import neighbor_list

    neighbours = neighbor_list(frame.positions, frame.cell, frame.pbc, model.r_max, with_distances=True)  # once for every species pair
    scans = []
    for a_index, za in enumerate(numbers):
        for zb in numbers[a_index:]:
            if za not in present or zb not in present:
                continue
            training_min = None if statistics is None else statistics.min_pair_distance.get(pair_key(za, zb))
            for pair in closest_pairs(frame, za, zb, model.r_max, count, neighbours):
                top = max(pair["distance_A"], training_min or 0.0) + beyond
                r = np.arange(r_start, top + step / 2, step)
                if relax_steps > 0:
                    energy, unconverged = _relaxed_energies(frame, pair, r, calculator, relax_steps, fmax)
                else:
                    energy, unconverged = _energies(model, [_placed(frame, frame.positions, pair, d) for d in r]), 0
                relative = energy - reference
                scans.append({
                    "pair": pair_label(za, zb), "atoms": pair["atoms"], "distance_A": pair["distance_A"],
                    "r_A": r.tolist(), "energy_eV": relative.tolist(), "training_min_A": training_min,
                    "hole": find_hole(r, relative, training_min), "relaxed": relax_steps > 0,
                    **({"unconverged_points": unconverged} if relax_steps > 0 else {}),
                })
                if progress is not None:
                    progress()
    return scans


def equation_of_state(model, atoms, strain: float = 0.08, points: int = 11) -> dict:
    """E(V) of ``atoms`` scaled isotropically over volumes (1 - strain .. 1 + strain) V, fitted with
    Birch-Murnaghan: V0 (A^3), E0 (eV), B0 (GPa)."""
    from ase.eos import EquationOfState
    from ase.units import GPa

    from stableff.data.io import frame_from_atoms

    factors = np.linspace(1.0 - strain, 1.0 + strain, points)
    frames = []
    for f in factors:
        scaled = atoms.copy()
        scaled.set_cell(atoms.cell.array * f ** (1.0 / 3.0), scale_atoms=True)
        frames.append(frame_from_atoms(scaled))
    volumes = factors * atoms.get_volume()
    energies = _energies(model, frames)
    result = {"volumes_A3": volumes.tolist(), "energies_eV": energies.tolist(), "n_atoms": len(atoms)}
    try:
        v0, e0, b = EquationOfState(volumes, energies, eos="birchmurnaghan").fit()
        result.update(V0_A3=float(v0), E0_eV=float(e0), B0_GPa=float(b / GPa))
        if not volumes.min() <= v0 <= volumes.max():
            result["warning"] = "the fitted minimum lies outside the strained range"
    except (RuntimeError, ValueError) as exc:  # no minimum in range, or the fit does not converge
        result["fit_error"] = str(exc)
    return result


def holes(curves: list[dict]) -> dict[str, dict]:
    """{pair: hole} for the curves that have one."""
    return {c["pair"]: c["hole"] for c in curves if c["hole"] is not None}
