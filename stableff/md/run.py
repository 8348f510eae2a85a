"""Molecular dynamics with ASE integrators, failure monitors, and files that survive interruption.

``run_md`` writes into its output folder:
  trajectory.extxyz  frames every ``traj_interval`` steps (each frame written and flushed whole);
  thermo.csv         time_ps, temperature_K, epot_eV, ekin_eV, etot_eV, max_force_eV_per_A, min_distance_A;
  summary.json       failed, time_to_failure_ps, reason, detail, steps, ms_per_step, ... (atomic).
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time
from pathlib import Path

import numpy as np
from ase import units

from stableff.data.neighbors import neighbor_list
from stableff.io import write_json_atomic
from stableff.md.monitors import FailureMonitor, FrameState, MonitorSettings

#: the integrators stableff runs (the one list: CLI choices, study plans and settings use it)
ENSEMBLES = ("nve", "langevin", "nose-hoover", "bussi")

#: the engines of replica runs: ``batched`` advances all replicas of a model together, one batched
#: model call per step (stableff.md.batched); ``ase`` runs one replica per process with ASE's integrators
ENGINES = ("batched", "ase")
#: the faster of the two on CPU and on GPU (benchmarks/replica_throughput.py)
DEFAULT_ENGINE = "batched"

#: pairs closer than this are looked for in every checked frame (thermo.csv's min_distance_A)
MIN_DISTANCE_CUTOFF_A = 3.0


def steps_for_time(time_ps: float, timestep_fs: float) -> int:
    """Number of MD steps covering ``time_ps`` with a ``timestep_fs`` step (at least 1)."""
    return max(1, int(round(time_ps * 1000.0 / timestep_fs)))


@dataclasses.dataclass
class MDSettings:
    ensemble: str = "langevin"  # nve | langevin | nose-hoover | bussi
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 2000
    friction_per_fs: float = 0.01  # Langevin
    damping_fs: float = 100.0  # Nose-Hoover chain tdamp, Bussi taut
    seed: int = 0
    log_interval: int = 10  # steps between thermo rows and failure checks
    traj_interval: int = 20  # steps between trajectory frames (rounded to a multiple of log_interval)
    keep_going: bool = False  # record failures but run to the end
    progress: bool = True

    def validate(self) -> None:
        from stableff.errors import StableFFError

        if self.ensemble not in ENSEMBLES:
            raise StableFFError(f"unknown ensemble '{self.ensemble}' (choose from {', '.join(ENSEMBLES)})")
        for name in ("timestep_fs", "steps", "log_interval", "traj_interval"):
            if getattr(self, name) <= 0:
                raise StableFFError(f"{name} must be positive (got {getattr(self, name)})")
        if self.temperature_K < 0:
            raise StableFFError(f"temperature must be >= 0 K (got {self.temperature_K})")

    @property
    def length_ps(self) -> float:
        return self.steps * self.timestep_fs / 1000.0


def initialise_velocities(atoms, temperature_K: float, seed: int) -> None:
    """Maxwell-Boltzmann velocities at T with zero total momentum (and zero rotation for molecules)."""
    from ase.md import velocitydistribution
    from ase.md.velocitydistribution import Stationary, ZeroRotation

    # thermalize_momenta is the newer name (ASE >= 3.28); MaxwellBoltzmannDistribution the older one
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any() and len(atoms) > 2:
        ZeroRotation(atoms)


def make_integrator(atoms, settings: MDSettings):
    """The ASE dynamics object for the chosen ensemble."""
    dt = settings.timestep_fs * units.fs
    rng = np.random.default_rng(settings.seed + 1_000_003)
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


def _frame_text(atoms, energy, forces) -> str:
    from ase.calculators.singlepoint import SinglePointCalculator
    import ase.io

    snapshot = atoms.copy()
    snapshot.set_constraint()
    snapshot.calc = SinglePointCalculator(snapshot, energy=energy, forces=forces)
    buffer = io.StringIO()
    ase.io.write(buffer, snapshot, format="extxyz")
    return buffer.getvalue()


class FrameRecorder:
    """The observer attached to the ASE dynamics every ``log_interval`` steps: one thermo row, a
    trajectory frame every ``traj_interval`` steps, and the failure check, all from one neighbour
    list of the frame."""

    def __init__(self, dynamics, atoms, settings: MDSettings, monitor: FailureMonitor | None, thermo, trajectory, bar):
        self.dynamics, self.atoms, self.settings, self.monitor = dynamics, atoms, settings, monitor
        self.thermo, self.trajectory, self.bar = thermo, trajectory, bar
        self.traj_every = max(1, round(settings.traj_interval / settings.log_interval))
        self.cutoff = max(MIN_DISTANCE_CUTOFF_A, monitor.neighbor_cutoff if monitor is not None else 0.0)
        self.records = 0
        self.last_step = -1
        self.failure, self.failure_step = None, None
        self.t_start = time.perf_counter()

    @property
    def stop(self) -> bool:
        return self.failure is not None and not self.settings.keep_going

    def __call__(self) -> None:
        atoms, step = self.atoms, self.dynamics.nsteps
        if step == self.last_step:
            return
        with np.errstate(all="ignore"):
            forces = atoms.get_forces()
            epot = float(atoms.get_potential_energy())
            ekin = float(atoms.get_kinetic_energy())
            temperature = float(atoms.get_temperature())
        finite = bool(np.all(np.isfinite(atoms.positions)))
        pairs = None
        if finite and len(atoms) > 1:
            pairs = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff, with_distances=True)
        distances = pairs[3] if pairs is not None else np.empty(0)
        dmin = float(distances.min()) if len(distances) else float("nan")
        time_fs = step * self.settings.timestep_fs
        fmax = float(np.max(np.linalg.norm(forces, axis=1))) if np.all(np.isfinite(forces)) else float("nan")
        self.thermo.write(f"{time_fs / 1000:.6f},{temperature:.3f},{epot:.6f},{ekin:.6f},{epot + ekin:.6f},{fmax:.4f},{dmin:.4f}\n")
        self.thermo.flush()
        if self.records % self.traj_every == 0 and finite:
            self.trajectory.write(_frame_text(atoms, epot, forces))
            self.trajectory.flush()
        self.records += 1
        self.last_step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            elapsed = time.perf_counter() - self.t_start
            self.bar.set_postfix_str(f"t {time_fs / 1000:.3f} ps  T {temperature:.0f} K  {elapsed / max(step, 1) * 1000:.1f} ms/step", refresh=False)
        if self.monitor is not None and self.failure is None:
            neighbors = (pairs[0], pairs[1], pairs[3]) if pairs is not None else None
            state = FrameState(time_fs, atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, forces, epot, ekin, temperature, neighbors)
            found = self.monitor.check(state)
            if found is not None:
                self.failure, self.failure_step = found, step


def md_summary(settings: MDSettings, n_atoms: int, recorder: "FrameRecorder", steps: int, elapsed_s: float, label: str = "", metadata: dict | None = None) -> dict:
    """The summary.json of one run (either engine): outcome, time to failure, cost, and ``metadata``."""
    failure = recorder.failure
    return {
        "label": label,
        "ensemble": settings.ensemble,
        "temperature_K": settings.temperature_K,
        "timestep_fs": settings.timestep_fs,
        "seed": settings.seed,
        "n_atoms": n_atoms,
        "run_length_ps": settings.length_ps,
        "failed": failure is not None,
        "time_to_failure_ps": recorder.failure_step * settings.timestep_fs / 1000.0 if failure is not None else settings.length_ps,
        "failure_step": recorder.failure_step,
        "reason": failure.reason if failure is not None else None,
        "detail": failure.detail if failure is not None else None,
        "steps": steps,
        "ms_per_step": 1000 * elapsed_s / max(steps, 1),
        **(metadata or {}),
    }


def open_run_files(out_dir: Path):
    """thermo.csv (with its header) and trajectory.extxyz of a run, opened for writing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    thermo = open(out_dir / "thermo.csv", "w")
    thermo.write("time_ps,temperature_K,epot_eV,ekin_eV,etot_eV,max_force_eV_per_A,min_distance_A\n")
    return thermo, open(out_dir / "trajectory.extxyz", "w")


def run_md(atoms, calculator, settings: MDSettings, out_dir, monitor: FailureMonitor | None = None, label: str = "", metadata: dict | None = None) -> dict:
    """Run MD from ``atoms`` (velocities initialised here) and return the summary dict
    (``metadata``, e.g. the replica's identity, is stored in it too)."""
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
    t_start = time.perf_counter()
    thermo, trajectory = open_run_files(out_dir)
    with thermo, trajectory:
        recorder = FrameRecorder(dynamics, atoms, settings, monitor, thermo, trajectory, bar)
        dynamics.attach(recorder, interval=settings.log_interval)
        with np.errstate(all="ignore"):
            for _ in dynamics.irun(settings.steps):
                if recorder.stop:
                    break
        if not recorder.stop:
            recorder()  # the last step, when the run length is not a multiple of log_interval
    if bar is not None:
        bar.close()
    summary = md_summary(settings, len(atoms), recorder, dynamics.nsteps, time.perf_counter() - t_start, label, metadata)
    write_json_atomic(summary, out_dir / "summary.json")
    return summary


def monitor_from_statistics(statistics, ensemble: str, temperature_K: float, settings: MonitorSettings | None = None, reference_atoms=None, structure_check=None) -> FailureMonitor:
    """A FailureMonitor with the training-data thresholds; bonds of ``reference_atoms`` for the bond check."""
    bonds = None
    if reference_atoms is not None and settings is not None and settings.check_bond_length:
        from ase.neighborlist import natural_cutoffs, neighbor_list as ase_neighbor_list

        i, j, d = ase_neighbor_list("ijd", reference_atoms, natural_cutoffs(reference_atoms))
        bonds = [(int(a), int(b), float(x)) for a, b, x in zip(i, j, d) if a < b]
    return FailureMonitor(statistics, ensemble, temperature_K, settings, reference_bonds=bonds, structure_check=structure_check)
