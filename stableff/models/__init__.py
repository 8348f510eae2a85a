"""Models behind one interface (see :class:`stableff.models.base.ForceField`)."""

from stableff.models.base import ForceField
from stableff.models.allegro import Allegro
from stableff.models.dimenet_like import DimeNetPPLike
from stableff.models.gemnet import GemNetT
from stableff.models.nequip import NequIP

MODELS = {"nequip": NequIP, "allegro": Allegro, "gemnet_t": GemNetT, "dimenet_pp_like": DimeNetPPLike}


def build_model(name: str, **hyperparameters) -> ForceField:
    """Build a model by name ("nequip", ...) with its hyper-parameters."""
    if name not in MODELS:
        from stableff.errors import ConfigError

        raise ConfigError(f"model.name: unknown model '{name}' (choose from {', '.join(MODELS)})")
    return MODELS[name](**hyperparameters)


__all__ = ["ForceField", "NequIP", "Allegro", "GemNetT", "DimeNetPPLike", "MODELS", "build_model"]
