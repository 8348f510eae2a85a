"""Radial and angular distribution functions and their distances to a reference (docs/method.md, "Structure").

RDF per species pair from pair distances found with the periodic neighbour list: for periodic
cells the usual g(r) = V / (N_a N_b) * n_ab(r) / (4 pi r^2 dr) (averaged over frames); for
non-periodic structures, where no volume is defined, the pair-distance density normalised to unit
area. ADF: distribution of angles j-i-k between neighbours of each atom within ``adf_cutoff``.

Against a reference: Wright's factor WF = sum (g - g_ref)^2 / sum g_ref^2 and the Jensen-Shannon
divergence (base 2, in [0, 1]) of the two curves normalised as distributions.
"""

from __future__ import annotations

import re

import numpy as np

from stableff.data.neighbors import neighbor_list
from stableff.data.species import pair_label


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
                label = pair_label(za, zb)
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


#: frames of a reference structure file used for its RDF (the one place this number is set)
REFERENCE_FRAMES = 500
#: the RDF grid of the study and of ``stableff rdf`` (A, bins)
RDF_R_MAX_A = 5.0
RDF_BINS = 100

_PAIR_SEPARATORS = re.compile(r"[\s\-_/:,]+")


def parse_pair(name: str) -> str | None:
    """'O-Hf', 'Hf-O', 'Hf O', 'hf_o' ... -> the canonical label 'O-Hf'; None if not a pair of elements."""
    from ase.data import atomic_numbers

    parts = [p for p in _PAIR_SEPARATORS.split(name.strip()) if p]
    if len(parts) != 2:
        return None
    numbers = []
    for part in parts:
        symbol = part[:1].upper() + part[1:].lower()
        if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
            return None
        numbers.append(atomic_numbers[symbol])
    return pair_label(*numbers)


def _matched_reference(result: dict, reference: dict) -> dict:
    """The reference curves of the result's pairs; an error when a reference pair is not in the
    result or nothing matches (a comparison that silently compares nothing is never made)."""
    from stableff.errors import DataError

    source = reference.get("source", "<reference>")
    found, expected = sorted(reference["g"]), sorted(result["g"])
    unused = [p for p in found if p not in result["g"]]
    common = [p for p in expected if p in reference["g"]]
    if unused or not common:
        raise DataError(source, f"reference RDF pairs {found} do not match the structure's pairs {expected}"
                        + (f" (not in the structure: {unused})" if unused else ""))
    return {p: reference["g"][p] for p in common}


def compare_rdf(result: dict, reference: dict) -> dict:
    """WF and JSD per species pair (reference interpolated onto result's r grid)."""
    out = {}
    for label, g_ref_raw in _matched_reference(result, reference).items():
        g_ref = np.interp(result["r_A"], reference["r_A"], g_ref_raw, left=0.0, right=0.0)
        out[label] = {"wright_factor": wright_factor(result["g"][label], g_ref), "jsd": jensen_shannon(result["g"][label], g_ref)}
    return out


def read_rdf_csv(path) -> dict:
    """A reference g(r) from CSV: a distance column (``r_A``, ``r / Angstrom``, ``r``...) and one
    column per species pair in any common form (``O-Hf``, ``Hf-O``, ``Hf O``); anything else is an
    error listing what was found and what is expected."""
    import csv

    from stableff.errors import DataError

    try:
        with open(path) as handle:
            rows = [row for row in csv.reader(handle) if row]
    except OSError as exc:
        raise DataError(path, f"cannot read ({exc.strerror or exc})") from None
    if len(rows) < 3:
        raise DataError(path, "an RDF CSV needs a header (r_A, pairs...) and at least two rows")
    header = [h.strip() for h in rows[0]]
    if not header[0].lower().startswith("r"):
        raise DataError(path, f"first column '{header[0]}' is not a distance (expected r_A or 'r / Angstrom'); header {header}")
    pairs = [parse_pair(name) for name in header[1:]]
    bad = [name for name, pair in zip(header[1:], pairs) if pair is None]
    if bad or not pairs:
        raise DataError(path, f"columns {bad or header[1:]} are not species pairs (expected e.g. 'O-Hf', 'Hf-O' or 'Hf O'); header {header}")
    if len(set(pairs)) != len(pairs):
        raise DataError(path, f"the same species pair appears twice among the columns {header[1:]}")
    try:
        data = np.array([[float(x) for x in row] for row in rows[1:]], dtype=float)
    except ValueError as exc:
        raise DataError(path, f"non-numeric value in the RDF table ({exc})") from None
    if data.shape[1] != len(header):
        raise DataError(path, f"rows have {data.shape[1]} values but the header names {len(header)} columns")
    return {"r_A": data[:, 0], "g": {pair: data[:, k + 1] for k, pair in enumerate(pairs)}, "periodic": True, "source": str(path)}


def reference_rdf(specs, r_max: float = 5.0, n_bins: int = 100) -> dict:
    """The reference g(r) of a CSV file, or of the first REFERENCE_FRAMES frames of structure files."""
    from stableff.data.io import read_frames, resolve_path
    from stableff.errors import DataError

    specs = [specs] if isinstance(specs, (str, bytes)) or not hasattr(specs, "__iter__") else list(specs)
    if len(specs) == 1 and str(specs[0]).endswith(".csv"):
        if not resolve_path(specs[0]).is_file():
            raise DataError(specs[0], "no such file")
        return read_rdf_csv(resolve_path(specs[0]))
    frames = []
    for spec in specs:
        frames.extend(f.to_atoms() for f in read_frames(spec, check_distances=False)[: REFERENCE_FRAMES - len(frames)])
    result = rdf(frames, r_max, n_bins)
    result["source"] = ", ".join(map(str, specs))
    return result


class RDFReferenceCheck:
    """Reference-based MD failure check (Fu et al. 2023 style): the RDF of the last ``window_fs`` of
    a run against a reference, error = mean over species pairs of integral |g - g_ref| dr (A).

    The reference is a structure file (trajectory, dataset) or a CSV of g(r). Picklable, so it can
    travel to replica processes.
    """

    name = "rdf"

    def __init__(self, reference_path, threshold: float = 1.0, window_fs: float = 500.0, r_max: float = 5.0, n_bins: int = 100):
        from stableff.data.io import content_hash

        self.threshold = float(threshold)
        self.window_fs = float(window_fs)
        self.r_max, self.n_bins = float(r_max), int(n_bins)
        self.reference = reference_rdf(reference_path, self.r_max, self.n_bins)
        self.reference_hash = content_hash(reference_path)

    def fingerprint(self) -> dict:
        return {"reference": self.reference_hash, "threshold": self.threshold, "window_fs": self.window_fs, "r_max": self.r_max, "n_bins": self.n_bins}

    def check_species(self, numbers) -> None:
        """Refuse, before any MD, a reference whose pairs do not match the structure's."""
        species = sorted(set(int(z) for z in numbers))
        pairs = {pair_label(a, b): None for k, a in enumerate(species) for b in species[k:]}
        _matched_reference({"g": pairs}, self.reference)

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
