"""The state file of a running replica (batched engine): what an interrupted run continues from.

``state.pt`` in the replica's folder holds its step, positions, momenta, random-stream and
thermostat state, monitor, the lengths of its files and its identity (with the fingerprint); it is
written atomically and removed when the replica's summary is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from stableff.fingerprint import differences
from stableff.io import save_torch_atomic
from stableff.layout import STATE_FILE

#: thermo rows (failure checks) between state files: every 100 steps at the default log interval
CHECKPOINT_RECORDS = 10


def save_state(state: dict, out_dir) -> None:
    save_torch_atomic(state, Path(out_dir) / STATE_FILE)


def remove_state(out_dir) -> None:
    (Path(out_dir) / STATE_FILE).unlink(missing_ok=True)


def read_state(out_dir, fingerprint: dict | None = None) -> dict | None:
    """The saved state of an interrupted replica in ``out_dir``, if there is one made from the same
    inputs (``fingerprint``; None accepts any)."""
    path = Path(out_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a state file cut short can only come from a crash while writing: start over
        return None
    if fingerprint is not None and differences((state.get("metadata") or {}).get("fingerprint"), fingerprint):
        return None
    return state
