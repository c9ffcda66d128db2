"""Spatial projections (neurosim.graph.projections: "conv2d", "maxpool2d") and the
convolutional PEPITA / backpropagation models built on them: the operators against torch's
own layers, the patch-wise outer product against a literal loop over output positions, one
PEPITA step against a literal float64 implementation of the spec's conv update, the
backpropagation gradients against an nn.Module written in the test, and clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as nnf

import neurosim.graph as g
from neurosim.cli import main
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError
from neurosim.graph import network_from_dict
from neurosim.protocols import Backprop, FeedbackAlignment, Pepita
from neurosim.training import Trainer

F64 = torch.float64
MODELS = Path(__file__).resolve().parents[1] / "models"


def layer(name, size, activation):
    return g.PyramidalPopulation(name, size, leak=0.0, basal=1.0, apical=0.0,
                                 activation=activation)


def conv_network(rules=True, lr=0.1, momentum=0.0, channels=3, image=(2, 7, 7), kernel=3,
                 stride=1, padding=0, pool=2):
    """x (image) -conv-> c (relu) -maxpool-> p (linear) -dense-> out (softmax)."""
    c_in, height, width = image
    conv = g.Conv2dProjection("k", "x", "c", "basal", init="he_uniform", in_shape=list(image),
                              channels=channels, kernel=kernel, stride=stride, padding=padding,
                              rules=[{"type": "pepita", "lr": lr, "momentum": momentum}]
                              if rules else [])
    out_c = conv.out_shape
    pooled = g.MaxPool2dProjection("pool", "c", "p", "basal", in_shape=list(out_c), kernel=pool)
    n_c, n_p = out_c[0] * out_c[1] * out_c[2], 1
    for s in pooled.out_shape:
        n_p *= s
    dense = g.Projection("w", "p", "out", "basal", init="he_uniform",
                         rules=[{"type": "pepita", "lr": lr, "momentum": momentum}]
                         if rules else [])
    return g.Network([g.InputPopulation("x", c_in * height * width), layer("c", n_c, "relu"),
                      layer("p", n_p, "linear"), layer("out", 4, "softmax")],
                     [conv, pooled, dense], name="conv")


def reference_forward(net, x, image):
    """The same network with torch's functional layers."""
    h = torch.relu(nnf.conv2d(x.view(x.shape[0], *image), net.weights["k"]))
    p = nnf.max_pool2d(h, 2).flatten(1)
    return h.flatten(1), p, torch.softmax(p @ net.weights["w"].T, dim=1)


def literal_patch_outer(post, pre, kernel_shape, stride=1, padding=0):
    """sum_b mean_{i,j} post_b[k,i,j] pre_b[c, s i + a - p, s j + b - p], one output position
    at a time (the authors' compute_delta_w_conv, times the batch size)."""
    batch, channels, height, width = post.shape
    _, _, kh, kw = kernel_shape
    pre = nnf.pad(pre, (padding, padding, padding, padding))
    total = torch.zeros(kernel_shape, dtype=post.dtype)
    for i in range(height):
        for j in range(width):
            patch = pre[:, :, stride * i:stride * i + kh, stride * j:stride * j + kw]
            total += torch.einsum("bk,bcuv->kcuv", post[:, :, i, j], patch)
    return total / (height * width)


def test_feedforward_equals_torch_layers():
    net = CompiledNetwork(conv_network(), dtype=F64, seed=1)
    assert tuple(net.weights["k"].shape) == (3, 2, 3, 3) and "pool" not in net.weights
    x = torch.rand(5, 98, dtype=F64)
    state, _ = net.feedforward({"x": x})
    h, p, out = reference_forward(net, x, (2, 7, 7))
    assert torch.allclose(net.r_of(state, "c"), h, atol=1e-14, rtol=0)
    assert torch.allclose(net.r_of(state, "p"), p, atol=1e-14, rtol=0)
    assert torch.allclose(net.r_of(state, "out"), out, atol=1e-14, rtol=0)


@pytest.mark.parametrize("stride,padding", [(1, 0), (2, 1)])
def test_patch_outer_product_equals_literal_loop(stride, padding):
    proj = g.Conv2dProjection("k", "x", "c", "basal", in_shape=[2, 7, 7], channels=3,
                              kernel=3, stride=stride, padding=padding)
    c, h, w = proj.out_shape
    generator = torch.Generator().manual_seed(0)
    post = torch.randn(4, c * h * w, dtype=F64, generator=generator)
    pre = torch.randn(4, 98, dtype=F64, generator=generator)
    got = proj.outer(post, pre)
    want = literal_patch_outer(post.view(4, c, h, w), pre.view(4, 2, 7, 7), (3, 2, 3, 3),
                               stride, padding)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    out = torch.ones(3, 2, 3, 3, dtype=F64)
    proj.add_outer_(out, post, pre, alpha=-0.5)
    assert torch.allclose(out, 1 - 0.5 * want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pepita_conv_step_equals_literal_spec(momentum):
    """Two steps of the conv model: dW_conv = -lr mean_b mean_pos (h - h^mod) x x_mod patch,
    dW_out = -lr e (p^mod)^T / B with the first pass's error, momentum v <- m v + dW."""
    image, lr = (2, 7, 7), 0.05
    net = CompiledNetwork(conv_network(lr=lr, momentum=momentum), dtype=F64, seed=3)
    protocol = Pepita(output_error="standard", F_scale=2.0).bind(net, seed=11)
    weights = {k: w.clone() for k, w in net.weights.items()}
    velocity = {k: torch.zeros_like(w) for k, w in weights.items()}
    generator = torch.Generator().manual_seed(5)
    for _ in range(2):
        x = torch.rand(6, 98, dtype=F64, generator=generator)
        t = nnf.one_hot(torch.randint(0, 4, (6,), generator=generator), 4).to(F64)

        class W:                                # the reference forward reads .weights
            pass
        W.weights = weights
        h, p, out = reference_forward(W, x, image)
        e = out - t
        x_mod = x + e @ protocol.F.T
        hm, pm, _ = reference_forward(W, x_mod, image)
        shape = weights["k"].shape
        oc, oh, ow = shape[0], image[1] - 2, image[2] - 2
        grad_k = literal_patch_outer((h - hm).view(6, oc, oh, ow), x_mod.view(6, *image),
                                     tuple(shape)) / 6
        grad_w = e.T @ pm / 6
        for name, grad in (("k", grad_k), ("w", grad_w)):
            velocity[name] = momentum * velocity[name] - lr * grad
            weights[name] = weights[name] + velocity[name]
        protocol.train_step(x, t, torch.Generator())
        for name in ("k", "w"):
            assert torch.allclose(net.weights[name], weights[name], atol=1e-10, rtol=0), name
    assert not torch.equal(net.weights["k"], CompiledNetwork(conv_network(), dtype=F64,
                                                             seed=3).weights["k"])


def test_pepita_conv_with_zero_F_leaves_the_kernel_unchanged():
    net = CompiledNetwork(conv_network(momentum=0.9), dtype=F64, seed=0)
    protocol = Pepita(F_scale=0.0).bind(net, seed=0)
    kernel, readout = net.weights["k"].clone(), net.weights["w"].clone()
    x = torch.rand(8, 98, dtype=F64)
    t = nnf.one_hot(torch.arange(8) % 4, 4).to(F64)
    for _ in range(3):
        protocol.train_step(x, t, torch.Generator())
    assert torch.equal(net.weights["k"], kernel)
    assert not torch.equal(net.weights["w"], readout)


def test_backprop_conv_gradients_equal_an_nn_module():
    net = CompiledNetwork(conv_network(rules=False), dtype=F64, seed=2)
    protocol = Backprop(lr=0.1, momentum=0.0).bind(net, seed=0)
    x = torch.rand(5, 98, dtype=F64)
    t = nnf.one_hot(torch.arange(5) % 4, 4).to(F64)

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3, bias=False, dtype=F64)
            self.fc = torch.nn.Linear(12, 4, bias=False, dtype=F64)

        def forward(self, inp):
            return self.fc(nnf.max_pool2d(torch.relu(self.conv(inp.view(-1, 2, 7, 7))),
                                          2).flatten(1))
    ref = Reference()
    with torch.no_grad():
        ref.conv.weight.copy_(net.weights["k"])
        ref.fc.weight.copy_(net.weights["w"])
    nnf.cross_entropy(ref(x), t.argmax(1)).backward()
    grads, _, _ = protocol.gradients(x, t)
    assert torch.allclose(grads["weights", "k"], ref.conv.weight.grad, atol=1e-13, rtol=0)
    assert torch.allclose(grads["weights", "w"], ref.fc.weight.grad, atol=1e-13, rtol=0)
    assert ("weights", "pool") not in grads


def two_conv_network():
    """x -conv-> c1 (relu) -conv-> c2 (relu) -maxpool-> p -dense-> out: spatial layers after
    the first, so feedback alignment has a kernel to replace."""
    k1 = g.Conv2dProjection("k1", "x", "c1", "basal", init="he_uniform", in_shape=[2, 7, 7],
                            channels=3, kernel=3)
    k2 = g.Conv2dProjection("k2", "c1", "c2", "basal", init="he_uniform", in_shape=[3, 5, 5],
                            channels=4, kernel=2, padding=1)
    pool = g.MaxPool2dProjection("pool", "c2", "p", "basal", in_shape=[4, 6, 6], kernel=2)
    return g.Network([g.InputPopulation("x", 98), layer("c1", 75, "relu"),
                      layer("c2", 144, "relu"), layer("p", 36, "linear"),
                      layer("out", 4, "softmax")],
                     [k1, k2, pool, g.Projection("w", "p", "out", "basal", init="he_uniform")])


def test_feedback_alignment_with_B_equal_to_the_weights_is_backprop_on_conv_layers():
    settings = dict(lr=0.05, momentum=0.9)
    net_bp = CompiledNetwork(two_conv_network(), dtype=F64, seed=4)
    net_fa = CompiledNetwork(two_conv_network(), dtype=F64, seed=4)
    bp = Backprop(**settings).bind(net_bp, seed=0)
    fa = FeedbackAlignment(**settings).bind(net_fa, seed=0)
    assert sorted(fa.feedback) == ["k2", "w"]                  # no B for the pooling layer
    assert fa.feedback["k2"].shape == net_fa.weights["k2"].shape
    data = torch.Generator().manual_seed(1)
    for _ in range(3):
        fa.feedback["k2"] = net_fa.weights["k2"].clone()
        fa.feedback["w"] = net_fa.weights["w"].T.clone()
        x = torch.rand(6, 98, dtype=F64, generator=data)
        t = nnf.one_hot(torch.randint(0, 4, (6,), generator=data), 4).to(F64)
        bp.train_step(x, t, torch.Generator())
        fa.train_step(x, t, torch.Generator())
        for name in net_bp.weights:
            assert torch.allclose(net_bp.weights[name], net_fa.weights[name], atol=1e-13,
                                  rtol=0), name


def test_feedback_alignment_sends_the_conv_error_through_a_fixed_kernel():
    net = CompiledNetwork(two_conv_network(), dtype=F64, seed=4)
    fa = FeedbackAlignment(lr=0.05).bind(net, seed=0)
    B = fa.feedback["k2"].clone()
    x = torch.rand(5, 98, dtype=F64)
    t = nnf.one_hot(torch.arange(5) % 4, 4).to(F64)
    grads, _, _ = fa.gradients(x, t)
    # the same gradient by hand: autograd on a network whose second kernel is B in the backward
    k1, k2, w = (net.weights[n].clone().requires_grad_() for n in ("k1", "k2", "w"))
    a1 = nnf.conv2d(x.view(5, 2, 7, 7), k1)
    h1 = torch.relu(a1)
    a2_fa = nnf.conv2d(h1.detach(), k2, padding=1) + nnf.conv2d(h1, B, padding=1) - \
        nnf.conv2d(h1, B, padding=1).detach()
    p = nnf.max_pool2d(torch.relu(a2_fa), 2).flatten(1)
    Bw = fa.feedback["w"]                                        # (36 x 4), W^T's shape
    logits = p.detach() @ w.T + p @ Bw - (p @ Bw).detach()       # value p W^T, error via B
    loss = nnf.cross_entropy(logits, t.argmax(1))
    loss.backward()
    assert torch.allclose(grads["weights", "k2"], k2.grad, atol=1e-13, rtol=0)
    assert torch.allclose(grads["weights", "w"], w.grad, atol=1e-13, rtol=0)
    assert not torch.allclose(grads["weights", "k1"], torch.zeros_like(k1))
    assert torch.equal(fa.feedback["k2"], B)


def test_conv_from_an_input_drives_an_ode_phase_and_from_a_dynamic_one_is_refused():
    from neurosim.simulation import Simulation, SimulationOptions
    conv = g.Conv2dProjection("k", "x", "h", "basal", in_shape=[1, 5, 5], channels=2,
                              kernel=3, init="he_uniform")
    network = g.Network([g.InputPopulation("x", 25),
                         g.PyramidalPopulation("h", 18, leak=1.0, basal=1.0, apical=0.0,
                                               activation="linear")], [conv])
    x = torch.rand(25, dtype=F64)
    options = SimulationOptions(solver="euler", duration=40.0, step=0.05, dtype="float64",
                                inputs={"x": x.tolist()})
    sim = Simulation(network, options)
    sim.run()
    drive = nnf.conv2d(x.view(1, 1, 5, 5), sim.net.weights["k"]).flatten(1)
    assert torch.allclose(sim.state["h"].u, drive / 2, atol=1e-6)   # u* = g_B v_B / (g_lk + g_B)
    assert torch.allclose(sim.state["h"].v["basal"], drive, atol=1e-12)
    recurrent = g.Network([g.InputPopulation("x", 25), layer("c", 18, "relu"),
                           layer("d", 18, "relu")],
                          [g.Conv2dProjection("k", "x", "c", "basal", in_shape=[1, 5, 5],
                                              channels=2, kernel=3),
                           g.Conv2dProjection("k2", "c", "d", "basal", in_shape=[2, 3, 3],
                                              channels=2, kernel=1)])
    options = SimulationOptions(solver="euler", duration=1.0, step=0.1, dtype="float64",
                                inputs={"x": x.tolist()})
    with pytest.raises(ConfigError, match="ODE phases integrate spatial projections only from "
                                          "input populations"):
        Simulation(recurrent, options).run()


@pytest.mark.parametrize("table,message", [
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 3, "target_size": 20},
     r"output has shape \[2, 3, 3\] = 18 neurons but target \"h\" has 20; give the target "
     "size = 18"),
    ({"in_shape": [1, 4, 5], "channels": 2, "kernel": 3},
     r"in_shape \[1, 4, 5\] holds 20 neurons but source \"x\" has 25"),
    ({"in_shape": [1, 5], "channels": 2, "kernel": 3}, "in_shape must be"),
    ({"in_shape": [1, 5, 5], "channels": 0, "kernel": 3}, "channels must be a positive"),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 7}, "kernel .* is larger than"),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": [3, 3, 3]}, "kernel must be an integer"),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 3, "mask": [[1]]}, "takes no mask"),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 3,
      "rules": [{"type": "ep_contrastive", "lr": 0.1}]}, "works on dense weight matrices"),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 3, "type": "conv3d"},
     'unknown projection kind "conv3d"'),
    ({"in_shape": [1, 5, 5], "channels": 2, "kernel": 3, "type": None},
     "belongs to a spatial projection"),
    ({"in_shape": [1, 5, 5], "chanels": 2, "kernel": 3}, 'Did you mean "channels"'),
])
def test_model_file_errors(table, message):
    table = dict(table)
    size = table.pop("target_size", 18)
    kind = table.pop("type", "conv2d")
    projection = {"name": "k", "source": "x", "target": "h", "compartment": "basal", **table}
    if kind is not None:
        projection["type"] = kind
    data = {"network": {"name": "n"},
            "population": [{"name": "x", "type": "input", "size": 25},
                           {"name": "h", "type": "pyramidal", "size": size, "leak": 0.0,
                            "basal": 1.0, "apical": 0.0, "activation": "relu"}],
            "projection": [projection]}
    with pytest.raises(ConfigError, match=message):
        network_from_dict(data)


def test_pooling_has_no_weights_and_refuses_rules():
    with pytest.raises(ConfigError, match="has plasticity rules but is not plastic"):
        g.MaxPool2dProjection("pool", "c", "p", "basal", in_shape=[1, 4, 4],
                              rules=[{"type": "pepita", "lr": 0.1}])
    pool = g.MaxPool2dProjection("pool", "c", "p", "basal", in_shape=[2, 5, 5])
    assert pool.out_shape == (2, 2, 2) and not pool.plastic and not pool.has_weight


def test_feedback_angle_is_refused_on_a_conv_model():
    text = (MODELS / "pepita_conv_digits.toml").read_text()
    text = text.replace("[training]\n", '[training]\nmetrics = ["feedback_angle"]\n')
    with pytest.raises(ConfigError, match="product of dense matrices only"):
        Trainer.from_model_text(text, progress=False)


@pytest.mark.parametrize("model", ["pepita_conv_digits", "bp_conv_digits", "fa_conv_digits"])
def test_conv_digits_models_train_and_resume_exactly(tmp_path, model):
    path = MODELS / f"{model}.toml"
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", str(path), "--out", str(whole), "--epochs", "4", "--quiet"]) == 0
    assert main(["train", str(path), "--out", str(run), "--epochs", "2", "--quiet"]) == 0
    assert main(["resume", str(run), "--epochs", "4", "--quiet"]) == 0
    a, b = Trainer.resume(run, progress=False), Trainer.resume(whole, progress=False)
    for name in a.net.weights:
        assert torch.equal(a.net.weights[name], b.net.weights[name])
    assert list(a.history.rows())[-1]["test_accuracy"] == \
        list(b.history.rows())[-1]["test_accuracy"] > 0.85


@pytest.mark.parametrize("model", ["pepita_conv_mnist", "bp_conv_mnist", "pepita_conv_cifar10",
                                   "bp_conv_cifar10"])
def test_published_conv_model_files_build(model):
    from neurosim.graph import load_model_file
    network = load_model_file(MODELS / f"{model}.toml").network()
    conv = network.projection("k1")
    image = 28 if "mnist" in model else 32
    assert conv.in_shape == ((1 if "mnist" in model else 3), image, image)
    assert conv.channels == 32 and conv.kernel == (5, 5)
    assert network.population("out").size == 10


def spatial_input_network():
    """x (1 x 4 x 4) -conv-> c and -maxpool (3 x 3, stride 1, padding 1: same size)-> p."""
    conv = g.Conv2dProjection("k", "x", "c", "basal", init="he_uniform", in_shape=[1, 4, 4],
                              channels=2, kernel=3, padding=1, plastic=False)
    pool = g.MaxPool2dProjection("pool", "x", "p", "basal", in_shape=[1, 4, 4], kernel=3,
                                 stride=1, padding=1)
    linear = dict(leak=1.0, basal=1.0, apical=0.0, activation="linear")
    return g.Network([g.InputPopulation("x", 16), g.PyramidalPopulation("c", 32, **linear),
                      g.PyramidalPopulation("p", 16, **linear)], [conv, pool])


def test_a_stimulus_on_an_input_reaches_conv_and_pooling_targets_as_the_clamped_value_does():
    from neurosim.simulation import Simulation, SimulationOptions
    from neurosim.stimuli import Step, Stimulus
    x = torch.full((16,), 0.5, dtype=F64)
    options = SimulationOptions(solver="euler", duration=40.0, step=0.05, dtype="float64",
                                inputs={"x": x.tolist()})
    sim = Simulation(spatial_input_network(), options,
                     stimuli=[Stimulus("x", Step(amplitude=1.0), indices=[5])])
    sim.run()
    driven = x.clone()
    driven[5] += 1.0                                  # x(t) = x0 + I(t)
    image = driven.view(1, 1, 4, 4)
    conv = nnf.conv2d(image, sim.net.weights["k"], padding=1).flatten(1)
    pooled = nnf.max_pool2d(image, 3, 1, 1).flatten(1)   # the 3 x 3 block around pixel 5
    assert torch.allclose(sim.state["c"].u, conv / 2, atol=1e-6)
    assert torch.allclose(sim.state["p"].u, pooled / 2, atol=1e-6)


@pytest.mark.parametrize("name,message", [("pool", "has no weight matrix"),
                                          ("k", "records a dense")])
def test_weight_monitors_of_spatial_projections_are_refused(name, message):
    from neurosim.simulation import validate_monitor, weight_monitor
    with pytest.raises(ConfigError, match=message):
        validate_monitor(weight_monitor(name), spatial_input_network())


def test_size_estimate_counts_kernels_not_dense_matrices():
    from neurosim import sizing
    estimate = sizing.SizeEstimate("test", "cpu")
    sizes = sizing._network_items(estimate, conv_network(), "float64", 1)
    # kernel 3 x 2 x 3 x 3 and the 4 x 12 dense readout; the pooling has no weights
    assert sizes["weights"] == 8 * (3 * 2 * 3 * 3 + 4 * 12)
    assert not [item for item in estimate.items if item.name == "pool"]


def test_conv_refuses_identity_init_and_a_ragged_kernel():
    with pytest.raises(ConfigError, match='init "identity" gives no kernel'):
        g.Conv2dProjection("k", "x", "c", "basal", init="identity", in_shape=[1, 4, 4],
                           channels=2, kernel=3)
    ragged = g.Conv2dProjection("k", "x", "c", "basal", init=[[[[1.0, 0.0], [0.0]]]],
                                in_shape=[1, 4, 4], channels=1, kernel=2)
    with pytest.raises(ConfigError, match="init is not a numeric array"):
        ragged.initial_weight(9, 16, torch.Generator())


def test_principal_alignment_is_refused_on_a_conv_projection():
    from neurosim.metrics.principal_alignment import PrincipalAlignment
    net = CompiledNetwork(conv_network(), dtype=F64, seed=1)
    with pytest.raises(ConfigError, match="dense weight matrix from an input"):
        PrincipalAlignment("k").setup(net)


def test_conv_needs_a_kernel_size():
    with pytest.raises(ConfigError, match="give the kernel size"):
        g.Conv2dProjection("k", "x", "c", "basal", in_shape=[1, 5, 5], channels=2)
