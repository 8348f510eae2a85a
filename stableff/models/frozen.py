"""Inference with frozen weights: matrices read off linear maps once and kept while no gradient can
reach them."""

from __future__ import annotations

import torch
from torch import nn


def weights_frozen(weights) -> bool:
    """True where no gradient can reach ``weights`` in this call (inference: frozen weights or no
    autograd) and torch.compile is not tracing: then matrices built from them may be kept."""
    return not (torch.is_grad_enabled() and any(w.requires_grad for w in weights)) and not torch.compiler.is_compiling()


def cached_while_frozen(owner: nn.Module, slot: str, weights, extra_key, build):
    """``build()``, kept on ``owner`` and reused while ``weights_frozen(weights)`` and the weights
    (storage, in-place version, dtype, device) and ``extra_key`` are unchanged; built on every call
    otherwise (training). The cache is not module state: checkpoints do not hold it."""
    weights = list(weights)
    if not weights_frozen(weights):
        return build()
    key = (extra_key, tuple((w.data_ptr(), w._version, w.dtype, w.device) for w in weights))
    cached = owner.__dict__.get(slot)
    if cached is not None and cached[0] == key:
        return cached[1]
    value = build()
    owner.__dict__[slot] = (key, value)
    return value


def linear_map_matrix(fn, dim_in: int, like: torch.Tensor) -> torch.Tensor:
    """[dim_in, dim_out] matrix M with fn(x) = x @ M, read off fn(identity), for a map fn that is
    linear (no bias: fn(0) = 0, checked); in the dtype and on the device of ``like``."""
    rows = fn(torch.eye(dim_in + 1, dim_in, dtype=like.dtype, device=like.device))  # last row: fn(0)
    if torch.any(rows[-1] != 0):
        raise ValueError("linear_map_matrix needs a map without bias")
    return rows[:-1]
