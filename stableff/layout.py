"""Where everything stableff writes lives: the one list of file names of a training run, of a study's
run folder and of an MD run, used by the code that writes each file and by the code that reads it
back (the study's stages, the report, resumption).

    <training run>/      best.ckpt, last.ckpt, metrics.csv, config.yaml (the trainer)
                         started.json, done.json (the study's train stage)
    <study>/<model>/<variant>/seed_<s>/
                         the training run, accuracy.json, parity_<ID|OOD>.npz,
                         correlation.json, correlation_matrices.npz, probe.json, structure.json,
                         stability/<T>K/<start>/replica_<r>/  (an MD run)
    <MD run>/            trajectory.extxyz, thermo.csv, summary.json, state.pt while it runs
    <study>/             summary.json, report.html, report.md, plots/
"""

from __future__ import annotations

import os
from pathlib import Path

# an MD run's folder
TRAJECTORY_FILE = "trajectory.extxyz"
THERMO_FILE = "thermo.csv"
SUMMARY_FILE = "summary.json"
STATE_FILE = "state.pt"  # the batched engine's resumable state, removed when summary.json is written


class TrainingRun:
    """The files of one training run (the trainer's and the study's train stage's)."""

    def __init__(self, folder):
        self.folder = Path(folder)

    @property
    def best_checkpoint(self) -> Path:
        return self.folder / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.folder / "last.ckpt"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.folder / "config.yaml"

    @property
    def started(self) -> Path:
        return self.folder / "started.json"

    @property
    def done(self) -> Path:
        return self.folder / "done.json"

    def outputs(self) -> list[Path]:
        """What a training run writes (removed before a run whose inputs changed)."""
        return [self.best_checkpoint, self.last_checkpoint, self.metrics, self.config, self.done]


class StudyRun(TrainingRun):
    """One (model, variant, seed) of a study: its training run and every stage's result."""

    @property
    def accuracy(self) -> Path:
        return self.folder / "accuracy.json"

    def parity(self, kind: str) -> Path:
        """Predictions against labels on the test sets of ``kind`` (ID or OOD)."""
        return self.folder / f"parity_{kind}.npz"

    @property
    def correlation(self) -> Path:
        return self.folder / "correlation.json"

    @property
    def correlation_matrices(self) -> Path:
        return self.folder / "correlation_matrices.npz"

    @property
    def probe(self) -> Path:
        return self.folder / "probe.json"

    @property
    def structure(self) -> Path:
        return self.folder / "structure.json"

    def stability(self, temperature_K: float) -> Path:
        """The folder of the MD replicas at one temperature."""
        return self.folder / "stability" / f"{temperature_K:g}K"


def study_run(out_dir, model: str, variant: str, seed: int) -> StudyRun:
    return StudyRun(Path(out_dir) / model / variant / f"seed_{seed}")


def learn_folder(out_dir, model: str, variant: str) -> Path:
    """The active learning (`stableff learn`'s folder) behind a study's active variant of a model."""
    return Path(out_dir) / model / variant / "learn"


def study_summary(out_dir) -> Path:
    return Path(out_dir) / "summary.json"


# what stableff deletes: only what it wrote (``--fresh``, a replica run again)
#: the marker file of a folder stableff made as a command's output
MARKER_FILE = ".stableff"
#: names (fnmatch patterns) of the files stableff writes in its output folders
OWN_FILES = (
    "best.ckpt", "last.ckpt", "metrics.csv", "config.yaml", "started.json", "done.json",
    "accuracy.json", "parity_*.npz", "correlation.json", "correlation_matrices.npz", "probe.json", "structure.json",
    TRAJECTORY_FILE, THERMO_FILE, SUMMARY_FILE, STATE_FILE, "report.html", "report.md", "*.png", MARKER_FILE,
    "*.tmp", "*.part",  # an atomic write or copy cut short
)


#: what one MD run writes in its folder
MD_RUN_FILES = (TRAJECTORY_FILE, THERMO_FILE, SUMMARY_FILE, STATE_FILE, "*.tmp")


def is_own_file(path, patterns=OWN_FILES) -> bool:
    import fnmatch

    return any(fnmatch.fnmatch(Path(path).name, pattern) for pattern in patterns)


def mark_output_folder(folder, command: str) -> None:
    """Mark ``folder`` as made by stableff (``--fresh`` may later clear it)."""
    import json

    from stableff import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / MARKER_FILE
    if not marker.exists():
        marker.write_text(json.dumps({"made_by": "stableff", "command": command, "version": __version__}) + "\n")


def remove_own_files(folder, require_marker: bool = True, patterns=OWN_FILES) -> list[Path]:
    """Delete the files stableff wrote in ``folder`` (and the folders that are then empty); returns
    the files left because stableff did not write them. ``require_marker``: refuse (StableFFError)
    a folder without stableff's marker, i.e. one stableff did not make."""
    from stableff.errors import StableFFError

    folder = Path(folder)
    if not folder.exists():
        return []
    if not folder.is_dir():
        raise StableFFError(f"{folder} is not a folder: refusing to delete it")
    if require_marker and not (folder / MARKER_FILE).is_file():
        raise StableFFError(f"{folder} was not made by stableff (no {MARKER_FILE} marker in it): refusing to delete anything there; "
                            "choose another --out, or delete it yourself")
    kept = []
    try:
        for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.name == LOCK_FILE:  # the lock of a running command (this one, while it clears)
                continue
            if path.is_symlink() or path.is_file():
                if is_own_file(path, patterns) and not path.is_symlink():
                    path.unlink()
                else:
                    kept.append(path)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if not any(folder.iterdir()):
            folder.rmdir()
    except OSError as error:
        raise StableFFError(f"{error.filename or folder}: cannot delete it ({error.strerror or error}); "
                            f"the files of {folder} listed before it are deleted, the rest are as they were") from None
    return sorted(kept)


def check_deletable(folders) -> None:
    """Refuse (StableFFError, before anything is deleted) when one of ``folders`` cannot be cleared:
    not writable, read-only or immutable (a file is created and removed there to find out)."""
    from stableff.errors import StableFFError

    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        probe = folder / f".stableff-delete-check.{os.getpid()}"
        try:
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise StableFFError(f"{folder}: cannot clear it to run again ({error.strerror or error}); nothing was deleted") from None


#: the lock file of an output folder while a command writes into it
LOCK_FILE = ".stableff.lock"
_held_locks: list = []  # release functions of the locks this process holds (the kernel frees them when it ends)


def lock_output_dir(folder, command: str):
    """Hold ``folder``'s lock for the rest of this process: a second stableff command into the same
    folder refuses with one line naming the running one (its pid and command); a lock left by a run
    that is gone (killed, crashed) is taken over with a note. Returns the note, or None.

    The lock is an ``flock`` on ``folder/.stableff.lock``: the kernel releases it when the process
    ends, however it ends, so a stale lock can never block a folder."""
    import atexit
    import fcntl
    import os
    import time

    from stableff.errors import StableFFError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StableFFError(f"{folder} is in use by a running stableff ({holder}): wait for it to end, or choose another output folder") from None
    handle.seek(0)
    previous = handle.read().strip()
    note = None
    if previous:  # the file of a run that ended without removing it (killed): its lock is free
        note = f"{folder}: took over the lock of a run that is no longer running ({previous})"
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}, stableff {command}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
    handle.flush()

    def release() -> None:
        if handle.closed:
            return
        try:
            path.unlink()  # still ours: nobody else can hold it while we do
        except OSError:
            pass
        handle.close()  # closing the file releases the flock

    _held_locks.append(release)
    atexit.register(release)
    return note


def release_output_locks() -> None:
    """Release every output-folder lock this process holds (a command that returns, not only one
    whose process ends, frees its folders)."""
    while _held_locks:
        _held_locks.pop()()
