"""The vocabulary every MD engine shares: ensembles, engines, the settings of one run.

Nothing here runs MD; the engines (:mod:`stableff.md.engines`) import it.
"""

from __future__ import annotations

import dataclasses

from stableff.errors import StableFFError

#: the ensembles stableff runs (the one list: CLI choices, study plans, settings and the integrator
#: registry of :mod:`stableff.md.integrators` use it)
ENSEMBLES = ("nve", "langevin", "nose-hoover", "bussi")

#: the engines of replica runs: ``batched`` advances all replicas of a model together, one batched
#: model call per step (stableff.md.engines.batched); ``ase`` runs one replica per process with
#: ASE's integrators (stableff.md.engines.ase); ``lammps`` runs each replica in LAMMPS on one or more
#: MPI ranks through pair_style stableff (stableff.md.engines.lammps, the ``lammps`` extra)
ENGINES = ("batched", "ase", "lammps")
#: the faster of the two on CPU and on GPU (benchmarks/replica_throughput.py)
DEFAULT_ENGINE = "batched"


def steps_for_time(time_ps: float, timestep_fs: float) -> int:
    """Number of MD steps covering ``time_ps`` with a ``timestep_fs`` step (at least 1)."""
    return max(1, int(round(time_ps * 1000.0 / timestep_fs)))


@dataclasses.dataclass
class MDSettings:
    """One MD run: ensemble, thermostat, step and run length, seed, and how often it is recorded."""

    ensemble: str = "langevin"  # nve | langevin | nose-hoover | bussi
    temperature_K: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 2000
    friction_per_fs: float = 0.01  # Langevin
    damping_fs: float = 100.0  # Nose-Hoover chain tdamp, Bussi taut
    seed: int = 0
    log_interval: int = 10  # steps between thermo rows and failure checks
    traj_interval: int = 20  # steps between trajectory frames (a multiple of log_interval)
    keep_going: bool = False  # record failures but run to the end
    progress: bool = True

    def validate(self) -> None:
        if self.ensemble not in ENSEMBLES:
            raise StableFFError(f"unknown ensemble '{self.ensemble}' (choose from {', '.join(ENSEMBLES)})")
        for name in ("timestep_fs", "steps", "log_interval", "traj_interval", "friction_per_fs", "damping_fs"):
            value = getattr(self, name)
            if not value > 0:  # also refuses NaN
                raise StableFFError(f"{name} must be positive (got {value})")
        if self.traj_interval % self.log_interval:
            raise StableFFError(f"traj_interval (--traj-interval, {self.traj_interval} steps) must be a multiple of log_interval (--log-interval, {self.log_interval} steps): "
                                f"frames are written where the failure checks are (for a frame every {self.traj_interval} steps set log_interval "
                                f"to {self.traj_interval} or a divisor of it)")
        if self.temperature_K < 0:
            raise StableFFError(f"temperature must be >= 0 K (got {self.temperature_K})")

    @property
    def length_ps(self) -> float:
        return self.steps * self.timestep_fs / 1000.0

    def shared_part(self) -> "MDSettings":
        """These settings without what differs between replicas of one run (seed, progress display)."""
        return dataclasses.replace(self, seed=0, progress=False)

    def same_run(self, other: "MDSettings") -> bool:
        """True when ``other`` differs at most in its seed and progress display (replicas of one run)."""
        return self.shared_part() == other.shared_part()
