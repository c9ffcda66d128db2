"""Held products (a projection's ``refresh_every`` > 1): W r recomputed at steps 0, k, 2k, ...
of a phase and held in between, on the eager path and the fused loop alike."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.dynamics import CompiledNetwork, fused
from neurosim.errors import ConfigError
from neurosim.graph import network_from_dict, parse_model_text
from neurosim.simulation import Simulation
from neurosim.solvers import ConstantStep, get_solver, solve


def model(*, refresh=3, precision="full", solver="gs-euler", batch=4, dtype="float64",
          n_steps=23, out_refresh=1) -> str:
    """x (6, clamped) -> h (30, clip[0, 1]) with a recurrent apical projection (held) <-> o (4)."""
    return f"""
[network]
name = "held"

[[population]]
name = "x"
type = "input"
size = 6

[[population]]
name = "h"
type = "pyramidal"
size = 30
leak = 0.5
basal = 2.0
apical = 1.5

[[population]]
name = "o"
type = "pyramidal"
size = 4
leak = 0.3
basal = 1.0
apical = 1.0
activation = "tanh"

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "h_h"
source = "h"
target = "h"
compartment = "apical"
init = "normal"
scale = 0.3
precision = "{precision}"
refresh_every = {refresh}

[[projection]]
name = "h_o"
source = "h"
target = "o"
compartment = "basal"

[[projection]]
name = "o_h"
source = "o"
target = "h"
compartment = "apical"

[[projection]]
name = "o_o"
source = "o"
target = "o"
compartment = "apical"
init = "normal"
scale = 0.2
refresh_every = {out_refresh}

[simulation]
solver = "{solver}"
dt = 0.1
n_steps = {n_steps}
batch = {batch}
dtype = "{dtype}"
seed = 5
inputs = {{ x = {{ type = "uniform", low = 0.0, high = 1.0 }} }}
"""


def reference(sim: Simulation, n_steps: int, refresh: int, jacobi: bool,
              out_refresh: int = 1) -> np.ndarray:
    """The model's Euler steps written out in NumPy (float64): h's recurrent product (and o's
    own, with ``out_refresh``) recomputed at steps 0, k, 2k, ... and held in between."""
    w = {name: sim.net.weights[name].double().numpy() for name in sim.net.weights}
    x = sim.state.r[:, :6].double().numpy()
    batch = x.shape[0]
    u_h, u_o = np.zeros((batch, 30)), np.zeros((batch, 4))
    held_h, held_o = np.zeros((batch, 30)), np.zeros((batch, 4))
    h = 0.1
    for k in range(n_steps):
        r_h, r_o = np.clip(u_h, 0, 1), np.tanh(u_o)
        if k % refresh == 0:
            held_h = r_h @ w["h_h"].T
        drive_h = 2.0 * (x @ w["x_h"].T) + 1.5 * (held_h + r_o @ w["o_h"].T)
        u_h = u_h + h * (-(0.5 + 2.0 + 1.5) * u_h + drive_h)
        r_h_now = r_h if jacobi else np.clip(u_h, 0, 1)
        if k % out_refresh == 0:
            held_o = r_o @ w["o_o"].T
        drive_o = 1.0 * (r_h_now @ w["h_o"].T) + 1.0 * held_o
        u_o = u_o + h * (-(0.3 + 1.0 + 1.0) * u_o + drive_o)
    return np.concatenate([u_h, u_o], axis=1)


@pytest.mark.parametrize("mode", ["off", "require"])
@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("batch", [4, 40])
@pytest.mark.parametrize("refresh,out_refresh", [(3, 1), (4, 2), (1, 1)])
def test_held_products_follow_the_written_out_steps(mode, solver, batch, refresh, out_refresh):
    """Eager and fused (neurons split at batch 4, tiles of samples at batch 40) against a
    NumPy reference of the held steps, float64."""
    if mode == "require" and fused.library() is None:
        pytest.skip(f"no fused loop here: {fused.build_error()}")
    with fused.mode(mode):
        sim = Simulation.from_model_text(model(refresh=refresh, solver=solver, batch=batch,
                                               out_refresh=out_refresh))
        stats = sim.run()
    if mode == "require":
        assert stats.path == "fused"
    expected = reference(sim, 23, refresh, solver == "euler", out_refresh)
    np.testing.assert_allclose(sim.state.u.numpy(), expected, rtol=0, atol=1e-12)
    if refresh > 1:      # the held steps differ from the exact ones
        exact = reference(sim, 23, 1, solver == "euler")
        assert np.abs(sim.state.u.numpy() - exact).max() > 1e-6


@pytest.mark.parametrize("mode", ["off", "require"])
def test_a_phase_cut_into_solves_holds_across_the_cut(mode):
    """Steps 0-7 and 7-23 as two solves of one phase repeat the uncut run bit for bit (the
    held product of step 6 carries over the cut)."""
    if mode == "require" and fused.library() is None:
        pytest.skip(f"no fused loop here: {fused.build_error()}")
    net = CompiledNetwork(network_from_dict(parse_model_text(model())), dtype=torch.float64,
                          seed=1)
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(0))
    finals = []
    for cuts in ([23], [7, 23]):
        operators = net.build_operators()
        dynamics = net.phase(operators, {"x": x})
        state = net.zero_state(5)
        net.clamp_inputs(state, {"x": x})
        start = 0
        with fused.mode(mode):
            for stop in cuts:
                solve(dynamics, state, solver=get_solver("gs-euler"),
                      schedule=ConstantStep(0.1), n_steps=stop, step0=start)
                start = stop
        finals.append(state.u.clone())
    assert torch.equal(finals[0], finals[1])


def test_bfloat16_held_products_agree_between_paths():
    """float32 with the held product in bfloat16 (here a large term, so bfloat16's error is
    large too): both paths stay as close to the float64 held steps as they do without
    holding."""
    if fused.library() is None or not fused.library().neurosim_bfloat16():
        pytest.skip("no bfloat16 loop here")
    for refresh in (1, 3):
        exact = Simulation.from_model_text(model(refresh=refresh, batch=40))
        exact.run()
        for mode in ("off", "require"):
            with fused.mode(mode):
                sim = Simulation.from_model_text(model(refresh=refresh, precision="bfloat16",
                                                       dtype="float32", batch=40))
                sim.run()
            assert float((sim.state.u.double() - exact.state.u).abs().max()) < 5e-3


def test_ensemble_members_hold_as_their_own_runs():
    """An ensemble's held products, stepped member by member and all members in one call,
    equal each member's separate run (float64)."""
    if fused.library() is None:
        pytest.skip(f"no fused loop here: {fused.build_error()}")
    network = network_from_dict(parse_model_text(model()))
    nets = [CompiledNetwork(network, dtype=torch.float64, seed=s) for s in range(3)]
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 20, 6, generator=g, dtype=torch.float64)
    alone = []
    for m, net in enumerate(nets):
        state = net.zero_state(20)
        net.clamp_inputs(state, {"x": x[m]})
        with fused.mode("off"):
            solve(net.phase(net.build_operators(), {"x": x[m]}), state,
                  solver=get_solver("gs-euler"), schedule=ConstantStep(0.1), n_steps=17)
        alone.append(state.u.clone())
    ensemble = CompiledNetwork.stacked(nets)
    for check in (1, 0):             # member by member; all members in one call
        state = ensemble.zero_state(20)
        ensemble.clamp_inputs(state, {"x": x})
        with fused.mode("require"):
            solve(ensemble.phase(ensemble.build_operators(), {"x": x}), state,
                  solver=get_solver("gs-euler"), schedule=ConstantStep(0.1), n_steps=17,
                  check_finite_every=check)
        for m in range(3):
            torch.testing.assert_close(state.u[m], alone[m], rtol=0, atol=1e-13)


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("refresh_every = 3", "refresh_every = 0"), "whole number of steps"),
    (lambda t: t.replace("refresh_every = 3", "refresh_every = 2.5"), "whole number of steps"),
    (lambda t: t.replace('name = "x_h"\nsource = "x"', 'name = "x_h"\nrefresh_every = 2\n'
                                                       'source = "x"'), "its source is an input"),
    (lambda t: re.sub(r'(name = "o_h"\n)', r'\1refresh_every = 2\n', t), "must share precision"),
])
def test_bad_refresh_settings_are_clear_errors(change, message):
    with pytest.raises(ConfigError, match=message):
        Simulation.from_model_text(change(model()))


@pytest.mark.parametrize("solver", ["rk4", "heun"])
def test_solvers_without_discrete_steps_refuse_held_products(solver):
    sim = Simulation.from_model_text(model(solver=solver))
    with pytest.raises(ConfigError, match="refresh_every"):
        sim.run()


def test_corinfomax_model_file_holds_the_lateral_product():
    """The MNIST model file holds 2 gamma B r over 4 steps; its template passes it on."""
    from neurosim.models.corinfomax import corinfomax_graph
    tables = corinfomax_graph([8, 6, 3], lateral_refresh_every=4)
    lateral = [p for p in tables["projection"] if p["name"].startswith("lat")]
    assert lateral and all(p["refresh_every"] == 4 for p in lateral)
    text = (Path(__file__).resolve().parents[1] / "models" / "corinfomax_ainf_mnist.toml").read_text()
    assert re.search(r"^lateral_refresh_every = 4", text, re.M)


def test_continuous_plasticity_refuses_held_products():
    examples = Path(__file__).resolve().parents[1] / "examples"
    text = model(solver="rk4").replace('refresh_every = 3\n', 'refresh_every = 3\n'
                                       'rules = [{ type = "oja:Oja", lr = 0.01 }]\n')
    with pytest.raises(ConfigError, match="continuous plasticity"):
        Simulation.from_model_text(text, base_dir=examples, plasticity="continuous")


@pytest.mark.parametrize("mode", ["off", "require"])
def test_a_simulation_cut_or_resumed_between_refreshes_repeats_the_uncut_run(tmp_path, mode):
    """run(7); run(23), and a checkpoint at step 7 resumed to 23, step as run(23): the held
    products carry over (and are stored in the checkpoint)."""
    if mode == "require" and fused.library() is None:
        pytest.skip(f"no fused loop here: {fused.build_error()}")
    with fused.mode(mode):
        whole = Simulation.from_model_text(model())
        whole.run(23)
        cut = Simulation.from_model_text(model())
        cut.run(7)
        cut.save_checkpoint(tmp_path / "at7.h5")
        cut.run(23)
        resumed = Simulation.load_checkpoint(tmp_path / "at7.h5")
        resumed.run(23)
        again = Simulation.from_model_text(model())      # checkpoints written mid-run
        again.run(23, checkpoint=tmp_path / "every5.h5", checkpoint_every=5)
        from_mid = Simulation.load_checkpoint(tmp_path / "every5.h5")
    assert from_mid.step == 20
    with fused.mode(mode):
        from_mid.run(23)
    for sim in (cut, resumed, again, from_mid):
        assert torch.equal(sim.state.u, whole.state.u)


@pytest.mark.parametrize("first,second", [("off", "require"), ("require", "off")])
def test_ensemble_members_apart_hold_the_phase_products(first, second):
    """Large ensemble states step member by member on the eager path; a phase cut at step 7
    holds across the cut whichever path takes each part."""
    if fused.library() is None:
        pytest.skip(f"no fused loop here: {fused.build_error()}")
    network = network_from_dict(parse_model_text(model(out_refresh=2)))
    ensemble = CompiledNetwork.stacked([CompiledNetwork(network, dtype=torch.float64, seed=s)
                                        for s in range(2)])
    batch = 3000                      # 3000 x 34 potentials per member: stepped apart
    x = torch.rand(2, batch, 6, generator=torch.Generator().manual_seed(2),
                   dtype=torch.float64)
    finals = []
    for plan in ([(17, "off")], [(7, first), (17, second)]):
        dynamics = ensemble.phase(ensemble.build_operators(), {"x": x})
        state = ensemble.zero_state(batch)
        ensemble.clamp_inputs(state, {"x": x})
        start = 0
        for stop, mode in plan:
            with fused.mode(mode):
                solve(dynamics, state, solver=get_solver("gs-euler"),
                      schedule=ConstantStep(0.1), n_steps=stop, step0=start,
                      check_finite_every=0)
            start = stop
        finals.append(state.u.clone())
    torch.testing.assert_close(finals[1], finals[0], rtol=0, atol=1e-13)


def test_a_mixed_operator_is_refused_on_every_machine():
    """A held full-precision projection beside an "auto" one large enough to resolve to
    bfloat16 (130 x 130) is refused whether or not this CPU resolves it so."""
    text = model().replace('size = 30', 'size = 130').replace(
        'name = "o_h"\nsource = "o"\ntarget = "h"', 'name = "o_h"\nsource = "h"\ntarget = "h"'
        '\nprecision = "auto"')
    with pytest.raises(ConfigError, match="must share precision"):
        Simulation.from_model_text(text)


def test_refresh_every_accepts_integer_types():
    from neurosim.graph.projections import Projection
    assert Projection("p", "a", "b", refresh_every=np.int64(3)).refresh_every == 3
