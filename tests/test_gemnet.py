"""The pieces of GemNet-T that the physics suite does not see directly: the spherical Bessel
functions and their roots, the 2D basis normalisation, reverse edges and the triplet bookkeeping."""

import numpy as np
import pytest
import torch
from scipy.special import spherical_jn

from stableff.models.triplets import build_triplets, reverse_edges
from stableff.models.gemnet import SphericalBasis, spherical_bessel, spherical_bessel_roots


def test_spherical_bessel_matches_scipy_from_tiny_to_large_arguments():
    x = np.concatenate([np.geomspace(1e-6, 1.0, 200), np.linspace(1.0, 40.0, 400)])
    ours = spherical_bessel(torch.tensor(x), 7).numpy()
    for l in range(7):
        np.testing.assert_allclose(ours[:, l], spherical_jn(l, x), rtol=1e-9, atol=1e-15)


def test_roots_are_zeros_of_the_bessel_functions():
    roots = spherical_bessel_roots(7, 6)
    for l in range(7):
        assert np.all(np.abs(spherical_jn(l, roots[l])) < 1e-10)
        assert np.all(np.diff(roots[l]) > 0) and roots[l][0] > l  # ascending, first root beyond l
    assert roots[0] == pytest.approx(np.pi * np.arange(1, 7))


def test_radial_part_of_the_2d_basis_is_orthonormal_on_the_ball():
    """int_0^c N_ln N_ln' j_l(z_ln r/c) j_l(z_ln' r/c) r^2 dr = delta_nn' (the paper's normalisation)."""
    basis = SphericalBasis(5.0, 4, 5)
    r = torch.linspace(1e-4, 5.0, 200_001, dtype=torch.float64)
    values = basis.radial(r, torch.ones_like(r))  # [E, L, N]
    for l in range(4):
        gram = torch.trapezoid(values[:, l, :, None] * values[:, l, None, :] * (r**2)[:, None, None], r, dim=0)
        np.testing.assert_allclose(gram.numpy(), np.eye(5), atol=1e-5)


def test_reverse_edges_and_triplets_of_a_periodic_cell():
    from ase.build import bulk
    from stableff.data.neighbors import neighbor_list

    atoms = bulk("Cu", "fcc", a=3.0).repeat((1, 1, 2))  # small cell: many images of each atom
    i, j, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 3.5)
    edge_index = torch.tensor(np.stack([i, j]))
    shifts = torch.tensor(shifts)
    reverse = reverse_edges(edge_index, shifts, len(atoms))
    assert torch.equal(edge_index[0, reverse], edge_index[1]) and torch.equal(edge_index[1, reverse], edge_index[0])
    assert torch.equal(shifts[reverse], -shifts) and torch.equal(reverse[reverse], torch.arange(len(i)))
    e_in, e_out = build_triplets(edge_index, shifts, len(atoms))
    # e_in = (j <- k) ends where e_out = (i <- j) starts, and never is e_out's reverse
    assert torch.equal(edge_index[0, e_in], edge_index[1, e_out])
    assert not torch.any(e_in == reverse[e_out])
    degree = torch.bincount(edge_index[0], minlength=len(atoms))
    assert len(e_out) == int((degree[edge_index[1]] - 1).sum())
