"""A miniature study end to end (summary.json keys, report.html with table and images) and the
resumption of a killed study without redoing finished steps."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import kill_when
from stableff.data.io import read_frames


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    import ase.io

    for name in ("test_MD_300K", "test_MD_600K"):
        ase.io.write(tmp / f"{name}.xyz", [f.to_atoms() for f in read_frames(f"acac:{name}", index=":12")], format="extxyz")
    config = {
        "name": "mini",
        "training": {
            "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.25, "max_train_frames": 12},
            "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
            "training": {"epochs": 2, "batch_size": 4, "num_threads": 1},
        },
        "variants": ["baseline", "decorrelated"],
        "seeds": [0],
        "test": {"in_distribution": [str(tmp / "test_MD_300K.xyz")], "out_of_distribution": [str(tmp / "test_MD_600K.xyz")]},
        "stability": {
            "temperatures_K": [300], "replicas": 2, "time_ps": 0.01, "workers": 1,
            "in_distribution": [{"file": str(tmp / "test_MD_300K.xyz"), "frames": [0]}],
            "out_of_distribution": [{"file": str(tmp / "test_MD_600K.xyz"), "frames": [0]}],
        },
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return tmp, path


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "stableff", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def finished_study(mini_study):
    """The miniature study run once (its output folder read by the tests that start from it)."""
    tmp, config = mini_study
    return run_cli("study", config, "--out", tmp / "out")


def test_miniature_study_end_to_end(mini_study, finished_study):
    tmp, config = mini_study
    result = finished_study
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp / "out" / "summary.json").read_text())
    assert [r["variant"] for r in summary["rows"]] == ["baseline", "decorrelated"]
    for row in summary["rows"]:
        for key in ("emae_ID_meV_per_atom", "emae_OOD_meV_per_atom", "fmae_ID_meV_per_A", "fmae_OOD_meV_per_A", "corr_mean_over_layers",
                    "stability_index_ID@300K", "stability_index_OOD@300K", "rmst_ps_per_seed_ID@300K", "train_seconds", "median_step_ms", "step_time_ratio"):
            assert row[key] is not None and "mean" in row[key] and "std" in row[key], key
        # figures over every run of all seeds are labelled pooled, not dressed as a one-seed mean
        for key in ("median_time_to_failure_ps_ID@300K", "median_time_to_failure_ps_OOD@300K", "rmst_ps_ID@300K"):
            assert row[key]["pooled"] is True and "std" not in row[key] and row[key]["n_runs"] >= 1, key
        assert "reached" in row["median_time_to_failure_ps_ID@300K"]
        assert 0.0 <= row["stability_index_ID@300K"]["mean"] <= 1.0
    assert any("from 1 seed(s): no interval can be given, the data cannot decide" in v for v in summary["verdicts"])
    (comparison,) = summary["comparisons"]
    stability = comparison["stability"]["ID@300K"]
    for key in ("rmst_difference_ps", "rmst_difference_low_ps", "rmst_difference_high_ps", "logrank_pvalue", "rmst_variant_ps", "rmst_baseline_ps"):
        assert key in stability
    assert summary["survival"]["nequip"]["ID@300K"]["baseline"]["lower"][0] == 1.0
    report = (tmp / "out" / "report.html").read_text()
    assert "<table>" in report and "FMAE OOD (meV/Å)" in report and "SI ID@300K" in report
    assert report.count("data:image/png;base64,") >= 6  # learning curves, parity, correlation, survival, traces, RDF
    assert "Summary (mean ± std over seeds" in result.stdout and "report:" in result.stdout
    markdown = (tmp / "out" / "report.md").read_text()
    assert "| quantity | nequip baseline | nequip decorrelated |" in markdown and "| FMAE OOD (meV/Å) |" in markdown


def test_killed_study_resumes_without_redoing_finished_steps(mini_study):
    tmp, config = mini_study
    raw = yaml.safe_load(config.read_text())
    raw["variants"] = ["baseline"]  # one model is enough to be killed after
    raw["stability"]["out_of_distribution"] = []
    config = tmp / "killed.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp / "killed"
    first = out / "nequip" / "baseline" / "seed_0" / "done.json"
    kill_when([sys.executable, "-m", "stableff", "study", config, "--out", out], first.exists)
    checkpoint = out / "nequip" / "baseline" / "seed_0" / "best.ckpt"
    before = checkpoint.stat().st_mtime_ns
    result = run_cli("study", config, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[nequip / baseline / seed 0]\n  trained before (reused)" in result.stdout
    assert checkpoint.stat().st_mtime_ns == before
    assert (out / "report.html").is_file()
    again = run_cli("study", config, "--out", out)  # everything reused the second time
    assert again.returncode == 0 and "training ..." not in again.stdout and "evaluating accuracy" not in again.stdout


def test_changed_temperature_keeps_the_models_and_recomputes_stability(mini_study, finished_study, tmp_path):
    """A study rerun with another MD temperature reuses its trained models, accuracy and correlation,
    and runs its MD again: never the old replicas reported under the new temperature."""
    import shutil

    tmp, config = mini_study
    assert finished_study.returncode == 0, finished_study.stderr[-3000:]
    out = tmp_path / "study"
    shutil.copytree(tmp / "out", out)  # a copy of the finished study (its files keep their times)
    checkpoint = out / "nequip" / "baseline" / "seed_0" / "best.ckpt"
    before = checkpoint.stat().st_mtime_ns
    raw = yaml.safe_load(config.read_text())
    raw["stability"]["temperatures_K"] = [350]
    raw["stability"]["engine"] = "lammps"  # and in another engine: the study reads the lammps engine's files
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    result = run_cli("study", changed, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained before (reused)" in result.stdout and "training ..." not in result.stdout
    assert "evaluating accuracy" not in result.stdout and "stability at 350 K" in result.stdout
    assert checkpoint.stat().st_mtime_ns == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["conditions"] == ["ID@350K", "OOD@350K"]
    replicas = summary["runs"][0]["stability"]["ID@350K"]["replicas"]
    assert all(r["temperature_K"] == 350 and r["fingerprint"]["md"]["temperature_K"] == 350 for r in replicas)
    assert all(r["fingerprint"]["engine"] == "lammps" for r in replicas) and "SI ID@350K" in (out / "report.html").read_text()
    # a changed training budget retrains and says why (the training stage alone: the rest of the
    # study after it is the same code as above)
    from stableff.study import load_study_config
    from stableff.study.plan import variant_config
    from stableff.study.stages import train_stage

    raw["training"]["training"]["epochs"] = 1
    changed.write_text(yaml.safe_dump(raw))
    study = load_study_config(changed)
    said = []
    done = train_stage(variant_config(study, study.model_blocks()[0], "baseline", study.seeds[0]), checkpoint.parent, said.append)
    assert "  trained model: inputs changed (config.training.epochs: 2 -> 1), computing again" in said
    assert done["epochs"] == 1 and checkpoint.stat().st_mtime_ns != before


def test_remedies_compose_as_variants(mini_study, tmp_path):
    """decorrelated+zbl (two remedies composed) beside the baseline: same seeds and budget, compared
    with the baseline, with the dimer probe of every trained model."""
    tmp, config = mini_study
    raw = yaml.safe_load(config.read_text())
    raw["variants"] = ["baseline", "decorrelated+zbl"]
    raw["training"]["training"]["epochs"] = 1
    raw["stability"]["out_of_distribution"] = []
    path = tmp_path / "remedies.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("study", path, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["variant"] for c in summary["comparisons"]] == ["decorrelated+zbl"]
    runs = {r["variant"]: r for r in summary["runs"]}
    assert "holes" in runs["decorrelated+zbl"] and (tmp_path / "out" / "nequip" / "decorrelated+zbl" / "seed_0" / "probe.json").is_file()
    from stableff.models.saved import load_checkpoint

    for variant, zbl, decorrelated in (("baseline", False, False), ("decorrelated+zbl", True, True)):
        checkpoint = load_checkpoint(tmp_path / "out" / "nequip" / variant / "seed_0" / "best.ckpt")
        assert checkpoint["hyperparameters"]["zbl"] is zbl and checkpoint["config"]["decorrelation"]["enabled"] is decorrelated
    assert "Dimer probes" in (tmp_path / "out" / "report.html").read_text()
    # in-situ scans inside every start structure, stored with the probe, counted in the report and the terminal
    probe = json.loads((tmp_path / "out" / "nequip" / "baseline" / "seed_0" / "probe.json").read_text())
    starts = probe["fingerprint"]["in_situ_starts"]
    assert sorted(probe["probe"]["in_situ"]) == sorted(starts) and len(starts) == runs["baseline"]["in_situ_starts"] >= 1
    assert {s["pair"] for scans in probe["probe"]["in_situ"].values() for s in scans} == {"H-H", "H-C", "H-O", "C-C", "C-O", "O-O"}
    assert f"in-situ holes (start structures, all seeds)" in result.stdout and "In-situ scans" in (tmp_path / "out" / "report.html").read_text()
    raw["variants"] = ["baseline", "zbl+magic"]
    path.write_text(yaml.safe_dump(raw))
    from stableff.errors import ConfigError
    from stableff.study import load_study_config

    with pytest.raises(ConfigError, match="unknown variant 'zbl\\+magic'"):
        load_study_config(path)


def test_a_condition_is_written_and_parsed_in_one_place():
    import pytest

    from stableff.study.conditions import Condition, sorted_conditions

    condition = Condition.parse("OOD@1200K")
    assert (condition.kind, condition.temperature_K) == ("OOD", 1200.0)
    assert condition.key == "OOD@1200K" and Condition(1200.0, "OOD") == condition
    assert condition.text == "out of distribution at 1200 K" and condition.file_part == "OOD_1200K"
    assert sorted_conditions(["OOD@300K", "ID@1200K", "ID@300K"]) == ["ID@300K", "OOD@300K", "ID@1200K"]
    for bad in ("ID1200K", "XX@300K", "ID@300"):
        with pytest.raises(ValueError):
            Condition.parse(bad)


def test_a_study_names_its_device_once_and_every_stage_uses_it(tmp_path, monkeypatch):
    """``device:`` of a study reaches training and every stage (accuracy, correlation, probes, MD);
    a device this machine does not have, or a training.device that contradicts it, is refused
    before any work, naming the key."""
    import torch

    import stableff.study as study_module
    from stableff.errors import ConfigError
    from stableff.study import load_study_config, run_study

    base = ("training: {data: {train: acac:train_300K, max_train_frames: 8}, model: {name: nequip, num_layers: 1, num_features: 4}}\n"
            "variants: [baseline]\nseeds: [0]\ntest: {in_distribution: [acac:test_MD_300K]}\n"
            "stability: {temperatures_K: [300], replicas: 1, time_ps: 0.005, in_distribution: [{file: acac:test_MD_300K, frames: [0]}]}\n")
    config = tmp_path / "study.yaml"
    if not torch.cuda.is_available():
        config.write_text(base + "device: cuda\n")
        with pytest.raises(ConfigError, match=r"device: Value error, 'cuda' is not available here"):
            load_study_config(config)
    config.write_text(base + "device: gpu0\n")
    with pytest.raises(ConfigError, match=r"device: Value error, 'gpu0' is not a device"):
        load_study_config(config)
    config.write_text(base.replace("max_train_frames: 8}", "max_train_frames: 8}, training: {device: cpu}") + "device: cpu:0\n")
    with pytest.raises(ConfigError, match="training.device is 'cpu' but the study's device is 'cpu:0'"):
        load_study_config(config)
    config.write_text(base + "device: cpu:0\n")
    study = load_study_config(config)
    seen = {}

    def recorder(name, result):
        def stage(*args, **kwargs):
            seen[name] = kwargs.get("device")
            return result
        return stage

    monkeypatch.setattr(study_module, "train_stage", lambda cfg, run_dir, log: seen.setdefault("train", cfg.training.device) and {"model_hash": "x", "train_seconds": 1.0})
    monkeypatch.setattr(study_module, "accuracy_stage", recorder("accuracy", {}))
    monkeypatch.setattr(study_module, "correlation_stage", recorder("correlation", {"corr_mean": [0.1], "mean_over_layers": 0.1}))
    monkeypatch.setattr(study_module, "probe_stage", recorder("probe", {"holes": {}}))
    monkeypatch.setattr(study_module, "stability_stage", recorder("stability", {}))
    monkeypatch.setattr(study_module, "structure_stage", lambda *args, **kwargs: None)
    monkeypatch.setattr(study_module, "summarise_study", lambda study, runs: {})
    run_study(study, tmp_path / "out", log=lambda *_: None)
    assert seen == {"train": "cpu:0", "accuracy": "cpu:0", "correlation": "cpu:0", "probe": "cpu:0", "stability": "cpu:0"}


def test_a_study_reads_every_input_before_training_and_says_when_it_cannot_compare(tmp_path, monkeypatch):
    """A test file without labels, or one start structure listed twice, stops the study before the
    first model is trained; a study without a baseline says so in its comparison section."""
    import stableff.study as study_module
    from stableff.errors import StableFFError
    from stableff.study import load_study_config, run_study
    from stableff.study.summary import comparison_notes

    unlabelled = tmp_path / "unlabelled.xyz"
    unlabelled.write_text("2\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\nH 0 0 0\nH 0 0 0.74\n")
    base = ("training: {data: {train: acac:train_300K, max_train_frames: 8}, model: {name: nequip, num_layers: 1, num_features: 4}}\n"
            "variants: [decorrelated]\nseeds: [0]\ntest: {in_distribution: [acac:test_MD_300K], out_of_distribution: [TEST]}\n"
            "stability: {temperatures_K: [300], replicas: 1, time_ps: 0.005, in_distribution: STARTS}\n")
    trained = []
    monkeypatch.setattr(study_module, "train_stage", lambda *args: trained.append(args) or {"model_hash": "x", "train_seconds": 1.0})
    config = tmp_path / "study.yaml"
    config.write_text(base.replace("TEST", str(unlabelled)).replace("STARTS", "[{file: acac:test_MD_300K, frames: [0]}]"))
    with pytest.raises(StableFFError, match=r"unlabelled.xyz.*energy"):
        run_study(load_study_config(config), tmp_path / "out", log=lambda *_: None)
    config.write_text(base.replace("TEST", "acac:test_MD_600K").replace("STARTS", "[{file: acac:test_MD_300K, frames: [0, 0]}]"))
    with pytest.raises(StableFFError, match=r"acac:test_MD_300K \(frame 0\) is the same stability start structure as acac:test_MD_300K"):
        run_study(load_study_config(config), tmp_path / "out", log=lambda *_: None)
    assert not trained
    assert comparison_notes(["decorrelated"]) == [
        "no comparison: the study has no baseline variant (variants: decorrelated); add baseline to variants to compare the remedies with it"]
    assert "only the baseline" in comparison_notes(["baseline"])[0] and comparison_notes(["baseline", "sam"]) == []


def test_what_changed_is_said_by_key_also_inside_lists():
    """A fingerprint holding a list of replica fingerprints (the structure stage's) reports the key
    that changed, once with the count of items, not a truncated JSON blob."""
    from stableff.fingerprint import differences

    old = {"stage": "structure-2", "replicas": [{"md": {"steps": 40, "seed": s}} for s in range(3)]}
    new = {"stage": "structure-2", "replicas": [{"md": {"steps": 50, "seed": s}} for s in range(3)]}
    assert differences(old, new) == ["replicas[*].md.steps: 40 -> 50 (3 of 3 items)"]
    assert differences({"frames": [0, 1]}, {"frames": [0, 2]}) == ["frames[*]: 1 -> 2 (1 of 2 items)"]


def test_a_studys_seeds_watch_each_other_as_a_committee(tmp_path):
    """`stability.committee: true`: every run of a variant is watched by its other seeds; each
    replica records their disagreement, the summary counts warnings against failures per variant
    and condition, and the report says it. A committee of one seed is refused naming the key."""
    import csv

    from stableff.errors import ConfigError
    from stableff.md.committee import COLUMN
    from stableff.report.render import write_study_report
    from stableff.study import load_study_config, run_study

    config = {
        "name": "committee",
        "training": {
            "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.05, "max_train_frames": 12},
            "model": {"name": "nequip", "r_max": 3.5, "num_layers": 1, "l_max": 1, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
            "training": {"epochs": 1, "batch_size": 4, "num_threads": 1},
        },
        "variants": ["baseline"], "seeds": [0, 1],
        "stability": {"temperatures_K": [1500], "replicas": 3, "time_ps": 0.04, "workers": 1, "committee": {"threshold": "2x"},
                      "out_of_distribution": [{"file": "acac:test_MD_600K", "frames": [0]}]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_study(load_study_config(path), tmp_path / "out", log=lambda *_: None)
    (row,) = summary["rows"]
    warnings = row["committee_warnings_OOD@1500K"]
    assert warnings["n_runs"] == 6 and warnings["n_failed"] > 0 and warnings["n_failed"] == sum(r["n_failed"] for r in [run["stability"]["OOD@1500K"] for run in summary["runs"]])
    assert warnings["n_warned_before_failure"] + warnings["n_warned_at_failure"] + warnings["n_failures_without_warning"] == warnings["n_failed"]
    assert summary["committee_warnings"] and "nequip, baseline, MD" in summary["committee_warnings"][0]
    for run in summary["runs"]:
        other = 1 - run["seed"]
        for replica in run["stability"]["OOD@1500K"]["replicas"]:
            assert replica["committee"]["members"][0].endswith(f"seed_{run['seed']}/best.ckpt")
            assert replica["committee"]["members"][1].endswith(f"seed_{other}/best.ckpt")
            with open(Path(replica["path"]) / "thermo.csv") as handle:
                values = [float(r[COLUMN]) for r in csv.DictReader(handle)]
            assert values and values[0] > 0
    _, md_path = write_study_report(summary, tmp_path / "out")
    assert "## Committee warnings" in md_path.read_text()
    config["seeds"] = [0]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="stability.committee.*at least two seeds"):
        load_study_config(path)


def test_a_metric_a_variant_leaves_unchanged_in_every_seed_is_said_to_be_identical():
    """A prior that acts only below the training data leaves the learned model as it was: zero
    difference in each seed is 'identical', not 'the data cannot decide'."""
    from stableff.study.summary import verdicts

    same = {"difference": 0.0, "n_seeds": 3, "low": None, "high": None, "pvalue": None, "variant_mean": 0.276, "baseline_mean": 0.276}
    constant = dict(same, difference=0.01, variant_mean=0.286)
    (identical, undecided) = verdicts([{"model": "nequip", "variant": "zbl", "metrics": {"corr_mean_over_layers": same, "fmae_ID_meV_per_A": constant}, "stability": {}}])
    assert "identical in each of the 3 seeds" in identical
    assert "no interval can be given" in undecided
