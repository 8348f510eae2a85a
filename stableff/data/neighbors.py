"""Periodic neighbour lists through vesin (full lists; full, mixed or no periodicity)."""

from __future__ import annotations

import numpy as np

#: default neighbour-list skin (A) of lists kept between MD steps
SKIN_A = 0.5


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


class SkinNeighborList:
    """The pairs within ``cutoff`` of a structure that moves a little between calls (MD, relaxation):
    a list within ``cutoff + skin`` is built and kept until an atom has moved more than skin / 2
    since that build or the atom count, cell or periodicity changed; each call returns the kept
    pairs that are within ``cutoff`` now, the same pairs (in another order) as a fresh list."""

    def __init__(self, cutoff: float, skin: float = SKIN_A):
        if skin < 0:
            raise ValueError(f"the neighbour-list skin must be >= 0 A (got {skin})")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self._kept = None  # (positions, cell, pbc, [E, 5] pairs (i, j, shift), float shifts) of the last build

    def __call__(self, positions, cell, pbc):
        """``(i, j, shifts)`` of the pairs within the cutoff, as :func:`neighbor_list`."""
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(pbc, dtype=bool)
        kept = self._kept
        if (
            kept is None
            or kept[0].shape != positions.shape
            or not np.array_equal(kept[1], cell)
            or not np.array_equal(kept[2], pbc)
            or not np.all(np.isfinite(positions))
            or np.max(np.sum((positions - kept[0]) ** 2, axis=1), initial=0.0) > (0.5 * self.skin) ** 2
        ):
            i, j, shifts = neighbor_list(positions, cell, pbc, self.cutoff + self.skin)
            # one [E, 5] array (i, j, shift), and the shifts as floats: the per-call work below is
            # np.take / np.compress, several times faster than fancy and boolean indexing
            pairs = np.concatenate([i[:, None], j[:, None], shifts], axis=1)
            kept = self._kept = (positions.copy(), cell.copy(), pbc.copy(), pairs, shifts.astype(np.float64))
            self.builds += 1
        pairs, float_shifts = kept[3], kept[4]
        vectors = np.take(positions, pairs[:, 1], axis=0) - np.take(positions, pairs[:, 0], axis=0) + float_shifts @ cell
        within = np.compress(np.einsum("ij,ij->i", vectors, vectors) < self.cutoff**2, pairs, axis=0)
        return within[:, 0], within[:, 1], within[:, 2:]


def _all_pairs(positions: np.ndarray, cutoff: float, with_distances: bool):
    """Brute-force neighbour list for non-periodic systems."""
    diff = positions[None, :, :] - positions[:, None, :]
    distances = np.linalg.norm(diff, axis=-1)
    i, j = np.nonzero((distances < cutoff) & ~np.eye(len(positions), dtype=bool))
    shifts = np.zeros((len(i), 3), dtype=np.int64)
    if with_distances:
        return i.astype(np.int64), j.astype(np.int64), shifts, distances[i, j]
    return i.astype(np.int64), j.astype(np.int64), shifts
