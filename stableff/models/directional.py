"""Blocks of the directional message-passing family (GemNet-T, the DimeNet++-style model): messages
live on directed edges i <- j, and atoms are updated from the messages of their edges."""

from __future__ import annotations

import math

import torch
from torch import nn

from stableff.models.scatter import scatter_sum

#: skip connections of the family are scaled by 1/sqrt(2) (unit variance for independent branches)
INV_SQRT2 = 1.0 / math.sqrt(2.0)


class Residual(nn.Module):
    """(x + net(x)) / sqrt(2)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (x + self.net(x)) * INV_SQRT2


def edge_messages_to_atoms(messages: torch.Tensor, radial_weights: torch.Tensor, centre: torch.Tensor, num_atoms: int, inv_sqrt_neighbors: float) -> torch.Tensor:
    """sum_j m_ji * W rbf_ji on every atom i, divided by sqrt(mean neighbour count)."""
    return scatter_sum(messages * radial_weights, centre, num_atoms) * inv_sqrt_neighbors


def both_ends(h: torch.Tensor, messages: torch.Tensor, centre: torch.Tensor, neighbour: torch.Tensor) -> torch.Tensor:
    """[h_i, h_j, m_ji] on every edge i <- j: the input of the edge update from both its atoms."""
    return torch.cat([h.index_select(0, centre), h.index_select(0, neighbour), messages], dim=-1)
