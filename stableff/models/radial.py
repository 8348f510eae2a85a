"""Radial bases of edge lengths: the Bessel basis, the polynomial cutoff envelope, and their product
(the radial embedding every model uses)."""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    r"""Radial Bessel functions :math:`b_n(r) = c\, \sin(n \pi r / r_c) / r`, n = 1..N.

    ``normalization`` sets c: ``"sqrt2_rmax"`` (default), :math:`c = \sqrt{2/r_c}`, the NequIP
    paper's; ``"sinc"``, :math:`c = r_c / \pi`, i.e. :math:`\sin(n \pi x) / (\pi x)` with
    :math:`x = r / r_c`, upstream nequip's BesselEdgeLengthEncoding (0.19; 2.5x larger at r_c = 5 A).
    The frequencies are trained where ``trainable`` (the radial embedding of every stableff model
    keeps them fixed by default). Input r [E] in Angstrom, output [E, N].
    """

    NORMALIZATIONS = ("sqrt2_rmax", "sinc")

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True, normalization: str = "sqrt2_rmax"):
        super().__init__()
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(f"Bessel normalization must be one of {self.NORMALIZATIONS} (got {normalization!r})")
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max) if normalization == "sqrt2_rmax" else self.r_max / math.pi
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
        # f(x) = 1 + x^p (a + x (b + c x)): one power, the rest in Horner's form
        a, b, c = -(p + 1.0) * (p + 2.0) / 2.0, p * (p + 2.0), -p * (p + 1.0) / 2.0
        out = 1.0 + x.pow(p) * (a + x * (b + c * x))
        return torch.where(x < 1.0, out, torch.zeros_like(out))


class RadialEmbedding(nn.Module):
    r"""The radial embedding every model uses: Bessel basis times the polynomial cutoff envelope.

    Returns ``(basis [E, N], envelope [E])`` with basis_n(r) = b_n(r) u(r) and u the envelope, so
    that everything built from the basis goes smoothly to zero at r_max.
    """

    def __init__(self, r_max: float, num_basis: int = 8, polynomial_p: float = 6.0, trainable: bool = False, normalization: str = "sqrt2_rmax"):
        super().__init__()
        self.bessel = BesselBasis(r_max, num_basis, trainable=trainable, normalization=normalization)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        envelope = self.cutoff(r)
        bessel = self.bessel
        # b_n(r) u(r) = sin(n pi r / r_c) * (c u(r) / r): per-edge factors on [E], then
        # two [E, N] passes
        phase = r.unsqueeze(-1) * (bessel.frequencies / bessel.r_max)
        return torch.sin(phase) * (envelope * bessel.prefactor / r).unsqueeze(-1), envelope


#: E[silu(z)^2]^(-1/2) for z ~ N(0, 1) (e3nn's normalize2mom constant for SiLU)
