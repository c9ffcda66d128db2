"""A bound on the work of adaptive solvers, and a stiffness diagnosis for explicit ones.

``max_rhs_evals`` counts right-hand-side evaluations *per output interval*: from the moment
the integration enters an interval [t_k, t_k+1] of the output grid (the step schedule) until
it passes t_k+1. An interval that needs more stops the run with a :class:`SimulationError`
saying where it stopped and why. The bound is therefore predictable from the output grid
alone: a run can cost at most ``n_steps * max_rhs_evals`` evaluations, and a solve that stalls
stops after at most ``max_rhs_evals`` evaluations, however long the run. The count includes
every evaluation the integrator makes (rejected steps, the initial step selection, and for
scipy's implicit methods without an analytic Jacobian, one evaluation per state variable
for each finite-difference Jacobian).

It applies to torchdiffeq's adaptive Runge-Kutta methods (dopri5, dopri8, bosh3,
adaptive_heun, fehlberg2), whether they integrate the potentials (:class:`TorchDiffEq`) or
potentials and plastic weights together (:func:`neurosim.solvers.system.integrate_system`),
and to every scipy ``solve_ivp`` method (:class:`ScipyIVP`). Fixed-step methods make a fixed
number of evaluations per step and are not bounded.

Stiffness: an explicit method whose step is held near its stability limit, h ~ 1 / rho(J)
(rho: spectral radius of the Jacobian of the right-hand side, estimated by power iteration
on finite differences), while the output step is much longer, is integrating a stiff
network; the error message then says so and recommends an implicit solver, with the ratio
of the populations' decay rates (rate * (leak + conductances) of each linear cell) as
evidence. The same diagnosis runs once per solver when an output interval takes more than
``WARN_STEPS`` explicit steps without reaching the limit, and warns
(:class:`StiffnessWarning`) when the network looks stiff.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections import deque

import numpy as np
import torch

from ..errors import ConfigError, SimulationError

#: default right-hand-side evaluations allowed per output interval (~1,700 dopri5 steps)
DEFAULT_MAX_RHS_EVALS = 10_000
#: explicit steps in one output interval that trigger the stiffness check (and warning)
WARN_STEPS = 100
#: rho * h at or above this: the step is held by stability (the explicit methods' stability
#: limits on the negative real axis lie between 2 and ~6 for rho * h)
STABILITY_LIMITED = 0.5
#: rho * (output step) at or above this: the fastest modes decay far within an output step
FAST_VS_OUTPUT = 100.0

IMPLICIT_ADVICE = ("Use an implicit solver: --solver bdf (or lsoda, radau; solver = \"bdf\" "
                   "in [simulation])")
LIMIT_ADVICE = ("raise the limit (--max-rhs-evals N, max_rhs_evals = N in [simulation], or "
                "max_rhs_evals= of the solver)")


class StiffnessWarning(UserWarning):
    """An explicit adaptive solver is taking tiny steps on a network that looks stiff."""


def check_max_rhs_evals(value, where: str = "max_rhs_evals") -> int:
    """``value`` as a positive int, or a ConfigError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{where} must be a positive integer (right-hand-side evaluations "
                          f"allowed per output interval; default {DEFAULT_MAX_RHS_EVALS}), got "
                          f"{value!r}.")
    return int(value)


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


class RhsBudget:
    """The evaluation bound of one ``integrate`` call over the output times ``times`` (see
    module docstring). Wrap the integrator with :meth:`torchdiffeq` or :meth:`scipy`.

    ``explicit``: an explicit method (stiffness diagnosis applies); ``stages``: evaluations per
    step when steps are not reported (scipy); ``decay``: :func:`decay_rates` of the network;
    ``evals_so_far``: callable giving the evaluations of the phase so far (for the message);
    ``stiff_advice``: what to do when the network is stiff (default: an implicit solver)."""

    def __init__(self, solver, times, *, limit: int, explicit: bool, stages: int | None = None,
                 decay=(), evals_so_far=None, stiff_advice: str = IMPLICIT_ADVICE):
        self.solver, self.times = solver, [float(x) for x in times]
        self.limit, self.explicit, self.stages = limit, explicit, stages
        self.decay, self.evals_so_far, self.stiff_advice = list(decay), evals_so_far, stiff_advice
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
        if self.count > self.limit:
            raise SimulationError(self.message())

    def stepped(self, t0, y0, dt: float) -> None:
        self.last = (t0, y0)
        self._advance(float(t0))
        self.steps += 1
        self.recent.append(dt)
        self.smallest = min(self.smallest, dt)

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

    def _step_size(self) -> float | None:
        """A typical step of the current interval: the median of the recent ones (reported
        by torchdiffeq) or the interval covered per step (scipy)."""
        if self.recent:
            return statistics.median(self.recent)
        steps = self._steps_taken()
        if steps >= 1 and self.pos > self.start:
            return (self.pos - self.start) / steps
        return None

    def _interval(self) -> tuple[float, float]:
        i = min(self.next, len(self.times) - 1)
        return self.times[i - 1], self.times[i]

    # ------------------------------------------------------------------ diagnosis
    def diagnose(self) -> dict:
        """rho (spectral radius estimate), h (typical step), the decay ratio and whether the
        network looks stiff for this explicit solver."""
        lo, hi = self._interval()
        output = hi - lo
        rho = None
        if self.func is not None and self.last is not None:
            rho = spectral_radius(self.func, *self.last)
        h = self._step_size()
        ratio = fast = slow = None
        if len(self.decay) >= 2:
            fast = max(self.decay, key=lambda item: item[1])
            slow = min(self.decay, key=lambda item: item[1])
            ratio = fast[1] / slow[1]
        if rho is not None and rho > 0:
            stiff = (h is None or rho * h >= STABILITY_LIMITED) and rho * output >= FAST_VS_OUTPUT
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

    def message(self) -> str:
        name = getattr(self.solver, "name", "solver")
        lo, hi = self._interval()
        t_end = run_end(getattr(self.solver, "horizon", None))
        where = f"t={self.pos:.6g}" + (f" of t_end={t_end:.6g}" if t_end is not None else "")
        total = self.evals_so_far() if self.evals_so_far is not None else None
        h = self._step_size()
        sizes = []
        if h is not None:
            sizes.append(f"step size ~{h:.2g}")
        if math.isfinite(self.smallest):
            sizes.append(f"smallest {self.smallest:.2g}")
        detail = "; ".join(([f"{total} in this phase so far"] if total is not None else [])
                           + sizes)
        head = (f'solver "{name}" stopped at {where}: {self.limit} right-hand-side evaluations '
                f"(max_rhs_evals) did not get it across the output interval [{lo:.6g}, {hi:.6g}]"
                + (f" ({detail})" if detail else "") + ".")
        rtol, atol = getattr(self.solver, "rtol", None), getattr(self.solver, "atol", None)
        tol = f"rtol={rtol}, atol={atol}"
        if not self.explicit:
            return (f"{head} Loosen the tolerances (now {tol}), or {LIMIT_ADVICE}; an implicit "
                    "solver needing this many evaluations suggests very fast or discontinuous "
                    "inputs.")
        d = self.diagnose()
        if d["stiff"]:
            return f"{head} {self._stiff_sentence(d)} {self.stiff_advice}; or {LIMIT_ADVICE}."
        why = ""
        if d["rho"] is not None and d["h"] is not None:
            why = (f" The steps are limited by accuracy, not stability (spectral radius "
                   f"~{d['rho']:.2g}, step x radius ~{d['rho'] * d['h']:.2g}): the dynamics are "
                   "fast or the tolerances tight.")
        return (f"{head}{why} Loosen the tolerances (now {tol}), shorten the output step (dt), "
                f"or {LIMIT_ADVICE}.")

    def _interval_done(self) -> None:
        """Warn once per solver when an explicit method needed many steps for an interval on
        a network that looks stiff."""
        if not self.explicit or self._steps_taken() < WARN_STEPS:
            return
        if getattr(self.solver, "_stiffness_checked", False):
            return
        self.solver._stiffness_checked = True
        d = self.diagnose()
        if d["stiff"]:
            name = getattr(self.solver, "name", "solver")
            warnings.warn(StiffnessWarning(
                f'solver "{name}" took ~{self._steps_taken():.0f} steps for one output interval '
                f"of {d['output']:.3g}. {self._stiff_sentence(d)} {self.stiff_advice}: it takes "
                "far fewer steps."), stacklevel=2)
