"""Eager against compiled (torch.compile, ``stableff.models.compiled.compile_inference``): ms per energy+forces
evaluation of bench-S models on the 96-atom HfO2 cell and its 2x2x2 supercell (768 atoms), and
the one-time compile time, in one run with the two paths alternating.

    python benchmarks/compile_speed.py [--models nequip allegro] [--repeats 10] [--rounds 3] [--device cpu]
                                       [--kernel-threads 1]

``--kernel-threads``: threads of inductor's generated CPU kernels (stableff's default 1; 0: the
process's threads, inductor's own default). Inductor fixes them at compile time, and on a 2-core
CPU kernels compiled for 2 threads made the compiled path 2.3x slower than eager (Allegro).

Each evaluation is what MD needs per step: neighbour list excluded, energy and forces by autograd.
Float32 weights, random initialisation (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH, DEFAULT_DATA  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--models", nargs="+", default=["nequip", "allegro"], choices=sorted(BENCH))
    parser.add_argument("--repeats", type=int, default=10, help="evaluations per size, path and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--kernel-threads", type=int, help="threads of the generated CPU kernels (default: stableff's; 0: all)")
    args = parser.parse_args()

    from stableff.data import keys
    from stableff.data.graph import collate, frame_to_graph, to_device
    from stableff.data.io import frame_from_atoms, read_frames
    from stableff.models.compiled import KERNEL_THREADS, compile_inference
    from stableff.data.stats import compute_statistics
    from stableff.models import build_model
    from stableff.runtime import tune_allocator

    tune_allocator()  # as the command line runs

    frame = read_frames(args.data, index=0)[0]
    atoms = frame.to_atoms()
    atoms.calc = None
    device = torch.device(args.device)
    kernel_threads = KERNEL_THREADS if args.kernel_threads is None else (args.kernel_threads or None)
    rows = []
    for name in args.models:
        hyper = BENCH[name]
        stats = compute_statistics([frame], hyper["r_max"])
        paths = {}
        for label in ("eager", "compiled"):
            torch.manual_seed(0)
            paths[label] = build_model(name, type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, energy_scale=0.05, **hyper).to(device).eval().requires_grad_(False)
        batches = {}
        for repeat in (1, 2):
            system = frame_from_atoms(atoms.repeat((repeat, repeat, repeat)))
            batches[len(system)] = to_device(collate([frame_to_graph(system, stats.type_numbers, hyper["r_max"])]), device)

        def evaluate(model, batch):
            out = model(batch, compute_forces=True, compute_stress=False)
            return out[keys.FORCES].sum().item()  # waits for the device

        compile_inference(paths["compiled"], kernel_threads=kernel_threads)
        start = time.perf_counter()
        for batch in batches.values():  # both sizes: the dynamic-shape graph is built once
            evaluate(paths["compiled"], batch)
        compile_s = time.perf_counter() - start
        compiled_ok = paths["compiled"].compiled
        for batch in batches.values():
            evaluate(paths["eager"], batch)
            a, b = paths["eager"](batch)[keys.FORCES], paths["compiled"](batch)[keys.FORCES]
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), "compiled forces differ from eager"
        times = {(label, n): [] for label in paths for n in batches}
        for _ in range(args.rounds):
            for n, batch in batches.items():
                for _ in range(args.repeats):  # the paths alternate call by call: drift hits them alike
                    for label, model in paths.items():
                        t0 = time.perf_counter()
                        evaluate(model, batch)
                        times[(label, n)].append(1000 * (time.perf_counter() - t0))
        median = {k: statistics.median(v) for k, v in times.items()}
        rows.append((name, compile_s, compiled_ok, median, sorted(batches)))
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads, {os.cpu_count()} cores"
    print(f"bench-S models, float32, energy + forces of one HfO2 cell; {where}; compiled CPU kernels on {kernel_threads or 'all'} thread(s); "
          f"median of {args.rounds} x {args.repeats} evaluations; torch {torch.__version__}")
    for name, compile_s, ok, median, sizes in rows:
        status = f"compiled in {compile_s:.1f} s" if ok else "compilation FAILED, eager fallback"
        print(f"\n{name} ({status})")
        print(f"{'path':<10}" + "".join(f"{f'{n} atoms (ms)':>18}" for n in sizes))
        for label in ("eager", "compiled"):
            print(f"{label:<10}" + "".join(f"{median[(label, n)]:>18.1f}" for n in sizes))
        print("eager / compiled: " + ", ".join(f"{n} atoms {median[('eager', n)] / median[('compiled', n)]:.2f}x" for n in sizes))


if __name__ == "__main__":
    main()
