"""Molecular dynamics with ASE integrators, failure monitors, and files that survive interruption.

``run_md`` writes into its output folder:
  trajectory.extxyz  frames every ``traj_interval`` steps (each frame written and flushed whole);
  thermo.csv         time_ps, temperature_K, epot_eV, ekin_eV, etot_eV, max_force_eV_per_A, min_distance_A;
  summary.json       failed, time_to_failure_ps, reason, detail, steps, ms_per_step, ... (atomic).
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys
import time
from pathlib import Path

import numpy as np
from ase import units

from stableff.data.neighbors import neighbor_list
from stableff.md.monitors import FailureMonitor, FrameState, MonitorSettings
from stableff.train.checkpoint import write_json_atomic

ENSEMBLES = ("nve", "langevin", "nose-hoover", "bussi")


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


def _min_distance(atoms, cutoff: float) -> float:
    if len(atoms) < 2 or not np.all(np.isfinite(atoms.positions)):
        return float("nan")
    _, _, _, d = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff, with_distances=True)
    return float(d.min()) if len(d) else float("nan")


def _frame_text(atoms, energy, forces) -> str:
    from ase.calculators.singlepoint import SinglePointCalculator
    import ase.io

    snapshot = atoms.copy()
    snapshot.set_constraint()
    snapshot.calc = SinglePointCalculator(snapshot, energy=energy, forces=forces)
    buffer = io.StringIO()
    ase.io.write(buffer, snapshot, format="extxyz")
    return buffer.getvalue()


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
    traj_every = max(1, round(settings.traj_interval / settings.log_interval))
    n_chunks = math.ceil(settings.steps / settings.log_interval)
    min_distance_cutoff = 3.0
    failure, failure_time_ps, failure_step = None, None, None
    bar = None
    if settings.progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, desc=label or "MD", unit="step", file=sys.stderr, mininterval=0.5, leave=False)
    t_start = time.perf_counter()
    step = 0
    with open(out_dir / "thermo.csv", "w") as thermo, open(out_dir / "trajectory.extxyz", "w") as trajectory:
        thermo.write("time_ps,temperature_K,epot_eV,ekin_eV,etot_eV,max_force_eV_per_A,min_distance_A\n")
        for chunk in range(n_chunks + 1):
            if chunk > 0:
                n = min(settings.log_interval, settings.steps - step)
                with np.errstate(all="ignore"):
                    dynamics.run(n)
                step += n
                if bar is not None:
                    bar.update(n)
            with np.errstate(all="ignore"):
                forces = atoms.get_forces()
                epot = float(atoms.get_potential_energy())
                ekin = float(atoms.get_kinetic_energy())
                temperature = float(atoms.get_temperature())
            time_fs = step * settings.timestep_fs
            fmax = float(np.max(np.linalg.norm(forces, axis=1))) if np.all(np.isfinite(forces)) else float("nan")
            dmin = _min_distance(atoms, min_distance_cutoff)
            thermo.write(f"{time_fs / 1000:.6f},{temperature:.3f},{epot:.6f},{ekin:.6f},{epot + ekin:.6f},{fmax:.4f},{dmin:.4f}\n")
            thermo.flush()
            if chunk % traj_every == 0 and np.all(np.isfinite(atoms.positions)):
                trajectory.write(_frame_text(atoms, epot, forces))
                trajectory.flush()
            if bar is not None:
                elapsed = time.perf_counter() - t_start
                bar.set_postfix_str(f"t {time_fs / 1000:.3f} ps  T {temperature:.0f} K  {elapsed / max(step, 1) * 1000:.1f} ms/step", refresh=False)
            if monitor is not None and failure is None:
                state = FrameState(time_fs, atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, forces, epot, ekin, temperature)
                found = monitor.check(state)
                if found is not None:
                    failure, failure_time_ps, failure_step = found, time_fs / 1000.0, step
                    if not settings.keep_going:
                        break
            if step >= settings.steps:
                break
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - t_start
    summary = {
        "label": label,
        "ensemble": settings.ensemble,
        "temperature_K": settings.temperature_K,
        "timestep_fs": settings.timestep_fs,
        "seed": settings.seed,
        "n_atoms": len(atoms),
        "run_length_ps": settings.length_ps,
        "failed": failure is not None,
        "time_to_failure_ps": failure_time_ps if failure is not None else settings.length_ps,
        "failure_step": failure_step,
        "reason": failure.reason if failure is not None else None,
        "detail": failure.detail if failure is not None else None,
        "steps": step,
        "ms_per_step": 1000 * elapsed / max(step, 1),
        **(metadata or {}),
    }
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
