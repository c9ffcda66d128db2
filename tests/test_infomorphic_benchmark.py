"""benchmarks/infomorphic_speed.py's dense-grid reference (the authors' style) on tiny sizes:
it gives neurosim.pid.pid_goal's goal and gradient, so the benchmark keeps timing equal work."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from neurosim.pid import pid_atoms, pid_goal

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "infomorphic_speed.py"
BATCH = 64


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("infomorphic_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("n", [3, 6])
@pytest.mark.parametrize("goal", ["optimised_mnist", "heuristic", "optimised_cifar10"])
def test_dense_goal_matches_pid_goal(bench, n, goal):
    check = bench.agreement(n, BATCH, seed=n, gamma=goal)
    assert check["goal_max_abs"] > 1e-3 and check["grad_max_abs"] > 1e-4, check
    assert check["goal_max_abs_diff"] < 1e-10, check
    assert check["grad_max_abs_diff"] < 1e-10, check


def test_dense_goal_matches_pid_goal_bivariate(bench):
    check = bench.agreement(4, BATCH, seed=2, gamma="output", n_sources=2)
    assert check["goal_max_abs_diff"] < 1e-10 and check["grad_max_abs_diff"] < 1e-10, check


def test_dense_goal_gradient_reaches_the_leaf(bench):
    """The timed call's backward runs through theta into the leaf parameter, and the dense
    histogram is the plug-in pmf (sums to 1 per neuron)."""
    bins, a, leaf, _ = bench.make_inputs(5, BATCH, 0, torch.float64)
    theta = bench.theta_of(a, leaf)
    pmf = bench.dense_histogram(bins, theta)
    assert pmf.shape == (20, 20, 20, 2, 5)
    assert torch.allclose(pmf.sum((0, 1, 2, 3)), torch.ones(5, dtype=torch.float64))
    for which in ("neurosim", "dense"):
        bench.goal_and_backward(which, bins, a, leaf)
        assert leaf.grad is not None and leaf.grad.abs().max() > 0


def test_the_check_sees_a_difference(bench):
    """A different goal vector for the dense form: the comparison must fail, i.e. it is not
    vacuous (e.g. both zero)."""
    bins, a, leaf, _ = bench.make_inputs(4, BATCH, 3, torch.float64)
    theta = bench.theta_of(a, leaf).detach()
    gamma = bench.goal_vector("optimised_mnist")
    moved = gamma.clone()
    moved[4] += 0.1
    assert (bench.dense_goal(bins, theta, moved) - pid_goal(bins, theta, gamma)).abs().max() \
        > 1e-6


def test_dense_atoms_are_neurosims(bench):
    """Unit goal vectors pick single atoms: the dense form's atom equals pid_atoms'."""
    bins, a, leaf, _ = bench.make_inputs(3, BATCH, 4, torch.float64)
    theta = bench.theta_of(a, leaf).detach()
    result = pid_atoms(bins, theta)
    for i in (0, 1, 10, 17, 18):
        unit = torch.zeros(19, dtype=torch.float64)
        unit[i] = 1
        expected = result.terms[:, i]
        assert (bench.dense_goal(bins, theta, unit) - expected).abs().max() < 1e-10
