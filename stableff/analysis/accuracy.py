"""Accuracy of a trained model on labelled files (the `stableff evaluate` computation)."""

from __future__ import annotations

from pathlib import Path

from stableff.data.graph import frame_to_graph
from stableff.data.io import read_frames, resolve_path
from stableff.train.checkpoint import model_from_checkpoint
from stableff.train.evaluation import error_metrics, predict


def evaluate_files(model_or_path, paths, batch_size: int = 8, device: str = "cpu", progress: bool = True) -> list[dict]:
    """For each file: its metrics (keys of :func:`error_metrics`, plus ``path``) and raw predictions
    (under ``"prediction"``). Frames must carry energies and forces."""
    if isinstance(model_or_path, (str, Path)):
        model, _ = model_from_checkpoint(model_or_path, device=device)
    else:
        model = model_or_path
    dtype = next(model.parameters()).dtype
    results = []
    for path in paths:
        frames = read_frames(path, require=("energy", "forces"))
        graphs = [frame_to_graph(f, model.type_numbers, model.r_max, dtype) for f in frames]
        prediction = predict(model, graphs, batch_size=batch_size, device=device, progress=progress)
        metrics = {"path": str(resolve_path(path)), **error_metrics(prediction), "prediction": prediction}
        results.append(metrics)
    return results
