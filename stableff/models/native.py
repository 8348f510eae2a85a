"""Native (C++) versions of the two autograd nodes of the decorrelation path, built on first use.

On a small molecule every operation of the decorrelation loss is tiny, and the Python of its two
custom autograd nodes (the messages' scatter with the invariant view, and the loss of all layers)
was about 0.8 ms of a ~20 ms training step of the demo's acetylacetone NequIP, and the dozens of
small aten operations of the invariant view and of the loss's [d, d] work most of the rest.
``native_ops.cpp`` holds the same nodes in C++, that element-wise work as loops over CPU tensors
(the matrix products, scatter and gathers stay aten's): the same numbers up to rounding (aten
fuses some multiply-adds the loops do not; tests/test_native.py). It is compiled once with the
machine's C++ compiler against the installed torch (torch.utils.cpp_extension, ~40 s), cached in
stableff's cache folder by the source's and torch's versions. Where it cannot be built (no
compiler), with STABLEFF_NATIVE=0, or on other devices, the Python nodes run.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

from stableff.runtime import cache_folder

SOURCE = Path(__file__).with_name("native_ops.cpp")
_state: dict = {}


def build_key() -> str:
    """What a built library depends on: its source and the torch it was built against."""
    digest = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + sys.version.encode()).hexdigest()
    return digest[:16]


def native_ops(device: torch.device | str = "cpu"):
    """The built module (``scatter_sum_and_view``, ``weighted_off_diagonal_squares``) for tensors on
    ``device``, or None where it does not apply (its loops take CPU tensors), is switched off or
    cannot be built (said once, with the reason)."""
    if torch.device(device).type != "cpu":
        return None
    if "module" in _state:
        return _state["module"]
    module = None
    if os.environ.get("STABLEFF_NATIVE", "1") != "0":
        try:
            from torch.utils.cpp_extension import load

            key = build_key()
            folder = cache_folder() / f"native-{key}"
            folder.mkdir(parents=True, exist_ok=True)
            if not any(folder.glob("*.so")):
                print(f"stableff: compiling the native decorrelation nodes into {folder} (once, ~40 s) ...", file=sys.stderr, flush=True)
            # cpp_extension holds a lock in the folder: two processes that need it at once build it once
            module = load(f"stableff_native_{key}", [str(SOURCE)], extra_cflags=["-O2"], build_directory=str(folder), verbose=False)
        except Exception as error:  # noqa: BLE001 - any build failure falls back to the Python nodes, said once
            warnings.warn(f"stableff: the native decorrelation nodes could not be built ({type(error).__name__}: {str(error)[-300:]}); "
                          "using the Python ones (same results, slower on small molecules)", stacklevel=2)
    _state["module"] = module
    return module


def flat_runs(view) -> list[int]:
    """An ``InvariantChannels``' runs as the flat list the C++ node reads: 7 integers per run (first
    column, columns, view shape (3; shape[1] = 0 for scalars), first output column, output columns)."""
    flat = []
    for start, size, shape, column, width in view.runs:
        s0, s1, s2 = shape if shape is not None else (0, 0, 0)
        flat += [start, size, s0, s1, s2, column, width]
    return flat
