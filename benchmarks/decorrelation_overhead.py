"""Time per training step of bench-S NequIP on 96-atom HfO2 cells with decorrelation off, on, and
with SAM, alternating the three in one run so that machine noise hits all of them alike.

    python benchmarks/decorrelation_overhead.py [--steps 8] [--rounds 3] [--config FILE]

Prints ms per step (median over all steps; variants interleaved step by step) and the ratios on/off
and SAM/off: the median of the per-step ratios (each step of a variant against the step of "off"
on the same batch just before it) with a bootstrap 95 % interval, since on this shared 2-core
machine one step's time varies by several per cent. ``--no-sam`` leaves SAM out (twice the steps in
the same time). Decorrelation uses the default settings (all layers, cosine schedule at its start,
max_edges 4096). ``--config`` times any training configuration instead, or a study's (its training
block with its first model: e.g. the demo's acetylacetone NequIP,
stableff/configs/demo_study_acac.yaml): its model, data (the first ``--frames`` training frames),
batch size, dtype and decorrelation settings (lambda at the start of its schedule); "off" is the
same configuration with decorrelation disabled.
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
    parser.add_argument("--config", help="a training or study configuration to time instead of bench-S HfO2 (data, model, batch and decorrelation from it)")
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

    if args.config:
        variants, frames = configured_variants(args.config, args.frames)
        args.batch_size = variants["off"].training.batch_size
        stats = compute_statistics(frames, variants["off"].model.cutoff_A())
        torch.manual_seed(0)
        from stableff.train.loop import build_from_statistics

        model = build_from_statistics(variants["off"], stats).train()
        what = f"{variants['off'].model.name} of {args.config}, {len(frames[0])}-atom frames of {variants['off'].data.train}"
    else:
        frames = read_frames(args.data, index=f":{args.frames}", require=("energy", "forces"))
        stats = compute_statistics(frames, BENCH_S["r_max"])
        base = {"data": {"train": "unused"}, "model": {"name": "nequip", **BENCH_S}, "training": {"batch_size": args.batch_size}}
        variants = {
            "off": parse_config(base),
            "decorrelation": parse_config({**base, "decorrelation": {"enabled": True}}),
            "SAM": parse_config({**base, "optimizer": {"name": "sam"}}),
        }
        # one model for all variants (each with its own optimiser): separate instances differ in speed by
        # a per cent or two on their own (where their tensors sit in memory), which the ratio would take
        # for the variant's cost
        torch.manual_seed(0)
        model = build_model("nequip", type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, **BENCH_S).train()
        what = f"bench-S NequIP, {len(frames[0])}-atom HfO2 cells"
    if args.no_sam:
        del variants["SAM"]
    dtype = getattr(torch, variants["off"].training.dtype)
    model = model.to(dtype)
    graphs = [frame_to_graph(f, model.type_numbers, model.r_max) for f in frames]
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
        lam = config.decorrelation.lambda_max if config.decorrelation.enabled else 0.0  # the schedules start at lambda_max
        generator = torch.Generator().manual_seed(k)
        gradient_step(model, batch, config, 1, "cpu", dtype, lam, generator)
        if isinstance(optimizer, SAM):
            optimizer.first_step()
            gradient_step(model, batch, config, 1, "cpu", dtype, lam, generator)
            optimizer.second_step()
        else:
            optimizer.step()

    for name in variants:  # warm-up
        step(name, 0)
    times = {name: [] for name in variants}
    print(f"{what}, batch {args.batch_size}, {args.threads} threads; {args.rounds} rounds x {args.steps} steps per variant")
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
            line += f"; overhead {100 * (ratio - 1):+.1f} % (targets: <= 1 % on bench-S HfO2, <= 5 % on the demo's acetylacetone model)"
        print(line)


def configured_variants(path: str, n_frames: int):
    """off / decorrelation / SAM variants of a training or study configuration, and its first
    ``n_frames`` training frames."""
    import yaml

    from stableff.data.io import read_frames
    from stableff.train.config import config_to_dict, load_config, parse_config

    raw = yaml.safe_load(Path(path).read_text())
    if isinstance(raw, dict) and isinstance(raw.get("training"), dict) and "data" in raw["training"]:  # a study
        from stableff.study.plan import load_study_config, variant_config

        study = load_study_config(path)
        config = variant_config(study, study.model_blocks()[0], "baseline", study.seeds[0])
        settings = study.training.get("decorrelation") or {}
    else:
        config = load_config(path)
        settings = config_to_dict(config)["decorrelation"]
    base = config_to_dict(config)
    variants = {
        "off": parse_config({**base, "decorrelation": {**settings, "enabled": False}}),
        "decorrelation": parse_config({**base, "decorrelation": {**settings, "enabled": True}}),
        "SAM": parse_config({**base, "decorrelation": {**settings, "enabled": False}, "optimizer": {**base["optimizer"], "name": "sam"}}),
    }
    frames = read_frames(config.data.train, index=f":{n_frames}", require=("energy", "forces"))
    return variants, frames


def paired_ratio(variant: list[float], baseline: list[float], draws: int = 2000) -> tuple[float, float, float]:
    """Median of the per-step ratios variant_k / baseline_k and its bootstrap 95 % interval."""
    import numpy as np

    ratios = np.asarray(variant) / np.asarray(baseline)
    rng = np.random.default_rng(0)
    medians = np.median(ratios[rng.integers(0, len(ratios), size=(draws, len(ratios)))], axis=1)
    return float(np.median(ratios)), float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))

if __name__ == "__main__":
    main()
