"""Runs inside the upstream virtual environment (made by accuracy_per_step.py).

Trains upstream NequIP or Allegro on the frames and in the batch order of a plan written by
accuracy_per_step.py (same hyper-parameters, scale and shifts, optimiser, loss and steps as
stableff's run) and evaluates the held-out frames at the plan's checkpoints. Prints one JSON line.
"""

import argparse
import json

import ase.data
import ase.io
import torch

from equal_terms import train_with_checkpoints
from peer_nequip import build_peer_model, peer_train_step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", required=True, help="JSON written by accuracy_per_step.py")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.plan) as handle:
        plan = json.load(handle)

    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.utils.global_state import set_global_state

    set_global_state()
    frames = ase.io.read(plan["data"], index=":")
    type_names = [ase.data.chemical_symbols[z] for z in plan["type_numbers"]]
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)
    r_max = plan["hyper"]["r_max"]

    def to_data(index):
        return compute_neighborlist_(mapper(from_ase(frames[index])), r_max)

    train = {i: to_data(i) for i in sorted({i for batch in plan["batches"] for i in batch})}
    test = [to_data(i) for i in plan["test"]]
    torch.manual_seed(plan["seed"])
    model = build_peer_model(plan["model"], dict(plan["hyper"], avg_num_neighbors=plan["avg_num_neighbors"]), type_names,
                             plan["energy_scale"], plan["energy_shifts"], plan.get("peer_options"), seed=plan["seed"])
    optimizer = torch.optim.Adam(model.parameters(), lr=plan["lr"])
    energy_key, force_key = AtomicDataDict.TOTAL_ENERGY_KEY, AtomicDataDict.FORCE_KEY

    def predictions():
        for k in range(0, len(test), 8):
            batch = AtomicDataDict.batched_from_list(test[k : k + 8])
            out = model(dict(batch))
            yield out[energy_key], batch[energy_key], batch[AtomicDataDict.NUM_NODES_KEY], out[force_key], batch[force_key]

    curve = train_with_checkpoints(model, plan, lambda indices: peer_train_step(model, optimizer, AtomicDataDict.batched_from_list([train[i] for i in indices])),
                                   predictions)
    version = __import__("nequip").__version__ if plan["model"] == "nequip" else __import__("importlib.metadata", fromlist=["version"]).version("nequip-allegro")
    print(json.dumps({"curve": curve, "num_parameters": sum(p.numel() for p in model.parameters()), "version": version}))


if __name__ == "__main__":
    main()
