"""Multilayer perceptrons with second-moment-preserving activations, and their initialisation."""

from __future__ import annotations

import torch
from torch import nn


#: E[silu(z)^2]^(-1/2) for z ~ N(0, 1) (e3nn's normalize2mom constant for SiLU)
SILU_SECOND_MOMENT_SCALE = 1.6791767923989418


class ScaledSiLU(nn.Module):
    """SiLU times a constant: by default the one that gives unit second moment for standard-normal
    inputs (GemNet uses its paper's 1/0.6)."""

    def __init__(self, scale: float = SILU_SECOND_MOMENT_SCALE):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class NormalizedMLP(nn.Sequential):
    """Linear layers and SiLUs (:class:`ScaledSiLU` or PyTorch's), computed with each activation's
    constant applied to the next (small) weight matrix instead of the [n, width] activations: the
    same function and the same gradients, one pass fewer per activation.

    The input may be a list of tensors, the columns of the input side by side: while the weights
    are trained the first layer sums one product per part (no concatenation, whose slices cost
    zero-filled gradients in the force loss's second derivatives); in inference it concatenates."""

    def forward(self, x) -> torch.Tensor:
        carry = 1.0  # factor owed by x, paid by the next weight matrix
        for layer in self:
            if isinstance(layer, nn.Linear):
                weight = layer.weight if carry == 1.0 else layer.weight * carry
                x = linear_of_parts(x, weight, layer.bias) if isinstance(x, (list, tuple)) else torch.nn.functional.linear(x, weight, layer.bias)
                carry = 1.0
            else:
                x = torch.nn.functional.silu(x)
                carry = getattr(layer, "scale", 1.0)
        return x if carry == 1.0 else x * carry


def linear_of_parts(parts, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(cat(parts, -1), weight, bias)``: concatenated where no gradient reaches the weight
    (inference), as a sum of one product per part otherwise (training)."""
    if len(parts) == 1 or not (weight.requires_grad and torch.is_grad_enabled()):
        return torch.nn.functional.linear(parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=-1), weight, bias)
    out, column = None, 0
    for part in parts:
        width = part.shape[-1]
        term = torch.nn.functional.linear(part, weight[:, column : column + width], bias if out is None else None)
        out = term if out is None else out + term
        column += width
    return out


def mlp(sizes: list[int], final_activation: bool = False, bias: bool = True, normalized: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (and after the last if asked).

    ``normalized``: weights drawn from N(0, 1/fan_in), zero biases and second-moment-preserving
    SiLU, so that unit-variance inputs give unit-variance activations in every layer (the
    initialisation of e3nn's and upstream NequIP/Allegro's MLPs); otherwise PyTorch's defaults.
    """
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        linear = nn.Linear(sizes[k], sizes[k + 1], bias=bias)
        if normalized:
            normal_init(linear)
        layers.append(linear)
        if k < len(sizes) - 2 or final_activation:
            layers.append(ScaledSiLU() if normalized else nn.SiLU())
    return NormalizedMLP(*layers)


def normal_init(linear: nn.Linear) -> nn.Linear:
    """Weights from N(0, 1/fan_in), zero bias."""
    with torch.no_grad():
        linear.weight.normal_(0.0, linear.in_features**-0.5)
        if linear.bias is not None:
            linear.bias.zero_()
    return linear
