"""`stableff learn`: rounds of MD, committee selection, labelling by an ASE calculator (EMT here),
retraining; nothing the oracle computed is lost or computed again."""

import json

import numpy as np
import pytest
import yaml


@pytest.fixture
def copper(tmp_path):
    """Rattled 8-atom copper cells labelled by EMT: round 0's data, and a start structure."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(0)
    frames = []
    for _ in range(24):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    ase.io.write(tmp_path / "cu.extxyz", frames, format="extxyz")
    return tmp_path / "cu.extxyz"


def _config(tmp_path, copper, **changes):
    config = {
        "name": "cu-active",
        "training": {
            "data": {"train": str(copper), "val_fraction": 0.25},
            "model": {"name": "nequip", "r_max": 3.0, "num_layers": 1, "l_max": 1, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
            "training": {"epochs": 1, "batch_size": 4, "num_threads": 1},
        },
        "seeds": [0, 1],
        "oracle": {"calculator": "oracles:CountingEMT", "kwargs": {"log": str(tmp_path / "calls.txt"), "fail_while": str(tmp_path / "down")}},
        "budget": 2, "rounds": 1, "per_round": 2,
        # a toy committee: every frame counts as uncertain, and there is no upper trust level
        "selection": {"method": "committee", "min_spacing_fs": 5, "max_disagreement": None}, "committee_threshold": "0.001",
        "exploration": {"temperatures_K": [1500], "replicas": 2, "time_ps": 0.02, "workers": 1,
                        "out_of_distribution": [{"file": str(copper), "frames": [0]}]},
        **changes,
    }
    path = tmp_path / "learn.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _calls(tmp_path) -> int:
    path = tmp_path / "calls.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_rounds_label_the_most_uncertain_frames_once_and_resume_after_a_kill(tmp_path, copper, capsys):
    import ase.io
    from ase.calculators.emt import EMT

    from stableff.errors import StableFFError
    from stableff.study.learn import load_learn_config, run_learning

    config_path = _config(tmp_path, copper)
    config = load_learn_config(config_path)
    out = tmp_path / "out"
    # the process is killed during the oracle's second call: the first labelled frame is kept
    import oracles

    original = oracles.CountingEMT.calculate

    def killed_on_the_second_call(self, *args, **kwargs):
        if _calls(tmp_path) == 1:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)

    oracles.CountingEMT.calculate = killed_on_the_second_call
    try:
        with pytest.raises(KeyboardInterrupt):
            run_learning(config, out, log=lambda *_: None)
    finally:
        oracles.CountingEMT.calculate = original
    labelled = out / "labelled" / "round_1.extxyz"
    assert len(ase.io.read(labelled, ":")) == 1 and _calls(tmp_path) == 1
    result = run_learning(config, out, log=lambda *_: None)
    assert _calls(tmp_path) == 2  # only the frame not yet labelled
    frames = ase.io.read(labelled, ":")
    selection = json.loads((out / "round_0" / "selection.json").read_text())["frames"]
    assert len(frames) == len(selection) == 2
    # the frames the committee disagreed on most, at least 5 fs apart within a run
    assert selection[0]["disagreement_eV_per_A"] >= selection[1]["disagreement_eV_per_A"]
    for frame in frames:
        assert json.loads(frame.info["oracle"])["calculator"] == "oracles:CountingEMT" and frame.info["round"] == 1
        check = frame.copy()
        check.calc = EMT()
        assert frame.get_potential_energy() == pytest.approx(check.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(frame.get_forces(), check.get_forces(), atol=1e-6)
    # round 1 trained on round 0's fixed split plus the labelled frames, and was judged by round 0's thresholds
    trained = yaml.safe_load((out / "round_1" / "seed_0" / "config.yaml").read_text())["data"]
    assert trained["train"][-1] == str(labelled) and trained["validation"].endswith("validation.extxyz")
    (row0, row1) = result["rounds"]
    assert (row0["oracle_calls"], row1["oracle_calls"]) == (0, 2)
    key = "OOD@1500K"
    assert "logrank_pvalue_vs_round_0" in row1["stability"][key] and row0["stability"][key]["n_runs"] == 2
    from stableff.fingerprint import file_hash

    summary = json.loads(next((out / "round_1" / "seed_0" / "stability").rglob("summary.json")).read_text())
    assert summary["fingerprint"]["thresholds_from"] == file_hash(out / "round_0" / "seed_0" / "best.ckpt")
    assert "uncertain" in summary
    # run again from the command line: everything reused, no oracle call, the per-round table printed
    from stableff.cli import main

    capsys.readouterr()
    assert main(["learn", str(config_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _calls(tmp_path) == 2
    assert "oracle calls" in printed and "OOD@1500K RMST (ps)" in printed and "log-rank against round 0" in printed
    # another selection of round 1's frames is refused while frames labelled from the old one exist
    with pytest.raises(StableFFError, match="were chosen from other runs or settings .*min_spacing_fs"):
        run_learning(load_learn_config(_config(tmp_path, copper, selection={"method": "committee", "min_spacing_fs": 8, "max_disagreement": None})), out, log=lambda *_: None)
    # another oracle setting does not mix its frames with these
    changed = load_learn_config(_config(tmp_path, copper, budget=4, rounds=2))
    changed.oracle.kwargs["asap_cutoff"] = True
    with pytest.raises(StableFFError, match="labelled by another oracle"):
        run_learning(changed, out, log=lambda *_: None)


def test_learn_configuration_errors_name_the_key(tmp_path, copper):
    from stableff.errors import ConfigError
    from stableff.study.learn import load_learn_config

    with pytest.raises(ConfigError, match="oracle.calculator: cannot import nowhere:EMT"):
        load_learn_config(_config(tmp_path, copper, oracle={"calculator": "nowhere:EMT"}))
    with pytest.raises(ConfigError, match="package.module:Class"):
        load_learn_config(_config(tmp_path, copper, oracle={"calculator": "EMT"}))
    with pytest.raises(ConfigError, match="seeds.*at least two"):
        load_learn_config(_config(tmp_path, copper, seeds=[0]))


def test_a_quantum_chemistry_oracle_labels_a_frame(tmp_path):
    """GFN2-xTB (tblite's ASE calculator, the `oracles` extra) as the oracle: the labelled frame
    carries its energy and forces and the oracle's settings."""
    import ase.io

    from tblite.ase import TBLite

    from stableff.data.io import read_frames
    from stableff.study.oracle import OracleConfig, label

    atoms = read_frames("acac:test_MD_600K", index=0)[0].to_atoms()
    run = tmp_path / "run"
    run.mkdir()
    ase.io.write(run / "trajectory.extxyz", [atoms], format="extxyz")
    oracle = OracleConfig(calculator="tblite.ase:TBLite", kwargs={"method": "GFN2-xTB", "verbosity": 0})
    totals = label([{"run": str(run), "frame": 0, "time_ps": 0.0, "disagreement_eV_per_A": 0.1}], oracle, tmp_path / "round_1.extxyz", 1, log=lambda *_: None)
    (frame,) = ase.io.read(tmp_path / "round_1.extxyz", ":")
    reference = atoms.copy()
    reference.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert totals["calls_now"] == totals["labelled"] == 1 and totals["oracle_seconds"] > 0 and "GFN2-xTB" in frame.info["oracle"]
    assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-6)


def test_a_frame_the_oracle_raises_on_is_recorded_and_skipped_and_the_budget_counts_it(tmp_path, copper):
    import ase.io

    from stableff.data.io import read_frames
    from stableff.errors import StableFFError
    from stableff.study.learn import load_learn_config, run_learning
    from stableff.study.oracle import failure_record, label

    import oracles

    original, failed_once = oracles.CountingEMT.calculate, tmp_path / "failed_once"

    def raises_on_the_first_frame(self, *args, **kwargs):
        if not failed_once.exists():
            failed_once.touch()
            raise RuntimeError("SCF did not converge")
        original(self, *args, **kwargs)

    messages = []
    oracles.CountingEMT.calculate = raises_on_the_first_frame
    try:
        out = tmp_path / "out"
        result = run_learning(load_learn_config(_config(tmp_path, copper)), out, log=messages.append)
    finally:
        oracles.CountingEMT.calculate = original
    labelled = out / "labelled" / "round_1.extxyz"
    record = json.loads(failure_record(labelled).read_text())["failures"]
    selection = json.loads((out / "round_0" / "selection.json").read_text())["frames"]
    assert len(record) == 1 and record[0]["selection_index"] == 0 and "SCF did not converge" in record[0]["error"]
    assert [m for m in messages if "failed on frame" in m] == [m for m in messages if "SCF did not converge" in m] and len([m for m in messages if "failed on frame" in m]) == 1
    (frame,) = ase.io.read(labelled, ":")
    assert frame.info["selection_index"] == 1 and frame.info["source_frame"] == selection[1]["frame"] and _calls(tmp_path) == 1
    # round 1 trained on round 0's frames plus the one labelled frame; the failed call was spent
    n_round0 = len(read_frames(str(out / "data" / "train.extxyz")))
    trained = yaml.safe_load((out / "round_1" / "seed_0" / "config.yaml").read_text())["data"]["train"]
    assert sum(len(read_frames(f)) for f in trained) == n_round0 + 1
    assert result["rounds"][1]["oracle_calls"] == 2 and result["rounds"][0]["labelled"] == 1 and result["rounds"][0]["oracle_failures"] == 1
    # run again: neither frame goes to the oracle again
    run_learning(load_learn_config(_config(tmp_path, copper)), out, log=lambda *_: None)
    assert _calls(tmp_path) == 1 and len(json.loads(failure_record(labelled).read_text())["failures"]) == 1
    # an oracle that fails on every frame of a round stops the learning with one message
    (tmp_path / "down").touch()
    run = tmp_path / "run"
    run.mkdir()
    ase.io.write(run / "trajectory.extxyz", [frame], format="extxyz")
    config = load_learn_config(_config(tmp_path, copper))
    with pytest.raises(StableFFError, match="failed on every one of the 1 frames of round 1 .*machine went away.*delete that file"):
        label([{"run": str(run), "frame": 0, "time_ps": 0.0, "disagreement_eV_per_A": 0.1}], config.oracle, tmp_path / "other.extxyz", 1, log=lambda *_: None)


def test_active_is_a_study_variant_compared_on_equal_terms_with_its_cost(tmp_path, copper):
    """`variants: [baseline, active]`: the active variant's models are its learning's last round,
    judged by the same MD plan (fresh velocity seeds) and round 0's failure thresholds, with its
    cost in oracle calls and seconds in the summary."""
    from stableff.errors import ConfigError
    from stableff.fingerprint import file_hash
    from stableff.study import load_study_config, run_study

    raw = yaml.safe_load(_config(tmp_path, copper).read_text())
    study = {
        "name": "cu-study", "training": raw["training"], "seeds": [0, 1], "variants": ["baseline", "active"],
        "active": {"oracle": raw["oracle"], "budget": 2, "rounds": 1, "selection": raw["selection"], "committee_threshold": "0.001", "exploration": {"replicas": 1}},
        "stability": {**raw["exploration"], "seed": 7},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "study"
    summary = run_study(load_study_config(path), out, log=lambda *_: None)
    assert _calls(tmp_path) == 2
    learn = out / "nequip" / "active" / "learn"
    for seed in (0, 1):
        assert file_hash(out / "nequip" / "active" / f"seed_{seed}" / "best.ckpt") == file_hash(learn / "round_1" / f"seed_{seed}" / "best.ckpt")
    judged = [json.loads(p.read_text()) for p in (out / "nequip" / "active" / "seed_0" / "stability").rglob("summary.json")]
    explored = [json.loads(p.read_text()) for p in (learn / "round_0" / "seed_0" / "stability").rglob("summary.json")]
    assert len(judged) == 2 and len(explored) == 1  # the study's 2 replicas; the exploration's 1 (active.exploration)
    assert {j["seed"] for j in judged} == {7, 8} and explored[0]["seed"] == 1007
    assert all(j["fingerprint"]["thresholds_from"] == file_hash(learn / "round_0" / "seed_0" / "best.ckpt") for j in judged)
    row = next(r for r in summary["rows"] if r["variant"] == "active")
    base = next(r for r in summary["rows"] if r["variant"] == "baseline")
    assert row["oracle_calls"]["mean"] == 2 and row["active"]["labelled_frames"] == 2 and row["active"]["oracle_seconds"] > 0
    assert row["train_seconds"]["mean"] > base["train_seconds"]["mean"]  # two trainings per seed against one
    assert any(v.startswith("nequip, active, cost: 2 oracle calls") for v in summary["verdicts"])
    assert any(c["variant"] == "active" and "OOD@1500K" in c["stability"] for c in summary["comparisons"])
    # run again: everything reused, no oracle call
    again = run_study(load_study_config(path), out, log=lambda *_: None)
    assert _calls(tmp_path) == 2 and again["rows"] == summary["rows"]
    # an active variant without an oracle, or with one seed, is refused by key
    del study["active"]
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="active variant needs an `active:` block"):
        load_study_config(path)
    study.update(active={"oracle": raw["oracle"], "budget": 2}, seeds=[0])
    path.write_text(yaml.safe_dump(study))
    with pytest.raises(ConfigError, match="at least two seeds"):
        load_study_config(path)


def test_the_committee_chooses_between_its_trust_levels_and_never_a_broken_frame(tmp_path):
    """Frames at or after a run's failure are never chosen; by the committee, only frames whose
    disagreement lies between the uncertainty threshold and selection.max_disagreement (so that
    the oracle is not spent on structures that are already broken)."""
    import ase.io
    from ase import Atoms

    from stableff.md.committee import COLUMN
    from stableff.study.learn import LearnConfig, candidates, select, selection_window

    run = tmp_path / "run"
    run.mkdir()
    times = [0.0, 0.005, 0.010, 0.015, 0.020, 0.025]
    spread = [0.1, 0.5, 0.9, 2.5, 0.6, 9.0]  # the run fails at 0.025 ps
    frames = []
    for t in times:
        atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
        atoms.info["time_ps"] = t
        frames.append(atoms)
    ase.io.write(run / "trajectory.extxyz", frames, format="extxyz")
    (run / "thermo.csv").write_text("time_ps," + COLUMN + "\n" + "".join(f"{t},{d}\n" for t, d in zip(times, spread)))
    replica = {"path": str(run), "failed": True, "time_to_failure_ps": 0.025, "committee": {"threshold_eV_per_A": 0.3}}
    config = LearnConfig.model_validate({"training": {"data": {"train": "x.extxyz"}}, "oracle": {"calculator": "ase.calculators.emt:EMT"}, "budget": 4,
                                         "committee_threshold": "3x", "selection": {"max_disagreement": "20x", "min_spacing_fs": 0},
                                         "exploration": {"out_of_distribution": [{"file": "x.extxyz"}]}})
    window = selection_window(config, [replica])
    assert window == pytest.approx((0.3, 2.0))  # validation level 0.1 eV/A: 3x to 20x
    chosen = select(candidates([replica], "committee", window), 4, 0)
    assert [c["time_ps"] for c in chosen] == [0.010, 0.020, 0.005]  # 2.5 is above the bound, 9.0 is the failing frame, 0.1 is certain
    assert [c["time_ps"] for c in candidates([replica], "before_failure")] == [0.020, 0.015, 0.010, 0.005, 0.0]
    unbounded = config.model_copy(update={"selection": config.selection.model_copy(update={"max_disagreement": None})})
    assert [c["time_ps"] for c in candidates([replica], "committee", selection_window(unbounded, [replica]))][:1] == [0.015]
