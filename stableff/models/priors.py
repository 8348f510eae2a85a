"""Physical priors added to a learned energy (docs/method.md, "Short-range prior").

ZBL: the Ziegler-Biersack-Littmark universal screened nuclear repulsion of every pair i < j,

    E_ZBL = sum_{i<j} (Z_i Z_j e^2 / (4 pi eps0 r_ij)) phi(r_ij / a_ij) s(r_ij)
    a_ij  = 0.46850 / (Z_i^0.23 + Z_j^0.23) A
    phi(x) = 0.18175 e^{-3.19980 x} + 0.50986 e^{-0.94229 x} + 0.28022 e^{-0.40290 x} + 0.02817 e^{-0.20162 x}
    e^2 / (4 pi eps0) = 14.399645 eV A

with s a smooth switch, 1 below an inner radius and 0 beyond an outer radius (the quintic
smootherstep 1 - 10 x^3 + 15 x^4 - 6 x^5 in between: energy, force and force derivative continuous).
The learned model then fits the residual E_DFT - E_ZBL. Where the switch sits, per species pair:

* ``zbl_switch: data`` (what a training config's ``zbl: true`` means): outer = factor x the
  closest distance of that pair in the training data, inner = (1 - width) x outer, so the prior
  acts only where the model has no data and the learned part never has to cancel it; pairs absent
  from the data get the covalent radii. The trainer places the radii (:func:`data_placed_pairs`)
  and they are stored with the model (``zbl_pairs``: "Z1-Z2" -> [inner, outer] in A).
* ``covalent`` (and models built before ``zbl_switch`` existed): outer = r_cov(Z_i) + r_cov(Z_j)
  (ASE's covalent radii, at most the model's cutoff), inner = half of it.
* ``zbl_inner`` / ``zbl_outer``: the same radii for every pair.
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

#: model hyper-parameters that switch priors on, with their defaults (every model accepts them);
#: ``zbl_switch`` None is the covalent placement of models made before the data placement existed
PRIOR_HYPERPARAMETERS = {"zbl": False, "zbl_inner": None, "zbl_outer": None, "zbl_switch": None, "zbl_factor": 1.0, "zbl_width": 0.25, "zbl_pairs": None}
#: where the switch of each pair may be placed
ZBL_SWITCHES = ("data", "covalent")


def covalent_outer(z1: int, z2: int, r_max: float) -> float:
    """The covalent placement's outer radius of a pair (A): the sum of ASE's covalent radii, at most r_max."""
    from ase.data import covalent_radii

    return min(float(covalent_radii[int(z1)] + covalent_radii[int(z2)]), float(r_max))


def data_placed_pairs(type_numbers, r_max: float, min_pair_distance: dict, factor: float = 1.0, width: float = 0.25) -> tuple[dict, list[str]]:
    """The data placement of the switch: {"Z1-Z2": [inner, outer]} for every pair of
    ``type_numbers`` (outer = factor x the pair's closest training distance, at most r_max;
    inner = (1 - width) x outer), and the pairs absent from ``min_pair_distance`` (given the
    covalent radii instead)."""
    from stableff.data.species import pair_key

    pairs, absent = {}, []
    numbers = sorted(int(z) for z in type_numbers)
    for k, a in enumerate(numbers):
        for b in numbers[k:]:
            key = pair_key(a, b)
            closest = min_pair_distance.get(key)
            if closest is None or not closest > 0:
                absent.append(key)
                outer = covalent_outer(a, b, r_max)
                inner = 0.5 * outer
            else:
                outer = min(factor * float(closest), float(r_max))
                inner = (1.0 - width) * outer
            pairs[key] = [round(inner, 6), round(outer, 6)]
    return pairs, absent


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

    def __init__(self, type_numbers, r_max: float, inner: float | None = None, outer: float | None = None, pairs: dict | None = None):
        super().__init__()
        from stableff.data.species import pair_key

        z = torch.tensor([float(n) for n in type_numbers], dtype=torch.float64)
        default_outer = torch.tensor([[covalent_outer(a, b, r_max) for b in type_numbers] for a in type_numbers], dtype=torch.float64)
        outer_matrix = default_outer if outer is None else torch.full_like(default_outer, float(outer))
        inner_matrix = 0.5 * outer_matrix if inner is None else torch.full_like(default_outer, float(inner))
        for i, a in enumerate(type_numbers):  # per-pair radii (the data placement) where given
            for j, b in enumerate(type_numbers):
                placed = (pairs or {}).get(pair_key(a, b))
                if placed is not None:
                    inner_matrix[i, j], outer_matrix[i, j] = float(placed[0]), float(placed[1])
        if outer is not None and outer > r_max:
            raise ConfigError(f"model.zbl_outer = {outer:g} A is beyond the model's cutoff r_max = {r_max:g} A (pairs farther apart are not seen)")
        if bool((outer_matrix > r_max + 1e-9).any()):
            raise ConfigError(f"model.zbl_pairs: an outer radius is beyond the model's cutoff r_max = {r_max:g} A")
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


def build_priors(type_numbers, r_max: float, zbl=False, zbl_inner=None, zbl_outer=None, zbl_switch=None, zbl_factor=1.0, zbl_width=0.25,
                 zbl_pairs=None) -> list[nn.Module]:
    """The prior modules the hyper-parameters switch on (checked, each error naming its key)."""
    if not isinstance(zbl, bool):
        raise ConfigError(f"model.zbl must be true or false, or a mapping such as {{switch: data}} (got {zbl!r})")
    for name, value in (("zbl_inner", zbl_inner), ("zbl_outer", zbl_outer)):
        if value is not None and (not zbl or not isinstance(value, (int, float))):
            raise ConfigError(f"model.{name} needs zbl: true and a distance in A (got {value!r})")
    if zbl_switch is not None and zbl_switch not in ZBL_SWITCHES:
        raise ConfigError(f"model.zbl.switch must be one of {', '.join(ZBL_SWITCHES)} (got {zbl_switch!r})")
    if not (isinstance(zbl_factor, (int, float)) and zbl_factor > 0):
        raise ConfigError(f"model.zbl.factor must be a positive number (got {zbl_factor!r})")
    if not (isinstance(zbl_width, (int, float)) and 0 < zbl_width < 1):
        raise ConfigError(f"model.zbl.width must be a fraction between 0 and 1 (got {zbl_width!r})")
    if zbl_switch == "data" and (zbl_inner is not None or zbl_outer is not None):
        raise ConfigError("model.zbl: switch data places the radii from the training data; zbl_inner / zbl_outer set them by hand (give one or the other)")
    if zbl and zbl_switch == "data" and zbl_pairs is None:
        raise ConfigError("model.zbl: switch data needs the closest distances of the training data (the trainer places the radii; "
                          "a model built by hand needs zbl_pairs or switch: covalent)")
    if zbl_pairs is not None and not (isinstance(zbl_pairs, dict) and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in zbl_pairs.values())):
        raise ConfigError(f"model.zbl_pairs must map 'Z1-Z2' to [inner, outer] in A (got {zbl_pairs!r})")
    return [ZBLRepulsion(type_numbers, r_max, zbl_inner, zbl_outer, zbl_pairs)] if zbl else []
