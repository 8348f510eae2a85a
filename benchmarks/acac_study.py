"""Every remedy on acetylacetone, on equal terms, with an oracle for active learning: the demo's
NequIP study on the acac frames relabelled by GFN2-xTB (tblite), variants baseline, decorrelated,
zbl (switch placed by the data), decorrelated+zbl and active (40 GFN2-xTB calls over 2 rounds,
the three seeds as the committee), three training seeds, the demo's MD plan (1200 K Langevin,
12 replicas x (3 ID + 3 OOD starts) x 0.4 ps per model).

Why xTB and not the dataset's level: PySCF reproduces the dataset (0.9 meV/A, oracle_check.py)
but costs ~55 s a call here; an oracle must be consistent with the data it adds to, so every frame
(training, tests, labelled) is GFN2-xTB's. The active variant explores the study's own start
structures at 1200 K (other velocity seeds): it sees frames of the regime it is judged in, which
is what active learning is for, and the other variants never do; the report's comparison is of
remedies as a user would apply them, not of held-out generalisation.

    pip install tblite
    python benchmarks/acac_study.py [--seeds 0 1 2] [--epochs 10] [--replicas 12] [--budget 40]
                                    [--out studies/acac_study] [--results benchmarks/results/acac_study]

Resumable: every stage is reused by its fingerprint. Writes OUT/study.yaml (the study run),
runs `stableff study` on it and copies summary.json (gzipped), report.md and study.yaml into --results.
"""

from __future__ import annotations

import argparse
import gzip
import platform
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=12)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["baseline", "decorrelated", "zbl", "decorrelated+zbl", "active"])
    parser.add_argument("--out", default=str(ROOT / "studies" / "acac_study"))
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "acac_study"))
    args = parser.parse_args()

    import torch

    import stableff
    from active_acac import relabel
    from stableff.cli import main as stableff_main

    out = Path(args.out)
    t0 = time.perf_counter()
    data = {name: relabel(name, out / "xtb" / f"{name}.extxyz", count) for name, count in (("train_300K", None), ("test_MD_300K", 100), ("test_MD_600K", 100))}
    print(f"acac frames relabelled with GFN2-xTB (or reused) in {time.perf_counter() - t0:.1f} s", flush=True)
    demo = yaml.safe_load((ROOT / "stableff" / "configs" / "demo_study_acac.yaml").read_text())
    study = {
        **demo, "name": "acac-remedies-xtb", "seeds": args.seeds, "variants": args.variants,
        "test": {"in_distribution": [str(data["test_MD_300K"])], "out_of_distribution": [str(data["test_MD_600K"])]},
        "active": {"oracle": {"calculator": "tblite.ase:TBLite", "kwargs": {"method": "GFN2-xTB", "verbosity": 0}},
                   "budget": args.budget, "rounds": args.rounds, "selection": {"method": "committee", "min_spacing_fs": 50}},
    }
    study["training"]["data"] = {"train": str(data["train_300K"]), "val_fraction": 0.1, "split_seed": 0}  # no isolated atoms: xTB's E0 differ
    study["training"]["training"]["epochs"] = args.epochs
    study["stability"]["replicas"] = args.replicas
    # the start structures are the embedded frames (positions only; the MD never reads their labels)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "study.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    t0 = time.perf_counter()
    code = stableff_main(["study", str(config), "--out", str(out)])
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; stableff {stableff.__version__}, "
          f"torch {torch.__version__}; study {time.perf_counter() - t0:.0f} s")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "study.yaml"):
        shutil.copy(out / name, results / name)
    with open(out / "summary.json", "rb") as source, gzip.open(results / "summary.json.gz", "wb") as target:  # every run's replicas: 1-3 MB as text
        shutil.copyfileobj(source, target)
    print(f"written: {results}/summary.json.gz, report.md, study.yaml")
    sys.exit(code)


if __name__ == "__main__":
    main()
