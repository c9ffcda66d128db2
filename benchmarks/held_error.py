"""How much holding CorInfoMax's lateral product over k steps moves the dynamics.

    python benchmarks/held_error.py RUN.h5 [--samples 2000] [--every 2 3 4 5 10]

Reads the weights of a trained CorInfoMax-A-inf 784-500-10 run (``neurosim train
models/corinfomax_ainf_mnist.toml --out RUN``) and runs the free phase (30 Gauss-Seidel Euler
steps, spec corinfomax.md section 2) on MNIST test images, written out here independently of
the engine: exactly in float64 (the reference), in float32, in float32 with the lateral
product in bfloat16, in float64 with the hidden lateral product ``2 gamma B r`` recomputed
only every k steps (held in between, as ``refresh_every = k`` does), and in float64 without
the lateral term. Prints the largest change of the hidden and output potentials against the
reference and how many predictions change.
"""
from __future__ import annotations

import argparse

import h5py
import torch

from neurosim.data import load_dataset

EPS, LEAK, LAM, ETA, T = 0.15, 0.5, 0.99999, 0.05, 30
GAMMA = (1 - LAM) / LAM


def free_phase(weights, x, dtype, every=1, bfloat16=False, lateral=True):
    """u of the hidden and output layers after T steps from rest."""
    w1, w2, wfb, b1, b2 = (weights[k].to(dtype) for k in ("ff1", "ff2", "fb1", "lat1", "lat2"))
    x = x.to(dtype)
    lat_op = b1.to(torch.bfloat16).to(dtype) if bfloat16 else b1
    u1 = torch.zeros(x.shape[0], w1.shape[0], dtype=dtype)
    u2 = torch.zeros(x.shape[0], w2.shape[0], dtype=dtype)
    r1, r2 = u1.clone(), u2.clone()
    basal = x @ w1.T
    held = torch.zeros_like(u1)
    for t in range(T):
        if t % every == 0:
            source = r1.to(torch.bfloat16).to(dtype) if bfloat16 else r1
            held = source @ lat_op.T if lateral else torch.zeros_like(u1)
        apical = r2 @ wfb.T + EPS * (2 * GAMMA * held + LEAK * r1)
        u1 = u1 + ETA * (-LEAK * u1 + (basal - u1) / EPS + (apical - u1) / EPS)
        r1 = u1.clamp(0, 1)
        apical2 = GAMMA * r2 @ b2.T + LEAK * r2
        u2 = u2 + ETA * (-LEAK * u2 + (r1 @ w2.T - u2) / EPS + (apical2 - u2))
        r2 = u2.clamp(0, 1)
    return u1.double(), u2.double()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="run.h5 of a CorInfoMax-A-inf 784-500-10 MNIST run")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--every", type=int, nargs="+", default=[2, 3, 4, 5, 10])
    args = parser.parse_args()
    with h5py.File(args.run, "r") as fh:
        weights = {k: torch.tensor(fh[f"network/{k}"][()]).double()
                   for k in ("ff1", "ff2", "fb1", "lat1", "lat2")}
    x = load_dataset("mnist").test_x[:args.samples].double()
    exact = free_phase(weights, x, torch.float64)
    labels = exact[1].argmax(1)
    variants = [("float32, every step", dict(dtype=torch.float32)),
                ("float32, bfloat16 product", dict(dtype=torch.float32, bfloat16=True))]
    variants += [(f"float64, held over {k} steps", dict(dtype=torch.float64, every=k))
                 for k in args.every]
    variants.append(("float64, no lateral term", dict(dtype=torch.float64, lateral=False)))
    print(f"{args.samples} MNIST test images, free phase of {T} steps; change against exact "
          "float64 steps")
    print(f"{'variant':30s} {'max |du| hidden':>16s} {'output':>10s} {'predictions':>12s}")
    for name, options in variants:
        u1, u2 = free_phase(weights, x, **options)
        changed = int((u2.argmax(1) != labels).sum())
        print(f"{name:30s} {float((u1 - exact[0]).abs().max()):16.2e} "
              f"{float((u2 - exact[1]).abs().max()):10.2e} {changed:12d}")


if __name__ == "__main__":
    main()
