"""Sums of per-edge (or per-atom) rows into bins: the one scatter every model and engine uses."""

from __future__ import annotations

import torch

#: sources of at least this many elements (8 MiB of float32) go through ``_ScatterSum`` where the
#: caller allows it: below that the memory it saves does not matter
SAVED_INDEX_ONLY_ABOVE = 1 << 21


def _summed(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    return src.new_zeros((dim_size,) + tuple(src.shape[1:])).index_add_(0, index, src)


class _ScatterSum(torch.autograd.Function):
    """``index_add_`` into zeros whose backward keeps only the index. Autograd's own node for
    ``index_add_`` also saves the source (its formula reads the source's shape), which for a layer's
    messages is the largest per-edge tensor of the pass: [E, D * U] held until the backward. The
    gradient is the same ``index_select`` autograd runs, and it is differentiable again (training's
    force loss)."""

    @staticmethod
    def forward(ctx, src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return _summed(src, index, dim_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int, index_only: bool = False) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` bins given by ``index`` (first dimension).

    ``index_only``: a large differentiable source takes ``_ScatterSum`` (the same numbers; its
    backward holds the index, not the source). For inference: in training, where the force loss
    differentiates the backward again, its Python node cost NequIP's step ~1 % (docs/benchmarks.md).
    Tracing (the TorchScript export) and torch.compile see the plain operation."""
    if (index_only and src.requires_grad and src.numel() >= SAVED_INDEX_ONLY_ABOVE and torch.is_grad_enabled()
            and not (torch.jit.is_tracing() or torch.compiler.is_compiling())):
        return _ScatterSum.apply(src, index, dim_size)
    return _summed(src, index, dim_size)
