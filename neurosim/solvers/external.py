"""Adapters to external integrators: torchdiffeq (any method, adaptive ones with rtol/atol)
and scipy's ``solve_ivp`` (BDF, LSODA, Radau for stiff problems)."""
from __future__ import annotations

import numpy as np
import torch

from ..dynamics import NeuralState, PhaseDynamics
from ..errors import ConfigError, SimulationError
from .base import ContinuousSolver


class TorchDiffEq(ContinuousSolver):
    """``torchdiffeq.odeint`` with a given method ("dopri5", "bosh3", "rk4", "euler", ...)."""

    def __init__(self, method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
                 segment: int = 64, **options):
        try:
            import torchdiffeq  # noqa: F401
        except ImportError:
            raise ConfigError("torchdiffeq is not installed; `pip install torchdiffeq`.") from None
        from torchdiffeq._impl.odeint import SOLVERS as methods
        if method not in methods:
            from ..errors import did_you_mean
            raise ConfigError(f'unknown torchdiffeq method "{method}".{did_you_mean(method, methods)}'
                              f" Valid methods: {', '.join(sorted(methods))}.")
        self.method, self.rtol, self.atol, self.segment = method, rtol, atol, segment
        self.options = options
        self.name = method

    def config(self) -> dict:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol, "segment": self.segment,
                **self.options}

    def integrate(self, dynamics: PhaseDynamics, state: NeuralState, times):
        from torchdiffeq import odeint
        t = torch.tensor(times, dtype=torch.float64, device=state.u.device)
        options = dict(self.options)
        if self.method in ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams") \
                and "step_size" not in options:
            options["step_size"] = float(min(np.diff(times)))
        with torch.inference_mode(False), torch.no_grad():
            # cloned outside inference mode: rhs writes into it in place (Simulation.run
            # integrates under torch.inference_mode())
            scratch = state.r.clone()
            path = odeint(lambda _t, u: dynamics.rhs(u, scratch), state.u.clone(), t.to(state.u.dtype),
                          method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        return list(path)


class ScipyIVP(ContinuousSolver):
    """``scipy.integrate.solve_ivp`` on the flattened potentials (float64). Implicit methods
    get the exact Jacobian, block-diagonal over samples:
    J = diag(rate) (-diag(d) + K diag(sigma'(u)))."""

    implicit = ("BDF", "Radau", "LSODA")

    def __init__(self, method: str = "BDF", rtol: float = 1e-7, atol: float = 1e-9,
                 segment: int = 64, dense_jacobian_limit: int = 4096):
        methods = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
        upper = {m.upper(): m for m in methods}
        if method.upper() not in upper:
            from ..errors import did_you_mean
            raise ConfigError(f'unknown scipy method "{method}".'
                              f"{did_you_mean(method.lower(), [m.lower() for m in methods])} "
                              f"Valid methods: {', '.join(methods)}.")
        self.method = upper[method.upper()]
        self.rtol, self.atol, self.segment = rtol, atol, segment
        self.dense_jacobian_limit = dense_jacobian_limit
        self.name = f"scipy-{self.method.lower()}"

    def config(self) -> dict:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol, "segment": self.segment}

    def integrate(self, dynamics: PhaseDynamics, state: NeuralState, times):
        from scipy.integrate import solve_ivp
        shape, dtype, device = state.u.shape, state.u.dtype, state.u.device
        # evaluate in float64 whatever the network's dtype: a float32 rhs is a staircase in y
        # that stalls the Newton iterations of implicit methods (step size -> 0)
        work = dynamics if dtype == torch.float64 else PhaseDynamics(
            dynamics.net, {k: v.to(torch.float64) for k, v in dynamics.operators.items()},
            {k: v.to(torch.float64) for k, v in dynamics.currents.items()}, dynamics.generator)
        scratch = state.r.to(torch.float64, copy=True)

        def fun(_t, y):
            u = torch.from_numpy(y).to(device).view(shape)
            return work.rhs(u, scratch).cpu().numpy().ravel()

        kwargs = {}
        if self.method in self.implicit and shape[1] <= self.dense_jacobian_limit:
            kwargs["jac"] = _jacobian_function(work, shape, sparse=self.method != "LSODA")
        y0 = state.u.to(torch.float64).cpu().numpy().ravel()
        try:
            sol = solve_ivp(fun, (times[0], times[-1]), y0, method=self.method, t_eval=times,
                            rtol=self.rtol, atol=self.atol, **kwargs)
        except MemoryError:
            raise SimulationError(
                f'scipy solver "{self.method}" ran out of memory for {y0.size} state variables '
                "(its Jacobian is dense); use bdf (sparse Jacobian), dopri5 or a fixed-step "
                "solver, or a smaller batch.") from None
        finally:
            if work is not dynamics:
                dynamics.rhs_evals += work.rhs_evals
        if not sol.success:
            raise SimulationError(f'scipy solver "{self.method}" failed between t={times[0]:g} '
                                  f"and t={times[-1]:g}: {sol.message}")
        return [torch.from_numpy(sol.y[:, i]).to(device, dtype).view(shape)
                for i in range(sol.y.shape[1])]


def _jacobian_function(dynamics: PhaseDynamics, shape, sparse: bool):
    """Exact Jacobian of the Jacobi right-hand side (block-diagonal over the batch)."""
    import scipy.sparse as sp
    n = shape[1]
    coupling = np.zeros((n, n))
    rate = np.zeros(n)
    decay = np.zeros(n)
    for slot in dynamics.slots:
        rate[slot.u_cols], decay[slot.u_cols] = slot.rate, slot.decay
        kt = dynamics.operators.get(slot.name)
        if kt is None:
            continue
        kt = kt.to(torch.float64).cpu().numpy()
        for src in dynamics.slots:
            lo = src.r_cols.start - slot.source_cols.start
            if 0 <= lo and src.r_cols.stop <= slot.source_cols.stop:
                coupling[slot.u_cols, src.u_cols] = kt[lo:lo + src.size].T

    def jac(_t, y):
        u = torch.from_numpy(y).view(shape)
        slope = np.empty(shape)
        for slot in dynamics.slots:
            slope[:, slot.u_cols] = slot.activation.derivative(u[:, slot.u_cols]).numpy()
        blocks = [rate[:, None] * (coupling * slope[b][None, :] - np.diag(decay))
                  for b in range(shape[0])]
        return sp.block_diag(blocks, format="csc") if sparse else \
            sp.block_diag(blocks).toarray()

    return jac
