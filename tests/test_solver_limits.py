"""Work limits of adaptive solvers (max_rhs_evals per output interval, and the run's budget of
max(200, max_rhs_evals / 50) evaluations per output step on average) and the stiffness hint.

The stiff network: a slow pyramidal population (decay rate 1) coupled both ways to a fast
interneuron population (rate 1e6, decay rate 1e6), so its decay rates span a ratio of 1e6.
An explicit adaptive method (dopri5) is held to steps of ~3e-6 by stability there: one output
step of 0.01 takes ~23,000 evaluations and the whole run to t = 2 minutes; the default
limit stops it within a second or two with an error that recommends bdf, and bdf itself
integrates the run in a few hundred evaluations.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest
import torch

from neurosim.cli import main
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError, SimulationError
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Projection,
                            PyramidalPopulation)
from neurosim.simulation import Simulation, SimulationOptions
from neurosim.solvers import (DEFAULT_MAX_RHS_EVALS, ConstantStep, StiffnessWarning,
                              get_solver, solve)
from neurosim.solvers import external, limits

BATCH = 2
DT = 0.01
T_END = 2.0


def two_speed_network(fast_rate: float = 1e6) -> Network:
    """"slow" (decay rate 0.5 + 0.3 + 0.2 = 1) <-> "fast" (decay rate 1 * fast_rate)."""
    return Network([
        InputPopulation("x", 3),
        PyramidalPopulation("slow", 6, leak=0.5, basal=0.3, apical=0.2, activation="tanh"),
        InterneuronPopulation("fast", 4, leak=1.0, activation="tanh", rate=fast_rate),
    ], [
        Projection("x_slow", "x", "slow", "basal", init="he_uniform"),
        Projection("slow_fast", "slow", "fast", init="uniform", scale=0.5),
        Projection("fast_slow", "fast", "slow", "apical", init="uniform", scale=0.5),
    ], name="two_speed")


def run(solver, fast_rate=1e6, t_end=T_END, dt=DT, dtype=torch.float64):
    """u(t_end) from u(0) = 0 with inputs clamped, and the solve statistics."""
    net = CompiledNetwork(two_speed_network(fast_rate), dtype=dtype, seed=1)
    x = torch.rand(BATCH, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    state = net.zero_state(BATCH)
    net.clamp_inputs(state, {"x": x})
    dynamics = net.phase(net.build_operators(), {"x": x})
    solver = get_solver(solver) if isinstance(solver, str) else solver
    stats = solve(dynamics, state, solver=solver, schedule=ConstantStep(dt),
                  n_steps=round(t_end / dt))
    return state.u.clone(), stats


@pytest.fixture(scope="module")
def reference():
    """A tight Radau solution of the stiff run at T_END."""
    u, stats = run(get_solver("radau", rtol=1e-11, atol=1e-13))
    assert stats.t == pytest.approx(T_END)
    return u


# ---------------------------------------------------------------------------- stiff network

def test_dopri5_on_a_stiff_network_stops_fast_and_recommends_bdf(capsys):
    start = time.perf_counter()
    with pytest.raises(SimulationError) as info:
        run("dopri5")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    with capsys.disabled():
        print(f"\n  dopri5 on the 1e6-stiff network stopped after {elapsed:.2f} s: {message}")
    assert elapsed < 30.0
    assert "\n" not in message
    assert message.startswith('solver "dopri5" stopped at t=')
    assert "of t_end=2" in message                                         # how far it got
    # the run's pace, projected to t_end, exceeds its budget: it stops after ~100 steps
    # instead of spending max_rhs_evals on the first interval
    assert "at its present pace the run would need ~4" in message and "e+06" in message
    assert "more than the 40000 a run of 200 output steps may use (200 per output step" \
        in message
    assert "held to steps of ~3" in message and "e-06" in message
    assert "looks stiff" in message and "ratio ~1e+06" in message           # the hint
    assert "--solver bdf" in message and "lsoda" in message and "radau" in message
    assert "--max-rhs-evals" in message and "max_rhs_evals = N in [simulation]" in message
    assert "dopri5 " not in message.split("stopped", 1)[1]    # never recommended for stiffness


def test_bdf_finishes_the_stiff_run_and_agrees_with_a_tight_reference(reference, capsys):
    start = time.perf_counter()
    u, stats = run("bdf")
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n  bdf on the 1e6-stiff network: {stats.steps} output steps to t={stats.t:g}, "
              f"{stats.rhs_evals} rhs evaluations, {elapsed:.2f} s", end="")
    assert stats.steps == round(T_END / DT) and stats.t == pytest.approx(T_END)
    assert stats.rhs_evals < 5 * DEFAULT_MAX_RHS_EVALS
    assert float(reference.abs().max()) > 0.1                      # the state really moved
    assert float((u - reference).abs().max()) < 1e-5


def test_explicit_scipy_method_on_the_stiff_network_gets_the_same_hint():
    with pytest.raises(SimulationError) as info:
        run("rk45")
    message = str(info.value)
    assert message.startswith('solver "scipy-rk45" stopped at t=')
    assert "looks stiff" in message and "--solver bdf" in message


def test_a_moderately_stiff_network_warns_once_and_still_finishes():
    """Rate 1e5: ~400 dopri5 steps per output interval, under the limit; a StiffnessWarning
    recommends an implicit solver (once per solver)."""
    solver = get_solver("dopri5")
    with pytest.warns(StiffnessWarning) as caught:
        u, stats = run(solver, fast_rate=1e5, t_end=3 * DT)
    assert stats.steps == 3
    assert len([w for w in caught if w.category is StiffnessWarning]) == 1
    text = str(caught[0].message)
    assert "looks stiff" in text and "--solver bdf" in text


def test_the_limit_counts_per_output_interval_not_per_run():
    """A non-stiff run needs ~20 evaluations per output interval of 0.01 and ~200 in all:
    a limit of 40 lets it through, a limit of 10 stops it in its first interval."""
    u_default, stats = run("dopri5", fast_rate=2.0)
    assert stats.rhs_evals > 40
    u, stats = run(get_solver("dopri5", max_rhs_evals=40), fast_rate=2.0)
    assert torch.equal(u, u_default)
    with pytest.raises(SimulationError) as info:
        run(get_solver("dopri5", max_rhs_evals=10), fast_rate=2.0)
    message = str(info.value)
    assert "10 right-hand-side evaluations (max_rhs_evals)" in message
    assert "output interval [0, 0.01]" in message
    assert "looks stiff" not in message and "bdf" not in message       # not a stiffness case
    assert "Loosen the tolerances" in message and "--max-rhs-evals" in message


def test_implicit_solver_hitting_the_limit_is_not_told_to_use_an_implicit_solver():
    with pytest.raises(SimulationError) as info:
        run(get_solver("bdf", max_rhs_evals=3))
    message = str(info.value)
    assert message.startswith('solver "scipy-bdf" stopped at t=')
    assert "Loosen the tolerances (now rtol=1e-07, atol=1e-09)" in message
    assert "--solver" not in message and "looks stiff" not in message


# ---------------------------------------------------------------------------- non-stiff runs

def _unbounded(monkeypatch):
    """Integrate exactly as before the limit existed (no budget around the integrators)."""
    monkeypatch.setattr(external.TorchDiffEq, "bounded", lambda self, odeint, *a, **k: odeint)
    monkeypatch.setattr(limits.RhsBudget, "scipy", lambda self, solve_ivp: solve_ivp)


@pytest.mark.parametrize("solver", ["dopri5", "bosh3", "rk45", "bdf", "lsoda"])
def test_a_non_stiff_run_is_unaffected(monkeypatch, solver):
    """Same bits and the same number of evaluations with the default limit as without it."""
    bounded, stats = run(solver, fast_rate=2.0, t_end=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StiffnessWarning)          # and no warning
        run(solver, fast_rate=2.0, t_end=1.0)
    _unbounded(monkeypatch)
    plain, plain_stats = run(solver, fast_rate=2.0, t_end=1.0)
    assert torch.equal(bounded, plain)
    assert stats.rhs_evals == plain_stats.rhs_evals and stats.steps == plain_stats.steps


def test_fixed_grid_torchdiffeq_methods_are_not_bounded():
    solver = get_solver("torchdiffeq:rk4", max_rhs_evals=1)
    u, stats = run(solver, fast_rate=2.0, t_end=0.1)
    assert stats.steps == 10 and stats.rhs_evals >= 40


# ---------------------------------------------------------------------------- the option

@pytest.mark.parametrize("value", [0, -5, 2.5, 1e4, True, "100", None])
def test_solver_argument_is_validated(value):
    if value is None:                                           # None: the default
        assert get_solver("dopri5", max_rhs_evals=None).max_rhs_evals == DEFAULT_MAX_RHS_EVALS
        return
    for name in ("dopri5", "bdf"):
        with pytest.raises(ConfigError, match="max_rhs_evals must be a positive integer"):
            get_solver(name, max_rhs_evals=value)


def test_option_reaches_the_solver_and_its_config():
    solver = get_solver("dopri5", max_rhs_evals=123)
    assert solver.max_rhs_evals == 123 and solver.config()["max_rhs_evals"] == 123
    assert get_solver("lsoda", max_rhs_evals=7).config()["max_rhs_evals"] == 7
    sim = Simulation(two_speed_network(), SimulationOptions(solver="dopri5", max_rhs_evals=77,
                                                            duration=0.1, step=DT))
    assert sim.solver.max_rhs_evals == 77
    assert Simulation(two_speed_network(), SimulationOptions(solver="bdf")).solver.max_rhs_evals \
        == DEFAULT_MAX_RHS_EVALS


def test_fixed_step_solvers_refuse_the_option():
    with pytest.raises(ConfigError, match="rtol, atol and max_rhs_evals apply to adaptive "
                                          "solvers only"):
        get_solver("rk4", max_rhs_evals=100)


STIFF_MODEL = """
[network]
name = "two_speed"

[[population]]
name = "x"
type = "input"
size = 3

[[population]]
name = "slow"
type = "pyramidal"
size = 6
leak = 0.5
basal = 0.3
apical = 0.2
activation = "tanh"

[[population]]
name = "fast"
type = "interneuron"
size = 4
leak = 1.0
rate = 1e6
activation = "tanh"

[[projection]]
name = "x_slow"
source = "x"
target = "slow"
compartment = "basal"
init = "he_uniform"

[[projection]]
name = "slow_fast"
source = "slow"
target = "fast"
init = "uniform"
scale = 0.5

[[projection]]
name = "fast_slow"
source = "fast"
target = "slow"
compartment = "apical"
init = "uniform"
scale = 0.5

[simulation]
solver = "dopri5"
dt = 0.01
duration = 1.0
dtype = "float64"
inputs = { x = { type = "uniform" } }
"""


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "1e4", '"many"', "true"])
def test_model_file_key_is_validated(value):
    text = STIFF_MODEL.replace('solver = "dopri5"', f'solver = "dopri5"\nmax_rhs_evals = {value}')
    with pytest.raises(ConfigError) as info:
        Simulation.from_model_text(text, where="stiff.toml")
    message = str(info.value)
    assert "stiff.toml [simulation] max_rhs_evals (--max-rhs-evals) must be a positive integer" \
        in message


def test_model_file_key_sets_the_limit():
    text = STIFF_MODEL.replace('solver = "dopri5"', 'solver = "dopri5"\nmax_rhs_evals = 500')
    sim = Simulation.from_model_text(text, where="stiff.toml")
    assert sim.solver.max_rhs_evals == 500
    start = time.perf_counter()
    with pytest.raises(SimulationError, match="500 right-hand-side evaluations"):
        sim.run()
    assert time.perf_counter() - start < 10.0


def test_cli_stiff_run_is_a_one_line_error_naming_bdf_and_the_flag(tmp_path, capsys):
    model = tmp_path / "stiff.toml"
    model.write_text(STIFF_MODEL)
    start = time.perf_counter()
    code = main(["simulate", str(model), "--out", str(tmp_path / "a.h5"), "--quiet"])
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 30.0
    assert err.startswith('neurosim: error: solver "dopri5" stopped at t=') and "of t_end=1" in err
    assert err.count("\n") == 1
    assert "--solver bdf" in err and "--max-rhs-evals" in err
    # the recommended fix works
    code = main(["simulate", str(model), "--out", str(tmp_path / "b.h5"), "--quiet",
                 "--solver", "bdf"])
    assert code == 0, capsys.readouterr().err
    # and so does a raised limit (here a short run: 1 output step)
    code = main(["simulate", str(model), "--out", str(tmp_path / "c.h5"), "--quiet",
                 "--steps", "1", "--max-rhs-evals", "40000"])
    assert code == 0, capsys.readouterr().err


@pytest.mark.parametrize("flag, message", [
    (["--max-rhs-evals", "0"], "argument --max-rhs-evals: must be a whole number >= 1, got '0'"),
    (["--max-rhs-evals", "-3"], "argument --max-rhs-evals: must be a whole number >= 1"),
    (["--max-rhs-evals", "1e4"], "argument --max-rhs-evals: must be a whole number >= 1"),
    (["--max-rhs-evals", "100", "--solver", "euler"], "rtol, atol and max_rhs_evals apply to "
                                                      "adaptive solvers only"),
])
def test_cli_flag_is_validated(tmp_path, capsys, flag, message):
    model = tmp_path / "stiff.toml"
    model.write_text(STIFF_MODEL)
    code = main(["simulate", str(model), "--out", str(tmp_path / "a.h5"), "--quiet", *flag])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("neurosim: error: ") and message in err
    assert err.count("\n") == 1


# ---------------------------------------------------------------------------- plasticity

def test_continuous_plasticity_is_bounded_too():
    """Potentials and weights integrated together by dopri5 (Oja's rule; the neuron's rate
    raised from 10 to 1e6, far faster than the weights change): the same limit, with advice
    that fits (no implicit solver integrates the joint system)."""
    oja = Path(__file__).resolve().parents[1] / "examples" / "oja_simulate.toml"
    text = oja.read_text().replace("rate = 10.0", "rate = 1e6")
    sim = Simulation.from_model_text(text, base_dir=oja.parent, plasticity="continuous",
                                     solver="dopri5", dtype="float64", duration=0.1, batch=20,
                                     max_rhs_evals=2000)
    start = time.perf_counter()
    with pytest.raises(SimulationError) as info:
        sim.run()
    assert time.perf_counter() - start < 30.0
    message = str(info.value)
    assert message.startswith('solver "dopri5" stopped at t=') and "of t_end=0.1" in message
    # the run's pace projected to t_end exceeds its budget: stopped after ~100 steps
    assert "at its present pace the run would need" in message and "looks stiff" in message
    assert "--plasticity N" in message and "--solver bdf" in message
    assert "--max-rhs-evals" in message


# ---------------------------------------------------------------------------- the run's budget

def test_a_small_output_step_does_not_let_a_stiff_run_crawl(capsys):
    """dt = 1e-4: each output interval takes only ~33 dopri5 steps (~230 evaluations), far
    under max_rhs_evals, and the run to t = 0.05 took 113,000 evaluations (~13 s) unbounded.
    The run's budget (200 per output step: 100,000 here) is checked against the run's pace
    after 100 steps: it stops within a second, recommending bdf and saying how far it got."""
    start = time.perf_counter()
    with pytest.raises(SimulationError) as info:
        run("dopri5", t_end=0.05, dt=1e-4)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    with capsys.disabled():
        print(f"\n  dopri5, dt=1e-4, stopped after {elapsed:.2f} s: {message[:160]}...", end="")
    assert elapsed < 5.0
    assert "\n" not in message and message.startswith('solver "dopri5" stopped at t=')
    assert "of t_end=0.05: at its present pace the run would need ~1" in message
    assert "more than the 100000 a run of 500 output steps may use (200 per output step" \
        in message
    assert "looks stiff" in message and "--solver bdf" in message
    assert "--max-rhs-evals 1" in message and "would cover this run" in message


def test_a_stiff_run_within_its_budget_warns_early_and_says_what_it_will_cost():
    """dt = 3e-5 to t = 0.012: ~27,000 evaluations, inside the budget of 400 x 200; warned
    (once) after its first 100 steps, though no output interval takes 100 steps."""
    with pytest.warns(StiffnessWarning) as caught:
        u, stats = run("dopri5", t_end=0.012, dt=3e-5)
    assert stats.steps == 400 and 10_000 < stats.rhs_evals < 80_000
    stiff = [w for w in caught if w.category is StiffnessWarning]
    assert len(stiff) == 1
    text = str(stiff[0].message)
    assert text.startswith('solver "dopri5" has taken 100 steps up to t=')
    assert "At this pace the run to t_end=0.012 takes ~" in text and "looks stiff" in text
    assert "--solver bdf" in text


def test_the_diagnosis_changes_neither_the_solution_nor_the_count(monkeypatch):
    """The power iteration runs on copies and its evaluations are not counted: the same bits
    and the same rhs_evals with the diagnosis (it warned) as without it."""
    with pytest.warns(StiffnessWarning):
        diagnosed, stats = run("dopri5", fast_rate=1e5, t_end=3 * DT)
    monkeypatch.setattr(limits, "WARN_STEPS", 10 ** 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StiffnessWarning)
        plain, plain_stats = run("dopri5", fast_rate=1e5, t_end=3 * DT)
    assert torch.equal(diagnosed, plain) and stats.rhs_evals == plain_stats.rhs_evals


def test_run_budget_is_counted_across_intervals_and_names_discontinuous_stimuli():
    """dopri5 on a noise current held on a grid of 0.05: every interval of 0.1 stays far under
    max_rhs_evals, but the jumps cost ~500 evaluations per output step, over the run's average
    of 200 (at least max_rhs_evals in all): the error names the stimulus and recommends a
    fixed-step solver at or below its grid; a raised limit lets the run through."""
    from neurosim.stimuli import OrnsteinUhlenbeck, Stimulus
    net = Network([InputPopulation("x", 1),
                   InterneuronPopulation("y", 3, leak=1.0, activation="tanh")],
                  [Projection("w", "x", "y", init="ones")], name="noisy")

    def simulate(**options):
        sim = Simulation(net, SimulationOptions(
            solver="dopri5", step=0.1, duration=2.0, batch=2, dtype="float64",
            inputs={"x": [0.0]}, **options),
            stimuli=[Stimulus("y", OrnsteinUhlenbeck(sigma=1.0, tau=0.1, dt=0.05), name="n")])
        return sim.run()

    with pytest.raises(SimulationError) as info:
        simulate()
    message = str(info.value)
    assert "\n" not in message and message.startswith('solver "dopri5" stopped at t=')
    assert "it has made 10000 right-hand-side evaluations, the 10000 a run of 20 output " \
           "steps may use" in message
    assert 'The stimuli "n" (ou, jumps every 0.05) are discontinuous' in message
    assert "fixed-step solver (--solver rk4 or euler" in message
    assert "--dt at or below 0.05" in message
    assert "tolerances tight" not in message and "looks stiff" not in message
    stats = simulate(max_rhs_evals=40_000)
    assert stats.steps == 20 and stats.rhs_evals > DEFAULT_MAX_RHS_EVALS


@pytest.mark.parametrize("solver", ["dopri5", "bdf"])
def test_interval_limit_on_noise_recommends_a_fixed_step_solver(solver):
    from neurosim.stimuli import Stimulus, WhiteNoise
    net = Network([InputPopulation("x", 1),
                   InterneuronPopulation("y", 3, leak=1.0, activation="tanh")],
                  [Projection("w", "x", "y", init="ones")], name="noisy")
    sim = Simulation(net, SimulationOptions(solver=solver, step=1.0, duration=20.0, batch=2,
                                            dtype="float64", inputs={"x": [0.0]}),
                     stimuli=[Stimulus("y", WhiteNoise(sigma=1.0, dt=0.001), name="n")])
    with pytest.raises(SimulationError) as info:
        sim.run()
    message = str(info.value)
    assert "10000 right-hand-side evaluations (max_rhs_evals) did not get it across the " \
           "output interval [0, 1]" in message
    assert '"n" (white_noise, jumps every 0.001) are discontinuous' in message
    assert "--dt at or below 0.001" in message and "Loosen the tolerances" not in message


def test_cli_prints_the_stiffness_warning_as_one_line(tmp_path, capsys):
    model = tmp_path / "stiff.toml"
    model.write_text(STIFF_MODEL.replace("rate = 1e6", "rate = 1e5"))
    code = main(["simulate", str(model), "--out", str(tmp_path / "a.h5"), "--quiet",
                 "--steps", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('neurosim: warning: solver "dopri5" has taken')
    assert "--solver bdf" in lines[0]
    assert "StiffnessWarning" not in captured.err and ".py:" not in captured.err
    assert captured.out.startswith("3 steps to t=0.03 with dopri5")


def test_continuous_plasticity_diagnosis_runs_no_rule_and_counts_nothing(monkeypatch):
    """The joint system's diagnosis evaluates the potentials only, at the weights as they are:
    no rule derivative is called (a rule may keep state), no weight is written and no
    evaluation is counted, so the run is the same with the diagnosis (it warned) as without."""
    oja = Path(__file__).resolve().parents[1] / "examples" / "oja_simulate.toml"
    text = oja.read_text().replace("rate = 10.0", "rate = 3e4")

    def simulate():
        sim = Simulation.from_model_text(text, base_dir=oja.parent, plasticity="continuous",
                                         solver="dopri5", dtype="float64", duration=0.06,
                                         batch=20)
        rule = sim.rules.projection_rules[0][2]
        calls = []
        original = type(rule).derivative
        monkeypatch.setattr(type(rule), "derivative",
                            lambda self, ctx: calls.append(1) or original(self, ctx))
        stats = sim.run()
        monkeypatch.setattr(type(rule), "derivative", original)
        return sim.net.weights["w"].clone(), sim.state.u.clone(), stats.rhs_evals, len(calls)

    with pytest.warns(StiffnessWarning, match="looks stiff"):
        diagnosed = simulate()
    monkeypatch.setattr(limits, "WARN_STEPS", 10 ** 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StiffnessWarning)
        plain = simulate()
    assert torch.equal(diagnosed[0], plain[0]) and torch.equal(diagnosed[1], plain[1])
    assert diagnosed[2] == plain[2] == diagnosed[3] == plain[3]     # one rule call per eval
