"""The graph path (neurosim.dynamics.graphs): groups of steps recorded once and replayed.

On a GPU the replays are CUDA graphs. Here (no GPU) :class:`graphs.CpuReplay` reruns the
recorded Python steps with the bookkeeping put back as it was when they were recorded, so the
buffers, keys, copies, held products, monitors and phase reuse of the graph path are checked
against the eager path bit for bit (float64). benchmarks/gpu/check.py compares the two on a
GPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neurosim.dynamics import fused, graphs
from neurosim.errors import SimulationError
from neurosim.io import MonitorSpec, Recorder, open_recording
from neurosim.simulation import Simulation
from neurosim.training import Trainer

from test_fused import model as fused_model
from test_refresh import model as held_model
from test_refresh import reference as held_reference


@pytest.fixture
def replay(monkeypatch):
    """The graph path on the CPU, counting the groups it records."""
    monkeypatch.setattr(graphs, "_cpu_replay", True)
    recorded = []
    capture = graphs.CpuReplay.capture

    def counting(self, fn, restore=None):
        recorded.append(fn)
        return capture(self, fn, restore)
    monkeypatch.setattr(graphs.CpuReplay, "capture", counting)
    return recorded


def run(text: str, mode: str, n_steps=None, **kwargs) -> Simulation:
    with fused.mode(mode):
        sim = Simulation.from_model_text(text)
        stats = sim.run(n_steps, **kwargs)
    sim.stats = stats
    return sim


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("batch", [1, 3])
def test_graph_path_equals_eager(replay, solver, batch):
    text = fused_model(solver=solver, batch=batch, n_steps=300)
    eager, graph = run(text, "off"), run(text, "require")
    assert graph.stats.path == "graph" and eager.stats.path.startswith("eager")
    assert torch.equal(graph.state.u, eager.state.u)
    assert torch.equal(graph.state.r, eager.state.r)
    assert graph.stats.rhs_evals == eager.stats.rhs_evals == 300
    # 300 steps = chunks of 1024 at most, groups of 64: four full groups and one of 44
    assert len(replay) == 2


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("refresh,out_refresh", [(3, 1), (4, 2)])
def test_held_products_follow_the_written_out_steps(replay, solver, refresh, out_refresh):
    """Held products across groups (rounded up to whole refresh periods) against the NumPy
    reference of the held steps, float64."""
    sim = run(held_model(refresh=refresh, out_refresh=out_refresh, solver=solver,
                         n_steps=200), "require")
    assert sim.stats.path == "graph"
    expected = held_reference(sim, 200, refresh, solver == "euler", out_refresh)
    np.testing.assert_allclose(sim.state.u.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cuts", [[7, 200], [50, 61, 200], [130, 200]])
def test_a_cut_run_repeats_the_uncut_one(replay, cuts):
    """Pieces that start between refreshes carry the held products in and out of the
    graphs' buffers."""
    text = held_model(refresh=4, out_refresh=3, n_steps=200)
    whole = run(text, "off")
    with fused.mode("require"):
        sim = Simulation.from_model_text(text)
        for stop in cuts:
            sim.run(stop)
    assert torch.equal(sim.state.u, whole.state.u)


def test_recordings_match_and_groups_are_reused(replay, tmp_path):
    """Soma monitors (every step and every 7th) as probes of the graphs, a dendrite monitor as
    an observer; a second run of the same network records no new group."""
    text = fused_model(batch=2, n_steps=1100)
    monitors = [MonitorSpec("hidden", "soma", "u", indices=(0, 5, 39)),
                MonitorSpec("top", "soma", "r", every=7),
                MonitorSpec("hidden", "apical", "v", every=50)]
    files = {}
    for mode in ("off", "require"):
        out = tmp_path / f"{mode}.h5"
        with fused.mode(mode):
            sim = Simulation.from_model_text(text)
            with Recorder(out, attrs=sim.run_attrs(), config_text=sim.model_text,
                          chunk_size=64) as rec:
                sim.run(monitors=monitors, recorder=rec)
        files[mode] = out
    with open_recording(files["off"]) as a, open_recording(files["require"]) as b:
        assert a.variables() == b.variables()
        for key in a.variables():
            va, vb = a.read(key), b.read(key)
            np.testing.assert_array_equal(vb.values, va.values)
            np.testing.assert_array_equal(vb.time, va.time)
        assert a.read("top/soma/r").values.shape == (158, 2, 4)
    # groups are whole periods of the every-7 monitor (70 steps), in chunks that end at the
    # dendrite monitor's multiples of 50, so several groups are recorded; a second run of the
    # same network records none
    count = len(replay)
    with fused.mode("require"):
        again = Simulation.from_model_text(text)
        again.net = sim.net                     # the same network (its kept graphs)
        again.state = again.net.zero_state(2)
        again.net.clamp_inputs(again.state, again.inputs)
        with Recorder(tmp_path / "again.h5", attrs=again.run_attrs()) as rec:
            again.run(monitors=monitors, recorder=rec)
    assert len(replay) == count
    assert torch.equal(again.state.u, sim.state.u)


def test_training_phases_reuse_their_graphs(replay):
    """EP training (free and nudged phases of every batch): weights equal the eager path's
    after several batches, and the groups recorded for the first batch serve the others."""
    from pathlib import Path
    text = (Path(__file__).resolve().parents[1] / "models" / "corinfomax_digits.toml").read_text()
    results = {}
    for mode in ("off", "require"):
        trainer = Trainer.from_model_text(text, progress=False, dtype="float64")
        x = torch.rand(60, trainer.net.slots["x"].size if "x" in trainer.net.slots else 64,
                       generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        y = torch.arange(60) % 10
        gen = torch.Generator().manual_seed(1)
        with fused.mode(mode), torch.no_grad():
            for i in range(0, 60, 20):
                trainer.protocol.train_step(x[i:i + 20], trainer._one_hot(y[i:i + 20]), gen)
                if i == 0:
                    first = len(replay)
            results[mode] = {k: v.clone() for k, v in trainer.net.weights.items()}
    assert first > 0 and len(replay) == first
    for name, w in results["off"].items():
        assert torch.equal(results["require"][name], w), name


def test_ensemble_phase_equals_eager(replay):
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    network = network_from_dict(parse_model_text(held_model(refresh=3, out_refresh=2)))
    stacked = CompiledNetwork.stacked([CompiledNetwork(network, dtype=torch.float64, seed=s)
                                       for s in range(3)])
    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    finals = {}
    for mode in ("off", "require"):
        state = stacked.zero_state(5)
        stacked.clamp_inputs(state, {"x": x})
        with fused.mode(mode):
            stats = solve(stacked.phase(stacked.build_operators(), {"x": x}), state,
                          solver=get_solver("gs-euler"), schedule=ConstantStep(0.1),
                          n_steps=90)
        finals[mode] = (state.u.clone(), stats.path)
    assert finals["require"][1] == "graph"
    assert torch.equal(finals["require"][0], finals["off"][0])


def test_divergence_is_reported_at_the_same_step(replay):
    text = fused_model(gain_rec=30.0, hidden="linear", inh="linear", dt=0.5, n_steps=2000,
                       inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    errors = {}
    for mode in ("off", "require"):
        with pytest.raises(SimulationError, match="non-finite soma potential") as caught:
            run(text, mode)
        errors[mode] = str(caught.value)
    assert errors["off"] == errors["require"]


def test_what_the_graph_path_cannot_run_takes_the_eager_path(replay):
    """Noise (a draw per step from the phase's generator) and stimuli (currents evaluated in
    Python) run eagerly with the reason; ``require`` refuses them."""
    noisy = fused_model(n_steps=20).replace('activation = "relu"',
                                            'activation = "relu"\nnoise = 0.1')
    sim = run(noisy, "auto")
    assert sim.stats.path.startswith("eager") and "noisy" in sim.stats.path
    with pytest.raises(SimulationError, match="noisy or stochastic.*graph path"):
        run(noisy, "require")
    assert not replay


def test_activations_it_does_not_know_take_the_eager_path(replay):
    """Only the built-in elementwise activations are recorded (a user's may read values on
    the host, which a CUDA graph cannot)."""
    sim = run(fused_model(top="softmax", n_steps=20), "auto")
    assert sim.stats.path.startswith("eager") and "softmax" in sim.stats.path
    assert not replay


@pytest.mark.parametrize("precision", ["full", "bfloat16"])
def test_a_phase_form_serves_calls_under_any_grad_mode(replay, precision):
    """Graphs recorded under inference_mode (as Simulation.run and evaluation run) serve a
    later solve under no_grad (as training steps run) and the reverse: their buffers, the
    held products' and bfloat16 roundings' included, are ordinary tensors."""
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    dtype = torch.float32 if precision == "bfloat16" else torch.float64
    net = CompiledNetwork(network_from_dict(parse_model_text(
        held_model(refresh=3, precision=precision))), dtype=dtype, seed=0)
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0)).to(dtype)
    finals = []
    for context in (torch.inference_mode, torch.no_grad, torch.inference_mode):
        state = net.zero_state(4)
        net.clamp_inputs(state, {"x": x})
        with context(), fused.mode("require"):
            stats = solve(net.phase(net.build_operators(), {"x": x}), state,
                          solver=get_solver("euler"), schedule=ConstantStep(0.1), n_steps=50)
        assert stats.path == "graph"
        finals.append(state.u.clone())
    assert torch.equal(finals[0], finals[1]) and torch.equal(finals[0], finals[2])


def test_a_decaying_schedule_runs_unrecorded_until_its_steps_settle(replay):
    """Groups whose step sizes differ among themselves would each need a graph of their own:
    they run as they are; once the schedule reaches its minimum the groups are recorded."""
    text = fused_model(n_steps=100, dt=0.05).replace(
        "dt = 0.05", 'step = { type = "inverse_time", dt = 0.05, decay = 0.05, minimum = 0.02 }')
    eager, graph = run(text, "off"), run(text, "require")
    assert type(graph.schedule).__name__ == "InverseTimeDecay"
    assert graph.stats.path == "graph"
    assert torch.equal(graph.state.u, eager.state.u)
    # dt reaches its minimum 0.02 at step 30: steps 0-63 run unrecorded, steps 64-99 are one
    # recorded group (a constant schedule would record two)
    assert len(replay) == 1
