"""Which oracle reproduces the acetylacetone data? PySCF at the dataset's level, and GFN2-xTB.

The embedded acac data were labelled by ORCA 5 with PBE + D3 / def2-SVP (UHF on a closed-shell
molecule, RI-J, VeryTight SCF). This script labels the same frames again and reports, per oracle,
the force MAE against the dataset (meV/A), the energy MAE after removing the mean offset
(meV/atom; the absolute energies of two codes differ by a constant) and the seconds per call, alone
on this machine. Oracles: ``pyscf`` (restricted Kohn-Sham PBE/def2-SVP with density fitting, plus
D3(BJ) from the ``dftd3`` package; the grid level is an option, a coarser grid is cheaper) and
``tblite`` (GFN2-xTB, a semi-empirical oracle for demos that must fit in minutes). Both are ASE
calculators (``benchmarks/oracles.py:PySCFDFT``, ``tblite.ase:TBLite``), usable by ``stableff learn``.
Writes benchmarks/results/oracle_check/summary.json.

    pip install pyscf dftd3 tblite
    python benchmarks/oracle_check.py [--frames 20] [--oracles pyscf tblite] [--grid-level 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make(name: str, args):
    if name == "pyscf":
        from oracles import PySCFDFT

        return PySCFDFT(xc="pbe", basis="def2-svp", grid_level=args.grid_level, dispersion="d3bj")
    if name == "tblite":
        from tblite.ase import TBLite

        return TBLite(method="GFN2-xTB", verbosity=0)
    raise SystemExit(f"unknown oracle {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20, help="dataset frames (evenly spaced over train_300K)")
    parser.add_argument("--oracles", nargs="+", default=["tblite", "pyscf"])
    parser.add_argument("--grid-level", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle_check"))
    args = parser.parse_args()

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    from stableff.data.io import read_frames

    pool = read_frames("acac:train_300K")
    frames = [pool[i] for i in np.linspace(0, len(pool) - 1, args.frames).astype(int)]
    results = {}
    for name in args.oracles:
        oracle = make(name, args)
        e_ref, e_new, f_err, seconds = [], [], [], []
        for k, frame in enumerate(frames):
            atoms = frame.to_atoms()
            atoms.calc = oracle
            t0 = time.perf_counter()
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            seconds.append(time.perf_counter() - t0)
            e_ref.append(frame.energy / len(frame))
            e_new.append(energy / len(frame))
            f_err.append(np.abs(forces - frame.forces).ravel())
            print(f"{name} frame {k + 1}/{len(frames)}: {seconds[-1]:.1f} s, force MAE so far {1000 * np.mean(np.concatenate(f_err)):.1f} meV/A", flush=True)
        offset = np.array(e_new) - np.array(e_ref)
        results[name] = {
            "settings": getattr(oracle, "settings", None) or {"method": "GFN2-xTB"},
            "n_frames": len(frames),
            "force_mae_meV_per_A": float(1000 * np.mean(np.concatenate(f_err))),
            "energy_mae_meV_per_atom_after_offset": float(1000 * np.mean(np.abs(offset - offset.mean()))),
            "energy_offset_eV_per_atom": float(offset.mean()),
            "seconds_per_call_median": float(np.median(seconds)),
            "seconds_per_call_first": float(seconds[0]),
        }
    print(f"\nmachine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    print(f"{'oracle':<8} {'force MAE (meV/A)':>18} {'energy MAE after offset (meV/atom)':>35} {'s/call (median)':>16}")
    for name, r in results.items():
        print(f"{name:<8} {r['force_mae_meV_per_A']:>18.1f} {r['energy_mae_meV_per_atom_after_offset']:>35.2f} {r['seconds_per_call_median']:>16.2f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"frames": args.frames, "results": results}, indent=1))
    print(f"written: {out / 'summary.json'}")


if __name__ == "__main__":
    main()
