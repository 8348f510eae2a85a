"""Physics of every model: invariances, equivariance, conservative forces and stress, smoothness at
the cutoff, periodic images, batch consistency. One suite, parametrised over all models."""

import numpy as np
import pytest
import torch
from ase.build import bulk

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import frame_from_atoms
from stableff.models import MODELS, build_model

from conftest import SMALL_HYPERPARAMETERS

MODEL_NAMES = sorted(MODELS)


def make_model(name, type_numbers=(1, 6, 8), seed=0):
    torch.manual_seed(seed)
    model = build_model(name, type_numbers=list(type_numbers), avg_num_neighbors=4.0, energy_scale=1.3, energy_shift=torch.tensor([-0.5] * len(type_numbers)), **SMALL_HYPERPARAMETERS[name])
    with torch.no_grad():  # make the per-species scale differ so species mix-ups show
        model.per_species_scale.copy_(torch.linspace(0.8, 1.4, len(type_numbers)))
    return model.double().eval()


def run(model, frames, stress=False):
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in frames])
    return model(batch, compute_forces=True, compute_stress=stress, create_graph=False)


def molecule(acac_frames, k=0):
    return acac_frames[k]


def random_rotation(seed, reflect=False):
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if reflect else q


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_invariance_and_force_equivariance(name, reflect, acac_frames):
    model = make_model(name)
    frame = molecule(acac_frames)
    rotation = random_rotation(1, reflect)
    rotated = frame_from_atoms(frame.to_atoms())
    rotated.positions = frame.positions @ rotation.T
    a, b = run(model, [frame]), run(model, [rotated])
    torch.testing.assert_close(b[keys.TOTAL_ENERGY], a[keys.TOTAL_ENERGY], rtol=0, atol=1e-9)
    expected = a[keys.FORCES].numpy() @ rotation.T
    np.testing.assert_allclose(b[keys.FORCES].numpy(), expected, atol=1e-9)
    # the edge features the decorrelation loss reads are invariant too
    for fa, fb in zip(a[keys.EDGE_FEATURES], b[keys.EDGE_FEATURES]):
        torch.testing.assert_close(fa, fb, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_translation_and_permutation_invariance(name, acac_frames):
    model = make_model(name)
    frame = molecule(acac_frames)
    moved = frame_from_atoms(frame.to_atoms())
    moved.positions = frame.positions + np.array([3.1, -7.2, 0.4])
    perm = np.random.default_rng(0).permutation(len(frame))
    permuted = frame_from_atoms(frame.to_atoms()[perm])
    a, b, c = run(model, [frame]), run(model, [moved]), run(model, [permuted])
    torch.testing.assert_close(b[keys.TOTAL_ENERGY], a[keys.TOTAL_ENERGY], rtol=0, atol=1e-9)
    torch.testing.assert_close(c[keys.TOTAL_ENERGY], a[keys.TOTAL_ENERGY], rtol=0, atol=1e-9)
    torch.testing.assert_close(b[keys.FORCES], a[keys.FORCES], rtol=0, atol=1e-9)
    torch.testing.assert_close(c[keys.FORCES], a[keys.FORCES][perm], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forces_are_minus_finite_difference_gradient(name, acac_frames):
    model = make_model(name)
    frame = molecule(acac_frames)
    forces = run(model, [frame])[keys.FORCES].numpy()
    h = 1e-5
    for atom, axis in [(0, 0), (3, 1), (7, 2), (12, 0)]:
        plus, minus = frame_from_atoms(frame.to_atoms()), frame_from_atoms(frame.to_atoms())
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        derivative = (run(model, [plus])[keys.TOTAL_ENERGY] - run(model, [minus])[keys.TOTAL_ENERGY]).item() / (2 * h)
        assert forces[atom, axis] == pytest.approx(-derivative, abs=1e-6, rel=1e-5)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_energy_smooth_as_neighbour_crosses_cutoff(name):
    model = make_model(name, type_numbers=(1, 8))
    from ase import Atoms

    r_max = model.r_max

    def energy_and_force(distance):
        atoms = Atoms("OHH", positions=[[0, 0, 0], [0.96, 0, 0], [0, 0, distance]])
        out = run(model, [frame_from_atoms(atoms)])
        return out[keys.TOTAL_ENERGY].item(), out[keys.FORCES][2, 2].item()

    e_in, f_in = energy_and_force(r_max - 1e-4)
    e_out, f_out = energy_and_force(r_max + 1e-4)
    assert abs(e_in - e_out) < 1e-8
    assert abs(f_in - f_out) < 1e-6
    # continuous first derivative: the force on the far atom goes to zero approaching the cutoff
    distances = np.linspace(r_max - 0.3, r_max - 1e-3, 8)
    magnitudes = [abs(energy_and_force(d)[1]) for d in distances]
    # the envelope is C2 at r_max, so the force falls like (r_max - r)^2: > 1000x from 0.3 A to 1 mA away
    assert magnitudes[-1] < 1e-3 * magnitudes[0] and magnitudes[-1] < 1e-5


def hfo2_like_cell():
    """Fluorite-type HfO2 (12 atoms), rattled."""
    from ase.spacegroup import crystal

    atoms = crystal(["Hf", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.1, 5.1, 5.1, 90, 90, 90])
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_periodic_cell_equals_supercell_per_atom(name):
    model = make_model(name, type_numbers=(8, 72))
    unit = hfo2_like_cell()
    small = bulk("Cu", "fcc", a=3.0).repeat((1, 1, 1))  # cell smaller than the cutoff: many images
    small.set_chemical_symbols(["O"])
    for atoms in (unit, small):
        super_cell = atoms.repeat((2, 2, 2))
        a = run(model, [frame_from_atoms(atoms)], stress=True)
        b = run(model, [frame_from_atoms(super_cell)], stress=True)
        assert a[keys.TOTAL_ENERGY].item() / len(atoms) == pytest.approx(b[keys.TOTAL_ENERGY].item() / len(super_cell), abs=1e-9)
        torch.testing.assert_close(b[keys.FORCES][: len(atoms)], a[keys.FORCES], rtol=0, atol=1e-8)
        torch.testing.assert_close(b[keys.STRESS], a[keys.STRESS], rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stress_matches_finite_difference_of_strain(name):
    model = make_model(name, type_numbers=(8, 72))
    atoms = hfo2_like_cell()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 0.98, 0.01], [0.0, 0.0, 1.03]]), scale_atoms=True)
    stress = run(model, [frame_from_atoms(atoms)], stress=True)[keys.STRESS][0].numpy()
    volume = atoms.get_volume()
    h = 1e-5
    for i, j in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2)]:
        energies = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[i, j] += 0.5 * sign * h
            eps[j, i] += 0.5 * sign * h
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            energies.append(run(model, [frame_from_atoms(strained)])[keys.TOTAL_ENERGY].item())
        assert stress[i, j] == pytest.approx((energies[0] - energies[1]) / (2 * h) / volume, abs=1e-7)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_equals_single_structures(name, acac_frames):
    model = make_model(name, type_numbers=(1, 6, 8))
    frames = [acac_frames[0], acac_frames[5], acac_frames[9]]
    together = run(model, frames)
    forces = []
    for k, frame in enumerate(frames):
        alone = run(model, [frame])
        assert together[keys.TOTAL_ENERGY][k].item() == pytest.approx(alone[keys.TOTAL_ENERGY].item(), abs=1e-9)
        forces.append(alone[keys.FORCES])
    torch.testing.assert_close(together[keys.FORCES], torch.cat(forces), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_edge_features_are_per_layer_and_differentiable(name, acac_frames):
    model = make_model(name).train()
    batch = collate([frame_to_graph(acac_frames[0], model.type_numbers, model.r_max, torch.float64)])
    out = model(batch, create_graph=True)
    features = out[keys.EDGE_FEATURES]
    assert len(features) == model.num_interaction_layers >= 2
    num_edges = batch[keys.EDGE_INDEX].shape[1]
    assert all(f.shape[0] == num_edges and f.ndim == 2 for f in features)
    grads = torch.autograd.grad(sum(f.pow(2).mean() for f in features), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
