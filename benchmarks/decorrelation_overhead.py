"""Time per training step of bench-S NequIP on 96-atom HfO2 cells with decorrelation off, on, and
with SAM, alternating the three in one run so that machine noise hits all of them alike.

    python benchmarks/decorrelation_overhead.py [--steps 8] [--rounds 3]

Prints ms per step (median over all steps; variants interleaved step by step) and the ratios on/off and SAM/off. Decorrelation uses the
default settings (all layers, cosine schedule at its start, max_edges 4096).
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
    base = {"data": {"train": "unused"}, "model": {"name": "nequip", **BENCH_S}, "training": {"batch_size": 4}}
    variants = {
        "off": parse_config(base),
        "decorrelation": parse_config({**base, "decorrelation": {"enabled": True}}),
        "SAM": parse_config({**base, "optimizer": {"name": "sam"}}),
    }
    models, optimizers = {}, {}
    for name, config in variants.items():
        torch.manual_seed(0)
        models[name] = build_model("nequip", type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, **BENCH_S).train()
        if config.optimizer.name == "sam":
            optimizers[name] = SAM(models[name].parameters(), torch.optim.Adam, rho=config.optimizer.rho, lr=1e-3)
        else:
            optimizers[name] = torch.optim.Adam(models[name].parameters(), lr=1e-3)

    def step(name, k):
        config, model, optimizer = variants[name], models[name], optimizers[name]
        batch = graphs[(4 * k) % len(graphs) : (4 * k) % len(graphs) + 4]
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
    print(f"bench-S NequIP, {len(frames[0])}-atom HfO2 cells, batch 4, {args.threads} threads; {args.rounds} rounds x {args.steps} steps per variant")
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
    overhead = 100 * (median["decorrelation"] / median["off"] - 1)
    print(f"\ndecorrelation / off = {median['decorrelation'] / median['off']:.3f} (overhead {overhead:+.1f} %; target <= 3 %, goal <= 1 %)")
    print(f"SAM / off           = {median['SAM'] / median['off']:.3f}")


if __name__ == "__main__":
    main()
