"""A condition of a study's MD: where the start structures come from (in or out of the training
distribution) and the temperature. One type, one way to write it (``ID@1200K``) and one parser."""

from __future__ import annotations

import dataclasses

#: start-structure kinds: in distribution (the test set at the training conditions) and out of it
KINDS = ("ID", "OOD")
KIND_TEXT = {"ID": "in distribution", "OOD": "out of distribution"}


@dataclasses.dataclass(frozen=True, order=True)
class Condition:
    """``temperature_K`` first, so that conditions sort by temperature, then kind."""

    temperature_K: float
    kind: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown start kind {self.kind!r} (choose from {', '.join(KINDS)})")

    @property
    def key(self) -> str:
        """``ID@1200K``: the key of the study's JSON and of its file names."""
        return f"{self.kind}@{self.temperature_K:g}K"

    def __str__(self) -> str:
        return self.key

    @property
    def text(self) -> str:
        """``in distribution at 1200 K``"""
        return f"{KIND_TEXT[self.kind]} at {self.temperature_K:g} K"

    @property
    def label(self) -> str:
        """``ID at 1200K``: short, for plot titles."""
        return f"{self.kind} at {self.temperature_K:g}K"

    @property
    def file_part(self) -> str:
        """``ID_1200K``: for file names."""
        return f"{self.kind}_{self.temperature_K:g}K"

    @classmethod
    def parse(cls, key: str) -> "Condition":
        """The condition of ``ID@1200K``."""
        kind, sep, temperature = str(key).partition("@")
        if not sep or not temperature.endswith("K"):
            raise ValueError(f"not a condition: {key!r} (expected e.g. ID@1200K)")
        return cls(float(temperature[:-1]), kind)


def sorted_conditions(keys) -> list[str]:
    """Condition keys in order of temperature, then kind."""
    return [c.key for c in sorted(Condition.parse(k) for k in keys)]
