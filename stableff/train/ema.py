"""Exponential moving average of model weights (used for validation and the saved model)."""

from __future__ import annotations

import torch


class ExponentialMovingAverage:
    """shadow <- decay * shadow + (1 - decay) * weight after each optimiser step.

    The effective decay ramps up as min(decay, (1 + n) / (10 + n)) over the first updates so early
    weights do not dominate.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for key, value in model.state_dict().items():
            if key in self.shadow:
                self.shadow[key].mul_(decay).add_(value.detach(), alpha=1 - decay)

    def averaged_state_dict(self, model: torch.nn.Module) -> dict:
        state = model.state_dict()
        return {k: (self.shadow[k].clone() if k in self.shadow else v.clone()) for k, v in state.items()}

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
