"""Step-size schedules: the step ``dt_k`` used at step k (k restarts at 0 in every phase)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError, did_you_mean


@dataclass(frozen=True)
class ConstantStep:
    """dt_k = dt."""

    dt: float
    name = "constant"

    def __call__(self, k: int) -> float:
        """dt_k, the same for every step k."""
        return self.dt

    def config(self) -> dict:
        """The schedule as a table, ``{"type": "constant", "dt": dt}`` (make_schedule
        rebuilds it)."""
        return {"type": self.name, "dt": self.dt}


@dataclass(frozen=True)
class InverseTimeDecay:
    """dt_k = max(dt / (1 + decay k), minimum); CorInfoMax's "slow" rule is decay 0.01,
    minimum 1e-3."""

    dt: float
    decay: float = 0.01
    minimum: float = 1e-3
    name = "inverse_time"

    def __call__(self, k: int) -> float:
        """dt_k = max(dt / (1 + decay k), minimum) for step k of the phase."""
        return max(self.dt / (1.0 + self.decay * k), self.minimum)

    def config(self) -> dict:
        """The schedule as a table with type, dt, decay and minimum (make_schedule rebuilds
        it)."""
        return {"type": self.name, "dt": self.dt, "decay": self.decay, "minimum": self.minimum}


class TimeGrid:
    """``time(k, t)``: the time after step k (0-based, from time t before it). A constant
    schedule whose run started on its grid (t0 = step0 dt) gives (k + 1) dt, so step times
    carry no accumulated rounding (step 7 of dt 0.1 is 7 * 0.1, not 0.1 added 7 times) and a
    resumed run reproduces them exactly; otherwise t + dt_k."""

    def __init__(self, schedule, step0: int, t0: float):
        dt = getattr(schedule, "dt", None)
        self.schedule = schedule
        self.on_grid = isinstance(schedule, ConstantStep) and \
            abs(t0 - step0 * dt) <= 1e-9 * max(1.0, abs(t0))

    def __call__(self, k: int, t: float) -> float:
        return (k + 1) * self.schedule.dt if self.on_grid else t + self.schedule(k)

    def block(self, k: int, stop: int, t: float) -> tuple[list[float], list[float]]:
        """(dt_j, the time after step j) for steps j = k .. stop - 1, from time t before
        step k: the values of ``schedule(j)`` and ``time(j, .)`` step by step."""
        if self.on_grid:
            dt = self.schedule.dt
            return [dt] * (stop - k), [(j + 1) * dt for j in range(k, stop)]
        dts, times = [self.schedule(j) for j in range(k, stop)], []
        for dt in dts:
            t = t + dt
            times.append(t)
        return dts, times


def time_grid(schedule, step0: int, t0: float) -> TimeGrid:
    """The :class:`TimeGrid` of a run of ``schedule`` from step ``step0`` at time ``t0``."""
    return TimeGrid(schedule, step0, t0)


SCHEDULES = {"constant": ConstantStep, "inverse_time": InverseTimeDecay, "slow": InverseTimeDecay}


def make_schedule(spec, where: str = "schedule"):
    """Build a schedule from a number (constant), a schedule object, or a table
    ``{type = "constant"|"inverse_time"|"slow", dt = ..., decay = ..., minimum = ...}``."""
    if isinstance(spec, (ConstantStep, InverseTimeDecay)):
        return spec
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        spec = {"type": "constant", "dt": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a step size or a table, got {spec!r}.")
    spec = dict(spec)
    kind = spec.pop("type", "constant")
    if kind not in SCHEDULES:
        raise ConfigError(f'{where}: unknown schedule "{kind}".{did_you_mean(kind, SCHEDULES)} '
                          f"Valid: {', '.join(SCHEDULES)}.")
    cls = SCHEDULES[kind]
    allowed = set(cls.__dataclass_fields__)
    for key in spec:
        if key not in allowed:
            raise ConfigError(f'{where}: unknown key "{key}" for schedule "{kind}".'
                              f"{did_you_mean(key, allowed)} Valid keys: {', '.join(sorted(allowed))}.")
    if "dt" not in spec:
        raise ConfigError(f'{where}: schedule "{kind}" needs dt.')
    if not isinstance(spec["dt"], (int, float)) or spec["dt"] <= 0:
        raise ConfigError(f"{where}: dt must be a positive number, got {spec['dt']!r}.")
    return cls(**spec)
