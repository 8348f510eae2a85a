"""Allegro (Musaelian et al., Nat. Commun. 2023): a strictly local, edge-based equivariant model.

Every quantity lives on an edge i -> j within r_max; the energy is a sum of per-edge energies.
  * two-body latent  x_ij^0 = MLP([onehot(Z_i), onehot(Z_j), B(r_ij)]) * u(r_ij)
    (B: Bessel basis times polynomial cutoff, u: the cutoff envelope);
  * tensor track     V_ij^0 = w(x_ij^0) * Y(r_ij) per channel;
  * each layer:      environment of i   G_i = sum_k u(r_ik) w_l(x_ik) Y(r_ik) / sqrt(<n>),
                     V_ij <- Linear( TP_uuu(V_ij, G_i) )   (channel-wise tensor product),
                     x_ij <- (x_ij + MLP([x_ij, scalars of TP])) / sqrt(2) * u(r_ij);
  * edge energy      E_ij = u(r_ij) MLP(x_ij^L);  atomic energy  E_i = sum_j E_ij / sqrt(<n>).
``edge_features`` are the scalar latents x_ij after each layer.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from stableff.data import keys
from stableff.models.base import ForceField
from stableff.models.blocks import RadialEmbedding, mlp, scatter_sum


def weighted_spherical_harmonics(weights: torch.Tensor, sh: torch.Tensor, sh_irreps: o3.Irreps, num_channels: int) -> torch.Tensor:
    """V[e, u, (l, m)] = weights[e, u, l] * Y_lm[e], laid out as e3nn irreps num_channels x (each l)."""
    weights = weights.view(weights.shape[0], num_channels, len(sh_irreps))
    blocks = []
    for index, ((_, ir), sl) in enumerate(zip(sh_irreps, sh_irreps.slices())):
        blocks.append((weights[:, :, index, None] * sh[:, None, sl]).reshape(sh.shape[0], num_channels * ir.dim))
    return torch.cat(blocks, dim=-1)


class AllegroLayer(nn.Module):
    def __init__(self, irreps_in: o3.Irreps, sh_irreps: o3.Irreps, irreps_out_allowed, num_tensor: int, num_scalar: int, latent_hidden: list[int]):
        super().__init__()
        self.num_tensor = num_tensor
        self.sh_irreps = sh_irreps
        self.env_irreps = o3.Irreps([(num_tensor, ir) for _, ir in sh_irreps])
        self.env_weights = nn.Linear(num_scalar, num_tensor * len(sh_irreps))
        mid, instructions = [], []
        for i1, (_, ir1) in enumerate(irreps_in):
            for i2, (_, ir2) in enumerate(self.env_irreps):
                for ir in ir1 * ir2:
                    if ir in irreps_out_allowed:
                        instructions.append((i1, i2, len(mid), "uuu", False))
                        mid.append((num_tensor, ir))
        mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(irreps_in, self.env_irreps, mid, instructions, internal_weights=False, shared_weights=False)
        self.mid_irreps = mid
        self.num_tp_scalars = sum(mul for mul, ir in mid if ir == o3.Irrep("0e"))
        self.scalar_index = torch.cat([torch.arange(sl.start, sl.stop) for (mul, ir), sl in zip(mid, mid.slices()) if ir == o3.Irrep("0e")])
        out = o3.Irreps([(num_tensor, ir) for _, ir in mid.sort().irreps.simplify() if ir in irreps_out_allowed]).simplify()
        self.linear = o3.Linear(mid, out)
        self.irreps_out = out
        self.latent_mlp = mlp([num_scalar + self.num_tp_scalars] + latent_hidden + [num_scalar])

    def forward(self, latents, tensors, sh, envelope, centre, num_atoms, inv_sqrt_neighbors):
        weights = self.env_weights(latents) * envelope.unsqueeze(-1)
        environment = scatter_sum(weighted_spherical_harmonics(weights, sh, self.sh_irreps, self.num_tensor), centre, num_atoms) * inv_sqrt_neighbors
        products = self.tp(tensors, environment[centre])
        scalars = products.index_select(-1, self.scalar_index.to(products.device))
        update = self.latent_mlp(torch.cat([latents, scalars], dim=-1))
        latents = (latents + update) * (envelope.unsqueeze(-1) / math.sqrt(2.0))
        return latents, self.linear(products)


class Allegro(ForceField):
    """Allegro energy model (r_max in Angstrom)."""

    model_name = "allegro"

    def __init__(
        self,
        type_numbers,
        r_max: float = 5.0,
        num_layers: int = 2,
        l_max: int = 1,
        parity: bool = True,
        num_scalar_features: int = 32,
        num_tensor_features: int = 8,
        num_bessels: int = 8,
        polynomial_p: float = 6.0,
        two_body_mlp_width: int = 32,
        latent_mlp_width: int = 32,
        latent_mlp_depth: int = 1,
        readout_mlp_width: int = 16,
        avg_num_neighbors: float = 1.0,
        energy_scale=1.0,
        energy_shift=0.0,
    ):
        super().__init__(type_numbers, r_max, avg_num_neighbors, energy_scale, energy_shift)
        n = self.num_species
        self.sh_irreps = o3.Irreps.spherical_harmonics(l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(self.sh_irreps, normalize=True, normalization="component")
        self.radial = RadialEmbedding(r_max, num_bessels, polynomial_p)
        self.two_body = mlp([2 * n + num_bessels, two_body_mlp_width, num_scalar_features], final_activation=True)
        self.initial_weights = nn.Linear(num_scalar_features, num_tensor_features * len(self.sh_irreps))
        self.num_tensor = num_tensor_features
        allowed = [o3.Irrep(l, p) for l in range(l_max + 1) for p in ((1, -1) if parity else ((-1) ** l,))]
        irreps = o3.Irreps([(num_tensor_features, ir) for _, ir in self.sh_irreps])
        layers = []
        for index in range(num_layers):
            # the last layer only needs the scalars that update the latents
            allowed_here = allowed if index < num_layers - 1 else [o3.Irrep("0e")]
            layer = AllegroLayer(irreps, self.sh_irreps, allowed_here, num_tensor_features, num_scalar_features, [latent_mlp_width] * latent_mlp_depth)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.readout = mlp([num_scalar_features, readout_mlp_width, 1])
        self.edge_feature_scalar_counts = [num_scalar_features] * num_layers

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        centre, neighbour = batch[keys.EDGE_INDEX]
        species = batch[keys.SPECIES]
        num_atoms = species.shape[0]
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)
        radial, envelope = self.radial(edge_lengths)
        sh = self.spherical_harmonics(edge_vectors)
        latents = self.two_body(torch.cat([onehot[centre], onehot[neighbour], radial], dim=-1)) * envelope.unsqueeze(-1)
        tensors = weighted_spherical_harmonics(self.initial_weights(latents), sh, self.sh_irreps, self.num_tensor)
        states = []
        for layer in self.layers:
            latents, tensors = layer(latents, tensors, sh, envelope, centre, num_atoms, self.inv_sqrt_neighbors)
            states.append(latents)
        edge_energy = self.readout(latents).squeeze(-1) * envelope
        return scatter_sum(edge_energy, centre, num_atoms) * self.inv_sqrt_neighbors, (states if edge_states else None)
