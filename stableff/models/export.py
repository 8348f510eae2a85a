"""A trained model as one self-contained TorchScript file for engines outside Python (LAMMPS's
``pair_style stableff``, any libtorch program).

The file's ``forward(species [N] int64, edge_index [2, E] int64, edge_vectors [E, 3]) -> [N] float64``
gives per-atom energies (eV) of a graph whose nodes are atoms (local and ghost atoms alike: every
periodic image is its own node, so no cell or shifts enter) and whose edges ``(i, j)`` carry
``edge_vectors = x_j - x_i`` for every ordered pair within ``r_max``. Forces and the virial follow by
autograd with respect to ``edge_vectors`` (the engine does it). The metadata travel inside the file
(``metadata.json``, read with ``torch.jit.load(..., _extra_files=...)``): see :func:`export_metadata`.

The graph is traced (``torch.jit.trace``) on a structure of the model's own elements and then checked
on structures of other sizes (and on one without pairs) against the checkpoint's model, so a size
frozen into the trace is caught at export, not in production.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stableff.data import keys
from stableff.errors import StableFFError
from stableff.models.force_field import ForceField

#: bumped whenever the exported file's interface or metadata change meaning; the LAMMPS plugin
#: (stableff/lammps/pair_stableff.cpp, STABLEFF_FORMAT) refuses other versions
EXPORT_FORMAT = 1
#: the name of the metadata inside the file
METADATA_FILE = "metadata.json"
#: the same, as "key value..." lines the LAMMPS plugin reads without a JSON parser
PLUGIN_METADATA_FILE = "lammps.txt"
#: the keys of PLUGIN_METADATA_FILE
PLUGIN_KEYS = ("format", "elements", "r_max_A", "receptive_field_A", "parallel_edges", "dtype", "model")
#: what the self-check accepts, by dtype: (energy, forces) relative to the energy and to the largest
#: force (at least 1 eV/A) of the structure; float32 is the rounding of a different summation order
EXPORT_TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 2e-5)}


class GraphEnergy(nn.Module):
    """The per-atom energies of a ForceField from (species, edge_index, edge_vectors): the network,
    its scale and shift and its priors, with no cell and no shifts (periodic images are nodes)."""

    def __init__(self, model: ForceField):
        super().__init__()
        self.network = model.network
        self.scale_shift = model.scale_shift
        self.priors = model.priors

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor) -> torch.Tensor:
        edge_lengths = torch.linalg.norm(edge_vectors, dim=-1)
        batch = {
            keys.SPECIES: species,
            keys.EDGE_INDEX: edge_index,
            keys.EDGE_CELL_SHIFT: torch.zeros_like(edge_vectors),
            keys.BATCH: torch.zeros_like(species),
        }
        raw, _ = self.network.atomic_energies(batch, edge_vectors, edge_lengths, False)
        atomic = self.scale_shift(raw, species)
        for prior in self.priors:
            atomic = atomic + prior(species, edge_index, edge_lengths)
        return atomic


def receptive_field(model: ForceField) -> float:
    """How far (A) an atom's energy reaches: the ghost cutoff that makes a domain-decomposed run
    exact. Message passing over L layers reaches L x r_max (NequIP); Allegro is strictly local
    (r_max); models passing messages over edge triplets reach one edge further per block and two
    more for their embedding and output (GemNet-T, the DimeNet++-style model: (blocks + 2) x r_max)."""
    network = model.network
    name = network.model_name
    if name == "nequip":
        return len(network.layers) * network.r_max
    if name == "allegro":
        return network.r_max
    if name in ("gemnet_t", "dimenet_pp_like"):
        return (len(network.blocks) + 2) * network.r_max
    raise StableFFError(f"export: no receptive field is known for model '{name}'")


def accepts_parallel_edges(model: ForceField) -> bool:
    """Whether the model is exact on a graph with several edges between one pair of atoms (the
    periodic images of a neighbour merged into its one node, as an engine does for images of its own
    atoms): true for NequIP and Allegro, which sum over edges; false for the triplet models, which
    pair each edge with its reverse by (centre, neighbour) and so need every image as its own node."""
    return model.network.model_name in ("nequip", "allegro")


def export_metadata(model: ForceField, checkpoint_path: str | Path, dtype: torch.dtype) -> dict:
    """What an engine needs beside the graph: elements of the species (in species order), r_max,
    receptive field, dtype, kind, the checkpoint's fingerprint, the stableff and format versions."""
    from ase.data import chemical_symbols

    from stableff import __version__
    from stableff.fingerprint import file_hash

    return {
        "format": EXPORT_FORMAT,
        "elements": [chemical_symbols[z] for z in model.type_numbers],
        "atomic_numbers": list(model.type_numbers),
        "r_max_A": float(model.r_max),
        "receptive_field_A": float(receptive_field(model)),
        "parallel_edges": "yes" if accepts_parallel_edges(model) else "no",
        "dtype": str(dtype).replace("torch.", ""),
        "model": model.model_name,
        "priors": [type(p).__name__ for p in model.priors],
        "checkpoint": str(checkpoint_path),
        "checkpoint_sha256": file_hash(checkpoint_path),
        "stableff_version": __version__,
        "units": {"energy": "eV", "length": "A"},
    }


def plugin_metadata(metadata: dict) -> str:
    """The plugin's part of the metadata as "key value..." lines (lists space-separated)."""
    lines = []
    for key in PLUGIN_KEYS:
        value = metadata[key]
        lines.append(f"{key} {' '.join(map(str, value)) if isinstance(value, list) else repr(value) if isinstance(value, float) else value}")
    return "\n".join(lines) + "\n"


def graph_of(atoms, r_max: float, type_numbers) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(species, edge_index, edge_vectors) of a finite structure: every ordered pair within r_max.
    For the self-check; periodic structures reach the exported file through an engine's ghosts."""
    positions = np.asarray(atoms.positions, dtype=np.float64)
    lookup = {z: s for s, z in enumerate(type_numbers)}
    species = torch.tensor([lookup[int(z)] for z in atoms.numbers], dtype=torch.long)
    delta = positions[None, :, :] - positions[:, None, :]
    distance = np.linalg.norm(delta, axis=-1)
    i, j = np.nonzero((distance < r_max) & ~np.eye(len(positions), dtype=bool))
    edge_index = torch.tensor(np.stack([i, j]), dtype=torch.long).reshape(2, -1)
    return species, edge_index, torch.tensor(delta[i, j]).reshape(-1, 3)


def energies_and_forces(module, species, edge_index, edge_vectors, dtype):
    """Total energy (eV), per-atom energies and forces (eV/A) of a graph energy module, forces from
    the gradient with respect to the edge vectors (F_j = -dE/dv_ij summed, F_i = +... )."""
    vectors = edge_vectors.to(dtype).detach().requires_grad_(True)
    atomic = module(species, edge_index, vectors)
    (gradient,) = torch.autograd.grad(atomic.sum(), [vectors], allow_unused=True)
    if gradient is None:
        gradient = torch.zeros_like(vectors)
    gradient = gradient.double()
    forces = torch.zeros((species.shape[0], 3), dtype=torch.float64)
    forces.index_add_(0, edge_index[0], gradient)
    forces.index_add_(0, edge_index[1], -gradient)
    return float(atomic.detach().sum()), atomic.detach(), forces


def _check_structures(type_numbers):
    """Structures the trace is checked on: molecules of the model's elements of three sizes, one
    without any pair within r_max."""
    from ase import Atoms

    rng = np.random.default_rng(0)
    structures = []
    for count in (3, 7, 12):
        numbers = [type_numbers[k % len(type_numbers)] for k in range(count)]
        # a random cluster with no pair closer than 1.2 A
        positions = []
        while len(positions) < count:
            candidate = rng.uniform(0.0, 1.6 * count ** (1 / 3) + 1.0, size=3)
            if all(np.linalg.norm(candidate - p) > 1.2 for p in positions):
                positions.append(candidate)
        structures.append(Atoms(numbers=numbers, positions=positions))
    structures.append(Atoms(numbers=[type_numbers[0]] * 2, positions=[[0, 0, 0], [0, 0, 50.0]]))
    return structures


def export_model(checkpoint_path: str | Path, out: str | Path, dtype: str = "float64") -> dict:
    """Write the TorchScript file of a checkpoint and check it; returns the metadata plus the check's
    largest differences. Raises StableFFError naming the difference where the file disagrees with
    the checkpoint's model (as run by stableff's own ASE path) beyond EXPORT_TOLERANCES."""
    from stableff.models.saved import model_from_checkpoint

    if dtype not in ("float32", "float64"):
        raise StableFFError(f"--dtype: '{dtype}' is not float32 or float64")
    torch_dtype = getattr(torch, dtype)
    model, _ = model_from_checkpoint(checkpoint_path)
    model = model.to(torch_dtype)
    graph = GraphEnergy(model).eval()
    structures = _check_structures(model.type_numbers)
    example = graph_of(structures[1], model.r_max, model.type_numbers)
    vectors = example[2].to(torch_dtype).requires_grad_(True)
    with torch.jit.optimized_execution(False):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(graph, (example[0], example[1], vectors), check_trace=False)
    metadata = export_metadata(model, checkpoint_path, torch_dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f"{out.name}.{os.getpid()}.partial")
    torch.jit.save(traced, str(partial), _extra_files={METADATA_FILE: json.dumps(metadata, indent=1), PLUGIN_METADATA_FILE: plugin_metadata(metadata)})
    loaded = torch.jit.load(str(partial))
    worst = check_export(loaded, model, structures, torch_dtype)
    partial.replace(out)
    return {**metadata, "check": worst}


def check_export(loaded, model: ForceField, structures, dtype) -> dict:
    """Largest relative energy and absolute force differences between the exported file and the
    model (through its own batch path) over ``structures``; raises StableFFError beyond tolerance."""
    from stableff.data.graph import collate, frame_to_graph
    from stableff.data.io import frame_from_atoms

    energy_tolerance, force_tolerance = EXPORT_TOLERANCES[dtype]
    worst = {"energy_relative": 0.0, "forces_eV_per_A": 0.0}
    for atoms in structures:
        species, edge_index, edge_vectors = graph_of(atoms, model.r_max, model.type_numbers)
        energy, _, forces = energies_and_forces(loaded, species, edge_index, edge_vectors, dtype)
        frame = frame_from_atoms(atoms)
        frame.energy = frame.forces = frame.stress = None
        reference = model(collate([frame_to_graph(frame, model.type_numbers, model.r_max, dtype)]), compute_stress=False)
        ref_energy = float(reference[keys.TOTAL_ENERGY].detach().sum())
        ref_forces = reference[keys.FORCES].double()
        de = abs(energy - ref_energy) / max(abs(ref_energy), 1.0)
        df = float((forces - ref_forces).abs().max()) if len(atoms) else 0.0
        force_scale = max(float(ref_forces.abs().max()) if len(atoms) else 0.0, 1.0)
        worst["energy_relative"] = max(worst["energy_relative"], de)
        worst["forces_eV_per_A"] = max(worst["forces_eV_per_A"], df)
        if de > energy_tolerance or df > force_tolerance * force_scale:
            raise StableFFError(
                f"export check failed on a {len(atoms)}-atom structure with {edge_index.shape[1]} edges: the file's energy is "
                f"{energy:.10f} eV against the checkpoint's {ref_energy:.10f} eV (relative {de:.2e}, tolerance {energy_tolerance:.0e}), "
                f"largest force difference {df:.2e} eV/A (tolerance {force_tolerance * force_scale:.1e})"
            )
    return worst
