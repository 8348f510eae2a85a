"""Runs inside the upstream virtual environment (made by throughput.py --peer nequip).

Times upstream NequIP (the `nequip` package) or Allegro (`nequip-allegro`, with --model allegro)
with the given hyper-parameters on the same frames,
the same way throughput.py times stableff: training steps (forward, energy+force MSE, backward,
Adam step) and energy+force evaluations. Prints one JSON line.
"""

import argparse
import json
import time

import ase.io
import torch


def build_peer_model(name: str, hp: dict, type_names: list[str], energy_scale: float = 1.0, energy_shifts=0.0, options: dict | None = None, seed: int = 0):
    """Upstream NequIP or Allegro (float32) with stableff's hyper-parameter names mapped to upstream's
    (``energy_shifts``: one value, or one per type name, eV/atom; ``options``: further upstream
    arguments, e.g. Allegro's ``tp_path_channel_coupling``; ``seed``: upstream's seed for the
    initial weights)."""
    options = dict(options or {})
    if not isinstance(energy_shifts, (int, float)):
        energy_shifts = dict(zip(type_names, (float(v) for v in energy_shifts)))
    if name == "nequip":
        from nequip.model import NequIPGNNModel

        return NequIPGNNModel(
            seed=seed, model_dtype="float32", type_names=type_names, r_max=hp["r_max"], num_layers=hp["num_layers"],
            l_max=hp["l_max"], parity=hp["parity"], num_features=hp["num_features"], num_bessels=hp["num_bessels"],
            polynomial_cutoff_p=hp["polynomial_p"], radial_mlp_depth=hp["radial_mlp_depth"], radial_mlp_width=hp["radial_mlp_width"],
            avg_num_neighbors=hp["avg_num_neighbors"], per_type_energy_scales=energy_scale, per_type_energy_shifts=energy_shifts, **options,
        )
    from allegro.model import AllegroModel

    return AllegroModel(
        seed=seed, model_dtype="float32", type_names=type_names, r_max=hp["r_max"], l_max=hp["l_max"], parity=hp["parity"],
        radial_chemical_embed={"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", "num_bessels": hp["num_bessels"], "bessel_trainable": False, "polynomial_cutoff_p": int(hp["polynomial_p"])},
        radial_chemical_embed_dim=hp["num_scalar_features"], num_layers=hp["num_layers"],
        num_scalar_features=hp["num_scalar_features"], num_tensor_features=hp["num_tensor_features"],
        allegro_mlp_hidden_layers_depth=hp["latent_mlp_depth"], allegro_mlp_hidden_layers_width=hp["latent_mlp_width"],
        readout_mlp_hidden_layers_depth=1, readout_mlp_hidden_layers_width=hp["readout_mlp_width"],
        scalar_embed_mlp_hidden_layers_depth=1, scalar_embed_mlp_hidden_layers_width=hp["two_body_mlp_width"],
        avg_num_neighbors=hp["avg_num_neighbors"], per_type_energy_scales=energy_scale, per_type_energy_shifts=energy_shifts, **options,
    )


def peer_train_step(model, optimizer, batch) -> None:
    """One training step of an upstream model, as throughput.stableff_train_step: per-atom energy
    MSE + force MSE, weights 1 and 1, backward, optimiser step."""
    from nequip.data import AtomicDataDict

    energy_key, force_key = AtomicDataDict.TOTAL_ENERGY_KEY, AtomicDataDict.FORCE_KEY
    out = model(dict(batch))
    n = batch[AtomicDataDict.NUM_NODES_KEY].to(out[energy_key].dtype)
    loss = (((out[energy_key].view(-1) - batch[energy_key].view(-1)) / n) ** 2).mean() + ((out[force_key] - batch[force_key]) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def peer_data(path: str, count: int, r_max: float):
    """Upstream's global state set (it requires it before building a model), and the first
    ``count`` frames of ``path``: the ASE frames, their type names (by atomic number) and upstream's
    data dicts with neighbour lists."""
    from nequip.data import compute_neighborlist_, from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper
    from nequip.utils.global_state import set_global_state

    set_global_state()
    frames = ase.io.read(path, index=f":{count}")
    type_names = sorted({s for a in frames for s in a.get_chemical_symbols()}, key=lambda s: ase.data.atomic_numbers[s])
    mapper = ChemicalSpeciesToAtomTypeMapper(model_type_names=type_names)
    return frames, type_names, [compute_neighborlist_(mapper(from_ase(atoms)), r_max) for atoms in frames]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=10)
    parser.add_argument("--eval-repeats", type=int, default=10)
    parser.add_argument("--hyper", required=True, help="JSON of hyper-parameters")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", choices=["nequip", "allegro"], default="nequip")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = json.loads(args.hyper)

    from nequip.data import AtomicDataDict

    frames, type_names, data = peer_data(args.data, args.frames, hp["r_max"])
    model = build_peer_model(args.model, hp, type_names)
    batches = [AtomicDataDict.batched_from_list(data[k : k + args.batch_size]) for k in range(0, len(data), args.batch_size)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    force_key = AtomicDataDict.FORCE_KEY

    def train_step(batch):
        peer_train_step(model, optimizer, batch)

    model.train()
    train_step(batches[0])  # warm-up
    t0 = time.perf_counter()
    for step in range(args.train_steps):
        train_step(batches[step % len(batches)])
    train_time = time.perf_counter() - t0
    model.eval().requires_grad_(False)  # as upstream's deployed models (prepare_model_for_compile)
    single = AtomicDataDict.batched_from_list([data[0]])
    model(dict(single))
    t0 = time.perf_counter()
    for _ in range(args.eval_repeats):
        model(dict(single))[force_key].sum().item()
    eval_time = time.perf_counter() - t0
    print(json.dumps({
        "train_frames_per_s": args.train_steps * args.batch_size / train_time,
        "ms_per_eval": 1000 * eval_time / args.eval_repeats,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "version": __import__("nequip").__version__ if args.model == "nequip" else __import__("importlib.metadata", fromlist=["version"]).version("nequip-allegro"),
    }))


if __name__ == "__main__":
    main()
