"""Inference through ``torch.compile``, held beside a model rather than inside it.

``compile_inference(model)`` attaches a :class:`CompiledEnergy` to a :class:`ForceField`: its
network's ``atomic_energies`` compiled with dynamic shapes (one compilation serves every structure
size and neighbour count), with its backward; the float64 sums, the priors and the autograd of
forces stay eager. The first call compiles and reports its time (logger ``stableff``, shown on
stderr by the command line); if compilation or the compiled code fails on this platform, one
warning is given and the model runs eager from then on. Training (forces differentiated again for
the force loss, which compiled graphs do not support) and edge-feature evaluation always run eager.

Inductor writes its CPU kernels for a thread count fixed at compile time (``cpp.threads``; by
default the threads of the process). Kernels of a few thousand edges are too small to share: on
this project's 2-core CPU, with 2 threads at run time, bench-S Allegro compiled for 2 threads took
23.7 ms per 96-atom evaluation against 7.5 ms compiled for 1 (NequIP 28.1 against 12.0 ms), and
the eager path 8.1-9.3 and 15.5-16.8 ms (benchmarks/compile_speed.py; benchmarks/results/
compile_speed). So the generated kernels run on one thread (``KERNEL_THREADS``); the matrix
products they call still use every thread.
"""

from __future__ import annotations

import logging
import time
import warnings

log = logging.getLogger("stableff")

KERNEL_THREADS = 1  # threads of inductor's generated CPU kernels (None: the process's threads, inductor's default)


class CompiledEnergy:
    """The compiled energy of one network and the state of its compilation (pending, ready, failed)."""

    def __init__(self, network, kernel_threads: int | None = KERNEL_THREADS):
        import torch
        import torch._dynamo

        self.name = network.model_name
        # Python floats of the model (cutoffs, exponents) as constants: as symbols they hit
        # inductor lowering errors (torch 2.13, KeyError 'unbacked_bindings')
        options = None if kernel_threads is None else {"cpp.threads": int(kernel_threads)}
        self.function = torch._dynamo.config.patch(specialize_float=True)(torch.compile(network.atomic_energies, dynamic=True, options=options))
        self.kernel_threads = kernel_threads
        self.state = "pending"
        self.compile_seconds: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("pending", "ready")

    def run(self, forward, eager):
        """``forward(energy_function)`` through the compiled function; on the first call, compile
        (and report), and on any failure warn once and run ``forward(eager)`` from then on."""
        if self.state == "ready":
            return forward(self.function)
        if self.state == "failed":
            return forward(eager)
        start = time.perf_counter()
        try:
            out = forward(self.function)
        except Exception as exc:  # any failure of the compiler or of the compiled code: eager from now on
            self.state, self.function = "failed", None
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            warnings.warn(f"torch.compile failed for {self.name} on this platform ({type(exc).__name__}: {first_line}); running eager", RuntimeWarning, stacklevel=3)
            return forward(eager)
        self.state = "ready"
        self.compile_seconds = time.perf_counter() - start
        log.info("compiled %s (torch.compile, dynamic shapes, CPU kernels on %s thread(s)) in %.1f s", self.name, self.kernel_threads or "all", self.compile_seconds)
        return out


def compile_inference(model, enabled: bool = True, kernel_threads: int | None = KERNEL_THREADS):
    """Evaluate ``model``'s energies and forces outside training through torch.compile (or stop
    doing so: ``enabled=False``); ``kernel_threads``: threads of the generated CPU kernels (None:
    all the process's threads); returns the model."""
    if enabled and model.compiled_energy is None:
        model.compiled_energy = CompiledEnergy(model.network, kernel_threads)
    elif not enabled:
        model.compiled_energy = None
    return model
