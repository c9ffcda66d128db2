"""Cell models beyond the linear soma: the general path, its Jacobians, stochastic activities,
per-neuron biases and population kinds named in model files.

Reference: the cell of examples/nonlinear_cell.py written out by hand in float64,

    h:   du/dt = rate (-g_lk u + A + I),  A = F (0.8 + 0.1 s(2FC) + 0.1 s(2FL))
    out: du/dt = -d u + k W r + b + beta (y - r)      (a linear cell in the same network)
    inh: du/dt = -u + W r                              (point neuron)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import neurosim.solvers.external as external
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError, SimulationError
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Population,
                            Projection, PyramidalPopulation, network_from_dict, parse_model_text)
from neurosim.graph.populations import POPULATION_KINDS, DynamicPopulation
from neurosim.simulation import Simulation
from neurosim.solvers import ConstantStep, get_solver, solve

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                 # "examples.nonlinear_cell:GatedCell"
    sys.path.insert(0, str(ROOT))

from examples.nonlinear_cell import GatedCell, GatedCellAutograd  # noqa: E402

F64 = torch.float64
H_BIAS = (0.1, -0.2, 0.05, 0.0, 0.3)


def mixed_network(cell=GatedCell, activation: str = "tanh") -> Network:
    """x -> h (gated cell: basal, soma) <-> out (linear pyramidal), h <-> inh (interneuron),
    h -> h lateral; out has an identity autapse (gain 0) so that it can be nudged."""
    return Network([
        InputPopulation("x", 3),
        cell("h", 5, activation=activation, bias=H_BIAS, rate=2.0, leak=1.2, basal=1.5,
             apical=0.7, lateral=0.9),
        PyramidalPopulation("out", 3, leak=0.5, basal=1.0, apical=0.5, activation=activation,
                            bias=0.1),
        InterneuronPopulation("inh", 2, activation="sigmoid"),
    ], [
        Projection("x_h", "x", "h", "basal", scale=2.0),
        Projection("x_h_soma", "x", "h", "soma", scale=0.3),
        Projection("h_h", "h", "h", "lateral", init="normal", scale=0.4),
        Projection("out_h", "out", "h", "apical"),
        Projection("inh_h", "inh", "h", "soma", gain=-0.5),
        Projection("h_out", "h", "out", "basal"),
        Projection("out_auto", "out", "out", "soma", init="identity", gain=0.0),
        Projection("h_inh", "h", "inh", "soma", init="uniform", scale=0.5),
    ], name="mixed")


def hand_drift(net: CompiledNetwork, u: torch.Tensor, x: torch.Tensor, nudges=None) -> dict:
    """du/dt of every population, written out from the weights (float64)."""
    nudges = nudges or {}
    w = net.weights
    r = {"h": torch.tanh(u["h"]), "out": torch.tanh(u["out"]), "inh": torch.sigmoid(u["inh"])}
    f = 1.5 * (x @ w["x_h"].T)
    c = 0.7 * (r["out"] @ w["out_h"].T)
    lat = 0.9 * (r["h"] @ w["h_h"].T)
    current = (x @ w["x_h_soma"].T - 0.5 * (r["inh"] @ w["inh_h"].T)
               + torch.tensor(H_BIAS, dtype=F64))
    a = f * (0.8 + 0.1 * torch.sigmoid(2 * f * c) + 0.1 * torch.sigmoid(2 * f * lat))
    out_current = r["h"] @ w["h_out"].T + 0.1
    for name, (y, beta) in nudges.items():
        push = beta * (y - r[name])
        if name == "h":
            current = current + push
        else:
            out_current = out_current + push
    return {"h": 2.0 * (a + current - 1.2 * u["h"]),
            "out": -(0.5 + 1.0 + 0.5) * u["out"] + out_current,
            "inh": -u["inh"] + r["h"] @ w["h_inh"].T}


def random_state(net: CompiledNetwork, batch: int, x: torch.Tensor, seed: int = 1):
    state = net.zero_state(batch)
    state.u.copy_(torch.randn(state.u.shape, generator=torch.Generator().manual_seed(seed),
                              dtype=F64) * 0.7)
    net.clamp_inputs(state, {"x": x})
    net.sync_activity(state)
    return state


def split(net, u):
    return {name: u[:, net.slots[name].u_cols] for name in ("h", "out", "inh")}


X = torch.tensor([[0.5, -0.3, 0.8], [-0.6, 0.2, 0.1]], dtype=F64)
NUDGES = {"h": (torch.tensor([0.2, -0.1, 0.4, 0.0, 0.3], dtype=F64), 0.7),
          "out": (torch.tensor([0.5, -0.5, 0.1], dtype=F64), 0.4)}


# ---------------------------------------------------------------------------- general path
def test_rhs_and_steps_follow_the_cell_equations_in_a_mixed_network():
    net = CompiledNetwork(mixed_network(), dtype=F64, seed=3)
    assert [n for n, s in net.slots.items() if s.cell is not None] == ["h"]
    assert set(net.build_operators()) == {("h", "soma"), ("h", "apical"), ("h", "lateral"),
                                          "out", "inh"}
    state = random_state(net, 2, X)
    dynamics = net.phase(net.build_operators(), {"x": X}, nudges=NUDGES)
    expected = hand_drift(net, split(net, state.u), X, NUDGES)
    du = split(net, dynamics.rhs(state.u, state.r.clone()))
    for name in expected:
        torch.testing.assert_close(du[name], expected[name], rtol=0, atol=1e-12)
    torch.testing.assert_close(dynamics.residual(state),
                               max(e.abs().max() for e in expected.values()), rtol=0, atol=1e-12)

    euler = state.clone()
    dynamics.euler_step_(euler, 0.05)
    for name, u in split(net, euler.u).items():
        h = 0.05 * net.slots[name].rate
        torch.testing.assert_close(u, split(net, state.u)[name] + h / net.slots[name].rate
                                   * expected[name], rtol=0, atol=1e-12)

    # Gauss-Seidel: h first (from the old activities), then out and inh read the new r_h
    gs, u = state.clone(), split(net, state.u)
    dynamics.gauss_seidel_step_(gs, 0.05)
    new = dict(u)
    new["h"] = u["h"] + 0.05 * hand_drift(net, u, X, NUDGES)["h"]
    new["out"] = u["out"] + 0.05 * hand_drift(net, new, X, NUDGES)["out"]
    new["inh"] = u["inh"] + 0.05 * hand_drift(net, new, X, NUDGES)["inh"]
    for name, value in split(net, gs.u).items():
        torch.testing.assert_close(value, new[name], rtol=0, atol=1e-12)
    assert torch.equal(net.r_of(gs, "h"), torch.tanh(net.u_of(gs, "h")))


def test_compartment_potentials_and_finiteness_of_general_cells():
    net = CompiledNetwork(mixed_network(), dtype=F64, seed=3)
    state = random_state(net, 2, X)
    inputs = net.compartment_inputs(state, "h")
    assert list(inputs) == ["soma", "basal", "apical", "lateral"]
    torch.testing.assert_close(inputs["lateral"], net.r_of(state, "h") @ net.weights["h_h"].T)
    torch.testing.assert_close(net.compartment_potential(state, "h", "apical"), inputs["apical"])
    torch.testing.assert_close(inputs["soma"], X @ net.weights["x_h_soma"].T
                               - 0.5 * net.r_of(state, "inh") @ net.weights["inh_h"].T)
    dynamics = net.phase(net.build_operators(), {"x": X})
    state.u[1, net.slots["h"].u_cols.start + 3] = float("inf")
    with pytest.raises(SimulationError, match='population "h", compartment "soma", at step 7 '
                                              r'\(sample 1, neuron 3\)'):
        dynamics.check_finite(state, 7)


def integrate(network, solver: str, t_end: float = 3.0, dt: float = 0.1, **options):
    net = CompiledNetwork(network, dtype=F64, seed=3)
    state = net.zero_state(2)
    net.clamp_inputs(state, {"x": X})
    dynamics = net.phase(net.build_operators(), {"x": X}, nudges=NUDGES)
    solve(dynamics, state, solver=get_solver(solver, **options), schedule=ConstantStep(dt),
          n_steps=round(t_end / dt))
    return state.u


def jacobian_methods(monkeypatch) -> list:
    """Record which way every Jacobian built from now on is computed."""
    methods, build = [], external._jacobian_function

    def recording(*args, **kwargs):
        jac = build(*args, **kwargs)
        methods.append(jac.method)
        return jac

    monkeypatch.setattr(external, "_jacobian_function", recording)
    return methods


def test_rk4_dopri5_and_bdf_agree_with_analytic_and_autograd_jacobians(monkeypatch):
    methods = jacobian_methods(monkeypatch)
    tight = dict(rtol=1e-9, atol=1e-11)
    reference = integrate(mixed_network(), "rk4", dt=0.01)
    assert float(reference.abs().max()) > 0.1          # not a trivial fixed point
    for cell, solver in ((GatedCell, "dopri5"), (GatedCell, "bdf"),
                         (GatedCellAutograd, "bdf")):
        u = integrate(mixed_network(cell), solver, **tight)
        assert float((u - reference).abs().max()) < 1e-6, (cell.__name__, solver)
    assert methods == ["partials", "autograd"]


def test_analytic_partials_equal_the_autograd_jacobian():
    state = random_state(CompiledNetwork(mixed_network(), dtype=F64, seed=3), 2, X)
    blocks = {}
    for cell in (GatedCell, GatedCellAutograd):
        net = CompiledNetwork(mixed_network(cell), dtype=F64, seed=3)
        dynamics = net.phase(net.build_operators(), {"x": X}, nudges=NUDGES)
        jac = external._jacobian_function(dynamics, state.r, sparse=False)
        blocks[jac.method] = jac(0.0, state.u.numpy().ravel())
    assert set(blocks) == {"partials", "autograd"}
    assert abs(blocks["partials"] - blocks["autograd"]).max() < 1e-10
    n = state.u.shape[1]
    assert abs(blocks["autograd"][:n, n:]).max() == 0.0       # samples are independent


def test_exact_linear_jacobian_equals_autograd_and_softmax_uses_autograd():
    def linear(activation):
        return Network([
            InputPopulation("x", 3),
            PyramidalPopulation("a", 4, leak=0.3, activation="tanh"),
            PyramidalPopulation("b", 3, leak=0.2, activation=activation),
        ], [Projection("x_a", "x", "a", "basal"), Projection("a_b", "a", "b", "basal"),
            Projection("b_a", "b", "a", "apical"), Projection("b_b", "b", "b", "apical",
                                                             init="normal", scale=0.3)])
    u = torch.randn(2, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    r = torch.zeros(2, 10, dtype=F64)
    r[:, :3] = X
    net = CompiledNetwork(linear("sigmoid"), dtype=F64, seed=1)
    dynamics = net.phase(net.build_operators(), {"x": X})
    jac = external._jacobian_function(dynamics, r, sparse=False)
    assert jac.method == "linear"
    exact = jac(0.0, u.numpy().ravel())
    by_autograd = external._autograd_blocks(dynamics, r)(u)
    assert abs(exact[:7, :7] - by_autograd[0]).max() < 1e-12
    assert abs(exact[7:, 7:] - by_autograd[1]).max() < 1e-12

    net = CompiledNetwork(linear("softmax"), dtype=F64, seed=1)
    dynamics = net.phase(net.build_operators(), {"x": X})
    assert external._jacobian_function(dynamics, r, sparse=True).method == "autograd"
    state = net.zero_state(2)
    net.clamp_inputs(state, {"x": X})
    ends = []
    for solver in ("bdf", "dopri5"):
        s = state.clone()
        solve(net.phase(net.build_operators(), {"x": X}), s, n_steps=20,
              solver=get_solver(solver, rtol=1e-10, atol=1e-12), schedule=ConstantStep(0.2))
        ends.append(s.u)
    assert float((ends[0] - ends[1]).abs().max()) < 1e-7


# ---------------------------------------------------------------------------- biases
def test_biases_are_tensors_read_when_a_phase_is_built():
    class Learner:
        target = "population"
        name = "learner"

    network = Network([InputPopulation("x", 3),
                       PyramidalPopulation("h", 4, activation="tanh", rules=(Learner(),)),
                       PyramidalPopulation("k", 2, activation="tanh", bias=[0.5, -0.5])],
                      [Projection("x_h", "x", "h", "basal"), Projection("h_k", "h", "k")])
    net = CompiledNetwork(network, dtype=F64)
    assert {k: v.tolist() for k, v in net.biases.items()} == {"h": [0.0] * 4, "k": [0.5, -0.5]}
    ops = net.build_operators()
    state = net.zero_state(2)
    net.clamp_inputs(state, {"x": X})
    before = net.phase(ops, {"x": X})
    net.biases["h"].add_(torch.arange(4, dtype=F64))        # as a population rule would
    after = net.phase(ops, {"x": X})
    delta = after.rhs(state.u, state.r.clone()) - before.rhs(state.u, state.r.clone())
    torch.testing.assert_close(delta[:, :4], torch.arange(4, dtype=F64).expand(2, 4))
    assert float(delta[:, 4:].abs().max()) == 0.0


# ---------------------------------------------------------------------------- model files
def gated_model(cell_type: str = "examples.nonlinear_cell:GatedCell", extra: str = "",
                solver: str = "rk4", activation: str = "tanh") -> str:
    return f"""
[network]
name = "gated"

[[population]]
name = "x"
type = "input"
size = 2

[[population]]
name = "h"
type = "{cell_type}"
size = 3
activation = "{activation}"
bias = [0.5, -0.25, 1.0]
rate = 2.0
{extra}

[[population]]
name = "lin"
type = "interneuron"
size = 3
activation = "linear"
bias = [1.0, 2.0, -1.0]

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = "zeros"

[simulation]
solver = "{solver}"
duration = 2.0
dt = 0.01
batch = 2
dtype = "float64"
inputs = {{ x = {{ type = "constant", value = 1.0 }} }}
"""


def test_a_kind_named_by_import_path_runs_with_per_neuron_biases(tmp_path):
    path = tmp_path / "gated.toml"
    path.write_text(gated_model())
    sim = Simulation.from_model_text(path.read_text(), str(path))
    assert type(sim.network.population("h")) is GatedCell
    assert sim.net.biases["h"].tolist() == [0.5, -0.25, 1.0]
    sim.run()
    # no inputs but the bias: u(t) = b (1 - exp(-rate g_lk t)) (both cells, leak 1)
    for name, rate in (("h", 2.0), ("lin", 1.0)):
        b = sim.net.biases[name]
        torch.testing.assert_close(sim.net.u_of(sim.state, name),
                                   (b * (1 - torch.exp(torch.tensor(-rate * 2.0,
                                                                    dtype=F64)))).expand(2, 3),
                                   rtol=0, atol=1e-9)


def test_a_registered_kind_is_found_by_name(monkeypatch):
    monkeypatch.setitem(POPULATION_KINDS, "gated", GatedCell)
    network = network_from_dict(parse_model_text(gated_model("gated", "lateral = 0.5")), "m.toml")
    assert network.population("h").compartments == {"basal": 1.0, "apical": 1.0, "lateral": 0.5}


@pytest.mark.parametrize("cell_type, extra, fragments", [
    ("examples.nonlinear_cell:Gated", "",
     ['m.toml [[population]] #2 "h": cannot import population kind '
      '"examples.nonlinear_cell:Gated"', "PYTHONPATH"]),
    ("examples.no_such_module:GatedCell", "",
     ["cannot import population kind", "No module named 'examples.no_such_module'"]),
    ("neurosim.graph:Projection", "",
     ['"neurosim.graph:Projection" is not a population kind (a subclass of Population)']),
    ("gatd", "", ['unknown type "gatd".', "Valid types: input, pyramidal, interneuron, infomorphic.",
                  '"package.module:Class"']),
    ("examples.nonlinear_cell:GatedCell", "laterl = 0.5",
     ['[[population]] #2 "h": unknown key "laterl".', 'Did you mean "lateral"?',
      "Valid keys: activation, apical, basal, bias, dendrites, fixed_step, lateral,"]),
    ("pyramidal", "lateral = 0.5",
     ['"h": unknown key "lateral".', "Valid keys: activation, apical, basal, bias, dendrites, "
      "fixed_step, leak, name, noise, rate, rules, size, type."]),
    ("examples.nonlinear_cell:GatedCell", "dendrites = { extra = 1.0 }",
     ['"h": population "h" (kind "gated"): this cell has exactly the dendrites basal, '
      "apical and lateral"]),
    ("examples.nonlinear_cell:GatedCell", "rules = 3", ['"h": rules must be a list of tables']),
])
def test_bad_kinds_and_keys(cell_type, extra, fragments):
    with pytest.raises(ConfigError) as info:
        network_from_dict(parse_model_text(gated_model(cell_type, extra)), "m.toml")
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_a_type_that_is_not_a_string():
    data = {"population": [{"name": "h", "type": ["gated"], "size": 3}]}
    with pytest.raises(ConfigError, match=r'm.toml \[\[population\]\] #1 "h": type must be a '
                                          r"string naming a population kind, got \['gated'\]."):
        network_from_dict(data, "m.toml")


def test_a_bare_population_class_is_not_a_cell():
    network = Network([InputPopulation("x", 2), Population("h", 3)])
    with pytest.raises(ConfigError, match='population "h" .* is neither an input nor a cell '
                                          "model; derive its class from DynamicPopulation"):
        CompiledNetwork(network)


# ---------------------------------------------------------------------------- stochastic
def test_stochastic_sign_is_reproducible_with_euler_and_refused_by_other_solvers():
    def run(solver, seed):
        sim = Simulation.from_model_text(gated_model(solver=solver, activation="stochastic_sign",
                                                     extra="noise = 0.1"), seed=seed)
        sim.run(50)
        return sim.state

    for solver in ("euler", "gs-euler"):
        first, again, other = run(solver, 3), run(solver, 3), run(solver, 4)
        assert torch.equal(first.u, again.u) and torch.equal(first.r, again.r)
        assert not torch.equal(first.r[:, 2:5], other.r[:, 2:5])
        assert set(first.r[:, 2:5].unique().tolist()) == {-1.0, 1.0}
    for solver in ("rk4", "heun", "dopri5", "bdf"):
        with pytest.raises(SimulationError) as info:
            Simulation.from_model_text(gated_model(solver=solver,
                                                   activation="stochastic_sign")).run(5)
        assert (f'solver "{get_solver(solver).name}" cannot integrate populations with '
                "stochastic activations (h)") in str(info.value)
        assert "Use euler or gs-euler" in str(info.value)


def test_a_cell_that_overrides_activate_is_used_by_every_step():
    class Halved(DynamicPopulation):
        def activate(self, u, generator=None, out=None):
            return torch.mul(torch.tanh(u), 0.5, out=out)

    network = Network([InputPopulation("x", 3), Halved("h", 2, activation="tanh")],
                      [Projection("x_h", "x", "h")])
    net = CompiledNetwork(network, dtype=F64)
    state = net.zero_state(2)
    net.clamp_inputs(state, {"x": X})
    dynamics = net.phase(net.build_operators(), {"x": X})
    for step in (dynamics.euler_step_, dynamics.gauss_seidel_step_):
        step(state, 0.1)
        torch.testing.assert_close(net.r_of(state, "h"), 0.5 * torch.tanh(net.u_of(state, "h")))
    r = state.r.clone()
    assert external._jacobian_function(dynamics, r, sparse=False).method == "autograd"
