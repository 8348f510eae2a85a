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


def test_the_memory_budget_decides_only_which_chunks_are_recomputed(monkeypatch):
    """Kept or recomputed, a chunk runs the same operations: the results are the same to the bit
    whatever the budget, and the budget is kept to (the chunks' saved edge work fits in it)."""
    model = make_model("nequip", type_numbers=(8, 72)).requires_grad_(False)
    cell = hfo2_like_cell().repeat((2, 1, 1))
    one_pass = outputs(model, cell)
    monkeypatch.setattr(InteractionLayer, "chunk_above", 100)
    monkeypatch.setattr(InteractionLayer, "edge_chunk", 97)
    runs = {}
    for name, limit in (("none", 0), ("all", 1 << 40)):
        model.network._kept_edge_work_limit = limit
        runs[name] = outputs(model, cell)
        kept = model.network.last_kept_edge_work
        runs[name + "_counts"] = (kept.kept_chunks, kept.recomputed_chunks, kept.used)
    chunks = runs["none_counts"][1]
    assert runs["none_counts"] == (0, chunks, 0) and chunks >= 6  # 3 layers, at least 2 chunks each
    assert runs["all_counts"][:2] == (chunks, 0)
    per_chunk = runs["all_counts"][2] / chunks
    model.network._kept_edge_work_limit = int(2.5 * per_chunk)  # room for about two chunks
    runs["some"] = outputs(model, cell)
    kept = model.network.last_kept_edge_work
    assert 0 < kept.kept_chunks < chunks and kept.kept_chunks + kept.recomputed_chunks == chunks
    assert kept.used <= 1.5 * kept.limit  # a layer's first chunk may overshoot by one chunk, no more
    for key, value in one_pass.items():
        assert np.array_equal(runs["none"][key], runs["all"][key]) and np.array_equal(runs["some"][key], runs["all"][key]), key
        np.testing.assert_allclose(runs["all"][key], value, rtol=1e-10, atol=1e-10, err_msg=key)
