"""Loading a trained model for use (MD, evaluation, analysis): the checkpoint format, the model
rebuilt from its hyper-parameters, and the training-data statistics stored beside the weights.

This lives with the models, not with the trainer, so that md/, analysis/ and measures/ never depend
on training code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stableff.data.stats import DatasetStatistics
from stableff.errors import StableFFError

#: the ``format`` entry of every checkpoint stableff writes
FORMAT = "stableff-checkpoint-2"  # 2: shared radial embedding, float64 energy sum


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict at ``path``; a clear error for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise StableFFError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise StableFFError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if isinstance(found, str) and found.startswith("stableff-checkpoint-") and found != FORMAT:
        raise StableFFError(f"{path}: made by another stableff version ({found}; this one reads {FORMAT}): train the model again")
    if found != FORMAT:
        raise StableFFError(f"{path}: not a stableff checkpoint")
    return checkpoint


def _is_codegen_constant(key: str) -> bool:
    # e3nn's fx-compiled tensor products may carry their constants as buffers (after a deepcopy):
    # they are rebuilt with the model and are not weights
    return "._tensor_constant" in key


def upgrade_state(state: dict) -> dict:
    """Weights saved before models were composed (one module holding per_species_scale/shift and
    the network's weights at the top level) under the composed model's names."""
    if "per_species_scale" not in state:
        return state
    renamed = {"per_species_scale": "scale_shift.scale", "per_species_shift": "scale_shift.shift"}
    return {renamed.get(k, f"network.{k}"): v for k, v in state.items()}


def load_weights(model: torch.nn.Module, state: dict) -> None:
    """load_state_dict that ignores only e3nn codegen constants, and is strict about everything else
    (weights of checkpoints written before the composition are renamed first)."""
    state = upgrade_state(state)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_codegen_constant(k)]
    unexpected = [k for k in unexpected if not _is_codegen_constant(k)]
    if missing or unexpected:
        raise StableFFError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def checkpoint_hyperparameters(checkpoint: dict) -> dict:
    """The checkpoint's hyper-parameters, with those its model gained since (absent from older
    checkpoints) set to the values that reproduce the checkpoint."""
    from stableff.models import MODELS

    legacy = getattr(MODELS.get(checkpoint["model_name"]), "legacy_hyperparameters", {})
    return {**legacy, **checkpoint["hyperparameters"]}


def checkpoint_statistics(path) -> DatasetStatistics:
    """The training-data statistics a checkpoint stores (the failure thresholds), without building its model."""
    return DatasetStatistics.from_dict(load_checkpoint(path)["statistics"])


def model_from_checkpoint(path_or_checkpoint, device="cpu", compile: bool = False):
    """Return (model in eval mode with the checkpoint's inference weights, DatasetStatistics);
    ``compile``: energies and forces through torch.compile (:func:`stableff.models.compiled.compile_inference`).

    The model is for inference: its parameters do not require gradients, so forces (autograd with
    respect to positions) record no graph for the weights (training resumes through the trainer's
    own loading, not through this function)."""
    from stableff.models import build_model

    checkpoint = path_or_checkpoint if isinstance(path_or_checkpoint, dict) else load_checkpoint(path_or_checkpoint)
    dtype = getattr(torch, checkpoint.get("dtype", "float32"))
    model = build_model(checkpoint["model_name"], type_numbers=checkpoint["type_numbers"], **checkpoint_hyperparameters(checkpoint))
    model = model.to(dtype)
    load_weights(model, checkpoint["model_state"])
    model.to(device).eval().requires_grad_(False)
    if compile:
        from stableff.models.compiled import compile_inference

        compile_inference(model)
    return model, DatasetStatistics.from_dict(checkpoint["statistics"])
