"""Radial and angular distribution functions and their distances to a reference (DESIGN.md).

RDF per species pair from pair distances found with the periodic neighbour list: for periodic
cells the usual g(r) = V / (N_a N_b) * n_ab(r) / (4 pi r^2 dr) (averaged over frames); for
non-periodic structures, where no volume is defined, the pair-distance density normalised to unit
area. ADF: distribution of angles j-i-k between neighbours of each atom within ``adf_cutoff``.

Against a reference: Wright's factor WF = sum (g - g_ref)^2 / sum g_ref^2 and the Jensen-Shannon
divergence (base 2, in [0, 1]) of the two curves normalised as distributions.
"""

from __future__ import annotations

import numpy as np

from stableff.data.neighbors import neighbor_list


def _pair_label(za: int, zb: int) -> str:
    from ase.data import chemical_symbols

    a, b = sorted((int(za), int(zb)))
    return f"{chemical_symbols[a]}-{chemical_symbols[b]}"


def rdf(frames, r_max: float = 6.0, n_bins: int = 120) -> dict:
    """{"r_A": bin centres, "g": {"A-B": g(r)}} over a list of ase.Atoms."""
    edges = np.linspace(0.0, r_max, n_bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    counts: dict[str, np.ndarray] = {}
    norms: dict[str, float] = {}
    periodic = all(a.pbc.all() for a in frames)
    for atoms in frames:
        numbers = atoms.numbers
        i, j, _, d = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, r_max, with_distances=True)
        species = np.unique(numbers)
        volume = atoms.get_volume() if periodic else 1.0
        for a_index, za in enumerate(species):
            for zb in species[a_index:]:
                label = _pair_label(za, zb)
                mask = (numbers[i] == za) & (numbers[j] == zb)
                hist, _ = np.histogram(d[mask], bins=edges)
                counts[label] = counts.get(label, 0) + hist
                n_a, n_b = np.sum(numbers == za), np.sum(numbers == zb)
                norms[label] = norms.get(label, 0.0) + (n_a * n_b / volume if periodic else 1.0)
    g = {}
    for label, hist in counts.items():
        if periodic:
            g[label] = hist / (shell * norms[label])
        else:
            total = hist.sum()
            g[label] = hist / (total * (edges[1] - edges[0])) if total else hist.astype(float)
    return {"r_A": centres, "g": g, "periodic": periodic}


def adf(frames, cutoff: float = 2.5, n_bins: int = 90) -> dict:
    """{"angle_deg": bin centres, "density": normalised distribution of j-i-k angles}."""
    edges = np.linspace(0.0, 180.0, n_bins + 1)
    hist_total = np.zeros(n_bins)
    for atoms in frames:
        i, j, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
        vectors = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
        order = np.argsort(i, kind="stable")
        i, vectors = i[order], vectors[order]
        starts = np.searchsorted(i, np.arange(len(atoms) + 1))
        for atom in range(len(atoms)):
            v = vectors[starts[atom] : starts[atom + 1]]
            if len(v) < 2:
                continue
            unit = v / np.linalg.norm(v, axis=1, keepdims=True)
            cosines = (unit @ unit.T)[np.triu_indices(len(v), k=1)]
            hist_total += np.histogram(np.degrees(np.arccos(np.clip(cosines, -1, 1))), bins=edges)[0]
    total = hist_total.sum()
    density = hist_total / (total * (edges[1] - edges[0])) if total else hist_total
    return {"angle_deg": 0.5 * (edges[1:] + edges[:-1]), "density": density}


def wright_factor(g, g_ref) -> float:
    g, g_ref = np.asarray(g, float), np.asarray(g_ref, float)
    denominator = np.sum(g_ref**2)
    return float(np.sum((g - g_ref) ** 2) / denominator) if denominator > 0 else float("nan")


def jensen_shannon(g, g_ref) -> float:
    """JSD (base 2) of the two non-negative curves normalised to sum 1; 0 = identical, 1 = disjoint."""
    p, q = np.clip(np.asarray(g, float), 0, None), np.clip(np.asarray(g_ref, float), 0, None)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a, b):
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / b[mask])))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def compare_rdf(result: dict, reference: dict) -> dict:
    """WF and JSD per species pair present in both (reference interpolated onto result's r grid)."""
    out = {}
    for label, g in result["g"].items():
        if label in reference["g"]:
            g_ref = np.interp(result["r_A"], reference["r_A"], reference["g"][label], left=0.0, right=0.0)
            out[label] = {"wright_factor": wright_factor(g, g_ref), "jsd": jensen_shannon(g, g_ref)}
    return out


def read_rdf_csv(path) -> dict:
    """A reference g(r) from CSV: first column r_A, then one column per pair named like 'O-O'."""
    import csv

    from stableff.errors import DataError

    with open(path) as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 3:
        raise DataError(path, "an RDF CSV needs a header (r_A, pairs...) and at least two rows")
    header = rows[0]
    try:
        data = np.array([[float(x) for x in row] for row in rows[1:] if row], dtype=float)
    except ValueError as exc:
        raise DataError(path, f"non-numeric value in the RDF table ({exc})") from None
    return {"r_A": data[:, 0], "g": {name.strip(): data[:, k + 1] for k, name in enumerate(header[1:])}}


class RDFReferenceCheck:
    """Reference-based MD failure check (Fu et al. 2023 style): the RDF of the last ``window_fs`` of
    a run against a reference, error = mean over species pairs of integral |g - g_ref| dr (A).

    The reference is a structure file (trajectory, dataset) or a CSV of g(r). Picklable, so it can
    travel to replica processes.
    """

    name = "rdf"

    def __init__(self, reference_path, threshold: float = 1.0, window_fs: float = 500.0, r_max: float = 5.0, n_bins: int = 100):
        self.threshold = float(threshold)
        self.window_fs = float(window_fs)
        self.r_max, self.n_bins = float(r_max), int(n_bins)
        if str(reference_path).endswith(".csv"):
            self.reference = read_rdf_csv(reference_path)
        else:
            from stableff.data.io import read_frames

            frames = [f.to_atoms() for f in read_frames(reference_path, check_distances=False)[:500]]
            self.reference = rdf(frames, self.r_max, self.n_bins)

    def __call__(self, frames) -> float:
        from ase import Atoms

        atoms = [Atoms(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc) for f in frames]
        result = rdf(atoms, self.r_max, self.n_bins)
        dr = result["r_A"][1] - result["r_A"][0]
        errors = []
        for label, g in result["g"].items():
            if label in self.reference["g"]:
                g_ref = np.interp(result["r_A"], self.reference["r_A"], self.reference["g"][label], left=0.0, right=0.0)
                errors.append(float(np.sum(np.abs(g - g_ref)) * dr))
        return float(np.mean(errors)) if errors else 0.0
