"""Equilibrium propagation (two phases) as a learning protocol on a compiled network.

One training step on a mini-batch (x, y):

1. free phase: u = r = 0, inputs clamped, ``T_free`` solver steps with beta = 0 -> r^0
2. nudged phase: start from r^0 with the soma re-initialised to u = r^0, ``T_nudged`` steps
   with the output nudge ``beta_s (y - r_out)``, beta_s = +-beta (random sign per batch when
   ``random_sign``, drawn from the run's generator) -> r^beta
3. every plasticity rule runs on the record of the two phases "nudged" and "free" with the
   signals ``beta`` (signed) and ``target``.

Both phases live in one stacked state of 2B rows ([nudged; free]) so that rules can treat
both phases with one matrix product. Evaluation runs the free phase only.

``[protocol]`` keys: ``type = "ep"``, T_free, T_nudged, beta, random_sign, solver (any name of
neurosim.solvers; the paper's scheme is "gs-euler"), step (a number or a step schedule such as
``{ type = "slow", dt = 0.08 }``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..dynamics import CompiledNetwork, NeuralState
from ..errors import ConfigError
from ..plasticity import PhaseRecord
from ..solvers import Solver, get_solver, make_schedule, solve
from .base import LearningProtocol, StepOutput, register_protocol, writable

PHASES = ("nudged", "free")


@dataclass
class EPStep(StepOutput):
    """A step's output plus the signed beta it used."""

    beta: float = 0.0

    @property
    def free_output(self) -> torch.Tensor:
        """The output activity r_out^0 of the free phase (the same tensor as
        ``prediction``)."""
        return self.prediction


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: must be a positive integer, got {value!r}.")
    return value


@register_protocol
class EquilibriumPropagation(LearningProtocol):
    """The two-phase EP protocol (neurosim.protocols.ep). Per batch: a free phase (u = 0,
    inputs clamped, ``T_free`` steps) gives r^0; a nudged phase from u = r^0 (``T_nudged``
    steps) adds ``beta_s (y - r_out)`` to the output's soma, beta_s = +-``beta`` (a random
    sign per batch with ``random_sign``), giving r^beta; then every rule runs on the phases
    "nudged" and "free" with the signals ``beta`` (signed) and ``target``. Evaluation runs
    the free phase only."""

    name = "ep"
    phases = PHASES
    ensemble_ready = True

    def __init__(self, net: CompiledNetwork | None = None, *, input: str = "x",
                 output: str = "out", solver: Solver | str = "gs-euler", step: Any = 0.05,
                 schedule=None, T_free: int = 30, T_nudged: int = 10, beta: float = 1.0,
                 random_sign: bool = True):
        self.T_free = _positive_int(T_free, "T_free")
        self.T_nudged = _positive_int(T_nudged, "T_nudged")
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ConfigError(f"beta: must be a number, got {beta!r}.")
        if not isinstance(random_sign, bool):
            raise ConfigError(f"random_sign: true or false, got {random_sign!r}.")
        self.beta, self.random_sign = float(beta), random_sign
        self.solver = get_solver(solver)
        self.step = step
        self.schedule = make_schedule(schedule if schedule is not None else step,
                                      "schedule" if schedule is not None else "step")
        self._ops: dict = {}
        self._buffers: dict[int, NeuralState] = {}
        if net is not None:
            self.bind(net, input=input, output=output)

    def config(self) -> dict:
        return {"type": self.name, "T_free": self.T_free, "T_nudged": self.T_nudged,
                "beta": self.beta, "random_sign": self.random_sign, "solver": self.solver.name,
                "step": self.schedule.config()}

    def setup(self) -> None:
        self._dynamic = [s for s in self.net.slots.values() if s.u_cols is not None]

    def _state(self, rows: int) -> NeuralState:
        self._buffers = writable(self._buffers)
        if rows not in self._buffers:
            self._buffers[rows] = self.net.zero_state(rows)
        return self._buffers[rows]

    def _relax(self, dynamics, state: NeuralState, n_steps: int) -> None:
        solve(dynamics, state, solver=self.solver, schedule=self.schedule, n_steps=n_steps,
              check_finite_every=0)

    def free_phase(self, x: torch.Tensor, operators=None, currents=None,
                   state: NeuralState | None = None) -> NeuralState:
        """Relax the free phase from zero on inputs x; returns the state (a reused buffer)."""
        operators = operators if operators is not None else self.net.build_operators(
            writable(self._ops))
        state = state if state is not None else self._state(x.shape[-2])
        state.u.zero_()
        self.net.sync_activity(state)
        self.net.clamp_inputs(state, {self.input: x})
        dynamics = self.net.phase(operators, {self.input: x}, currents=currents, at_rest=True)
        self._relax(dynamics, state, self.T_free)
        dynamics.check_finite(state, self.T_free)
        return state

    def relax(self, x: torch.Tensor) -> NeuralState:
        """The free-phase state on inputs x with the current weights (a reused buffer)."""
        self._ops = self.net.build_operators(writable(self._ops))
        return self.free_phase(x, self._ops)

    infer = relax

    def train_step(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
                   lr_scale: float = 1.0, *, epoch: int = 0, step: int = 0) -> EPStep:
        """One EP step on a batch: free phase, nudged phase, all plasticity rules."""
        net, batch = self.net, x.shape[-2]
        self._ops = ops = net.build_operators(writable(self._ops))
        currents = net.input_currents({self.input: x})
        both = self._state(2 * batch)
        nudged = NeuralState(both.u[..., :batch, :], both.r[..., :batch, :])
        free = self.free_phase(x, ops, currents, NeuralState(both.u[..., batch:, :],
                                                             both.r[..., batch:, :]))
        nudged.r.copy_(free.r)
        for slot in self._dynamic:
            nudged.u[..., slot.u_cols] = free.r[..., slot.r_cols]
        if isinstance(generator, torch.Generator):
            beta = self._sign(generator) * self.beta
        else:                                   # an ensemble: each member's own sign
            beta = torch.tensor([self._sign(g) * self.beta for g in generator],
                                dtype=torch.float64)
        dynamics = net.phase(ops, {self.input: x}, nudges={self.output: (target, beta)},
                             currents=currents)
        self._relax(dynamics, nudged, self.T_nudged)
        dynamics.check_finite(nudged, self.T_nudged)
        record = PhaseRecord(net, {"nudged": nudged, "free": free}, stacked=both,
                             signals={"beta": beta, "target": target}, batch_size=batch)
        reported = self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step)
        return EPStep(net.r_of(free, self.output), reported, beta=beta)

    def _sign(self, generator: torch.Generator) -> float:
        """+1 or -1 drawn from ``generator`` with ``random_sign``, else +1."""
        if not self.random_sign:
            return 1.0
        return 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) else -1.0
