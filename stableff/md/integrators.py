"""MD integrators as functions of a state: ``init_state(...) -> MDState`` and, for each ensemble,
``step(state, settings, evaluate) -> MDState`` (torch-sim's layout). They work on many replicas at
once, in float64 and ASE's units (eV, A, amu, ASE time); ``evaluate(positions) -> (energy [B],
forces [N, 3])`` is the model call. The loop that runs them, writes files and checks failures is
an engine's (:mod:`stableff.md.engines`).

* ``nve``: velocity Verlet;
* ``langevin``: BAOAB (half kick, half drift, Ornstein-Uhlenbeck step, half drift, half kick) with
  the centre-of-mass momentum of each replica removed after the random step, as the ASE engine's
  ``FixCom`` constraint does;
* ``bussi``: stochastic velocity rescaling (Bussi, Donadio, Parrinello 2007, eq. A7) of each
  replica before a velocity-Verlet step, with ASE's degrees of freedom (3N);
* ``nose-hoover``: a Nose-Hoover chain per replica (3 thermostats, fourth-order Suzuki-Yoshida
  splitting of the chain half-steps, masses Q_1 = 3 N kT tau^2, Q_k = kT tau^2), as ASE's.

Each replica draws from its own random stream (seeded as the ASE engine's thermostat), so its noise
does not depend on which other replicas share the state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np
import torch
from ase import units

from stableff.md.settings import MDSettings
from stableff.models.scatter import scatter_sum

#: Suzuki-Yoshida fourth-order weights of the Nose-Hoover chain half-step
SUZUKI_YOSHIDA = (1 / (2 - 2 ** (1 / 3)), -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))
CHAIN_LENGTH = 3
#: offset of a replica's thermostat stream from its velocity seed (both engines)
THERMOSTAT_SEED_OFFSET = 1_000_003

Evaluate = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


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


def thermostat_stream(seed: int) -> np.random.Generator:
    """The random stream of a replica's thermostat (the same in the ASE engine)."""
    return np.random.default_rng(seed + THERMOSTAT_SEED_OFFSET)


@dataclasses.dataclass
class MDState:
    """Positions, momenta (A, eV ASE-time / A) and masses [N, 1] (amu) of every atom of B replicas,
    the energy [B] (eV) and forces [N, 3] (eV/A) at those positions, which replica each atom
    belongs to, every replica's random stream and, for Nose-Hoover, its chain (masses, momenta [B, 3])."""

    positions: torch.Tensor
    momenta: torch.Tensor
    masses: torch.Tensor
    energy: torch.Tensor
    forces: torch.Tensor
    counts: list[int]
    rngs: list[np.random.Generator]
    chain_masses: torch.Tensor | None = None
    chain_momenta: torch.Tensor | None = None
    replica: torch.Tensor | None = None  # [N] replica of each atom (made from counts when None)

    def __post_init__(self):
        if self.replica is None:
            self.replica = torch.repeat_interleave(torch.arange(len(self.counts), device=self.positions.device),
                                                   torch.tensor(self.counts, dtype=torch.long, device=self.positions.device))

    def per_replica(self, values: torch.Tensor) -> torch.Tensor:
        """Sums over each replica's atoms."""
        return scatter_sum(values, self.replica, len(self.counts))

    def kinetic_energy(self, momenta: torch.Tensor | None = None) -> torch.Tensor:
        """Kinetic energy of each replica [B] (eV)."""
        p = self.momenta if momenta is None else momenta
        return 0.5 * self.per_replica((p * p / self.masses).sum(dim=1))


def init_state(positions, momenta, masses, counts: list[int], settings: MDSettings, evaluate: Evaluate, seeds: list[int],
               rng_states: list | None = None, chain_momenta: list | None = None) -> MDState:
    """The state at the start (or at a saved point: ``rng_states``, ``chain_momenta`` per replica,
    None where new), with the energy and forces of ``positions``."""
    rngs = [thermostat_stream(seed) for seed in seeds]
    for rng, saved in zip(rngs, rng_states or []):
        if saved is not None:
            rng.bit_generator.state = saved
    energy, forces = evaluate(positions)
    state = MDState(positions, momenta, masses, energy, forces, list(counts), rngs)
    if settings.ensemble == "nose-hoover":
        kT = units.kB * settings.temperature_K
        tau = settings.damping_fs * units.fs
        n = torch.tensor(counts, dtype=torch.float64, device=positions.device)
        state.chain_masses = torch.full((len(n), CHAIN_LENGTH), kT * tau**2, dtype=torch.float64, device=positions.device)
        state.chain_masses[:, 0] = 3 * n * kT * tau**2
        state.chain_momenta = torch.zeros_like(state.chain_masses)
        for b, saved in enumerate(chain_momenta or []):
            if saved is not None:
                state.chain_momenta[b] = torch.as_tensor(saved, dtype=torch.float64)
    return state


def select_replicas(state: MDState, keep: list[bool]) -> MDState:
    """The state of the replicas whose entry in ``keep`` is True."""
    device = state.positions.device
    atoms = torch.repeat_interleave(torch.tensor(keep, device=device), torch.tensor(state.counts, dtype=torch.long, device=device))
    rows = torch.tensor(keep, device=device)
    chain = {} if state.chain_masses is None else {"chain_masses": state.chain_masses[rows], "chain_momenta": state.chain_momenta[rows]}
    return MDState(state.positions[atoms], state.momenta[atoms], state.masses[atoms], state.energy[rows], state.forces[atoms],
                   [n for n, k in zip(state.counts, keep) if k], [r for r, k in zip(state.rngs, keep) if k], **chain)


def _timestep(settings: MDSettings) -> float:
    return settings.timestep_fs * units.fs


def velocity_verlet(state: MDState, settings: MDSettings, evaluate: Evaluate) -> MDState:
    """Half kick, drift, model call, half kick (NVE)."""
    dt = _timestep(settings)
    p = state.momenta + 0.5 * dt * state.forces
    q = state.positions + dt * p / state.masses
    energy, forces = evaluate(q)
    p = p + 0.5 * dt * forces
    return dataclasses.replace(state, positions=q, momenta=p, energy=energy, forces=forces)


def _noise(state: MDState) -> torch.Tensor:
    draws = [rng.standard_normal((n, 3)) for rng, n in zip(state.rngs, state.counts)]
    return torch.as_tensor(np.concatenate(draws), device=state.positions.device)


def langevin_baoab(state: MDState, settings: MDSettings, evaluate: Evaluate) -> MDState:
    """BAOAB Langevin step with the centre-of-mass momentum of each replica kept at zero."""
    dt = _timestep(settings)
    kT = units.kB * settings.temperature_K
    friction = settings.friction_per_fs / units.fs
    c1 = math.exp(-friction * dt)
    masses = state.masses
    p = state.momenta + 0.5 * dt * state.forces
    q = state.positions + 0.5 * dt * p / masses
    p = c1 * p + torch.sqrt((1 - c1 * c1) * masses * kT) * _noise(state)
    # zero total momentum per replica (the ASE engine's FixCom)
    total = state.per_replica(p)
    mass = state.per_replica(masses)
    p = p - masses * (total / mass)[state.replica]
    q = q + 0.5 * dt * p / masses
    energy, forces = evaluate(q)
    p = p + 0.5 * dt * forces
    return dataclasses.replace(state, positions=q, momenta=p, energy=energy, forces=forces)


def bussi(state: MDState, settings: MDSettings, evaluate: Evaluate) -> MDState:
    """Stochastic velocity rescaling of each replica, then a velocity-Verlet step."""
    dt = _timestep(settings)
    kT = units.kB * settings.temperature_K
    c = math.exp(-dt / (settings.damping_fs * units.fs))
    kinetic = state.kinetic_energy().cpu().numpy()
    alpha = np.ones(len(kinetic))
    for b, (rng, n) in enumerate(zip(state.rngs, state.counts)):
        ndof = 3 * n
        target = 0.5 * kT * ndof
        term = (1 - c) * target / kinetic[b] / ndof if kinetic[b] > 0 else 0.0
        r1 = rng.standard_normal()
        rest = 2.0 * rng.standard_gamma(0.5 * (ndof - 1))
        alpha[b] = math.sqrt(max(c + term * (rest + r1 * r1) + 2 * r1 * math.sqrt(c * term), 0.0))
    factor = torch.as_tensor(alpha, device=state.positions.device)[state.replica]
    return velocity_verlet(dataclasses.replace(state, momenta=state.momenta * factor[:, None]), settings, evaluate)


def _chain_half_step(state: MDState, kT: float, delta: float) -> MDState:
    """exp(i L_NHC delta) for every replica's chain (Martyna-Tuckerman-Klein)."""
    n = torch.tensor(state.counts, dtype=torch.float64, device=state.positions.device)
    Q, pe = state.chain_masses, state.chain_momenta.clone()
    p = state.momenta
    M = CHAIN_LENGTH
    for weight in SUZUKI_YOSHIDA:
        d = weight * delta
        d2, d4 = d / 2, d / 4

        def update(j):
            if j < M - 1:
                pe[:, j] *= torch.exp(-d4 * pe[:, j + 1] / Q[:, j + 1])
            if j == 0:
                g = 2 * state.kinetic_energy(p) - 3 * n * kT
            else:
                g = pe[:, j - 1] ** 2 / Q[:, j - 1] - kT
            pe[:, j] += d2 * g
            if j < M - 1:
                pe[:, j] *= torch.exp(-d4 * pe[:, j + 1] / Q[:, j + 1])

        for j in reversed(range(M)):
            update(j)
        p = p * torch.exp(-d * pe[:, 0] / Q[:, 0])[state.replica][:, None]
        for j in range(M):
            update(j)
    return dataclasses.replace(state, momenta=p, chain_momenta=pe)


def nose_hoover_chain(state: MDState, settings: MDSettings, evaluate: Evaluate) -> MDState:
    """Chain half step, velocity-Verlet step, chain half step."""
    kT = units.kB * settings.temperature_K
    half = 0.5 * _timestep(settings)
    state = _chain_half_step(state, kT, half)
    state = velocity_verlet(state, settings, evaluate)
    return _chain_half_step(state, kT, half)


#: the step function of every ensemble (keys: :data:`stableff.md.settings.ENSEMBLES`)
INTEGRATORS = {"nve": velocity_verlet, "langevin": langevin_baoab, "bussi": bussi, "nose-hoover": nose_hoover_chain}


def step(state: MDState, settings: MDSettings, evaluate: Evaluate) -> MDState:
    """One MD step of ``settings.ensemble`` for every replica of ``state``."""
    return INTEGRATORS[settings.ensemble](state, settings, evaluate)
