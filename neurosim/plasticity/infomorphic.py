"""The infomorphic goal as a population rule (Schneider et al., ICLR 2025).

Every neuron n of an infomorphic population (neurosim.graph.infomorphic) maximises its own
goal, a weighted sum of the PID atoms of its sources (F, C and, if connected, L) about its
output Y, with the residual entropy last:

    G_n = gamma . [Pi_n; H_res,n]        (neurosim.pid: plug-in pmf of the batch, I_sx)
    loss = -sum_n G_n

The sources are the compartment inputs of the protocol's last step ("final"); a projection
whose source is computed at or after the population in a sweep (lateral, feedback) reads the
source's activity of the step before ("previous"). Sources are binned without gradient; the
gradient reaches the incoming plastic weights and the compartment biases only through
theta = sigmoid(A(F, C, L)). One Adam step per training step (torch.optim.Adam's update, L2
``weight_decay`` added to the gradient):

    g = grad + wd p;  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr_t (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + eps)      (lr_t = lr x schedule)

Each step it reports the goal and every atom's mean over the population's neurons (columns
``train_<population>_goal``, ``train_<population>_pi_<atom>``, e.g. ``pi_F_C`` for {F}{C},
``pi_H_res``), the per-epoch PID diagnostics.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import ConfigError
from ..graph.infomorphic import (InfomorphicPopulation, compartment_sums, pid_sources,
                                 reads_previous_step, unconnected_bias_rows)
from ..pid import goal_vector, pid_atoms
from .base import PopulationContext, PopulationRule, register_rule

FINAL, PREVIOUS = "final", "previous"


def atom_column(name: str) -> str:
    """A column-safe atom name: "{F}{CL}" -> "F_CL", "H_res" unchanged."""
    if name == "H_res":
        return name
    return "_".join(part for part in name.replace("}", "").split("{") if part)


class Adam:
    """torch.optim.Adam's update on named live tensors (see module docstring), with its state
    (step count, first and second moments) for checkpoints."""

    def __init__(self, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.steps = 0
        self.moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def step_(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor],
              lr_scale: float = 1.0) -> None:
        """p <- p - lr_t m_hat / (sqrt(v_hat) + eps) for every named tensor, in place."""
        self.steps += 1
        k = self.steps
        beta1, beta2 = self.betas
        step = self.lr * lr_scale / (1 - beta1 ** k)
        root = math.sqrt(1 - beta2 ** k)
        for name, p in params.items():
            grad = grads.get(name)
            if grad is None:            # takes no part in the loss: no step, no decay
                continue
            if self.weight_decay:
                grad = grad.add(p, alpha=self.weight_decay)
            if name not in self.moments:
                self.moments[name] = (torch.zeros_like(p), torch.zeros_like(p))
            m, v = self.moments[name]
            if m.device != p.device or m.dtype != p.dtype:     # e.g. loaded from a checkpoint
                m, v = m.to(p), v.to(p)
                self.moments[name] = (m, v)
            m.mul_(beta1).add_(grad, alpha=1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            p.addcdiv_(m, v.sqrt().div_(root).add_(self.eps), value=-step)

    def state_dict(self) -> dict:
        """Step count and moments."""
        return {"steps": self.steps,
                "moments": {k: {"m": m.clone(), "v": v.clone()} for k, (m, v) in
                            self.moments.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the step count and moments."""
        self.steps = int(state.get("steps", 0))
        self.moments = {k: (torch.as_tensor(t["m"]).clone(), torch.as_tensor(t["v"]).clone())
                        for k, t in dict(state.get("moments", {})).items()}

    def stack(self, states: list, who: str) -> None:
        """Ensembles: take the members' states (their ``state_dict()``s) with every moment
        stacked along a leading member axis; the members must have taken the same number of
        steps with the same parameters."""
        steps = {int(s.get("steps", 0)) for s in states}
        names = {tuple(sorted(dict(s.get("moments", {})))) for s in states}
        if len(steps) != 1 or len(names) != 1:
            raise ConfigError(f"{who}: the ensemble members' Adam states differ in their step "
                              f"counts ({sorted(steps)}) or parameters; resume the members one "
                              "by one to the same epoch first.")
        self.steps = steps.pop()
        self.moments = {k: tuple(torch.stack([torch.as_tensor(s["moments"][k][part])
                                              for s in states]) for part in ("m", "v"))
                        for k in names.pop()}

    def member_states(self, count: int) -> list:
        """The ``count`` members' states (each a ``state_dict()``) from stacked moments."""
        return [{"steps": self.steps,
                 "moments": {k: {"m": m[i], "v": v[i]} for k, (m, v) in self.moments.items()}}
                for i in range(count)]


@register_rule
class InfomorphicGoal(PopulationRule):
    """Gradient ascent (Adam) on the PID goal of every neuron of an infomorphic population
    (neurosim.plasticity.infomorphic). ``goal``: a name ("heuristic", "optimised_mnist",
    "reduced", "optimised_cifar10"; "output" for a two-source output layer), a table
    {atom name: weight} or the full vector."""

    name = "infomorphic_goal"
    needs_phases = (FINAL, PREVIOUS)
    needs_grad = True
    ensemble_ready = True      # Adam's moments stacked per member (stack_state)

    def __init__(self, goal="optimised_mnist", lr: float = 2e-3, weight_decay: float = 0.0,
                 betas=(0.9, 0.999), eps: float = 1e-8, report: bool = True):
        for key, value in (("lr", lr), ("weight_decay", weight_decay), ("eps", eps)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ConfigError(f"{key}: a finite number >= 0, got {value!r}.")
        betas = tuple(betas) if isinstance(betas, (list, tuple)) else betas
        if not isinstance(betas, tuple) or len(betas) != 2 or not all(
                isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                for b in betas):
            raise ConfigError(f"betas: two numbers in [0, 1), e.g. [0.9, 0.999]; got {betas!r}.")
        if not isinstance(report, bool):
            raise ConfigError(f"report: true or false, got {report!r}.")
        goal_vector(goal, where="infomorphic_goal goal")        # checks the name or vector
        self.goal, self.lr, self.weight_decay = goal, float(lr), float(weight_decay)
        self.betas, self.eps, self.report = (float(betas[0]), float(betas[1])), float(eps), report
        self.optimizer = Adam(self.lr, self.weight_decay, self.betas, self.eps)

    def setup(self, net, owner) -> None:
        """Check the population kind and its sources; fix the goal vector and which
        projections read the previous step."""
        if getattr(self, "owner", owner.name) != owner.name:
            raise ConfigError(f'one infomorphic_goal rule cannot serve populations "{self.owner}" '
                              f'and "{owner.name}" (it keeps per-population Adam state); give '
                              "each population its own rule.")
        self.owner = owner.name
        if not isinstance(owner, InfomorphicPopulation):
            raise ConfigError(f'rule "infomorphic_goal" needs an infomorphic population (type = '
                              f'"infomorphic"); "{owner.name}" is of kind "{owner.kind}".')
        network = net.network
        self.sources = pid_sources(network, owner.name)
        if len(self.sources) not in (2, 3):
            raise ConfigError(f'population "{owner.name}": the PID goal needs 2 or 3 sources, '
                              f"i.e. projections into 2 or 3 of the compartments feedforward, "
                              f"context, lateral; it has {list(self.sources) or 'none'}.")
        if "feedforward" not in self.sources:
            raise ConfigError(f'population "{owner.name}": no projection reaches compartment '
                              '"feedforward" (F drives the neuron: A = F x gain).')
        self.gamma = goal_vector(self.goal, len(self.sources),
                                 where=f'rule "infomorphic_goal" on "{owner.name}" goal')
        self.previous = {q.name: reads_previous_step(network, q)
                         for q in network.incoming(owner.name)}
        self.unconnected_bias_rows = unconnected_bias_rows(network, owner)

    # ------------------------------------------------------------------ the goal
    def compartments(self, ctx: PopulationContext, params: Mapping[str, torch.Tensor],
                     bias: torch.Tensor) -> dict[str, torch.Tensor]:
        """F, C, L (batch x n) of the final step from the given (differentiable) weights."""
        return compartment_sums(
            ctx.population, ctx.incoming,
            lambda q: ctx.pre(q.name, PREVIOUS if self.previous[q.name] else FINAL),
            lambda q: params.get(q.name, ctx.fixed_weights.get(q.name)), bias, ctx.batch_size)

    def atoms(self, ctx: PopulationContext, params, bias):
        """(PIDResult per neuron, theta (batch x n)) of the final step. In an ensemble
        (theta M x batch x n) the members' neurons are estimated as one population of M n
        neurons, member-major (each neuron's estimate is its own)."""
        pop = ctx.population
        v = self.compartments(ctx, params, bias)
        theta = torch.sigmoid(pop.feedforward(v))
        bins = pop.bin_sources([v[c] for c in self.sources])
        batch = theta.shape[-2]
        return pid_atoms(bins.reshape(bins.shape[0], -1, batch),
                         theta.transpose(-1, -2).reshape(-1, batch), n_bins=pop.bins), theta

    def update(self, ctx: PopulationContext) -> None:
        """One Adam step on -sum_n G_n (module docstring); in an ensemble on the sum of the
        members' losses, whose gradient is each member's own."""
        live = dict(ctx.weights)
        live["bias"] = ctx.bias
        params = {k: t.detach().requires_grad_(True) for k, t in live.items()}
        result, theta = self.atoms(ctx, params, params["bias"])
        gamma = self.gamma.to(result.atoms)
        terms = result.terms.reshape(*theta.shape[:-2], theta.shape[-1], -1)  # (M x) n x atoms
        goal = terms @ gamma
        (-goal.sum()).backward()
        grads = {k: p.grad for k, p in params.items()}
        if grads["bias"] is not None and self.unconnected_bias_rows:
            # a compartment no projection reaches has no input to bias: keep its row fixed
            rows = self.unconnected_bias_rows
            grads["bias"][..., rows, :] = 0
            kept = ctx.bias[..., rows, :].clone()
            self.optimizer.step_(live, grads, ctx.lr_scale)
            ctx.bias[..., rows, :] = kept
        else:
            self.optimizer.step_(live, grads, ctx.lr_scale)
        if self.report:            # means over the neurons (one per member in an ensemble)
            means = terms.detach().mean(-2)
            ctx.report("goal", goal.detach().mean(-1))
            for i, atom in enumerate(result.names):
                ctx.report(f"pi_{atom_column(atom)}", means[..., i])

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Adam's step count and moments."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        """Restore Adam's step count and moments."""
        self.optimizer.load_state_dict(state)

    def stack_state(self, states: list) -> None:
        """Ensembles: the members' Adam moments stacked along the member axis."""
        self.optimizer.stack(states, f'rule "infomorphic_goal" on "{self.owner}"')

    def member_states(self, count: int) -> list:
        """Member k's Adam state: the shared step count, its slice of the moments."""
        return self.optimizer.member_states(count)


__all__ = ["Adam", "InfomorphicGoal", "atom_column"]
