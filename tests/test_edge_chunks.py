"""NequIP's memory-bounded inference: a layer's messages summed in chunks of edges (each recomputed
in the force backward) give the one-pass energies, forces and stress."""

import numpy as np

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import frame_from_atoms
from stableff.models.nequip import InteractionLayer
from test_physics import hfo2_like_cell, make_model


def outputs(model, atoms):
    graph = frame_to_graph(frame_from_atoms(atoms), model.type_numbers, model.r_max, model.dtype)
    out = model(collate([graph]), compute_forces=True, compute_stress=True)
    return {k: out[k].detach().numpy() for k in (keys.TOTAL_ENERGY, keys.FORCES, keys.STRESS)}


def test_chunked_messages_equal_the_one_pass_ones(monkeypatch):
    model = make_model("nequip", type_numbers=(8, 72)).requires_grad_(False)  # frozen: as a loaded checkpoint
    cell = hfo2_like_cell().repeat((2, 1, 1))
    one_pass = outputs(model, cell)
    calls = []
    original = InteractionLayer.summed_messages
    monkeypatch.setattr(InteractionLayer, "summed_messages", lambda self, *a: calls.append(a[1].shape[0]) or original(self, *a))
    monkeypatch.setattr(InteractionLayer, "chunk_above", 100)
    monkeypatch.setattr(InteractionLayer, "edge_chunk", 97)  # not a divisor: the last chunk is shorter
    chunked = outputs(model, cell)
    num_edges = max(calls)
    assert num_edges == 97 and len(set(calls)) == 2  # full chunks and the shorter last one
    for key, value in one_pass.items():
        np.testing.assert_allclose(chunked[key], value, rtol=1e-10, atol=1e-10, err_msg=key)
    # while training (weights with gradients) the layer never chunks
    calls.clear()
    model.requires_grad_(True).train()
    outputs(model, cell)
    assert calls and all(n > 100 for n in calls)
