"""Do the batched and ase MD engines give the same stability statistics? Two one-sided tests.

Trains the small NequIP of the tests (acac, 120 frames, 4 epochs: a model that fails within tens
of fs at 600 K, at times that vary between replicas), runs the same R replica seeds with both
engines (Langevin, 600 K, 0.15 ps) and tests equivalence of the RMST: the 90 % bootstrap interval
of RMST(batched) - RMST(ase) inside +-10 % of the run length (``ENGINE_EQUIVALENCE_MARGIN``), with
the log-rank test beside it. Writes benchmarks/results/engine_equivalence/replicas-R.json.

    python benchmarks/engine_equivalence.py [--replicas 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=64, help="replicas per engine (default 64)")
    parser.add_argument("--temperature-K", type=float, default=600.0)
    parser.add_argument("--time-ps", type=float, default=0.15)
    args = parser.parse_args()
    from stableff.analysis.survival import ENGINE_EQUIVALENCE_MARGIN, logrank_stratified, rmst_equivalence
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = parse_config({
            "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.1, "max_train_frames": 120},
            "model": {"name": "nequip", "r_max": 4.0, "num_layers": 2, "num_features": 8, "num_bessels": 6, "radial_mlp_width": 16, "radial_mlp_depth": 1},
            "training": {"epochs": 4, "batch_size": 4, "num_threads": 2}, "optimizer": {"lr": 0.01}})
        Trainer(config, tmp / "model", progress=False).run()
        runs = {}
        for engine in ("ase", "batched"):
            subprocess.run([sys.executable, "-m", "stableff", "stability", str(tmp / "model" / "best.ckpt"), "acac:test_MD_300K",
                            "--replicas", str(args.replicas), "--temperature-K", str(args.temperature_K), "--time-ps", str(args.time_ps),
                            "--engine", engine, "--out", str(tmp / engine), "--json", str(tmp / f"{engine}.json")], check=True, capture_output=True)
            replicas = json.loads((tmp / f"{engine}.json").read_text())["replicas"]
            runs[engine] = {"time_to_failure_ps": [r["time_to_failure_ps"] for r in replicas], "failed": [bool(r["failed"]) for r in replicas]}
    horizon = args.time_ps
    margin = ENGINE_EQUIVALENCE_MARGIN * horizon
    a, b = runs["batched"], runs["ase"]
    tost = rmst_equivalence(a["time_to_failure_ps"], a["failed"], b["time_to_failure_ps"], b["failed"], horizon, margin)
    n = args.replicas
    logrank = logrank_stratified(b["time_to_failure_ps"], b["failed"], np.zeros(n), a["time_to_failure_ps"], a["failed"], np.zeros(n))
    for engine, run in runs.items():
        print(f"{engine:>8}: mean t_fail {np.mean(run['time_to_failure_ps']):.4f} ps, {sum(run['failed'])}/{n} failed")
    print(f"RMST batched - ase: {tost['difference_ps']:+.4f} ps, 90 % interval [{tost['low_ps']:+.4f}, {tost['high_ps']:+.4f}] ps, "
          f"margin +-{margin:.4f} ps (10 % of {horizon:g} ps): {'equivalent' if tost['equivalent'] else 'equivalence NOT shown'} "
          f"(TOST p = {tost['p_value']:.3f}); log-rank p = {logrank.pvalue:.3f}")
    out = ROOT / "benchmarks" / "results" / "engine_equivalence" / f"replicas-{n}.json"
    out.write_text(json.dumps({"settings": vars(args), "runs": runs, "tost": tost, "logrank_pvalue": logrank.pvalue}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
