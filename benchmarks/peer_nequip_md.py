"""Runs inside the upstream-nequip virtual environment (made by md_throughput.py --peer nequip).

ms per NVT Langevin step with upstream nequip's ASE calculator (NequIPCalculator, with its own
type mapping and neighbour-list transforms) for a NequIP model with the given hyper-parameters.
Prints one JSON line: {"ms_per_step": {"<n_atoms>": ms}, "version": ...}.
"""

import argparse
import json
import time

import ase.io
import numpy as np
import torch
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--hyper", required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--supercell", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = json.loads(args.hyper)
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform
    from nequip.integrations.ase import NequIPCalculator
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()
    atoms = ase.io.read(args.data, 0)
    type_names = sorted(set(atoms.get_chemical_symbols()), key=lambda s: ase.data.atomic_numbers[s])
    model = NequIPGNNModel(
        seed=0, model_dtype="float32", type_names=type_names, r_max=hp["r_max"], num_layers=hp["num_layers"], l_max=hp["l_max"],
        parity=hp["parity"], num_features=hp["num_features"], num_bessels=hp["num_bessels"], polynomial_cutoff_p=hp["polynomial_p"],
        radial_mlp_depth=hp["radial_mlp_depth"], radial_mlp_width=hp["radial_mlp_width"], avg_num_neighbors=hp["avg_num_neighbors"],
        per_type_energy_scales=0.05, per_type_energy_shifts=0.0,
    ).eval()
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
    print(json.dumps({"ms_per_step": timings, "version": __import__("nequip").__version__}))


if __name__ == "__main__":
    main()
