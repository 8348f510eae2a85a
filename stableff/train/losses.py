"""Energy / force / stress losses, normalised by *global* counts so that data-parallel gradients
(summed over processes) equal the single-process gradients of the same global batch."""

from __future__ import annotations

import torch

from stableff.data import keys


def loss_sums(prediction: dict, batch: dict, use_stress: bool) -> dict[str, torch.Tensor]:
    """Sums of squared errors and their counts over one (local) batch.

    energy: sum over structures of ((E_pred - E) / N)^2 (per-atom energy, eV^2);
    forces: sum over atoms and components of (F_pred - F)^2; stress: over components.
    """
    num_atoms = batch[keys.NUM_ATOMS].to(prediction[keys.TOTAL_ENERGY].dtype)
    sums = {}
    energy_error = (prediction[keys.TOTAL_ENERGY] - batch[keys.TOTAL_ENERGY]) / num_atoms
    sums["energy"] = (energy_error.pow(2).sum(), torch.tensor(float(len(num_atoms))))
    if keys.FORCES in batch:
        force_error = prediction[keys.FORCES] - batch[keys.FORCES]
        sums["forces"] = (force_error.pow(2).sum(), torch.tensor(float(force_error.numel())))
    if use_stress and keys.STRESS in batch and keys.STRESS in prediction:
        stress_error = prediction[keys.STRESS] - batch[keys.STRESS]
        sums["stress"] = (stress_error.pow(2).sum(), torch.tensor(float(stress_error.numel())))
    return sums


def loss_weights(loss_config) -> dict[str, float]:
    """w_E, w_F, w_S of a ``loss:`` block (the weights of training and of validation alike)."""
    return {"energy": loss_config.energy_weight, "forces": loss_config.forces_weight, "stress": loss_config.stress_weight}


def combine_terms(terms: dict, weights: dict[str, float]):
    """sum_k w_k * MSE_k: the one weighted loss, over whichever terms are there (tensors while
    training, floats in validation)."""
    total = 0.0
    for name, term in terms.items():
        total = total + weights.get(name, 0.0) * term
    return total


def weighted_loss(sums: dict, global_counts: dict[str, float], weights: dict[str, float]) -> tuple[torch.Tensor, dict]:
    """Total loss sum_k w_k * SSE_k / count_k (count over the global batch) and the per-term values."""
    terms = {name: sse / max(global_counts[name], 1.0) for name, (sse, _) in sums.items()}
    return combine_terms(terms, weights), terms
