"""Backpropagation and feedback alignment (neurosim.protocols.backprop): steps equal a plain
torch.nn reference (float64, 2 and 3 layers, cross-entropy and MSE, SGD with momentum and Adam,
dropout, biases); feedback alignment with B_l = W_l^T is backpropagation; B is fixed and
checkpointed, resume is bit-exact; every [protocol] key is checked; graphs that are not a
feed-forward chain are refused; the digits models train."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import neurosim.graph as g
from neurosim.cli import main as cli
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError
from neurosim.io import load_checkpoint
from neurosim.protocols import Backprop, FeedbackAlignment, build_protocol
from neurosim.training import Trainer

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def chain_network(sizes, hidden="relu", output="softmax", bias=0.0, extra=()):
    pops = [g.InputPopulation("x", sizes[0])]
    names = [f"h{i}" for i in range(1, len(sizes) - 1)] + ["out"]
    for name, size in zip(names, sizes[1:]):
        pops.append(g.PyramidalPopulation(name, size, leak=0.0, basal=1.0, apical=0.0,
                                          bias=bias,
                                          activation=output if name == "out" else hidden))
    projs = [g.Projection(f"w{i + 1}", src, tgt, "basal", init="he_uniform")
             for i, (src, tgt) in enumerate(zip(["x", *names[:-1]], names))]
    return g.Network(pops, [*projs, *extra], name="chain")


def bound(cls, sizes, seed=0, hidden="relu", output="softmax", bias=0.0, **options):
    net = CompiledNetwork(chain_network(sizes, hidden, output, bias), dtype=F64, seed=seed)
    return net, cls(**options).bind(net, seed=seed)


ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
               "softmax": lambda a: torch.softmax(a, dim=1)}


class Reference(nn.Module):
    """The same chain as torch.nn layers: Linear (bias only with learn_biases), activation,
    dropout masks given."""

    def __init__(self, net, hidden, output, biases=False):
        super().__init__()
        self.layers = nn.ModuleList()
        for q in net.network.projections:
            w = net.weights[q.name]
            layer = nn.Linear(w.shape[1], w.shape[0], bias=biases, dtype=F64)
            with torch.no_grad():
                layer.weight.copy_(w)
                if biases:
                    layer.bias.copy_(net.biases[q.target])
            self.layers.append(layer)
        self.hidden, self.output = ACTIVATIONS[hidden], ACTIVATIONS[output]

    def forward(self, x, masks=()):
        h = x
        for i, layer in enumerate(self.layers):
            a = layer(h)
            if i == len(self.layers) - 1:
                return a, self.output(a)
            h = self.hidden(a)
            if masks:
                h = h * masks[i]


def reference_loss(loss, a, y, labels, t):
    if loss == "cross_entropy":
        return F.cross_entropy(a, labels)                       # batch mean of -log p_label
    return 0.5 * F.mse_loss(y, t, reduction="sum") / len(t)     # batch mean of 0.5 |y - t|^2


def draw_masks(generator, sizes, batch, p):
    """The keep-masks the engine draws (CompiledNetwork._dropout_mask), hidden layers in
    order."""
    return [(torch.rand((batch, n), generator=generator, dtype=F64) >= p).to(F64) / (1 - p)
            for n in sizes[1:-1]]


CASES = [
    # sizes, hidden, output, loss, optimizer settings
    ((12, 9, 4), "relu", "softmax", "cross_entropy", dict(optimizer="sgd", momentum=0.9)),
    ((12, 9, 4), "relu", "sigmoid", "mse", dict(optimizer="sgd", momentum=0.9,
                                                weight_decay=1e-3)),
    ((12, 9, 4), "tanh", "softmax", "mse", dict(optimizer="adam")),
    ((12, 10, 7, 4), "relu", "softmax", "cross_entropy", dict(optimizer="adam",
                                                              weight_decay=1e-2)),
    ((12, 10, 7, 4), "tanh", "softmax", "mse", dict(optimizer="sgd")),
    ((12, 10, 7, 4), "relu", "sigmoid", "mse", dict(optimizer="adam", betas=[0.8, 0.99],
                                                    eps=1e-6)),
    ((12, 10, 7, 4), "relu", "softmax", "cross_entropy", dict(optimizer="sgd", momentum=0.5)),
]


def _reference_optimizer(params, lr, settings):
    settings = dict(settings)
    kind = settings.pop("optimizer")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.get("momentum", 0.0),
                               weight_decay=settings.get("weight_decay", 0.0))
    return torch.optim.Adam(params, lr=lr, betas=tuple(settings.get("betas", (0.9, 0.999))),
                            eps=settings.get("eps", 1e-8),
                            weight_decay=settings.get("weight_decay", 0.0))


@pytest.mark.parametrize("sizes, hidden, output, loss, settings", CASES)
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_steps_equal_a_torch_nn_reference(sizes, hidden, output, loss, settings, dropout):
    lr = 0.05 if settings["optimizer"] == "sgd" else 0.01
    net, protocol = bound(Backprop, sizes, hidden=hidden, output=output, loss=loss, lr=lr,
                          dropout=dropout, **settings)
    reference = Reference(net, hidden, output)
    optimizer = _reference_optimizer(reference.parameters(), lr, settings)
    data = torch.Generator().manual_seed(3)
    run, ref_run = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    names = [q.name for q in net.network.projections]
    for k, lr_scale in enumerate([1.0, 1.0, 0.5, 0.1, 0.1]):
        x = torch.rand((16, sizes[0]), generator=data, dtype=F64)
        labels = torch.randint(0, sizes[-1], (16,), generator=data)
        t = F.one_hot(labels, sizes[-1]).to(F64)
        result = protocol.train_step(x, t, run, lr_scale)
        masks = draw_masks(ref_run, sizes, 16, dropout) if dropout else ()
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_scale
        optimizer.zero_grad()
        a, y = reference(x, masks)
        objective = reference_loss(loss, a, y, labels, t)
        objective.backward()
        optimizer.step()
        assert torch.allclose(result.prediction, y.detach(), atol=1e-13, rtol=0)
        assert abs(float(result.metrics["loss"]) - float(objective.detach())) < 1e-12
        for name, layer in zip(names, reference.layers):
            diff = (net.weights[name] - layer.weight.detach()).abs().max()
            assert diff < 1e-12, (k, name, float(diff))
    assert torch.equal(run.get_state(), ref_run.get_state())    # the same draws, no more


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_learned_biases_equal_the_reference(optimizer):
    sizes = (12, 10, 7, 4)
    settings = dict(optimizer=optimizer, **({"momentum": 0.9} if optimizer == "sgd" else {}))
    net, protocol = bound(Backprop, sizes, bias=0.1, learn_biases=True, lr=0.02, **settings)
    reference = Reference(net, "relu", "softmax", biases=True)
    ref_opt = _reference_optimizer(reference.parameters(), 0.02, settings)
    data = torch.Generator().manual_seed(5)
    for _ in range(4):
        x = torch.rand((8, 12), generator=data, dtype=F64)
        labels = torch.randint(0, 4, (8,), generator=data)
        protocol.train_step(x, F.one_hot(labels, 4).to(F64), torch.Generator())
        ref_opt.zero_grad()
        F.cross_entropy(reference(x)[0], labels).backward()
        ref_opt.step()
    for q, layer in zip(net.network.projections, reference.layers):
        assert (net.weights[q.name] - layer.weight.detach()).abs().max() < 1e-12
        assert (net.biases[q.target] - layer.bias.detach()).abs().max() < 1e-12
    assert not torch.allclose(net.biases["out"], torch.full((4,), 0.1, dtype=F64))


def test_infer_is_the_forward_pass_and_the_engines_sweep():
    net, protocol = bound(Backprop, (12, 10, 7, 4), hidden="tanh", bias=0.05, dropout=0.3)
    x = torch.rand((6, 12), dtype=F64, generator=torch.Generator().manual_seed(0))
    _, h = protocol.forward(x)
    # equal up to the last bit's rounding: an element-wise kernel writing into a strided view
    # of the state (the engine) may take another vector path than one on a fresh tensor
    assert torch.allclose(net.r_of(protocol.infer(x), "out"), h, atol=1e-15, rtol=0)
    assert torch.allclose(protocol.predict(x), h, atol=1e-15, rtol=0)
    masks = {}
    _, dropped = protocol.forward(x, generator=torch.Generator().manual_seed(4), masks=masks)
    assert sorted(masks) == ["h1", "h2"]                    # hidden layers only
    state, _ = net.feedforward({"x": x}, masks=masks)
    assert torch.allclose(net.r_of(state, "out"), dropped, atol=1e-15, rtol=0)
    assert not torch.allclose(dropped, h)


@pytest.mark.parametrize("sizes", [(12, 9, 4), (12, 10, 7, 4)])
@pytest.mark.parametrize("loss, output", [("cross_entropy", "softmax"), ("mse", "sigmoid")])
def test_feedback_alignment_with_B_equal_to_W_transposed_is_backprop(sizes, loss, output):
    settings = dict(loss=loss, lr=0.05, momentum=0.9, dropout=0.2)
    net_bp, bp = bound(Backprop, sizes, output=output, **settings)
    net_fa, fa = bound(FeedbackAlignment, sizes, output=output, **settings)
    data = torch.Generator().manual_seed(1)
    gen_bp, gen_fa = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(4):
        for name in fa.feedback:                                # force B_l := W_l^T
            fa.feedback[name] = net_fa.weights[name].T.clone()
        x = torch.rand((10, sizes[0]), generator=data, dtype=F64)
        t = F.one_hot(torch.randint(0, sizes[-1], (10,), generator=data), sizes[-1]).to(F64)
        out_bp = bp.train_step(x, t, gen_bp)
        out_fa = fa.train_step(x, t, gen_fa)
        assert torch.equal(out_bp.prediction, out_fa.prediction)
    for name in net_bp.weights:                                 # bit for bit
        assert torch.equal(net_bp.weights[name], net_fa.weights[name]), name


def test_feedback_alignment_sends_the_error_through_B():
    """2 layers: delta_2 = (p - t)/B as backprop's, grad W_1 = ((delta_2 B^T) * relu'(a_1))^T x
    with B (9 x 4) the fixed feedback matrix, not W_2^T."""
    net, fa = bound(FeedbackAlignment, (12, 9, 4), lr=0.1)
    _, bp = bound(Backprop, (12, 9, 4), lr=0.1)
    B = fa.feedback["w2"]
    assert list(fa.feedback) == ["w2"] and B.shape == (9, 4)
    x = torch.rand((8, 12), dtype=F64, generator=torch.Generator().manual_seed(0))
    t = F.one_hot(torch.arange(8) % 4, 4).to(F64)
    grads, _, p = fa.gradients(x, t)
    bp_grads, _, _ = bp.gradients(x, t)
    a1 = x @ net.weights["w1"].T
    h1 = torch.relu(a1)
    delta2 = (p - t) / 8
    delta1 = (delta2 @ B.T) * (a1 > 0).to(F64)
    assert torch.allclose(grads["weights", "w2"], delta2.T @ h1, atol=1e-15, rtol=0)
    assert torch.allclose(grads["weights", "w1"], delta1.T @ x, atol=1e-15, rtol=0)
    assert torch.equal(grads["weights", "w2"], bp_grads["weights", "w2"])
    assert not torch.allclose(grads["weights", "w1"], bp_grads["weights", "w1"])


def test_feedback_matrices_are_drawn_like_W_transposed_from_the_seed():
    net, fa = bound(FeedbackAlignment, (30, 20, 12, 4), seed=3)
    assert sorted(fa.feedback) == ["w2", "w3"]
    assert fa.feedback["w2"].shape == (20, 12) and fa.feedback["w3"].shape == (12, 4)
    for name, n_in in (("w2", 20), ("w3", 12)):
        bound_ = (6.0 / n_in) ** 0.5
        assert fa.feedback[name].abs().max() <= bound_
        assert fa.feedback[name].abs().max() > 0.8 * bound_
    again = FeedbackAlignment().bind(net, seed=3)
    other = FeedbackAlignment(feedback_scale=0.5).bind(net, seed=3)
    for name in fa.feedback:
        assert torch.equal(again.feedback[name], fa.feedback[name])
        assert torch.allclose(other.feedback[name], 0.5 * fa.feedback[name], atol=1e-15)
    # not the forward weights' stream: B_2 repeats none of W_1's first uniform draws
    u_w = net.weights["w1"].flatten()[:240] / (6 / 30) ** 0.5
    u_b = fa.feedback["w2"].T.flatten() / (6 / 20) ** 0.5
    assert not torch.allclose(u_w, u_b, atol=1e-3)


def _rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("model, floor", [("bp_digits.toml", 0.95), ("fa_digits.toml", 0.95)])
def test_digits_models_train_from_the_command_line(tmp_path, model, floor):
    run = tmp_path / "run"
    assert cli(["train", str(MODELS / model), "--out", str(run), "--quiet"]) == 0
    rows = _rows(run)
    assert len(rows) == 30
    assert float(rows[-1]["test_accuracy"]) >= floor
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


def test_feedback_alignment_resumes_bit_exactly_in_a_fresh_process_and_B_stays(tmp_path):
    model = MODELS / "fa_digits.toml"
    fresh = Trainer.from_model_file(model, progress=False)
    B0 = {k: v.clone() for k, v in fresh.protocol.feedback.items()}
    straight = Trainer.from_model_file(model, progress=False, epochs=3)
    straight.fit(tmp_path / "a", log=None)
    for name, B in straight.protocol.feedback.items():
        assert torch.equal(B, B0[name])                          # never trained
    Trainer.from_model_file(model, progress=False, epochs=3).fit(tmp_path / "b", epochs=1,
                                                                 log=None)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "neurosim.cli", "resume", str(tmp_path / "b"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(tmp_path / "a" / "run.h5").payload
    b = load_checkpoint(tmp_path / "b" / "run.h5").payload
    for name, w in a["network"].items():
        assert torch.equal(w, b["network"][name]), name
    for name, B in a["protocol"]["feedback"].items():
        assert torch.equal(B, B0[name]) and torch.equal(B, b["protocol"]["feedback"][name])
    velocity = a["protocol"]["optimizer"]["velocity"]["weights"]
    assert sorted(velocity) == ["w1", "w2"]
    for name, v in velocity.items():
        assert torch.equal(v, b["protocol"]["optimizer"]["velocity"]["weights"][name])
    assert int(a["protocol"]["optimizer"]["step"]) == 3 * 45      # 1437 rows / 32 per batch
    assert a["metrics"]["test_accuracy"].tolist() == b["metrics"]["test_accuracy"].tolist()
    assert a["metrics"]["train_loss"].tolist() == b["metrics"]["train_loss"].tolist()


def test_adam_backprop_resumes_exactly_in_process(tmp_path):
    text = (MODELS / "bp_digits.toml").read_text().replace(
        'optimizer = "sgd"', 'optimizer = "adam"').replace("lr = 0.1", "lr = 0.001").replace(
        "momentum = 0.9 ", "# ")
    straight = Trainer.from_model_text(text, progress=False, epochs=2)
    straight.fit(tmp_path / "a", log=None)
    Trainer.from_model_text(text, progress=False, epochs=2).fit(tmp_path / "b", epochs=1,
                                                               log=None)
    resumed = Trainer.resume(tmp_path / "b", progress=False)
    assert resumed.protocol.optimizer == "adam" and resumed.protocol._steps == 45
    resumed.fit(tmp_path / "b", log=None)
    for name, w in straight.net.weights.items():
        assert torch.equal(w, resumed.net.weights[name]), name
    state_a, state_b = straight.protocol.state_dict(), resumed.protocol.state_dict()
    for buffer in ("exp_avg", "exp_avg_sq"):
        for name, m in state_a["optimizer"][buffer]["weights"].items():
            assert torch.equal(m, state_b["optimizer"][buffer]["weights"][name])
    timing = ("seconds", "train_seconds")
    assert {k: v for k, v in straight.history.columns.items() if k not in timing} == \
        {k: v for k, v in resumed.history.columns.items() if k not in timing}


def test_works_under_inference_mode_and_after_training():
    """The trainer runs train_step inside torch.inference_mode; steps after fit() (outside it)
    still work."""
    net, protocol = bound(Backprop, (12, 9, 4), lr=0.1, momentum=0.9, dropout=0.1)
    x = torch.rand((8, 12), dtype=F64, generator=torch.Generator().manual_seed(0))
    t = F.one_hot(torch.arange(8) % 4, 4).to(F64)
    with torch.inference_mode():
        xi, ti = x.clone(), t.clone()
        protocol.train_step(xi, ti, torch.Generator())
    protocol.load_state_dict(protocol.state_dict())
    protocol.train_step(x, t, torch.Generator())
    assert not any(w.is_inference() for w in net.weights.values())


# ---------------------------------------------------------------------- settings and graphs
def _error(spec, sizes=(12, 9, 4), **graph) -> str:
    with pytest.raises(ConfigError) as err:
        protocol = build_protocol(spec)
        net = CompiledNetwork(chain_network(sizes, **graph), dtype=F64)
        protocol.bind(net)
    return str(err.value)


@pytest.mark.parametrize("spec, words", [
    ({"type": "backprop", "momentun": 0.9}, ['no parameter "momentun"', 'Did you mean "momentum"']),
    ({"type": "feedback_alignment", "feedback_int": "he_uniform"},
     ['Did you mean "feedback_init"']),
    ({"type": "backprop", "feedback_init": "he_uniform"}, ['no parameter "feedback_init"']),
    ({"type": "backprop", "loss": "hinge"}, ['unknown loss "hinge"', '"cross_entropy"', '"mse"']),
    ({"type": "backprop", "loss": "mes"}, ['Did you mean "mse"']),
    ({"type": "backprop", "optimizer": "adamw"}, ['Did you mean "adam"']),
    ({"type": "backprop", "lr": 0}, ["lr: must be a finite number > 0"]),
    ({"type": "backprop", "lr": "0.1"}, ["lr: must be a finite number"]),
    ({"type": "backprop", "lr": float("nan")}, ["finite"]),
    ({"type": "backprop", "momentum": 1.0}, ["momentum: must be a finite number >= 0 and < 1"]),
    ({"type": "backprop", "momentum": True}, ["momentum"]),
    ({"type": "backprop", "optimizer": "adam", "momentum": 0.9}, ["momentum: an SGD setting",
                                                                  "betas"]),
    ({"type": "backprop", "betas": [0.9, 0.99]}, ["betas: an Adam setting"]),
    ({"type": "backprop", "eps": 1e-8}, ["eps: an Adam setting"]),
    ({"type": "backprop", "optimizer": "adam", "betas": [0.9]}, ["betas: two numbers"]),
    ({"type": "backprop", "optimizer": "adam", "betas": [0.9, 1.0]}, ["betas[1]"]),
    ({"type": "backprop", "optimizer": "adam", "eps": 0}, ["eps: must be a finite number > 0"]),
    ({"type": "backprop", "weight_decay": -1e-4}, ["weight_decay: must be a finite number >= 0"]),
    ({"type": "backprop", "dropout": 1.0}, ["dropout: must be a finite number >= 0 and < 1"]),
    ({"type": "backprop", "dropout": "0.1"}, ["dropout: a drop probability"]),
    ({"type": "backprop", "dropout": {"h1": -0.1}}, ["dropout.h1"]),
    ({"type": "backprop", "dropout": {"out": 0.1}}, ['"out" is the output layer']),
    ({"type": "backprop", "dropout": {"h_1": 0.1}}, ['unknown hidden layer "h_1"',
                                                      'Did you mean "h1"']),
    ({"type": "backprop", "learn_biases": "yes"}, ["learn_biases: true or false"]),
    ({"type": "feedback_alignment", "feedback_init": "he_unifrom"},
     ['unknown initialiser "he_unifrom"', 'Did you mean "he_uniform"']),
    ({"type": "feedback_alignment", "feedback_init": "identity"}, ["does not draw a random"]),
    ({"type": "feedback_alignment", "feedback_init": "eye"}, ["does not draw a random"]),
    ({"type": "feedback_alignment", "feedback_init": 3}, ["feedback_init: an initialiser name"]),
    ({"type": "feedback_alignment", "feedback_scale": "big"}, ["feedback_scale"]),
    ({"type": "backprop", "input": "x"}, ['"input" is not a protocol setting']),
])
def test_every_key_is_checked(spec, words):
    message = _error(spec)
    for word in words:
        assert word in message, message


def test_cross_entropy_needs_a_softmax_output():
    message = _error({"type": "backprop"}, output="sigmoid")
    assert 'loss "cross_entropy"' in message and 'activation = "softmax"' in message
    assert 'loss = "mse"' in message
    net = CompiledNetwork(chain_network((12, 9, 4), output="sigmoid"), dtype=F64)
    Backprop(loss="mse").bind(net)                              # mse takes any output


@pytest.mark.parametrize("cls", [Backprop, FeedbackAlignment])
def test_graphs_that_are_not_a_feed_forward_chain_are_refused(cls):
    skip = g.Projection("skip", "x", "out", "basal", init="he_uniform")
    net = CompiledNetwork(chain_network((12, 9, 4), extra=[skip]), dtype=F64)
    with pytest.raises(ConfigError, match='needs a feed-forward chain from "x" to "out": '
                                          'population "out" must receive exactly one'):
        cls().bind(net)
    pops = [g.InputPopulation("x", 12),
            g.PyramidalPopulation("h1", 9, leak=0.0, basal=1.0, apical=1.0, activation="relu"),
            g.PyramidalPopulation("out", 4, leak=0.0, basal=1.0, apical=0.0,
                                  activation="softmax")]
    projs = [g.Projection("w1", "x", "h1", "basal", init="he_uniform"),
             g.Projection("w2", "h1", "out", "basal", init="he_uniform"),
             g.Projection("fb", "out", "h1", "apical", init="he_uniform")]
    net = CompiledNetwork(g.Network(pops, projs), dtype=F64)
    with pytest.raises(ConfigError, match='population "h1" must receive exactly one'):
        cls().bind(net)
    pops[1] = g.PyramidalPopulation("h1", 9, leak=0.5, basal=1.0, apical=0.0, activation="relu")
    net = CompiledNetwork(g.Network(pops, projs[:2]), dtype=F64)
    with pytest.raises(ConfigError, match=r'layer "h1" computes sigma\(0.666667 W h\)'):
        cls().bind(net)


def test_plasticity_rules_and_stochastic_units_are_refused():
    pops = [g.InputPopulation("x", 12),
            g.PyramidalPopulation("h1", 9, leak=0.0, basal=1.0, apical=0.0, activation="relu"),
            g.PyramidalPopulation("out", 4, leak=0.0, basal=1.0, apical=0.0,
                                  activation="softmax")]
    projs = [g.Projection("w1", "x", "h1", "basal", init="he_uniform",
                          rules=[{"type": "pepita", "lr": 0.1}]),
             g.Projection("w2", "h1", "out", "basal", init="he_uniform")]
    net = CompiledNetwork(g.Network(pops, projs), dtype=F64)
    with pytest.raises(ConfigError, match='projection "w1" carries plasticity rules'):
        Backprop().bind(net)
    pops[1] = g.PyramidalPopulation("h1", 9, leak=0.0, basal=1.0, apical=0.0,
                                    activation="stochastic_sign")
    net = CompiledNetwork(g.Network(pops, [g.Projection("w1", "x", "h1", "basal"), projs[1]]),
                          dtype=F64)
    with pytest.raises(ConfigError, match="stochastic activation"):
        FeedbackAlignment().bind(net)


def test_frozen_and_masked_synapses_stay():
    pops = [g.InputPopulation("x", 12),
            g.PyramidalPopulation("h1", 9, leak=0.0, basal=1.0, apical=0.0, activation="relu"),
            g.PyramidalPopulation("out", 4, leak=0.0, basal=1.0, apical=0.0,
                                  activation="softmax")]
    mask = (torch.arange(9 * 12).reshape(9, 12) % 3 != 0).to(F64)
    projs = [g.Projection("w1", "x", "h1", "basal", init="he_uniform", mask=mask.tolist()),
             g.Projection("w2", "h1", "out", "basal", init="he_uniform", plastic=False)]
    net = CompiledNetwork(g.Network(pops, projs), dtype=F64)
    protocol = Backprop(lr=0.5, momentum=0.9, weight_decay=0.01).bind(net)
    w2 = net.weights["w2"].clone()
    w1 = net.weights["w1"]
    x = torch.rand((8, 12), dtype=F64, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        protocol.train_step(x, F.one_hot(torch.arange(8) % 4, 4).to(F64), torch.Generator())
    assert net.weights["w1"] is w1                              # the engine's own tensor
    assert torch.equal(net.weights["w2"], w2)
    assert torch.equal(w1 * (1 - mask), torch.zeros_like(w1))
    assert sorted(protocol.state_dict()["optimizer"]["velocity"]["weights"]) == ["w1"]


def test_config_round_trips_and_state_is_checked():
    for spec in ({"type": "backprop", "loss": "mse", "optimizer": "adam", "lr": 0.001,
                  "betas": [0.9, 0.99], "eps": 1e-7, "weight_decay": 0.0,
                  "dropout": {"h1": 0.2}, "learn_biases": True},
                 {"type": "feedback_alignment", "loss": "cross_entropy", "optimizer": "sgd",
                  "lr": 0.1, "weight_decay": 1e-4, "momentum": 0.9, "dropout": 0.1,
                  "learn_biases": False, "feedback_init": "xavier_uniform",
                  "feedback_scale": 2.0}):
        protocol = build_protocol(spec)
        assert protocol.config() == spec
        assert build_protocol(protocol.config()).config() == spec
    net, fa = bound(FeedbackAlignment, (12, 9, 4), momentum=0.9)
    state = fa.state_dict()
    state["feedback"] = {"w2": torch.zeros(4, 9, dtype=F64)}
    with pytest.raises(ConfigError, match=r"feedback w2: shape \(4, 9\), expected \(9, 4\)"):
        fa.load_state_dict(state)
    _, bp = bound(Backprop, (12, 9, 4))
    with pytest.raises(ConfigError, match=r"holds \['feedback'\], which this protocol"):
        bp.load_state_dict(fa.state_dict())
    _, adam = bound(Backprop, (12, 9, 4), optimizer="adam")
    with pytest.raises(ConfigError, match="optimiser buffers"):
        adam.load_state_dict(bp.state_dict())


BASELINES = [("bp_digits", "pepita_digits"), ("fa_digits", "pepita_digits"),
             ("bp_mnist_fc", "pepita_mnist_fc"), ("fa_mnist_fc", "pepita_mnist_fc"),
             ("bp_adam_mnist_fc", "pepita_mnist_fc"), ("bp_cifar10_fc", None),
             ("fa_cifar10_fc", None)]


@pytest.mark.parametrize("model, pepita", BASELINES)
def test_model_files_build_the_pepita_graph(model, pepita):
    """Every baseline model builds (no data needed) and, where PEPITA has the same model,
    shares its graph, initial weights, data and run options."""
    trainer = Trainer.from_model_file(MODELS / f"{model}.toml", progress=False)
    assert trainer.protocol.name == ("feedback_alignment" if model.startswith("fa")
                                     else "backprop")
    sizes = [p.size for p in trainer.network.populations]
    assert sizes[1:] == ([1024, 10] if "fc" in model else [256, 10])
    if pepita is None:
        return
    other = Trainer.from_model_file(MODELS / f"{pepita}.toml", progress=False)
    describe = [(p.name, p.size, getattr(p, "activation", None)) for p in
                trainer.network.populations]
    assert describe == [(p.name, p.size, getattr(p, "activation", None))
                        for p in other.network.populations]
    for name, w in other.net.weights.items():
        assert torch.equal(trainer.net.weights[name], w), name
    assert trainer._data == other._data
    mine, theirs = trainer.config.as_dict(), other.config.as_dict()
    mine.pop("metrics"), theirs.pop("metrics")      # PEPITA's angle_F needs its F
    assert mine == theirs
    assert trainer.protocol.dropout == other.protocol.dropout == 0.1
