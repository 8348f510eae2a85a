"""The decorrelation loss, its schedules, SAM, and their effect in a real (short) training run."""

import math

import pytest
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.errors import ConfigError
from stableff.train.config import parse_config
from stableff.measures.correlation import correlation_terms, mean_abs_correlation
from stableff.train.decorrelation import coefficient, correlation_loss, sample_edges
from stableff.train.sam import SAM


def mean_squared_correlation(features):
    return correlation_terms(features)[0]

from test_physics import MODEL_NAMES, make_model


def test_loss_near_zero_for_independent_channels_and_maximal_for_duplicates():
    generator = torch.Generator().manual_seed(0)
    independent = torch.randn(50_000, 12, generator=generator)
    assert mean_squared_correlation(independent).item() < 1e-3
    assert mean_abs_correlation(independent) < 0.02
    duplicated = torch.randn(5_000, 1, generator=generator).repeat(1, 12)
    assert mean_squared_correlation(duplicated).item() == pytest.approx(1.0, abs=1e-4)
    assert mean_abs_correlation(duplicated) == pytest.approx(1.0, abs=1e-4)
    anti = torch.cat([duplicated[:, :1], -duplicated[:, :1]], dim=1)  # R = -1 counts as redundant too
    assert mean_abs_correlation(anti) == pytest.approx(1.0, abs=1e-4)


def test_loss_invariant_to_scaling_and_shifting_a_channel():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2_000, 6, generator=generator)
    x[:, 1] += 0.7 * x[:, 0]
    scaled = x.clone()
    scaled[:, 1] = 250.0 * scaled[:, 1] + 3.0
    assert mean_squared_correlation(scaled).item() == pytest.approx(mean_squared_correlation(x).item(), rel=1e-5)


def test_edge_subsample_is_reproducible_with_a_seed():
    a = sample_edges(100_000, 4096, torch.Generator().manual_seed(5))
    b = sample_edges(100_000, 4096, torch.Generator().manual_seed(5))
    c = sample_edges(100_000, 4096, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and len(a.unique()) == 4096
    assert sample_edges(100, 4096) is None  # small batches use every edge


def test_correlation_loss_value_and_gradient_on_features_with_known_correlation():
    """Two channels with correlation rho: L_corr = rho^2 (both off-diagonal entries), corr_l = |rho|;
    the gradient of the real loss equals central finite differences."""
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(200_000, 2, generator=generator, dtype=torch.float64)
    rho = 0.6
    x = torch.stack([z[:, 0], rho * z[:, 0] + math.sqrt(1 - rho**2) * z[:, 1]], dim=1)
    loss, measures = correlation_loss([x])
    assert loss.item() == pytest.approx(rho**2, abs=5e-3)
    assert measures[0] == pytest.approx(rho, abs=5e-3)
    small = torch.randn(40, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: correlation_loss([f, 2 * f + 1], layer_weights=[1.0, 0.5], layers=[0, 1])[0], (small,))

def off_diagonal_correlations_by_definition(x):
    """R_ij, i != j, built step by step from the definition (standardised columns, Z^T Z / E), in
    autograd: the reference the one-node loss is checked against."""
    z = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-8)
    return (z.T @ z / x.shape[0])[~torch.eye(x.shape[1], dtype=torch.bool)]


def test_fused_loss_equals_the_definition_written_with_autograd():
    """The one-node loss (hand-written backward) against R built step by step from the definition
    and differentiated by autograd: values, corr_l and gradients, with a constant channel too."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(500, 9, generator=generator, dtype=torch.float64)
    x[:, 2] = 0.5 * x[:, 0] - 3.0 * x[:, 1] + 7.0
    x[:, 5] = 1.25  # zero variance: eps keeps R finite
    x[:, 8] = 40.0 * x[:, 8] + 100.0
    x.requires_grad_(True)
    r = off_diagonal_correlations_by_definition(x)
    reference = r.pow(2).mean()
    loss, measure = correlation_terms(x)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    assert measure == pytest.approx(float(r.detach().abs().mean()), rel=1e-10)
    (expected,) = torch.autograd.grad(reference, x)
    (got,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)


def test_several_layers_in_one_node_equal_the_definition_layer_by_layer():
    """Several layers in the one loss node, of different widths, one on other edges, with channels
    correlated across layers (which must not count): the weighted loss, every corr_l and every
    gradient equal the definition written per layer with autograd."""
    generator = torch.Generator().manual_seed(7)
    widths, counts, weights = [5, 11, 3, 7], [300, 300, 300, 120], [1.0, 0.5, 2.0, 0.25]
    layers = [torch.randn(n, d, generator=generator, dtype=torch.float64) for n, d in zip(counts, widths)]
    layers[1][:, 4] = 0.8 * layers[1][:, 0] + 2.0  # correlated channels within a layer
    layers[2][:, 0] = layers[0][:, 0]  # and across layers, which must not count
    layers = [x.requires_grad_(True) for x in layers]
    expected_loss, expected_measures = 0.0, []
    for x, w in zip(layers, weights):
        r = off_diagonal_correlations_by_definition(x)
        expected_loss = expected_loss + w * r.pow(2).mean()
        expected_measures.append(float(r.detach().abs().mean()))
    loss, measures = correlation_loss(layers, layer_weights=weights)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    assert measures == pytest.approx(expected_measures, rel=1e-10)
    for got, expected in zip(torch.autograd.grad(loss, layers), torch.autograd.grad(expected_loss, layers)):
        torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-12)
    small = [torch.randn(30, d, generator=generator, dtype=torch.float64, requires_grad=True) for d in (3, 4)]
    assert torch.autograd.gradcheck(lambda a, b: correlation_loss([a, b, a[:20]], layer_weights=[1.0, 0.5, 2.0])[0], tuple(small))


@pytest.mark.parametrize(
    "shifted, nearly_constant, gradient_tolerance",
    [(5.0, False, 1e-4), (30.0, False, 1e-4), (5.0, True, 1e-3)],
    ids=["mean-5-std", "mean-30-std", "std-0.01-at-100"],
)
def test_float32_loss_keeps_its_accuracy_for_columns_far_from_zero(shifted, nearly_constant, gradient_tolerance):
    """In float32 the loss and its gradient stay close to float64's for a column whose mean is
    far from zero against its spread, and for a nearly constant one: a guard on the centring (an
    uncentred X^T X - n mu mu^T, tried as a speed-up, put the loss 1 % and the gradient 96 % off
    here; float32 holds that column's values to ~1e-3 of its spread, hence the looser gradient
    tolerance)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(4096, 48, generator=generator, dtype=torch.float64)
    x[:, 1] = x[:, 0] + 0.3 * x[:, 1]
    x[:, 7] = x[:, 7] + shifted
    if nearly_constant:
        x[:, 9] = 0.01 * x[:, 9] + 100.0
    single = x.float().requires_grad_(True)
    double = x.clone().requires_grad_(True)
    loss32, measure32 = correlation_terms(single)
    loss64, measure64 = correlation_terms(double)
    assert float(loss32) == pytest.approx(float(loss64), rel=1e-5)
    assert measure32 == pytest.approx(measure64, rel=1e-5)
    (grad32,) = torch.autograd.grad(loss32, single)
    (grad64,) = torch.autograd.grad(loss64, double)
    assert float((grad32.double() - grad64).norm() / grad64.norm()) < gradient_tolerance


def test_layer_selection_and_weights():
    same = torch.randn(1_000, 1).repeat(1, 4)
    free = torch.randn(1_000, 4)
    loss, measures = correlation_loss([same, free], layers=[0], layer_weights=[2.0])
    assert loss.item() == pytest.approx(2.0, abs=1e-3)
    assert measures[0] == pytest.approx(1.0, abs=1e-3) and math.isnan(measures[1])
    loss, measures = correlation_loss([same, free], layers=[])  # allowed by the config: no term
    assert loss.item() == 0.0 and all(math.isnan(m) for m in measures)


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", (0.3, 0.3, 0.3)),
        ("linear", (0.3, 0.16, 0.02)),
        ("cosine", (0.3, 0.16, 0.02)),
        ("warmup_cosine", (0.02, 0.02 + 0.28 * (1 + math.cos(math.pi * (0.5 - 0.2) / 0.8)) / 2, 0.02)),
    ],
)
def test_schedules_at_start_middle_and_end(schedule, expected):
    values = [coefficient(schedule, t, lambda_max=0.3, lambda_min=0.02, warmup=0.2) for t in (0.0, 0.5, 1.0)]
    assert values == pytest.approx(list(expected), abs=1e-12)
    assert coefficient("warmup_cosine", 0.2, 0.3, 0.02, 0.2) == pytest.approx(0.3)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_gradients_reach_weights_through_correlation_and_force_terms(name, acac_frames):
    model = make_model(name).train()
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in acac_frames[:2]])
    out = model(batch, create_graph=True, edge_features=True)
    parameters = [p for p in model.parameters() if p.requires_grad]
    corr, _ = correlation_loss(out[keys.EDGE_FEATURES])
    force = (out[keys.FORCES] - batch[keys.FORCES]).pow(2).mean()
    corr_grads = torch.autograd.grad(corr, parameters, retain_graph=True, allow_unused=True)
    force_grads = torch.autograd.grad(force, parameters, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in corr_grads if g is not None) > 0
    assert sum(float(g.abs().sum()) for g in force_grads if g is not None) > 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_decorrelation_step_changes_the_weights(name, acac_frames):
    model = make_model(name).train()
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in acac_frames[:2]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    loss, _ = correlation_loss(model(batch, create_graph=True, edge_features=True)[keys.EDGE_FEATURES])
    loss.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k not in ("per_species_scale", "per_species_shift") for k in changed), changed


def test_sam_differs_from_adam_and_minimises_a_quadratic():
    target = torch.tensor([1.0, -2.0, 0.5])
    curvature = torch.tensor([1.0, 10.0, 0.1])

    def run(use_sam, steps):
        w = torch.nn.Parameter(torch.zeros(3))
        optimizer = SAM([w], torch.optim.Adam, rho=0.05, lr=0.05) if use_sam else torch.optim.Adam([w], lr=0.05)

        def closure():
            optimizer.zero_grad()
            loss = 0.5 * (curvature * (w - target) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(steps):
            optimizer.step(closure)
        return w.detach(), 0.5 * float((curvature * (w.detach() - target) ** 2).sum())

    # Adam's first step is lr * sign(g) whatever the gradient's size, so compare a few steps in
    sam_w, _ = run(True, 5)
    adam_w, _ = run(False, 5)
    assert not torch.allclose(sam_w, adam_w, atol=1e-5)
    start = 0.5 * float((curvature * target**2).sum())
    _, end = run(True, 300)
    assert end < 1e-2 * start


def test_decorrelation_config_errors():
    base = {"data": {"train": "x"}}
    with pytest.raises(ConfigError, match="lambda_min .* is larger than lambda_max"):
        parse_config({**base, "decorrelation": {"lambda_max": 0.1, "lambda_min": 0.2}})
    with pytest.raises(ConfigError, match="layer_weights has 1 entries but layers has 2"):
        parse_config({**base, "decorrelation": {"layers": [0, 1], "layer_weights": [1.0]}})
    with pytest.raises(ConfigError, match=r"decorrelation\.schedule"):
        parse_config({**base, "decorrelation": {"schedule": "exponential"}})
    with pytest.raises(ConfigError, match=r"decorrelation.layers \[5\] out of range"):
        parse_config({**base, "model": {"num_layers": 3}, "decorrelation": {"layers": [5]}})
    # num_layers left at the model's default (NequIP 3, Allegro 2, GemNet-T 3 blocks)
    with pytest.raises(ConfigError, match=r"decorrelation.layers \[3\] out of range for a model with 3"):
        parse_config({**base, "decorrelation": {"layers": [3]}})
    with pytest.raises(ConfigError, match=r"decorrelation.layers \[-3\] out of range for a model with 2"):
        parse_config({**base, "model": {"name": "allegro"}, "decorrelation": {"layers": [-3]}})
    assert parse_config({**base, "model": {"name": "gemnet_t"}, "decorrelation": {"layers": [2]}}).decorrelation.layers == [2]
    assert parse_config(base).decorrelation.lambda_max == 0.3 and parse_config(base).decorrelation.schedule == "cosine"


def test_short_training_with_decorrelation_lowers_correlation(tmp_path):
    """Same seed and steps: the decorrelated run ends with lower edge-feature correlation."""
    from stableff.train.loop import Trainer

    raw = {
        "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.1, "max_train_frames": 40},
        "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 8, "num_bessels": 6, "radial_mlp_width": 16, "radial_mlp_depth": 1},
        "training": {"epochs": 4, "batch_size": 4, "seed": 0, "num_threads": 1},
        "optimizer": {"lr": 0.01},
    }
    results = {}
    for enabled in (False, True):
        config = parse_config({**raw, "decorrelation": {"enabled": enabled, "lambda_max": 1.0, "schedule": "constant"}})
        row = Trainer(config, tmp_path / str(enabled), progress=False).run()
        results[enabled] = row
    assert results[True]["val_corr_mean"] < 0.8 * results[False]["val_corr_mean"]
    assert results[True]["lambda"] == 1.0 and results[False]["lambda"] == 0.0
    assert "train_corr_l0" in results[True] and "val_corr_l1" in results[False]


def test_sam_training_runs_and_resumes_state(tmp_path):
    from stableff.train.loop import Trainer

    raw = {
        "data": {"train": "acac:train_300K", "val_fraction": 0.2, "max_train_frames": 8},
        "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
        "training": {"epochs": 2, "batch_size": 4, "num_threads": 1},
        "optimizer": {"name": "sam", "rho": 0.01},
        "decorrelation": {"enabled": True},
    }
    row = Trainer(parse_config(raw), tmp_path / "sam", progress=False).run()
    assert math.isfinite(row["train_loss"]) and row["step"] == 4
    resumed = Trainer(parse_config({**raw, "training": {**raw["training"], "epochs": 3}}), tmp_path / "sam", resume=True, progress=False).run()
    assert resumed["epoch"] == 3 and resumed["step"] == 6


def test_sam_and_ema_state_survive_save_and_resume(tmp_path):
    """SAM (with its base Adam) and EMA: 1 epoch, save, resume to 2 epochs == 2 epochs at once."""
    from stableff.models.saved import load_checkpoint
    from stableff.train.loop import Trainer

    raw = {
        "data": {"train": "acac:train_300K", "val_fraction": 0.2, "max_train_frames": 8},
        "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
        "training": {"epochs": 2, "batch_size": 4, "num_threads": 1, "ema_decay": 0.9},
        "optimizer": {"name": "sam", "rho": 0.01},
    }
    Trainer(parse_config(raw), tmp_path / "whole", progress=False).run()
    Trainer(parse_config({**raw, "training": {**raw["training"], "epochs": 1}}), tmp_path / "split", progress=False).run()
    Trainer(parse_config(raw), tmp_path / "split", resume=True, progress=False).run()
    whole, split = (load_checkpoint(tmp_path / d / "last.ckpt") for d in ("whole", "split"))
    for key, value in whole["model_state"].items():  # the EMA weights
        assert torch.equal(value, split["model_state"][key]), key
    for key, value in whole["train_state"]["model"].items():
        assert torch.equal(value, split["train_state"]["model"][key]), key
    adam_whole = whole["train_state"]["optimizer"]["base"]["state"]
    adam_split = split["train_state"]["optimizer"]["base"]["state"]
    assert adam_whole.keys() == adam_split.keys() and all(torch.equal(adam_whole[k]["exp_avg"], adam_split[k]["exp_avg"]) for k in adam_whole)
    assert whole["train_state"]["ema"]["num_updates"] == split["train_state"]["ema"]["num_updates"] == 4
