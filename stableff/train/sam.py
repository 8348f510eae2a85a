"""Sharpness-aware minimisation (Foret et al. 2021; ASAM, Kwon et al. 2021), the optimiser of
Allegro-Legato, which the field compares against.

One SAM step needs two gradients: at w, then at the perturbed weights w + e with
e = rho * g / ||g|| (adaptive: e = rho * w^2 g / ||w g||); the base optimiser then steps from w
with the second gradient. Each gradient is an ordinary backward of the full loss, so force training
(a double backward) works unchanged.
"""

from __future__ import annotations

import torch


class SAM(torch.optim.Optimizer):
    """Wraps a base optimiser class: ``SAM(params, torch.optim.Adam, rho=0.005, lr=...)``.

    Use: backward -> ``first_step()`` -> backward again -> ``second_step()``.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.005, adaptive: bool = False, **kwargs):
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        defaults = dict(rho=rho, adaptive=adaptive, **kwargs)
        super().__init__(params, defaults)
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _grad_norm(self) -> torch.Tensor:
        norms = [
            ((torch.abs(p) if group["adaptive"] else 1.0) * p.grad).norm(p=2)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        return torch.norm(torch.stack(norms), p=2) if norms else torch.tensor(0.0)

    @torch.no_grad()
    def first_step(self) -> None:
        """Move to w + e (the locally worst point within radius rho)."""
        grad_norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = (torch.pow(p, 2) if group["adaptive"] else 1.0) * p.grad * scale.to(p)
                p.add_(e)
                self.state[p]["e_w"] = e

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to w and step the base optimiser with the gradient taken at w + e."""
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))
        self.base_optimizer.step()

    def step(self, closure=None):
        """Full SAM step with a closure that zeroes gradients, computes the loss and backpropagates."""
        if closure is None:
            raise ValueError("SAM.step needs a closure (or call first_step/second_step yourself)")
        with torch.enable_grad():
            closure()
        self.first_step()
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def state_dict(self):
        return {"base": self.base_optimizer.state_dict()}

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups
