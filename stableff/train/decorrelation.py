"""Edge-feature correlation and the decorrelation loss (DESIGN.md, "Definitions").

For a layer's invariant edge features X in R^{E x d}: standardise each column over the edges
(mean 0, std 1, eps 1e-8) and form R = X^T X / E. Then

    reported measure   corr_l = mean_{i != j} |R_ij|        (0 = decorrelated, 1 = redundant)
    loss term          L_corr = sum_l w_l mean_{i != j} R_ij^2

the loss being computed on at most ``max_edges`` edges sampled at random (seeded) per batch.
Model-agnostic: only the ``edge_features`` list every model returns is read.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-8


def correlation_matrix(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """R = Z^T Z / E for the column-standardised features Z of X [E, d] (differentiable)."""
    centred = features - features.mean(dim=0, keepdim=True)
    std = torch.sqrt(centred.pow(2).mean(dim=0, keepdim=True) + eps)
    z = centred / std
    return z.transpose(0, 1) @ z / features.shape[0]


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    d = matrix.shape[0]
    return matrix.masked_select(~torch.eye(d, dtype=torch.bool, device=matrix.device))


def mean_abs_correlation(features: torch.Tensor) -> float:
    """corr_l = mean_{i != j} |R_ij| (the reported measure)."""
    if features.shape[1] < 2 or features.shape[0] < 2:
        return float("nan")
    return float(_off_diagonal(correlation_matrix(features.detach())).abs().mean())


def mean_squared_correlation(features: torch.Tensor) -> torch.Tensor:
    """mean_{i != j} R_ij^2 (the per-layer loss term)."""
    if features.shape[1] < 2 or features.shape[0] < 2:
        return features.new_zeros(())
    return _off_diagonal(correlation_matrix(features)).pow(2).mean()


def sample_edges(num_edges: int, max_edges: int | None, generator: torch.Generator | None = None, device="cpu") -> torch.Tensor | None:
    """Indices of at most ``max_edges`` edges drawn without replacement (None = use all edges)."""
    if max_edges is None or num_edges <= max_edges:
        return None
    return torch.randperm(num_edges, generator=generator)[:max_edges].to(device)


def select_channels(features: torch.Tensor, num_scalars: int | None, channels: str) -> torch.Tensor:
    """``channels="all"``: scalars and norms of l > 0 channels; ``"scalars"``: the l = 0 channels only."""
    if channels == "scalars" and num_scalars is not None:
        return features[:, :num_scalars]
    return features


def correlation_loss(
    edge_features: list[torch.Tensor],
    layers: list[int] | None = None,
    layer_weights: list[float] | None = None,
    max_edges: int | None = 4096,
    generator: torch.Generator | None = None,
    scalar_counts: list[int] | None = None,
    channels: str = "all",
) -> tuple[torch.Tensor, list[float]]:
    """L_corr = sum_l w_l mean_{i != j} R_ij^2 over the chosen layers, on one edge subsample.

    Returns the loss (in the autograd graph) and corr_l = mean |R_ij| of every layer (floats, on the
    same subsample; NaN for layers not included).
    """
    num_layers = len(edge_features)
    chosen = list(range(num_layers)) if layers is None else [l if l >= 0 else num_layers + l for l in layers]
    weights = [1.0] * len(chosen) if layer_weights is None else list(layer_weights)
    num_edges = edge_features[0].shape[0]
    index = sample_edges(num_edges, max_edges, generator, edge_features[0].device)
    loss = edge_features[0].new_zeros(())
    measures = [float("nan")] * num_layers
    for layer, weight in zip(chosen, weights):
        features = edge_features[layer]
        features = features if index is None else features.index_select(0, index)
        features = select_channels(features, None if scalar_counts is None else scalar_counts[layer], channels)
        if features.shape[0] < 2 or features.shape[1] < 2:
            continue
        off_diagonal = _off_diagonal(correlation_matrix(features))  # one R per layer serves loss and measure
        loss = loss + weight * off_diagonal.pow(2).mean()
        measures[layer] = float(off_diagonal.detach().abs().mean())
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


@torch.no_grad()
def dataset_correlation(model, graphs, batch_size: int = 8, device="cpu", progress: bool = False, scalar_counts=None, channels: str = "all") -> dict:
    """Per-layer correlation over a dataset: corr_l per batch (mean and std over batches), and the
    edge-weighted mean correlation matrix R of each layer (for heatmaps)."""
    from stableff.data.graph import collate, to_device
    from stableff.data import keys

    model.eval()
    dtype = next(model.parameters()).dtype
    per_batch: list[list[float]] = []
    sums: list[torch.Tensor] | None = None
    total_edges = 0
    starts = range(0, len(graphs), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="correlation", unit="batch", leave=False)
    for start in starts:
        batch = to_device(collate(graphs[start : start + batch_size]), device, dtype)
        with torch.enable_grad():  # models take forces by autograd; here only the features are needed
            out = model(batch, compute_forces=False, compute_stress=False, create_graph=False)
        features = [select_channels(f.detach(), None if scalar_counts is None else scalar_counts[k], channels) for k, f in enumerate(out[keys.EDGE_FEATURES])]
        per_batch.append([mean_abs_correlation(f) for f in features])
        matrices = [correlation_matrix(f.double()) * f.shape[0] for f in features]
        sums = matrices if sums is None else [a + b for a, b in zip(sums, matrices)]
        total_edges += features[0].shape[0]
    values = torch.tensor(per_batch, dtype=torch.float64)
    return {
        "corr_mean": values.nanmean(0).tolist(),
        "corr_std": values.std(0).tolist() if len(per_batch) > 1 else [0.0] * values.shape[1],
        "matrices": [(s / total_edges).cpu().numpy() for s in sums],
        "n_channels": [int(s.shape[0]) for s in sums],
        "n_batches": len(per_batch),
    }
