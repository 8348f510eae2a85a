"""Time per training step of bench-S NequIP on 96-atom HfO2 cells with decorrelation off, on, and
with SAM, alternating the three in one run so that machine noise hits all of them alike.

    python benchmarks/decorrelation_overhead.py [--steps 8] [--rounds 3]

Prints ms per step (median over all steps; variants interleaved step by step) and the ratios on/off
and SAM/off: the median of the per-step ratios (each step of a variant against the step of "off"
on the same batch just before it) with a bootstrap 95 % interval, since on this shared 2-core
machine one step's time varies by several per cent. ``--no-sam`` leaves SAM out (twice the steps in
the same time). Decorrelation uses the default settings (all layers, cosine schedule at its start,
max_edges 4096).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH_S, DEFAULT_DATA  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8, help="training steps per variant per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch-size", type=int, default=4, help="structures per step (the sampled edges stay at most 4096)")
    parser.add_argument("--no-sam", action="store_true", help="time off and decorrelation only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from stableff.runtime import tune_allocator

    tune_allocator()  # as the command line does

    from stableff.data.graph import frame_to_graph
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.models import build_model
    from stableff.train.config import parse_config
    from stableff.train.loop import gradient_step
    from stableff.train.sam import SAM

    frames = read_frames(args.data, index=f":{args.frames}", require=("energy", "forces"))
    stats = compute_statistics(frames, BENCH_S["r_max"])
    graphs = [frame_to_graph(f, stats.type_numbers, BENCH_S["r_max"]) for f in frames]
    base = {"data": {"train": "unused"}, "model": {"name": "nequip", **BENCH_S}, "training": {"batch_size": args.batch_size}}
    variants = {
        "off": parse_config(base),
        "decorrelation": parse_config({**base, "decorrelation": {"enabled": True}}),
        "SAM": parse_config({**base, "optimizer": {"name": "sam"}}),
    }
    if args.no_sam:
        del variants["SAM"]
    # one model for all variants (each with its own optimiser): separate instances differ in speed by
    # a per cent or two on their own (where their tensors sit in memory), which the ratio would take
    # for the variant's cost
    torch.manual_seed(0)
    model = build_model("nequip", type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, **BENCH_S).train()
    optimizers = {}
    for name, config in variants.items():
        if config.optimizer.name == "sam":
            optimizers[name] = SAM(model.parameters(), torch.optim.Adam, rho=config.optimizer.rho, lr=1e-3)
        else:
            optimizers[name] = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(name, k):
        config, optimizer = variants[name], optimizers[name]
        first = (args.batch_size * k) % len(graphs)
        batch = graphs[first : first + args.batch_size]
        lam = 0.3 if config.decorrelation.enabled else 0.0
        generator = torch.Generator().manual_seed(k)
        gradient_step(model, batch, config, 1, "cpu", torch.float32, lam, generator)
        if isinstance(optimizer, SAM):
            optimizer.first_step()
            gradient_step(model, batch, config, 1, "cpu", torch.float32, lam, generator)
            optimizer.second_step()
        else:
            optimizer.step()

    for name in variants:  # warm-up
        step(name, 0)
    times = {name: [] for name in variants}
    print(f"bench-S NequIP, {len(frames[0])}-atom HfO2 cells, batch {args.batch_size}, {args.threads} threads; {args.rounds} rounds x {args.steps} steps per variant")
    # interleaved step by step, so that drift of the machine's speed hits every variant alike
    for round_ in range(args.rounds):
        for k in range(args.steps):
            for name in variants:
                t0 = time.perf_counter()
                step(name, k)
                times[name].append(1000 * (time.perf_counter() - t0))
        print(f"  round {round_ + 1}: " + ", ".join(f"{n} {statistics.median(times[n][-args.steps:]):.0f} ms/step" for n in variants), flush=True)
    median = {n: statistics.median(v) for n, v in times.items()}
    print(f"\n{'variant':<15} {'ms/step (median)':>17}")
    for name, value in median.items():
        print(f"{name:<15} {value:>17.1f}")
    print()
    for name in list(variants)[1:]:
        ratio, low, high = paired_ratio(times[name], times["off"])
        line = f"{name + ' / off':<19} = {ratio:.3f} [{low:.3f}, {high:.3f}] (median of {len(times[name])} per-step ratios, 95 % bootstrap interval)"
        if name == "decorrelation":
            line += f"; overhead {100 * (ratio - 1):+.1f} %; target <= 3 %, goal <= 1 %"
        print(line)


def paired_ratio(variant: list[float], baseline: list[float], draws: int = 2000) -> tuple[float, float, float]:
    """Median of the per-step ratios variant_k / baseline_k and its bootstrap 95 % interval."""
    import numpy as np

    ratios = np.asarray(variant) / np.asarray(baseline)
    rng = np.random.default_rng(0)
    medians = np.median(ratios[rng.integers(0, len(ratios), size=(draws, len(ratios)))], axis=1)
    return float(np.median(ratios)), float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))

if __name__ == "__main__":
    main()
