"""What every MD engine writes for one run, and how: the per-replica files and the summary.

A run's folder holds
  trajectory.extxyz  frames every ``traj_interval`` steps (each frame written whole or not at all);
  thermo.csv         time_ps, temperature_K, epot_eV, ekin_eV, etot_eV, max_force_eV_per_A, min_distance_A
                     (and force_disagreement_eV_per_A where a committee watches the run);
  summary.json       failed, time_to_failure_ps, reason, detail, steps, ms_per_step, ... (atomic).

:class:`FrameRecorder` turns one checked frame (the atoms with their momenta, the energy and forces
of the engine's last model call) into a thermo row, a trajectory frame where due, the progress
bar's text and the failure check; every engine calls it the same way.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import numpy as np

from stableff.data.neighbors import neighbor_list
from stableff.io import write_json_atomic
from stableff.layout import SUMMARY_FILE, THERMO_FILE, TRAJECTORY_FILE
from stableff.md.monitors import FailureMonitor, FrameState
from stableff.md.settings import MDSettings

#: thermo.csv's columns (eV, A, K, ps)
THERMO_COLUMNS = ("time_ps", "temperature_K", "epot_eV", "ekin_eV", "etot_eV", "max_force_eV_per_A", "min_distance_A")

#: thermo.csv's column of a committee's force disagreement (eV/A), where one watches the run
DISAGREEMENT_COLUMN = "force_disagreement_eV_per_A"

#: pairs closer than this are looked for in every checked frame (thermo.csv's min_distance_A)
MIN_DISTANCE_CUTOFF_A = 3.0


_write = os.write  # (tests replace it to simulate a full disk)


class RecordFile:
    """A run file that grows by whole records (a thermo row, a trajectory frame): each ``write``
    reaches the file in one piece or not at all. Where the system refuses part of it (a full disk,
    a quota), the file is cut back to where the record began, so that it keeps only whole records
    and stays readable, and StableFFError names the file. Unbuffered: what ``write`` returned from
    is in the file. ``tell`` is the byte length written (what a resumed run cuts back to)."""

    def __init__(self, path: Path, offset: int | None = None):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if offset is None else 0)
        self.fd = os.open(self.path, flags, 0o644)
        self.offset = offset or 0
        if offset is not None:
            os.ftruncate(self.fd, offset)
        os.lseek(self.fd, self.offset, os.SEEK_SET)

    def write(self, text: str) -> int:
        from stableff.errors import StableFFError

        data = memoryview(text.encode())
        start = self.offset
        try:
            while data:
                written = _write(self.fd, data)
                data = data[written:]
                self.offset += written
        except OSError as exc:
            try:
                os.ftruncate(self.fd, start)
                os.lseek(self.fd, start, os.SEEK_SET)
                self.offset = start
            except OSError:
                pass
            raise StableFFError(f"{self.path}: cannot write ({exc.strerror or exc}); the file keeps the {start} bytes of whole records written before") from None
        return len(text)

    def flush(self) -> None:
        """Nothing to do: every write is already in the file."""

    def tell(self) -> int:
        return self.offset

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def thermo_columns(committee=None) -> tuple[str, ...]:
    """thermo.csv's columns of a run (with the committee's disagreement where one watches it)."""
    return THERMO_COLUMNS + ((DISAGREEMENT_COLUMN,) if committee is not None else ())


def open_run_files(out_dir: Path, committee=None):
    """thermo.csv (with its header) and trajectory.extxyz of a run, opened for writing."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    thermo = RecordFile(out_dir / THERMO_FILE)
    thermo.write(",".join(thermo_columns(committee)) + "\n")
    return thermo, RecordFile(out_dir / TRAJECTORY_FILE)


def reopen_run_files(out_dir: Path, thermo_bytes: int, trajectory_bytes: int):
    """A resumed run's thermo.csv and trajectory.extxyz, cut back to the lengths its saved state
    had written, opened for appending at that point."""
    return tuple(RecordFile(Path(out_dir) / name, offset) for name, offset in ((THERMO_FILE, thermo_bytes), (TRAJECTORY_FILE, trajectory_bytes)))


def constrained_forces(atoms, forces: np.ndarray) -> np.ndarray:
    """The forces as ``atoms.get_forces()`` reports them (adjusted by the atoms' constraints, as the
    ASE engine's FixCom for Langevin): what every engine records."""
    for constraint in atoms.constraints:
        constraint.adjust_forces(atoms, forces)
    return forces


def frame_text(atoms, energy: float, forces, step: int | None = None, time_ps: float | None = None) -> str:
    """One extxyz frame: the atoms (without constraints) with their energy and forces, and (in its
    header) the MD step and time it was taken at."""
    from ase.calculators.singlepoint import SinglePointCalculator
    import ase.io

    snapshot = atoms.copy()
    snapshot.set_constraint()
    if step is not None:
        snapshot.info["step"] = int(step)
    if time_ps is not None:
        snapshot.info["time_ps"] = float(f"{time_ps:.6f}")
    snapshot.calc = SinglePointCalculator(snapshot, energy=energy, forces=forces)
    buffer = io.StringIO()
    ase.io.write(buffer, snapshot, format="extxyz")
    return buffer.getvalue()


class FrameRecorder:
    """Records the checked frames of one run: a thermo row for each, a trajectory frame every
    ``traj_interval`` steps, and the failure check, all from one neighbour list of the frame.

    ``record(step, atoms, energy, forces, disagreement)``: ``atoms`` carries the positions and
    momenta of the frame (and the constraints that set its degrees of freedom); ``energy`` (eV) and
    ``forces`` (eV/A) are the engine's for those positions; ``disagreement`` (eV/A) the committee's
    on the frame where a ``committee`` (:class:`stableff.md.committee.Committee`) watches the run:
    the first frame above its threshold marks the run uncertain (it goes on)."""

    def __init__(self, settings: MDSettings, monitor: FailureMonitor | None, thermo, trajectory, bar=None, committee=None):
        self.settings, self.monitor, self.committee = settings, monitor, committee
        self.uncertain_step, self.max_disagreement = None, None
        self.thermo, self.trajectory, self.bar = thermo, trajectory, bar
        self.traj_every = settings.traj_interval // settings.log_interval  # a multiple (MDSettings.validate)
        self.cutoff = max(MIN_DISTANCE_CUTOFF_A, monitor.neighbor_cutoff if monitor is not None else 0.0)
        self.records = 0
        self.last_step = -1
        self.failure, self.failure_step = None, None
        self.t_start = time.perf_counter()

    @property
    def stop(self) -> bool:
        return self.failure is not None and not self.settings.keep_going

    def resume(self, state: dict) -> None:
        """Continue from a saved state (records written, last step, failure found so far)."""
        self.records, self.last_step = state["records"], state["step"]
        self.failure, self.failure_step = state["failure"], state["failure_step"]
        self.uncertain_step, self.max_disagreement = state.get("uncertain_step"), state.get("max_disagreement")

    def state(self) -> dict:
        """What :meth:`resume` continues from (saved with an interrupted run's state)."""
        return {"records": self.records, "step": self.last_step, "failure": self.failure, "failure_step": self.failure_step,
                "uncertain_step": self.uncertain_step, "max_disagreement": self.max_disagreement}

    def record(self, step: int, atoms, energy: float, forces: np.ndarray, disagreement: float | None = None) -> None:
        if step == self.last_step:
            return
        with np.errstate(all="ignore"):
            epot = float(energy)
            ekin = float(atoms.get_kinetic_energy())
            temperature = float(atoms.get_temperature())
        finite = bool(np.all(np.isfinite(atoms.positions)))
        pairs = None
        if finite and len(atoms) > 1:
            pairs = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, self.cutoff, with_distances=True)
        distances = pairs[3] if pairs is not None else np.empty(0)
        dmin = float(distances.min()) if len(distances) else float("nan")
        time_fs = step * self.settings.timestep_fs
        fmax = float(np.max(np.linalg.norm(forces, axis=1))) if np.all(np.isfinite(forces)) else float("nan")
        extra = ""
        if self.committee is not None:
            disagreement = float("nan") if disagreement is None else float(disagreement)
            extra = f",{disagreement:.5f}"
            if np.isfinite(disagreement):
                self.max_disagreement = max(self.max_disagreement or 0.0, float(disagreement))
                if self.uncertain_step is None and disagreement > self.committee.threshold_eV_per_A:
                    self.uncertain_step = step
        self.thermo.write(f"{time_fs / 1000:.6f},{temperature:.3f},{epot:.6f},{ekin:.6f},{epot + ekin:.6f},{fmax:.4f},{dmin:.4f}{extra}\n")
        self.thermo.flush()
        if self.records % self.traj_every == 0 and finite:
            self.trajectory.write(frame_text(atoms, epot, forces, step, time_fs / 1000))
            self.trajectory.flush()
        self.records += 1
        self.last_step = step
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            elapsed = time.perf_counter() - self.t_start
            self.bar.set_postfix_str(f"t {time_fs / 1000:.3f} ps  T {temperature:.0f} K  {elapsed / max(step, 1) * 1000:.1f} ms/step", refresh=False)
        if self.monitor is not None and self.failure is None:
            neighbors = (pairs[0], pairs[1], pairs[3]) if pairs is not None else None
            state = FrameState(time_fs, atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, forces, epot, ekin, temperature, neighbors)
            found = self.monitor.check(state)
            if found is not None:
                self.failure, self.failure_step = found, step


def md_summary(settings: MDSettings, n_atoms: int, recorder: FrameRecorder, steps: int, elapsed_s: float, label: str = "", metadata: dict | None = None) -> dict:
    """The summary.json of one run (any engine): outcome, time to failure, cost, and ``metadata``."""
    failure = recorder.failure
    return {
        "label": label,
        "ensemble": settings.ensemble,
        "temperature_K": settings.temperature_K,
        "timestep_fs": settings.timestep_fs,
        "seed": settings.seed,
        "n_atoms": n_atoms,
        "run_length_ps": settings.length_ps,
        "failed": failure is not None,
        "time_to_failure_ps": recorder.failure_step * settings.timestep_fs / 1000.0 if failure is not None else settings.length_ps,
        "failure_step": recorder.failure_step,
        "reason": failure.reason if failure is not None else None,
        "detail": failure.detail if failure is not None else None,
        "steps": steps,
        "ms_per_step": 1000 * elapsed_s / max(steps, 1),
        **(uncertainty_summary(settings, recorder) if recorder.committee is not None else {}),
        **(metadata or {}),
    }


def uncertainty_summary(settings: MDSettings, recorder: FrameRecorder) -> dict:
    """summary.json's committee entries: the first uncertain frame (time, step) and the largest
    disagreement of the run (eV/A), with the committee and its threshold."""
    step = recorder.uncertain_step
    return {
        "committee": recorder.committee.summary(),
        "uncertain": step is not None,
        "uncertain_step": step,
        "uncertain_time_ps": step * settings.timestep_fs / 1000.0 if step is not None else None,
        "max_force_disagreement_eV_per_A": recorder.max_disagreement,
    }


def write_summary(summary: dict, out_dir) -> None:
    """summary.json of a finished run (atomically: a reader never sees half of it)."""
    write_json_atomic(summary, Path(out_dir) / SUMMARY_FILE)
