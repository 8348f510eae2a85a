"""Where should the ZBL prior act? The covalent placement against the data placement on HfO2.

Trains the same NequIP (same seed, data and budget) three times on a held-out split of
../shared/data/hfo2/train_Hf32O64.extxyz: without ZBL, with ZBL switched by covalent radii, and
with ZBL switched by the training data's closest distance of each pair (``zbl: true``). For each it
prints the force and energy error on the held-out Hf32O64 frames and the dimer probe of every pair:
the closest training distance, the switch radii, and the hole below the training minimum (radius
and depth) or none. Writes benchmarks/results/zbl_switch/summary.json.

    python benchmarks/zbl_switch.py [--max-train-frames 120] [--epochs 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {"no ZBL": {}, "ZBL covalent": {"zbl": {"switch": "covalent"}}, "ZBL data": {"zbl": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-train-frames", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "studies" / "zbl_switch"))
    args = parser.parse_args()

    from hfo2_study import prepare

    import stableff
    from stableff.analysis.probes import dimer_curves
    from stableff.data.species import pair_label
    from stableff.measures.accuracy import evaluate_files
    from stableff.models.saved import model_from_checkpoint
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    out = Path(args.out)
    files = prepare(out)
    results = {}
    for name, zbl in VARIANTS.items():
        run = out / name.replace(" ", "_")
        config = parse_config({
            "data": {"train": str(files["train"]), "val_fraction": 0.1, "split_seed": 0, "max_train_frames": args.max_train_frames},
            "model": {"name": "nequip", "r_max": 5.0, "num_layers": 3, "l_max": 1, "num_features": 16, "num_bessels": 8, "radial_mlp_depth": 2, "radial_mlp_width": 32, **zbl},
            "training": {"epochs": args.epochs, "batch_size": 4, "seed": args.seed},
            "optimizer": {"name": "adam", "lr": 0.005},
        })
        t0 = time.perf_counter()
        if not (run / "best.ckpt").is_file():
            Trainer(config, run, progress=False).run()
        train_s = time.perf_counter() - t0
        model, statistics = model_from_checkpoint(run / "best.ckpt")
        (accuracy,) = evaluate_files(model, [str(files["test_id"])], progress=False)
        curves = dimer_curves(model, statistics)
        prior = model.priors[0] if len(model.priors) else None
        pairs = {c["pair"]: {"training_min_A": c["training_min_A"], "hole": c["hole"]} for c in curves}
        if prior is not None:
            for i, za in enumerate(model.type_numbers):
                for j in range(i, len(model.type_numbers)):
                    label = pair_label(za, model.type_numbers[j])
                    pairs[label]["switch_A"] = [round(prior.inner[i, j].item(), 3), round(prior.outer[i, j].item(), 3)]
        results[name] = {"train_s": train_s, "fmae_meV_per_A": accuracy["fmae_meV_per_A"], "emae_meV_per_atom": accuracy["emae_meV_per_atom"], "pairs": pairs}
        print(f"{name:>13}: F-MAE {accuracy['fmae_meV_per_A']:.1f} meV/A, E-MAE {accuracy['emae_meV_per_atom']:.2f} meV/atom (held-out Hf32O64), trained in {train_s:.0f} s")
        for label, p in pairs.items():
            hole = p["hole"]
            switch = f"switch {p['switch_A'][0]:.2f}-{p['switch_A'][1]:.2f} A" if "switch_A" in p else "no prior"
            text = f"hole at {hole['radius_A']:.2f} A, {hole['depth_eV']:.2f} eV deep" if hole else "no hole"
            print(f"{'':>15}{label:<6} closest in training {p['training_min_A']:.2f} A, {switch}: {text}")
    target = ROOT / "benchmarks" / "results" / "zbl_switch" / "summary.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"settings": vars(args), "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                  "stableff": stableff.__version__, "threads": torch.get_num_threads(), "results": results}, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
