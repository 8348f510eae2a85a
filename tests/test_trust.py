"""Results you can trust: stored results reused only for the same inputs, every named input used or
refused, and user errors ending in one clear line (no traceback, non-zero exit)."""

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from stableff.cli import main

from conftest import ACAC
from stableff.md.supervision import errors_travel_whole


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "stableff", *map(str, args)], capture_output=True, text=True)


def one_line_error(capsys, argv, *fragments):
    """main(argv) exits 1 with one message on stderr containing every fragment, no traceback (or,
    for a bad option value, exits 2 as argparse does: its usage and one error line)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code - 1 if exit.code == 2 else exit.code
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.count("error:") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


STABILITY = ["--replicas", "2", "--workers", "1", "--steps", "20", "--log-interval", "10"]


# ---------------------------------------------------------------- stale results


def test_stability_refuses_replicas_made_from_other_inputs_and_fresh_reruns(trained_model, tmp_path, capsys):
    out = tmp_path / "stab"
    assert main(["stability", str(trained_model), "acac:test_MD_300K", "--out", str(out), "--temperature", "300", *STABILITY]) == 0
    first = json.loads((out / "test_MD_300K_0" / "replica_000" / "summary.json").read_text())
    assert first["fingerprint"]["md"]["temperature_K"] == 300
    # another temperature into the same folder: refused, naming what differs
    one_line_error(capsys, ["stability", trained_model, "acac:test_MD_300K", "--out", out, "--temperature", "600", *STABILITY],
                   str(out / "test_MD_300K_0"), "md.temperature_K: 300.0 -> 600.0", "--fresh")
    # another threshold
    one_line_error(capsys, ["stability", trained_model, "acac:test_MD_300K", "--out", out, "--temperature", "300", "--force-factor", "4", *STABILITY],
                   "monitor.force_factor: 3.0 -> 4.0")
    # another model (same architecture, other weights)
    other = tmp_path / "other.ckpt"
    checkpoint = torch.load(trained_model, weights_only=False)
    checkpoint["model_state"] = {k: (v * 1.01 if v.is_floating_point() else v) for k, v in checkpoint["model_state"].items()}
    torch.save(checkpoint, other)
    one_line_error(capsys, ["stability", other, "acac:test_MD_300K", "--out", out, "--temperature", "300", *STABILITY], "model: sha256:")
    # another start structure under the same label (frame 1 of the same file is another label; the same file edited is not)
    moved = tmp_path / "test_MD_300K.xyz"
    import ase.io

    atoms = ase.io.read("stableff/datasets/acac/test_MD_300K.xyz", 0)
    atoms.positions[0, 0] += 0.05
    ase.io.write(moved, atoms, format="extxyz")
    one_line_error(capsys, ["stability", trained_model, moved, "--out", out, "--temperature", "300", *STABILITY], "start: sha256:")
    # --fresh runs them again with the new settings; the same inputs again are reused
    assert main(["stability", str(trained_model), "acac:test_MD_300K", "--out", str(out), "--temperature", "600", "--fresh", "--json", str(tmp_path / "r.json"), *STABILITY]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert all(r["temperature_K"] == 600 for r in report["replicas"])
    capsys.readouterr()
    assert main(["stability", str(trained_model), "acac:test_MD_300K", "--out", str(out), "--temperature", "600", *STABILITY]) == 0
    assert "2 of 2 replicas already finished with the same inputs" in capsys.readouterr().out
    # --fresh where one replica folder cannot be cleared (read-only, immutable): one line, nothing deleted
    import pathlib

    real_touch = pathlib.Path.touch

    def touch(path, *args, **kwargs):
        if path.parent.name == "replica_001":
            raise PermissionError(1, "Operation not permitted", str(path))
        return real_touch(path, *args, **kwargs)

    kept = sorted((out / "test_MD_300K_0").rglob("*"))
    pathlib.Path.touch = touch
    try:
        one_line_error(capsys, ["stability", trained_model, "acac:test_MD_300K", "--out", out, "--temperature", "300", "--fresh", *STABILITY],
                       f"{out / 'test_MD_300K_0' / 'replica_001'}: cannot clear it to run again (Operation not permitted); nothing was deleted")
    finally:
        pathlib.Path.touch = real_touch
    assert sorted((out / "test_MD_300K_0").rglob("*")) == kept


def test_two_start_files_with_the_same_name_are_kept_apart(trained_model, tmp_path):
    import ase.io

    for folder, frame in (("a", 0), ("b", 3)):
        (tmp_path / folder).mkdir()
        ase.io.write(tmp_path / folder / "start.xyz", ase.io.read("stableff/datasets/acac/test_MD_300K.xyz", frame), format="extxyz")
    code = main(["stability", str(trained_model), str(tmp_path / "a" / "start.xyz"), str(tmp_path / "b" / "start.xyz"),
                 "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"), *STABILITY])
    assert code == 0
    starts = {r["start"] for r in json.loads((tmp_path / "r.json").read_text())["replicas"]}
    assert starts == {"a_start_0", "b_start_0"}
    for label in starts:  # each trajectory readable and from its own start
        frames = ase.io.read(tmp_path / "out" / label / "replica_000" / "trajectory.extxyz", ":")
        assert len(frames) >= 2


def test_resume_refuses_other_data_or_model_settings(tmp_path, capsys):
    import yaml

    config = {
        "data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 8},
        "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
        "training": {"epochs": 1, "batch_size": 4, "num_threads": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", str(path), "--out", str(tmp_path / "run")]) == 0
    one_line_error(capsys, ["train", path, "--out", tmp_path / "run", "--resume", "data.train=acac:test_MD_300K"],
                   "cannot resume with other data or model settings", "data.train: acac:train_300K -> acac:test_MD_300K")
    one_line_error(capsys, ["train", path, "--out", tmp_path / "run", "--resume", "model.num_features=8"], "model.num_features: 4 -> 8")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--resume", "training.epochs=2"]) == 0  # a longer budget is fine


# ---------------------------------------------------------------- reference RDFs


def test_reference_rdf_csv_columns_matched_in_any_common_form(tmp_path, capsys):
    from stableff.analysis.structure import compare_rdf, rdf, read_rdf_csv
    from ase.spacegroup import crystal

    atoms = crystal(["Hf", "O"], basis=[(0, 0, 0), (0.25, 0.25, 0.25)], spacegroup=225, cellpar=[5.1] * 3 + [90] * 3)
    result = rdf([atoms], 5.0, 50)
    header = "r  /  Angstrom,Hf Hf,Hf-O,O O"  # a third-party header; Hf-O is stableff's O-Hf
    rows = [",".join([f"{r:.4f}"] + [f"{result['g'][p][k]:.6f}" for p in ("Hf-Hf", "O-Hf", "O-O")]) for k, r in enumerate(result["r_A"])]
    (tmp_path / "ref.csv").write_text("\n".join([header] + rows) + "\n")
    reference = read_rdf_csv(tmp_path / "ref.csv")
    assert sorted(reference["g"]) == ["Hf-Hf", "O-Hf", "O-O"]
    comparison = compare_rdf(result, reference)
    assert sorted(comparison) == ["Hf-Hf", "O-Hf", "O-O"] and all(v["wright_factor"] < 1e-6 for v in comparison.values())
    # columns that are not pairs, or pairs the structure does not have: an error listing both
    (tmp_path / "bad.csv").write_text("r_A,g_total\n0.1,0\n0.2,0\n")
    ase_file = tmp_path / "crystal.xyz"
    import ase.io

    ase.io.write(ase_file, atoms, format="extxyz")
    one_line_error(capsys, ["rdf", ase_file, "--reference", tmp_path / "bad.csv"], "columns ['g_total'] are not species pairs")
    (tmp_path / "cu.csv").write_text("r_A,Cu-Cu\n0.1,0\n0.2,0\n")
    one_line_error(capsys, ["rdf", ase_file, "--reference", tmp_path / "cu.csv"], "reference RDF pairs ['Cu-Cu'] do not match", "O-Hf")


def test_md_reference_rdf_that_does_not_match_is_refused_before_md(trained_model, tmp_path, capsys):
    (tmp_path / "cu.csv").write_text("r_A,Cu-Cu\n0.1,0\n0.2,0\n")
    one_line_error(capsys, ["md", trained_model, "acac:test_MD_300K", "--out", tmp_path / "md", "--steps", "10", "--reference-rdf", tmp_path / "cu.csv"],
                   "do not match the structure's pairs")
    one_line_error(capsys, ["md", trained_model, "acac:test_MD_300K", "--out", tmp_path / "md", "--steps", "10", "--reference-rdf", tmp_path / "none.xyz"],
                   "none.xyz", "no such file")
    assert not (tmp_path / "md" / "thermo.csv").exists()


# ---------------------------------------------------------------- outputs checked before work


def test_outputs_checked_before_any_work(trained_model, tmp_path, capsys):
    start = tmp_path / "start.xyz"
    shutil.copy("stableff/datasets/acac/test_MD_300K.xyz", start)
    before = start.read_bytes()
    one_line_error(capsys, ["stability", trained_model, start, "--out", tmp_path / "s", "--json", start, *STABILITY], "is also an input file")
    assert start.read_bytes() == before
    (tmp_path / "afile").write_text("x")
    t0 = time.perf_counter()
    one_line_error(capsys, ["stability", trained_model, start, "--out", tmp_path / "afile", *STABILITY], "is an existing file, not a folder")
    one_line_error(capsys, ["stability", trained_model, start, "--out", tmp_path / "s", "--json", tmp_path / "afile" / "r.json", *STABILITY], "afile is a file")
    one_line_error(capsys, ["evaluate", trained_model, "acac:test_MD_300K", "--json", tmp_path], "is an existing directory")
    assert time.perf_counter() - t0 < 30 and not (tmp_path / "s").exists()  # refused before any MD


# ---------------------------------------------------------------- one clear line instead of a traceback


@pytest.mark.parametrize("argv, fragments", [
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--timestep", "0"], ["--timestep-fs must be positive"]),
    (["stability", "{model}", "acac:test_MD_300K", "--out", "{tmp}/s", "--replicas", "0"], ["--replicas must be at least 1"]),
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--index", "9999"], ["there is no frame 9999", "650 frame(s)"]),
    (["md", "{model}", "acac:isolated_atoms", "--out", "{tmp}/md"], ["MD needs at least 2 atoms"]),
    (["train", "{config}", "--out", "{tmp}/t", "training.epochs=["], ["override 'training.epochs=['", "not valid YAML"]),
    (["train", "{config}", "--out", "{tmp}/t", "=5"], ["override '=5'", "is not a key"]),
    (["train", "{config}", "--out", "{tmp}/t", "decorrelation.layers=[4]"], ["decorrelation.layers [4] out of range for a model with 3"]),
    (["rdf", "acac:test_MD_300K", "--reference", "{tmp}/missing.csv"], ["missing.csv", "no such file"]),
    # bad numbers are refused before any work, not run into a model "failure"
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--friction", "-1"], ["friction_per_fs must be positive"]),
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--ensemble", "bussi", "--damping-fs", "-5"], ["damping_fs must be positive"]),
    (["stability", "{model}", "acac:test_MD_300K", "--out", "{tmp}/s", "--workers", "0"], ["--workers must be at least 1"]),
    (["stability", "{model}", "acac:test_MD_300K", "--out", "{tmp}/s", "--close-contact-factor", "-0.5"], ["close_contact_factor must be positive"]),
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--energy-drift-meV-per-atom", "0"], ["energy_drift_meV_per_atom must be positive"]),
    (["probe", "{model}", "--eos", "acac:test_MD_300K"], ["test_MD_300K", "needs a cell periodic in all three directions"]),
    # a device this torch cannot use, or no device at all, is refused before any work
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--device", "gpu0"], ["argument --device: 'gpu0' is not a device"]),
    (["evaluate", "{model}", "acac:test_MD_300K", "--device", "cuda:7"], ["argument --device: 'cuda:7' is not available here"]),
    (["train", "{config}", "--out", "{tmp}/t", "training.device=cuda:7"], ["training.device: 'cuda:7' is not available here"]),
    # frames are written where the checks are: a spacing that is not a multiple is refused, not rounded
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/md", "--traj-interval", "1"], ["must be a multiple of log_interval (--log-interval, 10 steps)"]),
    # the same start twice (a path and the embedded name of one file) would count as two starts
    (["stability", "{model}", "acac:test_MD_300K", "{acac}/test_MD_300K.xyz", "--out", "{tmp}/s"], ["is the same start structure as acac:test_MD_300K"]),
    # output paths through a symbolic-link loop or a link to nothing
    (["md", "{model}", "acac:test_MD_300K", "--out", "{tmp}/loop/md"], ["the --out folder is (or lies under) a symbolic link loop"]),
    (["stability", "{model}", "acac:test_MD_300K", "--out", "{tmp}/s", "--json", "{tmp}/loop/s.json"], ["the --json file is (or lies under) a symbolic link loop"]),
    (["export", "{model}", "--out", "{tmp}/dangling/m.pt"], ["symbolic link to a missing target"]),
])
def test_user_errors_end_in_one_line(argv, fragments, trained_model, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {train: acac:train_300K, max_train_frames: 8}\ntraining: {epochs: 1}\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    argv = [a.format(model=trained_model, tmp=tmp_path, config=config, acac=ACAC) for a in argv]
    one_line_error(capsys, argv, *fragments)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name not in ("c.yaml", ".stableff.lock", ".stableff")]
    assert not written, written  # refused before any work


def test_a_short_extxyz_frame_is_named_by_its_index(tmp_path):
    """A count line that promises more atoms than the frame has: the message names the frame."""
    from stableff.data.io import read_frames
    from stableff.errors import DataError

    frame = "{n}\nProperties=species:S:1:pos:R:3 pbc=\"F F F\"\nH 0 0 0\nH 0 0 0.74\n"
    (tmp_path / "short.xyz").write_text(frame.format(n=2) * 2 + frame.format(n=5))
    with pytest.raises(DataError, match=r"short.xyz, frame 2: cannot read this file .*expected 5"):
        read_frames(tmp_path / "short.xyz")


def test_text_where_a_number_belongs_and_one_atom_training_data(tmp_path, capsys):
    (tmp_path / "bad.xyz").write_text("2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=abc pbc=\"F F F\"\nH 0 0 0 0 0 0\nH 0 0 0.74 0 0 0\n")
    one_line_error(capsys, ["evaluate", "missing.ckpt", tmp_path / "bad.xyz"], "no such checkpoint")
    from stableff.data.io import read_frames
    from stableff.errors import DataError

    with pytest.raises(DataError, match="frame 0: a label is not a number"):
        read_frames(tmp_path / "bad.xyz")
    (tmp_path / "atoms.xyz").write_text("1\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc=\"F F F\"\nH 0 0 0 0 0 0\n" * 4)
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{train: {tmp_path / 'atoms.xyz'}, val_fraction: 0.25}}\ntraining: {{epochs: 1}}\n")
    one_line_error(capsys, ["train", config, "--out", tmp_path / "t"], "no atom of any frame has a neighbour within the cutoff")


def test_killed_stability_leaves_no_worker_running(trained_model, tmp_path):
    import os
    import signal

    args = [sys.executable, "-m", "stableff", "stability", str(trained_model), "acac:test_MD_300K", "--replicas", "4", "--workers", "2", "--engine", "ase",
            "--time", "5", "--out", str(tmp_path / "s")]
    parent = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def children():
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    with open(f"/proc/{pid}/stat") as handle:
                        if int(handle.read().rsplit(")", 1)[1].split()[1]) == parent.pid:
                            found.append(int(pid))
                except (OSError, IndexError, ValueError):
                    pass
        return found

    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "s").rglob("thermo.csv"))) < 2:
        time.sleep(0.2)
    workers = children()
    assert len(workers) >= 2, "the workers never started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z" for pid in workers):
        time.sleep(0.2)
    alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"]
    assert not alive, f"workers {alive} still running after their parent was killed"


def test_calculator_equals_the_evaluation_path_in_float64(tmp_path, acac_frames):
    from stableff import StableFFCalculator
    from stableff.measures.accuracy import predict
    from stableff.data.graph import frame_to_graph
    from stableff.models.saved import FORMAT

    from test_physics import make_model

    model = make_model("nequip")
    checkpoint = {"format": FORMAT, "model_name": "nequip", "hyperparameters": model.hyperparameters, "type_numbers": model.type_numbers,
                  "dtype": "float64", "statistics": {"type_numbers": [1, 6, 8], "reference_energies": [0, 0, 0], "energy_per_atom_residual_mean": 0,
                  "energy_per_atom_residual_std": 0, "force_rms": 1, "mean_num_neighbors": 4, "max_abs_force": 1, "min_pair_distance": {},
                  "max_nearest_neighbor_distance": {}, "cutoff": 3.5, "n_frames": 1}, "model_state": model.state_dict()}
    torch.save(checkpoint, tmp_path / "m.ckpt")
    calculator = StableFFCalculator(tmp_path / "m.ckpt")
    frames = acac_frames[:3]
    prediction = predict(model, [frame_to_graph(f, model.type_numbers, model.r_max, torch.float64) for f in frames], batch_size=2)
    offset = 0
    for k, frame in enumerate(frames):
        atoms = frame.to_atoms()
        atoms.calc = calculator
        assert atoms.get_potential_energy() == pytest.approx(prediction["energy_pred"][k], abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), prediction["forces_pred"][offset : offset + len(frame)], atol=1e-6)
        offset += len(frame)


def test_fresh_deletes_only_what_stableff_made(tmp_path, capsys):
    """--fresh never deletes a folder stableff did not make (``demo --out . --fresh`` in a project
    folder), and inside one of its own deletes only the files it wrote; a replica run again keeps a
    file the user put beside its outputs."""
    from stableff.layout import MARKER_FILE, mark_output_folder, remove_own_files

    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "src" / "notes.txt").write_text("mine")
    (project / "summary.json").write_text("{}")
    one_line_error(capsys, ["demo", "--out", project, "--fresh"], "was not made by stableff", "refusing to delete")
    assert (project / "src" / "notes.txt").read_text() == "mine" and (project / "summary.json").exists()
    ours = tmp_path / "ours"
    mark_output_folder(ours, "demo")
    run = ours / "nequip" / "baseline" / "seed_0"
    run.mkdir(parents=True)
    for name in ("best.ckpt", "metrics.csv", "accuracy.json", "parity_ID.npz"):
        (run / name).write_text("x")
    (run / "my_analysis.py").write_text("print(1)")
    kept = remove_own_files(ours)
    assert kept == [run / "my_analysis.py"] and not (run / "best.ckpt").exists() and not (ours / MARKER_FILE).exists()


def test_a_replica_run_again_keeps_the_users_files(tmp_path):
    from stableff.layout import MD_RUN_FILES, remove_own_files

    replica = tmp_path / "start_0" / "replica_000"
    replica.mkdir(parents=True)
    for name in ("trajectory.extxyz", "thermo.csv", "summary.json", "state.pt"):
        (replica / name).write_text("old")
    (replica / "plot.png").write_text("user's")
    assert remove_own_files(replica, require_marker=False, patterns=MD_RUN_FILES) == [replica / "plot.png"]
    assert sorted(p.name for p in replica.iterdir()) == ["plot.png"]


def test_empty_seeds_or_variants_and_a_list_config_are_configuration_errors(tmp_path):
    from stableff.errors import ConfigError
    from stableff.study import load_study_config
    from stableff.train.config import load_config

    study = tmp_path / "study.yaml"
    for key, text in (("seeds", "seeds: []"), ("variants", "variants: []")):
        study.write_text(f"training: {{data: {{train: acac:train_300K}}}}\n{text}\n")
        with pytest.raises(ConfigError, match=rf"{key}: Value error, list at least one"):
            load_study_config(study)
    study.write_text("training: {data: {train: acac:train_300K}}\nseeds: [0, 0]\n")
    with pytest.raises(ConfigError, match="seeds: Value error, a seed is listed twice"):
        load_study_config(study)
    listed = tmp_path / "list.yaml"
    listed.write_text("- data: {train: acac:train_300K}\n")
    for overrides in ([], ["training.epochs=1"]):
        with pytest.raises(ConfigError, match="list.yaml: a configuration is a mapping of keys to values"):
            load_config(listed, overrides)


def test_a_second_run_into_a_busy_folder_refuses_and_a_dead_runs_lock_is_taken_over(trained_model, tmp_path):
    """Two stability runs into one --out: the second refuses with one line naming the first's pid;
    once the first is killed, its leftover lock is taken over with a note."""
    out = tmp_path / "busy"
    lock = out / ".stableff.lock"

    def command(*extra):
        return [sys.executable, "-m", "stableff", "stability", str(trained_model), "acac:test_MD_300K", "--replicas", "2",
                "--temperature", "300", "--workers", "1", "--out", str(out), *extra]

    first = subprocess.Popen(command("--time", "5"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (lock.exists() and "pid" in lock.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(command("--time", "0.3"), capture_output=True, text=True)
        assert second.returncode == 1 and f"is in use by a running stableff (pid {first.pid}, stableff stability" in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()
    assert lock.exists()  # a killed run cannot clean up; its lock is free all the same
    third = subprocess.run(command("--time", "0.01", "--fresh"), capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-2000:]
    assert f"took over the lock of a run that is no longer running (pid {first.pid}" in third.stdout
    assert not lock.exists()  # released at the end of the run


def test_a_full_disk_ends_md_in_one_line_and_leaves_only_whole_frames(trained_model, tmp_path, capsys, monkeypatch):
    """The disk fills in the middle of the third trajectory frame: md stops with one line naming the
    file, and the trajectory keeps its first two frames, readable; thermo.csv keeps whole rows."""
    import errno
    import os

    import ase.io

    from stableff.md import records

    real = records._write
    frames_written = {"n": 0}

    def filling_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("trajectory.extxyz"):
            frames_written["n"] += 1
            if frames_written["n"] == 3:
                real(fd, data[: len(data) // 2])  # half a frame reaches the disk, then it is full
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(records, "_write", filling_disk)
    out = tmp_path / "md"
    one_line_error(capsys, ["md", trained_model, "acac:test_MD_300K", "--ensemble", "nve", "--temperature", "300", "--steps", "60",
                            "--log-interval", "10", "--traj-interval", "10", "--out", out],
                   f"{out / 'trajectory.extxyz'}: cannot write (No space left on device)")
    frames = ase.io.read(out / "trajectory.extxyz", ":")
    assert len(frames) == 2 and all(len(f) == 15 for f in frames)
    assert [(f.info["step"], f.info["time_ps"]) for f in frames] == [(0, 0.0), (10, 0.005)]  # each frame says when it is
    rows = (out / "thermo.csv").read_text().splitlines()
    assert len(rows) >= 3 and all(len(row.split(",")) == 7 for row in rows)


def test_an_element_the_model_does_not_know_names_the_file_before_any_work(trained_model, tmp_path, capsys):
    """md, stability and probe --eos on a copper cell with an H/C/O model: one line naming the file
    and frame (not '<structure>'), and no run files written; a DataError raised in a worker process
    comes back whole (unpicklable, it once left the parent waiting for ever)."""
    import pickle

    import ase.io
    from ase.build import bulk

    from stableff.errors import DataError

    copper = tmp_path / "cu.xyz"
    ase.io.write(copper, bulk("Cu", cubic=True).repeat(2), format="extxyz")
    expected = f"{copper}, frame 0: element Cu is not known to this model (it was trained on H, C, O)"
    one_line_error(capsys, ["md", trained_model, copper, "--steps", "10", "--out", tmp_path / "md"], expected)
    assert not (tmp_path / "md" / "trajectory.extxyz").exists() and not (tmp_path / "md" / "thermo.csv").exists()
    one_line_error(capsys, ["stability", trained_model, copper, "--replicas", "2", "--time", "0.005", "--out", tmp_path / "stab"], expected)
    one_line_error(capsys, ["probe", trained_model, "--eos", copper], expected)
    error = pickle.loads(pickle.dumps(DataError("a.xyz", "a problem", 3)))
    assert str(error) == "a.xyz, frame 3: a problem" and error.frame == 3


class _UnpicklableError(Exception):
    def __init__(self, code, text):
        super().__init__(f"{code}: {text}")


@errors_travel_whole
def _raises_unpicklable(_):
    raise _UnpicklableError(7, "a library failed")


def test_a_worker_error_that_cannot_be_pickled_reaches_the_parent():
    from stableff.md.supervision import worker_pool

    with pytest.raises(RuntimeError, match="_UnpicklableError in a worker process: 7: a library failed"):
        with worker_pool(1) as pool:
            pool.map(_raises_unpicklable, [0])


def test_a_stability_index_of_one_with_failures_says_so():
    """Runs that fail at their last checked frame have t_fail = T, so SI = 1.000: printed with the
    failures beside it, not as a perfect score."""
    from stableff.analysis.stability import index_text, summarise_replicas

    late = [{"run_length_ps": 1.0, "time_to_failure_ps": 1.0, "failed": True, "reason": "close_contact"}] * 2
    assert index_text(summarise_replicas(late)) == "1.000 (yet 2 failed, at the end of the run: t_fail ~ run length)"
    fine = [{"run_length_ps": 1.0, "time_to_failure_ps": 1.0, "failed": False, "reason": None}] * 2
    assert index_text(summarise_replicas(fine)) == "1.000"
    assert index_text(summarise_replicas(late[:1] + [dict(late[0], time_to_failure_ps=0.5)])) == "0.750"


def test_ms_per_step_leaves_out_the_first_model_call(tmp_path):
    """The first model call (where --compile compiles) is timed apart: a calculator whose first
    call takes 1.5 s does not show in ms/step."""
    from ase.calculators.emt import EMT

    from stableff.data.io import read_frames
    from stableff.md.engines.ase import run_md
    from stableff.md.settings import MDSettings

    class SlowFirstCall(EMT):
        calls = 0

        def calculate(self, *args, **kwargs):
            SlowFirstCall.calls += 1
            if SlowFirstCall.calls == 1:
                time.sleep(1.5)
            super().calculate(*args, **kwargs)

    atoms = read_frames("acac:test_MD_300K", index=0)[0].to_atoms()
    summary = run_md(atoms, SlowFirstCall(), MDSettings(ensemble="nve", steps=20, progress=False), tmp_path)
    assert summary["first_call_s"] >= 1.5 and summary["ms_per_step"] * summary["steps"] < 1000
