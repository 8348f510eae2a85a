"""The one interface every model has: ``forward(batch) -> {energy, forces, stress?, edge_features}``.

A concrete model implements :meth:`ForceField.atomic_energies` (raw per-atom outputs and the
per-layer edge features); this base class adds the per-species scale and shift, sums to total
energies, and takes forces (and stress for periodic cells) by autograd of the energy.
"""

from __future__ import annotations

import torch
from torch import nn

from stableff.data import keys
from stableff.models.blocks import scatter_sum


class ForceField(nn.Module):
    """Base class. Subclasses set ``self.r_max`` and implement ``atomic_energies``.

    Args:
        type_numbers: atomic numbers of the species, in species-index order.
        energy_scale, energy_shift: per-species initial values (eV); E_i = scale_s * e_i + shift_s.
    """

    model_name = "base"

    def __init__(self, type_numbers, energy_scale, energy_shift, trainable_scale_shift: bool = True):
        super().__init__()
        self.type_numbers = [int(z) for z in type_numbers]
        n = len(self.type_numbers)
        scale = torch.as_tensor(energy_scale, dtype=torch.get_default_dtype()).expand(n).clone()
        shift = torch.as_tensor(energy_shift, dtype=torch.get_default_dtype()).expand(n).clone()
        self.per_species_scale = nn.Parameter(scale, requires_grad=trainable_scale_shift)
        self.per_species_shift = nn.Parameter(shift, requires_grad=trainable_scale_shift)
        self.hyperparameters: dict = {}
        #: per layer, how many leading columns of edge_features[l] are l = 0 scalars (rest: norms)
        self.edge_feature_scalar_counts: list[int] | None = None

    @property
    def num_interaction_layers(self) -> int:
        """How many per-layer tensors ``edge_features`` holds."""
        return len(self.edge_feature_scalar_counts or [])

    @property
    def num_species(self) -> int:
        return len(self.type_numbers)

    def atomic_energies(self, batch, edge_vectors, edge_lengths) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return raw per-atom energies [N] (before scale/shift) and per-layer edge features.

        Edge features are invariant [E_s, d_l] tensors in the autograd graph, computed on the edges
        listed in ``batch[keys.EDGE_FEATURE_SAMPLE]`` when present (else on all edges), so that a
        loss on a subsample only backpropagates through that subsample.
        """
        raise NotImplementedError

    def forward(self, batch: dict, compute_forces: bool = True, compute_stress: bool | None = None, create_graph: bool | None = None) -> dict:
        """Energies, forces (-dE/dr) and, for fully periodic batches, stress ((1/V) dE/d strain).

        ``create_graph`` (default: ``self.training``) keeps the graph of the forces so that a force
        loss can be differentiated with respect to the weights.
        """
        if create_graph is None:
            create_graph = self.training
        atom_batch = batch[keys.BATCH]
        cell = batch[keys.CELL]
        num_structures = cell.shape[0]
        if compute_stress is None:
            compute_stress = bool(batch[keys.PBC].all())
        positions_leaf = batch[keys.POSITIONS]
        if compute_forces:
            positions_leaf = positions_leaf.detach().requires_grad_(True)
        positions = positions_leaf
        strain = None
        if compute_stress:
            # homogeneous strain of positions and cell: dE/d(strain) = V * stress
            strain = torch.zeros((num_structures, 3, 3), dtype=positions.dtype, device=positions.device, requires_grad=True)
            symmetric = 0.5 * (strain + strain.transpose(1, 2))
            positions = positions + torch.einsum("ni,nij->nj", positions, symmetric[atom_batch])
            cell = cell + torch.bmm(cell, symmetric)
        centre, neighbour = batch[keys.EDGE_INDEX]
        edge_cell = cell[atom_batch[centre]]
        edge_vectors = positions[neighbour] - positions[centre] + torch.einsum("ei,eij->ej", batch[keys.EDGE_CELL_SHIFT], edge_cell)
        edge_lengths = torch.linalg.norm(edge_vectors, dim=-1)

        raw, edge_features = self.atomic_energies(batch, edge_vectors, edge_lengths)
        species = batch[keys.SPECIES]
        atomic = raw * self.per_species_scale[species] + self.per_species_shift[species]
        energy = scatter_sum(atomic, atom_batch, num_structures)
        out = {keys.TOTAL_ENERGY: energy, keys.ATOMIC_ENERGIES: atomic, keys.EDGE_FEATURES: edge_features}
        wrt = ([positions_leaf] if compute_forces else []) + ([strain] if compute_stress else [])
        if wrt:
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph)
            if compute_forces:
                out[keys.FORCES] = -grads[0]
            if compute_stress:
                volume = torch.abs(torch.linalg.det(batch[keys.CELL]))
                out[keys.VIRIAL] = -grads[-1]
                out[keys.STRESS] = grads[-1] / volume.view(-1, 1, 1)
        return out
