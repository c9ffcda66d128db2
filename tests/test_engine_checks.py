"""Checks added with the plug-in redesign: bad run options and plug-in paths are clear
errors before any work, metric settings are checked when the trainer is built, a bias set
after compiling drives the dynamics, ep_contrastive reads its own two phases whatever else a
protocol records, and rule state is writable after training."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import neurosim.graph as g
from neurosim.data import load_dataset
from neurosim.dynamics import CompiledNetwork, NeuralState
from neurosim.errors import ConfigError
from neurosim.models import corinfomax_network
from neurosim.plasticity import PhaseRecord, SynapseContext, build_rule
from neurosim.protocols import EquilibriumPropagation
from neurosim.training import Trainer, TrainingConfig

DIGITS = (Path(__file__).resolve().parents[1] / "models" / "corinfomax_digits.toml").read_text()


@pytest.mark.parametrize("old, new, message", [
    ("threads = 1", "threads = true", "threads: must be a positive integer"),
    ("seed = 0", 'seed = 0\ndevice = "cpux"', 'device: "cpux" is not a device'),
    ('type = "ep" ', 'type = ":Foo" ', 'cannot import protocol ":Foo"'),
    ('metrics = ["weight_angle", "correlative_information"]',
     'metrics = [{ type = "weight_angle", pairs = [["ff2", "zz"]] }]',
     'metrics[0]: weight_angle pairs (projections with weights): unknown projection "zz"'),
    ('metrics = ["weight_angle", "correlative_information"]',
     'metrics = [{ type = "correlative_information", populations = ["x"] }]',
     'population "x" is an input'),
])
def test_bad_options_are_refused_when_the_trainer_is_built(old, new, message):
    assert old in DIGITS
    with pytest.raises(ConfigError) as info:
        Trainer.from_model_text(DIGITS.replace(old, new), where="m.toml", progress=False)
    assert message in str(info.value), str(info.value)


def test_python_options_are_checked_and_must_match_a_compiled_network():
    net = corinfomax_network([64, 20, 10])
    with pytest.raises(ConfigError, match="batch_size: must be a positive integer"):
        Trainer(net, "ep", load_dataset("digits"), TrainingConfig(batch_size=0))
    with pytest.raises(ConfigError, match='dtype: "float16" is not one of'):
        Trainer(net, "ep", load_dataset("digits"), TrainingConfig(dtype="float16"))
    compiled = CompiledNetwork(net, dtype=torch.float64)
    with pytest.raises(ConfigError, match="compiled network is torch.float64 on cpu but the "
                                          "options say float32"):
        Trainer(compiled, "ep", load_dataset("digits"), TrainingConfig())
    trainer = Trainer(net, "ep", {"dataset": "digits", "validation": 0.1}, TrainingConfig())
    trainer.dataset
    assert len(trainer.val_x) == 144                  # [data] validation, given from Python


def test_a_bias_set_after_compiling_drives_the_dynamics():
    net = CompiledNetwork(g.Network([g.InputPopulation("x", 2),
                                     g.PyramidalPopulation("h", 3, leak=1.0, basal=1.0,
                                                           activation="linear")],
                                    [g.Projection("w", "x", "h", compartment="basal",
                                                  init="zeros")]))
    net.biases["h"].fill_(1.0)
    state = net.zero_state(1)
    x = torch.zeros(1, 2)
    net.clamp_inputs(state, {"x": x})
    dynamics = net.phase(net.build_operators(), {"x": x})
    for _ in range(400):
        dynamics.euler_step_(state, 0.05)
    ode = net.u_of(state, "h")
    feedforward = net.u_of(net.feedforward({"x": x})[0], "h")
    decay = 1.0 + 1.0 + 1.0                     # leak + basal + apical (default 1)
    assert torch.allclose(ode, torch.full((1, 3), 1.0 / decay), atol=1e-5)   # du = -d u + b
    assert torch.allclose(feedforward, ode, atol=1e-5)


def test_ep_contrastive_reads_nudged_and_free_whatever_else_is_recorded():
    net = CompiledNetwork(corinfomax_network([4, 3, 2]), dtype=torch.float64)
    g_ = torch.Generator().manual_seed(0)
    states = {p: NeuralState(torch.rand(5, net.n_dyn, generator=g_, dtype=torch.float64),
                             torch.rand(5, net.n_all, generator=g_, dtype=torch.float64))
              for p in ("nudged", "free", "extra")}
    proj = net.network.projection("ff2")
    updates = []
    for phases in (("nudged", "free"), ("nudged", "free", "extra"), ("free", "extra", "nudged")):
        w = net.weights["ff2"].clone()
        record = PhaseRecord(net, {p: states[p] for p in phases}, signals={"beta": 0.5})
        build_rule({"type": "ep_contrastive", "lr": 0.1}).update(
            SynapseContext(record, projection=proj, weight=w))
        updates.append(w)
    assert not torch.equal(updates[0], net.weights["ff2"])
    assert torch.equal(updates[0], updates[1]) and torch.equal(updates[0], updates[2])


def test_rule_state_is_writable_after_training(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    try:
        from momentum_rule import MomentumEP
    finally:
        sys.path.pop(0)
    rule = MomentumEP(lr=0.5, momentum=0.5)
    network = g.Network([g.InputPopulation("x", 64),
                         g.PyramidalPopulation("out", 10, leak=0.5, basal=2.0)],
                        [g.Projection("ff", "x", "out", compartment="basal",
                                      init="xavier_uniform", rules=[rule]),
                         g.Projection("aut", "out", "out", compartment="apical",
                                      init="identity", gain=0.0)])
    ds = load_dataset("digits")
    trainer = Trainer(network, EquilibriumPropagation(T_free=5, T_nudged=3), ds,
                      TrainingConfig(epochs=1), progress=False)
    trainer.fit(tmp_path / "run", log=None)
    assert not rule.velocity.is_inference()
    trainer.protocol.train_step(ds.train_x[:20], trainer._one_hot(ds.train_y[:20]),
                                torch.Generator())            # outside inference mode
