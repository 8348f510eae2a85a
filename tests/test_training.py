"""Training: config validation, checkpoints, kill-and-resume, data parallelism, evaluate, calculator."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import kill_when
from stableff.errors import ConfigError
from stableff.train.config import load_config, parse_config

TINY = {
    "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.2, "max_train_frames": 16},
    "model": {"name": "nequip", "r_max": 3.5, "num_layers": 2, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
    "training": {"epochs": 2, "batch_size": 4, "seed": 0, "num_threads": 1},
}


def write_config(tmp_path, updates=None, name="config.yaml"):
    raw = json.loads(json.dumps(TINY))
    for section, values in (updates or {}).items():
        raw.setdefault(section, {}).update(values)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"training\.bogus: unknown key"):
        parse_config({"data": {"train": "x"}, "training": {"bogus": 1}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"training\.batch_size: Input should be greater than or equal to 1"):
        parse_config({"data": {"train": "x"}, "training": {"batch_size": 0}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"unknown hyper-parameter\(s\) \['num_featurs'\]"):
        parse_config({"data": {"train": "x"}, "model": {"name": "nequip", "num_featurs": 8}}, "c.yaml")
    with pytest.raises(ConfigError, match="override 'epochs' is not of the form key=value"):
        load_config(write_config(tmp_path), ["epochs"])
    assert load_config(write_config(tmp_path), ["training.epochs=7"]).training.epochs == 7


def stableff_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "stableff", *map(str, args)], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained through the CLI (2 epochs)."""
    tmp = tmp_path_factory.mktemp("trained")
    config = write_config(tmp)
    result = stableff_cli("train", config, "--out", tmp / "run")
    assert result.returncode == 0, result.stderr
    return tmp / "run"


def test_train_writes_checkpoints_metrics_and_refuses_to_overwrite(trained, tmp_path):
    assert (trained / "best.ckpt").is_file() and (trained / "last.ckpt").is_file()
    rows = (trained / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,step,time_s,lr,train_loss") and len(rows) == 3
    again = stableff_cli("train", trained / "config.yaml", "--out", trained)
    assert again.returncode == 1 and "already holds a training run" in again.stderr
    assert not list(trained.glob(".*.ckpt.*"))  # no temp files left behind


def test_evaluate_json_and_plot(trained, tmp_path):
    result = stableff_cli("evaluate", trained / "best.ckpt", "acac:test_MD_300K", "--json", tmp_path / "m.json", "--plot", tmp_path / "plots")
    assert result.returncode == 0, result.stderr
    assert "EMAE" in result.stdout and "meV/atom" in result.stdout
    payload = json.loads((tmp_path / "m.json").read_text())
    entry = payload["files"][0]
    for key in ("path", "n_frames", "emae_meV_per_atom", "fmae_meV_per_A", "ermse_meV_per_atom", "frmse_meV_per_A"):
        assert key in entry
    assert entry["n_frames"] == 650 and entry["fmae_meV_per_A"] > 0
    assert (tmp_path / "plots" / "parity_test_MD_300K.png").stat().st_size > 10_000


def test_calculator_matches_evaluation_in_plain_session(trained):
    code = (
        "from stableff import StableFFCalculator\n"
        "from ase.io import read\n"
        f"atoms = read('{Path(__file__).parents[1] / 'stableff/datasets/acac/test_MD_300K.xyz'}', 0)\n"
        f"atoms.calc = StableFFCalculator('{trained / 'best.ckpt'}', device='cpu')\n"
        "e = atoms.get_potential_energy(); f = atoms.get_forces(); ei = atoms.get_potential_energies()\n"
        "assert f.shape == (15, 3) and abs(ei.sum() - e) < 1e-2 * abs(e) * 1e-3\n"
        "print(e, atoms.get_potential_energy(force_consistent=True))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    energy, free = map(float, result.stdout.split())
    assert energy == free and -9500 < energy < -9300  # acetylacetone total energy scale, eV


def final_weights(run_dir):
    return torch.load(run_dir / "last.ckpt", weights_only=False)["train_state"]["model"]


def test_killed_run_resumes_to_the_same_result(tmp_path):
    config = write_config(tmp_path, {"training": {"epochs": 4}, "data": {"max_train_frames": 40}})
    reference = stableff_cli("train", config, "--out", tmp_path / "straight")
    assert reference.returncode == 0, reference.stderr
    metrics = tmp_path / "killed" / "metrics.csv"
    two_epochs_done = lambda: metrics.exists() and len(metrics.read_text().strip().splitlines()) >= 3
    kill_when([sys.executable, "-m", "stableff", "train", config, "--out", tmp_path / "killed"], two_epochs_done)
    done_before = len(metrics.read_text().strip().splitlines()) - 1
    assert 2 <= done_before < 4
    resumed = stableff_cli("train", config, "--out", tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "killed")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "killed" / "metrics.csv").read_text().count("\n") == 5


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gradients(rank, world, port, queue):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), STABLEFF_BACKEND="gloo")
    torch.set_num_threads(1)
    from stableff.data.graph import frame_to_graph
    from stableff.data.io import read_frames
    from stableff.data.stats import compute_statistics
    from stableff.train.loop import build_from_statistics, distributed_context, gradient_step

    config = parse_config(TINY)
    distributed_context()
    frames = read_frames("acac:train_300K", index=":5")  # odd global batch: ranks get 3 and 2 structures
    statistics = compute_statistics(frames, 3.5)
    model = build_from_statistics(config, statistics).double()
    graphs = [frame_to_graph(f, statistics.type_numbers, 3.5, torch.float64) for f in frames]
    loss, terms, _ = gradient_step(model, graphs[rank::world], config, world, "cpu", torch.float64)
    # a weight no loss reaches has no gradient in one process and a zero one after all-reduce
    queue.put((rank, loss, {n: (p.grad.numpy().copy() if p.grad is not None else np.zeros(tuple(p.shape), dtype=np.float64)) for n, p in model.named_parameters()}))
    if world > 1:
        torch.distributed.destroy_process_group()


def test_two_process_data_parallel_gradients_match_single_process():
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    single = ctx.Process(target=_gradients, args=(0, 1, _free_port(), queue))
    single.start()
    _, loss_single, grads_single = queue.get(timeout=120)
    single.join()
    port = _free_port()
    workers = [ctx.Process(target=_gradients, args=(r, 2, port, queue)) for r in range(2)]
    for w in workers:
        w.start()
    results = [queue.get(timeout=120) for _ in workers]
    for w in workers:
        w.join()
    for rank, loss, grads in results:
        assert loss == pytest.approx(loss_single, rel=1e-10)
        for name, grad in grads_single.items():
            np.testing.assert_allclose(grads[name], grad, rtol=1e-9, atol=1e-12)


def test_validation_loss_has_the_stress_term_training_has(tmp_path):
    """The validation loss (best.ckpt, the plateau scheduler, early stopping) is the training loss's
    weighted sum on the validation frames, stress included where loss.stress_weight > 0."""
    import ase.io
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from stableff.train.loop import Trainer

    rng = np.random.default_rng(0)
    frames = []
    for k in range(12):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.04 * rng.standard_normal(), cubic=True)
        atoms.rattle(0.05, seed=k)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        frames.append(atoms)
    ase.io.write(tmp_path / "cu.extxyz", frames)
    base = {"data": {"train": str(tmp_path / "cu.extxyz"), "val_fraction": 0.25, "train_stress": True},
            "model": {"name": "nequip", "r_max": 3.0, "num_layers": 1, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
            "training": {"epochs": 1, "batch_size": 3, "seed": 0, "num_threads": 1}}
    losses = {}
    for weight in (0.0, 100.0):
        config = parse_config({**base, "loss": {"stress_weight": weight}})
        trainer = Trainer(config, tmp_path / f"w{weight:g}", progress=False)
        trainer.run()
        metrics = trainer._validate()
        assert "srmse_meV_per_A3" in metrics
        expected = (metrics["ermse_meV_per_atom"] / 1000) ** 2 + (metrics["frmse_meV_per_A"] / 1000) ** 2 + weight * (metrics["srmse_meV_per_A3"] / 1000) ** 2
        assert metrics["loss"] == pytest.approx(expected, rel=1e-12)
        losses[weight] = metrics
    assert losses[100.0]["loss"] > (losses[100.0]["ermse_meV_per_atom"] / 1000) ** 2 + (losses[100.0]["frmse_meV_per_A"] / 1000) ** 2


def test_a_full_disk_stops_training_in_one_line_and_a_resume_continues(tmp_path, monkeypatch):
    """The disk fills while epoch 2's last.ckpt is written: one error naming the file, both
    checkpoints still load (last.ckpt the first epoch's), no temporary file is left, and --resume after
    space is freed trains to the end."""
    import errno

    import stableff.io
    from stableff.errors import StableFFError
    from stableff.train.loop import Trainer

    config = parse_config({
        "data": {"train": "acac:train_300K", "val_fraction": 0.25, "max_train_frames": 8},
        "model": {"name": "nequip", "r_max": 3.5, "num_layers": 1, "num_features": 4, "num_bessels": 4, "radial_mlp_width": 8, "radial_mlp_depth": 1},
        "training": {"epochs": 3, "batch_size": 4, "num_threads": 1},
    })
    real_fsync, writes = stableff.io.os.fsync, []

    def filling_disk(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        writes.append(name)
        if ".last.ckpt." in name and sum(".last.ckpt." in w for w in writes) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(stableff.io.os, "fsync", filling_disk)
    out = tmp_path / "run"
    with pytest.raises(StableFFError, match=rf"{out / 'last.ckpt'}: cannot write \(No space left on device\); the previous version is unchanged"):
        Trainer(config, out, progress=False).run()
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "config.yaml", "last.ckpt", "metrics.csv"]
    assert torch.load(out / "last.ckpt", weights_only=False)["epoch"] == 0  # 0-based: the first epoch's
    assert torch.load(out / "best.ckpt", weights_only=False)["epoch"] in (0, 1)
    monkeypatch.setattr(stableff.io.os, "fsync", real_fsync)
    trainer = Trainer(config, out, resume=True, progress=False)
    trainer.run()
    assert [row["epoch"] for row in trainer.history] == [1, 2, 3]
