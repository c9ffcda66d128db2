"""Pluggable ODE solvers behind one interface, chosen per run by name.

Names: "euler", "gs-euler" (layer-ordered Gauss-Seidel Euler, CorInfoMax's scheme), "heun",
"rk4"; any torchdiffeq method as "dopri5", "bosh3", "adaptive_heun", "dopri8" or
"torchdiffeq:<method>"; scipy ``solve_ivp`` as "bdf", "lsoda", "radau", "rk45" or
"scipy:<method>". Adaptive solvers take ``rtol``/``atol`` and ``max_rhs_evals``, the
right-hand-side evaluations allowed per output interval, which also sets the run's budget
(see neurosim.solvers.limits).
"""
from __future__ import annotations

from ..errors import ConfigError, did_you_mean
from .base import (ContinuousSolver, FixedStepSolver, Observer, Probe, SolveStats, Solver,
                   SteadyState,
                   solve)
from .external import ScipyIVP, TorchDiffEq
from .fixed import RK4, Euler, GaussSeidelEuler, Heun
from .limits import DEFAULT_MAX_RHS_EVALS, StiffnessWarning
from .schedules import ConstantStep, InverseTimeDecay, make_schedule

FIXED_STEP = {cls.name: cls for cls in (Euler, GaussSeidelEuler, Heun, RK4)}
TORCHDIFFEQ_SHORT = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
SCIPY_SHORT = {"bdf": "BDF", "lsoda": "LSODA", "radau": "Radau", "rk45": "RK45",
               "rk23": "RK23", "dop853": "DOP853"}
SOLVER_NAMES = (*FIXED_STEP, *TORCHDIFFEQ_SHORT, *SCIPY_SHORT, "torchdiffeq:<method>",
                "scipy:<method>")


def get_solver(name: str, **options) -> Solver:
    """Build a solver by name (see module docstring); ``options`` go to its constructor
    (e.g. rtol, atol, max_rhs_evals for adaptive ones)."""
    if isinstance(name, Solver):
        return name
    key = str(name).lower()
    if key in ("layered-euler", "gauss-seidel"):
        key = "gs-euler"
    if key in FIXED_STEP:
        if options:
            raise ConfigError(f'solver "{name}" takes no options (got {sorted(options)}); '
                              "rtol, atol and max_rhs_evals apply to adaptive solvers only.")
        return FIXED_STEP[key]()
    if key.startswith("torchdiffeq:"):
        return TorchDiffEq(key.split(":", 1)[1], **options)
    if key in TORCHDIFFEQ_SHORT:
        return TorchDiffEq(key, **options)
    if key.startswith("scipy:"):
        return ScipyIVP(key.split(":", 1)[1], **options)
    if key in SCIPY_SHORT:
        return ScipyIVP(SCIPY_SHORT[key], **options)
    raise ConfigError(f'unknown solver "{name}".{did_you_mean(key, SOLVER_NAMES)} '
                      f"Valid solvers: {', '.join(SOLVER_NAMES)}.")


__all__ = ["ContinuousSolver", "FixedStepSolver", "Observer", "Probe", "SolveStats", "Solver",
           "SteadyState", "solve", "ScipyIVP", "TorchDiffEq", "RK4", "Euler", "GaussSeidelEuler",
           "Heun", "ConstantStep", "InverseTimeDecay", "make_schedule", "get_solver",
           "SOLVER_NAMES", "DEFAULT_MAX_RHS_EVALS", "StiffnessWarning"]
