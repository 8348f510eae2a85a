"""The stages of a study, one function each, with explicit inputs and outputs. Each stage stores its
result in the run folder with the fingerprint of its inputs and reuses it only when the fingerprint
matches; otherwise it says what changed and computes it again.

    DIR/<model>/<variant>/seed_<s>/     training run (best.ckpt, last.ckpt, metrics.csv, done.json)
                                   accuracy.json, parity_<ID|OOD>.npz
                                   correlation.json, correlation_matrices.npz
                                   stability/<T>K/<start>/replica_<r>/...
                                   structure.json  (RDF of the MD against the reference data)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stableff.data.io import content_hashes
from stableff.fingerprint import RESULT_FORMAT, differences, file_hash
from stableff.io import copy_file_atomic, read_json, write_json_atomic
from stableff.layout import TRAJECTORY_FILE, StudyRun
from stableff.study.conditions import KINDS, Condition, sorted_conditions

def training_fingerprint(config) -> dict:
    """The training configuration (with its seed) and the content of every data file it reads."""
    from stableff.train.config import config_to_dict
    from stableff.data.splits import data_hashes

    from stableff.models import MODELS

    raw = config_to_dict(config)
    raw["training"].pop("num_threads", None)  # how fast, not what
    fingerprint = {"format": RESULT_FORMAT, "config": raw, "data": data_hashes(config.data)}
    revision = MODELS[config.model.name].revision
    if revision > 1:  # the same settings now train another model (older fingerprints lack the key)
        fingerprint["model_revision"] = revision
    return fingerprint


def _reuse(path: Path, fingerprint: dict, what: str, log) -> dict | None:
    """The stored result at ``path`` when its fingerprint matches; None (after saying why) otherwise."""
    stored = read_json(path)
    if stored is None:
        return None
    changed = differences(stored.get("fingerprint"), fingerprint)
    if not changed:
        return stored
    log(f"  {what}: inputs changed ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}), computing again")
    return None


def train_stage(config, run_dir: Path, log=print) -> dict:
    """Train (or resume, or reuse) one model. Returns done.json's content: train_seconds, epochs,
    median_step_seconds, model_hash (of best.ckpt) and the fingerprint."""
    from stableff.train.loop import Trainer

    outputs = StudyRun(run_dir)
    fingerprint = training_fingerprint(config)
    done = _reuse(outputs.done, fingerprint, "trained model", log)
    if done is not None and outputs.best_checkpoint.is_file() and done.get("model_hash") == file_hash(outputs.best_checkpoint):
        log("  trained before (reused)")
        return done
    resume = False
    partial = read_json(outputs.started)
    if outputs.last_checkpoint.is_file() and done is None and partial is not None and not differences(partial.get("fingerprint"), fingerprint):
        resume = True
    else:
        for path in outputs.outputs():
            path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"fingerprint": fingerprint}, outputs.started)
    log(f"  {'resuming' if resume else 'training'} ...")
    t0 = time.perf_counter()
    trainer = Trainer(config, run_dir, resume=resume)
    trainer.run()
    history = trainer.history
    done = {
        "fingerprint": fingerprint,
        "train_seconds": history[-1]["time_s"],
        "epochs": history[-1]["epoch"],
        "median_step_seconds": trainer.median_step_seconds(),
        "wall_seconds": time.perf_counter() - t0,
        "model_hash": file_hash(outputs.best_checkpoint),
    }
    write_json_atomic(done, outputs.done)
    return done


def adopt_training(source: Path, run_dir: Path, log=print) -> dict:
    """A model trained in another folder (the last round of the active variant's learning) as this
    run folder's training: its files copied when this folder does not hold that very model (the
    later stages, keyed by the model's hash, then recompute). Returns its done.json."""
    from stableff.errors import StableFFError

    src, dst = StudyRun(source), StudyRun(run_dir)
    done = read_json(src.done)
    if done is None or not src.best_checkpoint.is_file():
        raise StableFFError(f"{source}: no finished training to take (done.json or best.ckpt missing)")
    mine = read_json(dst.done)
    if mine is not None and mine.get("model_hash") == done["model_hash"] and dst.best_checkpoint.is_file() and file_hash(dst.best_checkpoint) == done["model_hash"]:
        return mine
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in dst.outputs():
        path.unlink(missing_ok=True)
    for a, b in zip(src.outputs(), dst.outputs()):  # done.json last: a copy cut short is not taken for a finished one
        if a.is_file():
            copy_file_atomic(a, b)
    log(f"  the model of {source} (the active learning's last round)")
    return done


def _device_key(device: str) -> dict:
    """The device in a stage's fingerprint (results on another device round differently); absent
    for the CPU, as in fingerprints written before studies named their device."""
    return {} if device == "cpu" else {"device": device}


def accuracy_stage(model_path: Path, model_hash: str, test_sets: dict[str, list[str]], run_dir: Path, log=print, device: str = "cpu") -> dict:
    """EMAE/FMAE (and RMSEs, per-species FMAE) per kind of test set ("ID", "OOD"), pooled over its
    files; parity data saved as parity_<kind>.npz."""
    from stableff.measures.accuracy import evaluate_files, pooled_metrics

    fingerprint = {"format": RESULT_FORMAT, "model": model_hash, "test": {kind: content_hashes(files) for kind, files in test_sets.items() if files}, **_device_key(device)}
    outputs = StudyRun(run_dir)
    stored = _reuse(outputs.accuracy, fingerprint, "accuracy", log)
    if stored is not None:
        return stored["accuracy"]
    log("  evaluating accuracy")
    accuracy = {}
    for kind, files in test_sets.items():
        if not files:
            continue
        metrics, prediction = pooled_metrics(evaluate_files(model_path, files, device=device, progress=False))
        accuracy[kind] = metrics
        np.savez_compressed(outputs.parity(kind), **{k: v for k, v in prediction.items() if v is not None})
    write_json_atomic({"fingerprint": fingerprint, "accuracy": accuracy}, outputs.accuracy)
    return accuracy


def correlation_stage(model_path: Path, model_hash: str, files: list[str], run_dir: Path, log=print, device: str = "cpu") -> dict:
    """Per-layer corr_l over ``files`` (mean, spread over batches), the mean over layers; R matrices
    saved as correlation_matrices.npz."""
    from stableff.measures.correlation import correlation_of_files

    fingerprint = {"format": RESULT_FORMAT, "model": model_hash, "data": content_hashes(files), **_device_key(device)}
    outputs = StudyRun(run_dir)
    stored = _reuse(outputs.correlation, fingerprint, "correlation", log)
    if stored is not None:
        return stored["correlation"]
    log("  edge-feature correlation")
    result = correlation_of_files(model_path, files, device=device, progress=False)
    correlation = {
        "corr_mean": result["corr_mean"], "corr_std": result["corr_std"], "n_channels": result["n_channels"],
        "mean_over_layers": float(np.nanmean(result["corr_mean"])),
    }
    np.savez_compressed(outputs.correlation_matrices, *result["matrices"])
    write_json_atomic({"fingerprint": fingerprint, "correlation": correlation}, outputs.correlation)
    return correlation


def stability_stage(model_path: Path, plan, starts, run_dir: Path, log=print, device: str = "cpu", members: list[Path] | None = None, thresholds_from=None) -> dict:
    """Replicas at every temperature from every start; returns {"ID@1200K": stability report, ...}.
    Replicas whose inputs changed are run again (each replica is keyed by its own fingerprint).
    With ``plan.committee``, ``members`` (the other seeds' models) and this model form the committee
    that watches every run, its threshold resolved on this model's validation frames.
    ``thresholds_from``: a checkpoint whose training data set the failure thresholds instead."""
    from stableff.analysis.stability import stability_report
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, run_replicas

    committee = None
    if plan.committee is not None and members:
        from stableff.md.committee import make_committee

        committee = make_committee(str(model_path), [str(m) for m in members], plan.committee.threshold, device=device)
        log(f"  committee of {len(committee.members)} seeds: uncertain above {committee.threshold_eV_per_A:.4f} eV/A ({committee.rule})")
    stability = {}
    for temperature in plan.temperatures_K:
        tasks = build_replica_tasks(model_path, [(label, atoms) for _, label, atoms in starts], plan.md_settings(temperature),
                                    plan.replicas, MonitorSettings(), StudyRun(run_dir).stability(temperature), device=device, engine=plan.engine, compile=plan.compile, ranks=plan.ranks,
                                    committee=committee, thresholds_from=thresholds_from)
        if not tasks:
            continue
        log(f"  stability at {temperature:g} K: {len(tasks)} runs of {plan.time_ps:g} ps")
        replicas = run_replicas(tasks, workers=plan.workers, progress=True, on_mismatch="recompute")
        kinds = {label: kind for kind, label, _ in starts}
        for kind in KINDS:
            chosen = [r for r in replicas if kinds[r["start"]] == kind]
            if chosen:
                stability[Condition(temperature, kind).key] = stability_report(chosen)
    return stability


def structure_stage(stability: dict, reference_files: list[str], run_dir: Path, log=print) -> dict | None:
    """RDF of the MD trajectories of the first condition against the reference data (Wright's factor
    and JSD per species pair); g(r) of both saved in structure.json for the report."""
    import ase.io

    from stableff.analysis.structure import RDF_BINS, RDF_R_MAX_A, REFERENCE_FRAMES, compare_rdf, rdf, reference_rdf

    if not reference_files or not stability:
        return None
    condition = sorted_conditions(stability)[0]
    replicas = stability[condition]["replicas"]
    fingerprint = {
        "format": RESULT_FORMAT, "stage": "structure-2", "condition": condition,
        "replicas": [r.get("fingerprint") for r in replicas], "reference": content_hashes(reference_files),
        "reference_frames": REFERENCE_FRAMES,
    }
    stored = _reuse(StudyRun(run_dir).structure, fingerprint, "structure", log)
    if stored is not None:
        return stored["structure"]
    frames = []
    for rep in replicas:
        trajectory = Path(rep["path"]) / TRAJECTORY_FILE
        if trajectory.is_file() and trajectory.stat().st_size:
            frames.extend(ase.io.read(trajectory, ":"))
    if not frames:
        return None
    log("  structure (RDF) of the MD runs")
    reference = reference_rdf(reference_files, r_max=RDF_R_MAX_A, n_bins=RDF_BINS)
    result = rdf(frames, r_max=RDF_R_MAX_A, n_bins=RDF_BINS)
    structure = {
        "condition": condition, "n_frames": len(frames), "periodic": bool(result["periodic"]), "comparison": compare_rdf(result, reference),
        "r_A": result["r_A"].tolist(), "g": {k: v.tolist() for k, v in result["g"].items()},
        "reference_g": {k: v.tolist() for k, v in reference["g"].items()}, "reference_r_A": reference["r_A"].tolist(),
    }
    write_json_atomic({"fingerprint": fingerprint, "structure": structure}, StudyRun(run_dir).structure)
    return structure


def probe_stage(model_path: Path, model_hash: str, run_dir: Path, log=print, device: str = "cpu", starts=()) -> dict:
    """Dimer curves of every species pair and their holes, and in-situ scans of the closest pair of
    each species pair inside every start structure (the rest fixed) with theirs (probe.json)."""
    from stableff.analysis.probes import dimer_curves, holes, in_situ_scans
    from stableff.data.io import frame_from_atoms
    from stableff.fingerprint import atoms_hash
    from stableff.models.saved import model_from_checkpoint

    fingerprint = {"format": RESULT_FORMAT, "model": model_hash, "step_A": 0.02, **_device_key(device)}
    if starts:
        fingerprint["in_situ_starts"] = {label: atoms_hash(atoms) for _, label, atoms in starts}
    stored = _reuse(StudyRun(run_dir).probe, fingerprint, "probe", log)
    if stored is not None:
        return stored["probe"]
    log("  dimer probe" + (f" and in-situ scans of {len(starts)} start structures" if starts else ""))
    model, statistics = model_from_checkpoint(model_path, device=device)
    curves = dimer_curves(model, statistics, step=0.02)
    probe = {"dimers": curves, "holes": holes(curves), "in_situ": {}, "in_situ_holes": {}}
    for _, label, atoms in starts:
        scans = in_situ_scans(model, statistics, frame_from_atoms(atoms), step=0.02)
        probe["in_situ"][label] = scans
        found = holes(scans)
        if found:
            probe["in_situ_holes"][label] = found
    write_json_atomic({"fingerprint": fingerprint, "probe": probe}, StudyRun(run_dir).probe)
    return probe
