"""Learning protocols as plug-ins and the protocol-agnostic trainer: a protocol written here
found by import path, protocol errors, EP built in Python equal to EP from a model file,
nothing global changed, unsupervised training (Oja's rule on Gaussian data, from the command
line), the validation split, per-rule schedules and warm-ups, protocol state on resume.

Small networks and few epochs; the file runs in well under a minute on 2 CPU cores.
"""
from __future__ import annotations

import csv
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import neurosim.graph as g
from neurosim.cli import main as cli
from neurosim.data import Dataset, load_dataset
from neurosim.dynamics import NeuralState
from neurosim.errors import ConfigError, NeurosimError
from neurosim.io import load_checkpoint
from neurosim.plasticity import PhaseRecord, PlasticityRule, PopulationRule, build_rule, \
    register_rule
from neurosim.protocols import EquilibriumPropagation, LearningProtocol, StepOutput, \
    build_protocol
from neurosim.schedules import make_epoch_schedule
from neurosim.solvers import get_solver, make_schedule, solve
from neurosim.training import Trainer, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
TIMING = {"seconds", "train_seconds"}
ME = __name__                 # this module, as "module:Class" paths name it


def _payload(run: Path) -> dict:
    return load_checkpoint(run / "run.h5", kind="training").payload


def _csv(path: Path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {k: [r[k] for r in rows] for k in rows[0]}


def _same_metrics(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in set(a) - TIMING:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


# --------------------------------------------------------------------------- a protocol of ours
class DirectFeedback(LearningProtocol):
    """Direct feedback alignment on a feed-forward rate network: relax (one phase "free"),
    then the output error e = target - r_out reaches every hidden population h through a
    fixed random matrix B_h drawn once (the protocol's state):

        delta_out = e * sigma'(r_out),   delta_h = (e B_h) * sigma'(r_h)   (sigmoid units)

    given to the rules as the signal "delta" (population -> batch x n)."""

    name = "test_direct_feedback"
    phases = ("free",)

    def __init__(self, T: int = 2, step: float = 1.0, feedback_scale: float = 0.5):
        self.T, self.step, self.feedback_scale = T, step, feedback_scale
        self.solver, self.schedule = get_solver("gs-euler"), make_schedule(step, "step")
        self._buffers: dict = {}

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(self.seed + 12345)
        n_out = self.net.slots[self.output].size
        self.hidden = [p.name for p in self.net.network.dynamic if p.name != self.output]
        self.feedback = {h: self.feedback_scale * torch.randn(
            n_out, self.net.slots[h].size, generator=generator).to(self.net.dtype)
            for h in self.hidden}

    def infer(self, x: torch.Tensor) -> NeuralState:
        net = self.net
        if x.shape[0] not in self._buffers:
            self._buffers[x.shape[0]] = net.zero_state(x.shape[0])
        state = self._buffers[x.shape[0]]
        state.u.zero_()
        net.sync_activity(state)
        net.clamp_inputs(state, {self.input: x})
        dynamics = net.phase(net.build_operators(), {self.input: x}, at_rest=True)
        solve(dynamics, state, solver=self.solver, schedule=self.schedule, n_steps=self.T,
              check_finite_every=0)
        return state

    def train_step(self, x, target, generator, lr_scale=1.0, *, epoch=0, step=0):
        net = self.net
        state = self.infer(x)
        out = net.r_of(state, self.output)
        error = target - out
        delta = {self.output: error * out * (1 - out)}
        for h in self.hidden:
            r = net.r_of(state, h)
            delta[h] = (error @ self.feedback[h]) * r * (1 - r)
        record = PhaseRecord(net, {"free": state}, signals={"delta": delta, "target": target})
        self.rules.apply(record, lr_scale=lr_scale, epoch=epoch, step=step)
        return StepOutput(out.clone(), {"error": float((error ** 2).sum(1).mean())})

    def state_dict(self) -> dict:
        return {"feedback": {h: b.clone() for h, b in self.feedback.items()}}

    def load_state_dict(self, state) -> None:
        if set(state) != {"feedback"} or set(state["feedback"]) != set(self.hidden):
            raise ConfigError(f'protocol "{self.name}": the checkpoint holds {sorted(state)}, '
                              "expected the feedback matrices of " + ", ".join(self.hidden))
        self.feedback = {h: torch.as_tensor(b).to(self.net.dtype).clone()
                         for h, b in state["feedback"].items()}


class StatelessFeedback(DirectFeedback):
    """The same protocol claiming to have no state (the base class's refusal)."""

    name = "test_stateless_feedback"
    state_dict = LearningProtocol.state_dict
    load_state_dict = LearningProtocol.load_state_dict


class NoInfer(LearningProtocol):
    name = "test_no_infer"

    def train_step(self, x, target, generator, lr_scale=1.0, *, epoch=0, step=0):
        return StepOutput()


class NoTrainStep(LearningProtocol):
    name = "test_no_train_step"

    def infer(self, x):
        return None


class Neither(LearningProtocol):
    name = "test_neither"


class NotAProtocol:
    def train_step(self, *args, **kwargs):
        pass


@register_rule
class DeltaForTest(PlasticityRule):
    """dW = lr * lr_scale * <delta_post r_pre^T>, delta from the protocol's signal."""

    name = "test_delta"
    needs_phases = ("free",)

    def __init__(self, lr: float):
        self.lr = float(lr)

    def update(self, ctx) -> None:
        delta = ctx.signal("delta")[ctx.projection.target]
        ctx.weight.add_(delta.T @ ctx.pre("free"), alpha=self.lr * ctx.lr_scale / ctx.batch_size)


DFA_TEXT = f"""
[[population]]
name = "x"
type = "input"
size = 64

[[population]]
name = "h"
type = "pyramidal"
size = 32
leak = 0.0
basal = 1.0
apical = 0.0
activation = "sigmoid"

[[population]]
name = "out"
type = "pyramidal"
size = 10
leak = 0.0
basal = 1.0
apical = 0.0
activation = "sigmoid"

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = "xavier_uniform"
rules = [{{ type = "{ME}:DeltaForTest", lr = 2.0 }}]

[[projection]]
name = "h_out"
source = "h"
target = "out"
compartment = "basal"
init = "xavier_uniform"
rules = [{{ type = "{ME}:DeltaForTest", lr = 2.0 }}]

[data]
dataset = "digits"

[protocol]
type = "{ME}:DirectFeedback"
T = 2
step = 1.0
feedback_scale = 0.5

[training]
epochs = 2
batch_size = 20
seed = 0
threads = 1
"""


def _dfa(**changes) -> str:
    text = DFA_TEXT
    for old, new in changes.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


# --------------------------------------------------------------------------- (a) plug-ins
def test_protocol_written_here_is_found_by_import_path_and_trains(tmp_path):
    trainer = Trainer.from_model_text(DFA_TEXT, progress=False)
    protocol = trainer.protocol
    assert type(protocol) is DirectFeedback
    assert (protocol.T, protocol.step, protocol.feedback_scale) == (2, 1.0, 0.5)
    assert protocol.input == "x" and protocol.output == "out" and protocol.hidden == ["h"]
    assert protocol.config() == {"type": "test_direct_feedback", "T": 2, "step": 1.0,
                                 "feedback_scale": 0.5}
    trainer.fit(tmp_path / "run", log=None)
    cols = trainer.history.columns
    assert cols["test_accuracy"][-1] > 0.7                     # chance: 0.1
    assert cols["train_error"][-1] < cols["train_error"][0]    # its own step metric, averaged
    assert {"train_accuracy", "train_loss", "test_loss"} <= set(cols)
    # overrides that are not run options go to the protocol's constructor
    other = Trainer.from_model_text(DFA_TEXT, progress=False, feedback_scale=0.25)
    assert other.protocol.feedback_scale == 0.25
    assert torch.allclose(other.protocol.feedback["h"], 0.5 * protocol.feedback["h"])


@pytest.mark.parametrize("cls, missing", [("NoInfer", "infer"), ("NoTrainStep", "train_step"),
                                          ("Neither", "train_step, infer")])
def test_protocol_lacking_a_required_method_is_refused(cls, missing):
    with pytest.raises(ConfigError) as info:
        build_protocol(f"{ME}:{cls}")
    message = str(info.value)
    assert f"lacks the required method(s) {missing};" in message
    assert f"({ME}.{cls})" in message
    text = _dfa(**{f'type = "{ME}:DirectFeedback"': f'type = "{ME}:{cls}"'}).replace(
        "T = 2\nstep = 1.0\nfeedback_scale = 0.5\n", "")
    with pytest.raises(ConfigError, match=f"m.toml .*\\[protocol\\].*lacks the required "
                                          f"method\\(s\\) {missing};"):
        Trainer.from_model_text(text, where="m.toml", progress=False)


def test_protocol_errors_name_the_problem():
    def raises(text, *fragments):
        with pytest.raises(ConfigError) as info:
            Trainer.from_model_text(text, where="m.toml", progress=False)
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))

    proto = f'type = "{ME}:DirectFeedback"'
    raises(_dfa(**{proto: 'type = "epp"'}), "m.toml [protocol] type", 'unknown protocol "epp"',
           'Did you mean "ep"?', "Valid: ", "module:ClassName")
    raises(_dfa(**{proto: 'type = "relaxed"'}), 'Did you mean "relax"?')
    raises(_dfa(**{proto: f'type = "{ME}:NotAProtocol"'}),
           f'"{ME}:NotAProtocol" is not a protocol (a subclass of LearningProtocol)')
    raises(_dfa(**{proto: 'type = "no_such_module:Protocol"'}),
           'cannot import protocol "no_such_module:Protocol"')
    raises(_dfa(**{"feedback_scale = 0.5": "feedback_scal = 0.5"}),
           f'protocol "{ME}:DirectFeedback" has no parameter "feedback_scal"',
           'Did you mean "feedback_scale"?', "Parameters: T, step, feedback_scale")
    ep = "[protocol]\ntype = \"ep\"\nT_fre = 5\n"
    raises(_dfa(**{f"[protocol]\n{proto}\nT = 2\nstep = 1.0\nfeedback_scale = 0.5\n": ep}),
           'protocol "ep" has no parameter "T_fre"', 'Did you mean "T_free"?')
    for key in ("input", "output"):
        raises(_dfa(**{"feedback_scale = 0.5": f'feedback_scale = 0.5\n{key} = "x"'}),
               f'"{key}" is not a protocol setting', "[training] input / output")
    with pytest.raises(ConfigError, match='give the protocol as a table with a "type"'):
        build_protocol({"T_free": 3})


# --------------------------------------------------------------------------- (b) Python == file
@register_rule
class ThreadProbe(PlasticityRule):
    """Changes nothing; records torch's thread count while training runs."""

    name = "test_thread_probe"
    counts: list = []

    def update(self, ctx) -> None:
        ThreadProbe.counts.append(torch.get_num_threads())


EP_TEXT = f"""
[[population]]
name = "x"
type = "input"
size = 64

[[population]]
name = "h"
type = "pyramidal"
size = 24
leak = 0.5
basal = 6.0
apical = 1.0
activation = "clip"

[[population]]
name = "out"
type = "pyramidal"
size = 10
leak = 0.5
basal = 6.0
apical = 1.0
activation = "clip"

[[projection]]
name = "ff1"
source = "x"
target = "h"
compartment = "basal"
init = "xavier_uniform"
rules = [{{ type = "ep_contrastive", lr = 4.0 }}]

[[projection]]
name = "fb1"
source = "out"
target = "h"
compartment = "apical"
init = "xavier_uniform"
rules = [{{ type = "ep_contrastive", lr = 0.6 }}]

[[projection]]
name = "lat1"
source = "h"
target = "h"
compartment = "apical"
init = "gram_xavier"
gain = 0.001
rules = [{{ type = "corinfomax_lateral", lam = 0.999 }}]

[[projection]]
name = "ff2"
source = "h"
target = "out"
compartment = "basal"
init = "xavier_uniform"
rules = [{{ type = "ep_contrastive", lr = 2.8 }}, {{ type = "{ME}:ThreadProbe" }}]

[[projection]]
name = "aut2"
source = "out"
target = "out"
compartment = "apical"
init = "identity"
gain = 0.5

[data]
dataset = "digits"

[protocol]
PROTOCOL

[training]
epochs = 1
batch_size = 20
seed = 3
threads = 1
lr_schedule = {{ type = "exponential", gamma = 0.9 }}
metrics = ["weight_angle", "correlative_information"]
"""


def _ep_network() -> g.Network:
    """EP_TEXT's network, built from neurosim.graph classes."""
    def pyramidal(name, size):
        return g.PyramidalPopulation(name, size, leak=0.5, basal=6.0, apical=1.0,
                                     activation="clip")

    def rule(**spec):
        return [build_rule(spec)]

    return g.Network([g.InputPopulation("x", 64), pyramidal("h", 24), pyramidal("out", 10)], [
        g.Projection("ff1", "x", "h", compartment="basal", init="xavier_uniform",
                     rules=rule(type="ep_contrastive", lr=4.0)),
        g.Projection("fb1", "out", "h", compartment="apical", init="xavier_uniform",
                     rules=rule(type="ep_contrastive", lr=0.6)),
        g.Projection("lat1", "h", "h", compartment="apical", init="gram_xavier", gain=0.001,
                     rules=rule(type="corinfomax_lateral", lam=0.999)),
        g.Projection("ff2", "h", "out", compartment="basal", init="xavier_uniform",
                     rules=[build_rule({"type": "ep_contrastive", "lr": 2.8}), ThreadProbe()]),
        g.Projection("aut2", "out", "out", compartment="apical", init="identity", gain=0.5),
    ])


def _global_rng() -> tuple:
    return torch.get_rng_state(), np.random.get_state(legacy=True), random.getstate()


def _same_global_rng(a: tuple, b: tuple) -> bool:
    return (torch.equal(a[0], b[0]) and a[2] == b[2] and a[1][0] == b[1][0] and
            np.array_equal(a[1][1], b[1][1]) and a[1][2:] == b[1][2:])


@pytest.mark.parametrize("form", ["name", "instance"])
def test_ep_built_in_python_equals_ep_from_a_model_file(form, tmp_path):
    if form == "name":           # EP's defaults: T_free 30, T_nudged 10, beta 1, step 0.05
        protocol, table = "ep", 'type = "ep"'
    else:
        protocol = EquilibriumPropagation(T_free=8, T_nudged=3, beta=0.5, random_sign=True,
                                          solver="gs-euler", step={"type": "constant", "dt": 0.1})
        table = ('type = "ep"\nT_free = 8\nT_nudged = 3\nbeta = 0.5\nrandom_sign = true\n'
                 'solver = "gs-euler"\nstep = { type = "constant", dt = 0.1 }')
    text = EP_TEXT.replace("PROTOCOL", table)
    options = TrainingConfig(epochs=1, batch_size=20, seed=3, threads=1,
                             lr_schedule=make_epoch_schedule({"type": "exponential",
                                                              "gamma": 0.9}, "test"),
                             metrics=("weight_angle", "correlative_information"))
    python = Trainer(_ep_network(), protocol, load_dataset("digits"), options, progress=False)
    python.fit(tmp_path / "python", log=None)
    from_file = Trainer.from_model_text(text, progress=False)
    assert from_file.protocol.config() == python.protocol.config()
    assert from_file.config.as_dict() == python.config.as_dict()
    from_file.fit(tmp_path / "file", log=None)

    for name, w in python.net.weights.items():
        assert torch.equal(w, from_file.net.weights[name]), name
    assert python.history.columns["test_accuracy"][0] > 0.3      # it trained (chance: 0.1)
    assert not any(math.isnan(v) for v in python.history.columns["test_loss"])
    _same_metrics(python.history.columns, from_file.history.columns)
    a, b = _payload(tmp_path / "python"), _payload(tmp_path / "file")
    _same_metrics(a["metrics"], b["metrics"])
    assert a["progress"] == b["progress"] == {"epoch": 1, "steps": 72}
    assert torch.equal(a["rng"]["generators"]["trainer"], b["rng"]["generators"]["trainer"])
    # a trainer built in Python writes no model text: resume tells how to continue instead
    with pytest.raises(ConfigError, match="built in Python.*trainer.restore"):
        Trainer.resume(tmp_path / "python")


def test_trainer_leaves_threads_and_global_rngs_alone(tmp_path):
    ds = load_dataset("digits")
    small = Dataset("digits_40", ds.train_x[:40], ds.train_y[:40], ds.test_x[:20],
                    ds.test_y[:20], 10, (64,), "none")
    options = TrainingConfig(epochs=2, batch_size=20, threads=2)
    torch.manual_seed(1234)
    np.random.seed(99)
    random.seed(7)
    assert torch.get_num_threads() == 1                          # tests/conftest.py
    before = _global_rng()
    ThreadProbe.counts = []
    trainer = Trainer(_ep_network(), EquilibriumPropagation(T_free=4, T_nudged=2), small,
                      options, progress=False)
    assert torch.get_num_threads() == 1 and _same_global_rng(before, _global_rng())
    trainer.fit(tmp_path / "run", log=None)
    assert ThreadProbe.counts == [2] * 4                         # 2 steps x 2 epochs, threads 2
    assert torch.get_num_threads() == 1                          # restored after fit
    assert _same_global_rng(before, _global_rng())               # never touched
    # the run's own generator (seeded by the run's seed) drew the data order and the signs
    assert not torch.equal(trainer.generator.get_state(),
                           torch.Generator().manual_seed(0).get_state())


def test_inference_after_training_outside_inference_mode():
    """protocol.predict / infer after training (whose buffers are inference tensors)."""
    trainer = Trainer.from_model_text(EP_TEXT.replace("PROTOCOL", 'type = "ep"\nT_free = 5\n'
                                                      "T_nudged = 2"), progress=False)
    x = trainer.dataset.test_x[:40]
    trainer.train_epoch()
    with torch.inference_mode():
        expected = trainer.protocol.predict(x).clone()
    assert torch.equal(trainer.protocol.predict(x), expected)
    assert torch.equal(trainer.protocol.predict(x[:20]), expected[:20])


# --------------------------------------------------------------------------- (c) unsupervised
@register_rule
class OjaForTest(PlasticityRule):
    """Oja's rule as continuous plasticity: dW/dt = lr <y (x - y w)> over the batch; the
    default update takes W += dt * lr_scale * dW/dt."""

    name = "test_oja"
    needs_phases = ("free",)

    def __init__(self, lr: float):
        self.lr = float(lr)

    def derivative(self, ctx) -> torch.Tensor:
        x, y = ctx.pre("free"), ctx.post("free")
        return self.lr * (y.T @ x - (y * y).sum(0).unsqueeze(1) * ctx.weight) / ctx.batch_size


def _gaussian(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Samples of N(0, C) in 6 dimensions, C = Q diag(5, 1, 0.8, 0.6, 0.4, 0.2) Q^T; and
    the principal direction Q[:, 0]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    scales = np.sqrt([5.0, 1.0, 0.8, 0.6, 0.4, 0.2])
    x = (rng.standard_normal((n, 6)) * scales) @ q.T
    return x.astype(np.float32), q[:, 0]


OJA_TEXT = """
[[population]]
name = "x"
type = "input"
size = 6

[[population]]
name = "y"
type = "interneuron"
size = 1
leak = 1.0
activation = "linear"

[[projection]]
name = "w"
source = "x"
target = "y"
init = "normal"
scale = 0.3
rules = [{ type = "test_oja", lr = 0.01 }]

[data]
path = "gauss.npz"

[protocol]
type = "relax"
T = 3
step = 1.0                # du/dt = -u + w x: u = w x after one step

[training]
epochs = 3
batch_size = 20
seed = 0
output = "y"
threads = 1
metrics = [{ type = "principal_alignment", projection = "w" }]
"""


def test_unsupervised_oja_from_the_command_line(tmp_path, capsys):
    x, principal = _gaussian(2000)
    test_x, _ = _gaussian(500, seed=1)
    np.savez(tmp_path / "gauss.npz", train_x=x, test_x=test_x)            # no labels
    model = tmp_path / "oja.toml"
    model.write_text(OJA_TEXT)
    start = Trainer.from_model_file(model, progress=False)
    w0 = start.net.weights["w"].clone()
    first = start.evaluate(start.dataset.test_x, None, "test", start.metrics)
    assert first["pc_alignment_w"] < 0.9                     # the initial weight is not aligned

    run = tmp_path / "run"
    assert cli(["train", str(model), "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "epoch 3:" in out and "%" not in out and "pc_alignment_w=" in out
    cols = _csv(run / "metrics.csv")
    assert cols["epoch"] == ["1", "2", "3"]
    assert float(cols["pc_alignment_w"][-1]) > 0.99
    assert "train_rate_y" in cols and "lr_scale" in cols
    assert not any("accuracy" in k or "loss" in k for k in cols)      # never a fake accuracy
    payload = _payload(run)
    assert not any("accuracy" in k or "loss" in k for k in payload["metrics"])
    # the weight converged to the principal direction with unit norm (Oja's fixed point)
    w = payload["network"]["w"][0].double()
    assert not torch.equal(payload["network"]["w"], w0)
    assert abs(float(w.norm()) - 1.0) < 0.05
    assert abs(float(w @ torch.from_numpy(principal)) / float(w.norm())) > 0.99
    # the rate column is the mean output activity over the training steps
    assert abs(float(cols["train_rate_y"][-1])) < 0.5

    # a supervised protocol on the same unlabeled data: a clear error, nothing written
    bad = tmp_path / "oja_ep.toml"
    bad.write_text(OJA_TEXT.replace('type = "relax"\nT = 3\nstep = 1.0', 'type = "ep"'))
    assert cli(["train", str(bad), "--out", str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert 'protocol "ep" is supervised but dataset' in err
    assert 'gauss.npz" has no labels (train_y)' in err
    assert 'unsupervised protocol such as "relax"' in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------- (d) validation
def _small_digits(path: Path, n: int) -> None:
    ds = load_dataset("digits")
    np.savez(path, train_x=ds.train_x[:n].numpy(), train_y=ds.train_y[:n].numpy(),
             test_x=ds.test_x[:100].numpy(), test_y=ds.test_y[:100].numpy())


def test_validation_split_columns_steps_and_checkpoint(tmp_path):
    _small_digits(tmp_path / "small.npz", 410)
    text = _dfa(**{'dataset = "digits"': 'path = "small.npz"\nvalidation = 0.2',
                   "epochs = 2": "epochs = 4"})
    (tmp_path / "model.toml").write_text(text)
    trainer = Trainer.from_model_file(tmp_path / "model.toml", progress=False)
    trainer.fit(tmp_path / "run", log=None)
    # 82 of 410 rows held out (round(0.2 * 410)); 328 left: ceil(328 / 20) = 17 steps an epoch
    assert len(trainer.val_x) == 82 and len(trainer.train_x) == 328
    assert trainer.steps == 4 * 17
    val = trainer.validation_indices
    train_idx = sorted(set(range(410)) - set(val.tolist()))
    full = trainer.dataset.train_x
    assert torch.equal(trainer.train_x, full[train_idx]) and torch.equal(trainer.val_x, full[val])
    cols = _csv(tmp_path / "run" / "metrics.csv")
    assert {"validation_accuracy", "validation_loss", "test_accuracy", "train_accuracy"} <= \
        set(cols)
    # the validation accuracy is that of the weights after the epoch, on the held-out rows
    with torch.inference_mode():
        predicted = trainer.protocol.predict(trainer.val_x).argmax(1)
    accuracy = float((predicted == trainer.val_y).double().mean())
    assert math.isclose(trainer.history.columns["validation_accuracy"][-1], accuracy)
    assert accuracy > 0.5
    payload = _payload(tmp_path / "run")
    assert payload["progress"]["steps"] == 68
    assert torch.equal(payload["validation"]["indices"], val)

    # resume checks the split: same data -> fine; changed data -> refused
    shutil.copytree(tmp_path / "run", tmp_path / "run2")
    resumed = Trainer.resume(tmp_path / "run", progress=False)
    assert torch.equal(resumed.validation_indices, val)
    _small_digits(tmp_path / "small.npz", 400)
    with pytest.raises(NeurosimError, match="the training data differ"):
        Trainer.resume(tmp_path / "run2", progress=False)
    # ... and so does restore, for a trainer built in Python with another split or none
    _small_digits(tmp_path / "small.npz", 410)
    net = Trainer.from_model_text(text, progress=False).network
    for validation in (0.2, 0.25, None):
        other = Trainer(net, DirectFeedback(), {"path": str(tmp_path / "small.npz")},
                        {"epochs": 4}, validation=validation, progress=False)
        if validation == 0.2:
            other.restore(tmp_path / "run")
            assert other.epoch == 4 and torch.equal(other.validation_indices, val)
            continue
        with pytest.raises(NeurosimError, match="validation split \\(or its absence\\) differs"):
            other.restore(tmp_path / "run")
    # a run without a split cannot be continued with one (its training rows would change)
    plain = Trainer.from_model_text(_dfa(**{'dataset = "digits"': 'path = "small.npz"'}),
                                    base_dir=tmp_path, progress=False, epochs=1)
    plain.fit(tmp_path / "plain", log=None)
    other = Trainer(net, DirectFeedback(), {"path": str(tmp_path / "small.npz")}, {},
                    validation=0.2, progress=False)
    with pytest.raises(NeurosimError, match="validation split \\(or its absence\\) differs"):
        other.restore(tmp_path / "plain")


# --------------------------------------------------------------------------- (e) schedules
class _Probe:
    """Logs (epoch, lr_scale) each time it runs and nudges its weight (to see it ran)."""

    def __init__(self):
        self.log: list = []

    def update(self, ctx) -> None:
        self.log.append((ctx.epoch, ctx.lr_scale))
        (ctx.weight if hasattr(ctx, "weight") else ctx.bias).add_(1e-3)


@register_rule
class ScheduleProbe(_Probe, PlasticityRule):
    name = "test_schedule_probe"


@register_rule
class UnscheduledProbe(_Probe, PlasticityRule):
    name = "test_unscheduled_probe"
    scheduled = False


@register_rule
class PopulationScheduleProbe(_Probe, PopulationRule):
    name = "test_population_schedule_probe"


PROBE_TEXT = """
[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "y"
type = "interneuron"
size = 2
activation = "linear"
rules = [{ type = "test_population_schedule_probe", warmup = { epochs = 1, mode = "alone" } }]

[[projection]]
name = "a"
source = "x"
target = "y"
scale = 0.1
rules = [{ type = "test_schedule_probe", schedule = { type = "step", milestones = [1, 3], factor = 0.1 } }]

[[projection]]
name = "b"
source = "x"
target = "y"
scale = 0.1
rules = [{ type = "test_schedule_probe" }]

[[projection]]
name = "c"
source = "x"
target = "y"
scale = 0.1
rules = [{ type = "test_unscheduled_probe" }]

[[projection]]
name = "d"
source = "x"
target = "y"
scale = 0.1
rules = [{ type = "test_schedule_probe", warmup = { epochs = 2, mode = "frozen" } }]

[data]
path = "probe.npz"

[protocol]
type = "relax"
T = 2

[training]
epochs = 4
batch_size = 4
output = "y"
lr_schedule = { type = "exponential", gamma = 0.5 }
"""


def _logs(trainer) -> dict:
    net = trainer.network
    logs = {p: net.projection(p).rules[0].log for p in "abcd"}
    logs["y"] = net.population("y").rules[0].log
    return logs


def test_per_rule_schedules_and_warmups(tmp_path):
    np.savez(tmp_path / "probe.npz", train_x=np.random.default_rng(0).random((8, 4),
                                                                          dtype=np.float32))
    (tmp_path / "probe.toml").write_text(PROBE_TEXT)
    trainer = Trainer.from_model_file(tmp_path / "probe.toml", progress=False)
    d0, c0 = trainer.net.weights["d"].clone(), trainer.net.weights["c"].clone()
    trainer.fit(tmp_path / "run", epochs=1, log=None)
    assert torch.equal(trainer.net.weights["c"], c0)         # only the "alone" rule ran
    shutil.copytree(tmp_path / "run", tmp_path / "resumed")
    trainer.fit(tmp_path / "run", epochs=2, log=None)
    assert torch.equal(trainer.net.weights["d"], d0)         # frozen for epochs 0 and 1
    assert not torch.equal(trainer.net.weights["c"], c0)
    trainer.fit(tmp_path / "run", log=None)

    run = [0.5 ** e for e in range(4)]                       # the run's lr_schedule
    own = [0.1 ** (e >= 1) * 0.1 ** (e >= 3) for e in range(4)]   # x0.1 at epochs 1 and 3

    def expected(epochs, factors):                           # two steps an epoch
        return [(e, factors[e]) for e in epochs for _ in range(2)]

    logs = _logs(trainer)
    assert logs["y"] == expected(range(4), run)              # alone in epoch 0, then with all
    assert logs["a"] == expected(range(1, 4), own)           # its own schedule, not the run's
    assert logs["b"] == expected(range(1, 4), run)
    assert logs["c"] == expected(range(1, 4), [1.0] * 4)     # scheduled = False
    assert logs["d"] == expected(range(2, 4), run)           # frozen for 2 epochs
    assert [float(v) for v in _csv(tmp_path / "run" / "metrics.csv")["lr_scale"]] == run

    # a run resumed inside a warm-up counts its epochs from the start of the run
    resumed = Trainer.resume(tmp_path / "resumed", progress=False)
    resumed.fit(tmp_path / "resumed", log=None)
    logs = _logs(resumed)
    assert logs["d"] == expected(range(2, 4), run) and logs["y"] == expected(range(1, 4), run)
    assert logs["a"] == expected(range(1, 4), own)
    for name, w in trainer.net.weights.items():
        assert torch.equal(w, resumed.net.weights[name]), name


@pytest.mark.parametrize("spec, message", [
    ('warmup = { epochs = 1, mode = "solo" }', 'warmup mode must be "frozen" or "alone"'),
    ("warmup = { epochs = -1 }", "warmup epochs must be an integer >= 0"),
    ("warmup = { epoch = 1 }", "warmup has unknown keys ['epoch']"),
    ('schedule = { type = "stepp" }', 'unknown schedule "stepp". Did you mean "step"?'),
    ('schedule = { type = "step", milestones = [3, 1] }', "milestones must increase"),
])
def test_per_rule_setting_errors(spec, message):
    text = PROBE_TEXT.replace('rules = [{ type = "test_schedule_probe" }]',
                              f'rules = [{{ type = "test_schedule_probe", {spec} }}]')
    with pytest.raises(ConfigError) as info:
        Trainer.from_model_text(text, where="m.toml", progress=False)
    assert message in str(info.value) and 'm.toml [[projection]] #2 "b" rules[0]' in \
        str(info.value)


# --------------------------------------------------------------------------- (f) protocol state
def test_protocol_state_round_trip(tmp_path):
    a = Trainer.from_model_text(DFA_TEXT, progress=False)
    feedback = a.protocol.feedback["h"].clone()
    a.fit(tmp_path / "a", epochs=1, log=None)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    a.fit(tmp_path / "a", epochs=2, log=None)
    saved = _payload(tmp_path / "b")["protocol"]
    assert list(saved) == ["feedback"] and torch.equal(saved["feedback"]["h"], feedback)

    # restore takes the matrix from the checkpoint, not from the protocol's own seeded draw
    other = Trainer.from_model_text(DFA_TEXT, progress=False, seed=5)
    assert not torch.equal(other.protocol.feedback["h"], feedback)
    other.restore(tmp_path / "b")
    assert torch.equal(other.protocol.feedback["h"], feedback)

    # resumed in this process and in a fresh one: the uninterrupted run, bit for bit
    b = Trainer.resume(tmp_path / "b", progress=False)
    assert torch.equal(b.protocol.feedback["h"], feedback)
    b.fit(tmp_path / "b", epochs=2, log=None)
    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "neurosim.cli", "resume", str(tmp_path / "c"),
                           "--epochs", "2", "--quiet"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path},
                          timeout=120)
    assert done.returncode == 0, done.stderr
    pa = _payload(tmp_path / "a")
    for run in ("b", "c"):
        p = _payload(tmp_path / run)
        assert torch.equal(p["protocol"]["feedback"]["h"], feedback)
        for name, w in pa["network"].items():
            assert torch.equal(w, p["network"][name]), (run, name)
        _same_metrics(pa["metrics"], p["metrics"])

    # another protocol is refused by restore; a protocol without state refuses saved state
    stateless = Trainer.from_model_text(_dfa(**{f"{ME}:DirectFeedback":
                                                f"{ME}:StatelessFeedback"}), progress=False)
    with pytest.raises(NeurosimError, match="trained with the protocol .*test_direct_feedback"):
        stateless.restore(tmp_path / "b")
    with pytest.raises(ConfigError, match="has no state but the checkpoint holds \\['feedback'\\]"):
        stateless.protocol.load_state_dict(pa["protocol"])


# --------------------------------------------------------------------------- rule hooks
@register_rule
class ReportingOja(OjaForTest):
    """Oja's rule that reports |w| each step and checks its projection at setup."""

    name = "test_reporting_oja"

    def setup(self, net, owner) -> None:
        if net.weights[owner.name].shape[0] != 1:
            raise ConfigError("needs exactly one output neuron")

    def update(self, ctx) -> None:
        super().update(ctx)
        ctx.report("norm", ctx.weight.norm())


def test_rules_report_step_metrics_and_check_themselves_at_setup(tmp_path):
    x, _ = _gaussian(400)
    np.savez(tmp_path / "gauss.npz", train_x=x, test_x=x[:50])
    text = OJA_TEXT.replace('type = "test_oja"', 'type = "test_reporting_oja"')
    trainer = Trainer.from_model_text(text, base_dir=tmp_path, progress=False, epochs=2)
    trainer.fit(tmp_path / "run", log=None)
    norms = trainer.history.columns["train_w_norm"]
    assert len(norms) == 2 and 0.2 < norms[0] and abs(norms[1] - 1.0) < 0.3
    wide = text.replace('size = 1\n', 'size = 2\n')
    with pytest.raises(ConfigError, match='rule "test_reporting_oja" on w: needs exactly one '
                                          'output neuron'):
        Trainer.from_model_text(wide, base_dir=tmp_path, progress=False)


def test_a_schedule_on_an_unscheduled_rule_is_an_error():
    text = PROBE_TEXT.replace('rules = [{ type = "test_schedule_probe" }]',
                              'rules = [{ type = "test_unscheduled_probe", schedule = '
                              '{ type = "step", milestones = [1] } }]')
    with pytest.raises(ConfigError, match='"test_unscheduled_probe" is not scheduled'):
        Trainer.from_model_text(text, progress=False)


def test_resume_leaves_global_rngs_alone_and_detects_reordered_data(tmp_path):
    _small_digits(tmp_path / "small.npz", 200)
    text = _dfa(**{'dataset = "digits"': 'path = "small.npz"\nvalidation = 0.25',
                   "epochs = 2": "epochs = 1"})
    (tmp_path / "model.toml").write_text(text)
    Trainer.from_model_file(tmp_path / "model.toml", progress=False).fit(tmp_path / "run",
                                                                          log=None)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = _global_rng()
    Trainer.resume(tmp_path / "run", progress=False)
    assert _same_global_rng(before, _global_rng())
    data = dict(np.load(tmp_path / "small.npz"))
    data["train_x"] = data["train_x"][::-1].copy()                     # same rows, reordered
    np.savez(tmp_path / "small.npz", **data)
    with pytest.raises(NeurosimError, match="the training data differ"):
        Trainer.resume(tmp_path / "run", progress=False)
