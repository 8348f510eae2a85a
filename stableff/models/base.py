"""The energy network every model is: raw per-atom outputs from the edges of a batch.

A concrete network (NequIP, Allegro, GemNet-T, the DimeNet++-style model) implements
:meth:`EnergyNetwork.atomic_energies`; :class:`stableff.models.force_field.ForceField` composes it
with the per-species scale and shift, the priors, the float64 energy sum and forces and stress by
autograd. Hyper-parameters are the constructor's arguments; :func:`stableff.models.build_model`
records them explicitly.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from stableff.models.priors import PRIOR_HYPERPARAMETERS

#: constructor arguments that are not hyper-parameters a config sets (they come from the data)
DATA_ARGUMENTS = ("self", "type_numbers", "avg_num_neighbors")


class EnergyNetwork(nn.Module):
    """Base class of the networks. Subclasses call ``super().__init__(type_numbers, r_max,
    avg_num_neighbors)``, set ``edge_feature_scalar_counts`` and implement ``atomic_energies``.

    Args:
        type_numbers: atomic numbers of the species, in species-index order.
        r_max: cutoff radius (Angstrom).
        avg_num_neighbors: mean neighbour count of the training data; sums over neighbours are
            divided by its square root.
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

    def __init__(self, type_numbers, r_max: float, avg_num_neighbors: float = 1.0):
        super().__init__()
        self.type_numbers = [int(z) for z in type_numbers]
        self.r_max = float(r_max)
        self.inv_sqrt_neighbors = 1.0 / float(avg_num_neighbors) ** 0.5
        #: per layer, how many leading columns of edge_features[l] are l = 0 scalars (rest: norms)
        self.edge_feature_scalar_counts: list[int] = []

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """Names a config may set for this model (everything but the data-derived arguments),
        the priors every model accepts included."""
        own = [k for k in inspect.signature(cls.__init__).parameters if k not in DATA_ARGUMENTS]
        return own + list(PRIOR_HYPERPARAMETERS)

    @classmethod
    def default_hyperparameter(cls, name: str):
        """The constructor's default of ``name``."""
        return inspect.signature(cls.__init__).parameters[name].default

    @property
    def num_species(self) -> int:
        return len(self.type_numbers)

    @staticmethod
    def feature_edge_count(batch: dict) -> int:
        from stableff.models.edge_features import feature_edge_count

        return feature_edge_count(batch)

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states: bool) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Raw per-atom energies [N] (before scale/shift) and, if ``edge_states``, one [E, ...] tensor
        per interaction layer over all edges, or where ``samples_edge_states`` the invariant edge
        features [E_s, d_l] on the first ``feature_edge_count(batch)`` edges (None otherwise)."""
        raise NotImplementedError
