"""Edge-feature correlation (docs/method.md, "Edge-feature correlation").

For a layer's invariant edge features X in R^{E x d}: standardise each column over the edges
(mean 0, std 1, eps 1e-8) and form R = X^T X / E. Then

    reported measure   corr_l = mean_{i != j} |R_ij|        (0 = decorrelated, 1 = redundant)
    loss term          mean_{i != j} R_ij^2                  (summed over layers with weights w_l)

This module is the one implementation of R, of its off-diagonal reduction and of corr_l; the
training loss, ``stableff correlation`` and the study all use it.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from stableff.data import keys
from stableff.models.native import native_ops

EPS = 1e-8


def correlation_matrix(features: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """R = Z^T Z / E for the column-standardised features Z of X [E, d] (differentiable).

    >>> x = torch.randn(1000, 2, dtype=torch.float64); x[:, 1] = 2 * x[:, 0] + 1
    >>> round(float(correlation_matrix(x)[0, 1]), 6)
    1.0
    """
    _, products = _centred_products(features)
    covariance = products / features.shape[0]
    inv_std = torch.rsqrt(torch.diagonal(covariance) + eps)
    return covariance * inv_std.unsqueeze(0) * inv_std.unsqueeze(1)


def _centred_products(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(X_c, X_c^T X_c) with X_c = X - mean(X): one pass over the edges for the centring and one
    matrix product; the standardisation then acts on the [d, d] matrix only."""
    centred = features - features.mean(dim=0, keepdim=True)
    return centred, centred.transpose(0, 1) @ centred


def off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    """The d(d-1) entries R_ij, i != j, of a square matrix, as a flat tensor."""
    d = matrix.shape[0]
    return matrix.masked_select(~torch.eye(d, dtype=torch.bool, device=matrix.device))


def has_correlation(features: torch.Tensor) -> bool:
    """R is defined (and has off-diagonal entries) for at least 2 edges and 2 channels."""
    return features.shape[0] >= 2 and features.shape[1] >= 2


def mean_abs_correlation(features: torch.Tensor) -> float:
    """corr_l = mean_{i != j} |R_ij| (the reported measure); NaN when undefined."""
    if not has_correlation(features):
        return float("nan")
    return float(off_diagonal(correlation_matrix(features.detach())).abs().mean())


class _WeightedOffDiagonalSquares(torch.autograd.Function):
    """(sum_l w_l mean_{i != j} R_ij^2, [mean_{i != j} |R_ij|]_l) of features X_l [n, d_l] in one
    node for all layers: per layer the centring, one matrix product and [d, d] work forward, one
    matrix product backward. With C = X_c^T X_c (not divided by n), t_i = (C_ii + n eps)^(-1/2)
    (so that R_ij = C_ij t_i t_j) and m = d(d-1), the gradient of L = sum_{i != j} R_ij^2 / m is

        dL/dC_ij = 2 R_ij t_i t_j / m   (i != j),   dL/dC_ii = -t_i^2 sum_{j != i} 2 R_ij^2 / m,

    and dL/dX = 2 X_c G for that symmetric G (the centring's backward vanishes: the columns of
    X_c sum to zero). H = 2 w G is formed in the forward pass on the [d, d] matrices, so the
    backward is one product X_c H per layer. Small molecules make every operation here tiny: one
    node for all layers (was one per layer, ~20 nodes each by plain autograd) keeps the cost the
    operations' count, not their size."""

    @staticmethod
    def forward(ctx, weights, eps, *features):
        losses, measures, saved = [], [], []
        for x, weight in zip(features, weights):
            n, d = x.shape
            centred, covariance = _centred_products(x)
            t = torch.diagonal(covariance).add(n * eps).rsqrt_()
            tt = torch.outer(t, t)
            off = covariance.mul_(tt).fill_diagonal_(0.0)  # R with a zero diagonal
            m = d * (d - 1)
            measures.append(off.abs().sum() / m)
            squares = off.square()
            rows = squares.sum(dim=1)
            losses.append(rows.sum() * (weight / m))
            h = off.mul_(tt)  # R_ij t_i t_j, in place: R is not needed again
            h.diagonal().copy_(rows.mul_(tt.diagonal()).neg_())  # -t_i^2 sum_j R_ij^2
            saved += [centred, h.mul_(4.0 * weight / m)]
        ctx.save_for_backward(*saved)
        measure = torch.stack(measures)
        ctx.mark_non_differentiable(measure)  # the reported corr_l carries no gradient
        return torch.stack(losses).sum(), measure

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_measure):
        saved = ctx.saved_tensors
        grads = tuple(torch.mm(centred, h.mul(grad_loss)) for centred, h in zip(saved[0::2], saved[1::2]))
        return (None, None) + grads


def weighted_correlation_terms(features: list[torch.Tensor], weights: list[float]) -> tuple[torch.Tensor, list[float]]:
    """(sum_l w_l mean_{i != j} R_ij^2 in the autograd graph, [corr_l]) from one R per layer; a layer
    where R is undefined adds 0 and has corr_l NaN."""
    defined = [k for k, f in enumerate(features) if has_correlation(f)]
    measures = [float("nan")] * len(features)
    if not defined:
        return features[0].new_zeros(()), measures
    chosen_weights, chosen = [float(weights[k]) for k in defined], [features[k] for k in defined]
    # the same node in C++ where it is built (models/native.py: loops over CPU tensors), the same numbers up to rounding
    ops = native_ops(chosen[0].device)
    if ops is not None:
        loss, values = ops.weighted_off_diagonal_squares(chosen_weights, EPS, chosen)
    else:
        loss, values = _WeightedOffDiagonalSquares.apply(tuple(chosen_weights), EPS, *chosen)
    for k, value in zip(defined, values.tolist()):
        measures[k] = value
    return loss, measures


def correlation_terms(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean_{i != j} R_ij^2 in the autograd graph, corr_l) from one R; (0, NaN) when undefined."""
    loss, (measure,) = weighted_correlation_terms([features], [1.0])
    return loss, measure


def select_channels(features: torch.Tensor, num_scalars: int | None, channels: str) -> torch.Tensor:
    """``channels="all"``: scalars and norms of l > 0 channels; ``"scalars"``: the l = 0 channels only."""
    if channels == "scalars" and num_scalars is not None:
        return features[:, :num_scalars]
    return features


@torch.no_grad()
def dataset_correlation(model, graphs, batch_size: int = 8, device="cpu", progress: bool = False, channels: str = "all") -> dict:
    """Per-layer correlation over a dataset: corr_l per batch (mean and std over batches), and the
    edge-weighted mean correlation matrix R of each layer (for heatmaps)."""
    from stableff.data.graph import collate, to_device

    model.eval()
    dtype = model.dtype
    scalar_counts = model.edge_feature_scalar_counts
    per_batch: list[list[float]] = []
    sums: list[torch.Tensor] | None = None
    total_edges = 0
    starts = range(0, len(graphs), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="correlation", unit="batch", leave=False)
    for start in starts:
        batch = to_device(collate(graphs[start : start + batch_size]), device, dtype)
        out = model(batch, compute_forces=False, compute_stress=False, edge_features=True)
        features = [select_channels(f.detach(), scalar_counts[k], channels) for k, f in enumerate(out[keys.EDGE_FEATURES])]
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


def correlation_of_files(model_or_path, paths, batch_size: int = 8, device: str = "cpu", channels: str = "all", progress: bool = True) -> dict:
    """corr_l (mean and std over batches), channel counts and mean R matrices over all frames of ``paths``."""
    from stableff.data.graph import frame_to_graph
    from stableff.data.io import read_frames
    from stableff.models.saved import model_from_checkpoint

    model = model_from_checkpoint(model_or_path, device=device)[0] if not isinstance(model_or_path, torch.nn.Module) else model_or_path
    graphs = []
    for path in paths:
        graphs.extend(frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in read_frames(path))
    result = dataset_correlation(model, graphs, batch_size=batch_size, device=device, progress=progress, channels=channels)
    result["n_frames"] = len(graphs)
    return result
