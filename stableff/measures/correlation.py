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


class _OffDiagonalSquares(torch.autograd.Function):
    """(mean_{i != j} R_ij^2, mean_{i != j} |R_ij|) of X [n, d] in one node: the centring, one matrix
    product, and [d, d] work forward; one matrix product backward. With C = X_c^T X_c (not divided
    by n), t_i = (C_ii + n eps)^(-1/2) (so that R_ij = C_ij t_i t_j) and m = d(d-1), the gradient of
    L = sum_{i != j} R_ij^2 / m is

        dL/dC_ij = 2 R_ij t_i t_j / m   (i != j),   dL/dC_ii = -t_i^2 sum_{j != i} 2 R_ij^2 / m,

    and dL/dX = 2 X_c G for that symmetric G (the centring's backward vanishes: the columns of
    X_c sum to zero); the factor 2 and 1/n sit on the [d, d] matrices, not on [n, d] tensors.
    Autograd of the same lines takes ~20 small nodes per layer."""

    @staticmethod
    def forward(ctx, x, eps):
        n, d = x.shape
        centred, covariance = _centred_products(x)
        t = torch.rsqrt(torch.diagonal(covariance) + n * eps)
        off = covariance.mul_(torch.outer(t, t)).fill_diagonal_(0.0)
        ctx.save_for_backward(centred, off, t)
        m = d * (d - 1)
        measure = off.abs().sum() / m
        ctx.mark_non_differentiable(measure)  # the reported corr_l carries no gradient
        return off.square().sum() / m, measure

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, _grad_measure):
        centred, off, t = ctx.saved_tensors
        d = off.shape[0]
        g_r = off * (2.0 * grad_loss / (d * (d - 1)))  # dL/dR, zero diagonal
        g_c = g_r * torch.outer(t, t)
        g_c.diagonal().copy_(-(t.square() * (g_r * off).sum(dim=1)))
        return torch.mm(centred, g_c.mul_(2.0)), None


def correlation_terms(features: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(mean_{i != j} R_ij^2 in the autograd graph, corr_l) from one R; (0, NaN) when undefined."""
    if not has_correlation(features):
        return features.new_zeros(()), float("nan")
    loss, measure = _OffDiagonalSquares.apply(features, EPS)
    return loss, float(measure)


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
