"""`stableff study`: every variant (baseline, decorrelated, SAM) of each model and training seed, with
the same data and budget, evaluated for accuracy, correlation, MD stability and structure in and out
of distribution, and compared with the baseline by survival statistics.

    from stableff.study import load_study_config, run_study
    summary = run_study(load_study_config("study.yaml"), "out/")

Each stage (:mod:`stableff.study.stages`) stores its result with the fingerprint of its inputs, so a
killed study resumes where it stopped and a changed configuration recomputes exactly the stages
whose inputs changed.
"""

from __future__ import annotations

from pathlib import Path

from stableff.data.io import read_frames
from stableff.io import write_json_atomic
from stableff.models import DEFAULT_MODEL
from stableff.layout import learn_folder, study_summary, study_run
from stableff.study.archive import keep_training, restore_training
from stableff.study.inert_prior import sibling_variant, train_without_prior
from stableff.study.learn import learning_cost, run_learning, study_learn_config
from stableff.study.plan import StabilityPlan, StudyConfig, load_study_config, start_structures, variant_config, variant_remedies
from stableff.study.stages import accuracy_stage, adopt_training, correlation_stage, probe_stage, stability_stage, structure_stage, train_stage, training_fingerprint
from stableff.study.summary import comparison_notes, summarise_study

__all__ = ["StudyConfig", "StabilityPlan", "load_study_config", "run_study", "variant_config"]


def run_study(study: StudyConfig, out_dir, log=print, trainings=None) -> dict:
    """Run (or resume) every stage of the study; write and return summary.json's content. With
    ``trainings`` (a folder, :mod:`stableff.study.archive`), trainings kept there with the same inputs
    are taken instead of trained again, and every training finished is kept there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = study.stability
    starts = start_structures(plan)
    test_sets = {"ID": study.test.in_distribution, "OOD": study.test.out_of_distribution}
    for path in dict.fromkeys([*test_sets["ID"], *test_sets["OOD"]]):  # every input read before any work
        read_frames(path, require=("energy", "forces"))
    for note in comparison_notes(study.variants):
        log(f"note: {note}")
    correlation_files = study.test.in_distribution or [study.training["data"]["train"]]
    runs = []
    trained, learned = {}, {}
    for model in study.model_blocks():  # the active variants' learning first: its last round gives their models
        model_name = model.get("name", DEFAULT_MODEL)
        for variant in study.variants:
            if "active" in variant_remedies(variant):
                log(f"[{model_name} / {variant}: active learning, {study.active.budget} oracle calls over at most {study.active.rounds} round(s)]")
                learned[model_name, variant] = run_learning(study_learn_config(study, model, variant), learn_folder(out_dir, model_name, variant), log)

    if trainings is not None:  # before any training: a zbl variant may train its sibling first
        for model in study.model_blocks():
            model_name = model.get("name", DEFAULT_MODEL)
            for variant in study.variants:
                for seed in study.seeds:
                    if (model_name, variant) not in learned:
                        restore_training(training_fingerprint(variant_config(study, model, variant, seed)),
                                         study_run(trainings, model_name, variant, seed).folder,
                                         study_run(out_dir, model_name, variant, seed).folder, log)

    def train(model, model_name, variant, seed):
        done = trained_model(model, model_name, variant, seed)
        if trainings is not None and (model_name, variant) not in learned:
            keep_training(done, study_run(out_dir, model_name, variant, seed).folder, study_run(trainings, model_name, variant, seed).folder, log)
        return done

    def trained_model(model, model_name, variant, seed):
        run_dir = study_run(out_dir, model_name, variant, seed).folder
        if (model_name, variant) in learned:
            final = learned[model_name, variant]["rounds"][-1]["round"]
            return adopt_training(learn_folder(out_dir, model_name, variant) / f"round_{final}" / f"seed_{seed}", run_dir, log)
        config = variant_config(study, model, variant, seed)
        sibling = sibling_variant(variant, study.variants)
        if sibling is not None and (model_name, sibling) not in learned:  # a prior training never sees: the sibling's weights
            sibling_dir = study_run(out_dir, model_name, sibling, seed).folder
            done = train_without_prior(config, variant_config(study, model, sibling, seed), sibling_dir, run_dir, log)
            if done is not None:
                return done
        return train_stage(config, run_dir, log)

    if plan.committee is not None:  # every seed's model first: each run is watched by the other seeds of its variant
        for model in study.model_blocks():
            model_name = model.get("name", DEFAULT_MODEL)
            for seed in study.seeds:
                for variant in study.variants:
                    log(f"[{model_name} / {variant} / seed {seed}]")
                    trained[model_name, variant, seed] = train(model, model_name, variant, seed)
    for model in study.model_blocks():
        model_name = model.get("name", DEFAULT_MODEL)
        for seed in study.seeds:
            for variant in study.variants:
                files = study_run(out_dir, model_name, variant, seed)
                run_dir = files.folder
                log(f"[{model_name} / {variant} / seed {seed}]")
                done = trained.get((model_name, variant, seed)) or train(model, model_name, variant, seed)
                learning = learned.get((model_name, variant))
                # the active variant is judged by the failure thresholds of its starting data, as every other variant
                thresholds_from = learn_folder(out_dir, model_name, variant) / "round_0" / f"seed_{seed}" / "best.ckpt" if learning else None
                cost = learning_cost(learning, seed) if learning else None  # what this seed's model cost to learn
                model_path = files.best_checkpoint
                members = [study_run(out_dir, model_name, variant, s).best_checkpoint for s in study.seeds if s != seed] if plan.committee is not None else None
                device = study.device
                accuracy = accuracy_stage(model_path, done["model_hash"], test_sets, run_dir, log, device=device)
                correlation = correlation_stage(model_path, done["model_hash"], correlation_files, run_dir, log, device=device)
                probe = probe_stage(model_path, done["model_hash"], run_dir, log, device=device, starts=starts)
                stability = stability_stage(model_path, plan, starts, run_dir, log, device=device, members=members, thresholds_from=thresholds_from)
                structure = structure_stage(stability, study.test.in_distribution, run_dir, log)
                runs.append({
                    "model": model_name, "variant": variant, "seed": seed, "path": str(run_dir),
                    "train_seconds": done["train_seconds"], "median_step_seconds": done.get("median_step_seconds"),
                    "accuracy": accuracy, "correlation": correlation, "stability": stability, "holes": probe["holes"],
                    "in_situ_holes": probe.get("in_situ_holes", {}), "in_situ_starts": len(probe.get("in_situ", {})),
                    "structure": {k: v for k, v in (structure or {}).items() if k in ("condition", "n_frames", "comparison")} or None,
                    **({"active": cost, "train_seconds": cost["train_seconds_all_rounds"]} if cost else {}),
                })
    summary = summarise_study(study, runs)
    write_json_atomic(summary, study_summary(out_dir))
    return summary
