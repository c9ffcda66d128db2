"""Time-varying stimuli (neurosim.stimuli): waveforms against their formulas, currents
against analytic solutions, inputs, dendrites, neurons by index, recordings, noise
statistics, exact resume, the model-file form and its errors."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import neurosim.graph as g
from neurosim.cli import main
from neurosim.errors import ConfigError
from neurosim.io import Recorder
from neurosim.simulation import Simulation, SimulationOptions
from neurosim.stimuli import (Function, OrnsteinUhlenbeck, Pulses, Ramp, Sampled, Sine, Step,
                              Stimulus, WhiteNoise)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.nonlinear_cell import GatedCell  # noqa: E402

LEAK, BASAL, APICAL = 1.0, 1.0, 0.5
DECAY = LEAK + BASAL + APICAL          # linear cell: du/dt = -DECAY u + I_soma + g_c v_c


def linear_net(n: int = 4) -> g.Network:
    return g.Network([
        g.InputPopulation("x", 3),
        g.PyramidalPopulation("h", n, leak=LEAK, basal=BASAL, apical=APICAL,
                              activation="linear"),
    ], [g.Projection("x_h", "x", "h", compartment="basal", init="ones", plastic=False)])


def simulate(stimuli, solver="dopri5", duration=3.0, dt=0.01, batch=2, network=None,
             **options):
    options.setdefault("inputs", {"x": {"type": "constant", "value": 0.0}})
    if solver == "dopri5":
        options.update(rtol=1e-10, atol=1e-12)
    sim = Simulation(network or linear_net(), SimulationOptions(
        solver=solver, step=dt, duration=duration, batch=batch, dtype="float64", **options),
        stimuli=stimuli)
    sim.run()
    return sim


def step_response(t_on: float, t_off: float, t: float, amplitude: float = 1.0) -> float:
    """u(t) of du/dt = -DECAY u + amplitude [t_on <= t < t_off], u(0) = 0."""
    def charge(s):
        return amplitude / DECAY * (1 - math.exp(-DECAY * s))
    if t <= t_on:
        return 0.0
    if t <= t_off:
        return charge(t - t_on)
    return charge(t_off - t_on) * math.exp(-DECAY * (t - t_off))


# ---------------------------------------------------------------- waveforms
def bound(waveform, batch=1, size=1, dt=0.01):
    waveform.bind(batch, size, seed=0, dt=dt, where="test")
    return waveform


def test_deterministic_waveforms_follow_their_formulas():
    step = bound(Step(2.0, start=1.0, stop=2.0, offset=0.5))
    assert [float(step(t)) for t in (0.5, 1.0, 1.99, 2.0)] == [0.5, 2.5, 2.5, 0.5]
    pulses = bound(Pulses(1.0, start=1.0, width=0.2, period=1.0, count=2))
    assert [float(pulses(t)) for t in (0.9, 1.1, 1.3, 2.1, 3.1)] == [0, 1, 0, 1, 0]
    ramp = bound(Ramp(3.0, start=1.0, stop=4.0))
    assert [float(ramp(t)) for t in (0.0, 2.5, 5.0)] == [0.0, 1.5, 3.0]
    sine = bound(Sine(2.0, frequency=0.25, phase=0.3, start=1.0))
    for t in (0.5, 1.7, 4.2):
        expected = 0.0 if t < 1.0 else 2.0 * math.sin(2 * math.pi * 0.25 * (t - 1.0) + 0.3)
        assert float(sine(t)) == pytest.approx(expected, abs=1e-15)
    per_neuron = bound(Step([1.0, 2.0, 3.0], start=0.0), size=3)
    assert per_neuron(0.1).tolist() == [1.0, 2.0, 3.0]


def test_sampled_waveform_holds_or_interpolates():
    values = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    hold = bound(Sampled(values, dt=1.0, t0=1.0), size=2)
    linear = bound(Sampled(values, times=[1.0, 2.0, 4.0], interpolation="linear"), size=2)
    assert hold(0.0).tolist() == [0.0, 1.0]            # before the grid: first sample
    assert hold(2.5).tolist() == [2.0, 3.0]
    assert hold(9.0).tolist() == [4.0, 5.0]            # after it: last sample
    assert linear(3.0).tolist() == [3.0, 4.0]
    assert linear(1.5).tolist() == [1.0, 2.0]


def test_noise_is_a_fixed_function_of_time_with_the_right_statistics():
    dt, tau, sigma = 0.05, 0.5, 0.3
    ou = bound(OrnsteinUhlenbeck(sigma=sigma, tau=tau, mean=1.0), batch=4, size=500, dt=dt)
    path = torch.stack([ou(k * dt) for k in range(400)])          # (time, batch, neurons)
    assert float(path.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(path.std()) == pytest.approx(sigma, rel=0.03)
    lag = round(tau / dt)
    x = path - path.mean()
    corr = float((x[:-lag] * x[lag:]).mean() / (x * x).mean())
    assert corr == pytest.approx(math.exp(-1.0), abs=0.03)       # exp(-lag dt / tau)
    again = bound(OrnsteinUhlenbeck(sigma=sigma, tau=tau, mean=1.0), batch=4, size=500, dt=dt)
    assert torch.equal(again(250 * dt + 0.01), path[250])        # any order, same values
    assert torch.equal(ou(3 * dt), path[3])                      # back in time: recomputed
    white = bound(WhiteNoise(sigma=0.4), batch=8, size=500, dt=dt)
    integral = sum(white(k * dt) for k in range(100)) * dt          # t = 5
    assert float(integral.var()) == pytest.approx(0.4 ** 2 * 5.0, rel=0.05)


# ---------------------------------------------------------------- dynamics
@pytest.mark.parametrize("solver,tol", [("dopri5", 1e-8), ("bdf", 1e-6), ("rk4", 2e-3),
                                        ("euler", 2e-3), ("gs-euler", 2e-3)])
def test_step_current_matches_the_analytic_response(solver, tol):
    extra = {"rtol": 1e-10, "atol": 1e-12} if solver == "bdf" else {}
    sim = simulate([Stimulus("h", Step(1.0, start=1.0, stop=2.0))], solver=solver, **extra)
    assert float(sim.state.u[0, 0]) == pytest.approx(step_response(1.0, 2.0, 3.0), abs=tol)


def test_sine_current_with_rk4_converges_at_fourth_order():
    """du/dt = -d u + A sin(w t): the stage times t + c_i dt reach the stimulus."""
    amplitude, freq = 1.0, 0.5
    w = 2 * math.pi * freq
    t_end = 2.0
    exact = amplitude * (DECAY * math.sin(w * t_end) - w * math.cos(w * t_end)
                         + w * math.exp(-DECAY * t_end)) / (DECAY ** 2 + w ** 2)
    errors = [abs(float(simulate([Stimulus("h", Sine(amplitude, frequency=freq))], "rk4",
                                 duration=t_end, dt=dt).state.u[0, 0]) - exact)
              for dt in (0.1, 0.05)]
    assert math.log2(errors[0] / errors[1]) > 3.8


def test_indices_dendrites_and_inputs():
    # neurons 1 and 3 only; the other two stay at rest
    sim = simulate([Stimulus("h", Step(1.0), indices=[1, 3])], duration=1.0)
    u = sim.state.u[0]
    assert float(u[0]) == 0.0 and float(u[2]) == 0.0
    assert float(u[1]) == pytest.approx(step_response(0.0, 9.0, 1.0), abs=1e-8)
    # apical dendrite: v_A + I enters as g_A I
    sim = simulate([Stimulus("h", Step(1.0), compartment="apical")], duration=1.0)
    assert float(sim.state.u[0, 0]) == pytest.approx(step_response(0.0, 9.0, 1.0, APICAL),
                                                     abs=1e-8)
    # an input population driven over time: x(t) = x0 + I(t), through W = ones (3 inputs)
    sim = simulate([Stimulus("x", Step(0.5, start=0.0, stop=0.5))], duration=1.0,
                   inputs={"x": {"type": "constant", "value": 0.1}})
    expected = (step_response(0.0, 1.0, 1.0, 3 * 0.1 * BASAL)
                + step_response(0.0, 0.5, 1.0, 3 * 0.5 * BASAL))
    assert float(sim.state.u[0, 0]) == pytest.approx(expected, abs=1e-8)
    assert sim.net.r_of(sim.state, "x").tolist() == [[0.1] * 3] * 2     # x(1) = x0


def test_python_callable_per_sample_and_nonlinear_cell():
    batch_scale = torch.tensor([[1.0], [2.0]])
    sim = simulate([Stimulus("h", lambda t: batch_scale * (t < 1.0))], duration=2.0)
    one = step_response(0.0, 1.0, 2.0)
    assert sim.state.u[:, 0].tolist() == pytest.approx([one, 2 * one], abs=1e-8)
    net = g.Network([g.InputPopulation("x", 2),
                     GatedCell("h", 3, leak=1.0, basal=1.0, apical=0.5, lateral=0.5,
                               activation="tanh")],
                    [g.Projection("x_h", "x", "h", "basal")])
    stim = [Stimulus("h", Sine(0.7, frequency=0.3)), Stimulus("h", Step(0.4, start=0.5),
                                                              compartment="lateral")]
    ref = simulate(stim, "rk4", duration=2.0, dt=0.005, network=net).state.u
    for solver in ("dopri5", "bdf"):
        extra = {"rtol": 1e-10, "atol": 1e-12} if solver == "bdf" else {}
        u = simulate(stim, solver, duration=2.0, network=net, **extra).state.u
        assert float((u - ref).abs().max()) < 1e-6, solver


def test_stimuli_are_recorded_beside_the_response(tmp_path):
    sim = Simulation(linear_net(), SimulationOptions(solver="rk4", step=0.1, n_steps=20,
                                                     batch=2, dtype="float64"),
                     stimuli=[Stimulus("h", Ramp(2.0, stop=1.0), indices=[0, 2], name="ramp"),
                              Stimulus("h", Step(1.0), record=False)])
    from neurosim.io import MonitorSpec
    with Recorder(tmp_path / "r.h5") as rec:
        sim.run(monitors=[MonitorSpec("h", "soma", "u", every=2)], recorder=rec)
    with h5py.File(tmp_path / "r.h5") as fh:
        data = fh["recordings/h/soma/stimulus_ramp"]
        times = fh[data.attrs["time"]][()]
        assert data.shape == (11, 2, 2) and list(data.attrs["indices"]) == [0, 2]
        assert data.attrs["units"] == "1 (dimensionless current)"
        assert np.allclose(data[:, 0, 0], 2.0 * np.clip(times, 0, 1.0))
        assert "stimulus_h_step" not in fh["recordings/h/soma"]


def test_noise_stimulus_resumes_bit_exactly(tmp_path):
    def make():
        return [Stimulus("h", OrnsteinUhlenbeck(sigma=0.5, tau=0.3)),
                Stimulus("h", WhiteNoise(sigma=0.2), compartment="apical")]
    options = SimulationOptions(solver="euler", step=0.01, n_steps=200, batch=2,
                                dtype="float64", inputs={"x": 0.0})
    whole = Simulation(linear_net(), options, stimuli=make())
    whole.run()
    first = Simulation(linear_net(), options, stimuli=make())
    first.run(100)
    first.save_checkpoint(tmp_path / "c.h5")
    second = Simulation.load_checkpoint(tmp_path / "c.h5", network=linear_net(), stimuli=make())
    second.run(200)
    assert torch.equal(second.state.u, whole.state.u)


# ---------------------------------------------------------------- model files
MODEL = """
[network]
name = "driven"
[[population]]
name = "x"
type = "input"
size = 3
[[population]]
name = "h"
type = "pyramidal"
size = 4
leak = 1.0
basal = 1.0
apical = 0.5
activation = "linear"
[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"
init = "ones"
plastic = false
[simulation]
solver = "dopri5"
dt = 0.01
duration = 3.0
rtol = 1e-10
atol = 1e-12
dtype = "float64"
inputs = { x = { type = "constant", value = 0.0 } }
[[monitor]]
population = "h"
"""


def test_model_file_stimuli_through_the_cli(tmp_path):
    np.save(tmp_path / "samples.npy", np.array([0.0, 1.0, 0.0]))
    (tmp_path / "drive.py").write_text("def current(t):\n    return 0.25 if t >= 2.5 else 0.0\n")
    model = tmp_path / "m.toml"
    model.write_text(MODEL + """
[[stimulus]]
name = "pulse"
population = "h"
type = "array"
file = "samples.npy"
dt = 1.0
indices = [0]
[[stimulus]]
population = "h"
type = "python"
function = "drive:current"
indices = [1]
""")
    assert main(["simulate", str(model), "--out", str(tmp_path / "r.h5"), "--quiet"]) == 0
    with h5py.File(tmp_path / "r.h5") as fh:
        u = fh["recordings/h/soma/u"][-1, 0]
        pulse = fh["recordings/h/soma/stimulus_pulse"][()]
        assert pulse.shape == (301, 1, 1) and pulse[150, 0, 0] == 1.0
    assert u[0] == pytest.approx(step_response(1.0, 2.0, 3.0), abs=1e-8)
    assert u[1] == pytest.approx(step_response(2.5, 9.0, 3.0, 0.25), abs=1e-6)


@pytest.mark.parametrize("table,message", [
    ('type = "stp"\npopulation = "h"', 'unknown stimulus type "stp". Did you mean "step"?'),
    ('type = "step"\npopulation = "hh"', 'unknown population "hh"'),
    ('type = "step"\npopulation = "h"\ncompartment = "apcal"', 'Did you mean "apical"?'),
    ('type = "step"\npopulation = "h"\nindices = [4]', "indices must be distinct neurons in 0..3"),
    ('type = "step"\npopulation = "h"\namplitude = [1.0, 2.0]', "amplitude has shape (2,)"),
    ('type = "step"\npopulation = "h"\nstart = 2.0\nstop = 1.0', "stop (1.0) must come after"),
    ('type = "sine"\npopulation = "h"\nfrequency = nan', "frequency must be finite"),
    ('type = "ou"\npopulation = "h"\nsigma = 1.0', "tau"),
    ('type = "step"\npopulation = "h"\namplitud = 1.0', 'unknown key "amplitud"'),
    ('type = "array"\npopulation = "h"\nfile = "missing.npy"\ndt = 1.0', "does not exist"),
    ('type = "python"\npopulation = "h"\nfunction = "nowhere:f"', "cannot import"),
])
def test_bad_stimulus_tables_are_one_clear_error(tmp_path, capsys, table, message):
    model = tmp_path / "m.toml"
    model.write_text(MODEL + "[[stimulus]]\n" + table + "\n")
    assert main(["simulate", str(model), "--out", str(tmp_path / "r.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and ("[[stimulus]] #1" in err or 'stimulus "' in err), err
    assert "Traceback" not in err and not (tmp_path / "r.h5").exists()


def test_noise_needs_a_grid_under_a_decaying_step_schedule():
    with pytest.raises(ConfigError, match="give dt"):
        Simulation(linear_net(), SimulationOptions(
            solver="euler", step={"type": "inverse_time", "dt": 0.1, "decay": 0.1}, n_steps=5),
            stimuli=[Stimulus("h", WhiteNoise(sigma=1.0))])
    with pytest.raises(ConfigError, match="not callable"):
        Function(3.0)


# ---------------------------------------------------------------- review fixes
def test_edges_and_samples_fall_on_their_steps(tmp_path):
    """Step k is at k dt exactly (no accumulated rounding), and an edge at k dt is on from
    step k: sampled values and pulse edges land on the step they name."""
    from neurosim.io import MonitorSpec
    sim = Simulation(linear_net(), SimulationOptions(solver="euler", step=0.1, n_steps=60,
                                                     dtype="float64", inputs={"x": 0.0}),
                     stimuli=[Stimulus("h", Sampled(np.arange(100.0), dt=0.1), name="ramp"),
                              Stimulus("h", Pulses(1.0, width=0.1, period=0.3), name="p")])
    with Recorder(tmp_path / "r.h5") as rec:
        sim.run(monitors=[MonitorSpec("h", "soma", "u")], recorder=rec)
    with h5py.File(tmp_path / "r.h5") as fh:
        samples = fh["recordings/h/soma/stimulus_ramp"][:, 0, 0]
        pulses = fh["recordings/h/soma/stimulus_p"][:, 0, 0]
        times = fh["time/every_1"][()]
    assert samples.tolist() == list(range(61))
    assert pulses.tolist() == [1.0 if k % 3 == 0 else 0.0 for k in range(61)]
    assert times.tolist() == [k * 0.1 for k in range(61)]


def test_white_noise_finer_than_a_fixed_step_is_refused():
    with pytest.raises(ConfigError, match=r"finer than the solver's step \(0.1\)"):
        simulate([Stimulus("h", WhiteNoise(sigma=1.0, dt=0.01))], solver="euler", dt=0.1)
    simulate([Stimulus("h", WhiteNoise(sigma=1.0, dt=0.2))], solver="euler", dt=0.1)
    simulate([Stimulus("h", WhiteNoise(sigma=1.0, dt=0.01))], solver="dopri5", dt=0.1,
             duration=0.2)


def test_stimuli_can_be_reused_and_shared():
    """A simulation works on its own copies: the same Stimulus list serves several seeds, and
    one waveform object may drive populations of different sizes."""
    noise = [Stimulus("h", OrnsteinUhlenbeck(sigma=1.0, tau=0.5))]
    shared = [simulate(noise, "euler", duration=0.5, seed=s).state.u for s in (0, 1)]
    fresh = [simulate([Stimulus("h", OrnsteinUhlenbeck(sigma=1.0, tau=0.5))], "euler",
                      duration=0.5, seed=s).state.u for s in (0, 1)]
    assert all(torch.equal(a, b) for a, b in zip(shared, fresh))
    assert not torch.equal(fresh[0], fresh[1])
    wave = Sine(1.0, frequency=1.0)
    sim = simulate([Stimulus("h", wave), Stimulus("x", wave)], duration=0.5)
    assert sim.state["x"].r.shape == (2, 3)


def test_dendritic_potential_includes_the_injected_current(tmp_path):
    from neurosim.io import MonitorSpec
    sim = Simulation(linear_net(), SimulationOptions(solver="rk4", step=0.1, n_steps=10,
                                                     dtype="float64", inputs={"x": 0.0}),
                     stimuli=[Stimulus("h", Step(1.0, start=0.5), compartment="apical")])
    with Recorder(tmp_path / "r.h5") as rec:
        sim.run(monitors=[MonitorSpec("h", "apical", "v")], recorder=rec)
    assert sim.state["h"].v["apical"].tolist() == [[1.0] * 4]
    with h5py.File(tmp_path / "r.h5") as fh:
        v = fh["recordings/h/apical/v"][:, 0, 0]
    assert v.tolist() == [0.0] * 5 + [1.0] * 6


def test_continuous_plasticity_records_the_stimulated_input():
    from neurosim.plasticity import PlasticityRule

    class Still(PlasticityRule):
        name = "still"

        def derivative(self, ctx):
            return torch.zeros_like(ctx.weight)

    net = g.Network(linear_net().populations, [g.Projection("x_h", "x", "h", "basal",
                                                            init="ones", rules=[Still()])])
    sim = simulate([Stimulus("x", Ramp(1.0, stop=1.0))], solver="rk4", duration=0.55,
                   network=net, plasticity="continuous")
    assert sim.state["x"].r.tolist() == [[0.55] * 3] * 2


def test_steady_state_waits_for_the_stimuli():
    sim = simulate([Stimulus("h", Step(1.0, start=2.0))], solver="rk4", duration=50.0, dt=0.05,
                   steady_tol=1e-6)
    assert sim.t > 2.0
    assert float(sim.state["h"].u[0, 0]) == pytest.approx(1.0 / DECAY, abs=1e-5)
    with pytest.raises(ConfigError, match="never stops changing"):
        simulate([Stimulus("h", Sine(1.0, frequency=1.0))], solver="rk4", steady_tol=1e-6)


def test_inputs_written_in_the_state_or_set_in_sim_inputs():
    net = g.Network([g.InputPopulation("x", 2),
                     g.PyramidalPopulation("y", 1, leak=1.0, basal=0.0, apical=0.0,
                                           activation="linear")],
                    [g.Projection("x_y", "x", "y", compartment="soma", init="ones",
                                  plastic=False)])
    sim = Simulation(net, SimulationOptions(solver="dopri5", step=0.1, duration=30, batch=1,
                                            dtype="float64", inputs={"x": 0.0}))
    sim.run()
    sim.state["x"].r[:] = 1.0                      # written in the state: the new input
    sim.run(600)
    assert float(sim.state["y"].u) == pytest.approx(2.0, abs=1e-6)
    sim.inputs["x"] = torch.full((1, 2), 0.25, dtype=torch.float64)   # or set as the input
    sim.run(900)
    assert float(sim.state["y"].u) == pytest.approx(0.5, abs=1e-6)
    assert sim.state["x"].r.tolist() == [[0.25, 0.25]]
    driven = Simulation(net, SimulationOptions(solver="euler", step=0.1, duration=1, batch=1,
                                               inputs={"x": 0.0}),
                        stimuli=[Stimulus("x", Step(1.0))])
    driven.run()
    driven.state["x"].r[:] = 3.0
    with pytest.raises(ConfigError, match='set x0 with sim.inputs\\["x"\\]'):
        driven.run(20)


@pytest.mark.parametrize("indices", ["12", [0.5], [True]])
def test_indices_must_be_integers(indices):
    with pytest.raises(ConfigError, match="indices must be a list of neuron numbers"):
        simulate([Stimulus("h", Step(1.0), indices=indices)], duration=0.1)


@pytest.mark.parametrize("table,message", [
    ('type = "ou"\npopulation = "h"\nsigma = 1.0', 'missing required key "tau"'),
    ('type = "sine"\npopulation = "h"', 'missing required key "frequency"'),
    ('type = "array"\npopulation = "h"\nvalues = [[1.0, 2.0]]\ndt = 1.0',
     "values have shape (1, 2); use (T,), (T, 4)"),
])
def test_stimulus_messages_name_the_table_once(tmp_path, capsys, table, message):
    model = tmp_path / "m.toml"
    model.write_text(MODEL + "[[stimulus]]\n" + table + "\n")
    assert main(["simulate", str(model), "--out", str(tmp_path / "r.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("[[stimulus]] #1") == 1, err


def test_training_refuses_stimuli(tmp_path, capsys):
    model = tmp_path / "m.toml"
    model.write_text((ROOT / "models" / "corinfomax_digits.toml").read_text()
                     + '\n[[stimulus]]\npopulation = "h1"\ntype = "step"\n')
    assert main(["train", str(model), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert "[[stimulus]]: stimuli drive simulations" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
