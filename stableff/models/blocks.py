"""Building blocks shared by the models: radial basis, cutoff envelope, scatter, invariant views."""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    r"""Radial Bessel functions :math:`b_n(r) = \sqrt{2/r_c}\, \sin(n \pi r / r_c) / r`, n = 1..N.

    The frequencies are trainable (as in NequIP). Input r [E] in Angstrom, output [E, N].
    """

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True):
        super().__init__()
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max)
        weights = torch.linspace(1.0, num_basis, num_basis) * math.pi
        self.frequencies = nn.Parameter(weights, requires_grad=trainable)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r / self.r_max) / r


class PolynomialCutoff(nn.Module):
    r"""Smooth envelope that goes to 0 at r_max with p continuous derivatives (Klicpera et al. 2020):

    .. math:: f(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2},\quad x = r / r_c

    and 0 for x >= 1.
    """

    def __init__(self, r_max: float, p: float = 6.0):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        out = 1.0 - (p + 1.0) * (p + 2.0) / 2.0 * x**p + p * (p + 2.0) * x ** (p + 1.0) - p * (p + 1.0) / 2.0 * x ** (p + 2.0)
        return out * (x < 1.0)


class RadialEmbedding(nn.Module):
    r"""The radial embedding every model uses: Bessel basis times the polynomial cutoff envelope.

    Returns ``(basis [E, N], envelope [E])`` with basis_n(r) = b_n(r) u(r) and u the envelope, so
    that everything built from the basis goes smoothly to zero at r_max.
    """

    def __init__(self, r_max: float, num_basis: int = 8, polynomial_p: float = 6.0, trainable: bool = False):
        super().__init__()
        self.bessel = BesselBasis(r_max, num_basis, trainable=trainable)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        envelope = self.cutoff(r)
        return self.bessel(r) * envelope.unsqueeze(-1), envelope


def mlp(sizes: list[int], final_activation: bool = False, bias: bool = True) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1], bias=bias))
        if k < len(sizes) - 2 or final_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` bins given by ``index`` (first dimension)."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


class InvariantChannels(nn.Module):
    """Invariant view [E, d] of equivariant features: scalars as they are, each l > 0 channel by its norm.

    This is the per-layer ``edge_features`` tensor the decorrelation loss reads. Written with one
    ``split`` and one ``index_add`` so that its backward (only taken when the decorrelation loss is
    on) costs two dense passes instead of a zero-filled gradient per irrep block.
    """

    def __init__(self, irreps, columns: list[int] | None = None):
        """``columns[i]``: the column of the input that holds e3nn component i of ``irreps`` (default:
        the input is in e3nn's layout)."""
        super().__init__()
        scalar_dims, channel_of_component, num_vector_channels = [], [], 0
        for (mul, ir), sl in zip(irreps, irreps.slices()):
            if ir.l == 0:
                scalar_dims.extend(range(sl.start, sl.stop))
            else:
                for u in range(mul):
                    channel_of_component.extend([num_vector_channels + u] * ir.dim)
                num_vector_channels += mul
        self.num_scalars = len(scalar_dims)
        self.num_vector_channels = num_vector_channels
        order = scalar_dims + [d for d in range(irreps.dim) if d not in set(scalar_dims)]
        if columns is not None:
            order = [columns[d] for d in order]
        self.in_order = order == list(range(irreps.dim))  # scalars first, the rest as e3nn has them
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("channel_of_component", torch.tensor(channel_of_component, dtype=torch.long), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.in_order:
            features = features.index_select(-1, self.order)
        scalars, rest = torch.split(features, [self.num_scalars, features.shape[-1] - self.num_scalars], dim=-1)
        if self.num_vector_channels == 0:
            return scalars
        squared = rest.new_zeros(rest.shape[:-1] + (self.num_vector_channels,)).index_add_(-1, self.channel_of_component, rest * rest)
        # eps keeps the gradient finite where a channel vanishes
        return torch.cat([scalars, torch.sqrt(squared + 1e-12)], dim=-1)


def build_triplets(edge_index: torch.Tensor, shifts: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (e_in, e_out) of edges e_out = (i <- j) and e_in = (j <- k), k != i (same image).

    Returns (e_in, e_out), both [T]. Built with sorting and repeat_interleave (no Python loops).
    """
    centre, neighbour = edge_index
    order = torch.argsort(centre, stable=True)
    counts = torch.bincount(centre, minlength=num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    per_edge = counts[neighbour]  # edges centred on j, for every edge i <- j
    e_out = torch.repeat_interleave(torch.arange(len(neighbour), device=centre.device), per_edge)
    offsets = torch.arange(len(e_out), device=centre.device) - torch.repeat_interleave(torch.cumsum(per_edge, 0) - per_edge, per_edge)
    e_in = order[starts[neighbour[e_out]] + offsets]
    # drop k = i through the same periodic image: edge j <- i with the opposite shift
    back = (neighbour[e_in] == centre[e_out]) & torch.all(shifts[e_in] == -shifts[e_out], dim=-1)
    keep = ~back
    return e_in[keep], e_out[keep]


def legendre(cos_theta: torch.Tensor, n: int) -> torch.Tensor:
    """P_0..P_{n-1}(cos theta) by the three-term recurrence, [T, n]."""
    values = [torch.ones_like(cos_theta), cos_theta]
    for l in range(2, n):
        values.append(((2 * l - 1) * cos_theta * values[-1] - (l - 1) * values[-2]) / l)
    return torch.stack(values[:n], dim=-1)


def reverse_edges(edge_index: torch.Tensor, shifts: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """For every edge i <- j (shift S), the index of the edge j <- i (shift -S); full neighbour lists
    always hold both."""
    centre, neighbour = edge_index
    span = int(shifts.abs().max().item()) + 1 if shifts.numel() else 1
    width = 2 * span + 1

    def key(a, b, s):
        k = a * num_atoms + b
        for axis in range(3):
            k = k * width + (s[:, axis] + span)
        return k

    forward = key(centre, neighbour, shifts)
    order = torch.argsort(forward)
    backward = key(neighbour, centre, -shifts)
    return order[torch.searchsorted(forward[order], backward)]
