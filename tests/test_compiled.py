"""The compiled inference path (torch.compile) against the eager one, and its fallback."""

import warnings

import numpy as np
import pytest
import torch

from stableff.data import keys
from stableff.data.graph import collate, frame_to_graph
from stableff.data.io import frame_from_atoms
from stableff.models.compiled import compile_inference
from test_physics import hfo2_like_cell, make_model


def evaluate(model, structures, stress=False):
    frames = [s if not hasattr(s, "get_positions") else frame_from_atoms(s) for s in structures]
    batch = collate([frame_to_graph(f, model.type_numbers, model.r_max, model.dtype) for f in frames])
    out = model(batch, compute_forces=True, compute_stress=stress)
    return {k: v.detach() for k, v in out.items() if isinstance(v, torch.Tensor)}


def test_compiled_energies_forces_and_stress_equal_the_eager_ones(acac_frames, capfd, monkeypatch):
    # one interaction layer with l <= 1: the same code path as a larger NequIP, and half the cold
    # compile time (inductor builds C++ kernels: 136 s for the suite's default NequIP on 2 cores)
    import conftest

    monkeypatch.setitem(conftest.SMALL_HYPERPARAMETERS, "nequip", {**conftest.SMALL_HYPERPARAMETERS["nequip"], "num_layers": 1, "l_max": 1})
    model = make_model("nequip", type_numbers=(1, 6, 8, 72))
    crystal = hfo2_like_cell()
    eager_molecules = evaluate(model, acac_frames[:3])
    eager_crystal = evaluate(model, [crystal], stress=True)
    compile_inference(model)
    assert model.compiled
    # several sizes and edge counts through one compilation (dynamic shapes)
    for structures, eager, stress in ((acac_frames[:3], eager_molecules, False), ([crystal], eager_crystal, True), (acac_frames[:3], eager_molecules, False)):
        compiled = evaluate(model, structures, stress)
        for key in (keys.TOTAL_ENERGY, keys.FORCES) + ((keys.STRESS,) if stress else ()):
            np.testing.assert_allclose(compiled[key].numpy(), eager[key].numpy(), rtol=1e-9, atol=1e-9, err_msg=key)
    assert model.compiled_energy.state == "ready"
    assert capfd.readouterr().err.count("compiled nequip") == 1  # compile time reported once
    # training differentiates forces again: always eager, and it still learns through the same weights
    model.train()
    out = model(collate([frame_to_graph(acac_frames[0], model.type_numbers, model.r_max, model.dtype)]))
    out[keys.FORCES].pow(2).sum().backward()
    assert model.scale_shift.scale.grad is not None


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(acac_frames, monkeypatch):
    model = make_model("nequip")
    eager = evaluate(model, acac_frames[:2])

    def broken_compile(function, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler on this platform")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    compile_inference(model)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for nequip.*no C\\+\\+ compiler.*running eager"):
        first = evaluate(model, acac_frames[:2])
    assert not model.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = evaluate(model, acac_frames[:2])
    for out in (first, second):
        np.testing.assert_allclose(out[keys.FORCES].numpy(), eager[keys.FORCES].numpy(), rtol=0, atol=0)


def test_generated_cpu_kernels_run_on_the_configured_threads(monkeypatch):
    # inductor fixes its kernels' thread count when it compiles; one thread is the measured default
    from stableff.models import compiled as compiled_module

    seen = []
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: seen.append(kwargs.get("options")) or function)
    compile_inference(make_model("nequip"))
    compile_inference(make_model("nequip"), kernel_threads=None)
    compile_inference(make_model("nequip"), kernel_threads=4)
    assert seen == [{"cpp.threads": compiled_module.KERNEL_THREADS}, None, {"cpp.threads": 4}]
    assert compiled_module.KERNEL_THREADS == 1
