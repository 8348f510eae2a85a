"""The dense equivariant kernels of stableff.models.tensor_products (and NequIP's radial MLP) give
e3nn's values, first and second derivatives (the force loss differentiates forces) in float64: they
replace e3nn's modules in the models, with e3nn's modules as the reference."""

import pytest
import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet

from stableff.models import build_model
from stableff.models.invariants import InvariantChannels
from stableff.models.tensor_products import from_channels, to_channels


def build_float64(name, **hyper):
    """``name`` built with float64 as the default dtype, so that e3nn's reference modules hold their
    Wigner 3j symbols in float64 (built in float32 and cast, e3nn's hold them rounded to float32;
    ours are exact either way: test_constants_are_exact_in_a_model_built_in_float32_and_cast)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build_model(name, **hyper)
    finally:
        torch.set_default_dtype(default)


def assert_same_derivatives(reference, ours, inputs, weights):
    """Gradients of sum(out^2) wrt the inputs, and of their squared norm wrt the weights, agree."""
    derivatives = []
    for out in (reference, ours):
        first = torch.autograd.grad((out**2).sum(), inputs, create_graph=True)
        derivatives.append(first + torch.autograd.grad(sum((g**2).sum() for g in first), weights))
    for a, b in zip(*derivatives):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("l_max,parity", [(1, True), (2, False), (2, True)])
def test_nequip_fast_kernels_equal_e3nn(l_max, parity):
    """NequIP's per-edge-matrix tensor product, its radial MLP and the edge-feature view of its
    component-major messages give e3nn's values, gradients and second derivatives (training takes
    the gradient of forces)."""
    torch.manual_seed(1)
    model = build_float64("nequip", type_numbers=[1, 8], avg_num_neighbors=4.0, num_layers=3, l_max=l_max, parity=parity, num_features=5,
                          num_bessels=4, radial_mlp_depth=2, radial_mlp_width=7)
    for layer in model.network.layers:
        tp, fast = layer.tp, layer.channel_tp
        nodes, edges = 6, 30
        x = torch.randn(nodes, tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
        sh = torch.randn(edges, tp.irreps_in2.dim, dtype=torch.float64, requires_grad=True)
        w = torch.randn(edges, tp.weight_numel, dtype=torch.float64, requires_grad=True)
        neighbour = torch.randint(0, nodes, (edges,))
        reference, ours = tp(x[neighbour], sh, w), fast(x, neighbour, sh, w)
        torch.testing.assert_close(fast.to_irreps(ours), reference, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours[:, fast.irreps_columns], reference, rtol=1e-12, atol=1e-12)
        assert_same_derivatives(reference, fast.to_irreps(ours), (x, sh), (w,))
        # the edge features read the messages where they are
        torch.testing.assert_close(layer.invariant_view(ours), InvariantChannels(layer.irreps_mid)(reference), rtol=1e-12, atol=1e-12)
        e3nn_mlp = FullyConnectedNet(layer.radial.hs, torch.nn.functional.silu).double()
        e3nn_mlp.load_state_dict(layer.radial.state_dict())
        basis = torch.randn(edges, 4, dtype=torch.float64)
        torch.testing.assert_close(layer.radial(basis), e3nn_mlp(basis), rtol=1e-12, atol=1e-12)
        # the gate, written as runs of gated blocks, against e3nn's Gate
        assert layer.gate_in_order
        u = torch.randn(nodes, layer.gate.irreps_in.dim, dtype=torch.float64, requires_grad=True)
        torch.testing.assert_close(layer.gated(u), layer.gate(u), rtol=1e-12, atol=1e-12)
        assert_same_derivatives(layer.gate(u), layer.gated(u), (u,), (u,))


@pytest.mark.parametrize("l_max,parity", [(1, True), (2, True)])
def test_nequip_inference_matrices_equal_e3nns_modules_while_the_weights_are_unchanged(l_max, parity):
    """With frozen weights NequIP's node-side linear maps (linear_1; to_irreps, 1/sqrt(<n>) and
    linear_2; the species self-connection) run as matrices read off e3nn's modules: energies,
    forces and stress equal the training path's (e3nn's modules), and follow a change of the weights."""
    from ase import Atoms

    from stableff.data.graph import collate, frame_to_graph
    from stableff.data.io import frame_from_atoms

    torch.manual_seed(4)
    model = build_model("nequip", type_numbers=[1, 8, 72], avg_num_neighbors=5.0, num_layers=3, l_max=l_max, parity=parity, num_features=6,
                        num_bessels=4, radial_mlp_width=8).double()
    positions = torch.rand(7, 3, generator=torch.Generator().manual_seed(0)).numpy() * 4.0
    frame = frame_from_atoms(Atoms("Hf2O4H", positions=positions, cell=[4.5, 4.6, 4.4], pbc=True))
    frame.energy = frame.forces = frame.stress = None
    batch = collate([frame_to_graph(frame, model.type_numbers, model.r_max, torch.float64)])

    def both():
        trained = model.requires_grad_(True)(batch, compute_forces=True, compute_stress=True, create_graph=False)
        assert all("_inference_matrices" not in layer.__dict__ for layer in model.network.layers)  # no cache while trained
        frozen = model.requires_grad_(False)(batch, compute_forces=True, compute_stress=True, create_graph=False)
        assert all("_inference_matrices" in layer.__dict__ for layer in model.network.layers)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(frozen[key], trained[key], rtol=1e-12, atol=1e-12)
        for layer in model.network.layers:
            del layer.__dict__["_inference_matrices"]
        return frozen

    before = both()
    model.requires_grad_(False)(batch, compute_forces=True, compute_stress=True)  # fills the cache
    with torch.no_grad():
        for layer in model.network.layers:
            layer.linear_2.weight.mul_(1.5)
            layer.self_connection.weight.add_(0.1)
    changed = model(batch, compute_forces=True, compute_stress=True)  # must not reuse the old matrices
    for layer in model.network.layers:
        del layer.__dict__["_inference_matrices"]
    after = both()
    assert not torch.allclose(after["forces"], before["forces"])
    torch.testing.assert_close(changed["forces"], after["forces"], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("l_max,parity,num_layers", [(1, True, 2), (2, False, 3), (2, True, 2)])
def test_allegro_fast_kernels_equal_e3nn(l_max, parity, num_layers):
    """Allegro's channel-wise tensor product and channel-layout Linear against e3nn's."""
    torch.manual_seed(2)
    model = build_float64("allegro", type_numbers=[1, 8], avg_num_neighbors=4.0, num_layers=num_layers, l_max=l_max, parity=parity,
                          num_scalar_features=6, num_tensor_features=3, num_bessels=4)
    for layer in model.network.layers:
        tp, edges = layer.tp, 20
        x = torch.randn(edges, tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
        y = torch.randn(edges, tp.irreps_in2.dim, dtype=torch.float64, requires_grad=True)
        reference = tp(x, y)
        ours = from_channels(layer.channel_tp(to_channels(x, tp.irreps_in1), to_channels(y, tp.irreps_in2)), tp.irreps_out)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        assert_same_derivatives(reference, ours, (x, y), (x,))
        linear = layer.linear
        z = torch.randn(edges, linear.irreps_in.dim, dtype=torch.float64, requires_grad=True)
        reference = linear(z)
        ours = from_channels(layer.channel_linear(to_channels(z, linear.irreps_in), linear.weight), linear.irreps_out)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        assert_same_derivatives(reference, ours, (z,), (linear.weight,))


def test_channel_layout_round_trip():
    irreps = o3.Irreps("4x0e+4x1o+4x2e")
    x = torch.randn(5, irreps.dim)
    channels = to_channels(x, irreps)
    assert channels.shape == (5, 4, 9)
    # channel 1's l = 1 block sits after its scalar
    torch.testing.assert_close(channels[:, 1, 1:4], x[:, 4 + 3 : 4 + 6])
    torch.testing.assert_close(from_channels(channels, irreps), x)


def test_allegro_layer_equals_its_e3nn_composition():
    """The Allegro layer's folded products (scalars and Linear read off the component pairs) equal
    e3nn's TensorProduct -> scalars / Linear on e3nn's layout, with derivatives."""
    from stableff.models.scatter import scatter_sum

    torch.manual_seed(3)
    model = build_float64("allegro", type_numbers=[1, 8], avg_num_neighbors=4.0, num_layers=3, l_max=2, parity=True,
                          num_scalar_features=6, num_tensor_features=3, num_bessels=4)
    nodes, edges = 5, 24
    centre = torch.randint(0, nodes, (edges,))
    sh = model.network.spherical_harmonics(torch.randn(edges, 3, dtype=torch.float64))
    envelope = torch.rand(edges, dtype=torch.float64)
    for index, layer in enumerate(model.network.layers):
        latents = torch.randn(edges, 6, dtype=torch.float64, requires_grad=True)
        earlier = [torch.randn(edges, 6, dtype=torch.float64) for _ in range(index)]  # dense latents: all earlier layers'
        tensors = torch.randn(edges, layer.tp.irreps_in1.dim, dtype=torch.float64, requires_grad=True)
        need = index < len(model.network.layers) - 1
        ours = layer(latents, to_channels(tensors, layer.tp.irreps_in1), sh * (0.5 * envelope).unsqueeze(-1), (envelope / 2**0.5).unsqueeze(-1), centre, nodes,
                     need_tensors=need, earlier=earlier)
        # reference: e3nn's modules on e3nn's layout; environment G_i = sum_k u(r_ik) w(x_ik) Y(r_ik)
        # with one weight per channel and degree l, for all 2l + 1 components of l
        weights = (layer.env_weights(latents) * envelope.unsqueeze(-1)).view(edges, layer.num_tensor, -1)
        per_component = torch.cat([weights[:, :, l : l + 1].expand(-1, -1, ir.dim) for l, (_, ir) in enumerate(model.network.sh_irreps)], dim=-1)
        environment = from_channels(scatter_sum(per_component * sh.unsqueeze(1), centre, nodes), layer.env_irreps) * 0.5
        products = layer.tp(tensors, environment[centre])
        scalars = torch.cat([products[:, sl] for (_, ir), sl in zip(layer.mid_irreps, layer.mid_irreps.slices()) if ir == o3.Irrep("0e")], dim=-1)
        reference_latents = (latents + layer.latent_mlp(torch.cat([*earlier, latents, scalars], dim=-1))) * (envelope.unsqueeze(-1) / 2**0.5)
        torch.testing.assert_close(ours[0], reference_latents, rtol=1e-12, atol=1e-12)
        outputs = [(ours[0], reference_latents)]
        if need:
            reference_tensors = layer.linear(products)
            torch.testing.assert_close(from_channels(ours[1], layer.irreps_out), reference_tensors, rtol=1e-12, atol=1e-12)
            outputs.append((from_channels(ours[1], layer.irreps_out), reference_tensors))
        ours_sum = sum((a**2).sum() for a, _ in outputs)
        reference_sum = sum((b**2).sum() for _, b in outputs)
        assert_same_derivatives(reference_sum, ours_sum, (latents, tensors), (layer.linear.weight if need else layer.env_weights.weight,))


def test_mlp_of_input_parts_equals_the_mlp_of_their_concatenation():
    """An MLP given the columns of its input as a list (summed products while trained, one
    concatenation in inference) gives the values and first and second derivatives of the
    concatenated input's."""
    from stableff.models.mlp import mlp

    torch.manual_seed(5)
    for normalized in (True, False):
        net = mlp([13, 9, 4], final_activation=True, normalized=normalized).double()
        parts = [torch.randn(6, width, dtype=torch.float64, requires_grad=True) for width in (5, 3, 5)]
        reference, ours = net(torch.cat(parts, dim=-1)), net(parts)
        torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
        assert_same_derivatives(reference, ours, tuple(parts), tuple(net.parameters()))
        net.requires_grad_(False)
        torch.testing.assert_close(net(parts), reference.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("component_major", [False, True])
def test_invariant_view_equals_per_channel_norms_with_its_gradient(component_major):
    """Scalars as they are, then the norm of every l > 0 channel, for both layouts (neighbouring
    blocks of the same l read as one); first derivatives by gradcheck (float64)."""
    irreps = o3.Irreps("3x0e+3x0o+3x1o+3x1e+3x2e+3x0e")
    view = InvariantChannels(irreps, component_major=component_major)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(11, irreps.dim, dtype=torch.float64, generator=generator, requires_grad=True)
    scalars, norms, start = [], [], 0
    for mul, ir in irreps:
        block = x[:, start : start + mul * ir.dim]
        block = block.reshape(-1, ir.dim, mul).transpose(1, 2) if component_major else block.reshape(-1, mul, ir.dim)
        (scalars if ir.l == 0 else norms).append(block[..., 0] if ir.l == 0 else block.norm(dim=-1))
        start += mul * ir.dim
    torch.testing.assert_close(view(x), torch.cat(scalars + norms, dim=1), rtol=1e-10, atol=1e-10)  # eps 1e-12 under the sqrt
    assert view.num_scalars == 9 and view(x).shape[1] == 18
    assert torch.autograd.gradcheck(view, (x,))


@pytest.mark.parametrize("component_major", [True, False])
@pytest.mark.parametrize("count", [3, 12])
def test_scatter_sum_and_view_equals_a_sum_and_a_view_of_the_leading_rows(count, component_major):
    """The fused sum-and-invariant-view NequIP uses for its edge features: same values and first
    derivatives as scatter_sum plus InvariantChannels of src[:count]; the sum's second derivatives
    too (the force loss differentiates forces again); the view refuses a second derivative."""
    from stableff.models.scatter import scatter_sum
    from stableff.models.invariants import scatter_sum_and_view

    irreps = o3.Irreps("2x0e+2x1o+2x1e+2x2e")
    view = InvariantChannels(irreps, component_major=component_major)
    generator = torch.Generator().manual_seed(4)
    src = torch.randn(12, irreps.dim, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.randint(0, 4, (12,), generator=generator)
    summed, invariants = scatter_sum_and_view(src, index, 4, view, count)
    torch.testing.assert_close(summed, scatter_sum(src, index, 4))
    torch.testing.assert_close(invariants, view(src[:count]))
    assert invariants.shape == (count, 2 + 6)

    def both(x):
        return scatter_sum_and_view(x.pow(2), index, 4, view, count)

    assert torch.autograd.gradcheck(both, (src,))
    assert torch.autograd.gradgradcheck(lambda x: both(x)[0], (src,))
    # a loss on both outputs, its gradient: the view's part added into the sum's
    weights = torch.randn(count, 8, dtype=torch.float64, generator=generator)
    ours = torch.autograd.grad((both(src)[0].pow(2).sum() + (both(src)[1] * weights).sum()), src)[0]
    reference = torch.autograd.grad(scatter_sum(src.pow(2), index, 4).pow(2).sum() + (view(src.pow(2)[:count]) * weights).sum(), src)[0]
    torch.testing.assert_close(ours, reference)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(both(src)[1].sum(), src, create_graph=True)


def test_a_large_scatter_sum_keeps_only_its_index_for_the_backward():
    """Above SAVED_INDEX_ONLY_ABOVE elements the backward of scatter_sum(index_only=True) holds the
    index, not the source (autograd's own index_add_ node holds both), with the same values and
    first and second derivatives to the bit as the plain operation."""
    from stableff.models import scatter

    generator = torch.Generator().manual_seed(5)
    rows = scatter.SAVED_INDEX_ONLY_ABOVE // 16 + 1
    base = torch.randn(rows, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    index = torch.randint(0, 50, (rows,), generator=generator)
    weights = torch.randn(50, 16, dtype=torch.float64, generator=generator)

    def derivatives(function):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
            summed = function(base.pow(3), index, 50)
        first = torch.autograd.grad((summed.pow(2) * weights).sum(), base, create_graph=True)[0]
        second = torch.autograd.grad(first.pow(2).sum(), base)[0]
        return summed, first, second, saved

    def plain(src, index, dim_size):
        return src.new_zeros((dim_size, src.shape[1])).index_add_(0, index, src)

    ours, reference = derivatives(lambda *args: scatter.scatter_sum(*args, index_only=True)), derivatives(plain)
    for a, b in zip(ours[:3], reference[:3]):
        assert torch.equal(a, b)
    assert (rows, 16) in reference[3] and ours[3].count((rows, 16)) == reference[3].count((rows, 16)) - 1  # pow's input stays


@pytest.mark.parametrize("name", ["nequip", "allegro"])
def test_constants_are_exact_in_a_model_built_in_float32_and_cast(name):
    """The products' constants (Wigner 3j symbols times path weights) of a model built in float32 and
    cast to float64 are those of one built in float64, not float32 roundings: a float64 model is then
    equivariant to float64 precision (test_physics), whichever dtype it was built in."""
    hyper = dict(type_numbers=[1, 8], avg_num_neighbors=4.0, num_layers=3, l_max=2, parity=True, num_bessels=4)
    hyper.update(num_features=5) if name == "nequip" else hyper.update(num_scalar_features=6, num_tensor_features=3)
    cast, exact = build_model(name, **hyper).double(), build_float64(name, **hyper)
    constants, exact_buffers = [(n, b) for n, b in cast.named_buffers() if n.endswith("constants")], dict(exact.named_buffers())
    assert constants
    for n, a in constants:
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, exact_buffers[n], rtol=1e-15, atol=1e-15, msg=n)
    # and as e3nn holds them when cast: rounded (what the tests above avoid by building in float64)
    e3nn_cast = [b for n, b in cast.named_buffers() if "_w3j_" in n]
    e3nn_exact = [b for n, b in exact.named_buffers() if "_w3j_" in n]
    assert any(not torch.equal(a, b) for a, b in zip(e3nn_cast, e3nn_exact))
