"""Neuron populations: what each kind of neuron is (its cell model), as a description.

Every non-input population has one state variable per neuron, the soma potential ``u``, and an
activity ``r = sigma(u)``. Its compartments (basal, apical, ...; "soma" for direct currents)
receive ``v_c = sum_{q -> c} gain_q W_q r_src(q)``, dendrites being at steady state. A
population kind is a *cell model*: it defines

- ``drift(u, v)``: du/dt given the soma potentials and every compartment's input ``v``
  (``v["soma"]`` also holds the bias and the protocol's nudge currents);
- ``activate(u, generator)``: the activity, possibly stochastic (drawn from the run's
  generator so that resume stays exact);
- optionally ``partials(u, v)``: the element-wise derivatives of the drift with respect to
  ``u`` and each ``v_c`` (implicit solvers use them; without them they come from autograd);
- optionally ``feedforward(v)``: the potential at which the drift vanishes for fixed inputs,
  used by discrete (feed-forward, no ODE) passes.

The built-in kinds are *linear* cells (:class:`DynamicPopulation`):

    tau du/dt = -g_lk u + sum_c g_c (v_c - u) + v_soma + sigma_noise xi(t)

where ``1/tau = rate``. Linear cells are compiled into one fused block-matrix product per
population and step (neurosim.dynamics); a kind that overrides ``drift`` gets the general
path automatically. Input populations are clamped: ``r = x``.

In discrete schemes a step of size dt advances the soma by ``dt * rate * du``, unless the
population sets ``fixed_step``: then it always moves by ``fixed_step * du`` whatever the step
schedule (dual variables such as CorInfoMax-A1's interneurons use their own constant step).

Add a kind: subclass :class:`DynamicPopulation` as a frozen dataclass with a ``kind`` name,
register it with ``POPULATION_KINDS.register`` (or name it "module:Class" in a model file).
See docs/cells.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError
from ..registry import Registry
from .activations import Activation, check_activation, get_activation

SOMA = "soma"


@dataclass(frozen=True)
class Population:
    """A group of identical neurons. Use the subclasses below."""

    name: str
    size: int

    kind = "population"
    #: whether projections may target compartment "soma" (direct currents)
    soma_inputs = True
    #: whether the kind has du/dt (ODE phases, simulations); False: discrete passes only
    has_soma_equation = True

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f'population name {self.name!r} must be an identifier '
                              '(letters, digits, underscores; not starting with a digit).')
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(f'population "{self.name}": size must be a positive integer, '
                              f"got {self.size!r}.")

    @property
    def compartments(self) -> Mapping[str, float]:
        """Dendritic compartments and their coupling conductances to the soma."""
        return {}

    @property
    def is_input(self) -> bool:
        """Whether the activity is clamped by the experiment (no soma equation)."""
        return False

    @classmethod
    def keys(cls) -> set[str]:
        """The keys a model file may give for this kind (its dataclass fields)."""
        return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class InputPopulation(Population):
    """Clamped population: its activity is set by the experiment (``r = x``)."""

    kind = "input"

    @property
    def is_input(self) -> bool:
        """True: an input population's activity is clamped, ``r = x``."""
        return True


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value) -> bool:
    """A number that is neither NaN nor infinite."""
    return _number(value) and math.isfinite(value)


@dataclass(frozen=True)
class DynamicPopulation(Population):
    """A population with a soma equation; the base of every cell model (a linear cell).

    ``bias`` is a number or one value per neuron; it is a parameter of the population that
    population rules may learn. ``rules`` are population rules (neurosim.plasticity)."""

    leak: float = 1.0
    activation: str = "clip"
    bias: Any = 0.0
    rate: float = 1.0
    noise: float = 0.0
    fixed_step: float | None = None
    rules: Sequence[Any] = field(default_factory=tuple)

    def __post_init__(self):
        super().__post_init__()
        if self.fixed_step is not None and (not _finite(self.fixed_step)
                                            or not self.fixed_step > 0):
            raise ConfigError(f'population "{self.name}": fixed_step must be a finite number '
                              f"> 0 or absent, got {self.fixed_step!r}.")
        check_activation(self.activation, f'population "{self.name}"')
        for key in ("leak", "rate", "noise"):
            value = getattr(self, key)
            if not _number(value):
                raise ConfigError(f'population "{self.name}": {key} must be a number, got {value!r}.')
            if not _finite(value):
                raise ConfigError(f'population "{self.name}": {key} must be a finite number, '
                                  f"got {value!r}.")
        if self.leak < 0 or self.rate <= 0 or self.noise < 0:
            raise ConfigError(f'population "{self.name}": need leak >= 0, rate > 0 and noise >= 0 '
                              f"(got leak={self.leak}, rate={self.rate}, noise={self.noise}).")
        self._check_bias()
        from ..plasticity import build_rule      # rules import the graph: imported late
        object.__setattr__(self, "rules", tuple(
            build_rule(spec, f'population "{self.name}" rules[{j}]') if isinstance(spec, Mapping)
            else spec for j, spec in enumerate(self.rules)))
        for rule in self.rules:
            if getattr(rule, "target", "population") != "population":
                raise ConfigError(f'population "{self.name}": rule "{rule.name}" is a '
                                  "projection rule; attach it to a [[projection]] instead.")

    def _check_bias(self) -> None:
        """ConfigError unless ``bias`` is a finite number or one per neuron (stored as a
        tuple of floats)."""
        if _number(self.bias) and not _finite(self.bias):
            raise ConfigError(f'population "{self.name}": bias must be a finite number, got '
                              f"{self.bias!r}.")
        if not _number(self.bias):
            values = self.bias if isinstance(self.bias, (list, tuple)) else None
            if values is None or len(values) != self.size or not all(map(_number, values)):
                raise ConfigError(f'population "{self.name}": bias must be a number or a list '
                                  f"of {self.size} numbers (one per neuron), got {self.bias!r}.")
            bad = [i for i, b in enumerate(values) if not _finite(b)]
            if bad:
                raise ConfigError(f'population "{self.name}": bias[{bad[0]}] must be a finite '
                                  f"number, got {values[bad[0]]!r}.")
            object.__setattr__(self, "bias", tuple(float(b) for b in values))

    # ---------------------------------------------------------------- the cell model
    @cached_property
    def activation_function(self) -> Activation:
        return get_activation(self.activation)

    @property
    def stochastic(self) -> bool:
        """True when the activity is drawn at random (needs a discrete-step solver)."""
        return self.activation_function.stochastic

    def initial_bias(self, dtype=torch.float64, *, fan_in: Mapping[str, int] | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """The per-neuron bias vector (n,). (Kinds with other biases, e.g. one per
        compartment, may use ``fan_in``, the total source size per compartment, and draw from
        ``generator``, the network's initialisation generator.)"""
        if _number(self.bias):
            return torch.full((self.size,), float(self.bias), dtype=dtype)
        return torch.tensor(self.bias, dtype=dtype)

    def add_bias(self, v: dict, bias: torch.Tensor) -> dict:
        """Add the bias to the compartment inputs ``v`` (in the dict): to v_soma here."""
        v[SOMA] = v[SOMA] + bias
        return v

    @property
    def has_bias(self) -> bool:
        """Whether a bias is set: per-neuron values, or a number other than 0."""
        return not (_number(self.bias) and self.bias == 0.0)

    def linear_coefficients(self) -> tuple[float, Mapping[str, float]]:
        """Linear cells: du/dt = rate [ -d u + sum_c k_c v_c ]; returns (d, {c: k_c}) with
        d = g_lk + sum_c g_c, k_c = g_c for dendrites and k_soma = 1."""
        comps = dict(self.compartments)
        return float(self.leak + sum(comps.values())), {SOMA: 1.0, **{c: float(g) for c, g in
                                                                      comps.items()}}

    @property
    def is_linear(self) -> bool:
        """Whether the fused operator path applies (the kind keeps the linear drift)."""
        return type(self).drift is DynamicPopulation.drift

    def drift(self, u: torch.Tensor, v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """du/dt = rate [ -d u + sum_c k_c v_c ] (see :meth:`linear_coefficients`)."""
        decay, coupling = self.linear_coefficients()
        total = u * -decay
        for comp, k in coupling.items():
            if comp in v:
                total = total + k * v[comp]
        return total * self.rate

    def partials(self, u: torch.Tensor, v: Mapping[str, torch.Tensor]):
        """(d drift/du, {c: d drift/dv_c}), element-wise; None to let autograd find them."""
        if not self.is_linear:
            return None
        decay, coupling = self.linear_coefficients()
        ones = torch.ones_like(u)
        return ones * (-decay * self.rate), {c: ones * (k * self.rate) for c, k in coupling.items()}

    def feedforward(self, v: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The soma potential at which the drift vanishes for fixed inputs (discrete passes):
        u* = sum_c k_c v_c / d for linear cells."""
        if not self.is_linear:
            raise ConfigError(f'population "{self.name}" (kind "{self.kind}") defines no '
                              "feedforward(v) for discrete passes; add one to its class.")
        decay, coupling = self.linear_coefficients()
        if decay == 0:
            raise ConfigError(f'population "{self.name}": a discrete pass needs leak or a '
                              "conductance > 0 (d = 0 has no fixed point).")
        total = None
        for comp, k in coupling.items():
            if comp in v:
                total = k * v[comp] if total is None else total + k * v[comp]
        return total / decay

    def activate(self, u: torch.Tensor, generator: torch.Generator | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """r = sigma(u) (into ``out``); a stochastic activation draws from ``generator``.
        Override it for an activation that is not one of the registered ones."""
        return self.activation_function.forward(u, out=out, generator=generator)


@dataclass(frozen=True)
class PyramidalPopulation(DynamicPopulation):
    """Pyramidal neurons: soma plus basal and apical dendrites (conductances ``g_B``, ``g_A``).

        tau du/dt = -g_lk u + g_B (v_B - u) + g_A (v_A - u) + v_soma + sigma_noise xi(t)

    with 1/tau = ``rate``, g_lk = ``leak``, sigma_noise = ``noise``, r = sigma(u)
    (``activation``) and the ``bias`` in v_soma. Extra dendrites can be given in
    ``dendrites`` (name -> conductance); each adds its g_c (v_c - u)."""

    basal: float = 1.0
    apical: float = 1.0
    dendrites: Mapping[str, float] = field(default_factory=dict)

    kind = "pyramidal"

    def __post_init__(self):
        super().__post_init__()
        for comp, g in self.compartments.items():
            if not _finite(g) or g < 0:
                key = comp if comp in ("basal", "apical") else f"dendrites.{comp}"
                raise ConfigError(f'population "{self.name}": conductance of compartment '
                                  f'"{comp}" ({key}) must be a finite number >= 0, got {g!r}.')
            if comp == SOMA:
                raise ConfigError(f'population "{self.name}": "soma" is not a dendrite name.')

    @property
    def compartments(self) -> Mapping[str, float]:
        return {"basal": self.basal, "apical": self.apical, **dict(self.dendrites)}


@dataclass(frozen=True)
class InterneuronPopulation(DynamicPopulation):
    """Point neurons (soma only), e.g. one inhibitory unit per layer; inputs target the soma:
    tau du/dt = -g_lk u + v_soma + sigma_noise xi(t), r = sigma(u) (default relu)."""

    activation: str = "relu"
    kind = "interneuron"


#: type name -> Population subclass; add kinds with ``POPULATION_KINDS.register(cls)``
#: (registered under ``cls.kind``) or name them "module:Class" in a model file.
POPULATION_KINDS = Registry("population kind", base=Population)
for _cls in (InputPopulation, PyramidalPopulation, InterneuronPopulation):
    POPULATION_KINDS.register(_cls, name=_cls.kind)


def register_population(cls):
    """Class decorator: make a population kind available to model files as ``type = cls.kind``."""
    return POPULATION_KINDS.register(cls, name=cls.kind)
