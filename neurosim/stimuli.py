"""Time-varying stimuli: currents injected into neurons, or inputs that change over time.

A :class:`Stimulus` applies a waveform ``I(t)`` to one population, to all its neurons or to
those listed in ``indices``:

- a dynamic population (pyramidal, interneuron, any cell): ``I(t)`` is a current into a
  compartment. Into the soma it adds to the soma input,
  ``tau du/dt = -g_lk u + sum_c g_c (v_c - u) + I_soma + I(t)``; into dendrite ``c`` it adds to
  that compartment's potential, ``v_c <- v_c + I(t)`` (for linear cells ``g_c I(t)`` in du/dt);
- an input population: ``I(t)`` is added to the clamped activity, ``x(t) = x_0 + I(t)``, where
  ``x_0`` is the static value of ``[simulation] inputs`` (0 when a stimulus drives an input
  that has no entry there).

Waveforms (the ``type`` of a ``[[stimulus]]`` table; every one adds ``offset``, default 0;
amplitudes are a number, one value per driven neuron, or a (batch, neurons) table):

==============  ===========================================================================
``step``        ``amplitude`` for ``start <= t < stop`` (``stop`` default: never)
``pulses``      ``amplitude`` during ``[start + k period, start + k period + width)``,
                ``k = 0 .. count - 1`` (``count`` default: unbounded)
``ramp``        ``amplitude * clip((t - start) / (stop - start), 0, 1)``
``sine``        ``amplitude sin(2 pi frequency (t - start) + phase)`` for ``start <= t < stop``
``ou``          Ornstein-Uhlenbeck current on a grid of spacing ``dt`` (default: the
                simulation's step), held between grid points:
                ``x_k = mean + (x_{k-1} - mean) a + sigma sqrt(1 - a^2) z_k``,
                ``a = exp(-dt / tau)``, ``x_0 = mean + sigma z_0`` (stationary start, standard
                deviation ``sigma``), independent per sample and neuron
``white_noise`` ``mean + sigma z_k / sqrt(dt)`` on a grid of spacing ``dt``, held in between,
                so that ``int_0^t I ds`` has variance ``sigma^2 t`` (``sigma`` is the noise
                intensity)
``array``       samples on a time grid: ``values`` (inline) or ``file`` (.npy, or .h5/.hdf5
                with ``dataset``), shape (T,), (T, neurons) or (T, batch, neurons); times from
                ``dt`` (and ``t0``) or ``times``; ``interpolation = "hold"`` (default) or
                ``"linear"``; before the first and after the last sample the end values hold
``python``      ``function = "module:function"``, called as ``f(t)``; in Python any callable
==============  ===========================================================================

The random draws ``z_k`` of grid cell k come from a generator seeded by (simulation seed,
stimulus number, k), so a noise current is a fixed function of t: every solver, however it
orders its evaluations, and every resumed run sees the same realisation.
"""
from __future__ import annotations

import copy
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np
import torch

from .errors import ConfigError, unknown
from .graph import SOMA, check_keys
from .io.arrays import KEYS, ArrayFile

__all__ = ["Stimulus", "Waveform", "Step", "Pulses", "Ramp", "Sine", "OrnsteinUhlenbeck",
           "WhiteNoise", "Sampled", "Function", "WAVEFORMS", "Drive", "stimuli_from",
           "waveform_from_table"]

COMMON_KEYS = {"population", "type", "compartment", "indices", "name", "record", "offset"}
CURRENT_UNITS = "1 (dimensionless current)"
RATE_UNITS = "1 (dimensionless rate)"
_MASK = (1 << 64) - 1


def _snap(t: float) -> float:
    """t nudged past rounding: a time within 1e-9 (relative) of an edge counts as at or after
    it, so edges on the step grid fall where they are written (right-continuous)."""
    return t + 1e-9 * max(1.0, abs(t))


def _splitmix(x: int) -> int:
    """One round of the splitmix64 mixing function (decorrelates nearby seeds)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def _number(value, key: str, where: str, *, positive: bool = False,
            nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {key} must be a number, got {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{where}: {key} must be finite, got {value!r}.")
    if positive and value <= 0:
        raise ConfigError(f"{where}: {key} must be > 0, got {value!r}.")
    if nonnegative and value < 0:
        raise ConfigError(f"{where}: {key} must be >= 0, got {value!r}.")
    return value


def _values(value, key: str, where: str) -> torch.Tensor:
    """A number or a (nested) list of numbers as a finite float64 tensor."""
    try:
        tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key} must be a number or a list of numbers, got "
                          f"{value!r}.") from None
    if not bool(torch.isfinite(tensor).all()):
        raise ConfigError(f"{where}: {key} must be finite (no nan or inf).")
    return tensor


class Waveform:
    """``I(t)`` as a float64 tensor broadcastable to (batch, neurons). Subclasses set ``kind``
    and ``keys`` (their TOML keys) and define :meth:`value`."""

    kind: ClassVar[str] = ""
    keys: ClassVar[frozenset] = frozenset()
    random: ClassVar[bool] = False

    def __init__(self, offset: float = 0.0):
        self.offset = offset

    def bind(self, batch: int, size: int, *, seed: int, dt: float | None, where: str) -> None:
        """Fix the shape (batch x size neurons) and, for noise, the seed and grid."""
        self.batch, self.size, self.where = batch, size, where
        for name, tensor in self.parameters().items():
            try:
                torch.broadcast_shapes(tuple(tensor.shape), (batch, size))
            except RuntimeError:
                raise ConfigError(f"{where}: {name} has shape {tuple(tensor.shape)}; use a "
                                  f"number, {size} values (one per driven neuron) or a "
                                  f"(batch={batch}, {size}) table.") from None

    def parameters(self) -> dict[str, torch.Tensor]:
        """Tensor-valued parameters whose shapes must broadcast to (batch, neurons)."""
        return {}

    def value(self, t: float) -> torch.Tensor | float:
        """The waveform at time t, without ``offset``."""
        raise NotImplementedError

    def settles_at(self) -> float:
        """The time after which the waveform no longer changes (inf: it never settles)."""
        return math.inf

    def __call__(self, t: float) -> torch.Tensor:
        """``I(t) = value(t) + offset`` as float64."""
        return torch.as_tensor(self.value(t), dtype=torch.float64) + self.offset

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the waveform (caches that speed up a resumed run)."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""


class _Windowed(Waveform):
    """A waveform on between ``start`` and ``stop``."""

    def __init__(self, amplitude=1.0, start: float = 0.0, stop: float | None = None,
                 offset: float = 0.0):
        super().__init__(offset)
        self.amplitude = _values(amplitude, "amplitude", type(self).__name__)
        self.start, self.stop = float(start), (math.inf if stop is None else float(stop))
        if not self.stop > self.start:
            raise ConfigError(f"{type(self).__name__}: stop ({stop}) must come after start "
                              f"({start}).")

    def parameters(self):
        return {"amplitude": self.amplitude}

    def on(self, t: float) -> bool:
        """Whether t lies in ``[start, stop)`` (edges on the step grid exact, see _snap)."""
        t = _snap(t)
        return self.start <= t < self.stop


class Step(_Windowed):
    """``amplitude`` for ``start <= t < stop``, 0 otherwise."""

    kind = "step"
    keys = frozenset({"amplitude", "start", "stop"})

    def value(self, t):
        """``amplitude`` on ``[start, stop)``, else 0."""
        return self.amplitude if self.on(t) else 0.0

    def settles_at(self):
        """``stop`` (or ``start`` when it never stops)."""
        return self.stop if math.isfinite(self.stop) else self.start


class Pulses(Waveform):
    """A pulse train: ``amplitude`` during ``[start + k period, start + k period + width)``
    for ``k = 0 .. count - 1``."""

    kind = "pulses"
    keys = frozenset({"amplitude", "start", "width", "period", "count"})

    def __init__(self, amplitude=1.0, *, width: float, period: float, start: float = 0.0,
                 count: int | None = None, offset: float = 0.0):
        super().__init__(offset)
        self.amplitude = _values(amplitude, "amplitude", "Pulses")
        self.start, self.width, self.period = float(start), float(width), float(period)
        if not 0 < self.width <= self.period:
            raise ConfigError(f"Pulses: need 0 < width <= period, got width {width} and "
                              f"period {period}.")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                  or count < 1):
            raise ConfigError(f"Pulses: count must be a positive integer, got {count!r}.")
        self.count = count

    def parameters(self):
        return {"amplitude": self.amplitude}

    def value(self, t):
        """``amplitude`` inside a pulse, else 0."""
        t = _snap(t)
        if t < self.start:
            return 0.0
        k, phase = divmod(t - self.start, self.period)
        if self.count is not None and k >= self.count:
            return 0.0
        return self.amplitude if phase < self.width else 0.0

    def settles_at(self):
        """The end of the last pulse (inf without ``count``)."""
        return math.inf if self.count is None else \
            self.start + (self.count - 1) * self.period + self.width


class Ramp(Waveform):
    """``amplitude * clip((t - start) / (stop - start), 0, 1)``: 0 before ``start``, a linear
    rise to ``amplitude`` at ``stop``, held afterwards."""

    kind = "ramp"
    keys = frozenset({"amplitude", "start", "stop"})

    def __init__(self, amplitude=1.0, *, start: float = 0.0, stop: float, offset: float = 0.0):
        super().__init__(offset)
        self.amplitude = _values(amplitude, "amplitude", "Ramp")
        self.start, self.stop = float(start), float(stop)
        if not self.stop > self.start:
            raise ConfigError(f"Ramp: stop ({stop}) must come after start ({start}).")

    def parameters(self):
        return {"amplitude": self.amplitude}

    def value(self, t):
        """``amplitude * clip((t - start) / (stop - start), 0, 1)``."""
        return self.amplitude * min(max((t - self.start) / (self.stop - self.start), 0.0), 1.0)

    def settles_at(self):
        """``stop``: the ramp holds from there."""
        return self.stop


class Sine(_Windowed):
    """``amplitude sin(2 pi frequency (t - start) + phase)`` for ``start <= t < stop``."""

    kind = "sine"
    keys = frozenset({"amplitude", "frequency", "phase", "start", "stop"})

    def __init__(self, amplitude=1.0, *, frequency: float, phase: float = 0.0,
                 start: float = 0.0, stop: float | None = None, offset: float = 0.0):
        super().__init__(amplitude, start, stop, offset)
        self.frequency, self.phase = float(frequency), float(phase)

    def value(self, t):
        """``amplitude sin(2 pi frequency (t - start) + phase)`` on ``[start, stop)``."""
        if not self.on(t):
            return 0.0
        return self.amplitude * math.sin(2 * math.pi * self.frequency * (t - self.start)
                                         + self.phase)

    def settles_at(self):
        """``stop`` (inf when the sine never stops)."""
        return self.stop


class _GridNoise(Waveform):
    """Noise held constant on the cells ``[k dt, (k+1) dt)`` of a time grid; ``z_k`` is a
    standard normal (batch x size) drawn from a generator seeded by (seed, k)."""

    random = True

    def __init__(self, *, dt: float | None = None, offset: float = 0.0):
        super().__init__(offset)
        self.dt = dt

    def bind(self, batch, size, *, seed, dt, where):
        super().bind(batch, size, seed=seed, dt=dt, where=where)
        self.seed = _splitmix(int(seed) & _MASK)
        if self.dt is None:
            if dt is None:
                raise ConfigError(f"{where}: give dt (the noise's time grid); the simulation's "
                                  "step schedule is not constant.")
            self.dt = float(dt)

    def cell(self, t: float) -> int:
        """The grid cell holding time t (robust to rounding of accumulated step times)."""
        return max(0, math.floor(t / self.dt + 1e-9))

    def normal(self, k: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_splitmix(self.seed ^ k))
        return torch.randn(self.batch, self.size, generator=generator, dtype=torch.float64)


class WhiteNoise(_GridNoise):
    """``mean + sigma z_k / sqrt(dt)`` on grid cell k (noise intensity ``sigma``)."""

    kind = "white_noise"
    keys = frozenset({"mean", "sigma", "dt"})

    def __init__(self, *, sigma: float, mean: float = 0.0, dt: float | None = None,
                 offset: float = 0.0):
        super().__init__(dt=dt, offset=offset)
        self.mean, self.sigma = float(mean), float(sigma)

    def value(self, t):
        """``mean + sigma z_k / sqrt(dt)`` of the grid cell k holding t."""
        return self.mean + self.normal(self.cell(t)) * (self.sigma / math.sqrt(self.dt))


class OrnsteinUhlenbeck(_GridNoise):
    """Exact Ornstein-Uhlenbeck updates on a grid (see module docstring): stationary mean
    ``mean``, standard deviation ``sigma``, correlation time ``tau``."""

    kind = "ou"
    keys = frozenset({"mean", "sigma", "tau", "dt"})
    cache_size = 64

    def __init__(self, *, sigma: float, tau: float, mean: float = 0.0,
                 dt: float | None = None, offset: float = 0.0):
        super().__init__(dt=dt, offset=offset)
        self.mean, self.sigma, self.tau = float(mean), float(sigma), float(tau)
        self._recent: OrderedDict[int, torch.Tensor] = OrderedDict()

    def _keep(self, k: int, x: torch.Tensor) -> torch.Tensor:
        self._recent[k] = x
        while len(self._recent) > self.cache_size:
            self._recent.popitem(last=False)
        return x

    def value(self, t):
        """``x_k`` of the grid cell k holding t, advanced from the nearest earlier cached
        cell (or from ``x_0``)."""
        k = self.cell(t)
        if k in self._recent:
            return self._recent[k]
        start = max((j for j in self._recent if j < k), default=None)
        if start is None:
            x = self._keep(0, self.mean + self.sigma * self.normal(0))
            start = 0
        else:
            x = self._recent[start]
        a = math.exp(-self.dt / self.tau)
        spread = self.sigma * math.sqrt(1.0 - a * a)
        for j in range(start + 1, k + 1):
            x = self._keep(j, self.mean + (x - self.mean) * a + spread * self.normal(j))
        return x

    def state_dict(self):
        """The newest computed grid cell and its value."""
        if not self._recent:
            return {}
        k = next(reversed(self._recent))
        return {"cell": k, "value": self._recent[k]}

    def load_state_dict(self, state):
        """Start the cache from a checkpointed grid cell."""
        self._recent.clear()
        if state:
            self._recent[int(state["cell"])] = torch.as_tensor(state["value"],
                                                               dtype=torch.float64)


class Sampled(Waveform):
    """Samples on a time grid, held (``interpolation="hold"``) or linearly interpolated;
    the first and last samples hold outside the grid."""

    kind = "array"
    keys = frozenset({"values", "file", "dataset", "times", "dt", "t0", "interpolation"})

    def __init__(self, values, *, times=None, dt: float | None = None, t0: float = 0.0,
                 interpolation: str = "hold", offset: float = 0.0):
        super().__init__(offset)
        self.samples = _values(values, "values", "array stimulus")
        if self.samples.ndim not in (1, 2, 3) or self.samples.shape[0] < 1:
            raise ConfigError(f"array stimulus: values must have shape (T,), (T, neurons) or "
                              f"(T, batch, neurons), got {tuple(self.samples.shape)}.")
        n = self.samples.shape[0]
        if (times is None) == (dt is None):
            raise ConfigError("array stimulus: give either dt (with optional t0) or times.")
        if times is None:
            self.times = float(t0) + float(dt) * torch.arange(n, dtype=torch.float64)
        else:
            self.times = _values(times, "times", "array stimulus").reshape(-1)
            if self.times.numel() != n:
                raise ConfigError(f"array stimulus: {self.times.numel()} times for {n} samples.")
            if n > 1 and not bool((self.times[1:] > self.times[:-1]).all()):
                raise ConfigError("array stimulus: times must be strictly increasing.")
        if interpolation not in ("hold", "linear"):
            raise unknown("interpolation", interpolation, ("hold", "linear"), "array stimulus")
        self.interpolation = interpolation

    def bind(self, batch, size, *, seed, dt, where):
        """Fix the shape; one sample (a row of ``values``) must fit (batch x size)."""
        try:
            torch.broadcast_shapes(tuple(self.samples.shape[1:]), (batch, size))
        except RuntimeError:
            raise ConfigError(f"{where}: values have shape {tuple(self.samples.shape)}; use "
                              f"(T,), (T, {size}) (one column per driven neuron) or "
                              f"(T, batch={batch}, {size}).") from None
        super().bind(batch, size, seed=seed, dt=dt, where=where)

    def settles_at(self):
        """The last sample's time."""
        return float(self.times[-1])

    def value(self, t):
        """The sample at t (held or linearly interpolated)."""
        i = int(torch.searchsorted(self.times, torch.tensor([_snap(t)], dtype=torch.float64),
                                   right=True)) - 1
        if i < 0:
            return self.samples[0]
        if i >= len(self.times) - 1 or self.interpolation == "hold":
            return self.samples[i]
        w = (t - float(self.times[i])) / float(self.times[i + 1] - self.times[i])
        return self.samples[i] * (1.0 - w) + self.samples[i + 1] * w


class Function(Waveform):
    """Any Python callable of t returning a number, one value per neuron or a
    (batch, neurons) array."""

    kind = "python"
    keys = frozenset({"function"})

    def __init__(self, function: Callable[[float], Any], offset: float = 0.0):
        super().__init__(offset)
        if not callable(function):
            raise ConfigError(f"python stimulus: {function!r} is not callable.")
        self.function = function

    def bind(self, batch, size, *, seed, dt, where):
        """Fix the shape and check the function's value at t = 0 against it."""
        super().bind(batch, size, seed=seed, dt=dt, where=where)
        try:
            torch.broadcast_shapes(tuple(self(0.0).shape), (batch, size))
        except RuntimeError:
            raise ConfigError(f"{where}: the function returned shape "
                              f"{tuple(self(0.0).shape)} at t=0; return a number, {size} "
                              f"values or a (batch={batch}, {size}) array.") from None

    def value(self, t):
        """``function(t)``, checked to be finite numbers."""
        try:
            out = torch.as_tensor(np.asarray(self.function(t), dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{self.where}: the function returned something that is not "
                              f"numbers at t={t:g} ({err}).") from None
        if not bool(torch.isfinite(out).all()):
            raise ConfigError(f"{self.where}: the function returned a non-finite value at "
                              f"t={t:g}.")
        return out


WAVEFORMS: dict[str, type[Waveform]] = {cls.kind: cls for cls in (
    Step, Pulses, Ramp, Sine, OrnsteinUhlenbeck, WhiteNoise, Sampled, Function)}


@dataclass
class Stimulus:
    """A waveform applied to ``population`` (``compartment``, the neurons in ``indices`` or
    all); ``record``: recorded with the response (True: as often as the most frequent neuron
    monitor; N: every N-th step; False: not)."""

    population: str
    waveform: Waveform | Callable[[float], Any]
    compartment: str = SOMA
    indices: Sequence[int] | None = None
    name: str | None = None
    record: bool | int = True
    where: str | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.waveform, Waveform):
            self.waveform = Function(self.waveform)
        if self.name is None:
            self.name = f"{self.population}_{self.waveform.kind}"
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ConfigError(f"stimulus name must be a non-empty string without '/', got "
                              f"{self.name!r}.")
        rec = self.record
        if not isinstance(rec, bool) and (not isinstance(rec, int) or rec < 1):
            raise ConfigError(f'stimulus "{self.name}": record is true, false or a positive '
                              f"number of steps, got {rec!r}.")


def _load_samples(table: Mapping, where: str, base_dir) -> tuple[Any, Any]:
    """(values, times) of an array stimulus from inline values or a .npy/.h5 file (``times``
    may name a dataset of the same HDF5 file)."""
    if ("values" in table) == ("file" in table):
        raise ConfigError(f"{where}: an array stimulus needs values = [...] or file = "
                          '"samples.npy" (or .h5 with dataset), not both.')
    if "values" in table:
        return table["values"], table.get("times")
    source = ArrayFile.from_table({k: table[k] for k in KEYS if k in table}, where, base_dir)
    times = table.get("times")
    if isinstance(times, str):
        if source.dataset is None:
            raise ConfigError(f"{where}: times = {times!r} names a dataset, which only HDF5 "
                              "files have; give the times as a list of numbers.")
        times = ArrayFile(source.path, times).load(where)
    return source.load(where), times


def waveform_from_table(table: Mapping, where: str, base_dir=None) -> Waveform:
    """The waveform of one ``[[stimulus]]`` table (see the module docstring)."""
    kind = table.get("type")
    if kind not in WAVEFORMS:
        raise unknown("stimulus type", kind, WAVEFORMS, where)
    cls = WAVEFORMS[kind]
    required = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is inspect.Parameter.empty and name != "self"
                and p.kind is not p.VAR_KEYWORD and name in cls.keys]
    if cls is Sampled:
        required = []
    check_keys(table, COMMON_KEYS | cls.keys, where, required=("population", *required))
    params = {k: v for k, v in table.items() if k in cls.keys}
    if "offset" in table:
        params["offset"] = _number(table["offset"], "offset", where)
    for key in ("start", "stop", "phase", "mean", "t0"):
        if key in params:
            params[key] = _number(params[key], key, where)
    for key in ("width", "period", "frequency", "sigma", "tau", "dt"):
        if key in params and not (key == "dt" and cls is Sampled and "times" in params):
            params[key] = _number(params[key], key, where, positive=key != "sigma",
                                  nonnegative=True)
    if cls is Sampled:
        values, times = _load_samples(table, where, base_dir)
        for key in ("values", "file", "dataset", "times"):
            params.pop(key, None)
    try:
        if cls is Sampled:
            return Sampled(values, times=times, **params)
        if cls is Function:
            from .registry import Registry, importable_from
            with importable_from(base_dir):
                function = Registry("stimulus function").lookup(params.pop("function"),
                                                                f"{where} function")
            return Function(function, **params)
        return cls(**params)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    except TypeError as err:
        raise ConfigError(f'{where}: {err}; keys of stimulus type "{kind}": '
                          f"{', '.join(sorted(cls.keys | {'offset'}))}.") from None


def stimuli_from(data: Mapping, where: str, base_dir=None) -> list[Stimulus]:
    """The ``[[stimulus]]`` tables of a parsed model file."""
    tables = data.get("stimulus", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{where}: stimuli are [[stimulus]] tables (an array of tables).")
    stimuli = []
    for i, table in enumerate(tables):
        label = f"{where} [[stimulus]] #{i + 1}"
        if not isinstance(table, dict):
            raise ConfigError(f"{label}: expected a table.")
        waveform = waveform_from_table(table, label, base_dir)
        try:
            stimuli.append(Stimulus(table["population"], waveform,
                                    compartment=table.get("compartment", SOMA),
                                    indices=table.get("indices"), name=table.get("name"),
                                    record=table.get("record", True), where=label))
        except ConfigError as err:
            raise ConfigError(f"{label}: {err}") from None
    return stimuli


class Drive:
    """Every stimulus of a simulation, compiled against its network: currents keyed like
    ``PhaseDynamics.currents`` and time-varying clamped inputs (see module docstring)."""

    def __init__(self, net, stimuli: Sequence[Stimulus], *, batch: int, seed: int,
                 dt: float | None, base_inputs: Mapping[str, torch.Tensor]):
        self.net, self.batch, self.base_inputs = net, batch, base_inputs
        # own copies: binding fixes shapes, seeds and caches, and a user's Stimulus objects may
        # be reused by other simulations (a seed sweep) or shared between populations
        self.stimuli = [copy.copy(stim) for stim in stimuli]
        for stim in self.stimuli:
            stim.waveform = copy.deepcopy(stim.waveform)
        self.columns: dict[str, torch.Tensor | None] = {}
        names = set()
        for i, stim in enumerate(self.stimuli):
            where = stim.where or f'stimulus "{stim.name}"'
            if stim.name in names:
                raise ConfigError(f"{where}: two stimuli share this name; give each a unique "
                                  "name.")
            names.add(stim.name)
            if stim.population not in net.slots:
                raise unknown("population", stim.population, net.slots, where)
            pop = net.network.population(stim.population)
            comps = [SOMA] if pop.is_input else [SOMA, *pop.compartments]
            if stim.compartment not in comps:
                raise unknown("compartment", stim.compartment, comps,
                              f'{where} (population "{stim.population}")')
            size = pop.size
            if stim.indices is not None:
                idx = list(stim.indices) if not isinstance(stim.indices, (str, bytes)) \
                    else [stim.indices]
                if not all(isinstance(j, (int, np.integer)) and not isinstance(j, bool)
                           for j in idx):
                    raise ConfigError(f"{where}: indices must be a list of neuron numbers "
                                      f"(integers), got {stim.indices!r}.")
                idx = [int(j) for j in idx]
                bad = [j for j in idx if not 0 <= j < size]
                if bad or not idx or len(set(idx)) != len(idx):
                    raise ConfigError(f"{where}: indices must be distinct neurons in "
                                      f"0..{size - 1} of \"{stim.population}\"; got {idx}.")
                self.columns[stim.name] = torch.tensor(idx, device=net.device)
                size = len(idx)
            else:
                self.columns[stim.name] = None
            stim.waveform.bind(batch, size, seed=int(seed) * 7919 + i + 1, dt=dt, where=where)
        self._at: tuple = (None, {})

    def values(self, t: float) -> dict[str, torch.Tensor]:
        """Each stimulus' value at t (rows 1 or batch, driven neurons), in the network's
        dtype; cached for the last t."""
        if self._at[0] == t:
            return self._at[1]
        out = {}
        for stim in self.stimuli:
            value = stim.waveform(t)
            value = value.reshape(1, -1) if value.ndim < 2 else value
            out[stim.name] = value.expand(value.shape[0], stim.waveform.size).to(
                self.net.device, self.net.dtype)
        self._at = (t, out)
        return out

    def _full(self, stim: Stimulus, value: torch.Tensor) -> torch.Tensor:
        """A stimulus' value over all neurons of its population (0 where not driven)."""
        cols = self.columns[stim.name]
        if cols is None:
            return value
        full = value.new_zeros(value.shape[0], self.net.slots[stim.population].size)
        full[:, cols] = value
        return full

    def _input_deltas(self, t: float) -> dict[str, torch.Tensor]:
        deltas: dict[str, torch.Tensor] = {}
        values = self.values(t)
        for stim in self.stimuli:
            if self.net.slots[stim.population].u_cols is None:
                full = self._full(stim, values[stim.name])
                deltas[stim.population] = deltas[stim.population] + full \
                    if stim.population in deltas else full
        return deltas

    def currents(self, t: float) -> dict:
        """Currents at t, keyed like ``PhaseDynamics.currents``: linear cells by population
        (``coef I``, coef 1 for the soma and g_c for dendrite c), general cells by
        (population, compartment); inputs' changes pass through their projections."""
        out: dict = {}

        def add(key, value):
            out[key] = out[key] + value if key in out else value

        values = self.values(t)
        for stim in self.stimuli:
            slot = self.net.slots[stim.population]
            if slot.u_cols is None:
                continue
            value = self._full(stim, values[stim.name])
            if slot.cell is not None:
                add((stim.population, stim.compartment), value)
            elif stim.compartment == SOMA:
                add(stim.population, value)
            else:
                g = float(self.net.network.population(stim.population)
                          .compartments[stim.compartment])
                add(stim.population, value * g)
        deltas = self._input_deltas(t)
        for q in self.net.network.projections:
            if q.source not in deltas:
                continue
            x = deltas[q.source]
            general = self.net.slots[q.target].cell is not None
            coef = float(q.gain) if general else self.net.coupling(q)
            weight = self.net.weights.get(q.name)
            if q.is_dense or weight is not None:       # linear: W (x0 + dx) = W x0 + W dx
                contrib = q.drive(x, weight)
            else:                                      # max-pooling is not linear in x
                base = self.base_inputs.get(q.source)
                if base is None:
                    contrib = q.drive(x, None)
                else:
                    base = torch.as_tensor(base).reshape(-1, x.shape[1])
                    contrib = q.drive(base + x, None) - q.drive(base, None)
            add((q.target, q.compartment) if general else q.target, contrib * coef)
        return out

    def compartment_input(self, population: str, compartment: str, t: float):
        """The summed stimuli into one compartment of a dynamic population at t (rows 1 or
        batch, all its neurons), or None when none drives it."""
        total = None
        values = self.values(t)
        for stim in self.stimuli:
            if stim.population == population and stim.compartment == compartment:
                full = self._full(stim, values[stim.name])
                total = full if total is None else total + full
        return total

    def settles_at(self) -> float:
        """The time after which no stimulus changes any more (inf if one never settles)."""
        return max(stim.waveform.settles_at() for stim in self.stimuli)

    def clamp(self, state, t: float) -> None:
        """Write x(t) = x_0 + I(t) of every driven input population into ``state.r``."""
        for name, delta in self._input_deltas(t).items():
            slot = self.net.slots[name]
            base = self.base_inputs.get(name)
            value = delta if base is None else base + delta
            state.r[:, slot.r_cols] = value.expand(state.r.shape[0], -1)

    def state_dict(self) -> dict:
        """Each stimulus' waveform state, by stimulus name (for checkpoints)."""
        return {stim.name: stim.waveform.state_dict() for stim in self.stimuli
                if stim.waveform.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict`."""
        for stim in self.stimuli:
            stim.waveform.load_state_dict(state.get(stim.name, {}))
