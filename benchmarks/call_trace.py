"""Trace the calls between stableff's files that one small study makes (the house's map).

Runs a tiny study (the demo's data, 1 seed, 1 epoch, 2 replicas of a few steps, batched engine)
under ``sys.setprofile`` and counts, over the distinct (caller function -> callee function) pairs
whose files differ:

* ``calls between files``: every such pair;
* ``back into a file already left``: the callee's file is already on the call stack below the
  caller (the call returns into a file the thread of control had left: ``a -> b -> a``);
* ``up to a lower layer``: the callee's module is in a lower layer of the architecture than the
  caller's (in the table of tests/test_architecture.py: data 1 < models 2 < ... < cli 8) while a
  module of a higher layer than the caller is on the stack below it, i.e. control went down and
  comes back up for another concept.

Worker processes are not traced (the batched engine runs in this process with ``workers: 1``).

    python benchmarks/call_trace.py [--out DIR] [--list]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
PACKAGE = str(ROOT / "stableff") + os.sep

STUDY = """
name: call-trace
training:
  data: {train: acac:train_300K, isolated_atoms: acac:isolated_atoms, val_fraction: 0.1, split_seed: 0, max_train_frames: 20}
  model: {name: nequip, r_max: 4.0, num_layers: 2, l_max: 1, num_features: 8, num_bessels: 8}
  optimizer: {name: adam, lr: 0.01}
  training: {epochs: 1, batch_size: 5}
  decorrelation: {lambda_max: 0.3}
variants: [baseline, decorrelated]
seeds: [0]
test: {in_distribution: [acac:test_MD_300K], out_of_distribution: [acac:test_MD_600K]}
stability:
  temperatures_K: [1200]
  replicas: 2
  time_ps: 0.01
  workers: 1
  in_distribution: [{file: acac:test_MD_300K, frames: [0]}]
  out_of_distribution: [{file: acac:test_MD_600K, frames: [0]}]
"""


def _unit(filename: str) -> str:
    return Path(filename).relative_to(PACKAGE).parts[0].removesuffix(".py")


def trace_study(out_dir: Path) -> dict:
    from test_architecture import LAYERS

    from stableff.study import load_study_config, run_study

    config = out_dir / "study.yaml"
    config.write_text(STUDY)
    study = load_study_config(config)
    edges: dict[tuple, set] = {}
    stack: list[str] = []  # file of each frame of stableff's on the stack (None for others)

    def profile(frame, event, arg):
        if event == "call":
            filename = frame.f_code.co_filename
            own = filename.startswith(PACKAGE)
            if own and stack:
                caller = next((f for f in reversed(stack) if f is not None), None)
                if caller is not None and caller[0] != filename:
                    callee_file = filename
                    below = [f[0] for f in stack if f is not None]
                    key = (caller[0], caller[1], callee_file, frame.f_code.co_name)
                    flags = edges.setdefault(key, set())
                    if callee_file in below[:-1]:
                        flags.add("reentry")
                    try:
                        lower = LAYERS[_unit(callee_file)] < LAYERS[_unit(caller[0])]
                        higher_below = any(LAYERS[_unit(f)] > LAYERS[_unit(caller[0])] for f in below)
                    except (KeyError, ValueError):
                        lower = higher_below = False
                    if lower and higher_below:
                        flags.add("up")
            stack.append((filename, frame.f_code.co_name) if own else None)
        elif event == "return":
            if stack:
                stack.pop()

    sys.setprofile(profile)
    threading.setprofile(None)
    try:
        run_study(study, out_dir / "run", log=lambda *_: None)
    finally:
        sys.setprofile(None)
    return edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--list", action="store_true", help="print every re-entering call")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        edges = trace_study(out)
    short = lambda f: str(Path(f).relative_to(ROOT))
    reentry = sorted(k for k, v in edges.items() if "reentry" in v)
    up = sorted(k for k, v in edges.items() if "up" in v)
    files = {k[0] for k in edges} | {k[2] for k in edges}
    entered: dict[str, set] = {}
    for caller, _, callee, _ in edges:
        entered.setdefault(callee, set()).add(caller)
    print(f"distinct calls between files: {len(edges)} (over {len(files)} files)")
    print(f"  back into a file already left: {len(reentry)}")
    print(f"  back up to a lower layer: {len(up)}")
    busiest = sorted(entered.items(), key=lambda kv: -len(kv[1]))[:3]
    print("  entered from the most files: " + ", ".join(f"{short(f)} ({len(c)})" for f, c in busiest))
    if args.list:
        for caller, function, callee, name in reentry:
            print(f"    {short(caller)}:{function} -> {short(callee)}:{name}")


if __name__ == "__main__":
    main()
