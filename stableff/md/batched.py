"""Many MD replicas advanced together: one batched model call per step for every replica of every
start structure (the ``batched`` engine of ``stableff stability`` and the study).

The integrators work on the whole batch in torch, in float64 and ASE's units (eV, A, amu, ASE time):

* ``nve``: velocity Verlet;
* ``langevin``: BAOAB (half kick, half drift, Ornstein-Uhlenbeck step, half drift, half kick) with
  the centre-of-mass momentum of each replica removed after the random step, as the ASE engine's
  ``FixCom`` constraint does;
* ``bussi``: stochastic velocity rescaling (Bussi, Donadio, Parrinello 2007, eq. A7) of each
  replica before a velocity-Verlet step, with ASE's degrees of freedom (3N);
* ``nose-hoover``: a Nose-Hoover chain per replica (3 thermostats, fourth-order Suzuki-Yoshida
  splitting of the chain half-steps, masses Q_1 = 3 N kT tau^2, Q_k = kT tau^2), as ASE's.

Each replica keeps its own random stream (seeded as in the ASE engine), so its trajectory does not
depend on which other replicas share the batch. Neighbour lists are built per replica with a skin
and rebuilt only for a replica one of whose atoms moved more than half the skin since the last
build; the edges handed to the model are those within the model's cutoff, as the calculator's.

Every replica has its own failure monitor, checked every ``log_interval`` steps by the same
:class:`~stableff.md.run.FrameRecorder` as the ASE engine, which also writes the same files
(trajectory.extxyz, thermo.csv, summary.json). A replica that fails leaves the batch (unless
``keep_going``) and the others go on; a replica whose positions are no longer finite is left out
of the model call (its forces are NaN) until its next check records the failure.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import units

from stableff.data import keys
from stableff.data.graph import species_index
from stableff.data.neighbors import SKIN_A, neighbor_list
from stableff.errors import StableFFError
from stableff.io import write_json_atomic
from stableff.md.run import ENSEMBLES, FrameRecorder, MDSettings, initialise_velocities, md_summary, open_run_files

#: atoms per model call on CPU: one thread per process is fastest with small calls (96-atom HfO2:
#: 17.0, 15.5, 14.1, 13.0 replica-steps/s with 1, 2, 4, 8 replicas per call), while molecules of a
#: few atoms gain from sharing a call (benchmarks/replica_throughput.py); on a GPU: every replica
CPU_BATCH_ATOMS = 160


#: Suzuki-Yoshida fourth-order weights of the Nose-Hoover chain half-step
_SUZUKI_YOSHIDA = (1 / (2 - 2 ** (1 / 3)), -(2 ** (1 / 3)) / (2 - 2 ** (1 / 3)), 1 / (2 - 2 ** (1 / 3)))
_CHAIN_LENGTH = 3


def _segment_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.zeros((size,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


class ReplicaBatch:
    """The model's energies and forces for a batch of structures, with skin neighbour lists.

    ``systems``: ase.Atoms (numbers, cell, pbc; positions are passed to :meth:`energy_forces`).
    """

    def __init__(self, model, systems, skin_A: float = SKIN_A, device: str | torch.device = "cpu"):
        if skin_A < 0:
            raise StableFFError(f"the neighbour-list skin must be >= 0 A (got {skin_A})")
        self.model, self.skin, self.device = model, float(skin_A), torch.device(device)
        self.cutoff = float(model.r_max)
        self.counts = [len(a) for a in systems]
        self.numbers = [np.asarray(a.numbers) for a in systems]
        self.species = [torch.as_tensor(species_index(a.numbers, model.type_numbers), device=self.device) for a in systems]
        self.cells = [np.asarray(a.cell.array, dtype=np.float64) for a in systems]
        self.pbc = [np.asarray(a.pbc, dtype=bool) for a in systems]
        self.lists: list[tuple | None] = [None] * len(systems)  # (edge_index [2, e], shifts [e, 3]) within cutoff + skin
        self.rebuilds = 0
        self._static()
        # positions at each replica's last build (NaN before the first)
        self.reference = torch.full((int(sum(self.counts)), 3), float("nan"), dtype=torch.float64, device=self.device)

    def _static(self) -> None:
        """Tensors that change only when the batch changes (a replica leaves)."""
        d = self.device
        self.num_structures = len(self.counts)
        counts = torch.tensor(self.counts, dtype=torch.long, device=d)
        self.atom_replica = torch.repeat_interleave(torch.arange(self.num_structures, device=d), counts)
        self.offsets = [0] + list(np.cumsum(self.counts)[:-1])
        self.species_all = torch.cat(self.species) if self.species else torch.zeros(0, dtype=torch.long, device=d)
        self.numbers_all = torch.as_tensor(np.concatenate(self.numbers) if self.numbers else np.zeros(0, int), device=d)
        self.cell_all = torch.as_tensor(np.stack(self.cells) if self.cells else np.zeros((0, 3, 3)), dtype=torch.float64, device=d)
        self.pbc_all = torch.as_tensor(np.stack(self.pbc) if self.pbc else np.zeros((0, 3), bool), device=d)
        self._edges = None
        self._edges_finite: list[bool] | None = None  # which structures the cached edges cover

    def keep(self, keep: list[bool]) -> torch.Tensor:
        """Drop the replicas whose entry is False; returns the atom mask of those kept."""
        atom_mask = torch.repeat_interleave(torch.tensor(keep, device=self.device), torch.tensor(self.counts, dtype=torch.long, device=self.device))
        for name in ("counts", "numbers", "species", "cells", "pbc", "lists"):
            setattr(self, name, [x for x, k in zip(getattr(self, name), keep) if k])
        self.reference = self.reference[atom_mask]
        self._static()
        return atom_mask

    def restore_list(self, b: int, reference: torch.Tensor) -> None:
        """Rebuild structure ``b``'s list from the positions of its last build (a resumed run gets
        the same list as the interrupted one)."""
        self._rebuild(b, reference.to(self.device))

    def _rebuild(self, b: int, positions: torch.Tensor) -> None:
        i, j, shifts = neighbor_list(positions.detach().cpu().numpy(), self.cells[b], self.pbc[b], self.cutoff + self.skin)
        self.lists[b] = (torch.as_tensor(np.stack([i, j]), device=self.device), torch.as_tensor(shifts, dtype=torch.float64, device=self.device))
        self.reference[self.offsets[b]:self.offsets[b] + self.counts[b]] = positions.detach()
        self.rebuilds += 1
        self._edges = None

    def _update_lists(self, positions: torch.Tensor, finite: torch.Tensor) -> None:
        # no list yet, or non-finite positions: infinite move (rebuilt below if the positions are finite)
        displacement = torch.nan_to_num(torch.linalg.norm(positions - self.reference, dim=1), nan=float("inf"))
        moved = torch.zeros((self.num_structures,), dtype=positions.dtype, device=positions.device)
        moved = moved.scatter_reduce(0, self.atom_replica, displacement, reduce="amax", include_self=True).cpu().numpy()
        finite = finite.cpu().numpy()
        for b in range(self.num_structures):
            if finite[b] and (self.lists[b] is None or not moved[b] <= 0.5 * self.skin):
                start = self.offsets[b]
                self._rebuild(b, positions[start:start + self.counts[b]])

    def _edge_tensors(self, finite) -> tuple[torch.Tensor, torch.Tensor]:
        if self._edges is None:
            index, shifts = [], []
            for b in range(self.num_structures):
                if self.lists[b] is not None and finite[b]:
                    index.append(self.lists[b][0] + self.offsets[b])
                    shifts.append(self.lists[b][1])
            if index:
                self._edges = (torch.cat(index, dim=1), torch.cat(shifts))
            else:
                self._edges = (torch.zeros((2, 0), dtype=torch.long, device=self.device), torch.zeros((0, 3), dtype=torch.float64, device=self.device))
        return self._edges

    def energy_forces(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Total energy per structure [B] (eV) and forces [N, 3] (eV/A), float64; NaN for a structure
        whose positions are not finite."""
        atom_finite = torch.isfinite(positions).all(dim=1)
        finite = _segment_sum((~atom_finite).long(), self.atom_replica, self.num_structures) == 0
        finite_list = finite.cpu().tolist()
        if self._edges is not None and self._edges_finite != finite_list:
            self._edges = None
        self._update_lists(positions, finite)
        self._edges_finite = finite_list
        edge_index, shifts = self._edge_tensors(finite_list)
        safe = torch.where(atom_finite[:, None], positions, torch.zeros_like(positions))
        centre, neighbour = edge_index
        vectors = safe[neighbour] - safe[centre] + torch.einsum("ei,eij->ej", shifts, self.cell_all[self.atom_replica[centre]])
        within = (vectors * vectors).sum(dim=1) < self.cutoff**2
        dtype = self.model.dtype
        batch = {
            keys.POSITIONS: safe.to(dtype),
            keys.SPECIES: self.species_all,
            keys.ATOMIC_NUMBERS: self.numbers_all,
            keys.CELL: self.cell_all.to(dtype),
            keys.PBC: self.pbc_all,
            keys.EDGE_INDEX: edge_index[:, within],
            keys.EDGE_CELL_SHIFT: shifts[within].to(dtype),
            keys.NUM_ATOMS: torch.tensor(self.counts, dtype=torch.long, device=self.device),
            keys.BATCH: self.atom_replica,
        }
        out = self.model(batch, compute_forces=True, compute_stress=False, create_graph=False)
        energy = out[keys.TOTAL_ENERGY].detach().double()
        forces = out[keys.FORCES].detach().double()
        if not all(finite_list):
            energy = torch.where(finite, energy, torch.full_like(energy, float("nan")))
            forces = torch.where(atom_finite[:, None], forces, torch.full_like(forces, float("nan")))
        return energy, forces


@dataclasses.dataclass
class BatchedReplica:
    """One replica of a batch: its start, settings (the seed is its own), monitor and folder."""

    atoms: object  # ase.Atoms, the start structure
    settings: MDSettings
    out_dir: str
    monitor: object = None  # FailureMonitor or None
    label: str = ""
    metadata: dict | None = None
    resume: dict | None = None  # the state of an interrupted run (read_state), to continue from


#: a replica's state file in its folder while it runs (removed when its summary is written)
STATE_FILE = "state.pt"
#: thermo rows (failure checks) between state files: every 100 steps at the default log interval
CHECKPOINT_RECORDS = 10


def read_state(out_dir, fingerprint: dict | None = None) -> dict | None:
    """The saved state of an interrupted replica in ``out_dir``, if there is one made from the same
    inputs (``fingerprint``; None accepts any)."""
    from stableff.fingerprint import differences

    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a state file cut short can only come from a crash while writing: start over
        return None
    if fingerprint is not None and differences((state.get("metadata") or {}).get("fingerprint"), fingerprint):
        return None
    return state


class _Steps:
    """What the recorder reads of the dynamics: the step count."""

    nsteps = 0


class BatchedIntegrator:
    """One ensemble's update of positions ``q`` and momenta ``p`` ([N, 3], float64, ASE units) for
    every replica of a :class:`ReplicaBatch` at once."""

    def __init__(self, batch: ReplicaBatch, settings: MDSettings, q, p, masses, seeds: list[int], chain_momenta: list | None = None, rng_states: list | None = None):
        self.batch, self.settings = batch, settings
        self.q, self.p, self.masses = q, p, masses  # masses [N, 1]
        self.dt = settings.timestep_fs * units.fs
        self.kT = units.kB * settings.temperature_K
        # the ASE engine's thermostat stream of each replica: default_rng(seed + 1_000_003)
        self.rngs = [np.random.default_rng(seed + 1_000_003) for seed in seeds]
        for rng, state in zip(self.rngs, rng_states or []):
            if state is not None:
                rng.bit_generator.state = state
        self.energy, self.forces = batch.energy_forces(q)
        self.evaluations = 1
        if settings.ensemble == "nose-hoover":
            tau = settings.damping_fs * units.fs
            n = torch.tensor(batch.counts, dtype=torch.float64, device=q.device)
            self.chain_Q = torch.full((len(n), _CHAIN_LENGTH), self.kT * tau**2, dtype=torch.float64, device=q.device)
            self.chain_Q[:, 0] = 3 * n * self.kT * tau**2
            self.chain_p = torch.zeros_like(self.chain_Q)
            for b, momenta in enumerate(chain_momenta or []):
                if momenta is not None:
                    self.chain_p[b] = torch.as_tensor(momenta, dtype=torch.float64)

    def keep(self, keep: list[bool]) -> None:
        atoms = self.batch.keep(keep)
        self.q, self.p, self.masses, self.forces = self.q[atoms], self.p[atoms], self.masses[atoms], self.forces[atoms]
        selected = torch.tensor(keep, device=self.q.device)
        self.energy = self.energy[selected]
        self.rngs = [r for r, k in zip(self.rngs, keep) if k]
        if hasattr(self, "chain_Q"):
            self.chain_Q, self.chain_p = self.chain_Q[selected], self.chain_p[selected]

    def _evaluate(self) -> None:
        self.energy, self.forces = self.batch.energy_forces(self.q)
        self.evaluations += 1

    def _per_replica(self, values: torch.Tensor) -> torch.Tensor:
        return _segment_sum(values, self.batch.atom_replica, self.batch.num_structures)

    def _kinetic(self) -> torch.Tensor:
        return 0.5 * self._per_replica((self.p * self.p / self.masses).sum(dim=1))

    def _noise(self) -> torch.Tensor:
        draws = [rng.standard_normal((n, 3)) for rng, n in zip(self.rngs, self.batch.counts)]
        return torch.as_tensor(np.concatenate(draws), device=self.q.device)

    def _verlet(self) -> None:
        self.p = self.p + 0.5 * self.dt * self.forces
        self.q = self.q + self.dt * self.p / self.masses
        self._evaluate()
        self.p = self.p + 0.5 * self.dt * self.forces

    def _langevin(self) -> None:
        friction = self.settings.friction_per_fs / units.fs
        c1 = math.exp(-friction * self.dt)
        self.p = self.p + 0.5 * self.dt * self.forces
        self.q = self.q + 0.5 * self.dt * self.p / self.masses
        self.p = c1 * self.p + torch.sqrt((1 - c1 * c1) * self.masses * self.kT) * self._noise()
        # zero total momentum per replica (the ASE engine's FixCom)
        replica = self.batch.atom_replica
        total = self._per_replica(self.p)
        mass = self._per_replica(self.masses)
        self.p = self.p - self.masses * (total / mass)[replica]
        self.q = self.q + 0.5 * self.dt * self.p / self.masses
        self._evaluate()
        self.p = self.p + 0.5 * self.dt * self.forces

    def _bussi_scale(self) -> None:
        c = math.exp(-self.dt / (self.settings.damping_fs * units.fs))
        kinetic = self._kinetic().cpu().numpy()
        alpha = np.ones(len(kinetic))
        for b, (rng, n) in enumerate(zip(self.rngs, self.batch.counts)):
            ndof = 3 * n
            target = 0.5 * self.kT * ndof
            term = (1 - c) * target / kinetic[b] / ndof if kinetic[b] > 0 else 0.0
            r1 = rng.standard_normal()
            rest = 2.0 * rng.standard_gamma(0.5 * (ndof - 1))
            alpha[b] = math.sqrt(max(c + term * (rest + r1 * r1) + 2 * r1 * math.sqrt(c * term), 0.0))
        factor = torch.as_tensor(alpha, device=self.q.device)[self.batch.atom_replica]
        self.p = self.p * factor[:, None]

    def _chain_half_step(self, delta: float) -> None:
        """exp(i L_NHC delta) for every replica's chain (Martyna-Tuckerman-Klein)."""
        n = torch.tensor(self.batch.counts, dtype=torch.float64, device=self.q.device)
        Q, pe = self.chain_Q, self.chain_p
        M = _CHAIN_LENGTH
        for weight in _SUZUKI_YOSHIDA:
            d = weight * delta
            d2, d4 = d / 2, d / 4

            def update(j, scale_p=None):
                if j < M - 1:
                    pe[:, j] *= torch.exp(-d4 * pe[:, j + 1] / Q[:, j + 1])
                if j == 0:
                    g = 2 * self._kinetic() - 3 * n * self.kT
                else:
                    g = pe[:, j - 1] ** 2 / Q[:, j - 1] - self.kT
                pe[:, j] += d2 * g
                if j < M - 1:
                    pe[:, j] *= torch.exp(-d4 * pe[:, j + 1] / Q[:, j + 1])

            for j in reversed(range(M)):
                update(j)
            self.p = self.p * torch.exp(-d * pe[:, 0] / Q[:, 0])[self.batch.atom_replica][:, None]
            for j in range(M):
                update(j)

    def step(self) -> None:
        ensemble = self.settings.ensemble
        if ensemble == "nve":
            self._verlet()
        elif ensemble == "langevin":
            self._langevin()
        elif ensemble == "bussi":
            self._bussi_scale()
            self._verlet()
        elif ensemble == "nose-hoover":
            self._chain_half_step(0.5 * self.dt)
            self._verlet()
            self._chain_half_step(0.5 * self.dt)
        else:  # pragma: no cover - MDSettings.validate rejects it first
            raise StableFFError(f"unknown ensemble '{ensemble}' (choose from {', '.join(ENSEMBLES)})")


def _same_run(settings: list[MDSettings]) -> MDSettings:
    first = dataclasses.replace(settings[0], seed=0, progress=False)
    for s in settings[1:]:
        if dataclasses.replace(s, seed=0, progress=False) != first:
            raise StableFFError("replicas of one batch must share their MD settings (all but the seed)")
    return settings[0]


def _open_files(out_dir: Path, resume: dict | None):
    """The run's thermo and trajectory files: new, or cut back to what the saved state had written."""
    if resume is None:
        return open_run_files(out_dir)
    handles = []
    for name, offset in (("thermo.csv", resume["thermo_bytes"]), ("trajectory.extxyz", resume["trajectory_bytes"])):
        handle = open(out_dir / name, "r+")
        handle.truncate(offset)
        handle.seek(offset)
        handles.append(handle)
    return tuple(handles)


def run_batched(model, replicas: list[BatchedReplica], skin_A: float = SKIN_A, progress: bool = True, device: str = "cpu") -> list[dict]:
    """Run every replica to its end or its failure in one batch; returns their summaries (in order)
    and writes each replica's trajectory.extxyz, thermo.csv and summary.json.

    Every ``CHECKPOINT_RECORDS`` failure checks each running replica saves its state (positions,
    momenta, random-stream and thermostat state, monitor, file lengths) to ``state.pt`` in its folder;
    a replica given that state as ``resume`` continues from it, so an interrupted batch loses at most
    the steps since its last state. Replicas of one batch resume from the same step."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom

    if not replicas:
        return []
    settings = _same_run([r.settings for r in replicas])
    settings.validate()
    first_step = {r.resume["step"] if r.resume else 0 for r in replicas}
    if len(first_step) != 1:
        raise StableFFError("replicas of one batch must resume from the same step")
    first_step = first_step.pop()
    model = model.to(device).eval()
    systems, momenta, masses, recorders, files, monitors = [], [], [], [], [], []
    counter = _Steps()
    counter.nsteps = first_step
    for r in replicas:
        atoms = r.atoms.copy()
        atoms.calc = None
        if r.resume is None:
            initialise_velocities(atoms, settings.temperature_K, r.settings.seed)
        else:
            atoms.positions = r.resume["positions"]
            atoms.set_momenta(r.resume["momenta"], apply_constraint=False)
        if settings.ensemble == "langevin":
            atoms.set_constraint(FixCom())  # as the ASE engine: temperature over 3N - 3 degrees of freedom
        systems.append(atoms)
        momenta.append(atoms.get_momenta())
        masses.append(atoms.get_masses())
        thermo, trajectory = _open_files(Path(r.out_dir), r.resume)
        files.append((thermo, trajectory))
        monitor = r.resume["monitor"] if r.resume else r.monitor
        monitors.append(monitor)
        recorder = FrameRecorder(counter, atoms, settings, monitor, thermo, trajectory, None)
        if r.resume:
            recorder.records, recorder.last_step = r.resume["records"], r.resume["step"]
            recorder.failure, recorder.failure_step = r.resume["failure"], r.resume["failure_step"]
        recorders.append(recorder)
    dev = torch.device(device)
    q = torch.as_tensor(np.concatenate([a.positions for a in systems]), dtype=torch.float64, device=dev)
    p = torch.as_tensor(np.concatenate(momenta), dtype=torch.float64, device=dev)
    m = torch.as_tensor(np.concatenate(masses), dtype=torch.float64, device=dev)[:, None]
    t_start = time.perf_counter()
    batch = ReplicaBatch(model, systems, skin_A, dev)
    for b, r in enumerate(replicas):
        if r.resume is not None and r.resume.get("list_reference") is not None:
            batch.restore_list(b, torch.as_tensor(r.resume["list_reference"], dtype=torch.float64))
    with np.errstate(all="ignore"):
        integrator = BatchedIntegrator(batch, settings, q, p, m, [r.settings.seed for r in replicas],
                                       chain_momenta=[r.resume.get("chain_momenta") if r.resume else None for r in replicas],
                                       rng_states=[r.resume["rng"] if r.resume else None for r in replicas])
    active = list(range(len(replicas)))  # replica index of each batch row
    summaries: list[dict | None] = [None] * len(replicas)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.steps, initial=first_step, desc=f"{len(replicas)} replicas (batched)", unit="step", file=sys.stderr, mininterval=0.5, leave=False)

    def finish(k: int, step: int) -> None:
        thermo, trajectory = files[k]
        thermo.close()
        trajectory.close()
        r = replicas[k]
        elapsed = time.perf_counter() - t_start
        done = max(step - first_step, 1)
        meta = {**(r.metadata or {}), "engine": "batched", "replicas_in_batch": len(replicas), "batch_ms_per_step": 1000 * elapsed / done}
        summary = md_summary(r.settings, len(r.atoms), recorders[k], step, elapsed / len(replicas) * step / done, r.label, meta)
        write_json_atomic(summary, Path(r.out_dir) / "summary.json")
        (Path(r.out_dir) / STATE_FILE).unlink(missing_ok=True)
        summaries[k] = summary

    def save_states(step: int) -> None:
        from stableff.io import save_torch_atomic

        q_all, p_all = integrator.q.cpu().numpy(), integrator.p.cpu().numpy()
        reference = batch.reference.cpu().numpy()
        for row, k in enumerate(active):
            start, n = batch.offsets[row], batch.counts[row]
            thermo, trajectory = files[k]
            state = {
                "step": step, "records": recorders[k].records, "failure": recorders[k].failure, "failure_step": recorders[k].failure_step,
                "positions": q_all[start:start + n].copy(), "momenta": p_all[start:start + n].copy(),
                "list_reference": reference[start:start + n].copy(),
                "rng": integrator.rngs[row].bit_generator.state,
                "chain_momenta": integrator.chain_p[row].cpu().numpy() if hasattr(integrator, "chain_p") else None,
                "monitor": monitors[k], "thermo_bytes": thermo.tell(), "trajectory_bytes": trajectory.tell(),
                "metadata": replicas[k].metadata,
            }
            save_torch_atomic(state, Path(replicas[k].out_dir) / STATE_FILE)

    def record(step: int) -> None:
        counter.nsteps = step
        q_all = integrator.q.cpu().numpy()
        p_all = integrator.p.cpu().numpy()
        f_all = integrator.forces.cpu().numpy()
        e_all = integrator.energy.cpu().numpy()
        keep = []
        for row, k in enumerate(active):
            start, n = batch.offsets[row], batch.counts[row]
            atoms = systems[k]
            atoms.arrays["positions"][:] = q_all[start:start + n]
            atoms.arrays["momenta"] = p_all[start:start + n].copy()
            atoms.calc = SinglePointCalculator(atoms, energy=float(e_all[row]), forces=f_all[start:start + n].copy())
            recorders[k]()
            keep.append(not recorders[k].stop)
            if recorders[k].stop:
                finish(k, step)
        if not all(keep):
            integrator.keep(keep)
            active[:] = [k for k, kept in zip(active, keep) if kept]

    try:
        with np.errstate(all="ignore"):
            step = first_step
            if first_step == 0:
                record(0)
            while active and step < settings.steps:
                integrator.step()
                step += 1
                if step % settings.log_interval == 0 or step == settings.steps:
                    record(step)
                    if active and step < settings.steps and (step // settings.log_interval) % CHECKPOINT_RECORDS == 0:
                        save_states(step)
                if bar is not None:
                    bar.update(1)
                    if step % settings.log_interval == 0:
                        failed = sum(1 for rec in recorders if rec.failure is not None)
                        bar.set_postfix_str(f"active {len(active)}/{len(replicas)}, failed {failed}, {1000 * (time.perf_counter() - t_start) / max(step - first_step, 1):.1f} ms/step", refresh=False)
            for k in active:
                finish(k, step)
    finally:
        for thermo, trajectory in files:
            thermo.close()
            trajectory.close()
        if bar is not None:
            bar.close()
    return summaries
