"""Committee uncertainty: the force disagreement of a committee on the frames of an MD run, its
threshold, the uncertain flag with its time, and how warnings are counted against failures."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ACAC


def _member(trained_model, tmp_path, name: str, scale: float, seed: int = 1):
    """Another committee member: the trained model with its weights perturbed (as a model trained
    with another seed would differ), saved as a checkpoint of its own."""
    from stableff.models.saved import load_checkpoint

    checkpoint = load_checkpoint(trained_model)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in checkpoint["model_state"].items():
        if value.is_floating_point() and value.numel() > 1 and "scale_shift" not in key:
            value = value * (1 + scale * torch.randn(value.shape, generator=generator, dtype=value.dtype))
        state[key] = value
    checkpoint["model_state"] = state
    path = tmp_path / f"{name}.ckpt"
    torch.save(checkpoint, path)
    return path


def test_force_disagreement_is_the_largest_per_atom_spread():
    from stableff.md.committee import force_disagreement

    rng = np.random.default_rng(0)
    forces = rng.normal(size=(3, 5, 3))
    expected = max(np.sqrt(np.mean([np.sum((forces[m, i] - forces[:, i].mean(axis=0)) ** 2) for m in range(3)])) for i in range(5))
    assert force_disagreement(forces) == pytest.approx(expected, rel=1e-12)
    assert force_disagreement(np.stack([forces[0]] * 4)) == pytest.approx(0.0, abs=1e-14)
    # per structure: atoms 0-1 in structure 0, 2-4 in structure 1
    per = force_disagreement(forces, np.array([0, 0, 1, 1, 1]), 2).numpy()
    assert per[0] == pytest.approx(force_disagreement(forces[:, :2]), rel=1e-12)
    assert per[1] == pytest.approx(force_disagreement(forces[:, 2:]), rel=1e-12)


def test_threshold_is_parsed_or_refused():
    from stableff.errors import StableFFError
    from stableff.md.committee import parse_threshold

    assert parse_threshold("3x") == ("multiple", 3.0)
    assert parse_threshold("2.5 x") == ("multiple", 2.5)
    assert parse_threshold(0.4) == ("absolute", 0.4)
    for bad in ("-1", "0x", "many", "nan"):
        with pytest.raises(StableFFError, match="uncertainty threshold"):
            parse_threshold(bad)


def test_committee_members_count_once_and_threshold_follows_validation(trained_model, tmp_path):
    from stableff.errors import StableFFError
    from stableff.md.committee import frame_disagreements, make_committee, validation_frames

    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(trained_model.read_bytes())
    with pytest.raises(StableFFError, match="at least two different models"):
        make_committee(str(trained_model), [str(copy)])
    other = _member(trained_model, tmp_path, "other", 0.05)
    committee = make_committee(str(trained_model), [str(copy), str(other)], "3x")
    assert committee.members == (str(trained_model), str(other))
    frames = validation_frames(str(trained_model))
    assert len(frames) == 50  # the trainer split 500 frames: 50 validation (val_fraction 0.1), 120 of the rest for training
    level = float(np.mean(frame_disagreements([str(trained_model), str(other)], frames)))
    assert committee.threshold_eV_per_A == pytest.approx(3 * level, rel=1e-9)
    assert "the 50 validation frames of" in committee.rule
    absolute = make_committee(str(trained_model), [str(other)], "0.2")
    assert absolute.threshold_eV_per_A == 0.2
    # a further-perturbed member disagrees more
    far = _member(trained_model, tmp_path, "far", 0.3)
    assert np.mean(frame_disagreements([str(trained_model), str(far)], frames)) > level


def _thermo(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("engine", ["batched", "ase"])
def test_runs_record_the_disagreement_and_the_first_uncertain_frame(trained_model, tmp_path, engine):
    """Every check row carries the committee's disagreement; the first row above the threshold is
    the run's uncertain time; the same start's first frame gives the same d in both engines."""
    from stableff.data.io import read_frames
    from stableff.md.committee import COLUMN, force_disagreement, make_committee
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, run_replicas
    from stableff.md.settings import MDSettings
    from stableff.models.saved import model_from_checkpoint

    other = _member(trained_model, tmp_path, "other", 0.05)
    atoms = read_frames(ACAC / "test_MD_600K.xyz", index=0)[0].to_atoms()
    probe = make_committee(str(trained_model), [str(other)], "1.0")
    settings = MDSettings(temperature_K=600, steps=60, log_interval=10, traj_interval=20, keep_going=True, progress=False)
    replicas = 2 if engine == "batched" else 1  # two rows of one batch; one process run
    tasks = build_replica_tasks(trained_model, [("acac", atoms)], settings, replicas, MonitorSettings(), tmp_path / "first", engine=engine, committee=probe)
    first = run_replicas(tasks, workers=1, progress=False)
    rows = _thermo(first[0]["path"] + "/thermo.csv")
    values = np.array([float(r[COLUMN]) for r in rows])
    assert len(values) == 7 and np.all(values > 0)
    # the first row is the start structure: d from the two models' forces on it
    forces = []
    for path in probe.members:
        model, _ = model_from_checkpoint(path)
        from stableff.md.calculator import StableFFCalculator

        snapshot = atoms.copy()
        snapshot.calc = StableFFCalculator(model)
        forces.append(snapshot.get_forces())
    assert values[0] == pytest.approx(force_disagreement(np.stack(forces)), rel=1e-4)
    assert first[0]["max_force_disagreement_eV_per_A"] == pytest.approx(values.max(), rel=1e-4)
    # a threshold between the smallest and the largest value of the run: uncertain at the first row above it
    ordered = np.sort(values)
    threshold = float(ordered[2] + ordered[3]) / 2  # midway: clear of the 5 decimals thermo.csv rounds to
    assert ordered[3] - ordered[2] > 2e-5
    committee = make_committee(str(trained_model), [str(other)], str(threshold))
    tasks = build_replica_tasks(trained_model, [("acac", atoms)], settings, replicas, MonitorSettings(), tmp_path / "second", engine=engine, committee=committee)
    summary = run_replicas(tasks, workers=1, progress=False)[0]
    rows = _thermo(summary["path"] + "/thermo.csv")
    above = [float(r["time_ps"]) for r in rows if float(r[COLUMN]) > threshold]
    assert summary["uncertain"] and summary["uncertain_time_ps"] == pytest.approx(above[0])
    stored = json.loads((tmp_path / "second" / "acac" / "replica_000" / "summary.json").read_text())
    assert stored["committee"]["threshold_eV_per_A"] == pytest.approx(threshold)
    # never uncertain above every value
    high = make_committee(str(trained_model), [str(other)], "100")
    tasks = build_replica_tasks(trained_model, [("acac", atoms)], settings, 1, MonitorSettings(), tmp_path / "third", engine=engine, committee=high)
    assert run_replicas(tasks, workers=1, progress=False)[0]["uncertain"] is False


def test_the_committee_is_part_of_a_replicas_fingerprint(trained_model, tmp_path):
    """A stored run without (or with another) committee is not reused as one with it."""
    from stableff.errors import StableFFError
    from stableff.data.io import read_frames
    from stableff.md.committee import make_committee
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, run_replicas
    from stableff.md.settings import MDSettings

    other = _member(trained_model, tmp_path, "other", 0.05)
    atoms = read_frames(ACAC / "test_MD_600K.xyz", index=0)[0].to_atoms()
    settings = MDSettings(temperature_K=600, steps=20, log_interval=10, traj_interval=20, progress=False)
    run_replicas(build_replica_tasks(trained_model, [("acac", atoms)], settings, 1, MonitorSettings(), tmp_path), workers=1, progress=False)
    committee = make_committee(str(trained_model), [str(other)], "0.5")
    with pytest.raises(StableFFError, match="committee"):
        run_replicas(build_replica_tasks(trained_model, [("acac", atoms)], settings, 1, MonitorSettings(), tmp_path, committee=committee), workers=1, progress=False)
    with pytest.raises(StableFFError, match="batched and ase engines"):
        build_replica_tasks(trained_model, [("acac", atoms)], settings, 1, MonitorSettings(), tmp_path, engine="lammps", committee=committee)


def test_warnings_are_counted_against_failures():
    from stableff.analysis.stability import stability_report, warnings_text

    committee = {"members": ["a", "b"], "threshold_eV_per_A": 0.3, "rule": "0.3 eV/A (absolute)"}

    def run(failed, t_fail, uncertain_at):
        return {"start": "s", "replica": 0, "seed": 0, "run_length_ps": 1.0, "failed": failed, "time_to_failure_ps": t_fail, "reason": "close_contact" if failed else None,
                "committee": committee, "uncertain": uncertain_at is not None, "uncertain_time_ps": uncertain_at, "uncertain_step": None, "max_force_disagreement_eV_per_A": 0.5}

    runs = [run(True, 0.5, 0.3), run(True, 0.8, 0.2), run(True, 0.4, 0.4), run(True, 0.6, None), run(False, 1.0, 0.7), run(False, 1.0, None), run(False, 1.0, None)]
    w = stability_report(runs)["committee_warnings"]
    assert (w["n_failed"], w["n_warned_before_failure"], w["n_warned_at_failure"], w["n_failures_without_warning"]) == (4, 2, 1, 1)
    assert (w["n_false_alarms"], w["n_stable_without_warning"]) == (1, 2)
    assert w["lead_time_ps"]["median"] == pytest.approx(0.4) and w["lead_time_ps"]["min"] == pytest.approx(0.2) and w["lead_time_ps"]["max"] == pytest.approx(0.6)
    assert "2/4 failures warned of before they happened" in warnings_text(w)
    assert "committee_warnings" not in stability_report([{k: v for k, v in runs[0].items() if k not in ("committee", "uncertain")}])


def test_cli_committee_end_to_end(trained_model, tmp_path):
    """`stableff stability --committee` prints the threshold, the uncertain column and the warnings
    line, and stores the warnings in its JSON."""
    other = _member(trained_model, tmp_path, "other", 0.05)
    base = [sys.executable, "-m", "stableff", "stability", str(trained_model), "acac:test_MD_600K", "--replicas", "2", "--steps", "40", "--temperature-K", "600", "--workers", "1"]
    result = subprocess.run(base + ["--out", str(tmp_path / "run"), "--committee", str(other), "--json", str(tmp_path / "s.json")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "committee: 2 models; a run is uncertain above" in result.stdout and "validation frames" in result.stdout
    assert "uncertain from (ps)" in result.stdout and "failures warned of" in result.stdout
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["committee_warnings"]["n_runs"] == 2 and "uncertain" in report["replicas"][0]



def test_an_uncertainty_option_without_a_committee_is_refused(trained_model, tmp_path, capsys):
    from stableff.cli import main

    code = main(["stability", str(trained_model), "acac:test_MD_600K", "--steps", "40", "--out", str(tmp_path / "bad"), "--uncertainty-threshold", "3x"])
    err = capsys.readouterr().err
    assert code != 0 and "need --committee" in err and "Traceback" not in err
