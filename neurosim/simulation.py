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
    steady_tol = 1e-6         # stop once max |du/dt| < steady_tol
    inputs = { x = { type = "uniform", low = 0.0, high = 1.0 } }   # or constant / values /
                              # gaussian (mean, covariance): one draw per sample, fixed in time
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
``/recordings/<projection>/synapses/w`` (axes time, post, pre).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .dynamics import CompiledNetwork
from .io import MonitorSpec
from .errors import ConfigError, NeurosimError, SimulationError, unknown
from .graph import SOMA, Network, check_keys, parse_model_text
from .plasticity import PhaseRecord, RuleSet
from .plasticity.continuous import PlasticSystem
from .registry import importable_from
from .solvers import (Observer, SolveStats, SteadyState, TorchDiffEq, get_solver,
                      make_schedule, solve)
from .solvers.system import check_system_solver, integrate_system

SIM_KEYS = {"solver", "duration", "n_steps", "dt", "step", "batch", "seed", "rtol", "atol",
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
        if projection.is_identity:
            raise ConfigError(f'{where}: projection "{projection.name}" has no weight matrix '
                              '(init "identity"); monitor a projection with weights.')
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


def read_monitor(monitor: MonitorSpec, net: CompiledNetwork, state) -> torch.Tensor:
    """The monitored values (batch x neurons, or W for a weight monitor) of a state."""
    if monitor.compartment == SYNAPSES:
        return net.weights[monitor.population]
    if monitor.variable == "u":
        values = net.u_of(state, monitor.population)
    elif monitor.variable == "r":
        values = net.r_of(state, monitor.population)
    else:
        values = net.compartment_potential(state, monitor.population, monitor.compartment)
    return values[:, list(monitor.indices)] if monitor.indices is not None else values


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
    steady_tol: float | None = None
    inputs: dict = field(default_factory=dict)
    nudge: dict = field(default_factory=dict)
    device: str = "cpu"
    dtype: str = "float32"
    checkpoint_every: int | None = None
    plasticity: Any = None

    def total_steps(self) -> int:
        if self.n_steps is not None:
            return int(self.n_steps)
        schedule = make_schedule(self.step, "[simulation] step")
        if self.duration is None:
            raise ConfigError("[simulation]: give duration (or n_steps), e.g. --duration 10.")
        if schedule.name != "constant":
            raise ConfigError("[simulation]: with a decaying step schedule give n_steps, "
                              "not duration.")
        return max(1, round(self.duration / schedule.dt))


def simulation_options(data: dict, where: str, **overrides) -> SimulationOptions:
    table = dict(data.get("simulation", {}))
    check_keys(table, SIM_KEYS, f"{where} [simulation]")
    if "dt" in table:
        if "step" in table:
            raise ConfigError(f"{where} [simulation]: give dt or step, not both.")
        table["step"] = table.pop("dt")
    if overrides.get("dt") is not None:
        table["step"] = overrides.pop("dt")
    overrides.pop("dt", None)
    table.update({k: v for k, v in overrides.items() if v is not None})
    options = SimulationOptions(**table)
    if options.dtype not in ("float32", "float64"):
        raise ConfigError(f'{where} [simulation] dtype: use "float32" or "float64".')
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f'{where}: device "{options.device}" requested but CUDA is not '
                          "available; use --device cpu.")
    if not isinstance(options.batch, int) or options.batch < 1:
        raise ConfigError(f"{where} [simulation] batch: must be a positive integer.")
    plasticity_mode(options.plasticity, f"{where} [simulation] plasticity")
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


class Simulation:
    """A network, a solver and an explicit state that can be run, recorded and checkpointed."""

    def __init__(self, network: Network, options: SimulationOptions | None = None, *,
                 model_text: str | None = None):
        self.network, self.options = network, options or SimulationOptions()
        self.model_text = model_text
        opt = self.options
        if str(opt.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f'device "{opt.device}" requested but CUDA is not available; '
                              'use device "cpu".')
        dtype = {"float32": torch.float32, "float64": torch.float64}[opt.dtype]
        self.net = CompiledNetwork(network, dtype=dtype, device=opt.device, seed=opt.seed)
        solver_kwargs = {k: getattr(opt, k) for k in ("rtol", "atol") if getattr(opt, k) is not None}
        self.solver = get_solver(opt.solver, **solver_kwargs)
        self.schedule = make_schedule(opt.step, "[simulation] step")
        self.generator = torch.Generator(device=opt.device).manual_seed(opt.seed + 1)
        self.state = self.net.zero_state(opt.batch)
        self.step, self.t = 0, 0.0
        self.inputs = self._make_inputs(opt.inputs)
        self.net.clamp_inputs(self.state, self.inputs)
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
            sim = cls(network, simulation_options(data, where, **overrides), model_text=text)
        sim.base_dir = str(Path(base_dir).resolve()) if base_dir is not None else ""
        return sim

    def _make_inputs(self, spec: Mapping) -> dict[str, torch.Tensor]:
        inputs = {}
        gen = torch.Generator().manual_seed(self.options.seed + 2)
        names = [p.name for p in self.network.inputs]
        for name in spec:
            if name not in names:
                raise unknown("input population", name, names, "[simulation] inputs")
        for name in names:
            size = self.net.slots[name].size
            entry = spec.get(name, {"type": "uniform"})
            where = f"[simulation] inputs.{name}"
            if isinstance(entry, (list, int, float)):
                entry = {"type": "values", "values": entry}
            check_keys(entry, {"type", "low", "high", "value", "values", "mean", "covariance"},
                       where)
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
        kind = entry.get("type", "values" if "values" in entry else "uniform")
        if kind == "uniform":
            lo, hi = float(entry.get("low", 0.0)), float(entry.get("high", 1.0))
            return lo + (hi - lo) * torch.rand(batch, size, generator=gen, dtype=torch.float64)
        if kind == "constant":
            return torch.full((batch, size), float(entry.get("value", 0.0)), dtype=torch.float64)
        if kind == "values":
            x = torch.as_tensor(entry["values"], dtype=torch.float64)
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

    def dynamics(self):
        return self.net.phase(self.net.build_operators(), self.inputs, self.nudges,
                              generator=self.generator)

    def run(self, n_steps: int | None = None, *, monitors=(), recorder=None,
            checkpoint: str | Path | None = None, checkpoint_every: int | None = None,
            progress: bool = False):
        """Advance to step ``n_steps`` (absolute; default from the options), recording the
        monitors (neurons or weights) into ``recorder``, running the rules as the plasticity
        mode says and checkpointing every ``checkpoint_every`` steps."""
        total = self.options.total_steps() if n_steps is None else int(n_steps)
        observers = []
        if recorder is not None:
            for m in monitors:
                validate_monitor(m, self.network)
                shape = tuple(read_monitor(m, self.net, self.state).shape)
                axes = ("post", "pre") if m.compartment == SYNAPSES else None
                recorder.add(m.key, m, shape, self.net.dtype, axes=axes,
                             attrs={"solver": self.solver.name,
                                    "step_schedule": repr(self.schedule.config())})
            if self.step == 0:
                for m in monitors:
                    recorder.append(m.key, read_monitor(m, self.net, self.state), self.t)
            for m in monitors:
                observers.append(Observer(
                    lambda k, t, s, m=m: recorder.append(m.key, read_monitor(m, self.net, s), t),
                    m.every))

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
                self.save_checkpoint(checkpoint)
                last_saved[0] = k

        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total - self.step, desc="simulate", unit="step", mininterval=0.5)
        try:
            if self.plasticity[0] == "continuous":
                with torch.no_grad():
                    stats = self._run_continuous(total, observers, bar, after_step)
            else:
                with torch.inference_mode():
                    stats = self._run_discrete(total, observers, bar, after_step)
        finally:
            if bar is not None:
                bar.close()
        self.step, self.t = stats.steps, stats.t
        return stats

    def _steady(self, total: int):
        return (SteadyState(self.options.steady_tol, max_steps=total - self.step)
                if self.options.steady_tol else None)

    def _run_discrete(self, total: int, observers, bar, after_step) -> SolveStats:
        """Fixed weights, or rules after every N-th step (the solve is cut at multiples of N)."""
        mode, every = self.plasticity
        common = dict(solver=self.solver, schedule=self.schedule, observers=observers,
                      progress=bar, after_step=after_step)
        if mode == "off":
            return solve(self.dynamics(), self.state, n_steps=total, step0=self.step,
                         t0=self.t, steady=self._steady(total), **common)
        evals, stats = 0, SolveStats(steps=self.step, t=self.t)
        while self.step < total:
            stop = min(total, (self.step // every + 1) * every)
            stats = solve(self.dynamics(), self.state, n_steps=stop, step0=self.step,
                          t0=self.t, steady=self._steady(total), **common)
            evals += stats.rhs_evals
            self.step, self.t = stats.steps, stats.t
            if self.step % every == 0:
                self.apply_rules()
                after_step(self.step, self.t)        # the checkpoint that waited for the rules
            if stats.converged:
                break
        stats.rhs_evals = evals
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
        from .io import capture_rng_state, save_checkpoint
        payload = {
            "network": dict(self.net.weights),
            "biases": dict(self.net.biases),
            "rules": self.rules.state_dict() if self.plasticity[0] != "off" else {},
            "state": {"u": self.state.u, "r": self.state.r},
            "inputs": dict(self.inputs),
            "nudge": {name: {"target": target, "beta": beta}
                      for name, (target, beta) in self.nudges.items()},
            "rng": capture_rng_state({"noise": self.generator}),
            "progress": {"step": self.step, "t": self.t, "last_update_t": self.last_update_t},
            "solver": {"config": repr(self.solver.config()),
                       "schedule": repr(self.schedule.config())},
        }
        import json
        options = {k: v for k, v in self.options.__dict__.items() if k not in ("inputs", "nudge")}
        save_checkpoint(path, payload, kind="simulation", config_text=self.model_text or "",
                        attrs={"options_json": json.dumps(options), "base_dir": self.base_dir})

    @classmethod
    def load_checkpoint(cls, path, network: Network | None = None, **overrides) -> "Simulation":
        """Rebuild a simulation exactly where the checkpoint left it. A simulation built in
        Python (no model file) stores no graph text: pass the same ``network`` again."""
        import json
        from .io import load_checkpoint, restore_rng_state
        ckpt = load_checkpoint(path, kind="simulation")
        options = json.loads(ckpt.attrs["options_json"])
        options.update({k: v for k, v in overrides.items() if v is not None})
        if network is not None:
            sim = cls(network, SimulationOptions(**{**options, "inputs": {}, "nudge": {}}),
                      model_text=ckpt.config_text or None)
        elif not ckpt.config_text:
            raise ConfigError(f"{path} was saved by a Simulation built in Python, so it holds "
                              "no model text; load it with Simulation.load_checkpoint(path, "
                              "network=<the same Network>).")
        else:
            sim = cls.from_model_text(ckpt.config_text, where=str(path),
                                      base_dir=ckpt.attrs.get("base_dir") or None, **options)
        p = ckpt.payload
        for name, w in p["network"].items():
            sim.net.weights[name].copy_(torch.as_tensor(w))
        for name, b in p.get("biases", {}).items():
            sim.net.biases[name].copy_(torch.as_tensor(b))
        if sim.plasticity[0] != "off":
            sim.rules.load_state_dict(p.get("rules", {}), str(path))
        sim.state.u.copy_(torch.as_tensor(p["state"]["u"]))
        sim.state.r.copy_(torch.as_tensor(p["state"]["r"]))
        for name, x in p["inputs"].items():
            sim.inputs[name] = torch.as_tensor(x).to(sim.net.device, sim.net.dtype)
        sim.nudges = {name: (torch.as_tensor(n["target"]).to(sim.net.device, sim.net.dtype),
                             float(n["beta"])) for name, n in p.get("nudge", {}).items()}
        restore_rng_state(p["rng"], {"noise": sim.generator})
        sim.step, sim.t = int(p["progress"]["step"]), float(p["progress"]["t"])
        sim.last_update_t = float(p["progress"].get("last_update_t", 0.0))
        return sim
