"""Forces and stress by autograd of the energy (the output wrapper of every model).

Forces F = -dE/dr. Stress from a homogeneous strain eps applied to positions and cell:
sigma = (1/V) dE/d eps (ASE's sign convention), virial W = -dE/d eps.
"""

from __future__ import annotations

import torch

from stableff.data import keys


def strained_edges(batch: dict, compute_forces: bool, compute_stress: bool):
    """The edge vectors and lengths of ``batch`` as functions of differentiable leaves: (positions
    leaf or None, strain [B, 3, 3] or None, edge vectors [E, 3], edge lengths [E]). Call under
    ``torch.set_grad_enabled(True)`` when forces or stress are wanted."""
    atom_batch = batch[keys.BATCH]
    cell = batch[keys.CELL]
    num_structures = cell.shape[0]
    positions_leaf = batch[keys.POSITIONS]
    if compute_forces:
        positions_leaf = positions_leaf.detach().requires_grad_(True)
    positions = positions_leaf
    strain = None
    if compute_stress:
        # homogeneous strain of positions and cell: dE/d(strain) = V * stress
        strain = torch.zeros((num_structures, 3, 3), dtype=positions.dtype, device=positions.device, requires_grad=True)
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.einsum("ni,nij->nj", positions, symmetric.index_select(0, atom_batch))
        cell = cell + torch.bmm(cell, symmetric)
    centre, neighbour = batch[keys.EDGE_INDEX]
    if num_structures == 1:  # one cell (MD, a calculator call): one [E, 3] x [3, 3] product
        shift_vectors = batch[keys.EDGE_CELL_SHIFT] @ cell[0]
    else:
        shift_vectors = torch.einsum("ei,eij->ej", batch[keys.EDGE_CELL_SHIFT], cell.index_select(0, atom_batch.index_select(0, centre)))
    edge_vectors = positions.index_select(0, neighbour) - positions.index_select(0, centre) + shift_vectors
    edge_lengths = torch.linalg.norm(edge_vectors, dim=-1)
    return (positions_leaf if compute_forces else None), strain, edge_vectors, edge_lengths


def add_forces_and_stress(out: dict, energy: torch.Tensor, positions_leaf, strain, cell: torch.Tensor, create_graph: bool) -> dict:
    """``out`` with FORCES (-dE/dr) where ``positions_leaf`` is given and VIRIAL and STRESS where
    ``strain`` is; ``create_graph`` keeps their graph (a force loss differentiated again)."""
    wrt = ([positions_leaf] if positions_leaf is not None else []) + ([strain] if strain is not None else [])
    if not wrt:
        return out
    grads = torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph)
    if positions_leaf is not None:
        out[keys.FORCES] = -grads[0]
    if strain is not None:
        volume = torch.abs(torch.linalg.det(cell))
        out[keys.VIRIAL] = -grads[-1]
        out[keys.STRESS] = grads[-1] / volume.view(-1, 1, 1)
    return out
