"""GemNet-T as published (``gemnet_t``) against the DimeNet++-style model stableff had before
(``dimenet_pp_like``): accuracy on acac with the budget of configs/acac_gemnet_t.yaml, and the
parameter counts of both (acac sizes and the bench-S sizes of benchmarks/throughput.py).

    python benchmarks/gemnet_forms.py [--epochs 30] [--out runs/gemnet_forms]

Training speed and ms per evaluation on HfO2 come from
`python benchmarks/throughput.py --models gemnet_t,dimenet_pp_like` (not timed here: both trainings
run one after the other and other work may share the CPU).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH_S_DIMENET_LIKE, BENCH_S_GEMNET  # noqa: E402

# the acac sizes of the old gemnet_t config, kept for the DimeNet++-style model
ACAC_DIMENET_LIKE = dict(r_max=4.0, num_blocks=3, atom_features=32, edge_features=32, triplet_features=16, num_radial=8, num_spherical=5, num_sph_radial=4, polynomial_p=6)


def parameters(name, hyper, type_numbers) -> int:
    from stableff.models import build_model

    return sum(p.numel() for p in build_model(name, type_numbers=type_numbers, **hyper).parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--out", default=str(ROOT / "runs" / "gemnet_forms"))
    args = parser.parse_args()
    from stableff.measures.accuracy import evaluate_files
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    raw = yaml.safe_load((ROOT / "configs" / "acac_gemnet_t.yaml").read_text())
    if args.epochs:
        raw["training"]["epochs"] = args.epochs
    rows = []
    for name in ("gemnet_t", "dimenet_pp_like"):
        config = copy.deepcopy(raw)
        if name == "dimenet_pp_like":
            config["model"] = {"name": name, **ACAC_DIMENET_LIKE}
        out = Path(args.out) / name
        if not (out / "best.ckpt").is_file():
            Trainer(parse_config(config), out).run()
        results = evaluate_files(out / "best.ckpt", ["acac:test_MD_300K", "acac:test_MD_600K"], progress=False)
        hyper = {k: v for k, v in config["model"].items() if k != "name"}
        rows.append((name, results[0]["fmae_meV_per_A"], results[1]["fmae_meV_per_A"], results[0]["emae_meV_per_atom"], results[1]["emae_meV_per_atom"],
                     parameters(name, hyper, [1, 6, 8])))
    print(f"acac, {raw['training']['epochs']} epochs, batch {raw['training']['batch_size']}, {raw['optimizer']}")
    print(f"{'model':<18}{'FMAE 300 K':>12}{'FMAE 600 K':>12}{'EMAE 300 K':>12}{'EMAE 600 K':>12}{'parameters':>12}")
    print(f"{'':<18}{'meV/A':>12}{'meV/A':>12}{'meV/atom':>12}{'meV/atom':>12}")
    for name, f3, f6, e3, e6, n in rows:
        print(f"{name:<18}{f3:>12.1f}{f6:>12.1f}{e3:>12.2f}{e6:>12.2f}{n:>12,d}")
    print("\nparameters at the bench-S sizes (HfO2, 2 species): "
          f"gemnet_t {parameters('gemnet_t', BENCH_S_GEMNET, [8, 72]):,}, dimenet_pp_like {parameters('dimenet_pp_like', BENCH_S_DIMENET_LIKE, [8, 72]):,}")
    paper = dict(r_max=5.0, num_blocks=4, num_spherical=7, num_radial=6, emb_size_atom=128, emb_size_edge=128, emb_size_trip=64, emb_size_rbf=16,
                 emb_size_cbf=16, emb_size_bil_trip=64, num_before_skip=1, num_after_skip=1, num_concat=1, num_atom=3)
    print(f"gemnet_t at the paper's hyper-parameters (4 blocks, 128/128/64/16/16/64, 3 elements): {parameters('gemnet_t', paper, [1, 6, 8]):,} parameters")


if __name__ == "__main__":
    main()
