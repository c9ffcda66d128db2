"""Backpropagation and feedback alignment: the gradient baselines of a feed-forward chain.

Both protocols train an ordinary neurosim network that is a feed-forward chain
(:func:`~neurosim.protocols.feedforward.layer_chain`; every layer a linear cell with unit
gain, :func:`~neurosim.protocols.feedforward.check_unit_gain`), the graph PEPITA trains, so
that the three share the engine, the data and the network. One training step on a batch of
B rows (x, t):

Forward (one discrete sweep with torch operations on ``net.weights``; the same values as
:meth:`~neurosim.dynamics.CompiledNetwork.feedforward`, which :meth:`Backprop.infer` uses)::

    h_0 = x,    a_l = W_l h_{l-1} + b_l / d_l,    h_l = m_l * sigma_l(a_l)    (l = 1 .. L)

``b_l`` is the population's bias (``net.biases``; d_l = 1 for the usual layers, see
:mod:`.feedforward`), m_l a dropout keep-mask Bernoulli(1 - p_l) / (1 - p_l) drawn from the
run's generator for the hidden layers given a drop probability (``dropout``), m_l = 1 for the
output layer and at evaluation.

Loss, per sample, and the objective J differentiated (batch mean, as torch's defaults)::

    cross_entropy:  l_b = -sum_k t_bk log softmax(a_L)_bk   (needs activation "softmax" at
                                                              the output; computed from
                                                              log_softmax(a_L))
    mse:            l_b = 0.5 |h_L,b - t_b|^2
    J = (1/B) sum_b l_b

Backward (errors delta_l = dJ/da_l, rows of the batch)::

    delta_L     = dJ/da_L          (cross_entropy: (softmax(a_L) - t) / B;
                                    mse: (h_L - t) * sigma_L'(a_L) / B, or the Jacobian
                                    product for a non-element-wise output activation)
    delta_{l-1} = (M_l delta_l) * m_{l-1} * sigma_{l-1}'(a_{l-1})
    grad W_l    = sum_b delta_l,b h_{l-1,b}^T        (= the batch mean of the outer products)
    grad b_l    = sum_b delta_l,b / d_l              (only with ``learn_biases``)

with M_l = W_l^T for backpropagation (torch autograd) and M_l = B_l, a fixed random matrix of
W_l^T's shape (n_{l-1} x n_l), for feedback alignment (Lillicrap et al. 2016; a custom
autograd function whose backward multiplies by B_l instead of W_l^T, so nothing else
changes). Spatial layers (neurosim.graph.projections): a conv2d layer's W_l h is a
convolution, backpropagated by autograd, and under feedback alignment through a fixed random
kernel B_l of the kernel's shape (the transposed convolution with B_l instead of K_l); a
max-pooling layer has no weights and routes the error to each window's maximum in both.

Update (``optimizer``), with the step's learning rate lr_t = ``lr`` x the epoch's
``lr_scale`` ([training] lr_schedule) and g = grad + ``weight_decay`` * W (L2, as torch):

    sgd:   v <- momentum v + g;  W <- W - lr_t v        (torch.optim.SGD; no momentum: W -= lr_t g)
    adam:  m <- beta1 m + (1 - beta1) g;  v <- beta2 v + (1 - beta2) g^2;
           W <- W - lr_t (m / (1 - beta1^k)) / (sqrt(v / (1 - beta2^k)) + eps)   (torch.optim.Adam)

The weight tensors are updated in place (the engine's own tensors; masked synapses stay
absent, projections with ``plastic = false`` stay fixed). The optimiser's state (velocities,
moments, the step count k) and feedback alignment's B_l are the protocol's
:meth:`~Backprop.state_dict`, so a resumed run continues bit for bit.

Plasticity rules: these protocols are the learning rule of every weight, so a network whose
projections or populations carry ``rules`` is refused when the protocol is bound (run a rule
as a protocol of its own instead).

``[protocol]`` keys: ``type = "backprop"`` or ``"feedback_alignment"``; ``loss``
("cross_entropy" or "mse"), ``optimizer`` ("sgd" or "adam"), ``lr``, ``momentum`` (sgd),
``betas``, ``eps`` (adam), ``weight_decay``, ``dropout`` (a drop probability for every
hidden layer or a table population -> probability), ``learn_biases``; feedback alignment
also ``feedback_init`` (an initialiser name, default "he_uniform": B_l drawn like W_l^T) and
``feedback_scale``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ..dynamics import ops
from ..errors import ConfigError, unknown
from ..graph.populations import DynamicPopulation
from ..graph.projections import INITIALISERS
from .base import LearningProtocol, StepOutput, register_protocol
from .feedforward import LOSSES, check_unit_gain, layer_chain

OPTIMIZERS = ("sgd", "adam")
#: added to the run's seed for the generator of feedback alignment's B_l: the run's seed itself
#: draws the forward weights, whose first values B_2 would otherwise repeat
FEEDBACK_SEED_OFFSET = 0xFA_5EED

__all__ = ["Backprop", "FeedbackAlignment", "OPTIMIZERS"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def _check_number(value, key: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float, or a ConfigError naming ``key`` and the range."""
    ok = _number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise ConfigError(f"{key}: must be a finite number{' ' + bounds if bounds else ''}, "
                          f"got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class _Layer:
    """One layer of the chain: W_l (``projection``) from ``source`` into ``population``."""

    projection: str
    source: str
    population: str
    bias_scale: float        # 1 / d_l: how the population's bias enters a_l
    drop: float              # dropout probability of h_l (0: none)
    plastic: bool


class _FeedbackLinear(torch.autograd.Function):
    """a = h W^T forward; backward sends the error through ``feedback`` (B, n_in x n_out)
    instead of W^T: dJ/dh = delta B^T (rows), dJ/dW = delta^T h, as backpropagation's."""

    @staticmethod
    def forward(ctx, h, weight, feedback):
        ctx.save_for_backward(h, feedback)
        return ops.matmul(h, weight.mT)

    @staticmethod
    def backward(ctx, grad):
        h, feedback = ctx.saved_tensors
        grad_h = ops.matmul(grad, feedback.mT) if ctx.needs_input_grad[0] else None
        grad_w = ops.matmul(grad.mT, h) if ctx.needs_input_grad[1] else None
        return grad_h, grad_w, None


class _FeedbackConv(torch.autograd.Function):
    """a = K * h (a conv2d projection) forward; backward sends the error through the fixed
    random kernel ``feedback`` (K's shape) instead of K: dJ/dh = conv2d_input(B, delta),
    dJ/dK = conv2d_weight(h, delta), as backpropagation's with K replaced by B."""

    @staticmethod
    def forward(ctx, h, weight, feedback, projection):
        ctx.save_for_backward(h, feedback)
        ctx.projection, ctx.weight_shape = projection, tuple(weight.shape)
        return projection.drive(h, weight)

    @staticmethod
    def backward(ctx, grad):
        h, feedback = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        q = ctx.projection
        if grad.dim() == 2:
            return (*_feedback_conv_grads(q, h, feedback, grad, ctx.weight_shape, need_h,
                                          need_w), None, None)
        # an ensemble: member by member (M x batch x n errors, M kernels; h stacked, or
        # one input shared by every member, whose gradient is then the members' sum)
        parts = [_feedback_conv_grads(q, h[m] if h.dim() == 3 else h, feedback[m], grad[m],
                                      ctx.weight_shape[1:], need_h, need_w)
                 for m in range(grad.shape[0])]
        grad_h = grad_w = None
        if need_h:
            grad_h = torch.stack([p[0] for p in parts])
            grad_h = grad_h if h.dim() == 3 else grad_h.sum(0)
        if need_w:
            grad_w = torch.stack([p[1] for p in parts])
        return grad_h, grad_w, None, None


def _feedback_conv_grads(q, h, feedback, grad, weight_shape, need_h: bool, need_w: bool):
    """(dJ/dh = conv2d_input(B, delta), dJ/dK = conv2d_weight(h, delta)) of one network
    (each None unless needed)."""
    images = h.reshape(h.shape[0], *q.in_shape)
    grad = grad.reshape(grad.shape[0], *q.out_shape)
    grad_h = torch.nn.grad.conv2d_input(images.shape, feedback, grad, stride=q.stride,
                                        padding=q.padding).flatten(1) if need_h else None
    grad_w = torch.nn.grad.conv2d_weight(images, weight_shape, grad, stride=q.stride,
                                         padding=q.padding) if need_w else None
    return grad_h, grad_w


@register_protocol
class Backprop(LearningProtocol):
    """Backpropagation (torch autograd) on a feed-forward chain, with SGD (momentum) or Adam
    (neurosim.protocols.backprop, where the forward pass, the losses, the backward pass and
    the updates are written out). Keys: ``loss`` ("cross_entropy": softmax output, from
    log_softmax of the output potential; "mse": 0.5 |h_L - t|^2), ``optimizer`` ("sgd",
    "adam"), ``lr``, ``momentum`` (sgd, torch's v <- m v + g; W <- W - lr v), ``betas`` and
    ``eps`` (adam), ``weight_decay`` (L2 added to the gradient), ``dropout`` (drop
    probability of every hidden layer, or a table population -> probability; masks from the
    run's generator, inverted scaling, none at evaluation), ``learn_biases`` (train the
    populations' biases too). Gradients are batch means; the step metric ``loss`` is the
    batch mean of the loss, :meth:`loss` its sum over a batch."""

    name = "backprop"
    ensemble_ready = True
    phases = ()

    def __init__(self, net=None, *, input: str = "x", output: str = "out",
                 loss: str = "cross_entropy", optimizer: str = "sgd", lr: float = 0.01,
                 momentum: float | None = None, betas: Any = None, eps: float | None = None,
                 weight_decay: float = 0.0, dropout: Any = 0.0, learn_biases: bool = False):
        if not isinstance(loss, str) or loss not in LOSSES:
            raise unknown("loss", loss, sorted(LOSSES), "loss")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise unknown("optimizer", optimizer, OPTIMIZERS, "optimizer")
        self.loss_name, self.optimizer = loss, optimizer
        self.lr = _check_number(lr, "lr", low=0.0, low_open=True, high=None)
        self.weight_decay = _check_number(weight_decay, "weight_decay", low=0.0)
        if optimizer == "sgd":
            for key, value in (("betas", betas), ("eps", eps)):
                if value is not None:
                    raise ConfigError(f'{key}: an Adam setting; optimizer "sgd" takes lr, '
                                      'momentum and weight_decay (or set optimizer = "adam").')
            self.momentum = _check_number(0.0 if momentum is None else momentum, "momentum",
                                          low=0.0, high=1.0)
        else:
            if momentum is not None:
                raise ConfigError('momentum: an SGD setting; optimizer "adam" takes lr, betas, '
                                  'eps and weight_decay (its first moment is betas[0]).')
            betas = (0.9, 0.999) if betas is None else betas
            if isinstance(betas, (str, bytes)) or not isinstance(betas, (list, tuple)) or \
                    len(betas) != 2:
                raise ConfigError(f"betas: two numbers [beta1, beta2] in [0, 1), got {betas!r}.")
            self.betas = tuple(_check_number(b, f"betas[{i}]", low=0.0, high=1.0)
                               for i, b in enumerate(betas))
            self.eps = _check_number(1e-8 if eps is None else eps, "eps", low=0.0,
                                     low_open=True)
        self.dropout = self._check_dropout(dropout)
        if not isinstance(learn_biases, bool):
            raise ConfigError(f"learn_biases: true or false, got {learn_biases!r}.")
        self.learn_biases = learn_biases
        self._layers: list[_Layer] = []
        self._state: dict[str, dict[tuple[str, str], torch.Tensor]] = {}
        self._steps = 0
        if net is not None:
            self.bind(net, input=input, output=output)

    @staticmethod
    def _check_dropout(dropout):
        def probability(p, key):
            return _check_number(p, key, low=0.0, high=1.0)
        if isinstance(dropout, Mapping):
            for name in dropout:
                if not isinstance(name, str):
                    raise ConfigError(f"dropout: population names are strings, got {name!r}.")
            return {name: probability(p, f"dropout.{name}") for name, p in sorted(dropout.items())}
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
            raise ConfigError("dropout: a drop probability in [0, 1) for every hidden layer, or a "
                              f"table {{ population = probability }}; got {dropout!r}.")
        return probability(dropout, "dropout")

    def config(self) -> dict:
        """The ``[protocol]`` table of this protocol (only the chosen optimiser's keys)."""
        cfg = {"type": self.name, "loss": self.loss_name, "optimizer": self.optimizer,
               "lr": self.lr, "weight_decay": self.weight_decay}
        if self.optimizer == "sgd":
            cfg["momentum"] = self.momentum
        else:
            cfg.update(betas=list(self.betas), eps=self.eps)
        cfg.update(dropout=self.dropout, learn_biases=self.learn_biases)
        return cfg

    # ------------------------------------------------------------------ binding
    def bind(self, net, *, input: str = "x", output: str = "out", seed: int = 0):
        """Attach to a compiled network (see :meth:`LearningProtocol.bind`); a network with
        plasticity rules is refused: this protocol computes every update itself."""
        who = f'protocol "{self.name}"'
        for q in net.network.projections:
            if q.rules:
                names = ", ".join(f'"{r.name}"' for r in q.rules)
                raise ConfigError(f'{who} is the learning rule of every weight, but projection '
                                  f'"{q.name}" carries plasticity rules ({names}); remove its '
                                  "rules = [...] (a projection that should not learn takes "
                                  "plastic = false).")
        for pop in net.network.dynamic:
            if getattr(pop, "rules", ()):
                names = ", ".join(f'"{r.name}"' for r in pop.rules)
                raise ConfigError(f'{who} is the learning rule of the network, but population '
                                  f'"{pop.name}" carries population rules ({names}); remove '
                                  "them (learn_biases = true trains the biases by gradient).")
        return super().bind(net, input=input, output=output, seed=seed)

    def setup(self) -> None:
        """Find the chain, check it, resolve dropout and allocate the optimiser's state."""
        net, who = self.net, f'protocol "{self.name}"'
        chain = layer_chain(net, self.input, self.output, who)
        check_unit_gain(net, chain, who)
        hidden = [q.target for q in chain[:-1]]
        if isinstance(self.dropout, dict):
            for name in self.dropout:
                if name == self.output:
                    raise ConfigError(f'{who} dropout: "{name}" is the output layer; dropout '
                                      f"applies to the hidden layers ({', '.join(hidden) or 'none'}).")
                if name not in hidden:
                    raise unknown("hidden layer", name, hidden, f"{who} dropout")
            drops = dict(self.dropout)
        else:
            drops = {name: self.dropout for name in hidden}
        self._layers = []
        self._projections = list(chain)
        for q in chain:
            pop = net.network.population(q.target)
            slot = net.slots[q.target]
            if slot.stochastic:
                raise ConfigError(f'{who}: population "{pop.name}" has the stochastic activation '
                                  f'"{pop.activation}"; gradients need a deterministic one.')
            decay = pop.linear_coefficients()[0]
            self._layers.append(_Layer(q.name, q.source, q.target, 1.0 / decay,
                                       float(drops.get(q.target, 0.0)), bool(q.plastic)))
        out = net.network.population(self.output)
        softmax = (out.activation_function.name == "softmax" and
                   type(out).activate is DynamicPopulation.activate)
        if self.loss_name == "cross_entropy" and not softmax:
            raise ConfigError(f'{who}: loss "cross_entropy" is the loss of softmax outputs, but '
                              f'the output population "{self.output}" has activation '
                              f'"{out.activation}"; give it activation = "softmax" or use '
                              'loss = "mse".')
        self._softmax_output = softmax
        self._state = self._zero_state()
        self._steps = 0

    def _parameters(self) -> dict[tuple[str, str], torch.Tensor]:
        """The tensors this protocol trains: ("weights", projection) for plastic projections,
        ("biases", population) with ``learn_biases``; the engine's own tensors."""
        params = {("weights", layer.projection): self.net.weights[layer.projection]
                  for layer in self._layers if layer.plastic}
        if self.learn_biases:
            params.update({("biases", layer.population): self.net.biases[layer.population]
                           for layer in self._layers})
        return params

    def _buffer_names(self) -> tuple[str, ...]:
        if self.optimizer == "adam":
            return ("exp_avg", "exp_avg_sq")
        return ("velocity",) if self.momentum > 0 else ()

    def _zero_state(self) -> dict:
        return {buffer: {key: torch.zeros_like(p) for key, p in self._parameters().items()}
                for buffer in self._buffer_names()}

    # ------------------------------------------------------------------ passes
    def _linear(self, index: int, h: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """a = h W^T for layer ``index`` (0-based), or the layer's spatial operator (a
        convolution, a max-pooling); backpropagation differentiates it by autograd."""
        projection = self._projections[index]
        return projection.drive(h, weight) if not projection.is_dense else \
            ops.matmul(h, weight.mT)

    def forward(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor] | None = None,
                biases: Mapping[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None,
                masks: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_L, h_L): the chain evaluated with torch operations (differentiable), on
        ``weights`` / ``biases`` (default: the network's). With a ``generator``, hidden layers
        with a drop probability get a dropout mask drawn from it (as
        :meth:`~neurosim.dynamics.CompiledNetwork.feedforward` draws them); ``masks`` (a dict)
        receives the masks used; without a generator there is no dropout."""
        net = self.net
        weights = net.weights if weights is None else weights
        biases = net.biases if biases is None else biases
        h = a = x
        for i, layer in enumerate(self._layers):
            a = self._linear(i, h, weights.get(layer.projection))
            bias = biases[layer.population].unsqueeze(-2)      # 1 x n (or M x 1 x n)
            a = a + (bias if layer.bias_scale == 1.0 else bias * layer.bias_scale)
            h = net.slots[layer.population].activate(a)
            if generator is not None and layer.drop > 0:
                mask = net._dropout_mask(layer.population, layer.drop, h.shape, generator)
                h = h * mask
                if masks is not None:
                    masks[layer.population] = mask
        return a, h

    def objective(self, a_out: torch.Tensor, h_out: torch.Tensor,
                  target: torch.Tensor) -> torch.Tensor:
        """The per-sample loss l_b (a vector over the batch): -sum_k t_k log softmax(a_L)_k
        (cross_entropy) or 0.5 |h_L - t|^2 (mse)."""
        if self.loss_name == "cross_entropy":
            return -(target * torch.log_softmax(a_out, dim=-1)).sum(dim=-1)
        return 0.5 * ((h_out - target) ** 2).sum(dim=-1)

    def gradients(self, x: torch.Tensor, target: torch.Tensor,
                  generator: torch.Generator | None = None
                  ) -> tuple[dict[tuple[str, str], torch.Tensor], torch.Tensor, torch.Tensor]:
        """(gradients of J = batch-mean loss keyed like the trained tensors, J, h_L) for one
        batch, the weights unchanged. Works inside or outside ``torch.inference_mode`` (the
        graph is built outside it on detached views of the weights)."""
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if x.is_inference() else x
            target = target.clone() if target.is_inference() else target
            trained = self._parameters()
            leaves = {key: (p.clone() if p.is_inference() else p.detach()).requires_grad_()
                      for key, p in trained.items()}
            weights = {name: leaves.get(("weights", name), w)
                       for name, w in self.net.weights.items()}
            biases = {name: leaves.get(("biases", name), b)
                      for name, b in self.net.biases.items()}
            a_out, h_out = self.forward(x, weights, biases, generator)
            mean = self.objective(a_out, h_out, target).mean(dim=-1)   # one per member
            if leaves:       # members' losses summed: each member's gradient is its own
                grads = torch.autograd.grad(mean.sum(), list(leaves.values()))
            else:
                grads = ()
        return dict(zip(leaves, grads)), mean.detach(), h_out.detach()

    # ------------------------------------------------------------------ updates
    @torch.no_grad()
    def apply_gradients(self, grads: Mapping[tuple[str, str], torch.Tensor],
                        lr_scale: float = 1.0) -> None:
        """One optimiser step (module docstring) on the network's tensors, in place."""
        self._steps += 1
        lr = self.lr * float(lr_scale)
        trained = self._parameters()
        for key, grad in grads.items():
            param = trained[key]
            kind, name = key
            if kind == "weights" and name in self.net.masks:
                grad = grad * self.net.masks[name]
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.optimizer == "sgd":
                if self.momentum > 0:
                    grad = self._state["velocity"][key].mul_(self.momentum).add_(grad)
                param.add_(grad, alpha=-lr)
                continue
            beta1, beta2 = self.betas
            exp_avg, exp_avg_sq = self._state["exp_avg"][key], self._state["exp_avg_sq"][key]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            correction1 = 1 - beta1 ** self._steps
            correction2_sqrt = (1 - beta2 ** self._steps) ** 0.5
            denom = (exp_avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
            param.addcdiv_(exp_avg, denom, value=-lr / correction1)

    def train_step(self, x: torch.Tensor, target: torch.Tensor, generator: torch.Generator,
                   lr_scale: float = 1.0, *, epoch: int = 0, step: int = 0) -> StepOutput:
        """Forward (with dropout from ``generator``), backward, one optimiser step; returns
        the output probabilities h_L of this pass and the metric ``loss`` (batch mean)."""
        if target is None:
            raise ConfigError(f'protocol "{self.name}" is supervised: train_step needs targets.')
        grads, mean, prediction = self.gradients(x, target, generator)
        self.apply_gradients(grads, lr_scale)
        return StepOutput(prediction, {"loss": mean.to(torch.float64)})

    def infer(self, x: torch.Tensor):
        """The network's state after one feed-forward sweep on x (no dropout)."""
        state, _ = self.net.feedforward({self.input: x})
        return state

    def stack_members(self, members) -> None:
        """The members' optimiser buffers (and feedback-alignment matrices) stacked, the
        members' own becoming views; the step count is shared (:meth:`share_members`)."""
        for buffer, tensors in self._state.items():
            for key in tensors:
                stacked = torch.stack([m._state[buffer][key] for m in members])
                tensors[key] = stacked
                for k, member in enumerate(members):
                    member._state[buffer][key] = stacked[k]
        self._steps = members[0]._steps
        feedback = getattr(self, "feedback", None)
        for name in feedback or {}:
            stacked = torch.stack([m.feedback[name] for m in members])
            feedback[name] = stacked
            for k, member in enumerate(members):
                member.feedback[name] = stacked[k]

    def share_members(self, members) -> None:
        """The step count (the optimiser's bias corrections) for every member."""
        for member in members:
            member._steps = self._steps

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The chosen loss summed over the batch (float64): cross-entropy of the output
        probabilities, or 0.5 |h_L - t|^2."""
        return LOSSES[self.loss_name](prediction, target)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The optimiser's buffers (``optimizer/<buffer>/<weights|biases>/<name>``) and its
        step count (``optimizer/step``)."""
        optimizer: dict[str, Any] = {"step": torch.tensor(self._steps, dtype=torch.int64)}
        for buffer, tensors in self._state.items():
            grouped: dict[str, dict] = {}
            for (kind, name), value in tensors.items():
                grouped.setdefault(kind, {})[name] = value
            if grouped:
                optimizer[buffer] = grouped
        return {"optimizer": optimizer}

    def load_state_dict(self, state: Mapping) -> None:
        """Take back :meth:`state_dict`'s output (checked: the same buffers and shapes)."""
        state = dict(state)
        where = f'protocol "{self.name}" checkpoint state'
        optimizer = dict(state.pop("optimizer", None) or {})
        extra = sorted(set(state) - self._extra_state_keys())
        if extra:
            raise ConfigError(f"{where} holds {extra}, which this protocol does not keep.")
        if "step" not in optimizer:
            raise ConfigError(f"{where} lacks the optimiser's step count.")
        steps = int(torch.as_tensor(optimizer.pop("step")))
        expected = self._zero_state()
        if set(optimizer) != {b for b, t in expected.items() if t}:
            raise ConfigError(f"{where} holds the optimiser buffers {sorted(optimizer)}, this "
                              f"protocol keeps {sorted(b for b, t in expected.items() if t)}.")
        loaded = {}
        for buffer, zeros in expected.items():
            given = {(kind, name): value for kind, group in dict(optimizer.get(buffer, {})).items()
                     for name, value in dict(group).items()}
            loaded[buffer] = self._match(given, zeros, f"{where} optimizer/{buffer}")
        self._load_extra_state(state, where)
        self._state, self._steps = loaded, steps

    def _match(self, given: Mapping, like: Mapping, where: str) -> dict:
        """``given`` tensors as copies in the network's dtype and device, checked against the
        keys and shapes of ``like``."""
        if set(given) != set(like):
            raise ConfigError(f"{where}: holds {sorted(given)}, expected {sorted(like)}.")
        out = {}
        for key, ref in like.items():
            value = torch.as_tensor(given[key])
            if tuple(value.shape) != tuple(ref.shape):
                raise ConfigError(f"{where} {key}: shape {tuple(value.shape)}, expected "
                                  f"{tuple(ref.shape)}.")
            out[key] = value.to(device=ref.device, dtype=ref.dtype, copy=True)
        return out

    def _extra_state_keys(self) -> set:
        return set()

    def _load_extra_state(self, state: Mapping, where: str) -> None:
        """Subclasses: check and take their own entries of a checkpoint state."""


@register_protocol
class FeedbackAlignment(Backprop):
    """Feedback alignment (Lillicrap et al. 2016): :class:`Backprop` with the error sent
    backward through fixed random matrices B_l (n_{l-1} x n_l, the shape of W_l^T) for
    l >= 2, delta_{l-1} = (B_l delta_l) * m_{l-1} * sigma'(a_{l-1}), grad W_l = delta_l
    h_{l-1}^T (batch mean); every other key is Backprop's. B_l is drawn once when the
    protocol is bound, like W_l^T (``feedback_init``, an initialiser name, default
    "he_uniform" U(+-sqrt(6 / n_{l-1})), times ``feedback_scale``), from a generator seeded
    with the run's seed + FEEDBACK_SEED_OFFSET; it is never trained and is checkpointed
    (``feedback/<projection>``). :attr:`feedback` maps each projection W_l (l >= 2) to its
    B_l."""

    name = "feedback_alignment"

    def __init__(self, net=None, *, input: str = "x", output: str = "out",
                 loss: str = "cross_entropy", optimizer: str = "sgd", lr: float = 0.01,
                 momentum: float | None = None, betas: Any = None, eps: float | None = None,
                 weight_decay: float = 0.0, dropout: Any = 0.0, learn_biases: bool = False,
                 feedback_init: str = "he_uniform", feedback_scale: float = 1.0):
        if not isinstance(feedback_init, str):
            raise ConfigError("feedback_init: an initialiser name such as \"he_uniform\", got "
                              f"{feedback_init!r}.")
        if feedback_init in ("identity", "gram_xavier", "eye"):
            raise ConfigError(f'feedback_init: "{feedback_init}" does not draw a random matrix '
                              "of W^T's shape; use he_uniform, xavier_uniform, kaiming_normal, "
                              "fan_in_uniform, uniform or normal.")
        valid = sorted(k for k in INITIALISERS if k not in ("identity", "gram_xavier", "eye"))
        if ":" not in feedback_init and feedback_init not in INITIALISERS:
            raise unknown("initialiser", feedback_init, valid, "feedback_init")
        self._initialiser = INITIALISERS.lookup(feedback_init, "feedback_init")
        self.feedback_init = feedback_init
        self.feedback_scale = _check_number(feedback_scale, "feedback_scale")
        self.feedback: dict[str, torch.Tensor] = {}
        super().__init__(net, input=input, output=output, loss=loss, optimizer=optimizer, lr=lr,
                         momentum=momentum, betas=betas, eps=eps, weight_decay=weight_decay,
                         dropout=dropout, learn_biases=learn_biases)

    def config(self) -> dict:
        """Backprop's table plus ``feedback_init`` and ``feedback_scale``."""
        return {**super().config(), "feedback_init": self.feedback_init,
                "feedback_scale": self.feedback_scale}

    def setup(self) -> None:
        """Backprop's setup, then draw B_2 .. B_L (in layer order)."""
        super().setup()
        net = self.net
        generator = torch.Generator().manual_seed(self.seed + FEEDBACK_SEED_OFFSET)
        self.feedback = {}
        for q, layer in zip(self._projections[1:], self._layers[1:]):
            if not q.has_weight:
                continue                        # pooling: routed back by autograd, no weights
            n_out, n_in = net.slots[layer.population].size, net.slots[layer.source].size
            shape = q.weight_shape(n_out, n_in)
            rows, cols = shape[0], math.prod(shape[1:])
            drawn = self._initialiser(rows, cols, generator, torch.float64, self.feedback_scale)
            drawn = torch.as_tensor(drawn)
            if tuple(drawn.shape) != (rows, cols):
                raise ConfigError(f'protocol "{self.name}" feedback_init "{self.feedback_init}": '
                                  f"returned shape {tuple(drawn.shape)} for W "
                                  f'"{layer.projection}" ({rows} x {cols}).')
            drawn = drawn.T.contiguous() if q.is_dense else drawn.reshape(shape)
            self.feedback[layer.projection] = drawn.to(net.device, net.dtype)

    def _linear(self, index: int, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """a = h W^T; for layers 2 .. L the backward pass uses B_l instead of W_l^T."""
        projection = self._projections[index]
        if index == 0 or weight is None:
            return super()._linear(index, h, weight)
        feedback = self.feedback[projection.name]
        if not projection.is_dense:
            return _FeedbackConv.apply(h, weight, feedback, projection)
        return _FeedbackLinear.apply(h, weight, feedback)

    def state_dict(self) -> dict:
        """Backprop's state plus ``feedback/<projection>``: B_l."""
        state = super().state_dict()
        if self.feedback:
            state["feedback"] = dict(self.feedback)
        return state

    def _extra_state_keys(self) -> set:
        return {"feedback"}

    def _load_extra_state(self, state: Mapping, where: str) -> None:
        given = dict(state.get("feedback", {}) or {})
        self.feedback = self._match(given, self.feedback, f"{where} feedback")
