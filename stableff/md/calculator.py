"""stableff models as ASE calculators, so every ASE tool (MD, relaxations, NEB, ...) works with them."""

from __future__ import annotations

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes, compare_atoms
from ase.stress import full_3x3_to_voigt_6_stress

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph, to_device
from stableff.data.io import frame_from_atoms
from stableff.data.neighbors import SKIN_A, SkinNeighborList
from stableff.models.saved import model_from_checkpoint


_LOADED: dict = {}


def loaded_model(path, device: str = "cpu", compile: bool = False):
    """(model, statistics) of a checkpoint, built once per process for each content of the file
    (a run of many replicas in one process loads, and compiles, its model once: building an
    e3nn model takes ~0.7 s, compiling it tens of seconds). A changed file is loaded again."""
    from stableff.fingerprint import file_hash

    key = (str(path), file_hash(path), str(device), bool(compile))
    if key not in _LOADED:
        if len(_LOADED) >= 8:  # a process that sees many models keeps the latest
            _LOADED.pop(next(iter(_LOADED)))
        _LOADED[key] = model_from_checkpoint(path, device=device, compile=compile)
    return _LOADED[key]


def cached_calculator(path, device: str = "cpu", compile: bool = False) -> "StableFFCalculator":
    """A fresh calculator (its own neighbour list and results) around the process's loaded model."""
    model, statistics = loaded_model(path, device, compile)
    return StableFFCalculator(model, device=device, statistics=statistics)


class StableFFCalculator(Calculator):
    """ASE calculator for a trained stableff checkpoint.

    >>> calc = StableFFCalculator("run/best.ckpt")        # doctest: +SKIP
    >>> atoms.calc = calc; atoms.get_forces()             # doctest: +SKIP

    Implements energy, free_energy, energies (per atom), forces and, for fully periodic cells, stress
    (eV, eV/A, eV/A^3). ``model_path`` may also be an already built model (with the training-data
    ``statistics`` given beside it, or None).
    ``compile``: evaluate through torch.compile (falls back to eager with a warning where it fails).
    ``skin`` (A): the neighbour list holds pairs within r_max + skin and is rebuilt only after an
    atom has moved skin / 2 (or the cell changed); each call uses the pairs within r_max.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress"]

    def __init__(self, model_path, device: str = "cpu", compile: bool = False, skin: float = SKIN_A, statistics=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model_path, torch.nn.Module):
            self.model, self.statistics = model_path.eval(), statistics
            if compile:
                from stableff.models.compiled import compile_inference

                compile_inference(self.model)
        else:
            self.model, self.statistics = model_from_checkpoint(model_path, device=device, compile=compile)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.dtype = self.model.dtype
        self.neighbours = SkinNeighborList(self.model.r_max, skin)

    def check_state(self, atoms, tol=1e-15):
        """ASE's check of what changed since the last call, with exact array comparisons (ASE's
        default tolerance of 1e-15 goes through numpy's isclose: ~0.5 ms of every MD step)."""
        return compare_atoms(self.atoms, atoms, tol=None)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if not np.all(np.isfinite(self.atoms.positions)):
            # a blown-up MD run: report non-finite results for the failure monitor instead of crashing
            n = len(self.atoms)
            self.results = {"energy": np.nan, "free_energy": np.nan, "energies": np.full(n, np.nan), "forces": np.full((n, 3), np.nan), "stress": np.full(6, np.nan)}
            return
        frame = frame_from_atoms(self.atoms)
        frame.energy = frame.forces = frame.stress = None
        pairs = self.neighbours(frame.positions, frame.cell, frame.pbc)
        graph = frame_to_graph(frame, self.model.type_numbers, self.model.r_max, self.dtype, pairs=pairs)
        batch = to_device(collate([graph]), self.device)
        periodic = bool(np.all(self.atoms.pbc))
        out = self.model(batch, compute_forces=True, compute_stress=periodic and "stress" in properties, create_graph=False)
        energy = float(out[keys.TOTAL_ENERGY].detach().cpu()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out[keys.ATOMIC_ENERGIES].detach().cpu().double().numpy(),
            "forces": out[keys.FORCES].detach().cpu().double().numpy(),
        }
        if keys.STRESS in out:
            s = out[keys.STRESS].detach().cpu().double().numpy()[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(s)
