"""Inference through ``torch.compile``, held beside a model rather than inside it.

``compile_inference(model)`` attaches a :class:`CompiledEnergy` to a :class:`ForceField`: its
network's ``atomic_energies`` compiled with dynamic shapes (one compilation serves every structure
size and neighbour count), with its backward; the float64 sums, the priors and the autograd of
forces stay eager. The first call compiles and reports its time (logger ``stableff``, shown on
stderr by the command line); if compilation or the compiled code fails on this platform, one
warning is given and the model runs eager from then on. Training (forces differentiated again for
the force loss, which compiled graphs do not support) and edge-feature evaluation always run eager.
"""

from __future__ import annotations

import logging
import time
import warnings

log = logging.getLogger("stableff")


class CompiledEnergy:
    """The compiled energy of one network and the state of its compilation (pending, ready, failed)."""

    def __init__(self, network):
        import torch
        import torch._dynamo

        self.name = network.model_name
        # Python floats of the model (cutoffs, exponents) as constants: as symbols they hit
        # inductor lowering errors (torch 2.13, KeyError 'unbacked_bindings')
        self.function = torch._dynamo.config.patch(specialize_float=True)(torch.compile(network.atomic_energies, dynamic=True))
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
        log.info("compiled %s (torch.compile, dynamic shapes) in %.1f s", self.name, self.compile_seconds)
        return out


def compile_inference(model, enabled: bool = True):
    """Evaluate ``model``'s energies and forces outside training through torch.compile (or stop
    doing so: ``enabled=False``); returns the model."""
    if enabled and model.compiled_energy is None:
        model.compiled_energy = CompiledEnergy(model.network)
    elif not enabled:
        model.compiled_energy = None
    return model
