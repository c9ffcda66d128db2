"""Feed-forward chains: what PEPITA, backpropagation and feedback alignment share.

A chain runs from the input population to the output one,

    h_0 = x,    a_l = W_l h_{l-1},    h_l = sigma_l(c_l a_l)    (l = 1 .. L),

where every dynamic population on the way receives exactly one projection, W_l (n_l x
n_{l-1}), from the one before it (a spatial projection, neurosim.graph.projections, reads
``W_l h`` as a convolution or a max-pooling with no weights), and the chain is evaluated in one discrete sweep
(:meth:`neurosim.dynamics.CompiledNetwork.feedforward`, no ODE). For the built-in linear cells
``c_l = g_c gain / (g_lk + sum_c g_c)`` (a pyramidal population with ``leak = 0``, one dendrite
and ``apical = 0``, or an interneuron with ``leak = 1``, has c_l = gain); the papers' networks
use c_l = 1, which :func:`check_unit_gain` demands. Biases, when a population has them, add to
a_l.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["layer_chain", "layer_gain", "check_unit_gain", "cross_entropy", "squared_error",
           "LOSSES"]


def layer_chain(net, input: str, output: str, who: str) -> list:
    """The projections W_1 .. W_L from ``input`` to ``output`` (see module docstring); a
    ConfigError naming the population at fault unless the network is such a chain."""
    chain, population = [], output
    seen = set()
    while population != input:
        incoming = net.network.incoming(population)
        if len(incoming) != 1:
            names = ", ".join(f'"{q.name}"' for q in incoming) or "none"
            raise ConfigError(f'{who} needs a feed-forward chain from "{input}" to "{output}": '
                              f'population "{population}" must receive exactly one projection '
                              f"(from the layer before it), it receives {names}.")
        q = incoming[0]
        if q.source in seen or q.source == population:
            raise ConfigError(f'{who}: projection "{q.name}" closes a loop; a feed-forward chain '
                              "has no recurrent connections.")
        if q.name not in net.weights and q.is_dense:
            raise ConfigError(f'{who}: projection "{q.name}" has no weight matrix (init '
                              '"identity"); every layer of the chain needs one (or is a '
                              "pooling projection).")
        seen.add(population)
        chain.append(q)
        population = q.source
        if population != input and net.slots[population].u_cols is None:
            raise ConfigError(f'{who}: the chain into "{output}" starts at the input "{population}", '
                              f'not at "{input}" ([training] input).')
    chain.reverse()
    dynamic = {p.name for p in net.network.dynamic}
    on_chain = {q.target for q in chain}
    extra = sorted(dynamic - on_chain)
    if extra:
        raise ConfigError(f"{who}: populations {extra} are not on the chain from \"{input}\" to "
                          f'"{output}"; a feed-forward network has one path.')
    return chain


def layer_gain(net, projection) -> float:
    """c_l of the layer a projection feeds (see module docstring)."""
    pop = net.network.population(projection.target)
    decay, coefficients = pop.linear_coefficients()
    return coefficients[projection.compartment] * float(projection.gain) / decay


def check_unit_gain(net, chain, who: str) -> None:
    """ConfigError unless every layer computes h_l = sigma_l(W_l h_{l-1} (+ b_l)) exactly:
    linear cells with c_l = 1."""
    for q in chain:
        pop = net.network.population(q.target)
        if not pop.is_linear:
            raise ConfigError(f'{who}: population "{pop.name}" is a general cell (kind '
                              f'"{pop.kind}"); the layers must be linear cells.')
        gain = layer_gain(net, q)
        if abs(gain - 1.0) > 1e-12:
            raise ConfigError(f'{who}: layer "{pop.name}" computes sigma({gain:g} W h), not '
                              f"sigma(W h): give it leak = 0, one dendrite (basal = 1, apical = 0) "
                              f'and projection "{q.name}" gain = 1 (or an interneuron with '
                              "leak = 1).")


def cross_entropy(probabilities: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_b sum_k t_bk log p_bk over the batch (float64); p clamped at 1e-300."""
    p = probabilities.to(torch.float64).clamp_min(1e-300)
    return -(target.to(torch.float64) * p.log()).sum()


def squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 sum_b |y_b - t_b|^2 over the batch (float64)."""
    return 0.5 * ((prediction.to(torch.float64) - target.to(torch.float64)) ** 2).sum()


LOSSES = {"cross_entropy": cross_entropy, "mse": squared_error}
