"""MD: integrators, failure monitors, stability index and survival, structure metrics, resumable
replicas, and the md / stability / rdf commands."""

import json
import subprocess
import sys

import numpy as np
import pytest
from ase.build import bulk

from stableff.analysis.stability import stability_index, summarise_replicas
from stableff.analysis.survival import kaplan_meier
from stableff.analysis.structure import compare_rdf, jensen_shannon, rdf, wright_factor
from stableff.data.stats import DatasetStatistics
from stableff.md.monitors import FailureMonitor, FrameState, MonitorSettings
from stableff.md.engines.ase import run_md
from stableff.md.settings import MDSettings


def acac_atoms(index=0):
    from stableff.data.io import read_frames

    return read_frames("acac:test_MD_300K", index=index)[0].to_atoms()


def test_nve_conserves_energy_with_a_trained_model(trained_model, tmp_path):
    from stableff import StableFFCalculator

    settings = MDSettings(ensemble="nve", temperature_K=300, timestep_fs=0.25, steps=400, log_interval=10, progress=False)
    summary = run_md(acac_atoms(), StableFFCalculator(trained_model), settings, tmp_path)
    thermo = np.genfromtxt(tmp_path / "thermo.csv", delimiter=",", names=True)
    drift_meV_per_atom = 1000 * np.max(np.abs(thermo["etot_eV"] - thermo["etot_eV"][0])) / 15
    assert drift_meV_per_atom < 2.0
    assert np.std(thermo["ekin_eV"]) > 0.01  # energy really moves between kinetic and potential
    assert summary["steps"] == 400 and not summary["failed"]


def test_langevin_reaches_the_target_temperature(tmp_path):
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    settings = MDSettings(ensemble="langevin", temperature_K=50, timestep_fs=2.0, steps=600, friction_per_fs=0.05, log_interval=10, progress=False, seed=3)
    # start far below the target: Maxwell-Boltzmann at 50 K, thermostat to 600 K
    settings_hot = MDSettings(**{**settings.__dict__, "temperature_K": 600})
    from stableff.md.engines import ase as md_run

    original = md_run.initialise_velocities
    md_run.initialise_velocities = lambda atoms, temperature_K, seed: original(atoms, 50.0, seed)
    try:
        run_md(atoms, EMT(), settings_hot, tmp_path)
    finally:
        md_run.initialise_velocities = original
    thermo = np.genfromtxt(tmp_path / "thermo.csv", delimiter=",", names=True)
    assert thermo["temperature_K"][0] < 150
    assert np.mean(thermo["temperature_K"][len(thermo) // 2 :]) == pytest.approx(600, rel=0.12)


STATS = DatasetStatistics(
    type_numbers=[1, 8], reference_energies=[0.0, 0.0], energy_per_atom_residual_mean=0.0, energy_per_atom_residual_std=0.0,
    force_rms=1.0, mean_num_neighbors=2.0, max_abs_force=5.0, min_pair_distance={"1-8": 0.9, "1-1": 1.4, "8-8": 2.5},
    max_nearest_neighbor_distance={"1": 1.0, "8": 1.0}, cutoff=4.0, n_frames=1,
)


def water(time_fs=0.0, temperature=300.0, positions=None, forces=None, epot=-10.0, ekin=0.1):
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) if positions is None else positions
    forces = np.zeros((3, 3)) if forces is None else forces
    return FrameState(time_fs, np.array([8, 1, 1]), positions, np.zeros((3, 3)), np.array([False] * 3), forces, epot, ekin, temperature)


def healthy_run(monitor, n=50, dt=5.0):
    rng = np.random.default_rng(0)
    for k in range(n):
        state = water(k * dt, temperature=300 + 20 * rng.standard_normal())
        state.positions = state.positions + 0.02 * rng.standard_normal((3, 3))
        failure = monitor.check(state)
        if failure is not None:
            return failure
    return None


def test_monitors_stay_silent_on_a_healthy_run():
    assert healthy_run(FailureMonitor(STATS, "langevin", 300.0)) is None
    assert healthy_run(FailureMonitor(STATS, "nve", 300.0)) is None


@pytest.mark.parametrize(
    "reason, frame",
    [
        ("non_finite", lambda: water(forces=np.full((3, 3), np.nan))),
        ("temperature", lambda: water(temperature=3500.0)),
        ("close_contact", lambda: water(positions=np.array([[0.0, 0, 0], [0.6, 0, 0], [-0.24, 0.93, 0]]))),
        ("dissociation", lambda: water(positions=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 3.5, 0]]))),
        ("force_blowup", lambda: water(forces=np.array([[0, 0, 0], [0, 0, 0], [16.0, 0, 0]]))),
    ],
)
def test_each_monitor_fires_on_a_frame_that_breaks_it(reason, frame):
    monitor = FailureMonitor(STATS, "langevin", 300.0)
    assert monitor.check(water()) is None
    failure = monitor.check(frame())
    assert failure is not None and failure.reason == reason, failure


def test_temperature_window_and_energy_drift_monitors():
    nvt = FailureMonitor(STATS, "langevin", 300.0, MonitorSettings(temperature_window_fs=100.0))
    failure = None
    for k in range(30):  # 700 K: above 2 T0 on average, below 10 T0 in every frame
        failure = failure or nvt.check(water(k * 5.0, temperature=700.0))
    assert failure is not None and failure.reason == "temperature" and "mean T over 100 fs" in failure.detail
    nve = FailureMonitor(STATS, "nve", 300.0)
    assert nve.check(water(0.0, epot=-10.0)) is None
    assert nve.check(water(5.0, epot=-10.0 + 0.02)) is None  # 6.7 meV/atom
    failure = nve.check(water(10.0, epot=-10.0 + 0.04))  # 13 meV/atom
    assert failure is not None and failure.reason == "energy_drift"
    assert FailureMonitor(STATS, "langevin", 300.0).check(water(10.0, epot=-9.0)) is None  # no drift check in NVT


def test_bond_length_check_is_opt_in():
    stretched = water(positions=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]) * np.array([1.0, 1.0, 1.0]))
    stretched.positions[1] = [0.99, 0.0, 0.0]
    bonds = [(0, 1, 0.4)]  # reference bond length 0.4 A: 0.59 A deviation
    off = FailureMonitor(None, "langevin", 300.0, MonitorSettings(), reference_bonds=bonds)
    on = FailureMonitor(None, "langevin", 300.0, MonitorSettings(check_bond_length=True), reference_bonds=bonds)
    assert off.check(stretched) is None
    assert on.check(stretched).reason == "bond_length"


def test_stability_index_and_kaplan_meier_with_censoring():
    times = [0.2, 1.0, 0.5, 1.0]  # two failures, two censored runs of length 1 ps
    failed = [True, False, True, False]
    assert stability_index(times, 1.0) == pytest.approx((0.2 + 1.0 + 0.5 + 1.0) / 4)
    curve = kaplan_meier(times, failed)
    assert curve["time_ps"] == [0.0, 0.2, 0.5] and curve["survival"] == pytest.approx([1.0, 0.75, 0.5])
    # censoring before a failure shrinks the risk set: after the failure at 0.1 and the censoring at
    # 0.3, two runs are at risk at 0.6 -> S = 0.75 * (1 - 1/2)
    curve = kaplan_meier([0.1, 0.3, 0.6, 1.0], [True, False, True, False])
    assert curve["survival"] == pytest.approx([1.0, 0.75, 0.375]) and curve["censored_ps"] == [0.3, 1.0]
    summary = summarise_replicas([
        {"run_length_ps": 1.0, "time_to_failure_ps": x, "failed": f, "reason": "close_contact" if f else None} for x, f in zip(times, failed)
    ])
    # the Kaplan-Meier median (S first <= 1/2 at 0.5 ps), not the median of min(t, T) (0.75 ps)
    assert summary["median_time_to_failure_ps"] == pytest.approx(0.5) and summary["median_time_to_failure_reached"]
    assert summary["failures_by_reason"] == {"close_contact": 2}


def test_median_time_to_failure_is_kaplan_meiers_and_not_reached_when_most_runs_survive():
    """With censoring the median of min(t, T) is not a failure time: the KM median is, with the
    Brookmeyer-Crowley interval from the same band the report draws; when S(t) stays above 1/2 it is
    "not reached" (None and a flag), never the run length."""
    from stableff.analysis.survival import median_survival

    rows = lambda times, failed: [{"run_length_ps": 1.0, "time_to_failure_ps": t, "failed": f, "reason": "temperature" if f else None} for t, f in zip(times, failed)]
    survivors = summarise_replicas(rows([0.3, 1.0, 1.0, 1.0, 1.0], [True, False, False, False, False]))
    assert survivors["median_time_to_failure_ps"] is None and survivors["median_time_to_failure_reached"] is False
    assert survivors["median_time_to_failure_interval_ps"] == [pytest.approx(0.3), None]  # the band holds 1/2 from 0.3 ps on
    # 20 runs failing at 0.05, 0.10, ..., 1.0 ps: S(t) = 1 - k/20, first <= 1/2 at the 10th failure
    times = [0.05 * (k + 1) for k in range(20)]
    median = median_survival(times, [True] * 20)
    assert median["median_ps"] == pytest.approx(0.5) and median["reached"]
    curve = kaplan_meier(times, [True] * 20)
    upper_first = next(t for t, u in zip(curve["time_ps"], curve["upper"]) if u <= 0.5)
    lower_first = next(t for t, lo in zip(curve["time_ps"], curve["lower"]) if lo <= 0.5)
    assert median["low_ps"] == pytest.approx(lower_first) and median["high_ps"] == pytest.approx(upper_first)
    assert median["low_ps"] < median["median_ps"] < median["high_ps"]


def test_rdf_of_a_perfect_crystal_peaks_at_its_neighbour_shells():
    a = 3.6
    crystal = bulk("Cu", "fcc", a=a, cubic=True).repeat((3, 3, 3))
    result = rdf([crystal], r_max=5.5, n_bins=220)
    g = result["g"]["Cu-Cu"]
    r = result["r_A"]
    shells = np.array([a / np.sqrt(2), a, a * np.sqrt(1.5), a * np.sqrt(2)])
    near = np.min(np.abs(r[:, None] - shells[None, :]), axis=1) < 0.03
    for shell in shells:
        assert g[np.abs(r - shell) < 0.03].max() > 0  # a peak at every neighbour shell
    assert np.all(g[~near] == 0)  # and nothing between the shells
    # coordination number: sum of rho g over the bins' shell volumes in the first shell = 12
    rho = len(crystal) / crystal.get_volume()
    dr = r[1] - r[0]
    first = r < 3.0
    shell_volumes = 4.0 / 3.0 * np.pi * ((r + dr / 2) ** 3 - (r - dr / 2) ** 3)
    assert np.sum(rho * g[first] * shell_volumes[first]) == pytest.approx(12.0, rel=1e-9)


def test_wright_factor_and_jsd_zero_for_identical_and_growing_with_shift():
    r = np.linspace(0, 6, 300)
    g = np.exp(-((r - 2.5) ** 2) / 0.02)
    assert wright_factor(g, g) == 0.0 and jensen_shannon(g, g) == pytest.approx(0.0, abs=1e-12)
    shifted = [np.exp(-((r - 2.5 - s) ** 2) / 0.02) for s in (0.05, 0.1, 0.3)]
    wf = [wright_factor(x, g) for x in shifted]
    jsd = [jensen_shannon(x, g) for x in shifted]
    assert wf == sorted(wf) and jsd == sorted(jsd) and wf[0] > 0 and jsd[-1] <= 1.0
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    same = compare_rdf(rdf([crystal]), rdf([crystal.copy()]))
    assert same["Cu-Cu"]["wright_factor"] == 0.0


def stableff_cli(*args):
    return subprocess.run([sys.executable, "-m", "stableff", *map(str, args)], capture_output=True, text=True)


def test_md_command_writes_trajectory_thermo_and_summary(trained_model, tmp_path):
    result = stableff_cli("md", trained_model, "acac:test_MD_300K", "--out", tmp_path, "--steps", "40", "--traj-interval", "20", "--ensemble", "bussi")
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("failed", "time_to_failure_ps", "reason", "steps", "ms_per_step"):
        assert key in summary
    import ase.io

    frames = ase.io.read(tmp_path / "trajectory.extxyz", ":")
    assert len(frames) == 3 and frames[-1].get_forces().shape == (15, 3)
    header = (tmp_path / "thermo.csv").read_text().splitlines()[0]
    assert header == "time_ps,temperature_K,epot_eV,ekin_eV,etot_eV,max_force_eV_per_A,min_distance_A"


def test_barely_trained_model_fails_at_2000K_with_a_reason(tmp_path):
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    config = parse_config({
        "data": {"train": "acac:train_300K", "val_fraction": 0.1, "max_train_frames": 10},
        "model": {"name": "nequip", "r_max": 4.0, "num_layers": 2, "num_features": 8, "num_bessels": 6, "radial_mlp_width": 16, "radial_mlp_depth": 1},
        "training": {"epochs": 1, "batch_size": 5, "num_threads": 2},
    })
    Trainer(config, tmp_path / "model", progress=False).run()
    result = stableff_cli("stability", tmp_path / "model" / "best.ckpt", "acac:test_MD_600K", "--replicas", "2", "--temperature", "2000",
                          "--time", "0.5", "--out", tmp_path / "stab", "--json", tmp_path / "stab.json", "--plot", tmp_path / "plots", "--workers", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "stab.json").read_text())
    assert report["stability_index"] < 1.0 and all(r["failed"] for r in report["replicas"])
    assert all(r["reason"] in ("close_contact", "dissociation", "force_blowup", "temperature", "non_finite") for r in report["replicas"])
    for key in ("stability_index", "median_time_to_failure_ps"):
        assert key in report
    assert (tmp_path / "plots" / "survival.png").is_file() and (tmp_path / "plots" / "traces.png").is_file()


def test_killed_stability_run_resumes_without_redoing_finished_replicas(trained_model, tmp_path):
    from conftest import kill_when

    args = [sys.executable, "-m", "stableff", "stability", str(trained_model), "acac:test_MD_300K", "--replicas", "3", "--workers", "1",
            "--time", "0.15", "--engine", "ase", "--out", str(tmp_path / "stab"), "--json", str(tmp_path / "s.json")]
    first = tmp_path / "stab" / "test_MD_300K_0" / "replica_000" / "summary.json"
    kill_when(args, first.exists)
    finished_before = first.read_text()
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "of 3 replicas already finished with the same inputs" in result.stdout
    assert first.read_text() == finished_before
    assert len(json.loads((tmp_path / "s.json").read_text())["replicas"]) == 3


@pytest.mark.parametrize("name", sorted(__import__("stableff.models", fromlist=["MODELS"]).MODELS))
def test_every_model_trains_with_decorrelation_evaluates_and_runs_md(name, tmp_path):
    """One path for all models: train (decorrelation on), checkpoint, evaluate, ASE calculator, MD with monitors."""
    from conftest import SMALL_HYPERPARAMETERS
    from stableff import StableFFCalculator
    from stableff.measures.accuracy import evaluate_files
    from stableff.md.monitors import monitor_from_statistics
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    config = parse_config({
        "data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 8},
        "model": {"name": name, **SMALL_HYPERPARAMETERS[name]},
        "training": {"epochs": 1, "batch_size": 4, "num_threads": 1},
        "decorrelation": {"enabled": True, "max_edges": 64},
    })
    row = Trainer(config, tmp_path / "run", progress=False).run()
    assert np.isfinite(row["train_L_corr"]) and "val_corr_l1" in row
    import ase.io

    ase.io.write(tmp_path / "few.xyz", [acac_atoms(k) for k in range(3)], format="extxyz")
    (result,) = evaluate_files(tmp_path / "run" / "best.ckpt", [tmp_path / "few.xyz"], progress=False)
    assert result["n_frames"] == 3 and np.isfinite(result["fmae_meV_per_A"])
    calculator = StableFFCalculator(tmp_path / "run" / "best.ckpt")
    settings = MDSettings(ensemble="langevin", temperature_K=300, timestep_fs=0.5, steps=20, log_interval=5, progress=False)
    monitor = monitor_from_statistics(calculator.statistics, "langevin", 300.0)
    summary = run_md(acac_atoms(), calculator, settings, tmp_path / "md", monitor)
    assert summary["steps"] >= 5 and (tmp_path / "md" / "thermo.csv").is_file()


def test_rdf_reference_check_fires_on_a_melted_structure_and_not_on_the_crystal(tmp_path):
    import ase.io

    from stableff.analysis.structure import RDFReferenceCheck

    crystal = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3))
    reference = []
    for k in range(10):  # a thermally disordered crystal as the reference
        atoms = crystal.copy()
        atoms.rattle(0.08, seed=100 + k)
        reference.append(atoms)
    ase.io.write(tmp_path / "reference.xyz", reference, format="extxyz")
    check = RDFReferenceCheck(tmp_path / "reference.xyz", threshold=1.0, window_fs=20.0)

    def frames(rattle):
        out = []
        for k in range(5):
            atoms = crystal.copy()
            atoms.rattle(rattle, seed=k)
            out.append(FrameState(5.0 * k, atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, np.zeros((len(atoms), 3)), 0.0, 0.0, 300.0))
        return out

    healthy = FailureMonitor(None, "langevin", 300.0, structure_check=check)
    assert all(healthy.check(f) is None for f in frames(0.08))
    assert 0 < check(frames(0.08)) < 0.5  # the check really ran on the healthy run
    broken = FailureMonitor(None, "langevin", 300.0, structure_check=check)
    results = [broken.check(f) for f in frames(0.6)]
    assert results[-1] is not None and results[-1].reason == "rdf"
