"""PEPITA: error-driven input modulation, two forward passes and no backward pass
(Dellaferrera & Kreiman, ICML 2022; options of Srinivasan et al., ICLR 2024).

On a feed-forward chain x = h_0 -> h_1 -> ... -> h_L (neurosim.protocols.feedforward; hidden
layers e.g. relu, the output softmax) with a random matrix F (d x C, d inputs, C classes), one
training step on a batch (x, t) of B rows:

1. standard pass on x with dropout masks m_l on the hidden layers:  h_l, e = h_L - t
2. modulated input                   x_mod = x + s F e       (s = ``sign``, +1 or -1)
3. modulated pass on x_mod with the SAME masks:  h_l^mod
4. the rules (the ``pepita`` rule on every projection, neurosim.plasticity.pepita) update
   the weights from the record of phases "standard" and "modulated" and the signals

       error            e_out = h_L^mod - t  (``output_error = "modulated"``, the official FC
                        code) or e (``"standard"``: the conv and follow-up code)
       output           the output population's name (its projection uses e_out)
       target, modulated_input, feedback (F)

F = ``F_scale`` U(-sqrt(6/d), +sqrt(6/d)) elementwise, drawn once from the run's seed (its own
stream, apart from the weights'), never trained, and checkpointed. Inference is one standard
pass without dropout. The loss is the cross-entropy of the output probabilities
(``loss = "mse"``: 0.5 |h_L - t|^2).

Follow-up option ``normalize = true``: every hidden layer's activity (after the nonlinearity,
before dropout) is divided by its Frobenius norm over the batch, h_l <- h_l / |h_l|_F, in both
passes and at inference.

Follow-up option ``feedback = "mirror"``: F learnt by weight mirroring
---------------------------------------------------------------------
(Srinivasan et al. 2024 after Akrout et al. 2019; the reference code is ravifrancesco/PEPITA,
``FCNet.mirror_weights``, ``RandomFeedback`` and ``PEPITATrainer.training_step``.) F is the
product of one feedback matrix per layer, B_l of W_l^T's shape (n_{l-1} x n_l):

    F = B_1 B_2 ... B_L                                         (d x C, multiplied left to right)
    B_l(0) ~ N(0, s_B^2) elementwise,  s_B = (sigma_F / sqrt(n_1 n_2 ... n_{L-1}))^(1/L)
    sigma_F = F_scale sqrt(2/d)                                  (so that std(F) ~ sigma_F)

drawn B_1 first from the protocol's own seeded stream (the one the fixed F comes from). In a
mirroring epoch, after the step's weight update, each layer l = 1 .. L in turn gets

    xi_l = sigma_n N(0, 1)   (B x n_{l-1}, from the run's generator),  xi_l <- xi_l - mean(xi_l)
    y_l  = m_l * T_l(phi_l(xi_l W_l^T + b_l))       the layer itself: its nonlinearity phi_l
                                                    (relu, the output's softmax), T_l the
                                                    normalisation when ``normalize``, m_l a
                                                    fresh dropout mask (hidden layers)
    B_l <- B_l + eta_B (xi_l^T y_l / B - lambda_B B_l)

(mean(xi) is the scalar mean over all B n_{l-1} entries; eta_B = ``mirror_lr``, lambda_B =
``mirror_weight_decay``, sigma_n = ``mirror_noise``; plain SGD with weight decay, no
momentum, not scaled by the learning-rate schedule). Since E[xi phi(W xi)^T] ~ W^T for small
zero-mean noise, B_l turns towards W_l^T and F towards (W_L ... W_1)^T. Then
(``mirror_normalize``, default on) the product is rescaled to keep its spread:

    c = (sigma_F / std(F))^(1/L),   B_l <- c B_l for every l,   F = B_1 ... B_L

(std: the unbiased standard deviation of F's entries). Mirroring epochs: the first
``mirror_pre`` epochs (pre-mirroring: the forward weights do not learn then, only B_l) and
every epoch e (0-based) with (e + 1) % ``mirror_every`` == 0 (0: none after the pre-mirroring);
one mirroring step per batch, of the batch's size. With a mirrored F use ``sign = -1``
(x_mod = x - F e, as the follow-up code does): for a linear network h_1 - h_1^mod = -s W_1 F e,
so dW_1 = s lr W_1 F e x^T, and with F ~ (W_2 W_1)^T only s = -1 points the hidden updates
down the gradient (with s = +1 only the readout's delta rule learns).
The B_l are checkpointed with F. Defaults are the reference code's config
(pepita/core/config.py): eta_B = 0.01, lambda_B = 1e-4, sigma_n = 0.1 (mirror_weights'
default), 2 pre-mirroring epochs, every 100th epoch. Points where the reference code is easy
to misread (the paper's text was not at hand to compare; these are the code's own
inconsistencies, and the code's behaviour is what is done here): its command-line script
(scripts/train.py) overrides the config with eta_B = 0.1, lambda_B = 0.5, no pre-mirroring and
every 200th epoch (so no mirroring at all in a 100-epoch run unless asked); its trainer calls
``mirror_weights`` twice per batch, before and after the weight update, but the first call's
update of B is overwritten before B's optimiser steps (it only consumes random numbers), so
one step per batch counts, on the updated weights; the noise goes through the whole layer
block, dropout and normalisation included; B_l is updated by B's own SGD (ascent on
xi^T y, the code's ``grad = -update``) and F is rescaled after every mirroring step.

Follow-up option ``time_local = true``: no first-pass activity is stored
----------------------------------------------------------------------
The reference code's ``output_mode = "mixed_tl"`` (``FCNet.forward`` with ``first=True`` and
``FCNet.modulated_forward``; the trainer steps the weights' optimiser after each pass). The
Hebbian form of PEPITA, dW_l ~ -(h_l h_{l-1}^T - h_l^mod (h_{l-1}^mod)^T), is applied one term
per pass, each right after its own pass, so the modulated pass already runs on the weights the
first term changed, and nothing of the standard pass is kept but its output error e:

    after the standard pass:   G_l = h_l h_{l-1}^T / B        (hidden and output layers;
                                                               h_L = the output y)
    after the modulated pass:  G_l = -h_l^mod (h_{l-1}^mod)^T / B       (hidden layers)
                               G_L = -t (h_{L-1}^mod)^T / B             (output layer)

with h_0 = x, h_0^mod = x_mod = x + s F e, e = y - t from the standard pass (before the first
update). Each G goes through the ``pepita`` rule's own update (dW = -lr lr_scale (G +
weight_decay W), its momentum v <- momentum v + dW, W <- W + v), i.e. the rule runs twice per
batch, as the reference code steps its SGD twice: momentum and weight decay act at both
steps. ``output_error`` plays no part (the output layer is y h_{L-1}^T - t (h_{L-1}^mod)^T
split over the passes). The modulated pass draws fresh dropout masks, as the reference code
does (it resets its dropout masks after the first pass in this mode; ``time_local_masks =
"shared"`` reuses the standard pass's masks instead). The rules must be ``pepita`` rules with
``hebbian = true``: the protocol runs them on records built so that the rule's Hebbian form
computes exactly one term (after the standard pass, phase "modulated" is zero except the
output layer's input, which holds h_{L-1}, and the signal "error" is y; after the modulated
pass, phase "standard" is zero and "error" is -t), so the rule itself is unchanged.
In pre-mirroring epochs (with ``feedback = "mirror"``) neither half-step runs; the reference
code still applies the first one there (its forward pass sets the gradient itself), which is
taken for a slip. Its one-step Hebbian mode ``"mixed"`` (the output layer y h_{L-1}^T -
t (h_{L-1}^mod)^T) is overwritten by the plain rule through an if/else slip, so it trains
plain PEPITA; neurosim's ``hebbian = true`` keeps e_out (h_{L-1}^mod)^T for the output layer.

``[protocol]`` keys: ``type = "pepita"``, sign, output_error, dropout (drop probability of the
hidden layers, or a table population -> probability), F_scale, loss, normalize; feedback
("fixed" or "mirror") with mirror_lr, mirror_weight_decay, mirror_noise, mirror_pre,
mirror_every, mirror_normalize (only with feedback = "mirror"); time_local with
time_local_masks (only with time_local = true).
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..dynamics import NeuralState, ops
from ..errors import ConfigError
from ..plasticity import PepitaRule, PhaseRecord
from .base import LearningProtocol, StepOutput, register_protocol
from .feedforward import LOSSES, check_unit_gain, layer_chain

__all__ = ["Pepita", "FEEDBACKS", "MIRROR_DEFAULTS"]

F_SEED_OFFSET = 0xF_5EED          # F's generator (and the B_l's): the run's seed + this
FEEDBACKS = ("fixed", "mirror")
#: the reference code's defaults (pepita/core/config.py; mirror_weights' noise amplitude)
MIRROR_DEFAULTS = {"mirror_lr": 0.01, "mirror_weight_decay": 1e-4, "mirror_noise": 0.1,
                   "mirror_pre": 2, "mirror_every": 100, "mirror_normalize": True}
TIME_LOCAL_MASKS = ("fresh", "shared")


def _member(member: int | None):
    """A tensor's part of one ensemble member (``member``), or the tensor itself (None)."""
    if member is None:
        return lambda t: t
    return lambda t: t[member]


def _unit_frobenius(h: torch.Tensor) -> torch.Tensor:
    """h / |h|_F over the whole batch (h unchanged when it is all zero)."""
    norm = torch.linalg.matrix_norm(h)
    if h.dim() > 2:                                  # an ensemble: each member's own norm
        return h / torch.where(norm > 0, norm, 1.0)[..., None, None]
    return h / norm if float(norm) > 0 else h


def _check_mirror_setting(key: str, value):
    """A weight-mirroring setting checked (module docstring), or a ConfigError naming it."""
    if key == "mirror_normalize":
        if not isinstance(value, bool):
            raise ConfigError(f"mirror_normalize: true or false, got {value!r}.")
        return value
    if key in ("mirror_pre", "mirror_every"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            what = ("a number of epochs" if key == "mirror_pre" else
                    "the period in epochs (0: none after the pre-mirroring)")
            raise ConfigError(f"{key}: {what}, an integer >= 0, got {value!r}.")
        return int(value)
    positive = key in ("mirror_lr", "mirror_noise")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ConfigError(f"{key}: a finite number {'> 0' if positive else '>= 0'}, got "
                          f"{value!r}.")
    return float(value)


@register_protocol
class Pepita(LearningProtocol):
    """PEPITA's two forward passes (neurosim.protocols.pepita): standard pass, input
    modulated by the projected error x_mod = x + s F e, modulated pass with the same dropout
    masks, then the rules over phases "standard" and "modulated". Options of the follow-up:
    ``feedback = "mirror"`` (F = B_1 ... B_L trained by weight mirroring) and ``time_local``
    (the rule's Hebbian terms applied one per pass)."""

    name = "pepita"
    phases = ("standard", "modulated")
    ensemble_ready = True

    def __init__(self, net=None, *, input: str = "x", output: str = "out", sign: int = 1,
                 output_error: str = "modulated", dropout: float | Mapping = 0.0,
                 F_scale: float = 0.05, loss: str = "cross_entropy", normalize: bool = False,
                 feedback: str = "fixed", mirror_lr: float | None = None,
                 mirror_weight_decay: float | None = None, mirror_noise: float | None = None,
                 mirror_pre: int | None = None, mirror_every: int | None = None,
                 mirror_normalize: bool | None = None, time_local: bool = False,
                 time_local_masks: str | None = None):
        if sign not in (1, -1) or isinstance(sign, bool):
            raise ConfigError(f"sign: 1 (x_mod = x + F e, the paper) or -1 (x - F e, the "
                              f"follow-up code), got {sign!r}.")
        if output_error not in ("modulated", "standard"):
            raise ConfigError(f'output_error: "modulated" (e_out = h_L^mod - t, the official FC '
                              f'code) or "standard" (the first pass\'s error), got {output_error!r}.')
        if isinstance(F_scale, bool) or not isinstance(F_scale, (int, float)) or \
                not math.isfinite(F_scale) or F_scale < 0:
            raise ConfigError(f"F_scale: a finite number >= 0, got {F_scale!r}.")
        if loss not in LOSSES:
            raise ConfigError(f"loss: one of {', '.join(LOSSES)}, got {loss!r}.")
        if isinstance(dropout, Mapping):
            dropout = dict(dropout)
            probabilities = dropout.values()
        else:
            probabilities = [dropout]
        for p in probabilities:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ConfigError(f"dropout: a drop probability in [0, 1) (or a table "
                                  f"population -> probability), got {p!r}.")
        self.sign, self.output_error, self.dropout = int(sign), output_error, dropout
        if not isinstance(normalize, bool):
            raise ConfigError(f"normalize: true or false, got {normalize!r}.")
        self.F_scale, self.loss_name, self.normalize = float(F_scale), loss, normalize
        if not isinstance(feedback, str) or feedback not in FEEDBACKS:
            raise ConfigError(f'feedback: "fixed" (F drawn once, never trained) or "mirror" (F = '
                              f"B_1 ... B_L trained by weight mirroring), got {feedback!r}.")
        self.feedback = feedback
        given = {"mirror_lr": mirror_lr, "mirror_weight_decay": mirror_weight_decay,
                 "mirror_noise": mirror_noise, "mirror_pre": mirror_pre,
                 "mirror_every": mirror_every, "mirror_normalize": mirror_normalize}
        for key, value in given.items():
            if value is not None and feedback != "mirror":
                raise ConfigError(f'{key}: a weight-mirroring setting, used only with feedback = '
                                  f'"mirror" (this protocol has feedback = "{feedback}").')
            setattr(self, key, _check_mirror_setting(
                key, MIRROR_DEFAULTS[key] if value is None else value))
        if feedback == "mirror" and self.F_scale == 0:
            raise ConfigError('F_scale: feedback = "mirror" keeps std(F) at F_scale sqrt(2/d); '
                              "give it a number > 0.")
        if not isinstance(time_local, bool):
            raise ConfigError(f"time_local: true or false, got {time_local!r}.")
        if time_local_masks is not None and not time_local:
            raise ConfigError("time_local_masks: a setting of the time-local variant, used only "
                              "with time_local = true.")
        masks = "fresh" if time_local_masks is None else time_local_masks
        if not isinstance(masks, str) or masks not in TIME_LOCAL_MASKS:
            raise ConfigError(f'time_local_masks: "fresh" (new dropout masks for the modulated '
                              f'pass, the reference code) or "shared" (the standard pass\'s), '
                              f"got {time_local_masks!r}.")
        self.time_local, self.time_local_masks = time_local, masks
        self.F: torch.Tensor | None = None
        self.B: list[torch.Tensor] = []
        if net is not None:
            self.bind(net, input=input, output=output)

    def config(self) -> dict:
        """The ``[protocol]`` table of this protocol (the mirroring and time-local keys only
        when those options are on)."""
        cfg = {"type": self.name, "sign": self.sign, "output_error": self.output_error,
               "dropout": self.dropout, "F_scale": self.F_scale, "loss": self.loss_name,
               "normalize": self.normalize}
        if self.feedback != "fixed":
            cfg["feedback"] = self.feedback
            cfg.update({key: getattr(self, key) for key in MIRROR_DEFAULTS})
        if self.time_local:
            cfg.update(time_local=True, time_local_masks=self.time_local_masks)
        return cfg

    def setup(self) -> None:
        """Find the chain, check its layers (and rules, for the time-local variant), draw F
        (or the B_l) from the run's seed."""
        who = 'protocol "pepita"'
        net = self.net
        self.chain = layer_chain(net, self.input, self.output, who)
        check_unit_gain(net, self.chain, who)
        hidden = [q.target for q in self.chain[:-1]]
        if isinstance(self.dropout, dict):
            for name in self.dropout:
                if name not in hidden:
                    from ..errors import unknown
                    raise unknown("hidden population", name, hidden, f"{who} dropout")
            self.drop = {name: float(p) for name, p in self.dropout.items() if p > 0}
        else:
            self.drop = {name: float(self.dropout) for name in hidden} if self.dropout else {}
        self.transform = {name: _unit_frobenius for name in hidden} if self.normalize else {}
        if self.time_local:
            for key, _, rule in self.rules.entries:
                if not isinstance(rule, PepitaRule) or not rule.hebbian:
                    what = "has hebbian = false" if isinstance(rule, PepitaRule) else \
                        'is not a "pepita" rule'
                    raise ConfigError(f'{who} with time_local = true applies the Hebbian terms of '
                                      f'the "pepita" rule one per pass; rule "{rule.name}" on '
                                      f'{key.split(".")[0]} {what} (give every projection the '
                                      'rule { type = "pepita", hebbian = true, ... }).')
        d = net.slots[self.input].size
        classes = net.slots[self.output].size
        # a stream of its own: the run's seed also draws the forward weights, and F drawn from
        # the same stream would repeat W_1's first values
        generator = torch.Generator().manual_seed(self.seed + F_SEED_OFFSET)
        if self.feedback == "mirror":
            self._setup_mirror(generator, who)
            return
        bound = math.sqrt(6.0 / d)
        uniform = torch.rand(d, classes, generator=generator, dtype=torch.float64)
        self.F = (self.F_scale * bound * (2.0 * uniform - 1.0)).to(net.device, net.dtype)

    def _setup_mirror(self, generator: torch.Generator, who: str) -> None:
        """B_l ~ N(0, s_B^2) (module docstring), B_1 first; F = B_1 ... B_L."""
        net = self.net
        for q in self.chain:
            if not q.is_dense or q.name not in net.weights:
                raise ConfigError(f'{who}: feedback = "mirror" mirrors dense weight matrices; '
                                  f'projection "{q.name}" is a {q.kind} projection.')
        sizes = [net.slots[self.input].size] + [net.slots[q.target].size for q in self.chain]
        depth = len(self.chain)
        std = (self.sigma_F / math.sqrt(math.prod(sizes[1:-1]))) ** (1.0 / depth)
        self.B = [(std * torch.randn(n_in, n_out, generator=generator, dtype=torch.float64))
                  .to(net.device, net.dtype) for n_in, n_out in zip(sizes, sizes[1:])]
        self.F = torch.empty(sizes[0], sizes[-1], device=net.device, dtype=net.dtype)
        self._product()

    @property
    def sigma_F(self) -> float:
        """The spread F is drawn with (and mirroring keeps): F_scale sqrt(2/d)."""
        return self.F_scale * math.sqrt(2.0 / self.net.slots[self.input].size)

    def _product(self, member: int | None = None) -> None:
        """F <- B_1 B_2 ... B_L (in place: F stays the same tensor), of one ensemble member
        (``member``) or of every one."""
        pick = _member(member)
        product = pick(self.B[0])
        for b in self.B[1:]:
            product = product @ pick(b)
        pick(self.F).copy_(product)

    def infer(self, x: torch.Tensor):
        """One standard pass on x without dropout (a new NeuralState)."""
        state, _ = self.net.feedforward({self.input: x}, transform=self.transform)
        return state

    def modulate(self, x: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        """x_mod = x + s F e (rows are samples: x + s e F^T)."""
        return ops.addmm(x, error, self.F.mT, alpha=float(self.sign))

    def stack_members(self, members) -> None:
        """Each member's F (drawn from its own seed) and, when mirroring, its B_l, stacked;
        the members' own become views."""
        stacked = torch.stack([m.F for m in members])
        self.F = stacked
        for k, member in enumerate(members):
            member.F = stacked[k]
        if self.feedback == "mirror":
            for index in range(len(self.B)):
                stacked = torch.stack([m.B[index] for m in members])
                self.B[index] = stacked
                for k, member in enumerate(members):
                    member.B[index] = stacked[k]

    def mirrors(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is a weight-mirroring epoch (module docstring)."""
        if self.feedback != "mirror":
            return False
        return epoch < self.mirror_pre or \
            (self.mirror_every > 0 and (epoch + 1) % self.mirror_every == 0)

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """Standard pass, modulated input, modulated pass with the same masks, rules (one
        term per pass with ``time_local``); then, in a mirroring epoch, one weight-mirroring
        step of the B_l (in the pre-mirroring epochs only that)."""
        net = self.net
        x, target = self.supervised_batch(x, target, "PEPITA")
        standard, masks = net.feedforward({self.input: x}, dropout=self.drop,
                                          generator=generator, transform=self.transform)
        out = net.r_of(standard, self.output)
        metrics: dict = {}
        if not (self.feedback == "mirror" and epoch < self.mirror_pre):
            error = out - target
            x_mod = self.modulate(x, error)
            common = dict(lr_scale=lr_scale, epoch=epoch, step=step)
            if self.time_local:
                metrics = self._time_local(standard, masks, out, target, x_mod, generator,
                                           common)
            else:
                modulated, _ = net.feedforward({self.input: x_mod}, masks=masks,
                                               transform=self.transform)
                if self.output_error == "modulated":
                    error = net.r_of(modulated, self.output) - target
                record = PhaseRecord(net, {"standard": standard, "modulated": modulated},
                                     signals={"error": error, "output": self.output,
                                              "target": target, "modulated_input": x_mod,
                                              "feedback": self.F})
                metrics = self.rules.apply(record, **common)
        if self.mirrors(epoch):
            self.mirror(x.shape[-2], generator)
        return StepOutput(out, metrics)

    def _time_local(self, standard, masks, out, target, x_mod, generator, common) -> dict:
        """The two half-updates of the time-local variant (module docstring), each through
        the rules on a record where the other term of the Hebbian form is zero."""
        net = self.net

        def zero_state() -> NeuralState:
            return NeuralState(torch.zeros_like(standard.u), torch.zeros_like(standard.r), net)

        # after the standard pass: "modulated" is zero but for the output layer's input
        # (h_{L-1}), so hidden layers get h_l h_{l-1}^T and the output y h_{L-1}^T
        last = self.chain[-1].source
        only_last = zero_state()
        net.r_of(only_last, last).copy_(net.r_of(standard, last))
        first = PhaseRecord(net, {"standard": standard, "modulated": only_last},
                            signals={"error": out, "output": self.output, "target": target,
                                     "feedback": self.F})
        reported = dict(self.rules.apply(first, **common))
        if self.time_local_masks == "shared":
            modulated, _ = net.feedforward({self.input: x_mod}, masks=masks,
                                           transform=self.transform)
        else:
            modulated, _ = net.feedforward({self.input: x_mod}, dropout=self.drop,
                                           generator=generator, transform=self.transform)
        # after the modulated pass: "standard" is zero, "error" is -t: hidden layers get
        # -h_l^mod (h_{l-1}^mod)^T, the output -t (h_{L-1}^mod)^T
        second = PhaseRecord(net, {"standard": zero_state(), "modulated": modulated},
                             signals={"error": -target, "output": self.output, "target": target,
                                      "modulated_input": x_mod, "feedback": self.F})
        reported.update(self.rules.apply(second, **common))
        return reported

    def _layer(self, index: int, h: torch.Tensor, generator: torch.Generator,
               member: int | None = None) -> torch.Tensor:
        """Layer ``index`` (0-based) of the chain on a batch h, as the passes compute it:
        m * T(phi(h W^T + b)) with a fresh dropout mask m for a hidden layer that has one
        (with the weights of ensemble member ``member``)."""
        net, q, pick = self.net, self.chain[index], _member(member)
        a = h.mm(pick(net.weights[q.name]).T)
        bias = pick(net.biases[q.target])
        if bool(bias.any()):
            decay = net.network.population(q.target).linear_coefficients()[0]
            a.add_(bias, alpha=1.0 / decay)
        y = net.slots[q.target].activate(a, generator=generator)
        if q.target in self.transform:
            y = self.transform[q.target](y)
        p = self.drop.get(q.target, 0.0)
        if p > 0:
            keep = torch.rand(y.shape, generator=generator, device=generator.device,
                              dtype=net.dtype).to(net.device)
            y = y * keep.ge_(p).mul_(1.0 / (1.0 - p))
        return y

    def mirror(self, batch: int, generator) -> None:
        """One weight-mirroring step of every B_l (module docstring), noise and masks from
        ``generator``; then the rescaling of F (``mirror_normalize``) and F = B_1 ... B_L. In
        an ensemble (one generator per member) each member mirrors its own B_l from its own
        generator, as its separate run does."""
        if isinstance(generator, torch.Generator):
            self._mirror(batch, generator, None)
        else:
            for member, own in enumerate(generator):
                self._mirror(batch, own, member)

    def _mirror(self, batch: int, generator: torch.Generator, member: int | None) -> None:
        net, pick = self.net, _member(member)
        rate, shrink = self.mirror_lr, 1.0 - self.mirror_lr * self.mirror_weight_decay
        for index, stacked in enumerate(self.B):
            feedback = pick(stacked)
            noise = torch.randn(batch, feedback.shape[0], generator=generator,
                                device=generator.device, dtype=net.dtype).to(net.device)
            noise.mul_(self.mirror_noise)
            noise.sub_(noise.mean())
            y = self._layer(index, noise, generator, member)
            feedback.mul_(shrink).addmm_(noise.T, y, alpha=rate / batch)
        if self.mirror_normalize:
            self._product(member)
            spread = float(pick(self.F).std())
            if spread > 0 and math.isfinite(spread):
                factor = (self.sigma_F / spread) ** (1.0 / len(self.B))
                for feedback in self.B:
                    pick(feedback).mul_(factor)
        self._product(member)

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -sum t log p (or 0.5 |p - t|^2 with loss = "mse"), summed over the
        batch (float64)."""
        return LOSSES[self.loss_name](prediction, target)

    def state_dict(self) -> dict:
        """The feedback matrix F, and with ``feedback = "mirror"`` the B_l (a table keyed by
        the projection W_l's name)."""
        state = {"F": self.F}
        if self.feedback == "mirror":
            state["B"] = {q.name: b for q, b in zip(self.chain, self.B)}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore F (and the B_l), shapes checked."""
        F = state.get("F")
        shape = tuple(torch.as_tensor(F).shape) if F is not None else None
        if shape != tuple(self.F.shape):
            raise ConfigError(f"the checkpoint's PEPITA feedback matrix F has shape {shape}, "
                              f"this network needs {tuple(self.F.shape)}; the model and the "
                              "checkpoint disagree.")
        stray = set(state) - {"F", "B"}
        if stray:
            raise ConfigError(f"the checkpoint's PEPITA state holds unknown entries "
                              f"{sorted(stray)}; the model and the checkpoint disagree.")
        saved = state.get("B")
        if self.feedback == "mirror":
            shapes = {q.name: tuple(b.shape) for q, b in zip(self.chain, self.B)}
            got = None if not isinstance(saved, Mapping) else \
                {k: tuple(torch.as_tensor(b).shape) for k, b in saved.items()}
            if got != shapes:
                raise ConfigError(f"the checkpoint's PEPITA mirrored feedback matrices B_l have "
                                  f"shapes {got}, this network needs {shapes}; the model and the "
                                  'checkpoint disagree (was the run trained with feedback = '
                                  '"mirror"?).')
            for q, b in zip(self.chain, self.B):
                b.copy_(torch.as_tensor(saved[q.name]).to(b.device, b.dtype))
        elif saved is not None:
            raise ConfigError('the checkpoint holds mirrored feedback matrices B_l, but this '
                              'protocol has feedback = "fixed"; the model and the checkpoint '
                              "disagree.")
        self.F.copy_(torch.as_tensor(F).to(self.F.device, self.F.dtype))
