"""Contrastive Hebbian learning (Movellan 1991; Xie & Seung 2003) written outside the
library: a learning protocol and its rule, loaded from a model file as "chl:Class"
(examples/chl_digits.toml; the model file's directory is searched first).

Protocol ``chl`` (phases "free", "clamped"), one step on a batch (x, y):

1. free phase: u = 0, inputs clamped, ``T_free`` solver steps -> r^free;
2. clamped phase: from r^free, the output population held at the target (u_out = r_out = y
   after every step, so every other population relaxes against the target), ``T_clamped``
   steps -> r^clamped;
3. every rule runs on the record of both phases; then each feedback projection named in
   ``tied`` is set to the transpose of its forward projection (W_fb = W_ff^T: the symmetric
   weights CHL's energy needs).

Rule ``chl`` (for a projection s -> k, batch mean <.>):

    dW = lr * lr_scale * ( <r_k^clamped (r_s^clamped)^T> - <r_k^free (r_s^free)^T> )

Evaluation runs the free phase.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from neurosim.dynamics import NeuralState
from neurosim.errors import ConfigError
from neurosim.plasticity import PhaseRecord, PlasticityRule
from neurosim.protocols import LearningProtocol, StepOutput, writable
from neurosim.solvers import get_solver, make_schedule, solve


class ContrastiveHebbianRule(PlasticityRule):
    """dW = lr (<post^c pre^c^T> - <post^f pre^f^T>) (see module docstring)."""

    name = "chl"
    needs_phases = ("free", "clamped")

    def __init__(self, lr: float):
        self.lr = float(lr)

    def update(self, ctx) -> None:
        scale = self.lr * ctx.lr_scale / ctx.batch_size
        ctx.weight.addmm_(ctx.post("clamped").T, ctx.pre("clamped"), alpha=scale)
        ctx.weight.addmm_(ctx.post("free").T, ctx.pre("free"), alpha=-scale)


class ContrastiveHebbian(LearningProtocol):
    """The CHL protocol (see module docstring)."""

    name = "chl"
    phases = ("free", "clamped")

    def __init__(self, net=None, *, input: str = "x", output: str = "out", T_free: int = 40,
                 T_clamped: int = 20, solver: str = "gs-euler", step: Any = 0.2,
                 tied: Mapping[str, str] | None = None):
        for key, value in (("T_free", T_free), ("T_clamped", T_clamped)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: must be a positive integer, got {value!r}.")
        self.T_free, self.T_clamped = T_free, T_clamped
        self.solver, self.schedule = get_solver(solver), make_schedule(step, "step")
        self.tied = dict(tied or {})
        self._buffers: dict[tuple, NeuralState] = {}
        if net is not None:
            self.bind(net, input=input, output=output)

    def config(self) -> dict:
        return {"type": self.name, "T_free": self.T_free, "T_clamped": self.T_clamped,
                "solver": self.solver.name, "step": self.schedule.config(), "tied": self.tied}

    def setup(self) -> None:
        net = self.net
        for feedback, forward in self.tied.items():
            for name in (feedback, forward):
                if name not in net.weights:
                    raise ConfigError(f'[protocol] tied: "{name}" is not a projection with '
                                      f"weights (projections: {', '.join(net.weights)}).")
            if net.weights[feedback].shape != net.weights[forward].T.shape:
                raise ConfigError(f'[protocol] tied: "{feedback}" must have the transposed '
                                  f'shape of "{forward}".')
        self._tie()
        self._out = net.slots[self.output]

    def _tie(self) -> None:
        for feedback, forward in self.tied.items():
            self.net.weights[feedback].copy_(self.net.weights[forward].T)

    def _state(self, name: str, rows: int) -> NeuralState:
        self._buffers = writable(self._buffers)    # buffers made in inference mode are
        if (name, rows) not in self._buffers:      # read-only outside it
            self._buffers[name, rows] = self.net.zero_state(rows)
        return self._buffers[name, rows]

    def infer(self, x: torch.Tensor, operators=None) -> NeuralState:
        """The free phase from u = 0 (a reused buffer)."""
        net = self.net
        state = self._state("free", x.shape[0])
        state.u.zero_()
        net.sync_activity(state)
        net.clamp_inputs(state, {self.input: x})
        operators = operators if operators is not None else net.build_operators()
        dynamics = net.phase(operators, {self.input: x}, at_rest=True)
        solve(dynamics, state, solver=self.solver, schedule=self.schedule, n_steps=self.T_free,
              check_finite_every=0)
        dynamics.check_finite(state, self.T_free)
        return state

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        net, out = self.net, self._out
        operators = net.build_operators()
        free = self.infer(x, operators)
        clamped = self._state("clamped", x.shape[0])
        clamped.u.copy_(free.u)
        clamped.r.copy_(free.r)

        def hold(*_):                  # the output follows the target, not its dynamics
            clamped.u[:, out.u_cols] = target
            clamped.r[:, out.r_cols] = target
        hold()
        dynamics = net.phase(operators, {self.input: x})
        solve(dynamics, clamped, solver=self.solver, schedule=self.schedule,
              n_steps=self.T_clamped, check_finite_every=0, after_step=hold)
        dynamics.check_finite(clamped, self.T_clamped)
        record = PhaseRecord(net, {"free": free, "clamped": clamped}, signals={"target": target})
        reported = self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step)
        self._tie()
        return StepOutput(net.r_of(free, self.output), reported)
