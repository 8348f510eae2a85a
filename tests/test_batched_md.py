"""The batched MD engine (stableff.md.engines.batched): forces equal to the calculator's, the same trajectories
as the ASE engine in NVE, thermostats that reach their temperature, failed replicas leaving the batch,
and the same stability statistics as the ASE engine on a model that fails."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from stableff.data import keys
from stableff.models import compose
from stableff.models.base import EnergyNetwork
from stableff.md.engines.batched import BatchedReplica, run_batched
from stableff.md.engines.replica_batch import ReplicaBatch
from stableff.md.calculator import StableFFCalculator
from stableff.md.engines.ase import run_md
from stableff.md.monitors import monitor_from_statistics
from stableff.md.settings import MDSettings
from test_md import acac_atoms, stableff_cli
from test_physics import hfo2_like_cell, make_model


def thermo(folder):
    return np.genfromtxt(folder / "thermo.csv", delimiter=",", names=True)


def test_forces_equal_the_calculators_for_the_same_positions_and_lists_follow_the_atoms():
    model = make_model("nequip", type_numbers=(1, 6, 8, 72))
    molecule, crystal = acac_atoms(0), hfo2_like_cell()
    rattled = acac_atoms(1)
    systems = [molecule, crystal, rattled]
    batch = ReplicaBatch(model, systems, skin_A=0.5)
    calculator = StableFFCalculator(model)
    rng = np.random.default_rng(0)

    def compare(positions):
        energy, forces = batch.energy_forces(torch.as_tensor(np.concatenate(positions)))
        start = 0
        for k, (atoms, x) in enumerate(zip(systems, positions)):
            copy = atoms.copy()
            copy.positions = x
            copy.calc = calculator
            assert energy[k].item() == pytest.approx(copy.get_potential_energy(), abs=1e-10)
            np.testing.assert_allclose(forces[start:start + len(copy)].numpy(), copy.get_forces(), atol=1e-10)
            start += len(copy)

    positions = [a.positions.copy() for a in systems]
    compare(positions)
    assert batch.rebuilds == 3
    # moves below half the skin keep the lists (the cutoff is applied per step) ...
    for _ in range(3):
        positions = [x + rng.uniform(-0.04, 0.04, x.shape) for x in positions]
        compare(positions)
    assert batch.rebuilds == 3
    # ... one atom moved further rebuilds that structure's list only
    positions[1][0] += 0.3
    compare(positions)
    assert batch.rebuilds == 4


def test_the_calculators_kept_neighbour_list_gives_the_results_of_a_fresh_list():
    """Langevin steps of a periodic cell and a molecule: the calculator that keeps its list
    (skin 0.5 A) gives the energies, forces and stress of one that builds a new list every call,
    and rebuilds it only a few times."""
    from ase import units
    from ase.md.langevin import Langevin

    model = make_model("nequip", type_numbers=(1, 6, 8, 72))
    for atoms in (hfo2_like_cell(), acac_atoms(0)):
        kept, fresh = StableFFCalculator(model), StableFFCalculator(model, skin=0.0)
        atoms = atoms.copy()
        atoms.calc = kept
        dynamics = Langevin(atoms, timestep=1.0 * units.fs, temperature_K=2000, friction=0.02, rng=np.random.default_rng(0))
        for _ in range(30):
            dynamics.run(1)
            copy = atoms.copy()
            copy.calc = fresh
            assert atoms.get_potential_energy() == pytest.approx(copy.get_potential_energy(), abs=1e-10)
            np.testing.assert_allclose(atoms.get_forces(), copy.get_forces(), atol=1e-10)
            if atoms.pbc.all():
                np.testing.assert_allclose(atoms.get_stress(), copy.get_stress(), atol=1e-12)
        assert 1 <= kept.neighbours.builds < 30 <= fresh.neighbours.builds
        # results are reused for the same atoms, and recomputed after any change (exact comparison)
        assert kept.check_state(atoms) == []
        atoms.positions[0, 0] += 1e-12
        assert kept.check_state(atoms) == ["positions"]


def test_nve_follows_the_ase_engine_and_conserves_energy_in_float64(tmp_path):
    model = make_model("nequip")
    settings = MDSettings(ensemble="nve", temperature_K=200, timestep_fs=0.25, steps=200, log_interval=10, progress=False, seed=4)
    run_md(acac_atoms(), StableFFCalculator(model), settings, tmp_path / "ase")
    (summary,) = run_batched(model, [BatchedReplica(acac_atoms(), settings, str(tmp_path / "batched"))], progress=False)
    ase_rows, batched_rows = thermo(tmp_path / "ase"), thermo(tmp_path / "batched")
    assert summary["steps"] == 200 and summary["engine"] == "batched" and len(batched_rows) == len(ase_rows) == 21
    for column in ("temperature_K", "epot_eV", "etot_eV", "max_force_eV_per_A", "min_distance_A"):
        np.testing.assert_allclose(batched_rows[column], ase_rows[column], rtol=1e-6, atol=1e-6, err_msg=column)
    drift = 1000 * np.max(np.abs(batched_rows["etot_eV"] - batched_rows["etot_eV"][0])) / 15
    assert drift < 0.5  # meV/atom
    assert np.std(batched_rows["ekin_eV"]) > 0.005  # energy really moves between kinetic and potential
    # same frames in the trajectory
    import ase.io

    frames = ase.io.read(tmp_path / "batched" / "trajectory.extxyz", index=":")
    assert len(frames) == 11 and np.allclose(frames[-1].get_forces(), ase.io.read(tmp_path / "ase" / "trajectory.extxyz", index=-1).get_forces(), atol=1e-6)


class MorseCopperNetwork(EnergyNetwork):
    """Girifalco-Weizer Morse copper with a smooth cutoff: a well-behaved crystal for thermostat tests."""

    def __init__(self, type_numbers=(29,), r_max: float = 5.0, avg_num_neighbors: float = 1.0):
        super().__init__(type_numbers, r_max, avg_num_neighbors)

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        depth, stiffness, r0 = 0.3429, 1.3588, 2.866
        x = edge_lengths / self.r_max
        envelope = torch.where(x < 1, (1 - x**2) ** 3, torch.zeros_like(x))
        pair = depth * (torch.exp(-2 * stiffness * (edge_lengths - r0)) - 2 * torch.exp(-stiffness * (edge_lengths - r0))) * envelope
        energies = torch.zeros(batch[keys.POSITIONS].shape[0], dtype=pair.dtype).index_add_(0, batch[keys.EDGE_INDEX][0], 0.5 * pair)
        return energies, None


def morse_copper():
    """The Morse copper network with unit scale and zero shift, kept fixed."""
    return compose(MorseCopperNetwork(), trainable_scale_shift=False)


@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose-hoover"])
def test_thermostats_bring_replicas_from_60_to_600_K(ensemble, tmp_path, monkeypatch):
    from ase.build import bulk

    from stableff.md import integrators as engine

    original = engine.initialise_velocities
    monkeypatch.setattr(engine, "initialise_velocities", lambda atoms, temperature_K, seed: original(atoms, 60.0, seed))
    model = morse_copper().double()
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    settings = MDSettings(ensemble=ensemble, temperature_K=600, timestep_fs=2.0, steps=500, friction_per_fs=0.05, damping_fs=25.0, log_interval=10, progress=False)
    replicas = [BatchedReplica(crystal, dataclasses.replace(settings, seed=r), str(tmp_path / f"r{r}")) for r in range(3)]
    run_batched(model, replicas, progress=False)
    rows = [thermo(tmp_path / f"r{r}") for r in range(3)]
    assert all(t["temperature_K"][0] < 100 for t in rows)
    late = np.concatenate([t["temperature_K"][len(t) // 2:] for t in rows])
    assert np.mean(late) == pytest.approx(600, rel=0.06)
    # the replicas are different runs (own seeds), not copies
    assert not np.allclose(rows[0]["temperature_K"], rows[1]["temperature_K"])


def test_a_failed_replica_leaves_the_batch_and_the_others_go_on(trained_model, tmp_path):
    from stableff.models.saved import model_from_checkpoint

    model, statistics = model_from_checkpoint(trained_model)
    settings = MDSettings(ensemble="langevin", temperature_K=300, timestep_fs=0.5, steps=60, log_interval=10, progress=False)
    broken = acac_atoms(0)
    broken.positions[1] = broken.positions[0] + [0.3, 0.0, 0.0]  # two atoms 0.3 A apart: a close contact from the start
    replicas = [
        BatchedReplica(atoms, dataclasses.replace(settings, seed=r), str(tmp_path / name), monitor_from_statistics(statistics, "langevin", 300.0), name)
        for r, (name, atoms) in enumerate([("healthy_a", acac_atoms(0)), ("broken", broken), ("healthy_b", acac_atoms(2))])
    ]
    summaries = run_batched(model, replicas, progress=False)
    assert [s["failed"] for s in summaries] == [False, True, False]
    assert summaries[1]["reason"] in ("close_contact", "force_blowup") and summaries[1]["steps"] == 0
    assert summaries[0]["steps"] == summaries[2]["steps"] == 60
    assert len(np.atleast_1d(thermo(tmp_path / "broken"))) == 1
    assert len(thermo(tmp_path / "healthy_b")) == 7
    for name in ("healthy_a", "broken", "healthy_b"):
        stored = json.loads((tmp_path / name / "summary.json").read_text())
        assert stored["label"] == name and (tmp_path / name / "trajectory.extxyz").stat().st_size > 0


def test_same_stability_statistics_in_every_engine_on_a_model_that_fails(trained_model, tmp_path):
    """A briefly trained model at 600 K fails within tens of fs, at times that vary between replicas:
    the ase, batched and lammps engines with the same 12 replica seeds must not differ from the
    batched engine by a log-rank test. That is absence of evidence only: equivalence within a stated
    margin (+-10 % of the run length, two one-sided tests) needs ~160 replicas per engine, minutes
    of CPU: benchmarks/engine_equivalence.py measures it (docs/benchmarks.md); this test catches an
    engine whose statistics are grossly off."""
    from stableff.analysis.stability import stability_report
    from stableff.analysis.survival import logrank_stratified
    from stableff.data.io import read_frames
    from stableff.errors import StableFFError
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, plan_replicas, run_replicas

    engines = ("ase", "batched", "lammps")
    start = read_frames("acac:test_MD_300K", index=0)[0].to_atoms()
    settings = MDSettings(temperature_K=600, steps=300, progress=False)  # 0.15 ps
    reports = {}
    for engine in engines:  # in this process, one worker: the statistics are the subject here, not the processes
        tasks = build_replica_tasks(trained_model, [("test_MD_300K_0", start)], settings, 12, MonitorSettings(), tmp_path / engine, engine=engine)
        reports[engine] = stability_report(run_replicas(tasks, workers=1, progress=False))
    times = {e: np.array([r["time_to_failure_ps"] for r in reports[e]["replicas"]]) for e in reports}
    events = {e: np.array([r["failed"] for r in reports[e]["replicas"]]) for e in reports}
    assert len(set(times["batched"])) > 2  # failure times vary: a statistic, not one deterministic event
    stored = json.loads((tmp_path / "batched" / "test_MD_300K_0" / "replica_000" / "summary.json").read_text())
    assert stored["engine"] == "batched" and stored["fingerprint"]["engine"] == "batched"
    for engine in engines:
        assert events[engine].sum() >= 6, engine
        if engine == "batched":
            continue
        test = logrank_stratified(times[engine], events[engine], np.zeros(12), times["batched"], events["batched"], np.zeros(12))
        assert test.pvalue > 0.05, (engine, times, events)
        assert 0.5 < np.median(times["batched"]) / np.median(times[engine]) < 2.0, engine
    stored = json.loads((tmp_path / "lammps" / "test_MD_300K_0" / "replica_000" / "summary.json").read_text())
    assert stored["engine"] == "lammps" and stored["fingerprint"]["engine"] == "lammps" and stored["fingerprint"]["ranks"] == 1
    # the ase engine's replicas are not taken for the batched engine's (the engine is in the fingerprint)
    moved = build_replica_tasks(trained_model, [("test_MD_300K_0", start)], settings, 12, MonitorSettings(), tmp_path / "ase", engine="batched")
    with pytest.raises(StableFFError, match="engine: ase -> batched"):
        plan_replicas(moved)


def test_a_killed_batched_run_continues_from_its_saved_state_to_the_same_result(trained_model, tmp_path):
    import subprocess
    import sys

    from conftest import kill_when

    def args(out):
        return [sys.executable, "-m", "stableff", "stability", str(trained_model), "acac:test_MD_300K", "--replicas", "3", "--temperature", "300",
                "--time", "0.1", "--keep-going", "--engine", "batched", "--workers", "1", "--out", str(out), "--json", str(out) + ".json"]  # one process: the state, not the pool, is the subject

    folders = [tmp_path / "killed" / "test_MD_300K_0" / f"replica_{r:03d}" for r in range(3)]
    kill_when(args(tmp_path / "killed"), lambda: all((f / "state.pt").exists() for f in folders))
    assert not any((f / "summary.json").exists() for f in folders)
    resumed = subprocess.run(args(tmp_path / "killed"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "3 interrupted replicas continue from their saved state" in resumed.stdout
    whole = subprocess.run(args(tmp_path / "whole"), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    for r, folder in enumerate(folders):
        assert not (folder / "state.pt").exists()
        rows = thermo(folder)
        assert len(rows) == 21 and np.all(np.diff(rows["time_ps"]) > 0)  # no row lost, none twice
        reference = thermo(tmp_path / "whole" / "test_MD_300K_0" / f"replica_{r:03d}")
        np.testing.assert_allclose(rows["etot_eV"], reference["etot_eV"], atol=1e-5)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["steps"] == 200


def test_every_ensemble_has_one_integrator():
    from stableff.md.integrators import INTEGRATORS
    from stableff.md.settings import ENSEMBLES

    assert set(INTEGRATORS) == set(ENSEMBLES)


def test_a_replica_with_batch_mates_differs_from_its_run_alone_only_by_rounding(tmp_path):
    """What the engine's docstring states: a replica's random stream is its own, so with three
    batch-mates (other seeds, another start) its Langevin trajectory is the one it has alone
    up to the rounding of the model's sums over the batch, tiny in float64 over 100 steps, where
    shared or shifted random numbers would move atoms by ~0.01 A."""
    import ase.io

    model = make_model("nequip")
    settings = MDSettings(ensemble="langevin", temperature_K=300, timestep_fs=0.5, steps=100, log_interval=10, traj_interval=50,
                          damping_fs=20.0, progress=False, seed=7)
    run_batched(model, [BatchedReplica(acac_atoms(), settings, str(tmp_path / "alone"))], progress=False)
    mates = [BatchedReplica(acac_atoms(k % 2), dataclasses.replace(settings, seed=s), str(tmp_path / f"mate{s}")) for k, s in enumerate((1, 2, 3))]
    run_batched(model, [mates[0], BatchedReplica(acac_atoms(), settings, str(tmp_path / "shared")), *mates[1:]], progress=False)
    alone, shared = (ase.io.read(tmp_path / name / "trajectory.extxyz", index=-1) for name in ("alone", "shared"))
    assert alone.info["step"] == shared.info["step"] == 100
    deviation = np.abs(alone.positions - shared.positions).max()
    assert 0 <= deviation < 1e-9, deviation
    other = ase.io.read(tmp_path / "mate1" / "trajectory.extxyz", index=-1)
    assert np.abs(other.positions - alone.positions).max() > 1e-3  # another seed: another run
