"""Edge pairs and angles of message passing over triplets (GemNet-T, the DimeNet++-style model):
triplets of edges, Legendre polynomials of their angles, and the reverse of every edge."""

from __future__ import annotations

import torch


def build_triplets(edge_index: torch.Tensor, shifts: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (e_in, e_out) of edges e_out = (i <- j) and e_in = (j <- k), k != i (same image).

    Returns (e_in, e_out), both [T]. Built with sorting and repeat_interleave (no Python loops).
    """
    centre, neighbour = edge_index
    order = torch.argsort(centre, stable=True)
    counts = torch.bincount(centre, minlength=num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    per_edge = counts[neighbour]  # edges centred on j, for every edge i <- j
    e_out = torch.repeat_interleave(torch.arange(neighbour.shape[0], device=centre.device), per_edge)
    offsets = torch.arange(e_out.shape[0], device=centre.device) - torch.repeat_interleave(torch.cumsum(per_edge, 0) - per_edge, per_edge)
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
