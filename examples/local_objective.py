"""A population rule that maximises a local objective with autograd and Adam.

    python examples/local_objective.py [--epochs 10] [--out runs/local/local_objective] [--force]

The population ``h`` is fed by one input projection ``W`` (onto its basal dendrite) and has a
per-neuron bias ``b``. With the linear cell of the model file (leak 0, basal conductance 1,
no apical input) its relaxed activity is ``r = sigmoid(W x + b)``. The rule recomputes that
activity from the presynaptic input ``x = ctx.pre(projection, phase)`` and the live ``W``,
``b``, and maximises a sparse-coding objective of its own population, averaged over the
mini-batch:

    J(W, b) = - 1/2 < |x - W^T r|^2 >  -  sparsity * sum_i KL(rho || <r_i>)

The first term rewards codes from which the population's own synapses (used as a tied
decoder) reconstruct the input; the second holds each neuron's mean firing ``<r_i>`` near the
target rate ``rho`` (KL between Bernoulli(rho) and Bernoulli(<r_i>)), which keeps the code
sparse and every neuron in use. Everything is local to the population: its input, its
incoming weights, its bias.

The update is gradient *ascent* on J with a hand-written Adam (bias-corrected moments):

    g = dJ/dp,  m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  t <- t + 1
    p <- p + lr * lr_scale * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

for p in (W, b). The moments and the step count are rule state (``state_dict``), so a
resumed run continues bit for bit. The rule needs autograd (``needs_grad = True``): the rule
set then runs it outside ``torch.inference_mode`` with gradients enabled, and its context
hands out ordinary tensors. Gradients come from ``torch.autograd.grad`` on detached aliases
of the live parameters; the step is applied in place to those aliases under
``torch.no_grad()``, which changes the network's tensors (they share storage).

The metric ``LocalObjectiveMetric`` (``type = "local_objective:LocalObjectiveMetric"``) writes
the objective over the evaluation set each epoch: columns ``objective_<population>``,
``reconstruction_<population>`` (the mean squared-error term, 1/2 <|x - W^T r|^2>) and
``sparsity_<population>`` (the summed KL).

Model file: ``examples/local_objective_digits.toml`` (digits, relax protocol); its
"local_objective:..." import paths are found next to it:

    neurosim train examples/local_objective_digits.toml --out runs/local/lo
    neurosim resume runs/local/lo --epochs 20
"""
from __future__ import annotations

import argparse
import math
import shutil
import sys
from pathlib import Path
from typing import Mapping

import torch

from neurosim.errors import ConfigError
from neurosim.metrics import METRICS, EpochMetric, MetricContext
from neurosim.plasticity import PopulationContext, PopulationRule, register_rule

HERE = Path(__file__).resolve().parent
MODEL = HERE / "local_objective_digits.toml"


def objective_terms(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, rho: float,
                    sparsity: float) -> dict[str, torch.Tensor]:
    """The terms of J on a batch x (B x n_in), weight W (n x n_in), bias b (n): the code
    ``r``, ``reconstruction`` = 1/2 <|x - W^T r|^2>, ``kl`` = sum_i KL(rho || <r_i>),
    ``objective`` = -reconstruction - sparsity * kl (differentiable in W and b)."""
    r = torch.sigmoid(x @ weight.T + bias)
    reconstruction = 0.5 * ((x - r @ weight) ** 2).sum(dim=1).mean()
    q = r.mean(dim=0).clamp(1e-6, 1 - 1e-6)
    kl = (rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).sum()
    return {"r": r, "reconstruction": reconstruction, "kl": kl,
            "objective": -reconstruction - sparsity * kl}


def _number(value, name: str, low: float, high: float = math.inf, *,
            open_low: bool = True, open_high: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}.")
    value = float(value)
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if below or above:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        raise ConfigError(f"{name} must lie in {left}{low}, {high}{right}, got {value!r}.")
    return value


@register_rule
class LocalObjective(PopulationRule):
    """Adam ascent on the sparse-coding objective J of its population (module docstring)."""

    name = "local_objective"
    needs_grad = True
    needs_phases = ("free",)

    def __init__(self, lr: float = 0.01, rho: float = 0.1, sparsity: float = 0.5,
                 projection: str | None = None, phase: str = "free", beta1: float = 0.9,
                 beta2: float = 0.999, eps: float = 1e-8):
        self.lr = _number(lr, "lr", 0.0)
        self.rho = _number(rho, "rho", 0.0, 1.0)
        self.sparsity = _number(sparsity, "sparsity", 0.0, open_low=False)
        self.beta1 = _number(beta1, "beta1", 0.0, 1.0, open_low=False)
        self.beta2 = _number(beta2, "beta2", 0.0, 1.0, open_low=False)
        self.eps = _number(eps, "eps", 0.0)
        if projection is not None and not isinstance(projection, str):
            raise ConfigError(f"projection must be a projection name, got {projection!r}.")
        if not isinstance(phase, str):
            raise ConfigError(f"phase must be a phase name, got {phase!r}.")
        self.projection, self.phase = projection, phase
        self.needs_phases = (phase,)
        self.step = 0                                  # Adam's t
        self.m: dict[str, torch.Tensor] = {}           # first moments, by parameter name
        self.v: dict[str, torch.Tensor] = {}           # second moments

    # ------------------------------------------------------------------ the objective
    def input_projection(self, ctx: PopulationContext) -> str:
        """The projection whose weight is W: the one given, else the only weighted one."""
        names = list(ctx.weights)
        if self.projection is not None:
            if self.projection not in ctx.weights:
                raise ConfigError(f'rule "{self.name}" on population "{ctx.population.name}": '
                                  f'projection "{self.projection}" is not an incoming weighted '
                                  f"projection (those are: {', '.join(names) or '(none)'}).")
            return self.projection
        if len(names) != 1:
            raise ConfigError(f'rule "{self.name}" on population "{ctx.population.name}": the '
                              f"population has {len(names)} incoming weighted projections "
                              f"({', '.join(names) or 'none'}); name the input one with "
                              "projection = \"...\".")
        return names[0]

    def terms(self, ctx: PopulationContext, params: Mapping[str, torch.Tensor]) -> dict:
        proj = self.input_projection(ctx)
        return objective_terms(ctx.pre(proj, self.phase), params[proj], params["bias"],
                               rho=self.rho, sparsity=self.sparsity)

    # ------------------------------------------------------------------ the update
    def update(self, ctx: PopulationContext) -> None:
        proj = self.input_projection(ctx)
        live = ctx.parameters()
        params = {k: live[k].detach().requires_grad_() for k in ("bias", proj)}
        objective = self.terms(ctx, params)["objective"]
        grads = torch.autograd.grad(objective, list(params.values()))
        self.step += 1
        t, b1, b2 = self.step, self.beta1, self.beta2
        size = self.lr * ctx.lr_scale / (1.0 - b1 ** t)          # bias correction of m
        correction = math.sqrt(1.0 - b2 ** t)                     # ... and of v
        with torch.no_grad():
            for (key, p), g in zip(params.items(), grads):
                m, v = self._moment(self.m, key, p), self._moment(self.v, key, p)
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                denominator = (v.sqrt() / correction).add_(self.eps)
                p.addcdiv_(m, denominator, value=size)            # ascent: J increases

    @staticmethod
    def _moment(store: dict, key: str, p: torch.Tensor) -> torch.Tensor:
        moment = store.get(key)
        if moment is None:
            moment = store[key] = torch.zeros_like(p, requires_grad=False)
        elif moment.device != p.device or moment.dtype != p.dtype:
            moment = store[key] = moment.to(p)         # restored state comes back on the CPU
        return moment

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        if not self.step:
            return {}
        return {"step": torch.tensor(self.step, dtype=torch.int64),
                "m": {k: t.detach().clone() for k, t in self.m.items()},
                "v": {k: t.detach().clone() for k, t in self.v.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        unknown_keys = set(state) - {"step", "m", "v"}
        if unknown_keys or (state and set(state) != {"step", "m", "v"}):
            raise ConfigError(f'rule "{self.name}": the checkpoint holds rule state '
                              f"{sorted(state)}, expected step, m and v; was it written by "
                              "another rule?")
        if not state:
            self.step, self.m, self.v = 0, {}, {}
            return
        self.step = int(torch.as_tensor(state["step"]))
        self.m = {k: torch.as_tensor(t).clone() for k, t in state["m"].items()}
        self.v = {k: torch.as_tensor(t).clone() for k, t in state["v"].items()}


@METRICS.register
class LocalObjectiveMetric(EpochMetric):
    """J and its terms over the evaluation set (the reconstruction averaged over samples,
    the firing rates <r_i> over the whole set), with the rule's rho and sparsity."""

    name = "local_objective"

    def __init__(self, population: str):
        if not isinstance(population, str):
            raise ConfigError(f"population must be a population name, got {population!r}.")
        self.population = population

    def reset(self, context: MetricContext) -> None:
        super().reset(context)
        network = context.net.network
        rules = [r for r in getattr(network.population(self.population), "rules", ())
                 if isinstance(r, LocalObjective)]
        if len(rules) != 1:
            raise ConfigError(f'local_objective metric: population "{self.population}" needs '
                              f"exactly one local_objective rule, it has {len(rules)}.")
        self.rule = rules[0]
        weighted = [q for q in network.incoming(self.population) if q.name in context.net.weights]
        if self.rule.projection is not None:
            weighted = [q for q in weighted if q.name == self.rule.projection]
        if len(weighted) != 1:
            raise ConfigError(f'local_objective metric: population "{self.population}" needs '
                              "one input projection (set the rule's projection).")
        self.proj = weighted[0]
        self.count, self.squared, self.rates = 0, 0.0, None

    def observe(self, state, x, labels) -> None:
        net = self.context.net
        pre = net.r_of(state, self.proj.source).to(torch.float64)
        w = net.weights[self.proj.name].to(torch.float64)
        r = torch.sigmoid(pre @ w.T + net.biases[self.population].to(torch.float64))
        self.squared += float(((pre - r @ w) ** 2).sum())
        rates = r.sum(dim=0)
        self.rates = rates if self.rates is None else self.rates + rates
        self.count += pre.shape[0]

    def compute(self) -> dict[str, float]:
        rho, q = self.rule.rho, (self.rates / self.count).clamp(1e-6, 1 - 1e-6)
        kl = float((rho * torch.log(rho / q) + (1 - rho) * torch.log((1 - rho) / (1 - q))).sum())
        reconstruction = 0.5 * self.squared / self.count
        name = self.population
        return {f"objective_{name}": -reconstruction - self.rule.sparsity * kl,
                f"reconstruction_{name}": reconstruction, f"sparsity_{name}": kl}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="runs/local/local_objective")
    parser.add_argument("--force", action="store_true", help="start over if --out exists")
    args = parser.parse_args(argv)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))      # so that "local_objective:..." can be imported
    from neurosim.training import Trainer

    out = Path(args.out)
    if (out / "run.h5").exists():
        if not args.force:
            sys.exit(f"{out} already holds a run; pass --force to start over or continue it "
                     f"with `PYTHONPATH={HERE} neurosim resume {out} --epochs N`.")
        shutil.rmtree(out)
    trainer = Trainer.from_model_file(MODEL, epochs=args.epochs, progress=False)
    start = trainer.evaluate(trainer.dataset.test_x, None, "test", trainer.metrics)
    print(f"before training: objective {start['objective_h']:.4f}, reconstruction "
          f"{start['reconstruction_h']:.4f}, sparsity {start['sparsity_h']:.4f}")
    for epoch in range(1, args.epochs + 1):
        trainer.fit(out, epochs=epoch, log=None)
        row = {k: v[-1] for k, v in trainer.history.columns.items()}
        print(f"epoch {epoch}: objective {row['objective_h']:.4f}, reconstruction "
              f"{row['reconstruction_h']:.4f}, sparsity {row['sparsity_h']:.4f}, mean rate "
              f"{row['train_rate_h']:.3f} ({row['seconds']:.1f}s)")
    print(f"run saved in {out}; Adam steps taken: "
          f"{trainer.network.population('h').rules[0].step}")

if __name__ == "__main__":
    main()
