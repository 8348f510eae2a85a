"""In-situ scans: a close pair pushed together inside a structure finds many-body holes that the
isolated dimer curve does not show (issue 29, item 4)."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from stableff import testing
from stableff.data import keys
from stableff.data.io import Frame, frame_from_atoms
from stableff.data.stats import DatasetStatistics
from stableff.models import compose
from stableff.models.base import EnergyNetwork

TRAINING_MIN_A = 2.4


class _ThreeBodyAttraction(EnergyNetwork):
    """E_i = -A * sum_{j != k} s(r_ij) s(r_ik), s a smooth step from 1 (r < 0.5 A) to 0 (r > 3.5 A):
    zero for every isolated pair (a flat dimer curve, no hole), attractive as soon as an atom has two
    neighbours: pushing a pair together inside a cluster lowers the energy (a many-body hole)."""

    def __init__(self, type_numbers=(8,), r_max: float = 4.0, avg_num_neighbors: float = 1.0, strength: float = 1.0):
        super().__init__(type_numbers, r_max, avg_num_neighbors)
        self.strength = strength

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        from stableff.models.priors import smootherstep_switch

        centre = batch[keys.EDGE_INDEX][0]
        n_atoms = batch[keys.SPECIES].shape[0]
        s = smootherstep_switch(edge_lengths, 0.5, 3.5)
        total = torch.zeros(n_atoms, dtype=s.dtype).index_add_(0, centre, s)
        squares = torch.zeros(n_atoms, dtype=s.dtype).index_add_(0, centre, s * s)
        return -self.strength * (total * total - squares), None


def toy_model():
    return compose(_ThreeBodyAttraction(), trainable_scale_shift=False).double().eval()


def statistics(minimum: float = TRAINING_MIN_A) -> DatasetStatistics:
    return DatasetStatistics(type_numbers=[8], reference_energies=[0], energy_per_atom_residual_mean=0, energy_per_atom_residual_std=0,
                             force_rms=1, mean_num_neighbors=2, max_abs_force=1, min_pair_distance={"8-8": minimum},
                             max_nearest_neighbor_distance={}, cutoff=4.0, n_frames=1)


def triangle(side: float = 2.5, apex: float = 2.2) -> Frame:
    """Atoms 0 and 1 ``side`` apart, atom 2 ``apex`` above their midpoint (farther from each)."""
    return frame_from_atoms(Atoms("O3", positions=[[0, 0, 0], [side, 0, 0], [side / 2, apex, 0]]))


def test_the_scan_finds_a_many_body_hole_that_the_dimer_curve_misses():
    from stableff.analysis.probes import dimer_curves, in_situ_scans

    model, stats = toy_model(), statistics()
    assert [c["hole"] for c in dimer_curves(model, stats, step=0.05)] == [None]  # the isolated pair is flat
    frame = triangle()
    scans = in_situ_scans(model, stats, frame, step=0.05)
    assert len(scans) == 1
    scan = scans[0]
    assert scan["pair"] == "O-O" and scan["atoms"] == [0, 1] and scan["distance_A"] == pytest.approx(2.5)
    r, energy = np.array(scan["r_A"]), np.array(scan["energy_eV"])
    assert r[0] == pytest.approx(0.3) and r[-1] == pytest.approx(2.5 + 0.3, abs=0.05)
    assert np.interp(2.5, r, energy) == pytest.approx(0.0, abs=1e-9)  # relative to the structure as given
    hole = scan["hole"]
    assert hole is not None and hole["radius_A"] < 1.0 and hole["depth_eV"] > 0.1
    # each point is the structure with the pair moved symmetrically: the third atom and the midpoint stay
    from stableff.analysis.probes import _placed, closest_pairs

    pair = closest_pairs(frame, 8, 8, 4.0)[0]
    moved = _placed(frame, frame.positions, pair, 1.2)
    assert np.linalg.norm(moved.positions[1] - moved.positions[0]) == pytest.approx(1.2)
    assert moved.positions[2] == pytest.approx(frame.positions[2]) and moved.positions[:2].mean(0) == pytest.approx(frame.positions[:2].mean(0))
    # the hole is measured from the training minimum of the pair: another minimum, another reference
    other = in_situ_scans(model, statistics(1.0), frame, step=0.05)[0]
    assert other["hole"]["energy_at_training_min_eV"] == pytest.approx(np.interp(1.0, r, energy))
    assert other["hole"]["depth_eV"] < hole["depth_eV"]
    # a pair species the training data never had: no training minimum, nothing to flag
    assert in_situ_scans(model, None, frame, step=0.05)[0]["hole"] is None


def test_the_closest_pair_through_a_periodic_boundary_moves_its_nearest_image():
    from stableff.analysis.probes import _placed, closest_pairs, in_situ_scans

    atoms = Atoms("O2", positions=[[0.3, 2, 2], [5.4, 2, 2]], cell=np.diag([6.0, 6.0, 6.0]), pbc=True)
    frame = frame_from_atoms(atoms)
    pair = closest_pairs(frame, 8, 8, 4.0)[0]
    assert pair["atoms"] == [0, 1] and pair["distance_A"] == pytest.approx(0.9)  # through the boundary, not 5.1 A
    for d in (0.5, 1.7):
        moved = _placed(frame, frame.positions, pair, d).to_atoms()
        assert moved.get_distance(0, 1, mic=True) == pytest.approx(d)
    scans = in_situ_scans(toy_model(), statistics(), frame, step=0.1)
    assert scans[0]["r_A"][-1] == pytest.approx(TRAINING_MIN_A + 0.3, abs=0.1)  # past the training minimum when the pair is closer
    assert closest_pairs(frame, 8, 8, 0.5) == []  # nothing within a short cutoff


class _ModelCalculator(Calculator):
    """An ASE calculator around an in-memory model (energy and forces)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model):
        super().__init__()
        self.model = model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        out = testing.evaluate(self.model, [self.atoms])
        self.results = {"energy": out[keys.TOTAL_ENERGY].item(), "forces": out[keys.FORCES].detach().numpy().copy()}


def test_a_relaxed_scan_holds_the_pair_and_relaxes_the_rest():
    from stableff.analysis.probes import in_situ_scans

    model, stats = toy_model(), statistics()
    frame = triangle(apex=2.8)
    fixed = in_situ_scans(model, stats, frame, step=0.25)[0]
    relaxed = in_situ_scans(model, stats, frame, step=0.25, relax_steps=200, fmax=0.01, calculator=_ModelCalculator(model))[0]
    assert relaxed["relaxed"] and relaxed["r_A"] == fixed["r_A"] and "unconverged_points" in relaxed
    # the free atom is drawn towards the pair: relaxing lowers every point of the profile
    assert np.all(np.array(relaxed["energy_eV"]) <= np.array(fixed["energy_eV"]) + 1e-9)
    assert np.array(relaxed["energy_eV"]).min() < np.array(fixed["energy_eV"]).min() - 0.01
    with pytest.raises(ValueError, match="needs an ASE calculator"):
        in_situ_scans(model, stats, frame, relax_steps=5)


def test_probe_command_scans_inside_a_structure(trained_model, tmp_path, capsys):
    import json

    import ase.io

    from stableff.cli import main
    from stableff.data.io import read_frames

    start = read_frames("acac:test_MD_600K", index=3)[0].to_atoms()
    ase.io.write(tmp_path / "start.xyz", start, format="extxyz")
    code = main(["probe", str(trained_model), "--in-situ", str(tmp_path / "start.xyz"), "--relax", "2", "--step", "0.2",
                 "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "plots")])
    assert code == 0
    out = capsys.readouterr().out
    assert "in-situ scans in" in out and "the rest relaxed" in out
    result = json.loads((tmp_path / "p.json").read_text())
    (scans,) = result["in_situ"].values()
    assert sorted(s["pair"] for s in scans) == ["C-C", "C-O", "H-C", "H-H", "H-O", "O-O"]
    assert all(s["relaxed"] and len(s["r_A"]) == len(s["energy_eV"]) for s in scans)
    assert (tmp_path / "plots" / "in_situ_0.png").is_file()
    # an element the model does not know: one message naming the file, before any work
    ase.io.write(tmp_path / "hf.xyz", Atoms("HfO", positions=[[0, 0, 0], [0, 0, 1.8]]), format="extxyz")
    assert main(["probe", str(trained_model), "--in-situ", str(tmp_path / "hf.xyz")]) == 1
    err = capsys.readouterr().err
    assert "hf.xyz" in err and "Hf" in err and "in-situ scans" not in err
