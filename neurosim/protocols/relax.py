"""Unsupervised learning on the relaxed network: one phase, then every rule (Hebbian, Oja,
BCM, ...). No labels are used.

One training step on a batch x: the free phase (u = 0, inputs clamped, ``T`` solver steps,
or fewer when ``steady_tol`` is given and max |du/dt| falls below it), then every rule on
the record of the single phase "free". Step metrics: the mean activity of every dynamic
population (``train_rate_<population>``).

``[protocol]`` keys: ``type = "relax"``, T, solver, step, steady_tol.
"""
from __future__ import annotations

from typing import Any

import torch

from ..dynamics import NeuralState
from ..errors import ConfigError
from ..plasticity import PhaseRecord
from ..solvers import SteadyState, get_solver, make_schedule, solve
from .base import LearningProtocol, StepOutput, register_protocol, writable


@register_protocol
class Relax(LearningProtocol):
    """Relax, then learn, without labels (neurosim.protocols.relax): per batch the free phase
    (u = 0, inputs clamped, ``T`` steps, or fewer once max |du/dt| < ``steady_tol``), then
    every rule on the single phase "free". Step metrics ``train_rate_<population>``: each
    dynamic population's mean activity."""

    name = "relax"
    phases = ("free",)
    supervised = False
    ensemble_ready = True   # without steady_tol (see stack_members)

    def __init__(self, net=None, *, input: str = "x", output: str = "out", T: int = 30,
                 solver: str = "gs-euler", step: Any = 0.05, steady_tol: float | None = None):
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ConfigError(f"T: must be a positive integer, got {T!r}.")
        if steady_tol is not None and (isinstance(steady_tol, bool) or
                                       not isinstance(steady_tol, (int, float)) or steady_tol <= 0):
            raise ConfigError(f"steady_tol: must be a positive number, got {steady_tol!r}.")
        self.T, self.steady_tol = T, steady_tol
        self.solver = get_solver(solver)
        self.schedule = make_schedule(step, "step")
        self._buffers: dict[int, NeuralState] = {}
        if net is not None:
            self.bind(net, input=input, output=output)

    def config(self) -> dict:
        return {"type": self.name, "T": self.T, "solver": self.solver.name,
                "step": self.schedule.config(), "steady_tol": self.steady_tol}

    def stack_members(self, members) -> None:
        """Ensembles: only a fixed number of steps (with ``steady_tol`` each member would
        stop at its own step, the ensemble at one shared step)."""
        if self.steady_tol is not None:
            raise ConfigError('protocol "relax" with steady_tol stops each run when its own '
                              "state settles, so its seeds cannot step together; train them "
                              "as separate runs, or leave steady_tol out for an ensemble.")
        super().stack_members(members)

    def infer(self, x: torch.Tensor) -> NeuralState:
        """The relaxed state on inputs x (a reused buffer)."""
        net = self.net
        self._buffers = writable(self._buffers)
        rows = x.shape[-2]
        if rows not in self._buffers:
            self._buffers[rows] = net.zero_state(rows)
        state = self._buffers[rows]
        state.u.zero_()
        net.sync_activity(state)
        net.clamp_inputs(state, {self.input: x})
        dynamics = net.phase(net.build_operators(), {self.input: x}, at_rest=True)
        steady = SteadyState(self.steady_tol, max_steps=self.T) if self.steady_tol else None
        solve(dynamics, state, solver=self.solver, schedule=self.schedule, n_steps=self.T,
              steady=steady, check_finite_every=0)
        dynamics.check_finite(state, self.T)
        return state

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        state = self.infer(x)
        record = PhaseRecord(self.net, {"free": state})
        rates = {f"rate_{p.name}": self.net.r_of(state, p.name).mean(dim=(-2, -1),
                                                                     dtype=torch.float64)
                 for p in self.net.network.dynamic}          # one per member in an ensemble
        rates.update(self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step))
        return StepOutput(None, rates)
