"""The fused path (neurosim.dynamics.fused): many Euler steps in one compiled call. Every
test runs the same simulation on the fused and on the eager path and compares them."""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from neurosim.dynamics import fused
from neurosim.errors import SimulationError
from neurosim.io import MonitorSpec, Recorder, open_recording
from neurosim.simulation import Simulation

if fused.library() is None and os.environ.get("NEUROSIM_REQUIRE_FUSED"):   # set by .ci/run
    raise RuntimeError(f"the fused loop cannot be built here: {fused.build_error()}")
pytestmark = pytest.mark.skipif(fused.library() is None,
                                reason=f"no fused loop here: {fused.build_error()}")


def model(*, solver="euler", batch=1, dtype="float64", hidden="sigmoid", top="tanh",
          inh="relu", fixed_step="", narrow=4, n_steps=300, dt=0.05, extra="",
          gain_rec=0.4, inputs="x = { values = [0.2, -0.4, 0.9, 0.1, 0.5] }") -> str:
    """Input x (5) -> hidden (40, recurrent) <-> top (``narrow`` neurons, so its operator is
    column-major) and an interneuron pool (3) feeding back onto hidden's apical dendrite."""
    return f"""
[network]
name = "fused_test"

[[population]]
name = "x"
type = "input"
size = 5

[[population]]
name = "hidden"
type = "pyramidal"
size = 40
leak = 0.3
basal = 1.0
apical = 0.5
bias = 0.1
activation = "{hidden}"
{fixed_step}

[[population]]
name = "top"
type = "pyramidal"
size = {narrow}
leak = 0.2
basal = 1.0
apical = 0.5
rate = 2.0
activation = "{top}"

[[population]]
name = "inh"
type = "interneuron"
size = 3
activation = "{inh}"

[[projection]]
name = "x_hidden"
source = "x"
target = "hidden"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "hidden_hidden"
source = "hidden"
target = "hidden"
compartment = "apical"
init = "normal"
scale = {gain_rec}

[[projection]]
name = "hidden_top"
source = "hidden"
target = "top"
compartment = "basal"

[[projection]]
name = "top_hidden"
source = "top"
target = "hidden"
compartment = "apical"

[[projection]]
name = "hidden_inh"
source = "hidden"
target = "inh"
init = "ones"
scale = 0.05

[[projection]]
name = "inh_hidden"
source = "inh"
target = "hidden"
compartment = "apical"
init = "ones"
gain = -0.5

[simulation]
solver = "{solver}"
dt = {dt}
n_steps = {n_steps}
batch = {batch}
dtype = "{dtype}"
seed = 3
inputs = {{ {inputs} }}
{extra}
"""


def run(text: str, mode: str, n_steps=None, **kwargs) -> Simulation:
    with fused.mode(mode):
        sim = Simulation.from_model_text(text)
        sim.run(n_steps, **kwargs)
    return sim


def tolerance(dtype: str) -> dict:
    return dict(rtol=0, atol=1e-12) if dtype == "float64" else dict(rtol=0, atol=2e-5)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
def test_fused_equals_eager(threads, solver, dtype, batch):
    text = model(solver=solver, dtype=dtype, batch=batch,
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    eager, fast = run(text, "off"), run(text, "require")
    assert fast.step == eager.step == 300
    assert fast.t == eager.t
    torch.testing.assert_close(fast.state.u, eager.state.u, **tolerance(dtype))
    torch.testing.assert_close(fast.state.r, eager.state.r, **tolerance(dtype))
    assert float(eager.state.u.abs().max()) > 0.05       # the network is not silent


@pytest.mark.parametrize("activations", [("linear", "clip[-0.5,0.8]", "leaky_relu[0.1]"),
                                         ("relu", "sigmoid", "clip"),
                                         ("tanh", "linear", "sigmoid")])
def test_every_activation(activations):
    hidden, top, inh = activations
    text = model(hidden=hidden, top=top, inh=inh, gain_rec=0.2, n_steps=200)
    eager, fast = run(text, "off"), run(text, "require")
    torch.testing.assert_close(fast.state.u, eager.state.u, rtol=0, atol=1e-12)
    torch.testing.assert_close(fast.state.r, eager.state.r, rtol=0, atol=1e-12)


def test_fixed_step_wide_top_and_decaying_schedule():
    """A population with fixed_step, an operator that is row-major for every population (a
    wide top layer) and a step schedule that changes every step."""
    text = model(fixed_step="fixed_step = 0.02", narrow=40, solver="gs-euler",
                 dt="{ type = \"inverse_time\", dt = 0.1, decay = 0.01 }")
    eager, fast = run(text, "off"), run(text, "require")
    assert fast.t == eager.t
    torch.testing.assert_close(fast.state.u, eager.state.u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("narrow, batch, every, form", [
    (40, 2, 10, [0, 0, 1]),     # hidden and top summed over sources; inh (3) rows of W_p
    (13, 20, 7, [2, 2, 3]),     # register blocks; inh's dot products shared out by samples
])
def test_a_run_cut_into_pieces_repeats_the_uncut_one_bit_for_bit(threads, narrow, batch,
                                                                 every, form):
    """Runs of a few steps (each a new solve) against one of 300, on every operator form:
    a row-major KT_p (summed over each thread's sources, or in register blocks) and a
    column-major one (rows of W_p); and the same against the eager path to rounding."""
    text = model(narrow=narrow, batch=batch, n_steps=300)
    with fused.mode("require"):
        whole = Simulation.from_model_text(text)
        whole.run()
        cut = Simulation.from_model_text(text)
        for stop in (*range(every, 301, every), 300):
            cut.run(stop)
    assert torch.equal(cut.state.u, whole.state.u)
    torch.testing.assert_close(whole.state.u, run(text, "off").state.u, rtol=0, atol=1e-12)
    stepper = fused.stepper(whole.dynamics(), whole.state, whole.solver)[0]
    assert stepper.layout[:, 6].tolist() == form


@pytest.fixture(params=["samples", "neurons"])
def split(request, monkeypatch):
    """How the loop's threads share a blocked batch: by samples (operators within a core's
    L2 cache, as this test network's) or by neurons (larger operators, forced here)."""
    if request.param == "neurons":
        monkeypatch.setattr(fused, "SAMPLE_SPLIT_CACHE", 0.0)
    return request.param


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [fused.PANEL_BATCH + 1, 20, 23])
def test_register_blocked_products_equal_eager(threads, split, solver, dtype, batch):
    """Batches above PANEL_BATCH multiply row-major operators in register blocks of samples
    and of each thread's neurons (40 and 13 neurons: partial vectors at the ends of the
    threads' ranges; 9 and 23 samples: partial blocks of samples), the threads sharing the
    samples or the neurons."""
    text = model(solver=solver, dtype=dtype, batch=batch, narrow=13, n_steps=100,
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    eager, fast = run(text, "off"), run(text, "require")
    torch.testing.assert_close(fast.state.u, eager.state.u, **tolerance(dtype))
    torch.testing.assert_close(fast.state.r, eager.state.r, **tolerance(dtype))
    stepper = fused.stepper(fast.dynamics(), fast.state, fast.solver)[0]
    assert stepper.layout[:, 6].tolist() == [2, 2, 3]   # hidden, top blocked; inh: dot products
    assert stepper.by_samples == (split == "samples")
    assert float(eager.state.u.abs().max()) > 0.05


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [20, 53])
def test_threads_sharing_samples_repeat_threads_sharing_neurons_bit_for_bit(
        tmp_path, monkeypatch, threads, solver, dtype, batch):
    """Each sum runs in the same order whichever way the threads share the work: the same
    state and the same records, bit for bit (53 samples: several tiles per thread, a last
    partial one), also for a run cut into pieces."""
    text = model(solver=solver, dtype=dtype, batch=batch, narrow=13, n_steps=120,
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    monitors = [MonitorSpec("hidden", "soma", "u", indices=(0, 7, 39)),
                MonitorSpec("top", "soma", "r", every=3)]
    results = {}
    for split, share in (("samples", fused.SAMPLE_SPLIT_CACHE), ("neurons", 0.0)):
        monkeypatch.setattr(fused, "SAMPLE_SPLIT_CACHE", share)
        with fused.mode("require"):
            sim = Simulation.from_model_text(text)
            with Recorder(tmp_path / f"{split}.h5", chunk_size=32) as rec:
                sim.run(monitors=monitors, recorder=rec)
            assert fused.stepper(sim.dynamics(), sim.state, sim.solver)[0].by_samples == \
                (split == "samples")
            cut = Simulation.from_model_text(text)
            for stop in (17, 50, 120):
                cut.run(stop)
        assert torch.equal(cut.state.u, sim.state.u)
        with open_recording(tmp_path / f"{split}.h5") as f:
            results[split] = (sim.state.u.clone(), sim.state.r.clone(),
                              {key: f.read(key).values for key in f.variables()})
    (u_s, r_s, rec_s), (u_n, r_n, rec_n) = results["samples"], results["neurons"]
    assert torch.equal(u_s, u_n) and torch.equal(r_s, r_n)
    assert rec_s.keys() == rec_n.keys() == {"hidden/soma/u", "top/soma/r"}
    for key in rec_s:
        np.testing.assert_array_equal(rec_s[key], rec_n[key])
    assert rec_s["hidden/soma/u"].shape == (121, batch, 3)


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("batch", [9, 20, 53])
def test_unchecked_solves_step_tiles_of_samples_through_every_step(monkeypatch, threads,
                                                                   solver, batch):
    """Without a non-finite check (the protocols' phases) each tile of samples runs through
    all steps of a call, the tiles handed out as threads come free: the same state and the
    same records, bit for bit, as the threads sharing the neurons, step by step."""
    from neurosim.solvers import Probe, get_solver, make_schedule, solve
    text = model(solver=solver, batch=batch, narrow=13, dtype="float32",
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    results = {}
    for split, share, check in (("tiles", fused.SAMPLE_SPLIT_CACHE, 0),
                                ("steps", fused.SAMPLE_SPLIT_CACHE, 1), ("neurons", 0.0, 0)):
        monkeypatch.setattr(fused, "SAMPLE_SPLIT_CACHE", share)
        seen = []
        probes = [Probe("u", torch.tensor([0, 7, 39]), 1,
                        lambda steps, times, values: seen.append(("u", steps, values.clone()))),
                  Probe("r", torch.tensor([41, 44]), 4,
                        lambda steps, times, values: seen.append(("r", steps, values.clone())))]
        with fused.mode("require"), torch.inference_mode():
            sim = Simulation.from_model_text(text)
            for stop in (37, 150):                  # two calls, the second from step 37
                stats = solve(sim.dynamics(), sim.state, solver=get_solver(solver),
                              schedule=make_schedule(0.05), n_steps=stop, step0=sim.step,
                              check_finite_every=check, probes=probes)
                sim.step = stats.steps
        results[split] = (sim.state.u.clone(), seen)
    for split in ("steps", "neurons"):
        assert torch.equal(results["tiles"][0], results[split][0])
        assert len(results["tiles"][1]) == len(results[split][1]) > 0
        for (src_a, steps_a, a), (src_b, steps_b, b) in zip(results["tiles"][1],
                                                            results[split][1]):
            assert (src_a, steps_a) == (src_b, steps_b)
            assert torch.equal(a, b)
    steps_r = [s for src, steps, _ in results["tiles"][1] if src == "r" for s in steps]
    assert steps_r == list(range(4, 151, 4))


@pytest.mark.parametrize("batch", [1, 20])
@pytest.mark.parametrize("check", [0, 1])
def test_products_of_silent_sources_are_skipped_at_the_first_step(threads, batch, check):
    """A phase that starts at rest (u = 0, so r = 0 for tanh and relu) skips, at its first
    Gauss-Seidel step, the products whose sources are all still silent (hidden's, from
    hidden, top and inh; not top's, whose source hidden has just stepped), as the eager
    step does: they are zero, so the state is the same bit for bit."""
    from neurosim.solvers import get_solver, make_schedule, solve
    text = model(hidden="tanh", solver="gs-euler", batch=batch,
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    finals = {}
    for at_rest in (True, False):
        with fused.mode("require"), torch.inference_mode():
            sim = Simulation.from_model_text(text)
            net = sim.net
            dynamics = net.phase(net.build_operators(), sim.inputs, at_rest=at_rest)
            stepper = fused.stepper(dynamics, sim.state, get_solver("gs-euler"))[0]
            flags = stepper._silent()
            assert (list(flags) if at_rest else flags) == ([1, 0, 0] if at_rest else None)
            solve(dynamics, sim.state, solver=get_solver("gs-euler"),
                  schedule=make_schedule(0.05), n_steps=40, check_finite_every=check)
            assert not dynamics.silent                   # the first step woke them
            finals[at_rest] = sim.state.u.clone()
    assert torch.equal(finals[True], finals[False])
    assert float(finals[True].abs().max()) > 0.05


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("batch", [2, 20])
def test_ensembles_run_member_by_member(threads, solver, batch):
    """An ensemble's phase (stacked weights, per-member currents and nudges) runs each member
    through the loop and equals the eager batched products to rounding."""
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    network = network_from_dict(parse_model_text(model()))
    nets = [CompiledNetwork(network, dtype=torch.float64, seed=s) for s in (1, 2, 3)]
    ensemble = CompiledNetwork.stacked(nets)
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(3, batch, 5, generator=g, dtype=torch.float64) * 2 - 1
    target = torch.rand(3, batch, 40, generator=g, dtype=torch.float64)
    beta = torch.tensor([0.5, -0.5, 1.0], dtype=torch.float64)
    results, paths = {}, {}
    for mode in ("off", "require"):
        operators = ensemble.build_operators()
        state = ensemble.zero_state(batch)
        ensemble.clamp_inputs(state, {"x": x})
        run_ = dict(solver=get_solver(solver), schedule=ConstantStep(0.05), n_steps=60)
        with fused.mode(mode):
            free = solve(ensemble.phase(operators, {"x": x}), state, **run_)
            nudged = solve(ensemble.phase(operators, {"x": x}, nudges={"hidden": (target, beta)}),
                           state, **run_)
        results[mode], paths[mode] = state.u.clone(), (free.path, nudged.path)
    assert paths["require"] == ("fused", "fused")
    torch.testing.assert_close(results["require"], results["off"], rtol=0, atol=1e-12)
    assert float(results["off"].abs().max()) > 0.05


def test_recordings_and_checkpoints_match(tmp_path, threads):
    """Soma monitors (every step and every 7th) go through the loop's probes, a dendrite
    monitor through an observer; the files, their time axes and the checkpoints agree."""
    text = model(batch=2, n_steps=250)
    monitors = [MonitorSpec("hidden", "soma", "u", indices=(0, 5, 39)),
                MonitorSpec("top", "soma", "r", every=7),
                MonitorSpec("hidden", "apical", "v", every=50)]
    files = {}
    for mode in ("off", "require"):
        out, ckpt = tmp_path / f"{mode}.h5", tmp_path / f"{mode}.ckpt.h5"
        with fused.mode(mode):
            sim = Simulation.from_model_text(text)
            with Recorder(out, attrs=sim.run_attrs(), config_text=sim.model_text,
                          chunk_size=64) as rec:
                sim.run(monitors=monitors, recorder=rec, checkpoint=ckpt, checkpoint_every=100)
        files[mode] = out
        assert sim.step == 250
    with open_recording(files["off"]) as a, open_recording(files["require"]) as b:
        assert a.variables() == b.variables()
        for key in a.variables():
            va, vb = a.read(key), b.read(key)
            assert va.values.shape == vb.values.shape
            np.testing.assert_allclose(vb.values, va.values, rtol=0, atol=1e-12)
            np.testing.assert_array_equal(vb.time, va.time)
        assert a.read("hidden/soma/u").values.shape == (251, 2, 3)
        assert a.read("top/soma/r").values.shape == (36, 2, 4)
    for mode in ("off", "require"):        # the last checkpoint is that of step 200
        with fused.mode(mode):
            resumed = Simulation.load_checkpoint(tmp_path / f"{mode}.ckpt.h5")
        assert resumed.step == 200


def test_blocks_reach_the_file_during_the_run(tmp_path):
    """Records arrive in blocks, and full chunks are on disk while the run goes on."""
    seen = []

    class Spy(Recorder):
        def append_block(self, name, values, times):
            super().append_block(name, values, times)
            with open_recording(self.path) as live:
                seen.append((len(times), live.complete,
                             live.read("hidden/soma/u").values.shape[0]))

    text = model(n_steps=250)
    with fused.mode("require"):
        sim = Simulation.from_model_text(text)
        with Spy(tmp_path / "r.h5", chunk_size=64) as rec:
            sim.run(monitors=[MonitorSpec("hidden", "soma", "u")], recorder=rec,
                    checkpoint=tmp_path / "c.h5", checkpoint_every=100)
    assert [n for n, _, _ in seen] == [100, 100, 50]       # blocks end at the checkpoints
    # full chunks of 64 on disk after each block; the checkpoints flush every record so far
    # (101 at step 100, 201 at step 200), so the next chunk ends at 165
    assert [(done, rows) for _, done, rows in seen] == [(False, 64), (False, 165),
                                                        (False, 201)]


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    text = model(n_steps=200)
    whole = run(text, "require")
    with fused.mode("require"):
        first = Simulation.from_model_text(text)
        first.run(120)
        first.save_checkpoint(tmp_path / "c.h5")
        second = Simulation.load_checkpoint(tmp_path / "c.h5")
        second.run(200)
    assert torch.equal(second.state.u, whole.state.u)


@pytest.mark.parametrize("batch", [1, 23])
def test_divergence_is_reported_at_the_same_step(threads, batch):
    """As on the eager path; with 23 samples the threads share them, and a potential that
    becomes non-finite in one thread's samples stops every thread after the same step. (Which
    of the samples overflows first depends on the order of the sums, so the message's sample
    and neuron may differ.)"""
    text = model(gain_rec=30.0, hidden="linear", inh="linear", dt=0.5, n_steps=2000,
                 batch=batch, inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    errors = {}
    for mode in ("off", "require"):
        with pytest.raises(SimulationError, match="non-finite soma potential") as caught:
            run(text, mode)
        errors[mode] = re.sub(r"\((ensemble member \d+, )?sample \d+, neuron \d+\)", "",
                              str(caught.value))
    assert errors["off"] == errors["require"]
    assert "at step" in errors["off"]


def test_steady_state_stops_at_the_same_step():
    text = model(n_steps=5000, extra="steady_tol = 1e-7", gain_rec=0.2)
    eager, fast = run(text, "off"), run(text, "require")
    assert 0 < fast.step == eager.step < 5000
    torch.testing.assert_close(fast.state.u, eager.state.u, rtol=0, atol=1e-12)


def test_unsupported_networks_take_the_eager_path():
    noisy = model(extra="").replace('bias = 0.1', 'bias = 0.1\nnoise = 0.1')
    with pytest.raises(SimulationError, match='"hidden" is noisy'):
        run(noisy, "require")
    auto, eager = run(noisy, "auto"), run(noisy, "off")
    assert torch.equal(auto.state.u, eager.state.u)
    wide = model(batch=fused.MAX_BATCH + 1)
    assert run(wide, "require").step == 300   # small operators: the threads share the samples
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fused, "SAMPLE_SPLIT_CACHE", 0.0)       # as if they exceeded L2
        with pytest.raises(SimulationError, match="batch"):
            run(wide, "require")
    rk4 = model(solver="rk4")
    with pytest.raises(SimulationError, match='solver "rk4" has no fused form'):
        run(rk4, "require")


def test_no_compiler_falls_back_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("NEUROSIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setattr(fused, "_build_error", None)
    monkeypatch.setattr(fused, "_warned", False)
    monkeypatch.setattr(fused.shutil, "which", lambda name: None)
    text = model(n_steps=50)
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler found"):
        auto = run(text, "auto")
    torch.testing.assert_close(auto.state.u, run(text, "off").state.u, rtol=0, atol=0)
    with pytest.raises(SimulationError, match="could not be built"):
        run(text, "require")


def test_mode_names_are_checked():
    with pytest.raises(Exception, match="auto, off, require"):
        fused.set_mode("fast")


def test_append_block_equals_appends(tmp_path):
    values = torch.arange(3 * 70 * 2, dtype=torch.float32).reshape(3 * 70, 2)
    times = [0.1 * k for k in range(3 * 70)]
    spec = MonitorSpec("p", "soma", "u")
    paths = tmp_path / "rows.h5", tmp_path / "block.h5"
    with Recorder(paths[0], chunk_size=32) as rec:
        rec.add(spec.key, spec, (2,), torch.float32)
        for row, t in zip(values, times):
            rec.append(spec.key, row, t)
    with Recorder(paths[1], chunk_size=32) as rec:
        rec.add(spec.key, spec, (2,), torch.float32)
        rec.append_block(spec.key, values[:5], times[:5])
        rec.append_block(spec.key, values[5:100], times[5:100])
        rec.append_block(spec.key, values[100:], times[100:])
        with pytest.raises(Exception, match=r"shape \(2, 2\)"):
            rec.append_block(spec.key, values[:2, :1], times[:2])
    with open_recording(paths[0]) as a, open_recording(paths[1]) as b:
        np.testing.assert_array_equal(a.read(spec.key).values, b.read(spec.key).values)
        np.testing.assert_array_equal(a.read(spec.key).time, b.read(spec.key).time)


def test_append_block_shares_time_axes_and_checks_them(tmp_path):
    """Two monitors with one every share a time axis: blocks of either may lead, across
    chunk boundaries of the axis; a block at other times is refused, naming the record."""
    first, second = MonitorSpec("p", "soma", "u"), MonitorSpec("p", "soma", "r")
    times = [0.5 * k for k in range(150)]
    with Recorder(tmp_path / "r.h5", chunk_size=16) as rec:
        rec.add(first.key, first, (1,), torch.float64)
        rec.add(second.key, second, (1,), torch.float64)
        values = torch.arange(150, dtype=torch.float64).reshape(150, 1)
        rec.append_block(first.key, values[:40], times[:40])
        rec.append_block(second.key, values[:25], times[:25])         # lags: checked
        rec.append_block(second.key, values[25:90], times[25:90])     # catches up, leads
        rec.append_block(first.key, values[40:150], times[40:150])
        rec.append_block(second.key, values[90:150], times[90:150])
        rec.append_block(second.key, values[:1], [80.0])
        with pytest.raises(Exception, match=r"record 150 at t=75\.0.*has t=80\.0"):
            rec.append_block(first.key, values[:1], [75.0])
    with open_recording(tmp_path / "r.h5") as f:
        for key in (first.key, second.key):
            np.testing.assert_array_equal(f.read(key).time[:150], times)
            np.testing.assert_array_equal(f.read(key).values[:150, 0], np.arange(150))


def test_euler_first_recomputes_r_from_u_as_the_eager_step_does():
    """A state whose r is not sigma(u) (EP's nudged phase starts from u = r0; users write
    state["h"].u): the Jacobi step reads sigma(u), on both paths."""
    text = model(n_steps=50)
    sims = {}
    for mode in ("off", "require"):
        with fused.mode(mode):
            sim = Simulation.from_model_text(text)
            sim.state["hidden"].u[:] = 0.7
            sim.state["top"].u[:] = -0.3
            sim.run()
        sims[mode] = sim
    torch.testing.assert_close(sims["require"].state.u, sims["off"].state.u, rtol=0,
                               atol=1e-12)


def test_activation_parameters_are_not_rounded():
    text = model(hidden="clip[0.1234567,0.9876543]", inh="leaky_relu[0.01234567]",
                 n_steps=100)
    eager, fast = run(text, "off"), run(text, "require")
    torch.testing.assert_close(fast.state.u, eager.state.u, rtol=0, atol=1e-12)


def test_checkpoint_without_every_keeps_whole_chunks(tmp_path, monkeypatch):
    calls = []
    advance = fused.FusedStepper.advance
    monkeypatch.setattr(fused.FusedStepper, "advance",
                        lambda self, *a, **k: calls.append(1) or advance(self, *a, **k))
    with fused.mode("require"):
        sim = Simulation.from_model_text(model(n_steps=300))
        sim.run(checkpoint=tmp_path / "c.h5")
    assert len(calls) == 1


def test_unchecked_solves_run_on_after_a_non_finite_step():
    """check_finite_every=0 (the protocols check after the phase): no stop, as eager."""
    from neurosim.solvers import get_solver, make_schedule, solve
    text = model(gain_rec=30.0, hidden="linear", inh="linear", dt=0.5)
    ends = {}
    for mode in ("off", "require"):
        with fused.mode(mode), torch.inference_mode():
            sim = Simulation.from_model_text(text)
            stats = solve(sim.dynamics(), sim.state, solver=get_solver("euler"),
                          schedule=make_schedule(0.5), n_steps=2000, check_finite_every=0)
            ends[mode] = (stats.steps, bool(torch.isfinite(sim.state.u).all()))
    assert ends["off"] == ends["require"] == (2000, False)


def test_probe_columns_are_checked():
    from neurosim.solvers import Probe, get_solver, make_schedule, solve
    sim = Simulation.from_model_text(model())
    bad = Probe("u", torch.tensor([0, 10_000]), 1, lambda *a: None)
    with fused.mode("require"), torch.inference_mode(), \
            pytest.raises(SimulationError, match=r"columns in \[0, 47\)"):
        solve(sim.dynamics(), sim.state, solver=get_solver("euler"),
              schedule=make_schedule(0.05), n_steps=10, probes=[bad])
    got = []
    ok = Probe("u", torch.tensor([1, 3], dtype=torch.int32)[::1], 1,
               lambda steps, times, values: got.append(values.clone()))
    with fused.mode("require"), torch.inference_mode():
        solve(sim.dynamics(), sim.state, solver=get_solver("euler"),
              schedule=make_schedule(0.05), n_steps=10, probes=[ok])
    assert torch.equal(got[-1][-1], sim.state.u[:, [1, 3]])


def test_operators_of_another_shape_are_refused():
    sim = Simulation.from_model_text(model())
    dyn = sim.dynamics()
    dyn.operators = {**dyn.operators, "hidden": dyn.operators["hidden"][:-1]}
    assert "has shape" in fused.unsupported(dyn, sim.state)


def test_a_one_dimensional_nudge_target_keeps_the_fused_path():
    text = model(n_steps=100, extra='nudge = { top = { target = [0.1, 0.2, 0.3, 0.4], '
                                      'beta = 0.5 } }').replace(
        'name = "hidden_top"', 'name = "hidden_top"').replace(
        '[[projection]]\nname = "hidden_inh"',
        '[[projection]]\nname = "top_top"\nsource = "top"\ntarget = "top"\ninit = "zeros"\n\n'
        '[[projection]]\nname = "hidden_inh"')
    eager, fast = run(text, "off"), run(text, "require")
    torch.testing.assert_close(fast.state.u, eager.state.u, rtol=0, atol=1e-12)


def test_a_forked_child_runs_the_loop_on_one_thread():
    import multiprocessing
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run(model(n_steps=20), "require")               # the parent's OpenMP team exists
        context = multiprocessing.get_context("fork")
        with context.Pool(1) as pool:
            result = pool.apply_async(_child_run)
            threads, finite = result.get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert (threads, finite) == (1, True)


def _child_run():
    sim = run(model(n_steps=50), "require")
    return fused.threads(), bool(torch.isfinite(sim.state.u).all())


def test_threads_are_capped_by_the_cpus_available(monkeypatch):
    monkeypatch.setattr(fused.os, "sched_getaffinity", lambda pid: {0})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert fused.threads() == 1
    finally:
        torch.set_num_threads(before)


def test_append_block_rounds_to_the_buffer_dtype(tmp_path):
    spec = MonitorSpec("p", "soma", "u")
    values = torch.linspace(0, 1, 64 * 3, dtype=torch.float32).reshape(-1, 1) / 3
    times = [float(k) for k in range(values.shape[0])]
    stored = []
    for name, block in (("rows", False), ("block", True)):
        with Recorder(tmp_path / f"{name}.h5", chunk_size=64) as rec:
            rec.add(spec.key, spec, (1,), torch.bfloat16)
            if block:
                rec.append_block(spec.key, values, times)
            else:
                for row, t in zip(values, times):
                    rec.append(spec.key, row, t)
        with open_recording(tmp_path / f"{name}.h5") as f:
            stored.append(f.read(spec.key).values)
    np.testing.assert_array_equal(stored[0], stored[1])


STIMULI = """
[[stimulus]]
population = "hidden"
compartment = "apical"
type = "sine"
amplitude = 0.8
frequency = 0.7
start = 1.0

[[stimulus]]
population = "top"
type = "step"
amplitude = [0.5, -0.5, 0.3, 0.1]
start = 2.0
stop = 6.0

[[stimulus]]
population = "inh"
type = "ou"
mean = 0.1
sigma = 0.3
tau = 0.5

[[stimulus]]
population = "x"
type = "pulses"
amplitude = 0.4
start = 0.5
width = 0.5
period = 2.0
count = 3
"""


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
def test_stimuli_run_on_the_fused_path(tmp_path, threads, solver):
    """Sine into a dendrite, a step per neuron, OU noise, pulses through an input's
    projections; soma, dendrite and stimulus monitors: both paths record the same."""
    text = model(solver=solver, batch=2, n_steps=400) + STIMULI
    monitors = [MonitorSpec("hidden", "soma", "u", indices=(0, 7)),
                MonitorSpec("hidden", "apical", "v", every=3), MonitorSpec("x", "soma", "r")]
    values = {}
    for mode in ("off", "require"):
        with fused.mode(mode):
            sim = Simulation.from_model_text(text)
            with Recorder(tmp_path / f"{mode}.h5", attrs=sim.run_attrs(),
                          config_text=sim.model_text) as rec:
                sim.run(monitors=monitors, recorder=rec)
        with open_recording(tmp_path / f"{mode}.h5") as f:
            values[mode] = {key: f.read(key) for key in f.variables()}
    assert set(values["off"]) == set(values["require"])
    for key, eager in values["off"].items():
        np.testing.assert_allclose(values["require"][key].values, eager.values, rtol=0,
                                   atol=1e-12, err_msg=key)
        np.testing.assert_array_equal(values["require"][key].time, eager.time)
    u = values["off"]["hidden/soma/u"].values
    assert np.ptp(u[-100:]) > 1e-3                   # the stimuli keep it moving


def test_runs_say_which_path_they_took():
    with fused.mode("auto"):
        assert Simulation.from_model_text(model(n_steps=20)).run().path == "fused"
        text = model(n_steps=20, batch=fused.MAX_BATCH + 1)
        assert Simulation.from_model_text(text).run().path == "fused"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(fused, "SAMPLE_SPLIT_CACHE", 0.0)
            wide = Simulation.from_model_text(text).run()
        assert wide.path.startswith(f"eager: batch {fused.MAX_BATCH + 1} > {fused.MAX_BATCH} "
                                    "with operators beyond a core's L2 cache")
        assert Simulation.from_model_text(model(n_steps=20, solver="rk4")).run().path is None
    with fused.mode("off"):
        assert Simulation.from_model_text(model(n_steps=20)).run().path == \
            "eager: NEUROSIM_FUSED=off"


def test_later_phases_reuse_the_set_up_and_step_alike(threads, monkeypatch):
    """The phases of later batches (new currents and nudges, operators of the same shapes)
    take the set-up the network kept for their shapes, without the support checks, and step
    bit for bit as with a fresh set-up; other shapes, or tensors that need gradients, are
    checked again."""
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    network = network_from_dict(parse_model_text(model()))
    net = CompiledNetwork(network, dtype=torch.float64, seed=3)
    checks = []
    real = fused.unsupported
    monkeypatch.setattr(fused, "unsupported",
                        lambda dynamics, state: checks.append(1) or real(dynamics, state))
    run_ = dict(solver=get_solver("gs-euler"), schedule=ConstantStep(0.05), n_steps=30)

    def batches(fresh: bool):
        g = torch.Generator().manual_seed(7)
        state, finals = net.zero_state(4), []
        for beta in (0.5, -0.5, 1.0):
            x = torch.rand(4, 5, generator=g, dtype=torch.float64) * 2 - 1
            target = torch.rand(4, 40, generator=g, dtype=torch.float64)
            operators = net.build_operators()
            state.u.zero_()
            net.sync_activity(state)
            net.clamp_inputs(state, {"x": x})
            for nudges in (None, {"hidden": (target, beta)}):
                if fresh:
                    net.__dict__.pop("_fused_plans", None)
                with fused.mode("require"):
                    assert solve(net.phase(operators, {"x": x}, nudges=nudges), state,
                                 **run_).path == "fused"
                finals.append(state.u.clone())
        return finals

    with torch.inference_mode():
        fresh = batches(fresh=True)
        assert len(checks) == 6                     # every phase checked
        checks.clear()
        kept = batches(fresh=False)
        assert len(checks) == 0                     # the plans of the first pass
    for a, b in zip(fresh, kept):
        assert torch.equal(a, b)
    assert float(kept[-1].abs().max()) > 0.05

    state = net.zero_state(4)                       # a current with one row: checked anew
    with torch.inference_mode():
        dynamics = net.phase(net.build_operators(), {"x": torch.zeros(1, 5, dtype=torch.float64)})
        assert fused.stepper(dynamics, state, get_solver("gs-euler"))[1] == "fused"
    assert len(checks) == 1
    operators = {key: value.clone().requires_grad_(value.is_floating_point())
                 for key, value in net.build_operators().items()}
    x = torch.zeros(4, 5, dtype=torch.float64)
    dynamics = net.phase(operators, {"x": x})
    with torch.enable_grad():
        stepper, path = fused.stepper(dynamics, state, get_solver("gs-euler"))
    assert stepper is None and "gradients" in path


def test_ensemble_phases_reuse_one_member_set_up(threads, monkeypatch):
    """An ensemble's later phases reuse the set-up its members share and step as a fresh
    one does."""
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    network = network_from_dict(parse_model_text(model()))
    ensemble = CompiledNetwork.stacked([CompiledNetwork(network, dtype=torch.float64, seed=s)
                                        for s in (1, 2)])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 20, 5, generator=g, dtype=torch.float64) * 2 - 1
    target = torch.rand(2, 20, 40, generator=g, dtype=torch.float64)
    beta = torch.tensor([0.5, -1.0], dtype=torch.float64)
    checks = []
    real = fused.unsupported
    monkeypatch.setattr(fused, "unsupported",
                        lambda dynamics, state: checks.append(1) or real(dynamics, state))
    finals = []
    for fresh in (True, False, False):
        if fresh:
            ensemble.__dict__.pop("_fused_plans", None)
        operators = ensemble.build_operators()
        state = ensemble.zero_state(20)
        ensemble.clamp_inputs(state, {"x": x})
        with fused.mode("require"), torch.inference_mode():
            for nudges in (None, {"hidden": (target, beta)}):
                solve(ensemble.phase(operators, {"x": x}, nudges=nudges), state,
                      solver=get_solver("euler"), schedule=ConstantStep(0.05), n_steps=30)
        finals.append(state.u.clone())
    assert len(checks) == 1                         # the first phase (both have one form)
    assert torch.equal(finals[0], finals[1]) and torch.equal(finals[0], finals[2])


@pytest.mark.parametrize("members", [2, 3])
@pytest.mark.parametrize("batch", [9, 20, 47])
def test_ensemble_members_stepped_in_one_call_equal_their_own_calls(threads, monkeypatch,
                                                                     members, batch):
    """Unchecked phases of an ensemble whose threads share the samples step every member in
    one call (tiles of all members handed out together, the last ones split to balance the
    threads), bit for bit as each member's own call."""
    from neurosim.dynamics import CompiledNetwork
    from neurosim.graph import network_from_dict, parse_model_text
    from neurosim.solvers import ConstantStep, get_solver, solve
    network = network_from_dict(parse_model_text(model()))
    ensemble = CompiledNetwork.stacked([CompiledNetwork(network, dtype=torch.float32, seed=s)
                                        for s in range(members)])
    g = torch.Generator().manual_seed(batch)
    x = torch.rand(members, batch, 5, generator=g) * 2 - 1
    target = torch.rand(members, batch, 40, generator=g)
    beta = torch.linspace(-1.0, 1.0, members)
    together = []
    real = fused.EnsembleStepper._advance_together
    monkeypatch.setattr(fused.EnsembleStepper, "_advance_together",
                        lambda self, *args: together.append(1) or real(self, *args))
    finals = {}
    for joint in (True, False):
        if not joint:
            monkeypatch.setattr(fused.EnsembleStepper, "_together", lambda self: False)
        operators = ensemble.build_operators()
        state = ensemble.zero_state(batch)
        ensemble.clamp_inputs(state, {"x": x})
        with fused.mode("require"), torch.inference_mode():
            for solver, nudges in (("gs-euler", None), ("euler", {"hidden": (target, beta)})):
                solve(ensemble.phase(operators, {"x": x}, nudges=nudges), state,
                      solver=get_solver(solver), schedule=ConstantStep(0.05), n_steps=25,
                      check_finite_every=0)
        finals[joint] = state.u.clone()
    assert len(together) == 2                       # both phases of the joint pass
    assert torch.equal(finals[True], finals[False])
    assert float((finals[True][0] - finals[True][1]).abs().max()) > 1e-3


@pytest.mark.parametrize("batch", [1, 3])
def test_large_shares_read_in_alternating_halves_repeat_themselves(monkeypatch, threads,
                                                                   batch):
    """A thread's share of a row-major operator beyond ZIGZAG_BYTES is read in two halves
    whose order alternates from step to step: a run cut at odd and even steps repeats the
    uncut one bit for bit, and agrees with the eager path (float64)."""
    monkeypatch.setattr(fused, "cache_bytes", lambda: 64 << 20)     # not prefetched (mode 5)
    text = model(batch=batch, n_steps=40).replace("size = 40", "size = 700")
    with fused.mode("require"):
        whole = Simulation.from_model_text(text)
        whole.run()
        cut = Simulation.from_model_text(text)
        for stop in (3, 4, 11, 40):
            cut.run(stop)
    stepper = fused.stepper(whole.dynamics(), whole.state, whole.solver)[0]
    hidden = stepper.layout[0]
    share = (int(hidden[4]) + threads - 1) // threads * int(hidden[1]) * 8
    assert int(hidden[6]) == 0 and share > 512 * 1024        # the halves are in use
    assert torch.equal(cut.state.u, whole.state.u)
    torch.testing.assert_close(whole.state.u, run(text, "off").state.u, rtol=0, atol=1e-11)


def test_chunks_are_cut_where_the_probes_records_would_pass_their_byte_bound(tmp_path,
                                                                              monkeypatch):
    """A chunk holds up to 2,048 steps, fewer where its probe records would pass
    ``PROBE_BYTES`` (records of all 40 neurons of 2 samples in float64: 640 bytes a step)."""
    from neurosim.solvers import base
    monkeypatch.setattr(base, "PROBE_BYTES", 640 * 100)
    sizes = []

    class Spy(Recorder):
        def append_block(self, name, values, times):
            sizes.append(len(times))
            super().append_block(name, values, times)

    text = model(batch=2, n_steps=250)
    with fused.mode("require"):
        sim = Simulation.from_model_text(text)
        with Spy(tmp_path / "r.h5") as rec:
            sim.run(monitors=[MonitorSpec("hidden", "soma", "u")], recorder=rec)
    assert sizes == [100, 100, 50]
    monkeypatch.setattr(base, "PROBE_BYTES", 64 << 20)
    sizes.clear()
    with fused.mode("require"):
        sim = Simulation.from_model_text(model(batch=2, n_steps=3000))
        with Spy(tmp_path / "s.h5") as rec:
            sim.run(monitors=[MonitorSpec("hidden", "soma", "u")], recorder=rec)
    assert sizes == [2048, 952]


@pytest.fixture
def packing(monkeypatch):
    """Returns a function that makes every long-enough call read packed operators (``on``)
    or none (``off``); PACK_MIN_BYTES 0 so that the test networks' small operators qualify."""
    monkeypatch.setattr(fused, "PACK_MIN_BYTES", 0)

    def set_packing(on: bool, steps: int = 1) -> None:
        monkeypatch.setattr(fused, "PACK_STEPS", steps if on else 10 ** 9)
    return set_packing


@pytest.mark.parametrize("solver", ["euler", "gs-euler"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
def test_packed_operators_repeat_their_rows_bit_for_bit(threads, packing, solver, dtype, batch):
    """Operators summed over the sources (batches up to PANEL_BATCH) read from a copy packed
    by groups of four sources give the same sums in the same order: the same state bit for
    bit (hidden and top: 40 neurons, not a whole number of vectors; 83 sources, a last group
    of three), recordings included."""
    text = model(solver=solver, dtype=dtype, batch=batch, narrow=40, n_steps=200,
                 inputs="x = { type = \"uniform\", low = -1.0, high = 1.0 }")
    monitors = [MonitorSpec("hidden", "soma", "u", indices=(0, 17, 39))]
    results = []
    for on in (False, True):
        packing(on)
        with fused.mode("require"):
            sim = Simulation.from_model_text(text)
            stepper = fused.stepper(sim.dynamics(), sim.state, sim.solver)[0]
            sim.run(200)
        results.append(sim)
    assert stepper.layout[:, 6].tolist() == [0, 0, 1]
    assert stepper._packable == [0, 1]                        # hidden and top, not inh's rows
    layout, _ = stepper._panels()
    assert list(layout)[6::9] == [4, 4, 1]
    rows, packed = results
    assert torch.equal(packed.state.u, rows.state.u)
    assert torch.equal(packed.state.r, rows.state.r)
    assert float(rows.state.u.abs().max()) > 0.05
    torch.testing.assert_close(packed.state.u, run(text, "off").state.u, **tolerance(dtype))


@pytest.mark.parametrize("batch", [1, 2])
def test_packed_halves_and_cut_runs_repeat_the_uncut_rows_bit_for_bit(threads, packing, batch):
    """A share beyond ZIGZAG_BYTES read packed in alternating halves (700 neurons, float64),
    and a run cut into pieces of which only the long ones pack (PACK_STEPS 30): the uncut
    run of unpacked rows, bit for bit."""
    text = model(batch=batch, n_steps=120).replace("size = 40", "size = 700")
    packing(False)
    with fused.mode("require"):
        whole = Simulation.from_model_text(text)
        whole.run()
    packing(True, steps=30)
    with fused.mode("require"):
        cut = Simulation.from_model_text(text)
        for stop in (3, 50, 61, 120):               # 3 and 11 steps unpacked, 47 and 59 packed
            cut.run(stop)
    assert torch.equal(cut.state.u, whole.state.u)
    assert torch.equal(cut.state.r, whole.state.r)


def test_which_operators_are_packed(monkeypatch):
    """Long calls pack a single row-major matrix from PACK_MIN_BYTES up to the last-level
    cache; not a stack of ensemble members, a column-major view, or one beyond the cache."""
    monkeypatch.setattr(fused, "cache_bytes", lambda: 8 << 20)
    assert fused._worth_packing(torch.zeros(1010, 1000))                # 4 MB
    assert not fused._worth_packing(torch.zeros(100, 100))              # 40 KB: in L2 anyway
    assert not fused._worth_packing(torch.zeros(2010, 2000))            # 16 MB: beyond
    assert not fused._worth_packing(torch.zeros(3, 1010, 1000))         # members
    assert not fused._worth_packing(torch.zeros(1000, 1010).mT)
    assert not fused._worth_packing(None)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3])
def test_operators_beyond_the_cache_prefetch_rows_bit_for_bit(monkeypatch, threads, dtype,
                                                               batch):
    """An operator larger than the last-level cache (here: said to be 1 MiB) is summed over
    the sources with its rows prefetched ahead (mode 5): the same sums in the same order as
    without (mode 0), halves included (700 neurons), and a run cut into pieces the same."""
    text = model(batch=batch, dtype=dtype, n_steps=60).replace("size = 40", "size = 700")
    results = []
    for cache in (64 << 20, 1 << 20):
        monkeypatch.setattr(fused, "cache_bytes", lambda cache=cache: cache)
        with fused.mode("require"):
            sim = Simulation.from_model_text(text)
            for stop in ((60,) if cache > 1 << 20 else (7, 30, 60)):
                sim.run(stop)
        stepper = fused.stepper(sim.dynamics(), sim.state, sim.solver)[0]
        results.append((sim, stepper.layout[:, 6].tolist()))
    (plain, plain_modes), (ahead, ahead_modes) = results
    assert plain_modes[0] == 0 and ahead_modes[0] == 5
    assert torch.equal(ahead.state.u, plain.state.u)
    assert torch.equal(ahead.state.r, plain.state.r)
