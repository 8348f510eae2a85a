"""Names of species pairs, defined once: ``pair_key`` (atomic numbers, how statistics are stored)
and ``pair_label`` (element symbols, how results are shown and stored in RDF tables). Both put the
lighter element first, so "O-Hf" is never "Hf-O"."""

from __future__ import annotations


def pair_key(z1: int, z2: int) -> str:
    """'8-72' for (O, Hf) in either order."""
    a, b = sorted((int(z1), int(z2)))
    return f"{a}-{b}"


def pair_label(z1: int, z2: int) -> str:
    """'O-Hf' for (O, Hf) in either order (lighter element first)."""
    from ase.data import chemical_symbols

    a, b = sorted((int(z1), int(z2)))
    return f"{chemical_symbols[a]}-{chemical_symbols[b]}"
