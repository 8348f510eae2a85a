"""Readers, validation of bad input, neighbour lists, batching, statistics, the CLI's error path."""

import numpy as np
import pytest
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import read_frames, resolve_path
from stableff.data.neighbors import SkinNeighborList, neighbor_list
from stableff.data.stats import compute_statistics
from stableff.errors import DataError

from conftest import ACAC, SHARED_DATA, requires_shared

GOOD_XYZ = """2
Lattice="10 0 0 0 10 0 0 0 10" Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc="F F F"
H 0.0 0.0 0.0 0.1 0.0 0.0
H 0.0 0.0 0.74 -0.1 0.0 0.0
"""


def write(tmp_path, text, name="data.xyz"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_embedded_acac_with_labels():
    frames = read_frames("acac:train_300K", require=("energy", "forces"))
    assert len(frames) == 500
    assert len(frames[0]) == 15 and frames[0].forces.shape == (15, 3)
    assert resolve_path("acac:test_MD_600K") == ACAC / "test_MD_600K.xyz"


@requires_shared(SHARED_DATA / "hfo2")
def test_reads_periodic_extxyz_with_stress():
    frames = read_frames(SHARED_DATA / "hfo2" / "test_switching_Hf4O8.extxyz", require=("energy", "forces"))
    assert len(frames) == 60 and frames[0].pbc.all()
    assert set(np.unique(frames[0].numbers)) == {8, 72}


@requires_shared(SHARED_DATA / "hfo2" / "deepmd_sample")
def test_reads_deepmd_npy_system():
    frames = read_frames(SHARED_DATA / "hfo2" / "deepmd_sample" / "Hf32O64_init.0000", require=("energy", "forces"))
    assert len(frames) == 50 and len(frames[0]) == 96
    assert frames[0].stress.shape == (3, 3) and np.allclose(frames[0].stress, frames[0].stress.T)
    assert sorted(np.unique(frames[0].numbers)) == [8, 72]


@pytest.mark.parametrize(
    "text, problem, frame",
    [
        ("this is not\nan xyz file at all\n", "cannot read", None),
        (GOOD_XYZ.replace("energy=-1.5 ", ""), "has no energy", 0),
        (GOOD_XYZ.replace(":forces:R:3", "").replace(" 0.1 0.0 0.0", "").replace(" -0.1 0.0 0.0", ""), "has no forces", 0),
        (GOOD_XYZ + GOOD_XYZ.replace("0.0 0.0 0.74 -0.1", "0.0 0.0 nan -0.1"), "positions contain NaN", 1),
        (GOOD_XYZ.replace("energy=-1.5", "energy=nan"), "energy is NaN", 0),
        (GOOD_XYZ.replace("0.0 0.0 0.74 -0.1 0.0 0.0", "0.0 0.0 0.74 inf 0.0 0.0"), "forces contain NaN or inf", 0),
        (GOOD_XYZ.replace("0.0 0.0 0.74", "0.0 0.0 0.05"), "atoms 0 and 1 are 0.050 A apart", 0),
        ("", "cannot read", None),
    ],
    ids=["malformed", "no-energy", "no-forces", "nan-positions", "nan-energy", "inf-forces", "overlapping-atoms", "empty"],
)
def test_bad_input_names_file_frame_and_problem(tmp_path, text, problem, frame):
    path = write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_frames(path, require=("energy", "forces"))
    message = str(info.value)
    assert str(path) in message and problem in message
    if frame is not None:
        assert f"frame {frame}" in message


def test_missing_file_and_unknown_element(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_frames(tmp_path / "nope.xyz")
    with pytest.raises(DataError, match="no file 'nope' in the embedded dataset 'acac'"):
        read_frames("acac:nope")
    frame = read_frames(write(tmp_path, GOOD_XYZ.replace("H 0.0 0.0 0.74", "Xe 0.0 0.0 0.74")))[0]
    with pytest.raises(DataError, match=r"frame 0: element Xe is not known to this model \(it was trained on H, C, O\)"):
        frame_to_graph(frame, [1, 6, 8], 4.0)


def test_neighbor_list_periodicity_and_small_cells():
    # one atom in a 2 A cube, cutoff 5 A: all lattice points with |n| < 2.5 except the origin
    i, j, shifts = neighbor_list(np.zeros((1, 3)), np.eye(3) * 2.0, [True] * 3, 5.0)
    expected = sum(1 for a in range(-3, 4) for b in range(-3, 4) for c in range(-3, 4) if 0 < a * a + b * b + c * c < 6.25)
    assert len(i) == expected == 80
    # mixed periodicity: periodic in x and y only (4 at 2 A, 4 at 2.83 A)
    i, _, shifts = neighbor_list(np.zeros((1, 3)), np.diag([2.0, 2.0, 2.0]), [True, True, False], 3.0)
    assert len(i) == 8 and np.all(shifts[:, 2] == 0)
    # open boundaries: a plain distance criterion
    i, j, shifts = neighbor_list(np.array([[0, 0, 0], [0, 0, 1.0], [0, 0, 5.0]]), np.zeros((3, 3)), [False] * 3, 2.0)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (1, 0)] and not shifts.any()


@pytest.mark.parametrize("cell,pbc", [(np.diag([3.1, 3.3, 2.9]), [True] * 3), (np.diag([6.0, 6.5, 7.0]), [True, True, False]), (np.zeros((3, 3)), [False] * 3)])
def test_skin_neighbor_list_gives_a_fresh_lists_pairs_and_rebuilds_only_after_half_the_skin(cell, pbc):
    """Along a random walk, the kept list's pairs within the cutoff are the fresh list's (a cell
    smaller than the cutoff, mixed periodicity, a molecule); it is rebuilt only when an atom has
    moved more than skin / 2 since the last build, or the cell changed."""
    rng = np.random.default_rng(0)
    positions = rng.uniform(0.0, 3.0, (12, 3))
    skin_list = SkinNeighborList(cutoff=3.5, skin=0.6)
    start, expected_builds = positions.copy(), 0
    for step in range(40):
        positions = positions + rng.normal(0.0, 0.04, positions.shape)
        if step == 0 or np.max(np.linalg.norm(positions - start, axis=1)) > 0.3:
            start, expected_builds = positions.copy(), expected_builds + 1
        kept = skin_list(positions, cell, pbc)
        fresh = neighbor_list(positions, cell, pbc, 3.5)
        as_set = lambda pairs: sorted(zip(pairs[0].tolist(), pairs[1].tolist(), map(tuple, pairs[2].tolist())))
        assert as_set(kept) == as_set(fresh)
        assert skin_list.builds == expected_builds
    assert 1 < expected_builds < 40
    if any(pbc):
        skin_list(positions, cell * 1.01, pbc)  # another cell: built again
        assert skin_list.builds == expected_builds + 1


def test_collate_offsets_edges_and_keeps_labels(acac_frames):
    graphs = [frame_to_graph(f, [1, 6, 8], 4.0) for f in acac_frames[:3]]
    batch = collate(graphs)
    assert batch[keys.POSITIONS].shape == (45, 3)
    assert batch[keys.TOTAL_ENERGY].shape == (3,)
    assert batch[keys.BATCH].tolist() == [0] * 15 + [1] * 15 + [2] * 15
    second = graphs[1][keys.EDGE_INDEX].shape[1]
    first = graphs[0][keys.EDGE_INDEX].shape[1]
    assert torch.equal(batch[keys.EDGE_INDEX][:, first : first + second], graphs[1][keys.EDGE_INDEX] + 15)


def test_statistics_reference_energies_and_monitor_thresholds(acac_frames):
    isolated = read_frames("acac:isolated_atoms", require=("energy",))
    stats = compute_statistics(acac_frames, 4.0, isolated_atoms=isolated)
    assert stats.type_numbers == [1, 6, 8]
    assert stats.reference_energies[0] == pytest.approx(isolated[[int(f.numbers[0]) for f in isolated].index(1)].energy)
    # least squares reproduces energies of a synthetic additive model exactly
    for f in acac_frames:
        f.energy = float(np.sum(np.where(f.numbers == 1, -1.0, np.where(f.numbers == 6, -5.0, -7.0))))
    ls = compute_statistics(acac_frames, 4.0)
    assert stats.min_pair_distance["1-6"] > 0.8
    assert ls.energy_per_atom_residual_std < 1e-9
    # the minimum C-H distance is the smallest over all frames of the C-H bond
    ch = min(
        np.linalg.norm(f.positions[a] - f.positions[b])
        for f in acac_frames
        for a in np.where(f.numbers == 6)[0]
        for b in np.where(f.numbers == 1)[0]
    )
    assert stats.min_pair_distance["1-6"] == pytest.approx(ch)
    assert stats.max_abs_force == pytest.approx(max(np.linalg.norm(f.forces, axis=1).max() for f in acac_frames))


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    from stableff.cli import main

    bad = write(tmp_path, GOOD_XYZ.replace("energy=-1.5", "energy=nan"))
    code = main(["evaluate", str(tmp_path / "missing.ckpt"), str(bad)])
    err = capsys.readouterr().err
    assert code == 1 and "missing.ckpt: no such checkpoint file" in err and "Traceback" not in err


def test_collate_refuses_a_field_it_does_not_know_and_batches_every_listed_one():
    """Batching follows the field registry of data/keys.py: every listed field is kept, and a field
    nobody listed is refused by name instead of being dropped silently."""
    import pytest
    import torch

    from stableff.data import keys
    from stableff.data.graph import collate

    def graph(n):
        return {keys.POSITIONS: torch.zeros(n, 3), keys.ATOMIC_NUMBERS: torch.ones(n, dtype=torch.long), keys.SPECIES: torch.zeros(n, dtype=torch.long),
                keys.FORCES: torch.zeros(n, 3), keys.CELL: torch.zeros(1, 3, 3), keys.PBC: torch.zeros(1, 3, dtype=torch.bool),
                keys.NUM_ATOMS: torch.tensor([n]), keys.TOTAL_ENERGY: torch.zeros(1), keys.STRESS: torch.zeros(1, 3, 3),
                keys.EDGE_INDEX: torch.tensor([[0, 1], [1, 0]]), keys.EDGE_CELL_SHIFT: torch.zeros(2, 3)}

    batch = collate([graph(2), graph(3)])
    assert set(batch) == set(keys.FIELDS) | {keys.BATCH}
    assert batch[keys.EDGE_INDEX].tolist() == [[0, 1, 2, 3], [1, 0, 3, 2]] and batch[keys.BATCH].tolist() == [0, 0, 1, 1, 1]
    odd = dict(graph(2), charges=torch.zeros(2))
    with pytest.raises(ValueError, match="charges"):
        collate([odd, graph(2)])
