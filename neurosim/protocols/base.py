"""The learning-protocol interface: what a protocol does, the trainer does not need to know.

A protocol (equilibrium propagation, contrastive Hebbian learning, PEPITA, a user's own)

- declares the ``phases`` it runs (their names are what rules ask for) and whether it is
  ``supervised`` (needs targets);
- is bound to a compiled network with :meth:`LearningProtocol.bind` (input and output
  population names, the run's seed for any random matrices of its own);
- runs one training step on a batch with :meth:`train_step`: its phases, then its rules over a
  :class:`~neurosim.plasticity.PhaseRecord` (``self.rules.apply(record, ...)``), returning a
  :class:`StepOutput` (the prediction used for the running accuracy, per-step metrics);
- infers a state for evaluation (:meth:`infer`; :meth:`predict` is the output activity of it),
  and scores predictions with :meth:`loss`;
- returns whatever must survive a checkpoint from :meth:`state_dict` (random feedback
  matrices, running statistics) and takes it back in :meth:`load_state_dict`.

Its constructor's keyword arguments are the keys of the model file's ``[protocol]`` table
(checked, with "did you mean" hints). Register a protocol with ``PROTOCOLS.register`` or name
it ``type = "package.module:Class"``. See docs/protocols.md.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import torch

from ..errors import ConfigError
from ..plasticity import RuleSet
from ..registry import Registry

#: constructor parameters supplied by the engine, never by a [protocol] table
RESERVED = ("net", "input", "output")


@dataclass
class StepOutput:
    """What one training step leaves for the trainer: ``prediction`` (output activity used
    for the running accuracy and loss; None for unsupervised protocols) and ``metrics``
    (name -> number, averaged over the epoch's steps weighted by batch size, written as
    ``train_<name>``)."""

    prediction: torch.Tensor | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


class LearningProtocol:
    """Base class of learning protocols (see neurosim.protocols.base)."""

    name: ClassVar[str] = "protocol"
    phases: ClassVar[tuple[str, ...]] = ()
    supervised: ClassVar[bool] = True
    #: runs on an ensemble network (neurosim.training.ensemble): inputs and targets
    #: M x batch x n, ``generator`` a list of the members' generators
    ensemble_ready: ClassVar[bool] = False
    #: in an ensemble, draws random activities (stochastic activations) per member from
    #: each member's own generator (neurosim.draws); other ensembles refuse random activities
    ensemble_random_activities: ClassVar[bool] = False

    net = None
    input: str = "x"
    output: str = "out"

    def bind(self, net, *, input: str = "x", output: str = "out", seed: int = 0):
        """Attach to a compiled network; builds the rule set (checked against ``phases``)."""
        self.net, self.input, self.output, self.seed = net, input, output, int(seed)
        net._slot(input)
        if self.supervised or output in net.slots:      # unsupervised ones may have none
            net._slot(output, need_dynamic=True)
        self.rules = RuleSet(net, phases=self.phases, who=f'protocol "{self.name}"')
        self.setup()
        return self

    def setup(self) -> None:
        """Called once bound: allocate buffers, draw the protocol's own random matrices
        (from a generator seeded with ``self.seed``)."""

    def train_step(self, x: torch.Tensor, target: torch.Tensor | None,
                   generator: torch.Generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """One training step on a batch (rows of x; target rows or None when unsupervised);
        random draws come from ``generator`` (the run's, so resume stays exact)."""
        raise NotImplementedError

    def supervised_batch(self, x, target, who: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, target) as tensors of the network's dtype and device; ConfigError naming
        ``who`` unless target is a float tensor of one-hot rows (batch x output size)."""
        net = self.net
        x = torch.as_tensor(x, dtype=net.dtype, device=net.device)
        classes = net.slots[self.output].size
        if not torch.is_tensor(target) or tuple(target.shape) != (*x.shape[:-1], classes) or \
                not target.is_floating_point():
            raise ConfigError(f"{who} needs one-hot targets of shape (batch={x.shape[-2]}, "
                              f"{classes}) as floats, got {tuple(torch.as_tensor(target).shape)} "
                              f"{torch.as_tensor(target).dtype}; encode labels with "
                              "torch.nn.functional.one_hot(labels, classes).float().")
        return x, target.to(net.device, net.dtype)

    def infer(self, x: torch.Tensor) -> Any:
        """The network state after inference on x (a NeuralState; may be a reused buffer)."""
        raise NotImplementedError

    def stack_members(self, members: "list[LearningProtocol]") -> None:
        """Called on an ensemble's protocol (bound to the stacked network) with the members'
        own protocols: take over their state (e.g. fixed random matrices drawn from each
        member's seed) stacked along the member axis. The default accepts protocols that
        keep no state."""
        for i, member in enumerate(members):
            if member.state_dict():
                raise ConfigError(f'protocol "{self.name}" keeps state of its own (member {i}: '
                                  f"{sorted(member.state_dict())}) and does not stack it for "
                                  "an ensemble; override stack_members.")

    def share_members(self, members: "list[LearningProtocol]") -> None:
        """Called on an ensemble's protocol after every epoch: bring the members' own
        protocols up to date with what is not a view of the stacked state (counters). The
        default has nothing to share."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Output activity after inference (batch x n_out, a new tensor)."""
        with torch.inference_mode():
            out = self.net.r_of(self.infer(x), self.output).clone()
        return out.clone() if not torch.is_inference_mode_enabled() else out

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Summed over the batch (float64): 0.5 |r_out - target|^2 by default."""
        return 0.5 * ((prediction - target) ** 2).sum(dtype=torch.float64)

    def state_dict(self) -> dict:
        """What must survive a checkpoint (random feedback matrices, running statistics);
        empty by default."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        """Take back what :meth:`state_dict` returned; the default refuses a non-empty
        state."""
        if state:
            raise ConfigError(f'protocol "{self.name}" has no state but the checkpoint holds '
                              f"{sorted(state)}.")

    def config(self) -> dict:
        """The ``[protocol]`` table that rebuilds this protocol (``type`` and its settings);
        a resumed run must have the same."""
        params = inspect.signature(type(self).__init__).parameters
        return {"type": self.name, **{k: getattr(self, k) for k in params
                                      if k not in ("self", *RESERVED) and hasattr(self, k)}}


def writable(buffers: dict) -> dict:
    """``buffers`` (tensors or NeuralStates, reused across calls) without those made under
    ``torch.inference_mode`` when called outside it: inference tensors cannot be written
    there (e.g. ``protocol.predict(x)`` after ``Trainer.fit``). Inside inference mode, or when
    nothing is stale, ``buffers`` itself."""
    if torch.is_inference_mode_enabled():
        return buffers
    stale = [k for k, b in buffers.items() if getattr(b, "u", b).is_inference()]
    return {k: b for k, b in buffers.items() if k not in stale} if stale else buffers


PROTOCOLS = Registry("protocol", base=LearningProtocol)
REQUIRED = ("train_step", "infer")


def register_protocol(cls):
    """Class decorator: make a protocol available to model files as ``type = cls.name``."""
    return PROTOCOLS.register(cls, name=cls.name)


def build_protocol(spec, where: str = "[protocol]") -> LearningProtocol:
    """A protocol from an instance, a name or a ``[protocol]`` table ``{type = "...", ...}``."""
    if isinstance(spec, LearningProtocol):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f'{where}: give the protocol as a table with a "type", e.g. '
                          f'[protocol] type = "ep"; got {spec!r}.')
    spec = dict(spec)
    kind = spec.pop("type")
    cls = PROTOCOLS.lookup(kind, f"{where} type")
    missing = [m for m in REQUIRED if getattr(cls, m) is getattr(LearningProtocol, m)]
    if missing:
        raise ConfigError(f'{where}: protocol "{kind}" ({cls.__module__}.{cls.__qualname__}) '
                          f"lacks the required method(s) {', '.join(missing)}; a protocol "
                          "implements train_step(x, target, generator, lr_scale, *, epoch, "
                          "step) and infer(x) (docs/protocols.md).")
    for key in spec:
        if key == "net":
            raise ConfigError(f'{where}: "net" is not a protocol setting; the engine binds the '
                              "protocol to the model's network.")
        if key in RESERVED:
            raise ConfigError(f'{where}: "{key}" is not a protocol setting; the input and output '
                              "populations are [training] input / output.")
    return PROTOCOLS.build({"type": kind, **spec}, where)


__all__ = ["LearningProtocol", "StepOutput", "PROTOCOLS", "register_protocol",
           "build_protocol", "writable"]
