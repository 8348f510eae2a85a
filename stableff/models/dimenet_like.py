"""``dimenet_pp_like``: a small directed-edge model in the style of DimeNet++ (Gasteiger et al. 2020):
two-hop triplet interactions through angles, where the triplet step multiplies features element-wise
(not GemNet's bilinear layer) and the angle basis is a sine-Bessel radial basis times Legendre
polynomials (not GemNet's spherical Fourier-Bessel basis). Kept, under this honest name, as a cheaper
baseline beside ``gemnet_t`` (stableff.models.gemnet), which follows the GemNet-T paper. Forces by
autograd of the energy (conservative).

Notation: edge e = (i <- j) carries the message m_ji (centre i = edge_index[0], neighbour j).
  * radial basis     rbf(r) = Bessel(r) * u(r)           (u: polynomial cutoff envelope)
  * angle basis      cbf(theta_kji, r_kj) = rbf(r_kj)[:n_sph_radial] (x) P_l(cos theta_kji), l < num_spherical
                     (theta_kji: angle at j between j->i and j->k; P_l: Legendre polynomials)
  * embeddings       h_i = Embedding(Z_i);  m_ji = MLP([h_i, h_j, W rbf_ji])
  * interaction      triplets: m_ji += Up( sum_k  Down(m_kj) * W_r rbf_kj * (W_c cbf_kji) )
                     atoms:    h_i += MLP( sum_j m_ji * W rbf_ji );  m_ji += MLP([h_i, h_j, m_ji])
                     (residual blocks, skip connections scaled by 1/sqrt(2))
  * output blocks    E_i = sum_blocks MLP( sum_j m_ji * W rbf_ji )
Triplets (k -> j -> i) pair every edge i <- j with every edge j <- k except the one leading back to
the same image of i, so periodic images are handled. ``edge_features`` are the directed-edge
embeddings m after each interaction block.
"""

from __future__ import annotations

import torch
from torch import nn

from stableff.data import keys
from stableff.models.base import EnergyNetwork
from stableff.models.radial import RadialEmbedding
from stableff.models.triplets import build_triplets, legendre
from stableff.models.mlp import mlp
from stableff.models.directional import INV_SQRT2, Residual, both_ends, edge_messages_to_atoms
from stableff.models.scatter import scatter_sum


def silu_residual(width: int) -> Residual:
    """x + f(x), scaled by 1/sqrt(2), with f a two-layer SiLU MLP."""
    return Residual(mlp([width, width, width], final_activation=True))


class InteractionBlock(nn.Module):
    def __init__(self, edge_width: int, atom_width: int, triplet_width: int, num_radial: int, num_spherical: int, num_sph_radial: int):
        super().__init__()
        self.pre = silu_residual(edge_width)
        self.down = mlp([edge_width, triplet_width], final_activation=True, bias=False)
        self.radial_to_triplet = nn.Linear(num_radial, triplet_width, bias=False)
        self.angle_to_triplet = nn.Linear(num_spherical * num_sph_radial, triplet_width, bias=False)
        self.up = mlp([triplet_width, edge_width], final_activation=True, bias=False)
        self.after_triplet = silu_residual(edge_width)
        self.radial_to_atom = nn.Linear(num_radial, edge_width, bias=False)
        self.edge_to_atom = mlp([edge_width, atom_width], final_activation=True)
        self.atom_update = silu_residual(atom_width)
        self.concat = mlp([2 * atom_width + edge_width, edge_width], final_activation=True)
        self.post = silu_residual(edge_width)

    def forward(self, h, m, rbf, cbf, centre, neighbour, e_in, e_out, inv_sqrt_neighbors):
        skip = m
        x = self.pre(m)
        # triplets: messages k -> j feed j -> i
        x_kj = self.down(x) * self.radial_to_triplet(rbf)
        triplet = x_kj.index_select(0, e_in) * self.angle_to_triplet(cbf)
        aggregated = scatter_sum(triplet, e_out, m.shape[0]) * inv_sqrt_neighbors
        m = (skip + self.up(aggregated)) * INV_SQRT2
        m = self.after_triplet(m)
        # atom self-interaction and the edge update from both ends
        atom_messages = edge_messages_to_atoms(m, self.radial_to_atom(rbf), centre, h.shape[0], inv_sqrt_neighbors)
        h = (h + self.atom_update(self.edge_to_atom(atom_messages))) * INV_SQRT2
        m = (m + self.concat(both_ends(h, m, centre, neighbour))) * INV_SQRT2
        return h, self.post(m)


class OutputBlock(nn.Module):
    def __init__(self, edge_width: int, atom_width: int, num_radial: int):
        super().__init__()
        self.radial = nn.Linear(num_radial, edge_width, bias=False)
        self.net = nn.Sequential(nn.Linear(edge_width, atom_width), nn.SiLU(), nn.Linear(atom_width, atom_width), nn.SiLU(), nn.Linear(atom_width, 1, bias=False))

    def forward(self, m, rbf, centre, num_atoms, inv_sqrt_neighbors):
        return self.net(edge_messages_to_atoms(m, self.radial(rbf), centre, num_atoms, inv_sqrt_neighbors)).squeeze(-1)


class DimeNetPPLike(EnergyNetwork):
    """DimeNet++-style energy model with element-wise triplet interaction (r_max in Angstrom)."""

    model_name = "dimenet_pp_like"

    def __init__(
        self,
        type_numbers,
        r_max: float = 5.0,
        num_blocks: int = 3,
        atom_features: int = 32,
        edge_features: int = 32,
        triplet_features: int = 16,
        num_radial: int = 8,
        num_spherical: int = 5,
        num_sph_radial: int = 4,
        polynomial_p: float = 6.0,
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        self.num_spherical = num_spherical
        self.num_sph_radial = min(num_sph_radial, num_radial)
        self.radial = RadialEmbedding(r_max, num_radial, polynomial_p)
        self.atom_embedding = nn.Embedding(self.num_species, atom_features)
        self.edge_embedding = mlp([2 * atom_features + num_radial, edge_features], final_activation=True)
        self.blocks = nn.ModuleList(
            InteractionBlock(edge_features, atom_features, triplet_features, num_radial, num_spherical, self.num_sph_radial) for _ in range(num_blocks)
        )
        self.outputs = nn.ModuleList(OutputBlock(edge_features, atom_features, num_radial) for _ in range(num_blocks + 1))
        self.edge_feature_scalar_counts = [edge_features] * num_blocks

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        centre, neighbour = batch[keys.EDGE_INDEX]
        num_atoms = batch[keys.SPECIES].shape[0]
        e_in, e_out = build_triplets(batch[keys.EDGE_INDEX], batch[keys.EDGE_CELL_SHIFT].round().long(), num_atoms)
        rbf, envelope = self.radial(edge_lengths)
        envelope = envelope.unsqueeze(-1)
        # angle at j between j -> i (= -vector of edge i <- j) and j -> k (= vector of edge j <- k)
        v_out, v_in = -edge_vectors.index_select(0, e_out), edge_vectors.index_select(0, e_in)
        cos_theta = (v_out * v_in).sum(-1) / (edge_lengths.index_select(0, e_out) * edge_lengths.index_select(0, e_in))
        cbf = (rbf[e_in, : self.num_sph_radial, None] * legendre(cos_theta.clamp(-1.0, 1.0), self.num_spherical)[:, None, :]).flatten(1)
        h = self.atom_embedding(batch[keys.SPECIES])
        m = self.edge_embedding(torch.cat([h.index_select(0, centre), h.index_select(0, neighbour), rbf], dim=-1)) * envelope
        energies = self.outputs[0](m, rbf, centre, num_atoms, self.inv_sqrt_neighbors)
        states = []
        for block, output in zip(self.blocks, self.outputs[1:]):
            h, m = block(h, m, rbf, cbf, centre, neighbour, e_in, e_out, self.inv_sqrt_neighbors)
            m = m * envelope  # messages of edges leaving the cutoff fade out smoothly
            energies = energies + output(m, rbf, centre, num_atoms, self.inv_sqrt_neighbors)
            states.append(m)
        return energies, (states if edge_states else None)
