"""`stableff learn`: active learning with any ASE calculator as the oracle.

Rounds of: train a committee (one model per seed) on the current data; run the exploration MD
(start structures, temperatures, replicas) with the first seed's model, watched by the others;
measure accuracy and stability; select frames of that MD where the committee disagrees most (or
the frames just before failures), at least ``min_spacing_fs`` apart within a run; label them with
the oracle; add them to the training data. The oracle is an ASE calculator named as
``package.module:Class`` with keyword arguments (PySCF's, GPAW's, VASP's, tblite's; EMT in tests).

    DIR/data/train.extxyz, validation.extxyz   the starting data, split once (fixed for every round)
    DIR/labelled/round_<r>.extxyz              every frame the oracle labelled in round r, whole
                                               frames with the oracle and its settings in the header
    DIR/labelled/round_<r>.failed.json         the frames the oracle raised on (error, seconds), not sent again
    DIR/round_<r>/seed_<s>/                    a study run folder (training, accuracy, stability)
    DIR/round_<r>/selection.json               the frames chosen for labelling, before any is labelled
    DIR/learn.json                             the per-round table

Nothing computed is lost or computed again: training, accuracy and MD stages reuse what they stored
(the study's fingerprints), a labelled frame is written the moment the oracle returns, and a rerun
labels only the selected frames neither labelled nor recorded as failed. The failure thresholds of every round
are those of round 0's training data, so that every round is judged by one rule (labelled close
contacts would otherwise lower the close-contact threshold itself).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, field_validator, model_validator

from stableff.errors import ConfigError, StableFFError
from stableff.fingerprint import differences
from stableff.io import read_json, write_json_atomic
from stableff.layout import StudyRun
from stableff.study.oracle import label, oracle_class
from stableff.study.plan import CommitteePlan, OracleConfig, SelectionConfig, StabilityPlan, TestSets, start_structures
from stableff.train.config import StrictConfig

class LearnConfig(StrictConfig):
    name: str = "active"
    training: dict  # a full `stableff train` config: its data are round 0's
    seeds: list[int] = [0, 1]  # one model per seed each round: the committee (the first drives the MD)
    oracle: OracleConfig
    budget: int = Field(..., ge=1)  # oracle calls in all
    rounds: int = Field(2, ge=1)  # labelling rounds (round 0 is the starting data; round r trains on r labelled sets)
    per_round: int = Field(20, ge=1)  # at most this many oracle calls per round
    selection: SelectionConfig = SelectionConfig()
    committee_threshold: str = "3x"  # what the MD's uncertain flag means (selection ranks by the disagreement itself)
    exploration: StabilityPlan  # start structures, temperatures, replicas, run length of the MD of every round
    test: TestSets = TestSets()
    device: str = "cpu"

    @model_validator(mode="after")
    def _window_in_known_units(self):
        from stableff.md.committee import parse_threshold

        if self.selection.max_disagreement is not None:
            if parse_threshold(self.selection.max_disagreement)[0] == "multiple" and parse_threshold(self.committee_threshold)[0] == "absolute":
                raise ValueError("selection.max_disagreement: a multiple of the validation disagreement needs committee_threshold as a multiple too (e.g. 3x); or give it in eV/A")
        return self

    @field_validator("seeds")
    @classmethod
    def _committee(cls, value):
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError(f"list at least two different seeds: the committee (got {value})")
        return value


def load_learn_config(path, overrides: list[str] | None = None) -> LearnConfig:
    from stableff.train.config import read_validated

    config = read_validated(path, LearnConfig, overrides, what="active-learning configuration")
    if not (config.exploration.in_distribution or config.exploration.out_of_distribution):
        raise ConfigError(f"{path}: exploration: list start structures (in_distribution or out_of_distribution)")
    if (config.training.get("data") or {}).get("train_stress"):
        raise ConfigError(f"{path}: training.data.train_stress: the oracle labels energies and forces, not stress: set it to false")
    oracle_class(config.oracle)  # an oracle that cannot be imported stops here, before any training
    return config


def study_learn_config(study, model: dict, variant: str) -> LearnConfig:
    """The active learning behind a study's active variant of one model: the variant's training
    (its other remedies included), the study's seeds as the committee, its test sets, and the
    exploration plan of ``active`` (the study's stability plan, other velocity seeds)."""
    import math

    from stableff.models import DEFAULT_MODEL
    from stableff.study.plan import exploration_plan, variant_config
    from stableff.train.config import config_to_dict

    active = study.active
    training = config_to_dict(variant_config(study, model, variant, study.seeds[0]))
    return LearnConfig(name=f"{study.name}: {model.get('name', DEFAULT_MODEL)} {variant}", training=training, seeds=study.seeds,
                       oracle=active.oracle, budget=active.budget, rounds=active.rounds,
                       per_round=active.per_round or math.ceil(active.budget / active.rounds), selection=active.selection,
                       committee_threshold=active.committee_threshold, exploration=exploration_plan(study), test=study.test, device=study.device)


def _write_frames(frames, path: Path) -> None:
    import io

    import ase.io

    from stableff.io import write_text_atomic

    buffer = io.StringIO()
    ase.io.write(buffer, [f.to_atoms() for f in frames], format="extxyz")
    write_text_atomic(buffer.getvalue(), path)


def fixed_split(config: LearnConfig, out: Path) -> tuple[Path, Path]:
    """Round 0's training and validation frames as files, split once: every round trains on these
    plus the labelled frames, and validates on the same frames."""
    from stableff.data.splits import load_splits
    from stableff.train.config import parse_config

    train, validation = out / "data" / "train.extxyz", out / "data" / "validation.extxyz"
    if not (train.is_file() and validation.is_file()):
        splits = load_splits(parse_config(config.training, "training").data)
        train.parent.mkdir(parents=True, exist_ok=True)
        _write_frames(splits["train"], train)
        _write_frames(splits["validation"], validation)
    return train, validation


def round_config(config: LearnConfig, seed: int, train: Path, validation: Path, labelled: list[Path]):
    """The training Config of one round and seed: the fixed split plus every labelled file so far."""
    import copy

    from stableff.train.config import parse_config

    raw = copy.deepcopy(config.training)
    data = raw.setdefault("data", {})
    data.update({"train": [str(train)] + [str(p) for p in labelled], "validation": str(validation), "val_fraction": 0.0, "max_train_frames": None})
    data.pop("test", None)
    data["test_fraction"] = 0.0
    raw.setdefault("training", {})["seed"] = seed
    raw["training"]["device"] = config.device
    return parse_config(raw, f"training (seed {seed})")


def candidates(replicas: list[dict], method: str, window: tuple[float, float] = (0.0, float("inf"))) -> list[dict]:
    """The frames of the exploration MD a round may label: each trajectory frame with its run,
    time and the committee's disagreement there (thermo.csv's row at the same time), never a frame
    at or after a run's failure (a structure the monitors already call broken); ranked (committee:
    frames whose disagreement lies in ``window`` (eV/A), the highest first; before_failure: only
    frames of failed runs, the latest first)."""
    import csv

    import ase.io

    from stableff.md.committee import COLUMN

    low, high = window
    found = []
    for r in replicas:
        folder = Path(r["path"])
        with open(folder / "thermo.csv") as handle:
            spread = {round(float(row["time_ps"]), 6): float(row[COLUMN]) for row in csv.DictReader(handle)}
        trajectory = folder / "trajectory.extxyz"
        if not trajectory.is_file() or not trajectory.stat().st_size:
            continue
        for k, atoms in enumerate(ase.io.read(trajectory, ":")):
            t = round(float(atoms.info["time_ps"]), 6)
            d = spread.get(t, float("nan"))
            if r["failed"] and t >= round(r["time_to_failure_ps"], 6):
                continue
            if method == "before_failure" and not r["failed"]:
                continue
            if method == "committee" and not (np.isfinite(d) and low <= d <= high):
                continue
            found.append({"run": str(folder), "frame": k, "time_ps": t, "disagreement_eV_per_A": d, "atoms": atoms})
    if method == "committee":
        found.sort(key=lambda c: -c["disagreement_eV_per_A"])
    else:
        found.sort(key=lambda c: (-c["time_ps"], c["run"]))
    return found


def selection_window(config: "LearnConfig", replicas: list[dict]) -> tuple[float, float]:
    """The disagreement (eV/A) a frame chosen by the committee lies between: the runs' uncertainty
    threshold, and ``selection.max_disagreement`` (absolute, or a multiple of the committee's
    disagreement on validation data, as the threshold's own multiple)."""
    from stableff.md.committee import parse_threshold

    thresholds = {x["committee"]["threshold_eV_per_A"] for x in replicas if x.get("committee")}
    if not thresholds:
        return 0.0, float("inf")
    low = min(thresholds)
    if config.selection.max_disagreement is None:
        return low, float("inf")
    kind, value = parse_threshold(config.selection.max_disagreement)
    if kind == "absolute":
        return low, value
    _, multiple = parse_threshold(config.committee_threshold)
    return low, value * low / multiple  # low = multiple x the validation level


def select(found: list[dict], count: int, min_spacing_fs: float) -> list[dict]:
    """The first ``count`` candidates (in rank order) at least ``min_spacing_fs`` from any frame
    already chosen from the same run."""
    chosen: list[dict] = []
    for c in found:
        if len(chosen) >= count:
            break
        if all(o["run"] != c["run"] or abs(o["time_ps"] - c["time_ps"]) * 1000 >= min_spacing_fs for o in chosen):
            chosen.append(c)
    return chosen


def md_seconds(stability: dict) -> float:
    """Seconds of MD behind a stability result, from its runs' stored step times (the same when
    the runs are reused)."""
    return float(sum(x["steps"] * x["ms_per_step"] / 1000 for report in stability.values() for x in report["replicas"] if x.get("ms_per_step")))


def run_learning(config: LearnConfig, out_dir, log=print) -> dict:
    """Run (or resume) every round; write and return learn.json's content (the per-round table)."""
    from stableff.analysis.survival import logrank_stratified, restricted_mean_survival
    from stableff.study.stages import accuracy_stage, stability_stage, train_stage

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, validation = fixed_split(config, out)
    starts = start_structures(config.exploration)
    plan = config.exploration.model_copy(update={"committee": CommitteePlan(threshold=config.committee_threshold)})
    test_sets = {"ID": config.test.in_distribution, "OOD": config.test.out_of_distribution}
    rows, labelled, spent = [], [], 0
    round0_models = None
    for r in range(config.rounds + 1):
        log(f"[round {r}: {len(labelled)} labelled file(s), {spent} oracle call(s) so far]")
        folder = out / f"round_{r}"
        models, t_train = [], {}
        for seed in config.seeds:
            run_dir = folder / f"seed_{seed}"
            done = train_stage(round_config(config, seed, train, validation, labelled), run_dir, log)
            models.append((run_dir, done))
            t_train[str(seed)] = done.get("train_seconds", 0.0)
        round0_models = round0_models or models
        (driver_dir, driver_done), others = models[0], [StudyRun(d).best_checkpoint for d, _ in models[1:]]
        driver = StudyRun(driver_dir).best_checkpoint
        accuracy = accuracy_stage(driver, driver_done["model_hash"], test_sets, driver_dir, log, device=config.device) if any(test_sets.values()) else {}
        stability = stability_stage(driver, plan, starts, driver_dir, log, device=config.device, members=others,
                                    thresholds_from=StudyRun(round0_models[0][0]).best_checkpoint)
        row = {"round": r, "oracle_calls": spent, "train_seconds": sum(t_train.values()), "train_seconds_by_seed": t_train,
               "md_seconds": md_seconds(stability), "accuracy": accuracy, "stability": {}}
        for key, report in stability.items():
            replicas = report["replicas"]
            times, failed = [x["time_to_failure_ps"] for x in replicas], [x["failed"] for x in replicas]
            entry = {"rmst_ps": restricted_mean_survival(times, failed, report["run_length_ps"]), "n_runs": len(replicas), "n_failed": int(sum(failed)),
                     "committee_warnings": report.get("committee_warnings")}
            if r > 0 and key in rows[0]["stability"]:
                base = rows[0]["stability"][key]["replicas"]
                test = logrank_stratified(times, failed, [x["start"] for x in replicas],
                                          [x["time_to_failure_ps"] for x in base], [x["failed"] for x in base], [x["start"] for x in base])
                entry["logrank_pvalue_vs_round_0"] = test.pvalue
            entry["replicas"] = [{k: x[k] for k in ("start", "time_to_failure_ps", "failed")} for x in replicas]
            row["stability"][key] = entry
        rows.append(row)
        if r == config.rounds or spent >= config.budget:
            break
        # choose and label the frames of the next round's data
        selection_file = folder / "selection.json"
        path = out / "labelled" / f"round_{r + 1}.extxyz"
        replicas = [x for report in stability.values() for x in report["replicas"]]
        count = min(config.per_round, config.budget - spent)
        fingerprint = {**config.selection.model_dump(), "count": count, "runs": [x.get("fingerprint") for x in replicas]}
        stored = read_json(selection_file)
        if stored is not None and differences(stored.get("fingerprint"), fingerprint):
            changed = "; ".join(differences(stored.get("fingerprint"), fingerprint)[:3])
            if path.is_file() and path.stat().st_size:
                raise StableFFError(f"{selection_file}: the frames of round {r + 1} were chosen from other runs or settings ({changed}) and {path} holds "
                                    "frames labelled from them: choose another --out to learn with the new settings, or move the learning's "
                                   f"labelled/ folder from round {r + 1} on away (its frames stay labelled there)")
            log(f"  selection: inputs changed ({changed}), choosing again")
            stored = None
        if stored is None:
            summaries = [read_json(Path(x["path"]) / "summary.json") for x in replicas]
            window = selection_window(config, summaries)
            chosen = select(candidates(summaries, config.selection.method, window), count, config.selection.min_spacing_fs)
            log(f"  selection: {len(chosen)} frame(s) by {config.selection.method}" +
                (f", disagreement {window[0]:.3g}-{window[1]:.3g} eV/A" if config.selection.method == "committee" else ""))
            stored = {"fingerprint": fingerprint, "frames": [{k: c[k] for k in ("run", "frame", "time_ps", "disagreement_eV_per_A")} for c in chosen]}
            write_json_atomic(stored, selection_file)
        if not stored["frames"]:
            log("  nothing to label (no candidate frame): stopping")
            break
        path.parent.mkdir(parents=True, exist_ok=True)
        totals = label(stored["frames"], config.oracle, path, r + 1, log)
        row.update({"oracle_seconds": totals["oracle_seconds"], "oracle_cpu_seconds": totals["oracle_cpu_seconds"],
                    "labelled": totals["labelled"], "oracle_failures": totals["failed"]})
        spent += len(stored["frames"])  # a call the oracle raised on was spent too
        labelled.append(path)
    result = {"name": config.name, "budget": config.budget, "oracle": config.oracle.model_dump(), "selection": config.selection.model_dump(),
              "rounds": rows}
    write_json_atomic(result, out / "learn.json")
    log(round_table(result))
    return result


def learning_cost(result: dict, seed: int) -> dict:
    """What the active learning cost to give one seed's model: oracle calls and seconds, the
    trainings of every round (this seed's), and the exploration MD (every round's)."""
    rows = result["rounds"]
    return {
        "rounds": len(rows), "oracle_calls": rows[-1]["oracle_calls"],
        "labelled_frames": sum(r.get("labelled", 0) for r in rows), "oracle_failures": sum(r.get("oracle_failures", 0) for r in rows),
        "oracle_seconds": sum(r.get("oracle_seconds", 0.0) for r in rows), "oracle_cpu_seconds": sum(r.get("oracle_cpu_seconds", 0.0) for r in rows),
        "train_seconds_all_rounds": sum(r["train_seconds_by_seed"][str(seed)] for r in rows),
        "exploration_md_seconds": sum(r["md_seconds"] for r in rows),
    }


def round_table(result: dict) -> str:
    """The per-round table as printed: oracle calls, accuracy, stability per condition."""
    conditions = sorted({k for row in result["rounds"] for k in row["stability"]})
    head = f"{'round':>5} {'oracle calls':>12} {'FMAE ID':>9} {'FMAE OOD':>9}" + "".join(f" {c + ' RMST (ps)':>22} {'failed':>7} {'log-rank p':>10}" for c in conditions)
    lines = [head, "-" * len(head)]
    for row in result["rounds"]:
        acc = row["accuracy"]
        fmae = lambda kind: f"{acc[kind]['fmae_meV_per_A']:.1f}" if kind in acc else "-"
        text = f"{row['round']:>5} {row['oracle_calls']:>12} {fmae('ID'):>9} {fmae('OOD'):>9}"
        for c in conditions:
            s = row["stability"].get(c)
            p = s.get("logrank_pvalue_vs_round_0") if s else None
            text += f" {s['rmst_ps']:>22.4f} {s['n_failed']:>3}/{s['n_runs']:<3} {(f'{p:.2g}' if p is not None else '-'):>10}" if s else ""
        lines.append(text)
    return "\n".join(lines) + "\n(FMAE in meV/A on the test sets; RMST over every exploration run; log-rank against round 0, stratified by start)"
