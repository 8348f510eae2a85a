"""The model seen by the batched engine: energies and forces of many structures in one call, with a
neighbour list per structure that carries a skin and is rebuilt only for a structure one of whose
atoms moved more than half of it since its last build (the edges handed to the model are those
within the model's cutoff, as the calculator's)."""

from __future__ import annotations

import numpy as np
import torch

from stableff.data import keys
from stableff.data.graph import species_index
from stableff.data.neighbors import SKIN_A, neighbor_list
from stableff.errors import StableFFError
from stableff.models.scatter import scatter_sum


class ReplicaBatch:
    """The model's energies and forces for a batch of structures, with skin neighbour lists.

    ``systems``: ase.Atoms (numbers, cell, pbc; positions are passed to :meth:`energy_forces`).
    """

    def __init__(self, model, systems, skin_A: float = SKIN_A, device: str | torch.device = "cpu"):
        if skin_A < 0:
            raise StableFFError(f"the neighbour-list skin must be >= 0 A (got {skin_A})")
        self.model, self.skin, self.device = model, float(skin_A), torch.device(device)
        self.cutoff = float(model.r_max)
        self.counts = [len(a) for a in systems]
        self.numbers = [np.asarray(a.numbers) for a in systems]
        self.species = [torch.as_tensor(species_index(a.numbers, model.type_numbers), device=self.device) for a in systems]
        self.cells = [np.asarray(a.cell.array, dtype=np.float64) for a in systems]
        self.pbc = [np.asarray(a.pbc, dtype=bool) for a in systems]
        self.lists: list[tuple | None] = [None] * len(systems)  # (edge_index [2, e], shifts [e, 3]) within cutoff + skin
        self.rebuilds = 0
        self._static()
        # positions at each replica's last build (NaN before the first)
        self.reference = torch.full((int(sum(self.counts)), 3), float("nan"), dtype=torch.float64, device=self.device)

    def _static(self) -> None:
        """Tensors that change only when the batch changes (a replica leaves)."""
        d = self.device
        self.num_structures = len(self.counts)
        counts = torch.tensor(self.counts, dtype=torch.long, device=d)
        self.atom_replica = torch.repeat_interleave(torch.arange(self.num_structures, device=d), counts)
        self.offsets = [0] + list(np.cumsum(self.counts)[:-1])
        self.species_all = torch.cat(self.species) if self.species else torch.zeros(0, dtype=torch.long, device=d)
        self.numbers_all = torch.as_tensor(np.concatenate(self.numbers) if self.numbers else np.zeros(0, int), device=d)
        self.cell_all = torch.as_tensor(np.stack(self.cells) if self.cells else np.zeros((0, 3, 3)), dtype=torch.float64, device=d)
        self.pbc_all = torch.as_tensor(np.stack(self.pbc) if self.pbc else np.zeros((0, 3), bool), device=d)
        self._edges = None
        self._edges_finite: list[bool] | None = None  # which structures the cached edges cover

    def keep(self, keep: list[bool]) -> torch.Tensor:
        """Drop the replicas whose entry is False; returns the atom mask of those kept."""
        atom_mask = torch.repeat_interleave(torch.tensor(keep, device=self.device), torch.tensor(self.counts, dtype=torch.long, device=self.device))
        for name in ("counts", "numbers", "species", "cells", "pbc", "lists"):
            setattr(self, name, [x for x, k in zip(getattr(self, name), keep) if k])
        self.reference = self.reference[atom_mask]
        self._static()
        return atom_mask

    def restore_list(self, b: int, reference: torch.Tensor) -> None:
        """Rebuild structure ``b``'s list from the positions of its last build (a resumed run gets
        the same list as the interrupted one)."""
        self._rebuild(b, reference.to(self.device))

    def _rebuild(self, b: int, positions: torch.Tensor) -> None:
        i, j, shifts = neighbor_list(positions.detach().cpu().numpy(), self.cells[b], self.pbc[b], self.cutoff + self.skin)
        self.lists[b] = (torch.as_tensor(np.stack([i, j]), device=self.device), torch.as_tensor(shifts, dtype=torch.float64, device=self.device))
        self.reference[self.offsets[b]:self.offsets[b] + self.counts[b]] = positions.detach()
        self.rebuilds += 1
        self._edges = None

    def _update_lists(self, positions: torch.Tensor, finite: torch.Tensor) -> None:
        # no list yet, or non-finite positions: infinite move (rebuilt below if the positions are finite)
        displacement = torch.nan_to_num(torch.linalg.norm(positions - self.reference, dim=1), nan=float("inf"))
        moved = torch.zeros((self.num_structures,), dtype=positions.dtype, device=positions.device)
        moved = moved.scatter_reduce(0, self.atom_replica, displacement, reduce="amax", include_self=True).cpu().numpy()
        finite = finite.cpu().numpy()
        for b in range(self.num_structures):
            if finite[b] and (self.lists[b] is None or not moved[b] <= 0.5 * self.skin):
                start = self.offsets[b]
                self._rebuild(b, positions[start:start + self.counts[b]])

    def _edge_tensors(self, finite) -> tuple[torch.Tensor, torch.Tensor]:
        if self._edges is None:
            index, shifts = [], []
            for b in range(self.num_structures):
                if self.lists[b] is not None and finite[b]:
                    index.append(self.lists[b][0] + self.offsets[b])
                    shifts.append(self.lists[b][1])
            if index:
                self._edges = (torch.cat(index, dim=1), torch.cat(shifts))
            else:
                self._edges = (torch.zeros((2, 0), dtype=torch.long, device=self.device), torch.zeros((0, 3), dtype=torch.float64, device=self.device))
        return self._edges

    def energy_forces(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total energy per structure [B] (eV) and forces [N, 3] (eV/A), float64; NaN for a structure
        whose positions are not finite."""
        atom_finite = torch.isfinite(positions).all(dim=1)
        finite = scatter_sum((~atom_finite).long(), self.atom_replica, self.num_structures) == 0
        finite_list = finite.cpu().tolist()
        if self._edges is not None and self._edges_finite != finite_list:
            self._edges = None
        self._update_lists(positions, finite)
        self._edges_finite = finite_list
        edge_index, shifts = self._edge_tensors(finite_list)
        safe = torch.where(atom_finite[:, None], positions, torch.zeros_like(positions))
        centre, neighbour = edge_index
        vectors = safe[neighbour] - safe[centre] + torch.einsum("ei,eij->ej", shifts, self.cell_all[self.atom_replica[centre]])
        within = (vectors * vectors).sum(dim=1) < self.cutoff**2
        dtype = self.model.dtype
        batch = {
            keys.POSITIONS: safe.to(dtype),
            keys.SPECIES: self.species_all,
            keys.ATOMIC_NUMBERS: self.numbers_all,
            keys.CELL: self.cell_all.to(dtype),
            keys.PBC: self.pbc_all,
            keys.EDGE_INDEX: edge_index[:, within],
            keys.EDGE_CELL_SHIFT: shifts[within].to(dtype),
            keys.NUM_ATOMS: torch.tensor(self.counts, dtype=torch.long, device=self.device),
            keys.BATCH: self.atom_replica,
        }
        out = self.model(batch, compute_forces=True, compute_stress=False, create_graph=False)
        energy = out[keys.TOTAL_ENERGY].detach().double()
        forces = out[keys.FORCES].detach().double()
        if not all(finite_list):
            energy = torch.where(finite, energy, torch.full_like(energy, float("nan")))
            forces = torch.where(atom_finite[:, None], forces, torch.full_like(forces, float("nan")))
        return energy, forces
