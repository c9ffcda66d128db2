"""Activation functions ``r = sigma(u)`` and their derivatives.

Projections onto a set are activations too: ``clip`` is the projection onto [lo, hi]
(CorInfoMax-A-inf uses [0, 1]); ``relu`` the projection onto the non-negative orthant.
Names: "clip" (= clip[0,1]), "clip[a,b]", "relu", "linear", "sigmoid", "tanh".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import ConfigError, did_you_mean

_CLIP = re.compile(r"^clip\[\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\]$")
_NAMES = ("clip", "clip[lo,hi]", "relu", "linear", "sigmoid", "tanh")


@dataclass(frozen=True)
class Activation:
    """An activation with an in-place-capable forward and a derivative."""

    name: str
    forward: Callable[..., torch.Tensor]      # forward(u, out=None)
    derivative: Callable[[torch.Tensor], torch.Tensor]


def _clip(lo: float, hi: float) -> Activation:
    def forward(u, out=None):
        return torch.clamp(u, lo, hi, out=out) if out is not None else torch.clamp(u, lo, hi)

    def derivative(u):
        return ((u > lo) & (u < hi)).to(u.dtype)

    return Activation(f"clip[{lo:g},{hi:g}]", forward, derivative)


def _relu() -> Activation:
    def forward(u, out=None):
        return torch.clamp(u, min=0, out=out) if out is not None else torch.relu(u)

    return Activation("relu", forward, lambda u: (u > 0).to(u.dtype))


def _linear() -> Activation:
    def forward(u, out=None):
        return out.copy_(u) if out is not None else u.clone()

    return Activation("linear", forward, torch.ones_like)


def _sigmoid() -> Activation:
    def forward(u, out=None):
        return torch.sigmoid(u, out=out) if out is not None else torch.sigmoid(u)

    def derivative(u):
        s = torch.sigmoid(u)
        return s * (1 - s)

    return Activation("sigmoid", forward, derivative)


def _tanh() -> Activation:
    def forward(u, out=None):
        return torch.tanh(u, out=out) if out is not None else torch.tanh(u)

    return Activation("tanh", forward, lambda u: 1 - torch.tanh(u) ** 2)


def get_activation(name: str) -> Activation:
    """Look an activation up by name (see module docstring)."""
    if name == "clip":
        return _clip(0.0, 1.0)
    match = _CLIP.match(name)
    if match:
        lo, hi = float(match.group(1)), float(match.group(2))
        if not lo < hi:
            raise ConfigError(f'activation "{name}": need lo < hi.')
        return _clip(lo, hi)
    table = {"relu": _relu, "linear": _linear, "sigmoid": _sigmoid, "tanh": _tanh}
    if name in table:
        return table[name]()
    raise ConfigError(f'unknown activation "{name}".{did_you_mean(name, _NAMES)} '
                      f"Valid activations: {', '.join(_NAMES)}.")


def check_activation(name, where: str) -> None:
    """Raise a ConfigError naming ``where`` when ``name`` is not a valid activation."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: activation must be a string, got {name!r}.")
    try:
        get_activation(name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
