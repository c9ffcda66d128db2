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

    def update(self, ctx: SynapseContext) -> None:
        """W += v with v <- momentum v + dW (see the module docstring); dW = -lr lr_scale G is
        accumulated by matrix products straight into v (or W), with no G in memory."""
        weight, rate = ctx.weight, self.lr * ctx.lr_scale
        scale = -rate / ctx.batch_size
        pre = ctx.pre("modulated")
        if ctx.projection.target == ctx.signal("output"):
            terms = [(ctx.signal("error"), pre, scale)]
        elif self.hebbian:
            terms = [(ctx.post("standard"), ctx.pre("standard"), scale),
                     (ctx.post("modulated"), pre, -scale)]
        else:
            terms = [(ctx.post("standard") - ctx.post("modulated"), pre, scale)]
        if self.momentum:
            if self.velocity is None or self.velocity.shape != weight.shape:
                self.velocity = torch.zeros_like(weight)
            target, beta = self.velocity, self.momentum
        else:
            target, beta = weight, 1.0 - rate * self.weight_decay
        if beta != 1.0:
            target.mul_(beta)       # then beta = 1 in the products: MKL's faster path
        for post, pre_, alpha in terms:
            target.addmm_(post.T, pre_, alpha=alpha)
        if self.momentum:
            if self.weight_decay:
                target.add_(weight, alpha=-rate * self.weight_decay)
            weight.add_(target)

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
