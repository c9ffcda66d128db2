"""Fixed-step solvers. Each is one small class: a ``name`` and a ``step``."""
from __future__ import annotations

from ..dynamics import NeuralState, PhaseDynamics
from . import tableau as tableaux
from .base import FixedStepSolver


class Euler(FixedStepSolver):
    """Explicit Euler on the simultaneous (Jacobi) system: u <- u + dt f(u).
    With noise this is Euler-Maruyama."""

    name = "euler"
    order = 1
    tableau = tableaux.EULER
    supports_noise = True
    fused = "jacobi"

    def step(self, dynamics: PhaseDynamics, state: NeuralState, dt: float) -> None:
        """For all populations at once, u_p <- u_p + (h_p / rate_p) f_p(t, u) +
        sigma_p sqrt(h_p rate_p) xi with h_p = dt rate_p (so u <- u + dt f) or the population's
        ``fixed_step``, sigma_p its noise, xi ~ N(0, 1); then r <- sigma(u)."""
        dynamics.euler_step_(state, dt)


class GaussSeidelEuler(FixedStepSolver):
    """Layer-ordered Euler: populations updated in declaration order, each using the newest
    activities of the others (the discrete scheme of the CorInfoMax paper)."""

    name = "gs-euler"
    order = 1
    supports_noise = True
    fused = "gauss-seidel"

    def step(self, dynamics: PhaseDynamics, state: NeuralState, dt: float) -> None:
        """For each population p in declaration order: u_p <- u_p + (h_p / rate_p) f_p(t, u, r)
        (plus noise, h_p as in Euler) with the activities already updated in this step, then
        r_p <- sigma(u_p)."""
        dynamics.gauss_seidel_step_(state, dt)


class Heun(FixedStepSolver):
    """Heun's method (explicit trapezoid), order 2."""

    name = "heun"
    order = 2
    tableau = tableaux.HEUN

    def step(self, dynamics: PhaseDynamics, state: NeuralState, dt: float) -> None:
        """k1 = f(t, u), k2 = f(t + dt, u + dt k1); u <- u + dt (k1 + k2) / 2; r <- sigma(u)."""
        scratch, t = state.r.clone(), dynamics.t
        k1 = dynamics.rhs(state.u, scratch, t)
        k2 = dynamics.rhs(state.u + dt * k1, scratch, t + dt)
        state.u.add_(k1 + k2, alpha=dt / 2)
        dynamics.net.sync_activity(state)


class RK4(FixedStepSolver):
    """Classical fourth-order Runge-Kutta."""

    name = "rk4"
    order = 4
    tableau = tableaux.RK4

    def step(self, dynamics: PhaseDynamics, state: NeuralState, dt: float) -> None:
        """k1 = f(t, u), k2 = f(t + dt/2, u + dt k1/2), k3 = f(t + dt/2, u + dt k2/2),
        k4 = f(t + dt, u + dt k3); u <- u + dt (k1 + 2 k2 + 2 k3 + k4) / 6; r <- sigma(u)."""
        scratch, u, t = state.r.clone(), state.u, dynamics.t
        k1 = dynamics.rhs(u, scratch, t)
        k2 = dynamics.rhs(u + (dt / 2) * k1, scratch, t + dt / 2)
        k3 = dynamics.rhs(u + (dt / 2) * k2, scratch, t + dt / 2)
        k4 = dynamics.rhs(u + dt * k3, scratch, t + dt)
        u.add_(k1 + 2 * k2 + 2 * k3 + k4, alpha=dt / 6)
        dynamics.net.sync_activity(state)
