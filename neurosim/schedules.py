"""Epoch schedules: a learning-rate factor per epoch, ``factor = schedule(epoch)`` (epochs
count from 0), for a whole run (``[training] lr_schedule``) or for one rule (its ``schedule``
key, which then replaces the run's for that rule).

Built-in types (``{ type = "...", ... }`` in a model file):

- ``constant``: 1 at every epoch.
- ``piecewise_exponential`` (``segments = [[0, 0.95], [15, 0.9]]``): lr(e) = lr_0 f_s^e with
  s the last segment whose start epoch is <= e (CorInfoMax's schedules).
- ``step`` (``milestones = [60, 90]``, ``factor = 0.1``): multiplied by ``factor`` at each
  milestone epoch reached, factor^(number of milestones <= e) (PEPITA's x0.1 at 60 and 90).
- ``exponential`` (``gamma = 0.95``): gamma^e.

Add one: subclass :class:`EpochSchedule` with a ``name`` and ``__call__(epoch)``, register it
with ``SCHEDULES.register`` or name it "package.module:Class".
"""
from __future__ import annotations

from typing import Any, ClassVar, Sequence

from .errors import ConfigError
from .registry import Registry, parameters


class EpochSchedule:
    """Base class: ``schedule(epoch) -> factor``; ``config()`` rebuilds it."""

    name: ClassVar[str] = "schedule"

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def config(self) -> dict:
        return {"type": self.name, **{k: getattr(self, k) for k in parameters(type(self))}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.config() == other.config()


SCHEDULES = Registry("schedule", base=EpochSchedule)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}.")
    return float(value)


@SCHEDULES.register
class Constant(EpochSchedule):
    name = "constant"

    def __call__(self, epoch: int) -> float:
        return 1.0


@SCHEDULES.register
class PiecewiseExponential(EpochSchedule):
    """lr(e) = lr_0 * factor_s^e, s the last segment with start <= e."""

    name = "piecewise_exponential"

    def __init__(self, segments: Sequence[Sequence[float]] = ((0, 1.0),)):
        try:
            parsed = tuple((int(a), float(b)) for a, b in segments)
        except (TypeError, ValueError):
            raise ConfigError("segments must be a list of [start_epoch, factor] pairs, e.g. "
                              f"[[0, 0.95], [15, 0.9]]; got {segments!r}.") from None
        if not parsed or parsed[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(parsed, parsed[1:])):
            raise ConfigError(f"segments must start at epoch 0 and increase, got {segments!r}.")
        self.segments = parsed

    def config(self) -> dict:
        return {"type": self.name, "segments": [list(s) for s in self.segments]}

    def __call__(self, epoch: int) -> float:
        factor = 1.0
        for start, value in self.segments:
            if epoch >= start:
                factor = value
        return factor ** epoch


@SCHEDULES.register
class StepDecay(EpochSchedule):
    """factor^(number of milestones <= e): x0.1 at epochs 60 and 90 with the defaults."""

    name = "step"

    def __init__(self, milestones: Sequence[int] = (60, 90), factor: float = 0.1):
        if isinstance(milestones, (int, float)) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 0 for m in milestones):
            raise ConfigError(f"milestones must be a list of epochs (integers >= 0), got "
                              f"{milestones!r}.")
        if list(milestones) != sorted(set(milestones)):
            raise ConfigError(f"milestones must increase, got {list(milestones)!r}.")
        self.milestones = list(milestones)
        self.factor = _number(factor, "factor")
        if not self.factor > 0:
            raise ConfigError(f"factor must be > 0, got {factor!r}.")

    def __call__(self, epoch: int) -> float:
        return self.factor ** sum(1 for m in self.milestones if epoch >= m)


@SCHEDULES.register
class Exponential(EpochSchedule):
    """gamma^e."""

    name = "exponential"

    def __init__(self, gamma: float = 0.95):
        self.gamma = _number(gamma, "gamma")
        if not self.gamma > 0:
            raise ConfigError(f"gamma must be > 0, got {gamma!r}.")

    def __call__(self, epoch: int) -> float:
        return self.gamma ** epoch


def make_epoch_schedule(spec: Any, where: str) -> EpochSchedule:
    """A schedule from None (constant), an instance, a name or a table with a ``type``
    (default ``piecewise_exponential`` when the table gives ``segments``)."""
    if spec is None:
        return Constant()
    if isinstance(spec, EpochSchedule):
        return spec
    if isinstance(spec, dict) and "type" not in spec and "segments" in spec:
        spec = {"type": "piecewise_exponential", **spec}
    return SCHEDULES.build(spec, where)
