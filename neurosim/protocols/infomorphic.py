"""Infomorphic networks (Schneider et al., "What should a neuron aim for?", ICLR 2025): the
protocol that runs their lateral steps and supplies the label as context.

A network of infomorphic populations (neurosim.graph.infomorphic), e.g.

    x (input) --feedforward--> h --feedforward--> out
    label (input) --context--> h, --context (fixed identity)--> out
    h --lateral (no autapses, or { partners = 100 })--> h

runs ``lateral_steps`` (K = 2) discrete sweeps per input. In each sweep every population, in
declaration order, reads the newest activities of the populations before it and the previous
sweep's activities of itself and of the populations after it (0 in the first sweep): lateral
connections and feedback see step k-1. Hidden populations draw r = +-1 with P(+1) = theta from
the run's generator; a readout population (activation "sigmoid") gives theta in the last sweep
and, when another population reads it in a later sweep (output feedback as context), a +-1
sample of theta in the earlier ones. Only the last sweep enters the goal: the rules
(``infomorphic_goal`` on each population) see the phases "final" (sweep K) and "previous"
(sweep K-1).

The context input (``context``, default "label") holds the one-hot target while training and
the zero vector at evaluation (no label reaches the network at test time). Evaluation sweeps
draw from the protocol's own generator (seeded from the run's seed, checkpointed), so
evaluation does not disturb the training stream and resume stays exact.

Prediction (``flip = true``): an infomorphic goal cannot tell Y from -Y, so per evaluation
batch every output neuron whose batch-mean theta is >= 0.5 is flipped (theta -> 1 - theta)
before the argmax (the reference code's rule). The loss column is 0.5 |theta' - t|^2 of the
flipped theta'.

Baseline of the same architecture (``objective = "backprop"``): the same sweeps, written with
torch operations, are differentiated end to end (no goal rules): each +-1 sample passes the
gradient of its mean 2 theta - 1 (straight-through), the loss is the cross-entropy of
softmax(A_out) against the label (mean over the batch), and one Adam step (``lr``,
``weight_decay``) updates every plastic weight and every bias of the infomorphic populations.

``[protocol]`` keys: ``type = "infomorphic"``, context, lateral_steps, flip (default: true for
the goal, false for backprop), objective ("goal" or "backprop"), lr, weight_decay (backprop
only). The bias of a compartment no projection reaches is never learned.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..dynamics import NeuralState
from ..errors import ConfigError
from ..graph.infomorphic import (InfomorphicPopulation, compartment_sums, reads_previous_step,
                                 unconnected_bias_rows)
from ..plasticity import PhaseRecord
from ..draws import uniform
from ..plasticity.infomorphic import Adam
from .base import LearningProtocol, StepOutput, register_protocol

#: offset of the evaluation generator's seed from the run's seed
EVAL_SEED_OFFSET = 7_919


@register_protocol
class Infomorphic(LearningProtocol):
    """K lateral sweeps of infomorphic populations, the label as context while training, the
    PID goals as population rules (see neurosim.protocols.infomorphic)."""

    name = "infomorphic"
    phases = ("previous", "final")
    ensemble_ready = True
    ensemble_random_activities = True    # every draw from each member's own generator

    def __init__(self, net=None, *, input: str = "x", output: str = "out",
                 context: str = "label", lateral_steps: int = 2, flip: bool | None = None,
                 objective: str = "goal", lr: float = 1e-3, weight_decay: float = 0.0):
        if isinstance(lateral_steps, bool) or not isinstance(lateral_steps, int) or \
                lateral_steps < 1:
            raise ConfigError(f"lateral_steps: an integer >= 1 (sweeps per input; the paper "
                              f"uses 2), got {lateral_steps!r}.")
        if not isinstance(context, str):
            raise ConfigError(f'context: the name of the input population that carries the '
                              f'label (or "" for none), got {context!r}.')
        if flip is not None and not isinstance(flip, bool):
            raise ConfigError(f"flip: true or false, got {flip!r}.")
        if objective not in ("goal", "backprop"):
            raise ConfigError(f'objective: "goal" (each population\'s infomorphic_goal rule) or '
                              f'"backprop" (the same network trained end to end), got '
                              f"{objective!r}.")
        for key, value in (("lr", lr), ("weight_decay", weight_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not math.isfinite(value) or value < 0:
                raise ConfigError(f"{key}: a finite number >= 0, got {value!r}.")
        if flip and objective == "backprop":
            raise ConfigError("flip = true with objective \"backprop\": a cross-entropy-trained "
                              "output is not sign-ambiguous (softmax is shift-invariant, so its "
                              "batch-mean theta may exceed 0.5 and flipping breaks the argmax); "
                              "remove flip.")
        self.context, self.lateral_steps = context, lateral_steps
        self.flip = (objective == "goal") if flip is None else flip
        self.objective, self.lr, self.weight_decay = objective, float(lr), float(weight_decay)
        if net is not None:
            self.bind(net, input=input, output=output)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Check the network; find the readouts sampled for later sweeps; seed the evaluation
        generator."""
        net, who = self.net, 'protocol "infomorphic"'
        network = net.network
        for pop in network.dynamic:
            if not isinstance(pop, InfomorphicPopulation):
                raise ConfigError(f'{who}: population "{pop.name}" is of kind "{pop.kind}"; every '
                                  'non-input population must be type = "infomorphic".')
        out = network.population(self.output)
        if out.activation != "sigmoid":
            raise ConfigError(f'{who}: the output population "{self.output}" has activation '
                              f'"{out.activation}"; the readout gives its firing probability: '
                              'activation = "sigmoid" (with context_gain = lateral_gain = 0 '
                              "for the paper's theta = sigmoid(F)).")
        if self.context == self.input:
            raise ConfigError(f'{who}: context "{self.context}" is the image input; name the '
                              "input population that carries the one-hot label.")
        inputs = [p.name for p in network.inputs]
        expected = [self.input] + ([self.context] if self.context else [])
        for name in expected:
            if name not in inputs:
                raise ConfigError(f'{who}: "{name}" must be an input population (type = '
                                  f'"input"); inputs of this model: {inputs}.')
        extra = sorted(set(inputs) - set(expected))
        if extra:
            raise ConfigError(f"{who}: input populations {extra} get no data; the protocol "
                              f'feeds "{self.input}" (images) and "{self.context}" (labels). '
                              "Remove them or name one as [protocol] context.")
        if self.context:
            size, classes = net.slots[self.context].size, net.slots[self.output].size
            if size != classes:
                raise ConfigError(f'{who}: the context input "{self.context}" has {size} '
                                  f'neurons but the output "{self.output}" has {classes}; the '
                                  "context carries the one-hot label.")
        self.sampled_readouts = sorted(
            {q.source for q in network.projections if reads_previous_step(network, q)
             and network.population(q.source).activation == "sigmoid"})
        if self.objective == "goal" and not self.rules:
            raise ConfigError(f"{who}: no population has a rule, so nothing would learn; give "
                              'the infomorphic populations rules = [{ type = "infomorphic_goal", '
                              '... }] or set objective = "backprop".')
        self.fixed_bias_rows = {p.name: unconnected_bias_rows(network, p) for p in network.dynamic}
        if self.objective == "backprop":
            if self.rules:
                raise ConfigError(f'{who}: objective "backprop" trains the whole network end to '
                                  "end; remove the populations' rules (infomorphic_goal).")
            self.optimizer = Adam(self.lr, self.weight_decay)
        device = net.device
        self.eval_generator = torch.Generator(device=device).manual_seed(
            self.seed + EVAL_SEED_OFFSET)

    # ------------------------------------------------------------------ sweeps
    def sweeps(self, x: torch.Tensor, context: torch.Tensor | None,
               generator: torch.Generator) -> tuple[NeuralState, NeuralState]:
        """(state after sweep K-1, state after sweep K); sweep 0 is all zeros."""
        net = self.net
        inputs = {self.input: x}
        if self.context:
            inputs[self.context] = context
        previous, state = None, None

        def sample(theta):
            draw = uniform(theta.shape, generator, dtype=theta.dtype, device=theta.device)
            return torch.where(draw < theta, 1.0, -1.0).to(theta.dtype)
        for k in range(self.lateral_steps):
            last = k == self.lateral_steps - 1
            transform = None if last or not self.sampled_readouts else \
                {name: sample for name in self.sampled_readouts}
            previous = state
            state, _ = net.feedforward(inputs, state=state, generator=generator,
                                       transform=transform)
        if previous is None:
            previous = NeuralState(torch.zeros_like(state.u), torch.zeros_like(state.r), net)
            net.clamp_inputs(previous, inputs)
        return previous, state

    def flipped(self, theta: torch.Tensor) -> torch.Tensor:
        """theta' = 1 - theta for the neurons whose batch mean is >= 0.5 (in place; per
        member in an ensemble)."""
        if self.flip:
            flip = (theta.mean(dim=-2) >= 0.5).unsqueeze(-2)
            theta.copy_(torch.where(flip, 1 - theta, theta))
        return theta

    def train_step(self, x, target, generator, lr_scale: float = 1.0, *, epoch: int = 0,
                   step: int = 0) -> StepOutput:
        """K sweeps with the label as context, then the goal rules."""
        net = self.net
        x, target = self.supervised_batch(x, target, 'protocol "infomorphic"')
        if self.objective == "backprop":
            return self.backprop_step(x, target, generator, lr_scale)
        previous, state = self.sweeps(x, target, generator)
        record = PhaseRecord(net, {"previous": previous, "final": state},
                             signals={"target": target})
        metrics = self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step)
        prediction = self.flipped(net.r_of(state, self.output).clone())
        return StepOutput(prediction, metrics)

    def infer(self, x: torch.Tensor) -> NeuralState:
        """K sweeps with a zero context, drawing from the evaluation generator; the output's
        activity is the flipped theta (module docstring)."""
        net = self.net
        x = torch.as_tensor(x, dtype=net.dtype, device=net.device)
        context = torch.zeros(*x.shape[:-1], net.slots[self.output].size, dtype=net.dtype,
                              device=net.device) if self.context else None
        _, state = self.sweeps(x, context, self.eval_generator)
        self.flipped(net.r_of(state, self.output))
        return state

    # ------------------------------------------------------------------ backprop baseline
    def differentiable_sweeps(self, x, context, generator, weights, biases) -> torch.Tensor:
        """A_out of the last sweep, computed with torch operations from ``weights`` and
        ``biases`` (differentiable; samples straight-through, module docstring), drawing
        from ``generator`` in the engine's order."""
        net = self.net
        network = net.network
        activity = {self.input: x}
        if self.context:
            activity[self.context] = context
        order = network.dynamic
        rows = x.shape[:-1]                 # (batch,), or (members, batch) in an ensemble
        previous = {p.name: torch.zeros(*rows, p.size, dtype=net.dtype, device=net.device)
                    for p in order}
        for k in range(self.lateral_steps):
            last = k == self.lateral_steps - 1
            current = {}
            for pop in order:
                def presynaptic(q):
                    if q.source in activity:
                        return activity[q.source]
                    return current.get(q.source, previous.get(q.source))
                v = compartment_sums(pop, network.incoming(pop.name), presynaptic,
                                     lambda q: weights.get(q.name, net.weights.get(q.name)),
                                     biases[pop.name], rows[-1])
                drive = pop.feedforward(v)
                theta = torch.sigmoid(drive)
                sampled = pop.activation == "stochastic_sign" or (
                    not last and pop.name in self.sampled_readouts)
                if sampled:
                    draw = uniform(theta.shape, generator, dtype=theta.dtype,
                                   device=theta.device)
                    mean = 2 * theta - 1
                    sign = torch.where(draw < theta.detach(), 1.0, -1.0).to(theta.dtype)
                    current[pop.name] = mean + (sign - mean).detach()
                else:
                    current[pop.name] = theta
                if last and pop.name == self.output:
                    out_drive = drive
            previous = current
        return out_drive

    def backprop_step(self, x, target, generator, lr_scale) -> StepOutput:
        """One Adam step on the cross-entropy of softmax(A_out) through the K sweeps."""
        net = self.net
        live = {name: net.weights[q.name] for q in net.network.projections
                if q.plastic and (name := q.name) in net.weights}
        live.update({f"bias.{p.name}": net.biases[p.name] for p in net.network.dynamic})
        with torch.inference_mode(False), torch.enable_grad():
            params = {k: t.detach().clone().requires_grad_(True) for k, t in live.items()}
            weights = {k: v for k, v in params.items() if not k.startswith("bias.")}
            biases = {k[5:]: v for k, v in params.items() if k.startswith("bias.")}
            drive = self.differentiable_sweeps(x.clone(), target.clone(), generator, weights,
                                               biases)
            # the batch mean per member; an ensemble's members' losses summed (each
            # member's gradient is its own)
            loss = -(target.clone() * torch.log_softmax(drive, dim=-1)).sum(-1).mean(-1)
            loss.sum().backward()
        fixed = {name: (rows, net.biases[name][..., rows, :].clone())
                 for name, rows in self.fixed_bias_rows.items() if rows}
        self.optimizer.step_(live, {k: p.grad for k, p in params.items()}, lr_scale)
        for name, (rows, kept) in fixed.items():       # compartments nothing reaches
            net.biases[name][..., rows, :] = kept
        for name in weights:
            if name in net.masks:
                net.weights[name].mul_(net.masks[name])
        prediction = self.flipped(torch.sigmoid(drive.detach()))
        loss = loss.detach()
        return StepOutput(prediction, {"cross_entropy": loss if loss.dim() else float(loss)})

    # ------------------------------------------------------------------ ensembles
    def stack_members(self, members: "list[Infomorphic]") -> None:
        """Evaluation draws from each member's own evaluation generator (the members'
        generator objects themselves, so their checkpoints see every draw); the backprop
        baseline's Adam moments stacked per member."""
        self.eval_generator = [member.eval_generator for member in members]
        if self.objective == "backprop":
            self.optimizer.stack([m.optimizer.state_dict() for m in members],
                                 'protocol "infomorphic" (objective "backprop")')

    def share_members(self, members: "list[Infomorphic]") -> None:
        """The backprop baseline's Adam state handed back to each member."""
        if self.objective == "backprop":
            for member, state in zip(members, self.optimizer.member_states(len(members))):
                member.optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The evaluation generator's state (and the backprop baseline's Adam state)."""
        if isinstance(self.eval_generator, list):
            raise ConfigError('protocol "infomorphic" of an ensemble keeps no state of its own: '
                              "each member's protocol holds its evaluation generator and Adam "
                              "state; checkpoint the members (Ensemble.fit writes them).")
        state = {"eval_generator": self.eval_generator.get_state()}
        if self.objective == "backprop":
            state["adam"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the evaluation generator (and Adam's state)."""
        keys = {"eval_generator"} | ({"adam"} if self.objective == "backprop" else set())
        if set(state) != keys:
            raise ConfigError(f"the checkpoint's infomorphic protocol state has keys "
                              f"{sorted(state)}, expected {sorted(keys)}; the model and the "
                              "checkpoint disagree.")
        self.eval_generator.set_state(torch.as_tensor(state["eval_generator"]).to(torch.uint8)
                                      .cpu())
        if "adam" in state:
            self.optimizer.load_state_dict(state["adam"])
