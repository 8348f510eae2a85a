"""The per-layer edge features a model returns when asked (training with decorrelation,
``stableff correlation``): invariant [E_s, d_l] tensors on the first E_s edges of the batch, the
random sample the trainer stores first (``data.graph.edges_first``; all edges without a sample),
so that MD and evaluation never pay for them."""

from __future__ import annotations

import torch

from stableff.data import keys


def feature_edge_count(batch: dict) -> int:
    """On how many leading edges of the batch edge features are computed: all, or the sample the
    trainer stored first (``keys.EDGE_FEATURE_SAMPLE``)."""
    num_edges = batch[keys.EDGE_INDEX].shape[1]
    return min(int(batch[keys.EDGE_FEATURE_SAMPLE]), num_edges) if keys.EDGE_FEATURE_SAMPLE in batch else num_edges


def sampled_edge_features(states: list[torch.Tensor], batch: dict, sampled_already: bool) -> list[torch.Tensor]:
    """The edge features from a network's per-layer edge states: as they are where the network
    took them on the sampled edges itself (``sampled_already``), else their leading sampled rows
    (invariant states over all edges)."""
    if sampled_already:
        return list(states)
    count = feature_edge_count(batch)
    return [s if s.shape[0] == count else s[:count] for s in states]
