"""Physical priors added to a learned energy (docs/method.md, "Short-range prior").

ZBL: the Ziegler-Biersack-Littmark universal screened nuclear repulsion of every pair i < j,

    E_ZBL = sum_{i<j} (Z_i Z_j e^2 / (4 pi eps0 r_ij)) phi(r_ij / a_ij) s(r_ij)
    a_ij  = 0.46850 / (Z_i^0.23 + Z_j^0.23) A
    phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x}
    e^2 / (4 pi eps0) = 14.399645 eV A

with s a smooth switch, 1 below an inner radius and 0 beyond an outer radius (the quintic
smootherstep 1 - 10 x^3 + 15 x^4 - 6 x^5 in between: energy, force and force derivative continuous).
Default radii per pair: outer = r_cov(Z_i) + r_cov(Z_j) (ASE's covalent radii, at most the model's
cutoff), inner = half of it. The learned model then fits the residual E_DFT - E_ZBL.
"""

from __future__ import annotations

import torch
from torch import nn

from stableff.errors import ConfigError

COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps0) in eV A
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
ZBL_LENGTH_A = 0.46850
ZBL_POWER = 0.23

#: model hyper-parameters that switch priors on, with their defaults (every model accepts them)
PRIOR_HYPERPARAMETERS = {"zbl": False, "zbl_inner": None, "zbl_outer": None}


def zbl_pair_energy(z_i, z_j, r):
    """Unswitched ZBL energy (eV) of pairs with atomic numbers z_i, z_j at distance r (A)."""
    a = ZBL_LENGTH_A / (z_i**ZBL_POWER + z_j**ZBL_POWER)
    x = r / a
    phi = sum(c * torch.exp(-e * x) for c, e in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))
    return COULOMB_EV_A * z_i * z_j / r * phi


def smootherstep_switch(r, inner, outer):
    """1 for r <= inner, 0 for r >= outer, 1 - (10 x^3 - 15 x^4 + 6 x^5) in between (C2)."""
    x = ((r - inner) / (outer - inner)).clamp(0.0, 1.0)
    return 1.0 - x**3 * (10.0 - 15.0 * x + 6.0 * x**2)


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL energies from the model's edges (each pair appears as two directed edges, so
    each edge carries half the pair energy)."""

    def __init__(self, type_numbers, r_max: float, inner: float | None = None, outer: float | None = None):
        super().__init__()
        from ase.data import covalent_radii

        z = torch.tensor([float(n) for n in type_numbers], dtype=torch.float64)
        radii = torch.tensor([float(covalent_radii[int(n)]) for n in type_numbers], dtype=torch.float64)
        default_outer = torch.clamp(radii[:, None] + radii[None, :], max=r_max)
        outer_matrix = default_outer if outer is None else torch.full_like(default_outer, float(outer))
        inner_matrix = 0.5 * outer_matrix if inner is None else torch.full_like(default_outer, float(inner))
        if outer is not None and outer > r_max:
            raise ConfigError(f"model.zbl_outer = {outer:g} A is beyond the model's cutoff r_max = {r_max:g} A (pairs farther apart are not seen)")
        if bool((inner_matrix >= outer_matrix).any()) or bool((inner_matrix <= 0).any()):
            raise ConfigError(f"model.zbl_inner must be positive and smaller than zbl_outer (got inner {inner}, outer {outer})")
        # plain tensors kept in float64 whatever the model's dtype (see _apply)
        self.register_buffer("numbers", z, persistent=False)
        self.register_buffer("inner", inner_matrix, persistent=False)
        self.register_buffer("outer", outer_matrix, persistent=False)

    def _apply(self, fn, recurse=True):
        # keep the constants in float64 when the model is cast to float32 (device moves still apply)
        super()._apply(fn, recurse)
        for name in ("numbers", "inner", "outer"):
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def forward(self, species, edge_index, edge_lengths) -> torch.Tensor:
        """Per-atom energies [N] (float64)."""
        centre, neighbour = edge_index
        si, sj = species[centre], species[neighbour]
        r = edge_lengths.double()
        pair = zbl_pair_energy(self.numbers[si], self.numbers[sj], r) * smootherstep_switch(r, self.inner[si, sj], self.outer[si, sj])
        return torch.zeros(species.shape[0], dtype=torch.float64, device=r.device).index_add_(0, centre, 0.5 * pair)


def build_priors(type_numbers, r_max: float, zbl=False, zbl_inner=None, zbl_outer=None) -> list[nn.Module]:
    """The prior modules the hyper-parameters switch on (checked, each error naming its key)."""
    if not isinstance(zbl, bool):
        raise ConfigError(f"model.zbl must be true or false (got {zbl!r})")
    for name, value in (("zbl_inner", zbl_inner), ("zbl_outer", zbl_outer)):
        if value is not None and (not zbl or not isinstance(value, (int, float))):
            raise ConfigError(f"model.{name} needs zbl: true and a distance in A (got {value!r})")
    return [ZBLRepulsion(type_numbers, r_max, zbl_inner, zbl_outer)] if zbl else []
