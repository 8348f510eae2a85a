"""Does a committee of training seeds warn before MD fails? Lead times and false alarms on a study.

Takes a finished study with at least two training seeds per variant (``make demo`` writes one to
demo_out/), and for every variant and seed runs the study's stability plan again (its start
structures, temperatures, replicas, run length) with that seed's model driving and the other seeds'
models as the committee, into DIR/committee/. The disagreement of every check is in thermo.csv, so
the warnings are counted afterwards at several thresholds (multiples k of the committee's mean
disagreement on the driver's validation frames): per variant, the failures warned of before they
happened, the median lead time, the failures warned of only at the failing frame or not at all, and
the false alarms (runs that did not fail). Also the disagreement at the start of the failing and of
the surviving runs. Writes benchmarks/results/committee_warning/summary.json.

    python benchmarks/committee_warning.py [--study demo_out] [--multiples 2 3 5 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def first_above(path: Path, threshold: float):
    """The time (ps) of the first thermo row whose disagreement exceeds ``threshold`` (None if none)."""
    from stableff.md.committee import COLUMN

    with open(path) as handle:
        for row in csv.DictReader(handle):
            if float(row[COLUMN]) > threshold:
                return float(row["time_ps"])
    return None


def start_disagreement(path: Path) -> float:
    from stableff.md.committee import COLUMN

    with open(path) as handle:
        return float(next(csv.DictReader(handle))[COLUMN])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "demo_out"), help="a finished study folder (default demo_out)")
    parser.add_argument("--config", default=None, help="its configuration (default: the demo's)")
    parser.add_argument("--multiples", type=float, nargs="+", default=[2.0, 3.0, 5.0, 8.0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "committee_warning"))
    args = parser.parse_args()

    import torch

    import stableff
    from stableff.analysis.stability import warning_summary
    from stableff.layout import study_run
    from stableff.md.committee import make_committee
    from stableff.md.monitors import MonitorSettings
    from stableff.md.replicas import build_replica_tasks, run_replicas
    from stableff.models import DEFAULT_MODEL
    from stableff.study import load_study_config
    from stableff.study.plan import start_structures

    study_dir = Path(args.study)
    study = load_study_config(args.config or ROOT / "stableff" / "configs" / "demo_study_acac.yaml")
    plan = study.stability
    starts = start_structures(plan)
    model_name = study.model_blocks()[0].get("name", DEFAULT_MODEL)
    results = {}
    t_start = time.perf_counter()
    for variant in study.variants:
        runs = []
        for seed in study.seeds:
            driver = study_run(study_dir, model_name, variant, seed).best_checkpoint
            others = [study_run(study_dir, model_name, variant, s).best_checkpoint for s in study.seeds if s != seed]
            committee = make_committee(str(driver), [str(p) for p in others], "1x")  # level = mean disagreement on validation
            level = committee.threshold_eV_per_A
            for temperature in plan.temperatures_K:
                out = study_dir / "committee" / variant / f"seed_{seed}" / f"{temperature:g}K"
                tasks = build_replica_tasks(driver, [(label, atoms) for _, label, atoms in starts], plan.md_settings(temperature), plan.replicas,
                                            MonitorSettings(), out, engine=plan.engine, committee=committee)
                t0 = time.perf_counter()
                summaries = run_replicas(tasks, workers=plan.workers, progress=True)
                print(f"{variant} seed {seed} at {temperature:g} K: {len(summaries)} runs in {time.perf_counter() - t0:.0f} s; "
                      f"validation disagreement {level:.4f} eV/A", flush=True)
                kinds = {label: kind for kind, label, _ in starts}
                for s in summaries:
                    runs.append({**s, "kind": kinds[s["start"]], "level": level, "thermo": str(Path(s["path"]) / "thermo.csv")})
        by_k = {}
        for k in args.multiples:
            rescored = []
            for r in runs:
                threshold = k * r["level"]
                t_u = first_above(Path(r["thermo"]), threshold)
                rescored.append({**r, "uncertain": t_u is not None, "uncertain_time_ps": t_u,
                                 "committee": {"threshold_eV_per_A": threshold}})
            by_k[f"{k:g}x"] = {kind: warning_summary([r for r in rescored if r["kind"] == kind]) for kind in ("ID", "OOD") if any(r["kind"] == kind for r in rescored)}
        start_d = {"failed": [start_disagreement(Path(r["thermo"])) / r["level"] for r in runs if r["failed"]],
                   "survived": [start_disagreement(Path(r["thermo"])) / r["level"] for r in runs if not r["failed"]]}
        results[variant] = {
            "n_runs": len(runs), "n_failed": int(sum(r["failed"] for r in runs)),
            "validation_disagreement_eV_per_A": {str(seed): float(l) for seed, l in zip(study.seeds, dict.fromkeys(r["level"] for r in runs))},
            "by_threshold": by_k,
            "start_disagreement_over_validation": {k: ({"median": float(np.median(v)), "n": len(v)} if v else None) for k, v in start_d.items()},
        }
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; stableff {stableff.__version__}, torch {torch.__version__}; "
          f"{time.perf_counter() - t_start:.0f} s")
    for variant, result in results.items():
        print(f"\n{variant}: {result['n_runs']} runs, {result['n_failed']} failed; validation disagreement "
              + ", ".join(f"seed {s} {v:.4f} eV/A" for s, v in result["validation_disagreement_eV_per_A"].items()))
        print(f"  {'threshold':>9} {'kind':>6} {'failed':>6} {'warned before':>13} {'lead median (ps)':>16} {'at failure':>10} {'missed':>6} {'false alarms':>14}")
        for k, kinds in result["by_threshold"].items():
            for kind, w in kinds.items():
                lead = f"{w['lead_time_ps']['median']:.3f}" if w["lead_time_ps"] else "-"
                print(f"  {k:>9} {kind:>6} {w['n_failed']:>6} {w['n_warned_before_failure']:>13} {lead:>16} {w['n_warned_at_failure']:>10} "
                      f"{w['n_failures_without_warning']:>6} {w['n_false_alarms']:>6} of {w['n_runs'] - w['n_failed']:<4}")
        sd = result["start_disagreement_over_validation"]
        print("  disagreement at the start frame / validation mean: " + ", ".join(f"{k} runs median {v['median']:.2f} (n={v['n']})" for k, v in sd.items() if v))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"study": str(study_dir), "multiples": args.multiples, "results": results}, indent=1))
    print(f"\nwritten: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
