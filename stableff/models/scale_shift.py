"""Per-species scale and shift of an energy network's raw per-atom outputs:
E_i = scale_s(i) * e_i + shift_s(i) (eV), summed to totals in float64."""

from __future__ import annotations

import torch
from torch import nn


class PerSpeciesScaleShift(nn.Module):
    """``scale`` [S] and ``shift`` [S] (eV) per species; ``forward`` gives the per-atom energies in
    float64: the residual in the model's dtype, the large shift (a -9400 eV molecule's E0 sum would
    round to 1e-3 eV in float32) and the sum in float64."""

    def __init__(self, num_species: int, scale=1.0, shift=0.0, trainable: bool = True):
        super().__init__()
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype()).expand(num_species).clone()
        shift = torch.as_tensor(shift, dtype=torch.get_default_dtype()).expand(num_species).clone()
        self.scale = nn.Parameter(scale, requires_grad=trainable)
        self.shift = nn.Parameter(shift, requires_grad=trainable)

    def forward(self, raw: torch.Tensor, species: torch.Tensor) -> torch.Tensor:
        return (raw * self.scale.index_select(0, species)).double() + self.shift.index_select(0, species).double()
