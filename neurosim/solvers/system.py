"""Integrating a system whose state is a tuple of tensors, y' = f(t, y), on the output grid
of a step schedule: explicit Runge-Kutta solvers step it with their tableau, torchdiffeq
methods integrate it between output times (adaptive ones with rtol/atol). Used for
potentials and plastic weights integrated together (neurosim.plasticity.continuous)."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch

from ..errors import ConfigError
from .base import FixedStepSolver, Solver
from .external import TorchDiffEq
from .limits import decay_rates, discontinuous_stimuli
from .schedules import time_grid
from .tableau import explicit_rk_step

#: what to do when the joint system is stiff (no implicit solver integrates tuple states)
SYSTEM_STIFF_ADVICE = (
    "Implicit solvers cannot integrate plastic weights together with the potentials: run the "
    "rules every N steps instead (--plasticity N, or plasticity = { every = N } in "
    "[simulation]) with --solver bdf, or use a fixed-step solver (euler, heun, rk4) with a dt "
    "below the fastest time scale")

State = tuple[torch.Tensor, ...]


def check_system_solver(solver: Solver) -> None:
    """Raise a ConfigError unless ``solver`` can integrate a tuple state."""
    if isinstance(solver, TorchDiffEq) or (isinstance(solver, FixedStepSolver)
                                           and getattr(solver, "tableau", None) is not None):
        return
    raise ConfigError(f'solver "{solver.name}" cannot integrate weights together with the '
                      "potentials; use an explicit Runge-Kutta solver (euler, heun, rk4) or a "
                      "torchdiffeq method (dopri5, bosh3, ...).")


def integrate_system(f: Callable[[float, State], State], y: Sequence[torch.Tensor], *,
                     solver: Solver, schedule, n_steps: int, step0: int = 0,
                     t0: float = 0.0) -> Iterator[tuple[int, float, State]]:
    """Yield (step, t, y) after each output step from ``step0`` to ``n_steps``. torchdiffeq
    methods integrate in segments of ``solver.segment`` output steps aligned to multiples of
    it (as :func:`neurosim.solvers.solve` does, so a resumed run repeats the computation)."""
    check_system_solver(solver)
    y, k, t = tuple(y), step0, t0
    time = time_grid(schedule, step0, t0)
    if isinstance(solver, FixedStepSolver):
        while k < n_steps:
            y = explicit_rk_step(f, t, y, schedule(k), solver.tableau)
            k, t = k + 1, time(k, t)
            yield k, t, y
        return
    from torchdiffeq import odeint
    unbounded = odeint          # bounded per segment below (max_rhs_evals per output interval)
    solver.horizon = (schedule, step0, n_steps, t0)
    net = getattr(f, "net", None)
    decay = decay_rates(net.slots.values()) if net is not None else ()
    # the stiffness diagnosis evaluates f's side-effect-free probe (a plastic system's runs no
    # rule and writes no weight), or f itself
    make_probe = getattr(f, "make_probe", None)
    stimuli = discontinuous_stimuli(getattr(f, "drive", None))
    while k < n_steps:
        end = min(n_steps, (k // solver.segment + 1) * solver.segment)
        times = [t]
        for j in range(k, end):
            times.append(time(j, times[-1]))
        options = dict(solver.options)
        if solver.method in ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams") \
                and "step_size" not in options:
            options["step_size"] = float(min(b - a for a, b in zip(times, times[1:])))
        grid = torch.tensor(times, dtype=y[0].dtype, device=y[0].device)
        odeint = solver.bounded(unbounded, times, decay=decay, stiff_advice=SYSTEM_STIFF_ADVICE,
                                evals_so_far=(lambda: f.evals) if hasattr(f, "evals") else None,
                                make_probe=make_probe, stimuli=stimuli)
        path = odeint(lambda s, state: f(float(s), state), y, grid, method=solver.method,
                      rtol=solver.rtol, atol=solver.atol, options=options)
        for i in range(1, len(times)):
            y = tuple(component[i] for component in path)
            k, t = k + 1, times[i]
            yield k, t, y
