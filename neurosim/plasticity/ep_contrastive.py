"""Equilibrium-propagation contrastive update with local prediction errors (CorInfoMax).

For a projection W: source s -> target k, with the local error of the target's prediction
``e = r_k - W r_s`` evaluated in each phase with the pre-update W:

    dW = (lr * lr_scale / beta) [ <e^beta (r_s^beta)^T> - <e^0 (r_s^0)^T> ]

where <.> is the batch mean and beta the signed nudge of the nudged phase. Used for the
feedforward (basal) and the feedback (apical) synapses of CorInfoMax networks. When the source
is clamped (r_s^beta = r_s^0 = x) the prediction terms cancel exactly and the update is
computed as (lr * lr_scale / beta) <(r_k^beta - r_k^0) x^T>: one matrix product instead of three.
"""
from __future__ import annotations

from ..dynamics import ops
from .base import PlasticityRule, SynapseContext, register_rule


@register_rule
class EPContrastive(PlasticityRule):
    """EP contrastive rule with local prediction errors ``e = r_k - W r_s`` (W: s -> k):

        dW = (lr * lr_scale / beta) [ <e^beta (r_s^beta)^T> - <e^0 (r_s^0)^T> ]

    <.> the batch mean, beta the signed nudge; CorInfoMax's basal and apical synapses."""

    name = "ep_contrastive"
    needs_phases = ("nudged", "free")
    ensemble_ready = True

    def __init__(self, lr: float):
        self.lr = float(lr)

    def update(self, ctx: SynapseContext) -> None:
        """W += dW (above) from the "nudged" and "free" phases, the errors taken with the
        pre-update W; no change when beta = 0."""
        if not ctx.nudged:
            return
        batch = ctx.batch_size
        scale = self.lr * ctx.lr_scale / (ctx.beta * batch)   # one per member in an ensemble
        if ctx.pre_clamped:
            post = ctx.stacked_post(self.needs_phases)
            diff = post[..., :batch, :] - post[..., batch:2 * batch, :]
            ops.addmm_(ctx.weight, diff.mT, ctx.pre("free"), alpha=scale)
            return
        pre = ctx.stacked_pre(self.needs_phases)   # [r_s^beta; r_s^0]
        err = ops.addmm(ctx.stacked_post(self.needs_phases), pre, ctx.weight.mT, alpha=-1.0)
        err[..., batch:, :].neg_()                 # the free phase enters with a minus sign
        ops.addmm_(ctx.weight, err.mT, pre, alpha=scale)
