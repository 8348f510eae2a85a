"""Dataset statistics: per-species reference energies, force RMS, neighbour counts, and the
structural extremes (closest pairs, largest nearest-neighbour distances, largest |F|) that the MD
failure monitors use as thresholds. Stored in every checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from stableff.data.io import Frame
from stableff.data.neighbors import neighbor_list
from stableff.data.species import pair_key


@dataclasses.dataclass
class DatasetStatistics:
    type_numbers: list[int]  # atomic numbers, in species-index order
    reference_energies: list[float]  # eV per atom of each species (E0)
    energy_per_atom_residual_mean: float  # eV/atom, mean of (E - sum E0)/N
    energy_per_atom_residual_std: float  # eV/atom, std of (E - sum E0)/N
    force_rms: float  # eV/A
    mean_num_neighbors: float  # within the model cutoff
    max_abs_force: float  # eV/A, largest |F| of any atom
    min_pair_distance: dict[str, float]  # "Z1-Z2" (Z1 <= Z2) -> Angstrom
    max_nearest_neighbor_distance: dict[str, float]  # "Z" -> Angstrom
    cutoff: float
    n_frames: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DatasetStatistics":
        return cls(**data)


def reference_energies_least_squares(frames: Sequence[Frame], type_numbers: Sequence[int]) -> np.ndarray:
    """E0 per species minimising sum_frames (E - sum_s n_s E0_s)^2 (lstsq, minimum-norm if rank-deficient)."""
    counts = np.array([[np.sum(f.numbers == z) for z in type_numbers] for f in frames], dtype=float)
    energies = np.array([f.energy for f in frames], dtype=float)
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return e0


def reference_energies_from_isolated_atoms(isolated: Sequence[Frame], type_numbers: Sequence[int]) -> np.ndarray:
    """E0 per species from single-atom frames; every species must be present."""
    from stableff.errors import DataError

    by_number = {int(f.numbers[0]): f.energy for f in isolated if len(f) == 1 and f.energy is not None}
    missing = [z for z in type_numbers if z not in by_number]
    if missing:
        from ase.data import chemical_symbols

        source = isolated[0].source if isolated else "<isolated atoms>"
        raise DataError(source, f"no isolated-atom energy for {[chemical_symbols[z] for z in missing]}")
    return np.array([by_number[z] for z in type_numbers])


def compute_statistics(
    frames: Sequence[Frame],
    cutoff: float,
    type_numbers: Sequence[int] | None = None,
    isolated_atoms: Sequence[Frame] | None = None,
) -> DatasetStatistics:
    """Statistics over labelled frames (energies and forces required)."""
    if type_numbers is None:
        type_numbers = sorted({int(z) for f in frames for z in f.numbers})
    type_numbers = [int(z) for z in type_numbers]
    if isolated_atoms:
        e0 = reference_energies_from_isolated_atoms(isolated_atoms, type_numbers)
    else:
        e0 = reference_energies_least_squares(frames, type_numbers)
    lookup = {z: k for k, z in enumerate(type_numbers)}
    residuals, force_sq, n_atoms_total, n_edges_total, max_force = [], 0.0, 0, 0, 0.0
    min_pair: dict[str, float] = {}
    max_nn: dict[str, float] = {}
    for f in frames:
        species = np.array([lookup[int(z)] for z in f.numbers])
        residuals.append((f.energy - e0[species].sum()) / len(f))
        force_sq += float(np.sum(f.forces**2))
        max_force = max(max_force, float(np.max(np.linalg.norm(f.forces, axis=1))))
        n_atoms_total += len(f)
        i, j, _, d = neighbor_list(f.positions, f.cell, f.pbc, cutoff, with_distances=True)
        n_edges_total += len(i)
        if len(i):
            zi, zj = f.numbers[i], f.numbers[j]
            for a in np.unique(zi):
                for b in np.unique(zj):
                    if a > b:
                        continue
                    mask = ((zi == a) & (zj == b)) | ((zi == b) & (zj == a))
                    if mask.any():
                        key = pair_key(a, b)
                        min_pair[key] = min(min_pair.get(key, np.inf), float(d[mask].min()))
            nearest = np.full(len(f), np.inf)
            np.minimum.at(nearest, i, d)
            for z in np.unique(f.numbers):
                values = nearest[(f.numbers == z) & np.isfinite(nearest)]
                if len(values):
                    max_nn[str(int(z))] = max(max_nn.get(str(int(z)), 0.0), float(values.max()))
    if n_edges_total == 0:
        from stableff.errors import DataError

        raise DataError(frames[0].source or "<training data>", f"no atom of any frame has a neighbour within the cutoff ({cutoff:g} A): nothing to learn from")
    return DatasetStatistics(
        type_numbers=type_numbers,
        reference_energies=[float(x) for x in e0],
        energy_per_atom_residual_mean=float(np.mean(residuals)),
        energy_per_atom_residual_std=float(np.std(residuals)),
        force_rms=float(np.sqrt(force_sq / (3 * n_atoms_total))),
        mean_num_neighbors=n_edges_total / n_atoms_total,
        max_abs_force=max_force,
        min_pair_distance=min_pair,
        max_nearest_neighbor_distance=max_nn,
        cutoff=float(cutoff),
        n_frames=len(frames),
    )
