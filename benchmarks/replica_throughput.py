"""Replica-steps per second of stability screening: the batched engine (every replica in one model
call per step) against the ASE engine (one replica per process, ASE's Langevin), and against one
replica per model call, for 8 and 32 replicas of the 96-atom HfO2 cell.

    python benchmarks/replica_throughput.py [--replicas 8 32] [--steps 40] [--rounds 2] [--device cpu]

Both engines run the full path of `stableff stability`: bench-S NequIP (random weights, float32),
NVT Langevin at 1200 K with a 1 fs step, failure monitors and thermo/trajectory files every 10
steps (failures are recorded, the runs go on: keep_going). The engines alternate within each round;
the median over rounds is printed, with the ratio to the ASE engine and to one replica per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH_S, DEFAULT_DATA  # noqa: E402


def write_checkpoint(path: Path, data: str, dtype: str = "float32") -> "object":
    """A bench-S NequIP checkpoint with random weights and the statistics of the first frame."""
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.io import save_torch_atomic
    from stableff.models import build_model
    from stableff.models.saved import FORMAT

    frame = read_frames(data, index=0)[0]
    stats = compute_statistics([frame], BENCH_S["r_max"])
    torch.manual_seed(0)
    model = build_model("nequip", type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, energy_scale=0.05, **BENCH_S)
    save_torch_atomic({
        "format": FORMAT, "model_name": "nequip", "hyperparameters": model.hyperparameters, "type_numbers": model.type_numbers,
        "dtype": dtype, "statistics": stats.to_dict(), "model_state": model.state_dict(),
    }, path)
    atoms = frame.to_atoms()
    atoms.calc = None
    return atoms


def time_engine(engine: str, checkpoint: Path, atoms, replicas: int, steps: int, device: str, out: Path, per_call: bool = False) -> float:
    """Wall seconds for ``replicas`` replicas of ``steps`` steps (``per_call``: the batched engine fed
    one replica at a time)."""
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, run_replicas
    from stableff.md.settings import MDSettings

    settings = MDSettings(ensemble="langevin", temperature_K=1200, timestep_fs=1.0, steps=steps, keep_going=True, progress=False)
    tasks = build_replica_tasks(checkpoint, [("hfo2", atoms)], settings, replicas, MonitorSettings(), out, device, engine=engine)
    start = time.perf_counter()
    if per_call:
        for task in tasks:
            run_replicas([task], progress=False, fresh=True)
    else:
        run_replicas(tasks, progress=False, fresh=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--replicas", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--engines", nargs="+", default=["batched", "ase", "one-per-call"], choices=["batched", "ase", "one-per-call"])
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        atoms = write_checkpoint(tmp / "bench.ckpt", args.data)
        engines = [e for e in args.engines if not (e == "ase" and args.device != "cpu")]  # processes on one GPU: not a fair path
        times: dict[tuple[str, int], list[float]] = {}
        for round_ in range(args.rounds):
            for n in args.replicas:
                for engine in engines:
                    seconds = time_engine("batched" if engine == "one-per-call" else engine, tmp / "bench.ckpt", atoms, n, args.steps, args.device, tmp / f"{engine}_{n}", per_call=engine == "one-per-call")
                    times.setdefault((engine, n), []).append(seconds)
                    print(f"round {round_ + 1}: {engine:<13} {n:>3} replicas  {seconds:7.1f} s  ({n * args.steps / seconds:7.1f} replica-steps/s)", flush=True)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"\nbench-S NequIP (random weights, float32), {len(atoms)}-atom HfO2, Langevin 1200 K, 1 fs, {args.steps} steps, monitors and files; {device}")
    print(f"{'engine':<16}" + "".join(f"{f'{n} replicas':>26}" for n in args.replicas))
    results = {}
    for engine in engines:
        rates = {n: n * args.steps / statistics.median(times[(engine, n)]) for n in args.replicas}
        results[engine] = rates
        print(f"{engine:<16}" + "".join(f"{f'{rates[n]:.1f} replica-steps/s':>26}" for n in args.replicas))
    for reference in ("ase", "one-per-call"):
        if "batched" in results and reference in results:
            print(f"batched / {reference}: " + ", ".join(f"{n} replicas {results['batched'][n] / results[reference][n]:.2f}x" for n in args.replicas))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "steps": args.steps, "replica_steps_per_s": results}, indent=1))


if __name__ == "__main__":
    main()
