"""Atomic graphs (dicts of tensors keyed by :mod:`stableff.data.keys`) and their batching."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from stableff.data import keys
from stableff.data.io import Frame
from stableff.data.neighbors import neighbor_list
from stableff.errors import DataError

Graph = dict  # str -> torch.Tensor


def species_index(numbers: np.ndarray, type_numbers: Sequence[int], frame: Frame | None = None) -> np.ndarray:
    """Map atomic numbers to the model's species indices; unknown elements raise DataError."""
    lookup = {int(z): k for k, z in enumerate(type_numbers)}
    try:
        return np.array([lookup[int(z)] for z in numbers], dtype=np.int64)
    except KeyError as exc:
        from ase.data import chemical_symbols

        z = int(exc.args[0])
        known = ", ".join(chemical_symbols[t] for t in type_numbers)
        problem = f"element {chemical_symbols[z]} is not known to this model (it was trained on {known})"
        if frame is not None:
            raise DataError(frame.source or "<structure>", problem, frame.index) from None
        raise DataError("<structure>", problem) from None


def frame_to_graph(frame: Frame, type_numbers: Sequence[int], cutoff: float, dtype=torch.get_default_dtype(), pairs=None) -> Graph:
    """One structure as a graph with its neighbour list within ``cutoff`` (Angstrom) and its labels.
    ``pairs``: ``(i, j, shifts)`` of that list where the caller has it (e.g. a SkinNeighborList's)."""
    i, j, shifts = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff) if pairs is None else pairs
    graph = {
        keys.POSITIONS: torch.as_tensor(frame.positions, dtype=dtype),
        keys.ATOMIC_NUMBERS: torch.as_tensor(frame.numbers, dtype=torch.long),
        keys.SPECIES: torch.as_tensor(species_index(frame.numbers, type_numbers, frame)),
        keys.CELL: torch.as_tensor(frame.cell, dtype=dtype).reshape(1, 3, 3),
        keys.PBC: torch.as_tensor(frame.pbc, dtype=torch.bool).reshape(1, 3),
        keys.EDGE_INDEX: torch.as_tensor(np.stack([i, j]), dtype=torch.long),
        keys.EDGE_CELL_SHIFT: torch.as_tensor(shifts, dtype=dtype),
        keys.NUM_ATOMS: torch.tensor([len(frame)], dtype=torch.long),
    }
    if frame.energy is not None:
        graph[keys.TOTAL_ENERGY] = torch.tensor([frame.energy], dtype=dtype)
    if frame.forces is not None:
        graph[keys.FORCES] = torch.as_tensor(frame.forces, dtype=dtype)
    if frame.stress is not None:
        graph[keys.STRESS] = torch.as_tensor(frame.stress, dtype=dtype).reshape(1, 3, 3)
    return graph


def collate(graphs: Sequence[Graph]) -> Graph:
    """Concatenate graphs of different sizes into one batch, offsetting edge indices (every field
    as :data:`keys.FIELDS` says; a field not listed there is refused, not dropped).

    A label is kept only if every graph has it. Adds ``keys.BATCH`` (structure index per atom).
    """
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    unknown = sorted({key for g in graphs for key in g} - set(keys.FIELDS))
    if unknown:
        raise ValueError(f"cannot batch field(s) {unknown}: not in stableff.data.keys.FIELDS (say there whether each is per atom, per edge or per structure)")
    batch: Graph = {}
    for key in keys.FIELDS:
        if key != keys.EDGE_INDEX and all(key in g for g in graphs):
            batch[key] = torch.cat([g[key] for g in graphs])
    offsets = torch.cumsum(torch.tensor([0] + [len(g[keys.POSITIONS]) for g in graphs[:-1]]), 0)
    batch[keys.EDGE_INDEX] = torch.cat([g[keys.EDGE_INDEX] + off for g, off in zip(graphs, offsets)], dim=1)
    batch[keys.BATCH] = torch.repeat_interleave(
        torch.arange(len(graphs)), torch.tensor([len(g[keys.POSITIONS]) for g in graphs])
    )
    return batch


def edges_first(batch: Graph, edges: torch.Tensor) -> Graph:
    """The same batch with the edges ``edges`` (distinct indices) stored first, in that order, and
    the others after them in their order; ``keys.EDGE_FEATURE_SAMPLE`` says how many lead. Models
    then compute edge features on those leading edges and read them in place (no gather); every
    model result is independent of the edge order (to float rounding of its sums)."""
    num_edges = batch[keys.EDGE_INDEX].shape[1]
    rest = torch.ones(num_edges, dtype=torch.bool, device=edges.device)
    rest[edges] = False
    order = torch.cat([edges, rest.nonzero().squeeze(1)])
    out = dict(batch)
    out[keys.EDGE_INDEX] = batch[keys.EDGE_INDEX].index_select(1, order)
    for key, kind in keys.FIELDS.items():
        if kind == keys.PER_EDGE and key != keys.EDGE_INDEX and key in batch:
            out[key] = batch[key].index_select(0, order)
    out[keys.EDGE_FEATURE_SAMPLE] = torch.tensor(edges.shape[0])
    return out


def to_device(batch: Graph, device, dtype=None) -> Graph:
    """Move a batch to a device (and cast its floating tensors to ``dtype`` if given)."""
    out = {}
    for key, value in batch.items():
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        out[key] = value.to(device)
    return out
