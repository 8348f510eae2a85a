"""The ZBL short-range prior and the dimer / equation-of-state probes."""

import numpy as np
import pytest
import torch
from ase import Atoms

from stableff.models.priors import ZBLRepulsion
from stableff import testing
from stableff.data import keys
from stableff.errors import ConfigError
from stableff.models import MODELS, build_model
from stableff.models.base import EnergyNetwork

from conftest import SMALL_HYPERPARAMETERS


def zbl_reference(z1, z2, r):
    """ZBL written out independently (Ziegler, Biersack, Littmark 1985), eV."""
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = 0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x) + 0.02817 * np.exp(-0.20162 * x)
    return 14.399645 * z1 * z2 / r * phi


def zbl_only(type_numbers=(8, 72), r_max=4.0, **zbl):
    """A model whose learned part is switched off: its energy is the ZBL prior alone."""
    torch.manual_seed(0)
    model = build_model("nequip", type_numbers=list(type_numbers), r_max=r_max, num_layers=2, num_features=4, num_bessels=4, radial_mlp_width=8, radial_mlp_depth=1, zbl=True, **zbl)
    with torch.no_grad():
        model.scale_shift.scale.zero_()
        model.scale_shift.shift.zero_()
    return model.double().eval()


def dimer_energy(model, z1, z2, r):
    return testing.evaluate(model, [Atoms(numbers=[z1, z2], positions=[[0, 0, 0], [0, 0, r]])])[keys.TOTAL_ENERGY].item()


@pytest.mark.parametrize("pair", [(8, 72), (72, 72), (8, 8)])
def test_dimer_energy_equals_the_zbl_formula_at_short_range(pair):
    model = zbl_only()
    inner = float(model.prior(ZBLRepulsion).inner[model.type_numbers.index(pair[0]), model.type_numbers.index(pair[1])])
    for r in (0.3, 0.5, 0.9 * inner):
        assert dimer_energy(model, *pair, r) == pytest.approx(zbl_reference(*pair, r), rel=1e-10)
    assert dimer_energy(model, *pair, 3.9) == 0.0 or pair == (72, 72)  # beyond the outer radius of O pairs
    assert dimer_energy(model, 72, 72, 3.6) == 0.0  # Hf-Hf: outer = 2 x 1.75 A


def test_energy_and_force_continuous_through_the_switching_region():
    model = zbl_only(zbl_inner=1.0, zbl_outer=2.0)
    h = 1e-6
    for boundary in (1.0, 2.0):
        below, above = dimer_energy(model, 8, 72, boundary - h), dimer_energy(model, 8, 72, boundary + h)
        assert abs(below - above) < 1e-4 * max(abs(below), 1e-3)
        force = lambda r: (dimer_energy(model, 8, 72, r + 1e-7) - dimer_energy(model, 8, 72, r - 1e-7)) / 2e-7
        assert force(boundary - 1e-4) == pytest.approx(force(boundary + 1e-4), abs=1e-2 * max(abs(force(boundary - 1e-4)), 1e-3))
    # inside the switch the energy lies between 0 and the full ZBL energy, and falls monotonically
    r = np.linspace(1.0, 2.0, 21)
    energies = np.array([dimer_energy(model, 8, 72, x) for x in r])
    assert np.all(np.diff(energies) < 0) and np.all(energies <= zbl_reference(8, 72, r) + 1e-12)
    # forces by autograd equal -dE/dr inside the switching region
    atoms = Atoms(numbers=[8, 72], positions=[[0, 0, 0], [0.3, 0.2, 1.4]])
    testing.assert_forces_are_minus_gradient(model, atoms, components=((0, 0), (1, 2)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_with_zbl_pass_the_physics_checks(name, acac_frames):
    from ase.spacegroup import crystal

    torch.manual_seed(0)
    model = build_model(name, type_numbers=[1, 6, 8], avg_num_neighbors=4.0, **SMALL_HYPERPARAMETERS[name], zbl=True).double().eval()
    testing.assert_rotation_invariant(model, acac_frames[0])
    testing.assert_translation_permutation_invariant(model, acac_frames[0])
    testing.assert_forces_are_minus_gradient(model, acac_frames[0])
    testing.assert_smooth_at_cutoff(model)
    testing.assert_batch_consistent(model, [acac_frames[0], acac_frames[3]])
    hfo2 = build_model(name, type_numbers=[8, 72], avg_num_neighbors=4.0, **SMALL_HYPERPARAMETERS[name], zbl=True).double().eval()
    cell = crystal(["Hf", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[4.6] * 3 + [90] * 3)
    cell.rattle(0.05, seed=1)
    testing.assert_supercell_consistent(hfo2, cell)
    testing.assert_stress_is_strain_derivative(hfo2, cell)


def test_zbl_configuration_errors():
    from stableff.train.config import parse_config

    base = {"data": {"train": "x"}}
    assert parse_config({**base, "model": {"name": "allegro", "zbl": True}}).model.hyperparameters()["zbl"] is True
    with pytest.raises(ConfigError, match="model.zbl must be true or false"):
        build_model("nequip", type_numbers=[1], zbl="yes")
    with pytest.raises(ConfigError, match="zbl_outer = 6 A is beyond the model's cutoff"):
        build_model("nequip", type_numbers=[1], r_max=5.0, zbl=True, zbl_outer=6.0)
    with pytest.raises(ConfigError, match="zbl_inner needs zbl: true"):
        build_model("nequip", type_numbers=[1], zbl_inner=0.5)
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        parse_config({**base, "model": {"name": "nequip", "zbl_radius": 1.0}})


def test_probe_finds_a_hole_in_an_attractive_model_and_none_with_zbl_alone():
    from stableff.analysis.probes import dimer_curves
    from stableff.data.stats import DatasetStatistics

    stats = DatasetStatistics(type_numbers=[8, 72], reference_energies=[0, 0], energy_per_atom_residual_mean=0, energy_per_atom_residual_std=0,
                              force_rms=1, mean_num_neighbors=4, max_abs_force=1, min_pair_distance={"8-8": 2.4, "8-72": 1.9, "72-72": 3.0},
                              max_nearest_neighbor_distance={}, cutoff=4.0, n_frames=1)
    assert not any(c["hole"] for c in dimer_curves(zbl_only(), stats))
    # an attractive toy model: minus the ZBL energy (strongly attractive at short range)
    attractive = zbl_only()
    original = attractive.forward

    def attract(batch, **kw):
        out = original(batch, **kw)
        return {**out, keys.TOTAL_ENERGY: -out[keys.TOTAL_ENERGY]}

    attractive.forward = attract
    curves = {c["pair"]: c for c in dimer_curves(attractive, stats)}
    hole = curves["O-Hf"]["hole"]
    assert hole is not None and hole["radius_A"] == pytest.approx(0.3) and hole["depth_eV"] > 100
    assert curves["Hf-Hf"]["hole"] is not None and curves["O-O"]["hole"] is not None


def test_probe_command_writes_json_and_plots(trained_model, tmp_path):
    import json

    from stableff.cli import main

    from ase.spacegroup import crystal
    import ase.io

    cell = crystal(["C"], basis=[(0, 0, 0)], spacegroup=227, cellpar=[3.57] * 3 + [90] * 3)  # diamond: a cell for the EOS
    ase.io.write(tmp_path / "diamond.xyz", cell, format="extxyz")
    code = main(["probe", str(trained_model), "--eos", str(tmp_path / "diamond.xyz"), "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "plots"), "--step", "0.05"])
    assert code == 0
    result = json.loads((tmp_path / "p.json").read_text())
    assert sorted(c["pair"] for c in result["dimers"]) == ["C-C", "C-O", "H-C", "H-H", "H-O", "O-O"]
    assert all(c["training_min_A"] for c in result["dimers"] if c["pair"] != "O-O") and "hole" in result["dimers"][0]
    eos = result["eos"][str(tmp_path / "diamond.xyz")]
    assert len(eos["volumes_A3"]) == 11 and ("B0_GPa" in eos or "fit_error" in eos)
    assert (tmp_path / "plots" / "dimers.png").is_file() and (tmp_path / "plots" / "eos.png").is_file()


def test_equation_of_state_recovers_a_known_birch_murnaghan_curve(monkeypatch):
    """The probe's EOS against an independent reference: energies sampled exactly from a third-order
    Birch-Murnaghan curve with chosen V0, E0, B0 and B0' (not from a fit), through the probe's own
    path (strained cells, volumes, fit): it must give back V0, E0 and B0."""
    from ase.build import bulk
    from ase.units import GPa

    from stableff.analysis import probes

    atoms = bulk("Cu", "fcc", a=3.6)
    v0, e0, b0_GPa, b0_prime = 1.03 * atoms.get_volume(), -3.7, 140.0, 4.6
    b0 = b0_GPa * GPa  # eV/A^3

    def birch_murnaghan(volume):
        x = (v0 / volume) ** (2.0 / 3.0) - 1.0
        return e0 + 9.0 * v0 * b0 / 16.0 * (x**3 * b0_prime + x**2 * (6.0 - 4.0 * (v0 / volume) ** (2.0 / 3.0)))

    monkeypatch.setattr(probes, "_energies", lambda model, frames, batch_size=64: np.array([birch_murnaghan(f.to_atoms().get_volume()) for f in frames]))
    result = probes.equation_of_state(object(), atoms)
    assert result["volumes_A3"] == pytest.approx((np.linspace(0.92, 1.08, 11) * atoms.get_volume()).tolist())
    assert result["V0_A3"] == pytest.approx(v0, rel=1e-6) and result["E0_eV"] == pytest.approx(e0, abs=1e-8)
    assert result["B0_GPa"] == pytest.approx(b0_GPa, rel=1e-5) and "warning" not in result


class _ShallowHoleNetwork(EnergyNetwork):
    """A learned pair energy that is 0 from each pair's closest training distance outwards and
    falls by 1 eV below it (smoothly, over 1 A): the kind of hole a model leaves where it has no data."""

    def __init__(self, type_numbers=(8, 72), r_max: float = 4.0, avg_num_neighbors: float = 1.0):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        self.closest = {(0, 0): 2.4, (0, 1): 1.9, (1, 0): 1.9, (1, 1): 3.0}

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        from stableff.models.priors import smootherstep_switch

        species = batch[keys.SPECIES]
        centre, neighbour = batch[keys.EDGE_INDEX]
        closest = torch.tensor([self.closest[(int(a), int(b))] for a, b in zip(species[centre], species[neighbour])], dtype=edge_lengths.dtype)
        pair = -1.0 * smootherstep_switch(edge_lengths, closest - 1.0, closest)
        energies = torch.zeros(species.shape[0], dtype=pair.dtype).index_add_(0, centre, 0.5 * pair)
        return energies, None


def test_the_data_placed_switch_closes_holes_below_the_training_minimum_of_every_pair():
    """HfO2 in miniature: closest training distances O-O 2.4, O-Hf 1.9, Hf-Hf 3.0 A and a learned
    part that falls by 1 eV below them. With the switch placed by the data the probe finds no hole
    for any pair, and the prior is exactly zero from the training minimum outwards; with covalent
    radii (O-O switched off at 1.32 A) the O-O hole stays. Pairs absent from the data get the
    covalent radii."""
    from stableff.analysis.probes import dimer_curves
    from stableff.data.stats import DatasetStatistics
    from stableff.models import compose
    from stableff.models.priors import covalent_outer, data_placed_pairs

    closest = {"8-8": 2.4, "8-72": 1.9, "72-72": 3.0}
    stats = DatasetStatistics(type_numbers=[8, 72], reference_energies=[0, 0], energy_per_atom_residual_mean=0, energy_per_atom_residual_std=0,
                              force_rms=1, mean_num_neighbors=4, max_abs_force=1, min_pair_distance=closest,
                              max_nearest_neighbor_distance={}, cutoff=4.0, n_frames=1)
    pairs, absent = data_placed_pairs([8, 72], 4.0, closest)
    assert pairs == {"8-8": [1.8, 2.4], "8-72": [1.425, 1.9], "72-72": [2.25, 3.0]} and absent == []

    def model(**zbl):
        return compose(_ShallowHoleNetwork(), trainable_scale_shift=False, zbl=True, **zbl).double().eval()

    learned_only = {c["pair"]: c["hole"] for c in dimer_curves(compose(_ShallowHoleNetwork(), trainable_scale_shift=False).double().eval(), stats)}
    assert all(hole is not None and hole["depth_eV"] > 0.9 for hole in learned_only.values())
    data = model(zbl_switch="data", zbl_pairs=pairs)
    assert {c["pair"]: c["hole"] for c in dimer_curves(data, stats)} == {"O-O": None, "O-Hf": None, "Hf-Hf": None}
    for (z1, z2), d in (((8, 8), 2.4), ((8, 72), 1.9), ((72, 72), 3.0)):  # nothing of the prior where there is data
        for r in (d, d + 0.3):
            assert dimer_energy(data, z1, z2, r) == pytest.approx(dimer_energy(compose(_ShallowHoleNetwork(), trainable_scale_shift=False).double().eval(), z1, z2, r), abs=1e-12)
    covalent = {c["pair"]: c["hole"] for c in dimer_curves(model(zbl_switch="covalent"), stats)}
    assert covalent["O-O"] is not None and covalent["O-O"]["radius_A"] > covalent_outer(8, 8, 4.0)
    pairs, absent = data_placed_pairs([8, 72], 4.0, {"8-72": 1.9}, factor=1.1, width=0.5)
    assert absent == ["8-8", "72-72"] and pairs["8-72"] == [pytest.approx(1.045), pytest.approx(2.09)]
    assert pairs["8-8"] == [pytest.approx(0.5 * covalent_outer(8, 8, 4.0)), pytest.approx(covalent_outer(8, 8, 4.0))]


def test_zbl_true_in_a_config_means_the_data_placement_and_the_checkpoint_keeps_its_radii(tmp_path, capsys):
    """``zbl: true`` places the switch by the data, ``zbl: {switch: covalent}`` keeps the old radii,
    bad keys are named; the trainer logs the radii, the checkpoint stores them, and the model loaded
    from it has them without the data."""
    from stableff.models.saved import model_from_checkpoint
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    base = {"data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 8}, "training": {"epochs": 1, "batch_size": 4, "num_threads": 1}}
    small = {"name": "nequip", "r_max": 3.5, "num_layers": 1, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1}
    assert parse_config({**base, "model": {**small, "zbl": True}}).model.hyperparameters()["zbl_switch"] == "data"
    assert parse_config({**base, "model": {**small, "zbl": {"switch": "covalent"}}}).model.hyperparameters()["zbl_switch"] == "covalent"
    assert "zbl_switch" not in parse_config({**base, "model": {**small, "zbl": True, "zbl_outer": 2.0}}).model.hyperparameters()
    with pytest.raises(ConfigError, match=r"zbl: unknown key\(s\) \['radius'\]"):
        parse_config({**base, "model": {**small, "zbl": {"radius": 1.0}}})
    with pytest.raises(ConfigError, match="model.zbl.switch must be one of data, covalent"):
        build_model("nequip", type_numbers=[1], zbl=True, zbl_switch="nearest")
    with pytest.raises(ConfigError, match="switch data needs the closest distances of the training data"):
        build_model("nequip", type_numbers=[1], zbl=True, zbl_switch="data")
    trainer = Trainer(parse_config({**base, "model": {**small, "zbl": {"factor": 1.0}}}), tmp_path / "run", progress=False)
    trainer.run()
    assert "zbl: switch placed by the training data's closest pairs (factor 1): H-H " in capsys.readouterr().out
    checkpoint = torch.load(tmp_path / "run" / "best.ckpt", weights_only=False)
    stored = checkpoint["hyperparameters"]["zbl_pairs"]
    closest = trainer.statistics.min_pair_distance
    assert stored["8-8"][1] == pytest.approx(closest["8-8"], abs=1e-6) and stored["8-8"][0] == pytest.approx(0.75 * closest["8-8"], abs=1e-6)
    model, _ = model_from_checkpoint(tmp_path / "run" / "best.ckpt")
    (zbl,) = model.priors
    k = list(model.type_numbers).index(8)
    assert zbl.outer[k, k].item() == pytest.approx(closest["8-8"], abs=1e-6)
