"""Physics checks any stableff model must pass, reusable by users on their own models and data:

    from stableff.testing import check_all
    check_all(model, molecule_frame, periodic_atoms)          # raises AssertionError on a violation

Each ``assert_*`` function takes a model (a :class:`stableff.models.ForceField`) and structures
(:class:`stableff.data.io.Frame` or ``ase.Atoms``), runs the model in its own dtype and raises
AssertionError naming what broke. Tolerances come from :func:`tolerances` (float64: tight enough to
catch a bug in a derivative; float32: what single precision allows).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import Frame, frame_from_atoms


@dataclasses.dataclass(frozen=True)
class Tolerances:
    energy: float  # eV, absolute
    forces: float  # eV/A, absolute
    stress: float  # eV/A^3, absolute
    finite_difference_step: float  # A (or strain)
    finite_difference: float  # eV/A (or eV/A^3) between autograd and central differences
    cutoff_energy: float  # eV jump allowed across the cutoff


def tolerances(dtype: torch.dtype) -> Tolerances:
    """Tolerances for a model running in ``dtype``."""
    if dtype == torch.float64:
        return Tolerances(energy=1e-9, forces=1e-9, stress=1e-9, finite_difference_step=1e-5, finite_difference=1e-6, cutoff_energy=1e-8)
    return Tolerances(energy=2e-4, forces=2e-4, stress=2e-5, finite_difference_step=1e-2, finite_difference=5e-2, cutoff_energy=1e-4)


def _frame(structure) -> Frame:
    return structure if isinstance(structure, Frame) else frame_from_atoms(structure)


def _copy(frame: Frame, positions=None, cell=None) -> Frame:
    return dataclasses.replace(frame, positions=frame.positions.copy() if positions is None else positions,
                               cell=frame.cell.copy() if cell is None else cell, energy=None, forces=None, stress=None)


def evaluate(model, structures, stress: bool = False) -> dict:
    """The model's output for one batch of structures (energy, forces, stress if asked)."""
    frames = [_frame(s) for s in structures]
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in frames])
    return model(batch, compute_forces=True, compute_stress=stress, create_graph=False)


def _close(actual, expected, atol: float, what: str) -> None:
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    worst = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    if not worst <= atol:
        raise AssertionError(f"{what}: deviation {worst:.3g} exceeds {atol:.3g}")


def random_rotation(seed: int = 0, reflect: bool = False) -> np.ndarray:
    """A random proper rotation (times -1, an improper one, with ``reflect``)."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if reflect else q


def assert_rotation_invariant(model, structure, seed: int = 1, reflect: bool = True) -> None:
    """E(Q r) = E(r) and F(Q r) = Q F(r) for a rotation Q (and a reflection), cell rotated too."""
    tol = tolerances(model.dtype)
    frame = _frame(structure)
    rotation = random_rotation(seed, reflect)
    rotated = _copy(frame, frame.positions @ rotation.T, frame.cell @ rotation.T)
    a, b = evaluate(model, [frame]), evaluate(model, [rotated])
    _close(b[keys.TOTAL_ENERGY].detach(), a[keys.TOTAL_ENERGY].detach(), tol.energy, "energy after rotation")
    _close(b[keys.FORCES].detach(), a[keys.FORCES].detach().numpy() @ rotation.T, tol.forces, "forces after rotation")


def assert_translation_permutation_invariant(model, structure, seed: int = 0) -> None:
    """Energy unchanged by a translation and a permutation of the atoms; forces follow the permutation."""
    tol = tolerances(model.dtype)
    frame = _frame(structure)
    moved = _copy(frame, frame.positions + np.array([3.1, -7.2, 0.4]))
    perm = np.random.default_rng(seed).permutation(len(frame))
    permuted = dataclasses.replace(_copy(frame, frame.positions[perm]), numbers=frame.numbers[perm])
    a, b, c = evaluate(model, [frame]), evaluate(model, [moved]), evaluate(model, [permuted])
    _close(b[keys.TOTAL_ENERGY].detach(), a[keys.TOTAL_ENERGY].detach(), tol.energy, "energy after translation")
    _close(c[keys.TOTAL_ENERGY].detach(), a[keys.TOTAL_ENERGY].detach(), tol.energy, "energy after permutation")
    _close(b[keys.FORCES].detach(), a[keys.FORCES].detach(), tol.forces, "forces after translation")
    _close(c[keys.FORCES].detach(), a[keys.FORCES].detach()[perm], tol.forces, "forces after permutation")


def assert_forces_are_minus_gradient(model, structure, components=((0, 0), (3, 1), (7, 2), (12, 0)), atol: float | None = None) -> None:
    """F_ia = -(E(r + h e_ia) - E(r - h e_ia)) / 2h for the listed (atom, axis) components."""
    tol = tolerances(model.dtype)
    if atol is not None:
        tol = dataclasses.replace(tol, finite_difference=atol)
    frame = _frame(structure)
    forces = evaluate(model, [frame])[keys.FORCES].detach().numpy()
    h = tol.finite_difference_step
    for atom, axis in components:
        if atom >= len(frame):
            continue
        energies = []
        for sign in (1, -1):
            positions = frame.positions.copy()
            positions[atom, axis] += sign * h
            energies.append(evaluate(model, [_copy(frame, positions)])[keys.TOTAL_ENERGY].item())
        derivative = (energies[0] - energies[1]) / (2 * h)
        _close(forces[atom, axis], -derivative, tol.finite_difference, f"force on atom {atom} along {'xyz'[axis]} vs -dE/dr")


def assert_stress_is_strain_derivative(model, atoms, components=((0, 0), (1, 1), (2, 2), (0, 1), (1, 2))) -> None:
    """sigma_ij = (1/V) dE/d(eps_ij) by central differences of a symmetric strain (periodic cells)."""
    tol = tolerances(model.dtype)
    frame = _frame(atoms)
    stress = evaluate(model, [frame], stress=True)[keys.STRESS][0].detach().numpy()
    volume = abs(np.linalg.det(frame.cell))
    h = tol.finite_difference_step
    for i, j in components:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * h
            eps[j, i] += 0.5 * sign * h
            deform = np.eye(3) + eps
            energies.append(evaluate(model, [_copy(frame, frame.positions @ deform, frame.cell @ deform)])[keys.TOTAL_ENERGY].item())
        _close(stress[i, j], (energies[0] - energies[1]) / (2 * h) / volume, tol.finite_difference / 10, f"stress[{i}{j}] vs dE/d strain / V")


def assert_smooth_at_cutoff(model, numbers=None) -> None:
    """A neighbour crossing r_max changes neither the energy nor the force (no step), and the force
    on it vanishes approaching r_max."""
    from ase import Atoms

    tol = tolerances(model.dtype)
    z = list(numbers or [model.type_numbers[-1], model.type_numbers[0], model.type_numbers[0]])
    r_max = model.r_max

    def energy_and_force(distance):
        atoms = Atoms(numbers=z, positions=[[0, 0, 0], [0.96, 0, 0], [0, 0, distance]])
        out = evaluate(model, [atoms])
        return out[keys.TOTAL_ENERGY].item(), out[keys.FORCES][2, 2].item()

    e_in, f_in = energy_and_force(r_max - 1e-4)
    e_out, f_out = energy_and_force(r_max + 1e-4)
    _close(e_in, e_out, tol.cutoff_energy, "energy jump across the cutoff")
    _close(f_in, f_out, max(100 * tol.cutoff_energy, tol.forces), "force jump across the cutoff")
    far = abs(energy_and_force(r_max - 1e-3)[1])
    near = abs(energy_and_force(r_max - 0.3)[1])
    if not (far < 1e-3 * max(near, 1e-12) or far < tol.forces):
        raise AssertionError(f"force 1 mA inside the cutoff ({far:.3g} eV/A) does not vanish relative to 0.3 A inside ({near:.3g} eV/A)")


def assert_supercell_consistent(model, atoms, repeat=(2, 2, 2)) -> None:
    """A periodic cell and its supercell give the same energy per atom, forces and stress."""
    tol = tolerances(model.dtype)
    supercell = atoms.repeat(repeat)
    a = evaluate(model, [atoms], stress=True)
    b = evaluate(model, [supercell], stress=True)
    n, m = len(atoms), len(supercell)
    _close(b[keys.TOTAL_ENERGY].item() / m, a[keys.TOTAL_ENERGY].item() / n, tol.energy, "energy per atom, cell vs supercell")
    _close(b[keys.FORCES][:n].detach(), a[keys.FORCES].detach(), tol.forces * 10, "forces, cell vs supercell")
    _close(b[keys.STRESS].detach(), a[keys.STRESS].detach(), tol.stress, "stress, cell vs supercell")


def assert_batch_consistent(model, structures) -> None:
    """Several structures in one batch give the same energies and forces as each alone."""
    tol = tolerances(model.dtype)
    together = evaluate(model, structures)
    forces = []
    for k, structure in enumerate(structures):
        alone = evaluate(model, [structure])
        _close(together[keys.TOTAL_ENERGY][k].item(), alone[keys.TOTAL_ENERGY].item(), tol.energy, f"energy of structure {k} in a batch vs alone")
        forces.append(alone[keys.FORCES].detach())
    _close(together[keys.FORCES].detach(), torch.cat(forces), tol.forces, "forces in a batch vs alone")


def check_all(model, molecule, periodic_atoms=None) -> None:
    """Every check above on a molecule (Frame or Atoms) and, if given, a periodic cell (Atoms)."""
    assert_rotation_invariant(model, molecule, reflect=False)
    assert_rotation_invariant(model, molecule, reflect=True)
    assert_translation_permutation_invariant(model, molecule)
    assert_forces_are_minus_gradient(model, molecule)
    assert_smooth_at_cutoff(model)
    assert_batch_consistent(model, [molecule, molecule])
    if periodic_atoms is not None:
        assert_supercell_consistent(model, periodic_atoms)
        assert_stress_is_strain_derivative(model, periodic_atoms)


def random_checkpoint(path, name: str, type_numbers, dtype: str = "float64", seed: int = 0, perturb: float = 0.05, **hyperparameters):
    """Write a checkpoint of an untrained model with every weight perturbed by ``perturb`` x N(0, 1)
    (so that no output layer starts at zero), for tests of what a model file goes through (export,
    engines) where training would add nothing but time. Returns the path."""
    from stableff.data.stats import DatasetStatistics
    from stableff.models import build_model
    from stableff.models.saved import FORMAT

    torch.manual_seed(seed)
    model = build_model(name, list(type_numbers), energy_scale=1.0, energy_shift=[-1.0 - z for z in type_numbers], **hyperparameters)
    model = model.to(getattr(torch, dtype))
    with torch.no_grad():
        for parameter in model.network.parameters():
            parameter.add_(perturb * torch.randn_like(parameter))
    r_max = model.r_max
    statistics = DatasetStatistics(list(type_numbers), [0.0] * len(type_numbers), 0.0, 1.0, 1.0, 8.0, 1.0, {}, {}, r_max, 1)
    torch.save({"format": FORMAT, "model_name": name, "hyperparameters": model.hyperparameters, "type_numbers": list(type_numbers),
                "dtype": dtype, "statistics": statistics.to_dict(), "model_state": model.state_dict(), "config": {}}, path)
    return path
