"""CorInfoMax lateral (inverse-correlation) update of B, without the Sherman-Morrison
denominator, as the published code runs it:

    B <- (1/lam) ( B - gamma <(B r)(B r)^T> ),     gamma = (1 - lam) / lam

with r the post-synaptic activity of the phase ``phase`` (the nudged one by default) and the
B of before the update. B tracks the inverse of the layer's correlation matrix R = <r r^T>.
"""
from __future__ import annotations

from ..dynamics import ops
from .base import PlasticityRule, SynapseContext, register_rule


@register_rule
class CorInfoMaxLateral(PlasticityRule):
    """CorInfoMax lateral update of B, which tracks the inverse of the layer's correlation
    matrix R = <r r^T> (forgetting factor ``lam``; not scaled by the lr schedule):

        B <- (1/lam) ( B - gamma <(B r)(B r)^T> ),     gamma = (1 - lam) / lam

    r the target's activity in ``phase`` (default "nudged")."""

    name = "corinfomax_lateral"
    scheduled = False
    ensemble_ready = True

    def __init__(self, lam: float, phase: str = "nudged"):
        if not 0 < lam <= 1:
            raise ValueError(f"forgetting factor lam must be in (0, 1], got {lam}")
        self.lam = float(lam)
        self.phase = phase

    @property
    def gamma(self) -> float:
        """gamma = (1 - lam) / lam."""
        return (1.0 - self.lam) / self.lam

    def update(self, ctx: SynapseContext) -> None:
        """Apply the update above to B (``ctx.weight``) in place, using B before the
        update."""
        z = ctx.post(self.phase) @ ctx.weight.mT
        ops.addmm_(ctx.weight, z.mT, z, beta=1.0 / self.lam,
                   alpha=-self.gamma / (self.lam * ctx.batch_size))
