"""Simulations: integrate a network's dynamics on given inputs, record, checkpoint, resume.

A model file's ``[simulation]`` table sets the run (all keys optional)::

    [simulation]
    solver = "rk4"            # any name of neurosim.solvers.get_solver
    duration = 10.0           # or n_steps = 1000
    dt = 0.01                 # or step = { type = "inverse_time", dt = 0.05 }
    batch = 4                 # independent samples integrated side by side
    seed = 0                  # weights and noise
    rtol = 1e-7               # adaptive solvers only
    atol = 1e-9
    max_rhs_evals = 10000     # adaptive solvers: right-hand-side evaluations allowed per
                              # output interval (dt) before the run stops with an error; a
                              # run may average max(200, max_rhs_evals / 50) per output step
    steady_tol = 1e-6         # stop once max |du/dt| < steady_tol
    inputs = { x = { type = "uniform", low = 0.0, high = 1.0 } }   # or constant / values /
                              # gaussian (mean, covariance): one draw per sample, fixed in time;
                              # values may come from a file: { file = "x.npy" } (or .h5 with
                              # dataset), batch x size or size
    nudge = { out = { target = [0.0, 1.0], beta = 0.5 } }
    plasticity = { every = 10 }   # rules run every 10 steps; "continuous" (weights in the
                                  # ODE state, rules give dW/dt); "off"; default every step

    [[monitor]]
    population = "h"
    compartment = "soma"      # soma: variables u, r; a dendrite: variable v
    variable = "u"
    indices = [0, 1, 2]       # optional, default all neurons
    every = 1                 # record every n-th step

    [[monitor]]
    projection = "x_h"        # a weight monitor: W (post x pre) every n-th step
    every = 10

Plasticity in a simulation: every rule attached to a projection or population runs on the
single phase "now" (the current state). With ``every = N`` the rules run after every N-th
step with ``ctx.dt`` the simulated time since their last run (a rule that only defines
``derivative`` takes one Euler step of it); with ``"continuous"`` the plastic weights are part
of the ODE state and every rule must define ``derivative(ctx)`` (dW/dt); solvers: euler,
heun, rk4 and torchdiffeq methods. A rule that cannot run in the chosen mode is an error.
Weight monitors record W as it is at that step (before that step's rule update).

The recording layout is documented in neurosim.io.recorder; weights are recorded at
``/recordings/<projection>/synapses/w`` (axes time, post, pre). A simulation resumed from a
checkpoint continues the recording of the run that wrote it when given
``Recorder(path, append=True)``: the records after the checkpoint's step are dropped first
(root attr ``first_step`` says where a recording starts), so the finished file equals the
recording of an uninterrupted run. The recorder is flushed before every checkpoint. Only an
incomplete recording (a crashed run's) or one without records after the checkpoint's step is
continued; the run's root attributes (run_attrs: model, solver, seed, stimuli digest, ...) must
match the file's. A resumed run keeps the checkpoint's batch, seed, dtype and step
(Simulation.load_checkpoint).
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .dynamics import CompiledNetwork
from .dynamics.compiled import dendritic_potential
from .io import MonitorSpec
from .errors import ConfigError, NeurosimError, SimulationError, unknown
from .graph import SOMA, Network, check_finite, check_keys, parse_model_text
from .plasticity import PhaseRecord, RuleSet
from .plasticity.continuous import PlasticSystem
from .io.arrays import KEYS, ArrayFile
from .registry import importable_from, model_directory
from .solvers import (FixedStepSolver, Observer, Probe, SolveStats, SteadyState, TorchDiffEq,
                      get_solver, make_schedule, solve)
from .solvers.limits import check_max_rhs_evals
from .solvers.system import check_system_solver, integrate_system
from .stimuli import CURRENT_UNITS, RATE_UNITS, Drive, Stimulus, stimuli_from

__all__ = ["Simulation", "SimulationOptions", "NamedTensors", "simulation_options",
           "monitors_from", "validate_monitor", "read_monitor", "weight_monitor",
           "plasticity_mode", "UNITS"]

SIM_KEYS = {"solver", "duration", "n_steps", "dt", "step", "batch", "seed", "rtol", "atol",
            "max_rhs_evals",
            "steady_tol", "inputs", "nudge", "device", "dtype", "checkpoint_every", "plasticity"}
MONITOR_KEYS = {"population", "compartment", "variable", "indices", "every", "projection"}
UNITS = {"u": "1 (dimensionless potential)", "r": "1 (dimensionless rate)",
         "v": "1 (dimensionless potential)", "w": "1 (dimensionless weight)"}
SYNAPSES = "synapses"         # the "compartment" of a weight monitor


def weight_monitor(projection: str, every: int = 1) -> MonitorSpec:
    """A monitor of a projection's weight matrix W (post x pre)."""
    return MonitorSpec(projection, SYNAPSES, "w", every=every, units=UNITS["w"])


def plasticity_mode(spec, where: str) -> tuple[str, int] | None:
    """("off" | "every" | "continuous", N) from None (the default), "off", "continuous",
    N, { every = N } or { mode = "...", every = N }."""
    if spec is None:
        return None
    if isinstance(spec, str):
        spec = {"mode": spec}
    elif isinstance(spec, int) and not isinstance(spec, bool):
        spec = {"every": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f'{where}: plasticity is "off", "continuous", {{ every = N }} or N; got '
                          f"{spec!r}.")
    check_keys(spec, {"mode", "every"}, where)
    mode = spec.get("mode", "every")
    if mode not in ("off", "every", "continuous"):
        raise unknown("plasticity mode", mode, ("off", "every", "continuous"), where)
    every = spec.get("every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"{where}: every must be a positive number of steps, got {every!r}.")
    if mode != "every" and "every" in spec:
        raise ConfigError(f'{where}: every applies to mode "every" only.')
    return mode, every


def validate_monitor(monitor: MonitorSpec, network: Network, where: str = "monitor") -> None:
    """Check that a monitor names an existing population, compartment, variable and neurons.
    Variables: "u" and "r" at the soma ("r" only for inputs), "v" in a dendrite; "w" of a
    projection's synapses (weight monitors)."""
    if monitor.compartment == SYNAPSES:
        projection = network.projection(monitor.population)
        if not projection.has_weight:
            why = 'init "identity"' if projection.is_identity else f"a {projection.kind} projection"
            raise ConfigError(f'{where}: projection "{projection.name}" has no weight matrix '
                              f"({why}); monitor a projection with weights.")
        if not projection.is_dense:
            raise ConfigError(f'{where}: projection "{projection.name}" is a {projection.kind} '
                              "projection; a weight monitor records a dense (post x pre) weight "
                              "matrix.")
        if monitor.variable != "w" or monitor.indices is not None:
            raise ConfigError(f'{where}: a weight monitor records variable "w" of all synapses.')
        return
    if monitor.population not in network.population_map:
        raise unknown("population", monitor.population, network.population_map, where)
    pop = network.population(monitor.population)
    comps = [SOMA, *pop.compartments]
    if monitor.compartment not in comps:
        raise unknown("compartment", monitor.compartment, comps,
                      f'{where} (population "{monitor.population}")')
    allowed = (("r",) if pop.is_input else ("u", "r")) if monitor.compartment == SOMA else ("v",)
    if monitor.variable not in allowed:
        raise unknown("variable", monitor.variable, allowed,
                      f"{where} ({monitor.population}/{monitor.compartment})")
    if monitor.indices is not None:
        bad = [i for i in monitor.indices if not 0 <= i < pop.size]
        if bad:
            raise ConfigError(f'{where}: indices {bad} out of range for population '
                              f'"{monitor.population}" of size {pop.size} (valid 0..{pop.size - 1}).')


def read_monitor(monitor: MonitorSpec, net: CompiledNetwork, state,
                 t: float | None = None) -> torch.Tensor:
    """The monitored values (batch x neurons, or W for a weight monitor) of a state; a
    dendrite's v includes the stimuli injected into it at ``t`` (which becomes the state's
    time; default ``state.t``)."""
    if t is not None:
        state.t = t
    if monitor.compartment == SYNAPSES:
        return net.weights[monitor.population]
    if monitor.variable == "u":
        values = net.u_of(state, monitor.population)
    elif monitor.variable == "r":
        values = net.r_of(state, monitor.population)
    else:
        values = dendritic_potential(state, monitor.population, monitor.compartment)
    return values[:, list(monitor.indices)] if monitor.indices is not None else values


# attributes a waveform gets from the simulation when it is bound (shape, seed, label)
_BOUND_ATTRS = frozenset({"batch", "size", "where", "seed"})


def _digest_value(value):
    """A JSON-able, repr-stable description of one waveform attribute: numbers as floats,
    arrays as shape and SHA-256 of their float64 bytes, callables as module:qualname."""
    import hashlib
    import numpy as np
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = np.ascontiguousarray(torch.as_tensor(value).detach().cpu().double().numpy())
        return {"shape": list(array.shape), "sha256": hashlib.sha256(array.tobytes()).hexdigest()}
    if isinstance(value, (list, tuple)):
        return [_digest_value(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '?')}:" \
               f"{getattr(value, '__qualname__', type(value).__qualname__)}"
    return type(value).__qualname__


def _stimuli_digest(stimuli) -> str:
    """A short digest of what the stimuli inject: each one's name, population, compartment,
    indices, waveform kind and public parameters ("none" without stimuli). Stored in
    checkpoints and recordings, so that a run is not continued with other stimuli."""
    import hashlib
    import json
    import numpy as np
    if not stimuli:
        return "none"
    described = []
    for stim in stimuli:
        wave = stim.waveform
        public = sorted(getattr(wave, "__dict__", {}).items())
        params = {k: _digest_value(v) for k, v in public
                  if not k.startswith("_") and k not in _BOUND_ATTRS}
        indices = stim.indices
        if isinstance(indices, torch.Tensor):
            indices = indices.cpu()
        indices = None if indices is None else np.asarray(indices).tolist()
        described.append({"name": stim.name, "population": stim.population,
                          "compartment": stim.compartment, "indices": indices,
                          "waveform": {"kind": wave.kind,
                                       "class": f"{type(wave).__module__}:"
                                                f"{type(wave).__qualname__}",
                                       **params}})
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# options a resumed run keeps from its checkpoint (the state and the noise depend on them)
_FIXED_ON_RESUME = (("batch", "--batch"), ("seed", "--seed"), ("dtype", "--dtype"),
                    ("step", "--dt"))


def _check_fixed_on_resume(path, saved: Mapping, given: Mapping) -> None:
    """load_checkpoint: batch, seed, dtype and the step schedule cannot change."""
    for key, flag in _FIXED_ON_RESUME:
        if key not in given or key not in saved:
            continue
        old, new = saved[key], given[key]
        if key == "step":
            where = f"load_checkpoint({path}) step (--dt)"
            same = repr(make_schedule(old, where).config()) == \
                repr(make_schedule(new, where).config())
        else:
            same = old == new and isinstance(old, bool) == isinstance(new, bool)
        if not same:
            name = "dt" if key == "step" else key
            raise ConfigError(f"{path}: {name} ({flag}) cannot change on resume: the "
                              f"checkpoint's run has {name} = {old!r} and continues with it, not "
                              f"{new!r}; leave it out, or start a new run from the model "
                              f"with {name} = {new!r}.")


def _check_same_stimuli(path, attrs: Mapping, sim, from_text: bool) -> None:
    """load_checkpoint: the simulation rebuilt has the stimuli the checkpoint was saved with
    (their digest; checkpoints written before digests were stored are not checked)."""
    saved = attrs.get("stimuli_digest")
    if saved is None or saved == _stimuli_digest(sim.stimuli):
        return
    names = attrs.get("stimuli", "?")
    here = ", ".join(s.name for s in sim.stimuli) or "none"
    if from_text:
        raise ConfigError(f"{path}: the stimuli built from its model text ({here}) differ from "
                          f"those it was saved with ({names}); a stimulus file (array) has "
                          "changed since: restore it, or start a new run.")
    if not sim.stimuli:
        raise ConfigError(f"{path} was saved with stimuli ({names}) but none were given; pass "
                          "the same stimuli=[...] to Simulation.load_checkpoint.")
    raise ConfigError(f"{path}: the stimuli given ({here}) differ from those it was saved with "
                      f"({names}) in population, compartment, indices, waveform or parameters; "
                      "pass the same stimuli to continue the run, or start a new one.")


@dataclass
class SimulationOptions:
    """Resolved run options (from [simulation] plus command-line overrides)."""

    solver: str = "gs-euler"
    duration: float | None = None
    n_steps: int | None = None
    step: Any = 0.01
    batch: int = 1
    seed: int = 0
    rtol: float | None = None
    atol: float | None = None
    max_rhs_evals: int | None = None      # None: the solver's default (adaptive solvers only)
    steady_tol: float | None = None
    inputs: dict = field(default_factory=dict)
    nudge: dict = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint_every: int | None = None
    plasticity: Any = None

    def total_steps(self) -> int:
        """Steps of the run: ``n_steps``, else ``max(1, round(duration / dt))`` for a constant
        step; ConfigError when neither is given or the step schedule decays."""
        if self.n_steps is not None:
            return int(self.n_steps)
        schedule = make_schedule(self.step, "[simulation] step")
        if self.duration is None:
            raise ConfigError("[simulation]: give duration (or n_steps), e.g. --duration 10.")
        if schedule.name != "constant":
            raise ConfigError("[simulation]: with a decaying step schedule give n_steps, "
                              "not duration.")
        return max(1, round(self.duration / schedule.dt))


def _check_option_values(options: SimulationOptions, where: str | None) -> None:
    """Every option of the run in range. ``where`` is the model file: messages name the
    [simulation] key and its command-line flag; None (options built in Python): they name the
    SimulationOptions field."""
    def number(value, integer=False):
        kind = numbers.Integral if integer else numbers.Real
        return isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)

    def label(key, flag, field=None):
        if where is None:
            return f"SimulationOptions.{field or key}"
        return f"{where} [simulation] {key} ({flag})"

    def refuse(key, flag, what, field=None):
        value = getattr(options, field or key)
        return ConfigError(f"{label(key, flag, field)}: must be {what}, got {value!r}.")

    for key, flag in (("duration", "--duration"), ("rtol", "--rtol"), ("atol", "--atol"),
                      ("steady_tol", "--steady-tol")):
        value = getattr(options, key)
        if value is not None and not (number(value) and value > 0):
            raise refuse(key, flag, "a finite number > 0")
    for key, flag in (("n_steps", "--steps"), ("checkpoint_every", "--checkpoint-every")):
        value = getattr(options, key)
        if value is not None and not (number(value, integer=True) and value >= 1):
            raise refuse(key, flag, "a whole number >= 1")
    if not (number(options.seed, integer=True) and options.seed >= 0):
        raise refuse("seed", "--seed", "a whole number >= 0")
    if not (number(options.batch, integer=True) and options.batch >= 1):
        raise refuse("batch", "--batch", "a whole number >= 1")
    if isinstance(options.step, (numbers.Real, bool)) and \
            not (number(options.step) and options.step > 0):
        raise refuse("dt", "--dt", "a finite number > 0", field="step")
    if options.dtype not in ("float32", "float64"):
        raise refuse("dtype", "--dtype", '"float32" or "float64"')
    try:
        device = torch.device(options.device)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f'{label("device", "--device")}: "{options.device}" is not a '
                          'device; use "cpu", "cuda" or "cuda:N".')
    if device.type == "cuda" and not torch.cuda.is_available():
        fix = "--device cpu" if where is not None else 'device="cpu"'
        raise ConfigError(f'{where or "SimulationOptions"}: device "{options.device}" requested '
                          f"but CUDA is not available; use {fix}.")
    if options.max_rhs_evals is not None:
        check_max_rhs_evals(options.max_rhs_evals, label("max_rhs_evals", "--max-rhs-evals"))
    plasticity_mode(options.plasticity, label("plasticity", "--plasticity"))


def simulation_options(data: dict, where: str, **overrides) -> SimulationOptions:
    """Checked run options from a model file's ``[simulation]`` table (``data`` is the parsed
    file) and the non-None command-line ``overrides`` (``dt`` sets the step; ``duration``
    replaces the file's ``n_steps``); a ConfigError names the offending key."""
    table = dict(data.get("simulation", {}))
    check_keys(table, SIM_KEYS, f"{where} [simulation]")
    check_finite(table, f"{where} [simulation]")
    check_finite({k: v for k, v in overrides.items() if v is not None}, f"{where} [simulation]")
    if "duration" in table and "n_steps" in table:
        raise ConfigError(f"{where} [simulation]: give duration or n_steps, not both.")
    if overrides.get("duration") is not None and overrides.get("n_steps") is None:
        table.pop("n_steps", None)              # --duration replaces the file's n_steps
    if "dt" in table:
        if "step" in table:
            raise ConfigError(f"{where} [simulation]: give dt or step, not both.")
        table["step"] = table.pop("dt")
    if overrides.get("dt") is not None:
        table["step"] = overrides.pop("dt")
    overrides.pop("dt", None)
    table.update({k: v for k, v in overrides.items() if v is not None})
    options = SimulationOptions(**table)
    _check_option_values(options, where)
    return options


def monitors_from(data: dict, network: Network, where: str) -> list[MonitorSpec]:
    """The [[monitor]] tables of a model file (default compartment soma, variable u)."""
    monitors = []
    for i, table in enumerate(data.get("monitor", [])):
        label = f"{where} [[monitor]] #{i + 1}"
        if isinstance(table, dict) and "projection" in table:
            check_keys(table, {"projection", "every"}, f"{label} (weight monitor)")
            try:
                monitor = weight_monitor(table["projection"], table.get("every", 1))
            except NeurosimError as err:
                raise ConfigError(f"{label}: {err}") from None
            validate_monitor(monitor, network, label)
            monitors.append(monitor)
            continue
        check_keys(table, MONITOR_KEYS - {"projection"}, label, required=("population",))
        table = {"compartment": SOMA, "variable": "u", **table}
        table["units"] = UNITS[table["variable"]] if table["variable"] in UNITS else ""
        try:
            monitor = MonitorSpec(**table)
        except NeurosimError as err:
            raise ConfigError(f"{label}: {err}") from None
        validate_monitor(monitor, network, label)
        monitors.append(monitor)
    return monitors


class NamedTensors(MappingABC):
    """Tensors by name (read-only mapping of live tensors); an unknown name is a ConfigError
    with a "did you mean" hint."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], kind: str, where: str):
        self._tensors, self._kind, self._where = tensors, kind, where

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._tensors:
            raise unknown(self._kind, name, self._tensors, self._where)
        return self._tensors[name]

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


class Simulation:
    """A network, a solver and an explicit state that can be run, recorded and checkpointed."""

    def __init__(self, network: Network, options: SimulationOptions | None = None, *,
                 model_text: str | None = None, stimuli: list[Stimulus] = ()):
        self.network, self.options = network, options or SimulationOptions()
        self.model_text = model_text
        opt = self.options
        if not isinstance(opt, SimulationOptions):
            raise ConfigError(f"Simulation: options must be a SimulationOptions, got "
                              f"{type(opt).__name__}; build one with SimulationOptions(...).")
        _check_option_values(opt, None)      # from a model file: checked there, naming keys
        dtype = {"float32": torch.float32, "float64": torch.float64}[opt.dtype]
        self.net = CompiledNetwork(network, dtype=dtype, device=opt.device, seed=opt.seed)
        solver_kwargs = {k: getattr(opt, k) for k in ("rtol", "atol", "max_rhs_evals")
                         if getattr(opt, k) is not None}
        self.solver = get_solver(opt.solver, **solver_kwargs)
        self.schedule = make_schedule(opt.step, "[simulation] step")
        self.generator = torch.Generator(device=opt.device).manual_seed(opt.seed + 1)
        self.state = self.net.zero_state(opt.batch)
        # held products (projections with refresh_every > 1): the phase being stepped, and
        # what the last one held (PhaseDynamics.held_values), carried into the next phase
        self._phase, self._held = None, None
        self.step, self.t = 0, 0.0
        self.stimuli = [s if isinstance(s, Stimulus) else Stimulus(**s) for s in stimuli]
        self.inputs = self._make_inputs(opt.inputs, {s.population for s in self.stimuli})
        self.net.clamp_inputs(self.state, self.inputs)
        self.drive = self._make_drive()
        self.nudges = self._make_nudges(opt.nudge)
        self.plasticity, self.rules = self._make_plasticity(opt.plasticity)
        self.last_update_t = 0.0
        self.base_dir = ""

    def _make_plasticity(self, spec) -> tuple[tuple[str, int], RuleSet]:
        where = "[simulation] plasticity"
        mode = plasticity_mode(spec, where)
        if mode is not None and mode[0] == "off":
            return mode, RuleSet(self.net)
        try:
            rules = RuleSet(self.net, phases=("now",), who="a simulation")
        except ConfigError as err:
            raise ConfigError(f'{err} Rules in a simulation see the single phase "now"; to '
                              f'simulate with fixed weights set {where} = "off" (command '
                              "line: --plasticity off).") from None
        if not rules:
            if mode is not None and mode[0] != "off":
                raise ConfigError(f"{where}: no projection or population of this network has "
                                  "rules, so there is nothing to run; remove the key or attach "
                                  "rules (rules = [...]).")
            return ("off", 1), rules
        mode = mode or ("every", 1)
        for key, _, rule in rules.entries:
            if rule.warmup is not None or rule.schedule is not None:
                raise ConfigError(f'rule "{rule.name}" on {key.split(".")[0]}: warmup and '
                                  "schedule count training epochs; a simulation has none. "
                                  "Remove them from the rule (or simulate with plasticity = "
                                  '"off").')
        if mode[0] == "continuous":
            check_system_solver(self.solver)
            PlasticSystem(self.net, rules, self.dynamics, self.state.r)     # checks the rules
            dynamics = self.dynamics()
            if dynamics.stochastic:
                raise ConfigError(f"{where}: continuous plasticity integrates deterministic "
                                  "networks only (a population has noise or a stochastic "
                                  'activation); use plasticity = { every = N }.')
            if self.options.steady_tol:
                raise ConfigError(f"{where}: a steady-state stop (steady_tol) is not available "
                                  "with continuous plasticity; give duration or n_steps.")
        return mode, rules

    @classmethod
    def from_model_text(cls, text: str, where: str = "model", base_dir=None,
                        **overrides) -> "Simulation":
        """A simulation from a model file's text; "module:Class" plug-ins are imported from
        ``base_dir`` (the model file's directory) first."""
        from .training.config import build_network
        data = parse_model_text(text, where)
        with importable_from(base_dir):
            network = build_network(data, where)
            sim = cls(network, simulation_options(data, where, **overrides), model_text=text,
                      stimuli=stimuli_from(data, where, base_dir))
        sim.base_dir = str(Path(base_dir).resolve()) if base_dir is not None else ""
        return sim

    @classmethod
    def from_model_file(cls, path, **overrides) -> "Simulation":
        """A simulation from a model file (its directory is the ``base_dir``; ``overrides``
        replace [simulation] keys)."""
        from .graph import load_model_file
        model = load_model_file(path)
        return cls.from_model_text(model.text, where=str(model.path), base_dir=model.path.parent,
                                   **overrides)

    def _make_drive(self) -> Drive | None:
        """The stimuli compiled against the network (None without stimuli); time-varying
        inputs are clamped at the current time."""
        if not self.stimuli:
            return None
        schedule = self.schedule
        drive = Drive(self.net, self.stimuli, batch=self.options.batch, seed=self.options.seed,
                      dt=schedule.dt if schedule.name == "constant" else None,
                      base_inputs=self.inputs)
        if isinstance(self.solver, FixedStepSolver):
            step = schedule(0)
            for stim in drive.stimuli:
                if stim.waveform.kind == "white_noise" and stim.waveform.dt < step * (1 - 1e-9):
                    where = stim.where or f'stimulus "{stim.name}"'
                    raise ConfigError(
                        f"{where}: white noise on a grid "
                        f"(dt {stim.waveform.dt:g}) finer than the solver's step ({step:g}) is "
                        f"sampled once per step by {self.solver.name}, which would misstate its "
                        f"strength; give dt >= {step:g} (the default is the step) or use an "
                        "adaptive solver (dopri5).")
        drive.clamp(self.state, self.t)
        self.state.drive, self.state.t = drive, self.t
        return drive

    def _make_inputs(self, spec: Mapping, driven=frozenset()) -> dict[str, torch.Tensor]:
        """Static values of the input populations (an input driven by a stimulus and absent
        from ``spec`` is 0; other absent ones are uniform in [0, 1))."""
        inputs = {}
        gen = torch.Generator().manual_seed(self.options.seed + 2)
        names = [p.name for p in self.network.inputs]
        for name in spec:
            if name not in names:
                raise unknown("input population", name, names, "[simulation] inputs")
        for name in names:
            size = self.net.slots[name].size
            entry = spec.get(name, {"type": "constant", "value": 0.0} if name in driven
                             else {"type": "uniform"})
            where = f"[simulation] inputs.{name}"
            if isinstance(entry, (list, int, float)):
                entry = {"type": "values", "values": entry}
            check_keys(entry, {"type", "low", "high", "value", "values", "file", "dataset",
                               "mean", "covariance"}, where)
            try:
                x = self._input_values(entry, size, gen, where)
            except (TypeError, ValueError, RuntimeError) as err:
                if isinstance(err, ConfigError):
                    raise
                raise ConfigError(f"{where}: every value must be a number (or a list of "
                                  f"numbers of the right shape); {err}.") from None
            inputs[name] = x.to(self.net.device, self.net.dtype)
            if not bool(torch.isfinite(inputs[name]).all()):
                raise ConfigError(f"{where}: input values must be finite.")
        return inputs

    def _input_values(self, entry: Mapping, size: int, gen, where: str) -> torch.Tensor:
        """One input population's clamped values (batch x size, float64)."""
        batch = self.options.batch
        kind = entry.get("type", "values" if "values" in entry or "file" in entry else "uniform")
        if kind == "uniform":
            lo, hi = float(entry.get("low", 0.0)), float(entry.get("high", 1.0))
            return lo + (hi - lo) * torch.rand(batch, size, generator=gen, dtype=torch.float64)
        if kind == "constant":
            return torch.full((batch, size), float(entry.get("value", 0.0)), dtype=torch.float64)
        if kind == "values":
            if ("values" in entry) == ("file" in entry):
                raise ConfigError(f'{where}: give values = [...] or file = "x.npy" (or .h5 with '
                                  "dataset), not both.")
            if "file" in entry:
                source = ArrayFile.from_table({k: entry[k] for k in KEYS if k in entry}, where,
                                              model_directory())
                x = torch.as_tensor(source.load(where), dtype=torch.float64)
            else:
                x = torch.as_tensor(entry["values"], dtype=torch.float64)
            if x.ndim == 0:                   # one number for every neuron
                x = x.expand(size)
            if tuple(x.shape) not in ((size,), (batch, size)):
                raise ConfigError(f"{where}: values have shape {tuple(x.shape)}, expected "
                                  f"({size},) or (batch={batch}, {size}).")
            return x.expand(batch, -1)
        if kind == "gaussian":
            return self._gaussian_input(entry, size, gen, where)
        raise ConfigError(f'{where}: unknown type "{kind}"; use uniform, constant, values or '
                          "gaussian.")

    def _gaussian_input(self, entry: Mapping, size: int, gen, where: str) -> torch.Tensor:
        """x ~ N(mean, covariance) per sample (row), fixed in time: x = mean + L z, C = L L^T."""
        mean = torch.as_tensor(entry.get("mean", 0.0), dtype=torch.float64)
        cov = torch.as_tensor(entry.get("covariance", 1.0), dtype=torch.float64)
        if mean.ndim == 0:
            mean = mean.expand(size)
        if cov.ndim == 0:
            cov = cov * torch.eye(size, dtype=torch.float64)
        if tuple(mean.shape) != (size,) or tuple(cov.shape) != (size, size):
            raise ConfigError(f"{where}: gaussian needs mean of shape ({size},) (or a number) and "
                              f"covariance ({size}, {size}) (or a number); got "
                              f"{tuple(mean.shape)} and {tuple(cov.shape)}.")
        if not bool(torch.isfinite(cov).all() and torch.isfinite(mean).all()):
            raise ConfigError(f"{where}: gaussian mean and covariance must be finite.")
        factor, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0 or not torch.equal(cov, cov.T):
            raise ConfigError(f"{where}: covariance must be symmetric positive definite.")
        z = torch.randn(self.options.batch, size, generator=gen, dtype=torch.float64)
        return mean + z @ factor.T

    def _make_nudges(self, spec: Mapping) -> dict:
        nudges = {}
        for name, entry in spec.items():
            where = f"[simulation] nudge.{name}"
            slot = self.net.slots.get(name)
            if slot is None or slot.u_cols is None:
                dynamic = [n for n, s in self.net.slots.items() if s.u_cols is not None]
                if slot is None:
                    raise unknown("population", name, dynamic, "[simulation] nudge")
                raise ConfigError(f'{where}: "{name}" is an input population (clamped, it '
                                  f"cannot be nudged); nudge one of: {', '.join(dynamic)}.")
            check_keys(entry, {"target", "beta"}, where, required=("target", "beta"))
            target = torch.as_tensor(entry["target"], dtype=self.net.dtype, device=self.net.device)
            if target.shape[-1:] != (slot.size,):
                raise ConfigError(f"{where}: target has shape {tuple(target.shape)}, expected "
                                  f'({slot.size},) or (batch, {slot.size}) for population "{name}".')
            nudges[name] = (target, float(entry["beta"]))
        return nudges

    @property
    def weights(self) -> "NamedTensors":
        """Weights by projection name, W (post x pre); the live tensors (writing to them
        changes the network)."""
        return NamedTensors(self.net.weights, "projection with weights",
                            f'network "{self.network.name}"')

    @property
    def biases(self) -> "NamedTensors":
        """Per-neuron biases b (n,) by population name; the live tensors."""
        return NamedTensors(self.net.biases, "dynamic population", f'network "{self.network.name}"')

    def run_attrs(self) -> dict:
        """Root attributes of a recording of this simulation: model, solver, schedule, batch,
        dt, seed and ``stimuli_digest`` (a digest of the stimuli's populations, waveforms and
        parameters; "none" without stimuli). A recording is only continued by a run with the
        same ones."""
        return {"model": self.network.name, "solver": self.solver.name,
                "schedule": repr(self.schedule.config()), "batch": self.options.batch,
                "dt": float(getattr(self.schedule, "dt", 0.0)), "seed": self.options.seed,
                "stimuli_digest": _stimuli_digest(self.stimuli)}

    def dynamics(self):
        """The network's dynamics with the current weights, inputs, nudges and stimuli."""
        phase = self.net.phase(self.net.build_operators(), self.inputs, self.nudges,
                               generator=self.generator)
        phase.drive = self.drive
        if self._held is not None:         # a run continued (or resumed): its held products
            phase.carry_held(self.state, *self._held)
        return phase

    def _solve(self, **kwargs) -> SolveStats:
        """One solve of a new phase from the current step; the products it holds at its end
        are carried into the next (a run cut into pieces steps as the uncut one)."""
        self._phase = self.dynamics()
        try:
            return solve(self._phase, self.state, **kwargs)
        finally:
            self._held = self._phase.held_values()
            self._phase = None

    def stimulus_monitors(self, monitors=()) -> list[tuple[MonitorSpec, str]]:
        """(monitor, stimulus name) for every recorded stimulus: key
        ``<population>/<compartment>/stimulus_<name>``, every step that a neuron monitor
        records (the most frequent one's ``every``, or 1) unless the stimulus sets its own."""
        every = min((m.every for m in monitors if m.compartment != SYNAPSES), default=1)
        out = []
        for stim in self.stimuli:
            if stim.record is False:
                continue
            units = RATE_UNITS if self.net.slots[stim.population].u_cols is None \
                else CURRENT_UNITS
            spec = MonitorSpec(stim.population, stim.compartment, f"stimulus_{stim.name}",
                               indices=stim.indices,
                               every=every if stim.record is True else int(stim.record),
                               units=units)
            out.append((spec, stim.name))
        return out

    def _stimulus_kind(self, name: str) -> str:
        return next(s.waveform.kind for s in self.stimuli if s.name == name)

    def _stimulus_value(self, name: str, t: float) -> torch.Tensor:
        return self.drive.values(t)[name].expand(self.options.batch, -1)

    def run(self, n_steps: int | None = None, *, monitors=(), recorder=None,
            checkpoint: str | Path | None = None, checkpoint_every: int | None = None,
            progress: bool = False):
        """Advance to step ``n_steps`` (absolute; default from the options), recording the
        monitors (neurons or weights) into ``recorder``, running the rules as the plasticity
        mode says and checkpointing every ``checkpoint_every`` steps (the recorder is flushed
        first). A recorder opened with append=True is continued from this step (see the module
        docstring)."""
        total = self.options.total_steps() if n_steps is None else int(n_steps)
        if total < self.step:
            end = f"run({n_steps!r})" if n_steps is not None else \
                "the end of its options (duration or n_steps)"
            raise ConfigError(f"the simulation is already at step {self.step} (t={self.t:g}), "
                              f"after {end} at step {total}; n_steps is the absolute step to "
                              f"run to, so give one >= {self.step}.")
        self._inputs_from_state()
        self.state.t = self.t
        observers, probes = [], []
        if recorder is not None:
            recorder.annotate(self.run_attrs())
            monitors = [m if m.units or m.variable not in UNITS else
                        dataclasses.replace(m, units=UNITS[m.variable]) for m in monitors]
            for m in monitors:
                validate_monitor(m, self.network)
                shape = tuple(read_monitor(m, self.net, self.state).shape)
                axes = ("post", "pre") if m.compartment == SYNAPSES else None
                recorder.add(m.key, m, shape, self.net.dtype, axes=axes,
                             attrs={"solver": self.solver.name,
                                    "step_schedule": repr(self.schedule.config())})
            stimuli = self.stimulus_monitors(monitors)
            for m, name in stimuli:
                recorder.add(m.key, m, (self.options.batch, self.drive.columns[name].numel()
                                        if self.drive.columns[name] is not None else
                                        self.net.slots[m.population].size),
                             self.net.dtype, attrs={"stimulus": name,
                                                    "waveform": self._stimulus_kind(name),
                                                    "solver": self.solver.name,
                                                    "step_schedule": repr(self.schedule.config())})
            if recorder.resuming:     # append=True: keep the records up to this step, go on
                records, last_times = self._records_so_far(recorder)
                recorder.truncate(records, last_times=last_times)
            else:
                recorder.annotate({"first_step": self.step})
            if self.step == 0:
                for m in monitors:
                    recorder.append(m.key, read_monitor(m, self.net, self.state), self.t)
                for m, name in stimuli:
                    recorder.append(m.key, self._stimulus_value(name, self.t), self.t)
            for m in monitors:
                probe = self._probe(m, recorder)
                if probe is not None:
                    probes.append(probe)
                else:
                    observers.append(Observer(
                        lambda k, t, s, m=m: recorder.append(m.key, read_monitor(m, self.net, s,
                                                                                 t), t),
                        m.every))
            for m, name in stimuli:
                observers.append(Observer(
                    lambda k, t, s, m=m, name=name: recorder.append(
                        m.key, self._stimulus_value(name, t), t), m.every))

        last_saved = [self.step]

        def after_step(k: int, t: float) -> None:
            # continuous solvers report only at segment ends: save once a period has passed.
            # On a step where the rules are due, the checkpoint waits until they have run.
            self.step, self.t = k, t
            if self.plasticity[0] == "every" and k % self.plasticity[1] == 0 and \
                    self.last_update_t != t:
                return
            if checkpoint is not None and checkpoint_every and \
                    k // checkpoint_every > last_saved[0] // checkpoint_every:
                if recorder is not None:    # every record up to the checkpoint is on disk
                    recorder.flush()
                self.save_checkpoint(checkpoint)
                last_saved[0] = k

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total - self.step, desc="simulate", unit="step", mininterval=0.5,
                       disable=None)    # no bar when stderr is not a terminal (logs)
        try:
            if self.plasticity[0] == "continuous":
                with torch.no_grad():
                    stats = self._run_continuous(
                        total, [*observers, *(p.as_observer() for p in probes)], bar,
                        after_step)
            else:
                with torch.inference_mode():
                    stats = self._run_discrete(total, observers, probes, bar, after_step,
                                               checkpoint, checkpoint_every)
        finally:
            if bar is not None:
                bar.close()
        self.step, self.t = stats.steps, stats.t
        self.state.t = self.t
        self._clamped = {name: self.net.r_of(self.state, name).clone() for name in self.inputs}
        return stats

    def _inputs_from_state(self) -> None:
        """Reconcile the inputs with the state before a run: a clamped value written into the
        state (``sim.state["x"].r[:] = ...``) becomes the input, one set with
        ``sim.inputs["x"] = ...`` is clamped into the state. A stimulated input's rate is
        x0 + I(t), so writing it in the state is an error (set x0 in sim.inputs)."""
        driven = {s.population for s in self.stimuli}
        last = getattr(self, "_clamped", {})
        for name, value in self.inputs.items():
            current = self.net.r_of(self.state, name)
            if name in driven:
                expected = self.state.clone()
                self.drive.clamp(expected, self.t)
                if name in last and not torch.equal(current, last[name]):
                    raise ConfigError(f'input "{name}" is driven by a stimulus, so its rate is '
                                      f'x0 + I(t); set x0 with sim.inputs["{name}"] = ... '
                                      "instead of writing sim.state[...].r.")
                current.copy_(self.net.r_of(expected, name))
            elif name in last and not torch.equal(current, last[name]):
                self.inputs[name] = current.clone()
            elif not torch.equal(current, value.expand_as(current)):
                self.net.clamp_inputs(self.state, {name: value})
        self._clamped = {name: self.net.r_of(self.state, name).clone() for name in self.inputs}

    def _records_so_far(self, recorder) -> tuple[dict[int, int], dict[int, float]]:
        """For continuing ``recorder``'s file at this step: how many records each of its time
        axes holds up to this step (a recording starting at step s0 = root attr first_step has
        those of the multiples of every in [0, step], or in (s0, step] when s0 > 0; none at
        step 0, where run() records the initial state again), and the time of the last one
        where that is this step."""
        where = f"cannot continue recording {recorder.path}"
        text = recorder.config_text
        if self.model_text and text is not None and text != self.model_text:
            raise ConfigError(f"{where}: it was recorded from another model text than this "
                              "simulation's; write to another file (or replace it: --force).")
        first = recorder.file_attrs.get("first_step")
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= self.step:
            found = "is missing" if first is None else f"is {first!r}"
            raise ConfigError(f"{where} at step {self.step}: its root attribute first_step (the "
                              f"step of its first record) {found}, so it is not a recording this "
                              "simulation can continue; write to another file.")
        records, last_times = {}, {}
        for every in recorder.rates:
            n = self.step // every - first // every + (first == 0) if self.step else 0
            records[every] = n
            if self.step % every == 0 and n:
                last_times[every] = self.t
        # a finished recording is continued only where it ends: its records after this step
        # are not those of a crashed run's last moments but results that truncate() would drop
        later = [(every, held - records[every])
                 for every, held in recorder.records_held.items() if held > records[every]]
        if later and recorder.file_attrs.get("complete") is True:
            every, extra = later[0]
            raise ConfigError(
                f"{where} at step {self.step} (t={self.t:g}): it is a finished recording that "
                f"goes on past this step ({extra} records after it on time axis every_{every}), "
                "which continuing would drop; resume from a checkpoint at its end, write to "
                "another file (on the command line another --out), or replace it "
                "(overwrite=True; on the command line --force, a new recording from this step).")
        return records, last_times

    def _steady(self, total: int):
        """The steady-state stop, not before the stimuli have stopped changing."""
        if not self.options.steady_tol:
            return None
        after = self.drive.settles_at() if self.drive is not None else -math.inf
        if math.isinf(after) and after > 0:
            raise ConfigError("[simulation] steady_tol (--steady-tol): a stimulus of this "
                              "simulation never stops changing (noise, a sine or pulses "
                              "without stop/count, a Python function), so there is no steady "
                              "state to stop at; give duration or n_steps instead, or end the "
                              "stimulus (stop = ...).")
        return SteadyState(self.options.steady_tol, max_steps=total - self.step, after=after)

    def _probe(self, monitor: MonitorSpec, recorder) -> Probe | None:
        """A soma monitor (u or r of a population's neurons) as a :class:`Probe` writing
        blocks of records into ``recorder``; None for the others (dendrites, weights)."""
        if monitor.compartment != SOMA or monitor.variable not in ("u", "r"):
            return None
        slot = self.net.slots[monitor.population]
        cols = slot.u_cols if monitor.variable == "u" else slot.r_cols
        if cols is None:
            return None
        picked = range(slot.size) if monitor.indices is None else monitor.indices
        columns = torch.tensor([cols.start + i for i in picked], dtype=torch.int64,
                               device=self.state.u.device)
        def sink(steps, times, values):
            if len(times) == 1:                  # the eager path: one record at a time
                recorder.append(monitor.key, values[0], times[0])
            else:
                recorder.append_block(monitor.key, values, times)
        return Probe(monitor.variable, columns, monitor.every, sink)

    def _run_discrete(self, total: int, observers, probes, bar, after_step, checkpoint,
                      checkpoint_every) -> SolveStats:
        """Fixed weights, or rules after every N-th step (the solve is cut at multiples of N)."""
        mode, every = self.plasticity
        common = dict(solver=self.solver, schedule=self.schedule, observers=observers,
                      probes=probes, progress=bar, after_step=after_step,
                      after_every=checkpoint_every if checkpoint is not None and
                      checkpoint_every else total + 1)
        if mode == "off":
            return self._solve(n_steps=total, step0=self.step, t0=self.t,
                               steady=self._steady(total), **common)
        evals, stats, path = 0, SolveStats(steps=self.step, t=self.t), None
        while self.step < total:
            stop = min(total, (self.step // every + 1) * every)
            stats = self._solve(n_steps=stop, step0=self.step, t0=self.t,
                                steady=self._steady(total), **common)
            evals += stats.rhs_evals
            path = path or stats.path
            self.step, self.t = stats.steps, stats.t
            if self.step % every == 0:
                self.apply_rules()
                after_step(self.step, self.t)        # the checkpoint that waited for the rules
            if stats.converged:
                break
        stats.rhs_evals, stats.path = evals, path
        return stats

    def apply_rules(self) -> None:
        """Run every rule once on the current state (phase "now"); ``ctx.dt`` is the time
        since the rules last ran."""
        record = PhaseRecord(self.net, {"now": self.state})
        self.rules.apply(record, dt=self.t - self.last_update_t, step=self.step)
        self.last_update_t = self.t

    def _run_continuous(self, total: int, observers, bar, after_step) -> SolveStats:
        """Potentials and plastic weights integrated together (neurosim.plasticity.continuous)."""
        system = PlasticSystem(self.net, self.rules, self.dynamics, self.state.r.clone())
        stats = SolveStats(steps=self.step, t=self.t)
        for k, t, y in integrate_system(system, system.initial(self.state), solver=self.solver,
                                        schedule=self.schedule, n_steps=total,
                                        step0=self.step, t0=self.t):
            system.write_back(y, self.state)
            if self.drive is not None:
                self.drive.clamp(self.state, t)
            for obs in observers:
                if k % obs.every == 0:
                    obs.callback(k, t, self.state)
            if not all(bool(torch.isfinite(c).all()) for c in y):
                raise SimulationError(
                    f"non-finite potentials or weights at step {k} (t={t:g}) with continuous "
                    "plasticity; reduce the step size (dt), the rules' learning rates, or use "
                    "an adaptive solver (dopri5).")
            stats.steps, stats.t = k, t
            if not isinstance(self.solver, TorchDiffEq) or k % self.solver.segment == 0 \
                    or k == total:      # mid-segment states of odeint would not resume exactly
                after_step(k, t)
            if bar is not None:
                bar.update(1)
        self.last_update_t = stats.t
        stats.rhs_evals = system.evals
        return stats

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path) -> None:
        """Write what :meth:`load_checkpoint` needs to resume exactly: weights, biases, rule
        states, u and r, inputs, nudges, random generators, stimuli, progress, the model text
        and the options."""
        from .io import capture_rng_state, save_checkpoint
        payload = {
            "network": dict(self.net.weights),
            "biases": dict(self.net.biases),
            "rules": self.rules.state_dict() if self.plasticity[0] != "off" else {},
            "state": {"u": self.state.u, "r": self.state.r},
            "held": self._held_payload(),
            "inputs": dict(self.inputs),
            "nudge": {name: {"target": target, "beta": beta}
                      for name, (target, beta) in self.nudges.items()},
            "rng": capture_rng_state({"noise": self.generator}),
            "stimuli": self.drive.state_dict() if self.drive is not None else {},
            "progress": {"step": self.step, "t": self.t, "last_update_t": self.last_update_t},
            "solver": {"config": repr(self.solver.config()),
                       "schedule": repr(self.schedule.config())},
        }
        import json
        options = {k: v for k, v in self.options.__dict__.items() if k not in ("inputs", "nudge")}
        names = ", ".join(stim.name for stim in self.stimuli) or "none"
        save_checkpoint(path, payload, kind="simulation", config_text=self.model_text or "",
                        attrs={"options_json": json.dumps(options), "base_dir": self.base_dir,
                               "stimuli": names, "stimuli_digest": _stimuli_digest(self.stimuli)})

    def _held_payload(self) -> dict:
        """The held products at this step (none: {}), from the phase being stepped (a
        checkpoint during a run) or the last one."""
        held = self._phase.held_values() if self._phase is not None else self._held
        if held is None:
            return {}
        return {"step": held[0], "values": dict(held[1])}

    @classmethod
    def load_checkpoint(cls, path, network: Network | None = None, *, stimuli=(),
                        **overrides) -> "Simulation":
        """Rebuild a simulation exactly where the checkpoint left it. A simulation built in
        Python (no model file) stores no graph text: pass the same ``network`` and
        ``stimuli`` again (other stimuli, or none where it had some, are a ConfigError).

        ``overrides`` are SimulationOptions fields (``dt`` for ``step``). A new end
        (``duration`` or ``n_steps``, after the checkpoint's step) replaces the saved one;
        solver, tolerances, max_rhs_evals, steady_tol, plasticity and device may change (the
        run then differs from an uninterrupted one); ``batch``, ``seed``, ``dtype`` and the
        step are the checkpoint's and cannot."""
        import json
        from .io import load_checkpoint, restore_rng_state
        ckpt = load_checkpoint(path, kind="simulation")
        options = json.loads(ckpt.attrs["options_json"])
        given = {k: v for k, v in overrides.items() if v is not None}
        if "dt" in given:
            given["step"] = given.pop("dt")
        fields = {f.name for f in dataclasses.fields(SimulationOptions)} - {"inputs", "nudge"}
        for key in given:
            if key not in fields:
                raise unknown("option", key, sorted(fields), f"load_checkpoint({path})")
        _check_fixed_on_resume(path, options, given)
        if "duration" in given:           # a new end replaces the saved one, in either form
            options["n_steps"] = None
        if "n_steps" in given:
            options["duration"] = None
        options.update(given)
        if network is not None:
            sim = cls(network, SimulationOptions(**{**options, "inputs": {}, "nudge": {}}),
                      model_text=ckpt.config_text or None, stimuli=stimuli)
        elif not ckpt.config_text:
            raise ConfigError(f"{path} was saved by a Simulation built in Python, so it holds "
                              "no model text; load it with Simulation.load_checkpoint(path, "
                              "network=<the same Network>, stimuli=<the same stimuli>).")
        elif stimuli:
            raise ConfigError(f"{path} holds its model text, whose [[stimulus]] tables give the "
                              "stimuli; load it without stimuli= (or rebuild it in Python with "
                              "network= and stimuli=).")
        else:
            sim = cls.from_model_text(ckpt.config_text, where=str(path),
                                      base_dir=ckpt.attrs.get("base_dir") or None, **options)
        _check_same_stimuli(path, ckpt.attrs, sim, from_text=network is None)
        p = ckpt.payload
        for name, w in p["network"].items():
            sim.net.weights[name].copy_(torch.as_tensor(w))
        for name, b in p.get("biases", {}).items():
            b = torch.as_tensor(b)
            if name not in sim.net.biases or b.shape != sim.net.biases[name].shape:
                have = tuple(sim.net.biases[name].shape) if name in sim.net.biases else None
                raise ConfigError(f"{path}: the checkpoint's bias of population \"{name}\" has "
                                  f"shape {tuple(b.shape)}, this model's {have}; the model and "
                                  "the checkpoint disagree.")
            sim.net.biases[name].copy_(b)
        if sim.plasticity[0] != "off":
            sim.rules.load_state_dict(p.get("rules", {}), str(path))
        sim.state.u.copy_(torch.as_tensor(p["state"]["u"]))
        sim.state.r.copy_(torch.as_tensor(p["state"]["r"]))
        held = p.get("held") or {}
        if held:
            sim._held = (int(held["step"]), {name: torch.as_tensor(v).to(sim.net.device,
                                                                           sim.net.dtype)
                                             for name, v in held["values"].items()})
        for name, x in p["inputs"].items():
            sim.inputs[name] = torch.as_tensor(x).to(sim.net.device, sim.net.dtype)
        sim.nudges = {name: (torch.as_tensor(n["target"]).to(sim.net.device, sim.net.dtype),
                             float(n["beta"])) for name, n in p.get("nudge", {}).items()}
        restore_rng_state(p["rng"], {"noise": sim.generator})
        if sim.drive is not None:
            sim.drive.load_state_dict(p.get("stimuli", {}))
        sim.step, sim.t = int(p["progress"]["step"]), float(p["progress"]["t"])
        sim.last_update_t = float(p["progress"].get("last_update_t", 0.0))
        for key, flag in (("duration", "--duration"), ("n_steps", "--steps")):
            if key in given and sim.options.total_steps() <= sim.step:
                at = f" (step {sim.options.total_steps()})" if key == "duration" else ""
                raise ConfigError(f"{path}: the checkpoint is already at step {sim.step} "
                                  f"(t={sim.t:g}), so {key} ({flag}) = {given[key]!r}{at} leaves "
                                  "nothing to run; give a larger end to continue it.")
        return sim
