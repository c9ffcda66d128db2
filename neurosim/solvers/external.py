"""Adapters to external integrators: torchdiffeq (any method, adaptive ones with rtol/atol)
and scipy's ``solve_ivp`` (BDF, LSODA, Radau for stiff problems)."""
from __future__ import annotations

import numpy as np
import torch

from ..dynamics import Diagonal, LowPrecision, NeuralState, PhaseDynamics
from ..errors import ConfigError, SimulationError
from .base import ContinuousSolver
from .limits import (DEFAULT_MAX_RHS_EVALS, IMPLICIT_ADVICE, RhsBudget, check_max_rhs_evals,
                     decay_rates, discontinuous_stimuli)


def _uncounted(dynamics: PhaseDynamics, scratch: torch.Tensor, to_tensor=None, to_output=None):
    """A factory of ``(t, y) -> du/dt`` functions for the stiffness diagnosis
    (neurosim.solvers.limits): each evaluates ``dynamics.rhs`` on its own copy of the scratch
    activities ``scratch`` and leaves ``dynamics.rhs_evals`` as it was, so that diagnosing
    changes neither the integration nor the evaluations it reports. ``to_tensor`` and
    ``to_output`` convert y and du/dt (scipy's numpy vectors)."""
    def make_probe():
        private = scratch.clone()

        def probe(t, y):
            evals = dynamics.rhs_evals
            try:
                du = dynamics.rhs(y if to_tensor is None else to_tensor(y), private, t)
            finally:
                dynamics.rhs_evals = evals
            return du if to_output is None else to_output(du)
        return probe
    return make_probe


class TorchDiffEq(ContinuousSolver):
    """``torchdiffeq.odeint`` with a given method ("dopri5", "bosh3", "rk4", "euler", ...)."""

    def __init__(self, method: str = "dopri5", rtol: float = 1e-7, atol: float = 1e-9,
                 segment: int = 64, max_rhs_evals: int | None = None, **options):
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
        # max_rhs_evals bounds the adaptive Runge-Kutta methods (see neurosim.solvers.limits)
        self.max_rhs_evals = check_max_rhs_evals(
            DEFAULT_MAX_RHS_EVALS if max_rhs_evals is None else max_rhs_evals)
        try:
            from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver
            self.adaptive = issubclass(methods[method], RKAdaptiveStepsizeODESolver)
        except (ImportError, TypeError):
            self.adaptive = method in ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")

    def config(self) -> dict:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol, "segment": self.segment,
                "max_rhs_evals": self.max_rhs_evals, **self.options}

    def bounded(self, odeint, times, *, decay=(), evals_so_far=None,
                stiff_advice: str = IMPLICIT_ADVICE, make_probe=None, stimuli=()):
        """``odeint`` limited to ``max_rhs_evals`` right-hand-side evaluations per output
        interval of ``times`` and to the run's budget, with a stiffness diagnosis
        (neurosim.solvers.limits: ``make_probe``, ``stimuli`` as for its RhsBudget); unchanged
        for fixed-grid methods."""
        if not self.adaptive:
            return odeint
        return RhsBudget(self, times, limit=self.max_rhs_evals, explicit=True, decay=decay,
                         evals_so_far=evals_so_far, stiff_advice=stiff_advice,
                         make_probe=make_probe, stimuli=stimuli).torchdiffeq(odeint)

    def integrate(self, dynamics: PhaseDynamics, state: NeuralState, times):
        """u at every one of ``times`` by ``odeint`` of du/dt = f(t, u) (adaptive methods: at
        most ``max_rhs_evals`` evaluations per output interval, and the run's budget, see
        neurosim.solvers.limits; fixed-grid methods step by the smallest interval unless
        ``step_size`` is given)."""
        from torchdiffeq import odeint
        odeint = self.bounded(odeint, times, decay=decay_rates(dynamics.slots),
                              evals_so_far=lambda: dynamics.rhs_evals,
                              make_probe=lambda: _uncounted(dynamics, scratch)(),
                              stimuli=discontinuous_stimuli(dynamics.drive))
        t = torch.tensor(times, dtype=torch.float64, device=state.u.device)
        options = dict(self.options)
        if self.method in ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams") \
                and "step_size" not in options:
            options["step_size"] = float(min(np.diff(times)))
        with torch.inference_mode(False), torch.no_grad():
            # cloned outside inference mode: rhs writes into it in place (Simulation.run
            # integrates under torch.inference_mode())
            scratch = state.r.clone()
            path = odeint(lambda _t, u: dynamics.rhs(u, scratch, _t), state.u.clone(), t.to(state.u.dtype),
                          method=self.method, rtol=self.rtol, atol=self.atol, options=options)
        return list(path)


class ScipyIVP(ContinuousSolver):
    """``scipy.integrate.solve_ivp`` on the flattened potentials (float64). Implicit methods
    get the Jacobian, block-diagonal over samples (see :func:`_jacobian_function`): exact
    for linear cells, J = diag(rate) (-diag(d) + K diag(sigma'(u))); from the cells'
    ``partials`` or from autograd otherwise."""

    implicit = ("BDF", "Radau", "LSODA")
    stages = {"RK45": 6, "RK23": 3, "DOP853": 12}     # evaluations per step (explicit ones)

    def __init__(self, method: str = "BDF", rtol: float = 1e-7, atol: float = 1e-9,
                 segment: int = 64, dense_jacobian_limit: int = 4096,
                 max_rhs_evals: int | None = None):
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
        # right-hand-side evaluations allowed per output interval (neurosim.solvers.limits)
        self.max_rhs_evals = check_max_rhs_evals(
            DEFAULT_MAX_RHS_EVALS if max_rhs_evals is None else max_rhs_evals)

    def config(self) -> dict:
        return {"name": self.name, "rtol": self.rtol, "atol": self.atol, "segment": self.segment,
                "max_rhs_evals": self.max_rhs_evals}

    def integrate(self, dynamics: PhaseDynamics, state: NeuralState, times):
        """u at every one of ``times`` by ``solve_ivp`` of du/dt = f(t, u) in float64 (implicit
        methods get J = df/du); SimulationError if it fails or exceeds ``max_rhs_evals`` (per
        output interval) or the run's budget (neurosim.solvers.limits)."""
        from scipy.integrate import solve_ivp
        # an implicit method without our Jacobian estimates it by finite differences, one
        # evaluation per state variable: those evaluations do not count against the budget
        numeric_jacobian = self.method in self.implicit and \
            state.u.shape[1] > self.dense_jacobian_limit
        solve_ivp = RhsBudget(
            self, times, limit=self.max_rhs_evals * (state.u.numel() + 1 if numeric_jacobian
                                                     else 1),
            explicit=self.method not in self.implicit,
            stages=self.stages.get(self.method), decay=decay_rates(dynamics.slots),
            evals_so_far=lambda: dynamics.rhs_evals + (work.rhs_evals if work is not dynamics
                                                       else 0),
            make_probe=lambda: _uncounted(
                work, scratch, lambda y: torch.from_numpy(y).to(device).view(shape),
                lambda du: du.cpu().numpy().ravel())(),
            stimuli=discontinuous_stimuli(dynamics.drive)).scipy(solve_ivp)
        shape, dtype, device = state.u.shape, state.u.dtype, state.u.device
        # evaluate in float64 whatever the network's dtype: a float32 rhs is a staircase in y
        # that stalls the Newton iterations of implicit methods (step size -> 0)
        work = dynamics if dtype == torch.float64 else dynamics.to(torch.float64)
        scratch = state.r.to(torch.float64, copy=True)

        def fun(_t, y):
            u = torch.from_numpy(y).to(device).view(shape)
            return work.rhs(u, scratch, _t).cpu().numpy().ravel()

        kwargs = {}
        if self.method in self.implicit and shape[1] <= self.dense_jacobian_limit:
            kwargs["jac"] = _jacobian_function(work, scratch, sparse=self.method != "LSODA")
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


def _jacobian_function(dynamics: PhaseDynamics, r: torch.Tensor, sparse: bool):
    """J(t, y) = d(du/dt)/du of the Jacobi right-hand side at activities ``r`` (its clamped
    columns are used), block-diagonal over the batch since samples are independent. The way
    is chosen once and kept as ``jac.method``:

    - "linear" (every cell linear, element-wise activations): exact,
      J = diag(rate) (-diag(d) + K diag(sigma'(u)));
    - "partials" (general cells whose ``partials(u, v)`` give a = d drift/du and
      b_c = d drift/dv_c): rows of a general cell p are
      diag(a) + sum_c diag(b_c) V_{p,c} diag(sigma'(u_src)) over the dynamic sources;
    - "autograd" (a cell whose partials are None, or an activation that is not element-wise
      such as softmax): every block by ``torch.func.jacrev`` of the right-hand side summed
      over samples (sample b's rows depend on sample b's potentials only).
    """
    import scipy.sparse as sp
    shape = (r.shape[0], dynamics.net.n_dyn)
    if not all(s.elementwise for s in dynamics.slots) or not _cells_have_partials(dynamics):
        blocks = _autograd_blocks(dynamics, r)
        method = "autograd"
    elif dynamics.cells:
        blocks = _partials_blocks(dynamics, r)
        method = "partials"
    else:
        blocks = _linear_blocks(dynamics)
        method = "linear"

    def jac(_t, y):
        dynamics.t = float(_t)          # a drive's currents enter general cells' partials
        u = torch.from_numpy(y).view(shape)
        per_sample = list(blocks(u))
        return sp.block_diag(per_sample, format="csc") if sparse else \
            sp.block_diag(per_sample).toarray()

    jac.method = method
    return jac


def _cells_have_partials(dynamics: PhaseDynamics) -> bool:
    """Whether every general cell gives partials (probed once at u = 0, v = 0)."""
    for slot in dynamics.cells:
        zeros = torch.zeros(1, slot.size, dtype=torch.float64)
        if slot.cell.partials(zeros, {c: zeros for c, _ in slot.inputs}) is None:
            return False
    return True


def _coupling(dynamics: PhaseDynamics, key, cols: slice | None, rows: int) -> np.ndarray:
    """The operator ``dynamics.operators[key]`` over source columns ``cols`` of r as a dense
    matrix rows x N_dyn on the dynamic sources' potentials (zero where nothing projects)."""
    dense = np.zeros((rows, dynamics.net.n_dyn))
    kt = dynamics.operators.get(key)
    if kt is None:
        return dense
    kt = kt.to(torch.float64).cpu().numpy()
    for src in dynamics.slots:
        lo = src.r_cols.start - cols.start
        if 0 <= lo and src.r_cols.stop <= cols.stop:
            dense[:, src.u_cols] = kt[lo:lo + src.size].T
    return dense


def _slopes(dynamics: PhaseDynamics, u: torch.Tensor) -> np.ndarray:
    """sigma'(u) of every dynamic population (batch x N_dyn)."""
    slope = np.empty(tuple(u.shape))
    for slot in dynamics.slots:
        slope[:, slot.u_cols] = slot.activation.derivative(u[:, slot.u_cols]).cpu().numpy()
    return slope


def _per_neuron(values, batch: int, size: int) -> np.ndarray:
    """A partial derivative (tensor or number) broadcast to (batch, size), as numpy."""
    values = torch.as_tensor(values, dtype=torch.float64).cpu().numpy()
    return np.broadcast_to(values, (batch, size))


def _linear_blocks(dynamics: PhaseDynamics):
    """Exact blocks of linear cells: rate (K diag(sigma'(u)) - diag(d)); zero rows for
    general cells."""
    n = dynamics.net.n_dyn
    coupling = np.zeros((n, n))
    rate = np.zeros(n)
    decay = np.zeros(n)
    for slot in dynamics.slots:
        rate[slot.u_cols], decay[slot.u_cols] = slot.rate, slot.decay
        coupling[slot.u_cols] = _coupling(dynamics, slot.name, slot.source_cols, slot.size)
        if slot.low_cols is not None:           # bfloat16 operator and elementwise autapses
            coupling[slot.u_cols] += _coupling(dynamics, LowPrecision(slot.name),
                                               slot.low_cols, slot.size)
            diagonal = dynamics.operators.get(Diagonal(slot.name))
            if diagonal is not None:
                own = np.arange(slot.u_cols.start, slot.u_cols.stop)
                coupling[own, own] += float(diagonal)

    def blocks(u):
        slope = _slopes(dynamics, u)
        return (rate[:, None] * (coupling * slope[b][None, :] - np.diag(decay))
                for b in range(u.shape[0]))

    return blocks


def _partials_blocks(dynamics: PhaseDynamics, r: torch.Tensor):
    """Blocks of linear cells as in :func:`_linear_blocks`; rows of general cells
    diag(a) + sum_c diag(b_c) V_{p,c} diag(sigma'(u)), V_{p,soma} including the nudge's
    -beta on the population's own potentials."""
    linear = _linear_blocks(dynamics)
    scratch = r.to(torch.float64, copy=True)
    matrices = {}
    for slot in dynamics.cells:
        for comp, cols in slot.inputs:
            dense = _coupling(dynamics, (slot.name, comp), cols, slot.size)
            if comp == "soma" and slot.name in dynamics.cell_nudges:
                dense[:, slot.u_cols] -= dynamics.cell_nudges[slot.name] * np.eye(slot.size)
            matrices[slot.name, comp] = dense

    def blocks(u):
        out = np.stack(list(linear(u)))
        slope = _slopes(dynamics, u)
        u = u.to(scratch.device)
        batch, diagonal = u.shape[0], np.arange(u.shape[1])
        for slot in dynamics.slots:
            slot.activate(u[:, slot.u_cols], out=scratch[:, slot.r_cols])
        for slot in dynamics.cells:
            a, b = slot.cell.partials(u[:, slot.u_cols], dynamics.cell_inputs(slot, scratch))
            rows = np.zeros((batch, slot.size, u.shape[1]))
            own = diagonal[slot.u_cols]
            rows[:, own - own[0], own] = _per_neuron(a, batch, slot.size)
            for comp, partial in b.items():
                if (slot.name, comp) not in matrices:
                    raise ConfigError(
                        f'population "{slot.name}": partials() returned a derivative for '
                        f'compartment "{comp}", which it does not have (compartments: '
                        f"{', '.join(c for c, _ in slot.inputs)}).")
                rows += (_per_neuron(partial, batch, slot.size)[:, :, None] *
                         matrices[slot.name, comp][None] * slope[:, None, :])
            out[:, slot.u_cols] = rows
        return out

    return blocks


def _autograd_blocks(dynamics: PhaseDynamics, r: torch.Tensor):
    """Blocks by reverse-mode autograd of the summed right-hand side."""
    # own float64 tensors, made outside inference mode (inference tensors cannot be saved
    # for backward, and Simulation.run integrates under torch.inference_mode())
    with torch.inference_mode(False):
        frozen = dynamics.to(torch.float64)
        clamped = r.to(torch.float64, copy=True)

    def total(u):
        return frozen.differentiable_rhs(u, clamped, dynamics.t).sum(0)

    def blocks(u):
        with torch.inference_mode(False), torch.enable_grad():
            jac = torch.func.jacrev(total)(u.to(clamped.device, copy=True))
        return jac.permute(1, 0, 2).cpu().numpy()          # (batch, N_dyn, N_dyn)

    return blocks
