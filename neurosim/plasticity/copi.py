"""COPI's two local rules (Ahmad, Schrader & van Gerven, TMLR 2023); the protocol
(neurosim.protocols.copi) runs the forward pass and provides the credit signals.

Network: every forward weight W_l reads a decorrelated input x_l = R_l y_{l-1} (R_l a
lateral projection onto a linear population, initialised to I), a_l = W_l x_l, y_l = f(a_l).
Batch means are written <.>; the record's phase is "forward".

Forward rule ``copi_forward`` on W_l (source: x_l, target: the layer with potential a_l and
credit delta_l from the signal "delta"):

    z_l  = a_l + delta_l                                   (target state)
    copi:    dW_l = lr ( <z_l x_l^T> - W_l diag<x_l^2> )   dW_ij = lr (<z_i x_j> - W_ij <x_j^2>)
    delta:   dW_l = lr <delta_l x_l^T>                     ("BP with decorrelation" baseline)

Its fixed point is W_ij = <z_i x_j> / <x_j^2>: each weight infers its value from local
statistics, exact once the inputs are decorrelated (then copi's dW equals the delta rule).

Decorrelation rule ``decorrelation`` on R_l (source: y_{l-1}, target: x_l = R_l y_{l-1}):

    C = <x x^T> (uncentred; ``center = true``: of x - <x>),  C_off = C with zero diagonal
    form "left" (the published results):  dR = -lr C_off R
    form "right" (the "bio" form):         dR = -lr R C_off
    ``norm_gain = true`` (follow-up): afterwards R <- s R with s = mean_b |y_b| / mean_b |x_b|,
    so the decorrelated signal keeps the norm of the layer's input.
    ``power_scaled = true`` (the reference code's ``var_scaled``): C_off's column j divided by
    <x_j^2> + 1e-5, so every layer decorrelates at the same pace whatever its activity's
    power (deep leaky-ReLU layers carry about half the power of the layer below).

``lr`` is scaled by the epoch's ``lr_scale``. Neither rule keeps state. The decorrelation
step is computed as C_off R = x^T (x R) / B - diag<x^2> R (and R C_off likewise), 2 B n^2
multiply-adds instead of the n^3 of forming C first: 8x fewer at B = 50, n = 784.
"""
from __future__ import annotations

import math

import torch

from ..dynamics import ops
from ..errors import ConfigError
from .base import PlasticityRule, SynapseContext, register_rule

__all__ = ["CopiForward", "Decorrelation", "mean_offdiagonal_correlation"]

POWER_EPS = 1e-5          # power_scaled: C_off's columns divided by <x_j^2> + this


def _rate(value, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise ConfigError(f"{key}: a finite number >= 0, got {value!r}.")
    return float(value)


def _flag(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: true or false, got {value!r}.")
    return value


def mean_offdiagonal_correlation(second_moment: torch.Tensor) -> float:
    """Mean |C_ij| / sqrt(C_ii C_jj) over i != j of a (n x n) second-moment matrix (units
    with zero power are left out); NaN for fewer than two units."""
    power = second_moment.diagonal()
    live = power > 0
    c = second_moment[live][:, live]
    n = c.shape[0]
    if n < 2:
        return math.nan
    scale = c.diagonal().rsqrt()
    corr = c * scale[:, None] * scale[None, :]
    return float((corr.abs().sum() - corr.diagonal().abs().sum()) / (n * (n - 1)))


@register_rule
class CopiForward(PlasticityRule):
    """COPI's forward rule (neurosim.plasticity.copi): dW = lr (<z x^T> - W diag<x^2>),
    z = a + delta (``mode = "copi"``), or dW = lr <delta x^T> (``mode = "delta"``)."""

    name = "copi_forward"
    batch_linear = True     # dW is a batch mean of per-sample terms (data-parallel safe)
    ensemble_ready = True
    needs_phases = ("forward",)

    def __init__(self, lr: float, mode: str = "copi"):
        self.lr = _rate(lr, "lr")
        if mode not in ("copi", "delta"):
            raise ConfigError(f'mode: "copi" (dW = lr (<z x^T> - W diag<x^2>)) or "delta" '
                              f'(dW = lr <delta x^T>, BP with decorrelation), got {mode!r}.')
        self.mode = mode

    def update(self, ctx: SynapseContext) -> None:
        """One step of the rule on the batch (module docstring)."""
        deltas = ctx.signal("delta")
        target = ctx.projection.target
        if target not in deltas:
            raise ConfigError(f'rule "copi_forward" on "{ctx.projection.name}": the protocol '
                              f'gives no credit signal for population "{target}"; attach the '
                              "rule to the forward weights W_l of the chain.")
        rate = self.lr * ctx.lr_scale
        x, delta = ctx.pre("forward"), deltas[target]
        weight = ctx.weight
        if self.mode == "delta":
            ops.addmm_(weight, delta.mT, x, alpha=rate / ctx.batch_size)
            return
        z = ctx.potential("forward") + delta
        power = (x * x).mean(dim=-2)                      # <x_j^2>
        weight.mul_((1.0 - rate * power).unsqueeze(-2))
        ops.addmm_(weight, z.mT, x, alpha=rate / ctx.batch_size)


@register_rule
class Decorrelation(PlasticityRule):
    """COPI's decorrelation rule on a lateral matrix R (neurosim.plasticity.copi):
    dR = -lr C_off R (``form = "left"``) or -lr R C_off (``"right"``), C = <x x^T> of the
    decorrelated output x = R y; options ``center``, ``norm_gain`` and ``power_scaled``."""

    name = "decorrelation"
    needs_phases = ("forward",)
    lateral = True          # marks R for the protocol (credit "fa" bypasses it)
    ensemble_ready = True

    @property
    def batch_linear(self) -> bool:
        """Whether dR is a batch mean of per-sample terms (not with the options that
        normalise by batch statistics: center, norm_gain, power_scaled)."""
        return not (self.center or self.norm_gain or self.power_scaled)

    def __init__(self, lr: float, form: str = "left", center: bool = False,
                 norm_gain: bool = False, power_scaled: bool = False):
        self.lr = _rate(lr, "lr")
        if form not in ("left", "right"):
            raise ConfigError(f'form: "left" (dR = -lr C_off R, the published results) or '
                              f'"right" (dR = -lr R C_off, the bio form), got {form!r}.')
        self.form = form
        self.center = _flag(center, "center")
        self.norm_gain = _flag(norm_gain, "norm_gain")
        self.power_scaled = _flag(power_scaled, "power_scaled")

    def setup(self, net, owner) -> None:
        """R must be square (a lateral matrix from the layer's input to its decorrelated
        copy)."""
        weight = net.weights.get(owner.name)
        if weight is None or weight.dim() < 2 or weight.shape[-2] != weight.shape[-1]:
            raise ConfigError(f'rule "decorrelation" on "{owner.name}" needs a square weight '
                              "matrix R (source and target of the same size).")

    def update(self, ctx: SynapseContext) -> None:
        """One step of the rule on the batch (module docstring)."""
        x = ctx.post("forward")
        if self.center:
            x = x - x.mean(dim=-2, keepdim=True)
        R, batch = ctx.weight, ctx.batch_size
        power = (x * x).mean(dim=-2)                              # diag C = <x_j^2>
        column, row = power.unsqueeze(-1), power.unsqueeze(-2)    # n x 1 and 1 x n
        # C_off R = x^T (x R) / B - diag(power) R: 2 B n^2 multiply-adds instead of n^3 + B n^2
        if self.form == "left":
            M = R / (column + POWER_EPS) if self.power_scaled else R
            step = ops.matmul(x.mT, ops.matmul(x, M)).div_(batch).sub_(column * M)
        else:
            step = ops.matmul(ops.matmul(R, x.mT), x).div_(batch).sub_(R * row)
            if self.power_scaled:
                step.div_(row + POWER_EPS)
        R.add_(step, alpha=-self.lr * ctx.lr_scale)
        if self.norm_gain:
            y = ctx.pre("forward")
            norm = ops.matmul(y, R.mT).norm(dim=-1).mean(dim=-1)  # one per member
            gain = y.norm(dim=-1).mean(dim=-1) / norm
            if R.dim() == 2:
                if float(norm) > 0:
                    R.mul_(gain)
            else:
                R.mul_(torch.where(norm > 0, gain, 1.0)[:, None, None])
