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


def study_summary(out_dir) -> Path:
    return Path(out_dir) / "summary.json"
