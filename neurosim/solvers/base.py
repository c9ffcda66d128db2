"""The solver interface and the one ``solve`` function every run goes through.

Two kinds of solver share one loop:

- :class:`FixedStepSolver` advances the state in place by one step of size ``dt_k`` (the
  step-size schedule gives ``dt_k``); adding one is a class with ``name`` and ``step``.
- :class:`ContinuousSolver` integrates between output times with its own (possibly
  adaptive) internal steps; the schedule's steps are then only the output grid. It integrates
  in segments of ``segment`` output steps that start at fixed multiples of ``segment`` so that
  a run resumed from a checkpoint at a segment boundary repeats the same computation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from ..dynamics import NeuralState, PhaseDynamics
from ..errors import ConfigError, SimulationError
from .schedules import time_grid


@dataclass
class SolveStats:
    """What a solve did: steps taken, right-hand-side evaluations, final time and residual;
    ``path``: "fused" when the steps ran on the compiled loop (neurosim.dynamics.fused), the
    reason it did not when it applies to the solver but not to this solve, else None."""

    steps: int = 0
    rhs_evals: int = 0
    t: float = 0.0
    residual: float | None = None
    converged: bool | None = None
    path: str | None = None


class Solver:
    """Base of every solver (:class:`FixedStepSolver`, :class:`ContinuousSolver`).
    ``supports_noise``: the solver takes discrete random steps (noise, stochastic
    activations drawn once per step)."""

    name: ClassVar[str] = "solver"
    supports_noise: ClassVar[bool] = False

    def config(self) -> dict:
        """The solver's name and settings (its repr is saved with simulation checkpoints)."""
        return {"name": self.name}


class FixedStepSolver(Solver):
    """A solver that advances the state in place by one step of size dt. ``fused``: the
    form of the compiled many-step loop (neurosim.dynamics.fused) that computes the same
    steps, "jacobi" or "gauss-seidel", or None."""

    order: ClassVar[int] = 1
    fused: ClassVar[str | None] = None

    def step(self, dynamics: PhaseDynamics, state: NeuralState, dt: float) -> None:
        """Advance ``state`` in place by one step of size ``dt``: u, then r = sigma(u)."""
        raise NotImplementedError


class ContinuousSolver(Solver):
    """A solver that integrates from times[0] to each later time, returning the potentials."""

    segment: int = 64
    # (schedule, step0, n_steps, t0) of the solve in progress, set by :func:`solve`: lets a
    # solver that gives up say how far the run had to go (neurosim.solvers.limits.run_end)
    horizon: tuple | None = None

    def integrate(self, dynamics: PhaseDynamics, state: NeuralState,
                  times: list[float]) -> list[torch.Tensor]:
        """Integrate du/dt = f(t, u) from ``state`` (at ``times[0]``, left unchanged) and return
        u at every one of ``times``, the start included."""
        raise NotImplementedError


@dataclass
class SteadyState:
    """Stop once max |du/dt| < tol, checked every ``check_every`` steps and not before time
    ``after`` (e.g. the end of a stimulus); ``max_steps`` bounds the run (reaching it leaves
    ``converged = False``)."""

    tol: float = 1e-6
    check_every: int = 1
    max_steps: int = 100_000
    after: float = float("-inf")


@dataclass
class Observer:
    """Called as ``callback(step, t, state)`` after every ``every``-th step."""

    callback: Callable[[int, float, NeuralState], None]
    every: int = 1


#: solvers whose discrete steps define held products (projections with refresh_every > 1)
HOLDING_SOLVERS = ("euler", "gs-euler")


def solve(dynamics: PhaseDynamics, state: NeuralState, *, solver: Solver, schedule,
          n_steps: int, step0: int = 0, t0: float = 0.0, observers: list[Observer] = (),
          steady: SteadyState | None = None, check_finite_every: int = 1,
          progress=None, after_step: Callable[[int, float], None] | None = None,
          probes: list[Probe] = (), after_every: int = 1) -> SolveStats:
    """Advance ``state`` in place from step ``step0`` (time ``t0``) to step ``n_steps``.

    ``schedule(k)`` gives the step size of step k (k counts from the start of the phase, so a
    run resumed at ``step0`` continues the schedule where it stopped); observers see the state
    after steps that are multiples of their ``every``, probes record columns of it (without
    Python work per step on the fused path); ``steady`` stops early at a fixed point;
    ``after_step(k, t)`` runs after each step that is a multiple of ``after_every`` and at
    the end (fixed-step solvers; e.g. checkpoints), or after each segment (continuous ones);
    ``progress`` is a tqdm-like bar updated by the number of steps done.

    Fixed-step solvers with a ``fused`` form run on the compiled loop of
    neurosim.dynamics.fused where it applies, in chunks that end wherever Python must act
    (a due observer, a steady-state check, ``after_every``)."""
    if steady is not None:
        n_steps = min(n_steps, step0 + steady.max_steps)
    if dynamics.stochastic and not solver.supports_noise:
        raise SimulationError(f'solver "{solver.name}" cannot integrate populations with noise; '
                              "use a fixed-step solver (euler, gs-euler) for stochastic networks.")
    if dynamics.drawn and not solver.supports_noise:
        raise SimulationError(
            f'solver "{solver.name}" cannot integrate populations with stochastic activations '
            f"({', '.join(dynamics.drawn)}): their activity is a fresh random draw per step, "
            "not a function of u. Use euler or gs-euler, which draw it from the phase's "
            "generator.")
    held = [s.name for s in dynamics.slots if s.low_refresh > 1]
    if held and solver.name not in HOLDING_SOLVERS:
        raise ConfigError(f"population(s) {', '.join(held)} hold products over several steps "
                          f'(a projection with refresh_every > 1), which only the discrete '
                          f"steps of {' and '.join(HOLDING_SOLVERS)} define; solver "
                          f'"{solver.name}" evaluates du/dt its own way. Use one of those '
                          "solvers, or remove refresh_every.")
    stats = SolveStats(steps=step0, t=t0)
    evals0 = dynamics.rhs_evals
    dynamics.step_index = step0
    k, t = step0, t0
    time = time_grid(schedule, step0, t0)
    dynamics.set_time(state, t)

    def visit(k: int, t: float) -> bool:
        for obs in observers:
            if k % obs.every == 0:
                obs.callback(k, t, state)
        if check_finite_every and k % check_finite_every == 0:
            dynamics.check_finite(state, k)
        if steady is not None and k % steady.check_every == 0 and t >= steady.after:
            stats.residual = float(dynamics.residual(state))
            if stats.residual < steady.tol:
                stats.converged = True
                return True
        return False

    done = False
    fused = None
    if isinstance(solver, FixedStepSolver) and k < n_steps:
        from ..dynamics.fused import stepper
        fused, stats.path = stepper(dynamics, state, solver)
    if fused is not None and dynamics.drive is not None:
        # inputs driven by stimuli change their r between the loop's calls only: such
        # probes read the state at chunk ends, as observers
        clamped = [(s.r_cols.start, s.r_cols.stop) for s in dynamics.net.slots.values()
                   if s.u_cols is None]
        between = [p for p in probes if p.source == "r" and any(
            bool(((torch.as_tensor(p.columns) >= lo) & (torch.as_tensor(p.columns) < hi)).any())
            for lo, hi in clamped)]
        observers = [*observers, *(p.as_observer() for p in between)]
        probes = [p for p in probes if all(p is not q for q in between)]
    if fused is None:
        observers = [*observers, *(p.as_observer() for p in probes)]
    if fused is not None:
        k, t, done = _solve_fused(fused, dynamics, state, time, k, t, n_steps,
                                  observers, probes, steady, visit, after_step, after_every,
                                  progress, check_finite_every)
    elif isinstance(solver, FixedStepSolver) and not (observers or steady or check_finite_every
                                                      or progress or after_step or
                                                      dynamics.drive):
        # fast path: nothing to do between steps (an ensemble's large states member by member)
        apart = dynamics.members_apart(state) or [(dynamics, state)]
        evals = apart[0][0].rhs_evals
        for part, part_state in apart:
            part.step_index = k
            for j in range(k, n_steps):
                solver.step(part, part_state, schedule(j))
        if apart[0][0] is not dynamics:        # one member's evaluations, as in its own run
            dynamics.rhs_evals += apart[0][0].rhs_evals - evals
            dynamics.silent.clear()
        for j in range(k, n_steps):
            t = time(j, t)
        if apart[0][0] is not dynamics and k < n_steps:   # the members held the phase's
            dynamics.stepped_to(n_steps)                  # products (their slices of them)
        k = max(k, n_steps)
        dynamics.t = t
    elif isinstance(solver, FixedStepSolver):
        while k < n_steps and not done:
            solver.step(dynamics, state, schedule(k))
            k, t = k + 1, time(k, t)
            dynamics.set_time(state, t)
            done = visit(k, t)
            if after_step is not None and (k % after_every == 0 or done or k == n_steps):
                after_step(k, t)
            if progress is not None:
                progress.update(1)
    else:
        solver.horizon = (schedule, k, n_steps, t)
        while k < n_steps and not done:
            end = min(n_steps, (k // solver.segment + 1) * solver.segment)
            times = [t]
            for j in range(k, end):
                times.append(time(j, times[-1]))
            path = solver.integrate(dynamics, state, times)
            for i, u in enumerate(path[1:], start=1):
                state.u.copy_(u)
                dynamics.net.sync_activity(state)
                k, t = k + 1, times[i]
                dynamics.set_time(state, t)
                done = visit(k, t)
                if progress is not None:
                    progress.update(1)
                if done:
                    break
            if after_step is not None:
                after_step(k, t)
    stats.steps, stats.t = k, t
    stats.rhs_evals = dynamics.rhs_evals - evals0
    if steady is not None and stats.converged is None:
        stats.converged = False
    return stats


@dataclass
class Probe:
    """Record columns of ``state.u`` (``source`` "u") or ``state.r`` ("r") after every step
    that is a multiple of ``every``: ``sink(steps, times, values)`` gets them in blocks
    (values: records x batch x len(columns), a buffer that is reused after the call)."""

    source: str
    columns: torch.Tensor
    every: int
    sink: Callable[[list[int], list[float], torch.Tensor], None]

    def as_observer(self) -> Observer:
        """The same records, one at a time (eager and continuous paths)."""
        def record(k: int, t: float, state: NeuralState) -> None:
            values = state.u if self.source == "u" else state.r
            columns = torch.as_tensor(self.columns).to(values.device, torch.int64)
            self.sink([k], [t], values.index_select(-1, columns).unsqueeze(0))
        return Observer(record, self.every)


MAX_CHUNK = 2048       # steps per call of the fused loop (progress bars move between calls)
PROBE_BYTES = 64 << 20  # ... fewer where the probes' records of a chunk would pass this size


def _stimulus_currents(drive, t: float, times: list[float]) -> dict | None:
    """The drive's currents at the start of each step of a chunk (the state's time, as the
    eager step reads them): population -> steps x rows x n; None without a drive."""
    if drive is None:
        return None
    starts = [t, *times[:-1]]
    per_step = [drive.currents(s) for s in starts]
    out = {}
    for key in {key for currents in per_step for key in currents}:
        values = [currents.get(key) for currents in per_step]
        like = next(v for v in values if v is not None)
        rows = max(v.shape[0] if v.dim() == 2 else 1 for v in values if v is not None)
        block = like.new_zeros((len(values), rows, like.shape[-1]))
        for i, value in enumerate(values):
            if value is not None:
                block[i] = value.reshape(-1, like.shape[-1])
        out[key] = block
    return out


def _solve_fused(fused, dynamics, state, time, k, t, n_steps, observers, probes,
                 steady, visit, after_step, after_every, progress, check_finite_every):
    """The fixed-step loop on the compiled loop: chunks of steps up to the next step where an
    observer is due, the steady state is checked or ``after_step`` must run. With
    ``check_finite_every`` the loop stops at the step that made a potential non-finite and
    that step is reported (the eager path reports the next multiple of it); with 0 it runs
    on, as the eager path does."""
    every = [obs.every for obs in observers]
    if steady is not None:
        every.append(steady.check_every)
    if after_step is not None:
        every.append(after_every)
    loop_probes = []
    per_step = sum(state.u[..., 0].numel() * torch.as_tensor(p.columns).numel() *
                   state.u.element_size() / p.every for p in probes)
    chunk = max(1, min(MAX_CHUNK, int(PROBE_BYTES // per_step) if per_step else MAX_CHUNK))
    for p in probes:
        width = (state.u if p.source == "u" else state.r).shape[-1]
        columns = torch.as_tensor(p.columns).to("cpu", torch.int64).reshape(-1).contiguous()
        if p.source not in ("u", "r") or (columns.numel() and not
                                          (0 <= int(columns.min()) and
                                           int(columns.max()) < width)):
            raise SimulationError(f"Probe(source={p.source!r}) records columns "
                                  f"{columns.tolist()[:8]}...; give source 'u' or 'r' and "
                                  f"columns in [0, {width}).")
        loop_probes.append((p.source, columns, p.every, torch.empty(
            (min(chunk // p.every + 1, chunk), *state.u.shape[:-1], columns.numel()),
            dtype=state.u.dtype, device="cpu")))
    buffers = [probe[3] for probe in loop_probes]
    done = False
    while k < n_steps and not done:
        stop = min(n_steps, k + chunk, *((k // e + 1) * e for e in every))
        dts, times = time.block(k, stop, t)
        taken = fused.advance(state, dts, k, loop_probes, check=bool(check_finite_every),
                              stimuli=_stimulus_currents(dynamics.drive, t, times))
        for probe, buffer in zip(probes, buffers):
            period = probe.every
            first = (k // period + 1) * period          # the first due step after k
            steps = list(range(first, k + taken + 1, period))
            if steps:
                probe.sink(steps, times[first - k - 1:taken:period], buffer[:len(steps)])
        k, t = k + taken, times[taken - 1]
        dynamics.set_time(state, t)
        if taken < len(dts):                     # a potential became non-finite
            dynamics.check_finite(state, k)      # raises
        done = visit(k, t)
        if after_step is not None and (k % after_every == 0 or done or k == n_steps):
            after_step(k, t)
        if progress is not None:
            progress.update(taken)
    return k, t, done
