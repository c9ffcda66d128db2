"""neurosim.pid: lattice and Moebius matrix, I_sx reference values (SxPID test suite, spec
section 5), invariants, the sample-point estimator against a dense-grid evaluation written
here, binning and goal vectors."""
from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from neurosim.errors import ConfigError
from neurosim.pid import (GOALS, bin_fixed, bin_normalised, get_lattice, goal_vector,
                          goal_weights, isx, leq, pid_atoms, pid_from_pmf, pid_from_samples,
                          pid_goal, sample_points)

TRI_ORDER = ["{F}{C}{L}", "{F}{C}", "{F}{L}", "{C}{L}", "{F}{CL}", "{C}{FL}", "{L}{FC}", "{F}",
             "{C}", "{L}", "{FC}{FL}{CL}", "{FC}{FL}", "{FC}{CL}", "{FL}{CL}", "{FC}", "{FL}",
             "{CL}", "{FCL}"]


# ---------------------------------------------------------------- helpers written for the tests

def pmf_of(function, n_sources):
    """Uniform independent binary sources, Y = function(sources)."""
    pmf = np.zeros((2,) * (n_sources + 1))
    for s in itertools.product((0, 1), repeat=n_sources):
        pmf[s + (function(*s),)] = 0.5 ** n_sources
    return pmf


def samples_of(function, n_sources):
    """One sample per source configuration: sources (k, 2^k) and target (2^k,)."""
    s = np.array(list(itertools.product((0, 1), repeat=n_sources))).T
    return s, np.array([function(*col) for col in s.T])


def mutual_information(pmf, subset):
    """I(Y; S_subset) in bits from a dense pmf (sources first, target last), no guards."""
    n = pmf.ndim - 1
    drop = tuple(i for i in range(n) if i not in subset)
    joint = pmf.sum(axis=drop) if drop else pmf
    p_s = joint.sum(axis=-1, keepdims=True)
    p_y = pmf.sum(axis=tuple(range(n)))
    mask = joint > 0
    ratio = np.where(mask, joint / np.where(mask, p_s * p_y, 1.0), 1.0)
    return float((joint * np.log2(ratio)).sum())


def entropy(p):
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def random_pmf(rng, n_sources, k_y=2, sparse=0.3):
    shape = tuple(rng.integers(2, 4, size=n_sources)) + (k_y,)
    pmf = rng.random(shape) * (rng.random(shape) > sparse)
    pmf.flat[0] += 0.1
    return pmf / pmf.sum()


def all_antichains(n):
    """All antichains of non-empty subsets of {0..n-1}, enumerated independently."""
    subsets = [frozenset(c) for r in range(1, n + 1)
               for c in itertools.combinations(range(n), r)]
    found = set()
    for m in range(1, len(subsets) + 1):
        for group in itertools.combinations(subsets, m):
            if not any(a < b for a in group for b in group):
                found.add(frozenset(group))
    return found


def dense_pmf(bins, q, n_bins):
    """P(s, y) per neuron on the full grid (N, K, .., K, K_y) by scatter-adding q / B."""
    k, n, batch = bins.shape
    k_y = q.shape[-1]
    key = torch.zeros(n, batch, dtype=torch.long)
    for i in range(k):
        key = key * n_bins + bins[i]
    flat = q.new_zeros(n, n_bins ** k, k_y)
    flat = flat.index_put((torch.arange(n).unsqueeze(1).expand(n, batch), key), q / batch,
                          accumulate=True)
    return flat.reshape((n,) + (n_bins,) * k + (k_y,))


def dense_isx(pmf, alpha):
    """I_sx on the dense grid (guards +1e-10, ratio < 1e-7 -> 0); pmf (N, K.., K_y)."""
    k = pmf.dim() - 2
    grid = tuple(range(1, k + 2))

    def marginal(subset, with_y):
        keep = {1 + i for i in subset} | ({k + 1} if with_y else set())
        drop = tuple(d for d in grid if d not in keep)
        return pmf.sum(drop, keepdim=True) if drop else pmf

    union = joint = 0.0
    for m in range(1, len(alpha) + 1):
        for group in itertools.combinations(alpha, m):
            index = set().union(*group)
            union = union + (-1) ** (m - 1) * marginal(index, False)
            joint = joint + (-1) ** (m - 1) * marginal(index, True)
    ratio = joint / (union * marginal((), True) + 1e-10)
    ratio = torch.where(ratio < 1e-7, torch.ones_like(ratio), ratio)
    return (pmf * torch.log2(ratio)).sum(grid)


def dense_terms(pmf):
    """[atoms; H_res] per neuron from the dense evaluation above."""
    k = pmf.dim() - 2
    lattice = get_lattice(k)
    values = torch.stack([dense_isx(pmf, a) for a in lattice.antichains], -1)
    atoms = values @ torch.tensor(lattice.moebius.tolist(), dtype=pmf.dtype).T
    p_y = pmf.sum(tuple(range(1, k + 1)))
    h = -(p_y * torch.log2(p_y + 1e-10)).sum(-1)
    return torch.cat([atoms, (h - values[:, -1]).unsqueeze(-1)], -1)


# ---------------------------------------------------------------- lattice

def test_lattice_antichains_and_order():
    tri, bi = get_lattice(3), get_lattice(2)
    assert list(tri.names) == TRI_ORDER
    assert list(bi.names) == ["{1}", "{2}", "{1}{2}", "{12}"]
    for lattice in (tri, bi):
        found = {frozenset(frozenset(a) for a in alpha) for alpha in lattice.antichains}
        assert found == all_antichains(lattice.n_sources)
        assert len(found) == lattice.n_atoms == {2: 4, 3: 18}[lattice.n_sources]
        z = lattice.order_matrix
        assert (np.diag(z) == 1).all()
        assert not ((z == 1) & (z.T == 1) & ~np.eye(len(z), dtype=bool)).any()  # antisymmetric
        assert ((z @ z > 0) <= (z == 1)).all()                                      # transitive
        bottom = lattice.index("{1}{2}{3}"[: 3 * lattice.n_sources])
        assert (z[:, bottom] == 1).all() and (z[lattice.top] == 1).all()   # bottom, top
    assert leq(((0,), (1,)), ((0,),)) and not leq(((0,),), ((0,), (1,)))
    assert leq(((0,), (1, 2)), ((0, 1), (0, 2)))
    assert tri.index("{CL}{F}") == tri.index("{1}{23}") == tri.index(((2, 1), (0,))) == 4
    with pytest.raises(ConfigError, match=r'Did you mean "\{F\}\{CL\}"'):
        tri.index("{F}{CLX}")
    with pytest.raises(ConfigError, match="not an antichain"):
        tri.index("{F}{FC}")
    with pytest.raises(ConfigError, match="only 2"):
        get_lattice(4)


def test_moebius_matrix_reproduces_the_atom_table():
    for n in (2, 3):
        lattice = get_lattice(n)
        m, z = lattice.moebius, lattice.order_matrix
        assert set(np.unique(m)) <= {-1, 0, 1}
        assert (m @ z == np.eye(len(z), dtype=int)).all() and (z @ m == np.eye(len(z))).all()
    tri = get_lattice(3)
    table = {   # spec section 2, written with {1}=F, {2}=C, {3}=L
        "{1}{2}{3}": {"{1}{2}{3}": 1},
        "{1}{2}": {"{1}{2}": 1, "{1}{2}{3}": -1},
        "{2}{3}": {"{2}{3}": 1, "{1}{2}{3}": -1},
        "{1}{23}": {"{1}{23}": 1, "{1}{2}": -1, "{1}{3}": -1, "{1}{2}{3}": 1},
        "{3}{12}": {"{3}{12}": 1, "{1}{3}": -1, "{2}{3}": -1, "{1}{2}{3}": 1},
        "{1}": {"{1}": 1, "{1}{23}": -1},
        "{3}": {"{3}": 1, "{3}{12}": -1},
        "{12}{13}{23}": {"{12}{13}{23}": 1, "{1}{23}": -1, "{2}{13}": -1, "{3}{12}": -1,
                         "{1}{2}": 1, "{1}{3}": 1, "{2}{3}": 1, "{1}{2}{3}": -1},
        "{12}{13}": {"{12}{13}": 1, "{12}{13}{23}": -1, "{1}": -1, "{1}{23}": 1},
        "{13}{23}": {"{13}{23}": 1, "{12}{13}{23}": -1, "{3}": -1, "{3}{12}": 1},
        "{12}": {"{12}": 1, "{12}{13}": -1, "{12}{23}": -1, "{12}{13}{23}": 1},
        "{23}": {"{23}": 1, "{12}{23}": -1, "{13}{23}": -1, "{12}{13}{23}": 1},
        "{123}": {"{123}": 1, "{12}": -1, "{13}": -1, "{23}": -1, "{12}{13}": 1,
                  "{12}{23}": 1, "{13}{23}": 1, "{12}{13}{23}": -1},
    }
    for atom, formula in table.items():
        row = np.zeros(18, dtype=int)
        for name, c in formula.items():
            row[tri.index(name)] = c
        assert (tri.moebius[tri.index(atom)] == row).all(), atom
    bi = get_lattice(2)
    table2 = {"{1}": {"{1}": 1, "{1}{2}": -1}, "{1}{2}": {"{1}{2}": 1},
              "{12}": {"{12}": 1, "{1}": -1, "{2}": -1, "{1}{2}": 1}}
    for atom, formula in table2.items():
        row = np.zeros(4, dtype=int)
        for name, c in formula.items():
            row[bi.index(name)] = c
        assert (bi.moebius[bi.index(atom)] == row).all(), atom


# ---------------------------------------------------------------- reference values (section 5)

BIVARIATE = {   # redundancy, unique 1, unique 2, synergy
    "and": (lambda a, b: a & b, (0.122556, 0.188722, 0.188722, 0.311278)),
    "xor": (lambda a, b: a ^ b, (-0.584963, 0.584963, 0.584963, 0.415037)),
    "copy": (lambda a, b: a, (0.415037, 0.584963, -0.415037, 0.415037)),
}
TRIVARIATE = {
    "xor_fc": (lambda f, c, l: f ^ c,
               [-0.222392, -0.362570, 0.222392, 0.222392, 0.040642, 0.040642, 0.040642,
                0.321928, 0.321928, -0.263034, 0.018252, 0.093109, 0.093109, -0.321928,
                0.169925, 0.169925, 0.169925, 0.245112, 0]),
    "parity": (lambda f, c, l: f ^ c ^ l,
               [0.192645, -0.192645, -0.192645, -0.192645, -0.129283, -0.129283, -0.129283,
                0.321928, 0.321928, 0.321928, -0.226861, 0.093109, 0.093109, 0.093109,
                0.169925, 0.169925, 0.169925, 0.245112, 0]),
}


def bivariate_tuple(result):
    d = result.as_dict()
    return np.array([float(d[k]) for k in ("{1}{2}", "{1}", "{2}", "{12}")])


@pytest.mark.parametrize("gate", sorted(BIVARIATE))
def test_bivariate_reference_values(gate):
    function, expected = BIVARIATE[gate]
    np.testing.assert_allclose(bivariate_tuple(pid_from_pmf(pmf_of(function, 2))), expected,
                               atol=1e-6)
    sources, target = samples_of(function, 2)
    np.testing.assert_allclose(bivariate_tuple(pid_from_samples(sources, target)), expected,
                               atol=1e-6)
    theta = torch.tensor(target, dtype=torch.float64)          # hard theta: the same pmf
    np.testing.assert_allclose(bivariate_tuple(pid_from_samples(list(sources), theta=theta)),
                               expected, atol=1e-6)


def test_bivariate_identical_sources_and_target():
    pmf = np.zeros((2, 2, 2))
    pmf[0, 0, 0] = pmf[1, 1, 1] = 0.5
    np.testing.assert_allclose(bivariate_tuple(pid_from_pmf(pmf)), (1, 0, 0, 0), atol=1e-6)
    x = np.array([3, 7, 3, 7])                    # arbitrary labels
    result = pid_from_samples([x, x], x)
    np.testing.assert_allclose(bivariate_tuple(result), (1, 0, 0, 0), atol=1e-6)
    assert abs(float(result.h_res)) < 1e-6


@pytest.mark.parametrize("case", sorted(TRIVARIATE))
def test_trivariate_reference_values(case):
    function, expected = TRIVARIATE[case]
    result = pid_from_pmf(pmf_of(function, 3))
    np.testing.assert_allclose(result.terms.numpy(), expected, atol=1e-6)
    sources, target = samples_of(function, 3)
    np.testing.assert_allclose(pid_from_samples(sources, target).terms.numpy(), expected,
                               atol=1e-6)
    assert list(result.as_dict()) == TRI_ORDER + ["H_res"]


def test_end_to_end_batch_goal_and_gradient():
    fcl = torch.tensor(list(itertools.product((0, 1), repeat=3))).T       # (3, 8)
    bins = [fcl[i].unsqueeze(0) for i in range(3)]                         # 3 x (1, 8)
    theta = torch.where((fcl[0] ^ fcl[1]) == 1, 0.9, 0.1).double().unsqueeze(0)
    theta.requires_grad_(True)
    goal = pid_goal(bins, theta, "heuristic")
    assert goal.shape == (1,)
    assert abs(goal.item() - (-0.226643)) < 1e-6
    (grad,) = torch.autograd.grad(goal.sum(), theta)
    sign = torch.where(fcl[0] == fcl[1], 1.0, -1.0).double()
    torch.testing.assert_close(grad[0], 0.147486 * sign, atol=1e-6, rtol=0)
    atoms = pid_atoms(torch.stack(bins), theta)
    assert abs(atoms.atom("{F}{C}").item() - (-0.226643)) < 1e-6
    (grad2,) = torch.autograd.grad(atoms.atoms[0, 1], theta)
    torch.testing.assert_close(grad2, grad, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- invariants

@pytest.mark.parametrize("n_sources,k_y", [(2, 2), (3, 2), (3, 3), (2, 4)])
def test_invariants_on_random_pmfs(n_sources, k_y):
    rng = np.random.default_rng(10 * n_sources + k_y)
    lattice = get_lattice(n_sources)
    for _ in range(5):
        pmf = random_pmf(rng, n_sources, k_y)
        result = pid_from_pmf(pmf)
        mi = mutual_information(pmf, tuple(range(n_sources)))
        h = entropy(pmf.sum(axis=tuple(range(n_sources))))
        assert abs(float(result.atoms.sum()) - mi) < 1e-7
        assert abs(float(result.atoms.sum() + result.h_res) - h) < 1e-7
        for r in range(1, n_sources + 1):
            for subset in itertools.combinations(range(n_sources), r):
                assert abs(float(isx(pmf, (subset,))) - mutual_information(pmf, subset)) < 1e-7
                assert abs(float(result.isx[lattice.index((subset,))])
                           - mutual_information(pmf, subset)) < 1e-7
        # I_sx(alpha) = sum of the atoms below alpha
        np.testing.assert_allclose(result.isx.numpy(),
                                   lattice.order_matrix @ result.atoms.numpy(), atol=1e-12)


def test_invariants_on_random_batches():
    gen = torch.Generator().manual_seed(3)
    for k in (2, 3):
        n, batch, n_bins = 4, 64, 3
        bins = torch.randint(0, n_bins, (k, n, batch), generator=gen)
        theta = torch.rand(n, batch, generator=gen, dtype=torch.float64)
        result = pid_atoms(bins, theta)
        pmf = dense_pmf(bins, torch.stack([theta, 1 - theta], -1), n_bins).numpy()
        for i in range(n):
            mi = mutual_information(pmf[i], tuple(range(k)))
            assert abs(float(result.atoms[i].sum()) - mi) < 1e-7
            assert abs(float(result.atoms[i].sum() + result.h_res[i])
                       - entropy(pmf[i].sum(axis=tuple(range(k))))) < 1e-7
            for r in range(1, k + 1):
                for subset in itertools.combinations(range(k), r):
                    value = float(result.isx[i, get_lattice(k).index((subset,))])
                    assert abs(value - mutual_information(pmf[i], subset)) < 1e-7


# ---------------------------------------------------------------- sample points vs dense grid

@pytest.mark.parametrize("k,seed", [(3, 0), (3, 1), (2, 2), (3, 3)])
def test_sample_points_equal_dense_grid(k, seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 6, (1,), generator=gen))
    batch = int(torch.randint(5, 80, (1,), generator=gen))
    n_bins = int(torch.randint(2, 6, (1,), generator=gen))
    bins = torch.randint(0, n_bins, (k, n, batch), generator=gen)
    theta = torch.rand(n, batch, generator=gen, dtype=torch.float64)
    theta[:, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)[: min(3, batch)]
    theta.requires_grad_(True)
    gamma = torch.randn(get_lattice(k).n_atoms + 1, generator=gen, dtype=torch.float64)

    result = pid_atoms(bins, theta, n_bins=n_bins)
    reference = dense_terms(dense_pmf(bins, torch.stack([theta, 1 - theta], -1), n_bins))
    torch.testing.assert_close(result.terms, reference, atol=1e-10, rtol=0)

    goal = pid_goal(list(bins), theta, gamma)
    dense_goal = reference @ gamma
    torch.testing.assert_close(goal, dense_goal, atol=1e-10, rtol=0)
    torch.testing.assert_close(result.goal(gamma), dense_goal, atol=1e-10, rtol=0)
    (g1,) = torch.autograd.grad(goal.sum(), theta)
    (g2,) = torch.autograd.grad(dense_goal.sum(), theta)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
    assert torch.isfinite(g1).all()


def test_sample_points_multiclass_target_and_reuse():
    gen = torch.Generator().manual_seed(7)
    k, n, batch, n_bins, k_y = 3, 3, 50, 4, 3
    bins = torch.randint(0, n_bins, (k, n, batch), generator=gen)
    # P(s) = sum_y P(s, y) is a count (no gradient): exact for probabilities on the simplex,
    # so differentiate w.r.t. logits
    logits = torch.randn(n, batch, k_y, generator=gen, dtype=torch.float64, requires_grad=True)
    probs = torch.softmax(logits, -1)
    points = sample_points(bins, n_bins)
    assert points.n_rows <= n * batch
    result = pid_atoms(points, probs=probs)
    reference = dense_terms(dense_pmf(bins, probs, n_bins))
    torch.testing.assert_close(result.terms, reference, atol=1e-10, rtol=0)
    (g1,) = torch.autograd.grad(result.terms[:, 10].sum(), logits, retain_graph=True)
    (g2,) = torch.autograd.grad(reference[:, 10].sum(), logits)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)


def test_gradient_reaches_theta_only():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(3, 2, 40, generator=gen) * 10).requires_grad_(True)
    theta = torch.rand(2, 40, generator=gen).requires_grad_(True)
    goal = pid_goal(bin_fixed(x), theta, "optimised_mnist")
    assert goal.dtype == torch.float32
    goal.sum().backward()
    assert x.grad is None and theta.grad is not None and torch.isfinite(theta.grad).all()


def test_cheap_goal_form_skips_zero_weights():
    w, gamma_h = goal_weights("heuristic")
    assert gamma_h == 0 and set(torch.nonzero(w).flatten().tolist()) == {0, 1}
    gamma = goal_vector("optimised_mnist")
    lattice = get_lattice(3)
    expected = torch.tensor(lattice.moebius.T.tolist(), dtype=torch.float64) @ gamma[:-1]
    expected[-1] -= gamma[-1]
    torch.testing.assert_close(goal_weights(gamma)[0], expected)


# ---------------------------------------------------------------- binning

def test_bin_fixed_right_closed_and_clamped():
    x = torch.tensor([-100.0, -20.0, -18.0, -17.99, 0.0, 1e-6, 19.0, 20.0, 100.0])
    assert bin_fixed(x).tolist() == [0, 0, 0, 1, 9, 10, 19, 19, 19]
    assert bin_fixed(x).dtype == torch.long


def test_bin_normalised_per_neuron():
    x = torch.tensor([[2.0, -2.0, 1.0, 0.0], [0.5, 0.25, -0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    bins = bin_normalised(x)                  # N x B, max |x| over the batch (dim -1)
    assert bins.tolist() == [[19, 0, 14, 9], [19, 14, 7, 9], [9, 9, 9, 9]]
    torch.testing.assert_close(bin_normalised(x.T, dim=0), bins.T)


# ---------------------------------------------------------------- goal vectors and errors

def test_named_goal_vectors():
    assert set(GOALS) == {"heuristic", "optimised_mnist", "reduced", "optimised_cifar10",
                          "output"}
    heuristic = goal_vector("heuristic")
    assert heuristic.shape == (19,) and heuristic[1] == 1 and heuristic.abs().sum() == 1
    torch.testing.assert_close(goal_vector("mnist"), goal_vector("optimised_mnist"))
    assert goal_vector("optimised_mnist")[18] == 0.035
    assert goal_vector("optimised_cifar10")[0] == 0.984
    reduced = goal_vector("reduced")
    torch.testing.assert_close(reduced, goal_vector({"{F}{C}{L}": 0.33, "{F}{C}": 1,
                                                     "{F}{L}": -1, "{FC}{FL}": -1}))
    output = goal_vector("output", n_sources=2)
    assert output.tolist() == [-0.2, 0.1, 1.0, 0.1, 0.0]
    assert goal_vector([1, 0, 0, 0, 0]).shape == (5,)
    assert goal_vector({"{1}{2}": 1, "H_res": 0.5}, n_sources=2).tolist() == [0, 0, 1, 0, 0.5]


def test_goal_vector_errors():
    with pytest.raises(ConfigError, match=r'unknown goal "heuristc"\. Did you mean "heuristic"'):
        goal_vector("heuristc")
    with pytest.raises(ConfigError, match="19"):
        goal_vector([0.0] * 18)
    with pytest.raises(ConfigError, match=r"5 \(2 sources\)"):
        goal_vector([0.0] * 19, n_sources=2)
    with pytest.raises(ConfigError, match="finite"):
        goal_vector([math.nan] + [0.0] * 18)
    with pytest.raises(ConfigError, match="finite"):
        goal_vector({"{F}": math.inf})
    with pytest.raises(ConfigError, match="for 2 sources"):
        goal_vector("output", n_sources=3)
    with pytest.raises(ConfigError, match=r'unknown atom "\{F\}\{C\}\{K\}".*Did you mean'):
        goal_vector({"{F}{C}{K}": 1})
    with pytest.raises(ConfigError):
        goal_vector(object())
    bins = torch.zeros(3, 1, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="unknown goal"):
        pid_goal(bins, torch.rand(1, 4), "mnsit")


def test_estimator_input_errors():
    theta = torch.rand(2, 5)
    with pytest.raises(ConfigError, match="integer"):
        pid_atoms(torch.rand(3, 2, 5), theta)
    with pytest.raises(ConfigError, match="2 or 3"):
        pid_atoms(torch.zeros(4, 2, 5, dtype=torch.long), theta)
    with pytest.raises(ConfigError, match="theta has shape"):
        pid_atoms(torch.zeros(3, 2, 6, dtype=torch.long), theta)
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        pid_atoms(torch.full((3, 2, 5), 3, dtype=torch.long), theta, n_bins=3)
    with pytest.raises(ConfigError, match="exactly one"):
        pid_atoms(torch.zeros(3, 2, 5, dtype=torch.long))
    with pytest.raises(ConfigError, match="sum to 1"):
        pid_from_pmf(np.full((2, 2, 2), 0.2))
    with pytest.raises(ConfigError, match="share one shape"):
        pid_from_samples([np.zeros(4), np.zeros(5)], np.zeros(4))
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        pid_from_samples([np.zeros(4), np.zeros(4)], theta=np.full(4, 1.5))


def test_user_guide_runs():
    guide = Path(__file__).resolve().parents[1] / "docs" / "pid.md"
    blocks = re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {"__name__": "pid_guide"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"pid.md block {i + 1}", "exec"), namespace)
    assert namespace["theta"].grad is not None
    assert namespace["result"].atoms.shape == (8, 18)
