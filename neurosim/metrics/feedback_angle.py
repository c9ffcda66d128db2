"""Angle between a feed-forward chain's end-to-end map and a fixed feedback matrix F, in degrees
(PEPITA's alignment measure, Dellaferrera & Kreiman 2022):

    M = W_L ... W_1 (C x d),   cos = tr(M F) / (|M|_F |F|_F)

i.e. the angle between (W_L ... W_1)^T and F (both d x C), computed like
:func:`~neurosim.metrics.weight_angle.weight_angle` (accurate at every angle). It reads the
protocol's ``F`` (d x C) and ``chain`` (the projections W_1 .. W_L from input to output), so it
needs a protocol with a fixed feedback matrix such as "pepita". One column, ``angle_F``.
PEPITA's weights anti-align with F during training (the angle rises above 90 degrees with
x_mod = x + F e, and falls below 90 with x - F e)."""
from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .base import METRICS, EpochMetric, MetricContext
from .weight_angle import weight_angle

COLUMN = "angle_F"


def chain_product(weights, chain) -> torch.Tensor:
    """M = W_L ... W_1 (C x d, float64) of the chain's projections (W_l = ``weights[name]``,
    n_l x n_{l-1}), multiplied from the output side so every product keeps C rows."""
    names = [getattr(q, "name", q) for q in chain]
    product = weights[names[-1]].double()
    for name in reversed(names[:-1]):
        product = product @ weights[name].double()
    return product


def feedback_angle(weights, chain, F: torch.Tensor) -> float:
    """Angle in degrees between (W_L ... W_1)^T and F (d x C): cos = tr(M F) / (|M|_F |F|_F)
    with M = :func:`chain_product`; in [0, 180], NaN when either matrix is zero."""
    product = chain_product(weights, chain)
    F = F.double()
    if not (bool(product.any()) and bool(F.any())):
        return math.nan
    return weight_angle(product.T, F.to(product.device))


def _check_protocol(protocol, net=None) -> None:
    """ConfigError unless ``protocol`` has a fixed feedback matrix F (d x C) and a chain whose
    end-to-end map has F's transposed shape."""
    F = getattr(protocol, "F", None)
    chain = getattr(protocol, "chain", None)
    if not isinstance(F, torch.Tensor) or F.dim() != 2 or not chain:
        kind = getattr(protocol, "name", type(protocol).__name__)
        raise ConfigError(f'feedback_angle needs a protocol with a fixed feedback matrix F '
                          f'(pepita); protocol "{kind}" has none. Remove "feedback_angle" from '
                          "[training] metrics, or use weight_angle for learned feedback "
                          "weights.")
    spatial = [q for q in chain if not getattr(q, "is_dense", True)]
    if spatial:
        raise ConfigError(f'feedback_angle: projection "{spatial[0].name}" is a '
                          f"{spatial[0].kind} projection; the end-to-end map W_L ... W_1 is "
                          "a product of dense matrices only. Remove \"feedback_angle\" from "
                          "[training] metrics of a convolutional model.")
    weights = (net if net is not None else protocol.net).weights
    names = [getattr(q, "name", q) for q in chain]
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConfigError(f'feedback_angle: projection "{missing[0]}" of the protocol\'s chain has '
                          "no weight matrix.")
    d, c = weights[names[0]].shape[1], weights[names[-1]].shape[0]
    if tuple(F.shape) != (d, c):
        raise ConfigError(f"feedback_angle: F has shape {tuple(F.shape)} but the chain "
                          f"{' -> '.join(names)} maps {d} inputs to {c} outputs; F must be "
                          f"{d} x {c}.")


@METRICS.register
class FeedbackAngle(EpochMetric):
    """Angle in degrees between (W_L ... W_1)^T and the protocol's fixed feedback matrix F,
    cos = tr(M F) / (|M|_F |F|_F) with M = W_L ... W_1 (see
    neurosim.metrics.feedback_angle); column ``angle_F``. Needs a protocol with ``F`` and
    ``chain`` ("pepita")."""

    name = "feedback_angle"

    def check_protocol(self, protocol) -> None:
        """ConfigError when the protocol has no fixed feedback matrix F (and chain) of the
        right shape."""
        _check_protocol(protocol)

    def reset(self, context: MetricContext) -> None:
        """Keep the context; ConfigError when its protocol has no fixed feedback matrix F."""
        _check_protocol(context.protocol, context.net)
        super().reset(context)

    def compute(self) -> dict[str, float]:
        """``angle_F``: the angle between (W_L ... W_1)^T and F, in [0, 180] degrees (NaN when
        either is zero)."""
        protocol = self.context.protocol
        return {COLUMN: feedback_angle(self.context.net.weights, protocol.chain, protocol.F)}
