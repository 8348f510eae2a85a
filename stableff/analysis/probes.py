"""Probes that find holes in a potential before MD does (docs/method.md, "Holes").

* Dimer curves E(r) of every species pair the model knows, for the isolated pair, from 0.3 A to the
  cutoff, relative to the separated atoms. A **hole**: below the shortest distance of that pair in
  the training data, the curve falls as r shrinks (attraction where there must be repulsion); it is
  reported with its radius (where the curve is lowest) and depth (eV below the value at the training
  minimum).
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


def _energies(model, frames: list[Frame], batch_size: int = 64) -> np.ndarray:
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
