"""The one interface every model has: ``forward(batch) -> {energy, forces, stress?, edge_features?}``,
composed of small modules (as nequip composes its ForceStressOutput and PerTypeScaleShift around an
energy model):

* the energy network (:class:`stableff.models.base.EnergyNetwork`): raw per-atom outputs and, when
  asked, its per-layer edge states;
* :class:`~stableff.models.scale_shift.PerSpeciesScaleShift`: E_i = scale * e_i + shift, in float64;
* priors (:mod:`stableff.models.priors`), each adding per-atom energies (the network fits the residual);
* the float64 sum to total energies, and forces and stress by autograd (:mod:`stableff.models.outputs`);
* the edge-feature sample (:mod:`stableff.models.edge_features`), only when asked;
* optionally, a compiled energy for inference (:mod:`stableff.models.compiled`), held beside the rest.
"""

from __future__ import annotations

import torch
from torch import nn

from stableff.data import keys
from stableff.models.base import EnergyNetwork
from stableff.models.edge_features import sampled_edge_features
from stableff.models.outputs import add_forces_and_stress, strained_edges
from stableff.models.scale_shift import PerSpeciesScaleShift
from stableff.models.scatter import scatter_sum


class ForceField(nn.Module):
    """An energy network with its scale and shift, priors and outputs.

    Args:
        network: the energy network.
        energy_scale, energy_shift: per-species initial values (eV).
        priors: modules ``prior(species, edge_index, edge_lengths) -> per-atom energies [N]`` (float64).
        hyperparameters: what rebuilds the model (``stableff.models.build_model``), stored in checkpoints.
        trainable_scale_shift: whether training adjusts the scale and shift.
    """

    def __init__(self, network: EnergyNetwork, energy_scale=1.0, energy_shift=0.0, priors=(), hyperparameters: dict | None = None, trainable_scale_shift: bool = True):
        super().__init__()
        # registered first: the parameters keep the order of the checkpoints before the composition
        self.scale_shift = PerSpeciesScaleShift(network.num_species, energy_scale, energy_shift, trainable_scale_shift)
        self.network = network
        self.priors = nn.ModuleList(priors)
        self.hyperparameters: dict = dict(hyperparameters or {})
        self.compiled_energy = None  # a CompiledEnergy (stableff.models.compiled) where inference is compiled

    # what callers read of the network
    @property
    def model_name(self) -> str:
        return self.network.model_name

    @property
    def revision(self) -> int:
        return self.network.revision

    @property
    def type_numbers(self) -> list[int]:
        return self.network.type_numbers

    @property
    def r_max(self) -> float:
        return self.network.r_max

    @property
    def num_species(self) -> int:
        return self.network.num_species

    @property
    def edge_feature_scalar_counts(self) -> list[int]:
        return self.network.edge_feature_scalar_counts

    @property
    def num_interaction_layers(self) -> int:
        """How many per-layer tensors ``edge_features`` holds."""
        return len(self.network.edge_feature_scalar_counts)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_shift.scale.dtype

    @property
    def compiled(self) -> bool:
        """True while inference runs (or is about to run) through the compiled path."""
        return self.compiled_energy is not None and self.compiled_energy.active

    def prior(self, kind: type):
        """The prior module of class ``kind``, or None."""
        return next((p for p in self.priors if isinstance(p, kind)), None)

    def forward(self, batch: dict, compute_forces: bool = True, compute_stress: bool | None = None, create_graph: bool | None = None, edge_features: bool = False) -> dict:
        """Energies (float64), forces (-dE/dr) and, for fully periodic batches, stress ((1/V) dE/d strain);
        with ``edge_features`` also the per-layer invariant edge features.

        ``create_graph`` (default: ``self.training``) keeps the graph of the forces so that a force
        loss can be differentiated with respect to the weights.
        """
        if create_graph is None:
            create_graph = self.training
        if compute_stress is None:
            compute_stress = bool(batch[keys.PBC].all())
        eager = self.network.atomic_energies
        if self.compiled and not (self.training or create_graph or edge_features):
            return self.compiled_energy.run(lambda energy: self._forward(batch, compute_forces, compute_stress, create_graph, False, energy), eager)
        return self._forward(batch, compute_forces, compute_stress, create_graph, edge_features, eager)

    def _forward(self, batch, compute_forces, compute_stress, create_graph, edge_features, atomic_energies) -> dict:
        with torch.set_grad_enabled(torch.is_grad_enabled() or compute_forces or compute_stress):
            positions_leaf, strain, edge_vectors, edge_lengths = strained_edges(batch, compute_forces, compute_stress)
            raw, states = atomic_energies(batch, edge_vectors, edge_lengths, edge_features)
            species = batch[keys.SPECIES]
            atomic = self.scale_shift(raw, species)
            for prior in self.priors:  # the network fits the residual to the priors
                atomic = atomic + prior(species, batch[keys.EDGE_INDEX], edge_lengths)
            energy = scatter_sum(atomic, batch[keys.BATCH], batch[keys.CELL].shape[0])
        out = {keys.TOTAL_ENERGY: energy, keys.ATOMIC_ENERGIES: atomic}
        if edge_features:
            out[keys.EDGE_FEATURES] = sampled_edge_features(states, batch, self.network.samples_edge_states)
        return add_forces_and_stress(out, energy, positions_leaf, strain, batch[keys.CELL], create_graph)
