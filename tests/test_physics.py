"""Physics of every model through the reusable checks of stableff.testing: invariances,
equivariance, conservative forces and stress, smoothness at the cutoff, periodic images, batch
consistency; and the edge features the decorrelation loss reads."""

import math

import numpy as np
import pytest
import torch
from ase.build import bulk

from stableff import testing
from stableff.data import keys
from stableff.data.graph import collate, edges_first, frame_to_graph
from stableff.models import MODELS, build_model

from conftest import SMALL_HYPERPARAMETERS

MODEL_NAMES = sorted(MODELS)


def make_model(name, type_numbers=(1, 6, 8), seed=0, dtype=torch.float64, **extra):
    torch.manual_seed(seed)
    model = build_model(name, type_numbers=list(type_numbers), avg_num_neighbors=4.0, energy_scale=1.3, energy_shift=torch.tensor([-0.5] * len(type_numbers)), **SMALL_HYPERPARAMETERS[name], **extra)
    with torch.no_grad():  # make the per-species scale differ so species mix-ups show
        model.scale_shift.scale.copy_(torch.linspace(0.8, 1.4, len(type_numbers)))
    return model.to(dtype).eval()


def hfo2_like_cell():
    """Fluorite-type HfO2 (12 atoms), rattled."""
    from ase.spacegroup import crystal

    atoms = crystal(["Hf", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.1, 5.1, 5.1, 90, 90, 90])
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_invariance_and_force_equivariance(name, reflect, acac_frames):
    model = make_model(name)
    testing.assert_rotation_invariant(model, acac_frames[0], reflect=reflect)
    # the edge features the decorrelation loss reads are invariant too
    rotation = testing.random_rotation(1, reflect)
    rotated = testing._copy(acac_frames[0], acac_frames[0].positions @ rotation.T)
    graphs = [collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64)]) for f in (acac_frames[0], rotated)]
    a, b = (model(g, edge_features=True)[keys.EDGE_FEATURES] for g in graphs)
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_translation_and_permutation_invariance(name, acac_frames):
    testing.assert_translation_permutation_invariant(make_model(name), acac_frames[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forces_are_minus_finite_difference_gradient(name, acac_frames):
    testing.assert_forces_are_minus_gradient(make_model(name), acac_frames[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_energy_smooth_as_neighbour_crosses_cutoff(name):
    testing.assert_smooth_at_cutoff(make_model(name, type_numbers=(1, 8)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_the_physics_checks_hold_in_float32_too(name, acac_frames):
    """The models run in float32 in production: the same checks at stableff.testing's float32
    tolerances (the checks read the model's dtype)."""
    model = make_model(name, dtype=torch.float32)
    assert model.dtype == torch.float32
    testing.assert_rotation_invariant(model, acac_frames[0], reflect=True)
    testing.assert_translation_permutation_invariant(model, acac_frames[0])
    testing.assert_forces_are_minus_gradient(model, acac_frames[0])
    testing.assert_smooth_at_cutoff(make_model(name, type_numbers=(1, 8), dtype=torch.float32))


def test_polynomial_cutoff_is_the_papers_polynomial_and_vanishes_smoothly_at_r_max():
    """u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) below r_max, 0 beyond, and
    its slope, which vanishes at r_max."""
    from stableff.models.radial import PolynomialCutoff

    r = torch.linspace(0.05, 7.0, 300, dtype=torch.float64, requires_grad=True)
    envelope = PolynomialCutoff(5.0, 6.0)(r)
    x = r.detach() / 5.0
    expected = (1.0 - 28.0 * x**6 + 48.0 * x**7 - 21.0 * x**8) * (x < 1.0)
    torch.testing.assert_close(envelope.detach(), expected, rtol=1e-12, atol=1e-12)
    (slope,) = torch.autograd.grad(envelope.sum(), r)
    # du/dr = -168 x^5 (1 - x)^2 / r_max: zero at r_max, as beyond it
    torch.testing.assert_close(slope, -168.0 * x**5 * (1.0 - x) ** 2 / 5.0 * (x < 1.0), rtol=1e-10, atol=1e-12)


def test_radial_embedding_is_the_bessel_basis_times_the_envelope():
    """basis_n(r) = sqrt(2 / r_c) sin(n pi r / r_c) / r * u(r), with its gradient, as the two
    modules define it (the embedding computes the per-edge factors first)."""
    from stableff.models.radial import RadialEmbedding

    embedding = RadialEmbedding(5.0, 8, 6.0, trainable=True).double()
    r = torch.linspace(0.3, 6.0, 120, dtype=torch.float64, requires_grad=True)
    basis, envelope = embedding(r)
    reference = embedding.bessel(r) * embedding.cutoff(r).unsqueeze(-1)
    torch.testing.assert_close(basis, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(envelope, embedding.cutoff(r), rtol=0, atol=0)
    weights = torch.randn(8, dtype=torch.float64)
    ours = torch.autograd.grad((basis * weights).sum(), (r, embedding.bessel.frequencies))
    theirs = torch.autograd.grad((reference * weights).sum(), (r, embedding.bessel.frequencies))
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bessel_normalizations_are_the_papers_and_upstreams_encodings():
    """``sqrt2_rmax``: sqrt(2 / r_c) sin(n pi r / r_c) / r (the NequIP paper); ``sinc``:
    sin(n pi x) / (pi x) with x = r / r_c (upstream nequip's BesselEdgeLengthEncoding, written as
    it is there: torch.sinc(n x) * n); anything else is refused, by Allegro with the option's name."""
    from stableff.errors import ConfigError
    from stableff.models.radial import BesselBasis

    r = torch.linspace(0.3, 5.0, 50, dtype=torch.float64)
    n = torch.arange(1, 9, dtype=torch.float64)
    def basis(normalization):  # frequencies n pi in float64 (a float32 parameter cast holds them rounded)
        module = BesselBasis(5.0, 8, normalization=normalization).double()
        module.frequencies.data = n * math.pi
        return module(r)

    paper = basis("sqrt2_rmax")
    torch.testing.assert_close(paper, (2.0 / 5.0) ** 0.5 * torch.sin(n * math.pi * r.unsqueeze(-1) / 5.0) / r.unsqueeze(-1), rtol=1e-12, atol=1e-12)
    upstream = basis("sinc")
    torch.testing.assert_close(upstream, torch.sinc(r.unsqueeze(-1) / 5.0 * n) * n, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="normalization"):
        BesselBasis(5.0, 8, normalization="unit")
    with pytest.raises(ConfigError, match="model.bessel_normalization"):
        make_model("allegro", bessel_normalization="unit")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_periodic_cell_equals_supercell_per_atom(name):
    model = make_model(name, type_numbers=(8, 72))
    small = bulk("Cu", "fcc", a=3.0)  # cell smaller than the cutoff: many images of the same atom
    small.set_chemical_symbols(["O"])
    for atoms in (hfo2_like_cell(), small):
        testing.assert_supercell_consistent(model, atoms)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_stress_matches_finite_difference_of_strain(name):
    atoms = hfo2_like_cell()
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 0.98, 0.01], [0.0, 0.0, 1.03]]), scale_atoms=True)
    testing.assert_stress_is_strain_derivative(make_model(name, type_numbers=(8, 72)), atoms)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_equals_single_structures(name, acac_frames):
    testing.assert_batch_consistent(make_model(name), [acac_frames[0], acac_frames[5], acac_frames[9]])


def test_checks_catch_a_broken_model(acac_frames):
    """The checks are not vacuous: a model whose forces are not -dE/dr, or whose energy depends on
    absolute positions, fails them."""
    model = make_model("nequip")
    original = model.forward

    def wrong_forces(batch, **kw):
        out = original(batch, **kw)
        out[keys.FORCES] = out[keys.FORCES] * 1.01
        return out

    model.forward = wrong_forces
    with pytest.raises(AssertionError, match="-dE/dr"):
        testing.assert_forces_are_minus_gradient(model, acac_frames[0])

    def not_translation_invariant(batch, **kw):
        out = original(batch, **kw)
        out[keys.TOTAL_ENERGY] = out[keys.TOTAL_ENERGY] + 1e-3 * batch[keys.POSITIONS].sum().double()
        return out

    model.forward = not_translation_invariant
    with pytest.raises(AssertionError, match="translation"):
        testing.assert_translation_permutation_invariant(model, acac_frames[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_float32_model_passes_with_float32_tolerances(name, acac_frames):
    model = make_model(name, dtype=torch.float32)
    testing.assert_rotation_invariant(model, acac_frames[0])
    testing.assert_forces_are_minus_gradient(model, acac_frames[0], components=((0, 0), (7, 2)))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_edge_features_are_per_layer_and_differentiable(name, acac_frames):
    model = make_model(name).train()
    batch = collate([frame_to_graph(acac_frames[0], model.type_numbers, model.r_max, torch.float64)])
    assert keys.EDGE_FEATURES not in model(batch, create_graph=True)  # only when asked
    features = model(batch, create_graph=True, edge_features=True)[keys.EDGE_FEATURES]
    assert len(features) == model.num_interaction_layers >= 2
    num_edges = batch[keys.EDGE_INDEX].shape[1]
    assert all(f.shape[0] == num_edges and f.ndim == 2 for f in features)
    grads = torch.autograd.grad(sum(f.pow(2).mean() for f in features), [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_subsampled_edge_features_equal_the_full_ones_on_the_same_edges(name, acac_frames):
    """The sampled edges stored first (as the trainer does): the same energy and forces as the
    batch in its own edge order, edge features on those edges only, equal to the full ones there,
    and the same gradient of a training loss (forces differentiated again, plus a loss on the
    sampled edge features) as a gather of the full features."""
    model = make_model(name)
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in acac_frames[:2]])
    full = model(batch, edge_features=True)
    sample = torch.randperm(batch[keys.EDGE_INDEX].shape[1], generator=torch.Generator().manual_seed(0))[:25]
    reordered = edges_first(batch, sample)
    assert int(reordered[keys.EDGE_FEATURE_SAMPLE]) == 25
    assert torch.equal(reordered[keys.EDGE_INDEX][:, :25], batch[keys.EDGE_INDEX][:, sample])
    sampled = model(reordered, edge_features=True)
    torch.testing.assert_close(sampled[keys.TOTAL_ENERGY], full[keys.TOTAL_ENERGY], rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(sampled[keys.FORCES], full[keys.FORCES], rtol=1e-10, atol=1e-10)
    for f, s in zip(full[keys.EDGE_FEATURES], sampled[keys.EDGE_FEATURES]):
        assert s.shape[0] == 25
        torch.testing.assert_close(s, f[sample], rtol=1e-10, atol=1e-12)
    parameters = [p for p in model.parameters() if p.requires_grad]
    gradients = []
    for inputs, rows in ((reordered, slice(None)), (batch, sample)):
        out = model(inputs, create_graph=True, edge_features=True)
        loss = out[keys.FORCES].pow(2).sum() + out[keys.TOTAL_ENERGY].sum() + sum(f[rows].pow(2).mean() for f in out[keys.EDGE_FEATURES])
        gradients.append(torch.autograd.grad(loss, parameters, allow_unused=True))
    for a, b in zip(*gradients):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_float32_energy_is_summed_in_float64(acac_frames):
    """A -9400 eV molecule in a float32 model: the energy resolves differences far below float32's
    1e-3 eV step, so central differences at h = 0.01 A agree with the autograd forces."""
    model = make_model("nequip", dtype=torch.float32)
    with torch.no_grad():
        model.scale_shift.shift.copy_(torch.tensor([-13.6, -1029.0, -2041.0]))  # acac-like E0 (eV)
    out = testing.evaluate(model, [acac_frames[0]])
    assert out[keys.TOTAL_ENERGY].dtype == torch.float64 and out[keys.TOTAL_ENERGY].item() < -5000
    # a float32 total of -9400 eV has a 1e-3 eV step: differences of it at h = 0.01 A would be off by ~0.05-0.2 eV/A
    testing.assert_forces_are_minus_gradient(model, acac_frames[0], atol=1e-2)



def test_normalized_mlp_keeps_unit_second_moment_and_pytorch_default_does_not():
    """Allegro's MLPs (``normalized``): unit-variance inputs stay at unit second moment through
    three layers; PyTorch's default initialisation shrinks them (why stableff's Allegro learned
    less per step than upstream's before)."""
    from stableff.models.mlp import mlp

    torch.manual_seed(0)
    x = torch.randn(20_000, 64)
    with torch.no_grad():
        normalized = mlp([64, 64, 64, 64], final_activation=True, normalized=True)(x).pow(2).mean().item()
        default = mlp([64, 64, 64, 64], final_activation=True)(x).pow(2).mean().item()
    assert 0.7 < normalized < 1.4
    assert default < 0.2


def test_allegro_checkpoint_from_before_mlp_normalization_loads_as_it_was_trained(acac_frames):
    """A checkpoint written before Allegro had ``mlp_normalization`` rebuilds with PyTorch's MLPs
    (the model it holds), not with the new default; the study retrains Allegro (model revision in
    its training fingerprint) but not the other models."""
    from stableff.data.stats import DatasetStatistics
    from stableff.models.saved import FORMAT, model_from_checkpoint
    from stableff.study.stages import training_fingerprint
    from stableff.train.config import parse_config

    # revision 1: PyTorch's MLPs, the last latents only, the paper's Bessel scale
    old = make_model("allegro", mlp_normalization="none", dense_latents=False, bessel_normalization="sqrt2_rmax")
    hyperparameters = {k: v for k, v in old.hyperparameters.items() if k not in ("mlp_normalization", "dense_latents", "bessel_normalization")}
    statistics = DatasetStatistics(type_numbers=list(old.type_numbers), reference_energies=[0.0] * 3, energy_per_atom_residual_mean=0.0,
                                   energy_per_atom_residual_std=1.0, force_rms=1.0, mean_num_neighbors=4.0, max_abs_force=1.0,
                                   min_pair_distance={}, max_nearest_neighbor_distance={}, cutoff=old.r_max, n_frames=1)
    checkpoint = {"format": FORMAT, "model_name": "allegro", "type_numbers": list(old.type_numbers), "hyperparameters": hyperparameters,
                  "dtype": "float64", "model_state": old.state_dict(), "statistics": statistics.to_dict()}
    loaded, _ = model_from_checkpoint(checkpoint)
    assert loaded.hyperparameters["mlp_normalization"] == "none" and loaded.hyperparameters["dense_latents"] is False
    assert loaded.hyperparameters["bessel_normalization"] == "sqrt2_rmax"
    frames = [acac_frames[0]]
    torch.testing.assert_close(testing.evaluate(loaded, frames)[keys.TOTAL_ENERGY], testing.evaluate(old, frames)[keys.TOTAL_ENERGY])
    # loaded for inference: no weight gradients are tracked, forces are the same
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(testing.evaluate(loaded, frames)[keys.FORCES], testing.evaluate(old, frames)[keys.FORCES])
    fresh = make_model("allegro", dense_latents=False, bessel_normalization="sqrt2_rmax")
    fresh.load_state_dict(old.state_dict())  # same weights, the new MLPs: another function
    assert not torch.allclose(testing.evaluate(fresh, frames)[keys.TOTAL_ENERGY], testing.evaluate(old, frames)[keys.TOTAL_ENERGY])
    # revisions 2 (normalised MLPs, before dense latents) and 3 (dense latents, before the Bessel
    # scale) load as they were trained
    for revision, newer in ((2, ("dense_latents", "bessel_normalization")), (3, ("bessel_normalization",))):
        model = make_model("allegro", bessel_normalization="sqrt2_rmax", **({"dense_latents": False} if revision == 2 else {}))
        checkpoint = dict(checkpoint, model_state=model.state_dict(),
                          hyperparameters={k: v for k, v in model.hyperparameters.items() if k not in newer})
        loaded, _ = model_from_checkpoint(checkpoint)
        assert loaded.hyperparameters["mlp_normalization"] == "second_moment" and loaded.hyperparameters["dense_latents"] is (revision == 3)
        assert loaded.hyperparameters["bessel_normalization"] == "sqrt2_rmax"
        torch.testing.assert_close(testing.evaluate(loaded, frames)[keys.TOTAL_ENERGY], testing.evaluate(model, frames)[keys.TOTAL_ENERGY])
    current = make_model("allegro")
    current.load_state_dict(model.state_dict())  # revision 3's weights with upstream's Bessel scale: another function
    assert not torch.allclose(testing.evaluate(current, frames)[keys.TOTAL_ENERGY], testing.evaluate(model, frames)[keys.TOTAL_ENERGY])
    from pathlib import Path

    base = {"data": {"train": str(Path(__file__).resolve().parents[1] / "stableff" / "datasets" / "acac" / "isolated_atoms.xyz")}}
    assert training_fingerprint(parse_config({**base, "model": {"name": "allegro"}}))["model_revision"] == 4
    assert "model_revision" not in training_fingerprint(parse_config({**base, "model": {"name": "nequip"}}))


def test_checkpoints_written_before_the_composition_load_as_they_were(acac_frames):
    """Weights saved when one module held per_species_scale/shift and the network's weights at the
    top level load under the composed model's names and give the same energies and forces; a state
    that matches neither layout is refused."""
    from stableff.errors import StableFFError
    from stableff.models.saved import load_weights

    frames = acac_frames[:2]
    for name in ("nequip", "allegro"):
        model = make_model(name)
        renamed = {"scale_shift.scale": "per_species_scale", "scale_shift.shift": "per_species_shift"}
        old_state = {renamed.get(k, k.removeprefix("network.")): v for k, v in model.state_dict().items()}
        assert "per_species_scale" in old_state and not any(k.startswith("network.") for k in old_state)
        loaded = make_model(name, seed=1)  # other weights until the old state is loaded
        assert not torch.allclose(testing.evaluate(loaded, frames)[keys.TOTAL_ENERGY], testing.evaluate(model, frames)[keys.TOTAL_ENERGY])
        load_weights(loaded, old_state)
        for key in (keys.TOTAL_ENERGY, keys.FORCES):
            torch.testing.assert_close(testing.evaluate(loaded, frames)[key], testing.evaluate(model, frames)[key], rtol=0, atol=0)
    with pytest.raises(StableFFError, match="does not match the model"):
        load_weights(make_model("nequip"), {"per_species_scale": old_state["per_species_scale"], "layers.99.weight": torch.zeros(1)})


def test_allegro_inference_reuses_its_folded_matrices_only_while_the_weights_are_unchanged(acac_frames):
    """With frozen weights Allegro keeps the matrices it folds from its Linear's weight between
    calls; the same energies and forces as with trained weights, and new ones after a weight change."""
    model = make_model("allegro")
    frames = acac_frames[:2]
    trained = testing.evaluate(model, frames)
    model.requires_grad_(False)
    first, second = testing.evaluate(model, frames), testing.evaluate(model, frames)
    assert model.network.layers[0].__dict__.get("_folded") is not None
    for key in (keys.TOTAL_ENERGY, keys.FORCES):
        torch.testing.assert_close(first[key], trained[key])
        torch.testing.assert_close(second[key], trained[key])
    with torch.no_grad():
        model.network.layers[0].linear.weight.mul_(1.5)
    changed = testing.evaluate(model, frames)
    model.requires_grad_(True)
    torch.testing.assert_close(changed[keys.FORCES], testing.evaluate(model, frames)[keys.FORCES])
    assert not torch.allclose(changed[keys.FORCES], trained[keys.FORCES])


def test_normalized_mlp_folds_its_constants_without_changing_the_function():
    """NormalizedMLP's forward (constants on the weights) equals running its modules one by one."""
    from stableff.models.mlp import mlp

    torch.manual_seed(1)
    x = torch.randn(50, 6, dtype=torch.float64)
    for final in (False, True):
        net = mlp([6, 8, 8, 3], final_activation=final, normalized=True).double()
        stepwise = x
        for module in net:
            stepwise = module(stepwise)
        torch.testing.assert_close(net(x), stepwise, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("zbl", [False, True])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_structure_without_pairs_has_zero_forces_and_the_energy_of_its_separate_atoms(name, zbl):
    """Isolated atoms, a cell in vacuum, an MD run that came apart, an empty rank of a domain
    decomposition: no pair within r_max. Every model answers (no crash), with zero forces, the same
    energy at any separation, and the sum of what each atom gives alone; strictly edge-based models
    (Allegro, GemNet-T) give exactly the per-species shifts there."""
    from ase import Atoms

    from stableff.md.calculator import StableFFCalculator

    model = make_model(name, zbl=zbl)
    shifts = dict(zip(model.type_numbers, model.scale_shift.shift.tolist()))

    def energy_forces(atoms):
        atoms.calc = StableFFCalculator(model)
        return atoms.get_potential_energy(), atoms.get_forces()

    alone = {z: energy_forces(Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]]))[0] for z in (1, 8)}
    for separation in (20.0, 35.0):
        energy, forces = energy_forces(Atoms("HO", positions=[[0, 0, 0], [0, 0, separation]]))
        assert np.all(forces == 0.0)
        assert energy == pytest.approx(alone[1] + alone[8], abs=1e-12)
    periodic = Atoms("HO", positions=[[0, 0, 0], [0, 0, 10.0]], cell=[20.0, 20.0, 20.0], pbc=True)
    energy, forces = energy_forces(periodic)
    assert np.all(forces == 0.0) and energy == pytest.approx(alone[1] + alone[8], abs=1e-12)
    if name in ("allegro", "gemnet_t"):
        assert alone[1] == pytest.approx(shifts[1], abs=1e-12) and alone[8] == pytest.approx(shifts[8], abs=1e-12)
