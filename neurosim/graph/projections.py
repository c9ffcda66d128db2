"""Projections (synapses): source activity -> a named compartment of a target population.

A projection contributes ``gain * W r_src`` to its target compartment's potential (or, when the
compartment is "soma", directly as a current). ``W`` has shape (target.size, source.size).
Weights are created by an initialiser named in ``init``:

- "xavier_uniform": U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010);
  "xavier_normal": N(0, 2 / (fan_in + fan_out))
- "he_uniform": U(-a, a), a = sqrt(6 / fan_in); "kaiming_normal": N(0, 2 / fan_in);
  "fan_in_uniform": U(-a, a), a = 1 / sqrt(fan_in) (PyTorch's default for nn.Linear)
- "gram_xavier": M M^T with M an n x n Xavier-uniform matrix (a random SPD matrix; needs
  source == target), as CorInfoMax initialises its lateral matrices B
- "normal": N(0, scale^2); "uniform": U(-scale, scale); "zeros"; "ones" (fixed fan-in sum)
- "identity": structural autapses ``r_src -> same neuron``, no weight tensor (never plastic)
- a registered or imported ("module:function") initialiser (see ``INITIALISERS``)
- or an explicit tensor / nested list of shape (target.size, source.size).
Every random initialiser is multiplied by ``scale``.

An optional fixed ``mask`` (same shape, 0/1) zeroes absent synapses; plasticity never creates
them. ``rules`` are plasticity hooks (see neurosim.plasticity) run after each training step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError, did_you_mean
from ..registry import Registry
from .populations import SOMA


def _uniform(bound):
    def init(n_post, n_pre, generator, dtype, scale):
        a = bound(n_post, n_pre) * scale
        return (torch.rand((n_post, n_pre), generator=generator, dtype=dtype) * 2 - 1) * a
    return init


def _normal(std):
    def init(n_post, n_pre, generator, dtype, scale):
        sigma = std(n_post, n_pre) * scale
        return torch.randn((n_post, n_pre), generator=generator, dtype=dtype) * sigma
    return init


def _gram_xavier(n_post, n_pre, generator, dtype, scale):
    bound = math.sqrt(6.0 / (2 * n_pre))
    m = (torch.rand((n_pre, n_pre), generator=generator, dtype=dtype) * 2 - 1) * bound
    return (m @ m.T) * scale


#: name -> init(n_post, n_pre, generator, dtype, scale) -> (n_post, n_pre) tensor.
#: Register your own with ``INITIALISERS.register(name="mine")(function)`` or name a function
#: "package.module:function" in a model file.
INITIALISERS = Registry("initialiser")
INITIALISERS.register(_uniform(lambda o, i: math.sqrt(6.0 / (i + o))), name="xavier_uniform")
INITIALISERS.register(_normal(lambda o, i: math.sqrt(2.0 / (i + o))), name="xavier_normal")
INITIALISERS.register(_uniform(lambda o, i: math.sqrt(6.0 / i)), name="he_uniform")
INITIALISERS.register(_normal(lambda o, i: math.sqrt(2.0 / i)), name="kaiming_normal")
INITIALISERS.register(_uniform(lambda o, i: 1.0 / math.sqrt(i)), name="fan_in_uniform")
INITIALISERS.register(_gram_xavier, name="gram_xavier")
INITIALISERS.register(_normal(lambda o, i: 1.0), name="normal")
INITIALISERS.register(_uniform(lambda o, i: 1.0), name="uniform")
INITIALISERS.register(lambda o, i, g, dtype, scale: torch.zeros((o, i), dtype=dtype), name="zeros")
INITIALISERS.register(lambda o, i, g, dtype, scale: torch.full((o, i), float(scale), dtype=dtype),
                      name="ones")
INITIALISERS.register(lambda o, i, g, dtype, scale: None, name="identity")


@dataclass
class Projection:
    """A synaptic pathway ``source -> target.compartment`` with weight ``W`` and ``gain``: it
    adds ``gain * W r_src`` to the compartment's potential v_c (to the soma current for
    "soma"); W is (target.size x source.size), created by ``init`` times ``scale``."""

    name: str
    source: str
    target: str
    compartment: str = SOMA
    init: Any = "xavier_uniform"
    gain: float = 1.0
    scale: float = 1.0
    mask: Any = None
    plastic: bool = True
    rules: Sequence[Any] = field(default_factory=list)

    def __post_init__(self):
        where = f'projection "{self.name}"'
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"projection name {self.name!r} must be an identifier.")
        if isinstance(self.init, str) and ":" not in self.init and self.init not in INITIALISERS:
            raise ConfigError(f'{where}: unknown init "{self.init}".'
                              f"{did_you_mean(self.init, INITIALISERS)} "
                              f"Valid initialisers: {', '.join(INITIALISERS)}, "
                              "'module:function', or a matrix.")
        for key in ("gain", "scale"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be a number, got {value!r}.")
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}.")
        if self.is_identity:
            self.plastic = False
        from ..plasticity import build_rule      # rules import the graph: imported late
        self.rules = [build_rule(spec, f"{where} rules[{j}]")
                      for j, spec in enumerate(self.rules)]
        if self.rules and not self.plastic:
            raise ConfigError(f"{where}: has plasticity rules but is not plastic "
                              f"(init={self.init!r}, plastic={self.plastic}). "
                              "Remove the rules or make the projection plastic.")

    @property
    def is_identity(self) -> bool:
        """Whether this is a structural ``init = "identity"`` projection (``r_src`` onto the
        same neuron, no weight tensor, never plastic)."""
        return isinstance(self.init, str) and self.init == "identity"

    def initial_weight(self, n_post: int, n_pre: int, generator: torch.Generator,
                       dtype=torch.float64) -> torch.Tensor | None:
        """Create the initial weight (None for structural identity projections)."""
        shape = (n_post, n_pre)
        init = self.init
        if not isinstance(init, str):
            weight = torch.as_tensor(init, dtype=dtype)
            if tuple(weight.shape) != shape:
                raise ConfigError(f'projection "{self.name}": weight has shape '
                                  f"{tuple(weight.shape)} but {self.target} x {self.source} "
                                  f"needs {shape}.")
            self._check_finite(weight, "init (explicit weights)")
            return weight.clone()
        initialise = INITIALISERS.lookup(init, f'projection "{self.name}" init')
        try:
            weight = initialise(n_post, n_pre, generator, dtype, self.scale)
        except (MemoryError, RuntimeError) as err:
            from ..sizing import format_bytes, is_allocation_error
            if not is_allocation_error(err):
                raise
            nbytes = n_post * n_pre * torch.empty(0, dtype=dtype).element_size()
            raise ConfigError(f'projection "{self.name}" needs {n_post} x {n_pre} '
                              f"{str(dtype).removeprefix('torch.')} weights = "
                              f"{format_bytes(nbytes)} while it is initialised, more than this "
                              f"machine could allocate; make populations \"{self.target}\" or "
                              f'"{self.source}" smaller.') from None
        if weight is not None and tuple(weight.shape) != shape:
            raise ConfigError(f'projection "{self.name}": initialiser "{init}" returned shape '
                              f"{tuple(weight.shape)}, needs {shape}.")
        if weight is not None:
            self._check_finite(weight, f'initialiser "{init}" (scale {self.scale})')
        return weight

    def _check_finite(self, weight: torch.Tensor, what: str) -> None:
        bad = ~torch.isfinite(weight)
        if bool(bad.any()):
            i, j = (int(k) for k in bad.nonzero()[0])
            raise ConfigError(f'projection "{self.name}": {what} gave weight [{i}, {j}] = '
                              f"{float(weight[i, j])!r}; weights must be finite numbers.")

    def initial_mask(self, n_post: int, n_pre: int) -> torch.Tensor | None:
        """The fixed connectivity mask as a float 0/1 tensor, or None."""
        if self.mask is None:
            return None
        mask = torch.as_tensor(self.mask)
        if tuple(mask.shape) != (n_post, n_pre):
            raise ConfigError(f'projection "{self.name}": mask has shape {tuple(mask.shape)}, '
                              f"needs {(n_post, n_pre)} (target size x source size).")
        if not torch.all((mask == 0) | (mask == 1)):
            raise ConfigError(f'projection "{self.name}": mask entries must be 0 or 1.')
        return mask.to(torch.float64)
