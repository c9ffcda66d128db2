"""PEPITA (neurosim.protocols.pepita, neurosim.plasticity.pepita) against the spec
(../shared/specs/pepita.md): one step equal to a literal float64 implementation of the
equations (2 and 3 layers, dropout masks shared between the passes, both output errors, both
signs, momentum), and the properties the spec lists."""
from __future__ import annotations

import math

import pytest
import torch

import neurosim.graph as g
from neurosim.cli import main
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError
from neurosim.metrics.weight_angle import weight_angle
from neurosim.protocols import Pepita
from neurosim.training import Trainer

F64 = torch.float64


def chain_network(sizes, hidden="relu", output="softmax", lr=0.1, momentum=0.9, **rule):
    pops = [g.InputPopulation("x", sizes[0])]
    names = [f"h{i}" for i in range(1, len(sizes) - 1)] + ["out"]
    for i, (name, size) in enumerate(zip(names, sizes[1:])):
        pops.append(g.PyramidalPopulation(name, size, leak=0.0, basal=1.0, apical=0.0,
                                          activation=output if name == "out" else hidden))
    projs = [g.Projection(f"w{i + 1}", src, tgt, "basal", init="he_uniform",
                          rules=[{"type": "pepita", "lr": lr, "momentum": momentum, **rule}])
             for i, (src, tgt) in enumerate(zip(["x", *names[:-1]], names))]
    return g.Network(pops, projs, name="chain")


def bound(sizes, seed=0, **options):
    rule = {k: options.pop(k) for k in ("lr", "momentum", "hidden", "weight_decay", "hebbian")
            if k in options}
    net = CompiledNetwork(chain_network(sizes, **rule), dtype=F64, seed=seed)
    return net, Pepita(**options).bind(net, seed=seed + 7)


def literal_step(weights, F, x, t, masks, *, lr, momentum, velocity, sign, output_error,
                 hidden=torch.relu, normalize=False):
    """The spec's equations written out: h_l = relu(W_l h_{l-1}) * m_l, softmax output,
    e = h_L - t, x_mod = x +- F e, second pass with the same masks, dW and momentum."""
    def forward(inp):
        hs = [inp]
        for i, w in enumerate(weights):
            a = hs[-1] @ w.T
            if i == len(weights) - 1:
                hs.append(torch.softmax(a, dim=1))
            else:
                h = hidden(a)
                if normalize:                 # the follow-up's h / |h|_F over the batch
                    h = h / torch.sqrt((h ** 2).sum())
                hs.append(h * masks[i])
        return hs

    h = forward(x)
    e = h[-1] - t
    x_mod = x + sign * e @ F.T
    hm = forward(x_mod)
    e_out = hm[-1] - t if output_error == "modulated" else e
    batch = x.shape[0]
    new_w, new_v = [], []
    for i, w in enumerate(weights):
        if i == len(weights) - 1:
            grad = e_out.T @ hm[i] / batch
        else:
            grad = (h[i + 1] - hm[i + 1]).T @ hm[i] / batch
        v = momentum * velocity[i] - lr * grad
        new_v.append(v)
        new_w.append(w + v)
    return new_w, new_v


@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 9, 7, 4]])
@pytest.mark.parametrize("sign,output_error,normalize", [(1, "modulated", False),
                                                        (-1, "standard", False),
                                                        (1, "modulated", True)])
def test_steps_equal_a_literal_implementation(sizes, sign, output_error, normalize):
    drop = 0.3
    net, protocol = bound(sizes, sign=sign, output_error=output_error, dropout=drop,
                          normalize=normalize)
    generator = torch.Generator().manual_seed(5)
    data = torch.Generator().manual_seed(11)
    weights = [net.weights[f"w{i + 1}"].clone() for i in range(len(sizes) - 1)]
    velocity = [torch.zeros_like(w) for w in weights]
    for step in range(3):
        x = torch.rand(8, sizes[0], generator=data, dtype=F64)
        t = torch.nn.functional.one_hot(torch.randint(0, sizes[-1], (8,), generator=data),
                                        sizes[-1]).to(F64)
        replay = torch.Generator().manual_seed(0)
        replay.set_state(generator.get_state())
        masks = [(torch.rand(8, n, generator=replay, dtype=F64) >= drop).to(F64) / (1 - drop)
                 for n in sizes[1:-1]]
        weights, velocity = literal_step(weights, protocol.F, x, t, masks, lr=0.1,
                                         momentum=0.9, velocity=velocity, sign=sign,
                                         output_error=output_error, normalize=normalize)
        protocol.train_step(x, t, generator, step=step)
        for i, w in enumerate(weights):
            assert float((net.weights[f"w{i + 1}"] - w).abs().max()) < 1e-10, (step, i)


def test_F_shape_range_and_fixed():
    net, protocol = bound([20, 16, 5], dropout=0.1)
    F0 = protocol.F.clone()
    assert F0.shape == (20, 5)
    assert float(F0.abs().max()) <= 0.05 * math.sqrt(6 / 20)
    assert float(F0.std()) == pytest.approx(0.05 * math.sqrt(2 / 20), rel=0.35)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(16, 20, generator=gen, dtype=F64)
        t = torch.eye(5, dtype=F64)[torch.randint(0, 5, (16,), generator=gen)]
        protocol.train_step(x, t, gen)
    assert torch.equal(protocol.F, F0)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_with_F_zero_only_the_readout_learns(dropout):
    """x_mod = x, so the two passes agree exactly, hidden updates vanish: only if the dropout
    masks are shared between the passes."""
    net, protocol = bound([12, 10, 8, 3], dropout=dropout, F_scale=0.0)
    before = {k: w.clone() for k, w in net.weights.items()}
    gen = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.rand(6, 12, generator=gen, dtype=F64)
        t = torch.eye(3, dtype=F64)[torch.randint(0, 3, (6,), generator=gen)]
        protocol.train_step(x, t, gen)
    assert torch.equal(net.weights["w1"], before["w1"])
    assert torch.equal(net.weights["w2"], before["w2"])
    assert not torch.equal(net.weights["w3"], before["w3"])


def test_linear_network_hidden_update_is_W_F_e():
    """Identity hidden layer: h_1 - h_1^mod = -W_1 F e, so dW_1 = +lr W_1 F e x_mod^T / B."""
    net, protocol = bound([7, 5, 3], hidden="linear", momentum=0.0, lr=0.2)
    w1 = net.weights["w1"].clone()
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, 7, generator=gen, dtype=F64)
    t = torch.eye(3, dtype=F64)[[0, 1, 2, 0]]
    e = net.r_of(protocol.infer(x), "out") - t
    x_mod = x + e @ protocol.F.T
    protocol.train_step(x, t, gen)
    expected = w1 + 0.2 * (w1 @ protocol.F @ e.T) @ x_mod / 4
    assert float((net.weights["w1"] - expected).abs().max()) < 1e-14


def test_no_autograd_graph_is_needed():
    net, protocol = bound([6, 5, 3])
    before = net.weights["w1"].clone()
    x, t = torch.rand(4, 6, dtype=F64), torch.eye(3, dtype=F64)[[0, 1, 2, 1]]
    with torch.no_grad():
        protocol.train_step(x, t, torch.Generator().manual_seed(0))
    assert not torch.equal(net.weights["w1"], before)
    assert not any(w.requires_grad for w in net.weights.values())


def train_angles(sign: int, steps: int = 600) -> list[float]:
    """Angle between (W_2 W_1)^T and F while a 64-64-10 net learns the digits."""
    from neurosim.data import load_dataset
    data = load_dataset("digits", dtype=F64)
    net, protocol = bound([64, 64, 10], sign=sign, lr=0.05)
    gen = torch.Generator().manual_seed(2)
    targets = torch.eye(10, dtype=F64)[data.train_y.long()] if data.train_y.ndim == 1 \
        else data.train_y
    angles = []
    for step in range(steps):
        batch = torch.randint(0, len(data.train_x), (32,), generator=gen)
        protocol.train_step(data.train_x[batch], targets[batch], gen)
        if step % 100 == 0 or step == steps - 1:
            product = net.weights["w2"] @ net.weights["w1"]
            angles.append(weight_angle(product.T, protocol.F))
    return angles


def test_F_angle_rises_above_95_degrees_and_falls_below_90_with_the_other_sign():
    plus = train_angles(1)
    assert 80 < plus[0] < 100 and plus[-1] > 95, plus
    minus = train_angles(-1)
    assert minus[-1] < 90, minus


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="sign"):
        bound([4, 3, 2], sign=0)
    with pytest.raises(ConfigError, match="output_error"):
        bound([4, 3, 2], output_error="first")
    with pytest.raises(ConfigError, match="dropout"):
        bound([4, 3, 2], dropout=1.0)
    with pytest.raises(ConfigError, match='unknown hidden population "h9"'):
        bound([4, 3, 2], dropout={"h9": 0.1})
    with pytest.raises(ConfigError, match="lr"):
        bound([4, 3, 2], lr=-1.0)
    net = CompiledNetwork(g.Network([
        g.InputPopulation("x", 4),
        g.PyramidalPopulation("out", 2, leak=0.5, basal=1.0, apical=0.0, activation="softmax")],
        [g.Projection("w", "x", "out", "basal")]), dtype=F64)
    with pytest.raises(ConfigError, match="computes sigma"):
        Pepita(net)


def test_digits_model_trains_and_resumes_exactly(tmp_path):
    from pathlib import Path
    model = Path(__file__).resolve().parents[1] / "models" / "pepita_digits.toml"
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", str(model), "--out", str(whole), "--epochs", "6", "--quiet"]) == 0
    assert main(["train", str(model), "--out", str(run), "--epochs", "3", "--quiet"]) == 0
    assert main(["resume", str(run), "--epochs", "6", "--quiet"]) == 0
    a, b = Trainer.resume(run, progress=False), Trainer.resume(whole, progress=False)
    for name in a.net.weights:
        assert torch.equal(a.net.weights[name], b.net.weights[name])
    assert torch.equal(a.protocol.F, b.protocol.F)
    assert list(a.history.rows())[-1]["test_accuracy"] == \
        list(b.history.rows())[-1]["test_accuracy"] > 0.9


def test_review_fixes_shared_rule_targets_gain_and_state():
    from neurosim.plasticity import PepitaRule
    shared = PepitaRule(lr=0.1, momentum=0.9)
    net = g.Network([g.InputPopulation("x", 4),
                     g.PyramidalPopulation("h1", 3, leak=0.0, basal=1.0, apical=0.0,
                                           activation="relu"),
                     g.PyramidalPopulation("out", 2, leak=0.0, basal=1.0, apical=0.0,
                                           activation="softmax")],
                    [g.Projection("w1", "x", "h1", "basal", rules=[shared]),
                     g.Projection("w2", "h1", "out", "basal", rules=[shared])])
    with pytest.raises(ConfigError, match="give each projection its own rule"):
        Pepita().bind(CompiledNetwork(net, dtype=F64))
    with pytest.raises(ConfigError, match=r"momentum: a number in \[0, 1\)"):
        PepitaRule(lr=0.1, momentum=1.0)
    compiled, protocol = bound([4, 3, 2])
    x = torch.rand(2, 4, dtype=F64)
    with pytest.raises(ConfigError, match="one-hot targets"):
        protocol.train_step(x, torch.tensor([0, 1]), torch.Generator())
    with pytest.raises(ConfigError, match="the model and the checkpoint disagree"):
        protocol.load_state_dict({})
    before = compiled.r_of(protocol.infer(x), "h1").clone()        # a changed gain counts
    compiled.network.projections[0].gain = 2.0
    assert torch.allclose(compiled.r_of(protocol.infer(x), "h1"), 2 * before)
