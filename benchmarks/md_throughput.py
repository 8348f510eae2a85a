"""MD speed: ms per NVT Langevin step of bench-S NequIP and Allegro on a 96-atom HfO2 cell and its
2x2x2 supercell (768 atoms), with stableff's ASE calculator and, with --peer nequip, upstream
nequip's ASE calculator (NequIPCalculator, for nequip and nequip-allegro models) for a model with
the same hyper-parameters, in the same run, with the ratios.

    python benchmarks/md_throughput.py [--peer nequip] [--steps 20] [--rounds 3] [--compile]

Both run the same ASE Langevin integrator (0.5 fs, 300 K); the time includes neighbour lists and
the energy+force evaluation. The codes alternate for --rounds rounds and each one's best round
counts. A further row times stableff's full `run_md` loop (failure monitors, thermo and
trajectory writing every 10 steps) on the small cell. With --compile stableff also runs its
compiled path (torch.compile, as `--compile` runs it; compiled before the timed steps), and the
faster of its two paths counts at each size.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH, BENCH_S, DEFAULT_DATA, ensure_peer_venv, measure_peer_compiled, peer_environment  # noqa: E402


def langevin_ms_per_step(atoms, calculator, steps):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(1))
    dynamics.run(2)
    t0 = time.perf_counter()
    dynamics.run(steps)
    return 1000 * (time.perf_counter() - t0) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peer", choices=["nequip"], help="also time upstream nequip / nequip-allegro, as shipped and with stableff's allocator settings")
    parser.add_argument("--peer-compiled", action="store_true", help="with --peer: also upstream's AOT Inductor model in its ASE calculator, and the ratio to upstream's fastest path")
    parser.add_argument("--models", default="nequip,allegro", help="comma-separated: nequip, allegro")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also stableff's compiled path; the faster of eager and compiled counts at each size")
    parser.add_argument("--rounds", type=int, default=3, help="alternate stableff and upstream this many times; each code's best round counts")
    parser.add_argument("--json", help="also write the times and ratios to this JSON file (benchmarks/speed_table.py reads it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    measured = {}

    from stableff import StableFFCalculator
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.md.engines.ase import run_md
    from stableff.md.settings import MDSettings
    from stableff.models import build_model
    from stableff.models.compiled import compile_inference
    from stableff.runtime import tune_allocator

    tuned = tune_allocator()
    frame = read_frames(args.data, index=0)[0]
    atoms = frame.to_atoms()
    atoms.calc = None
    stats = compute_statistics([frame], BENCH_S["r_max"])
    print(f"NVT Langevin 0.5 fs, HfO2 from {args.data}, {args.threads} threads, {args.steps} steps per size; "
          f"stableff with its command line's allocator settings ({'applied' if tuned else 'not available here'})")
    for name in args.models.split(","):
        hyper = BENCH[name]
        torch.manual_seed(0)
        model = build_model(name, type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, energy_scale=0.05, **hyper)
        calculator = StableFFCalculator(model.eval().requires_grad_(False))  # as a loaded checkpoint
        ours_labels = [f"stableff {name} (ASE Langevin)"]
        calculators = {ours_labels[0]: calculator}
        if args.compile:
            ours_labels.append(f"stableff {name} (ASE Langevin, compiled)")
            calculators[ours_labels[1]] = StableFFCalculator(compile_inference(copy.deepcopy(model)))
        hp = dict(hyper, avg_num_neighbors=stats.mean_num_neighbors)
        python = ensure_peer_venv(with_allegro=name == "allegro") if args.peer else None
        best: dict[str, dict[int, float]] = {}

        def keep(label, values):
            best[label] = {n: min(v, best.get(label, {}).get(n, float("inf"))) for n, v in values.items()}

        for _ in range(args.rounds):  # alternated, so that drift of the machine's speed hits both codes
            for label, calc in calculators.items():
                keep(label, {len(s): langevin_ms_per_step(s, calc, args.steps) for s in (atoms.repeat((r, r, r)) for r in (1, 2))})
            for same_allocator, label in (((False, "as shipped"), (True, "stableff's malloc")) if args.peer else ()):
                result = subprocess.run([str(python), str(ROOT / "benchmarks" / "peer_nequip_md.py"), "--data", args.data, "--steps", str(args.steps),
                                         "--hyper", json.dumps(hp), "--threads", str(args.threads), "--model", name],
                                        capture_output=True, text=True, env=peer_environment(same_allocator))
                if result.returncode != 0:
                    raise SystemExit(f"upstream {name} MD run failed:\n{result.stderr[-3000:]}")
                peer = json.loads(result.stdout.strip().splitlines()[-1])
                keep(f"upstream {name} {peer['version']} ({label})", {int(k): v for k, v in peer["ms_per_step"].items()})
            if args.peer and args.peer_compiled:
                peer = measure_peer_compiled(args.data, hyper, stats.mean_num_neighbors, 1, 1, 0, 0, args.threads, name, paths="aoti-md", md_steps=args.steps)
                keep(f"upstream {name} {peer['version']} (AOT Inductor, as shipped)", {int(k): v for k, v in peer["aoti_md_ms_per_step"].items()})
        with tempfile.TemporaryDirectory() as tmp:
            summary = run_md(atoms, calculator, MDSettings(steps=args.steps, progress=False), tmp)
        ours_rows = [(label, best[label]) for label in ours_labels]
        rows = [(row, values) for row, values in best.items() if row not in ours_labels]  # upstream's
        ours = best[ours_labels[0]]  # eager: the "eager" ratios compare eager with eager
        sizes = sorted(ours)
        # stableff's fastest figure at each size: the faster of its paths (eager, and compiled with --compile)
        fastest_label = {n: min(ours_labels, key=lambda label: best[label][n]) for n in sizes}
        fastest = {n: best[fastest_label[n]][n] for n in sizes}
        print(f"\n{'code':<48}" + "".join(f"{f'{n} atoms (ms/step)':>22}" for n in sizes))
        for row, values in ours_rows + rows:
            print(f"{row:<48}" + "".join(f"{values[n]:>22.1f}" for n in sizes))
        print(f"{'stableff run_md (monitors + files)':<48}{summary['ms_per_step']:>22.1f}{'':>22}")
        for row, theirs in rows:
            print(f"ratio {row} / stableff eager time per step (higher = stableff faster): " + ", ".join(f"{n} atoms {theirs[n] / ours[n]:.2f}x" for n in sizes))
        measured[name] = {"ms_per_step": {row: values for row, values in ours_rows + rows},
                          "stableff_path": {str(n): "compiled" if "compiled" in fastest_label[n] else "eager" for n in sizes},
                          "ratios": {row: {str(n): theirs[n] / ours[n] for n in sizes} for row, theirs in rows}}
        if rows:  # upstream's fastest row at each size against stableff's fastest path
            measured[name]["fastest"] = {str(n): min(({"ratio": theirs[n] / fastest[n], "path": row, "stableff_path": measured[name]["stableff_path"][str(n)]}
                                                      for row, theirs in rows), key=lambda f: f["ratio"]) for n in sizes}
            print("stableff's fastest / upstream's fastest: " + ", ".join(f"{n} atoms {f['ratio']:.2f}x ({f['path']}; stableff {f['stableff_path']})"
                                                                      for n, f in measured[name]["fastest"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(measured, indent=1) + "\n")


if __name__ == "__main__":
    main()
