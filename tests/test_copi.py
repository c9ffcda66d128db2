"""COPI (neurosim.protocols.copi, neurosim.plasticity.copi, neurosim.metrics.decorrelation)
against the spec (../shared/specs/copi.md): training steps equal to a literal float64
implementation of the equations (bp / fa / dfa credit, 2 and 3 layers, both rule modes, both
decorrelation forms, centring, the norm gain, the output derivative), the properties the spec
lists (decorrelation of correlated inputs, dR = 0 and COPI = delta rule on decorrelated
batches, the fixed point W -> W*, the biased fixed point without R, BP deltas = autograd, FA
deltas independent of W and R), training and exact resume of the digits models, the checks,
and the published MNIST / CIFAR-10 model files."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import neurosim.graph as g
from neurosim.cli import main
from neurosim.dynamics import CompiledNetwork
from neurosim.errors import ConfigError
from neurosim.graph import load_model_file
from neurosim.plasticity.copi import CopiForward, Decorrelation, mean_offdiagonal_correlation
from neurosim.protocols import build_protocol
from neurosim.protocols.copi import Copi
from neurosim.training import Trainer

F64 = torch.float64
MODELS = Path(__file__).resolve().parents[1] / "models"
SLOPE = 0.1


# ---------------------------------------------------------------------------- helpers
def copi_network(sizes, *, forward=None, decorrelation=None, hidden="leaky_relu[0.1]",
                 output="linear", lateral=True, forward_init="xavier_normal"):
    """x -r1-> d0 -w1-> h1 -r2-> d1 -w2-> ... -wL-> out: a lateral copy d_{l-1} (linear, R_l =
    I at first) in front of every forward weight W_l. ``forward`` / ``decorrelation``: rule
    tables for the W's / R's (None: no rule)."""
    pops = [g.InputPopulation("x", sizes[0])]
    projs = []
    below = "x"
    for l, size in enumerate(sizes[1:], start=1):
        if lateral:
            d = f"d{l - 1}"
            pops.append(g.PyramidalPopulation(d, sizes[l - 1], leak=0.0, basal=1.0, apical=0.0,
                                              activation="linear"))
            projs.append(g.Projection(f"r{l}", below, d, "basal", init="eye",
                                      rules=[dict(decorrelation)] if decorrelation else []))
            below = d
        name = "out" if l == len(sizes) - 1 else f"h{l}"
        pops.append(g.PyramidalPopulation(name, size, leak=0.0, basal=1.0, apical=0.0,
                                          activation=output if name == "out" else hidden))
        projs.append(g.Projection(f"w{l}", below, name, "basal", init=forward_init,
                                  rules=[dict(forward)] if forward else []))
        below = name
    return g.Network(pops, projs, name="copi_chain")


def bound(sizes, *, seed=0, forward=None, decorrelation=None, network_options=None,
          **protocol):
    """A compiled copi_network and a bound "copi" protocol; without decorrelation rules the
    R's are named lateral (R fixed), else they would count as forward layers."""
    options = dict(network_options or {})
    net = CompiledNetwork(copi_network(sizes, forward=forward, decorrelation=decorrelation,
                                       **options), dtype=F64, seed=seed)
    if decorrelation is None and options.get("lateral", True):
        protocol.setdefault("lateral", [f"r{l}" for l in range(1, len(sizes))])
    return net, Copi(**protocol).bind(net, seed=seed + 3)


def leaky(a):
    return torch.where(a > 0, a, SLOPE * a)


def leaky_prime(a):
    return torch.where(a > 0, torch.ones_like(a), torch.full_like(a, SLOPE))


def one_hot(labels, classes):
    return torch.nn.functional.one_hot(labels, classes).to(F64)


def literal_forward(Rs, Ws, y0):
    """x_l = R_l y_{l-1}, a_l = W_l x_l, y_l = leaky_relu(a_l), linear a_L."""
    ys, xs, As = [y0], [], []
    for l, (R, W) in enumerate(zip(Rs, Ws)):
        x = ys[-1] @ R.T
        a = x @ W.T
        xs.append(x)
        As.append(a)
        ys.append(a if l == len(Ws) - 1 else leaky(a))
    return ys, xs, As


def literal_deltas(Rs, Ws, As, t, *, credit, alpha, feedback=None, output_derivative=False):
    """delta_L = alpha (t - a_L) [* f'(a_L)]; bp: f'(a_l) * R_{l+1}^T W_{l+1}^T delta_{l+1};
    fa: f'(a_l) * B_{l+1} delta_{l+1}; dfa: f'(a_l) * D_l delta_L (rows are samples)."""
    L = len(Ws)
    deltas = [None] * L
    deltas[-1] = alpha * (t - As[-1])
    if output_derivative:
        deltas[-1] = deltas[-1] * leaky_prime(As[-1])
    for l in range(L - 2, -1, -1):
        if credit == "bp":
            back = deltas[l + 1] @ Ws[l + 1] @ Rs[l + 1]
        elif credit == "fa":
            back = deltas[l + 1] @ feedback[l + 1].T
        else:
            back = deltas[-1] @ feedback[l].T
        deltas[l] = leaky_prime(As[l]) * back
    return deltas


def literal_step(Rs, Ws, y0, t, *, credit="bp", alpha=1.0, lr=0.1, lr_R=0.1, mode="copi",
                 form="left", center=False, norm_gain=False, feedback=None,
                 output_derivative=False, learn_R=True):
    """One COPI step written out from the spec, all from the pre-update weights."""
    batch = y0.shape[0]
    ys, xs, As = literal_forward(Rs, Ws, y0)
    deltas = literal_deltas(Rs, Ws, As, t, credit=credit, alpha=alpha, feedback=feedback,
                            output_derivative=output_derivative)
    new_W, new_R = [], []
    for l, (R, W) in enumerate(zip(Rs, Ws)):
        x, delta = xs[l], deltas[l]
        if mode == "copi":
            z = As[l] + delta
            dW = lr * (z.T @ x / batch - W * (x ** 2).mean(dim=0)[None, :])
        else:
            dW = lr * delta.T @ x / batch
        new_W.append(W + dW)
        if not learn_R:
            new_R.append(R)
            continue
        xc = x - x.mean(dim=0) if center else x
        C = xc.T @ xc / batch
        C_off = C - torch.diag(torch.diag(C))
        dR = -lr_R * (C_off @ R if form == "left" else R @ C_off)
        R = R + dR
        if norm_gain:
            y = ys[l]
            R = R * (y.norm(dim=1).mean() / (y @ R.T).norm(dim=1).mean())
        new_R.append(R)
    return new_R, new_W, deltas


def weights_of(net, L):
    return ([net.weights[f"r{l}"].clone() for l in range(1, L + 1)],
            [net.weights[f"w{l}"].clone() for l in range(1, L + 1)])


def perturb_R(net, L, seed=0, scale=0.05):
    """Start from R != I (so R enters the credit and the rules from the first step)."""
    gen = torch.Generator().manual_seed(seed)
    for l in range(1, L + 1):
        R = net.weights[f"r{l}"]
        R.add_(scale * torch.randn(R.shape, generator=gen, dtype=F64))


def batches(sizes, steps, batch=9, seed=11):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        y0 = torch.rand(batch, sizes[0], generator=gen, dtype=F64)
        t = one_hot(torch.randint(0, sizes[-1], (batch,), generator=gen), sizes[-1])
        yield y0, t


def feedback_list(protocol, L):
    """The protocol's own B_l (fa: index l-1 holds B_l of w_l) or D_l (dfa)."""
    return [protocol.feedback.get(f"w{l}") for l in range(1, L + 1)]


# ---------------------------------------------------------------------------- literal steps
@pytest.mark.parametrize("sizes", [[7, 6, 4], [7, 6, 5, 4]])
@pytest.mark.parametrize("credit", ["bp", "fa", "dfa"])
def test_two_steps_equal_a_literal_implementation(sizes, credit):
    L = len(sizes) - 1
    net, protocol = bound(sizes, forward={"type": "copi_forward", "lr": 0.05},
                          decorrelation={"type": "decorrelation", "lr": 0.1},
                          credit=credit, alpha=3.0)
    perturb_R(net, L)
    Rs, Ws = weights_of(net, L)
    B = feedback_list(protocol, L)
    if credit == "fa":
        assert B[0] is None and all(B[l].shape == (sizes[l], sizes[l + 1])
                                    for l in range(1, L))
    elif credit == "dfa":
        assert B[-1] is None and all(B[l].shape == (sizes[l + 1], sizes[-1])
                                     for l in range(L - 1))
    else:
        assert protocol.feedback == {}
    for step, (y0, t) in enumerate(batches(sizes, 2)):
        Rs, Ws, deltas = literal_step(Rs, Ws, y0, t, credit=credit, alpha=3.0, lr=0.05,
                                      lr_R=0.1, feedback=B)
        protocol.train_step(y0, t, torch.Generator(), step=step)
        for l in range(L):
            assert float((net.weights[f"w{l + 1}"] - Ws[l]).abs().max()) < 1e-10, (step, l)
            assert float((net.weights[f"r{l + 1}"] - Rs[l]).abs().max()) < 1e-10, (step, l)
    # the feedback matrices stay fixed
    assert all(torch.equal(a, b) for a, b in zip(feedback_list(protocol, L), B) if a is not None)


@pytest.mark.parametrize("sizes", [[7, 6, 4], [7, 6, 5, 4]])
@pytest.mark.parametrize("variant", [
    dict(mode="delta"),
    dict(form="right"),
    dict(center=True),
    dict(norm_gain=True),
    dict(form="right", center=True, norm_gain=True, mode="delta"),
    dict(output_derivative=True),
    dict(output_derivative=True, credit="fa"),
    dict(learn_R=False),                          # R named in "lateral", no rule: fixed
    dict(learn_R=False, credit="fa"),
])
def test_variants_equal_the_literal_formulas(sizes, variant):
    variant = dict(variant)
    L = len(sizes) - 1
    forward = {"type": "copi_forward", "lr": 0.05, "mode": variant.get("mode", "copi")}
    decorrelation = {"type": "decorrelation", "lr": 0.1,
                     **{k: variant[k] for k in ("form", "center", "norm_gain") if k in variant}}
    credit = variant.get("credit", "bp")
    if not variant.get("learn_R", True):
        decorrelation = None
    net, protocol = bound(sizes, forward=forward, decorrelation=decorrelation, credit=credit,
                          alpha=2.0, output_derivative=variant.get("output_derivative", False))
    perturb_R(net, L, seed=4)
    Rs, Ws = weights_of(net, L)
    B = feedback_list(protocol, L)
    for step, (y0, t) in enumerate(batches(sizes, 2, seed=3)):
        Rs, Ws, _ = literal_step(Rs, Ws, y0, t, alpha=2.0, lr=0.05, lr_R=0.1, feedback=B,
                                 **variant)
        protocol.train_step(y0, t, torch.Generator(), step=step)
        for l in range(L):
            assert float((net.weights[f"w{l + 1}"] - Ws[l]).abs().max()) < 1e-10, (step, l)
            assert float((net.weights[f"r{l + 1}"] - Rs[l]).abs().max()) < 1e-10, (step, l)
    if variant.get("norm_gain"):     # on the last batch, x = R y keeps the mean norm of y
        y0 = list(batches(sizes, 2, seed=3))[-1][0]
        assert float((y0 @ net.weights["r1"].T).norm(dim=1).mean()) == \
            pytest.approx(float(y0.norm(dim=1).mean()), rel=1e-12)


def test_output_derivative_multiplies_the_output_error_by_f_prime():
    sizes = [5, 6, 4]
    net, protocol = bound(sizes, credit="bp", alpha=2.0, output_derivative=True)
    y0, t = next(batches(sizes, 1, batch=30))
    state = protocol.infer(y0)
    a_out = net.u_of(state, "out")
    assert bool((a_out < 0).any()) and bool((a_out > 0).any())     # both slopes are tested
    delta = protocol.credit_signals(state, t)["out"]
    assert torch.allclose(delta, 2.0 * (t - a_out) * leaky_prime(a_out), rtol=0, atol=1e-13)
    plain = Copi(credit="bp", alpha=2.0, lateral=["r1", "r2"]).bind(net, seed=3)
    assert torch.allclose(plain.credit_signals(state, t)["out"], 2.0 * (t - a_out),
                          rtol=0, atol=1e-13)


def test_dfa_credit_is_the_direct_formula():
    sizes = [7, 6, 5, 4]
    net, protocol = bound(sizes, credit="dfa", alpha=5.0)
    perturb_R(net, 3, seed=1)
    y0, t = next(batches(sizes, 1, batch=12))
    state = protocol.infer(y0)
    deltas = protocol.credit_signals(state, t)
    delta_L = 5.0 * (t - net.u_of(state, "out"))
    assert torch.allclose(deltas["out"], delta_L, rtol=0, atol=1e-13)
    for l, h in ((1, "h1"), (2, "h2")):
        D = protocol.feedback[f"w{l}"]
        assert D.shape == (sizes[l], sizes[-1])
        expected = leaky_prime(net.u_of(state, h)) * (delta_L @ D.T)
        assert torch.allclose(deltas[h], expected, rtol=0, atol=1e-13)
    assert "w3" not in protocol.feedback and not any(d in deltas for d in ("d0", "d1", "d2"))


def test_mean_offdiagonal_correlation_literal():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=F64) @ torch.randn(5, 5, generator=gen,
                                                                   dtype=F64)
    x[:, 2] = 0.0                                      # a dead unit is left out
    C = x.T @ x / 40
    live = [0, 1, 3, 4]
    rho = [abs(float(C[i, j])) / math.sqrt(float(C[i, i] * C[j, j]))
           for i in live for j in live if i != j]
    assert mean_offdiagonal_correlation(C) == pytest.approx(sum(rho) / len(rho), rel=1e-12)
    assert math.isnan(mean_offdiagonal_correlation(torch.diag(torch.tensor([1.0, 0.0]))))


# ---------------------------------------------------------------------------- properties
def correlated(batch, d, rho, gen, scales=None):
    """Zero-mean Gaussian rows with unit variance and pairwise correlation rho (times
    ``scales`` per column)."""
    y = math.sqrt(1 - rho) * torch.randn(batch, d, generator=gen, dtype=F64) + \
        math.sqrt(rho) * torch.randn(batch, 1, generator=gen, dtype=F64)
    return y if scales is None else y * scales


@pytest.mark.parametrize("form", ["left", "right"])
def test_decorrelation_of_correlated_gaussians(form):
    """d = 20, pairwise correlation 0.6, batch 50, eta_R 1e-2: after 4000 steps the mean
    |off-diagonal correlation| of x = R y is < 0.02 (measured on 20000 fresh samples: 0.0087
    left, 0.0094 right; 0.597 for y itself). Only R learns (W has no rule)."""
    net, protocol = bound([20, 2], decorrelation={"type": "decorrelation", "lr": 1e-2,
                                                  "form": form})
    w_before = net.weights["w1"].clone()
    gen = torch.Generator().manual_seed(0)
    target = torch.zeros(50, 2, dtype=F64)
    for step in range(4000):
        protocol.train_step(correlated(50, 20, 0.6, gen), target, gen, step=step)
    y = correlated(20000, 20, 0.6, gen)
    x = y @ net.weights["r1"].T
    assert mean_offdiagonal_correlation(y.T @ y / len(y)) > 0.55
    assert mean_offdiagonal_correlation(x.T @ x / len(x)) < 0.02
    assert torch.equal(net.weights["w1"], w_before)


def decorrelated_batch(batch, d, seed):
    """Rows x_b with <x x^T> exactly diagonal (orthogonal columns of unequal norm)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(batch, d, generator=gen, dtype=F64))
    return q * math.sqrt(batch) * torch.linspace(0.5, 2.0, d, dtype=F64)


@pytest.mark.parametrize("sizes", [[8, 3], [8, 6, 3]])
def test_on_a_decorrelated_batch_dR_is_zero_and_copi_is_the_delta_rule(sizes):
    y0 = decorrelated_batch(50, 8, seed=5)
    C = y0.T @ y0 / 50
    assert float((C - torch.diag(torch.diag(C))).abs().max()) < 1e-13
    t = one_hot(torch.arange(50) % sizes[-1], sizes[-1])
    after = {}
    for mode in ("copi", "delta"):
        for form in ("left", "right"):
            net, protocol = bound(sizes, forward={"type": "copi_forward", "lr": 0.1,
                                                  "mode": mode},
                                  decorrelation={"type": "decorrelation", "lr": 0.1,
                                                 "form": form}, alpha=1.0)
            w1 = net.weights["w1"].clone()
            protocol.train_step(y0, t, torch.Generator())
            # R_1 = I: x_1 = y0 is decorrelated, so dR_1 = 0
            assert float((net.weights["r1"] - torch.eye(8, dtype=F64)).abs().max()) < 1e-14
            after[mode, form] = net.weights["w1"].clone()
    assert float((after["copi", "left"] - w1).abs().max()) > 1e-3
    for form in ("left", "right"):
        assert float((after["copi", form] - after["delta", form]).abs().max()) < 1e-12


def test_fixed_point_on_a_fixed_batch_is_the_local_regression():
    """Repeating one batch, the forward rule converges to W_ij = <z_i x_j> / <x_j^2>: W* for
    a decorrelated batch (to 1e-10), the biased W* C diag(C)^-1 for a correlated one."""
    gen = torch.Generator().manual_seed(1)
    Wstar = torch.randn(4, 8, generator=gen, dtype=F64)
    scales = torch.linspace(0.5, 2.0, 8, dtype=F64)
    for y0, decorrelated in ((decorrelated_batch(50, 8, seed=2), True),
                             (correlated(50, 8, 0.6, gen, scales), False)):
        net, protocol = bound([8, 4], forward={"type": "copi_forward", "lr": 0.2}, alpha=1.0)
        z = y0 @ Wstar.T                                 # alpha = 1: z = a + (t - a) = t
        for step in range(1500):
            protocol.train_step(y0, z, torch.Generator(), step=step)
        C = y0.T @ y0 / 50
        fixed = Wstar @ C / torch.diag(C)[None, :]
        assert float((net.weights["w1"] - fixed).abs().max()) < 1e-10
        error = float((net.weights["w1"] - Wstar).norm() / Wstar.norm())
        assert (error < 1e-10) if decorrelated else (error > 0.5), error


def teacher_run(kind, learn_R, steps=3000, batch=200, seed=2):
    """Single layer x -R-> d0 -W-> out (alpha = 1, so z = t = W* y); returns the relative
    error |W R - W*| / |W*| after ``steps`` fresh batches."""
    d, k = 10, 5
    gen = torch.Generator().manual_seed(1)
    Wstar = torch.randn(k, d, generator=gen, dtype=F64) / math.sqrt(d)
    scales = torch.linspace(0.5, 2.0, d, dtype=F64)
    net, protocol = bound([d, k], forward={"type": "copi_forward", "lr": 0.02}, alpha=1.0,
                          decorrelation={"type": "decorrelation", "lr": 1e-2} if learn_R
                          else None)
    data = torch.Generator().manual_seed(seed)
    for step in range(steps):
        if kind == "independent":
            y = torch.randn(batch, d, generator=data, dtype=F64) * scales
        else:
            y = correlated(batch, d, 0.6, data, scales)
        protocol.train_step(y, y @ Wstar.T, data, step=step)
    W, R = net.weights["w1"], net.weights["r1"]
    if not learn_R:
        assert torch.equal(R, torch.eye(d, dtype=F64))
    return float((W @ R - Wstar).norm() / Wstar.norm()), float((W - Wstar).norm() /
                                                                  Wstar.norm())


def test_fixed_point_W_to_W_star_and_the_negative_control():
    """Fresh batches of 200, eta 0.02, 3000 steps, d = 10 inputs with std 0.5 .. 2, teacher
    z = W* y. Measured (seeds 2-4): independent inputs, R = I: |W - W*|/|W*| = 0.024-0.030;
    correlated (rho 0.6), R frozen at I: 3.24 (the biased fixed point W* C diag(C)^-1);
    correlated, R learned (eta_R 1e-2): |W R - W*|/|W*| = 0.009-0.010 (W alone: 0.87)."""
    independent, _ = teacher_run("independent", learn_R=False)
    assert independent < 0.06, independent
    frozen, _ = teacher_run("correlated", learn_R=False)
    assert frozen > 1.0, frozen
    learned, w_alone = teacher_run("correlated", learn_R=True)
    assert learned < 0.03 and w_alone > 0.3, (learned, w_alone)


def autograd_deltas(net, y0, t, alpha, L):
    """-alpha dL/da_l and -alpha dL/dx_l for L = 0.5 sum_b |t_b - a_L,b|^2, built from the
    network's weights (R included)."""
    Rs, Ws = weights_of(net, L)
    y, As, Xs = y0, [], []
    for l in range(L):
        x = y @ Rs[l].T
        x.retain_grad() if x.requires_grad else x.requires_grad_(True)
        a = x @ Ws[l].T
        a.retain_grad()
        Xs.append(x)
        As.append(a)
        y = a if l == L - 1 else torch.nn.functional.leaky_relu(a, SLOPE)
    loss = 0.5 * ((t - As[-1]) ** 2).sum()
    loss.backward()
    return ([-alpha * a.grad for a in As], [-alpha * x.grad for x in Xs],
            [a.detach() for a in As])


@pytest.mark.parametrize("sizes", [[7, 6, 4], [7, 6, 5, 4]])
def test_bp_deltas_equal_autograd(sizes):
    L = len(sizes) - 1
    net, protocol = bound(sizes, credit="bp", alpha=1000.0)
    perturb_R(net, L, seed=8, scale=0.2)
    y0, t = next(batches(sizes, 1, batch=16))
    state = protocol.infer(y0)
    deltas = protocol.credit_signals(state, t)
    d_a, d_x, As = autograd_deltas(net, y0, t, 1000.0, L)
    names = [f"h{l}" for l in range(1, L)] + ["out"]
    for l, name in enumerate(names):
        assert torch.allclose(net.u_of(state, name), As[l], rtol=0, atol=1e-12)
        scale = float(d_a[l].abs().max())
        assert float((deltas[name] - d_a[l]).abs().max()) < 1e-12 * scale, name
    for l in range(1, L):                       # through the lateral copies too
        scale = float(d_x[l].abs().max())
        assert float((deltas[f"d{l}"] - d_x[l]).abs().max()) < 1e-12 * scale


def test_fa_deltas_do_not_change_with_W_or_R_bp_deltas_do():
    sizes = [7, 6, 5, 4]
    net, fa = bound(sizes, credit="fa", alpha=10.0)
    bp = Copi(credit="bp", alpha=10.0, lateral=["r1", "r2", "r3"]).bind(net, seed=3)
    dfa = Copi(credit="dfa", alpha=10.0, lateral=["r1", "r2", "r3"]).bind(net, seed=3)
    y0, t = next(batches(sizes, 1, batch=16))
    state = fa.infer(y0)                        # one recorded pass: the same f'(a_l)
    before = {p.credit: p.credit_signals(state, t) for p in (fa, bp, dfa)}
    gen = torch.Generator().manual_seed(9)
    for name, w in net.weights.items():         # change every W and R
        w.mul_(1.5).add_(0.3 * torch.randn(w.shape, generator=gen, dtype=F64))
    for p in (fa, dfa):
        after = p.credit_signals(state, t)
        assert set(after) == set(before[p.credit]) == {"out", "h1", "h2"}
        assert all(torch.equal(after[k], before[p.credit][k]) for k in after)
    after = bp.credit_signals(state, t)
    assert torch.equal(after["out"], before["bp"]["out"])
    for name in ("h1", "h2", "d1", "d2"):
        assert float((after[name] - before["bp"][name]).abs().max()) > 1e-3, name
    fa.feedback["w2"].mul_(2.0)                  # they do depend on B
    assert not torch.equal(fa.credit_signals(state, t)["h1"], before["fa"]["h1"])


# ---------------------------------------------------------------------------- training
TIMING = ("seconds", "train_seconds")


def metric_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("model", ["copi_bp_digits", "copi_fa_digits", "bp_decorr_digits"])
def test_digits_model_warms_up_trains_and_resumes_exactly(tmp_path, model):
    path = MODELS / f"{model}.toml"
    network = load_model_file(path).network()
    lateral = [q.name for q in network.projections
               if q.rules and q.rules[0].name == "decorrelation"]
    assert lateral == ["r1", "r2", "r3"]
    warmups = {q.rules[0].warmup.epochs for q in network.projections if q.name in lateral}
    assert len(warmups) == 1 and all(q.rules[0].warmup.mode == "alone"
                                     for q in network.projections if q.name in lateral)
    warmup = warmups.pop()
    assert 1 <= warmup < 8
    run, whole = tmp_path / "run", tmp_path / "whole"
    assert main(["train", str(path), "--out", str(whole), "--epochs", "8", "--quiet"]) == 0
    assert main(["train", str(path), "--out", str(run), "--epochs", str(warmup),
                 "--quiet"]) == 0
    # the R-only warm-up: W as initialised, R learned
    initial = Trainer.from_model_file(path, progress=False)
    warm = Trainer.resume(run, progress=False)
    assert warm.epoch == warmup
    for name, w in initial.net.weights.items():
        assert torch.equal(warm.net.weights[name], w) == name.startswith("w"), name
    assert main(["resume", str(run), "--epochs", "8", "--quiet"]) == 0
    a, b = Trainer.resume(run, progress=False), Trainer.resume(whole, progress=False)
    for name in b.net.weights:
        assert torch.equal(a.net.weights[name], b.net.weights[name]), name
        assert not torch.equal(b.net.weights[name], initial.net.weights[name]), name
    assert set(a.protocol.feedback) == set(b.protocol.feedback) == \
        ({"w2", "w3"} if "fa" in model else set())
    for name, B in b.protocol.feedback.items():
        assert torch.equal(a.protocol.feedback[name], B)
        assert torch.equal(initial.protocol.feedback[name], B)
    rows_a, rows_b = metric_rows(run), metric_rows(whole)
    assert len(rows_a) == len(rows_b) == 8
    for ra, rb in zip(rows_a, rows_b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == \
            {k: v for k, v in rb.items() if k not in TIMING}
    hist_a, hist_b = list(a.history.rows()), list(b.history.rows())
    for ra, rb in zip(hist_a, hist_b):
        assert {k: v for k, v in ra.items() if k not in TIMING} == \
            {k: v for k, v in rb.items() if k not in TIMING}
    rows = [{k: float(v) for k, v in r.items()} for r in rows_b]
    assert rows[-1]["test_accuracy"] > 0.9, rows[-1]
    # the decorrelation metric: R decorrelates during the R-only epochs
    for r in rows[:warmup]:
        for q in lateral:
            assert r[f"offdiag_{q}"] < r[f"offdiag_in_{q}"], (r["epoch"], q)
    r1 = [r["offdiag_r1"] for r in rows[:warmup]]
    assert all(later < earlier for earlier, later in zip(r1, r1[1:])), r1
    assert len({r["offdiag_in_r1"] for r in rows}) == 1       # the input data's own
    # peaks: the best test accuracy so far and the first epoch that reached it
    for i, r in enumerate(rows):
        so_far = [p["test_accuracy"] for p in rows[:i + 1]]
        assert r["peak_test_accuracy"] == max(so_far)
        assert r["peak_epoch"] == 1 + so_far.index(max(so_far))


# ---------------------------------------------------------------------------- checks
def test_settings_are_checked():
    with pytest.raises(ConfigError, match='credit: "bp"'):
        Copi(credit="tp")
    for alpha in (0, -1.0, math.inf, True):
        with pytest.raises(ConfigError, match="alpha: a finite number > 0"):
            Copi(alpha=alpha)
    with pytest.raises(ConfigError, match="feedback_scale"):
        Copi(feedback_scale=0.0)
    with pytest.raises(ConfigError, match="output_derivative: true or false"):
        Copi(output_derivative=1)
    with pytest.raises(ConfigError, match="lateral: a list of projection names"):
        Copi(lateral="r1")
    with pytest.raises(ConfigError, match="feedback_init"):
        Copi(feedback_init="gaussian_blob")
    with pytest.raises(ConfigError, match='unknown projection of the chain "r9"'):
        bound([4, 3, 2], lateral=["r1", "r9"])
    # a lateral projection must map onto a linear population of its source's size
    with pytest.raises(ConfigError, match='lateral projection "w1" must map its source onto '
                                          'a linear population'):
        bound([4, 4, 2], lateral=["r1", "w1"])
    with pytest.raises(ConfigError, match='lateral projection "w1" must map'):
        bound([4, 3, 2], lateral=["r1", "w1"])
    with pytest.raises(ConfigError, match="output layer must be a forward weight"):
        bound([4, 4], network_options={"hidden": "linear"}, lateral=["r1", "w1"])
    with pytest.raises(ConfigError, match="COPI's output a_L is linear"):
        bound([4, 3, 2], network_options={"output": "leaky_relu[0.1]"})
    with pytest.raises(ConfigError, match="one-hot targets"):
        net, protocol = bound([4, 3, 2])
        protocol.train_step(torch.rand(5, 4, dtype=F64), torch.zeros(5, 3, dtype=F64),
                            torch.Generator())


def test_feedback_init_must_draw_a_random_matrix_of_the_feedback_shape(monkeypatch):
    for init in ("identity", "gram_xavier", "eye"):
        with pytest.raises(ConfigError, match=f'feedback_init: "{init}" does not draw'):
            Copi(credit="fa", feedback_init=init)
    from neurosim.graph.projections import INITIALISERS
    monkeypatch.setitem(INITIALISERS, "transposed",
                        lambda o, i, g, dtype, scale: torch.zeros(i, o, dtype=dtype))
    with pytest.raises(ConfigError, match=r'returned shape \(3, 4\) for the feedback of "w2"'):
        bound([4, 4, 3, 2], credit="fa", feedback_init="transposed")

def test_rule_settings_are_checked():
    for kwargs, message in ((dict(form="middle"), 'form: "left"'),
                            (dict(lr=-1.0), "lr: a finite number >= 0"),
                            (dict(center=1), "center: true or false"),
                            (dict(norm_gain="yes"), "norm_gain: true or false")):
        with pytest.raises(ConfigError, match=message):
            Decorrelation(**{"lr": 0.1, **kwargs})
    with pytest.raises(ConfigError, match='mode: "copi"'):
        CopiForward(lr=0.1, mode="hebb")
    with pytest.raises(ConfigError, match="lr: a finite number >= 0"):
        CopiForward(lr=math.nan)
    # decorrelation on a non-square projection (its target is not a copy of its source)
    net = g.Network([g.InputPopulation("x", 4),
                     g.PyramidalPopulation("d0", 3, leak=0.0, basal=1.0, apical=0.0,
                                           activation="linear"),
                     g.PyramidalPopulation("out", 2, leak=0.0, basal=1.0, apical=0.0,
                                           activation="linear")],
                    [g.Projection("r1", "x", "d0", "basal", init="xavier_normal",
                                  rules=[{"type": "decorrelation", "lr": 0.1}]),
                     g.Projection("w1", "d0", "out", "basal")])
    with pytest.raises(ConfigError, match='"decorrelation" on "r1" needs a square weight'):
        Copi().bind(CompiledNetwork(net, dtype=F64))
    # copi_forward where the protocol gives no delta (fa / dfa credit skip the copies d_l)
    for credit in ("fa", "dfa"):
        rule = {"type": "copi_forward", "lr": 0.1}
        net = CompiledNetwork(copi_network([4, 3, 2], forward=rule, decorrelation=rule),
                              dtype=F64)
        protocol = Copi(credit=credit, lateral=["r1", "r2"]).bind(net)
        with pytest.raises(ConfigError, match='rule "copi_forward" on "r1": the protocol gives '
                                              'no credit signal for population "d0"; attach'):
            protocol.train_step(torch.rand(3, 4, dtype=F64), torch.eye(2, dtype=F64)[[0, 1, 0]],
                                torch.Generator())


def test_checkpoint_feedback_is_checked():
    net, fa = bound([5, 4, 3, 2], credit="fa")
    saved = {"feedback": {k: v.clone() for k, v in fa.state_dict()["feedback"].items()}}
    assert set(saved["feedback"]) == {"w2", "w3"}
    fa.load_state_dict({"feedback": {k: v * 2 for k, v in saved["feedback"].items()}})
    assert torch.equal(fa.feedback["w2"], 2 * saved["feedback"]["w2"])
    for state, message in (({}, "do not match"),
                           ({"feedback": {"w2": saved["feedback"]["w2"]}}, "do not match"),
                           ({"feedback": {**saved["feedback"], "w1": torch.zeros(5, 4)}},
                            "do not match"),
                           ({"feedback": saved["feedback"], "extra": 1}, "do not match"),
                           ({"feedback": {"w2": torch.zeros(3, 4),
                                          "w3": saved["feedback"]["w3"]}},
                            r'"w2" has shape \(3, 4\), this model needs \(4, 3\)')):
        with pytest.raises(ConfigError, match=message):
            fa.load_state_dict(state)
    _, bp = bound([5, 4, 3, 2], credit="bp")
    assert bp.state_dict() == {}
    bp.load_state_dict({})
    with pytest.raises(ConfigError, match="the model and the checkpoint disagree"):
        bp.load_state_dict(saved)


def test_decorrelation_metric_needs_lateral_projections():
    from neurosim.metrics.decorrelation import Decorrelation as DecorrelationMetric
    text = (MODELS / "bp_adam_digits.toml").read_text()
    assert text.rstrip().splitlines()[-1].startswith("threads")      # [training] is last
    with pytest.raises(ConfigError, match='metric "decorrelation" needs decorrelating lateral '
                                          'projections .* protocol "backprop" has none'):
        Trainer.from_model_text(text + 'metrics = ["decorrelation"]\n', progress=False)
    net = CompiledNetwork(copi_network([4, 3, 2], lateral=False), dtype=F64)
    with pytest.raises(ConfigError, match='protocol "copi" has none'):
        DecorrelationMetric().check_protocol(Copi().bind(net))
    _, protocol = bound([4, 3, 2])
    DecorrelationMetric().check_protocol(protocol)


# ---------------------------------------------------------------------------- model files
PUBLISHED = {"mnist": (784, [500] * 6, 10), "cifar10": (3072, [1000] * 4, 10)}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
@pytest.mark.parametrize("method", ["copi_bp", "copi_fa", "bp_decorr"])
def test_published_model_files(dataset, method):
    """784-500x6-10 (MNIST) and 3072-1000x4-10 (CIFAR-10) with an R_l in front of every W_l
    (input included); eta = eta_R = 1e-3, alpha = 1000, batch 50, epoch 1 trains R alone."""
    model = load_model_file(MODELS / f"{method}_{dataset}.toml")
    network = model.network()
    n_in, hidden, n_out = PUBLISHED[dataset]
    sizes = [n_in, *hidden, n_out]
    L = len(sizes) - 1
    pops = {p.name: p for p in network.populations}
    assert pops["x"].size == n_in and pops["out"].size == n_out
    assert pops["out"].activation == "linear"
    projs = {q.name: q for q in network.projections}
    assert set(projs) == {f"{k}{l}" for k in "rw" for l in range(1, L + 1)}
    for l in range(1, L + 1):
        r, w = projs[f"r{l}"], projs[f"w{l}"]
        below = "x" if l == 1 else f"h{l - 1}"
        above = "out" if l == L else f"h{l}"
        assert (r.source, r.target, w.source, w.target) == (below, f"d{l - 1}", f"d{l - 1}",
                                                             above)
        assert pops[f"d{l - 1}"].size == sizes[l - 1]
        assert pops[f"d{l - 1}"].activation == "linear"
        assert pops[above].size == sizes[l]
        if above != "out":
            assert pops[above].activation == "leaky_relu[0.1]"
        assert r.init == "eye" and w.init == "xavier_normal"
        (dec,), (fwd,) = r.rules, w.rules
        assert isinstance(dec, Decorrelation) and isinstance(fwd, CopiForward)
        assert (dec.lr, dec.form, dec.center, dec.norm_gain) == (1e-3, "left", False, False)
        assert (dec.warmup.epochs, dec.warmup.mode) == (1, "alone")
        assert fwd.lr == 1e-3 and fwd.warmup is None
        assert fwd.mode == ("delta" if method == "bp_decorr" else "copi")
    protocol = model.data["protocol"]
    expected = {"type": "copi", "credit": "fa" if method == "copi_fa" else "bp", "alpha": 1000.0}
    if method == "copi_fa":           # the authors' code's f'(a_L): without it FA diverges
        expected["output_derivative"] = True
    assert protocol == expected
    training = model.data["training"]
    assert (training["batch_size"], training["epochs"]) == (50, 100)
    assert "decorrelation" in training["metrics"] and "lr_schedule" not in training
    assert model.data["data"]["dataset"] == dataset
    assert model.data["data"].get("normalization", "default") == \
        ("unit" if dataset == "cifar10" else "default")          # pixels / 255 both ways
    build_protocol(protocol)                                     # the [protocol] table builds


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_published_adam_baseline_files(dataset):
    model = load_model_file(MODELS / f"bp_adam_{dataset}.toml")
    network = model.network()
    n_in, hidden, n_out = PUBLISHED[dataset]
    sizes = [p.size for p in network.populations]
    assert sizes == [n_in, *hidden, n_out]
    assert all(not q.rules and q.init == "xavier_normal" for q in network.projections)
    assert model.data["protocol"]["type"] == "backprop"
    assert (model.data["protocol"]["optimizer"], model.data["protocol"]["lr"],
            model.data["protocol"]["loss"]) == ("adam", 1e-4, "mse")
    assert model.data["training"]["batch_size"] == 50
