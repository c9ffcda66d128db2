"""Activation functions ``r = sigma(u)`` and their derivatives, in an open registry.

Projections onto a set are activations too: ``clip`` is the projection onto [lo, hi]
(CorInfoMax-A-inf uses [0, 1]); ``relu`` the projection onto the non-negative orthant.
Names: "clip" (= clip[0,1]), "clip[a,b]", "relu", "leaky_relu" (slope 0.01) or
"leaky_relu[s]", "linear", "sigmoid", "tanh", "softmax" (over a population's neurons, not
element-wise), "stochastic_sign" (r = +1 with probability sigmoid(u), else -1, drawn from the
run's generator; its derivative is that of the mean tanh(u/2)).

Add one with ``ACTIVATIONS.register(name="mine")(factory)``, ``factory()`` returning an
:class:`Activation`, or name a factory ``"package.module:function"`` in a model file.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from ..draws import uniform
from ..errors import ConfigError, did_you_mean
from ..registry import Registry

_BRACKET = re.compile(r"^([a-z_]+)\[\s*([-+0-9.eE]+)\s*(?:,\s*([-+0-9.eE]+)\s*)?\]$")


@dataclass(frozen=True)
class Activation:
    """An activation: ``forward(u, out=None, generator=None)`` and ``derivative(u)``.

    ``elementwise``: r_i depends on u_i only (needed for Jacobians of implicit solvers);
    ``stochastic``: forward draws from ``generator`` (the run's, so resume stays exact);
    ``params``: the numbers in the name's brackets, unrounded (clip's lo and hi, leaky_relu's
    slope)."""

    name: str
    forward: Callable[..., torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    elementwise: bool = True
    stochastic: bool = False
    params: tuple[float, ...] = ()


def _write(value: torch.Tensor, out):
    return out.copy_(value) if out is not None else value


def clip(lo: float = 0.0, hi: float = 1.0) -> Activation:
    if not lo < hi:
        raise ConfigError(f"activation clip[{lo:g},{hi:g}]: need lo < hi.")

    def forward(u, out=None, generator=None):
        return torch.clamp(u, lo, hi, out=out) if out is not None else torch.clamp(u, lo, hi)

    def derivative(u):
        return ((u > lo) & (u < hi)).to(u.dtype)

    return Activation(f"clip[{lo:g},{hi:g}]", forward, derivative, params=(lo, hi))


def relu() -> Activation:
    def forward(u, out=None, generator=None):
        return torch.clamp(u, min=0, out=out) if out is not None else torch.relu(u)

    return Activation("relu", forward, lambda u: (u > 0).to(u.dtype))


def leaky_relu(slope: float = 0.01) -> Activation:
    def forward(u, out=None, generator=None):
        return _write(torch.nn.functional.leaky_relu(u, slope), out)

    def derivative(u):
        return torch.where(u > 0, torch.ones_like(u), torch.full_like(u, slope))

    return Activation(f"leaky_relu[{slope:g}]", forward, derivative, params=(slope,))


def linear() -> Activation:
    def forward(u, out=None, generator=None):
        return out.copy_(u) if out is not None else u.clone()

    return Activation("linear", forward, torch.ones_like)


def sigmoid() -> Activation:
    def forward(u, out=None, generator=None):
        return torch.sigmoid(u, out=out) if out is not None else torch.sigmoid(u)

    def derivative(u):
        s = torch.sigmoid(u)
        return s * (1 - s)

    return Activation("sigmoid", forward, derivative)


def tanh() -> Activation:
    def forward(u, out=None, generator=None):
        return torch.tanh(u, out=out) if out is not None else torch.tanh(u)

    return Activation("tanh", forward, lambda u: 1 - torch.tanh(u) ** 2)


def softmax() -> Activation:
    """softmax over the population's neurons (last axis); not element-wise."""
    def forward(u, out=None, generator=None):
        return _write(torch.softmax(u, dim=-1), out)

    def derivative(u):
        raise ConfigError("activation softmax is not element-wise: it has no diagonal "
                          "derivative (use it in discrete passes or with explicit solvers).")

    return Activation("softmax", forward, derivative, elementwise=False)


def stochastic_sign() -> Activation:
    """r = +1 with probability sigmoid(u), else -1 (infomorphic neurons)."""
    def forward(u, out=None, generator=None):
        if generator is None:
            raise ConfigError("activation stochastic_sign draws random numbers: it needs the "
                              "run's generator (pass generator=...).")
        draw = uniform(u.shape, generator, dtype=u.dtype, device=u.device)
        value = torch.where(draw < torch.sigmoid(u), 1.0, -1.0).to(u.dtype)
        return _write(value, out)

    def derivative(u):
        return 0.5 * (1 - torch.tanh(0.5 * u) ** 2)

    return Activation("stochastic_sign", forward, derivative, stochastic=True)


ACTIVATIONS = Registry("activation")
for _factory in (clip, relu, leaky_relu, linear, sigmoid, tanh, softmax, stochastic_sign):
    ACTIVATIONS.register(_factory, name=_factory.__name__)


def get_activation(name: str) -> Activation:
    """Build an activation by name: "clip" (= "clip[0,1]"), "clip[lo,hi]", "relu",
    "leaky_relu" or "leaky_relu[slope]", "linear", "sigmoid", "tanh", "softmax",
    "stochastic_sign", a registered name or "package.module:function" (see
    neurosim.graph.activations)."""
    if not isinstance(name, str):
        raise ConfigError(f"activation must be a string, got {name!r}.")
    match = _BRACKET.match(name)
    if match and match.group(1) in ACTIVATIONS:
        factory = ACTIVATIONS[match.group(1)]
        args = [float(a) for a in match.groups()[1:] if a is not None]
    elif ":" in name or name in ACTIVATIONS:
        factory, args = ACTIVATIONS.lookup(name, "activation"), []
    else:
        names = ["clip", "clip[lo,hi]", "relu", "leaky_relu", "leaky_relu[slope]",
                 *(k for k in ACTIVATIONS if k not in ("clip", "relu", "leaky_relu"))]
        raise ConfigError(f'unknown activation "{name}".{did_you_mean(name, names)} Valid '
                          f"activations: {', '.join(names)}, or 'module:function'.")
    try:
        activation = factory(*args)
    except TypeError:
        raise ConfigError(f'activation "{name}": wrong number of parameters.') from None
    except ConfigError as err:
        raise ConfigError(f'activation "{name}": {str(err).split(": ", 1)[-1]}') from None
    if not isinstance(activation, Activation):
        raise ConfigError(f'activation "{name}": its factory returned {activation!r}, not an '
                          "Activation.")
    return activation


def check_activation(name, where: str) -> None:
    """Raise a ConfigError naming ``where`` when ``name`` is not a valid activation."""
    if not isinstance(name, str):
        raise ConfigError(f"{where}: activation must be a string, got {name!r}.")
    try:
        get_activation(name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
