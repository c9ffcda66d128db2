"""Running a network's rules over a PhaseRecord: the one dispatch every protocol and every
simulation uses (see neurosim.plasticity.base for what rules receive and when)."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Mapping, Sequence

import torch

from ..errors import ConfigError
from .base import PlasticityRule, PopulationContext, SynapseContext
from .record import PhaseRecord


class RuleSet:
    """The projection rules and population rules of a compiled network, in declaration order
    (projections first), checked against the phases a protocol runs."""

    def __init__(self, net, *, phases: Sequence[str] | None = None, who: str = "protocol"):
        self.net = net
        network = net.network
        self.projection_rules: list = []
        self.population_rules: list = []
        for proj in network.projections:
            for i, rule in enumerate(proj.rules):
                where = f'rule "{rule.name}" on projection "{proj.name}"'
                if rule.target != "projection":
                    raise ConfigError(f"{where} is a population rule; attach it to the target "
                                      f'population ("{proj.target}") with rules = [...].')
                if proj.name not in net.weights:
                    raise ConfigError(f'{where}: projection "{proj.name}" has no weight matrix '
                                      f'(init "{proj.init}"), so nothing can learn; remove the '
                                      "rule or give the projection a weight initialiser.")
                self.projection_rules.append((f"{proj.name}.{i}", proj, rule))
        for pop in network.dynamic:
            for i, rule in enumerate(getattr(pop, "rules", ())):
                if rule.target != "population":
                    raise ConfigError(f'rule "{rule.name}" on population "{pop.name}" is a '
                                      "projection rule; attach it to a [[projection]] instead.")
                self.population_rules.append((f"{pop.name}.{i}", pop, rule))
        for key, owner, rule in self.entries:
            try:
                rule.setup(net, owner)
            except ConfigError as err:
                raise ConfigError(f'rule "{rule.name}" on {key.split(".")[0]}: {err}') from None
        if phases is not None:
            for key, _, rule in self.entries:
                missing = [p for p in rule.needs_phases if p not in phases]
                if missing:
                    raise ConfigError(f'rule "{rule.name}" ({key.split(".")[0]}) needs the phases '
                                      f"{missing}, which {who} does not have (its phases: "
                                      f"{', '.join(phases)}).")

    @property
    def entries(self) -> list:
        """``(key, owner, rule)`` for every rule, projection rules first; ``key`` is
        "<projection or population>.<index>" and ``owner`` its Projection or Population."""
        return self.projection_rules + self.population_rules

    def __bool__(self) -> bool:
        return bool(self.projection_rules or self.population_rules)

    def __iter__(self):
        return (rule for _, _, rule in self.entries)

    # ------------------------------------------------------------------ running
    def _active(self, epoch: int) -> list:
        def warming(rule, mode):
            return rule.warmup is not None and rule.warmup.mode == mode and \
                epoch < rule.warmup.epochs
        alone = [e for e in self.entries if warming(e[2], "alone")]
        if alone:
            return alone
        return [e for e in self.entries if not warming(e[2], "frozen")]

    @staticmethod
    def lr_scale_of(rule: PlasticityRule, lr_scale: float, epoch: int) -> float:
        """The factor a rule sees: 1 for unscheduled rules, else its own schedule's, else the
        run's."""
        if not rule.scheduled:
            return 1.0
        return rule.schedule(epoch) if rule.schedule is not None else lr_scale

    def apply(self, record: PhaseRecord, *, lr_scale: float = 1.0, epoch: int = 0,
              step: int = 0, dt: float = 1.0) -> dict:
        """Run every active rule once on ``record`` (see neurosim.plasticity.base); returns
        the step metrics the rules reported (``ctx.report``)."""
        net = self.net
        reported: dict = {}
        for key, owner, rule in self._active(epoch):
            common = dict(lr_scale=self.lr_scale_of(rule, lr_scale, epoch), epoch=epoch,
                          step=step, dt=dt, grad=rule.needs_grad)
            with ExitStack() as stack:
                if rule.needs_grad:
                    stack.enter_context(torch.inference_mode(False))
                    stack.enter_context(torch.enable_grad())
                if rule.target == "projection":
                    ctx = SynapseContext(record, projection=owner, weight=net.weights[owner.name],
                                         pre_clamped=net.slots[owner.source].u_cols is None,
                                         **common)
                    rule.update(ctx)
                    touched = [owner.name]
                else:
                    incoming = net.network.incoming(owner.name)
                    weights = {q.name: net.weights[q.name] for q in incoming
                               if q.name in net.weights and q.plastic}
                    fixed = {q.name: net.weights[q.name] for q in incoming
                             if q.name in net.weights and not q.plastic}
                    ctx = PopulationContext(record, population=owner, incoming=incoming,
                                            weights=weights, fixed_weights=fixed,
                                            bias=net.biases[owner.name], **common)
                    rule.update(ctx)
                    touched = list(weights)
            for name in touched:
                if name in net.masks:
                    net.weights[name].mul_(net.masks[name])
            reported.update(ctx.reported)
        return reported

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Non-empty rule states keyed "<projection or population>.<index>"."""
        states = {}
        for key, _, rule in self.entries:
            state = rule.state_dict()
            if state:
                states[key] = state
        return states

    def load_state_dict(self, states: Mapping, where: str = "checkpoint") -> None:
        """Restore the states :meth:`state_dict` saved into each rule; ConfigError for a key
        the model has no rule for."""
        keys = {key for key, _, _ in self.entries}
        stray = sorted(set(states) - keys)
        if stray:
            raise ConfigError(f"{where}: holds state for rules {stray} that the model does not "
                              "have; the model text and the checkpoint disagree.")
        for key, _, rule in self.entries:
            rule.load_state_dict(states.get(key, {}))

