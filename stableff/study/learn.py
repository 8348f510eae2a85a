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
    DIR/round_<r>/seed_<s>/                    a study run folder (training, accuracy, stability)
    DIR/round_<r>/selection.json               the frames chosen for labelling, before any is labelled
    DIR/learn.json                             the per-round table

Nothing computed is lost or computed again: training, accuracy and MD stages reuse what they stored
(the study's fingerprints), a labelled frame is written the moment the oracle returns, and a rerun
labels only the selected frames not yet in the round's file. The failure thresholds of every round
are those of round 0's training data, so that every round is judged by one rule (labelled close
contacts would otherwise lower the close-contact threshold itself).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field, ValidationError, field_validator

from stableff.errors import ConfigError, StableFFError
from stableff.fingerprint import differences
from stableff.io import read_json, write_json_atomic
from stableff.layout import StudyRun
from stableff.study.plan import CommitteePlan, StabilityPlan, TestSets, start_structures
from stableff.train.config import StrictConfig

SELECTIONS = ("committee", "before_failure")


class OracleConfig(StrictConfig):
    calculator: str  # "package.module:Class"
    kwargs: dict = {}

    @field_validator("calculator")
    @classmethod
    def _importable_name(cls, value):
        if value.count(":") != 1 or not all(value.split(":")):
            raise ValueError(f"'{value}': name the calculator as package.module:Class (e.g. ase.calculators.emt:EMT)")
        return value


class SelectionConfig(StrictConfig):
    method: str = "committee"  # committee: the frames the committee disagrees on most; before_failure: the last frames before each failure
    min_spacing_fs: float = Field(50.0, ge=0)  # between two frames chosen from one run

    @field_validator("method")
    @classmethod
    def _known(cls, value):
        if value not in SELECTIONS:
            raise ValueError(f"unknown selection '{value}' (choose from {', '.join(SELECTIONS)})")
        return value


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

    @field_validator("seeds")
    @classmethod
    def _committee(cls, value):
        if len(value) < 2 or len(set(value)) != len(value):
            raise ValueError(f"list at least two different seeds: the committee (got {value})")
        return value


def load_learn_config(path, overrides: list[str] | None = None) -> LearnConfig:
    from stableff.train.config import format_validation_error, read_yaml

    raw = read_yaml(path, overrides, what="active-learning configuration")
    try:
        config = LearnConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None
    if not (config.exploration.in_distribution or config.exploration.out_of_distribution):
        raise ConfigError(f"{path}: exploration: list start structures (in_distribution or out_of_distribution)")
    if (config.training.get("data") or {}).get("train_stress"):
        raise ConfigError(f"{path}: training.data.train_stress: the oracle labels energies and forces, not stress: set it to false")
    oracle_class(config.oracle)  # an oracle that cannot be imported stops here, before any training
    return config


def oracle_class(oracle: OracleConfig):
    module, name = oracle.calculator.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"oracle.calculator: cannot import {oracle.calculator} ({exc})") from None


def make_oracle(oracle: OracleConfig):
    try:
        return oracle_class(oracle)(**oracle.kwargs)
    except TypeError as exc:
        raise ConfigError(f"oracle.kwargs: {oracle.calculator} does not take {oracle.kwargs} ({exc})") from None


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


def candidates(replicas: list[dict], method: str) -> list[dict]:
    """The frames of the exploration MD a round may label: each trajectory frame with its run,
    time and the committee's disagreement there (thermo.csv's row at the same time); ranked
    (committee: highest disagreement first; before_failure: only frames of failed runs before the
    failure, the latest first)."""
    import csv

    import ase.io

    from stableff.md.committee import COLUMN

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
            if method == "before_failure" and not (r["failed"] and t < r["time_to_failure_ps"]):
                continue
            if not np.isfinite(d) and method == "committee":
                continue
            found.append({"run": str(folder), "frame": k, "time_ps": t, "disagreement_eV_per_A": d, "atoms": atoms})
    if method == "committee":
        found.sort(key=lambda c: -c["disagreement_eV_per_A"])
    else:
        found.sort(key=lambda c: (-c["time_ps"], c["run"]))
    return found


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


def label(selection: list[dict], oracle_config: OracleConfig, path: Path, round_index: int, log=print) -> tuple[int, float]:
    """Label the selected frames not yet in ``path`` with the oracle, appending each whole frame
    as soon as it is computed; returns (oracle calls made now, their seconds)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    from stableff.md.records import RecordFile, frame_text

    settings = json.dumps({"calculator": oracle_config.calculator, "kwargs": oracle_config.kwargs}, sort_keys=True)
    existing = ase.io.read(path, ":") if path.is_file() and path.stat().st_size else []
    for k, frame in enumerate(existing):
        if frame.info.get("oracle") != settings:
            raise StableFFError(f"{path}, frame {k}: labelled by another oracle ({frame.info.get('oracle')}, now {settings}); "
                                "frames of two oracles would be mixed: choose another --out, or move the file away to label again")
    done = len(existing)
    todo = selection[done:]
    if not todo:
        return 0, 0.0
    oracle = make_oracle(oracle_config)
    seconds = 0.0
    from tqdm import tqdm

    with RecordFile(path, offset=path.stat().st_size if path.is_file() else None) as out:
        for entry in tqdm(todo, desc=f"round {round_index}: oracle", unit="call", leave=False):
            atoms = ase.io.read(entry["run"] + "/trajectory.extxyz", index=entry["frame"])
            atoms.calc = oracle
            t0 = time.perf_counter()
            try:
                energy = atoms.get_potential_energy()
                forces = atoms.get_forces()
            except Exception as exc:
                raise StableFFError(f"oracle {oracle_config.calculator} failed on frame {entry['frame']} of {entry['run']}/trajectory.extxyz "
                                    f"({type(exc).__name__}: {exc}); the {done} frames labelled before are kept in {path}") from None
            seconds += time.perf_counter() - t0
            labelled = atoms.copy()
            labelled.info = {"oracle": settings, "round": round_index, "source": entry["run"], "time_ps": entry["time_ps"],
                             "disagreement_eV_per_A": entry["disagreement_eV_per_A"]}
            labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=forces)
            out.write(frame_text(labelled, energy, forces))
            done += 1
    log(f"  oracle: {len(todo)} call(s), {seconds:.1f} s")
    return len(todo), seconds


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
        models, t_train = [], 0.0
        for seed in config.seeds:
            run_dir = folder / f"seed_{seed}"
            done = train_stage(round_config(config, seed, train, validation, labelled), run_dir, log)
            models.append((run_dir, done))
            t_train += done.get("train_seconds", 0.0)
        round0_models = round0_models or models
        (driver_dir, driver_done), others = models[0], [StudyRun(d).best_checkpoint for d, _ in models[1:]]
        driver = StudyRun(driver_dir).best_checkpoint
        accuracy = accuracy_stage(driver, driver_done["model_hash"], test_sets, driver_dir, log, device=config.device) if any(test_sets.values()) else {}
        t0 = time.perf_counter()
        stability = stability_stage(driver, plan, starts, driver_dir, log, device=config.device, members=others,
                                    thresholds_from=StudyRun(round0_models[0][0]).best_checkpoint)
        t_md = time.perf_counter() - t0
        row = {"round": r, "oracle_calls": spent, "train_seconds": t_train, "md_seconds": t_md, "accuracy": accuracy, "stability": {}}
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
                                    "frames labelled from them: choose another --out to learn with the new settings")
            log(f"  selection: inputs changed ({changed}), choosing again")
            stored = None
        if stored is None:
            summaries = [read_json(Path(x["path"]) / "summary.json") for x in replicas]
            chosen = select(candidates(summaries, config.selection.method), count, config.selection.min_spacing_fs)
            stored = {"fingerprint": fingerprint, "frames": [{k: c[k] for k in ("run", "frame", "time_ps", "disagreement_eV_per_A")} for c in chosen]}
            write_json_atomic(stored, selection_file)
        if not stored["frames"]:
            log("  nothing to label (no candidate frame): stopping")
            break
        path.parent.mkdir(parents=True, exist_ok=True)
        _, seconds = label(stored["frames"], config.oracle, path, r + 1, log)
        row["oracle_seconds"] = seconds
        spent += len(stored["frames"])
        labelled.append(path)
    result = {"name": config.name, "budget": config.budget, "oracle": config.oracle.model_dump(), "selection": config.selection.model_dump(),
              "rounds": rows}
    write_json_atomic(result, out / "learn.json")
    log(round_table(result))
    return result


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
