"""A data-placed ZBL prior that the training and validation frames never reach: the study's zbl
variant takes its sibling's weights instead of training the same model again, and only when the
prior is shown to be inert on those frames."""

import copy

import torch

from stableff.models.saved import load_checkpoint
from stableff.study.inert_prior import sibling_variant, train_without_prior
from stableff.study.stages import train_stage
from stableff.train.config import parse_config

RAW = {
    "data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 12},
    "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
    "training": {"epochs": 2, "batch_size": 4, "num_threads": 1},
}


def with_zbl(factor):
    raw = copy.deepcopy(RAW)
    raw["model"]["zbl"] = {"switch": "data", "factor": factor}
    return parse_config(raw)


def test_the_sibling_of_a_zbl_variant_is_the_same_remedies_without_it():
    variants = ["baseline", "decorrelated", "zbl", "decorrelated+zbl", "sam+zbl", "active+zbl"]
    assert sibling_variant("zbl", variants) == "baseline"
    assert sibling_variant("zbl+decorrelated", variants) == "decorrelated"
    assert sibling_variant("sam+zbl", variants) is None  # no sam variant in the study: trained itself
    assert sibling_variant("decorrelated", variants) is None and sibling_variant("active+zbl", variants) is None


def test_a_prior_the_data_never_reaches_gives_the_weights_training_with_it_gives(tmp_path):
    said = []
    done = train_without_prior(with_zbl(0.5), parse_config(RAW), tmp_path / "baseline", tmp_path / "zbl", said.append)
    sibling = load_checkpoint(tmp_path / "baseline" / "best.ckpt")
    assert done is not None and done["weights_of"] == str(tmp_path / "baseline")
    assert done["fingerprint"]["weights_of"] == train_stage(parse_config(RAW), tmp_path / "baseline", said.append)["model_hash"]
    assert done["prior_on_data"]["force_eV_per_A"] <= 1e-6 and any("the weights of" in line for line in said)
    # what training with the prior from scratch gives: the same weights and the same radii
    scratch = train_stage(with_zbl(0.5), tmp_path / "scratch", said.append)
    adopted, trained = load_checkpoint(tmp_path / "zbl" / "best.ckpt"), load_checkpoint(tmp_path / "scratch" / "best.ckpt")
    assert adopted["hyperparameters"] == trained["hyperparameters"] and adopted["hyperparameters"]["zbl"] is True
    assert adopted["hyperparameters"] != sibling["hyperparameters"]
    assert adopted["model_state"].keys() == trained["model_state"].keys()
    for key, value in trained["model_state"].items():
        assert torch.allclose(adopted["model_state"][key], value, rtol=0, atol=1e-6), key
    assert adopted["config"]["model"] == trained["config"]["model"] and done["epochs"] == scratch["epochs"]
    # asked again: reused, nothing written
    before = (tmp_path / "zbl" / "best.ckpt").stat().st_mtime_ns
    said.clear()
    assert train_without_prior(with_zbl(0.5), parse_config(RAW), tmp_path / "baseline", tmp_path / "zbl", said.append)["model_hash"] == done["model_hash"]
    assert (tmp_path / "zbl" / "best.ckpt").stat().st_mtime_ns == before and any("reused" in line for line in said)
    # a folder that holds a training of this config with the prior, from scratch, keeps it
    kept = train_without_prior(with_zbl(0.5), parse_config(RAW), tmp_path / "baseline", tmp_path / "scratch", said.append)
    assert kept["model_hash"] == scratch["model_hash"] and "weights_of" not in kept


def test_a_prior_that_reaches_the_data_is_trained_with(tmp_path):
    said = []
    # factor 1.5: the switch ends beyond the closest training pairs, so the prior acts on the data
    assert train_without_prior(with_zbl(1.5), parse_config(RAW), tmp_path / "baseline", tmp_path / "zbl", said.append) is None
    assert any("the prior reaches the training or validation data" in line and "frame" in line for line in said)
    assert not (tmp_path / "zbl" / "best.ckpt").exists()
    # a sibling that has a prior of its own, or another budget, never lends its weights
    covalent = copy.deepcopy(RAW)
    covalent["model"]["zbl"] = {"switch": "covalent"}
    assert train_without_prior(with_zbl(0.5), parse_config(covalent), tmp_path / "other", tmp_path / "zbl", said.append) is None
    longer = copy.deepcopy(RAW)
    longer["training"]["epochs"] = 3
    assert train_without_prior(with_zbl(0.5), parse_config(longer), tmp_path / "other", tmp_path / "zbl", said.append) is None
    assert not (tmp_path / "other").exists()
