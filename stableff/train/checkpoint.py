"""Checkpoints: written atomically (temp file, fsync, rename) so an interrupted run never leaves a
corrupt file; loading rebuilds the model with its hyper-parameters and dataset statistics."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from stableff.data.stats import DatasetStatistics
from stableff.errors import StableFFError

FORMAT = "stableff-checkpoint-1"


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(data, path: str | Path) -> None:
    """JSON (indented) written atomically: readers never see half a file."""
    import json

    write_text_atomic(json.dumps(data, indent=2), path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise StableFFError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise StableFFError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise StableFFError(f"{path}: not a stableff checkpoint")
    return checkpoint


def _is_codegen_constant(key: str) -> bool:
    # e3nn's fx-compiled tensor products may carry their constants as buffers (after a deepcopy):
    # they are rebuilt with the model and are not weights
    return "._tensor_constant" in key


def load_weights(model, state: dict) -> None:
    """load_state_dict that ignores only e3nn codegen constants, and is strict about everything else."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_codegen_constant(k)]
    unexpected = [k for k in unexpected if not _is_codegen_constant(k)]
    if missing or unexpected:
        raise StableFFError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def model_from_checkpoint(path_or_checkpoint, device="cpu"):
    """Return (model in eval mode with the checkpoint's inference weights, DatasetStatistics)."""
    from stableff.models import build_model

    checkpoint = path_or_checkpoint if isinstance(path_or_checkpoint, dict) else load_checkpoint(path_or_checkpoint)
    dtype = getattr(torch, checkpoint.get("dtype", "float32"))
    model = build_model(checkpoint["model_name"], type_numbers=checkpoint["type_numbers"], **checkpoint["hyperparameters"])
    model = model.to(dtype)
    load_weights(model, checkpoint["model_state"])
    model.to(device).eval()
    return model, DatasetStatistics.from_dict(checkpoint["statistics"])
