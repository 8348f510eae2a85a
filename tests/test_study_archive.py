"""A study's trainings kept in a folder of their own (`stableff study --trainings DIR`): a study run
again in a fresh output folder takes them instead of training again, only when their inputs are the
same, and a kept training that is not the model its done.json names is never taken."""

import copy

import yaml

from stableff.fingerprint import file_hash
from stableff.study.archive import keep_training, restore_training
from stableff.study.stages import train_stage, training_fingerprint
from stableff.train.config import parse_config

TRAINING = {
    "data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 12},
    "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
    "training": {"epochs": 2, "batch_size": 4, "num_threads": 1},
}


def test_a_kept_training_is_taken_only_with_the_same_inputs_and_model(tmp_path):
    said = []
    config = parse_config(TRAINING)
    done = train_stage(config, tmp_path / "first", said.append)
    assert keep_training(done, tmp_path / "first", tmp_path / "kept", said.append)
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["best.ckpt", "config.yaml", "done.json", "metrics.csv"]
    assert not keep_training(done, tmp_path / "first", tmp_path / "kept", said.append)  # already there
    # a fresh run folder takes it, and the training stage then reuses it without training
    assert restore_training(training_fingerprint(config), tmp_path / "kept", tmp_path / "second", said.append)
    said.clear()
    again = train_stage(config, tmp_path / "second", said.append)
    assert again["model_hash"] == done["model_hash"] and said == ["  trained before (reused)"]
    # a run folder that holds this training already is left as it is
    assert not restore_training(training_fingerprint(config), tmp_path / "kept", tmp_path / "second", said.append)
    # other inputs: not taken, and the log says what differs
    longer = copy.deepcopy(TRAINING)
    longer["training"]["epochs"] = 3
    said.clear()
    assert not restore_training(training_fingerprint(parse_config(longer)), tmp_path / "kept", tmp_path / "third", said.append)
    assert len(said) == 1 and "inputs changed" in said[0] and "epochs" in said[0] and not (tmp_path / "third").exists()
    # a kept best.ckpt that is not the model done.json names (edited, or a copy cut short): not taken
    (tmp_path / "kept" / "best.ckpt").write_bytes((tmp_path / "kept" / "best.ckpt").read_bytes()[:-10])
    assert not restore_training(training_fingerprint(config), tmp_path / "kept", tmp_path / "fourth", said.append)
    assert not (tmp_path / "fourth").exists()
    # a training made from another one's weights is not kept
    assert not keep_training({**done, "fingerprint": {**done["fingerprint"], "weights_of": "sha256:0"}}, tmp_path / "first", tmp_path / "other", said.append)
    assert not (tmp_path / "other").exists()


def test_a_study_in_a_fresh_folder_trains_nothing_that_was_kept(tmp_path):
    import ase.io

    from stableff.data.io import read_frames
    from stableff.study import load_study_config, run_study

    start = tmp_path / "start.xyz"
    ase.io.write(start, [f.to_atoms() for f in read_frames("acac:test_MD_300K", index=":2")], format="extxyz")
    raw = {
        "name": "kept", "training": TRAINING, "variants": ["baseline", "decorrelated"], "seeds": [0],
        "test": {"in_distribution": [str(start)]},
        "stability": {"temperatures_K": [300], "replicas": 1, "time_ps": 0.005, "workers": 1, "in_distribution": [{"file": str(start), "frames": [0]}]},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    study = load_study_config(path)
    said = []
    first = run_study(study, tmp_path / "a", log=said.append, trainings=tmp_path / "kept")
    assert said.count("  training ...") == 2 and said.count("  training kept in " + str(tmp_path / "kept" / "nequip" / "baseline" / "seed_0")) == 1
    said.clear()
    second = run_study(study, tmp_path / "b", log=said.append, trainings=tmp_path / "kept")
    assert "  training ..." not in said and sum(line.startswith("  training taken from") for line in said) == 2
    assert not any(line.startswith("  training kept in") for line in said)  # the same models: nothing copied back
    for variant in ("baseline", "decorrelated"):
        a, b = (tmp_path / out / "nequip" / variant / "seed_0" / "best.ckpt" for out in ("a", "b"))
        assert file_hash(a) == file_hash(b), variant
    assert [r["accuracy"] for r in first["runs"]] == [r["accuracy"] for r in second["runs"]]


def test_a_kept_training_lends_its_weights_to_the_zbl_variant_in_a_fresh_folder(tmp_path):
    """A kept training has no last.ckpt; the data-placed prior's variant still takes its weights."""
    from stableff.models.saved import load_checkpoint
    from stableff.study.inert_prior import train_without_prior

    said = []
    config = parse_config(TRAINING)
    done = train_stage(config, tmp_path / "first", said.append)
    keep_training(done, tmp_path / "first", tmp_path / "kept", said.append)
    assert restore_training(training_fingerprint(config), tmp_path / "kept", tmp_path / "fresh" / "baseline", said.append)
    raw = copy.deepcopy(TRAINING)
    raw["model"]["zbl"] = {"switch": "data", "factor": 0.5}
    said.clear()
    adopted = train_without_prior(parse_config(raw), config, tmp_path / "fresh" / "baseline", tmp_path / "fresh" / "zbl", said.append)
    assert adopted is not None and adopted["fingerprint"]["weights_of"] == done["model_hash"] and "  training ..." not in said
    assert not (tmp_path / "fresh" / "zbl" / "last.ckpt").exists()
    assert load_checkpoint(tmp_path / "fresh" / "zbl" / "best.ckpt")["hyperparameters"]["zbl"] is True
