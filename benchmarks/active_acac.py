"""Active learning on acetylacetone with GFN2-xTB as the oracle: does labelling where the committee
disagrees make MD at 1200 K survive longer, and at what cost in oracle calls?

The embedded data's level (PBE-D3/def2-SVP) costs ~45 s per call here with PySCF
(benchmarks/oracle_check.py), so this benchmark uses an oracle consistent with its own training
data instead: the acac frames relabelled by GFN2-xTB (tblite, ~0.01 s per call), and the same
oracle for every frame the rounds add. Round 0 trains a committee of two NequIP seeds (the demo's
architecture, a shorter budget) on the relabelled 300 K frames; each round runs MD at 1200 K from
300 K and 600 K test frames, labels the frames where the two seeds disagree most and retrains.
Prints the per-round table (oracle calls, force MAE, RMST, log-rank against round 0) and writes
benchmarks/results/active_acac/learn.json.

    pip install tblite
    python benchmarks/active_acac.py [--budget 40] [--rounds 2] [--epochs 8] [--replicas 8]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def relabel(name: str, path: Path, count: int | None = None) -> Path:
    """acac:NAME's frames with GFN2-xTB energies and forces (made once)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    from tblite.ase import TBLite

    from stableff.data.io import read_frames

    if path.is_file():
        return path
    oracle = TBLite(method="GFN2-xTB", verbosity=0)
    frames = read_frames(f"acac:{name}")[:count]
    out = []
    for frame in frames:
        atoms = frame.to_atoms()
        atoms.calc = oracle
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        labelled = atoms.copy()
        labelled.calc = SinglePointCalculator(labelled, energy=energy, forces=forces)
        out.append(labelled)
    buffer = io.StringIO()
    ase.io.write(buffer, out, format="extxyz")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(buffer.getvalue())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--time-ps", type=float, default=0.4)
    parser.add_argument("--out", default=str(ROOT / "studies" / "active_acac"))
    args = parser.parse_args()

    import torch

    import stableff
    from stableff.study.learn import LearnConfig, run_learning

    out = Path(args.out)
    t0 = time.perf_counter()
    data = {name: relabel(name, out / "xtb" / f"{name}.extxyz", count) for name, count in (("train_300K", None), ("test_MD_300K", 100), ("test_MD_600K", 100))}
    print(f"relabelled with GFN2-xTB in {time.perf_counter() - t0:.1f} s", flush=True)
    config = LearnConfig.model_validate({
        "name": "acac-active-xtb",
        "training": {
            "data": {"train": str(data["train_300K"]), "val_fraction": 0.1, "split_seed": 0},
            "model": {"name": "nequip", "r_max": 4.0, "num_layers": 3, "l_max": 1, "num_features": 16, "num_bessels": 8, "polynomial_p": 6,
                      "radial_mlp_depth": 2, "radial_mlp_width": 32},
            "optimizer": {"name": "adam", "lr": 0.01}, "scheduler": {"name": "cosine", "min_lr": 0.0001},
            "training": {"epochs": args.epochs, "batch_size": 5, "ema_decay": 0.99, "grad_clip": 10.0},
        },
        "seeds": [0, 1],
        "oracle": {"calculator": "tblite.ase:TBLite", "kwargs": {"method": "GFN2-xTB", "verbosity": 0}},
        "budget": args.budget, "rounds": args.rounds, "per_round": -(-args.budget // args.rounds),
        "selection": {"method": "committee", "min_spacing_fs": 50},
        "exploration": {"temperatures_K": [1200], "replicas": args.replicas, "time_ps": args.time_ps,
                        "in_distribution": [{"file": "acac:test_MD_300K", "frames": [0, 200]}],
                        "out_of_distribution": [{"file": "acac:test_MD_600K", "frames": [0, 200]}]},
        "test": {"in_distribution": [str(data["test_MD_300K"])], "out_of_distribution": [str(data["test_MD_600K"])]},
    })
    t0 = time.perf_counter()
    result = run_learning(config, out)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; stableff {stableff.__version__}, torch {torch.__version__}; "
          f"learning {time.perf_counter() - t0:.0f} s")
    target = ROOT / "benchmarks" / "results" / "active_acac"
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "learn.json", target / "learn.json")
    print(f"written: {target / 'learn.json'}")


if __name__ == "__main__":
    main()
