"""Training and inference throughput of stableff models on 96-atom HfO2 cells.

    python benchmarks/throughput.py                 # stableff: NequIP (bench-S), Allegro, GemNet-T
    python benchmarks/throughput.py --peer nequip   # + upstream nequip and nequip-allegro, same run, ratios
    python benchmarks/throughput.py --models nequip --peer nequip

bench-S: NequIP, r_max 5.0, 3 layers, l_max 1, 32 features, 8 Bessel functions, p = 6, radial MLP
2 x 64, float32, batch 4, on ../shared/data/hfo2/train_Hf32O64.extxyz. Prints training frames per
second (forward + energy/force loss + backward + Adam step) and milliseconds per energy+forces
evaluation of one cell. The peer runs in its own virtual environment (.venv-peer-nequip, created
on first use with `pip install torch==2.13.0 nequip`). stableff runs with the allocator settings its
command line applies (stableff.runtime); the peer runs twice per round, as shipped and with the
same settings (environment variables), so both ratios are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "hfo2" / "train_Hf32O64.extxyz"
PEER_VENV = ROOT / ".venv-peer-nequip"

BENCH_S = dict(r_max=5.0, num_layers=3, l_max=1, parity=True, num_features=32, num_bessels=8, polynomial_p=6, radial_mlp_depth=2, radial_mlp_width=64)
# bench-S-like sizes for the other two models
BENCH_S_ALLEGRO = dict(r_max=5.0, num_layers=2, l_max=1, parity=True, num_scalar_features=32, num_tensor_features=8, num_bessels=8,
                       polynomial_p=6, two_body_mlp_width=32, latent_mlp_width=32, latent_mlp_depth=1, readout_mlp_width=16)
BENCH_S_GEMNET = dict(r_max=5.0, num_blocks=3, num_spherical=7, num_radial=6, emb_size_atom=32, emb_size_edge=32, emb_size_trip=16,
                      emb_size_rbf=8, emb_size_cbf=8, emb_size_bil_trip=16)
# the DimeNet++-style model that stableff called gemnet_t before it followed the paper
BENCH_S_DIMENET_LIKE = dict(r_max=5.0, num_blocks=3, atom_features=32, edge_features=32, triplet_features=16, num_radial=8, num_spherical=5, num_sph_radial=4)
BENCH = {"nequip": BENCH_S, "allegro": BENCH_S_ALLEGRO, "gemnet_t": BENCH_S_GEMNET, "dimenet_pp_like": BENCH_S_DIMENET_LIKE}


def stableff_train_step(model, optimizer, batch) -> None:
    """One step of the benchmarks' training (the same as the peer scripts'): per-atom energy MSE +
    force MSE, weights 1 and 1, backward, optimiser step."""
    from stableff.data import keys

    out = model(batch, compute_forces=True, compute_stress=False, create_graph=True)
    n = batch[keys.NUM_ATOMS].to(out[keys.TOTAL_ENERGY].dtype)
    loss = (((out[keys.TOTAL_ENERGY] - batch[keys.TOTAL_ENERGY]) / n) ** 2).mean() + ((out[keys.FORCES] - batch[keys.FORCES]) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure_stableff(frames, hyper, batch_size, train_steps, eval_repeats, name="nequip", compiled=False):
    """Training frames/s and ms per energy+forces evaluation of one stableff model; with
    ``compiled`` also the evaluation through torch.compile (``stableff.models.compiled``, as
    ``--compile`` runs it; its first call, where it compiles, not counted)."""
    from stableff.data.graph import collate, frame_to_graph
    from stableff.data.stats import compute_statistics
    from stableff.models import build_model
    from stableff.data import keys

    stats = compute_statistics(frames, hyper["r_max"])
    torch.manual_seed(0)
    model = build_model(name, type_numbers=stats.type_numbers, avg_num_neighbors=stats.mean_num_neighbors, energy_scale=1.0, energy_shift=0.0, **hyper)
    graphs = [frame_to_graph(f, stats.type_numbers, hyper["r_max"]) for f in frames]
    batches = [collate(graphs[k : k + batch_size]) for k in range(0, len(graphs), batch_size)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step(batch):
        stableff_train_step(model, optimizer, batch)

    model.train()
    train_step(batches[0])
    t0 = time.perf_counter()
    for step in range(train_steps):
        train_step(batches[step % len(batches)])
    train_time = time.perf_counter() - t0
    model.eval().requires_grad_(False)  # as a loaded checkpoint (model_from_checkpoint)
    single = collate([graphs[0]])

    def ms_per_eval() -> float:
        t0 = time.perf_counter()
        for _ in range(eval_repeats):
            model(single, compute_stress=False)[keys.FORCES].sum().item()
        return 1000 * (time.perf_counter() - t0) / eval_repeats

    model(single, compute_stress=False)
    result = {
        "train_frames_per_s": train_steps * batch_size / train_time,
        "ms_per_eval": ms_per_eval(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "mean_num_neighbors": stats.mean_num_neighbors,
    }
    if compiled:
        from stableff.models.compiled import compile_inference

        compile_inference(model)
        t0 = time.perf_counter()
        model(single, compute_stress=False)
        result["compile_s"] = time.perf_counter() - t0
        if not model.compiled:
            raise SystemExit(f"stableff {name}: torch.compile failed on this platform")
        result["compiled_ms_per_eval"] = ms_per_eval()
    return result


def ensure_peer_venv(with_allegro: bool = False) -> Path:
    python = PEER_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {PEER_VENV} with upstream nequip (one-time, a few minutes) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0", "nequip"], check=True)
    if with_allegro and subprocess.run([str(python), "-c", "import allegro"], capture_output=True).returncode != 0:
        print("installing nequip-allegro into the peer environment ...", flush=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0", "nequip-allegro"], check=True)
    return python


def peer_environment(same_allocator: bool) -> dict:
    """The environment for a peer process: as the user's, or with stableff's allocator settings."""
    from stableff.runtime import ALLOCATOR_ENV

    return dict(os.environ, **ALLOCATOR_ENV) if same_allocator else {k: v for k, v in os.environ.items() if k not in ALLOCATOR_ENV}


def measure_peer(data, hyper, avg_num_neighbors, batch_size, frames, train_steps, eval_repeats, threads, model="nequip", same_allocator=False):
    python = ensure_peer_venv(with_allegro=model == "allegro")
    hp = dict(hyper, avg_num_neighbors=avg_num_neighbors)
    result = subprocess.run(
        [str(python), str(ROOT / "benchmarks" / "peer_nequip.py"), "--data", str(data), "--frames", str(frames), "--batch-size", str(batch_size),
         "--train-steps", str(train_steps), "--eval-repeats", str(eval_repeats), "--hyper", json.dumps(hp), "--threads", str(threads), "--model", model],
        capture_output=True, text=True, env=peer_environment(same_allocator),
    )
    if result.returncode != 0:
        raise SystemExit(f"upstream nequip run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_peer_compiled(data, hyper, avg_num_neighbors, batch_size, frames, train_steps, eval_repeats, threads, model="nequip", paths="compile,aoti", md_steps=20):
    """Upstream's compiled paths (benchmarks/peer_compiled.py, as shipped): torch.compile training,
    AOT Inductor evaluation or MD, each compiled with 1 thread and with ``threads`` (Inductor's CPU
    kernels follow the compile-time thread count; each in its own Inductor cache) and run with
    ``threads``; every figure is the faster of the two, ``by_compile_threads`` has both. The AOT
    Inductor packages are kept in build/peer_compiled between runs."""
    python = ensure_peer_venv(with_allegro=model == "allegro")
    hp = dict(hyper, avg_num_neighbors=avg_num_neighbors)
    runs = {}
    for compile_threads in sorted({1, threads}):
        env = dict(peer_environment(False), TORCHINDUCTOR_CACHE_DIR=str(ROOT / "build" / "peer_compiled" / f"inductor_{compile_threads}"))
        result = subprocess.run(
            [str(python), str(ROOT / "benchmarks" / "peer_compiled.py"), "--data", str(data), "--frames", str(frames), "--batch-size", str(batch_size),
             "--train-steps", str(train_steps), "--eval-repeats", str(eval_repeats), "--md-steps", str(md_steps), "--hyper", json.dumps(hp),
             "--threads", str(threads), "--compile-threads", str(compile_threads), "--model", model, "--paths", paths, "--cache", str(ROOT / "build" / "peer_compiled")],
            capture_output=True, text=True, env=env,
        )
        if result.returncode != 0:
            raise SystemExit(f"upstream {model} compiled run failed:\n{result.stderr[-3000:]}")
        runs[str(compile_threads)] = json.loads(result.stdout.strip().splitlines()[-1])
    best = dict(next(iter(runs.values())), by_compile_threads=runs)
    if "compile" in paths:
        best["compile_train_frames_per_s"] = max(r["compile_train_frames_per_s"] for r in runs.values())
    if "aoti" in paths.split(","):
        best["aoti_ms_per_eval"] = min(r["aoti_ms_per_eval"] for r in runs.values())
    if "aoti-md" in paths:
        best["aoti_md_ms_per_step"] = {n: min(r["aoti_md_ms_per_step"][n] for r in runs.values()) for n in next(iter(runs.values()))["aoti_md_ms_per_step"]}
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--eval-repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternate stableff and peer this many times; the best round counts")
    parser.add_argument("--peer", choices=["nequip"], help="also measure the upstream codes (nequip, nequip-allegro) with the same hyper-parameters")
    parser.add_argument("--peer-compiled", action="store_true", help="with --peer: also upstream's compiled paths (torch.compile training, AOT Inductor evaluation) and the ratio to upstream's fastest path")
    parser.add_argument("--models", default="nequip,allegro,gemnet_t", help="comma-separated models to measure")
    parser.add_argument("--compile", action="store_true", help="also stableff's compiled evaluation (torch.compile, as --compile runs it); the faster of its two paths counts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", help="also write the rows and ratios to this JSON file (benchmarks/speed_table.py reads it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from stableff.data.io import read_frames
    from stableff.runtime import tune_allocator

    frames = read_frames(args.data, index=f":{args.frames}", require=("energy", "forces"))
    models = args.models.split(",")
    tuned = tune_allocator()
    print(f"{len(frames)} frames of {len(frames[0])} atoms from {args.data}; batch {args.batch_size}, float32, {args.threads} threads; "
          f"stableff with its command line's allocator settings ({'applied' if tuned else 'not available here'})")
    best = lambda runs: {"train_frames_per_s": max(r["train_frames_per_s"] for r in runs), "ms_per_eval": min(r["ms_per_eval"] for r in runs), "num_parameters": runs[0]["num_parameters"]}

    def best_stableff(runs):
        """Each path's best round; evaluation: the faster of eager and compiled, with its path."""
        row = best(runs)
        row.update(fastest_ms_per_eval=row["ms_per_eval"], eval_path="eager")
        if "compiled_ms_per_eval" in runs[0]:
            row["compiled_ms_per_eval"] = min(r["compiled_ms_per_eval"] for r in runs)
            row["compile_s"] = [r["compile_s"] for r in runs]
            if row["compiled_ms_per_eval"] < row["fastest_ms_per_eval"]:
                row["fastest_ms_per_eval"], row["eval_path"] = row["compiled_ms_per_eval"], "compiled"
        return row

    rows, ratios, measured = [], [], {}
    for name in models:
        ours, shipped, same, compiled = [], [], [], []
        has_peer = args.peer and name in ("nequip", "allegro")
        for round_ in range(args.rounds):
            ours.append(measure_stableff(frames, BENCH[name], args.batch_size, args.train_steps, args.eval_repeats, name, compiled=args.compile))
            if has_peer:
                peer_args = (args.data, BENCH[name], ours[-1]["mean_num_neighbors"], args.batch_size, args.frames, args.train_steps, args.eval_repeats, args.threads, name)
                for runs, same_allocator in ((shipped, False), (same, True)):
                    runs.append(measure_peer(*peer_args, same_allocator))
                if args.peer_compiled:
                    run = measure_peer_compiled(*peer_args, paths="compile,aoti")
                    compiled.append({"train_frames_per_s": run["compile_train_frames_per_s"], "ms_per_eval": run["aoti_ms_per_eval"], "num_parameters": shipped[-1]["num_parameters"],
                                     "version": run["version"], "compile_s": {t: {k: v for k, v in r.items() if k.endswith("_s") and not k.endswith("per_s")} for t, r in run["by_compile_threads"].items()},
                                     "by_compile_threads": {t: {k: r.get(k) for k in ("compile_train_frames_per_s", "aoti_ms_per_eval")} for t, r in run["by_compile_threads"].items()}})
        rows.append((f"stableff {name}", best_stableff(ours)))
        if has_peer:
            upstream = "nequip" if name == "nequip" else "nequip-allegro"
            a = rows[-1][1]
            paths = [(shipped, "as shipped"), (same, "stableff's malloc")] + ([(compiled, "compiled: torch.compile training, AOT Inductor evaluation")] if compiled else [])
            for runs, label in paths:
                b = best(runs)
                rows.append((f"{upstream} {runs[0]['version']} ({label})", b))
                training, evaluation = a["train_frames_per_s"] / b["train_frames_per_s"], b["ms_per_eval"] / a["ms_per_eval"]
                measured.setdefault(name, {"upstream": f"{upstream} {runs[0]['version']}", "ratios": {}})["ratios"][label] = {"training": training, "evaluation": evaluation}
                ratios.append(f"{name}: stableff / {upstream} ({label}): training {training:.2f}x, evaluation {evaluation:.2f}x (higher is faster)")
            if compiled:
                entry = measured[name]
                entry["compile_s"] = [c["compile_s"] for c in compiled]
                fastest = {"training": min(entry["ratios"].items(), key=lambda kv: kv[1]["training"]), "evaluation": min(entry["ratios"].items(), key=lambda kv: kv[1]["evaluation"])}
                # against stableff's fastest path too (training: eager, its only path)
                stableff_path = {"training": "eager", "evaluation": a["eval_path"]}
                speedup = {"training": 1.0, "evaluation": a["ms_per_eval"] / a["fastest_ms_per_eval"]}
                entry["fastest"] = {kind: {"ratio": r[kind] * speedup[kind], "path": label, "stableff_path": stableff_path[kind]} for kind, (label, r) in fastest.items()}
                ratios.append(f"{name}: stableff's fastest / {upstream}'s fastest path: "
                              + ", ".join(f"{kind} {f['ratio']:.2f}x (upstream {f['path']}; stableff {f['stableff_path']})" for kind, f in entry["fastest"].items()))
    print(f"\n{'code':<44} {'train (frames/s)':>17} {'eval (ms/cell)':>15} {'parameters':>11}")
    for name, r in rows:
        print(f"{name:<44} {r['train_frames_per_s']:>17.2f} {r['ms_per_eval']:>15.1f} {r['num_parameters']:>11,}")
        if "compiled_ms_per_eval" in r:
            print(f"{'  ... compiled evaluation (ms/cell)':<44} {'':>17} {r['compiled_ms_per_eval']:>15.1f}  (compiled in {', '.join(f'{c:.1f}' for c in r['compile_s'])} s)")
    if ratios:
        print()
        print("\n".join(ratios))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": dict(rows), "models": measured}, indent=1) + "\n")


if __name__ == "__main__":
    main()
