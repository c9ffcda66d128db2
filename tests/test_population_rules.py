"""Population rules: the autograd + Adam local-objective rule of examples/local_objective.py
(it learns, its state survives checkpoints bit for bit, in-process and in a fresh process),
what a population rule sees, misattached rules, and what ``needs_grad`` changes.

Small networks and few epochs: the file runs in a few seconds on 2 CPU cores.
"""
from __future__ import annotations

import importlib
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import neurosim.graph as g
from neurosim.data import Dataset, load_dataset
from neurosim.errors import ConfigError
from neurosim.io import load_checkpoint
from neurosim.plasticity import PlasticityRule, PopulationRule, build_rule, register_rule
from neurosim.protocols import Relax
from neurosim.training import Trainer, TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODEL = EXAMPLES / "local_objective_digits.toml"
TIMING = {"seconds", "train_seconds"}


@pytest.fixture
def lo(monkeypatch):
    """examples/local_objective.py, importable as "local_objective" (model files name its
    classes "local_objective:LocalObjective" / "local_objective:LocalObjectiveMetric")."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("local_objective")


def _digits(n_train: int, n_test: int) -> Dataset:
    ds = load_dataset("digits")
    return Dataset("digits_small", ds.train_x[:n_train], None, ds.test_x[:n_test], None, None,
                   (64,), "none")


def _coder(lo, size: int = 16, **rule) -> g.Network:
    """x (64) -> h (sigmoid, u* = W x + b) carrying the local-objective rule."""
    rule = lo.LocalObjective(**{"lr": 0.01, **rule})
    return g.Network([
        g.InputPopulation("x", 64),
        g.PyramidalPopulation("h", size, leak=0.0, basal=1.0, apical=0.0, activation="sigmoid",
                              rules=[rule]),
    ], [g.Projection("x_h", "x", "h", compartment="basal", init="xavier_uniform")])


# --------------------------------------------------------------------------- (a) it learns
def test_local_objective_increases_over_epochs(lo):
    ds = _digits(400, 200)
    metric = lo.LocalObjectiveMetric("h")
    trainer = Trainer(_coder(lo), Relax(T=20, step=0.5), ds,
                      TrainingConfig(epochs=4, batch_size=20, output="h", metrics=(metric,)),
                      progress=False)
    rule = trainer.network.population("h").rules[0]

    # the rule's model of its population is the network's relaxed activity
    x = ds.train_x[:50]
    with torch.inference_mode():
        relaxed = trainer.net.r_of(trainer.protocol.infer(x), "h").clone()
    recomputed = torch.sigmoid(x @ trainer.net.weights["x_h"].T + trainer.net.biases["h"])
    assert (relaxed - recomputed).abs().max() < 1e-5

    def objective(x) -> float:
        return float(lo.objective_terms(x, trainer.net.weights["x_h"], trainer.net.biases["h"],
                                        rho=rule.rho, sparsity=rule.sparsity)["objective"])

    start = trainer.evaluate(ds.test_x, None, "test", trainer.metrics)
    start_train = objective(ds.train_x)
    bias0 = trainer.net.biases["h"].clone()
    for _ in range(4):
        trainer.train_epoch()
    values = [start["objective_h"], *trainer.history.columns["objective_h"]]
    assert all(b > a for a, b in zip(values, values[1:])), values          # every epoch
    assert values[-1] > values[0] + 0.5 * abs(values[0])                     # by a lot
    rec = [start["reconstruction_h"], *trainer.history.columns["reconstruction_h"]]
    assert rec[-1] < 0.5 * rec[0], rec
    assert objective(ds.train_x) > start_train                # on the training rows too
    assert rule.step == 4 * 20 and not torch.equal(trainer.net.biases["h"], bias0)
    # the metric is the rule's objective over the whole evaluation set
    assert math.isclose(trainer.history.columns["objective_h"][-1], objective(ds.test_x),
                        rel_tol=1e-4)
    assert not any("accuracy" in k or "loss" in k for k in trainer.history.columns)


def test_adam_step_is_the_textbook_one(lo):
    """One update by hand: Adam with bias correction on the autograd gradient of J."""
    ds = _digits(40, 10)
    trainer = Trainer(_coder(lo, size=6, lr=0.05), Relax(T=20, step=0.5), ds,
                      TrainingConfig(epochs=1, batch_size=40, output="h"), progress=False)
    rule = trainer.network.population("h").rules[0]
    w0, b0 = trainer.net.weights["x_h"].clone(), trainer.net.biases["h"].clone()
    params = {"bias": b0.clone().requires_grad_(), "x_h": w0.clone().requires_grad_()}
    J = lo.objective_terms(ds.train_x, params["x_h"], params["bias"], rho=rule.rho,
                           sparsity=rule.sparsity)["objective"]
    grads = dict(zip(params, torch.autograd.grad(J, list(params.values()))))
    trainer.train_epoch()                      # one step: the whole training set is one batch
    assert rule.step == 1
    for name, p0, live in (("bias", b0, trainer.net.biases["h"]),
                           ("x_h", w0, trainer.net.weights["x_h"])):
        grad = grads[name]
        m, v = 0.1 * grad, 0.001 * grad * grad              # (1 - beta1) g, (1 - beta2) g^2
        expected = p0 + 0.05 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
        assert torch.allclose(live, expected, rtol=0, atol=1e-6), name
        assert torch.allclose(rule.m[name], m, rtol=0, atol=1e-7)     # float32 sums
        assert torch.allclose(rule.v[name], v, rtol=0, atol=1e-9)
        assert not live.requires_grad and not live.is_inference()


# --------------------------------------------------------------------------- (b) checkpoints
def _payload(run: Path) -> dict:
    return load_checkpoint(run / "run.h5", kind="training").payload


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["progress"] == b["progress"]
    for group in ("network", "biases"):
        assert sorted(a[group]) == sorted(b[group])
        for name, value in a[group].items():
            assert torch.equal(value, b[group][name]), (group, name)
    assert sorted(a["rules"]) == sorted(b["rules"]) == ["h.0"]
    ra, rb = a["rules"]["h.0"], b["rules"]["h.0"]
    assert torch.equal(ra["step"], rb["step"])
    for moment in ("m", "v"):
        assert sorted(ra[moment]) == sorted(rb[moment]) == ["bias", "x_h"]
        for key in ra[moment]:
            assert torch.equal(ra[moment][key], rb[moment][key]), (moment, key)
    assert torch.equal(a["rng"]["generators"]["trainer"], b["rng"]["generators"]["trainer"])
    assert list(a["metrics"]) == list(b["metrics"])
    for key in set(a["metrics"]) - TIMING:
        assert torch.equal(a["metrics"][key], b["metrics"][key]), key


def test_adam_state_survives_checkpoint_in_process_and_in_a_fresh_process(lo, tmp_path):
    a = Trainer.from_model_file(MODEL, epochs=2, progress=False)
    assert type(a.network.population("h").rules[0]) is lo.LocalObjective
    a.fit(tmp_path / "a", epochs=1, log=None)
    for copy in ("b", "c"):
        shutil.copytree(tmp_path / "a", tmp_path / copy)
    a.fit(tmp_path / "a", epochs=2, log=None)

    saved = _payload(tmp_path / "b")["rules"]["h.0"]
    assert int(saved["step"]) == 72                              # ceil(1437 / 20) steps
    assert saved["m"]["x_h"].shape == (32, 64) and saved["v"]["bias"].shape == (32,)
    assert float(saved["v"]["x_h"].min()) >= 0 and float(saved["m"]["x_h"].abs().max()) > 0

    # in-process resume: the rebuilt rule holds the saved moments before training on
    b = Trainer.resume(tmp_path / "b", progress=False)
    rule = b.network.population("h").rules[0]
    assert rule.step == 72
    for moment in ("m", "v"):
        for key, value in saved[moment].items():
            assert torch.equal(getattr(rule, moment)[key], value)
    b.fit(tmp_path / "b", epochs=2, log=None)

    # a fresh process: `neurosim resume` finds the rule through the model text's import path
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "neurosim.cli", "resume", str(tmp_path / "c"),
                           "--epochs", "2", "--quiet"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "epoch 2:" in done.stdout

    pa = _payload(tmp_path / "a")
    assert int(pa["rules"]["h.0"]["step"]) == 144
    _assert_same_run(pa, _payload(tmp_path / "b"))
    _assert_same_run(pa, _payload(tmp_path / "c"))
    assert pa["metrics"]["objective_h"][1] > pa["metrics"]["objective_h"][0]


def test_rule_state_from_another_rule_is_refused(lo):
    rule = lo.LocalObjective()
    with pytest.raises(ConfigError, match="expected step, m and v"):
        rule.load_state_dict({"velocity": torch.zeros(2)})
    rule.load_state_dict({})
    assert rule.step == 0 and rule.m == {} and rule.state_dict() == {}


# --------------------------------------------------------------------------- (c) what it sees
@register_rule
class PopulationProbe(PopulationRule):
    """Records a population context; adds ``shift`` to the bias and to every incoming
    weight (to see the writes reach the network and the masks re-applied)."""

    name = "test_population_probe"

    def __init__(self, shift: float = 0.0):
        self.shift = shift
        self.seen: dict = {}

    def update(self, ctx) -> None:
        self.seen = dict(
            population=ctx.population.name, incoming=[q.name for q in ctx.incoming],
            weights={k: (w.data_ptr(), w.clone()) for k, w in ctx.weights.items()},
            fixed={k: w.data_ptr() for k, w in ctx.fixed_weights.items()},
            bias=(ctx.bias.data_ptr(), ctx.bias.clone()), parameters=list(ctx.parameters()),
            phases=ctx.phases, batch=ctx.batch_size,
            pre={q.name: ctx.pre(q.name, "free").clone() for q in ctx.incoming},
            activity=ctx.activity("free").clone(), soma=ctx.potential("free").clone(),
            basal=ctx.potential("free", "basal").clone(),
            apical=ctx.potential("free", "apical").clone())
        with pytest.raises(ConfigError, match='unknown incoming projection "x_hh".*Did you '
                                              'mean "x_h"'):
            ctx.pre("x_hh", "free")
        with pytest.raises(ConfigError, match='asked for phase "nudged"'):
            ctx.activity("nudged")
        for w in ctx.weights.values():
            w.add_(self.shift)
        ctx.bias.add_(self.shift)


def _probed_network(probe) -> g.Network:
    """h receives a masked basal input and a fixed (non-plastic) soma input from x, a plastic
    apical feedback from o, and an identity autapse (no weight matrix)."""
    mask = torch.ones(5, 6)
    mask[0, :3] = 0
    return g.Network([
        g.InputPopulation("x", 6),
        g.PyramidalPopulation("h", 5, leak=0.5, basal=1.0, apical=0.5, activation="sigmoid",
                              bias=[0.1, 0.2, 0.3, 0.4, 0.5], rules=[probe]),
        g.InterneuronPopulation("o", 3, activation="relu"),
    ], [
        g.Projection("x_h", "x", "h", compartment="basal", init="xavier_uniform", mask=mask),
        g.Projection("c_h", "x", "h", init="ones", scale=0.2, plastic=False),
        g.Projection("o_h", "o", "h", compartment="apical", init="normal", scale=0.3),
        g.Projection("aut_h", "h", "h", compartment="apical", init="identity", gain=0.1),
        g.Projection("h_o", "h", "o", init="xavier_uniform"),
    ])


def _inputs(n: int) -> torch.Tensor:
    return torch.rand(n, 6, generator=torch.Generator().manual_seed(1))


def test_a_population_rule_sees_every_incoming_weight_and_its_bias():
    probe = PopulationProbe(shift=0.01)
    x = _inputs(8)
    ds = Dataset("probe", x, None, None, None, None, (6,), "none")
    trainer = Trainer(_probed_network(probe), Relax(T=40, step=0.2), ds,
                      TrainingConfig(epochs=1, batch_size=8, output="h"), progress=False)
    net = trainer.net
    before = {k: w.clone() for k, w in net.weights.items()}
    bias_before = net.biases["h"].clone()
    with torch.inference_mode():                    # as in Trainer.train_epoch
        trainer.protocol.train_step(x, None, trainer.generator)
    seen = probe.seen
    assert seen["population"] == "h" and seen["phases"] == ("free",) and seen["batch"] == 8
    assert seen["incoming"] == ["x_h", "c_h", "o_h", "aut_h"]     # declaration order
    assert list(seen["weights"]) == ["x_h", "o_h"]       # plastic, with a matrix
    assert seen["fixed"] == {"c_h": net.weights["c_h"].data_ptr()}    # plastic = false
    assert seen["parameters"] == ["bias", "x_h", "o_h"]
    for name, (ptr, value) in seen["weights"].items():             # the live tensors
        assert ptr == net.weights[name].data_ptr() and torch.equal(value, before[name])
    assert seen["bias"][0] == net.biases["h"].data_ptr()
    assert torch.equal(seen["bias"][1], bias_before)
    assert torch.equal(seen["bias"][1], torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]))
    # presynaptic activities by projection, and the population's own activity / potentials
    r_h, r_o = seen["activity"], seen["pre"]["o_h"]
    assert torch.equal(seen["pre"]["x_h"], x) and torch.equal(seen["pre"]["c_h"], x)
    assert torch.equal(seen["pre"]["aut_h"], r_h)
    assert torch.allclose(r_h, torch.sigmoid(seen["soma"]), rtol=0, atol=1e-6)
    assert torch.allclose(seen["basal"], x @ before["x_h"].T, atol=1e-6)
    assert torch.allclose(seen["apical"], r_o @ before["o_h"].T + 0.1 * r_h, atol=1e-6)
    # its in-place writes reach the network; the mask is re-applied afterwards
    assert torch.allclose(net.biases["h"], bias_before + 0.01)
    assert torch.allclose(net.weights["o_h"], before["o_h"] + 0.01)
    mask = net.masks["x_h"]
    assert torch.equal(net.weights["x_h"], (before["x_h"] + 0.01) * mask)
    assert net.weights["x_h"][0, :3].abs().max() == 0
    assert torch.equal(net.weights["c_h"], before["c_h"])          # plastic = false: fixed
    assert torch.equal(net.weights["h_o"], before["h_o"])          # not incoming: untouched
    # the bias a rule learns drives the dynamics (the input-free rest state moves with it)
    with torch.inference_mode():
        u0 = net.u_of(trainer.protocol.infer(torch.zeros(1, 6)), "h").clone()
        net.biases["h"].add_(1.0)
        u1 = net.u_of(trainer.protocol.infer(torch.zeros(1, 6)), "h").clone()
    assert float((u1 - u0).min()) > 0.4          # 1 / (leak + basal + apical) = 0.5, plus feedback


@register_rule
class ProjectionProbe(PlasticityRule):
    name = "test_projection_probe"

    def update(self, ctx) -> None:
        pass


def test_misattached_rules_are_clear_errors(lo):
    # in Python: a population rule on a projection is refused when the trainer binds it ...
    net = g.Network([g.InputPopulation("x", 64),
                     g.PyramidalPopulation("h", 4, leak=0.0, basal=1.0, activation="sigmoid")],
                    [g.Projection("x_h", "x", "h", compartment="basal",
                                  rules=[lo.LocalObjective()])])
    with pytest.raises(ConfigError) as info:
        Trainer(net, "relax", _digits(20, 0), {"output": "h"}, progress=False)
    assert 'rule "local_objective" on projection "x_h" is a population rule' in str(info.value)
    assert 'attach it to the target population ("h")' in str(info.value)
    # ... and a projection rule on a population when the population is declared
    with pytest.raises(ConfigError, match='population "h": rule "test_projection_probe" is a '
                                          'projection rule; attach it to a \\[\\[projection\\]\\]'):
        g.PyramidalPopulation("h", 4, rules=[ProjectionProbe()])

    # in a model file, with the table named
    text = MODEL.read_text(encoding="utf-8")
    proj_rule = text.replace('init = "xavier_uniform"\n', 'init = "xavier_uniform"\nrules = '
                             '[{ type = "local_objective:LocalObjective" }]\n')
    with pytest.raises(ConfigError, match='on projection "x_h" is a population rule'):
        Trainer.from_model_text(proj_rule, where="m.toml", progress=False)
    pop_rule = text.replace('type = "local_objective:LocalObjective", lr = 0.01, rho = 0.1, '
                            'sparsity = 0.5', 'type = "ep_contrastive", lr = 0.1')
    assert pop_rule != text
    with pytest.raises(ConfigError) as info:
        Trainer.from_model_text(pop_rule, where="m.toml", progress=False)
    assert str(info.value).startswith('m.toml [[population]] #2 "h": ')
    assert 'rule "ep_contrastive" is a projection rule' in str(info.value)
    inputs_rule = text.replace('type = "input"\nsize = 64\n', 'type = "input"\nsize = 64\n'
                               'rules = [{ type = "local_objective:LocalObjective" }]\n')
    with pytest.raises(ConfigError, match='#1 "x" \\(type input\\): unknown key "rules"'):
        Trainer.from_model_text(inputs_rule, where="m.toml", progress=False)
    # a rule naming a projection the population does not receive fails at its first step
    bad = Trainer(_coder(lo, projection="h_x"), Relax(T=2, step=0.5), _digits(20, 0),
                  TrainingConfig(epochs=1, batch_size=20, output="h"), progress=False)
    with pytest.raises(ConfigError, match='projection "h_x" is not an incoming weighted '
                                          'projection \\(those are: x_h\\)'):
        bad.train_epoch()


# --------------------------------------------------------------------------- (d) needs_grad
class _ModeProbe(PopulationRule):
    """Records the autograd mode and the kind of tensors the context hands out, and what
    happens when it asks autograd for d sum(sigmoid(W x + b)) / d(W, b)."""

    def __init__(self):
        self.seen: dict = {}

    def update(self, ctx) -> None:
        x, r = ctx.pre("x_h", "free"), ctx.activity("free")
        live = ctx.parameters()
        seen = dict(inference_mode=torch.is_inference_mode_enabled(),
                    grad_enabled=torch.is_grad_enabled(), pre_inference=x.is_inference(),
                    activity_inference=r.is_inference(),
                    pre_is_a_copy=x.data_ptr() != ctx.record.activity("x", "free").data_ptr(),
                    weights_inference=live["x_h"].is_inference(), x=x.detach().clone(),
                    error=None, grads=None)
        params = {k: p.detach().requires_grad_() for k, p in live.items()}
        out = torch.sigmoid(x @ params["x_h"].T + params["bias"]).sum()
        try:
            grads = torch.autograd.grad(out, [params["x_h"], params["bias"]])
            seen["grads"] = [t.detach().clone() for t in grads]
        except RuntimeError as err:
            seen["error"] = str(err)
        self.seen = seen


class InferenceModeRule(_ModeProbe):
    name = "test_inference_rule"
    needs_grad = False


class AutogradRule(_ModeProbe):
    name = "test_autograd_rule"
    needs_grad = True


def _mode_trainer(rule) -> Trainer:
    net = g.Network([g.InputPopulation("x", 6),
                     g.PyramidalPopulation("h", 4, leak=0.0, basal=1.0, apical=0.0,
                                           activation="sigmoid", bias=0.2, rules=[rule])],
                    [g.Projection("x_h", "x", "h", compartment="basal")])
    ds = Dataset("modes", _inputs(8), None, None, None, None, (6,), "none")
    return Trainer(net, Relax(T=30, step=0.5), ds, TrainingConfig(epochs=1, batch_size=8,
                                                                 output="h"), progress=False)


def test_needs_grad_false_rules_get_inference_tensors_and_no_autograd():
    """Within Trainer a rule without needs_grad runs under torch.inference_mode: it gets the
    protocol's state buffers themselves (inference tensors, no copy); autograd records
    nothing there, so torch.autograd.grad fails; the live weights stay normal tensors."""
    rule = InferenceModeRule()
    trainer = _mode_trainer(rule)
    trainer.train_epoch()
    seen = rule.seen
    assert seen["inference_mode"] and not seen["grad_enabled"]
    assert seen["pre_inference"] and seen["activity_inference"] and not seen["pre_is_a_copy"]
    assert not seen["weights_inference"]
    assert seen["grads"] is None and "does not require grad" in seen["error"]
    # what it keeps is an inference tensor: it cannot be changed in place outside training
    kept = seen["x"]
    assert kept.is_inference()
    with pytest.raises(RuntimeError, match="Inplace update to inference tensor"):
        kept.add_(1.0)


def test_needs_grad_true_rules_can_differentiate():
    rule = AutogradRule()
    trainer = _mode_trainer(rule)
    w, b = trainer.net.weights["x_h"].clone(), trainer.net.biases["h"].clone()
    trainer.train_epoch()
    seen = rule.seen
    assert not seen["inference_mode"] and seen["grad_enabled"]
    assert not (seen["pre_inference"] or seen["activity_inference"] or seen["weights_inference"])
    assert seen["pre_is_a_copy"] and seen["error"] is None
    x = _inputs(8)
    r = torch.sigmoid(x @ w.T + b)
    slope = r * (1 - r)                              # d sum sigmoid / du, per sample
    assert torch.allclose(seen["grads"][0], slope.T @ x, atol=1e-6)
    assert torch.allclose(seen["grads"][1], slope.sum(0), atol=1e-6)
    # nothing of the graph stays behind on the network's tensors, and training goes on
    for t in (*trainer.net.weights.values(), *trainer.net.biases.values()):
        assert not t.requires_grad and t.grad is None and not t.is_inference()
    trainer.train_epoch()
    assert len(trainer.history) == 2


def test_build_rule_keeps_needs_grad_and_per_rule_keys(lo):
    rule = build_rule({"type": "local_objective:LocalObjective", "lr": 0.02,
                       "schedule": {"type": "step", "milestones": [2], "factor": 0.5},
                       "warmup": {"epochs": 1, "mode": "frozen"}}, "test")
    assert rule.needs_grad and rule.target == "population"
    assert rule.schedule(1) == 1.0 and rule.schedule(2) == 0.5 and rule.warmup.epochs == 1
    assert rule.config()["lr"] == 0.02 and rule.config()["type"] == "local_objective"
    with pytest.raises(ConfigError, match='test: rule "local_objective:LocalObjective": rho '
                                          'must lie in \\(0.0, 1.0\\), got 1.5'):
        build_rule({"type": "local_objective:LocalObjective", "rho": 1.5}, "test")
