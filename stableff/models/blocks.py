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


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` bins given by ``index`` (first dimension)."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


def invariant_channels(features: torch.Tensor, irreps) -> torch.Tensor:
    """Invariant view [E, d] of equivariant features: scalars as they are, each l > 0 channel by its norm.

    This is the per-layer ``edge_features`` tensor the decorrelation loss reads.
    """
    parts = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        block = features[..., sl]
        if ir.l == 0:
            parts.append(block)
        else:
            block = block.reshape(block.shape[:-1] + (mul, ir.dim))
            # eps keeps the gradient finite where a channel vanishes
            parts.append(torch.sqrt(block.pow(2).sum(-1) + 1e-12))
    return torch.cat(parts, dim=-1)
