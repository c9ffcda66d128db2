"""Infomorphic neurons (Schneider et al., "What should a neuron aim for?", ICLR 2025): a
population kind with three input compartments that combine nonlinearly.

Neuron i receives, from the projections into each compartment (each with its own bias),

    F_i = sum_{q -> feedforward} gain_q W_q r_q + b_F,i      (receptive input)
    C_i = sum_{q -> context}     gain_q W_q r_q + b_C,i      (context: label, feedback)
    L_i = sum_{q -> lateral}     gain_q W_q r_q + b_L,i      (the layer's own earlier samples)

    u_i = A_i = F_i [ (1 - k_C - k_L) + k_C sigmoid(w F_i C_i) + k_L sigmoid(w F_i L_i) ]

with k_C = ``context_gain`` (0.1), k_L = ``lateral_gain`` (0.1) and w = ``coupling`` (2): C
and L only modulate F's gain. The activity is r_i = +1 with probability theta_i =
sigmoid(A_i), else -1 (``activation = "stochastic_sign"``, drawn from the run's generator),
or theta_i itself (``activation = "sigmoid"``, the paper's output layer, where k_C = k_L = 0
gives theta = sigmoid(F)). A compartment no projection reaches contributes 0 (its bias
too, unless listed in ``biased``).

The compartments that receive projections are the neuron's PID sources, in the order
feedforward, context, lateral (two or three of them); ``binning`` says how their values are
cut into ``bins`` bins for the goal's plug-in estimate (neurosim.pid.binning): "fixed"
(clamped to [-bin_range + 1e-4, bin_range]) or "normalised" (divided by the per-neuron max
|value| over the batch, bins on [-1, 1]). The goal itself is a population rule
(``infomorphic_goal``, neurosim.plasticity.infomorphic); the two lateral steps and the label
context are the "infomorphic" protocol's (neurosim.protocols.infomorphic).

Biases are per compartment, a (len(biased), n) tensor, initialised like torch.nn.Linear's
(U(+-1/sqrt(fan_in)), fan_in = the total source size of the compartment's projections) with
``bias = "fan_in_uniform"``, or all set to a number. There is no soma equation: these cells
run in discrete passes only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from .populations import DynamicPopulation, _finite, register_population

#: the three input classes of an infomorphic neuron, in PID source order
COMPARTMENTS = ("feedforward", "context", "lateral")
BINNINGS = ("fixed", "normalised")


@register_population
@dataclass(frozen=True)
class InfomorphicPopulation(DynamicPopulation):
    """Infomorphic neurons: F, C, L compartments, A = F [(1 - k_C - k_L) + k_C sigmoid(w F C) +
    k_L sigmoid(w F L)], r = +-1 with P(+1) = sigmoid(A) (see neurosim.graph.infomorphic)."""

    activation: str = "stochastic_sign"
    bias: Any = "fan_in_uniform"
    leak: float = 0.0
    context_gain: float = 0.1
    lateral_gain: float = 0.1
    coupling: float = 2.0
    biased: Sequence[str] = COMPARTMENTS
    binning: str = "fixed"
    bins: int = 20
    bin_range: float = 20.0
    rules: Sequence[Any] = field(default_factory=tuple)

    kind = "infomorphic"
    soma_inputs = False
    has_soma_equation = False

    def __post_init__(self):
        super().__post_init__()
        where = f'population "{self.name}"'
        if self.activation not in ("stochastic_sign", "sigmoid"):
            raise ConfigError(f'{where}: an infomorphic population draws +-1 samples '
                              '(activation = "stochastic_sign") or gives its firing probability '
                              '(activation = "sigmoid", an output layer); got '
                              f'"{self.activation}".')
        for key in ("context_gain", "lateral_gain", "coupling", "bin_range"):
            value = getattr(self, key)
            if not _finite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}.")
        if self.context_gain < 0 or self.lateral_gain < 0 or \
                self.context_gain + self.lateral_gain > 1:
            raise ConfigError(f"{where}: need context_gain >= 0, lateral_gain >= 0 and their sum "
                              f"<= 1 (F's own share is 1 - k_C - k_L); got {self.context_gain} "
                              f"and {self.lateral_gain}.")
        if not self.bin_range > 0:
            raise ConfigError(f"{where}: bin_range must be > 0, got {self.bin_range!r}.")
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ConfigError(f"{where}: bins must be an integer >= 2, got {self.bins!r}.")
        if self.binning not in BINNINGS:
            raise ConfigError(f'{where}: binning must be "fixed" (clamped to +-bin_range) or '
                              f'"normalised" (by the batch max |value|), got {self.binning!r}.')
        for key, default in (("leak", 0.0), ("rate", 1.0), ("noise", 0.0), ("fixed_step", None)):
            if getattr(self, key) != default:
                raise ConfigError(f"{where}: {key} does not apply to infomorphic neurons (no soma "
                                  f"equation); remove it (got {getattr(self, key)!r}).")
        if not isinstance(self.biased, (str, list, tuple)):
            raise ConfigError(f"{where}: biased is a list of compartments from "
                              f"{list(COMPARTMENTS)}, got {self.biased!r}.")
        biased = (self.biased,) if isinstance(self.biased, str) else tuple(self.biased)
        bad = [c for c in biased if c not in COMPARTMENTS]
        if bad or len(set(biased)) != len(biased):
            raise ConfigError(f"{where}: biased lists compartments with a bias, each once, from "
                              f"{list(COMPARTMENTS)}; got {list(biased)}.")
        object.__setattr__(self, "biased", tuple(c for c in COMPARTMENTS if c in biased))

    def _check_bias(self) -> None:
        if self.bias == "fan_in_uniform" or _finite(self.bias):
            return
        raise ConfigError(f'population "{self.name}": bias of an infomorphic population is '
                          '"fan_in_uniform" (torch.nn.Linear\'s U(+-1/sqrt(fan_in)) per '
                          f"compartment) or one number for every neuron; got {self.bias!r}.")

    @property
    def compartments(self) -> Mapping[str, float]:
        """The three input compartments (their coupling numbers are unused: not a linear
        cell)."""
        return {c: 1.0 for c in COMPARTMENTS}

    @property
    def has_bias(self) -> bool:
        """Whether any compartment carries a bias."""
        return bool(self.biased) and self.bias != 0

    def initial_bias(self, dtype=torch.float64, *, fan_in: Mapping[str, int] | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The (len(biased), n) biases, one row per biased compartment: U(+-1/sqrt(fan_in_c))
        drawn from ``generator`` (``bias = "fan_in_uniform"``; 0 for a compartment no
        projection reaches) or the number ``bias``."""
        rows = len(self.biased)
        if self.bias != "fan_in_uniform":
            return torch.full((rows, self.size), float(self.bias), dtype=dtype)
        out = torch.zeros(rows, self.size, dtype=dtype)
        for i, comp in enumerate(self.biased):
            n_in = (fan_in or {}).get(comp, 0)
            if n_in:
                bound = 1.0 / math.sqrt(n_in)
                draw = torch.rand(self.size, generator=generator, dtype=torch.float64)
                out[i] = ((2 * draw - 1) * bound).to(dtype)
        return out

    def add_bias(self, v: dict, bias: torch.Tensor) -> dict:
        """v_c + b_c for every biased compartment (in place in the dict; an ensemble's
        biases are M x rows x n against inputs M x batch x n)."""
        for i, comp in enumerate(self.biased):
            v[comp] = v[comp] + bias[..., i, :].unsqueeze(-2)
        return v

    def drive(self, f: torch.Tensor, c: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
        """A = F [(1 - k_C - k_L) + k_C sigmoid(w F C) + k_L sigmoid(w F L)] (differentiable;
        a compartment nothing reaches holds its bias, or 0)."""
        k_c, k_l, w = self.context_gain, self.lateral_gain, self.coupling
        gain = 1.0 - k_c - k_l
        if k_c:
            gain = gain + k_c * torch.sigmoid(w * f * c)
        if k_l:
            gain = gain + k_l * torch.sigmoid(w * f * l)
        return f * gain

    def feedforward(self, v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """u = A(F, C, L) from the compartment inputs (biases included by the caller; no
        projection reaches the soma: the network refuses one)."""
        return self.drive(v["feedforward"], v["context"], v["lateral"])

    def drift(self, u: torch.Tensor, v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Not defined: infomorphic neurons have no soma equation."""
        raise ConfigError(f'population "{self.name}" (kind "infomorphic") has no soma '
                          "equation; it runs in discrete passes (protocol \"infomorphic\" or "
                          "CompiledNetwork.feedforward), not in an ODE phase.")

    def bin_sources(self, sources: Sequence[torch.Tensor]) -> torch.Tensor:
        """Bin indices (k, N, B) of the PID sources, given as (B, N) tensors (no gradient);
        an ensemble's sources (M, B, N) give (k, M, N, B)."""
        from ..pid import bin_fixed, bin_normalised
        out = []
        for s in sources:
            s = s.detach().transpose(-1, -2)
            if self.binning == "fixed":
                out.append(bin_fixed(s, self.bins, -self.bin_range, self.bin_range))
            else:
                out.append(bin_normalised(s, self.bins, dim=-1))
        return torch.stack(out)


def reads_previous_step(network, projection) -> bool:
    """Whether a projection's source is computed at or after its target in a discrete sweep
    (declaration order): then the target reads the source's activity of the previous step
    (lateral connections, feedback)."""
    order = [p.name for p in network.dynamic]
    if projection.source not in order:
        return False
    return order.index(projection.source) >= order.index(projection.target)


def compartment_sums(population: InfomorphicPopulation, projections, presynaptic, weight_of,
                     bias: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
    """v_c = sum_{q -> c} gain_q W_q r_q + b_c for the three compartments (differentiable:
    the discrete passes' sum written with torch operations). ``presynaptic(q)`` gives the
    activity a projection reads, ``weight_of(q)`` its weight (None: identity)."""
    v: dict[str, torch.Tensor | None] = {c: None for c in COMPARTMENTS}
    for q in projections:
        term = q.drive(presynaptic(q), weight_of(q)) * float(q.gain)
        v[q.compartment] = term if v[q.compartment] is None else v[q.compartment] + term
    for comp in COMPARTMENTS:
        if v[comp] is None:          # bias: rows x n, or M x rows x n in an ensemble
            v[comp] = bias.new_zeros(*bias.shape[:-2], batch, population.size)
    return population.add_bias(v, bias)


def unconnected_bias_rows(network, population: InfomorphicPopulation) -> list[int]:
    """Rows of the population's bias for compartments no projection reaches (kept fixed by
    learning: there is no input for them to bias)."""
    connected = {q.compartment for q in network.incoming(population.name)}
    return [i for i, c in enumerate(population.biased) if c not in connected]


def pid_sources(network, population: str) -> tuple[str, ...]:
    """The compartments of an infomorphic population that receive projections, in PID source
    order (feedforward, context, lateral)."""
    used = {q.compartment for q in network.incoming(population)}
    return tuple(c for c in COMPARTMENTS if c in used)


__all__ = ["InfomorphicPopulation", "COMPARTMENTS", "reads_previous_step", "pid_sources",
           "compartment_sums", "unconnected_bias_rows"]
