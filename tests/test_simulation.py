"""Simulation runs: streaming recordings, bit-exact resume in a fresh process, crash-safe
checkpoints, non-finite detection, Python/TOML graph equivalence, devices and precisions."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError, SimulationError
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Projection,
                            PyramidalPopulation, load_model_file, parse_model_text)
from neurosim.io import MonitorSpec, Recorder, load_checkpoint, open_recording
from neurosim.simulation import Simulation, monitors_from

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models" / "three_compartment.toml"


# One torch thread here (tests/conftest.py) and in the subprocesses (OMP_NUM_THREADS=1
# below): the same BLAS code path on both sides of a resume.


def run_python(code: str) -> subprocess.Popen:
    """A fresh interpreter running ``code`` (one BLAS thread, like this process)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().numpy().tobytes()


def model(solver: str = "euler", noise: float = 0.0, extra: str = "") -> str:
    """A small three-compartment network; optional noise on the "lower" population."""
    return f"""
[network]
name = "resume_test"

[[population]]
name = "x"
type = "input"
size = 5

[[population]]
name = "lower"
type = "pyramidal"
size = 12
leak = 0.3
basal = 1.0
apical = 0.5
activation = "sigmoid"
noise = {noise}

[[population]]
name = "upper"
type = "pyramidal"
size = 4
leak = 0.2
basal = 1.0
apical = 0.5
activation = "tanh"

[[population]]
name = "inh"
type = "interneuron"
size = 1
activation = "relu"

[[projection]]
name = "x_lower"
source = "x"
target = "lower"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "lower_upper"
source = "lower"
target = "upper"
compartment = "basal"

[[projection]]
name = "upper_lower"
source = "upper"
target = "lower"
compartment = "apical"

[[projection]]
name = "lower_lower"
source = "lower"
target = "lower"
compartment = "apical"
init = "normal"
scale = 0.2

[[projection]]
name = "lower_inh"
source = "lower"
target = "inh"
init = "ones"
scale = 0.1

[[projection]]
name = "inh_lower"
source = "inh"
target = "lower"
compartment = "apical"
init = "ones"
gain = -1.0

[simulation]
solver = "{solver}"
dt = 0.05
batch = 3
seed = 11
{extra}

[[monitor]]
population = "lower"
compartment = "soma"
variable = "u"
indices = [0, 3, 7]

[[monitor]]
population = "lower"
compartment = "apical"
variable = "v"

[[monitor]]
population = "upper"
compartment = "soma"
variable = "r"
every = 2
"""


def monitors(text: str, sim: Simulation) -> list[MonitorSpec]:
    return monitors_from(parse_model_text(text), sim.network, "model")


# ---------------------------------------------------------------------------- recording

class SpyRecorder(Recorder):
    """Looks at the file on disk from inside the run (at the 30th append)."""

    seen_mid_run: tuple | None = None
    appends = 0

    def append(self, name, values, t):
        super().append(name, values, t)
        self.appends += 1
        if self.appends == 30:
            with open_recording(self.path) as live:
                self.seen_mid_run = (live.complete,
                                     live.read("lower/soma/u").values.shape[0], self.chunks_written)


def test_recording_streams_chunks_during_the_run(tmp_path):
    """One append per record on the eager path (the fused path's blocks: test_fused.py)."""
    from neurosim.dynamics import fused
    text = model()
    sim = Simulation.from_model_text(text, n_steps=40)
    mons = monitors(text, sim)
    path = tmp_path / "rec.h5"
    rec = SpyRecorder(path, chunk_size=4, attrs={"solver": sim.solver.name})
    try:
        with fused.mode("off"):
            sim.run(monitors=mons, recorder=rec)
        # the 30th append happens at step 11 (3 monitors at step 0, then 2 per step plus 1 on
        # even steps): lower/soma/u had 12 records, all 3 chunks of 4 already on disk
        complete, rows, chunks = rec.seen_mid_run
        assert not complete and rows == 12 and chunks == 3 + 3 + 1
        assert rec.chunks_written > 0 and not rec.closed
        with open_recording(path) as live:  # written while the recorder is still open
            assert not live.complete
            var = live.read("lower/soma/u")
            # 40 of the 41 records are on disk, the last one is still in the buffer
            assert var.values.shape[0] == 40 and var.values.shape[1:] == (3, 3)
            assert np.all(np.isfinite(var.values)) and np.any(var.values != 0)
        # memory: one chunk (4 records) per monitor (u: 3x3, v: 3x12, r: 3x4 float32) plus
        # two time axes (every 1 and 2) of 4 float64, whatever the number of steps
        assert rec.buffer_nbytes == 4 * (9 + 36 + 12) * 4 + 2 * 4 * 8
    finally:
        rec.close()
    with open_recording(path) as done:
        assert done.complete
        u = done.read("lower/soma/u")
        assert u.values.shape == (41, 3, 3) and u.time[-1] == pytest.approx(40 * 0.05)
        np.testing.assert_array_equal(u.values[-1], sim.net.u_of(sim.state, "lower")[:, [0, 3, 7]])
        r = done.read("upper/soma/r")  # every = 2: steps 0, 2, ..., 40
        assert r.values.shape == (21, 3, 4)
        np.testing.assert_allclose(r.time, 0.05 * np.arange(0, 41, 2), atol=1e-12)
        v = done.read("lower/apical/v")
        np.testing.assert_array_equal(
            v.values[-1], sim.net.compartment_potential(sim.state, "lower", "apical"))


# ---------------------------------------------------------------------------- exact resume

N_TOTAL, N_SPLIT = 30, 13  # an odd split: the every=2 monitor's grid runs across it

RESUME_CASES = {
    "euler-noise": model("euler", noise=0.3),
    "gs-euler-noise": model("gs-euler", noise=0.3),
    "rk4": model("rk4"),
}


def read_all(path) -> dict:
    with open_recording(path) as f:
        return {k: f.read(k) for k in f.variables()}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """For every case: the uninterrupted run (here), the first k steps (here) and the
    remaining N - k steps in ONE fresh interpreter that loads the checkpoints."""
    root = tmp_path_factory.mktemp("resume")
    out = {}
    for name, text in RESUME_CASES.items():
        full = Simulation.from_model_text(text)
        with Recorder(root / f"{name}-full.h5", chunk_size=8) as rec:
            full.run(N_TOTAL, monitors=monitors(text, full), recorder=rec)
        first = Simulation.from_model_text(text)
        with Recorder(root / f"{name}-a.h5", chunk_size=8) as rec:
            first.run(N_SPLIT, monitors=monitors(text, first), recorder=rec)
        first.save_checkpoint(root / f"{name}-k.h5")
        out[name] = {"full": full, "first": first}
    proc = run_python(f"""
        import torch
        from neurosim.graph import parse_model_text
        from neurosim.io import Recorder
        from neurosim.simulation import Simulation, monitors_from
        root = {str(root)!r}
        for name in {list(RESUME_CASES)!r}:
            sim = Simulation.load_checkpoint(f"{{root}}/{{name}}-k.h5")
            assert sim.step == {N_SPLIT}, sim.step
            mons = monitors_from(parse_model_text(sim.model_text), sim.network, "model")
            with Recorder(f"{{root}}/{{name}}-b.h5", chunk_size=8) as rec:
                sim.run({N_TOTAL}, monitors=mons, recorder=rec)
            sim.save_checkpoint(f"{{root}}/{{name}}-end.h5")
        print("ok", torch.get_num_threads())
    """)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0 and stdout.split() == ["ok", "1"], stderr
    return root, out


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_in_fresh_process_is_bit_exact(resumed, case):
    root, out = resumed
    full = out[case]["full"]
    end = load_checkpoint(root / f"{case}-end.h5", kind="simulation").payload
    assert end["progress"]["step"] == full.step == N_TOTAL
    assert end["progress"]["t"] == full.t  # the same float, not just close
    assert bits(end["state"]["u"]) == bits(full.state.u)
    assert bits(end["state"]["r"]) == bits(full.state.r)
    assert end["state"]["u"].dtype == full.state.u.dtype == torch.float32
    # the noise generator is in the same state too (the next draws would agree)
    assert bits(end["rng"]["generators"]["noise"]) == bits(full.generator.get_state())
    # the state moved: a resume that silently restarted from u = 0 could not pass
    first = out[case]["first"]
    assert bits(first.state.u) != bits(full.state.u)

    whole, part_a, part_b = (read_all(root / f"{case}-{x}.h5") for x in ("full", "a", "b"))
    assert list(whole) == list(part_a) == list(part_b) and len(whole) == 3
    for key, var in whole.items():
        joined = np.concatenate([part_a[key].values, part_b[key].values])
        times = np.concatenate([part_a[key].time, part_b[key].time])
        assert joined.shape == var.values.shape, key
        assert joined.tobytes() == var.values.tobytes(), key
        assert times.tobytes() == var.time.tobytes(), key


def test_noise_makes_runs_differ_and_seed_reproduces():
    """The stochastic cases above are really stochastic: another seed changes the state,
    the same seed repeats it exactly."""
    text = RESUME_CASES["euler-noise"]
    a, b = (Simulation.from_model_text(text) for _ in range(2))
    c = Simulation.from_model_text(text, seed=12)
    quiet = Simulation.from_model_text(model("euler"))
    for sim in (a, b, c, quiet):
        sim.run(10)
    assert bits(a.state.u) == bits(b.state.u)
    assert bits(a.state.u) != bits(c.state.u)
    # same weights and inputs as "quiet" (seed 11): the difference is the noise alone
    assert bits(a.net.weights["x_lower"]) == bits(quiet.net.weights["x_lower"])
    assert float((a.state.u - quiet.state.u).abs().max()) > 1e-3


# ---------------------------------------------------------------------------- crash safety

def test_killed_simulation_checkpoint_write_keeps_the_previous_one(tmp_path):
    """SIGKILL a process half-way through Simulation.save_checkpoint over an existing
    checkpoint of a large (1500-neuron, dense recurrent) simulation: the old one loads."""
    text = model("euler").replace("size = 12", "size = 1500")
    path = tmp_path / "sim.h5"
    sim = Simulation.from_model_text(text)
    sim.run(3)
    sim.save_checkpoint(path)
    before = path.read_bytes()
    assert len(before) > 9_000_000  # the 1500 x 1500 recurrent weight alone is 9 MB
    proc = run_python(f"""
        import time
        import neurosim.io.tree as tree
        from neurosim.simulation import Simulation

        sim = Simulation.load_checkpoint({str(path)!r})
        sim.run(5)
        write_tensor, written = tree._write_tensor, []

        def slow_write_tensor(group, key, value, where):  # hang after the big weights
            write_tensor(group, key, value, where)
            written.append(key)
            if key == "inh_lower":
                print("halfway", len(written), flush=True)
                time.sleep(120)

        tree._write_tensor = slow_write_tensor
        sim.save_checkpoint({str(path)!r})
    """)
    try:
        line = proc.stdout.readline()
        assert line.split() == ["halfway", "6"], proc.stderr.read() if not line else line
        tmp = tmp_path / f".sim.h5.tmp-{proc.pid}"
        assert tmp.exists() and tmp.stat().st_size > 9_000_000  # the new weights were written
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    back = Simulation.load_checkpoint(path)
    assert back.step == 3 and back.t == sim.t
    assert bits(back.state.u) == bits(sim.state.u)
    assert bits(back.net.weights["lower_lower"]) == bits(sim.net.weights["lower_lower"])
    with pytest.raises(Exception, match="truncated|incomplete|not an HDF5"):
        Simulation.load_checkpoint(tmp)


# ---------------------------------------------------------------------------- non-finite

@pytest.mark.parametrize("solver, dt", [("euler", 20.0), ("gs-euler", 20.0), ("rk4", 20.0)])
def test_diverging_run_stops_with_a_clear_error(tmp_path, solver, dt):
    ckpt = tmp_path / "ck.h5"
    sim = Simulation.from_model_text(model(solver), dt=dt, n_steps=500)
    with pytest.raises(SimulationError) as info:
        sim.run(checkpoint=ckpt, checkpoint_every=4)
    message = str(info.value)
    assert 'population "lower"' in message and 'compartment "soma"' in message
    step = int(message.split("at step ")[1].split(" ")[0])
    assert 4 < step < 500 and sim.step == step - 1
    assert "reduce the step size" in message
    # the last checkpoint before the blow-up is intact and finite
    back = Simulation.load_checkpoint(ckpt)
    assert back.step == 4 * ((step - 1) // 4) and back.step < step
    assert bool(torch.isfinite(back.state.u).all())
    assert float(back.state.u.abs().max()) > 10.0  # it was already on its way out


# ---------------------------------------------------------------------------- Python vs TOML

def demo_network_in_python() -> Network:
    """models/three_compartment.toml, written with the Python API."""
    kw = dict(leak=0.2, basal=1.0, apical=0.6, activation="sigmoid")
    return Network([
        InputPopulation("stimulus", 12),
        PyramidalPopulation("lower", 24, **kw),
        PyramidalPopulation("upper", 8, **kw),
        InterneuronPopulation("inhibition", 1, leak=1.0, activation="relu"),
    ], [
        Projection("stimulus_lower", "stimulus", "lower", "basal", init="he_uniform", scale=2.0),
        Projection("lower_upper", "lower", "upper", "basal", init="he_uniform", scale=2.0),
        Projection("upper_lower", "upper", "lower", "apical", init="xavier_uniform"),
        Projection("lower_lateral", "lower", "lower", "apical", init="normal", scale=0.1),
        Projection("lower_inhibition", "lower", "inhibition", init="ones", scale=0.1,
                   plastic=False),
        Projection("inhibition_lower", "inhibition", "lower", "apical", init="ones", gain=-1.0,
                   plastic=False),
    ], name="three_compartment_demo")


def test_python_and_toml_graphs_are_the_same_network():
    from_toml = load_model_file(DEMO).network()
    in_python = demo_network_in_python()
    assert from_toml.name == in_python.name
    assert from_toml.populations == in_python.populations
    assert from_toml.projections == in_python.projections
    a = CompiledNetwork(from_toml, seed=4)
    b = CompiledNetwork(in_python, seed=4)
    assert list(a.weights) == list(b.weights) == [p.name for p in in_python.projections]
    for name in a.weights:
        assert bits(a.weights[name]) == bits(b.weights[name]), name
    assert bits(CompiledNetwork(in_python, seed=5).weights["lower_lateral"]) != \
        bits(a.weights["lower_lateral"])
    # and they run identically
    x = torch.rand(2, 12, generator=torch.Generator().manual_seed(0))
    states = []
    for net in (a, b):
        s = net.zero_state(2)
        net.clamp_inputs(s, {"stimulus": x})
        dyn = net.phase(net.build_operators(), {"stimulus": x})
        for _ in range(20):
            dyn.euler_step_(s, 0.05)
        states.append(s)
    assert bits(states[0].u) == bits(states[1].u)


# ---------------------------------------------------------------------------- devices, dtypes

def test_float32_and_float64_runs_agree():
    runs = {}
    for dtype in ("float32", "float64"):
        sim = Simulation.from_model_text(model("rk4"), dtype=dtype, n_steps=40)
        stats = sim.run()
        assert stats.steps == 40
        assert sim.state.u.dtype == sim.net.weights["x_lower"].dtype == getattr(torch, dtype)
        assert bool(torch.isfinite(sim.state.u).all())
        runs[dtype] = sim.state.u
    assert float(runs["float32"].abs().max()) > 0.1
    torch.testing.assert_close(runs["float32"].double(), runs["float64"], rtol=0, atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ConfigError, match='device "cuda" requested but CUDA is not available'):
        Simulation.from_model_text(model(), device="cuda")
    from neurosim.simulation import SimulationOptions
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Simulation(demo_network_in_python(), SimulationOptions(device="cuda"))


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("solver", ["euler", "gs-euler", "rk4", "dopri5", "bdf"])
def test_cuda_matches_cpu(solver, tmp_path):
    text = model(solver, extra='dtype = "float64"')
    runs = {}
    for device in ("cpu", "cuda"):
        sim = Simulation.from_model_text(text, device=device, n_steps=40)
        with Recorder(tmp_path / f"{device}.h5", chunk_size=8) as rec:
            sim.run(monitors=monitors(text, sim), recorder=rec)
        assert sim.state.u.device.type == device
        runs[device] = sim
    # float64; adaptive solvers may choose slightly different steps on rounding differences
    tol = 1e-9 if solver in ("euler", "gs-euler", "rk4") else 1e-6
    torch.testing.assert_close(runs["cuda"].state.u.cpu(), runs["cpu"].state.u,
                               rtol=tol, atol=tol)
    a, b = read_all(tmp_path / "cpu.h5"), read_all(tmp_path / "cuda.h5")
    assert list(a) == list(b) and len(a) == 3
    for key in a:
        np.testing.assert_allclose(a[key].values, b[key].values, rtol=tol, atol=tol)


@cuda
def test_cuda_checkpoint_resumes_bit_exact_with_noise(tmp_path):
    text = model("gs-euler", noise=0.3)
    full = Simulation.from_model_text(text, device="cuda")
    full.run(20)
    part = Simulation.from_model_text(text, device="cuda")
    part.run(7)
    part.save_checkpoint(tmp_path / "k.h5")
    back = Simulation.load_checkpoint(tmp_path / "k.h5")
    assert back.state.u.device.type == "cuda"
    back.run(20)
    assert bits(back.state.u) == bits(full.state.u)


def test_python_built_simulation_resumes_with_its_network(tmp_path):
    import neurosim.graph as g
    from neurosim.errors import ConfigError
    from neurosim.simulation import Simulation, SimulationOptions

    def network():
        return g.Network([g.InputPopulation("x", 3),
                          g.PyramidalPopulation("h", 5, activation="tanh", noise=0.1)],
                         [g.Projection("xh", "x", "h", compartment="basal"),
                          g.Projection("hh", "h", "h", compartment="apical", init="normal",
                                       scale=0.2)])
    options = SimulationOptions(solver="euler", step=0.01, n_steps=40, batch=2, seed=3,
                                nudge={"h": {"target": [0.5] * 5, "beta": 0.3}})
    full = Simulation(network(), options)
    full.run(40)
    half = Simulation(network(), options)
    half.run(15)
    half.save_checkpoint(tmp_path / "sim.h5")
    with pytest.raises(ConfigError, match="network=<the same Network>"):
        Simulation.load_checkpoint(tmp_path / "sim.h5")
    resumed = Simulation.load_checkpoint(tmp_path / "sim.h5", network=network())
    assert resumed.step == 15 and set(resumed.nudges) == {"h"}
    resumed.run(40)
    assert torch.equal(resumed.state.u, full.state.u) and torch.equal(resumed.state.r, full.state.r)


@pytest.mark.parametrize("options, message", [
    (dict(duration=float("nan")), "SimulationOptions.duration: must be a finite number > 0, "
                                  "got nan"),
    (dict(duration=-1.0), "SimulationOptions.duration: must be a finite number > 0, got -1.0"),
    (dict(n_steps=0), "SimulationOptions.n_steps: must be a whole number >= 1"),
    (dict(step=float("nan")), "SimulationOptions.step: must be a finite number > 0, got nan"),
    (dict(step=0.0), "SimulationOptions.step: must be a finite number > 0"),
    (dict(solver="dopri5", rtol=-1.0), "SimulationOptions.rtol: must be a finite number > 0"),
    (dict(steady_tol=-1.0), "SimulationOptions.steady_tol: must be a finite number > 0"),
    (dict(seed=-1), "SimulationOptions.seed: must be a whole number >= 0, got -1"),
    (dict(seed=1.5), "SimulationOptions.seed: must be a whole number >= 0, got 1.5"),
    (dict(batch=0), "SimulationOptions.batch: must be a whole number >= 1, got 0"),
    (dict(dtype="float16"), 'SimulationOptions.dtype: must be "float32" or "float64"'),
    (dict(device="tpu"), 'SimulationOptions.device: "tpu" is not a device; use "cpu"'),
    (dict(solver="dopri5", max_rhs_evals=0), "SimulationOptions.max_rhs_evals must be a "
                                             "positive integer"),
    (dict(checkpoint_every=0), "SimulationOptions.checkpoint_every: must be a whole number"),
])
def test_python_built_options_are_checked(options, message):
    """The checks of a model file's [simulation] table, naming the SimulationOptions field."""
    from neurosim.simulation import SimulationOptions
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Simulation(demo_network_in_python(), SimulationOptions(**{"duration": 1.0, **options}))


def test_python_built_resume_needs_the_same_stimuli_and_fixed_options(tmp_path):
    """A checkpoint keeps a digest of its stimuli: loading it without them, or with others,
    is a ConfigError; batch, seed, dtype and dt cannot change; an end before the checkpoint
    is refused, and so is run() to an earlier step."""
    from neurosim.simulation import SimulationOptions
    from neurosim.stimuli import OrnsteinUhlenbeck, Stimulus, Sine

    def stimuli(sigma=1.0, **kw):
        return [Stimulus("lower", OrnsteinUhlenbeck(sigma=sigma, tau=0.5), **kw),
                Stimulus("stimulus", lambda t: 0.1 * t, name="ramp")]

    options = SimulationOptions(solver="rk4", step=0.05, n_steps=20, batch=2, seed=1)
    full = Simulation(demo_network_in_python(), options, stimuli=stimuli())
    full.run(10)
    full.save_checkpoint(tmp_path / "ck.h5")
    full.run()
    path = tmp_path / "ck.h5"

    def load(given=None, **overrides):
        return Simulation.load_checkpoint(path, network=demo_network_in_python(),
                                          stimuli=stimuli() if given is None else given,
                                          **overrides)

    resumed = load()
    resumed.run()
    assert bits(resumed.state.u) == bits(full.state.u)
    with pytest.raises(ConfigError, match=r"was saved with stimuli \(lower_ou, ramp\) but none "
                                          r"were given; pass the same stimuli"):
        load([])
    for other in (stimuli(sigma=2.0), stimuli(indices=[0, 1]),
                  [stimuli()[0], Stimulus("stimulus", Sine(0.1, frequency=1.0), name="ramp")],
                  stimuli()[:1]):
        with pytest.raises(ConfigError, match="differ from those it was saved with"):
            load(other)
    for key, value, shown in (("seed", 2, "seed (--seed)"), ("batch", 3, "batch (--batch)"),
                              ("dtype", "float64", "dtype (--dtype)"), ("dt", 0.01, "dt (--dt)"),
                              ("step", 0.01, "dt (--dt)")):
        with pytest.raises(ConfigError, match=rf"{shown.replace('(', '.').replace(')', '.')} "
                                              "cannot change on resume"):
            load(**{key: value})
    assert load(seed=1, batch=2, step=0.05).step == 10           # the same values are fine
    with pytest.raises(ConfigError, match=r"already at step 10 \(t=0\.5\), so n_steps "
                                          r"\(--steps\) = 8 leaves nothing to run"):
        load(n_steps=8)
    with pytest.raises(ConfigError, match=r"already at step 20 .* after run\(5\) at step 5; "
                                          "n_steps is the absolute step"):
        full.run(5)
    # a model-file checkpoint takes its stimuli from its text
    sim = Simulation.from_model_text(DEMO.read_text(), n_steps=2)
    sim.run()
    sim.save_checkpoint(tmp_path / "text.h5")
    with pytest.raises(ConfigError, match=r"holds its model text, whose \[\[stimulus\]\] tables "
                                          "give the stimuli"):
        Simulation.load_checkpoint(tmp_path / "text.h5", stimuli=stimuli())
