"""Oja's rule as a continuous-time plasticity rule (Oja 1982):

    tau_w dW/dt = < y x^T - (y y^T) W >      (batch mean; one row per output neuron)

For one linear neuron y = w^T x driven by inputs of covariance C, w converges to the unit
eigenvector of C's largest eigenvalue (the first principal component); with several outputs
this is Oja's subspace rule, whose rows span the top principal subspace. The rule defines
only ``derivative``: in a simulation with ``plasticity = { every = N }`` it takes one Euler
step of length ctx.dt, with ``plasticity = "continuous"`` the weights are integrated with the
potentials by the run's solver, and in training (``[protocol] type = "relax"``) dt = 1.

Use it from a model file next to this one as ``{ type = "oja:Oja", lr = 0.1 }`` (see
examples/oja_simulate.toml).
"""
from __future__ import annotations

import torch

from neurosim.plasticity import PlasticityRule


class Oja(PlasticityRule):
    name = "oja"
    ensemble_ready = True     # written for a leading member axis too (seed ensembles)

    def __init__(self, lr: float = 0.1):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.lr = float(lr)

    def derivative(self, ctx) -> torch.Tensor:
        x, y = ctx.pre(ctx.phases[0]), ctx.post(ctx.phases[0])
        hebb = y.mT @ x / ctx.batch_size
        decay = (y.mT @ y / ctx.batch_size) @ ctx.weight
        return (hebb - decay) * self.lr
