"""Accuracy per training step: stableff and upstream (nequip / nequip-allegro) trained on equal terms.

    python benchmarks/accuracy_per_step.py --model allegro [--steps 3000] [--train 800] [--test 200]

Both codes get the same training frames of ../shared/data/hfo2/train_Hf32O64.extxyz in the same
batch order (batch 4), the same hyper-parameters (bench-S sizes of throughput.py), the same
per-species energy scale (force RMS) and shifts (stableff's E0 + mean residual), the same loss
(per-atom energy MSE + force MSE, weights 1 and 1), Adam at a fixed learning rate, float32, and
the same number of steps. The held-out frames (disjoint from training) are evaluated at four
checkpoints (``--checkpoints K``: K evenly spaced). Prints energy MAE (meV/atom) and force MAE
(meV/A) per checkpoint for both codes, and with more than four checkpoints the mean force MAE over
those of the second half (at a fixed learning rate single evaluations jump: one bad batch can
put a checkpoint 30 % up), and writes benchmarks/results/accuracy_per_step/<model>.json (other
seeds: ``seeds/<model>_seed-S.json``) and a plot of the force MAE curves.
``--seed`` sets the training/held-out split, the batch order and both codes' initial weights.
``--variant`` trains a stableff Allegro with one of upstream's design choices instead
(allegro_variants.py), ``--stableff-only`` leaves upstream out (its curves for the same seed are
in the stored results). Upstream runs in .venv-peer-nequip (made on first use by throughput.py's
helper).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from equal_terms import train_with_checkpoints  # noqa: E402
from throughput import BENCH, DEFAULT_DATA, ensure_peer_venv, peer_environment, stableff_train_step  # noqa: E402


def make_plan(args, order, statistics) -> dict:
    """Training/held-out split from ``order`` and the batch sequence both codes follow."""
    rng = np.random.default_rng(args.seed + 1)
    train, test = order[: args.train].tolist(), order[args.train : args.train + args.test].tolist()
    batches = []
    while len(batches) < args.steps:  # epochs of the training frames, each shuffled
        epoch = rng.permutation(train).tolist()
        batches.extend(epoch[k : k + args.batch_size] for k in range(0, len(epoch) - args.batch_size + 1, args.batch_size))
    checkpoints = sorted({max(1, args.steps * q // args.checkpoints) for q in range(1, args.checkpoints + 1)})
    shifts = (np.asarray(statistics.reference_energies) + statistics.energy_per_atom_residual_mean).tolist()
    return {
        "data": str(Path(args.data).resolve()), "model": args.model, "hyper": BENCH[args.model], "seed": args.seed, "lr": args.lr,
        "type_numbers": statistics.type_numbers, "avg_num_neighbors": statistics.mean_num_neighbors,
        "energy_scale": statistics.force_rms, "energy_shifts": shifts,
        "test": test, "batches": batches[: args.steps], "checkpoints": checkpoints,
    }


def train_stableff(plan: dict, frames) -> dict:
    from stableff.data import keys
    from stableff.data.graph import collate, frame_to_graph
    from stableff.models import build_model

    hyper = plan["hyper"]
    graphs = {i: frame_to_graph(frames[i], plan["type_numbers"], hyper["r_max"]) for i in sorted({i for b in plan["batches"] for i in b})}
    test = [frame_to_graph(frames[i], plan["type_numbers"], hyper["r_max"]) for i in plan["test"]]
    torch.manual_seed(plan["seed"])
    settings = dict(type_numbers=plan["type_numbers"], avg_num_neighbors=plan["avg_num_neighbors"],
                    energy_scale=plan["energy_scale"], energy_shift=torch.as_tensor(plan["energy_shifts"]), **hyper)
    if plan.get("variant"):
        from allegro_variants import build_variant

        model = build_variant(plan["variant"], **settings)
    else:
        model = build_model(plan["model"], **settings)
    optimizer = torch.optim.Adam(model.parameters(), lr=plan["lr"])

    def predictions():
        for k in range(0, len(test), 8):
            batch = collate(test[k : k + 8])
            out = model(batch, compute_stress=False)
            yield out[keys.TOTAL_ENERGY], batch[keys.TOTAL_ENERGY], batch[keys.NUM_ATOMS], out[keys.FORCES], batch[keys.FORCES]

    curve = train_with_checkpoints(model, plan, lambda indices: stableff_train_step(model, optimizer, collate([graphs[i] for i in indices])),
                                   predictions, log=lambda text: print(f"  stableff {text}", flush=True))
    # the model's revision and hyper-parameters: which stableff model a stored curve belongs to
    return {"curve": curve, "num_parameters": sum(p.numel() for p in model.parameters()), "model_revision": model.revision,
            "model_hyperparameters": model.hyperparameters}


def train_peer(plan: dict, threads: int) -> dict:
    python = ensure_peer_venv(with_allegro=plan["model"] == "allegro")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plan.json"
        path.write_text(json.dumps(plan))
        import subprocess

        result = subprocess.run([str(python), str(ROOT / "benchmarks" / "peer_accuracy.py"), "--plan", str(path), "--threads", str(threads)],
                                capture_output=True, text=True, env=peer_environment(same_allocator=True))
    if result.returncode != 0:
        raise SystemExit(f"upstream training failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def second_half_mean(curve: list[dict], steps: int) -> float:
    """Mean held-out force MAE (meV/A) over the checkpoints at or after half the steps."""
    return float(np.mean([c["force_mae_meV_per_A"] for c in curve if 2 * c["step"] >= steps]))


def parse_option(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--peer-option {text!r}: expected NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def plot(results: dict, path: Path, model: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, result in results.items():
        steps = [c["step"] for c in result["curve"]]
        ax.plot(steps, [c["force_mae_meV_per_A"] for c in result["curve"]], marker="o", label=name)
    ax.set_xlabel("training step (batch 4)")
    ax.set_ylabel("held-out force MAE (meV/Å)")
    ax.set_title(f"{model}: accuracy per step, HfO2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["nequip", "allegro"], default="allegro")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--train", type=int, default=800, help="training frames")
    parser.add_argument("--test", type=int, default=200, help="held-out frames")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoints", type=int, default=4, help="held-out evaluations, evenly spaced (the last after the last step)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--peer-option", action="append", default=[], metavar="NAME=JSON",
                        help="a further upstream model argument, e.g. tp_path_channel_coupling=false (repeatable)")
    parser.add_argument("--variant", help="Allegro only: stableff's model with one of upstream's design choices (allegro_variants.py)")
    parser.add_argument("--stableff-only", action="store_true", help="train stableff only (no upstream run)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy_per_step"))
    args = parser.parse_args()
    if args.variant:
        from allegro_variants import VARIANTS

        if args.model != "allegro" or args.variant not in VARIANTS:
            parser.error(f"--variant needs --model allegro and one of {', '.join(VARIANTS)}")
    if not 1 <= args.checkpoints <= args.steps:
        parser.error(f"--checkpoints must be between 1 and --steps ({args.steps})")
    torch.set_num_threads(args.threads)
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.runtime import tune_allocator

    tune_allocator()
    frames = read_frames(args.data, require=("energy", "forces"))
    if args.train + args.test > len(frames):
        raise SystemExit(f"{args.data}: {len(frames)} frames, fewer than --train {args.train} + --test {args.test}")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    statistics = compute_statistics([frames[i] for i in order[: args.train]], BENCH[args.model]["r_max"])
    plan = make_plan(args, order, statistics)
    plan["peer_options"] = dict(parse_option(text) for text in args.peer_option)
    plan["variant"] = args.variant
    print(f"{args.model}{' variant ' + args.variant if args.variant else ''} (bench-S), {args.train} training / {args.test} held-out HfO2 frames, batch {args.batch_size}, "
          f"Adam lr {args.lr:g}, {args.steps} steps, float32, {args.threads} threads", flush=True)
    name = f"stableff ({args.variant})" if args.variant else "stableff"
    results = {name: train_stableff(plan, frames)}
    if not args.stableff_only:
        print("  upstream training ...", flush=True)
        peer = train_peer(plan, args.threads)
        options = "".join(f", {k}={v}" for k, v in plan["peer_options"].items())
        results[f"upstream ({peer['version']}{options})"] = peer
    names = list(results)
    print(f"\n{'step':>6}  " + "  ".join(f"{n + ' EMAE':>26} {n + ' FMAE':>26}" for n in names))
    for rows in zip(*(results[n]["curve"] for n in names)):
        print(f"{rows[0]['step']:>6}  " + "  ".join(f"{r['energy_mae_meV_per_atom']:>20.2f} meV/atom {r['force_mae_meV_per_A']:>21.1f} meV/A" for r in rows))
    last = [results[n]["curve"][-1] for n in names]
    if args.checkpoints > 4:
        print("\nmean force MAE over the checkpoints from step " + f"{args.steps // 2} on: "
              + ", ".join(f"{n} {second_half_mean(results[n]['curve'], args.steps):.1f} meV/A" for n in names))
    if args.stableff_only:
        print(f"\nafter {args.steps} steps: {results[name]['num_parameters']} parameters, training time {last[0]['train_s']:.0f} s")
    else:
        print(f"\nafter {args.steps} steps: force MAE stableff / upstream = {last[0]['force_mae_meV_per_A'] / last[1]['force_mae_meV_per_A']:.3f} "
              f"(< 1: stableff more accurate per step); parameters {results[name]['num_parameters']} vs {peer['num_parameters']}; "
              f"training time {last[0]['train_s']:.0f} s vs {last[1]['train_s']:.0f} s")
    out = Path(args.out)
    summary = {"model": args.model, "settings": {k: v for k, v in vars(args).items() if k != "out"}, "hyper": BENCH[args.model], "results": results}
    stem = args.model + "".join(f"_{k}-{v}" for k, v in plan["peer_options"].items())
    if args.checkpoints != parser.get_default("checkpoints"):
        stem += f"_checkpoints-{args.checkpoints}"
    if args.variant:
        stem += f"_variant-{args.variant}"
    if args.lr != parser.get_default("lr"):  # (a full run at another rate no longer writes over the stored comparison)
        stem += f"_lr-{args.lr:g}"
    if args.variant or args.stableff_only:  # experiments beside the stored comparison, one file per seed
        out = out / "variants"
        stem += f"_seed-{args.seed}"
    elif args.seed != 0:  # the comparison for another seed beside seed 0's
        out = out / "seeds"
        stem += f"_seed-{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1))
    plot(results, out / f"{stem}_force_mae.png", args.model)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '_force_mae.png')}")


if __name__ == "__main__":
    main()
