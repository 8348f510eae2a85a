"""Equivariant products written as a few dense kernels, with e3nn's own modules as the reference.

e3nn's ``TensorProduct`` and ``Linear`` generate one small kernel (and its backward) per path and
per irrep block; on the edge tensors of NequIP and Allegro (thousands of edges, a handful of
channels, l <= 2) that is most of the time of an evaluation. The modules here compute the same
maps (same weights, same values to float rounding, tested against e3nn in float64) as one or two
matrix products each. Their constants are read off the e3nn module they replace by evaluating it on
unit inputs, so the normalisation is e3nn's by construction.

Layouts: e3nn's layout is blocks of ``mul x (2l+1)`` (channel-major within a block). The
*channel layout* used here is ``[..., U, d]``: for each channel u the components of all blocks side
by side (every block has the same multiplicity U).
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn


def _blocks(irreps) -> list[tuple[int, int]]:
    """(multiplicity, dimension) of every block; plain integers, which torch.compile can guard on."""
    return [(mul, ir.dim) for mul, ir in irreps] if isinstance(irreps, o3.Irreps) else list(irreps)


def to_channels(x: torch.Tensor, irreps, component_major: bool = False) -> torch.Tensor:
    """[n, irreps.dim] in e3nn's layout -> [n, U, d] (every block of multiplicity U), or with
    ``component_major`` [n, d, U] (the components of all blocks stacked, one row of U channels each).
    ``irreps``: e3nn Irreps or the (multiplicity, dimension) of each block."""
    blocks = _blocks(irreps)
    mul = blocks[0][0]
    parts = torch.split(x, [m * dim for m, dim in blocks], dim=-1)
    if component_major:
        return torch.cat([p.reshape(x.shape[0], mul, dim).transpose(1, 2) for p, (_, dim) in zip(parts, blocks)], dim=1)
    return torch.cat([p.reshape(x.shape[0], mul, dim) for p, (_, dim) in zip(parts, blocks)], dim=-1)


def from_channels(x: torch.Tensor, irreps, component_major: bool = False) -> torch.Tensor:
    """[n, U, d] channel layout (or [n, d, U] with ``component_major``) -> [n, irreps.dim] in e3nn's layout."""
    dims = [dim for _, dim in _blocks(irreps)]
    if component_major:
        return torch.cat([p.transpose(1, 2).reshape(x.shape[0], p.shape[1] * p.shape[2]) for p in torch.split(x, dims, dim=1)], dim=-1)
    return torch.cat([p.reshape(x.shape[0], p.shape[1] * p.shape[2]) for p in torch.split(x, dims, dim=-1)], dim=-1)


def _one_multiplicity(*irreps_list) -> int:
    muls = {mul for irreps in irreps_list for mul, _ in irreps}
    if len(muls) != 1:
        raise ValueError(f"needs one multiplicity for every block (got {' ; '.join(str(i) for i in irreps_list)})")
    return muls.pop()


def _float64_copy(tp: o3.TensorProduct) -> o3.TensorProduct:
    """The same product built in float64: its Wigner 3j symbols computed in float64 (a module built
    in float32 and cast holds them rounded to float32, which breaks equivariance of a float64 model
    at ~1e-9 relative), its paths weighted as ``tp``'s (their normalisation already folded into
    each instruction's path weight, hence no normalisation of its own)."""
    instructions = [(ins.i_in1, ins.i_in2, ins.i_out, ins.connection_mode, ins.has_weight, ins.path_weight**2) for ins in tp.instructions]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        rebuilt = o3.TensorProduct(tp.irreps_in1, tp.irreps_in2, tp.irreps_out, instructions, irrep_normalization="none",
                                   path_normalization="none", internal_weights=tp.internal_weights, shared_weights=tp.shared_weights)
    finally:
        torch.set_default_dtype(default)
    if tp.internal_weights and tp.weight_numel:
        rebuilt.weight.data.copy_(tp.weight.detach().to(torch.float64))
    return rebuilt


def _probe(tp: o3.TensorProduct) -> torch.Tensor:
    """G[i, j, q] (float64): component q of channel 0 of the output when channel 0 of the first
    input is the unit vector i and channel 0 of the second the unit vector j (weights 1)."""
    def channel0(irreps):
        return [sl.start + m for sl, (_, ir) in zip(irreps.slices(), irreps) for m in range(ir.dim)]

    in1, in2, out = channel0(tp.irreps_in1), channel0(tp.irreps_in2), channel0(tp.irreps_out)
    probe = _float64_copy(tp)
    n = len(in1) * len(in2)
    x1 = torch.zeros(n, tp.irreps_in1.dim, dtype=torch.float64)
    x2 = torch.zeros(n, tp.irreps_in2.dim, dtype=torch.float64)
    pairs = torch.cartesian_prod(torch.arange(len(in1)), torch.arange(len(in2)))
    x1[torch.arange(n), torch.tensor(in1)[pairs[:, 0]]] = 1.0
    x2[torch.arange(n), torch.tensor(in2)[pairs[:, 1]]] = 1.0
    args = (x1, x2) if tp.weight_numel == 0 or tp.internal_weights else (x1, x2, torch.ones(n, tp.weight_numel, dtype=torch.float64))
    return probe(*args)[:, out].reshape(len(in1), len(in2), len(out))


class _ExactConstants(nn.Module):
    """Keeps a float64 copy of its ``constants`` buffer so that a model built in float32 and cast to
    float64 gets them to float64 precision."""

    def _set_constants(self, constants: torch.Tensor) -> None:
        self._exact_constants = constants
        self.register_buffer("constants", constants.to(torch.get_default_dtype()), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.constants = self._exact_constants.to(device=self.constants.device, dtype=self.constants.dtype)
        return self


class EdgeMatrixTensorProduct(_ExactConstants):
    """NequIP's "uvu" tensor product of neighbour features with the edge's spherical harmonics Y
    (multiplicity 1), weighted per edge, channel and path, as one small matrix per edge.

    ``m[e, q, u] = w[e, path(q), u] * sum_i A_e[q, i] x[e, i, u]`` with ``A_e = sum_j Y_ej G_j``:
    x holds the neighbour's components of all blocks stacked (d_in rows of U channels), q runs over
    the components of the output blocks (one block per path). One matrix product for A, one
    batched matrix product and one multiplication with the weights. Messages come out as
    [E, D * U] (component-major); ``to_irreps`` turns (summed) rows into e3nn's layout and
    ``irreps_columns`` says where each e3nn component sits.
    """

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        irreps_in, irreps_edge, irreps_out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        self.mul = _one_multiplicity(irreps_in, irreps_out)
        if any(mul != 1 for mul, _ in irreps_edge) or any(ins.connection_mode != "uvu" for ins in tp.instructions):
            raise ValueError("EdgeMatrixTensorProduct needs Y of multiplicity 1 and uvu paths")
        if sorted(ins.i_out for ins in tp.instructions) != list(range(len(irreps_out))):
            raise ValueError("EdgeMatrixTensorProduct needs one path per output block")
        self.in_blocks, self.out_blocks = _blocks(irreps_in), _blocks(irreps_out)
        out_dims = [dim for _, dim in self.out_blocks]
        self.num_paths = len(tp.instructions)
        path_of_block = {ins.i_out: p for p, ins in enumerate(tp.instructions)}
        self.register_buffer("path_of_component", torch.tensor(
            [path_of_block[k] for k, dim in enumerate(out_dims) for _ in range(dim)], dtype=torch.long), persistent=False)
        # G[j, q, i], flattened so that Y @ constants is A [E, D * d_in]
        self._set_constants(_probe(tp).permute(1, 2, 0).reshape(irreps_edge.dim, -1))
        # where e3nn's component (block k, channel u, m) sits in the layout [q, u]
        offsets = [sum(out_dims[:k]) for k in range(len(out_dims))]
        self.irreps_columns = [(offsets[k] + m) * self.mul + u for k, dim in enumerate(out_dims) for u in range(self.mul) for m in range(dim)]

    def forward(self, node_features: torch.Tensor, neighbour: torch.Tensor, edge_sh: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """node_features [N, irreps_in] (e3nn layout), neighbour [E], edge_sh [E, d_edge], weights
        [E, weight_numel] -> messages [E, D * U] (component-major)."""
        num_edges, u = edge_sh.shape[0], self.mul
        x = to_channels(node_features, self.in_blocks, component_major=True).index_select(0, neighbour)  # [E, d_in, U]
        a = (edge_sh @ self.constants).view(num_edges, self.constants.shape[1] // x.shape[1], x.shape[1])  # [E, D, d_in]
        w = weights.view(num_edges, self.num_paths, u).index_select(1, self.path_of_component)  # [E, D, U]
        return (torch.bmm(a, x) * w).reshape(num_edges, a.shape[1] * u)

    def to_irreps(self, rows: torch.Tensor) -> torch.Tensor:
        """[n, D * U] component-major rows -> [n, irreps_out] in e3nn's layout."""
        return from_channels(rows.view(rows.shape[0], rows.shape[1] // self.mul, self.mul), self.out_blocks, component_major=True)


class ChannelwiseTensorProduct(_ExactConstants):
    """Allegro's "uuu" tensor product (channel u of one input with channel u of the other, no
    weights) in the channel layout: ``out[e, u, q] = sum_ij x[e, u, i] y[e, u, j] G[i, j, q]``, one
    outer product and one matrix product. Inputs [E, U, d1], [E, U, d2] -> [E, U, D] with the
    output blocks of ``tp.irreps_out`` side by side."""

    def __init__(self, tp: o3.TensorProduct):
        super().__init__()
        self.mul = _one_multiplicity(tp.irreps_in1, tp.irreps_in2, tp.irreps_out)
        if any(ins.connection_mode != "uuu" or ins.has_weight for ins in tp.instructions):
            raise ValueError("ChannelwiseTensorProduct needs uuu paths without weights")
        probe = _probe(tp)
        # only the component pairs (i, j) that reach an output (e.g. 4 of 28 when only scalars are
        # asked for)
        pairs = probe.abs().sum(-1).nonzero()
        # x_i y_j for pair p = (i, j) as (x @ S1)[p] * (y @ S2)[p] with one-hot S1 [d1, P], S2 [d2, P]:
        # two thin matrix products and one dense multiplication, forward and backward (a batched
        # outer product or gathers along the last axis run ~1.3-2x slower on CPU for U of ~8)
        columns = torch.arange(len(pairs))
        select_first = torch.zeros(probe.shape[0], len(pairs))
        select_first[pairs[:, 0], columns] = 1.0
        select_second = torch.zeros(probe.shape[1], len(pairs))
        select_second[pairs[:, 1], columns] = 1.0
        self.register_buffer("select_first", select_first, persistent=False)
        self.register_buffer("select_second", select_second, persistent=False)
        self._set_constants(probe[pairs[:, 0], pairs[:, 1]])

    def pairs(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[E, U, P]: x_i y_j for the P component pairs that reach an output (``forward`` is this
        times ``constants``; a caller may contract the pairs with a product of constants instead)."""
        rows = x.shape[0] * x.shape[1]
        first = x.reshape(rows, self.select_first.shape[0]) @ self.select_first
        second = y.reshape(rows, self.select_second.shape[0]) @ self.select_second
        return (first * second).view(x.shape[0], x.shape[1], self.select_first.shape[1])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.pairs(x, y) @ self.constants


class ChannelLinear(_ExactConstants):
    """e3nn's ``Linear`` (its weights, its path normalisation: each output block the normalised sum
    over input blocks of the same irrep of ``x_block @ W``) on the channel layout, as one matrix
    product with a [U * d_in, U * d_out] matrix assembled from the weights on each call. The weights
    stay the Linear's parameter (passed to ``forward``), so checkpoints keep their keys."""

    def __init__(self, linear: o3.Linear):
        super().__init__()
        self.mul = _one_multiplicity(linear.irreps_in, linear.irreps_out)
        if linear.bias_numel:
            raise ValueError("ChannelLinear needs a Linear without bias")
        in_offsets = [sum(ir.dim for _, ir in linear.irreps_in[:k]) for k in range(len(linear.irreps_in))]
        out_offsets = [sum(ir.dim for _, ir in linear.irreps_out[:k]) for k in range(len(linear.irreps_out))]
        d_in, d_out = sum(ir.dim for _, ir in linear.irreps_in), sum(ir.dim for _, ir in linear.irreps_out)
        selection = torch.zeros(len(linear.instructions), d_in, d_out, dtype=torch.float64)
        for k, ins in enumerate(linear.instructions):
            for m in range(linear.irreps_in[ins.i_in].ir.dim):
                selection[k, in_offsets[ins.i_in] + m, out_offsets[ins.i_out] + m] = ins.path_weight
        self._set_constants(selection)
        self.shape = (self.mul * d_in, self.mul * d_out)

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The map as a [U * d_in, U * d_out] matrix, from the e3nn Linear's (flat) ``weight``."""
        weights = weight.view(-1, self.mul, self.mul)  # [paths, u, w]
        return torch.einsum("kuw,kio->uiwo", weights, self.constants).reshape(self.shape)

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """[E, U, d_in] -> [E, U, d_out]."""
        return (x.reshape(x.shape[0], self.shape[0]) @ self.matrix(weight)).view(x.shape[0], self.mul, self.shape[1] // self.mul)
