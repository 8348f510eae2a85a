"""The decorrelation loss and its coefficient schedules (docs/method.md, "Decorrelation loss").

    L = w_E L_E + w_F L_F (+ w_S L_S) + lambda(t) L_corr,   L_corr = sum_l w_l mean_{i != j} R_ij^2

with R the edge-feature correlation matrix of layer l (:mod:`stableff.measures.correlation`),
computed on at most ``max_edges`` edges sampled at random (seeded) per batch and stored first in
it. Model-agnostic: only the ``edge_features`` list every model returns is read.
"""

from __future__ import annotations

import math

import torch

from stableff.measures.correlation import select_channels, weighted_correlation_terms


def sample_edges(num_edges: int, max_edges: int | None, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor | None:
    """Indices of at most ``max_edges`` edges drawn without replacement, ascending (R does not
    depend on the order; stored first in the batch, ``data.graph.edges_first``, they keep their
    memory order). None = use all edges."""
    if max_edges is None or num_edges <= max_edges:
        return None
    chosen = torch.zeros(num_edges, dtype=torch.bool)
    chosen[torch.randperm(num_edges, generator=generator)[:max_edges]] = True
    return chosen.nonzero().squeeze(1).to(device)  # ascending without a sort


def correlation_loss(
    edge_features: list[torch.Tensor],
    layers: list[int] | None = None,
    layer_weights: list[float] | None = None,
    scalar_counts: list[int] | None = None,
    channels: str = "all",
) -> tuple[torch.Tensor, list[float]]:
    """L_corr = sum_l w_l mean_{i != j} R_ij^2 over the chosen layers of (already sampled) edge features.

    Returns the loss (in the autograd graph) and corr_l = mean |R_ij| of every layer (floats, from
    the same R; NaN for layers not included).
    """
    num_layers = len(edge_features)
    chosen = list(range(num_layers)) if layers is None else [l if l >= 0 else num_layers + l for l in layers]
    weights = [1.0] * len(chosen) if layer_weights is None else list(layer_weights)
    measures = [float("nan")] * num_layers
    if not chosen:  # layers: [] in a config: no term
        return edge_features[0].new_zeros(()), measures
    features = [select_channels(edge_features[l], None if scalar_counts is None else scalar_counts[l], channels) for l in chosen]
    loss, chosen_measures = weighted_correlation_terms(features, weights)
    for layer, value in zip(chosen, chosen_measures):
        measures[layer] = value
    return loss, measures


def coefficient(schedule: str, t: float, lambda_max: float, lambda_min: float = 0.0, warmup: float = 0.1) -> float:
    """lambda(t) for training progress t in [0, 1].

    constant: lambda_max; linear: lambda_max -> lambda_min; cosine (default):
    lambda_min + (lambda_max - lambda_min)(1 + cos(pi t))/2; warmup_cosine: linear ramp
    lambda_min -> lambda_max over the first ``warmup`` fraction, then cosine down to lambda_min.
    """
    t = min(max(t, 0.0), 1.0)
    span = lambda_max - lambda_min
    if schedule == "constant":
        return lambda_max
    if schedule == "linear":
        return lambda_max - span * t
    if schedule == "cosine":
        return lambda_min + span * (1.0 + math.cos(math.pi * t)) / 2.0
    if schedule == "warmup_cosine":
        if warmup > 0 and t < warmup:
            return lambda_min + span * t / warmup
        rest = (t - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
        return lambda_min + span * (1.0 + math.cos(math.pi * rest)) / 2.0
    raise ValueError(f"unknown schedule '{schedule}'")
