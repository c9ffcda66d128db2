"""Equilibrium propagation (two phases) as a learning protocol on a compiled network.

One training step on a mini-batch (x, y):

1. free phase: u = r = 0, inputs clamped, ``T_free`` solver steps with beta = 0 -> r^0
2. nudged phase: start from r^0 with the soma re-initialised to u = r^0, ``T_nudged`` steps
   with the output nudge ``beta_s (y - r_out)``, beta_s = +-beta (random sign per batch when
   ``random_sign``) -> r^beta
3. every plasticity rule of every projection runs on the two phases (see
   neurosim.plasticity.base for what rules receive).

Both phases live in one stacked state of 2B rows ([nudged; free]) so that rules can treat
both phases with one matrix product. Evaluation runs the free phase only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dynamics import CompiledNetwork, NeuralState
from ..errors import ConfigError
from ..plasticity import SynapseContext
from ..solvers import Solver, solve

PHASES = ("nudged", "free")


@dataclass
class StepResult:
    """What one training step leaves for metrics: the free-phase output and the sign used."""

    free_output: torch.Tensor
    beta: float


class EquilibriumPropagation:
    """The two-phase EP protocol driving a CompiledNetwork (see module docstring)."""

    phases = PHASES

    def __init__(self, net: CompiledNetwork, *, input: str, output: str, solver: Solver,
                 schedule, T_free: int, T_nudged: int, beta: float = 1.0,
                 random_sign: bool = True):
        self.net, self.solver, self.schedule = net, solver, schedule
        self.input, self.output = input, output
        self.T_free, self.T_nudged = int(T_free), int(T_nudged)
        self.beta, self.random_sign = float(beta), bool(random_sign)
        net._slot(input)
        net._slot(output, need_dynamic=True)
        self._ops: dict = {}
        self._buffers: dict[int, NeuralState] = {}
        self._dynamic = [s for s in net.slots.values() if s.u_cols is not None]
        self._plastic = [(q, rule) for q in net.network.projections for rule in q.rules]
        for proj, rule in self._plastic:
            missing = [p for p in rule.needs_phases if p not in PHASES]
            if missing:
                raise ConfigError(f'rule "{rule.name}" on projection "{proj.name}" needs the '
                                  f"phases {missing}, which equilibrium propagation does not "
                                  f"have (its phases: {', '.join(PHASES)}).")

    def _state(self, rows: int) -> NeuralState:
        if rows not in self._buffers:
            self._buffers[rows] = self.net.zero_state(rows)
        return self._buffers[rows]

    def _relax(self, dynamics, state: NeuralState, n_steps: int) -> None:
        solve(dynamics, state, solver=self.solver, schedule=self.schedule, n_steps=n_steps,
              check_finite_every=0)

    def free_phase(self, x: torch.Tensor, operators=None, currents=None,
                   state: NeuralState | None = None) -> NeuralState:
        """Relax the free phase from zero on inputs x; returns the state (a reused buffer)."""
        operators = operators if operators is not None else self.net.build_operators(self._ops)
        state = state if state is not None else self._state(x.shape[0])
        state.u.zero_()
        self.net.sync_activity(state)
        self.net.clamp_inputs(state, {self.input: x})
        dynamics = self.net.phase(operators, {self.input: x}, currents=currents, at_rest=True)
        self._relax(dynamics, state, self.T_free)
        dynamics.check_finite(state, self.T_free)
        return state

    def relax(self, x: torch.Tensor) -> NeuralState:
        """The free-phase state on inputs x with the current weights (a reused buffer)."""
        self._ops = self.net.build_operators(self._ops)
        return self.free_phase(x, self._ops)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Output activity after the free phase (batch x n_out)."""
        return self.net.r_of(self.relax(x), self.output)

    def train_step(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
                   lr_scale: float = 1.0) -> StepResult:
        """One EP step on a batch: free phase, nudged phase, all plasticity rules."""
        net, batch = self.net, x.shape[0]
        self._ops = ops = net.build_operators(self._ops)
        currents = net.input_currents({self.input: x})
        both = self._state(2 * batch)
        nudged = NeuralState(both.u[:batch], both.r[:batch])
        free = self.free_phase(x, ops, currents, NeuralState(both.u[batch:], both.r[batch:]))
        nudged.r.copy_(free.r)
        for slot in self._dynamic:
            nudged.u[:, slot.u_cols] = free.r[:, slot.r_cols]
        sign = 1.0
        if self.random_sign:
            sign = 1.0 if int(torch.randint(0, 2, (1,), generator=generator)) else -1.0
        beta = sign * self.beta
        dynamics = net.phase(ops, {self.input: x}, nudges={self.output: (target, beta)},
                             currents=currents)
        self._relax(dynamics, nudged, self.T_nudged)
        dynamics.check_finite(nudged, self.T_nudged)
        self._apply_rules(both, batch, beta, lr_scale)
        return StepResult(net.r_of(free, self.output), beta)

    def _apply_rules(self, both: NeuralState, batch: int, beta: float, lr_scale: float) -> None:
        net = self.net
        rows = {"nudged": slice(0, batch), "free": slice(batch, 2 * batch)}

        def activity(pop, phase):
            return both.r[rows[phase], net.slots[pop].r_cols]

        def stacked(pop):
            return both.r[:, net.slots[pop].r_cols]

        def potential(pop, compartment, phase):
            view = NeuralState(both.u[rows[phase]], both.r[rows[phase]])
            if compartment == "soma":
                return net.u_of(view, pop)
            return net.compartment_potential(view, pop, compartment)

        for proj, rule in self._plastic:
            weight = net.weights[proj.name]
            ctx = SynapseContext(projection=proj, weight=weight, phases=PHASES,
                                 activity=activity, stacked_activity=stacked,
                                 potential=potential, beta=beta, batch_size=batch,
                                 lr_scale=lr_scale if rule.scheduled else 1.0,
                                 pre_clamped=net.slots[proj.source].u_cols is None)
            rule.update(ctx)
            if proj.name in net.masks:
                weight.mul_(net.masks[proj.name])
