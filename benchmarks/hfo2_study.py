"""The paper's HfO2 setting as a stableff study (resumable; may run for hours with the full plan).

    python benchmarks/hfo2_study.py [--models nequip] [--seeds 0 1] [--epochs 10] [--max-train-frames 300]
                                    [--replicas 2] [--time-ps 1.0] [--out studies/hfo2]

Prepares, once and seeded:
  data/train.extxyz, data/test_id.extxyz   a held-out split of ../shared/data/hfo2/train_Hf32O64.extxyz
  starts/HfO2.extxyz                       Hf32O64 start cells (in distribution)
  starts/HfO1.55.extxyz, starts/HfO1.1.extxyz
                                           Hf32O64 cells with oxygen removed at random down to
                                           Hf:O = 1:1.55 and 1:1.1 (out of distribution, as in the paper)
then runs `stableff study` with configs/hfo2_study.yaml (options override it) and prints the
paper-style table: accuracy in / out of distribution, correlation, stability index and median
time to failure at 1200 K per start composition, as mean and spread over seeds.

Run time on 2 CPU cores, measured (2026-11-25): `--models nequip --seeds 0 1 --epochs 6
--max-train-frames 200 --replicas 2 --time-ps 1.0` took 29.5 min in all: about 4 min to train each
model (6 epochs of 180 frames plus validation on 103), 1-2 min to evaluate it (800 OOD frames),
and about 2.5 min for its 6 replicas of 1 ps (1 fs steps, 96- to 67-atom cells, 2 processes;
40-120 ms per MD step). The full plan of configs/hfo2_study.yaml (3 models x 3 seeds x 2 variants,
all 1026 training frames, 10 epochs) is of the order of 10-20 hours on 2 cores: run it in the
background; every finished step is kept and reused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "hfo2"


def prepare(out: Path, seed: int = 0, test_fraction: float = 0.1, n_start_frames: int = 1) -> dict:
    import ase.io

    from stableff.data.io import read_frames

    data_dir, start_dir = out / "data", out / "starts"
    data_dir.mkdir(parents=True, exist_ok=True)
    start_dir.mkdir(parents=True, exist_ok=True)
    files = {"train": data_dir / "train.extxyz", "test_id": data_dir / "test_id.extxyz"}
    if not all(p.is_file() for p in files.values()):
        frames = read_frames(SHARED / "train_Hf32O64.extxyz", require=("energy", "forces"))
        order = np.random.default_rng(seed).permutation(len(frames))
        n_test = int(round(test_fraction * len(frames)))
        ase.io.write(files["test_id"], [frames[i].to_atoms() for i in order[:n_test]], format="extxyz")
        ase.io.write(files["train"], [frames[i].to_atoms() for i in order[n_test:]], format="extxyz")
    test_frames = ase.io.read(files["test_id"], f":{n_start_frames}")
    rng = np.random.default_rng(seed + 1)
    for label, ratio in (("HfO2", None), ("HfO1.55", 1.55), ("HfO1.1", 1.1)):
        path = start_dir / f"{label}.extxyz"
        files[label] = path
        if path.is_file():
            continue
        cells = []
        for atoms in test_frames:
            atoms = atoms.copy()
            atoms.calc = None
            if ratio is not None:
                hf = np.where(atoms.numbers == 72)[0]
                oxygen = np.where(atoms.numbers == 8)[0]
                keep = int(round(ratio * len(hf)))
                remove = rng.choice(oxygen, size=len(oxygen) - keep, replace=False)
                del atoms[sorted(remove.tolist())]
            cells.append(atoms)
        ase.io.write(path, cells, format="extxyz")
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "hfo2_study.yaml"))
    parser.add_argument("--out", default=str(ROOT / "studies" / "hfo2"))
    parser.add_argument("--models", nargs="+", help="subset of the configured models, e.g. nequip")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--max-train-frames", type=int)
    parser.add_argument("--replicas", type=int)
    parser.add_argument("--time-ps", type=float)
    parser.add_argument("--start-frames", type=int, default=1, help="start cells per composition")
    parser.add_argument("--variants", nargs="+", help="e.g. baseline decorrelated zbl decorrelated+zbl")
    parser.add_argument("--ood-test-frames", type=int, help="use only the first N frames of ood_Hf32O60 for OOD accuracy")
    parser.add_argument("--trainings", help="keep the trainings in this folder and take them from it when their inputs are the same "
                        "(e.g. benchmarks/results/hfo2_full_nequip/trainings, committed: a fresh checkout trains nothing again)")
    parser.add_argument("--results", help="also copy summary.json and report.md into this folder (e.g. benchmarks/results/hfo2)")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} not found: this benchmark needs ../shared/data/hfo2 beside the checkout")

    from stableff.report.render import terminal_table, write_study_report
    from stableff.study import StudyConfig, run_study

    out = Path(args.out)
    files = prepare(out, n_start_frames=args.start_frames)
    raw = yaml.safe_load(Path(args.config).read_text())
    raw["training"]["data"]["train"] = str(files["train"])
    raw["test"]["in_distribution"] = [str(files["test_id"])]
    raw["test"]["out_of_distribution"] = [str(SHARED / "ood_Hf32O60.extxyz")]
    if args.ood_test_frames:
        import ase.io

        subset = out / "data" / f"ood_Hf32O60_first{args.ood_test_frames}.extxyz"
        if not subset.is_file():
            ase.io.write(subset, ase.io.read(SHARED / "ood_Hf32O60.extxyz", f":{args.ood_test_frames}"), format="extxyz")
        raw["test"]["out_of_distribution"] = [str(subset)]
    frames = list(range(args.start_frames))
    raw["stability"]["in_distribution"] = [{"file": str(files["HfO2"]), "frames": frames}]
    raw["stability"]["out_of_distribution"] = [{"file": str(files["HfO1.55"]), "frames": frames}, {"file": str(files["HfO1.1"]), "frames": frames}]
    if args.models:
        raw["models"] = [m for m in raw["models"] if m["name"] in args.models]
    if args.seeds:
        raw["seeds"] = args.seeds
    if args.variants:
        raw["variants"] = args.variants
    if args.epochs:
        raw["training"]["training"]["epochs"] = args.epochs
    if args.max_train_frames:
        raw["training"]["data"]["max_train_frames"] = args.max_train_frames
    if args.replicas:
        raw["stability"]["replicas"] = args.replicas
    if args.time_ps:
        raw["stability"]["time_ps"] = args.time_ps
    study = StudyConfig.model_validate(raw)
    (out / "study.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    summary = run_study(study, out, trainings=Path(args.trainings) if args.trainings else None)
    html_path, _ = write_study_report(summary, out)
    print(terminal_table(summary))
    for sentence in summary["verdicts"]:
        print(f"- {sentence}")
    print(f"report: {html_path}")
    if args.results:
        import json
        import shutil

        results = Path(args.results)
        results.mkdir(parents=True, exist_ok=True)
        slim = {k: v for k, v in summary.items() if k != "runs"}
        slim["runs"] = [{k: v for k, v in r.items() if k != "stability"} | {"stability": {c: {k: v for k, v in rep.items() if k != "replicas"} | {"replicas": [{k: x.get(k) for k in ("start", "replica", "seed", "time_to_failure_ps", "failed", "reason", "detail")} for x in rep["replicas"]]} for c, rep in r["stability"].items()}} for r in summary["runs"]]
        (results / "summary.json").write_text(json.dumps(slim, indent=1))
        shutil.copy(out / "report.md", results / "report.md")
        print(f"results copied to {results}")
    # paper-style view: stability per start composition (the OOD conditions pool both deficient cells)
    print("\nPer start composition at 1200 K (pooled over seeds and replicas):")
    from stableff.analysis.stability import summarise_replicas

    for model in dict.fromkeys(r["model"] for r in summary["runs"]):
        for variant in summary["variants"]:
            runs = [r for r in summary["runs"] if r["model"] == model and r["variant"] == variant]
            replicas = [rep for r in runs for report in r["stability"].values() for rep in report["replicas"]]
            for composition in ("HfO2", "HfO1.55", "HfO1.1"):
                chosen = [rep for rep in replicas if f"_{composition}_" in rep["start"]]
                if chosen:
                    s = summarise_replicas(chosen)
                    median = s["median_time_to_failure_ps"]
                    median = f"{median:.3f} ps" if median is not None else "not reached"
                    print(f"  {model:<9} {variant:<13} {composition:<8} SI {s['stability_index']:.2f}  median t_fail {median}  "
                          f"failed {s['n_failed']}/{s['n_replicas']}  {s['failures_by_reason']}")


if __name__ == "__main__":
    sys.exit(main())
