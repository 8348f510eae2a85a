"""Reading structures with labels from any ASE-readable file or a DeePMD-kit npy system.

Everything is turned into :class:`Frame` (plain numpy arrays) and validated frame by frame; a bad
frame raises :class:`~stableff.errors.DataError` naming the file, the frame and the problem.
"""

from __future__ import annotations

import dataclasses
import warnings
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from stableff.errors import DataError

#: two atoms closer than this (Angstrom) are treated as a broken structure
MIN_ALLOWED_DISTANCE = 0.1

EMBEDDED_DATASETS = ("acac",)


@dataclasses.dataclass
class Frame:
    """One structure with optional DFT labels (eV, eV/A, eV/A^3; stress in ASE's sign convention)."""

    numbers: np.ndarray  # [n] int
    positions: np.ndarray  # [n, 3]
    cell: np.ndarray  # [3, 3], rows are lattice vectors
    pbc: np.ndarray  # [3] bool
    energy: float | None = None
    forces: np.ndarray | None = None  # [n, 3]
    stress: np.ndarray | None = None  # [3, 3]
    source: str = ""  # file the frame came from
    index: int = 0  # frame index in that file

    def __len__(self) -> int:
        return len(self.numbers)

    def to_atoms(self):
        """An ASE Atoms object with the labels attached as a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        results = {}
        if self.energy is not None:
            results["energy"] = self.energy
        if self.forces is not None:
            results["forces"] = self.forces
        if self.stress is not None:
            results["stress"] = self.stress
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def resolve_path(spec: str | Path) -> Path:
    """A path on disk, or an embedded dataset file addressed as ``acac:train_300K``."""
    text = str(spec)
    if ":" in text and not Path(text).exists():
        name, _, member = text.partition(":")
        if name in EMBEDDED_DATASETS:
            folder = Path(str(resources.files("stableff.datasets") / name))
            candidates = [folder / member, folder / f"{member}.xyz", folder / f"{member}.extxyz"]
            for candidate in candidates:
                if candidate.is_file():
                    return candidate
            available = sorted(p.stem for p in folder.glob("*.xyz"))
            raise DataError(text, f"no file '{member}' in the embedded dataset '{name}' (available: {', '.join(available)})")
    if text in EMBEDDED_DATASETS:
        return Path(str(resources.files("stableff.datasets") / text))
    return Path(text)


def frame_from_atoms(atoms, source: str = "", index: int = 0) -> Frame:
    """Take positions, cell and whatever labels the Atoms object carries (calculator or info/arrays)."""
    energy = forces = stress = None
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if "energy" in results:
        energy = float(results["energy"])
    elif "free_energy" in results:
        energy = float(results["free_energy"])
    elif "energy" in atoms.info:
        energy = float(atoms.info["energy"])
    if "forces" in results:
        forces = np.asarray(results["forces"], dtype=float)
    elif "forces" in atoms.arrays:
        forces = np.asarray(atoms.arrays["forces"], dtype=float)
    if "stress" in results:
        stress = np.asarray(results["stress"], dtype=float)
    elif "stress" in atoms.info:
        stress = np.asarray(atoms.info["stress"], dtype=float)
    if stress is not None:
        stress = _full_stress(stress)
    return Frame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64).copy(),
        positions=np.asarray(atoms.positions, dtype=float).copy(),
        cell=np.asarray(atoms.cell.array, dtype=float).copy(),
        pbc=np.asarray(atoms.pbc, dtype=bool).copy(),
        energy=energy,
        forces=forces,
        stress=stress,
        source=source,
        index=index,
    )


def _full_stress(stress: np.ndarray) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):  # Voigt order xx yy zz yz xz xy
        return voigt_6_to_full_3x3_stress(stress)
    return stress.reshape(3, 3)


def _is_deepmd_system(path: Path) -> bool:
    return path.is_dir() and (path / "type.raw").is_file()


def _read_deepmd(path: Path) -> list[Frame]:
    import dpdata

    try:
        system = dpdata.LabeledSystem(str(path), fmt="deepmd/npy")
    except Exception as exc:  # dpdata raises many kinds of errors on malformed systems
        raise DataError(path, f"cannot read as a DeePMD-kit npy system ({type(exc).__name__}: {exc})") from exc
    from ase.data import atomic_numbers

    names = system["atom_names"]
    unknown = [n for n in names if n not in atomic_numbers]
    if unknown:
        raise DataError(path, f"unknown element symbol(s) {unknown} in type_map.raw")
    numbers = np.array([atomic_numbers[names[t]] for t in system["atom_types"]], dtype=np.int64)
    periodic = not system.nopbc
    frames = []
    for k in range(system.get_nframes()):
        cell = np.asarray(system["cells"][k], dtype=float)
        stress = None
        if "virials" in system.data and periodic:
            volume = abs(np.linalg.det(cell))
            stress = -np.asarray(system["virials"][k], dtype=float) / volume
        frames.append(
            Frame(
                numbers=numbers.copy(),
                positions=np.asarray(system["coords"][k], dtype=float),
                cell=cell,
                pbc=np.array([periodic] * 3),
                energy=float(system["energies"][k]),
                forces=np.asarray(system["forces"][k], dtype=float),
                stress=stress,
                source=str(path),
                index=k,
            )
        )
    return frames


def _first_unreadable_frame(path: Path) -> int | None:
    """The index of the frame where reading ``path`` fails (frames before it read), for the error
    message; None where the file cannot be read frame by frame."""
    import ase.io

    count = 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in ase.io.iread(str(path), index=":"):
                count += 1
    except Exception:
        return count
    return None


def read_frames(
    spec: str | Path,
    index: str | int = ":",
    require: Sequence[str] = (),
    check_distances: bool = True,
) -> list[Frame]:
    """Read and validate every frame of a file (or DeePMD system directory).

    ``require`` lists labels that must be present in every frame ("energy", "forces", "stress").
    Raises DataError on an unreadable file, an empty dataset or the first bad frame.
    """
    path = resolve_path(spec)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    if _is_deepmd_system(path):
        frames = _read_deepmd(path)
        if isinstance(index, int):
            frames = [frames[_checked_index(path, index, len(frames))]]
    else:
        if path.is_dir():
            raise DataError(path, "is a directory but not a DeePMD-kit npy system (no type.raw)")
        import ase.io

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                images = ase.io.read(str(path), index=":" if isinstance(index, int) else index)
        except Exception as exc:
            raise DataError(path, f"cannot read this file ({type(exc).__name__}: {exc})", _first_unreadable_frame(path)) from exc
        if not isinstance(images, list):
            images = [images]
        offset = 0
        if isinstance(index, int) and images:
            offset = _checked_index(path, index, len(images))
            images = [images[offset]]
        frames = []
        for k, atoms in enumerate(images):
            try:
                frames.append(frame_from_atoms(atoms, source=str(path), index=offset + k))
            except (TypeError, ValueError) as exc:
                raise DataError(path, f"a label is not a number ({exc})", offset + k) from None
    if not frames:
        raise DataError(path, "contains no frames (empty dataset)")
    for frame in frames:
        validate_frame(frame, require=require, check_distances=check_distances)
    return frames


def _checked_index(path, index: int, count: int) -> int:
    """The non-negative frame index, or a DataError when the file has no such frame."""
    if not -count <= index < count:
        raise DataError(path, f"has {count} frame(s): there is no frame {index}")
    return index % count


def validate_frame(frame: Frame, require: Iterable[str] = (), check_distances: bool = True) -> None:
    """Raise DataError naming file, frame and problem if the frame cannot be used."""
    where = dict(path=frame.source or "<structure>", frame=frame.index)
    n = len(frame.numbers)
    if n == 0:
        raise DataError(problem="has no atoms", **where)
    if frame.positions.shape != (n, 3):
        raise DataError(problem=f"positions have shape {frame.positions.shape}, expected ({n}, 3)", **where)
    if not np.all(np.isfinite(frame.positions)):
        raise DataError(problem="positions contain NaN or inf", **where)
    if np.any(frame.numbers <= 0) or np.any(frame.numbers > 118):
        raise DataError(problem="unknown element (atomic number outside 1-118)", **where)
    if frame.pbc.any():
        if not np.all(np.isfinite(frame.cell)):
            raise DataError(problem="cell contains NaN or inf", **where)
        periodic_vectors = frame.cell[frame.pbc]
        if np.any(np.linalg.norm(periodic_vectors, axis=1) < 1e-6):
            raise DataError(problem="periodic direction with a zero-length cell vector", **where)
        if frame.pbc.all() and abs(np.linalg.det(frame.cell)) < 1e-6:
            raise DataError(problem="periodic cell has zero volume", **where)
    for label in require:
        value = getattr(frame, label)
        if value is None:
            raise DataError(problem=f"has no {label} (needed for training/evaluation)", **where)
    if frame.energy is not None and not np.isfinite(frame.energy):
        raise DataError(problem="energy is NaN or inf", **where)
    if frame.forces is not None:
        if frame.forces.shape != (n, 3):
            raise DataError(problem=f"forces have shape {frame.forces.shape}, expected ({n}, 3)", **where)
        if not np.all(np.isfinite(frame.forces)):
            raise DataError(problem="forces contain NaN or inf", **where)
    if frame.stress is not None and not np.all(np.isfinite(frame.stress)):
        raise DataError(problem="stress contains NaN or inf", **where)
    if check_distances and n > 1:
        from stableff.data.neighbors import neighbor_list

        # a cell list of 0.1 A cells is ~60x slower than one of 1 A (26 against 0.4 ms per
        # acetylacetone frame): search to 1 A and keep the pairs closer than the limit
        i, j, _, d = neighbor_list(frame.positions, frame.cell, frame.pbc, max(MIN_ALLOWED_DISTANCE, 1.0), with_distances=True)
        close = d < MIN_ALLOWED_DISTANCE
        i, j, d = i[close], j[close], d[close]
        if len(i):
            k = int(np.argmin(d))
            raise DataError(
                problem=f"atoms {i[k]} and {j[k]} are {d[k]:.3f} A apart (closer than {MIN_ALLOWED_DISTANCE} A: atoms on top of each other)",
                **where,
            )


def content_hash(spec: str | Path) -> str:
    """sha256 of the data behind a file spec (a file, a DeePMD folder, or ``acac:NAME``)."""
    from stableff.fingerprint import file_hash

    path = resolve_path(spec)
    if not path.exists():
        raise DataError(path, "no such file or directory")
    return file_hash(path)


def content_hashes(specs) -> dict[str, str]:
    """{spec: content_hash(spec)} for one spec, a list of them, or None (empty)."""
    if specs is None:
        return {}
    specs = [specs] if isinstance(specs, (str, Path)) else list(specs)
    return {str(spec): content_hash(spec) for spec in specs}
