"""The plasticity protocol: rules are hooks attached to projections.

When a rule runs
    After the learning protocol (e.g. equilibrium propagation) has finished all its phases
    for a mini-batch, the trainer calls ``rule.update(ctx)`` for every rule of every
    projection, in declaration order (under ``torch.inference_mode``). Every rule sees the
    weights as they were before any rule of this step ran, as long as it reads only its own
    projection's weight (built-in rules do); the fixed connectivity mask is re-applied after.

What a rule receives (:class:`SynapseContext`, read-only except ``ctx.weight``)
    ``ctx.phases``             phase names, e.g. ("nudged", "free")
    ``ctx.pre(phase)``         presynaptic activity r_src, (batch x n_pre)
    ``ctx.post(phase)``        postsynaptic activity r_tgt, (batch x n_post)
    ``ctx.potential(phase, c)`` postsynaptic potential of compartment c ("soma" = u, or a
                               dendrite's v_c), (batch x n_post)
    ``ctx.stacked_pre()`` / ``ctx.stacked_post()``  all phases stacked along the batch axis
                               in ``ctx.phases`` order (one matrix product covers every phase)
    ``ctx.pre_clamped``        True when the source is a clamped input population (its
                               activity is the same in every phase)
    ``ctx.beta``               signed nudge strength of the nudged phase (0 if none)
    ``ctx.batch_size``, ``ctx.projection`` (its description), ``ctx.weight`` (W, n_post x
    n_pre, to be changed in place), ``ctx.lr_scale`` (the epoch's learning-rate factor)

What a rule may change
    ``ctx.weight`` in place, and its own state (``self``). Rule state that must survive a
    checkpoint is returned by ``state_dict()`` and restored by ``load_state_dict()``.

Writing one's own rule: subclass :class:`PlasticityRule`, set ``name``, implement ``update``,
and decorate with :func:`register_rule` to use it from TOML as ``{ type = "<name>", ... }``
(or reference it as ``"package.module:ClassName"`` without registering).
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable, ClassVar, Mapping, Sequence

import torch

from ..errors import ConfigError, did_you_mean

RULES: dict[str, type["PlasticityRule"]] = {}


class SynapseContext:
    """Local view of one projection after a training step's phases (see module docstring)."""

    def __init__(self, *, projection, weight: torch.Tensor, phases: Sequence[str],
                 activity: Callable[[str, str], torch.Tensor],
                 stacked_activity: Callable[[str], torch.Tensor],
                 potential: Callable[[str, str, str], torch.Tensor],
                 beta: float, batch_size: int, lr_scale: float = 1.0, pre_clamped: bool = False):
        self.projection = projection
        self.pre_clamped = pre_clamped
        self.weight = weight
        self.phases = tuple(phases)
        self.beta = beta
        self.batch_size = batch_size
        self.lr_scale = lr_scale
        self._activity, self._stacked, self._potential = activity, stacked_activity, potential

    def _check(self, phase: str) -> None:
        if phase not in self.phases:
            raise ConfigError(f'rule on projection "{self.projection.name}" asked for phase '
                              f'"{phase}".{did_you_mean(phase, self.phases)} '
                              f"Phases of this protocol: {', '.join(self.phases)}.")

    def pre(self, phase: str) -> torch.Tensor:
        self._check(phase)
        return self._activity(self.projection.source, phase)

    def post(self, phase: str) -> torch.Tensor:
        self._check(phase)
        return self._activity(self.projection.target, phase)

    def potential(self, phase: str, compartment: str = "soma") -> torch.Tensor:
        self._check(phase)
        return self._potential(self.projection.target, compartment, phase)

    def stacked_pre(self) -> torch.Tensor:
        return self._stacked(self.projection.source)

    def stacked_post(self) -> torch.Tensor:
        return self._stacked(self.projection.target)


class PlasticityRule:
    """Base class of plasticity rules (built-in and user-written alike)."""

    name: ClassVar[str] = "rule"
    #: whether the trainer's per-epoch learning-rate schedule scales this rule
    scheduled: ClassVar[bool] = True
    #: phases the rule needs from the protocol
    needs_phases: ClassVar[tuple[str, ...]] = ()

    def update(self, ctx: SynapseContext) -> None:
        raise NotImplementedError

    def config(self) -> dict:
        """The constructor arguments, so the rule can be rebuilt from a checkpoint."""
        params = inspect.signature(type(self).__init__).parameters
        return {"type": self.name, **{k: getattr(self, k) for k in params
                                      if k != "self" and hasattr(self, k)}}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        if state:
            raise ConfigError(f'rule "{self.name}" has no state but the checkpoint holds '
                              f"{sorted(state)}.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def register_rule(cls: type[PlasticityRule]) -> type[PlasticityRule]:
    """Class decorator: make a rule available to model files as ``type = cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, PlasticityRule)):
        raise TypeError("register_rule expects a PlasticityRule subclass")
    RULES[cls.name] = cls
    return cls


def rule_class(kind: str, where: str = "rule") -> type[PlasticityRule]:
    """The rule class registered as ``kind``, or imported from ``"package.module:ClassName"``."""
    if ":" in kind:
        module, _, attr = kind.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f'{where}: cannot import rule "{kind}": {err}. Is its directory '
                              "on PYTHONPATH?") from None
    if kind in RULES:
        return RULES[kind]
    raise ConfigError(f'{where}: unknown rule type "{kind}".{did_you_mean(kind, RULES)} '
                      f"Valid types: {', '.join(sorted(RULES))}, or 'module:ClassName'.")


def rule_parameters(cls: type[PlasticityRule]) -> list[str]:
    """Constructor parameter names of a rule class."""
    return [k for k in inspect.signature(cls.__init__).parameters if k != "self"]


def build_rule(spec, where: str = "rule") -> PlasticityRule:
    """Build a rule from an instance or a table ``{type = "...", <constructor args>}``."""
    if isinstance(spec, PlasticityRule):
        return spec
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f'{where}: a rule is a table with a "type" key, e.g. '
                          '{ type = "ep_contrastive", lr = 0.1 }; got ' f"{spec!r}.")
    spec = dict(spec)
    kind = spec.pop("type")
    cls = rule_class(kind, where)
    params = inspect.signature(cls.__init__).parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = rule_parameters(cls)
    for key in spec:
        if key not in params and not accepts_any:
            raise ConfigError(f'{where}: rule "{kind}" has no parameter "{key}".'
                              f"{did_you_mean(key, valid)} Parameters: {', '.join(valid)}.")
    try:
        return cls(**spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f'{where}: rule "{kind}": {err}') from None
