"""A study's trainings kept in a folder of their own, so that the hours they cost outlive the run
folder (a scratch directory, a fresh checkout) and a study run again elsewhere trains nothing twice.

    stableff study CONFIG --out OUT --trainings DIR

``DIR/<model>/<variant>/seed_<s>/`` holds best.ckpt, done.json, metrics.csv and config.yaml of each
model the study trained. Before any work, a run folder that has no finished training of the same
inputs takes the kept one when its fingerprint (configuration, seed and the content of every data
file) and best.ckpt's hash match, the same test a training in the run folder passes before it is
reused; a kept training whose inputs differ is left alone and the log says what differs. Every
training the study finishes is copied into DIR (done.json last, so a copy cut short is never taken
for a finished one). Trainings made from another one are not kept: a data-placed prior's variant
(weights of its sibling, :mod:`stableff.study.inert_prior`) and an actively learned variant are
made again from their sources, the first in seconds.
"""

from __future__ import annotations

from pathlib import Path

from stableff.fingerprint import differences, file_hash
from stableff.io import copy_file_atomic, read_json
from stableff.layout import TrainingRun

#: what a kept training holds, done.json last
KEPT_FILES = ("best.ckpt", "metrics.csv", "config.yaml", "done.json")


def _finished(folder: Path) -> dict | None:
    """done.json of the training in ``folder`` when best.ckpt is the model it names; else None."""
    run = TrainingRun(folder)
    done = read_json(run.done)
    if done is None or not run.best_checkpoint.is_file() or file_hash(run.best_checkpoint) != done.get("model_hash"):
        return None
    return done


def _copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    TrainingRun(target).done.unlink(missing_ok=True)
    for name in KEPT_FILES:
        if (source / name).is_file():
            copy_file_atomic(source / name, target / name)


def restore_training(fingerprint: dict, kept: Path, run_dir: Path, log=print) -> bool:
    """Copy the training kept in ``kept`` into ``run_dir`` when ``run_dir`` has no finished training
    with ``fingerprint`` and ``kept`` has one. Returns whether it was copied."""
    here = _finished(run_dir)
    if here is not None and not differences(here.get("fingerprint"), fingerprint):
        return False
    stored = _finished(kept)
    if stored is None:
        return False
    changed = differences(stored.get("fingerprint"), fingerprint)
    if changed:
        log(f"  kept training {kept}: inputs changed ({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}), not taken")
        return False
    run = TrainingRun(run_dir)
    for path in [*run.outputs(), run.started]:
        path.unlink(missing_ok=True)
    _copy(kept, run_dir)
    log(f"  training taken from {kept} (same inputs)")
    return True


def keep_training(done: dict, run_dir: Path, kept: Path, log=print) -> bool:
    """Copy the finished training of ``run_dir`` (its done.json content ``done``) into ``kept``
    unless it is already there or was made from another training. Returns whether it was copied."""
    if "weights_of" in (done.get("fingerprint") or {}):
        return False
    stored = _finished(kept)
    if stored is not None and stored.get("model_hash") == done.get("model_hash"):
        return False
    _copy(run_dir, kept)
    log(f"  training kept in {kept}")
    return True
