"""Bounds on the work of adaptive solvers, and a stiffness diagnosis for explicit ones.

One option, ``max_rhs_evals`` (default :data:`DEFAULT_MAX_RHS_EVALS` = 10,000), sets two
bounds on the right-hand-side evaluations of a run; exceeding either stops the run with one
:class:`SimulationError` line saying where it stopped, why, and what to change:

- per output interval: from the moment the integration enters an interval [t_k, t_k+1] of
  the output grid (the step schedule) until it passes t_k+1, at most ``max_rhs_evals``. A
  solve that stalls stops after at most that many evaluations, however long the run.
- per run (one :func:`neurosim.solvers.solve` or
  :func:`neurosim.solvers.system.integrate_system` call: a ``Simulation.run``, one phase of a
  training step), at most :func:`run_budget` = max(max_rhs_evals, n x rate) for n output
  steps, with rate = max(:data:`RUN_EVALS_PER_STEP` = 200, max_rhs_evals / 50) evaluations per
  output step on average. A healthy run averages far less (dopri5 ~5-40 per output step;
  implicit methods ~3-20), a transient may spend up to ``max_rhs_evals`` on one interval, and
  the whole run costs at most ~200 x n evaluations at the default instead of
  ``max_rhs_evals`` x n: a small output step no longer lets a stiff run crawl. Raising
  ``max_rhs_evals`` raises both bounds.

The count includes every evaluation the integrator makes (rejected steps, the initial step
selection, and for scipy's implicit methods without an analytic Jacobian, one evaluation per
state variable for each finite-difference Jacobian); the diagnosis's own evaluations are not
counted and change nothing (they run on copies, see ``make_probe`` of :class:`RhsBudget`).

It applies to torchdiffeq's adaptive Runge-Kutta methods (dopri5, dopri8, bosh3,
adaptive_heun, fehlberg2), whether they integrate the potentials (:class:`TorchDiffEq`) or
potentials and plastic weights together (:func:`neurosim.solvers.system.integrate_system`),
and to every scipy ``solve_ivp`` method (:class:`ScipyIVP`). Fixed-step methods make a fixed
number of evaluations per step and are not bounded.

Stiffness: an explicit method whose step is held at its stability limit, h ~ 1 / rho(J)
(rho: spectral radius of the Jacobian of the right-hand side, estimated by power iteration
on finite differences; held: rho h >= :data:`STABILITY_LIMITED`), while its fastest modes
decay far within an output step (rho dt >= :data:`FAST_VS_OUTPUT`) or within the run
(rho (t_end - t0) >= :data:`FAST_VS_RUN`), is integrating a stiff network. The diagnosis runs
when an error is raised, when an output interval takes more than :data:`WARN_STEPS` explicit
steps, and after 100, 200, 400, ... explicit steps of a run (cumulative, across output
intervals). A stiff run is then projected to t_end at its recent pace (evaluations per unit
time): if it would exceed its budget it stops at once, else a :class:`StiffnessWarning`
(once per solver) says so and what the run will cost. Both recommend an implicit solver,
with the ratio of the populations' decay rates (rate * (leak + conductances) of each linear
cell) as evidence.

Discontinuous stimuli (pulses, held samples, white or Ornstein-Uhlenbeck noise: piecewise
constant between grid points) make an adaptive solver shorten its steps at every jump; when
a bound is hit on a run that has them, the error names them and recommends a fixed-step
solver with a step at or below their grid instead.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections import deque

import numpy as np
import torch

from ..errors import ConfigError, NeurosimWarning, SimulationError

#: default right-hand-side evaluations allowed per output interval (~1,700 dopri5 steps)
DEFAULT_MAX_RHS_EVALS = 10_000
#: evaluations a run may average per output step (at least; max_rhs_evals / RUN_SHARE if larger)
RUN_EVALS_PER_STEP = 200
#: max_rhs_evals / RUN_SHARE: the per-step average of a run when max_rhs_evals is raised
RUN_SHARE = 50
#: explicit steps in one output interval, and in a run (then 2x, 4x, ...), that trigger the
#: stiffness check
WARN_STEPS = 100
#: rho * h at or above this: the step is held by stability (the explicit methods' stability
#: limits on the negative real axis lie between 2 and ~6 for rho * h)
STABILITY_LIMITED = 0.5
#: rho * (output step) at or above this: the fastest modes decay far within an output step
FAST_VS_OUTPUT = 100.0
#: rho * (run length) at or above this: an explicit method needs thousands of steps that an
#: implicit one does not
FAST_VS_RUN = 1e4
#: recent steps (torchdiffeq) or evaluations (scipy) whose pace projects a run's cost
_TRAIL = 384

IMPLICIT_ADVICE = ("Use an implicit solver: --solver bdf (or lsoda, radau; solver = \"bdf\" "
                   "in [simulation])")
LIMIT_ADVICE = ("raise the limit (--max-rhs-evals N, max_rhs_evals = N in [simulation], or "
                "max_rhs_evals= of the solver)")


class StiffnessWarning(NeurosimWarning):
    """An explicit adaptive solver is held to tiny steps by stability on a network that looks
    stiff (the command line prints it as one ``neurosim: warning:`` line)."""


def check_max_rhs_evals(value, where: str = "max_rhs_evals") -> int:
    """``value`` as a positive int, or a ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{where} must be a positive integer (right-hand-side evaluations "
                          f"allowed per output interval; default {DEFAULT_MAX_RHS_EVALS}), got "
                          f"{value!r}.")
    return int(value)


def run_rate(limit: int) -> int:
    """Evaluations a run may average per output step: max(200, ``limit`` / 50)."""
    return max(RUN_EVALS_PER_STEP, limit // RUN_SHARE)


def run_budget(limit: int, n_steps: int) -> int:
    """Evaluations allowed to a run of ``n_steps`` output steps under ``max_rhs_evals`` =
    ``limit``: max(limit, n_steps * :func:`run_rate` (limit))."""
    return max(int(limit), int(n_steps) * run_rate(limit))


def run_end(horizon) -> float | None:
    """t_end of a solve from ``(schedule, step0, n_steps, t0)`` (None when unknown or too
    long to add up)."""
    if horizon is None:
        return None
    schedule, step0, n_steps, t0 = horizon
    steps = n_steps - step0
    if getattr(schedule, "name", None) == "constant":
        return t0 + schedule.dt * steps
    if steps > 1_000_000:
        return None
    return t0 + sum(schedule(j) for j in range(step0, n_steps))


def decay_rates(slots) -> list[tuple[str, float]]:
    """(population, rate * d) of every linear cell with a decay d > 0: the rate at which its
    potential relaxes on its own."""
    return [(s.name, float(s.rate) * float(s.decay)) for s in slots
            if getattr(s, "u_cols", None) is not None and getattr(s, "cell", None) is None
            and s.decay > 0]


def discontinuous_stimuli(drive) -> list[tuple[str, str, float | None]]:
    """(name, kind, spacing of its jumps) of every stimulus of ``drive`` (a
    :class:`neurosim.stimuli.Drive`, or None) whose value jumps again and again: pulses, noise
    (``ou``, ``white_noise``) and samples held (``array``); a ``step`` jumps once or twice,
    which costs an adaptive solver a few dozen evaluations, and is not listed."""
    found = []
    for stim in getattr(drive, "stimuli", None) or ():
        wave = getattr(stim, "waveform", None)
        kind = getattr(wave, "kind", "")
        spacing = None
        if kind in ("ou", "white_noise"):
            spacing = getattr(wave, "dt", None)
        elif kind == "pulses":
            width, period = float(wave.width), float(wave.period)
            spacing = min(width, period - width) if period > width else width
        elif kind == "array" and getattr(wave, "interpolation", "hold") == "hold" \
                and getattr(wave, "times", None) is not None and len(wave.times) > 1:
            spacing = float((wave.times[1:] - wave.times[:-1]).min())
        else:
            continue
        found.append((str(stim.name), kind, None if spacing is None else float(spacing)))
    return found


def _flat(y):
    """(flat tensor, inverse) of a tensor, a tuple of tensors or a numpy vector."""
    if isinstance(y, np.ndarray):
        return torch.from_numpy(np.array(y, dtype=np.float64)), lambda v: v.numpy()
    if isinstance(y, torch.Tensor):
        return y.detach().reshape(-1), lambda v: v.view(y.shape)
    shapes = [c.shape for c in y]
    sizes = [c.numel() for c in y]

    def back(v):
        return tuple(part.view(shape) for part, shape in zip(v.split(sizes), shapes))
    return torch.cat([c.detach().reshape(-1) for c in y]), back


def spectral_radius(func, t, y, iterations: int = 16) -> float | None:
    """Estimate rho(J), J = d func(t, y) / dy, by power iteration on finite differences
    J v ~ (func(t, y + eps v) - func(t, y)) / eps. ``y`` (and what ``func`` returns) may be a
    tensor, a tuple of tensors or a numpy vector. None when the estimate fails."""
    try:
        with torch.no_grad():
            flat, back = _flat(y)
            f0, _ = _flat(func(t, back(flat.clone())))
            generator = torch.Generator().manual_seed(0)
            v = torch.randn(flat.shape, generator=generator, dtype=torch.float64)
            v = v.to(flat.device, flat.dtype)
            eps = math.sqrt(torch.finfo(flat.dtype).eps) * (1.0 + float(flat.norm()))
            estimate = None
            for _ in range(iterations):
                norm = float(v.norm())
                if not math.isfinite(norm) or norm == 0.0:
                    break
                v = v / norm
                fv, _ = _flat(func(t, back(flat + eps * v)))
                v = (fv - f0) / eps
                value = float(v.norm())
                if not math.isfinite(value):
                    break
                estimate = value
            return estimate
    except Exception:       # a diagnosis must never hide the error it explains
        return None


def _significant(value: float) -> int:
    """``value`` rounded up to two significant digits (a limit to suggest)."""
    if value <= 0:
        return 1
    scale = 10 ** max(0, int(math.floor(math.log10(value))) - 1)
    return int(math.ceil(value / scale) * scale)


class _GuardedFunction:
    """``func`` (t, y) -> dy/dt counting its calls for a :class:`RhsBudget`; torchdiffeq
    calls ``callback_step(t0, y0, dt)`` before every step it attempts."""

    def __init__(self, func, budget: "RhsBudget", times_from_calls: bool):
        self.func, self.budget, self.times_from_calls = func, budget, times_from_calls

    def __call__(self, t, y):
        if self.times_from_calls:
            self.budget.reached(t, y)
        self.budget.evaluated()
        return self.func(t, y)

    def callback_step(self, t0, y0, dt):
        self.budget.stepped(t0, y0, float(dt))


class RunTally:
    """What one run (one solve over ``horizon`` = (schedule, step0, n_steps, t0)) has spent so
    far, across the output intervals and segments that each :class:`RhsBudget` covers."""

    def __init__(self, horizon, times, limit: int):
        self.horizon = horizon
        if horizon is not None:
            _, step0, n_steps, t0 = horizon
            self.n_steps, self.t0, self.t_end = max(1, n_steps - step0), float(t0), \
                run_end(horizon)
        else:
            self.n_steps, self.t0, self.t_end = max(1, len(times) - 1), float(times[0]), \
                float(times[-1])
        self.budget = run_budget(limit, self.n_steps)
        self.rate = run_rate(limit)
        self.evals = 0                     # evaluations of the run so far
        self.steps = 0                     # explicit steps attempted (torchdiffeq)
        self.next_check = WARN_STEPS       # steps at which the stiffness check runs next
        self.interval_checked = False      # the check after a long output interval ran
        self.trail = deque(maxlen=_TRAIL)  # (position, evaluations) at recent steps
        self.next_start = float(times[0])  # where the next segment of this run starts

    @classmethod
    def of(cls, solver, times, limit: int) -> "RunTally":
        """The tally of the run ``solver`` is integrating (``solver.horizon``, set by
        :func:`neurosim.solvers.solve`) when ``times`` continue it, else a new one."""
        horizon = getattr(solver, "horizon", None)
        tally = getattr(solver, "_run_tally", None)
        if tally is None or horizon is None or tally.horizon is not horizon \
                or tally.next_start != float(times[0]):
            if horizon is not None and float(horizon[3]) == float(times[0]):
                tally = solver._run_tally = cls(horizon, times, limit)
            else:                          # not within a solve: this call is the run
                tally = cls(None, times, limit)
        tally.next_start = float(times[-1])
        return tally


class RhsBudget:
    """The evaluation bounds of one ``integrate`` call over the output times ``times`` (see
    module docstring). Wrap the integrator with :meth:`torchdiffeq` or :meth:`scipy`.

    ``explicit``: an explicit method (stiffness diagnosis applies); ``stages``: evaluations per
    step when steps are not reported (scipy); ``decay``: :func:`decay_rates` of the network;
    ``evals_so_far``: callable giving the evaluations of the phase so far (for the message);
    ``stiff_advice``: what to do when the network is stiff (default: an implicit solver);
    ``make_probe``: called once per diagnosis, returns a function (t, y) -> dy/dt like the
    integrated one that writes into nothing the integration uses and counts nothing (default:
    the integrated function itself); ``stimuli``: :func:`discontinuous_stimuli` of the run."""

    def __init__(self, solver, times, *, limit: int, explicit: bool, stages: int | None = None,
                 decay=(), evals_so_far=None, stiff_advice: str = IMPLICIT_ADVICE,
                 make_probe=None, stimuli=()):
        self.solver, self.times = solver, [float(x) for x in times]
        self.limit, self.explicit, self.stages = limit, explicit, stages
        self.decay, self.evals_so_far, self.stiff_advice = list(decay), evals_so_far, stiff_advice
        self.make_probe, self.stimuli = make_probe, list(stimuli)
        self.run = RunTally.of(solver, self.times, limit)
        self.func = None
        self.next = 1                      # index of the next output time not yet passed
        self.pos = self.times[0]           # furthest position of the integration
        self.start = self.times[0]         # where the current interval was entered
        self.count = 0                     # evaluations in the current interval
        self.steps = 0                     # steps in the current interval
        self.recent = deque(maxlen=64)     # recent step sizes (torchdiffeq)
        self.smallest = math.inf
        self.last = None                   # (t, y) of the latest step or evaluation

    # ------------------------------------------------------------------ wrapping
    def torchdiffeq(self, odeint):
        """``odeint`` whose right-hand side is counted (steps reported by callbacks)."""
        def guarded(func, y0, t, **kwargs):
            self.func = func
            return odeint(_GuardedFunction(func, self, False), y0, t, **kwargs)
        return guarded

    def scipy(self, solve_ivp):
        """``solve_ivp`` whose ``fun`` is counted (position from the evaluation times)."""
        def guarded(fun, t_span, y0, **kwargs):
            self.func = fun
            return solve_ivp(_GuardedFunction(fun, self, True), t_span, y0, **kwargs)
        return guarded

    # ------------------------------------------------------------------ counting
    def evaluated(self) -> None:
        self.count += 1
        run = self.run
        run.evals += 1
        if self.count > self.limit:
            raise SimulationError(self.message())
        if run.evals > run.budget:
            raise SimulationError(self.message("run"))
        if self.stages:                    # scipy: steps from evaluations
            run.trail.append((self.pos, run.evals))
            self._check_run()

    def stepped(self, t0, y0, dt: float) -> None:
        self.last = (t0, y0)
        self._advance(float(t0))
        self.steps += 1
        self.recent.append(dt)
        self.smallest = min(self.smallest, dt)
        self.run.steps += 1
        self.run.trail.append((self.pos, self.run.evals))
        self._check_run()

    def reached(self, t, y) -> None:
        self.last = (t, y)
        self._advance(float(t))

    def _advance(self, t: float) -> None:
        self.pos = max(self.pos, t)
        if self.next >= len(self.times) or self.pos < self.times[self.next]:
            return
        self._interval_done()
        while self.next < len(self.times) and self.pos >= self.times[self.next]:
            self.next += 1
        self.start, self.count, self.steps = self.times[self.next - 1], 0, 0
        self.recent.clear()

    def _steps_taken(self) -> float:
        if self.stages:
            return self.count / self.stages
        return self.steps

    def _run_steps(self) -> float:
        if self.stages:
            return self.run.evals / self.stages
        return self.run.steps

    def _step_size(self) -> float | None:
        """A typical step of the current interval: the median of the recent ones (reported
        by torchdiffeq) or the interval covered per step (scipy)."""
        if self.recent:
            return statistics.median(self.recent)
        steps = self._steps_taken()
        if steps >= 1 and self.pos > self.start:
            return (self.pos - self.start) / steps
        trail = self.run.trail
        if self.stages and len(trail) >= 2 and trail[-1][0] > trail[0][0]:
            return (trail[-1][0] - trail[0][0]) / ((trail[-1][1] - trail[0][1]) / self.stages)
        return None

    def _interval(self) -> tuple[float, float]:
        i = min(self.next, len(self.times) - 1)
        return self.times[i - 1], self.times[i]

    def _projected(self) -> float | None:
        """Evaluations the run would need to reach t_end at the pace of its recent steps
        (evaluations per unit time), those already made included; None when unknown."""
        run = self.run
        if run.t_end is None or len(run.trail) < 2:
            return None
        (t_a, e_a), (t_b, e_b) = run.trail[0], run.trail[-1]
        if not t_b > t_a:
            return None
        return run.evals + (e_b - e_a) / (t_b - t_a) * max(0.0, run.t_end - self.pos)

    # ------------------------------------------------------------------ diagnosis
    def diagnose(self) -> dict:
        """rho (spectral radius estimate), h (typical step), the decay ratio and whether the
        network looks stiff for this explicit solver."""
        lo, hi = self._interval()
        output = hi - lo
        rho = None
        if self.last is not None:
            probe = self.make_probe() if self.make_probe is not None else self.func
            if probe is not None:
                rho = spectral_radius(probe, *self.last)
        h = self._step_size()
        ratio = fast = slow = None
        if len(self.decay) >= 2:
            fast = max(self.decay, key=lambda item: item[1])
            slow = min(self.decay, key=lambda item: item[1])
            ratio = fast[1] / slow[1]
        span = None if self.run.t_end is None else self.run.t_end - self.run.t0
        if rho is not None and rho > 0:
            stiff = (h is None or rho * h >= STABILITY_LIMITED) and (
                rho * output >= FAST_VS_OUTPUT or (span is not None and rho * span >= FAST_VS_RUN))
        else:
            stiff = (ratio is not None and ratio >= 1e3
                     and fast[1] * output >= FAST_VS_OUTPUT)
        return {"rho": rho, "h": h, "ratio": ratio, "fast": fast, "slow": slow,
                "output": output, "stiff": bool(self.explicit and stiff)}

    def _evidence(self, d: dict) -> str:
        parts = []
        if d["rho"] is not None:
            parts.append(f"the Jacobian's spectral radius is ~{d['rho']:.2g}")
        if d["ratio"] is not None and d["ratio"] > 1:
            parts.append(f"the populations' decay rates span a ratio ~{d['ratio']:.2g} "
                         f"(\"{d['fast'][0]}\" {d['fast'][1]:.3g}, \"{d['slow'][0]}\" "
                         f"{d['slow'][1]:.3g})")
        return " and ".join(parts)

    def _stiff_sentence(self, d: dict) -> str:
        evidence = self._evidence(d)
        held = d["h"] if d["h"] is not None else 1.0 / d["rho"] if d["rho"] else None
        text = "The network looks stiff"
        if evidence:
            text += f": {evidence}"
        if held is not None:
            text += (f", so an explicit solver is held to steps of ~{held:.2g}, "
                     f"~{d['output'] / held:.2g} per output step of {d['output']:.3g}")
        return text + "."

    def _stimuli_sentence(self) -> str:
        """Why discontinuous stimuli cost an adaptive solver, and the fixed-step advice."""
        named = ", ".join(f'"{name}" ({kind}' + (f", jumps every {spacing:.3g}" if spacing
                                                 else "") + ")"
                          for name, kind, spacing in self.stimuli)
        grids = [spacing for _, _, spacing in self.stimuli if spacing]
        dt = (f" with --dt at or below {min(grids):.3g}, the finest of their grids" if grids
              else "")
        return (f"The stimuli {named} are discontinuous (held constant between grid points, "
                "then jumping), and an adaptive solver shortens its steps at every jump: use a "
                "fixed-step solver (--solver rk4 or euler; solver = \"rk4\" in [simulation])"
                f"{dt}")

    def _limit_advice(self, needed: float | None = None) -> str:
        if needed is None or needed <= self.run.budget:
            return LIMIT_ADVICE
        # the budget is max(limit, n * limit / RUN_SHARE) once limit / RUN_SHARE > 200
        value = _significant(max(self.limit + 1,
                                 min(needed, RUN_SHARE * needed / self.run.n_steps)))
        return f"{LIMIT_ADVICE[:-1]}; --max-rhs-evals {value} would cover this run)"

    def _where(self) -> str:
        name = getattr(self.solver, "name", "solver")
        t_end = self.run.t_end if self.run.horizon is not None else None
        return (f'solver "{name}" stopped at t={self.pos:.6g}'
                + (f" of t_end={t_end:.6g}" if t_end is not None else ""))

    def _detail(self, phase: bool = True) -> str:
        total = self.evals_so_far() if self.evals_so_far is not None and phase else None
        h = self._step_size()
        sizes = []
        if h is not None:
            sizes.append(f"step size ~{h:.2g}")
        if math.isfinite(self.smallest):
            sizes.append(f"smallest {self.smallest:.2g}")
        detail = "; ".join(([f"{total} in this phase so far"] if total is not None else [])
                           + sizes)
        return f" ({detail})" if detail else ""

    def _budget_words(self) -> str:
        run = self.run
        return (f"the {run.budget} a run of {run.n_steps} output step"
                f"{'' if run.n_steps == 1 else 's'} may use ({run.rate} per output step on "
                f"average: max({RUN_EVALS_PER_STEP}, max_rhs_evals / {RUN_SHARE}), and at least "
                "max_rhs_evals)")

    def message(self, bound: str = "interval", d: dict | None = None,
                projected: float | None = None) -> str:
        """The one-line error of a bound that was hit: ``bound`` "interval" (max_rhs_evals in
        one output interval), "run" (the run's budget spent) or "projected" (a stiff run that
        would exceed its budget, ``projected`` evaluations; ``d``: its diagnosis)."""
        lo, hi = self._interval()
        if bound == "interval":
            head = (f"{self._where()}: {self.limit} right-hand-side evaluations (max_rhs_evals) "
                    f"did not get it across the output interval [{lo:.6g}, {hi:.6g}]"
                    f"{self._detail()}.")
        elif bound == "run":
            head = (f"{self._where()}: it has made {self.run.evals - 1} right-hand-side "
                    f"evaluations, {self._budget_words()}{self._detail(phase=False)}.")
            projected = self._projected()
        else:
            head = (f"{self._where()}: at its present pace the run would need "
                    f"~{projected:.2g} right-hand-side evaluations to reach t_end, more than "
                    f"{self._budget_words()}.")
        limit = self._limit_advice(projected)
        rtol, atol = getattr(self.solver, "rtol", None), getattr(self.solver, "atol", None)
        tol = f"rtol={rtol}, atol={atol}"
        if not self.explicit:
            if self.stimuli:
                return f"{head} {self._stimuli_sentence()}; or {limit}."
            return (f"{head} Loosen the tolerances (now {tol}), or {limit}; an implicit "
                    "solver needing this many evaluations suggests very fast or discontinuous "
                    "inputs.")
        d = self.diagnose() if d is None else d
        if d["stiff"]:
            return f"{head} {self._stiff_sentence(d)} {self.stiff_advice}; or {limit}."
        if self.stimuli:
            return f"{head} {self._stimuli_sentence()}; or {limit}."
        why = ""
        if d["rho"] is not None and d["h"] is not None:
            why = (f" The steps are limited by accuracy, not stability (spectral radius "
                   f"~{d['rho']:.2g}, step x radius ~{d['rho'] * d['h']:.2g}): the dynamics are "
                   "fast or the tolerances tight.")
        return (f"{head}{why} Loosen the tolerances (now {tol}), shorten the output step (dt), "
                f"or {limit}.")

    def _warn(self, d: dict, opening: str) -> None:
        """A StiffnessWarning, once per solver."""
        if getattr(self.solver, "_stiffness_warned", False):
            return
        self.solver._stiffness_warned = True
        warnings.warn(StiffnessWarning(
            f"{opening} {self._stiff_sentence(d)} {self.stiff_advice}: it takes far fewer "
            "steps."), stacklevel=2)

    def _interval_done(self) -> None:
        """Once per run, when an explicit method needed many steps for an interval: warn if
        the network looks stiff."""
        run = self.run
        if not self.explicit or self._steps_taken() < WARN_STEPS or run.interval_checked:
            return
        run.interval_checked = True
        d = self.diagnose()
        if d["stiff"]:
            name = getattr(self.solver, "name", "solver")
            self._warn(d, f'solver "{name}" took ~{self._steps_taken():.0f} steps for one '
                          f"output interval of {d['output']:.3g}.")
            run.next_check = math.inf

    def _check_run(self) -> None:
        """After 100, 200, 400, ... explicit steps of the run: if the network looks stiff,
        stop when the run at its pace would exceed its budget, else warn (once)."""
        run = self.run
        if not self.explicit or self._run_steps() < run.next_check:
            return
        run.next_check *= 2
        d = self.diagnose()
        if not d["stiff"]:
            return
        run.next_check = math.inf
        projected = self._projected()
        if projected is not None and projected > run.budget:
            raise SimulationError(self.message("projected", d, projected))
        name = getattr(self.solver, "name", "solver")
        cost = (f" At this pace the run to t_end={run.t_end:.6g} takes "
                f"~{projected:.2g} right-hand-side evaluations." if projected is not None else "")
        self._warn(d, f'solver "{name}" has taken {self._run_steps():.0f} steps up to '
                      f"t={self.pos:.6g}.{cost}")
