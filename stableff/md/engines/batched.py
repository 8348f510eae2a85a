"""The ``batched`` engine: many MD replicas advanced together, one batched model call per step for
every replica of every start structure (the default engine of ``stableff stability`` and the study).

The integrators are :mod:`stableff.md.integrators`' functions of the whole state; the model is seen
through :class:`~stableff.md.engines.replica_batch.ReplicaBatch`. Every replica has its own failure
monitor, checked every ``log_interval`` steps by the same
:class:`~stableff.md.records.FrameRecorder` as the ASE engine, which also writes the same files
(trajectory.extxyz, thermo.csv, summary.json). A replica that fails leaves the batch (unless
``keep_going``) and the others go on; a replica whose positions are no longer finite is left out
of the model call (its forces are NaN) until its next check records the failure.

Where a committee watches the runs (:mod:`stableff.md.committee`), its other members evaluate every
replica of the batch at each check in one call per member, and each replica records their force
disagreement with the driving model.

Each replica draws from its own random stream, but its trajectory is equal to the one it has alone
only to float rounding: the model's sums over a batch round differently when other replicas share it
(about 1e-6 after a step in float32), and MD amplifies that. Outcomes are the same in distribution,
not run by run.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stableff.data.neighbors import SKIN_A
from stableff.errors import StableFFError
from stableff.md import integrators
from stableff.md.engines.replica_batch import ReplicaBatch
from stableff.md.monitors import monitor_from_statistics
from stableff.md.records import constrained_forces, FrameRecorder, md_summary, open_run_files, reopen_run_files, write_summary
from stableff.md.settings import MDSettings
from stableff.md.state_file import CHECKPOINT_RECORDS, remove_state, save_state

#: atoms per model call on CPU: one thread per process is fastest with small calls (96-atom HfO2:
#: 17.0, 15.5, 14.1, 13.0 replica-steps/s with 1, 2, 4, 8 replicas per call), while molecules of a
#: few atoms gain from sharing a call (benchmarks/replica_throughput.py); on a GPU: every replica
CPU_BATCH_ATOMS = 160


@dataclasses.dataclass
class BatchedReplica:
    """One replica of a batch: its start, settings (the seed is its own), monitor and folder."""

    atoms: object  # ase.Atoms, the start structure
    settings: MDSettings
    out_dir: str
    monitor: object = None  # FailureMonitor or None
    label: str = ""
    metadata: dict | None = None
    resume: dict | None = None  # the state of an interrupted run (state_file.read_state), to continue from


def _shared_settings(settings: list[MDSettings]) -> MDSettings:
    for s in settings[1:]:
        if not settings[0].same_run(s):
            raise StableFFError("replicas of one batch must share their MD settings (all but the seed)")
    return settings[0]


def run_batched(model, replicas: list[BatchedReplica], skin_A: float = SKIN_A, progress: bool = True, device: str = "cpu", committee=None) -> list[dict]:
    """Run every replica to its end or its failure in one batch; returns their summaries (in order)
    and writes each replica's trajectory.extxyz, thermo.csv and summary.json.

    Every ``CHECKPOINT_RECORDS`` failure checks each running replica saves its state (positions,
    momenta, random-stream and thermostat state, monitor, file lengths) to ``state.pt`` in its folder;
    a replica given that state as ``resume`` continues from it, so an interrupted batch loses at most
    the steps since its last state. Replicas of one batch resume from the same step. ``committee``
    (:class:`stableff.md.committee.Committee`, ``model`` its first member): every replica records
    the committee's force disagreement at each check."""
    from ase.constraints import FixCom

    if not replicas:
        return []
    settings = _shared_settings([r.settings for r in replicas])
    settings.validate()
    first_step = {r.resume["step"] if r.resume else 0 for r in replicas}
    if len(first_step) != 1:
        raise StableFFError("replicas of one batch must resume from the same step")
    first_step = first_step.pop()
    model = model.to(device).eval()
    systems, momenta, masses, recorders, files = [], [], [], [], []
    for r in replicas:
        atoms = r.atoms.copy()
        atoms.calc = None
        if r.resume is None:
            integrators.initialise_velocities(atoms, settings.temperature_K, r.settings.seed)
        else:
            atoms.positions = r.resume["positions"]
            atoms.set_momenta(r.resume["momenta"], apply_constraint=False)
        if settings.ensemble == "langevin":
            atoms.set_constraint(FixCom())  # as the ASE engine: temperature over 3N - 3 degrees of freedom
        systems.append(atoms)
        momenta.append(atoms.get_momenta())
        masses.append(atoms.get_masses())
        if r.resume is None:
            thermo, trajectory = open_run_files(Path(r.out_dir), committee)
        else:
            thermo, trajectory = reopen_run_files(Path(r.out_dir), r.resume["thermo_bytes"], r.resume["trajectory_bytes"])
        files.append((thermo, trajectory))
        recorder = FrameRecorder(settings, r.resume["monitor"] if r.resume else r.monitor, thermo, trajectory, committee=committee)
        if r.resume:
            recorder.resume(r.resume)
        recorders.append(recorder)
    dev = torch.device(device)
    q = torch.as_tensor(np.concatenate([a.positions for a in systems]), dtype=torch.float64, device=dev)
    p = torch.as_tensor(np.concatenate(momenta), dtype=torch.float64, device=dev)
    m = torch.as_tensor(np.concatenate(masses), dtype=torch.float64, device=dev)[:, None]
    t_start = time.perf_counter()
    batch = ReplicaBatch(model, systems, skin_A, dev)
    members = None
    if committee is not None:
        from stableff.md.committee import CommitteeBatch

        members = CommitteeBatch(committee, systems, skin_A, dev)
    for b, r in enumerate(replicas):
        if r.resume is not None and r.resume.get("list_reference") is not None:
            batch.restore_list(b, torch.as_tensor(r.resume["list_reference"], dtype=torch.float64))
    with np.errstate(all="ignore"):
        state = integrators.init_state(q, p, m, batch.counts, settings, batch.energy_forces, [r.settings.seed for r in replicas],
                                       rng_states=[r.resume["rng"] if r.resume else None for r in replicas],
                                       chain_momenta=[r.resume.get("chain_momenta") if r.resume else None for r in replicas])
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
        write_summary(summary, r.out_dir)
        remove_state(r.out_dir)
        summaries[k] = summary

    def save_states(step: int) -> None:
        q_all, p_all = state.positions.cpu().numpy(), state.momenta.cpu().numpy()
        reference = batch.reference.cpu().numpy()
        for row, k in enumerate(active):
            start, n = batch.offsets[row], batch.counts[row]
            thermo, trajectory = files[k]
            save_state({
                **recorders[k].state(), "step": step,
                "positions": q_all[start:start + n].copy(), "momenta": p_all[start:start + n].copy(),
                "list_reference": reference[start:start + n].copy(),
                "rng": state.rngs[row].bit_generator.state,
                "chain_momenta": state.chain_momenta[row].cpu().numpy() if state.chain_momenta is not None else None,
                "monitor": recorders[k].monitor, "thermo_bytes": thermo.tell(), "trajectory_bytes": trajectory.tell(),
                "metadata": replicas[k].metadata,
            }, replicas[k].out_dir)

    def record(step: int):
        q_all = state.positions.cpu().numpy()
        p_all = state.momenta.cpu().numpy()
        f_all = state.forces.cpu().numpy()
        e_all = state.energy.cpu().numpy()
        spread = members.disagreement(state.positions, state.forces, batch.atom_replica, batch.num_structures) if members is not None else [None] * len(active)
        keep = []
        for row, k in enumerate(active):
            start, n = batch.offsets[row], batch.counts[row]
            atoms = systems[k]
            atoms.arrays["positions"][:] = q_all[start:start + n]
            atoms.arrays["momenta"] = p_all[start:start + n].copy()
            recorders[k].record(step, atoms, float(e_all[row]), constrained_forces(atoms, f_all[start:start + n].copy()), spread[row])
            keep.append(not recorders[k].stop)
            if recorders[k].stop:
                finish(k, step)
        if all(keep):
            return state
        batch.keep(keep)
        if members is not None:
            members.keep(keep)
        active[:] = [k for k, kept in zip(active, keep) if kept]
        return integrators.select_replicas(state, keep)

    try:
        with np.errstate(all="ignore"):
            step = first_step
            if first_step == 0:
                state = record(0)
            while active and step < settings.steps:
                state = integrators.step(state, settings, batch.energy_forces)
                step += 1
                if step % settings.log_interval == 0 or step == settings.steps:
                    state = record(step)
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


def _chunks(members: list[int], sizes: list[int], max_atoms: int | None) -> list[list[int]]:
    """Consecutive runs of ``members`` with at most ``max_atoms`` atoms (at least one member each)."""
    if max_atoms is None:
        return [members]
    chunks, current, atoms = [], [], 0
    for k in members:
        if current and atoms + sizes[k] > max_atoms:
            chunks.append(current)
            current, atoms = [], 0
        current.append(k)
        atoms += sizes[k]
    return chunks + ([current] if current else [])


def run_tasks(tasks: list, identities: list[dict], progress: bool = True, states: list | None = None) -> list[dict]:
    """Run replica tasks (:class:`stableff.md.replicas.ReplicaTask`) with the batched engine in this
    process, each into the folder of its identity: one batch per model, device, MD settings (all but
    the seed) and step to resume from (``states``: saved states of interrupted replicas, or None);
    on CPU, batches of at most ``CPU_BATCH_ATOMS`` atoms one after the other. Results in the order
    of ``tasks``."""
    from stableff.models.saved import checkpoint_statistics, model_from_checkpoint

    states = states or [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}
    for k, task in enumerate(tasks):
        step = states[k]["step"] if states[k] is not None else 0
        key = (task.model_path, task.device, task.compile, repr(task.settings.shared_part()), repr(task.monitor_settings), step, task.committee, task.thresholds_from)
        groups.setdefault(key, []).append(k)
    results: dict[int, dict] = {}
    sizes = [len(task.atoms) for task in tasks]
    for (model_path, device, compile, _, _, _, committee, thresholds_from), members in groups.items():
        model, statistics = model_from_checkpoint(model_path, device=device, compile=compile)
        if thresholds_from is not None:
            statistics = checkpoint_statistics(thresholds_from)
        for chunk in _chunks(members, sizes, CPU_BATCH_ATOMS if torch.device(device).type == "cpu" else None):
            replicas = []
            for k in chunk:
                task = tasks[k]
                monitor = monitor_from_statistics(statistics, task.settings.ensemble, task.settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
                replicas.append(BatchedReplica(task.atoms, task.settings, identities[k]["path"], monitor, f"{task.start_label} #{task.replica}", identities[k], states[k]))
            for k, summary in zip(chunk, run_batched(model, replicas, progress=progress, device=device, committee=committee)):
                results[k] = summary
    return [results[k] for k in range(len(tasks))]
