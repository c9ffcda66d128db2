"""The plasticity protocol: rules are hooks attached to projections or to populations.

When a rule runs
    In training, after the learning protocol (EP, CHL, PEPITA, ...) has run its phases on a
    mini-batch, it hands a :class:`~neurosim.plasticity.record.PhaseRecord` to its rule set,
    which calls ``rule.update(ctx)`` for every rule of every projection (declaration order),
    then every population rule (declaration order), under ``torch.inference_mode`` unless the
    rule sets ``needs_grad = True``. A projection rule sees its weight as it was during the
    phases unless an earlier rule on the same projection changed it in this step; a population
    rule runs after every projection rule, so it sees their updates. The fixed connectivity
    mask is re-applied after each rule. ``rule.setup(net, owner)`` runs once when the rule set
    is built (check settings against the network there). In a plain simulation rules run every N steps on the
    single phase "now" (``ctx.dt`` = the time since the last update) or continuously: a rule
    with ``derivative(ctx)`` (dW/dt) then has its weights integrated with the potentials.

What a projection rule receives (:class:`SynapseContext`, read-only except ``ctx.weight``)
    ``ctx.phases``             phase names, e.g. ("nudged", "free")
    ``ctx.pre(phase)``         presynaptic activity r_src, (batch x n_pre)
    ``ctx.post(phase)``        postsynaptic activity r_tgt, (batch x n_post)
    ``ctx.potential(phase, c)`` postsynaptic potential of compartment c ("soma" = u, or a
                               dendrite's v_c), (batch x n_post)
    ``ctx.stacked_pre(phases)`` / ``ctx.stacked_post(phases)``  the activities of ``phases``
                               (default: all) stacked along the batch axis in that order
    ``ctx.signal(name)``       what the protocol provides ("target", "error", "beta", ...);
                               ``ctx.signals`` is the whole mapping
    ``ctx.pre_clamped``        True when the source is a clamped input population
    ``ctx.beta``               signed nudge strength of the nudged phase (0 if none; in an
                               ensemble one per member, a 1-d tensor); ``ctx.nudged`` whether
                               it is nonzero
    ``ctx.batch_size``, ``ctx.projection`` (its description), ``ctx.weight`` (W, n_post x
    n_pre, to be changed in place), ``ctx.lr_scale`` (the epoch's learning-rate factor),
    ``ctx.epoch``, ``ctx.step`` (training steps so far), ``ctx.dt`` (time since the last
    update in simulations; 1 in training), ``ctx.record`` (the whole PhaseRecord),
    ``ctx.report(name, value)`` (a step metric: training writes its epoch mean as
    ``train_<owner>_<name>``)

In an ensemble (neurosim.training.ensemble) every tensor above gains a leading member axis
(activities M x batch x n, weights M x n_post x n_pre); a rule that computes with ``...``
indexing, ``.mT`` and neurosim.dynamics.ops (batched where needed) declares
``ensemble_ready = True``, and only such rules run in ensembles.

What a population rule receives (:class:`PopulationContext`)
    ``ctx.population`` (its description), ``ctx.weights`` (incoming *plastic* weight matrices
    by projection name, to be changed in place), ``ctx.fixed_weights`` (the other incoming
    ones: live tensors, to be read only), ``ctx.bias (the per-neuron bias, n), and
    ``ctx.activity(phase)``, ``ctx.potential(phase, c)``, ``ctx.pre(projection, phase)``,
    ``ctx.signal(name)`` plus the same ``lr_scale``, ``epoch``, ``step``, ``dt``, ``record``.

What a rule may change
    Its weights (and a population rule its bias) in place, and its own state (``self``).
    State that must survive a checkpoint is returned by ``state_dict()`` (tensors, numbers,
    nested dicts) and restored by ``load_state_dict()``.

Per-rule settings every rule accepts in a model file, beside its own parameters
    ``schedule``  an epoch schedule (neurosim.schedules) replacing the run's lr_schedule for
                  this rule, e.g. ``{ type = "step", milestones = [60, 90], factor = 0.1 }``
    ``warmup``    ``{ epochs = 5, mode = "frozen" }`` (the rule does not run in the first 5
                  epochs) or ``mode = "alone"`` (only this rule, and other "alone" rules, run)

Writing one's own rule: subclass :class:`PlasticityRule` (or :class:`PopulationRule`), set
``name``, implement ``update`` (and/or ``derivative``), and decorate with :func:`register_rule`
to use it from TOML as ``{ type = "<name>", ... }`` (or reference it as
``"package.module:ClassName"`` without registering). See docs/plasticity.md.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch

from ..errors import ConfigError
from ..registry import Registry
from ..schedules import EpochSchedule, make_epoch_schedule
from .record import PhaseRecord


@dataclass(frozen=True)
class Warmup:
    """The first ``epochs`` epochs: ``frozen`` (the rule does not run) or ``alone`` (only
    rules with an ``alone`` warm-up run)."""

    epochs: int
    mode: str = "frozen"

    @staticmethod
    def from_spec(spec, where: str) -> "Warmup":
        """Build from a rule's ``warmup`` table ``{ epochs = N, mode = "frozen"|"alone" }``;
        ConfigError for unknown keys or values."""
        if not isinstance(spec, Mapping):
            raise ConfigError(f'{where}: warmup is a table, e.g. {{ epochs = 5, mode = "frozen" }}; '
                              f"got {spec!r}.")
        unknown_keys = set(spec) - {"epochs", "mode"}
        if unknown_keys:
            raise ConfigError(f"{where}: warmup has unknown keys {sorted(unknown_keys)}; valid: "
                              "epochs, mode.")
        epochs, mode = spec.get("epochs"), spec.get("mode", "frozen")
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"{where}: warmup epochs must be an integer >= 0, got {epochs!r}.")
        if mode not in ("frozen", "alone"):
            raise ConfigError(f'{where}: warmup mode must be "frozen" or "alone", got {mode!r}.')
        return Warmup(epochs, mode)


class _Context:
    """What projection and population contexts share."""

    def __init__(self, record: PhaseRecord, *, lr_scale: float, epoch: int, step: int,
                 dt: float, grad: bool, who: str, owner: str):
        self.record = record
        self.reported: dict = {}
        self._owner = owner
        self.phases = record.phases
        self.signals = record.signals
        self.batch_size = record.batch_size
        self.lr_scale, self.epoch, self.step, self.dt = lr_scale, epoch, step, dt
        beta = record.signals.get("beta", 0.0)
        member_betas = isinstance(beta, torch.Tensor) and beta.dim() > 0
        self.beta = beta if member_betas else float(beta)
        self.nudged = bool(beta.any()) if member_betas else self.beta != 0.0
        self._grad, self._who = grad, who

    def _out(self, tensor: torch.Tensor) -> torch.Tensor:
        # rules that differentiate get ordinary tensors (inference tensors cannot be saved
        # for backward)
        return tensor.clone() if self._grad else tensor

    def _check(self, phase: str) -> None:
        self.record.check_phase(phase, self._who)

    def signal(self, name: str):
        return self.record.signal(name, self._who)

    def report(self, name: str, value) -> None:
        """Report a step metric (a number or 0-d tensor); in training its mean over the
        epoch's steps becomes the column ``train_<owner>_<name>``."""
        self.reported[f"{self._owner}_{name}"] = value


class SynapseContext(_Context):
    """Local view of one projection after a step's phases (see neurosim.plasticity.base for
    every attribute: ``phases``, ``signal``, ``beta``, ``weight``, ``lr_scale``, ``dt``, ...)."""

    def __init__(self, record: PhaseRecord, *, projection, weight: torch.Tensor,
                 pre_clamped: bool = False, lr_scale: float = 1.0, epoch: int = 0,
                 step: int = 0, dt: float = 1.0, grad: bool = False):
        super().__init__(record, lr_scale=lr_scale, epoch=epoch, step=step, dt=dt, grad=grad,
                         who=f'rule on projection "{projection.name}"', owner=projection.name)
        self.projection, self.weight, self.pre_clamped = projection, weight, pre_clamped

    def pre(self, phase: str) -> torch.Tensor:
        """Presynaptic activity r_src in ``phase`` (batch x n_pre)."""
        self._check(phase)
        return self._out(self.record.activity(self.projection.source, phase))

    def post(self, phase: str) -> torch.Tensor:
        """Postsynaptic activity r_tgt in ``phase`` (batch x n_post)."""
        self._check(phase)
        return self._out(self.record.activity(self.projection.target, phase))

    def potential(self, phase: str, compartment: str = "soma") -> torch.Tensor:
        """Postsynaptic soma potential u ("soma") or dendritic potential v_c in ``phase``
        (batch x n_post)."""
        self._check(phase)
        return self._out(self.record.potential(self.projection.target, compartment, phase))

    def stacked_pre(self, phases=None) -> torch.Tensor:
        """Presynaptic activities of every phase (or of ``phases``, in that order) stacked
        along the batch axis."""
        for phase in phases or ():
            self._check(phase)
        return self._out(self.record.stacked(self.projection.source, phases))

    def stacked_post(self, phases=None) -> torch.Tensor:
        """Postsynaptic activities of every phase (or of ``phases``, in that order) stacked
        along the batch axis."""
        for phase in phases or ():
            self._check(phase)
        return self._out(self.record.stacked(self.projection.target, phases))


class PopulationContext(_Context):
    """A population's view: its activity and potentials, every incoming weight, its bias."""

    def __init__(self, record: PhaseRecord, *, population, incoming, weights: dict,
                 bias: torch.Tensor, fixed_weights: dict | None = None, lr_scale: float = 1.0,
                 epoch: int = 0, step: int = 0, dt: float = 1.0, grad: bool = False):
        super().__init__(record, lr_scale=lr_scale, epoch=epoch, step=step, dt=dt, grad=grad,
                         who=f'rule on population "{population.name}"', owner=population.name)
        self.population, self.incoming = population, list(incoming)
        self.weights, self.bias = weights, bias
        self.fixed_weights = dict(fixed_weights or {})

    def activity(self, phase: str) -> torch.Tensor:
        """The population's activity r in ``phase`` (batch x n)."""
        self._check(phase)
        return self._out(self.record.activity(self.population.name, phase))

    def potential(self, phase: str, compartment: str = "soma") -> torch.Tensor:
        """The population's soma potential u ("soma") or dendritic potential v_c in ``phase``
        (batch x n)."""
        self._check(phase)
        return self._out(self.record.potential(self.population.name, compartment, phase))

    def pre(self, projection: str, phase: str) -> torch.Tensor:
        """Presynaptic activity of an incoming projection in a phase."""
        self._check(phase)
        for q in self.incoming:
            if q.name == projection:
                return self._out(self.record.activity(q.source, phase))
        from ..errors import unknown
        raise unknown("incoming projection", projection, [q.name for q in self.incoming],
                      self._who)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The population's learnable tensors: ``bias`` and each incoming plastic weight."""
        return {"bias": self.bias, **self.weights}


class PlasticityRule:
    """Base class of projection rules (built-in and user-written alike)."""

    name: ClassVar[str] = "rule"
    #: "projection" rules attach to [[projection]] tables, "population" rules to populations
    target: ClassVar[str] = "projection"
    #: whether the run's per-epoch learning-rate schedule scales this rule
    scheduled: ClassVar[bool] = True
    #: phases the rule needs from the protocol
    needs_phases: ClassVar[tuple[str, ...]] = ()
    #: run outside inference mode with autograd enabled (contexts hand out plain tensors)
    needs_grad: ClassVar[bool] = False
    #: works on spatial (conv2d) projections, through ``ctx.projection.outer(post, pre)``
    spatial: ClassVar[bool] = False
    #: handles a leading ensemble-member axis (see module docstring)
    ensemble_ready: ClassVar[bool] = False
    #: set from the model file's per-rule keys (see module docstring)
    schedule: EpochSchedule | None = None
    warmup: Warmup | None = None

    def setup(self, net, owner) -> None:
        """Called once when the rule set is built, with the compiled network and the
        projection or population the rule is attached to; raise a ConfigError for settings
        that do not fit them."""

    def update(self, ctx) -> None:
        """Change the weights in place. The default takes one Euler step of
        :meth:`derivative`: W += dt * lr_scale * dW/dt."""
        if not self.continuous:
            raise NotImplementedError(f'rule "{self.name}" defines neither update(ctx) nor '
                                      "derivative(ctx)")
        ctx.weight.add_(self.derivative(ctx), alpha=ctx.dt * ctx.lr_scale)

    def derivative(self, ctx) -> torch.Tensor:
        """dW/dt (n_post x n_pre) for continuous plasticity; rules without one cannot run as
        part of the ODE."""
        raise NotImplementedError

    @property
    def continuous(self) -> bool:
        """Whether the rule defines :meth:`derivative`, so it can run as continuous
        plasticity (dW/dt integrated with the potentials)."""
        return type(self).derivative is not PlasticityRule.derivative

    def config(self) -> dict:
        """The constructor arguments, so the rule can be rebuilt from a checkpoint."""
        params = inspect.signature(type(self).__init__).parameters
        return {"type": self.name, **{k: getattr(self, k) for k in params
                                      if k != "self" and hasattr(self, k)}}

    def stack_state(self, states: list) -> None:
        """Ensembles: take the members' states (their ``state_dict()``s, member order) as
        this rule's state with a leading member axis. A rule with state implements this and
        :meth:`member_states` to run in ensembles; the default accepts only empty states."""
        if any(states):
            raise ConfigError(f'rule "{self.name}" keeps state ({sorted(states[0] or {})}) and '
                              "cannot stack it for an ensemble; implement stack_state and "
                              "member_states.")

    def member_states(self, count: int) -> list:
        """Ensembles: this rule's state split into its ``count`` members' states (what each
        member's own rule would hold); see :meth:`stack_state`."""
        return [{} for _ in range(count)]

    def state_dict(self) -> dict:
        """The rule's own state to save with a checkpoint (tensors, numbers, nested dicts);
        empty for stateless rules."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what :meth:`state_dict` returned; a stateless rule refuses a non-empty
        state."""
        if state:
            raise ConfigError(f'rule "{self.name}" has no state but the checkpoint holds '
                              f"{sorted(state)}.")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"


class PopulationRule(PlasticityRule):
    """Base class of population rules: ``update(ctx: PopulationContext)`` sees every incoming
    weight and the population's own bias."""

    target = "population"

    def update(self, ctx: PopulationContext) -> None:
        """Change the incoming plastic weights (``ctx.weights``) and the bias (``ctx.bias``)
        in place; every population rule implements it."""
        raise NotImplementedError


RULES = Registry("rule", base=PlasticityRule, unknown_as="rule type")


def register_rule(cls: type[PlasticityRule]) -> type[PlasticityRule]:
    """Class decorator: make a rule available to model files as ``type = cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, PlasticityRule)):
        raise TypeError("register_rule expects a PlasticityRule subclass")
    return RULES.register(cls, name=cls.name)


def rule_class(kind: str, where: str = "rule") -> type[PlasticityRule]:
    """The rule class registered as ``kind``, or imported from ``"package.module:ClassName"``."""
    return RULES.lookup(kind, where)


def build_rule(spec, where: str = "rule") -> PlasticityRule:
    """Build a rule from an instance or a table ``{type = "...", <constructor args>,
    [schedule = {...}], [warmup = {...}]}``."""
    if isinstance(spec, PlasticityRule):
        return spec
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f'{where}: a rule is a table with a "type" key, e.g. '
                          '{ type = "ep_contrastive", lr = 0.1 }; got ' f"{spec!r}.")
    spec = dict(spec)
    kind = spec.pop("type")
    schedule, warmup = spec.pop("schedule", None), spec.pop("warmup", None)
    rule = RULES.build({"type": kind, **spec}, where)
    if schedule is not None:
        if not rule.scheduled:
            raise ConfigError(f'{where}: rule "{kind}" is not scheduled (its factor is not a '
                              "learning rate), so a schedule would have no effect; remove it.")
        rule.schedule = make_epoch_schedule(schedule, f"{where} schedule")
    if warmup is not None:
        rule.warmup = Warmup.from_spec(warmup, f"{where}")
    return rule
