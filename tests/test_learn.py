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
        "selection": {"method": "committee", "min_spacing_fs": 5},
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


def test_rounds_label_the_most_uncertain_frames_once_and_resume_after_an_oracle_failure(tmp_path, copper, capsys):
    import ase.io
    from ase.calculators.emt import EMT

    from stableff.errors import StableFFError
    from stableff.study.learn import load_learn_config, run_learning

    config_path = _config(tmp_path, copper)
    config = load_learn_config(config_path)
    out = tmp_path / "out"
    # the oracle goes down after its first call: the labelled frame is kept, the run stops with one line
    (tmp_path / "down").unlink(missing_ok=True)
    import oracles

    original = oracles.CountingEMT.calculate

    def once_then_down(self, *args, **kwargs):
        original(self, *args, **kwargs)
        (tmp_path / "down").touch()

    oracles.CountingEMT.calculate = once_then_down
    try:
        with pytest.raises(StableFFError, match="oracle oracles:CountingEMT failed on frame .* the 1 frames labelled before are kept"):
            run_learning(config, out, log=lambda *_: None)
    finally:
        oracles.CountingEMT.calculate = original
    labelled = out / "labelled" / "round_1.extxyz"
    assert len(ase.io.read(labelled, ":")) == 1 and _calls(tmp_path) == 1
    (tmp_path / "down").unlink()
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
        run_learning(load_learn_config(_config(tmp_path, copper, selection={"method": "committee", "min_spacing_fs": 8})), out, log=lambda *_: None)
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
    from stableff.study.learn import OracleConfig, label

    atoms = read_frames("acac:test_MD_600K", index=0)[0].to_atoms()
    run = tmp_path / "run"
    run.mkdir()
    ase.io.write(run / "trajectory.extxyz", [atoms], format="extxyz")
    oracle = OracleConfig(calculator="tblite.ase:TBLite", kwargs={"method": "GFN2-xTB", "verbosity": 0})
    calls, _ = label([{"run": str(run), "frame": 0, "time_ps": 0.0, "disagreement_eV_per_A": 0.1}], oracle, tmp_path / "round_1.extxyz", 1, log=lambda *_: None)
    (frame,) = ase.io.read(tmp_path / "round_1.extxyz", ":")
    reference = atoms.copy()
    reference.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert calls == 1 and "GFN2-xTB" in frame.info["oracle"]
    assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(frame.get_forces(), reference.get_forces(), atol=1e-6)
