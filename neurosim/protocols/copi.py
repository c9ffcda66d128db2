"""COPI: constrained parameter inference with learned decorrelation (Ahmad, Schrader & van
Gerven, TMLR 2023), as a protocol on an ordinary feed-forward chain.

The chain (neurosim.protocols.feedforward) alternates lateral projections R_l onto linear
populations (the decorrelated copy x_l = R_l y_{l-1} of a layer's input, input included) and
forward projections W_l (a_l = W_l x_l, y_l = f(a_l); the output a_L is linear):

    x --R_1--> d_0 --W_1--> h_1 --R_2--> d_1 --W_2--> ... --W_L--> out

Lateral projections are those carrying a rule with ``lateral = True`` (the ``decorrelation``
rule) plus those named in ``lateral`` (a fixed R, e.g. R = I as a negative control). One
training step on a batch (x, t): one forward pass (phase "forward"), then the credit signals
(``credit``), computed with the weights of the pass, and the rules (``copi_forward`` on W,
``decorrelation`` on R; neurosim.plasticity.copi) with the signal ``delta`` (population ->
delta, batch x n):

    output:  delta_L = alpha (t - a_L)          (``output_derivative = true``: times f'(a_L),
                                                 f the hidden activation, as the reference code)
    bp:      delta_s = f_s'(a_s) * (M^T delta_p) back through every projection M: s -> p of the
             chain, R included (delta_l = f'(a_l) * (R_{l+1}^T W_{l+1}^T delta_{l+1})); equal to
             -alpha dL/da_l for L = 0.5 |t - a_L|^2
    fa:      delta_{l-1} = f'(a_{l-1}) * (B_l delta_l), B_l (n_{l-1} x n_l) fixed, bypassing R
    dfa:     delta_l = f'(a_l) * (D_l delta_L), D_l (n_l x n_L) fixed (direct feedback alignment)

B_l and D_l are drawn once with ``feedback_init`` (default "xavier_normal", as the reference
code) times ``feedback_scale`` from the run's seed (a stream of their own) and checkpointed.
Differences from the reference code kept out: its deltas are computed, as here, before any
update; its BP-with-Adam baseline uses Adam without the step-dependent bias correction (use
protocol "backprop" with optimizer "adam" and loss "mse" for that baseline).

``[protocol]`` keys: ``type = "copi"``, credit ("bp", "fa", "dfa"), alpha, output_derivative,
lateral, feedback_init, feedback_scale. The R-only first epoch is the decorrelation rules'
``warmup = { epochs = 1, mode = "alone" }``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..dynamics import ops
from ..errors import ConfigError, unknown
from ..graph.projections import INITIALISERS
from ..plasticity import PhaseRecord
from .base import LearningProtocol, StepOutput, register_protocol
from .feedforward import check_unit_gain, layer_chain

__all__ = ["Copi"]

FEEDBACK_SEED_OFFSET = 0xC0F1          # B_l / D_l generator: the run's seed + this
CREDITS = ("bp", "fa", "dfa")
NOT_RANDOM = ("identity", "gram_xavier", "eye")   # initialisers that draw no n x m matrix


@register_protocol
class Copi(LearningProtocol):
    """COPI's forward pass and credit signals (neurosim.protocols.copi); the rules
    ``copi_forward`` and ``decorrelation`` learn from them."""

    name = "copi"
    phases = ("forward",)
    batch_linear = True     # per-sample credit; the rules' updates are batch means
    ensemble_ready = True

    def __init__(self, net=None, *, input: str = "x", output: str = "out", credit: str = "bp",
                 alpha: float = 1000.0, output_derivative: bool = False,
                 lateral: Sequence[str] = (), feedback_init: str = "xavier_normal",
                 feedback_scale: float = 1.0):
        if credit not in CREDITS:
            raise ConfigError(f'credit: "bp" (backpropagated through W and R), "fa" (fixed '
                              f'random B_l bypassing R) or "dfa" (direct from the output), got '
                              f"{credit!r}.")
        for key, value in (("alpha", alpha), ("feedback_scale", feedback_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{key}: a finite number > 0, got {value!r}.")
        if not isinstance(output_derivative, bool):
            raise ConfigError(f"output_derivative: true or false, got {output_derivative!r}.")
        if isinstance(lateral, str) or not all(isinstance(n, str) for n in lateral):
            raise ConfigError(f"lateral: a list of projection names, got {lateral!r}.")
        if feedback_init in NOT_RANDOM:
            raise ConfigError(f'feedback_init: "{feedback_init}" does not draw a random matrix '
                              "of the feedback's shape; use xavier_normal, xavier_uniform, "
                              "he_uniform, kaiming_normal, fan_in_uniform, uniform or normal.")
        if feedback_init not in INITIALISERS and ":" not in str(feedback_init):
            raise ConfigError(f'feedback_init: an initialiser ({", ".join(INITIALISERS)}), got '
                              f"{feedback_init!r}.")
        self.credit, self.alpha, self.output_derivative = credit, float(alpha), output_derivative
        self.lateral, self.feedback_init = list(lateral), feedback_init
        self.feedback_scale = float(feedback_scale)
        self.feedback: dict[str, torch.Tensor] = {}
        if net is not None:
            self.bind(net, input=input, output=output)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Find the chain, split it into lateral and forward projections, draw B_l / D_l."""
        net, who = self.net, 'protocol "copi"'
        self.chain = chain = layer_chain(net, self.input, self.output, who)
        check_unit_gain(net, chain, who)
        names = [q.name for q in chain]
        for name in self.lateral:
            if name not in names:
                raise unknown("projection of the chain", name, names, f"{who} lateral")
        marked = {q.name for q in chain if any(getattr(r, "lateral", False) for r in q.rules)}
        lateral = marked | set(self.lateral)
        for q in chain:
            if not q.is_dense:
                raise ConfigError(f'{who}: projection "{q.name}" is a {q.kind} projection; '
                                  "COPI's layers are dense.")
            if q.name in lateral:
                pop = net.network.population(q.target)
                if net.slots[q.target].size != net.slots[q.source].size or \
                        pop.activation_function.name != "linear":
                    raise ConfigError(f'{who}: lateral projection "{q.name}" must map its source '
                                      f'onto a linear population of the same size ("{q.target}"'
                                      f' has activation "{pop.activation}").')
        self.forward_layers = [q for q in chain if q.name not in lateral]
        if chain[-1].name in lateral:
            raise ConfigError(f'{who}: the last projection "{chain[-1].name}" is lateral; the '
                              "output layer must be a forward weight W_L.")
        out = net.network.population(self.output)
        if out.activation_function.name != "linear":
            raise ConfigError(f'{who}: the output population "{self.output}" has activation '
                              f'"{out.activation}"; COPI\'s output a_L is linear (activation = '
                              '"linear").')
        # the layer below each forward layer, skipping its lateral copy: y_{l-1} for W_l
        self._below = {}
        into = {q.target: q for q in chain}
        for q in self.forward_layers:
            source = q.source
            if source in into and into[source].name in lateral:
                source = into[source].source
            self._below[q.name] = source
        # populations whose delta a rule reads or the backward pass goes through (not the
        # input's decorrelated copy: nothing below it learns from its delta)
        targets = {q.target for q in self.forward_layers}
        self._credited = {q.target for q in chain if q.target in targets or
                          net.slots[q.source].u_cols is not None}
        hidden = [q.target for q in self.forward_layers[:-1]]
        self._hidden_activation = (net.slots[hidden[-1]].activation if hidden else None)
        self.feedback = {}
        if self.credit == "bp":
            return
        generator = torch.Generator().manual_seed(self.seed + FEEDBACK_SEED_OFFSET)
        initialise = INITIALISERS.lookup(self.feedback_init, f"{who} feedback_init")
        classes = net.slots[self.output].size
        for q in self.forward_layers:
            if self.credit == "fa":
                below = self._below[q.name]
                if net.slots[below].u_cols is None:
                    continue                               # the input gets no credit
                shape = (net.slots[below].size, net.slots[q.target].size)
            else:
                if q.target == self.output:
                    continue
                shape = (net.slots[q.target].size, classes)
            drawn = initialise(*shape, generator, torch.float64, self.feedback_scale)
            if drawn is None or tuple(torch.as_tensor(drawn).shape) != shape:
                got = None if drawn is None else tuple(torch.as_tensor(drawn).shape)
                raise ConfigError(f'{who} feedback_init "{self.feedback_init}": returned shape '
                                  f'{got} for the feedback of "{q.name}", needs {shape}.')
            drawn = torch.as_tensor(drawn)
            self.feedback[q.name] = drawn.to(net.device, net.dtype)

    # ------------------------------------------------------------------ passes
    def infer(self, x: torch.Tensor):
        """One forward pass (a new NeuralState)."""
        state, _ = self.net.feedforward({self.input: x})
        return state

    def _derivative(self, population: str, state) -> torch.Tensor:
        slot = self.net.slots[population]
        return slot.activation.derivative(self.net.u_of(state, population))

    def credit_signals(self, state, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """delta per population for a forward pass ``state`` (module docstring)."""
        net = self.net
        delta_out = (target - net.u_of(state, self.output)).mul_(self.alpha)
        if self.output_derivative and self._hidden_activation is not None:
            delta_out.mul_(self._hidden_activation.derivative(net.u_of(state, self.output)))
        deltas = {self.output: delta_out}
        if self.credit == "bp":
            for q in reversed(self.chain):
                if q.source not in self._credited:
                    break
                back = ops.matmul(deltas[q.target], net.weights[q.name])
                deltas[q.source] = back.mul_(self._derivative(q.source, state))
        elif self.credit == "fa":
            for q in reversed(self.forward_layers):
                if q.name not in self.feedback:
                    break
                below = self._below[q.name]
                back = ops.matmul(deltas[q.target], self.feedback[q.name].mT)
                deltas[below] = back.mul_(self._derivative(below, state))
        else:
            for q in self.forward_layers:
                if q.name in self.feedback:
                    back = ops.matmul(delta_out, self.feedback[q.name].mT)
                    deltas[q.target] = back.mul_(self._derivative(q.target, state))
        return deltas

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """Forward pass, credit signals, rules."""
        net = self.net
        x, target = self.supervised_batch(x, target, "COPI")
        state = self.infer(x)
        deltas = self.credit_signals(state, target)
        record = PhaseRecord(net, {"forward": state}, signals={"delta": deltas,
                                                               "target": target})
        metrics = self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step)
        return StepOutput(net.r_of(state, self.output), metrics)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The fixed feedback matrices B_l (fa) or D_l (dfa) by forward projection."""
        return {"feedback": {k: v.clone() for k, v in self.feedback.items()}} \
            if self.feedback else {}

    def stack_members(self, members) -> None:
        """Each member's fixed feedback matrices B_l (drawn from its own seed), stacked; the
        members' own become views of them."""
        for name in self.feedback:
            stacked = torch.stack([m.feedback[name] for m in members])
            self.feedback[name] = stacked
            for k, member in enumerate(members):
                member.feedback[name] = stacked[k]

    def load_state_dict(self, state: Mapping) -> None:
        """Restore B_l / D_l (names and shapes checked)."""
        given = dict(state.get("feedback", {}) or {})
        if set(given) != set(self.feedback) or set(state) - {"feedback"}:
            raise ConfigError(f"the checkpoint's COPI feedback matrices {sorted(given)} do not "
                              f"match this model's {sorted(self.feedback)}; the model and the "
                              "checkpoint disagree.")
        for name, matrix in given.items():
            matrix = torch.as_tensor(matrix)
            if matrix.shape != self.feedback[name].shape:
                raise ConfigError(f'the checkpoint\'s COPI feedback matrix for "{name}" has '
                                  f"shape {tuple(matrix.shape)}, this model needs "
                                  f"{tuple(self.feedback[name].shape)}.")
            self.feedback[name].copy_(matrix.to(self.feedback[name]))
