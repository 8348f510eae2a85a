"""NequIP (Batzner et al., Nat. Commun. 2022): E(3)-equivariant message passing with e3nn.

Each interaction layer computes, on every edge i <- j, the message
    m_ij = TP( W1 h_j , Y(r_ij) ; R(|r_ij|) )
(a tensor product of the neighbour's features with the spherical harmonics of the edge, weighted
per path by a radial MLP R of the Bessel basis times the polynomial cutoff), sums the messages on
each atom divided by sqrt(mean neighbour count), mixes them with a linear layer, adds a
species-dependent self-connection, and applies an equivariant gate nonlinearity (with a residual
connection where shapes allow). The invariant view of m_ij (scalars, and norms of l > 0 channels)
is the layer's ``edge_features`` (computed only when asked).
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn

from stableff.data import keys
from stableff.models.base import EnergyNetwork
from stableff.models.edge_memory import KeptEdgeWork, kept_edge_work
from stableff.models.invariants import InvariantChannels, scatter_sum_and_view
from stableff.models.radial import RadialEmbedding
from stableff.models.frozen import cached_while_frozen, linear_map_matrix, weights_frozen
from stableff.models.scatter import scatter_sum
from stableff.models.tensor_products import EdgeMatrixTensorProduct


class RadialMLP(FullyConnectedNet):
    """e3nn's ``FullyConnectedNet`` (same parameters, same values to float rounding) with its
    constant factors (weight normalisation, the activation's second-moment constant) applied to the
    small weight matrices instead of the [E, width] activations: two fewer passes over the edges
    per hidden layer, forward and backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        carry = 1.0  # factor owed by x, paid by the next weight matrix
        for layer in self:
            if layer.act is not None:
                x = x @ (layer.weight * (carry / (layer.h_in * layer.var_in) ** 0.5))
                x = layer.act.f(x)
                carry = (1.0 if layer.act._is_id else layer.act.cst) * layer.var_out**0.5
            else:
                x = x @ (layer.weight * (carry / (layer.h_in * layer.var_in / layer.var_out) ** 0.5))
                carry = 1.0
        return x if carry == 1.0 else x * carry


def _path_exists(irreps_in, irreps_edge, ir_out) -> bool:
    ir_out = o3.Irrep(ir_out)
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps_in for _, ir2 in irreps_edge)


def hidden_irreps(num_features: int, l_max: int, parity: bool) -> o3.Irreps:
    """num_features copies of every irrep up to l_max: both parities if ``parity``, else the natural
    parity (-1)^l only (as upstream NequIP)."""
    irreps = [(num_features, (l, p)) for l in range(l_max + 1) for p in ((1, -1) if parity else ((-1) ** l,))]
    return o3.Irreps(irreps).sort().irreps.simplify()


class InteractionLayer(nn.Module):
    """One NequIP convolution + gate. Returns new node features and the invariant edge messages.

    Memory: a layer's edge work (radial MLP, product, their gradients for the forces) peaks at
    ~18 KiB per edge in float32, so at inference on structures of more than ``chunk_above`` edges
    (~11,000 atoms of a dense solid at 5 A) the messages are summed ``edge_chunk`` edges at a time.
    The force backward keeps the saved tensors of as many chunks as the evaluation's memory budget
    holds (``models/edge_memory.py``) and recomputes the others (torch.utils.checkpoint): the peak
    is the kept chunks' and one chunk's backward, for one more forward pass of the recomputed edge
    work. Training, tracing (the TorchScript export) and torch.compile always take the one-pass path."""

    chunk_above = 1 << 19
    edge_chunk = 1 << 17

    def __init__(self, irreps_in, irreps_target, irreps_edge, num_species, num_basis, radial_hidden, resnet):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in)
        act_scalars = {1: torch.nn.functional.silu, -1: torch.tanh}
        act_gates = {1: torch.sigmoid, -1: torch.tanh}
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_target if ir.l == 0 and _path_exists(irreps_in, irreps_edge, ir)]).simplify()
        gated = o3.Irreps([(m, ir) for m, ir in irreps_target if ir.l > 0 and _path_exists(irreps_in, irreps_edge, ir)]).simplify()
        gate_ir = "0e" if _path_exists(irreps_in, irreps_edge, "0e") else "0o"
        gates = o3.Irreps([(m, gate_ir) for m, _ in gated]).simplify()
        self.gate = Gate(
            scalars, [act_scalars[ir.p] for _, ir in scalars], gates, [act_gates[o3.Irrep(gate_ir).p] for _ in gates], gated
        )
        irreps_out = self.gate.irreps_in  # what the convolution must produce

        self.linear_1 = o3.Linear(irreps_in, irreps_in)
        irreps_mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_edge) in enumerate(irreps_edge):
                for ir_out in ir_in * ir_edge:
                    if ir_out in irreps_out:
                        instructions.append((i, j, len(irreps_mid), "uvu", True))
                        irreps_mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(irreps_mid)
        irreps_mid, permutation, _ = irreps_mid.sort()
        instructions = [(a, b, permutation[c], mode, train) for a, b, c, mode, train in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_edge, irreps_mid, instructions, shared_weights=False, internal_weights=False)
        self.channel_tp = EdgeMatrixTensorProduct(self.tp)
        self.radial = RadialMLP([num_basis] + list(radial_hidden) + [self.tp.weight_numel], torch.nn.functional.silu)
        self.linear_2 = o3.Linear(irreps_mid.simplify(), irreps_out)
        self.self_connection = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{num_species}x0e"), irreps_out)
        self.irreps_mid = irreps_mid
        self.invariant_view = InvariantChannels(irreps_mid, component_major=True)
        self.irreps_out = self.gate.irreps_out
        self.resnet = resnet and irreps_in == self.irreps_out
        # the gate as e3nn computes it, in fewer passes, where its sorted input holds scalars, gates
        # and gated blocks in that order (e3nn's Gate otherwise); the gated blocks as runs of the
        # same dimension (gates offset, number of channels, dimension)
        order = torch.cat(self.gate.sc(torch.arange(irreps_out.dim, dtype=torch.float64).unsqueeze(0)), dim=-1).squeeze(0)
        self.gate_in_order = torch.equal(order, torch.arange(irreps_out.dim, dtype=torch.float64))
        self.gate_columns = (self.gate.irreps_scalars.dim, self.gate.irreps_gates.dim)  # plain ints: torch.compile guards them
        self.gate_runs: list[list[int]] = []
        offset = 0
        for mul, ir in self.gate.irreps_gated:
            if self.gate_runs and self.gate_runs[-1][2] == ir.dim:
                self.gate_runs[-1][1] += mul
            else:
                self.gate_runs.append([offset, mul, ir.dim])
            offset += mul

    def forward(self, node_features, node_onehot, edge_sh, edge_radial, edge_index, inv_sqrt_neighbors: float, feature_edges: int | None = None,
                kept: KeptEdgeWork | None = None):
        """New node features, and with ``feature_edges`` the invariant view of the messages (the
        layer's edge features) on the first ``feature_edges`` edges (None otherwise). ``kept``: the
        evaluation's budget for kept chunks, where the messages are summed in chunks (None: every
        chunk is recomputed in the backward).

        With frozen weights (inference) the node-side linear maps run as matrices read off e3nn's
        modules once (``inference_matrices``); while training, through e3nn's modules."""
        centre, neighbour = edge_index
        frozen = weights_frozen(self.node_weights())
        if frozen:
            mix, aggregate, self_connection = self.inference_matrices(inv_sqrt_neighbors)
            mixed = node_features @ mix
        else:
            mixed = self.linear_1(node_features)
        num_edges = centre.shape[0]
        if frozen and feature_edges is None and num_edges > self.chunk_above and not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            summed, features = self.summed_in_chunks(mixed, edge_sh, edge_radial, centre, neighbour, kept), None
        elif feature_edges is None:
            summed, features = self.summed_messages(mixed, edge_sh, edge_radial, centre, neighbour), None
        else:
            summed, features = scatter_sum_and_view(self.messages(mixed, edge_sh, edge_radial, neighbour), centre, node_features.shape[0], self.invariant_view, feature_edges)
        if frozen:
            num_nodes, num_species = node_onehot.shape
            per_species = (node_features @ self_connection).view(num_nodes, num_species, -1)
            updated = summed @ aggregate + (per_species * node_onehot.unsqueeze(-1)).sum(dim=1)
        else:
            aggregated = self.channel_tp.to_irreps(summed) * inv_sqrt_neighbors
            updated = self.linear_2(aggregated) + self.self_connection(node_features, node_onehot)
        updated = self.gated(updated)
        if self.resnet:
            updated = updated + node_features
        return updated, features

    def messages(self, mixed, edge_sh, edge_radial, neighbour) -> torch.Tensor:
        """The messages of these edges: [E, D * U] (component-major)."""
        return self.channel_tp(mixed, neighbour, edge_sh, self.radial(edge_radial))

    def summed_messages(self, mixed, edge_sh, edge_radial, centre, neighbour) -> torch.Tensor:
        """The messages of these edges summed on their centres: [N, D * U]."""
        return scatter_sum(self.messages(mixed, edge_sh, edge_radial, neighbour), centre, mixed.shape[0], index_only=not self.training)

    def summed_in_chunks(self, mixed, edge_sh, edge_radial, centre, neighbour, kept: KeptEdgeWork | None = None) -> torch.Tensor:
        """``summed_messages`` ``edge_chunk`` edges at a time; with gradients, each chunk kept for the
        backward while ``kept`` admits it, recomputed there otherwise."""
        from torch.utils.checkpoint import checkpoint

        summed, bytes_per_edge = None, None
        for start in range(0, centre.shape[0], self.edge_chunk):
            part = slice(start, start + self.edge_chunk)
            args = (mixed, edge_sh[part], edge_radial[part], centre[part], neighbour[part])
            num_edges = args[3].shape[0]
            if not torch.is_grad_enabled():
                chunk = self.summed_messages(*args)
            elif kept is not None and kept.admits(num_edges, bytes_per_edge):
                chunk, saved = kept.run(self.summed_messages, args, num_edges)
                bytes_per_edge = saved / num_edges if bytes_per_edge is None else max(bytes_per_edge, saved / num_edges)
            else:
                chunk = checkpoint(self.summed_messages, *args, use_reentrant=False)
                if kept is not None:
                    kept.recomputed_chunks += 1
            summed = chunk if summed is None else summed + chunk
        return summed

    def node_weights(self) -> list[torch.Tensor]:
        return [*self.linear_1.parameters(), *self.linear_2.parameters(), *self.self_connection.parameters()]

    def inference_matrices(self, inv_sqrt_neighbors: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(linear_1 as a [d_in, d_in] matrix; the summed messages (component-major) -> e3nn's
        layout -> times 1/sqrt(<n>) -> linear_2 as one matrix; the self-connection as one [d_in, d_out]
        block per species side by side), read off e3nn's modules and kept while the weights are
        unchanged."""

        def build():
            like = self.linear_2.weight
            mix = linear_map_matrix(self.linear_1, self.linear_1.irreps_in.dim, like)
            aggregate = linear_map_matrix(lambda rows: self.linear_2(self.channel_tp.to_irreps(rows)), self.irreps_mid.dim, like) * inv_sqrt_neighbors
            num_in, num_species = self.self_connection.irreps_in1.dim, self.self_connection.irreps_in2.dim
            species = torch.eye(num_species, dtype=like.dtype, device=like.device)
            self_connection = torch.cat([linear_map_matrix(lambda rows: self.self_connection(rows, species[s].expand(rows.shape[0], -1)), num_in, like)
                                         for s in range(num_species)], dim=1)
            return mix, aggregate, self_connection

        with torch.no_grad():
            return cached_while_frozen(self, "_inference_matrices", self.node_weights(), float(inv_sqrt_neighbors), build)

    def gated(self, features: torch.Tensor) -> torch.Tensor:
        """e3nn's ``Gate`` (its activations, its order): scalars through their activations, each
        gated channel times its activated gate; one multiplication per run of gated blocks."""
        if not self.gate_in_order:
            return self.gate(features)
        num_scalars, num_gates = self.gate_columns
        scalars = self.gate.act_scalars(features[:, :num_scalars])
        if num_gates == 0:
            return scalars
        gates = self.gate.act_gates(features[:, num_scalars : num_scalars + num_gates])
        gated = features[:, num_scalars + num_gates :]
        parts, column = [scalars], 0
        for first, channels, dim in self.gate_runs:
            block = gated[:, column : column + channels * dim].reshape(-1, channels, dim)
            parts.append((block * gates[:, first : first + channels].unsqueeze(-1)).reshape(block.shape[0], -1))
            column += channels * dim
        return torch.cat(parts, dim=-1)


class NequIP(EnergyNetwork):
    """NequIP energy model. Hyper-parameters follow the upstream names (r_max in Angstrom)."""

    model_name = "nequip"
    samples_edge_states = True

    def __init__(
        self,
        type_numbers,
        r_max: float = 5.0,
        num_layers: int = 3,
        l_max: int = 1,
        parity: bool = True,
        num_features: int = 32,
        num_bessels: int = 8,
        polynomial_p: float = 6.0,
        radial_mlp_depth: int = 2,
        radial_mlp_width: int = 64,
        avg_num_neighbors: float = 1.0,
        resnet: bool = False,
        bessel_trainable: bool = False,
    ):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        n = self.num_species
        self.irreps_edge = o3.Irreps.spherical_harmonics(l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_edge, normalize=False, normalization="component")  # of unit vectors
        self.radial = RadialEmbedding(r_max, num_bessels, polynomial_p, trainable=bessel_trainable)
        self.embedding = o3.Linear(o3.Irreps(f"{n}x0e"), o3.Irreps(f"{num_features}x0e"))
        hidden = hidden_irreps(num_features, l_max, parity)
        irreps = o3.Irreps(f"{num_features}x0e")
        layers = []
        for index in range(num_layers):
            # the last layer only needs the scalars the energy readout uses
            target = hidden if index < num_layers - 1 else o3.Irreps(f"{num_features}x0e")
            layer = InteractionLayer(
                irreps, target, self.irreps_edge, n, num_bessels,
                [radial_mlp_width] * radial_mlp_depth, resnet,
            )
            layers.append(layer)
            irreps = layer.irreps_out
        self.layers = nn.ModuleList(layers)
        self.edge_feature_scalar_counts = [layer.invariant_view.num_scalars for layer in layers]
        self.readout = o3.Linear(irreps, o3.Irreps("1x0e"))

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        species = batch[keys.SPECIES]
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)
        edge_sh = self.spherical_harmonics(edge_vectors / edge_lengths.unsqueeze(-1))  # the lengths are known: no second norm
        edge_radial, _ = self.radial(edge_lengths)
        features = self.embedding(onehot)
        feature_edges = self.feature_edge_count(batch) if edge_states else None
        edge_index = batch[keys.EDGE_INDEX]
        kept = None
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and edge_index.shape[1] > InteractionLayer.chunk_above and torch.is_grad_enabled():
            kept = kept_edge_work(self, edge_index.device)
            self.last_kept_edge_work = kept  # how many chunks were kept and recomputed (benchmarks read it)
        states = []
        for layer in self.layers:
            features, edge_features = layer(features, onehot, edge_sh, edge_radial, edge_index, self.inv_sqrt_neighbors, feature_edges, kept)
            states.append(edge_features)
        energies = self.readout(features).squeeze(-1)
        return energies, (states if edge_states else None)
