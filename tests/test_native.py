"""The native (C++) decorrelation nodes: built in the test environment, and the same numbers as the
Python nodes up to rounding (their element-wise work is loops, the Python nodes' aten operations,
which fuse some multiply-adds), in the loss, the corr_l measures and every gradient of a training
step (the force loss's second derivatives through the scatter included)."""

import pytest
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.measures.correlation import weighted_correlation_terms
from stableff.models import native
from stableff.models.invariants import scatter_sum_and_view
from stableff.train.decorrelation import correlation_loss
from test_physics import make_model


@pytest.fixture
def python_nodes(monkeypatch):
    """Switches the native nodes off for the duration of a call (``with python_nodes():``)."""
    from contextlib import contextmanager

    @contextmanager
    def switched_off():
        saved = dict(native._state)
        native._state["module"] = None
        try:
            yield
        finally:
            native._state.clear()
            native._state.update(saved)

    return switched_off


def test_the_native_nodes_build_here():
    assert native.native_ops() is not None, "the native nodes must build where make test runs (a C++ compiler and the installed torch): see the warning"


def close(a, b, dtype) -> bool:
    """Equal up to rounding: a few ulps of the values' scale in ``dtype``."""
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    return torch.allclose(a, b, rtol=0.0, atol=8 * torch.finfo(dtype).eps * max(scale, 1e-30))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_native_loss_node_equals_the_python_one(dtype, python_nodes):
    torch.manual_seed(0)
    features = [torch.randn(300, d, dtype=dtype).mul_(torch.rand(d, dtype=dtype) + 0.1).add_(3.0).requires_grad_(True) for d in (5, 9, 5, 1)]
    weights = [1.0, 0.3, 2.0, 1.0]  # a layer of one channel adds nothing
    loss, measures = weighted_correlation_terms(features, weights)
    grads = torch.autograd.grad(loss, features[:3])
    with python_nodes():
        expected, expected_measures = weighted_correlation_terms(features, weights)
        expected_grads = torch.autograd.grad(expected, features[:3])
    assert close(loss, expected, dtype) and measures[3] != measures[3]
    assert all(close(torch.tensor(m), torch.tensor(e), dtype) for m, e in zip(measures[:3], expected_measures[:3]))
    assert all(close(g, e, dtype) for g, e in zip(grads, expected_grads))


def test_a_training_step_is_the_same_with_either_node(acac_frames, python_nodes):
    model = make_model("nequip").train()
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in acac_frames[:3]])
    parameters = [p for p in model.parameters() if p.requires_grad]

    def step():
        out = model(batch, create_graph=True, edge_features=True)
        corr, measures = correlation_loss(out[keys.EDGE_FEATURES])
        loss = (out[keys.FORCES] - batch[keys.FORCES]).pow(2).mean() + (out[keys.TOTAL_ENERGY] - batch[keys.TOTAL_ENERGY]).pow(2).mean() + 0.3 * corr
        return loss, measures, torch.autograd.grad(loss, parameters, allow_unused=True)

    loss, measures, grads = step()
    with python_nodes():
        expected, expected_measures, expected_grads = step()
    assert close(loss, expected, torch.float64)
    assert all(close(torch.tensor(m), torch.tensor(e), torch.float64) for m, e in zip(measures, expected_measures))
    assert all((g is None and e is None) or close(g, e, torch.float64) for g, e in zip(grads, expected_grads))
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_native_edge_features_refuse_a_second_derivative():
    model = make_model("nequip")
    layer = model.network.layers[0]
    view = layer.invariant_view
    src = torch.randn(6, layer.irreps_mid.dim * 1, dtype=torch.float64, requires_grad=True)
    _, invariants = scatter_sum_and_view(src, torch.tensor([0, 1, 1, 2, 0, 2]), 3, view, 4)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(invariants.sum(), src, create_graph=True)
