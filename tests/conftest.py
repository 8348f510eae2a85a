import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ACAC = Path(__file__).resolve().parents[1] / "stableff" / "datasets" / "acac"

# small versions of every model, for the physics suite
SMALL_HYPERPARAMETERS = {
    "nequip": dict(r_max=3.5, num_layers=2, l_max=2, num_features=4, num_bessels=4, radial_mlp_width=8, radial_mlp_depth=1),
    "allegro": dict(r_max=3.5, num_layers=2, l_max=2, num_scalar_features=8, num_tensor_features=4, num_bessels=4, two_body_mlp_width=8, latent_mlp_width=8, readout_mlp_width=8),
    "gemnet_t": dict(r_max=3.5, num_blocks=2, num_spherical=3, num_radial=4, emb_size_atom=8, emb_size_edge=8, emb_size_trip=4, emb_size_rbf=4, emb_size_cbf=4, emb_size_bil_trip=4, num_atom=1),
    "dimenet_pp_like": dict(r_max=3.5, num_blocks=2, atom_features=8, edge_features=8, triplet_features=4, num_radial=4, num_spherical=3, num_sph_radial=3),
}

# the cores shared between pytest-xdist's workers (make test runs two), all of them otherwise
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

# one cache (the LAMMPS plugin built once, exported models) for the session, its xdist workers and
# their subprocesses, not the user's ~/.cache/stableff: the plugin's build is locked and placed
# atomically, so the second worker that needs it waits for the first one's build instead of
# compiling it again (~40 s of both cores)
if "STABLEFF_CACHE" not in os.environ:
    import tempfile

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        shared = Path(tempfile.gettempdir()) / f"stableff-test-cache-{run}"
        shared.mkdir(exist_ok=True)
        os.environ["STABLEFF_CACHE"] = str(shared)
    else:
        os.environ["STABLEFF_CACHE"] = tempfile.mkdtemp(prefix="stableff-test-cache-")


def requires_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (../shared/data is not beside this checkout)")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A small NequIP trained briefly on acac (for tests that need a real model)."""
    from stableff.train.config import parse_config
    from stableff.train.loop import Trainer

    out = tmp_path_factory.mktemp("md_model")
    config = parse_config({
        "data": {"train": "acac:train_300K", "isolated_atoms": "acac:isolated_atoms", "val_fraction": 0.1, "max_train_frames": 120},
        "model": {"name": "nequip", "r_max": 4.0, "num_layers": 2, "num_features": 8, "num_bessels": 6, "radial_mlp_width": 16, "radial_mlp_depth": 1},
        "training": {"epochs": 4, "batch_size": 4, "num_threads": 2},
        "optimizer": {"lr": 0.01},
    })
    Trainer(config, out, progress=False).run()
    return out / "best.ckpt"


@pytest.fixture
def acac_frames():
    from stableff.data.io import read_frames

    return read_frames(ACAC / "train_300K.xyz", index=":12")


def kill_when(args, ready, timeout: float = 300.0) -> None:
    """Start ``args``, SIGKILL it as soon as ``ready()`` is true, and fail if it finished first."""
    import signal
    import subprocess
    import time

    process = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
