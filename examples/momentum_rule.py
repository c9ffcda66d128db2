"""A user-written plasticity rule: equilibrium propagation with momentum and weight decay.

This is the worked example of docs/plasticity.md. It depends only on neurosim's public
plasticity protocol and can be used from a model file in two ways:

    rules = [{ type = "momentum_rule:MomentumEP", lr = 0.3, momentum = 0.9 }]   # import path
    rules = [{ type = "ep_momentum", lr = 0.3, momentum = 0.9 }]  # after `import momentum_rule`

The import-path form works from the command line too (``neurosim train`` / ``neurosim
resume``) as long as this directory is on the Python path, e.g. ``PYTHONPATH=examples``.

For a projection W: pre -> post the rule computes, with the local prediction error of the
postsynaptic population ``e = r_post - W r_pre`` in each phase (pre-update W):

    g = (1 / beta) [ <e^beta (r_pre^beta)^T> - <e^0 (r_pre^0)^T> ] - weight_decay * W
    v <- momentum * v + g
    W <- W + lr * lr_scale * v

<.> is the mean over the mini-batch, beta the signed nudge of the nudged phase, lr_scale the
epoch's learning-rate factor. With momentum = 0 and weight_decay = 0 this is exactly the
built-in ``ep_contrastive`` rule. The velocity v is rule state: it is saved in every training
checkpoint (run.h5, group /rules/<projection>.<index>/velocity) and restored on resume.
"""
from __future__ import annotations

from typing import Mapping

import torch

from neurosim.errors import ConfigError
from neurosim.plasticity import PlasticityRule, SynapseContext, register_rule


@register_rule
class MomentumEP(PlasticityRule):
    name = "ep_momentum"                 # the `type` of the rule in model files
    needs_phases = ("nudged", "free")    # the phases it reads

    def __init__(self, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        # keep constructor arguments as attributes of the same name: repr() and config() use them
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.velocity: torch.Tensor | None = None   # created at the first update

    def update(self, ctx: SynapseContext) -> None:
        if ctx.beta == 0:                # no nudge, no learning signal
            return
        W = ctx.weight                   # (n_post x n_pre), the live weight: change it in place
        grad = torch.zeros_like(W)
        for phase, sign in (("nudged", +1.0), ("free", -1.0)):
            pre, post = ctx.pre(phase), ctx.post(phase)    # (batch x n_pre), (batch x n_post)
            error = post - pre @ W.T                       # e = r_post - W r_pre, per sample
            grad += sign * (error.T @ pre) / ctx.batch_size
        grad /= ctx.beta
        if self.weight_decay:
            grad -= self.weight_decay * W
        if self.velocity is None:
            self.velocity = torch.zeros_like(W)
        elif self.velocity.device != W.device or self.velocity.dtype != W.dtype:
            self.velocity = self.velocity.to(W)   # restored checkpoints come back on the CPU
        self.velocity.mul_(self.momentum).add_(grad)
        W.add_(self.velocity, alpha=self.lr * ctx.lr_scale)

    # ---- checkpoints: everything needed to continue exactly where the run stopped
    def state_dict(self) -> dict:
        return {} if self.velocity is None else {"velocity": self.velocity.clone()}

    def load_state_dict(self, state: Mapping) -> None:
        unknown = set(state) - {"velocity"}
        if unknown:
            raise ConfigError(f"ep_momentum: the checkpoint holds unexpected rule state "
                              f"{sorted(unknown)}; was it written by another rule?")
        self.velocity = torch.as_tensor(state["velocity"]).clone() if "velocity" in state else None
