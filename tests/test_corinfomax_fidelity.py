"""Fidelity: one full EP training step of neurosim's CorInfoMax equals a straightforward
implementation of the spec's equations (written here, columns = samples) to 1e-10."""
import math

import pytest
import torch

from neurosim.dynamics import CompiledNetwork
from neurosim.models import corinfomax_network
from neurosim.solvers import get_solver, make_schedule
from neurosim.training import EquilibriumPropagation

EPS, G, LAM = 0.15, 0.5, 0.99
ETA_LAM = [1e-2, 5e-2]


def reference_step(W_ff, W_fb, B, x, y, beta, T_free, T_nudged, mu_ff, mu_fb, eta, variant):
    """Spec sections 2-4, literally: Gauss-Seidel Euler, layer by layer, then updates."""
    P = len(W_ff)
    gamma = (1 - LAM) / LAM
    act = (lambda u: u.clamp(0, 1)) if variant == "A-inf" else torch.relu

    def run(r, u, lam_out, T, beta):
        l_in = [v.clone() for v in lam_out]
        for t in range(T):
            h = eta(t)
            for k in range(P):
                below = x if k == 0 else r[k - 1]
                vB = W_ff[k] @ below
                if k < P - 1:
                    vA = W_fb[k] @ r[k + 1] + EPS * (2 * gamma * B[k] @ r[k] + G * r[k])
                    if variant == "A1":
                        vA = vA - EPS * lam_out[k]
                    du = -G * u[k] + (vB - u[k]) / EPS + (vA - u[k]) / EPS
                else:
                    vA = gamma * B[k] @ r[k] + G * r[k] - beta * (r[k] - y)
                    if variant == "A1":
                        vA = vA - lam_out[k]
                    du = -G * u[k] + (vB - u[k]) / EPS + (vA - u[k])
                u[k] = u[k] + h * du
                r[k] = act(u[k])
                if variant == "A1":
                    step = ETA_LAM[0] if k < P - 1 else ETA_LAM[1]
                    l_in[k] = l_in[k] + step * (-l_in[k] + (r[k].sum(0, keepdim=True) - 1)
                                                + lam_out[k])
                    lam_out[k] = torch.relu(l_in[k])
        return r, lam_out

    batch = x.shape[1]
    zeros = [torch.zeros(w.shape[0], batch, dtype=x.dtype) for w in W_ff]
    lam0 = [torch.zeros(1, batch, dtype=x.dtype) for _ in W_ff]
    r0, lam_free = run([z.clone() for z in zeros], [z.clone() for z in zeros], lam0, T_free, 0.0)
    r0 = [v.clone() for v in r0]
    rb, _ = run([v.clone() for v in r0], [v.clone() for v in r0],
                [v.clone() for v in lam_free], T_nudged, beta)
    free, nudged = [x] + r0, [x] + rb
    mean_outer = lambda a, b: torch.einsum("ib,jb->ij", a, b) / batch
    new_ff = [W_ff[k] + mu_ff[k] / beta * (
        mean_outer(nudged[k + 1] - W_ff[k] @ nudged[k], nudged[k])
        - mean_outer(free[k + 1] - W_ff[k] @ free[k], free[k])) for k in range(P)]
    new_fb = [W_fb[k] + mu_fb[k] / beta * (
        mean_outer(nudged[k + 1] - W_fb[k] @ nudged[k + 2], nudged[k + 2])
        - mean_outer(free[k + 1] - W_fb[k] @ free[k + 2], free[k + 2])) for k in range(P - 1)]
    new_B = []
    for k in range(P):
        z = B[k] @ rb[k]
        new_B.append((B[k] - gamma * mean_outer(z, z)) / LAM)
    return r0, rb, new_ff, new_fb, new_B


@pytest.mark.parametrize("variant,sizes,rule,beta", [
    ("A-inf", [12, 9, 5], "constant", 1.0),
    ("A-inf", [12, 9, 5], "constant", -1.0),
    ("A-inf", [10, 8, 7, 4], "slow", 1.0),
    ("A1", [12, 9, 5], "slow", -1.0),
    ("A1", [10, 8, 7, 4], "constant", 1.0),
])
def test_one_training_step_matches_reference(variant, sizes, rule, beta):
    torch.manual_seed(3)
    P = len(sizes) - 1
    mu_ff = [0.9, 0.6, 0.4][:P]
    mu_fb = [0.2, 0.1][:P - 1]
    network = corinfomax_network(sizes, variant=variant, eps=EPS, leak=G, lam=LAM,
                                 mu_ff=mu_ff, mu_fb=mu_fb, eta_lam=ETA_LAM)
    net = CompiledNetwork(network, dtype=torch.float64)
    # random weights (not the initialisers) so every term matters
    W_ff = [torch.randn(sizes[k + 1], sizes[k], dtype=torch.float64) * 0.5 for k in range(P)]
    W_fb = [torch.randn(sizes[k + 1], sizes[k + 2], dtype=torch.float64) * 0.5 for k in range(P - 1)]
    M = [torch.randn(n, n, dtype=torch.float64) * 0.3 for n in sizes[1:]]
    B = [m @ m.T for m in M]
    for k in range(P):
        net.weights[f"ff{k + 1}"].copy_(W_ff[k])
        net.weights[f"lat{k + 1}"].copy_(B[k])
    for k in range(P - 1):
        net.weights[f"fb{k + 1}"].copy_(W_fb[k])
    batch = 6
    x = torch.rand(batch, sizes[0], dtype=torch.float64) * 1.5
    labels = torch.randint(0, sizes[-1], (batch,))
    y = torch.nn.functional.one_hot(labels, sizes[-1]).double()
    spec = {"type": rule, "dt": 0.08} if rule == "slow" else 0.08
    schedule = make_schedule(spec)
    protocol = EquilibriumPropagation(net, input="x", output="out", solver=get_solver("gs-euler"),
                                      schedule=schedule, T_free=17, T_nudged=7, beta=beta,
                                      random_sign=False)
    result = protocol.train_step(x, y, torch.Generator())
    r0, rb, new_ff, new_fb, new_B = reference_step(
        W_ff, W_fb, B, x.T, y.T, beta, 17, 7, mu_ff, mu_fb, schedule, variant)
    names = [f"h{k}" for k in range(1, P)] + ["out"]
    assert torch.allclose(result.free_output, r0[-1].T, atol=1e-12, rtol=0)
    for k, name in enumerate(names):
        assert (protocol._state(2 * batch).r[:batch, net.slots[name].r_cols] - rb[k].T).abs().max() < 1e-12
    assert any(float(v.abs().max()) > 0 for v in r0[:-1])       # hidden layers are active
    for k in range(P):
        assert (net.weights[f"ff{k + 1}"] - new_ff[k]).abs().max() < 1e-10
        assert (net.weights[f"lat{k + 1}"] - new_B[k]).abs().max() < 1e-10
        assert (new_ff[k] - W_ff[k]).abs().max() > 1e-4          # the update is not trivial
    for k in range(P - 1):
        assert (net.weights[f"fb{k + 1}"] - new_fb[k]).abs().max() < 1e-10
        assert (new_fb[k] - W_fb[k]).abs().max() > 1e-6


def test_slow_schedule_formula():
    s = make_schedule({"type": "slow", "dt": 0.07})
    assert s(0) == 0.07 and math.isclose(s(10), 0.07 / 1.1) and s(10 ** 6) == 1e-3
