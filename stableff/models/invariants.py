"""Invariant views of equivariant features (scalars as they are, each l > 0 channel by its norm):
the per-layer edge features the decorrelation loss reads."""

from __future__ import annotations

import torch
from torch import nn

from stableff.models.native import flat_runs, native_ops
from stableff.models.scatter import scatter_sum


def _write_invariants(view: "InvariantChannels", features: torch.Tensor, out: torch.Tensor) -> None:
    """The invariant view of ``features`` [n, D] into ``out`` [n, d]: scalar runs copied, each l > 0
    channel's norm as sqrt(eps + sum of its squared components), one multiply-add per component
    (no [n, D] temporary)."""
    for start, size, shape, column, width in view.runs:
        run = features[:, start : start + size]
        if shape is None:
            out[:, column : column + width].copy_(run)
            continue
        components = run.reshape(-1, *shape)
        target = out[:, column : column + width].view(-1, *shape[:-2], shape[-1])
        first = components.select(-2, 0)
        torch.addcmul(first.new_full((), 1e-12), first, first, out=target)  # eps keeps the gradient finite where a channel vanishes
        for m in range(1, shape[-2]):
            component = components.select(-2, m)
            target.addcmul_(component, component)
    if view.num_vector_channels:
        out[:, view.num_scalars :].sqrt_()


def _add_invariant_gradient(view: "InvariantChannels", features: torch.Tensor, invariants: torch.Tensor, grad: torch.Tensor, target: torch.Tensor) -> None:
    """Add d(grad . view(features))/d features to ``target`` [n, D]: the scalar columns' gradient as
    it is, each component of an l > 0 channel times grad / norm."""
    num_scalars = view.num_scalars
    grad_over_norm = grad[:, num_scalars:] / invariants[:, num_scalars:] if view.num_vector_channels else None
    for start, size, shape, column, width in view.runs:
        part = target[:, start : start + size]
        if shape is None:
            part.add_(grad[:, column : column + width])
            continue
        column -= num_scalars
        factor = grad_over_norm[:, column : column + width].reshape(-1, *shape[:-2], 1, shape[-1])
        part.view(-1, *shape).addcmul_(features[:, start : start + size].reshape(-1, *shape), factor)


class _ScatterSumAndLeadingView(torch.autograd.Function):
    """(scatter_sum(src, index), view(src[:count])): a layer's aggregated messages and the invariant
    view of its first ``count`` edge states (the trainer stores the sampled edges first), read in
    place: no gathered copy of the rows, and their gradient is added in place into the gradient
    of the sum (the force loss's pass) instead of a zero-filled [E, D] tensor per output."""

    @staticmethod
    def forward(ctx, src, index, dim_size, view, count):
        ctx.set_materialize_grads(False)
        summed = scatter_sum(src, index, dim_size)
        invariants = src.new_empty(count, view.num_scalars + view.num_vector_channels)
        _write_invariants(view, src[:count], invariants)
        ctx.save_for_backward(src, index, invariants)
        ctx.view, ctx.count = view, count
        return summed, invariants

    @staticmethod
    def backward(ctx, grad_summed, grad_invariants):
        # written with differentiable operations where they must be: the force pass (create_graph)
        # records the sum's backward; the view is differentiable once (the training loss)
        src, index, invariants = ctx.saved_tensors
        if grad_summed is None and grad_invariants is None:
            return None, None, None, None, None
        grad_src = grad_summed.index_select(0, index) if grad_summed is not None else src.new_zeros(src.shape)
        if grad_invariants is not None:
            if torch.is_grad_enabled():
                raise RuntimeError("edge features are differentiable once (a loss on them cannot be differentiated again)")
            count = ctx.count
            _add_invariant_gradient(ctx.view, src[:count], invariants, grad_invariants, grad_src[:count])
        return grad_src, None, None, None, None


def scatter_sum_and_view(src: torch.Tensor, index: torch.Tensor, dim_size: int, view: "InvariantChannels", count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scatter_sum(src, index, dim_size), view(src[:count]))`` with one gradient pass for both
    (an edge model's invariant edge features on the leading, sampled, edges); by the native node
    where it is built (``models/native.py``: loops over CPU tensors, the same numbers up to rounding),
    by the Python one otherwise (and on other devices)."""
    ops = native_ops(src.device)
    if ops is not None:
        summed, invariants = ops.scatter_sum_and_view(src, index, dim_size, view.native_runs, view.num_scalars, view.num_vector_channels, count)
        return summed, invariants
    return _ScatterSumAndLeadingView.apply(src, index, dim_size, view, count)


class InvariantChannels(nn.Module):
    """Invariant view [E, d] of equivariant features: scalars as they are, each l > 0 channel by its norm.

    This is the per-layer ``edge_features`` tensor the decorrelation loss reads: the scalars of all
    blocks in order, then the norms of all l > 0 channels in order. Every irrep block is a
    contiguous run of columns, ``mul x (2l+1)`` in e3nn's layout or ``(2l+1) x mul`` in the
    component-major layout of ``EdgeMatrixTensorProduct``; either way a channel's norm is a sum over
    one axis of the block's view, and neighbouring blocks of the same l are one view (no gathers).
    ``forward`` is the definition in plain operations; training reads the view of a layer's
    sampled edges through ``scatter_sum_and_view`` (differentiable once there).
    """

    def __init__(self, irreps, component_major: bool = False):
        super().__init__()
        self.num_scalars = sum(mul for mul, ir in irreps if ir.l == 0)
        self.num_vector_channels = sum(mul for mul, ir in irreps if ir.l > 0)
        #: (first input column, columns, view shape of the run (components on axis -2; None for
        #: scalars), first output column, output columns) of every run of same-l blocks
        self.runs: list[tuple] = []
        start, scalar_at, norm_at = 0, 0, self.num_scalars
        for mul, ir in irreps:
            size = mul * ir.dim
            previous = self.runs[-1] if self.runs else None
            if ir.l == 0:
                if previous is not None and previous[2] is None and previous[0] + previous[1] == start:
                    self.runs[-1] = (previous[0], previous[1] + size, None, previous[3], previous[4] + mul)
                else:
                    self.runs.append((start, size, None, scalar_at, mul))
                scalar_at += mul
            else:
                shape = (1, ir.dim, mul) if component_major else (mul, ir.dim, 1)
                if previous is not None and previous[2] is not None and previous[2][1:] == shape[1:]:
                    # component-major: one more [dim, mul] block; e3nn's layout: mul more rows of dim
                    merged = (previous[2][0] + shape[0],) + shape[1:]
                    self.runs[-1] = (previous[0], previous[1] + size, merged, previous[3], previous[4] + mul)
                else:
                    self.runs.append((start, size, shape, norm_at, mul))
                norm_at += mul
            start += size
        self.native_runs = flat_runs(self)  # the same runs as the flat list the native node reads

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """The view by plain differentiable operations (the definition; ``scatter_sum_and_view``
        computes the same on a layer's leading edges in place, for training)."""
        if self.num_vector_channels == 0 and features.shape[-1] == self.num_scalars:
            return features  # scalars only: the view is the features themselves
        scalars, norms = [], []
        for start, size, shape, _, _ in self.runs:
            run = features[:, start : start + size]
            if shape is None:
                scalars.append(run)
            else:  # eps keeps the gradient finite where a channel vanishes
                norms.append(torch.sqrt(run.reshape(-1, *shape).square().sum(dim=-2) + 1e-12).reshape(features.shape[0], -1))
        return torch.cat(scalars + norms, dim=1)
