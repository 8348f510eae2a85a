"""`stableff study`: baseline vs decorrelated (optionally SAM) for each model and training seed,
evaluated for accuracy, correlation and MD stability in and out of distribution.

Every step writes its result into its own folder and is skipped when run again, so a killed study
resumes where it stopped:

    DIR/<model>/<variant>/seed_<s>/           training run (best.ckpt, last.ckpt, metrics.csv)
                                   done.json  training finished (wall time)
                                   accuracy.json, correlation.json
                                   stability/<T>K/<start>/replica_<r>/...
    DIR/summary.json, DIR/report.html, DIR/report.md, DIR/plots/*.png
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stableff.errors import ConfigError

VARIANTS = ("baseline", "decorrelated", "sam")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartStructures(_Strict):
    file: str
    frames: list[int] = [0]


class StabilityPlan(_Strict):
    temperatures_K: list[float] = [300.0]
    replicas: int = Field(3, ge=1)
    time_ps: float = Field(1.0, gt=0)
    timestep_fs: float = Field(0.5, gt=0)
    ensemble: Literal["nve", "langevin", "nose-hoover", "bussi"] = "langevin"
    in_distribution: list[StartStructures] = []
    out_of_distribution: list[StartStructures] = []
    workers: int | None = Field(None, ge=1)


class TestSets(_Strict):
    in_distribution: list[str] = []
    out_of_distribution: list[str] = []


class StudyConfig(_Strict):
    name: str = "study"
    training: dict  # a full `stableff train` config (data, model, loss, optimizer, scheduler, training, decorrelation)
    models: list[dict] | None = None  # model blocks to compare (default: the training config's model)
    variants: list[Literal["baseline", "decorrelated", "sam"]] = ["baseline", "decorrelated"]
    seeds: list[int] = [0, 1, 2]
    sam: dict = {"rho": 0.005}
    test: TestSets = TestSets()
    stability: StabilityPlan = StabilityPlan()

    def model_blocks(self) -> list[dict]:
        """The model blocks compared: ``models``, or the training config's model."""
        return self.models or [self.training.get("model", {"name": "nequip"})]


def load_study_config(path, overrides: list[str] | None = None) -> StudyConfig:
    from stableff.train.config import format_validation_error, read_yaml

    raw = read_yaml(path, overrides, what="study configuration")
    try:
        study = StudyConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    for model in study.model_blocks():
        for variant in study.variants:
            variant_config(study, model, variant, study.seeds[0], source=str(path))  # validates every combination now
    return study


def variant_config(study: StudyConfig, model: dict, variant: str, seed: int, source: str = "<study>"):
    """The training Config of one (model, variant, seed): same data and budget, only the method differs."""
    from stableff.train.config import parse_config

    raw = copy.deepcopy(study.training)
    raw["model"] = copy.deepcopy(model)
    raw.setdefault("training", {})["seed"] = seed
    decorrelation = raw.setdefault("decorrelation", {})
    decorrelation["enabled"] = variant == "decorrelated"
    if variant == "sam":
        raw["optimizer"] = {**raw.get("optimizer", {}), "name": "sam", **study.sam}
    return parse_config(raw, f"{source} (model {model.get('name')}, variant {variant}, seed {seed})")


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _start_atoms(plan: StabilityPlan):
    from stableff.data.io import read_frames

    starts = []
    for kind, entries in (("ID", plan.in_distribution), ("OOD", plan.out_of_distribution)):
        for entry in entries:
            for frame in entry.frames:
                atoms = read_frames(entry.file, index=frame)[0].to_atoms()
                starts.append((kind, f"{kind}_{Path(entry.file.split(':')[-1]).stem}_{frame}", atoms))
    return starts


def run_study(study: StudyConfig, out_dir, log=print) -> dict:
    """Run (or resume) every step of the study and return summary.json's content."""
    from stableff.analysis.accuracy import evaluate_files
    from stableff.analysis.correlation import correlation_of_files
    from stableff.analysis.stability import stability_report
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import ReplicaTask, run_replicas
    from stableff.md.run import MDSettings
    from stableff.train.checkpoint import load_checkpoint, write_json_atomic
    from stableff.train.loop import Trainer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models = study.model_blocks()
    plan = study.stability
    starts = _start_atoms(plan)
    runs = []
    for model in models:
        model_name = model.get("name", "nequip")
        for seed in study.seeds:
            for variant in study.variants:
                run_dir = out_dir / model_name / variant / f"seed_{seed}"
                tag = f"{model_name} / {variant} / seed {seed}"
                config = variant_config(study, model, variant, seed)
                done = _read_json(run_dir / "done.json")
                if done is None:
                    resume = (run_dir / "last.ckpt").is_file()
                    log(f"[{tag}] {'resuming' if resume else 'training'} ...")
                    t0 = time.perf_counter()
                    Trainer(config, run_dir, resume=resume).run()
                    history = load_checkpoint(run_dir / "last.ckpt")["train_state"]["history"]
                    done = {"train_seconds": history[-1]["time_s"], "epochs": history[-1]["epoch"], "wall_seconds": time.perf_counter() - t0}
                    write_json_atomic(done, run_dir / "done.json")
                else:
                    log(f"[{tag}] trained before (reused)")
                model_path = run_dir / "best.ckpt"
                accuracy = _read_json(run_dir / "accuracy.json")
                if accuracy is None:
                    log(f"[{tag}] evaluating accuracy")
                    accuracy = {}
                    for kind, files in (("ID", study.test.in_distribution), ("OOD", study.test.out_of_distribution)):
                        if files:
                            results = evaluate_files(model_path, files, progress=False)
                            frames = sum(r["n_frames"] for r in results)
                            accuracy[kind] = {
                                key: float(sum(r[key] * r["n_frames"] for r in results) / frames)
                                for key in ("emae_meV_per_atom", "fmae_meV_per_A", "ermse_meV_per_atom", "frmse_meV_per_A")
                            }
                            accuracy[kind]["n_frames"] = frames
                            np.savez_compressed(run_dir / f"parity_{kind}.npz", **{k: v for k, v in results[0]["prediction"].items() if v is not None})
                            accuracy[kind]["fmae_by_species_meV_per_A"] = results[0]["fmae_by_species_meV_per_A"]
                    write_json_atomic(accuracy, run_dir / "accuracy.json")
                correlation = _read_json(run_dir / "correlation.json")
                if correlation is None:
                    files = study.test.in_distribution or [study.training["data"]["train"]]
                    log(f"[{tag}] edge-feature correlation")
                    result = correlation_of_files(model_path, files)
                    correlation = {
                        "corr_mean": result["corr_mean"], "corr_std": result["corr_std"], "n_channels": result["n_channels"],
                        "mean_over_layers": float(np.nanmean(result["corr_mean"])),
                    }
                    np.savez_compressed(run_dir / "correlation_matrices.npz", *result["matrices"])
                    write_json_atomic(correlation, run_dir / "correlation.json")
                stability = {}
                for temperature in plan.temperatures_K:
                    tasks = []
                    for kind, label, atoms in starts:
                        for r in range(plan.replicas):
                            settings = MDSettings(ensemble=plan.ensemble, temperature_K=temperature, timestep_fs=plan.timestep_fs,
                                                  steps=int(round(plan.time_ps * 1000 / plan.timestep_fs)), seed=1000 * seed + r)
                            tasks.append(ReplicaTask(str(model_path), label, atoms, r, settings, MonitorSettings(), str(run_dir / "stability" / f"{temperature:g}K")))
                    if tasks:
                        log(f"[{tag}] stability at {temperature:g} K: {len(tasks)} runs of {plan.time_ps:g} ps")
                        replicas = run_replicas(tasks, workers=plan.workers, progress=True)
                        for kind in ("ID", "OOD"):
                            chosen = [r for r in replicas if r["start"].startswith(kind + "_")]
                            if chosen:
                                stability[f"{kind}@{temperature:g}K"] = stability_report(chosen)
                train_seconds = done["train_seconds"]
                runs.append({
                    "model": model_name, "variant": variant, "seed": seed, "path": str(run_dir),
                    "train_seconds": train_seconds, "accuracy": accuracy, "correlation": correlation, "stability": stability,
                })
    summary = summarise_study(study, runs)
    write_json_atomic(summary, out_dir / "summary.json")
    return summary


def _mean_std(values):
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return None
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "n": len(values)}


def summarise_study(study: StudyConfig, runs: list[dict]) -> dict:
    """Table rows (mean and spread over seeds) per (model, variant), and the plain-language verdicts."""
    conditions = sorted({k for r in runs for k in r["stability"]}, key=lambda k: (float(k.split("@")[1][:-1]), k))
    rows = []
    for model in dict.fromkeys(r["model"] for r in runs):
        baseline_time = {r["seed"]: r["train_seconds"] for r in runs if r["model"] == model and r["variant"] == "baseline"}
        for variant in dict.fromkeys(r["variant"] for r in runs if r["model"] == model):
            chosen = [r for r in runs if r["model"] == model and r["variant"] == variant]
            row = {"model": model, "variant": variant, "seeds": [r["seed"] for r in chosen]}
            for kind in ("ID", "OOD"):
                row[f"emae_{kind}_meV_per_atom"] = _mean_std([r["accuracy"].get(kind, {}).get("emae_meV_per_atom") for r in chosen])
                row[f"fmae_{kind}_meV_per_A"] = _mean_std([r["accuracy"].get(kind, {}).get("fmae_meV_per_A") for r in chosen])
            row["corr_mean_over_layers"] = _mean_std([r["correlation"]["mean_over_layers"] for r in chosen])
            row["corr_by_layer"] = [_mean_std(list(v)) for v in zip(*[r["correlation"]["corr_mean"] for r in chosen])]
            for condition in conditions:
                reports = [r["stability"].get(condition) for r in chosen if r["stability"].get(condition)]
                row[f"stability_index_{condition}"] = _mean_std([s["stability_index"] for s in reports])
                row[f"median_time_to_failure_ps_{condition}"] = _mean_std([s["median_time_to_failure_ps"] for s in reports])
                reasons: dict[str, int] = {}
                for s in reports:
                    for reason, count in s["failures_by_reason"].items():
                        reasons[reason] = reasons.get(reason, 0) + count
                row[f"failures_{condition}"] = reasons
            row["train_seconds"] = _mean_std([r["train_seconds"] for r in chosen])
            overheads = [100 * (r["train_seconds"] / baseline_time[r["seed"]] - 1) for r in chosen if r["seed"] in baseline_time]
            row["training_overhead_percent"] = _mean_std(overheads) if variant != "baseline" else {"mean": 0.0, "std": 0.0, "n": len(chosen)}
            rows.append(row)
    return {
        "name": study.name, "seeds": study.seeds, "variants": study.variants, "conditions": conditions,
        "stability_plan": study.stability.model_dump(), "rows": rows, "runs": runs, "verdicts": verdicts(rows, conditions),
    }


def _compare(a, b) -> str | None:
    """'exceeds' when the means differ by more than the sum of the seed-to-seed spreads."""
    if not a or not b:
        return None
    gap = abs(a["mean"] - b["mean"])
    spread = a["std"] + b["std"]
    if a["n"] < 2 or b["n"] < 2:
        return "cannot be judged (one seed: no spread measured)"
    return "exceeds" if gap > spread else "is within"


def verdicts(rows: list[dict], conditions: list[str]) -> list[str]:
    """Plain sentences: does each variant differ from the baseline by more than the spread over seeds?"""
    sentences = []
    metrics = [("fmae_ID_meV_per_A", "force MAE in distribution", "meV/A"), ("fmae_OOD_meV_per_A", "force MAE out of distribution", "meV/A"),
               ("corr_mean_over_layers", "mean edge-feature correlation", "")]
    metrics += [(f"stability_index_{c}", f"stability index ({c.replace('@', ' at ')})", "") for c in conditions]
    for row in rows:
        if row["variant"] == "baseline":
            continue
        base = next((r for r in rows if r["model"] == row["model"] and r["variant"] == "baseline"), None)
        if base is None:
            continue
        for key, text, unit in metrics:
            judged = _compare(row.get(key), base.get(key))
            if judged is None:
                continue
            a, b = row[key], base[key]
            numbers = f"{a['mean']:.3g} +/- {a['std']:.2g} vs {b['mean']:.3g} +/- {b['std']:.2g}{' ' + unit if unit else ''}"
            if judged.startswith("cannot"):
                sentences.append(f"{row['model']}, {row['variant']} vs baseline, {text}: {numbers}; the difference {judged}.")
            else:
                direction = "equal" if a["mean"] == b["mean"] else ("lower" if a["mean"] < b["mean"] else "higher")
                caution = f" With only {min(a['n'], b['n'])} seeds this is indicative, not conclusive." if judged == "exceeds" and min(a["n"], b["n"]) < 3 else ""
                sentences.append(
                    f"{row['model']}, {row['variant']} vs baseline, {text}: {numbers} - {direction}; the difference "
                    f"{judged} the spread over seeds{'' if judged == 'exceeds' else ' (no effect demonstrated)'}.{caution}"
                )
    return sentences
