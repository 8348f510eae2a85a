"""Runs inside the upstream virtual environment (made by throughput.py --peer nequip): upstream's
compiled paths, the ones its documentation recommends, timed as peer_nequip.py and
peer_nequip_md.py time its eager ones.

* training with ``compile_mode="compile"`` (upstream's CompileGraphModel: torch.compile of the
  model with its force graph), the same step as peer_nequip.peer_train_step;
* inference through AOT Inductor, built as ``nequip-compile --mode aotinductor --target ase`` builds
  it (nequip.utils.aot.aot_export_model with the ASE target's fields, dynamic node and edge
  counts, the model's metadata), loaded by ``NequIPCalculator.from_compiled_model``: ms per
  energy+forces call of one cell, and ms per NVT Langevin step for the cell and its supercell.

Prints one JSON line with the figures and the compile seconds of each path (the AOT Inductor
package is kept in --cache, so later rounds load it; torch.compile keeps its own cache).
--compile-threads sets the threads while compiling: Inductor writes its CPU kernels for that count,
and on this 2-core CPU Allegro compiled with 1 thread runs several times faster (with 2 threads)
than compiled with 2 (throughput.py and md_throughput.py time both and keep the faster).
"""

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from md_throughput import langevin_ms_per_step  # plain ASE and numpy: usable in the peer environment
from peer_nequip import build_peer_model, peer_data, peer_train_step


def version(model: str) -> str:
    from importlib.metadata import version as installed

    return installed("nequip") if model == "nequip" else installed("nequip-allegro")


def aoti_package(model, data, path: str) -> float:
    """Export ``model`` (eval, frozen) with AOT Inductor for the ASE target, as nequip-compile does;
    returns the seconds it took."""
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT
    from nequip.utils.aot import aot_export_model
    from nequip.utils.aoti_metadata import NEQUIP_AOTI_INPUTS_KEY, NEQUIP_AOTI_OUTPUTS_KEY, serialize_aoti_keys
    from nequip.utils.global_state import get_latest_global_state

    target = COMPILE_TARGET_DICT["ase"]
    dim = lambda name: torch.export.dynamic_shapes.Dim(name, min=2, max=torch.inf)
    batch_map = target["batch_map_settings"]({"graph": dim("num_frames"), "node": dim("num_nodes"), "edge": dim("num_edges")})
    metadata = dict(model.metadata)
    metadata.update(get_latest_global_state(only_metadata_related=True))
    metadata = {k: str(int(v)) if isinstance(v, bool) else v for k, v in metadata.items()}
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(target["input"])
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(target["output"])
    t0 = time.perf_counter()
    aot_export_model(model=model, device="cpu", input_fields=target["input"], output_fields=target["output"],
                     data=target["data_settings"](dict(data)), batch_map=batch_map, output_path=path,
                     inductor_configs={"aot_inductor.metadata": {k: str(v) for k, v in metadata.items()}}, seed=1)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=12)
    parser.add_argument("--eval-repeats", type=int, default=20)
    parser.add_argument("--md-steps", type=int, default=20)
    parser.add_argument("--supercell", type=int, default=2)
    parser.add_argument("--hyper", required=True, help="JSON of hyper-parameters")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", choices=["nequip", "allegro"], default="nequip")
    parser.add_argument("--paths", default="compile,aoti,aoti-md", help="compile: training; aoti: evaluation of one cell; aoti-md: Langevin MD")
    parser.add_argument("--compile-threads", type=int, help="threads while compiling (default: --threads); the kernels follow it, the run uses --threads")
    parser.add_argument("--cache", help="folder keeping the AOT Inductor packages between runs (default: a new temporary folder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = json.loads(args.hyper)
    paths = args.paths.split(",")
    compile_threads = args.compile_threads or torch.get_num_threads()
    result_threads = {"threads": torch.get_num_threads(), "compile_threads": compile_threads}

    from nequip.data import AtomicDataDict
    from nequip.integrations.ase import NequIPCalculator

    frames, type_names, data = peer_data(args.data, args.frames, hp["r_max"])
    result = {"version": version(args.model), "torch": torch.__version__, **result_threads}

    if "compile" in paths:
        model = build_peer_model(args.model, hp, type_names, options={"compile_mode": "compile"})
        batches = [AtomicDataDict.batched_from_list(data[k : k + args.batch_size]) for k in range(0, len(data), args.batch_size)]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        runtime_threads = torch.get_num_threads()
        torch.set_num_threads(compile_threads)  # Inductor writes its CPU kernels for this thread count
        t0 = time.perf_counter()
        try:
            peer_train_step(model, optimizer, batches[0])  # compiles
        finally:
            torch.set_num_threads(runtime_threads)
        result["compile_train_first_step_s"] = time.perf_counter() - t0
        for batch in batches[1:]:  # the other batch shapes, if they recompile
            peer_train_step(model, optimizer, batch)
        t0 = time.perf_counter()
        for step in range(args.train_steps):
            peer_train_step(model, optimizer, batches[step % len(batches)])
        result["compile_train_frames_per_s"] = args.train_steps * args.batch_size / (time.perf_counter() - t0)

    if "aoti" in paths or "aoti-md" in paths:
        model = build_peer_model(args.model, hp, type_names, energy_scale=0.05).eval().requires_grad_(False)
        cache = Path(args.cache or tempfile.mkdtemp())
        cache.mkdir(parents=True, exist_ok=True)
        runtime_threads = torch.get_num_threads()
        # one package per model, version, hyper-parameters and compile threads, kept in --cache for later rounds
        key = hashlib.sha256(json.dumps([args.model, hp, result["version"], torch.__version__, compile_threads], sort_keys=True).encode()).hexdigest()[:16]
        path = str(cache / f"{args.model}-{key}.nequip.pt2")
        if not Path(path).is_file():
            torch.set_num_threads(compile_threads)
            try:
                result["aoti_compile_s"] = aoti_package(model, AtomicDataDict.batched_from_list([data[0]]), path + ".part.nequip.pt2")
            finally:
                torch.set_num_threads(runtime_threads)
            os.replace(path + ".part.nequip.pt2", path)
        if "aoti" in paths:
            # evaluation as peer_nequip.py times the eager model: the loaded model on one prepared cell
            from nequip.model.inference_models import load_compiled_model
            from nequip.scripts._compile_utils import COMPILE_TARGET_DICT

            target = COMPILE_TARGET_DICT["ase"]
            compiled, _ = load_compiled_model(path, "cpu", list(target["input"]), list(target["output"]))
            single = target["data_settings"](dict(AtomicDataDict.batched_from_list([data[0]])))
            compiled(dict(single))
            t0 = time.perf_counter()
            for _ in range(args.eval_repeats):
                compiled(dict(single))[AtomicDataDict.FORCE_KEY].sum().item()
            result["aoti_ms_per_eval"] = 1000 * (time.perf_counter() - t0) / args.eval_repeats
        if "aoti-md" in paths:
            calculator = NequIPCalculator.from_compiled_model(path, device="cpu")
            result["aoti_md_ms_per_step"] = {}
            for repeat in (1, args.supercell):
                system = frames[0].repeat((repeat, repeat, repeat))
                result["aoti_md_ms_per_step"][str(len(system))] = langevin_ms_per_step(system, calculator, args.md_steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
