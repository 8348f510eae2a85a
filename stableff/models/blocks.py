"""Building blocks shared by the models: radial basis, cutoff envelope, scatter, invariant views."""

from __future__ import annotations

import math

import torch
from torch import nn


class BesselBasis(nn.Module):
    r"""Radial Bessel functions :math:`b_n(r) = c\, \sin(n \pi r / r_c) / r`, n = 1..N.

    ``normalization`` sets c: ``"sqrt2_rmax"`` (default), :math:`c = \sqrt{2/r_c}`, the NequIP
    paper's; ``"sinc"``, :math:`c = r_c / \pi`, i.e. :math:`\sin(n \pi x) / (\pi x)` with
    :math:`x = r / r_c`, upstream nequip's BesselEdgeLengthEncoding (0.19; 2.5x larger at r_c = 5 A).
    The frequencies are trainable (as in NequIP). Input r [E] in Angstrom, output [E, N].
    """

    NORMALIZATIONS = ("sqrt2_rmax", "sinc")

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True, normalization: str = "sqrt2_rmax"):
        super().__init__()
        if normalization not in self.NORMALIZATIONS:
            raise ValueError(f"Bessel normalization must be one of {self.NORMALIZATIONS} (got {normalization!r})")
        self.r_max = float(r_max)
        self.prefactor = math.sqrt(2.0 / self.r_max) if normalization == "sqrt2_rmax" else self.r_max / math.pi
        weights = torch.linspace(1.0, num_basis, num_basis) * math.pi
        self.frequencies = nn.Parameter(weights, requires_grad=trainable)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r / self.r_max) / r


class PolynomialCutoff(nn.Module):
    r"""Smooth envelope that goes to 0 at r_max with p continuous derivatives (Klicpera et al. 2020):

    .. math:: f(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2},\quad x = r / r_c

    and 0 for x >= 1.
    """

    def __init__(self, r_max: float, p: float = 6.0):
        super().__init__()
        self.r_max = float(r_max)
        self.p = float(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        x = r / self.r_max
        # f(x) = 1 + x^p (a + x (b + c x)): one power, the rest in Horner's form
        a, b, c = -(p + 1.0) * (p + 2.0) / 2.0, p * (p + 2.0), -p * (p + 1.0) / 2.0
        out = 1.0 + x.pow(p) * (a + x * (b + c * x))
        return torch.where(x < 1.0, out, torch.zeros_like(out))


class RadialEmbedding(nn.Module):
    r"""The radial embedding every model uses: Bessel basis times the polynomial cutoff envelope.

    Returns ``(basis [E, N], envelope [E])`` with basis_n(r) = b_n(r) u(r) and u the envelope, so
    that everything built from the basis goes smoothly to zero at r_max.
    """

    def __init__(self, r_max: float, num_basis: int = 8, polynomial_p: float = 6.0, trainable: bool = False, normalization: str = "sqrt2_rmax"):
        super().__init__()
        self.bessel = BesselBasis(r_max, num_basis, trainable=trainable, normalization=normalization)
        self.cutoff = PolynomialCutoff(r_max, polynomial_p)

    def forward(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        envelope = self.cutoff(r)
        bessel = self.bessel
        # b_n(r) u(r) = sin(n pi r / r_c) * (c u(r) / r): per-edge factors on [E], then
        # two [E, N] passes
        phase = r.unsqueeze(-1) * (bessel.frequencies / bessel.r_max)
        return torch.sin(phase) * (envelope * bessel.prefactor / r).unsqueeze(-1), envelope


#: E[silu(z)^2]^(-1/2) for z ~ N(0, 1) (e3nn's normalize2mom constant for SiLU)
SILU_SECOND_MOMENT_SCALE = 1.6791767923989418


class ScaledSiLU(nn.Module):
    """SiLU times a constant: by default the one that gives unit second moment for standard-normal
    inputs (GemNet uses its paper's 1/0.6)."""

    def __init__(self, scale: float = SILU_SECOND_MOMENT_SCALE):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * self.scale


class NormalizedMLP(nn.Sequential):
    """Linear layers and SiLUs (:class:`ScaledSiLU` or PyTorch's), computed with each activation's
    constant applied to the next (small) weight matrix instead of the [n, width] activations: the
    same function and the same gradients, one pass fewer per activation.

    The input may be a list of tensors, the columns of the input side by side: while the weights
    are trained the first layer sums one product per part (no concatenation, whose slices cost
    zero-filled gradients in the force loss's second derivatives); in inference it concatenates."""

    def forward(self, x) -> torch.Tensor:
        carry = 1.0  # factor owed by x, paid by the next weight matrix
        for layer in self:
            if isinstance(layer, nn.Linear):
                weight = layer.weight if carry == 1.0 else layer.weight * carry
                x = linear_of_parts(x, weight, layer.bias) if isinstance(x, (list, tuple)) else torch.nn.functional.linear(x, weight, layer.bias)
                carry = 1.0
            else:
                x = torch.nn.functional.silu(x)
                carry = getattr(layer, "scale", 1.0)
        return x if carry == 1.0 else x * carry


def linear_of_parts(parts, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``linear(cat(parts, -1), weight, bias)``: concatenated where no gradient reaches the weight
    (inference), as a sum of one product per part otherwise (training)."""
    if len(parts) == 1 or not (weight.requires_grad and torch.is_grad_enabled()):
        return torch.nn.functional.linear(parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=-1), weight, bias)
    out, column = None, 0
    for part in parts:
        width = part.shape[-1]
        term = torch.nn.functional.linear(part, weight[:, column : column + width], bias if out is None else None)
        out = term if out is None else out + term
        column += width
    return out


def mlp(sizes: list[int], final_activation: bool = False, bias: bool = True, normalized: bool = False) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (and after the last if asked).

    ``normalized``: weights drawn from N(0, 1/fan_in), zero biases and second-moment-preserving
    SiLU, so that unit-variance inputs give unit-variance activations in every layer (the
    initialisation of e3nn's and upstream NequIP/Allegro's MLPs); otherwise PyTorch's defaults.
    """
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        linear = nn.Linear(sizes[k], sizes[k + 1], bias=bias)
        if normalized:
            normal_init(linear)
        layers.append(linear)
        if k < len(sizes) - 2 or final_activation:
            layers.append(ScaledSiLU() if normalized else nn.SiLU())
    return NormalizedMLP(*layers)


def normal_init(linear: nn.Linear) -> nn.Linear:
    """Weights from N(0, 1/fan_in), zero bias."""
    with torch.no_grad():
        linear.weight.normal_(0.0, linear.in_features**-0.5)
        if linear.bias is not None:
            linear.bias.zero_()
    return linear


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


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Sum rows of ``src`` into ``dim_size`` bins given by ``index`` (first dimension)."""
    out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
    return out.index_add_(0, index, src)


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
    (an edge model's invariant edge features on the leading, sampled, edges)."""
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


def build_triplets(edge_index: torch.Tensor, shifts: torch.Tensor, num_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index pairs (e_in, e_out) of edges e_out = (i <- j) and e_in = (j <- k), k != i (same image).

    Returns (e_in, e_out), both [T]. Built with sorting and repeat_interleave (no Python loops).
    """
    centre, neighbour = edge_index
    order = torch.argsort(centre, stable=True)
    counts = torch.bincount(centre, minlength=num_atoms)
    starts = torch.cumsum(counts, 0) - counts
    per_edge = counts[neighbour]  # edges centred on j, for every edge i <- j
    e_out = torch.repeat_interleave(torch.arange(len(neighbour), device=centre.device), per_edge)
    offsets = torch.arange(len(e_out), device=centre.device) - torch.repeat_interleave(torch.cumsum(per_edge, 0) - per_edge, per_edge)
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
