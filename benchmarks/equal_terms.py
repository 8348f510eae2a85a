"""The protocol accuracy_per_step.py applies to both codes, in plain torch so that stableff's
environment and upstream's (peer_accuracy.py) import the same lines: held-out errors and the
training loop with its checkpoints."""

import time

import torch


def held_out_mae(predictions) -> tuple[float, float]:
    """(energy MAE in meV/atom, force-component MAE in meV/A) over an iterable of
    (predicted E [B], reference E [B], atoms per structure [B], predicted F [N, 3], reference F [N, 3])."""
    energy_errors, force_errors = [], []
    for energy, energy_ref, num_atoms, forces, forces_ref in predictions:
        energy_errors.append(((energy.detach().double().view(-1) - energy_ref.double().view(-1)) / num_atoms.double()).abs())
        force_errors.append((forces.detach().double() - forces_ref.double()).abs().reshape(-1))
    return 1000 * float(torch.cat(energy_errors).mean()), 1000 * float(torch.cat(force_errors).mean())


def train_with_checkpoints(model, plan: dict, train_step, predictions, log=None) -> list[dict]:
    """Run ``train_step(batch_indices)`` over the plan's batches; at each checkpoint evaluate
    ``held_out_mae(predictions())`` in eval mode. Returns the curve (training time without the
    evaluations)."""
    def evaluate():
        model.eval()
        errors = held_out_mae(predictions())
        model.train()
        return errors

    curve = []
    model.train()
    train_seconds, start = 0.0, time.perf_counter()
    for step, indices in enumerate(plan["batches"], start=1):
        train_step(indices)
        if step in plan["checkpoints"]:
            train_seconds += time.perf_counter() - start
            emae, fmae = evaluate()
            curve.append({"step": step, "energy_mae_meV_per_atom": emae, "force_mae_meV_per_A": fmae, "train_s": train_seconds})
            if log is not None:
                log(f"step {step}: EMAE {emae:.2f} meV/atom, FMAE {fmae:.1f} meV/A ({train_seconds:.0f} s training)")
            start = time.perf_counter()
    return curve
