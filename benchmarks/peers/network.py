"""The one network every implementation of the peer benchmark simulates, as plain numbers.

Populations (one sample, batch 1):

- ``x``: N_INPUT = 100 clamped inputs, ``r_x = x`` (x ~ U(0, 1), fixed);
- ``pyr``: N pyramidal neurons with basal and apical dendrites, sigmoid activity;
- ``inh``: N_INH = 10 inhibitory interneurons (soma only), relu activity.

Projections (W is target x source): ``x_pyr`` onto the basal dendrites, ``pyr_pyr`` (dense,
recurrent) onto the apical dendrites, ``pyr_inh`` onto the interneurons' somas and
``inh_pyr`` onto the apical dendrites with gain -1.

Dynamics (neurosim's linear cells, neurosim/graph/populations.py and the Jacobi form in
neurosim/dynamics/compiled.py; dendrites at steady state)::

    du/dt   = rate [ -d u + g_B W_xp x + g_A (W_pp r + gain_ip W_ip r_i) + b ],   r   = sigmoid(u)
    du_i/dt = rate_i [ -g_lk,i u_i + W_pi r + b_i ],                             r_i = relu(u_i)
    d       = g_lk + g_B + g_A

i.e. du/dt = rate [ -d u + sum_q k_q W_q r_q + b ] with k_q = (compartment conductance) x
gain. Explicit Euler, dt = 0.05, STEPS = 2,000 steps from u = 0 (r = sigmoid(0) = 1/2,
r_i = relu(0) = 0): ``u <- u + dt du/dt(u, r)``, then ``r <- sigma(u)``.

Weights and inputs are drawn from a fixed seed with NumPy and rounded to float32, so that a
float32 tool and the float64 reference see exactly the same numbers; they are written as .npy
files (neurosim reads them with ``init = { file = "pyr_pyr.npy" }``) next to ``spec.json``
(the parameters below). The recurrent weights are N(0, (G_REC / sqrt N)^2) with
G_REC * g_A * max sigmoid' < d, so the dynamics contract: activities settle within (0, 1)
after a transient of about 100 steps, neither silent nor divergent, and float32 rounding
errors do not grow.

Agreement: a float32 tool is checked on the 10 recorded somas at every step (TOLERANCE,
4e-7 x max(1, |u_ref|)) and on the final u of every neuron (STATE_TOLERANCE, 2e-6 x ...).
The second bound is looser because float32 Euler stops moving once a step h f(u) (h = dt
rate) rounds away against u, i.e. within about ulp(u) / (2 h d) of the fixed point, plus the
rounding of f itself: with h d = 0.3 that is a few 1e-7 per neuron, and the maximum over
thousands of neurons reaches 1e-6 (a float32 NumPy loop of the same equations lands there
too). A larger h d (here rate 2 and d = 3) keeps this small; a slow cell (h d = 0.08) would
stall 1e-6 away even on the recorded somas.

This module needs only NumPy: the peers' virtual environment imports it too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

N_INPUT = 100
N_INH = 10
DT = 0.05
STEPS = 2000
N_RECORD = 10
SEED = 13
TOLERANCE = 4e-7       # max |u - u_ref| / max(1, |u_ref|), recorded somas, every step
STATE_TOLERANCE = 2e-6  # the same over the final u of all N + 10 neurons (see below)

PYR = dict(leak=1.0, basal=1.0, apical=1.0, rate=2.0, bias=-0.5)        # sigmoid
INH = dict(leak=2.0, rate=2.0, bias=0.0)                                  # relu
GAIN_INH = -1.0        # gain of inh -> pyr (apical)
G_REC = 1.5            # recurrent weights N(0, (G_REC / sqrt N)^2)
W_IN_STD = 0.3         # input weights N(0, W_IN_STD^2)
W_PI_MAX = 2.0         # pyr -> inh U(0, W_PI_MAX / N)
W_IP_MAX = 0.2         # inh -> pyr U(0, W_IP_MAX)

ARRAYS = ("x", "x_pyr", "pyr_pyr", "pyr_inh", "inh_pyr")


def decay() -> float:
    """d = g_lk + g_B + g_A of the pyramidal cells."""
    return PYR["leak"] + PYR["basal"] + PYR["apical"]


def recorded(n: int) -> np.ndarray:
    """The N_RECORD pyramidal neurons whose somas are recorded (spread over the population)."""
    return np.linspace(0, n - 1, N_RECORD).round().astype(np.int64)


def draw(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Inputs and weights (float32) for N = n pyramidal neurons."""
    rng = np.random.default_rng([seed, n])
    f32 = np.float32
    return {
        "x": rng.uniform(0.0, 1.0, N_INPUT).astype(f32),
        "x_pyr": (W_IN_STD * rng.standard_normal((n, N_INPUT))).astype(f32),
        "pyr_pyr": (G_REC / np.sqrt(n) * rng.standard_normal((n, n))).astype(f32),
        "pyr_inh": rng.uniform(0.0, W_PI_MAX / n, (N_INH, n)).astype(f32),
        "inh_pyr": rng.uniform(0.0, W_IP_MAX, (n, N_INH)).astype(f32),
    }


def spec(n: int) -> dict:
    """Every number of the network but the arrays."""
    return {"n": n, "n_input": N_INPUT, "n_inh": N_INH, "dt": DT, "steps": STEPS,
            "pyr": dict(PYR, activation="sigmoid", decay=decay()),
            "inh": dict(INH, activation="relu"), "gain_inh": GAIN_INH,
            "recorded": recorded(n).tolist(), "seed": SEED, "tolerance": TOLERANCE,
            "state_tolerance": STATE_TOLERANCE}


def write(n: int, directory) -> Path:
    """Write spec.json and the .npy arrays of the network of size n into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in draw(n).items():
        np.save(directory / f"{name}.npy", array)
    (directory / "spec.json").write_text(json.dumps(spec(n), indent=1))
    return directory


def load(directory) -> tuple[dict, dict[str, np.ndarray]]:
    """(spec, arrays) written by :func:`write`."""
    directory = Path(directory)
    s = json.loads((directory / "spec.json").read_text())
    return s, {name: np.load(directory / f"{name}.npy") for name in ARRAYS}


def input_current(s: dict, a: dict, dtype=np.float64) -> np.ndarray:
    """The clamped inputs' constant contribution g_B W_xp x (computed once, as every tool
    may: it does not change during the run)."""
    return (s["pyr"]["basal"] * (a["x_pyr"].astype(dtype) @ a["x"].astype(dtype))).astype(dtype)


def sigmoid(u):
    return 1.0 / (1.0 + np.exp(-u))


def reference(s: dict, a: dict) -> dict[str, np.ndarray]:
    """Float64 explicit Euler: the recorded somas at every step (STEPS + 1 x N_RECORD, the
    initial state first) and the final u of both populations."""
    f = np.float64
    p, q = s["pyr"], s["inh"]
    w_pp, w_pi, w_ip = (a[k].astype(f) for k in ("pyr_pyr", "pyr_inh", "inh_pyr"))
    drive = input_current(s, a) + p["bias"]
    d, k_a, dt = p["decay"], p["apical"], s["dt"]
    idx = np.asarray(s["recorded"])
    u, ui = np.zeros(s["n"]), np.zeros(s["n_inh"])
    r, ri = sigmoid(u), np.maximum(ui, 0.0)
    trace = np.empty((s["steps"] + 1, len(idx)))
    trace[0] = u[idx]
    for k in range(1, s["steps"] + 1):
        du = p["rate"] * (-d * u + k_a * (w_pp @ r + s["gain_inh"] * (w_ip @ ri)) + drive)
        dui = q["rate"] * (-q["leak"] * ui + w_pi @ r + q["bias"])
        u, ui = u + dt * du, ui + dt * dui
        r, ri = sigmoid(u), np.maximum(ui, 0.0)
        trace[k] = u[idx]
    return {"trace": trace, "u": u, "u_inh": ui}


def deviation(result: dict, ref: dict) -> dict[str, float]:
    """max |a - b| / max(1, |b|) of the recorded trace and of the final state (both
    populations), against the reference; keys present in ``result`` only."""
    out = {}
    for key in ("trace", "u", "u_inh"):
        if result.get(key) is not None:
            a, b = np.asarray(result[key], np.float64), ref[key]
            if a.shape != b.shape:
                raise ValueError(f"{key}: shape {a.shape}, reference {b.shape}")
            out[key] = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))
    return out


def check(dev: dict[str, float]) -> tuple[bool, str]:
    """Whether deviations (:func:`deviation`) are within TOLERANCE (trace) and
    STATE_TOLERANCE (final state), and a line saying so."""
    bounds = {"trace": TOLERANCE, "u": STATE_TOLERANCE, "u_inh": STATE_TOLERANCE}
    ok = all(dev[k] <= bounds[k] for k in dev)
    parts = [f"{k} {v:.2e} (<= {bounds[k]:.0e}{'' if v <= bounds[k] else ' FAILED'})"
             for k, v in dev.items()]
    return ok, ", ".join(parts)


def summary(ref: dict) -> str:
    """How lively the reference is: range of u and of the rates, and how far the last 1,000
    steps still move."""
    u, tr = ref["u"], ref["trace"]
    r = sigmoid(u)
    late = np.max(np.abs(tr[-1] - tr[len(tr) // 2]))
    return (f"final u in [{u.min():.2f}, {u.max():.2f}], r in [{r.min():.3f}, {r.max():.3f}] "
            f"(mean {r.mean():.3f}), u_inh {ref['u_inh'].mean():.3f}; recorded somas move "
            f"{np.max(np.abs(tr[50] - tr[0])):.2f} in the first 50 steps, {late:.1e} in the "
            f"last half")
