"""Oracles for the active-learning tests: ASE's EMT that notes every call in a file, and fails
while a given file exists (an oracle that dies part way through a round)."""

from pathlib import Path

from ase.calculators.emt import EMT


class CountingEMT(EMT):
    def __init__(self, log: str, fail_while: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.log, self.fail_while = Path(log), fail_while

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        if self.fail_while and Path(self.fail_while).exists():
            raise RuntimeError("the oracle's machine went away")
        with open(self.log, "a") as handle:
            handle.write("call\n")
        super().calculate(atoms, properties, system_changes)
