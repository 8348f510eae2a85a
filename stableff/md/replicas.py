"""Replicas of MD with different velocity seeds, in parallel processes, resumable.

Every replica's summary.json carries the fingerprint of everything that determined it (the model's
content hash, the start structure, the MD and monitor settings, the reference of a structure check);
a finished replica is reused only when that fingerprint matches the new request. When it does not,
``run_replicas`` either stops with one message naming the folder and what differs, or (``fresh``)
runs the replica again.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import shutil
import threading
from pathlib import Path

import torch

from stableff.errors import StableFFError
from stableff.fingerprint import RESULT_FORMAT, atoms_hash, differences, file_hash
from stableff.io import read_json
from stableff.md.monitors import MonitorSettings
from stableff.md.run import DEFAULT_ENGINE, ENGINES, MDSettings


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


def replica_seed(seed: int, replica: int) -> int:
    """The velocity seed of replica ``replica`` (0, 1, ...) of a set started with ``seed`` (the one
    seed scheme: the same replicas get the same velocities whichever model runs them)."""
    return seed + replica


def start_label(spec: str, index: int = 0, prefix: str = "") -> str:
    """A folder-safe name of a start structure: file stem and frame, e.g. ``test_MD_600K_0``."""
    return f"{prefix}{Path(str(spec).split(':')[-1]).stem}_{index}"


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


def build_replica_tasks(model_path, starts, settings: MDSettings, replicas: int, monitor_settings: MonitorSettings, out_dir, device: str = "cpu", structure_check=None, engine: str = DEFAULT_ENGINE, compile: bool = False) -> list[ReplicaTask]:
    """One task per (start, replica): ``starts`` is a list of (label, ase.Atoms); replica r of every
    start runs with velocity seed ``replica_seed(settings.seed, r)``; everything else as ``settings``."""
    if replicas < 1:
        raise StableFFError(f"the number of replicas must be at least 1 (got {replicas})")
    if engine not in ENGINES:
        raise StableFFError(f"unknown MD engine '{engine}' (choose from {', '.join(ENGINES)})")
    tasks = []
    for label, atoms in starts:
        for r in range(replicas):
            replica_settings = dataclasses.replace(settings, seed=replica_seed(settings.seed, r))
            tasks.append(ReplicaTask(str(model_path), label, atoms, r, replica_settings, monitor_settings, str(out_dir), device, structure_check=structure_check, engine=engine, compile=compile))
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
        "monitor": dataclasses.asdict(task.monitor_settings),
        "structure_check": check.fingerprint() if check is not None else None,
    }


def run_replica(task: ReplicaTask, fingerprint: dict | None = None) -> dict:
    """Run one replica (in whatever process) and return its summary."""
    from stableff.md.calculator import StableFFCalculator
    from stableff.md.run import monitor_from_statistics, run_md

    torch.set_num_threads(task.threads)
    calculator = StableFFCalculator(task.model_path, device=task.device, compile=task.compile)
    monitor = monitor_from_statistics(calculator.statistics, task.settings.ensemble, task.settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
    identity = replica_identity(task, fingerprint)
    return run_md(task.atoms, calculator, task.settings, identity["path"], monitor, label=f"{task.start_label} #{task.replica}", metadata={**identity, "engine": "ase"})


def replica_identity(task: ReplicaTask, fingerprint: dict | None = None) -> dict:
    """What a replica's summary.json says of where it came from."""
    folder = replica_dir(task.out_dir, task.start_label, task.replica)
    return {"start": task.start_label, "replica": task.replica, "path": str(folder), "fingerprint": fingerprint or replica_fingerprint(task)}


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


def _run_batched_shard(packed) -> list[dict]:
    tasks, fingerprints, progress, states, threads = packed
    torch.set_num_threads(threads)
    return run_replicas_batched(tasks, fingerprints, progress, states)


def run_replicas_batched(tasks: list[ReplicaTask], fingerprints: list[dict], progress: bool = True, states: list | None = None) -> list[dict]:
    """Run tasks with the batched engine in this process: one batch per model, device, MD settings
    (all but the seed) and step to resume from (``states``: saved states of interrupted replicas,
    or None); on CPU, batches of at most ``CPU_BATCH_ATOMS`` atoms one after the other. Results in
    the order of ``tasks``."""
    from stableff.md.batched import CPU_BATCH_ATOMS, BatchedReplica, run_batched
    from stableff.md.run import monitor_from_statistics
    from stableff.models.saved import model_from_checkpoint

    states = states or [None] * len(tasks)
    groups: dict[tuple, list[int]] = {}
    for k, task in enumerate(tasks):
        step = states[k]["step"] if states[k] is not None else 0
        key = (task.model_path, task.device, task.compile, repr(dataclasses.replace(task.settings, seed=0, progress=False)), repr(task.monitor_settings), step)
        groups.setdefault(key, []).append(k)
    results: dict[int, dict] = {}
    sizes = [len(task.atoms) for task in tasks]
    for (model_path, device, compile, _, _, _), members in groups.items():
        model, statistics = model_from_checkpoint(model_path, device=device, compile=compile)
        for chunk in _chunks(members, sizes, CPU_BATCH_ATOMS if torch.device(device).type == "cpu" else None):
            replicas = []
            for k in chunk:
                task = tasks[k]
                monitor = monitor_from_statistics(statistics, task.settings.ensemble, task.settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
                identity = replica_identity(task, fingerprints[k])
                replicas.append(BatchedReplica(task.atoms, task.settings, identity["path"], monitor, f"{task.start_label} #{task.replica}", identity, states[k]))
            for k, summary in zip(chunk, run_batched(model, replicas, progress=progress, device=device)):
                results[k] = summary
    return [results[k] for k in range(len(tasks))]


def _run_packed(packed):
    return run_replica(*packed)


def _die_with_parent(parent_pid: int) -> None:
    """Worker initialiser: end this process when the parent dies (a killed ``stability`` leaves no
    orphans running MD): PR_SET_PDEATHSIG on Linux, and a watchdog thread everywhere. Also applies
    the command line's allocator settings (``stableff.runtime``)."""
    from stableff.runtime import tune_allocator

    tune_allocator()
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        import time

        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _worker_pool(processes: int):
    """A spawn pool whose workers die with this process: closed and joined after the work (so the
    workers release their semaphores), terminated on any error or interruption."""
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_die_with_parent, initargs=(os.getpid(),))
    try:
        yield pool
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


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
        stored = read_json(folder / "summary.json")
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
    from stableff.md.batched import read_state

    results, pending, fingerprints = plan_replicas(tasks, fresh, on_mismatch)
    resume: dict[int, dict] = {}
    for k in pending:  # an old result must never be mistaken for this run's, even if it is killed
        folder = replica_dir(tasks[k].out_dir, tasks[k].start_label, tasks[k].replica)
        state = read_state(folder, fingerprints[k]) if tasks[k].engine == "batched" and not fresh else None
        if state is not None:  # an interrupted batched replica with the same inputs: continue it
            resume[k] = state
        elif folder.exists():
            shutil.rmtree(folder)
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
        packed = [([tasks[k] for k in shard], [fingerprints[k] for k in shard], progress and i == 0, [resume.get(k) for k in shard], max(1, cores // len(shards)))
                  for i, shard in enumerate(shards)]
        if len(shards) == 1:
            outputs = [run_replicas_batched(*packed[0][:4])]
        else:
            with _worker_pool(len(shards)) as pool:
                outputs = pool.map(_run_batched_shard, packed)
        for shard, output in zip(shards, outputs):
            for k, summary in zip(shard, output):
                results[k] = summary
        pending = [k for k in pending if k not in set(batched)]
    bar = None
    if progress and pending:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="replicas", unit="run", leave=False)
    if workers == 1:
        for k in pending:
            tasks[k].settings.progress = progress
            results[k] = run_replica(tasks[k], fingerprints[k])
            if bar is not None:
                bar.update(1)
    elif pending:
        for k in pending:
            tasks[k].threads = max(1, cores // workers)
            tasks[k].settings.progress = False
        with _worker_pool(workers) as pool:
            for k, summary in zip(pending, pool.imap(_run_packed, [(tasks[k], fingerprints[k]) for k in pending])):
                results[k] = summary
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"last: {summary['start']} #{summary['replica']} {'failed (' + summary['reason'] + ')' if summary['failed'] else 'stable'}", refresh=False)
    if bar is not None:
        bar.close()
    return [results[k] for k in range(len(tasks))]
