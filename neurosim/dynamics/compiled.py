"""Compile a Network into vectorised dynamics on an explicit state.

State (:class:`NeuralState`): ``u`` (batch x N_dyn) holds the soma potentials of every
non-input population side by side; ``r`` (batch x N_all) holds every population's activity
(clamped inputs included) in declaration order. Samples are rows.

For a non-input population p with incoming projections q (source s_q, compartment c_q):

    du_p/dt = rate_p [ -d_p u_p + sum_q k_q W_q r_{s_q} + I_p ]        (Jacobi form)
    d_p     = g_lk + sum_c g_c                  (leak plus every dendritic conductance)
    k_q     = g_{c_q} gain_q   (dendrite)   or   gain_q   (soma)
    I_p     = bias_p + beta_p (y_p - r_p)       (nudge, only in nudged phases)

which is ``-g_lk u + sum_c g_c (v_c - u) + ...`` with dendrites at steady state
``v_c = sum_{q -> c} gain_q W_q r_{s_q}``. Contributions of clamped inputs are constant within a
phase and computed once per phase; all dynamic (recurrent) inputs of p are stacked into one
block matrix ``KT_p`` (sources x n_p) over a contiguous column range of ``r``, so each
population costs one matrix product per step. ``KT_p`` of a narrow population (a few neurons
fed by many, e.g. an output layer) is stored column-major and its product runs transposed,
``u_p^T <- K_p r^T``, which BLAS does 1.2-2.5x faster for such shapes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..errors import ConfigError, SimulationError, unknown
from ..graph import SOMA, Network, get_activation
from ..graph.activations import Activation


NARROW_SIZE = 32      # populations up to this size with ...
NARROW_RATIO = 4      # ... at least this many times as many source columns run transposed


@dataclass
class NeuralState:
    """Explicit network state: soma potentials ``u`` and activities ``r`` (samples as rows)."""

    u: torch.Tensor
    r: torch.Tensor

    def clone(self) -> "NeuralState":
        return NeuralState(self.u.clone(), self.r.clone())


@dataclass(frozen=True)
class PopulationSlot:
    """Where a population lives in the state and how its soma integrates."""

    name: str
    size: int
    r_cols: slice                 # columns of NeuralState.r
    u_cols: slice | None          # columns of NeuralState.u (None for inputs)
    activation: Activation | None
    decay: float                  # d_p
    rate: float
    bias: float
    noise: float
    fixed_step: float | None
    source_cols: slice | None     # dynamic source range in r feeding KT_p

    def step_size(self, dt: float) -> float:
        """h in u <- u + h du/dt for a discrete step of size dt."""
        return self.fixed_step if self.fixed_step is not None else dt * self.rate


class CompiledNetwork:
    """Weights as tensors plus the layout of the state; builds per-phase dynamics."""

    def __init__(self, network: Network, *, dtype=torch.float32, device="cpu", seed: int = 0):
        self.network = network
        self.dtype = dtype
        self.device = torch.device(device)
        self.slots: dict[str, PopulationSlot] = {}
        r_off = u_off = 0
        for pop in network.populations:
            r_cols = slice(r_off, r_off + pop.size)
            r_off += pop.size
            if pop.is_input:
                self.slots[pop.name] = PopulationSlot(pop.name, pop.size, r_cols, None, None,
                                                      0.0, 1.0, 0.0, 0.0, None, None)
                continue
            u_cols = slice(u_off, u_off + pop.size)
            u_off += pop.size
            decay = pop.leak + sum(pop.compartments.values())
            self.slots[pop.name] = PopulationSlot(pop.name, pop.size, r_cols, u_cols,
                                                  get_activation(pop.activation), float(decay),
                                                  float(pop.rate), float(pop.bias),
                                                  float(pop.noise), pop.fixed_step, None)
        self.n_all, self.n_dyn = r_off, u_off
        for name, slot in list(self.slots.items()):
            if slot.u_cols is None:
                continue
            cols = [self.slots[q.source].r_cols for q in network.incoming(name)
                    if not network.population(q.source).is_input]
            if cols:
                rng = slice(min(c.start for c in cols), max(c.stop for c in cols))
                self.slots[name] = PopulationSlot(**{**slot.__dict__, "source_cols": rng})
        zero = torch.zeros(1, dtype=dtype)
        self.silent_at_rest = frozenset(
            name for name, slot in self.slots.items()
            if slot.u_cols is not None and float(slot.activation.forward(zero)) == 0.0)
        generator = torch.Generator().manual_seed(int(seed))
        self.weights: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        pops = network.population_map
        for proj in network.projections:
            n_post, n_pre = pops[proj.target].size, pops[proj.source].size
            weight = proj.initial_weight(n_post, n_pre, generator)
            if weight is None:
                continue
            mask = proj.initial_mask(n_post, n_pre)
            if mask is not None:
                weight = weight * mask
                self.masks[proj.name] = mask.to(self.device, dtype)
            self.weights[proj.name] = weight.to(self.device, dtype)

    # ------------------------------------------------------------------ layout helpers
    def coupling(self, projection) -> float:
        """k_q: the factor with which a projection's ``W r`` enters du/dt."""
        pop = self.network.population(projection.target)
        g = 1.0 if projection.compartment == SOMA else pop.compartments[projection.compartment]
        return float(g) * float(projection.gain)

    def zero_state(self, batch: int) -> NeuralState:
        """u = 0 everywhere, r = sigma(0) for dynamic populations, inputs 0."""
        z = dict(device=self.device, dtype=self.dtype)
        state = NeuralState(torch.zeros(batch, self.n_dyn, **z), torch.zeros(batch, self.n_all, **z))
        self.sync_activity(state)
        return state

    def u_of(self, state: NeuralState, population: str) -> torch.Tensor:
        return state.u[:, self._slot(population, need_dynamic=True).u_cols]

    def r_of(self, state: NeuralState, population: str) -> torch.Tensor:
        return state.r[:, self._slot(population).r_cols]

    def _slot(self, population: str, need_dynamic: bool = False) -> PopulationSlot:
        if population not in self.slots:
            raise unknown("population", population, self.slots, f'network "{self.network.name}"')
        slot = self.slots[population]
        if need_dynamic and slot.u_cols is None:
            raise ConfigError(f'population "{population}" is an input: it has no soma potential '
                              "u, only its clamped activity r.")
        return slot

    def clamp_inputs(self, state: NeuralState, inputs: Mapping[str, torch.Tensor]) -> None:
        """Write clamped activities of input populations into ``state.r``."""
        for name, value in inputs.items():
            slot = self._slot(name)
            if slot.u_cols is not None:
                raise ConfigError(f'population "{name}" is not an input population; only input '
                                  f"populations can be clamped (inputs: "
                                  f"{', '.join(p.name for p in self.network.inputs)}).")
            value = torch.as_tensor(value, dtype=self.dtype, device=self.device)
            if value.ndim == 1:
                value = value.expand(state.r.shape[0], -1)
            if tuple(value.shape) != (state.r.shape[0], slot.size):
                raise ConfigError(f'input "{name}": got shape {tuple(value.shape)}, expected '
                                  f"(batch={state.r.shape[0]}, {slot.size}).")
            state.r[:, slot.r_cols] = value

    def sync_activity(self, state: NeuralState) -> None:
        """Recompute ``r = sigma(u)`` for every dynamic population from ``state.u``."""
        for slot in self.slots.values():
            if slot.u_cols is not None:
                slot.activation.forward(state.u[:, slot.u_cols], out=state.r[:, slot.r_cols])

    def compartment_potential(self, state: NeuralState, population: str,
                              compartment: str) -> torch.Tensor:
        """Dendritic potential ``v_c = sum_{q -> c} gain_q W_q r_src`` (batch x n)."""
        pop = self.network.population(population)
        if compartment not in pop.compartments:
            raise unknown("compartment", compartment, list(pop.compartments),
                          f'population "{population}" (dendritic potentials)')
        total = torch.zeros(state.r.shape[0], pop.size, dtype=self.dtype, device=self.device)
        for q in self.network.incoming(population):
            if q.compartment != compartment:
                continue
            src = self.r_of(state, q.source)
            if q.name in self.weights:
                total.addmm_(src, self.weights[q.name].T, alpha=float(q.gain))
            else:
                total.add_(src, alpha=float(q.gain))
        return total

    # ------------------------------------------------------------------ operators
    def build_operators(self, reuse: dict | None = None) -> dict[str, torch.Tensor]:
        """Stack every dynamic input of each population into ``KT_p`` (built from the
        current weights; call again after they change). ``reuse`` recycles buffers. Narrow
        populations get a column-major ``KT_p`` (a transposed view; see module docstring)."""
        ops = {}
        for name, slot in self.slots.items():
            if slot.source_cols is None:
                continue
            lo = slot.source_cols.start
            shape = (slot.source_cols.stop - lo, slot.size)
            kt = reuse.get(name) if reuse else None
            if kt is None or tuple(kt.shape) != shape:
                narrow = slot.size <= NARROW_SIZE and NARROW_RATIO * slot.size <= shape[0]
                kt = torch.empty(shape[::-1] if narrow else shape, dtype=self.dtype,
                                 device=self.device)
                kt = kt.T if narrow else kt
            written = set()          # source blocks holding a value (the rest are zeroed)
            incoming = sorted((q for q in self.network.incoming(name)
                               if self.slots[q.source].u_cols is not None),
                              key=lambda q: q.name not in self.weights)   # weighted first
            for q in incoming:
                src = self.slots[q.source]
                block = kt[src.r_cols.start - lo:src.r_cols.stop - lo]
                coef = self.coupling(q)
                if q.name in self.weights:
                    if q.source in written:
                        block.add_(self.weights[q.name].T, alpha=coef)
                    else:
                        torch.mul(self.weights[q.name].T, coef, out=block)
                else:
                    if q.source not in written:
                        block.zero_()
                    block.diagonal().add_(coef)
                written.add(q.source)
            for other in self.slots.values():
                start, stop = max(other.r_cols.start, lo), min(other.r_cols.stop, lo + shape[0])
                if other.name not in written and start < stop:
                    kt[start - lo:stop - lo].zero_()
            ops[name] = kt
        return ops

    def input_currents(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Constant currents ``sum_q k_q W_q x_q`` from clamped inputs, per target population."""
        currents: dict[str, torch.Tensor] = {}
        for q in self.network.projections:
            if not self.network.population(q.source).is_input:
                continue
            if q.source not in inputs:
                raise ConfigError(f'input population "{q.source}" feeds projection "{q.name}" '
                                  "but no input was given for it; pass inputs="
                                  f'{{"{q.source}": tensor}}.')
            x = torch.as_tensor(inputs[q.source], dtype=self.dtype, device=self.device)
            size = self.slots[q.source].size
            if x.ndim == 1:
                x = x.unsqueeze(0)
            if x.ndim != 2 or x.shape[1] != size:
                raise ConfigError(f'input "{q.source}": got shape {tuple(x.shape)}, expected '
                                  f"(batch, {size}) or ({size},).")
            coef = self.coupling(q)
            if q.name in self.weights:
                contrib = torch.mm(x, self.weights[q.name].T)
                if coef != 1.0:
                    contrib.mul_(coef)
            else:
                contrib = x * coef
            if q.target in currents:
                currents[q.target] += contrib
            else:
                currents[q.target] = contrib
        return currents

    def phase(self, operators: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor],
              nudges: Mapping[str, tuple] | None = None, currents=None,
              generator: torch.Generator | None = None,
              at_rest: bool = False) -> "PhaseDynamics":
        """Dynamics of one phase: fixed operators, clamped inputs and optional nudges
        ``{population: (target y, beta)}`` adding ``beta (y - r)`` to du/dt. ``at_rest``
        promises that the phase starts from u = 0: the first Gauss-Seidel step then skips the
        products of sources that are silent at rest (sigma(0) = 0), which are exactly zero."""
        currents = dict(self.input_currents(inputs) if currents is None else currents)
        operators = dict(operators)
        for name, (target, beta) in (nudges or {}).items():
            slot = self._slot(name, need_dynamic=True)
            target = torch.as_tensor(target, dtype=self.dtype, device=self.device)
            if target.shape[-1] != slot.size:
                raise ConfigError(f'nudge target for "{name}" has {target.shape[-1]} columns, '
                                  f"the population has {slot.size} neurons.")
            beta = float(beta)
            if beta == 0.0:
                continue
            push = target * beta
            currents[name] = currents[name] + push if name in currents else push
            kt = operators.get(name)
            if kt is None or slot.source_cols is None or not (
                    slot.source_cols.start <= slot.r_cols.start < slot.source_cols.stop):
                raise ConfigError(f'population "{name}" cannot be nudged: it has no recurrent '
                                  "self-connection block (add an identity projection "
                                  "with gain 0 onto itself).")
            kt = kt.clone()
            off = slot.r_cols.start - slot.source_cols.start
            kt[off:off + slot.size].diagonal().sub_(beta)
            operators[name] = kt
        for name, slot in self.slots.items():
            if slot.u_cols is not None and slot.bias != 0.0:
                currents[name] = currents[name] + slot.bias if name in currents else \
                    torch.full((1, slot.size), slot.bias, dtype=self.dtype, device=self.device)
        return PhaseDynamics(self, operators, currents, generator,
                             silent=set(self.silent_at_rest) if at_rest else set())


@dataclass
class PhaseDynamics:
    """Right-hand side and in-place steps for one phase (operators and drive fixed)."""

    net: CompiledNetwork
    operators: Mapping[str, torch.Tensor]
    currents: Mapping[str, torch.Tensor]
    generator: torch.Generator | None = None
    silent: set = field(default_factory=set)     # populations with r = 0 exactly, until a step
    rhs_evals: int = field(default=0)
    _plan: list = field(default_factory=list, repr=False)
    _plan_key: tuple = field(default=(), repr=False)

    def __post_init__(self):
        self.slots = [s for s in self.net.slots.values() if s.u_cols is not None]
        dynamic = {s.name for s in self.slots}
        self.sources = {s.name: {q.source for q in self.net.network.incoming(s.name)
                                 if q.source in dynamic} for s in self.slots}

    @property
    def stochastic(self) -> bool:
        return any(s.noise > 0 for s in self.slots)

    def rhs(self, u: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Jacobi du/dt at soma potentials ``u``; ``r`` is a scratch activity buffer whose
        input columns hold the clamped inputs (its dynamic columns are overwritten)."""
        self.rhs_evals += 1
        du = torch.empty_like(u)
        for slot in self.slots:
            slot.activation.forward(u[:, slot.u_cols], out=r[:, slot.r_cols])
        for slot in self.slots:
            self._drift(slot, u, r, du[:, slot.u_cols])
        return du

    def _drift(self, slot: PopulationSlot, u, r, out) -> None:
        u_p = u[:, slot.u_cols]
        kt = self.operators.get(slot.name)
        if kt is not None:
            torch.mm(r[:, slot.source_cols], kt, out=out)
            out.add_(u_p, alpha=-slot.decay)
        else:
            torch.mul(u_p, -slot.decay, out=out)
        current = self.currents.get(slot.name)
        if current is not None:
            out.add_(current)
        if slot.rate != 1.0:
            out.mul_(slot.rate)

    def euler_step_(self, state: NeuralState, dt: float) -> None:
        """Explicit (Jacobi) Euler step, in place: u <- u + dt f(u); r <- sigma(u)."""
        du = self.rhs(state.u, state.r)
        for slot in self.slots:
            state.u[:, slot.u_cols].add_(du[:, slot.u_cols], alpha=slot.step_size(dt) / slot.rate)
        self._noise_(state, dt)
        self.net.sync_activity(state)

    def gauss_seidel_step_(self, state: NeuralState, dt: float) -> None:
        """Layer-ordered Euler step: populations are updated one after another in declaration
        order, each reading the newest activities (u_p <- (1 - h d_p) u_p + h (K_p r + I_p),
        h = dt rate_p; then r_p <- sigma(u_p))."""
        self.rhs_evals += 1
        silent = self.silent
        for slot, u_p, product, current, r_p in self._bind(state):
            h = slot.fixed_step if slot.fixed_step is not None else dt * slot.rate
            if product is not None and not (silent and self.sources[slot.name] <= silent):
                target, left, right = product
                target.addmm_(left, right, beta=1.0 - h * slot.decay, alpha=h)
            else:
                u_p.mul_(1.0 - h * slot.decay)
            silent.discard(slot.name)
            if current is not None:
                u_p.add_(current, alpha=h)
            if slot.noise > 0:
                u_p.add_(self._gaussian(u_p), alpha=slot.noise * (h * slot.rate) ** 0.5)
            slot.activation.forward(u_p, out=r_p)
        silent.clear()

    def _bind(self, state: NeuralState) -> list:
        """Per-population views into ``state`` and the operands of its product
        ``target <- beta target + alpha left @ right`` (``u_p``, ``r_src``, ``KT_p``, or their
        transposes for a column-major ``KT_p``); cached while the same buffers are stepped."""
        key = (state.u.data_ptr(), state.r.data_ptr(), state.u.shape, state.r.shape,
               state.u.stride(), state.r.stride())
        if key != self._plan_key:
            self._plan = []
            for slot in self.slots:
                u_p, kt = state.u[:, slot.u_cols], self.operators.get(slot.name)
                product = None
                if kt is not None:
                    source = state.r[:, slot.source_cols]
                    product = ((u_p.T, kt.T, source.T) if kt.T.is_contiguous() and
                               not kt.is_contiguous() else (u_p, source, kt))
                self._plan.append((slot, u_p, product, self.currents.get(slot.name),
                                   state.r[:, slot.r_cols]))
            self._plan_key = key
        return self._plan

    def _noise_(self, state: NeuralState, dt: float) -> None:
        for slot in self.slots:
            if slot.noise > 0:
                u_p = state.u[:, slot.u_cols]
                u_p.add_(self._gaussian(u_p), alpha=slot.noise * (slot.step_size(dt) * slot.rate) ** 0.5)

    def _gaussian(self, like: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            raise SimulationError("a population has noise > 0 but the phase has no random "
                                  "generator; pass generator= to CompiledNetwork.phase().")
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype,
                           device=like.device)

    def residual(self, state: NeuralState) -> torch.Tensor:
        """max |du/dt| over all neurons and samples (a 0-d tensor; no host sync)."""
        return self.rhs(state.u, state.r.clone()).abs().max()

    def check_finite(self, state: NeuralState, step: int) -> None:
        """Raise SimulationError naming population, compartment and step on NaN/inf."""
        if math.isfinite(float(state.u.sum())):       # one cheap reduction in the common case
            return
        for slot in self.slots:
            bad = ~torch.isfinite(state.u[:, slot.u_cols])
            if bool(bad.any()):
                sample, neuron = (int(i) for i in bad.nonzero()[0])
                raise SimulationError(
                    f'non-finite soma potential in population "{slot.name}", compartment '
                    f'"soma", at step {step} (sample {sample}, neuron {neuron}). The dynamics '
                    "diverged: reduce the step size (dt) or use an implicit/adaptive solver "
                    "(e.g. --solver bdf or dopri5).")
