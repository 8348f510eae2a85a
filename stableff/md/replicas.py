"""Replicas of MD with different velocity seeds, in parallel processes, resumable.

Every replica's summary.json carries the fingerprint of everything that determined it (the model's
content hash, the start structure, the MD and monitor settings, the reference of a structure check);
a finished replica is reused only when that fingerprint matches the new request. When it does not,
``run_replicas`` either stops with one message naming the folder and what differs, or (``fresh``)
runs the replica again.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from pathlib import Path

import torch

from stableff.errors import StableFFError
from stableff.fingerprint import RESULT_FORMAT, atoms_hash, differences, file_hash
from stableff.io import read_json
from stableff.layout import MD_RUN_FILES, SUMMARY_FILE, check_deletable, remove_own_files
from stableff.md.monitors import MonitorSettings
from stableff.md.settings import DEFAULT_ENGINE, ENGINES, MDSettings
from stableff.md.supervision import errors_travel_whole


@dataclasses.dataclass
class ReplicaTask:
    model_path: str
    start_label: str
    atoms: object  # ase.Atoms
    replica: int
    settings: MDSettings
    monitor_settings: MonitorSettings
    out_dir: str
    device: str = "cpu"
    threads: int = 1
    structure_check: object = None  # optional reference-based check (see FailureMonitor)
    engine: str = DEFAULT_ENGINE
    compile: bool = False  # the model evaluated through torch.compile
    ranks: int = 1  # MPI ranks of one replica (the lammps engine)
    committee: object = None  # stableff.md.committee.Committee watching the run (model_path its first member), or None
    thresholds_from: str | None = None  # a checkpoint whose training data sets the failure thresholds (default: the model's own)


def replica_seed(seed: int, replica: int) -> int:
    """The velocity seed of replica ``replica`` (0, 1, ...) of a set started with ``seed`` (the one
    seed scheme: the same replicas get the same velocities whichever model runs them)."""
    return seed + replica


def start_label(spec: str, index: int = 0, prefix: str = "") -> str:
    """A folder-safe name of a start structure: file stem and frame, e.g. ``test_MD_600K_0``."""
    return f"{prefix}{Path(str(spec).split(':')[-1]).stem}_{index}"


def check_distinct_starts(starts, what: str = "start structure") -> None:
    """Refuse the same structure given twice (the same file, or a path and a link to it, at the same
    frame): its replicas would count as two independent starts. ``starts``: (spec, frame) pairs."""
    from stableff.data.io import resolve_path

    seen: dict = {}
    for spec, frame in starts:
        try:
            key = (resolve_path(spec).resolve(), frame)
        except (OSError, RuntimeError):
            continue  # unreadable paths get their own message from the reader
        if key in seen:
            raise StableFFError(f"{spec} (frame {frame}) is the same {what} as {seen[key]}: each start counts once "
                                "(for more runs from one start raise the number of replicas)")
        seen[key] = spec


def unique_start_labels(specs: list[str], index: int = 0) -> list[str]:
    """Labels for start files that stay distinct when two files share a name: ``start_0`` and, for
    ``a/start.xyz`` beside ``b/start.xyz``, ``a_start_0`` and ``b_start_0`` (then a counter)."""
    labels = [start_label(spec, index) for spec in specs]
    for label in set(labels):
        clashing = [k for k, x in enumerate(labels) if x == label]
        if len(clashing) < 2:
            continue
        for k in clashing:
            parent = Path(str(specs[k]).split(":")[-1]).resolve().parent.name
            labels[k] = f"{parent}_{labels[k]}"
    counts = collections.Counter(labels)
    used: dict[str, int] = {}
    for k, label in enumerate(labels):
        if counts[label] > 1:  # still the same (same folder name too): number them
            used[label] = used.get(label, 0) + 1
            labels[k] = f"{label}_{used[label]}"
    return labels


def build_replica_tasks(model_path, starts, settings: MDSettings, replicas: int, monitor_settings: MonitorSettings, out_dir, device: str = "cpu", structure_check=None, engine: str = DEFAULT_ENGINE, compile: bool = False, ranks: int = 1, committee=None, thresholds_from=None) -> list[ReplicaTask]:
    """One task per (start, replica): ``starts`` is a list of (label, ase.Atoms); replica r of every
    start runs with velocity seed ``replica_seed(settings.seed, r)``; everything else as ``settings``;
    ``committee`` (:class:`stableff.md.committee.Committee`) watches every run; ``thresholds_from``
    (a checkpoint): its training data, not the model's, sets the failure thresholds (models trained
    on growing data judged by one rule)."""
    if replicas < 1:
        raise StableFFError(f"the number of replicas must be at least 1 (got {replicas})")
    if engine not in ENGINES:
        raise StableFFError(f"unknown MD engine '{engine}' (choose from {', '.join(ENGINES)})")
    if ranks < 1 or (ranks > 1 and engine != "lammps"):
        raise StableFFError(f"--ranks {ranks}: MPI ranks are a setting of the lammps engine (at least 1)")
    if engine == "lammps" and (compile or torch.device(device).type != "cpu"):
        raise StableFFError("the lammps engine runs the exported model on the CPU, uncompiled: drop --compile / --device")
    if committee is not None and engine == "lammps":
        raise StableFFError("--committee: the committee is evaluated by the batched and ase engines (LAMMPS sees one model): use --engine batched or ase")
    if thresholds_from is not None and engine == "lammps":
        raise StableFFError("failure thresholds from another model's training data: the batched and ase engines")
    if committee is not None and Path(committee.members[0]) != Path(model_path):
        raise StableFFError(f"the committee's first member ({committee.members[0]}) must be the model that drives the runs ({model_path})")
    tasks = []
    for label, atoms in starts:
        for r in range(replicas):
            replica_settings = dataclasses.replace(settings, seed=replica_seed(settings.seed, r))
            tasks.append(ReplicaTask(str(model_path), label, atoms, r, replica_settings, monitor_settings, str(out_dir), device, structure_check=structure_check, engine=engine, compile=compile, ranks=ranks, committee=committee,
                                    thresholds_from=str(thresholds_from) if thresholds_from is not None else None))
    return tasks


def replica_dir(out_dir, start_label: str, replica: int) -> Path:
    return Path(out_dir) / start_label / f"replica_{replica:03d}"


def replica_fingerprint(task: ReplicaTask, model_hash: str | None = None) -> dict:
    """Everything that determines a replica's outcome."""
    md = {k: v for k, v in dataclasses.asdict(task.settings).items() if k != "progress"}
    check = task.structure_check
    return {
        "format": RESULT_FORMAT,
        "model": model_hash or file_hash(task.model_path),
        "start": atoms_hash(task.atoms),
        "md": md,
        "engine": task.engine,  # the engines draw different random numbers: same statistics, not the same runs
        "compiled": task.compile,  # compiled code rounds differently: the same physics, not the same trajectory
        **({} if task.device == "cpu" else {"device": task.device}),  # so does another device (absent: the CPU, as before)
        **({"ranks": task.ranks} if task.engine == "lammps" else {}),  # each rank draws its own thermostat noise
        "monitor": dataclasses.asdict(task.monitor_settings),
        "structure_check": check.fingerprint() if check is not None else None,
        **({"committee": task.committee.fingerprint()} if task.committee is not None else {}),  # absent: no committee, as before
        **({"thresholds_from": file_hash(task.thresholds_from)} if task.thresholds_from is not None else {}),
    }


def replica_identity(task: ReplicaTask, fingerprint: dict | None = None) -> dict:
    """What a replica's summary.json says of where it came from."""
    folder = replica_dir(task.out_dir, task.start_label, task.replica)
    return {"start": task.start_label, "replica": task.replica, "path": str(folder), "fingerprint": fingerprint or replica_fingerprint(task)}


def plan_replicas(tasks: list[ReplicaTask], fresh: bool = False, on_mismatch: str = "error") -> tuple[dict[int, dict], list[int], list[dict]]:
    """Decide, before any work, which replicas are reused: (finished results by task index, indices
    to run, fingerprints). A stored replica from other inputs raises StableFFError naming the folder
    and the differences, unless ``fresh`` or ``on_mismatch="recompute"``."""
    hashes: dict[str, str] = {}
    results, pending, fingerprints, stale = {}, [], [], []
    for k, task in enumerate(tasks):
        if task.model_path not in hashes:
            hashes[task.model_path] = file_hash(task.model_path)
        fingerprint = replica_fingerprint(task, hashes[task.model_path])
        fingerprints.append(fingerprint)
        folder = replica_dir(task.out_dir, task.start_label, task.replica)
        stored = read_json(folder / SUMMARY_FILE)
        if stored is not None and not fresh:
            changed = differences(stored.get("fingerprint"), fingerprint)
            if not changed:
                results[k] = stored
                continue
            stale.append((folder, changed))
        pending.append(k)
    if stale and not fresh and on_mismatch == "error":
        folder, changed = stale[0]
        more = f" (and {len(stale) - 1} more replica folders)" if len(stale) > 1 else ""
        raise StableFFError(
            f"{folder} holds a replica made from other inputs{more}: {'; '.join(changed[:4])}. "
            "Choose another --out, or pass --fresh to run these replicas again"
        )
    return results, pending, fingerprints


def run_replicas(tasks: list[ReplicaTask], workers: int | None = None, progress: bool = True, fresh: bool = False, on_mismatch: str = "error") -> list[dict]:
    """Run every task whose result is not stored with a matching fingerprint; matching ones are read
    back. Order of results = tasks. See :func:`plan_replicas` for ``fresh`` and ``on_mismatch``."""
    from stableff.md.engines import batched as batched_engine
    from stableff.md.state_file import read_state
    from stableff.md.supervision import worker_pool

    results, pending, fingerprints = plan_replicas(tasks, fresh, on_mismatch)
    identities = [replica_identity(task, fingerprint) for task, fingerprint in zip(tasks, fingerprints)]
    resume: dict[int, dict] = {}
    to_clear = []
    for k in pending:  # an old result must never be mistaken for this run's, even if it is killed
        folder = replica_dir(tasks[k].out_dir, tasks[k].start_label, tasks[k].replica)
        state = read_state(folder, fingerprints[k]) if tasks[k].engine == "batched" and not fresh else None
        if state is not None:  # an interrupted batched replica with the same inputs: continue it
            resume[k] = state
        elif folder.exists():
            to_clear.append(folder)
    check_deletable(to_clear)  # all or none: a folder that cannot be cleared stops the run before any is
    for folder in to_clear:  # only the files a replica writes: anything a user put there stays
        remove_own_files(folder, require_marker=False, patterns=MD_RUN_FILES)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(pending) or 1, cores))
    if progress and len(tasks) - len(pending):
        print(f"{len(tasks) - len(pending)} of {len(tasks)} replicas already finished with the same inputs; running {len(pending)}", flush=True)
    if progress and resume:
        steps = sorted({state["step"] for state in resume.values()})
        print(f"{len(resume)} interrupted replicas continue from their saved state (step {', '.join(map(str, steps))})", flush=True)
    batched = [k for k in pending if tasks[k].engine == "batched"]
    if batched:
        on_cpu = all(torch.device(tasks[k].device).type == "cpu" for k in batched)
        # on CPU one process per core (one thread each), every process batching its share; on a
        # GPU one process batching everything
        shards = [batched[i::workers] for i in range(workers)] if on_cpu and workers > 1 else [batched]
        shards = [shard for shard in shards if shard]
        packed = [([tasks[k] for k in shard], [identities[k] for k in shard], progress and i == 0, [resume.get(k) for k in shard], max(1, cores // len(shards)))
                  for i, shard in enumerate(shards)]
        if len(shards) == 1:
            outputs = [batched_engine.run_tasks(*packed[0][:4])]
        else:
            with worker_pool(len(shards)) as pool:
                outputs = pool.map(_run_batched_shard, packed)
        for shard, output in zip(shards, outputs):
            for k, summary in zip(shard, output):
                results[k] = summary
        pending = [k for k in pending if k not in set(batched)]
    in_lammps = [k for k in pending if tasks[k].engine == "lammps"]
    if in_lammps:
        from stableff.md.engines import lammps as lammps_engine

        lammps_engine.prepare([tasks[k] for k in in_lammps])
        # one LAMMPS process group per worker, each taking `ranks` cores and running its share in turn
        ranks = max(tasks[k].ranks for k in in_lammps)
        groups = max(1, min(workers, cores // ranks, len(in_lammps)))
        shards = [in_lammps[i::groups] for i in range(groups)]
        for shard in shards:
            for k in shard:
                tasks[k].threads = max(ranks, cores // groups)
        packed = [([tasks[k] for k in shard], [identities[k] for k in shard], progress and i == 0) for i, shard in enumerate(shards)]
        if len(shards) == 1:
            outputs = [lammps_engine.run_tasks(*packed[0])]
        else:
            with worker_pool(len(shards)) as pool:
                outputs = pool.map(_run_lammps_shard, packed)
        for shard, output in zip(shards, outputs):
            for k, summary in zip(shard, output):
                results[k] = summary
        pending = [k for k in pending if k not in set(in_lammps)]
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="replicas", unit="run", leave=False)
    if workers == 1:
        for k in pending:
            tasks[k].settings.progress = progress
            results[k] = engine_runner(tasks[k].engine)(tasks[k], identities[k])
            if bar is not None:
                bar.update(1)
    elif pending:
        for k in pending:
            tasks[k].threads = max(1, cores // workers)
            tasks[k].settings.progress = False
        with worker_pool(workers) as pool:
            for k, summary in zip(pending, pool.imap(_run_packed, [(tasks[k], identities[k]) for k in pending])):
                results[k] = summary
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"last: {summary['start']} #{summary['replica']} {'failed (' + summary['reason'] + ')' if summary['failed'] else 'stable'}", refresh=False)
    if bar is not None:
        bar.close()
    return [results[k] for k in range(len(tasks))]


@errors_travel_whole
def _run_batched_shard(packed) -> list[dict]:
    """A worker's share of the batched replicas (one thread per worker on CPU)."""
    from stableff.md.engines import batched as batched_engine

    tasks, identities, progress, states, threads = packed
    torch.set_num_threads(threads)
    return batched_engine.run_tasks(tasks, identities, progress, states)


@errors_travel_whole
def _run_lammps_shard(packed) -> list[dict]:
    from stableff.md.engines import lammps as lammps_engine

    return lammps_engine.run_tasks(*packed)


def engine_runner(engine: str):
    """``run_replica(task, identity) -> summary`` of a one-replica-per-process engine."""
    if engine == "lammps":
        from stableff.md.engines.lammps import run_replica
    else:
        from stableff.md.engines.ase import run_replica
    return run_replica


@errors_travel_whole
def _run_packed(packed):
    return engine_runner(packed[0].engine)(*packed)
