"""Reference-free failure criteria of an MD run (docs/method.md, "Failure of an MD run").

Thresholds come from the training-data statistics stored in the checkpoint; every one can be
overridden. A run fails at the first checked frame where any criterion holds:

1. ``non_finite``: non-finite positions, energies or forces;
2. ``temperature``: NVT mean temperature over a window (default 100 fs) outside [T0/2, 2 T0], or any
   frame above 10 T0;
3. ``close_contact``: a pair closer than 0.75 x the smallest training distance of that species pair;
4. ``dissociation``: an atom with no neighbour within 1.5 x the largest training nearest-neighbour
   distance of its species;
5. ``force_blowup``: max |F| above 3 x the largest training |F|;
6. ``energy_drift`` (NVE only): |E_total(t) - E_total(0)| / N above 10 meV/atom.

Optional, reference-based: ``bond_length`` (molecules: max deviation of a reference bond > 0.5 A)
and ``rdf`` (integral |g - g_ref| dr over a window above a threshold).
"""

from __future__ import annotations

import collections
import dataclasses

import numpy as np

from stableff.data.neighbors import neighbor_list
from stableff.data.species import pair_key, pair_label
from stableff.data.stats import DatasetStatistics

@dataclasses.dataclass
class MonitorSettings:
    """Factors and windows of the criteria (the defaults of docs/method.md, defined only here)."""

    temperature_window_fs: float = 100.0
    temperature_low_factor: float = 0.5
    temperature_high_factor: float = 2.0
    temperature_max_factor: float = 10.0
    close_contact_factor: float = 0.75
    dissociation_factor: float = 1.5
    force_factor: float = 3.0
    energy_drift_meV_per_atom: float = 10.0
    bond_length_deviation_A: float = 0.5
    check_bond_length: bool = False  # opt-in: proton hopping and hot methyl groups are physics

    def validate(self) -> None:
        """Every factor and window positive (a negative threshold would never, or always, fire)."""
        from stableff.errors import StableFFError

        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type in (float, "float") and not value > 0:
                raise StableFFError(f"{field.name} must be positive (got {value})")


@dataclasses.dataclass
class Failure:
    reason: str
    detail: str


@dataclasses.dataclass
class FrameState:
    """What a monitor sees of one MD frame (eV, A, K, fs)."""

    time_fs: float
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    forces: np.ndarray
    potential_energy: float
    kinetic_energy: float
    temperature_K: float
    neighbors: tuple | None = None  # (i, j, distance) of pairs within the monitor's cutoff, if already computed


class FailureMonitor:
    """Checks frames in order; ``check`` returns the first Failure, or None for a healthy frame.

    Args:
        statistics: training-data statistics (thresholds); None disables criteria 3-5.
        ensemble: "nve" or an NVT ensemble name (window criterion and energy drift depend on it).
        temperature_K: T0.
        reference_bonds: for the bond-length check, (i, j, length_A) triples.
    """

    def __init__(self, statistics: DatasetStatistics | None, ensemble: str, temperature_K: float, settings: MonitorSettings | None = None, reference_bonds=None, structure_check=None):
        """``structure_check``: optional reference-based check over a window of frames, an object with
        ``window_fs``, ``threshold``, ``name`` and ``__call__(frames) -> error`` (e.g. the RDF error
        of :class:`stableff.analysis.structure.RDFReferenceCheck`); the md layer only calls it."""
        self.settings = settings or MonitorSettings()
        self.structure_check = structure_check
        self._structure_window: collections.deque = collections.deque()
        self._last_structure_check_fs = -np.inf
        self.ensemble = ensemble.lower()
        self.t0 = float(temperature_K)
        self.statistics = statistics
        self.reference_bonds = reference_bonds
        self._window: collections.deque = collections.deque()
        self._initial_total_energy: float | None = None
        s = self.settings
        if statistics is not None:
            self.min_distance = {k: s.close_contact_factor * v for k, v in statistics.min_pair_distance.items()}
            self.max_neighbor_distance = {int(k): s.dissociation_factor * v for k, v in statistics.max_nearest_neighbor_distance.items()}
            self.max_force = s.force_factor * statistics.max_abs_force
        else:
            self.min_distance, self.max_neighbor_distance, self.max_force = {}, {}, None

    @property
    def neighbor_cutoff(self) -> float:
        """The pair distance (A) the geometry checks need: pairs farther apart never decide a failure."""
        return max(list(self.max_neighbor_distance.values()) + list(self.min_distance.values()) + [1e-3])

    @property
    def is_nve(self) -> bool:
        return self.ensemble == "nve"

    def check(self, frame: FrameState) -> Failure | None:
        s = self.settings
        n = len(frame.numbers)
        # 1. non-finite values
        if not (np.all(np.isfinite(frame.positions)) and np.all(np.isfinite(frame.forces)) and np.isfinite(frame.potential_energy) and np.isfinite(frame.kinetic_energy)):
            return Failure("non_finite", "non-finite positions, energy or forces")
        # 2. temperature
        if self.t0 > 0 and frame.temperature_K > s.temperature_max_factor * self.t0:
            return Failure("temperature", f"T = {frame.temperature_K:.0f} K above {s.temperature_max_factor:g} x T0 = {s.temperature_max_factor * self.t0:.0f} K")
        if not self.is_nve and self.t0 > 0:
            self._window.append((frame.time_fs, frame.temperature_K))
            while self._window and self._window[0][0] < frame.time_fs - s.temperature_window_fs + 1e-9:
                self._window.popleft()
            span = self._window[-1][0] - self._window[0][0]
            if span >= s.temperature_window_fs - 1e-6 or (len(self._window) > 1 and frame.time_fs >= s.temperature_window_fs):
                mean = float(np.mean([t for _, t in self._window]))
                low, high = s.temperature_low_factor * self.t0, s.temperature_high_factor * self.t0
                if not low <= mean <= high:
                    return Failure("temperature", f"mean T over {s.temperature_window_fs:g} fs = {mean:.0f} K outside [{low:.0f}, {high:.0f}] K")
        # 5. force blow-up
        if self.max_force is not None:
            fmax = float(np.max(np.linalg.norm(frame.forces, axis=1)))
            if fmax > self.max_force:
                return Failure("force_blowup", f"max |F| = {fmax:.2f} eV/A above {s.force_factor:g} x training max = {self.max_force:.2f} eV/A")
        # 6. NVE energy drift
        total = frame.potential_energy + frame.kinetic_energy
        if self._initial_total_energy is None:
            self._initial_total_energy = total
        if self.is_nve:
            drift = 1000 * abs(total - self._initial_total_energy) / n
            if drift > s.energy_drift_meV_per_atom:
                return Failure("energy_drift", f"|E(t) - E(0)| / N = {drift:.1f} meV/atom above {s.energy_drift_meV_per_atom:g}")
        # 3 and 4 need pair distances
        if self.min_distance or self.max_neighbor_distance:
            failure = self._check_geometry(frame)
            if failure is not None:
                return failure
        if self.structure_check is not None:
            failure = self._check_structure(frame)
            if failure is not None:
                return failure
        if s.check_bond_length and self.reference_bonds:
            for i, j, length in self.reference_bonds:
                d = float(np.linalg.norm(frame.positions[i] - frame.positions[j]))
                if abs(d - length) > s.bond_length_deviation_A:
                    return Failure("bond_length", f"bond {i}-{j} is {d:.2f} A (reference {length:.2f} A)")
        return None

    def _check_structure(self, frame: FrameState) -> Failure | None:
        check = self.structure_check
        self._structure_window.append(frame)
        while self._structure_window and self._structure_window[0].time_fs < frame.time_fs - check.window_fs - 1e-9:
            self._structure_window.popleft()
        full = frame.time_fs - self._structure_window[0].time_fs >= check.window_fs * 0.9
        # evaluated every half window once a full window is there: cost stays a small fraction of MD
        if full and frame.time_fs - self._last_structure_check_fs >= check.window_fs / 2:
            self._last_structure_check_fs = frame.time_fs
            error = float(check(list(self._structure_window)))
            if error > check.threshold:
                return Failure(check.name, f"{check.name} error over the last {check.window_fs:g} fs = {error:.3f}, above {check.threshold:g}")
        return None

    def _check_geometry(self, frame: FrameState) -> Failure | None:
        if frame.neighbors is not None:
            i, j, d = frame.neighbors
        else:
            i, j, _, d = neighbor_list(frame.positions, frame.cell, frame.pbc, self.neighbor_cutoff, with_distances=True)
        zi, zj = frame.numbers[i], frame.numbers[j]
        if len(d):
            thresholds = np.array([self.min_distance.get(pair_key(a, b), 0.0) for a, b in zip(zi, zj)])
            bad = np.where(d < thresholds)[0]
            if len(bad):
                k = bad[np.argmin(d[bad] / thresholds[bad])]
                pair = pair_label(zi[k], zj[k])
                return Failure("close_contact", f"{pair} atoms {i[k]} and {j[k]} at {d[k]:.2f} A, below {thresholds[k]:.2f} A")
        nearest = np.full(len(frame.numbers), np.inf)
        if len(d):
            np.minimum.at(nearest, i, d)
        for atom, z in enumerate(frame.numbers):
            limit = self.max_neighbor_distance.get(int(z))
            if limit is not None and nearest[atom] > limit:
                from ase.data import chemical_symbols

                shown = "none" if not np.isfinite(nearest[atom]) else f"{nearest[atom]:.2f} A"
                return Failure("dissociation", f"{chemical_symbols[z]} atom {atom} has no neighbour within {limit:.2f} A (nearest: {shown})")
        return None


def covalent_bonds(atoms) -> list[tuple[int, int, float]]:
    """(i, j, length in A) of every pair i < j closer than the sum of their covalent radii (ASE's)."""
    from ase.data import covalent_radii

    radii = covalent_radii[np.asarray(atoms.numbers)]
    i, j, _, d = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 2.0 * float(radii.max()), with_distances=True)
    bonded = (d < radii[i] + radii[j]) & (i < j)
    return [(int(a), int(b), float(x)) for a, b, x in zip(i[bonded], j[bonded], d[bonded])]


def monitor_from_statistics(statistics, ensemble: str, temperature_K: float, settings: MonitorSettings | None = None, reference_atoms=None, structure_check=None) -> FailureMonitor:
    """The monitor of one run: a FailureMonitor with the training-data thresholds, and the bonds of
    ``reference_atoms`` for the bond check where it is on."""
    bonds = None
    if reference_atoms is not None and settings is not None and settings.check_bond_length:
        bonds = covalent_bonds(reference_atoms)
    return FailureMonitor(statistics, ensemble, temperature_K, settings, reference_bonds=bonds, structure_check=structure_check)
