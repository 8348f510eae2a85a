"""Fingerprints of the inputs that determine a stored result, and how two of them differ.

A fingerprint is a plain JSON-ready dict (``{"temperature_K": 1200.0, "model": "sha256:...", ...}``)
stored beside the result; a result is reused only when the fingerprint of the new request equals the
stored one, and otherwise :func:`differences` names what changed ("temperature_K: 300.0 -> 1200.0").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

#: bumped whenever the meaning of a stored result changes; part of every fingerprint
RESULT_FORMAT = 2


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of every file below a folder (names and bytes, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def array_hash(*arrays) -> str:
    """sha256 of numeric arrays (their dtype-normalised bytes and shapes)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array, dtype=np.float64))
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()[:32]


def atoms_hash(atoms) -> str:
    """A structure's identity: atomic numbers, positions, cell and periodicity."""
    return array_hash(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)


def canonical(value):
    """JSON round trip (tuples become lists, numpy numbers plain numbers), for exact comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=_plain))


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def differences(stored: dict | None, requested: dict, prefix: str = "") -> list[str]:
    """Human-readable list of what differs between two fingerprints ("key: old -> new")."""
    if stored is None:
        return [f"{prefix or 'result'}: no fingerprint stored (made by an older stableff)"]
    stored, requested = canonical(stored), canonical(requested)
    out = []
    for key in sorted(set(stored) | set(requested)):
        name = f"{prefix}{key}"
        a, b = stored.get(key, "<absent>"), requested.get(key, "<absent>")
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(differences(a, b, prefix=f"{name}."))
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            out.extend(_list_differences(a, b, name))
        else:
            out.append(f"{name}: {_short(a)} -> {_short(b)}")
    return out


def _list_differences(a: list, b: list, name: str) -> list[str]:
    """Differences of two lists of one length, item by item, the same change in several items said
    once with their count (``replicas[*].md.steps: 40 -> 50 (12 of 12 items)``)."""
    counts: dict[str, int] = {}
    for x, y in zip(a, b):
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            changes = differences(x, y, prefix=f"{name}[*].")
        else:
            changes = [f"{name}[*]: {_short(x)} -> {_short(y)}"]
        for change in changes:
            counts[change] = counts.get(change, 0) + 1
    return [f"{change} ({count} of {len(a)} items)" if len(a) > 1 else change for change, count in counts.items()]


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
