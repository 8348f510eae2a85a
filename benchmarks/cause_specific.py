"""Cause-specific survival of a finished study's MD runs: each failure reason on its own (runs that
failed for another reason censored at that time), every variant against the baseline.

    python benchmarks/cause_specific.py studies/hfo2_full [--model allegro] [--temperature 1200K] [--condition OOD]

Reads the runs' summary.json files; prints failed / runs, RMST up to the run length and the
log-rank test stratified by start structure (stableff.analysis.survival), per reason.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study")
    parser.add_argument("--model", default="allegro")
    parser.add_argument("--temperature", default="1200K")
    parser.add_argument("--condition", default="OOD", help="ID or OOD (the start folders' prefix)")
    args = parser.parse_args()
    from stableff.analysis.survival import logrank_stratified, restricted_mean_survival

    runs = collections.defaultdict(list)
    for path in sorted(Path(args.study, args.model).glob(f"*/seed_*/stability/{args.temperature}/{args.condition}_*/replica_*/summary.json")):
        variant, start = path.parts[-7], path.parts[-3]
        runs[variant].append((start, json.loads(path.read_text())))
    if "baseline" not in runs:
        raise SystemExit(f"{args.study}: no baseline runs of {args.model} at {args.temperature} ({args.condition})")
    horizon = max(d["run_length_ps"] for _, d in runs["baseline"])
    reasons = sorted({d["reason"] for rs in runs.values() for _, d in rs if d["failed"]})

    def arrays(variant, reason):
        times = np.array([d["time_to_failure_ps"] if d["failed"] else d["run_length_ps"] for _, d in runs[variant]])
        failed = np.array([bool(d["failed"]) and reason in (None, d["reason"]) for _, d in runs[variant]])
        return times, failed, [start for start, _ in runs[variant]]

    print(f"{args.study}: {args.model}, {args.condition} at {args.temperature}, RMST up to {horizon:g} ps; log-rank stratified by start structure")
    for reason in [None, *reasons]:
        base = arrays("baseline", reason)
        for variant in sorted(v for v in runs if v != "baseline"):
            ours = arrays(variant, reason)
            test = logrank_stratified(*ours, *base)
            print(f"  {reason or 'any reason':<14} {variant:<18} failed {ours[1].sum():>2}/{len(ours[1])} against {base[1].sum():>2}/{len(base[1])}; "
                  f"RMST {restricted_mean_survival(ours[0], ours[1], horizon):.3f} against {restricted_mean_survival(base[0], base[1], horizon):.3f} ps; "
                  f"log-rank p = {test.pvalue:.2g}")


if __name__ == "__main__":
    main()
