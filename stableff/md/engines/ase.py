"""The ``ase`` engine: one run with ASE's integrators and a calculator, the failure checks attached
as an observer every ``log_interval`` steps, the files of :mod:`stableff.md.records`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from ase import units

from stableff.md.integrators import initialise_velocities, thermostat_stream
from stableff.md.monitors import FailureMonitor, monitor_from_statistics
from stableff.md.records import FrameRecorder, md_summary, open_run_files, write_summary
from stableff.md.settings import MDSettings


def make_integrator(atoms, settings: MDSettings):
    """The ASE dynamics object for the chosen ensemble."""
    dt = settings.timestep_fs * units.fs
    rng = thermostat_stream(settings.seed)
    if settings.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if settings.ensemble == "langevin":
        from ase.constraints import FixCom
        from ase.md.langevin import Langevin

        # ASE's recommended way to keep the centre of mass fixed with correct NVT sampling
        atoms.set_constraint(FixCom())
        return Langevin(atoms, timestep=dt, temperature_K=settings.temperature_K, friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)
    if settings.ensemble == "nose-hoover":
        from ase.md.nose_hoover_chain import NoseHooverChainNVT

        return NoseHooverChainNVT(atoms, timestep=dt, temperature_K=settings.temperature_K, tdamp=settings.damping_fs * units.fs)
    from ase.md.bussi import Bussi

    return Bussi(atoms, timestep=dt, temperature_K=settings.temperature_K, taut=settings.damping_fs * units.fs, rng=rng)


def run_md(atoms, calculator, settings: MDSettings, out_dir, monitor: FailureMonitor | None = None, label: str = "", metadata: dict | None = None, committee=None) -> dict:
    """Run MD from ``atoms`` (velocities initialised here) and return the summary dict
    (``metadata``, e.g. the replica's identity, is stored in it too). ``committee``
    (:class:`stableff.md.committee.Committee` whose first member ``calculator`` evaluates): the
    other members' force disagreement is recorded at every check."""
    settings.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atoms = atoms.copy()
    atoms.calc = calculator
    initialise_velocities(atoms, settings.temperature_K, settings.seed)
    dynamics = make_integrator(atoms, settings)
    bar = None
    if settings.progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc=label or "MD", unit="step", file=sys.stderr, mininterval=0.5, leave=False)
    t_first = time.perf_counter()
    with np.errstate(all="ignore"):
        atoms.get_forces()  # the first model call (where torch.compile compiles) is kept out of ms/step; the step reuses it
    first_call_s = time.perf_counter() - t_first
    t_start = time.perf_counter()
    members = None
    if committee is not None:
        from stableff.md.committee import CommitteeCalculators

        members = CommitteeCalculators(committee, device=str(getattr(calculator, "device", "cpu")))
    thermo, trajectory = open_run_files(out_dir, committee)
    with thermo, trajectory:
        recorder = FrameRecorder(settings, monitor, thermo, trajectory, bar, committee)

        def observe() -> None:
            with np.errstate(all="ignore"):
                forces = atoms.get_forces()
                energy = atoms.get_potential_energy()
                spread = members.disagreement(atoms, calculator.results["forces"]) if members is not None else None
            recorder.record(dynamics.nsteps, atoms, energy, forces, spread)

        dynamics.attach(observe, interval=settings.log_interval)
        with np.errstate(all="ignore"):
            for _ in dynamics.irun(settings.steps):
                if recorder.stop:
                    break
        if not recorder.stop:
            observe()  # the last step, when the run length is not a multiple of log_interval
    if bar is not None:
        bar.close()
    summary = md_summary(settings, len(atoms), recorder, dynamics.nsteps, time.perf_counter() - t_start, label,
                         {"first_call_s": first_call_s, **(metadata or {})})
    write_summary(summary, out_dir)
    return summary


def run_replica(task, identity: dict) -> dict:
    """Run one replica (a :class:`stableff.md.replicas.ReplicaTask`, in whatever process) into the
    folder of its ``identity`` (start, replica, path, fingerprint) and return its summary."""
    import torch

    from stableff.md.calculator import cached_calculator
    from stableff.models.saved import checkpoint_statistics

    torch.set_num_threads(task.threads)
    calculator = cached_calculator(task.model_path, device=task.device, compile=task.compile)
    statistics = calculator.statistics if task.thresholds_from is None else checkpoint_statistics(task.thresholds_from)
    monitor = monitor_from_statistics(statistics, task.settings.ensemble, task.settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
    return run_md(task.atoms, calculator, task.settings, identity["path"], monitor, label=f"{task.start_label} #{task.replica}",
                  metadata={**identity, "engine": "ase"}, committee=task.committee)
