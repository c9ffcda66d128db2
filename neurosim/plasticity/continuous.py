"""Continuous plasticity: weights as part of the ODE state.

For a simulation whose rules define ``derivative(ctx)`` (dW/dt), the potentials and the
plastic weights are integrated together,

    du/dt = f(u; W),      dW_q/dt = sum_{rules on q} derivative(ctx_q) * mask_q,

where every rule sees the single phase "now" (the current u and r = sigma(u)). The state is
the tuple (u, W_1, ..., W_k), integrated by any explicit Runge-Kutta solver (its tableau) or
any torchdiffeq method.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError
from .base import SynapseContext
from .dispatch import RuleSet
from .record import PhaseRecord


class PlasticSystem:
    """The joint right-hand side of potentials and plastic weights (see module docstring)."""

    def __init__(self, net, rules: RuleSet, make_dynamics: Callable[[], object],
                 scratch_r: torch.Tensor):
        held = [s.name for s in net.slots.values() if s.low_refresh > 1]
        if held:
            raise ConfigError(f"population(s) {', '.join(held)} hold products over several "
                              "Euler steps (a projection with refresh_every > 1), but "
                              "continuous plasticity integrates potentials and weights as one "
                              "system with exact products; remove refresh_every or use "
                              "plasticity = { every = N } with euler or gs-euler.")
        for key, _, rule in rules.entries:
            if rule.target != "projection":
                raise ConfigError(f'rule "{rule.name}" ({key.split(".")[0]}) is a population rule; '
                                  "continuous plasticity integrates projection rules only. Use "
                                  'plasticity = { every = N } instead.')
            if not rule.continuous:
                raise ConfigError(f'rule "{rule.name}" on projection "{key.split(".")[0]}" defines '
                                  "no derivative(ctx) (dW/dt), so it cannot run continuously; "
                                  "use plasticity = { every = N } or give the rule a derivative.")
        self.net, self.rules, self.make_dynamics = net, rules, make_dynamics
        self.names = list(dict.fromkeys(proj.name for _, proj, _ in rules.projection_rules))
        self.scratch = scratch_r
        self.evals = 0

    def initial(self, state) -> tuple[torch.Tensor, ...]:
        return (state.u.clone(), *(self.net.weights[n].clone() for n in self.names))

    def __call__(self, t: float, y) -> tuple[torch.Tensor, ...]:
        from ..dynamics import NeuralState
        net = self.net
        u, weights = y[0], y[1:]
        for name, w in zip(self.names, weights):
            net.weights[name].copy_(w)
        dynamics = self.make_dynamics()
        dynamics.set_time(NeuralState(u, self.scratch), t)     # time-varying clamped inputs
        du = dynamics.rhs(u, self.scratch, t)
        self.evals += 1
        record = PhaseRecord(net, {"now": NeuralState(u, self.scratch)})
        rates = {name: torch.zeros_like(net.weights[name]) for name in self.names}
        for _, proj, rule in self.rules.projection_rules:
            ctx = SynapseContext(record, projection=proj, weight=net.weights[proj.name],
                                 pre_clamped=net.slots[proj.source].u_cols is None, dt=0.0)
            rates[proj.name] += rule.derivative(ctx)
        for name, rate in rates.items():
            if name in net.masks:
                rate.mul_(net.masks[name])
        return (du, *(rates[n] for n in self.names))

    def make_probe(self):
        """A function (t, y) -> dy/dt for the stiffness diagnosis of
        :mod:`neurosim.solvers.limits`: du/dt of the potentials in y with the weights as they
        are now, and zero weight rates, on its own copy of the activities. It runs no rule
        (a rule's derivative may keep state), writes no weight and counts no evaluation, so
        diagnosing leaves the run and its resume bit-exact; the potentials' fast modes, which
        make the joint system stiff, are all it needs."""
        from ..dynamics import NeuralState
        dynamics = self.make_dynamics()
        scratch = self.scratch.clone()

        def probe(t: float, y) -> tuple[torch.Tensor, ...]:
            u = y[0]
            dynamics.set_time(NeuralState(u, scratch), float(t))
            return (dynamics.rhs(u, scratch, float(t)), *(torch.zeros_like(w) for w in y[1:]))
        return probe

    @property
    def drive(self):
        """The stimuli of the simulation (neurosim.stimuli.Drive), or None."""
        return getattr(self.make_dynamics(), "drive", None)

    def write_back(self, y, state) -> None:
        """Copy an integrated (u, W...) into the simulation state and the network."""
        state.u.copy_(y[0])
        for name, w in zip(self.names, y[1:]):
            self.net.weights[name].copy_(w)
        self.net.sync_activity(state)
