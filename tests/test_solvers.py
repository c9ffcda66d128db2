"""Solvers: agreement at t_end, measured convergence orders, steady-state mode.

All on a small random three-compartment network in float64 with smooth activations (tanh,
sigmoid), so that the error of each fixed-step scheme is dominated by its truncation error.
"""
from __future__ import annotations

import math

import pytest
import torch

from neurosim.dynamics import CompiledNetwork
from neurosim.graph import (InputPopulation, InterneuronPopulation, Network, Projection,
                            PyramidalPopulation)
from neurosim.simulation import Simulation
from neurosim.solvers import ConstantStep, SteadyState, get_solver, solve

T_END = 2.0
BATCH = 2



def random_network() -> Network:
    """Input -> lower -> upper (basal), upper -> lower and lower -> lower (apical), plus an
    interneuron fed by "lower" that inhibits "lower"'s soma."""
    return Network([
        InputPopulation("x", 6),
        PyramidalPopulation("lower", 10, leak=0.3, basal=1.0, apical=0.5, activation="tanh"),
        PyramidalPopulation("upper", 4, leak=0.2, basal=0.8, apical=0.4, activation="sigmoid",
                            rate=1.5, bias=0.1),
        InterneuronPopulation("inh", 2, leak=1.0, activation="sigmoid"),
    ], [
        Projection("x_lower", "x", "lower", "basal", init="he_uniform"),
        Projection("lower_upper", "lower", "upper", "basal", init="he_uniform"),
        Projection("upper_lower", "upper", "lower", "apical", init="xavier_uniform"),
        Projection("lower_lower", "lower", "lower", "apical", init="normal", scale=0.3),
        Projection("lower_inh", "lower", "inh", init="uniform", scale=0.3),
        Projection("inh_lower", "inh", "lower", gain=-0.5, init="uniform"),
    ], name="random3")


@pytest.fixture(scope="module")
def setup():
    net = CompiledNetwork(random_network(), dtype=torch.float64, seed=3)
    x = torch.rand(BATCH, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return net, x


def integrate(setup, solver, dt, t_end=T_END, **options):
    """u(t_end) from u(0) = 0, plus the solve statistics."""
    net, x = setup
    state = net.zero_state(BATCH)
    net.clamp_inputs(state, {"x": x})
    dynamics = net.phase(net.build_operators(), {"x": x})
    stats = solve(dynamics, state, solver=get_solver(solver, **options),
                  schedule=ConstantStep(dt), n_steps=round(t_end / dt))
    assert stats.t == pytest.approx(t_end)
    return state.u.clone(), stats


@pytest.fixture(scope="module")
def reference(setup):
    """A tight dopri5 solution at T_END (error far below every error measured against it)."""
    u, _ = integrate(setup, "dopri5", 0.5, rtol=1e-12, atol=1e-14)
    return u


def max_err(a, b) -> float:
    return float((a - b).abs().max())


def test_reference_is_nontrivial_and_converged(setup, reference):
    # the state moved far from u = 0, and a looser dopri5 agrees with the reference
    assert float(reference.abs().max()) > 0.1
    u, _ = integrate(setup, "dopri5", 0.5, rtol=1e-10, atol=1e-12)
    assert max_err(u, reference) < 1e-9


# solver, options, output step, tolerance on max |u - u_ref| at t_end
AGREEMENT = [
    ("euler", {}, 1e-3, 2e-4),        # first order: error ~ 6e-2 * dt
    ("rk4", {}, 0.05, 1e-6),
    ("dopri5", {}, 0.1, 1e-6),        # default rtol 1e-7, atol 1e-9
    ("bdf", {}, 0.1, 1e-6),           # scipy BDF with the analytic Jacobian
    ("lsoda", {}, 0.1, 1e-6),
]


@pytest.mark.parametrize("solver, options, dt, tol", AGREEMENT, ids=[a[0] for a in AGREEMENT])
def test_solvers_agree_at_t_end(setup, reference, solver, options, dt, tol):
    u, stats = integrate(setup, solver, dt, **options)
    assert stats.steps == round(T_END / dt) and stats.rhs_evals > 0
    assert max_err(u, reference) < tol


def test_solvers_agree_pairwise(setup):
    """Euler (small dt), RK4, dopri5 and scipy BDF agree with each other (not only with the
    reference): every pair is within the sum of their stated tolerances."""
    results = {name: (integrate(setup, name, dt, **opts)[0], tol)
               for name, opts, dt, tol in AGREEMENT if name in ("euler", "rk4", "dopri5", "bdf")}
    for a, (ua, ta) in results.items():
        for b, (ub, tb) in results.items():
            assert max_err(ua, ub) < ta + tb, (a, b)


# solver, expected order, accepted range of the measured order
ORDERS = [("euler", 1, (0.8, 1.2)), ("gs-euler", 1, (0.8, 1.2)), ("heun", 2, (1.8, 2.2)),
          ("rk4", 4, (3.5, 4.5))]


@pytest.mark.parametrize("solver, order, bounds", ORDERS, ids=[o[0] for o in ORDERS])
def test_convergence_order_by_step_halving(setup, reference, solver, order, bounds):
    """order = log2(err(h) / err(h/2)), errors against the tight dopri5 reference."""
    errors = [max_err(integrate(setup, solver, h)[0], reference) for h in (0.1, 0.05, 0.025)]
    orders = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert get_solver(solver).order == order
    lo, hi = bounds
    assert all(lo < p < hi for p in orders), (solver, errors, orders)
    # the finest error is far above the reference's own error, so the order is meaningful
    assert errors[-1] > 1e-9


def test_gauss_seidel_euler_converges_to_the_same_solution(setup, reference):
    """gs-euler is a different scheme (layer-ordered) but approximates the same ODE."""
    u_gs, _ = integrate(setup, "gs-euler", 1e-3)
    u_e, _ = integrate(setup, "euler", 1e-3)
    assert max_err(u_gs, reference) < 5e-4
    assert max_err(u_gs, u_e) > 1e-6  # genuinely a different scheme


# ---------------------------------------------------------------------------- steady state

@pytest.fixture(scope="module")
def long_run(setup):
    """The fixed point by brute force: a long, tight dopri5 integration to t = 200."""
    u, _ = integrate(setup, "dopri5", 5.0, t_end=200.0, rtol=1e-10, atol=1e-12)
    net, x = setup
    state = net.zero_state(BATCH)
    net.clamp_inputs(state, {"x": x})
    state.u.copy_(u)
    net.sync_activity(state)
    residual = float(net.phase(net.build_operators(), {"x": x}).residual(state))
    assert residual < 1e-9  # it really is at rest
    return u


@pytest.mark.parametrize("solver, dt", [("rk4", 0.2), ("euler", 0.1), ("gs-euler", 0.1),
                                        ("dopri5", 0.5), ("bdf", 0.5)])
def test_steady_state_mode_reaches_the_long_run_fixed_point(setup, long_run, solver, dt, capsys):
    net, x = setup
    state = net.zero_state(BATCH)
    net.clamp_inputs(state, {"x": x})
    dynamics = net.phase(net.build_operators(), {"x": x})
    steady = SteadyState(tol=1e-8, max_steps=20_000)
    stats = solve(dynamics, state, solver=get_solver(solver), schedule=ConstantStep(dt),
                  n_steps=10**9, steady=steady)
    with capsys.disabled():
        print(f"\n  steady state with {solver} (dt={dt}): {stats.steps} iterations, "
              f"{stats.rhs_evals} rhs evaluations, t={stats.t:.1f}, "
              f"max|du/dt|={stats.residual:.2e}", end="")
    assert stats.converged is True and stats.residual < 1e-8
    assert 0 < stats.steps < steady.max_steps
    # a residual of 1e-8 leaves the state within ~tol / (smallest decay rate) of the point
    assert max_err(state.u, long_run) < 1e-6
    assert stats.t < 100.0  # stopped long before the brute-force run's t = 200


def test_steady_state_max_steps_reports_not_converged(setup):
    net, x = setup
    state = net.zero_state(BATCH)
    net.clamp_inputs(state, {"x": x})
    dynamics = net.phase(net.build_operators(), {"x": x})
    stats = solve(dynamics, state, solver=get_solver("rk4"), schedule=ConstantStep(0.1),
                  n_steps=10**9, steady=SteadyState(tol=1e-12, max_steps=20))
    assert stats.converged is False and stats.steps == 20 and stats.residual > 1e-12


STEADY_MODEL = """
[network]
name = "steady"

[[population]]
name = "x"
type = "input"
size = 4

[[population]]
name = "h"
type = "pyramidal"
size = 8
leak = 0.3
basal = 1.0
apical = 0.5
activation = "tanh"

[[population]]
name = "o"
type = "pyramidal"
size = 3
leak = 0.3
activation = "sigmoid"

[[projection]]
name = "x_h"
source = "x"
target = "h"
compartment = "basal"

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

[simulation]
dt = 0.1
batch = 2
seed = 5
dtype = "float64"
"""


def test_simulation_steady_tol_matches_long_integration(capsys):
    steady = Simulation.from_model_text(STEADY_MODEL, solver="rk4", n_steps=100_000,
                                        steady_tol=1e-9)
    stats = steady.run()
    with capsys.disabled():
        print(f"\n  Simulation(steady_tol=1e-9, rk4): {stats.steps} iterations", end="")
    assert stats.converged is True and stats.residual < 1e-9
    assert stats.steps < 100_000 and steady.step == stats.steps
    long = Simulation.from_model_text(STEADY_MODEL, solver="dopri5", duration=300.0, dt=10.0,
                                      rtol=1e-10, atol=1e-12)
    long_stats = long.run()
    assert long_stats.converged is None and long.t == pytest.approx(300.0)
    assert steady.t < 300.0
    assert max_err(steady.state.u, long.state.u) < 1e-7
    assert max_err(steady.state.r, long.state.r) < 1e-7


def test_scipy_bdf_on_a_float32_network_does_not_stall(monkeypatch):
    """Regression: with a float32 network the rhs handed to scipy was a float32 staircase and
    BDF's Newton iterations stalled (step size -> 0, endless evaluations) on the demo model.
    The adapter now evaluates in float64; a cap turns a stall into a failure, not a hang."""
    from pathlib import Path

    from neurosim.dynamics import PhaseDynamics

    rhs, calls = PhaseDynamics.rhs, [0]

    def capped_rhs(self, u, r, t=None):
        calls[0] += 1
        if calls[0] > 20_000:
            raise RuntimeError("BDF stalled: more than 20,000 rhs evaluations")
        return rhs(self, u, r, t)

    monkeypatch.setattr(PhaseDynamics, "rhs", capped_rhs)
    text = (Path(__file__).resolve().parents[1] / "models" / "three_compartment.toml").read_text()
    results = {}
    for dtype in ("float32", "float64"):
        sim = Simulation.from_model_text(text, solver="bdf", n_steps=400, dtype=dtype)
        stats = sim.run()
        assert stats.steps == 400 and stats.rhs_evals < 2_000, (dtype, stats)
        results[dtype] = sim.state.u
    assert results["float32"].dtype == torch.float32
    assert max_err(results["float32"].double(), results["float64"]) < 1e-5
