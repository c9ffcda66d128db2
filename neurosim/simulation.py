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
    inputs = { x = { type = "uniform", low = 0.0, high = 1.0 } }   # or constant / values
    nudge = { out = { target = [0.0, 1.0], beta = 0.5 } }

    [[monitor]]
    population = "h"
    compartment = "soma"      # soma: variables u, r; a dendrite: variable v
    variable = "u"
    indices = [0, 1, 2]       # optional, default all neurons
    every = 1                 # record every n-th step

The recording layout is documented in neurosim.io.recorder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .dynamics import CompiledNetwork
from .io import MonitorSpec
from .errors import ConfigError, NeurosimError, unknown
from .graph import SOMA, Network, check_keys, network_from_dict, parse_model_text
from .solvers import Observer, SteadyState, get_solver, make_schedule, solve

SIM_KEYS = {"solver", "duration", "n_steps", "dt", "step", "batch", "seed", "rtol", "atol",
            "steady_tol", "inputs", "nudge", "device", "dtype", "checkpoint_every"}
MONITOR_KEYS = {"population", "compartment", "variable", "indices", "every"}
UNITS = {"u": "1 (dimensionless potential)", "r": "1 (dimensionless rate)",
         "v": "1 (dimensionless potential)"}


def validate_monitor(monitor: MonitorSpec, network: Network, where: str = "monitor") -> None:
    """Check that a monitor names an existing population, compartment, variable and neurons.
    Variables: "u" and "r" at the soma ("r" only for inputs), "v" in a dendrite."""
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
    """The monitored values (batch x neurons) of a state."""
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
    return options


def monitors_from(data: dict, network: Network, where: str) -> list[MonitorSpec]:
    """The [[monitor]] tables of a model file (default compartment soma, variable u)."""
    monitors = []
    for i, table in enumerate(data.get("monitor", [])):
        label = f"{where} [[monitor]] #{i + 1}"
        check_keys(table, MONITOR_KEYS, label, required=("population",))
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

    @classmethod
    def from_model_text(cls, text: str, where: str = "model", **overrides) -> "Simulation":
        data = parse_model_text(text, where)
        network = network_from_dict(data, where)
        return cls(network, simulation_options(data, where, **overrides), model_text=text)

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
            check_keys(entry, {"type", "low", "high", "value", "values"}, where)
            kind = entry.get("type", "values" if "values" in entry else "uniform")
            if kind == "uniform":
                lo, hi = float(entry.get("low", 0.0)), float(entry.get("high", 1.0))
                x = lo + (hi - lo) * torch.rand(self.options.batch, size, generator=gen,
                                                dtype=torch.float64)
            elif kind == "constant":
                x = torch.full((self.options.batch, size), float(entry.get("value", 0.0)))
            elif kind == "values":
                x = torch.as_tensor(entry["values"], dtype=torch.float64)
                if tuple(x.shape) not in ((size,), (self.options.batch, size)):
                    raise ConfigError(f"{where}: values have shape {tuple(x.shape)}, expected "
                                      f"({size},) or (batch={self.options.batch}, {size}).")
                x = x.expand(self.options.batch, -1)
            else:
                raise ConfigError(f'{where}: unknown type "{kind}"; use uniform, constant or values.')
            inputs[name] = x.to(self.net.device, self.net.dtype)
        return inputs

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
        monitors into ``recorder`` and checkpointing every ``checkpoint_every`` steps."""
        total = self.options.total_steps() if n_steps is None else int(n_steps)
        dynamics = self.dynamics()
        observers = []
        if recorder is not None:
            for m in monitors:
                validate_monitor(m, self.network)
                shape = tuple(read_monitor(m, self.net, self.state).shape)
                recorder.add(m.key, m, shape, self.net.dtype,
                             attrs={"solver": self.solver.name, "step_schedule": repr(self.schedule.config())})
            if self.step == 0:
                for m in monitors:
                    recorder.append(m.key, read_monitor(m, self.net, self.state), self.t)
            for m in monitors:
                observers.append(Observer(
                    lambda k, t, s, m=m: recorder.append(m.key, read_monitor(m, self.net, s), t),
                    m.every))

        last_saved = [self.step]

        def after_step(k: int, t: float) -> None:
            # continuous solvers report only at segment ends: save once a period has passed
            self.step, self.t = k, t
            if checkpoint is not None and checkpoint_every and \
                    k // checkpoint_every > last_saved[0] // checkpoint_every:
                self.save_checkpoint(checkpoint)
                last_saved[0] = k

        steady = (SteadyState(self.options.steady_tol, max_steps=total - self.step)
                  if self.options.steady_tol else None)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=total - self.step, desc="simulate", unit="step", mininterval=0.5)
        try:
            with torch.inference_mode():
                stats = solve(dynamics, self.state, solver=self.solver, schedule=self.schedule,
                              n_steps=total, step0=self.step, t0=self.t, observers=observers,
                              steady=steady, progress=bar, after_step=after_step)
        finally:
            if bar is not None:
                bar.close()
        self.step, self.t = stats.steps, stats.t
        return stats

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, path) -> None:
        from .io import capture_rng_state, save_checkpoint
        payload = {
            "network": dict(self.net.weights),
            "state": {"u": self.state.u, "r": self.state.r},
            "inputs": dict(self.inputs),
            "nudge": {name: {"target": target, "beta": beta}
                      for name, (target, beta) in self.nudges.items()},
            "rng": capture_rng_state({"noise": self.generator}),
            "progress": {"step": self.step, "t": self.t},
            "solver": {"config": repr(self.solver.config()),
                       "schedule": repr(self.schedule.config())},
        }
        import json
        options = {k: v for k, v in self.options.__dict__.items() if k not in ("inputs", "nudge")}
        save_checkpoint(path, payload, kind="simulation", config_text=self.model_text or "",
                        attrs={"options_json": json.dumps(options)})

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
            sim = cls.from_model_text(ckpt.config_text, where=str(path), **options)
        p = ckpt.payload
        for name, w in p["network"].items():
            sim.net.weights[name].copy_(torch.as_tensor(w))
        sim.state.u.copy_(torch.as_tensor(p["state"]["u"]))
        sim.state.r.copy_(torch.as_tensor(p["state"]["r"]))
        for name, x in p["inputs"].items():
            sim.inputs[name] = torch.as_tensor(x).to(sim.net.device, sim.net.dtype)
        sim.nudges = {name: (torch.as_tensor(n["target"]).to(sim.net.device, sim.net.dtype),
                             float(n["beta"])) for name, n in p.get("nudge", {}).items()}
        restore_rng_state(p["rng"], {"noise": sim.generator})
        sim.step, sim.t = int(p["progress"]["step"]), float(p["progress"]["t"])
        return sim
