"""Process settings for the command line and its worker processes.

``tune_allocator``: the models allocate and free tensors of a few MB (per-edge features of thousands
of edges) on every evaluation. glibc's malloc serves such blocks with fresh ``mmap`` calls, or
returns the top of its heap to the system after they are freed, so each evaluation pays page faults
for memory it just gave back: measured 10-15 % of a NequIP or Allegro evaluation of a 96-atom cell
on CPU. Serving every block from the heap (no ``mmap`` per block: glibc caps the mmap threshold at
32 MiB, and a training batch of eight 96-atom cells or MD of a 768-atom cell has per-edge tensors
of ~50 MB, which otherwise cost ~70,000 page faults per step, ~10 % of a NequIP training step) and
never returning freed heap to the system avoids that; the cost is that the process keeps its peak
memory. (Keeping only 1 GiB, as before, made MD of a 6144-atom HfO2 cell 1.3x slower per step than
with trimming off, 1.17-1.26 s against 0.87-0.91 s: each step faulted in again the ~4 GB above it,
and the cost per atom grew with the cell. Transparent huge pages for these blocks were slower
still: 2 MB pages to clear and compact.) The same effect as ``MALLOC_MMAP_MAX_=0
MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=18446744073709551615`` in the environment.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for this setting on 64-bit systems
TRIM_THRESHOLD = -1  # mallopt: never trim (glibc stores it as the largest size)

#: the same settings for a process started with this environment (e.g. a peer code in a benchmark)
ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(2**64 - 1)}

_tuned: bool | None = None


def tune_allocator() -> bool:
    """Apply the malloc settings above (glibc on Linux; elsewhere nothing). True if they hold."""
    global _tuned
    if _tuned is None:
        _tuned = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _tuned = all(
                    bool(libc.mallopt(option, value))
                    for option, value in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_MAX, 0))
                )
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                _tuned = False
    return _tuned


def usable_device(value: str) -> str:
    """``value`` if it names a device this process can run on (cpu, cuda, cuda:N), else ValueError
    with a message for the user (not a device; CUDA asked of a torch without it; no such GPU)."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"'{value}' is not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"'{value}' is not supported (cpu, cuda or cuda:N)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
            raise ValueError(f"'{value}' is not available here ({build})")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"'{value}' is not available here ({torch.cuda.device_count()} CUDA device(s): cuda:0..)")
    return value


def cache_folder() -> Path:
    """Where stableff keeps what it builds (the LAMMPS plugin, native autograd nodes, exported
    models): $STABLEFF_CACHE, or stableff/ in the user's cache folder."""
    if os.environ.get("STABLEFF_CACHE"):
        return Path(os.environ["STABLEFF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "stableff"
