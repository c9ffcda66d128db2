"""PEPITA: error-driven input modulation, two forward passes and no backward pass
(Dellaferrera & Kreiman, ICML 2022; options of Srinivasan et al., ICLR 2024).

On a feed-forward chain x = h_0 -> h_1 -> ... -> h_L (neurosim.protocols.feedforward; hidden
layers e.g. relu, the output softmax) with a fixed random matrix F (d x C, d inputs, C
classes), one training step on a batch (x, t):

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
stream, apart from the weights'), never trained, and checkpointed. Inference is one standard pass without dropout. The loss is the
cross-entropy of the output probabilities (``loss = "mse"``: 0.5 |h_L - t|^2).

Follow-up option ``normalize = true``: every hidden layer's activity (after the nonlinearity,
before dropout) is divided by its Frobenius norm over the batch, h_l <- h_l / |h_l|_F, in both
passes and at inference.

``[protocol]`` keys: ``type = "pepita"``, sign, output_error, dropout (drop probability of the
hidden layers, or a table population -> probability), F_scale, loss, normalize.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..errors import ConfigError
from ..plasticity import PhaseRecord
from .base import LearningProtocol, StepOutput, register_protocol
from .feedforward import LOSSES, check_unit_gain, layer_chain

__all__ = ["Pepita"]

F_SEED_OFFSET = 0xF_5EED          # F's generator: the run's seed + this


def _unit_frobenius(h: torch.Tensor) -> torch.Tensor:
    """h / |h|_F over the whole batch (h unchanged when it is all zero)."""
    norm = torch.linalg.matrix_norm(h)
    return h / norm if float(norm) > 0 else h


@register_protocol
class Pepita(LearningProtocol):
    """PEPITA's two forward passes (neurosim.protocols.pepita): standard pass, input
    modulated by the projected error x_mod = x + s F e, modulated pass with the same dropout
    masks, then the rules over phases "standard" and "modulated"."""

    name = "pepita"
    phases = ("standard", "modulated")

    def __init__(self, net=None, *, input: str = "x", output: str = "out", sign: int = 1,
                 output_error: str = "modulated", dropout: float | Mapping = 0.0,
                 F_scale: float = 0.05, loss: str = "cross_entropy", normalize: bool = False):
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
        self.F: torch.Tensor | None = None
        if net is not None:
            self.bind(net, input=input, output=output)

    def config(self) -> dict:
        """The ``[protocol]`` table of this protocol."""
        return {"type": self.name, "sign": self.sign, "output_error": self.output_error,
                "dropout": self.dropout, "F_scale": self.F_scale, "loss": self.loss_name,
                "normalize": self.normalize}

    def setup(self) -> None:
        """Find the chain, check its layers, draw F from the run's seed."""
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
        d = net.slots[self.input].size
        classes = net.slots[self.output].size
        bound = math.sqrt(6.0 / d)
        # a stream of its own: the run's seed also draws the forward weights, and F drawn from
        # the same stream would repeat W_1's first values
        generator = torch.Generator().manual_seed(self.seed + F_SEED_OFFSET)
        uniform = torch.rand(d, classes, generator=generator, dtype=torch.float64)
        self.F = (self.F_scale * bound * (2.0 * uniform - 1.0)).to(net.device, net.dtype)

    def infer(self, x: torch.Tensor):
        """One standard pass on x without dropout (a new NeuralState)."""
        state, _ = self.net.feedforward({self.input: x}, transform=self.transform)
        return state

    def modulate(self, x: torch.Tensor, error: torch.Tensor) -> torch.Tensor:
        """x_mod = x + s F e (rows are samples: x + s e F^T)."""
        return torch.addmm(x, error, self.F.T, alpha=float(self.sign))

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """Standard pass, modulated input, modulated pass with the same masks, rules."""
        net = self.net
        x = torch.as_tensor(x, dtype=net.dtype, device=net.device)
        classes = net.slots[self.output].size
        if not torch.is_tensor(target) or tuple(target.shape) != (x.shape[0], classes) or \
                not target.is_floating_point():
            raise ConfigError(f"PEPITA needs one-hot targets of shape (batch={x.shape[0]}, "
                              f"{classes}) as floats, got "
                              f"{tuple(torch.as_tensor(target).shape)} "
                              f"{torch.as_tensor(target).dtype}; encode labels with "
                              "torch.nn.functional.one_hot(labels, classes).float().")
        target = target.to(net.device, net.dtype)
        standard, masks = net.feedforward({self.input: x}, dropout=self.drop,
                                          generator=generator, transform=self.transform)
        out = net.r_of(standard, self.output)
        error = out - target
        x_mod = self.modulate(x, error)
        modulated, _ = net.feedforward({self.input: x_mod}, masks=masks,
                                       transform=self.transform)
        if self.output_error == "modulated":
            error = net.r_of(modulated, self.output) - target
        record = PhaseRecord(net, {"standard": standard, "modulated": modulated},
                             signals={"error": error, "output": self.output, "target": target,
                                      "modulated_input": x_mod, "feedback": self.F})
        return StepOutput(out, self.rules.apply(record, lr_scale=lr_scale, epoch=epoch,
                                                step=step))

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy -sum t log p (or 0.5 |p - t|^2 with loss = "mse"), summed over the
        batch (float64)."""
        return LOSSES[self.loss_name](prediction, target)

    def state_dict(self) -> dict:
        """The fixed feedback matrix F."""
        return {"F": self.F}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore F (shape checked)."""
        F = state.get("F")
        shape = tuple(torch.as_tensor(F).shape) if F is not None else None
        if shape != tuple(self.F.shape):
            raise ConfigError(f"the checkpoint's PEPITA feedback matrix F has shape {shape}, "
                              f"this network needs {tuple(self.F.shape)}; the model and the "
                              "checkpoint disagree.")
        F = torch.as_tensor(F)
        self.F.copy_(F.to(self.F.device, self.F.dtype))
