"""Turning the data section of a config into train / validation / test frames (deterministic split):
the trainer's split, and the same split again from the configuration a checkpoint stores (the
validation frames a committee's uncertainty is calibrated on)."""

from __future__ import annotations

import numpy as np

from stableff.data.io import Frame, read_frames
from stableff.errors import DataError


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def read_many(specs, require=("energy", "forces")) -> list[Frame]:
    frames: list[Frame] = []
    for spec in _as_list(specs):
        frames.extend(read_frames(spec, require=require))
    return frames


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A seeded random permutation cut into train / validation / test index sets."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    n_test = int(round(test_fraction * n))
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def load_splits(data_config) -> dict[str, list[Frame]]:
    """Frames for "train", "validation" and "test" following the data config (the trainer's
    configuration object, or the ``data`` mapping a checkpoint stores)."""
    if isinstance(data_config, dict):
        import types

        data_config = types.SimpleNamespace(**data_config)
    require = ("energy", "forces", "stress") if data_config.train_stress else ("energy", "forces")
    pool = read_many(data_config.train, require)
    val_fraction = 0.0 if data_config.validation else data_config.val_fraction
    test_fraction = 0.0 if data_config.test else data_config.test_fraction
    train_idx, val_idx, test_idx = split_indices(len(pool), val_fraction, test_fraction, data_config.split_seed)
    splits = {
        "train": [pool[i] for i in train_idx],
        "validation": read_many(data_config.validation, require) if data_config.validation else [pool[i] for i in val_idx],
        "test": read_many(data_config.test, require) if data_config.test else [pool[i] for i in test_idx],
    }
    if data_config.max_train_frames is not None:
        splits["train"] = splits["train"][: data_config.max_train_frames]
    if not splits["train"]:
        raise DataError(_as_list(data_config.train)[0], "no frames left for training after the validation/test split")
    if not splits["validation"]:
        raise DataError(_as_list(data_config.train)[0], "no validation frames: set data.validation or data.val_fraction > 0")
    return splits


def data_hashes(data_config) -> dict[str, str]:
    """Content hash of every data file the data config names (training, validation, test, E0)."""
    from stableff.data.io import content_hashes

    hashes = {}
    for specs in (data_config.train, data_config.validation, data_config.test, data_config.isolated_atoms):
        hashes.update(content_hashes(specs))
    return hashes
