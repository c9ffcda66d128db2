"""The follow-up options of the PEPITA protocol (Srinivasan et al., ICLR 2024; reference code
ravifrancesco/PEPITA): ``feedback = "mirror"`` (F = B_1 ... B_L, each B_l trained by weight
mirroring) and ``time_local`` (the Hebbian terms of the rule applied one per pass).

Steps are checked against literal float64 implementations of the equations in
neurosim/protocols/pepita.py's docstring (2 and 3 layers, dropout, momentum, weight decay);
then B_l's alignment with W_l^T, bit-exact resume of the B_l, and the settings' errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import neurosim.graph as g
from neurosim.cli import main
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError
from neurosim.metrics.weight_angle import weight_angle
from neurosim.plasticity import PlasticityRule
from neurosim.protocols import Pepita, build_protocol
from neurosim.training import Trainer

F64 = torch.float64
MODELS = Path(__file__).resolve().parents[1] / "models"


def chain_network(sizes, lr=0.1, momentum=0.9, **rule):
    pops = [g.InputPopulation("x", sizes[0])]
    names = [f"h{i}" for i in range(1, len(sizes) - 1)] + ["out"]
    for name, size in zip(names, sizes[1:]):
        pops.append(g.PyramidalPopulation(name, size, leak=0.0, basal=1.0, apical=0.0,
                                          activation="softmax" if name == "out" else "relu"))
    projs = [g.Projection(f"w{i + 1}", src, tgt, "basal", init="he_uniform",
                          rules=[{"type": "pepita", "lr": lr, "momentum": momentum, **rule}])
             for i, (src, tgt) in enumerate(zip(["x", *names[:-1]], names))]
    return g.Network(pops, projs, name="chain")


def bound(sizes, seed=0, **options):
    rule = {k: options.pop(k) for k in ("lr", "momentum", "weight_decay", "hebbian")
            if k in options}
    net = CompiledNetwork(chain_network(sizes, **rule), dtype=F64, seed=seed)
    return net, Pepita(**options).bind(net, seed=seed + 7)


def batch(sizes, data, n=8):
    x = torch.rand(n, sizes[0], generator=data, dtype=F64)
    t = torch.nn.functional.one_hot(torch.randint(0, sizes[-1], (n,), generator=data),
                                    sizes[-1]).to(F64)
    return x, t


def replay(generator) -> torch.Generator:
    """A generator in the same state as ``generator`` (to redraw what the protocol will)."""
    copy = torch.Generator().manual_seed(0)
    copy.set_state(generator.get_state())
    return copy


def draw_masks(gen, n, sizes, drop):
    return [(torch.rand(n, k, generator=gen, dtype=F64) >= drop).to(F64) / (1 - drop)
            for k in sizes[1:-1]]


def forward(weights, inp, masks, normalize=False):
    """h_0 = x, h_l = m_l T(relu(W_l h_{l-1})), softmax output."""
    hs = [inp]
    for i, w in enumerate(weights):
        a = hs[-1] @ w.T
        if i == len(weights) - 1:
            hs.append(torch.softmax(a, dim=1))
        else:
            h = torch.relu(a)
            if normalize:
                h = h / torch.sqrt((h ** 2).sum())
            hs.append(h * masks[i])
    return hs


def momentum_step(w, v, grad, *, lr, momentum, weight_decay=0.0):
    """The rule as coded: dW = -lr (G + wd W), v <- momentum v + dW, W <- W + v."""
    v = momentum * v - lr * (grad + weight_decay * w)
    return w + v, v


# --------------------------------------------------------------------------- mirroring
def literal_mirror(weights, Bs, gen, n, *, lr, wd, amp, drop, sigma_F, normalize=False,
                   renormalize=True):
    """One weight-mirroring step of every B_l (module docstring), then F's rescaling."""
    L = len(weights)
    new = []
    for i, (w, b) in enumerate(zip(weights, Bs)):
        xi = amp * torch.randn(n, w.shape[1], generator=gen, dtype=F64)
        xi = xi - xi.mean()
        a = xi @ w.T
        if i == L - 1:
            y = torch.softmax(a, dim=1)
        else:
            y = torch.relu(a)
            if normalize:
                y = y / torch.sqrt((y ** 2).sum())
            if drop:
                y = y * ((torch.rand(n, w.shape[0], generator=gen, dtype=F64) >= drop).to(F64)
                         / (1 - drop))
        new.append(b + lr * (xi.T @ y / n - wd * b))
    if renormalize:
        F = new[0]
        for b in new[1:]:
            F = F @ b
        c = (sigma_F / F.std()) ** (1.0 / L)
        new = [c * b for b in new]
    F = new[0]
    for b in new[1:]:
        F = F @ b
    return new, F


@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 9, 7, 4]])
@pytest.mark.parametrize("normalize,renormalize", [(False, True), (True, False)])
def test_mirroring_steps_equal_a_literal_implementation(sizes, normalize, renormalize):
    drop, lr, wd, amp, F_scale = 0.3, 0.2, 0.05, 0.3, 0.5
    net, protocol = bound(sizes, sign=-1, dropout=drop, normalize=normalize, F_scale=F_scale,
                          feedback="mirror", mirror_lr=lr, mirror_weight_decay=wd,
                          mirror_noise=amp, mirror_pre=1, mirror_every=1,
                          mirror_normalize=renormalize)
    sigma_F = F_scale * math.sqrt(2 / sizes[0])
    Bs = [b.clone() for b in protocol.B]
    assert [tuple(b.shape) for b in Bs] == list(zip(sizes, sizes[1:]))
    F = Bs[0]
    for b in Bs[1:]:
        F = F @ b
    assert float((protocol.F - F).abs().max()) < 1e-15
    generator = torch.Generator().manual_seed(5)
    data = torch.Generator().manual_seed(11)
    weights = [net.weights[f"w{i + 1}"].clone() for i in range(len(sizes) - 1)]
    velocity = [torch.zeros_like(w) for w in weights]
    for step, epoch in enumerate([0, 0, 1, 1, 2]):       # epoch 0: pre-mirroring only
        x, t = batch(sizes, data)
        gen = replay(generator)
        masks = draw_masks(gen, 8, sizes, drop)
        if epoch >= 1:                                  # the PEPITA step with F = B_1 ... B_L
            h = forward(weights, x, masks, normalize)
            e = h[-1] - t
            x_mod = x - e @ F.T
            hm = forward(weights, x_mod, masks, normalize)
            for i in range(len(weights)):
                grad = ((hm[-1] - t).T @ hm[i] if i == len(weights) - 1 else
                        (h[i + 1] - hm[i + 1]).T @ hm[i]) / 8
                weights[i], velocity[i] = momentum_step(weights[i], velocity[i], grad, lr=0.1,
                                                        momentum=0.9)
        Bs, F = literal_mirror(weights, Bs, gen, 8, lr=lr, wd=wd, amp=amp, drop=drop,
                               sigma_F=sigma_F, normalize=normalize, renormalize=renormalize)
        before = {k: w.clone() for k, w in net.weights.items()}
        protocol.train_step(x, t, generator, epoch=epoch, step=step)
        if epoch == 0:
            for k, w in net.weights.items():
                assert torch.equal(w, before[k]), "pre-mirroring leaves the weights alone"
        for i, w in enumerate(weights):
            assert float((net.weights[f"w{i + 1}"] - w).abs().max()) < 1e-10, (step, i)
        for i, b in enumerate(Bs):
            assert float((protocol.B[i] - b).abs().max()) < 1e-10, (step, "B", i)
        assert float((protocol.F - F).abs().max()) < 1e-10, step
        assert torch.equal(generator.get_state(), gen.get_state()), "the same draws"
        if renormalize:
            assert float(protocol.F.std()) == pytest.approx(sigma_F, rel=1e-10)


def test_mirroring_schedule_and_initial_spread():
    net, protocol = bound([20, 16, 5], sign=-1, feedback="mirror", mirror_pre=2,
                          mirror_every=3)
    assert [protocol.mirrors(e) for e in range(9)] == \
        [True, True, True, False, False, True, False, False, True]
    _, never = bound([20, 16, 5], feedback="mirror", mirror_pre=0, mirror_every=0)
    assert not any(never.mirrors(e) for e in range(10))
    _, fixed = bound([20, 16, 5])
    assert not fixed.mirrors(0) and fixed.B == []
    # B_l ~ N(0, s_B^2) with s_B = (sigma_F / sqrt(16))^(1/2), from the protocol's own stream
    sigma_F = 0.05 * math.sqrt(2 / 20)
    s_B = (sigma_F / 4) ** 0.5
    for b in protocol.B:
        assert float(b.std()) == pytest.approx(s_B, rel=0.25)
    assert float(protocol.F.std()) == pytest.approx(sigma_F, rel=0.35)
    _, again = bound([20, 16, 5], sign=-1, feedback="mirror")
    assert all(torch.equal(a, b) for a, b in zip(protocol.B, again.B))
    _, other = bound([20, 16, 5], seed=1, feedback="mirror")
    assert not torch.equal(protocol.B[0], other.B[0])


def test_B_aligns_with_W_transposed_while_the_digits_are_learnt():
    from neurosim.data import load_dataset
    data = load_dataset("digits", dtype=F64)
    net, protocol = bound([64, 32, 10], sign=-1, lr=0.05, dropout=0.1, feedback="mirror",
                          mirror_lr=0.5, mirror_weight_decay=0.5, mirror_pre=1,
                          mirror_every=1)
    targets = torch.eye(10, dtype=F64)[data.train_y.long()]
    gen = torch.Generator().manual_seed(2)

    def angles():
        return [weight_angle(net.weights[f"w{i + 1}"].T, b) for i, b in enumerate(protocol.B)]

    start = angles()
    assert all(80 < a < 100 for a in start), start
    for step in range(400):
        rows = torch.randint(0, len(data.train_x), (32,), generator=gen)
        protocol.train_step(data.train_x[rows], targets[rows], gen, epoch=step // 100,
                            step=step)
    end = angles()
    assert end[0] < 30 and end[1] < 45, (start, end)
    product = net.weights["w2"] @ net.weights["w1"]
    assert weight_angle(product.T, protocol.F) < 45
    accuracy = (protocol.predict(data.test_x).argmax(1) == data.test_y).double().mean()
    assert float(accuracy) > 0.85


# --------------------------------------------------------------------------- time-local
@pytest.mark.parametrize("sizes", [[6, 9, 4], [6, 9, 7, 4]])
@pytest.mark.parametrize("sign,masks_mode,weight_decay", [(1, "fresh", 0.0),
                                                          (-1, "shared", 0.01),
                                                          (1, "shared", 0.0)])
def test_time_local_steps_equal_a_literal_implementation(sizes, sign, masks_mode,
                                                         weight_decay):
    drop, lr, momentum = 0.3, 0.1, 0.9
    options = dict(time_local=True, sign=sign, dropout=drop, hebbian=True, lr=lr,
                   momentum=momentum, weight_decay=weight_decay)
    if masks_mode != "fresh":
        options["time_local_masks"] = masks_mode
    net, protocol = bound(sizes, **options)
    F = protocol.F
    generator = torch.Generator().manual_seed(5)
    data = torch.Generator().manual_seed(11)
    weights = [net.weights[f"w{i + 1}"].clone() for i in range(len(sizes) - 1)]
    velocity = [torch.zeros_like(w) for w in weights]
    L = len(weights)
    for step in range(3):
        x, t = batch(sizes, data)
        gen = replay(generator)
        masks = draw_masks(gen, 8, sizes, drop)
        h = forward(weights, x, masks)
        e = h[-1] - t
        x_mod = x + sign * e @ F.T
        for i in range(L):          # after the standard pass: G = h_l h_{l-1}^T / B
            weights[i], velocity[i] = momentum_step(weights[i], velocity[i],
                                                    h[i + 1].T @ h[i] / 8, lr=lr,
                                                    momentum=momentum,
                                                    weight_decay=weight_decay)
        second = draw_masks(gen, 8, sizes, drop) if masks_mode == "fresh" else masks
        hm = forward(weights, x_mod, second)       # on the weights the first term changed
        for i in range(L):          # after the modulated pass
            grad = -(t.T @ hm[i] if i == L - 1 else hm[i + 1].T @ hm[i]) / 8
            weights[i], velocity[i] = momentum_step(weights[i], velocity[i], grad, lr=lr,
                                                    momentum=momentum,
                                                    weight_decay=weight_decay)
        out = protocol.train_step(x, t, generator, step=step)
        assert float((out.prediction - h[-1]).abs().max()) < 1e-12
        for i, w in enumerate(weights):
            assert float((net.weights[f"w{i + 1}"] - w).abs().max()) < 1e-10, (step, i)
        assert torch.equal(generator.get_state(), gen.get_state())


def test_time_local_with_a_tiny_rate_is_the_hebbian_rule():
    """Without momentum, a hidden layer's two half-steps add up to the two-pass Hebbian step
    up to O(lr^2) (the modulated pass sees the weights the first half-step changed)."""
    sizes = [6, 9, 4]
    x, t = batch(sizes, torch.Generator().manual_seed(3))
    deltas = {}
    for time_local in (False, True):
        net, protocol = bound(sizes, hebbian=True, lr=1e-6, momentum=0.0,
                              time_local=time_local)
        before = net.weights["w1"].clone()
        protocol.train_step(x, t, torch.Generator().manual_seed(0))
        deltas[time_local] = net.weights["w1"] - before
    scale = float(deltas[False].abs().max())
    assert scale > 0
    assert float((deltas[True] - deltas[False]).abs().max()) < 1e-4 * scale


def test_mirroring_and_time_local_together_run_and_learn_a_little():
    net, protocol = bound([6, 9, 4], sign=-1, hebbian=True, lr=0.01, time_local=True,
                          feedback="mirror", mirror_pre=0, mirror_every=1)
    B0 = [b.clone() for b in protocol.B]
    w0 = net.weights["w1"].clone()
    gen = torch.Generator().manual_seed(0)
    x, t = batch([6, 9, 4], torch.Generator().manual_seed(1))
    protocol.train_step(x, t, gen)
    assert not torch.equal(net.weights["w1"], w0)
    assert all(not torch.equal(a, b) for a, b in zip(B0, protocol.B))


# --------------------------------------------------------------------------- checkpoints
def test_mirror_model_trains_and_resumes_exactly(tmp_path):
    model = MODELS / "pepita_mirror_digits.toml"
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", str(model), "--out", str(whole), "--epochs", "4", "--quiet"]) == 0
    assert main(["train", str(model), "--out", str(run), "--epochs", "3", "--quiet"]) == 0
    assert main(["resume", str(run), "--epochs", "4", "--quiet"]) == 0
    a, b = Trainer.resume(run, progress=False), Trainer.resume(whole, progress=False)
    for name in a.net.weights:
        assert torch.equal(a.net.weights[name], b.net.weights[name])
    assert len(a.protocol.B) == 2
    for x, y in zip(a.protocol.B, b.protocol.B):
        assert torch.equal(x, y)
    assert torch.equal(a.protocol.F, b.protocol.F)
    assert list(a.history.rows())[-1]["test_accuracy"] == \
        list(b.history.rows())[-1]["test_accuracy"] > 0.8
    fresh = Trainer.from_model_text(model.read_text(), progress=False)
    assert not torch.equal(fresh.protocol.B[0], a.protocol.B[0])       # B_l did move


def test_time_local_mirror_run_resumes_exactly(tmp_path):
    text = (MODELS / "pepita_mirror_digits.toml").read_text()
    text = text.replace("momentum = 0.9 }", "momentum = 0.9, hebbian = true }")
    text = text.replace("lr = 0.1, momentum", "lr = 0.01, momentum")
    text = text.replace("mirror_every = 1 ", "mirror_every = 1\ntime_local = true ")
    assert text.count("hebbian = true") == 2 and "time_local = true" in text
    model = tmp_path / "tl.toml"
    model.write_text(text)
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", str(model), "--out", str(whole), "--epochs", "4", "--quiet"]) == 0
    assert main(["train", str(model), "--out", str(run), "--epochs", "3", "--quiet"]) == 0
    assert main(["resume", str(run), "--epochs", "4", "--quiet"]) == 0
    a, b = Trainer.resume(run, progress=False), Trainer.resume(whole, progress=False)
    for name in a.net.weights:
        assert torch.equal(a.net.weights[name], b.net.weights[name])
    for x, y in zip(a.protocol.B, b.protocol.B):
        assert torch.equal(x, y)
    assert a.protocol.time_local and a.protocol.config()["time_local"] is True


def test_state_dict_round_trip_and_mismatches():
    _, mirror = bound([6, 9, 4], feedback="mirror")
    state = mirror.state_dict()
    assert set(state) == {"F", "B"} and list(state["B"]) == ["w1", "w2"]
    _, other = bound([6, 9, 4], seed=3, feedback="mirror")
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(mirror.B, other.B))
    assert torch.equal(mirror.F, other.F)
    with pytest.raises(ConfigError, match='trained with feedback = "mirror"'):
        other.load_state_dict({"F": state["F"]})
    with pytest.raises(ConfigError, match="mirrored feedback matrices B_l have shapes"):
        other.load_state_dict({"F": state["F"], "B": {"w1": state["B"]["w1"]}})
    _, fixed = bound([6, 9, 4])
    with pytest.raises(ConfigError, match='this protocol has feedback = "fixed"'):
        fixed.load_state_dict(state)
    assert set(fixed.state_dict()) == {"F"}


def test_config_keys_appear_only_with_the_options_and_rebuild():
    _, plain = bound([6, 9, 4])
    assert set(plain.config()) == {"type", "sign", "output_error", "dropout", "F_scale",
                                   "loss", "normalize"}
    _, both = bound([6, 9, 4], hebbian=True, feedback="mirror", mirror_lr=0.2,
                    time_local=True, time_local_masks="shared")
    cfg = both.config()
    assert cfg["feedback"] == "mirror" and cfg["mirror_lr"] == 0.2
    assert cfg["mirror_weight_decay"] == 1e-4 and cfg["mirror_noise"] == 0.1
    assert cfg["mirror_pre"] == 2 and cfg["mirror_every"] == 100
    assert cfg["mirror_normalize"] is True
    assert cfg["time_local"] is True and cfg["time_local_masks"] == "shared"
    assert build_protocol(cfg).config() == cfg


# --------------------------------------------------------------------------- settings
@pytest.mark.parametrize("options,message", [
    (dict(feedback="mirrored"), 'feedback: "fixed"'),
    (dict(feedback=None), 'feedback: "fixed"'),
    (dict(mirror_lr=0.1), 'mirror_lr: a weight-mirroring setting, used only with feedback'),
    (dict(mirror_every=1), "mirror_every: a weight-mirroring setting"),
    (dict(feedback="mirror", mirror_lr=0.0), r"mirror_lr: a finite number > 0"),
    (dict(feedback="mirror", mirror_lr=float("nan")), r"mirror_lr: a finite number > 0"),
    (dict(feedback="mirror", mirror_lr=True), r"mirror_lr: a finite number > 0"),
    (dict(feedback="mirror", mirror_weight_decay=-1.0), "mirror_weight_decay: a finite "
                                                        "number >= 0"),
    (dict(feedback="mirror", mirror_noise=0), r"mirror_noise: a finite number > 0"),
    (dict(feedback="mirror", mirror_pre=-1), "mirror_pre: a number of epochs"),
    (dict(feedback="mirror", mirror_pre=1.5), "mirror_pre: a number of epochs"),
    (dict(feedback="mirror", mirror_every="often"), "mirror_every: the period in epochs"),
    (dict(feedback="mirror", mirror_normalize=1), "mirror_normalize: true or false"),
    (dict(feedback="mirror", F_scale=0.0), "F_scale: feedback = \"mirror\" keeps std"),
    (dict(time_local="yes"), "time_local: true or false"),
    (dict(time_local_masks="shared"), "time_local_masks: a setting of the time-local"),
    (dict(time_local=True, time_local_masks="new"), 'time_local_masks: "fresh"'),
])
def test_bad_settings_are_clear_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        Pepita(**options)


def test_time_local_needs_hebbian_pepita_rules():
    with pytest.raises(ConfigError, match='rule "pepita" on w1 has hebbian = false'):
        bound([4, 3, 2], time_local=True)
    net = CompiledNetwork(g.Network(
        [g.InputPopulation("x", 4),
         g.PyramidalPopulation("out", 2, leak=0.0, basal=1.0, apical=0.0,
                               activation="softmax")],
        [g.Projection("w", "x", "out", "basal",
                      rules=[{"type": "pepita", "lr": 0.1, "hebbian": True}, Idle()])]),
        dtype=F64)
    with pytest.raises(ConfigError, match='rule "idle" on w is not a "pepita" rule'):
        Pepita(net, time_local=True)
    Pepita(net)                     # the two-pass protocol runs any rule


class Idle(PlasticityRule):
    """A rule that changes nothing."""

    name = "idle"

    def update(self, ctx) -> None:
        pass


def test_model_file_settings_are_checked(tmp_path):
    text = (MODELS / "pepita_mirror_digits.toml").read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("mirror_lr = 0.1", "mirror_lr = -0.1"))
    with pytest.raises(ConfigError, match="mirror_lr"):
        Trainer.from_model_text(bad.read_text(), progress=False)
    bad.write_text(text.replace("mirror_pre = 2", "mirror_pree = 2"))
    with pytest.raises(ConfigError, match="mirror_pre"):
        Trainer.from_model_text(bad.read_text(), progress=False)
