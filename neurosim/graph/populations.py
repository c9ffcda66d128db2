"""Neuron populations: what each kind of neuron is, as a pure description.

Every non-input population has one state variable per neuron, the soma potential ``u``, and an
activity ``r = sigma(u)``. Dendritic compartments (basal, apical, ...) are at steady state: their
potential is the sum of their synaptic inputs, ``v_c = sum_p gain_p W_p r_src(p)``, and they
couple to the soma through a conductance ``g_c``. The soma obeys

    tau du/dt = -g_lk u + sum_c g_c (v_c - u) + I_soma + bias + I_nudge + sigma_noise xi(t)

where ``I_soma`` sums projections that target the soma directly, ``I_nudge = beta (y - r)`` is
the optional output nudge and ``1/tau = rate``. Input populations are clamped: ``r = x``.

In discrete schemes a step of size dt advances the soma by ``dt * rate * du``, unless the
population sets ``fixed_step``: then it always moves by ``fixed_step * du`` whatever the step
schedule (dual variables such as CorInfoMax-A1's interneurons use their own constant step).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from ..errors import ConfigError
from .activations import check_activation

SOMA = "soma"


@dataclass(frozen=True)
class Population:
    """A group of identical neurons. Use the subclasses below."""

    name: str
    size: int

    kind = "population"

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
        return False


@dataclass(frozen=True)
class InputPopulation(Population):
    """Clamped population: its activity is set by the experiment (``r = x``)."""

    kind = "input"

    @property
    def is_input(self) -> bool:
        return True


@dataclass(frozen=True)
class _DynamicPopulation(Population):
    leak: float = 1.0
    activation: str = "clip"
    bias: float = 0.0
    rate: float = 1.0
    noise: float = 0.0
    fixed_step: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.fixed_step is not None and (not isinstance(self.fixed_step, (int, float))
                                            or not self.fixed_step > 0):
            raise ConfigError(f'population "{self.name}": fixed_step must be a number > 0 or '
                              f"absent, got {self.fixed_step!r}.")
        check_activation(self.activation, f'population "{self.name}"')
        for key in ("leak", "bias", "rate", "noise"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f'population "{self.name}": {key} must be a number, got {value!r}.')
        if self.leak < 0 or self.rate <= 0 or self.noise < 0:
            raise ConfigError(f'population "{self.name}": need leak >= 0, rate > 0 and noise >= 0 '
                              f"(got leak={self.leak}, rate={self.rate}, noise={self.noise}).")


@dataclass(frozen=True)
class PyramidalPopulation(_DynamicPopulation):
    """Pyramidal neurons: soma plus basal and apical dendrites (conductances ``g_B``, ``g_A``).

    Extra dendrites can be given in ``dendrites`` (name -> conductance)."""

    basal: float = 1.0
    apical: float = 1.0
    dendrites: Mapping[str, float] = field(default_factory=dict)

    kind = "pyramidal"

    def __post_init__(self):
        super().__post_init__()
        for comp, g in self.compartments.items():
            if not isinstance(g, (int, float)) or isinstance(g, bool) or g < 0:
                raise ConfigError(f'population "{self.name}": conductance of compartment '
                                  f'"{comp}" must be a number >= 0, got {g!r}.')
            if comp == SOMA:
                raise ConfigError(f'population "{self.name}": "soma" is not a dendrite name.')

    @property
    def compartments(self) -> Mapping[str, float]:
        return {"basal": self.basal, "apical": self.apical, **dict(self.dendrites)}


@dataclass(frozen=True)
class InterneuronPopulation(_DynamicPopulation):
    """Point neurons (soma only), e.g. one inhibitory unit per layer; inputs target the soma."""

    activation: str = "relu"
    kind = "interneuron"


POPULATION_KINDS = {cls.kind: cls for cls in (InputPopulation, PyramidalPopulation,
                                              InterneuronPopulation)}
