"""The PEPITA update of one projection W_l: h_{l-1} -> h_l (neurosim.protocols.pepita runs
the two passes and provides the signals):

    hidden layer:  G = (h_l - h_l^mod) (h_{l-1}^mod)^T / B
    output layer:  G = e_out (h_{L-1}^mod)^T / B              (e_out: the signal "error")
    Hebbian variant (``hebbian = true``, hidden layers):
                   G = (h_l h_{l-1}^T - h_l^mod (h_{l-1}^mod)^T) / B
    dW = -lr lr_scale (G + weight_decay W)
    momentum as coded by the authors:  v <- momentum v + dW,  W <- W + v

with h_0^mod = x_mod, activities after the nonlinearity and after dropout (the same masks in
both passes), B the batch size and no derivative factor. On a conv2d projection (the
convolutional model) every outer product ``post pre^T`` is the patch-wise one: post at each
output position times the input patch under it, averaged over the output positions
(``Projection.outer``). The output layer is the projection
onto the protocol's output population (the signal "output"). The velocity v is the rule's
state (checkpointed).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import ConfigError
from .base import PlasticityRule, SynapseContext, register_rule


RESCALE_BELOW = 1e-12     # the velocity's factor c is folded into V below this


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
    spatial = True          # conv2d projections: patch-wise outer products (Projection.outer)
    ensemble_ready = True   # the velocity stacked per member

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 hebbian: bool = False):
        self.lr = _number(lr, "lr")
        self.momentum = _number(momentum, "momentum")
        if self.momentum >= 1:
            raise ConfigError(f"momentum: a number in [0, 1), got {momentum!r}.")
        self.weight_decay = _number(weight_decay, "weight_decay")
        if not isinstance(hebbian, bool):
            raise ConfigError(f"hebbian: true or false, got {hebbian!r}.")
        self.hebbian = hebbian
        self.velocity: torch.Tensor | None = None      # V, with the velocity v = c V
        self.velocity_scale = 1.0                         # c
        self.owner: str | None = None

    def setup(self, net, owner) -> None:
        """One rule instance serves one projection (its velocity is that projection's)."""
        if self.owner is not None and self.owner != owner.name:
            raise ConfigError(f'rule "pepita" is attached to projections "{self.owner}" and '
                              f'"{owner.name}"; give each projection its own rule (a table in a '
                              "model file, or a new Pepita(...) per projection in Python).")
        self.owner = owner.name

    def update(self, ctx: SynapseContext) -> None:
        """W += v with v <- momentum v + dW (see the module docstring); dW = -lr lr_scale G is
        accumulated by matrix products straight into the velocity (or W), with no G in
        memory. The velocity is kept as v = c V: the momentum decay scales the number c, not
        the matrix (one pass over W fewer per step); V absorbs c when it gets small."""
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
        if not self.momentum:
            if self.weight_decay:
                weight.mul_(1.0 - rate * self.weight_decay)
            for post, pre_, alpha in terms:
                ctx.projection.add_outer_(weight, post, pre_, alpha)
            return
        if self.velocity is None:
            self.velocity, self.velocity_scale = torch.zeros_like(weight), 1.0
        elif self.velocity.shape != weight.shape:
            raise ConfigError(f'rule "pepita" on "{ctx.projection.name}": its velocity has shape '
                              f"{tuple(self.velocity.shape)}, the weights {tuple(weight.shape)}; "
                              "the checkpoint and the model disagree.")
        elif self.velocity.device != weight.device or self.velocity.dtype != weight.dtype:
            self.velocity = self.velocity.to(weight)          # a checkpoint loads on the CPU
        c = self.velocity_scale * self.momentum            # v_new = m c V + dW = c (V + dW / c)
        if c < RESCALE_BELOW:
            self.velocity.mul_(c)
            c = 1.0
        for post, pre_, alpha in terms:
            ctx.projection.add_outer_(self.velocity, post, pre_, alpha / c)
        if self.weight_decay:
            self.velocity.add_(weight, alpha=-rate * self.weight_decay / c)
        self.velocity_scale = c
        weight.add_(self.velocity, alpha=c)

    def state_dict(self) -> dict:
        """The momentum velocity v = c V as V and c (empty before the first step or without
        momentum)."""
        if self.velocity is None:
            return {}
        return {"velocity": self.velocity, "velocity_scale": self.velocity_scale}

    def stack_state(self, states: list) -> None:
        """The members' velocities V stacked (their c is the same number: it depends only on
        the momentum and the steps taken; otherwise each V absorbs its c)."""
        if not any(states):
            self.velocity, self.velocity_scale = None, 1.0
            return
        if not all(states):
            raise ConfigError('rule "pepita": some ensemble members have a momentum velocity '
                              "and some do not; resume the members one by one to the same "
                              "epoch first.")
        scales = [float(s.get("velocity_scale", 1.0)) for s in states]
        fold = len(set(scales)) > 1
        self.velocity = torch.stack([torch.as_tensor(s["velocity"]) * (c if fold else 1.0)
                                     for s, c in zip(states, scales)])
        self.velocity_scale = 1.0 if fold else scales[0]

    def member_states(self, count: int) -> list:
        """Member k's V (a view of the stacked one) and the shared c."""
        if self.velocity is None:
            return [{} for _ in range(count)]
        return [{"velocity": self.velocity[k], "velocity_scale": self.velocity_scale}
                for k in range(count)]

    def load_state_dict(self, state: Mapping) -> None:
        """Restore V and c (c = 1 when absent)."""
        unknown = set(state) - {"velocity", "velocity_scale"}
        if unknown:
            raise ConfigError(f'rule "pepita": the checkpoint holds unknown state {sorted(unknown)}.')
        self.velocity = torch.as_tensor(state["velocity"]).clone() if "velocity" in state \
            else None
        self.velocity_scale = float(state.get("velocity_scale", 1.0))
