"""Prediction over a dataset and the accuracy metrics (docs/method.md, "Accuracy"): EMAE and ERMSE
in meV/atom, FMAE and FRMSE in meV/A, stress MAE in meV/A^3, force MAE by species.

Metrics over several files are computed from the pooled errors (an RMSE from the pooled squared
errors, a per-species MAE over every atom of every file), never by averaging per-file figures.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from stableff.data import keys
from stableff.data.graph import collate, to_device

PREDICTION_KEYS = ("energy_pred", "energy_ref", "num_atoms", "forces_pred", "forces_ref", "species", "stress_pred", "stress_ref")


def predict(model, graphs: Sequence[dict], batch_size: int = 8, device="cpu", progress: bool = False) -> dict:
    """Run the model over graphs; return numpy arrays of predictions and references.

    Keys: energy_pred/energy_ref [B] (eV), num_atoms [B], forces_pred/forces_ref [N, 3],
    species [N] (atomic numbers), stress_pred/stress_ref [B', 3, 3] (periodic frames with stress).
    """
    model.eval()
    collected = {k: [] for k in PREDICTION_KEYS}
    starts = range(0, len(graphs), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="evaluating", unit="batch", leave=False)
    for start in starts:
        batch = to_device(collate(graphs[start : start + batch_size]), device, model.dtype)
        has_stress = keys.STRESS in batch and bool(batch[keys.PBC].all())
        out = model(batch, compute_forces=True, compute_stress=has_stress, create_graph=False)
        collected["energy_pred"].append(out[keys.TOTAL_ENERGY].detach().cpu().double().numpy())
        collected["num_atoms"].append(batch[keys.NUM_ATOMS].cpu().numpy())
        collected["forces_pred"].append(out[keys.FORCES].detach().cpu().double().numpy())
        collected["species"].append(batch[keys.ATOMIC_NUMBERS].cpu().numpy())
        if keys.TOTAL_ENERGY in batch:
            collected["energy_ref"].append(batch[keys.TOTAL_ENERGY].cpu().double().numpy())
        if keys.FORCES in batch:
            collected["forces_ref"].append(batch[keys.FORCES].cpu().double().numpy())
        if has_stress:
            collected["stress_pred"].append(out[keys.STRESS].detach().cpu().double().numpy())
            collected["stress_ref"].append(batch[keys.STRESS].cpu().double().numpy())
    return {k: (np.concatenate(v) if v else None) for k, v in collected.items()}


def pool_predictions(predictions: Sequence[dict]) -> dict:
    """One prediction dict over several (e.g. one per file): every array concatenated. A label is
    kept only when every part has it."""
    pooled = {}
    for key in PREDICTION_KEYS:
        parts = [p[key] for p in predictions]
        pooled[key] = np.concatenate(parts) if parts and all(x is not None for x in parts) else None
    return pooled


def error_metrics(prediction: dict) -> dict:
    """Accuracy metrics in meV units from :func:`predict` (or :func:`pool_predictions`) output."""
    metrics = {"n_frames": int(len(prediction["energy_pred"]))}
    if prediction["energy_ref"] is not None:
        per_atom = (prediction["energy_pred"] - prediction["energy_ref"]) / prediction["num_atoms"]
        metrics["emae_meV_per_atom"] = float(1000 * np.mean(np.abs(per_atom)))
        metrics["ermse_meV_per_atom"] = float(1000 * np.sqrt(np.mean(per_atom**2)))
    if prediction["forces_ref"] is not None:
        error = prediction["forces_pred"] - prediction["forces_ref"]
        metrics["fmae_meV_per_A"] = float(1000 * np.mean(np.abs(error)))
        metrics["frmse_meV_per_A"] = float(1000 * np.sqrt(np.mean(error**2)))
        from ase.data import chemical_symbols

        metrics["fmae_by_species_meV_per_A"] = {
            chemical_symbols[int(z)]: float(1000 * np.mean(np.abs(error[prediction["species"] == z])))
            for z in np.unique(prediction["species"])
        }
    if prediction["stress_ref"] is not None:
        stress_error = prediction["stress_pred"] - prediction["stress_ref"]
        metrics["smae_meV_per_A3"] = float(1000 * np.mean(np.abs(stress_error)))
        metrics["srmse_meV_per_A3"] = float(1000 * np.sqrt(np.mean(stress_error**2)))
    return metrics


def evaluate_files(model_or_path, paths, batch_size: int = 8, device: str = "cpu", progress: bool = True, compile: bool = False) -> list[dict]:
    """For each file: its metrics (keys of :func:`error_metrics`, plus ``path``) and raw predictions
    (under ``"prediction"``). Frames must carry energies and forces. ``compile``: through torch.compile."""
    from stableff.data.graph import frame_to_graph
    from stableff.data.io import read_frames, resolve_path
    from stableff.models.saved import model_from_checkpoint

    model = model_from_checkpoint(model_or_path, device=device)[0] if not isinstance(model_or_path, torch.nn.Module) else model_or_path
    if compile:
        from stableff.models.compiled import compile_inference

        compile_inference(model)
    results = []
    for path in paths:
        frames = read_frames(path, require=("energy", "forces"))
        graphs = [frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in frames]
        prediction = predict(model, graphs, batch_size=batch_size, device=device, progress=progress)
        results.append({"path": str(resolve_path(path)), **error_metrics(prediction), "prediction": prediction})
    return results


def pooled_metrics(results: Sequence[dict]) -> tuple[dict, dict]:
    """(metrics over all frames of all files, the pooled prediction) from :func:`evaluate_files` output."""
    prediction = pool_predictions([r["prediction"] for r in results])
    return error_metrics(prediction), prediction
