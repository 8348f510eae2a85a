"""Models behind one interface (see :class:`stableff.models.force_field.ForceField`)."""

import inspect

from stableff.models.allegro import Allegro
from stableff.models.base import EnergyNetwork
from stableff.models.dimenet_like import DimeNetPPLike
from stableff.models.force_field import ForceField
from stableff.models.gemnet import GemNetT
from stableff.models.nequip import NequIP
from stableff.models.priors import PRIOR_HYPERPARAMETERS, build_priors

#: the energy networks by name (the one list: configs, checkpoints and the command line use it)
MODELS = {"nequip": NequIP, "allegro": Allegro, "gemnet_t": GemNetT, "dimenet_pp_like": DimeNetPPLike}
#: the model a config gets when it names none
DEFAULT_MODEL = "nequip"


def compose(network: EnergyNetwork, energy_scale=1.0, energy_shift=0.0, trainable_scale_shift: bool = True, **hyperparameters) -> ForceField:
    """A ForceField around an already built ``network``; ``hyperparameters``: the network's own
    (recorded for checkpoints) and the priors' (``zbl``, ...), which are built here."""
    priors = {k: hyperparameters.pop(k, default) for k, default in PRIOR_HYPERPARAMETERS.items()}
    recorded = {**hyperparameters, **priors}
    return ForceField(network, energy_scale, energy_shift, build_priors(network.type_numbers, network.r_max, **priors), recorded, trainable_scale_shift)


def build_model(name: str, type_numbers, energy_scale=1.0, energy_shift=0.0, **hyperparameters) -> ForceField:
    """Build a model by name ("nequip", ...): its network with the hyper-parameters (every one not
    given at the network's default, all recorded), scale and shift, and priors."""
    if name not in MODELS:
        from stableff.errors import ConfigError

        raise ConfigError(f"model.name: unknown model '{name}' (choose from {', '.join(MODELS)})")
    cls = MODELS[name]
    priors = {k: hyperparameters.pop(k) for k in list(hyperparameters) if k in PRIOR_HYPERPARAMETERS}
    bound = inspect.signature(cls).bind(type_numbers, **hyperparameters)
    bound.apply_defaults()
    own = {k: v for k, v in bound.arguments.items() if k != "type_numbers"}
    network = cls(type_numbers, **hyperparameters)
    return compose(network, energy_scale, energy_shift, **own, **priors)


__all__ = ["ForceField", "EnergyNetwork", "NequIP", "Allegro", "GemNetT", "DimeNetPPLike", "MODELS", "DEFAULT_MODEL", "build_model", "compose"]
