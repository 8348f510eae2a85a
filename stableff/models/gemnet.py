"""GemNet-T (Gasteiger, Becker and Günnemann, "GemNet: Universal Directional Graph Neural Networks for
Molecules", NeurIPS 2021), the variant with triplet (two-hop) interactions only.

What is implemented, in the paper's terms (directed edge e = (i <- j) carries the message m_ji; a
triplet k -> j -> i couples m_kj into m_ji through the angle theta_kji at j):

* Radial basis (spherical Bessel functions of order 0 with the smooth polynomial envelope u):
      e_RBF,n(d) = u(d) sqrt(2/c) sin(n pi d / c) / d,            n = 1..N_rbf
* Spherical 2D basis of a triplet (radial part on the output edge, angle between the two edges):
      e_CBF,ln(d_ji, theta_kji) = u(d_ji) sqrt(2/c^3) / |j_{l+1}(z_ln)| j_l(z_ln d_ji / c) Y_l^0(theta_kji)
  with z_ln the n-th root of the spherical Bessel function j_l, l < N_sph, n <= N_rbf.
* Embeddings: h_i = W Z_i (atom embedding); m_ji = sigma(W [h_i, h_j, W_rbf e_RBF(d_ji)]).
* Interaction block, one per ``num_blocks``:
    - efficient triplet interaction: x_kj = sigma(W m_kj) * (W_rbf e_RBF(d_kj)), down-projected to
      ``emb_size_trip``; basis transformation and bilinear layer
          y_ji = sum_{l,c,f} W_{c f o} (W_cbf e_CBF,l(d_ji))_{c} (sum_k Y_l(theta_kji) x_kj,f)
      (the sum over k done first, GemNet's efficient form); up-projected separately for the edge and
      its reverse and combined as (up_1(y)_ji + up_2(y)_ij) / sqrt(2);
    - skip connection x = (sigma(W m_ji) + y) / sqrt(2), ``num_before_skip`` residual layers,
      m <- (m + x) / sqrt(2), ``num_after_skip`` residual layers;
    - atom update h_i <- (h_i + MLP(sum_j m_ji * W e_RBF(d_ji))) / sqrt(2) with ``num_atom`` residual layers;
    - edge update by concatenation m_ji <- (m_ji + sigma(W [h_i, h_j, m_ji]) after ``num_concat``
      residual layers) / sqrt(2).
* Output block after the embedding and after every interaction block: E_i^(b) = W_out MLP(sum_j
  m_ji * W e_RBF(d_ji)); the energy is sum_b sum_i E_i^(b). Activation: scaled SiLU, x sigmoid(x) / 0.6.
* Forces by autograd of the energy only (the conservative variant, needed for MD).

Documented differences from the paper: the learned ScaleFactor layers (fitted on data to keep
activations at unit variance) are replaced by fixed normalisations of every sum over neighbours by
1/sqrt(mean neighbour count) and of the triplet sum by 1/sqrt(mean neighbours - 1), the 1/sqrt(2)
residual scaling and the 1/0.6 activation scale, which serve the same purpose without a fitting pass;
no quadruplets (GemNet-Q) and no direct force head (GemNet-dT). ``edge_features`` are the directed-edge
embeddings m after each interaction block.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from stableff.data import keys
from stableff.models.base import EnergyNetwork
from stableff.models.radial import RadialEmbedding
from stableff.models.mlp import ScaledSiLU
from stableff.models.triplets import build_triplets, legendre, reverse_edges
from stableff.models.directional import INV_SQRT2, Residual, both_ends, edge_messages_to_atoms



def spherical_bessel_roots(num_spherical: int, num_radial: int) -> np.ndarray:
    """z_ln, the first ``num_radial`` positive roots of j_l for l < num_spherical ([L, N])."""
    from scipy.optimize import brentq
    from scipy.special import spherical_jn

    roots = np.zeros((num_spherical, num_radial))
    roots[0] = np.arange(1, num_radial + 1) * np.pi  # j_0 = sin x / x
    points = np.arange(1, num_radial + num_spherical + 1) * np.pi
    for l in range(1, num_spherical):
        # roots of j_l interlace those of j_{l-1}
        found = [brentq(lambda x: spherical_jn(l, x), points[k], points[k + 1]) for k in range(len(points) - 1)]
        points = np.array(found)
        roots[l] = points[:num_radial]
    return roots


def spherical_bessel_rows(x: torch.Tensor) -> torch.Tensor:
    """j_l(x[:, l, :]) for x [E, L, N]: row l takes the order l, accurate for all x >= 0 (float64).

    The power series where x < l + 1 (the upward recurrence loses digits there), the upward
    recurrence elsewhere; both vectorised over l so that the autograd graph stays shallow.
    """
    x = x.double()
    num_orders = x.shape[1]
    order = torch.arange(num_orders, dtype=torch.float64, device=x.device).view(1, -1, 1)
    threshold = order + 1.0
    # series: j_l(x) = x^l / (2l+1)!! * sum_k (-x^2/2)^k / (k! (2l+3)(2l+5)...(2l+2k+1))
    small = torch.minimum(x, threshold)
    double_factorial = torch.tensor([float(np.prod(np.arange(1, 2 * l + 2, 2))) for l in range(num_orders)], dtype=torch.float64, device=x.device)
    term = small**order / double_factorial.view(1, -1, 1)
    series = term
    half_square = -0.5 * small * small
    for k in range(1, 18):
        term = term * half_square / (k * (2.0 * order + 2 * k + 1))
        series = series + term
    # upward recurrence j_{m+1} = (2m+1)/x j_m - j_{m-1} from j_0 = sin x / x, j_1 = sin x / x^2 - cos x / x
    large = torch.maximum(x, threshold)
    sine, cosine = torch.sin(large), torch.cos(large)
    j_prev, j_cur = sine / large, sine / large**2 - cosine / large
    recurrence = torch.where(order == 0, j_prev, j_cur)
    for m in range(1, num_orders - 1):
        j_prev, j_cur = j_cur, (2 * m + 1) / large * j_cur - j_prev
        recurrence = torch.where(order == m + 1, j_cur, recurrence)
    return torch.where(x < threshold, series, recurrence)


def spherical_bessel(x: torch.Tensor, num_spherical: int) -> torch.Tensor:
    """j_l(x) for every l < num_spherical, [..., L] (float64)."""
    flat = x.reshape(-1, 1, 1).expand(-1, num_spherical, 1)
    return spherical_bessel_rows(flat).reshape(*x.shape, num_spherical)


class SphericalBasis(nn.Module):
    """The triplet basis split as GemNet's efficient form needs it: the radial part per edge
    [E, L, N] (envelope included) and the angular part Y_l^0 per triplet [T, L]."""

    def __init__(self, r_max: float, num_spherical: int, num_radial: int):
        super().__init__()
        roots = spherical_bessel_roots(num_spherical, num_radial)
        from scipy.special import spherical_jn

        norms = np.stack([np.sqrt(2.0 / r_max**3) / np.abs(spherical_jn(l + 1, roots[l])) for l in range(num_spherical)])
        self.r_max = float(r_max)
        self.num_spherical = num_spherical
        self.register_buffer("roots", torch.tensor(roots), persistent=False)
        self.register_buffer("norms", torch.tensor(norms), persistent=False)
        self.register_buffer("ylm_norm", torch.tensor([math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(num_spherical)]), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name in ("roots", "norms", "ylm_norm"):  # constants stay float64
            setattr(self, name, getattr(self, name).to(torch.float64))
        return self

    def radial(self, d: torch.Tensor, envelope: torch.Tensor) -> torch.Tensor:
        x = (d.double() / self.r_max)[:, None, None] * self.roots[None]  # [E, L, N]
        j = spherical_bessel_rows(x)
        return (self.norms[None] * j * envelope.double()[:, None, None]).to(d.dtype)

    def angular(self, cos_theta: torch.Tensor) -> torch.Tensor:
        return (legendre(cos_theta.double(), self.num_spherical) * self.ylm_norm).to(cos_theta.dtype)


def dense(n_in: int, n_out: int, activation: bool = True, bias: bool = False) -> nn.Module:
    layer = nn.Linear(n_in, n_out, bias=bias)
    # x sigmoid(x) / 0.6 keeps unit-variance inputs near unit variance (GemNet)
    return nn.Sequential(layer, ScaledSiLU(1.0 / 0.6)) if activation else layer


def residual_layer(width: int) -> Residual:
    """(x + sigma(W2 sigma(W1 x))) / sqrt(2)."""
    return Residual(nn.Sequential(dense(width, width), dense(width, width)))


def _triplet_sum(x_in: torch.Tensor, sph: torch.Tensor, e_out: torch.Tensor, ragged: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """S[e, l, f] = sum over the triplets t of edge e (e_out(t) = e) of Y_l(t) x_in[t, f], as one
    batched product of padded [E, L, k_max] and [E, k_max, F] blocks (``ragged``: the place of each
    triplet in its edge's row, ``counts``: triplets per edge)."""
    num_edges = counts.shape[0]
    kmax = 1
    if e_out.shape[0] > 0:
        kmax = max(int(counts.max()), 1)
    padded_x = x_in.new_zeros((num_edges, kmax, x_in.shape[1]))
    padded_x[e_out, ragged] = x_in
    padded_sph = sph.new_zeros((num_edges, sph.shape[1], kmax))
    padded_sph[e_out, :, ragged] = sph
    return torch.bmm(padded_sph, padded_x)


@functools.cache
def _scripted_triplet_sum():
    """The same function compiled by TorchScript, for a traced export (stableff.models.export): there
    k_max is data, not a constant frozen into the trace."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_triplet_sum)


class TripletInteraction(nn.Module):
    """GemNet-T's efficient triplet interaction (down-projection, basis transformation, bilinear
    layer, up-projection for the edge and for its reverse)."""

    def __init__(self, emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip, num_radial, num_spherical):
        super().__init__()
        self.dense_kj = dense(emb_size_edge, emb_size_edge)
        self.rbf_kj = nn.Sequential(nn.Linear(num_radial, emb_size_rbf, bias=False), nn.Linear(emb_size_rbf, emb_size_edge, bias=False))
        self.down = dense(emb_size_edge, emb_size_trip)
        # basis transformation of the radial part of the 2D basis: W1 [L, N, C]
        self.cbf_weight = nn.Parameter(torch.randn(num_spherical, num_radial, emb_size_cbf) * math.sqrt(2.0 / (num_radial + emb_size_cbf)))
        # bilinear layer: W [F_trip, C, O]
        self.bilinear = nn.Parameter(torch.randn(emb_size_trip, emb_size_cbf, emb_size_bil_trip) * math.sqrt(2.0 / (emb_size_trip * emb_size_cbf + emb_size_bil_trip)))
        self.up_ji = dense(emb_size_bil_trip, emb_size_edge)
        self.up_ij = dense(emb_size_bil_trip, emb_size_edge)

    def forward(self, m, rbf, cbf_radial, sph, e_in, e_out, ragged, counts, reverse, inv_sqrt_triplets):
        x = self.dense_kj(m) * self.rbf_kj(rbf)
        x = self.down(x)  # [E, F]
        # sum over k first: S[e, l, f] = sum_{t: e_out = e} Y_l(theta_t) x[e_in(t), f]
        padded_sum = _scripted_triplet_sum() if torch.jit.is_tracing() else _triplet_sum
        summed = padded_sum(x.index_select(0, e_in), sph, e_out, ragged, counts) * inv_sqrt_triplets  # [E, L, F]
        radial = torch.einsum("eln,lnc->elc", cbf_radial, self.cbf_weight)  # [E, L, C]
        mixed = torch.einsum("elc,elf->efc", radial, summed)  # [E, F, C]
        y = torch.einsum("efc,fco->eo", mixed, self.bilinear)
        return (self.up_ji(y) + self.up_ij(y).index_select(0, reverse)) * INV_SQRT2


class InteractionBlock(nn.Module):
    def __init__(self, emb_size_atom, emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip,
                 num_radial, num_spherical, num_before_skip, num_after_skip, num_concat, num_atom):
        super().__init__()
        self.skip = dense(emb_size_edge, emb_size_edge)
        self.triplet = TripletInteraction(emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip, num_radial, num_spherical)
        self.before_skip = nn.Sequential(*[residual_layer(emb_size_edge) for _ in range(num_before_skip)])
        self.after_skip = nn.Sequential(*[residual_layer(emb_size_edge) for _ in range(num_after_skip)])
        self.atom_rbf = nn.Linear(num_radial, emb_size_edge, bias=False)
        self.atom_dense = dense(emb_size_edge, emb_size_atom)
        self.atom_residual = nn.Sequential(*[residual_layer(emb_size_atom) for _ in range(num_atom)])
        self.concat = dense(2 * emb_size_atom + emb_size_edge, emb_size_edge)
        self.concat_residual = nn.Sequential(*[residual_layer(emb_size_edge) for _ in range(num_concat)])

    def forward(self, h, m, rbf, cbf_radial, sph, graph):
        centre, neighbour, e_in, e_out, ragged, counts, reverse, inv_sqrt_neighbors, inv_sqrt_triplets = graph
        y = self.triplet(m, rbf, cbf_radial, sph, e_in, e_out, ragged, counts, reverse, inv_sqrt_triplets)
        x = self.before_skip((self.skip(m) + y) * INV_SQRT2)
        m = self.after_skip((m + x) * INV_SQRT2)
        atom_messages = edge_messages_to_atoms(m, self.atom_rbf(rbf), centre, h.shape[0], inv_sqrt_neighbors)
        h = (h + self.atom_residual(self.atom_dense(atom_messages))) * INV_SQRT2
        m2 = self.concat_residual(self.concat(both_ends(h, m, centre, neighbour)))
        return h, (m + m2) * INV_SQRT2


class OutputBlock(nn.Module):
    def __init__(self, emb_size_atom, emb_size_edge, num_radial, num_layers: int = 2):
        super().__init__()
        self.rbf = nn.Linear(num_radial, emb_size_edge, bias=False)
        self.dense = dense(emb_size_edge, emb_size_atom)
        self.residual = nn.Sequential(*[residual_layer(emb_size_atom) for _ in range(num_layers)])
        self.out = nn.Linear(emb_size_atom, 1, bias=False)

    def forward(self, m, rbf, centre, num_atoms, inv_sqrt_neighbors):
        x = edge_messages_to_atoms(m, self.rbf(rbf), centre, num_atoms, inv_sqrt_neighbors)
        return self.out(self.residual(self.dense(x))).squeeze(-1)


class GemNetT(EnergyNetwork):
    """GemNet-T energy model with the paper's hyper-parameter names (cutoff as r_max, in A)."""

    model_name = "gemnet_t"

    def __init__(
        self,
        type_numbers,
        r_max: float = 5.0,
        num_blocks: int = 3,
        num_spherical: int = 7,
        num_radial: int = 6,
        emb_size_atom: int = 64,
        emb_size_edge: int = 64,
        emb_size_trip: int = 32,
        emb_size_rbf: int = 16,
        emb_size_cbf: int = 16,
        emb_size_bil_trip: int = 32,
        num_before_skip: int = 1,
        num_after_skip: int = 1,
        num_concat: int = 1,
        num_atom: int = 2,
        envelope_exponent: float = 5.0,
        avg_num_neighbors: float = 1.0,
    ):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        self.radial = RadialEmbedding(r_max, num_radial, envelope_exponent)
        self.spherical = SphericalBasis(r_max, num_spherical, num_radial)
        self.inv_sqrt_triplets = 1.0 / math.sqrt(max(float(avg_num_neighbors) - 1.0, 1.0))
        self.atom_embedding = nn.Embedding(self.num_species, emb_size_atom)
        self.edge_rbf = nn.Linear(num_radial, emb_size_rbf, bias=False)
        self.edge_embedding = dense(2 * emb_size_atom + emb_size_rbf, emb_size_edge)
        self.blocks = nn.ModuleList(
            InteractionBlock(emb_size_atom, emb_size_edge, emb_size_trip, emb_size_rbf, emb_size_cbf, emb_size_bil_trip,
                             num_radial, num_spherical, num_before_skip, num_after_skip, num_concat, num_atom)
            for _ in range(num_blocks)
        )
        self.outputs = nn.ModuleList(OutputBlock(emb_size_atom, emb_size_edge, num_radial) for _ in range(num_blocks + 1))
        self.edge_feature_scalar_counts = [emb_size_edge] * num_blocks

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        edge_index = batch[keys.EDGE_INDEX]
        centre, neighbour = edge_index
        num_atoms = batch[keys.SPECIES].shape[0]
        shifts = batch[keys.EDGE_CELL_SHIFT].round().long()
        e_in, e_out = build_triplets(edge_index, shifts, num_atoms)
        num_edges = edge_index.shape[1]
        counts = torch.bincount(e_out, minlength=num_edges)
        ragged = torch.arange(e_out.shape[0], device=e_out.device) - (torch.cumsum(counts, 0) - counts)[e_out]
        reverse = reverse_edges(edge_index, shifts, num_atoms)
        rbf, envelope = self.radial(edge_lengths)
        cbf_radial = self.spherical.radial(edge_lengths, envelope)
        # angle at j between j -> i (= -vector of edge i <- j) and j -> k (= vector of edge j <- k)
        cos_theta = (-edge_vectors.index_select(0, e_out) * edge_vectors.index_select(0, e_in)).sum(-1) / (edge_lengths.index_select(0, e_out) * edge_lengths.index_select(0, e_in))
        sph = self.spherical.angular(cos_theta.clamp(-1.0, 1.0))
        graph = (centre, neighbour, e_in, e_out, ragged, counts, reverse, self.inv_sqrt_neighbors, self.inv_sqrt_triplets)
        h = self.atom_embedding(batch[keys.SPECIES])
        m = self.edge_embedding(torch.cat([h.index_select(0, centre), h.index_select(0, neighbour), self.edge_rbf(rbf)], dim=-1))
        energies = self.outputs[0](m, rbf, centre, num_atoms, self.inv_sqrt_neighbors)
        states = []
        for block, output in zip(self.blocks, self.outputs[1:]):
            h, m = block(h, m, rbf, cbf_radial, sph, graph)
            energies = energies + output(m, rbf, centre, num_atoms, self.inv_sqrt_neighbors)
            states.append(m)
        return energies, (states if edge_states else None)
