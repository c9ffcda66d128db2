"""Angle between forward and feedback weights, in degrees (weight (a)symmetry):

    cos = tr(A^T B) / (|A|_F |B|_F),   A = W_forward, B = W_feedback^T

one column ``angle_<forward>_<feedback>`` per pair; by default every pair of plastic
projections between the same two populations in opposite directions whose forward one targets
a basal dendrite (CorInfoMax's (ff2, fb1))."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError
from .base import METRICS, EpochMetric


def weight_angle(a: torch.Tensor, b_transposed: torch.Tensor) -> float:
    """Angle in degrees between matrices: cos = tr(A^T B) / (|A|_F |B|_F).

    Computed as 2 atan2(|a - b|, |a + b|) on the normalised matrices, which is accurate at
    every angle (acos of the rounded cosine is not near 0 and 180 degrees): exactly 0 for
    equal matrices, 180 for opposite ones."""
    a, b = a.double(), b_transposed.double()
    a, b = a / a.norm(), b / b.norm()
    return math.degrees(2.0 * math.atan2(float((a - b).norm()), float((a + b).norm())))


def reciprocal_pairs(net) -> list[tuple[str, str]]:
    """(forward, feedback) plastic projections between the same two populations in opposite
    directions, the forward one onto a basal dendrite."""
    pairs = []
    projs = [p for p in net.network.projections if p.name in net.weights and p.rules]
    for a in projs:
        for b in projs:
            if a.source == b.target and a.target == b.source and a.source != a.target \
                    and a.compartment == "basal":
                pairs.append((a.name, b.name))
    return pairs


@METRICS.register
class WeightAngle(EpochMetric):
    """Angle in degrees between forward and feedback weights, cos = tr(A^T B) / (|A|_F |B|_F)
    with A = W_forward, B = W_feedback^T, per ``[forward, feedback]`` pair (default:
    :func:`reciprocal_pairs`)."""

    name = "weight_angle"

    def __init__(self, pairs: Sequence[Sequence[str]] | None = None):
        if pairs is not None and not all(isinstance(p, (list, tuple)) and len(p) == 2
                                         for p in pairs):
            raise ConfigError(f'pairs must be a list of [forward, feedback] projection names, '
                              f"got {pairs!r}.")
        self.pairs = None if pairs is None else [tuple(p) for p in pairs]

    def setup(self, net) -> None:
        from ..errors import unknown
        for fwd, fb in self.pairs or ():
            for name in (fwd, fb):
                if name not in net.weights:
                    raise unknown("projection", name, net.weights,
                                  "weight_angle pairs (projections with weights)")
            if net.weights[fwd].shape != net.weights[fb].T.shape:
                raise ConfigError(f'weight_angle pairs: "{fb}" must have the transposed shape '
                                  f'of "{fwd}".')

    def compute(self) -> dict[str, float]:
        """``angle_<forward>_<feedback>`` for each pair: the angle with
        cos = tr(A^T B) / (|A|_F |B|_F), A = W_forward, B = W_feedback^T (in [0, 180])."""
        net = self.context.net
        pairs = reciprocal_pairs(net) if self.pairs is None else self.pairs
        return {f"angle_{fwd}_{fb}": weight_angle(net.weights[fwd], net.weights[fb].T)
                for fwd, fb in pairs}
