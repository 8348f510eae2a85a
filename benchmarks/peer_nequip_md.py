"""Runs inside the upstream-nequip virtual environment (made by md_throughput.py --peer nequip).

ms per NVT Langevin step with upstream nequip's ASE calculator (NequIPCalculator, with its own
type mapping and neighbour-list transforms) for a NequIP (or, with --model allegro, Allegro) model with the given hyper-parameters.
Prints one JSON line: {"ms_per_step": {"<n_atoms>": ms}, "version": ...}.
"""

import argparse
import json
import time

import ase.io
import numpy as np
import torch
from ase import units
from peer_nequip import build_peer_model
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hyper", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--supercell", type=int, default=2)
    parser.add_argument("--model", choices=["nequip", "allegro"], default="nequip")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = json.loads(args.hyper)
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.utils.global_state import set_global_state

    set_global_state()
    atoms = ase.io.read(args.data, 0)
    type_names = sorted(set(atoms.get_chemical_symbols()), key=lambda s: ase.data.atomic_numbers[s])
    # weights frozen, as upstream's deployed models (nequip.utils.compile.prepare_model_for_compile)
    model = build_peer_model(args.model, hp, type_names, energy_scale=0.05).eval().requires_grad_(False)
    calculator = NequIPCalculator(model, device="cpu", transforms=[ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names), NeighborListTransform(r_max=hp["r_max"])])
    timings = {}
    for repeat in (1, args.supercell):
        system = atoms.repeat((repeat, repeat, repeat))
        system.calc = calculator
        MaxwellBoltzmannDistribution(system, temperature_K=300, rng=np.random.default_rng(0))
        dynamics = Langevin(system, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(1))
        dynamics.run(2)
        t0 = time.perf_counter()
        dynamics.run(args.steps)
        timings[str(len(system))] = 1000 * (time.perf_counter() - t0) / args.steps
    print(json.dumps({"ms_per_step": timings, "version": __import__("nequip").__version__ if args.model == "nequip" else __import__("importlib.metadata", fromlist=["version"]).version("nequip-allegro")}))


if __name__ == "__main__":
    main()
