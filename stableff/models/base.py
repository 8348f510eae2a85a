"""The one interface every model has: ``forward(batch) -> {energy, forces, stress?, edge_features?}``.

A concrete model implements :meth:`ForceField.atomic_energies` (raw per-atom outputs and, when asked,
its per-layer edge states); this base class

* captures the constructor's hyper-parameters (to rebuild the model from a checkpoint),
* adds the per-species scale and shift and sums to total energies in float64 (a float32 model of a
  -9400 eV molecule would otherwise round its energy to 1e-3 eV),
* takes forces (and stress for periodic cells) by autograd of the energy,
* turns the per-layer edge states into the invariant ``edge_features`` only when asked (training with
  decorrelation, ``stableff correlation``), on the first ``batch[keys.EDGE_FEATURE_SAMPLE]`` edges
  when present (the trainer stores a random sample of the edges first: ``data.graph.edges_first``),
  so MD and evaluation never pay for them.
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
import warnings

import torch
from torch import nn

from stableff.data import keys
from stableff.errors import ConfigError
from stableff.models.blocks import scatter_sum
from stableff.models.priors import PRIOR_HYPERPARAMETERS, ZBLRepulsion

#: constructor arguments that are not hyper-parameters (they come from the data, or from the weights)
NOT_HYPERPARAMETERS = ("self", "type_numbers", "energy_scale", "energy_shift")


class ForceField(nn.Module):
    """Base class. Subclasses call ``super().__init__(type_numbers, r_max, avg_num_neighbors,
    energy_scale, energy_shift)``, set ``edge_feature_scalar_counts`` and implement
    ``atomic_energies`` (and ``edge_feature_view`` when their edge states are not invariant already).

    Args:
        type_numbers: atomic numbers of the species, in species-index order.
        r_max: cutoff radius (Angstrom).
        avg_num_neighbors: mean neighbour count of the training data; sums over neighbours are
            divided by its square root.
        energy_scale, energy_shift: per-species initial values (eV); E_i = scale_s * e_i + shift_s.
    """

    model_name = "base"
    #: True where atomic_energies returns the invariant edge features already, on the first
    #: ``feature_edge_count(batch)`` edges (it can take them more cheaply than a view afterwards)
    samples_edge_states = False
    #: bumped when the same hyper-parameters and weights start to mean another function or training
    #: (part of the study's training fingerprint from revision 2 on)
    revision = 1
    #: hyper-parameters added after checkpoints of this model were first written, with the value
    #: that reproduces those checkpoints (used where a checkpoint lacks them)
    legacy_hyperparameters: dict = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__init__
        signature = inspect.signature(init)

        @functools.wraps(init)
        def capturing_init(self, *args, **kw):
            priors = {k: kw.pop(k, default) for k, default in PRIOR_HYPERPARAMETERS.items()}
            init(self, *args, **kw)
            if type(self) is cls:  # the most derived constructor records the hyper-parameters
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                self.hyperparameters = {k: v for k, v in bound.arguments.items() if k not in NOT_HYPERPARAMETERS}
                self.hyperparameters.update(priors)
                self._add_priors(**priors)

        cls.__init__ = capturing_init

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """Names a config may set for this model (everything but the data-derived arguments),
        the priors every model accepts included."""
        own = [k for k in inspect.signature(cls.__init__).parameters if k not in NOT_HYPERPARAMETERS + ("avg_num_neighbors",)]
        return own + list(PRIOR_HYPERPARAMETERS)

    def _add_priors(self, zbl=False, zbl_inner=None, zbl_outer=None) -> None:
        if not isinstance(zbl, bool):
            raise ConfigError(f"model.zbl must be true or false (got {zbl!r})")
        for name, value in (("zbl_inner", zbl_inner), ("zbl_outer", zbl_outer)):
            if value is not None and (not zbl or not isinstance(value, (int, float))):
                raise ConfigError(f"model.{name} needs zbl: true and a distance in A (got {value!r})")
        self.zbl = ZBLRepulsion(self.type_numbers, self.r_max, zbl_inner, zbl_outer) if zbl else None

    def __init__(self, type_numbers, r_max: float, avg_num_neighbors: float = 1.0, energy_scale=1.0, energy_shift=0.0, trainable_scale_shift: bool = True):
        super().__init__()
        self.type_numbers = [int(z) for z in type_numbers]
        self.r_max = float(r_max)
        self.inv_sqrt_neighbors = 1.0 / float(avg_num_neighbors) ** 0.5
        n = len(self.type_numbers)
        scale = torch.as_tensor(energy_scale, dtype=torch.get_default_dtype()).expand(n).clone()
        shift = torch.as_tensor(energy_shift, dtype=torch.get_default_dtype()).expand(n).clone()
        self.per_species_scale = nn.Parameter(scale, requires_grad=trainable_scale_shift)
        self.per_species_shift = nn.Parameter(shift, requires_grad=trainable_scale_shift)
        self.hyperparameters: dict = {}
        self.zbl: ZBLRepulsion | None = None
        #: per layer, how many leading columns of edge_features[l] are l = 0 scalars (rest: norms)
        self.edge_feature_scalar_counts: list[int] = []
        self._compiled = None  # see compile_inference
        self._compile_state = "off"  # off | pending | ready | failed

    def compile_inference(self, enabled: bool = True) -> "ForceField":
        """Evaluate energies and forces outside training through ``torch.compile`` (dynamic shapes:
        one compilation serves every structure size and neighbour count). The network part
        (``atomic_energies``) is compiled, with its backward; the float64 sums, the priors and the
        autograd of forces stay eager. The first call compiles and reports its time on stderr; if
        compilation or the compiled code fails on this platform, one warning is given and the model
        runs eager from then on. Training (forces differentiated again for the force loss, which
        compiled graphs do not support) and edge-feature evaluation always run eager."""
        if enabled and self._compile_state == "off":
            import torch._dynamo

            # Python floats of the model (cutoffs, exponents) as constants: as symbols they hit
            # inductor lowering errors (torch 2.13, KeyError 'unbacked_bindings')
            self._compiled = torch._dynamo.config.patch(specialize_float=True)(torch.compile(self.atomic_energies, dynamic=True))
            self._compile_state = "pending"
        elif not enabled:
            self._compiled, self._compile_state = None, "off"
        return self

    @property
    def compiled(self) -> bool:
        """True while inference runs (or is about to run) through the compiled path."""
        return self._compile_state in ("pending", "ready")

    @property
    def num_interaction_layers(self) -> int:
        """How many per-layer tensors ``edge_features`` holds."""
        return len(self.edge_feature_scalar_counts)

    @property
    def num_species(self) -> int:
        return len(self.type_numbers)

    @property
    def dtype(self) -> torch.dtype:
        return self.per_species_scale.dtype

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Raw per-atom energies [N] (before scale/shift) and, if ``edge_states``, one [E, ...] tensor
        per interaction layer over all edges, or where ``samples_edge_states`` the invariant edge
        features [E_s, d_l] on the first ``feature_edge_count(batch)`` edges (None otherwise)."""
        raise NotImplementedError

    @staticmethod
    def feature_edge_count(batch: dict) -> int:
        """On how many leading edges of the batch edge features are computed: all, or the sample
        the trainer stored first (``keys.EDGE_FEATURE_SAMPLE``)."""
        num_edges = batch[keys.EDGE_INDEX].shape[1]
        return min(int(batch[keys.EDGE_FEATURE_SAMPLE]), num_edges) if keys.EDGE_FEATURE_SAMPLE in batch else num_edges

    def edge_feature_view(self, layer: int, states: torch.Tensor) -> torch.Tensor:
        """The invariant [E_s, d_l] view of a layer's edge states (identity for invariant states)."""
        return states

    def forward(self, batch: dict, compute_forces: bool = True, compute_stress: bool | None = None, create_graph: bool | None = None, edge_features: bool = False) -> dict:
        """Energies (float64), forces (-dE/dr) and, for fully periodic batches, stress ((1/V) dE/d strain);
        with ``edge_features`` also the per-layer invariant edge features.

        ``create_graph`` (default: ``self.training``) keeps the graph of the forces so that a force
        loss can be differentiated with respect to the weights.
        """
        if create_graph is None:
            create_graph = self.training
        if self._compile_state in ("pending", "ready") and not (self.training or create_graph or edge_features):
            if self._compile_state == "ready":
                return self._forward(batch, compute_forces, compute_stress, create_graph, False, self._compiled)
            start = time.perf_counter()
            try:
                out = self._forward(batch, compute_forces, compute_stress, create_graph, False, self._compiled)
            except Exception as exc:  # any failure of the compiler or of the compiled code: eager from now on
                self._compile_state, self._compiled = "failed", None
                first_line = (str(exc).strip().splitlines() or [""])[0][:200]
                warnings.warn(f"torch.compile failed for {self.model_name} on this platform ({type(exc).__name__}: {first_line}); running eager", RuntimeWarning, stacklevel=2)
            else:
                self._compile_state = "ready"
                print(f"compiled {self.model_name} (torch.compile, dynamic shapes) in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
                return out
        return self._forward(batch, compute_forces, compute_stress, create_graph, edge_features, self.atomic_energies)

    def _forward(self, batch, compute_forces, compute_stress, create_graph, edge_features, atomic_energies) -> dict:
        atom_batch = batch[keys.BATCH]
        cell = batch[keys.CELL]
        num_structures = cell.shape[0]
        if compute_stress is None:
            compute_stress = bool(batch[keys.PBC].all())
        positions_leaf = batch[keys.POSITIONS]
        if compute_forces:
            positions_leaf = positions_leaf.detach().requires_grad_(True)
        positions = positions_leaf
        strain = None
        with torch.set_grad_enabled(torch.is_grad_enabled() or compute_forces or compute_stress):
            if compute_stress:
                # homogeneous strain of positions and cell: dE/d(strain) = V * stress
                strain = torch.zeros((num_structures, 3, 3), dtype=positions.dtype, device=positions.device, requires_grad=True)
                symmetric = 0.5 * (strain + strain.transpose(1, 2))
                positions = positions + torch.einsum("ni,nij->nj", positions, symmetric.index_select(0, atom_batch))
                cell = cell + torch.bmm(cell, symmetric)
            centre, neighbour = batch[keys.EDGE_INDEX]
            if num_structures == 1:  # one cell (MD, a calculator call): one [E, 3] x [3, 3] product
                shift_vectors = batch[keys.EDGE_CELL_SHIFT] @ cell[0]
            else:
                shift_vectors = torch.einsum("ei,eij->ej", batch[keys.EDGE_CELL_SHIFT], cell.index_select(0, atom_batch.index_select(0, centre)))
            edge_vectors = positions.index_select(0, neighbour) - positions.index_select(0, centre) + shift_vectors
            edge_lengths = torch.linalg.norm(edge_vectors, dim=-1)

            raw, states = atomic_energies(batch, edge_vectors, edge_lengths, edge_features)
            species = batch[keys.SPECIES]
            # per-atom residual in the model's dtype, the large species shift and the sum in float64
            atomic = (raw * self.per_species_scale.index_select(0, species)).double() + self.per_species_shift.index_select(0, species).double()
            if self.zbl is not None:  # the learned part fits the residual to the short-range repulsion
                atomic = atomic + self.zbl(species, batch[keys.EDGE_INDEX], edge_lengths)
            energy = scatter_sum(atomic, atom_batch, num_structures)
        out = {keys.TOTAL_ENERGY: energy, keys.ATOMIC_ENERGIES: atomic}
        if edge_features:
            if self.samples_edge_states:
                out[keys.EDGE_FEATURES] = list(states)
            else:
                count = self.feature_edge_count(batch)
                out[keys.EDGE_FEATURES] = [self.edge_feature_view(layer, s if s.shape[0] == count else s[:count]) for layer, s in enumerate(states)]
        wrt = ([positions_leaf] if compute_forces else []) + ([strain] if compute_stress else [])
        if wrt:
            grads = torch.autograd.grad(energy.sum(), wrt, create_graph=create_graph)
            if compute_forces:
                out[keys.FORCES] = -grads[0]
            if compute_stress:
                volume = torch.abs(torch.linalg.det(batch[keys.CELL]))
                out[keys.VIRIAL] = -grads[-1]
                out[keys.STRESS] = grads[-1] / volume.view(-1, 1, 1)
        return out
