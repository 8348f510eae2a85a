"""Cost against system size: ms per MD step and peak memory (RSS) of bench-S NequIP and Allegro on
HfO2 supercells of 96, 768, 6144 and 49,152 atoms (the 96-atom training cell repeated 1, 2, 4, 8
times along each axis), with stableff's ASE calculator in ASE's Langevin integrator (0.5 fs,
300 K; the time includes the neighbour list and the energy+force evaluation).

    python benchmarks/scaling.py [--models nequip,allegro] [--repeats 1,2,4,8] [--json FILE]

Every (model, size) runs in its own process, so that its peak RSS is its own: the process builds
the model (seed 0, float32, as a loaded checkpoint), reads its RSS, takes one step to warm up and
then times --steps steps (fewer for the large cells: at least 2), --rounds times with the sizes
interleaved (the median counts). NequIP above 524,288 edges sums its messages in chunks and keeps
as many for the force backward as its memory budget holds (the rest are recomputed); the log says
how many. A size whose projected peak (the memory per atom measured on the
next smaller one) exceeds 90 % of the available memory is skipped and said, except where NequIP
sums its messages in chunks of edges and the smaller size did not (the projection does not apply). Printed per size:
ms/step, us per atom-step, that cost against the 768-atom cell's (target: the largest within 1.2x), peak
RSS and the memory the steps added per atom (target: flat), with the machine and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from throughput import BENCH, BENCH_S, DEFAULT_DATA  # noqa: E402

#: steps timed per size (after one warm-up step): a large cell's step is long and steady
DEFAULT_STEPS = {96: 20, 768: 20, 6144: 5, 49152: 2}


def rss_mib() -> float:
    """This process's resident memory now (MiB), from /proc."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
    """One (model, size): build, warm up, time; one JSON line on stdout."""
    import numpy as np
    import torch
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    torch.set_num_threads(args.threads)
    from stableff import StableFFCalculator
    from stableff.data.io import read_frames
    from stableff.data.neighbors import neighbor_list
    from stableff.data.stats import compute_statistics
    from stableff.models import build_model
    from stableff.runtime import tune_allocator

    tune_allocator()  # as the command line does
    frame = read_frames(args.data, index=0)[0]
    stats = compute_statistics([frame], BENCH_S["r_max"])
    torch.manual_seed(0)
    model = build_model(args.model, type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, energy_scale=0.05, **BENCH[args.model])
    atoms = frame.to_atoms()
    atoms.calc = None
    atoms = atoms.repeat((args.repeat,) * 3)
    edges = int(neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, BENCH[args.model]["r_max"])[0].shape[0])
    atoms.calc = StableFFCalculator(model.eval().requires_grad_(False))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(1))
    before = rss_mib()
    dynamics.run(1)
    t0 = time.perf_counter()
    dynamics.run(args.steps)
    ms = 1000 * (time.perf_counter() - t0) / args.steps
    kept = getattr(model.network, "last_kept_edge_work", None)  # NequIP summing in chunks: how many the backward kept
    print(json.dumps({"model": args.model, "atoms": len(atoms), "edges": edges, "steps": args.steps, "ms_per_step": ms,
                      "rss_before_mib": before, "peak_rss_mib": peak_rss_mib(),
                      "chunks_kept": kept.kept_chunks if kept else None, "chunks_recomputed": kept.recomputed_chunks if kept else None,
                      "kept_limit_mib": kept.limit / 2**20 if kept else None}))


def available_mib() -> float:
    """MemAvailable from /proc/meminfo (MiB)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def versions() -> str:
    from importlib.metadata import version

    parts = []
    for package in ("stableff", "torch", "e3nn", "ase", "vesin"):
        try:
            parts.append(f"{package} {version(package)}")
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            parts.append(f"{package} ?")
    return ", ".join(parts)


def machine(threads: int) -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB, {threads} threads, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--models", default="nequip,allegro", help="comma-separated: nequip, allegro")
    parser.add_argument("--repeats", default="1,2,4,8", help="supercell repeats along each axis (1 = 96 atoms, 8 = 49,152)")
    parser.add_argument("--steps", type=int, help="timed steps for every size (default: 20, 20, 5, 2 for 96, 768, 6144, 49,152 atoms)")
    parser.add_argument("--rounds", type=int, default=3, help="run every size this many times (sizes interleaved); the median ms/step counts")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default (the cores)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads is None:
        import torch

        args.threads = torch.get_num_threads()
    if args.child:
        child(args)
        return
    repeats = [int(r) for r in args.repeats.split(",")]
    from stableff.models.nequip import InteractionLayer

    chunk_above, edge_chunk = InteractionLayer.chunk_above, InteractionLayer.edge_chunk
    print(f"MD cost against size: bench-S models on HfO2 supercells of {args.data}, ASE Langevin 0.5 fs\n"
          f"machine: {machine(args.threads)}\nversions: {versions()}", flush=True)
    rows = []
    for name in args.models.split(","):
        if name not in ("nequip", "allegro"):
            raise SystemExit(f"--models: '{name}' is not one of nequip, allegro")
        for repeat in repeats:
            rows.append({"model": name, "atoms": 96 * repeat**3, "repeat": repeat, "runs": []})
    # rounds outermost, so that drift of the machine's speed hits every size alike; the median counts
    for round_ in range(args.rounds):
        for row in rows:
            if "skipped" in row or "failed" in row:
                continue
            name, atoms = row["model"], row["atoms"]
            measured = [r for r in rows if r["model"] == name and r["runs"] and r["atoms"] < atoms]
            if not row["runs"] and measured:  # a size that cannot fit is said, not run into the kernel's OOM killer
                largest = measured[-1]["runs"][-1]
                per_atom = (largest["peak_rss_mib"] - largest["rss_before_mib"]) / largest["atoms"]
                projected = largest["rss_before_mib"] + per_atom * atoms
                edges = largest["edges"] * atoms / largest["atoms"]
                if name == "nequip" and largest["edges"] <= chunk_above < edges:  # the smaller size's memory per atom does not carry over
                    print(f"  {name} {atoms} atoms: ~{edges:,.0f} edges > {chunk_above:,}: NequIP sums its messages in chunks of "
                          f"{edge_chunk:,} edges here, so the unchunked {1024 * per_atom:.0f} KiB per atom at {largest['atoms']:,} atoms "
                          f"(projected {projected / 1024:.1f} GiB) does not apply; running", flush=True)
                elif projected > 0.9 * available_mib():
                    row["skipped"] = (f"projected peak {projected / 1024:.1f} GiB ({1024 * per_atom:.0f} KiB per atom, as measured at "
                                      f"{largest['atoms']:,} atoms) > 90 % of the {available_mib() / 1024:.1f} GiB available")
                    print(f"  {name} {atoms} atoms: skipped: {row['skipped']}", flush=True)
                    continue
            steps = args.steps or DEFAULT_STEPS.get(atoms, 2)
            command = [sys.executable, __file__, "--child", "--model", name, "--repeat", str(row["repeat"]), "--steps", str(steps),
                       "--threads", str(args.threads), "--data", args.data]
            t0 = time.perf_counter()
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
                print(f"  {name} {atoms} atoms: failed (exit {result.returncode}): {last}", flush=True)
                row["failed"] = result.stderr[-2000:]
                continue
            run = json.loads(result.stdout.strip().splitlines()[-1])
            row["runs"].append(run)
            chunks = (f", chunks per step kept {run['chunks_kept']} / recomputed {run['chunks_recomputed']} "
                      f"(budget {run['kept_limit_mib'] / 1024:.1f} GiB)") if run.get("chunks_kept") is not None else ""
            print(f"  round {round_ + 1}: {name} {atoms} atoms: {run['ms_per_step']:.1f} ms/step, peak RSS {run['peak_rss_mib']:.0f} MiB"
                  f"{chunks} ({time.perf_counter() - t0:.0f} s)", flush=True)
    for row in rows:
        if row["runs"]:
            runs = row["runs"]
            row.update(edges=runs[0]["edges"], steps=runs[0]["steps"], ms_per_step=statistics.median(r["ms_per_step"] for r in runs),
                       peak_rss_mib=max(r["peak_rss_mib"] for r in runs), rss_before_mib=statistics.median(r["rss_before_mib"] for r in runs))
    print(f"\n{'model':<8} {'atoms':>7} {'edges':>10} {'steps':>5} {'ms/step':>10} {'us/atom-step':>13} {'vs 768':>7} "
          f"{'peak RSS (MiB)':>15} {'step memory (KiB/atom)':>23}")
    for name in args.models.split(","):
        own = [r for r in rows if r["model"] == name and r["runs"]]
        reference = next((r for r in own if r["atoms"] == 768), None)
        for r in own:
            per_atom = 1000 * r["ms_per_step"] / r["atoms"]
            against = per_atom / (1000 * reference["ms_per_step"] / 768) if reference else float("nan")
            added = 1024 * (r["peak_rss_mib"] - r["rss_before_mib"]) / r["atoms"]
            r.update(us_per_atom_step=per_atom, per_atom_vs_768=against, step_kib_per_atom=added)
            print(f"{name:<8} {r['atoms']:>7,} {r['edges']:>10,} {r['steps']:>5} {r['ms_per_step']:>10.1f} {per_atom:>13.2f} {against:>6.2f}x "
                  f"{r['peak_rss_mib']:>15.0f} {added:>23.1f}")
        for r in rows:
            if r["model"] == name and ("skipped" in r or "failed" in r):
                print(f"{name:<8} {r['atoms']:>7,}  {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed (see the log above)'}")
        largest = max(own, key=lambda r: r["atoms"], default=None)
        if reference and largest and largest["atoms"] > 768:
            verdict = "within" if largest["per_atom_vs_768"] <= 1.2 else "NOT within"
            spread = ""
            if len(largest["runs"]) == len(reference["runs"]) > 1:  # the same round's two sizes, side by side
                largest["per_round_vs_768"] = [(a["ms_per_step"] / largest["atoms"]) / (b["ms_per_step"] / 768) for a, b in zip(largest["runs"], reference["runs"])]
                above = sum(ratio > 1.2 for ratio in largest["per_round_vs_768"])
                spread = f"; per round {', '.join(f'{x:.2f}' for x in largest['per_round_vs_768'])}x" + (f", {above} of them above 1.2x" if above else "")
            print(f"{name}: per-atom cost at {largest['atoms']:,} atoms is {largest['per_atom_vs_768']:.2f}x the 768-atom one "
                  f"(median of the rounds' ms/step; {verdict} the 1.2x target{spread})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(args.threads), "versions": versions(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
