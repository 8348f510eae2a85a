"""Oracles for the benchmarks as ASE calculators: PySCF Kohn-Sham DFT of a molecule (with a D3
correction from the ``dftd3`` package), e.g. for ``stableff learn`` with
``oracle: {calculator: "oracles:PySCFDFT", kwargs: {xc: pbe, basis: def2-svp}}`` (benchmarks/ on
PYTHONPATH)."""

from __future__ import annotations

import numpy as np
from ase import units
from ase.calculators.calculator import Calculator, all_changes


class PySCFDFT(Calculator):
    """Energy and forces of a non-periodic structure by PySCF: restricted (or, ``spin`` > 0,
    unrestricted) Kohn-Sham with density fitting, plus D3 where ``dispersion`` names a damping."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, xc: str = "pbe", basis: str = "def2-svp", grid_level: int = 3, dispersion: str | None = "d3bj",
                 charge: int = 0, spin: int = 0, density_fit: bool = True, conv_tol: float = 1e-9, **kwargs):
        super().__init__(**kwargs)
        self.settings = {"xc": xc, "basis": basis, "grid_level": grid_level, "dispersion": dispersion, "charge": charge, "spin": spin,
                         "density_fit": density_fit, "conv_tol": conv_tol}
        self._dm = None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from pyscf import dft, gto

        super().calculate(atoms, properties, system_changes)
        s = self.settings
        mol = gto.M(atom=[(a.symbol, tuple(a.position)) for a in self.atoms], basis=s["basis"], charge=s["charge"], spin=s["spin"], unit="Angstrom", verbose=0)
        mf = (dft.UKS if s["spin"] else dft.RKS)(mol)
        mf.xc, mf.grids.level, mf.conv_tol = s["xc"], s["grid_level"], s["conv_tol"]
        if s["density_fit"]:
            mf = mf.density_fit()
        energy = mf.kernel(dm0=self._dm if self._dm is not None and self._dm.shape[-1] == mol.nao else None)
        if not mf.converged:
            raise RuntimeError("the SCF did not converge")
        self._dm = mf.make_rdm1()
        gradient = mf.nuc_grad_method().kernel()
        energy_eV = energy * units.Hartree
        forces = -np.asarray(gradient) * units.Hartree / units.Bohr
        if s["dispersion"]:
            from dftd3.ase import DFTD3

            d3 = DFTD3(method=s["xc"].upper(), damping=s["dispersion"])
            probe = self.atoms.copy()
            probe.calc = d3
            energy_eV += probe.get_potential_energy()
            forces = forces + probe.get_forces()
        self.results = {"energy": energy_eV, "free_energy": energy_eV, "forces": forces}
