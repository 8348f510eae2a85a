"""A short-range prior that training never sees: the variant takes the weights of the same training
without it.

The data-placed ZBL switch (``zbl: {switch: data}``, models/priors.py) ends at the closest distance
of each species pair in the training data, so on the training frames the prior's energy, forces and
stress are zero (the smootherstep switch and its derivative vanish at and beyond the outer radius).
The prior has no weights; the loss, its gradients, the validation errors that choose best.ckpt and
drive the learning-rate schedule, and the decorrelation loss (the network's edge features) are then
the same numbers with the prior as without it. Training the variant is training its sibling variant
without ``zbl`` (``decorrelated+zbl`` -> ``decorrelated``, ``zbl`` -> ``baseline``), which the study
trains anyway: the variant takes those weights and attaches the prior, at no training cost.

This holds only when it is checked: the prior is evaluated on every training and validation frame
and must stay below :data:`INERT_LIMIT` (eV per frame, eV/A per atom and per unit of virial);
a validation frame closer than any training pair, a factor above 1, or a hand-placed switch makes
the variant train from scratch, and the log says why. Which sibling's weights were taken is part of
the stored training's fingerprint: a retrained sibling retrains (re-adopts) the variant.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml

from stableff.fingerprint import differences, file_hash
from stableff.io import read_json, save_torch_atomic, write_json_atomic, write_text_atomic
from stableff.layout import StudyRun
from stableff.study.plan import variant_remedies

#: the prior counts as absent from the data below this (eV per frame; eV/A per atom; eV per virial entry)
INERT_LIMIT = 1e-6


def sibling_variant(variant: str, variants) -> str | None:
    """The variant of ``variants`` with the same remedies as ``variant`` but without zbl (None when
    ``variant`` has no zbl, is actively learned, or the study has no such variant)."""
    remedies = variant_remedies(variant)
    if "zbl" not in remedies or "active" in remedies:
        return None
    return next((v for v in variants if variant_remedies(v) == remedies - {"zbl"}), None)


def prior_extent(prior, frames, type_numbers, cutoff: float) -> dict:
    """The largest prior energy per frame (eV), force per atom (eV/A) and virial entry (eV) over
    ``frames``, and the frame where the largest force is (source and index)."""
    from stableff.data import keys
    from stableff.data.graph import frame_to_graph

    worst = {"energy_eV": 0.0, "force_eV_per_A": 0.0, "virial_eV": 0.0, "where": None}
    for frame in frames:
        graph = frame_to_graph(frame, type_numbers, cutoff, torch.float64)
        centre, neighbour = graph[keys.EDGE_INDEX]
        positions = graph[keys.POSITIONS]
        vectors = (positions[neighbour] - positions[centre] + graph[keys.EDGE_CELL_SHIFT] @ graph[keys.CELL][0]).requires_grad_(True)
        energy = prior(graph[keys.SPECIES], graph[keys.EDGE_INDEX], torch.linalg.norm(vectors, dim=-1)).sum()
        (d_vectors,) = torch.autograd.grad(energy, vectors)
        forces = torch.zeros_like(positions).index_add_(0, centre, d_vectors).index_add_(0, neighbour, -d_vectors)
        force = float(forces.norm(dim=-1).max()) if len(forces) else 0.0
        worst["energy_eV"] = max(worst["energy_eV"], abs(float(energy.detach())))
        worst["virial_eV"] = max(worst["virial_eV"], float((vectors.detach().T @ d_vectors).abs().max()) if len(vectors) else 0.0)
        if force > worst["force_eV_per_A"] or worst["where"] is None:
            worst["force_eV_per_A"] = max(worst["force_eV_per_A"], force)
            worst["where"] = f"{frame.source or '<data>'} frame {frame.index}"
    return worst


def _differences_beyond_the_prior(config, sibling_config) -> list[str]:
    from stableff.train.config import config_to_dict

    ours, theirs = config_to_dict(config), config_to_dict(sibling_config)
    for raw in (ours, theirs):
        raw["model"] = {k: v for k, v in raw["model"].items() if not k.startswith("zbl")}
    return differences(theirs, ours)


def train_without_prior(config, sibling_config, sibling_dir: Path, run_dir: Path, log=print) -> dict | None:
    """The training of ``config`` (a data-placed ZBL variant) as its sibling's weights with the prior
    attached, when the prior is inert on the training and validation frames; None (after saying
    why, where it is not obvious) when the variant must be trained itself. Trains (or reuses) the
    sibling first. Returns done.json's content, as :func:`stableff.study.stages.train_stage`."""
    from stableff.data.splits import load_splits
    from stableff.data.stats import DatasetStatistics
    from stableff.models import build_model
    from stableff.models.saved import checkpoint_hyperparameters, load_checkpoint, load_weights
    from stableff.study.stages import _reuse, train_stage, training_fingerprint
    from stableff.train.config import config_to_dict
    from stableff.train.loop import placed_hyperparameters

    hyper = config.model.hyperparameters()
    if not (hyper.get("zbl") and hyper.get("zbl_switch") == "data") or sibling_config.model.hyperparameters().get("zbl"):
        return None
    if _differences_beyond_the_prior(config, sibling_config):
        return None
    outputs, source = StudyRun(run_dir), StudyRun(sibling_dir)
    trained = read_json(outputs.done)  # a training of this very config, with the prior, made before: kept
    if trained is not None and not differences(trained.get("fingerprint"), training_fingerprint(config)) \
            and outputs.best_checkpoint.is_file() and trained.get("model_hash") == file_hash(outputs.best_checkpoint):
        log("  trained before (reused)")
        return trained
    sibling_done = train_stage(sibling_config, sibling_dir, log)
    fingerprint = {**training_fingerprint(config), "weights_of": sibling_done["model_hash"]}
    done = _reuse(outputs.done, fingerprint, "trained model", log)
    if done is not None and outputs.best_checkpoint.is_file() and done.get("model_hash") == file_hash(outputs.best_checkpoint):
        log(f"  trained before (reused: the weights of {sibling_dir} with the prior)")
        return done
    t0 = time.perf_counter()
    best = load_checkpoint(source.best_checkpoint)
    statistics = DatasetStatistics.from_dict(best["statistics"])
    placed, _ = placed_hyperparameters(config, statistics)
    model = build_model(best["model_name"], type_numbers=best["type_numbers"],
                        **{**checkpoint_hyperparameters(best), **{k: v for k, v in placed.items() if k.startswith("zbl")}})
    load_weights(model, best["model_state"])  # strict: the prior adds no weights
    splits = load_splits(config.data)
    extent = prior_extent(model.priors[0], [*splits["train"], *splits["validation"]], best["type_numbers"], model.r_max)
    if max(extent["energy_eV"], extent["force_eV_per_A"], extent["virial_eV"]) > INERT_LIMIT:
        log(f"  zbl: the prior reaches the training or validation data (up to {extent['force_eV_per_A']:.2g} eV/A, "
            f"{extent['energy_eV']:.2g} eV per frame; {extent['where']}): training with it")
        return None
    for path in outputs.outputs():
        path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"fingerprint": fingerprint}, outputs.started)  # a plain training never resumes from these files
    changed = {"hyperparameters": model.hyperparameters, "config": config_to_dict(config)}
    save_torch_atomic({**best, **changed}, outputs.best_checkpoint)
    if source.last_checkpoint.is_file():  # absent from a training restored from a kept copy (study --trainings)
        save_torch_atomic({**load_checkpoint(source.last_checkpoint), **changed}, outputs.last_checkpoint)
    write_text_atomic(source.metrics.read_text(), outputs.metrics)
    write_text_atomic(yaml.safe_dump(config_to_dict(config), sort_keys=False), outputs.config)
    done = {
        **{k: sibling_done.get(k) for k in ("train_seconds", "epochs", "median_step_seconds")},
        "fingerprint": fingerprint,
        "wall_seconds": time.perf_counter() - t0,
        "model_hash": file_hash(outputs.best_checkpoint),
        "weights_of": str(sibling_dir),
        "prior_on_data": extent,
    }
    write_json_atomic(done, outputs.done)
    log(f"  zbl: the prior is zero on every training and validation frame (at most {extent['force_eV_per_A']:.1g} eV/A), so training with it "
        f"is training without it: the weights of {sibling_dir} with the prior attached")
    return done
