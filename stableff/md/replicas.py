"""Replicas of MD with different velocity seeds, in parallel processes, resumable: a replica whose
summary.json exists is not run again."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from stableff.md.monitors import MonitorSettings
from stableff.md.run import MDSettings


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


def replica_dir(out_dir, start_label: str, replica: int) -> Path:
    return Path(out_dir) / start_label / f"replica_{replica:03d}"


def run_replica(task: ReplicaTask) -> dict:
    """Run one replica (in whatever process) and return its summary."""
    from stableff.md.calculator import StableFFCalculator
    from stableff.md.run import monitor_from_statistics, run_md

    torch.set_num_threads(task.threads)
    calculator = StableFFCalculator(task.model_path, device=task.device)
    monitor = monitor_from_statistics(calculator.statistics, task.settings.ensemble, task.settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
    folder = replica_dir(task.out_dir, task.start_label, task.replica)
    identity = {"start": task.start_label, "replica": task.replica, "path": str(folder)}
    return run_md(task.atoms, calculator, task.settings, folder, monitor, label=f"{task.start_label} #{task.replica}", metadata=identity)


def run_replicas(tasks: list[ReplicaTask], workers: int | None = None, progress: bool = True) -> list[dict]:
    """Run every task not finished before; finished ones are read back. Order of results = tasks."""
    results: dict[int, dict] = {}
    pending = []
    for k, task in enumerate(tasks):
        done = replica_dir(task.out_dir, task.start_label, task.replica) / "summary.json"
        if done.is_file():
            summary = json.loads(done.read_text())
            if "replica" in summary:
                results[k] = summary
                continue
        pending.append(k)
    cores = os.cpu_count() or 1
    workers = max(1, min(workers or cores, len(pending) or 1, cores))
    if progress and len(tasks) - len(pending):
        print(f"{len(tasks) - len(pending)} of {len(tasks)} replicas already finished; running {len(pending)}", flush=True)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(pending), desc="replicas", unit="run", leave=False)
    if workers == 1:
        for k in pending:
            tasks[k].settings.progress = progress
            results[k] = run_replica(tasks[k])
            if bar is not None:
                bar.update(1)
    else:
        import multiprocessing

        for k in pending:
            tasks[k].threads = max(1, cores // workers)
            tasks[k].settings.progress = False
        pool = multiprocessing.get_context("spawn").Pool(workers)
        try:
            for k, summary in zip(pending, pool.imap(run_replica, [tasks[k] for k in pending])):
                results[k] = summary
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"last: {summary['start']} #{summary['replica']} {'failed (' + summary['reason'] + ')' if summary['failed'] else 'stable'}", refresh=False)
            pool.close()  # close + join (not terminate) so the workers release their semaphores
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    if bar is not None:
        bar.close()
    return [results[k] for k in range(len(tasks))]
