"""The PEPITA update of one projection W_l: h_{l-1} -> h_l (neurosim.protocols.pepita runs
the two passes and provides the signals):

    hidden layer:  G = (h_l - h_l^mod) (h_{l-1}^mod)^T / B
    output layer:  G = e_out (h_{L-1}^mod)^T / B              (e_out: the signal "error")
    Hebbian variant (``hebbian = true``, hidden layers):
                   G = (h_l h_{l-1}^T - h_l^mod (h_{l-1}^mod)^T) / B
    dW = -lr lr_scale (G + weight_decay W)
    momentum as coded by the authors:  v <- momentum v + dW,  W <- W + v

with h_0^mod = x_mod, activities after the nonlinearity and after dropout (the same masks in
both passes), B the batch size and no derivative factor. The output layer is the projection
onto the protocol's output population (the signal "output"). The velocity v is the rule's
state (checkpointed).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import ConfigError
from .base import PlasticityRule, SynapseContext, register_rule


def _number(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}: a finite number >= {minimum:g}, got {value!r}.")
    return float(value)


@register_rule
class Pepita(PlasticityRule):
    """PEPITA's local update (neurosim.plasticity.pepita): dW = -lr lr_scale ((h - h^mod)
    (h_prev^mod)^T / B + weight_decay W) for hidden layers, e_out (h_prev^mod)^T / B for the
    output layer, with the authors' momentum v <- m v + dW, W <- W + v."""

    name = "pepita"
    needs_phases = ("standard", "modulated")

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 hebbian: bool = False):
        self.lr = _number(lr, "lr")
        self.momentum = _number(momentum, "momentum")
        self.weight_decay = _number(weight_decay, "weight_decay")
        if not isinstance(hebbian, bool):
            raise ConfigError(f"hebbian: true or false, got {hebbian!r}.")
        self.hebbian = hebbian
        self.velocity: torch.Tensor | None = None

    def gradient(self, ctx: SynapseContext) -> torch.Tensor:
        """G of the module docstring (n_post x n_pre)."""
        pre = ctx.pre("modulated")
        if ctx.projection.target == ctx.signal("output"):
            return ctx.signal("error").T @ pre / ctx.batch_size
        if self.hebbian:
            return (ctx.post("standard").T @ ctx.pre("standard")
                    - ctx.post("modulated").T @ pre) / ctx.batch_size
        return (ctx.post("standard") - ctx.post("modulated")).T @ pre / ctx.batch_size

    def update(self, ctx: SynapseContext) -> None:
        """W += v with v <- momentum v + dW (see the module docstring)."""
        step = self.gradient(ctx)
        if self.weight_decay:
            step.add_(ctx.weight, alpha=self.weight_decay)
        step.mul_(-self.lr * ctx.lr_scale)
        if self.momentum:
            if self.velocity is None or self.velocity.shape != step.shape:
                self.velocity = torch.zeros_like(step)
            self.velocity.mul_(self.momentum).add_(step)
            step = self.velocity
        ctx.weight.add_(step)

    def state_dict(self) -> dict:
        """The momentum velocity v (empty before the first step or without momentum)."""
        return {"velocity": self.velocity} if self.velocity is not None else {}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore v."""
        unknown = set(state) - {"velocity"}
        if unknown:
            raise ConfigError(f'rule "pepita": the checkpoint holds unknown state {sorted(unknown)}.')
        self.velocity = torch.as_tensor(state["velocity"]).clone() if "velocity" in state \
            else None
