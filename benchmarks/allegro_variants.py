"""stableff's Allegro with one of upstream Allegro's (nequip-allegro 0.8) design choices in place of
its own: the hypotheses for the accuracy-per-step gap, trained on accuracy_per_step.py's plan.

    python benchmarks/accuracy_per_step.py --model allegro --variant env_head --stableff-only [--seed S]

These are experiments, not models stableff offers: each builds the benchmark's stableff model as it
was when they were measured (Allegro revision 3: the NequIP paper's Bessel scale) and changes one thing (``upstream_layer*``: upstream's whole layer structure), so that a difference in
held-out error after the same steps can be put on that change. Upstream's choices the variants take:

* ``env_head``: the next layer's environment weights are a second output head of this layer's
  latent MLP (read off its hidden layer), not a linear map of the new latents.
* ``channel_path_weights``: the tensor product's outputs are weighted per channel and path
  (upstream's contraction with path-channel coupling), not mixed across channels by a Linear.
* ``scaled_weights``: every MLP and Linear weight is stored at unit scale and multiplied by
  1/sqrt(fan_in) in the forward pass (upstream's ScalarLinearLayer): the same initial model, but
  Adam's steps on the weights shrink by that factor.
* ``frozen_scale_shift``: the per-species energy scale and shift are not trained (upstream's default).
* ``upstream_layer``: upstream's layer structure at once: the two-body MLP's linear output projected
  linearly to the first latents and the first environment weights, per-channel path weights,
  each latent MLP's linear output is the new latents (no residual, no envelope) and the next
  environment weights (a second head); stableff's biases and weight scale stay.
* ``upstream_layer_weights``: ``upstream_layer`` with upstream's weights too: no biases, and
  ``scaled_weights``'s unit-scale parametrisation.
* ``linear_two_body``: the two-body latents are the two-body MLP's linear output (upstream projects
  its scalar embedding linearly), not passed through a final SiLU; the same initial weights.
* ``unnormalised_paths``: ``channel_path_weights`` with upstream's scale of the tensor track: each
  output sums its paths (unit-variance weights) without dividing by the square root of their
  number, as upstream's contraction does (e3nn's Linear divides; 1 or 2 paths per output here).
* ``upstream_layer_unnormalised``: ``upstream_layer`` with that scale of the tensor track.
* ``halved_edge_sum``: each atom's sum of edge energies also divided by sqrt(2), as upstream's
  edge-energy sum does (a force on atom i takes both dE_ij/dr and dE_ji/dr).
* ``upstream_model``: every one of upstream's choices above at once: ``upstream_layer_weights``
  with the unnormalised sum over paths, edge energies not multiplied by the envelope, and the
  sqrt(2) of the edge-energy sum (the two-body embedding stays stableff's MLP of one-hot species
  and Bessel basis, projected linearly).
* ``product_two_body``: upstream's two-body embedding (TwoBodyBesselScalarEmbed): the Bessel basis
  projected linearly (no bias) to the scalar width and multiplied element-wise by learned species
  embeddings (centre | neighbour halves, N(0, 1) as torch.nn.Embedding draws them), then the
  two-body MLP; stableff's MLP reads one-hot species and the basis side by side instead, so a
  species pair's radial function must come from the MLP's nonlinearity. Everything else stays.
* ``envelope_once``: each quantity carries the cutoff envelope u(r) once, where smoothness needs it
  (the environment's weights u(r_ik) and the edge energy u(r_ij); the Bessel basis has its own
  cutoff): the two-body latents and each layer's residual are not multiplied by u(r) as the
  paper's layer does. stableff's latents of an edge at r therefore carry u(r) to a power of up to
  the layer count + 1, upstream's not at all (its bias-free MLPs of a basis that vanishes at r_max
  vanish there too), which weakens what edges in the outer half of the cutoff sphere learn.
* ``upstream_bessel``: the Bessel basis at upstream's scale, sin(n pi x) / (pi x) with x = r / r_max
  (nequip's BesselEdgeLengthEncoding), instead of stableff's sqrt(2 / r_max) sin(n pi r / r_max) / r:
  the same functions times r_max / (pi sqrt(2 / r_max)) (2.5x at r_max = 5 A), so that the
  two-body MLP's radial inputs are about as large as its one-hot species inputs are. It closed the
  gap to upstream (five seeds) and became Allegro's default (revision 4, ``bessel_normalization``);
  the variant stays to reproduce its stored runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.utils.parametrize as parametrize

from stableff.data import keys
from stableff.models.allegro import Allegro, weighted_spherical_harmonics
from stableff.models.mlp import NormalizedMLP, ScaledSiLU, mlp, normal_init
from stableff.models.scatter import scatter_sum


class _EnvironmentHeadAllegro(Allegro):
    """Layer l's latent MLP also outputs layer l+1's environment weights (its last Linear has
    num_scalar + weights outputs); the first layer's come from its ``env_weights`` Linear."""

    def __init__(self, **hyper):
        super().__init__(**hyper)
        num_scalar = hyper["num_scalar_features"]
        hidden = [hyper["latent_mlp_width"]] * hyper["latent_mlp_depth"]
        for layer, following in zip(self.layers[:-1], self.layers[1:]):
            inputs = layer.latent_mlp[0].in_features
            layer.latent_mlp = mlp([inputs] + hidden + [num_scalar + following.env_weights.out_features], normalized=True)
            following.env_weights = None  # read off the previous layer's head
        self.num_scalar = num_scalar

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        centre, neighbour = batch[keys.EDGE_INDEX]
        species = batch[keys.SPECIES]
        num_atoms, num_edges = species.shape[0], edge_lengths.shape[0]
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)
        radial, envelope = self.radial(edge_lengths)
        sh = self.spherical_harmonics(edge_vectors / edge_lengths.unsqueeze(-1))
        latents = self.two_body([onehot.index_select(0, centre), onehot.index_select(0, neighbour), radial]) * envelope.unsqueeze(-1)
        tensors = weighted_spherical_harmonics(self.initial_weights, self.initial_rows, latents, sh)
        sh_envelope = sh * (envelope * self.inv_sqrt_neighbors).unsqueeze(-1)
        residual_scale = (envelope * (1.0 / math.sqrt(2.0))).unsqueeze(-1)
        latents, env_weights = self.start(latents)
        states, earlier = [], []
        for index, layer in enumerate(self.layers):
            last = index == len(self.layers) - 1
            weighted = env_weights.index_select(1, layer.env_rows).view(num_edges, self.num_tensor, -1) * sh_envelope.unsqueeze(1)
            environment = scatter_sum(weighted, centre, num_atoms)
            pairs = layer.channel_tp.pairs(tensors, environment.index_select(0, centre))
            folded, num_scalars = layer.folded_matrix(not last)
            out = pairs.reshape(num_edges, -1) @ folded
            scalars, new_tensors = out.split([num_scalars, out.shape[1] - num_scalars], dim=1)
            update = layer.latent_mlp([*earlier, latents, scalars])
            if not last:
                update, env_weights = update.split([self.num_scalar, update.shape[1] - self.num_scalar], dim=1)
            earlier = earlier + [latents]
            latents = self.advance(latents, update, residual_scale)
            tensors = None if last else new_tensors.reshape(num_edges, self.num_tensor, -1)
            states.append(latents)
        edge_energy = self.readout([*earlier, latents]).squeeze(-1) * (self.readout_factor(envelope) * self.inv_sqrt_neighbors)
        return scatter_sum(edge_energy, centre, num_atoms), (states if edge_states else None)

    def readout_factor(self, envelope):
        """What each edge energy is multiplied by besides 1/sqrt(<n>)."""
        return envelope

    def start(self, embedding):
        """(first latents, first environment weights) from the two-body embedding."""
        return embedding, self.layers[0].env_weights(embedding)

    def advance(self, latents, update, residual_scale):
        """The next latents from the MLP's update."""
        return (latents + update) * residual_scale


class _UpstreamLayerAllegro(_EnvironmentHeadAllegro):
    """``upstream_layer`` (module docstring): built on the environment-head variant."""

    def __init__(self, normalised_paths: bool = True, upstream_readout: bool = False, **hyper):
        super().__init__(**hyper)
        self.upstream_readout = upstream_readout
        _drop_final_activation(self)
        self.projection = torch.nn.Linear(self.num_scalar, self.num_scalar + self.layers[0].env_weights.out_features)
        normal_init(self.projection)
        self.layers[0].env_weights = None
        _channel_path_weights(self, normalised_paths)

    def start(self, embedding):
        return self.projection(embedding).split([self.num_scalar, self.projection.out_features - self.num_scalar], dim=1)

    def readout_factor(self, envelope):
        # ``upstream_model``: no envelope (bias-free MLPs of features that vanish at the cutoff)
        # and upstream's sqrt(2) of the edge-energy sum
        return torch.full_like(envelope, 1.0 / math.sqrt(2.0)) if self.upstream_readout else envelope

    def advance(self, latents, update, residual_scale):
        return update


class _EnvelopeOnceAllegro(Allegro):
    """``envelope_once`` (module docstring): Allegro.atomic_energies without the envelope on the
    two-body latents and the residual."""

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        centre, neighbour = batch[keys.EDGE_INDEX]
        species = batch[keys.SPECIES]
        num_atoms = species.shape[0]
        onehot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)
        radial, envelope = self.radial(edge_lengths)
        sh = self.spherical_harmonics(edge_vectors / edge_lengths.unsqueeze(-1))
        latents = self.two_body([onehot.index_select(0, centre), onehot.index_select(0, neighbour), radial])
        tensors = weighted_spherical_harmonics(self.initial_weights, self.initial_rows, latents, sh)
        sh_envelope = sh * (envelope * self.inv_sqrt_neighbors).unsqueeze(-1)
        residual_scale = torch.full_like(envelope, 1.0 / math.sqrt(2.0)).unsqueeze(-1)
        states, earlier = [], []
        for index, layer in enumerate(self.layers):
            previous = latents
            latents, tensors = layer(latents, tensors, sh_envelope, residual_scale, centre, num_atoms,
                                     need_tensors=index < len(self.layers) - 1, earlier=earlier)
            earlier = earlier + [previous]
            states.append(latents)
        edge_energy = self.readout([*earlier, latents]).squeeze(-1) * (envelope * self.inv_sqrt_neighbors)
        return scatter_sum(edge_energy, centre, num_atoms), (states if edge_states else None)


class _HalvedEdgeSumAllegro(Allegro):
    """``halved_edge_sum`` (module docstring)."""

    def atomic_energies(self, batch, edge_vectors, edge_lengths, edge_states):
        energies, states = super().atomic_energies(batch, edge_vectors, edge_lengths, edge_states)
        return energies * (1.0 / math.sqrt(2.0)), states


class _ProductTwoBody(torch.nn.Module):
    """``product_two_body`` (module docstring): called as stableff's two-body MLP is, on
    [one-hot centre, one-hot neighbour, radial basis]."""

    def __init__(self, num_species: int, num_bessels: int, width: int, hidden: int, out: int):
        super().__init__()
        self.centre = torch.nn.Embedding(num_species, width // 2)
        self.neighbour = torch.nn.Embedding(num_species, width - width // 2)
        self.basis = normal_init(torch.nn.Linear(num_bessels, width, bias=False))
        self.mlp = mlp([width, hidden, out], final_activation=True, normalized=True)

    def forward(self, parts):
        onehot_centre, onehot_neighbour, radial = parts
        types = torch.cat([onehot_centre @ self.centre.weight, onehot_neighbour @ self.neighbour.weight], dim=-1)
        return self.mlp(types * self.basis(radial))


class _ScaledRadial(torch.nn.Module):
    """``upstream_bessel`` (module docstring): stableff's radial embedding, its basis times a constant."""

    def __init__(self, radial: torch.nn.Module):
        super().__init__()
        self.inner = radial
        self.factor = radial.bessel.r_max / (math.pi * radial.bessel.prefactor)

    def forward(self, r):
        basis, envelope = self.inner(r)
        return basis * self.factor, envelope


def _drop_final_activation(model: Allegro) -> None:
    layers = list(model.two_body)
    if not isinstance(layers[-1], ScaledSiLU):
        raise SystemExit("the two-body MLP no longer ends with its activation")
    model.two_body = NormalizedMLP(*layers[:-1])


class _UnitScale(torch.nn.Module):
    """weight = theta * alpha, theta stored (``right_inverse``: the same initial weight)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, theta):
        return theta * self.alpha

    def right_inverse(self, weight):
        return weight / self.alpha


def _unit_scale(model: Allegro) -> None:
    for module in list(model.modules()):
        if isinstance(module, torch.nn.Linear):
            parametrize.register_parametrization(module, "weight", _UnitScale(module.in_features**-0.5))


def _channel_path_weights(model: Allegro, normalised: bool = True) -> None:
    """Each layer's Linear after the product becomes per-channel path weights w[path, u] (unit
    variance; e3nn's fan-in factor times sqrt(U), since each output now sums paths, not paths x
    channels; ``normalised=False``: factor 1, upstream's unnormalised sum over paths); the Linear's
    own weight is no longer used."""
    for layer in model.layers:
        linear = layer.channel_linear
        layer.path_weights = torch.nn.Parameter(torch.randn(linear.constants.shape[0], linear.mul))
        layer.linear.weight.requires_grad_(False)
        eye = torch.eye(linear.mul)
        # the Linear's constants are its path weight (1/sqrt(fan-in)) where a path maps a component
        ones = None if normalised else (linear.constants != 0)
        scale = linear.mul**0.5 if normalised else 1.0

        def matrix(_weight, linear=linear, layer=layer, eye=eye, ones=ones, scale=scale):
            constants = linear.constants if ones is None else ones.to(linear.constants)
            per_channel = torch.einsum("ku,kio,uw->uiwo", layer.path_weights, constants, eye.to(linear.constants))
            return (per_channel * scale).reshape(linear.shape)

        linear.matrix = matrix
        # always rebuilt (the frozen Linear weight would otherwise let the folded matrix be kept)
        layer.folded_matrix = lambda need_tensors, layer=layer: layer._fold(need_tensors)


def _variant_network(name: str, **hyper) -> Allegro:
    """The benchmark's Allegro with upstream's choice ``name`` (module docstring), each on the model
    they were measured on: Allegro revision 3, the NequIP paper's Bessel scale (``upstream_bessel``
    adds upstream's, which is revision 4's default)."""
    if name == "env_head":
        return _EnvironmentHeadAllegro(**hyper)
    if name == "halved_edge_sum":
        return _HalvedEdgeSumAllegro(**hyper)
    if name == "envelope_once":
        return _EnvelopeOnceAllegro(**hyper)
    if name in ("upstream_layer", "upstream_layer_weights", "upstream_layer_unnormalised", "upstream_model"):
        model = _UpstreamLayerAllegro(normalised_paths=name not in ("upstream_layer_unnormalised", "upstream_model"),
                                      upstream_readout=name == "upstream_model", **hyper)
        if name in ("upstream_layer_weights", "upstream_model"):
            for module in list(model.modules()):
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.register_parameter("bias", None)
            _unit_scale(model)
        return model
    model = Allegro(**hyper)
    if name in ("channel_path_weights", "unnormalised_paths"):
        _channel_path_weights(model, normalised=name == "channel_path_weights")
    elif name == "scaled_weights":
        _unit_scale(model)
    elif name == "frozen_scale_shift":
        pass  # the scale and shift are frozen once the network is composed (build_variant)
    elif name == "linear_two_body":
        _drop_final_activation(model)
    elif name == "upstream_bessel":
        model.radial = _ScaledRadial(model.radial)
    elif name == "product_two_body":
        width = hyper["num_scalar_features"]
        model.two_body = _ProductTwoBody(model.num_species, hyper["num_bessels"], width, hyper["two_body_mlp_width"], width)
    else:
        raise SystemExit(f"unknown Allegro variant {name!r} (choose from {', '.join(VARIANTS)})")
    return model


def build_variant(name: str, energy_scale=1.0, energy_shift=0.0, **hyper):
    """The benchmark's Allegro with upstream's choice ``name`` (module docstring), each on the model
    they were measured on: Allegro revision 3, the NequIP paper's Bessel scale (``upstream_bessel``
    adds upstream's, which is revision 4's default); composed with its scale, shift and priors."""
    import inspect

    from stableff.models import compose
    from stableff.models.priors import PRIOR_HYPERPARAMETERS

    hyper.setdefault("bessel_normalization", "sqrt2_rmax")
    priors = {k: hyper.pop(k) for k in list(hyper) if k in PRIOR_HYPERPARAMETERS}
    network = _variant_network(name, **hyper)
    bound = inspect.signature(Allegro).bind(**hyper)
    bound.apply_defaults()
    model = compose(network, energy_scale, energy_shift, **{k: v for k, v in bound.arguments.items() if k != "type_numbers"}, **priors)
    if name == "frozen_scale_shift":
        model.scale_shift.scale.requires_grad_(False)
        model.scale_shift.shift.requires_grad_(False)
    return model


VARIANTS = ("env_head", "channel_path_weights", "scaled_weights", "frozen_scale_shift", "linear_two_body", "upstream_layer", "upstream_layer_weights",
            "unnormalised_paths", "upstream_layer_unnormalised", "halved_edge_sum", "upstream_model",
            "product_two_body", "envelope_once", "upstream_bessel")
