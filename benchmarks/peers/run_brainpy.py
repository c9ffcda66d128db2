"""The peer benchmark's network in BrainPy: explicit Euler written out in a step function over
``brainpy.math`` Variables, run for 2,000 steps by ``bm.for_loop`` inside ``bm.jit`` (one
JAX-compiled ``lax.scan``, compiled once), float32 (JAX's default), CPU. Each step returns the 10 recorded somas, so the
timed run records them (that is how for_loop records). Run by benchmarks/peers/run.py in the
peers' virtual environment; see worker.py for the protocol.

    python run_brainpy.py DIR --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import network  # noqa: E402
import worker  # noqa: E402


def build(directory, threads, platform="cpu"):
    import jax
    import brainpy as bp
    import brainpy.math as bm
    import numpy as np
    bm.set_platform(platform)
    # float32 products in float32 (on a GPU, JAX's default precision multiplies float32
    # matrices in TF32, about 1e-4 off the reference at N = 4,000)
    jax.config.update("jax_default_matmul_precision", "highest")
    s, a = network.load(directory)
    p, q, dt = s["pyr"], s["inh"], s["dt"]
    f32 = np.float32
    import jax.numpy as jnp
    # constants as plain JAX arrays (a brainpy.math.Array inside a traced function trips
    # newer JAX versions); the state lives in brainpy.math Variables
    w_pp, w_pi, w_ip = (jnp.asarray(a[k], dtype=jnp.float32)
                        for k in ("pyr_pyr", "pyr_inh", "inh_pyr"))
    drive = jnp.asarray(network.input_current(s, a, np.float32) + f32(p["bias"]))
    idx = jnp.asarray(np.asarray(s["recorded"]))
    n, n_inh = s["n"], s["n_inh"]
    u = bm.Variable(bm.zeros(n, dtype=bm.float32))
    ui = bm.Variable(bm.zeros(n_inh, dtype=bm.float32))
    r = bm.Variable(bm.sigmoid(u.value))
    ri = bm.Variable(bm.relu(ui.value))
    hp, hi = f32(dt * p["rate"]), f32(dt * q["rate"])
    d, k_a, g, leak_i, b_i = (f32(v) for v in (p["decay"], p["apical"], s["gain_inh"],
                                                q["leak"], q["bias"]))

    def step(_):
        du = -d * u.value + k_a * (w_pp @ r.value + g * (w_ip @ ri.value)) + drive
        dui = -leak_i * ui.value + w_pi @ r.value + b_i
        u.value = u.value + hp * du
        ui.value = ui.value + hi * dui
        r.value = bm.sigmoid(u.value)
        ri.value = bm.relu(ui.value)
        return u.value[idx]

    steps = np.arange(s["steps"])
    # for_loop inside bm.jit: compiled once (the first, untimed run), then reused; a bare
    # bm.for_loop call re-traces every time (about 0.1 s more per 2,000 steps here)
    loop = bm.jit(lambda: bm.for_loop(step, steps))

    def run():
        u.value = bm.zeros(n, dtype=bm.float32)
        ui.value = bm.zeros(n_inh, dtype=bm.float32)
        r.value = bm.sigmoid(u.value)
        ri.value = bm.relu(ui.value)
        jax.block_until_ready(r.value)
        start = time.perf_counter()
        trace = loop()
        jax.block_until_ready(bm.as_jax(trace))
        seconds = time.perf_counter() - start
        trace = np.concatenate([np.zeros((1, len(s["recorded"])), np.float32),
                                np.asarray(bm.as_numpy(trace))])
        return seconds, {"trace": trace, "u": np.asarray(bm.as_numpy(u.value)),
                         "u_inh": np.asarray(bm.as_numpy(ui.value))}

    label = f"BrainPy {bp.__version__} for_loop (JAX {jax.__version__} jit, float32, {platform})"
    return label, run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--platform", default="cpu", choices=["cpu", "gpu"])
    args = ap.parse_args()
    worker.serve(lambda: build(args.directory, args.threads, args.platform), args.directory,
                 "brainpy")


if __name__ == "__main__":
    main()
