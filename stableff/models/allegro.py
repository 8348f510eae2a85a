"""Allegro (Musaelian et al., Nat. Commun. 2023): a strictly local, edge-based equivariant model.

Every quantity lives on an edge i -> j within r_max; the energy is a sum of per-edge energies.
  * two-body latent  x_ij^0 = MLP([onehot(Z_i), onehot(Z_j), B(r_ij)]) * u(r_ij)
    (B: Bessel basis times polynomial cutoff, u: the cutoff envelope);
  * tensor track     V_ij^0 = w(x_ij^0) * Y(r_ij) per channel;
  * each layer:      environment of i   G_i = sum_k u(r_ik) w_l(x_ik) Y(r_ik) / sqrt(<n>),
                     V_ij <- Linear( TP_uuu(V_ij, G_i) )   (channel-wise tensor product),
                     x_ij^l <- (x_ij^(l-1) + MLP([x_ij^0, ..., x_ij^(l-1), scalars of TP])) / sqrt(2) * u(r_ij);
  * edge energy      E_ij = u(r_ij) MLP([x_ij^0, ..., x_ij^L]);  atomic energy  E_i = sum_j E_ij / sqrt(<n>).
``edge_features`` are the scalar latents x_ij after each layer.

``dense_latents`` (the default): each layer's latent MLP and the readout see the latents of all
earlier layers, as upstream Allegro 0.8 does; with ``false`` only the last ones (the paper's
layer, and checkpoints written before this option). On equal terms against nequip-allegro 0.8.3
the dense form closed most of the accuracy-per-step gap (benchmarks/accuracy_per_step.py).

The MLPs (``mlp_normalization="second_moment"``, the default) start with weights from
N(0, 1/fan_in) and SiLU scaled to unit second moment, so that signals keep their scale through the
layers (as e3nn's and upstream Allegro's); with PyTorch's default initialisation (``"none"``, what
checkpoints written before this option hold) the model learned markedly less per training step
(benchmarks/accuracy_per_step.py).

The radial basis (``bessel_normalization="sinc"``, the default) is sin(n pi x) / (pi x), x = r / r_max,
as upstream nequip encodes edge lengths: 2.5x the NequIP paper's sqrt(2 / r_max) sin(n pi r / r_max) / r
(``"sqrt2_rmax"``, what checkpoints written before this option hold) at r_max = 5 A, so that the two-body
MLP's radial inputs are about as large as its one-hot species inputs. On equal terms against
nequip-allegro 0.8.3 this closed the rest of the accuracy-per-step gap (benchmarks/accuracy_per_step.py).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from stableff.data import keys
from stableff.errors import ConfigError
from stableff.models.base import EnergyNetwork
from stableff.models.radial import RadialEmbedding
from stableff.models.frozen import cached_while_frozen
from stableff.models.mlp import mlp, normal_init
from stableff.models.scatter import scatter_sum
from stableff.models.tensor_products import ChannelLinear, ChannelwiseTensorProduct


def component_rows(sh_irreps: o3.Irreps, num_channels: int) -> torch.Tensor:
    """Rows of a Linear with ``num_channels * len(sh_irreps)`` outputs (channel u, degree l at
    u * L + l) repeated once per spherical-harmonic component m of l: that Linear with these rows
    gives w[e, u, l(m)] directly in the channel layout [E, U, d]."""
    degree = [l for l, (_, ir) in enumerate(sh_irreps) for _ in range(ir.dim)]
    return torch.tensor([u * len(sh_irreps) + l for u in range(num_channels) for l in degree], dtype=torch.long)


def weighted_spherical_harmonics(linear: nn.Linear, rows: torch.Tensor, x: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """V[e, u, (l, m)] = linear(x)[e, u, l] * sh[e, (l, m)] in the channel layout [E, U, d]; the
    Linear's rows are repeated (``component_rows``) instead of the [E, U, d] weights gathered."""
    bias = None if linear.bias is None else linear.bias.index_select(0, rows)
    weights = torch.nn.functional.linear(x, linear.weight.index_select(0, rows), bias)
    return weights.view(x.shape[0], weights.shape[-1] // sh.shape[-1], sh.shape[-1]) * sh.unsqueeze(1)


class AllegroLayer(nn.Module):
    def __init__(self, irreps_in: o3.Irreps, sh_irreps: o3.Irreps, irreps_out_allowed, num_tensor: int, num_scalar: int, latent_hidden: list[int],
                 normalized: bool = True, latent_inputs: int = 1):
        super().__init__()
        self.num_tensor = num_tensor
        self.sh_irreps = sh_irreps
        self.env_irreps = o3.Irreps([(num_tensor, ir) for _, ir in sh_irreps])
        self.env_weights = nn.Linear(num_scalar, num_tensor * len(sh_irreps))
        if normalized:
            normal_init(self.env_weights)
        self.register_buffer("env_rows", component_rows(sh_irreps, num_tensor), persistent=False)
        mid, instructions = [], []
        for i1, (_, ir1) in enumerate(irreps_in):
            for i2, (_, ir2) in enumerate(self.env_irreps):
                for ir in ir1 * ir2:
                    if ir in irreps_out_allowed:
                        instructions.append((i1, i2, len(mid), "uuu", False))
                        mid.append((num_tensor, ir))
        mid = o3.Irreps(mid)
        # e3nn's modules define the maps (and hold the Linear's weights); the channel-layout
        # versions compute them
        self.tp = o3.TensorProduct(irreps_in, self.env_irreps, mid, instructions, internal_weights=False, shared_weights=False)
        self.channel_tp = ChannelwiseTensorProduct(self.tp)
        self.mid_irreps = mid
        self.num_tp_scalars = sum(mul for mul, ir in mid if ir == o3.Irrep("0e"))
        offsets = [sum(ir.dim for _, ir in mid[:k]) for k in range(len(mid))]
        # the scalar component of each 0e block, read as e3nn orders them (block, then channel)
        self.register_buffer("scalar_components", torch.tensor([offsets[k] for k, (_, ir) in enumerate(mid) if ir == o3.Irrep("0e")], dtype=torch.long), persistent=False)
        out = o3.Irreps([(num_tensor, ir) for _, ir in mid.sort().irreps.simplify() if ir in irreps_out_allowed]).simplify()
        self.linear = o3.Linear(mid, out)
        self.channel_linear = ChannelLinear(self.linear)
        self.irreps_out = out
        # latent_inputs: how many [E, num_scalar] latents the MLP reads besides the product's scalars
        self.latent_mlp = mlp([latent_inputs * num_scalar + self.num_tp_scalars] + latent_hidden + [num_scalar], normalized=normalized)

    def forward(self, latents, tensors, sh_envelope, residual_scale, centre, num_atoms, need_tensors=True, earlier=()):
        """tensors [E, U, d] in the channel layout of ``tensor_products``; ``sh_envelope``: the
        spherical harmonics times u(r) / sqrt(<n>) [E, d] (u: the cutoff envelope; the environment's
        weights); ``residual_scale``: u(r) / sqrt(2) [E, 1]; ``earlier``: the latents of
        earlier layers the MLP also reads (dense latents), oldest first. Returns the new latents and
        (if ``need_tensors``) the new tensors."""
        environment = scatter_sum(weighted_spherical_harmonics(self.env_weights, self.env_rows, latents, sh_envelope), centre, num_atoms)
        # the product is pairs @ G (G: [P, D]); its scalars and its Linear (matrix L) are read off
        # the pairs by one matrix product with G folded into small matrices (G restricted to the
        # scalars, per channel; and G L), so the [E, U, D] product is never formed
        pairs = self.channel_tp.pairs(tensors, environment.index_select(0, centre))  # [E, U, P]
        num_edges = pairs.shape[0]
        folded, num_scalars = self.folded_matrix(need_tensors)
        out = pairs.reshape(num_edges, pairs.shape[1] * pairs.shape[2]) @ folded
        # split, not two slices: one gradient write for both parts instead of two zero-filled [E, columns]
        scalars, new_tensors = out.split([num_scalars, out.shape[1] - num_scalars], dim=1)
        update = self.latent_mlp([*earlier, latents, scalars])
        latents = (latents + update) * residual_scale
        return latents, (new_tensors.reshape(num_edges, self.num_tensor, new_tensors.shape[1] // self.num_tensor) if need_tensors else None)

    def folded_matrix(self, need_tensors: bool) -> tuple[torch.Tensor, int]:
        """[U * P, columns] matrix that maps the pairs to the product's scalars (the first columns,
        their count returned too; e3nn's order: 0e block, then channel) and, if ``need_tensors``, to
        its Linear's output. Built from the Linear's weight on every call while that weight is
        trained; otherwise (inference) kept until the weight or its dtype or device changes."""
        return cached_while_frozen(self, "_folded", [self.linear.weight], need_tensors, lambda: self._fold(need_tensors))

    def _fold(self, need_tensors: bool) -> tuple[torch.Tensor, int]:
        constants = self.channel_tp.constants
        mul, num_pairs = self.num_tensor, constants.shape[0]
        eye = torch.eye(mul, dtype=constants.dtype, device=constants.device)
        matrices = [torch.einsum("pk,uw->upkw", constants.index_select(1, self.scalar_components), eye).reshape(mul * num_pairs, -1)]
        if need_tensors:
            linear = self.channel_linear.matrix(self.linear.weight).view(mul, constants.shape[1], -1)
            matrices.append(torch.einsum("pq,uqx->upx", constants, linear).reshape(mul * num_pairs, -1))
        return torch.cat(matrices, dim=1), matrices[0].shape[1]


class Allegro(EnergyNetwork):
    """Allegro energy model (r_max in Angstrom)."""

    model_name = "allegro"
    #: 2: MLPs normalised (``mlp_normalization``); checkpoints written before it had PyTorch's MLPs
    #: 3: dense latents (``dense_latents``)
    #: 4: the radial basis at upstream's scale (``bessel_normalization``)
    revision = 4
    legacy_hyperparameters = {"mlp_normalization": "none", "dense_latents": False, "bessel_normalization": "sqrt2_rmax"}

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
        mlp_normalization: str = "second_moment",
        dense_latents: bool = True,
        bessel_normalization: str = "sinc",
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        if mlp_normalization not in ("second_moment", "none"):
            raise ConfigError(f"model.mlp_normalization must be 'second_moment' or 'none' (got {mlp_normalization!r})")
        if bessel_normalization not in ("sinc", "sqrt2_rmax"):
            raise ConfigError(f"model.bessel_normalization must be 'sinc' or 'sqrt2_rmax' (got {bessel_normalization!r})")
        normalized = mlp_normalization == "second_moment"
        n = self.num_species
        self.sh_irreps = o3.Irreps.spherical_harmonics(l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(self.sh_irreps, normalize=False, normalization="component")  # of unit vectors
        self.radial = RadialEmbedding(r_max, num_bessels, polynomial_p, normalization=bessel_normalization)
        self.two_body = mlp([2 * n + num_bessels, two_body_mlp_width, num_scalar_features], final_activation=True, normalized=normalized)
        self.initial_weights = nn.Linear(num_scalar_features, num_tensor_features * len(self.sh_irreps))
        if normalized:
            normal_init(self.initial_weights)
        self.num_tensor = num_tensor_features
        self.register_buffer("initial_rows", component_rows(self.sh_irreps, num_tensor_features), persistent=False)
        allowed = [o3.Irrep(l, p) for l in range(l_max + 1) for p in ((1, -1) if parity else ((-1) ** l,))]
        irreps = o3.Irreps([(num_tensor_features, ir) for _, ir in self.sh_irreps])
        layers = []
        for index in range(num_layers):
            # the last layer only needs the scalars that update the latents
            allowed_here = allowed if index < num_layers - 1 else [o3.Irrep("0e")]
            layer = AllegroLayer(irreps, self.sh_irreps, allowed_here, num_tensor_features, num_scalar_features, [latent_mlp_width] * latent_mlp_depth,
                                 normalized, latent_inputs=index + 1 if dense_latents else 1)
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.dense_latents = dense_latents
        self.readout = mlp([(num_layers + 1 if dense_latents else 1) * num_scalar_features, readout_mlp_width, 1], normalized=normalized)
        self.edge_feature_scalar_counts = [num_scalar_features] * num_layers

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        centre, neighbour = batch[keys.EDGE_INDEX]
        species = batch[keys.SPECIES]
        num_atoms = species.shape[0]
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)
        radial, envelope = self.radial(edge_lengths)
        sh = self.spherical_harmonics(edge_vectors / edge_lengths.unsqueeze(-1))  # the lengths are known: no second norm
        latents = self.two_body([onehot.index_select(0, centre), onehot.index_select(0, neighbour), radial]) * envelope.unsqueeze(-1)
        tensors = weighted_spherical_harmonics(self.initial_weights, self.initial_rows, latents, sh)
        # every layer's environment weights its neighbours by u(r) / sqrt(<n>); the residual by u(r) / sqrt(2)
        sh_envelope = sh * (envelope * self.inv_sqrt_neighbors).unsqueeze(-1)
        residual_scale = (envelope * (1.0 / math.sqrt(2.0))).unsqueeze(-1)
        states, earlier = [], []
        for index, layer in enumerate(self.layers):
            previous = latents
            latents, tensors = layer(latents, tensors, sh_envelope, residual_scale, centre, num_atoms,
                                     need_tensors=index < len(self.layers) - 1, earlier=earlier)
            if self.dense_latents:
                earlier = earlier + [previous]
            states.append(latents)
        edge_energy = self.readout([*earlier, latents] if self.dense_latents else latents).squeeze(-1) * (envelope * self.inv_sqrt_neighbors)
        return scatter_sum(edge_energy, centre, num_atoms), (states if edge_states else None)
