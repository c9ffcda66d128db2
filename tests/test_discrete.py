"""The discrete (feed-forward, no ODE) pass: ``CompiledNetwork.feedforward``.

Reference: a 3-layer network written out by hand, ``h_1 = relu(W_1 x + b_1)``,
``h_2 = tanh(W_2 h_1 + b_2)``, ``y = softmax(W_3 h_2 + b_3)`` (linear cells with leak 0,
basal 1, apical 0: u* = v_basal + v_soma), with dropout masks m applied as ``h * m``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from neurosim.dynamics import CompiledNetwork, NeuralState
from neurosim.errors import ConfigError
from neurosim.graph import InputPopulation, Network, Projection, PyramidalPopulation
from neurosim.graph.populations import DynamicPopulation

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.nonlinear_cell import GatedCell  # noqa: E402

F64 = torch.float64
LAYER = dict(leak=0.0, basal=1.0, apical=0.0)


def three_layers(top_down: bool = False) -> Network:
    projections = [Projection("x_h1", "x", "h1", "basal"), Projection("h1_h2", "h1", "h2", "basal"),
                   Projection("h2_y", "h2", "y", "basal")]
    if top_down:                                    # a projection from a later population
        projections.append(Projection("y_h1", "y", "h1", "soma", init="uniform"))
    return Network([
        InputPopulation("x", 6),
        PyramidalPopulation("h1", 8, activation="relu", bias=[0.1 * i - 0.3 for i in range(8)],
                            **LAYER),
        PyramidalPopulation("h2", 5, activation="tanh", bias=0.2, **LAYER),
        PyramidalPopulation("y", 3, activation="softmax", bias=[0.0, 0.5, -0.5], **LAYER),
    ], projections, name="mlp")


def by_hand(net: CompiledNetwork, x: torch.Tensor, masks=None) -> dict:
    masks = masks or {}
    w, b = net.weights, net.biases
    h1 = torch.relu(x @ w["x_h1"].T + b["h1"]) * masks.get("h1", 1.0)
    h2 = torch.tanh(h1 @ w["h1_h2"].T + b["h2"]) * masks.get("h2", 1.0)
    y = torch.softmax(h2 @ w["h2_y"].T + b["y"], dim=1)
    return {"h1": h1, "h2": h2, "y": y}


X = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_feedforward_is_the_layered_forward_pass():
    net = CompiledNetwork(three_layers(), dtype=F64, seed=1)
    state, masks = net.feedforward({"x": X})
    assert masks == {}
    for name, r in by_hand(net, X).items():
        torch.testing.assert_close(net.r_of(state, name), r, rtol=0, atol=1e-14)
    torch.testing.assert_close(net.u_of(state, "h2"), net.r_of(state, "h1") @ net.weights["h1_h2"].T
                               + 0.2, rtol=0, atol=1e-14)
    torch.testing.assert_close(net.r_of(state, "x"), X, rtol=0, atol=0)
    one, _ = net.feedforward({"x": X[0]})                  # a single sample as a vector
    torch.testing.assert_close(one.r, state.r[:1], rtol=0, atol=1e-14)


def test_later_populations_are_read_from_the_given_state():
    net = CompiledNetwork(three_layers(top_down=True), dtype=F64, seed=1)
    first, _ = net.feedforward({"x": X})                   # y not yet visited: reads 0
    torch.testing.assert_close(net.r_of(first, "h1"), by_hand(net, X)["h1"], rtol=0, atol=1e-14)
    second, _ = net.feedforward({"x": X}, state=first)     # y read from the first pass
    expected = torch.relu(X @ net.weights["x_h1"].T + net.r_of(first, "y") @ net.weights["y_h1"].T
                          + net.biases["h1"])
    torch.testing.assert_close(net.r_of(second, "h1"), expected, rtol=0, atol=1e-14)
    assert not torch.equal(net.r_of(first, "h1"), net.r_of(second, "h1"))


def test_dropout_masks_are_seeded_and_reusable():
    net = CompiledNetwork(three_layers(), dtype=F64, seed=1)
    dropout = {"h1": 0.5, "h2": 0.25}

    def run(seed):
        return net.feedforward({"x": X}, dropout=dropout,
                               generator=torch.Generator().manual_seed(seed))

    state, masks = run(7)
    assert set(masks) == {"h1", "h2"}
    assert set(masks["h1"].unique().tolist()) == {0.0, 2.0}
    assert set(masks["h2"].unique().tolist()) <= {0.0, 1 / 0.75}
    for name, r in by_hand(net, X, masks).items():
        torch.testing.assert_close(net.r_of(state, name), r, rtol=0, atol=1e-14)
    again, masks_again = run(7)
    assert torch.equal(again.r, state.r)
    assert all(torch.equal(masks[k], masks_again[k]) for k in masks)
    assert not torch.equal(run(8)[1]["h1"], masks["h1"])
    # a second pass (e.g. PEPITA's modulated pass) reuses the first pass's masks, no generator
    reused, masks_reused = net.feedforward({"x": X}, dropout=dropout, masks=masks)
    assert torch.equal(reused.r, state.r) and masks_reused.keys() == masks.keys()
    modulated, _ = net.feedforward({"x": X + 0.1}, masks=masks)
    for name, r in by_hand(net, X + 0.1, masks).items():
        torch.testing.assert_close(net.r_of(modulated, name), r, rtol=0, atol=1e-14)


def test_a_nonlinear_cell_uses_its_feedforward_or_says_it_has_none():
    network = Network([InputPopulation("x", 6), GatedCell("g", 4, activation="tanh", leak=2.0,
                                                         bias=[0.1, 0.2, 0.3, 0.4])],
                      [Projection("x_g", "x", "g", "basal"),
                       Projection("x_g_apical", "x", "g", "apical", init="normal")])
    net = CompiledNetwork(network, dtype=F64, seed=2)
    state, _ = net.feedforward({"x": X})
    f, c = X @ net.weights["x_g"].T, X @ net.weights["x_g_apical"].T
    a = f * (0.8 + 0.1 * torch.sigmoid(2 * f * c) + 0.1 * torch.sigmoid(torch.zeros_like(f)))
    torch.testing.assert_close(net.u_of(state, "g"), (a + net.biases["g"]) / 2.0, rtol=0,
                               atol=1e-14)

    @dataclass(frozen=True)
    class Squashed(DynamicPopulation):
        def drift(self, u, v):
            return torch.tanh(v["soma"]) - u

    net = CompiledNetwork(Network([InputPopulation("x", 6), Squashed("s", 2)],
                                  [Projection("x_s", "x", "s")]), dtype=F64)
    with pytest.raises(ConfigError, match=r'population "s" \(kind "population"\) defines no '
                                          r"feedforward\(v\) for discrete passes"):
        net.feedforward({"x": X})


def test_stochastic_activations_draw_from_the_generator():
    network = Network([InputPopulation("x", 6),
                       PyramidalPopulation("s", 16, activation="stochastic_sign", **LAYER)],
                      [Projection("x_s", "x", "s", "basal")])
    net = CompiledNetwork(network, dtype=F64)

    def draw(seed):
        return net.feedforward({"x": X}, generator=torch.Generator().manual_seed(seed))[0].r

    assert torch.equal(draw(3), draw(3)) and not torch.equal(draw(3), draw(4))
    assert set(net.r_of(NeuralState(None, draw(3)), "s").unique().tolist()) == {-1.0, 1.0}


def test_compartment_inputs_exclude_the_bias():
    net = CompiledNetwork(three_layers(top_down=True), dtype=F64, seed=1)
    state, _ = net.feedforward({"x": X})
    inputs = net.compartment_inputs(state, "h1")
    assert list(inputs) == ["soma", "basal", "apical"]
    torch.testing.assert_close(inputs["basal"], X @ net.weights["x_h1"].T)
    torch.testing.assert_close(inputs["soma"], net.r_of(state, "y") @ net.weights["y_h1"].T)
    assert float(inputs["apical"].abs().max()) == 0.0
    torch.testing.assert_close(net.compartment_potential(state, "h1", "basal"), inputs["basal"])
    with pytest.raises(ConfigError, match='population "x" is an input'):
        net.compartment_inputs(state, "x")


@pytest.mark.parametrize("kwargs, fragments", [
    ({"dropout": {"h1": 1.0}, "generator": torch.Generator()},
     ['dropout for population "h1": the drop probability must be a number in [0, 1), got 1.0.']),
    ({"dropout": {"h1": 0.5}},
     ['dropout on population "h1" draws a random mask: pass generator= (or masks= from an '
      "earlier pass)."]),
    ({"dropout": {"x": 0.5}, "generator": torch.Generator()},
     ['feedforward dropout: population "x" is an input (clamped)']),
    ({"masks": {"h11": torch.ones(4, 8)}},
     ['feedforward masks: unknown population "h11".', 'Did you mean "h1"?']),
    ({"masks": {"h2": torch.ones(2, 5)}},
     ['dropout mask for population "h2" has shape (2, 5), the pass needs (4, 5)']),
])
def test_bad_dropout_and_masks(kwargs, fragments):
    net = CompiledNetwork(three_layers(), dtype=F64, seed=1)
    with pytest.raises(ConfigError) as info:
        net.feedforward({"x": X}, **kwargs)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_missing_input():
    net = CompiledNetwork(three_layers(), dtype=F64, seed=1)
    with pytest.raises(ConfigError, match='input population "x" feeds projection "x_h1" but no '
                                          "input was given"):
        net.feedforward({})
