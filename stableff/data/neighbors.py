"""Periodic neighbour lists through vesin (full lists; full, mixed or no periodicity)."""

from __future__ import annotations

import numpy as np


def neighbor_list(positions, cell, pbc, cutoff: float, with_distances: bool = False):
    """All ordered pairs (i, j) with |r_j - r_i + S @ cell| < cutoff, periodic images included.

    Returns ``(i, j, shifts)`` (and distances if asked): int64 arrays [E], [E] and the integer
    lattice shifts [E, 3] of the neighbour. Works for cells smaller than the cutoff (several images
    of the same atom are neighbours then) and for any mix of periodic and open directions.
    """
    from vesin import NeighborList

    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    if not pbc.any() and len(positions) and np.prod(np.ptp(positions, axis=0) / cutoff + 1) > 1e6:
        # atoms spread over a huge open box (e.g. a molecule blown apart in MD): a cell list would
        # need millions of cells, while all pairs of a few hundred atoms are cheap
        return _all_pairs(positions, cutoff, with_distances)
    box = np.array(cell, dtype=np.float64).reshape(3, 3)
    if not pbc.any():
        box = np.zeros((3, 3))
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    quantities = "ijSd" if with_distances else "ijS"
    periodic = bool(pbc[0]) if (pbc == pbc[0]).all() else [bool(p) for p in pbc]
    out = calculator.compute(points=positions, box=box, periodic=periodic, quantities=quantities)
    i = out[0].astype(np.int64)
    j = out[1].astype(np.int64)
    shifts = out[2].astype(np.int64)
    if with_distances:
        return i, j, shifts, out[3]
    return i, j, shifts


def _all_pairs(positions: np.ndarray, cutoff: float, with_distances: bool):
    """Brute-force neighbour list for non-periodic systems."""
    diff = positions[None, :, :] - positions[:, None, :]
    distances = np.linalg.norm(diff, axis=-1)
    i, j = np.nonzero((distances < cutoff) & ~np.eye(len(positions), dtype=bool))
    shifts = np.zeros((len(i), 3), dtype=np.int64)
    if with_distances:
        return i.astype(np.int64), j.astype(np.int64), shifts, distances[i, j]
    return i.astype(np.int64), j.astype(np.int64), shifts
