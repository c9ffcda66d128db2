"""Compile a Network into vectorised dynamics on an explicit state.

State (:class:`NeuralState`): ``u`` (batch x N_dyn) holds the soma potentials of every
non-input population side by side; ``r`` (batch x N_all) holds every population's activity
(clamped inputs included) in declaration order. Samples are rows.

Every non-input population p is a cell (neurosim.graph.populations) whose compartments c
receive ``v_c = sum_{q -> c} gain_q W_q r_{s_q}`` (``v_soma`` adds the bias ``b_p`` and, in
nudged phases, ``beta_p (y_p - r_p)``) and whose soma obeys ``du_p/dt = drift_p(u_p, v)``.
Two paths integrate it, chosen per population:

*Linear cells* (the built-in kinds, ``pop.is_linear``) use the fused fast path,

    du_p/dt = rate_p [ -d_p u_p + sum_q k_q W_q r_{s_q} + I_p ]        (Jacobi form)
    d_p     = g_lk + sum_c g_c                  (leak plus every dendritic conductance)
    k_q     = g_{c_q} gain_q   (dendrite)   or   gain_q   (soma)
    I_p     = b_p + beta_p (y_p - r_p)          (nudge, only in nudged phases)

Contributions of clamped inputs are constant within a phase and computed once per phase; all
dynamic (recurrent) inputs of p are stacked into one block matrix ``KT_p`` (sources x n_p) over
a contiguous column range of ``r``, so each population costs one matrix product per step (the
nudge's ``-beta_p r_p`` is folded into ``KT_p``). ``KT_p`` of a narrow population (a few
neurons fed by many, e.g. an output layer) is stored column-major and its product runs
transposed, ``u_p^T <- K_p r^T``, which BLAS does 1.2-2.5x faster for such shapes.

Projections with ``precision = "bfloat16"`` (or "auto" resolved to it; see
neurosim.graph.projections) leave ``KT_p`` for a second operator ``KT_p^low`` in bfloat16 (key
:class:`LowPrecision`), multiplied by the activities rounded to bfloat16 and added to the
float32 drift; such a population's identity autapses become an elementwise term ``c_p r_p``
(key :class:`Diagonal`), so that ``KT_p`` keeps only the full-precision blocks. ``KT_p^low``
is column-major: it is written from the weights' rows without a transposing cast, and the
fused loop packs its rows. Projections with ``refresh_every = k`` > 1 join that separate
operator too (in bfloat16 or, with precision "full", in the network's dtype; one precision
and one k per population): a discrete Euler step at step j of a phase recomputes its product
``r_low KT_p^low`` when j is a multiple of k (or the step follows no held value: the first
of a solve resumed elsewhere) and otherwise uses the product held from the last refresh
(:meth:`PhaseDynamics.held`).

*General cells* (a kind that overrides ``drift``) call their own ``drift(u_p, v)``. Their
clamped inputs are again computed once per phase, per compartment; their dynamic inputs onto
compartment c are stacked into ``VT_{p,c}`` (coefficients ``gain_q``), one matrix product per
compartment and evaluation; the nudge is added to ``v_soma`` explicitly. Operators and
constant currents are keyed by population name for linear cells and by
``(population, compartment)`` for general cells.

A discrete step of size dt moves a soma by ``(h_p / rate_p) du_p/dt`` with
``h_p = dt rate_p`` or the population's ``fixed_step``. Stochastic activations (``r`` drawn
at random) are drawn from the phase's generator after each step; within a right-hand-side
evaluation their activities are read as drawn.
"""
from __future__ import annotations

import copy
import itertools
import weakref
import math
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch

from ..draws import uniform
from ..errors import ConfigError, SimulationError, unknown
from ..graph import SOMA, Network
from ..graph.activations import Activation
from ..graph.populations import DynamicPopulation
from . import ops


NARROW_SIZE = 32      # populations up to this size with ...
NARROW_RATIO = 4      # ... at least this many times as many source columns run transposed
AUTO_BFLOAT16_ENTRIES = 128 * 128   # precision "auto": smaller weights stay in full precision
                                    # (their bfloat16 product saves less than its extra steps)


_LOW_STAMPS = itertools.count()     # see CompiledNetwork.low_stamps


@dataclass(frozen=True)
class LowPrecision:
    """Key of a population's separate operator ``KT_p^low`` in a phase's operators (its
    projections with ``precision = "bfloat16"`` or ``refresh_every`` > 1, over source
    columns ``low_cols``; bfloat16 when they are)."""

    population: str


@dataclass(frozen=True)
class Diagonal:
    """Key of a population's elementwise self-coupling ``c_p`` in a phase's operators (a
    0-d tensor, or M x 1 x 1 in an ensemble): ``du_p/dt`` gains ``rate_p c_p r_p``; it holds
    the identity autapses of populations with a bfloat16 operator, and their nudges."""

    population: str


@dataclass
class NeuralState:
    """Explicit network state: soma potentials ``u`` and activities ``r`` (samples as rows).

    A state made by :meth:`CompiledNetwork.zero_state` knows its layout: ``state["h"]`` is
    population h's part of it (:class:`PopulationState`). A simulation's state also carries
    its time ``t`` and its stimuli (``drive``), so that dendritic potentials include the
    currents injected into them."""

    u: torch.Tensor
    r: torch.Tensor
    net: "CompiledNetwork | None" = field(default=None, repr=False, compare=False)
    t: float = field(default=0.0, repr=False, compare=False)
    drive: object | None = field(default=None, repr=False, compare=False)

    def clone(self) -> "NeuralState":
        """A copy with its own ``u`` and ``r`` tensors (sharing the layout, time and
        stimuli)."""
        return NeuralState(self.u.clone(), self.r.clone(), self.net, self.t, self.drive)

    def __getitem__(self, population: str) -> "PopulationState":
        if self.net is None:
            raise ConfigError("this NeuralState carries no layout; index the state of a "
                              "Simulation (sim.state) or one made by CompiledNetwork.zero_state.")
        self.net._slot(population)
        return PopulationState(self, population)

    @property
    def populations(self) -> list[str]:
        """Names of the populations, in the order of ``r``'s columns."""
        return list(self.net.slots) if self.net is not None else []


def dendritic_potential(state: NeuralState, population: str, compartment: str) -> torch.Tensor:
    """v_c of a state: the synaptic part ``sum_{q -> c} gain_q W_q r_src`` plus the stimuli
    that the state's drive injects into the compartment at the state's time."""
    v = state.net.compartment_potential(state, population, compartment)
    if state.drive is not None:
        injected = state.drive.compartment_input(population, compartment, state.t)
        if injected is not None:
            v = v + injected
    return v


class PopulationState:
    """One population's part of a :class:`NeuralState`: ``u`` and ``r`` are views (batch x
    neurons; writing to them writes the state; an input's ``r`` is its clamped value, which a
    simulation reads back as the input when it next runs), ``v`` the dendritic potentials
    ``v_c = sum_{q -> c} gain_q W_q r_src + I_c(t)`` (computed, batch x neurons per
    compartment; ``I_c`` the stimuli injected into c)."""

    def __init__(self, state: NeuralState, population: str):
        self.state, self.name = state, population

    @property
    def u(self) -> torch.Tensor:
        """Soma potentials (a view; inputs have none)."""
        return self.state.net.u_of(self.state, self.name)

    @property
    def r(self) -> torch.Tensor:
        """Activities r = sigma(u), or the clamped values of an input (a view)."""
        return self.state.net.r_of(self.state, self.name)

    @property
    def v(self) -> dict[str, torch.Tensor]:
        """Dendritic potentials by compartment, stimuli included (empty for inputs and
        interneurons)."""
        pop = self.state.net.network.population(self.name)
        if pop.is_input:
            return {}
        return {c: dendritic_potential(self.state, self.name, c) for c in pop.compartments}

    def __repr__(self) -> str:
        slot = self.state.net.slots[self.name]
        kind = "input" if slot.u_cols is None else "dynamic"
        return f"PopulationState({self.name!r}, {kind}, batch={self.state.r.shape[0]}, " \
               f"neurons={slot.size})"


@dataclass(frozen=True)
class PopulationSlot:
    """Where a population lives in the state and how its soma integrates."""

    name: str
    size: int
    r_cols: slice                       # columns of NeuralState.r
    u_cols: slice | None = None         # columns of NeuralState.u (None for inputs)
    activation: Activation | None = None
    activate: Callable | None = None    # activate(u, out=, generator=): r = sigma(u)
    decay: float = 0.0                  # d_p (linear cells)
    rate: float = 1.0
    noise: float = 0.0
    fixed_step: float | None = None
    source_cols: slice | None = None    # linear cells: dynamic source range feeding KT_p
    low_cols: slice | None = None       # linear cells: source range of the separate operator
    low_refresh: int = 1                # ... whose product is recomputed every this many steps
    low_bfloat16: bool = False          # ... in bfloat16
    self_coupling: float = 0.0          # linear cells with a bfloat16 operator: the identity
                                        # autapses' k_q, applied elementwise
    cell: DynamicPopulation | None = None   # general cells: the population (its drift)
    inputs: tuple = ()                  # general cells: (compartment, dynamic source range|None)
    stochastic: bool = False            # r is a random draw
    elementwise: bool = True            # r_i = sigma(u_i) with sigma' = activation.derivative
    bias_current: bool = False          # the bias always enters du/dt (nonzero or learnable at
                                        # compile time; otherwise only once it is nonzero)

    def step_size(self, dt: float) -> float:
        """h in u <- u + (h / rate) du/dt for a discrete step of size dt: dt rate, or the
        population's ``fixed_step``."""
        return self.fixed_step if self.fixed_step is not None else dt * self.rate


def _layout(net: "CompiledNetwork") -> tuple:
    """What members of an ensemble must share: populations and their columns, and the
    shapes of weights, masks and biases."""
    def shapes(table):
        return sorted((name, tuple(t.shape)) for name, t in table.items())
    return ([(s.name, s.size, s.r_cols, s.u_cols) for s in net.slots.values()],
            shapes(net.weights), shapes(net.masks), shapes(net.biases))


def _span(slots) -> slice | None:
    """The smallest column range of r covering the given slots (None when there are none)."""
    cols = [s.r_cols for s in slots]
    return slice(min(c.start for c in cols), max(c.stop for c in cols)) if cols else None


class CompiledNetwork:
    """Weights and biases as tensors plus the layout of the state; builds per-phase dynamics.

    ``weights``: projection name -> W (target x source); ``biases``: population name -> b,
    one per dynamic population, (n,) added to v_soma or, for kinds with a bias per
    compartment, (k, n) (``Population.initial_bias`` / ``add_bias``); population rules may
    update them in place; a phase reads them when it is built."""

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
                self.slots[pop.name] = PopulationSlot(pop.name, pop.size, r_cols)
                continue
            if not isinstance(pop, DynamicPopulation):
                raise ConfigError(f'population "{pop.name}" (kind "{pop.kind}") is neither an '
                                  "input nor a cell model; derive its class from "
                                  "DynamicPopulation (or InputPopulation).")
            u_cols = slice(u_off, u_off + pop.size)
            u_off += pop.size
            custom = type(pop).activate is not DynamicPopulation.activate
            activation = pop.activation_function
            self.slots[pop.name] = PopulationSlot(
                pop.name, pop.size, r_cols, u_cols, activation=activation,
                activate=pop.activate if custom else activation.forward,
                decay=pop.linear_coefficients()[0] if pop.is_linear else 0.0,
                rate=float(pop.rate), noise=float(pop.noise), fixed_step=pop.fixed_step,
                cell=None if pop.is_linear else pop, stochastic=pop.stochastic,
                elementwise=activation.elementwise and not custom,
                bias_current=pop.has_bias or bool(pop.rules))
        self.n_all, self.n_dyn = r_off, u_off
        self.low_precision = frozenset(q.name for q in network.projections
                                       if self._in_bfloat16(q))
        self.held = frozenset(q.name for q in network.projections
                              if q.refresh_every > 1 and self._can_hold(q))
        for name, slot in list(self.slots.items()):
            if slot.u_cols is None:
                continue
            incoming = [q for q in network.incoming(name)
                        if not network.population(q.source).is_input]
            if slot.cell is None:
                full, low, diagonal = self._grouped(name)
                self.slots[name] = replace(
                    slot, source_cols=_span(self.slots[q.source] for q in full),
                    low_cols=_span(self.slots[q.source] for q in low),
                    low_refresh=self._refresh_of(name, low),
                    low_bfloat16=any(q.name in self.low_precision for q in low),
                    self_coupling=sum(self.coupling(q) for q in diagonal))
            else:
                self.slots[name] = replace(slot, inputs=tuple(
                    (comp, _span(self.slots[q.source] for q in incoming if q.compartment == comp))
                    for comp in (SOMA, *slot.cell.compartments)))
        self.silent_at_rest = frozenset(
            name for name, slot in self.slots.items()
            if slot.u_cols is not None and not slot.stochastic and
            bool((slot.activate(torch.zeros(1, slot.size, dtype=dtype)) == 0).all()))
        generator = torch.Generator().manual_seed(int(seed))
        self.weights: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        pops = network.population_map
        for proj in network.projections:
            n_post, n_pre = pops[proj.target].size, pops[proj.source].size
            weight = proj.initial_weight(n_post, n_pre, generator)
            if weight is None:
                continue
            mask = proj.initial_mask(n_post, n_pre, generator)
            if mask is not None:
                weight = weight * mask
                self.masks[proj.name] = mask.to(self.device, dtype)
            self.weights[proj.name] = weight.to(self.device, dtype)
        self.biases: dict[str, torch.Tensor] = {
            pop.name: pop.initial_bias(fan_in=network.fan_in(pop.name),
                                       generator=generator).to(self.device, dtype)
            for pop in network.dynamic}
        self._bias_checked: dict[str, tuple] = {}
        self._ff_plan = self._phase_plan = None
        self._stack_plans: dict = {}
        # id of each bfloat16 operator built here -> (a weak reference to it, a number new at
        # each rebuild)
        self.low_stamps: dict[int, tuple] = {}
        self.n_inputs = sum(1 for p in network.populations if p.is_input)
        self.members: int | None = None     # an ensemble's size (see :meth:`stacked`)

    @classmethod
    def stacked(cls, nets: "list[CompiledNetwork]") -> "CompiledNetwork":
        """An ensemble of networks of one layout (neurosim.training.ensemble): weights,
        masks and biases stacked along a leading member axis (M x ...), states M x batch x n,
        each member's products its own (neurosim.dynamics.ops). The members' own tensors become
        views of the stacked ones, so a change made through either is seen by both. The
        ensemble's network description is a copy of member 0's, with rules of its own."""
        first = nets[0]
        for i, net in enumerate(nets[1:], 1):
            if _layout(net) != _layout(first):
                raise ConfigError(f"ensemble member {i} does not have the layout of member 0 "
                                  "(populations, projections, masks); members differ only in "
                                  "seeds and scalar settings.")
            if net.dtype != first.dtype or net.device != first.device:
                raise ConfigError(f"ensemble member {i} is {net.dtype} on {net.device}, member "
                                  f"0 {first.dtype} on {first.device}; use one dtype and device.")
        ensemble = object.__new__(cls)
        ensemble.__dict__.update(first.__dict__)
        ensemble.network = copy.deepcopy(first.network)   # its rules hold the stacked state
        ensemble.members = len(nets)
        ensemble._bias_checked, ensemble._ff_plan, ensemble._phase_plan = {}, None, None
        ensemble._stack_plans, ensemble.low_stamps = {}, {}
        ensemble.__dict__.pop("_packed_low", None)
        for table in ("weights", "masks", "biases"):
            stacked = {}
            for name in getattr(first, table):
                stacked[name] = torch.stack([getattr(net, table)[name] for net in nets])
                for m, net in enumerate(nets):
                    getattr(net, table)[name] = stacked[name][m]
            setattr(ensemble, table, stacked)
        return ensemble

    def _in_bfloat16(self, projection) -> bool:
        """Whether a projection's product runs in bfloat16 (its ``precision``, "auto"
        resolved for this network's dtype, device and CPU)."""
        if projection.precision == "full":
            return False
        target, source = self.slots[projection.target], self.slots[projection.source]
        applies = target.cell is None and source.u_cols is not None
        if projection.precision == "bfloat16":
            if not applies:
                why = ("its source is an input (its product is computed once per phase)"
                       if source.u_cols is None else
                       f'its target "{target.name}" is a general cell (kind '
                       f'"{target.cell.kind}")')
                raise ConfigError(f'projection "{projection.name}": precision "bfloat16" '
                                  f"applies to products recomputed every step between dynamic "
                                  f"populations of linear cells, but {why}; remove precision "
                                  'or set it to "auto".')
            return True
        n_post, n_pre = target.size, source.size
        return (applies and n_post * n_pre >= AUTO_BFLOAT16_ENTRIES and
                self.dtype == torch.float32 and self.device.type == "cpu" and
                ops.native_bfloat16())

    def _can_hold(self, projection) -> bool:
        """Whether a projection with ``refresh_every`` > 1 can hold its product (a product
        recomputed every step, between dynamic populations of linear cells); ConfigError
        otherwise."""
        target, source = self.slots[projection.target], self.slots[projection.source]
        if target.cell is None and source.u_cols is not None:
            return True
        why = ("its source is an input (its product is computed once per phase anyway)"
               if source.u_cols is None else
               f'its target "{target.name}" is a general cell (kind "{target.cell.kind}")')
        raise ConfigError(f'projection "{projection.name}": refresh_every applies to products '
                          "recomputed every step between dynamic populations of linear "
                          f"cells, but {why}; remove refresh_every.")

    def _refresh_of(self, name: str, low: list) -> int:
        """The refresh_every of population ``name``'s separate operator (its projections in
        bfloat16 or held): one precision and one refresh_every for all, else ConfigError.
        Checked on the settings as declared ("auto" as bfloat16 where it could resolve so),
        so that a model file is accepted or refused alike on every machine."""
        pops = self.network.population_map

        def declared(q):      # bfloat16 where the setting can mean it, else full
            big = pops[q.target].size * pops[q.source].size >= AUTO_BFLOAT16_ENTRIES
            return q.precision == "bfloat16" or (q.precision == "auto" and big)
        candidates = [q for q in self.network.incoming(name)
                      if self.slots[q.source].u_cols is not None and q.has_weight and
                      (q.refresh_every > 1 or declared(q))]
        as_declared = {(declared(q), q.refresh_every) for q in candidates}
        as_resolved = {(q.name in self.low_precision, q.refresh_every) for q in low}
        if len(as_declared) > 1 or len(as_resolved) > 1:
            listed = ", ".join(f'"{q.name}" (precision {q.precision}, refresh_every '
                               f"{q.refresh_every})" for q in candidates)
            raise ConfigError(f'population "{name}": its projections in bfloat16 or with '
                              f"refresh_every > 1 form one operator and must share precision "
                              f"and refresh_every, but they are {listed}; give them the same "
                              "precision and refresh_every.")
        return low[0].refresh_every if low else 1

    def _grouped(self, name: str) -> tuple[list, list, list]:
        """A linear cell's dynamic inputs as (full precision, separate operator: bfloat16 or
        held, identity autapses applied elementwise): the autapses leave ``KT_p`` once a
        separate operator exists."""
        incoming = [q for q in self.network.incoming(name)
                    if self.slots[q.source].u_cols is not None]
        low = [q for q in incoming if q.name in self.low_precision or q.name in self.held]
        diagonal = [q for q in incoming if low and q.source == name and q.is_identity]
        full = [q for q in incoming if q not in low and q not in diagonal]
        return full, low, diagonal

    def _rows(self, batch: int) -> tuple:
        """The leading shape of a state: (batch,), or (members, batch) for an ensemble."""
        return (batch,) if self.members is None else (self.members, batch)

    # ------------------------------------------------------------------ layout helpers
    def coupling(self, projection) -> float:
        """k_q: the factor with which a projection's ``W r`` enters du/dt of a linear cell."""
        pop = self.network.population(projection.target)
        g = 1.0 if projection.compartment == SOMA else pop.compartments[projection.compartment]
        return float(g) * float(projection.gain)

    def zero_state(self, batch: int) -> NeuralState:
        """u = 0 everywhere, r = sigma(0) for dynamic populations, inputs 0. Stochastic
        populations start at r = 0 (the mean of a +-1 unit at u = 0) until a step draws them."""
        z = dict(device=self.device, dtype=self.dtype)
        rows = self._rows(batch)
        state = NeuralState(torch.zeros(*rows, self.n_dyn, **z),
                            torch.zeros(*rows, self.n_all, **z), self)
        for slot in self.slots.values():
            if slot.u_cols is not None and not slot.stochastic:
                slot.activate(state.u[..., slot.u_cols], out=state.r[..., slot.r_cols])
        return state

    def u_of(self, state: NeuralState, population: str) -> torch.Tensor:
        """A dynamic population's soma potentials in ``state`` (a batch x n view of ``u``);
        ConfigError for an input population."""
        return state.u[..., self._slot(population, need_dynamic=True).u_cols]

    def r_of(self, state: NeuralState, population: str) -> torch.Tensor:
        """A population's activities in ``state`` (a batch x n view of ``r``; the clamped
        values for an input)."""
        return state.r[..., self._slot(population).r_cols]

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
            rows = tuple(state.r.shape[:-1])
            if value.ndim <= len(rows) and \
                    tuple(value.shape[:-1]) == rows[len(rows) + 1 - value.ndim:]:
                value = value.expand(*rows, -1)       # shared by every sample (or member)
            if tuple(value.shape) != (*rows, slot.size):
                raise ConfigError(f'input "{name}": got shape {tuple(value.shape)}, expected '
                                  f"(batch={rows[-1]}, {slot.size}).")
            state.r[..., slot.r_cols] = value

    def sync_activity(self, state: NeuralState,
                      generator: torch.Generator | None = None) -> None:
        """Recompute ``r = sigma(u)`` for every dynamic population from ``state.u``;
        stochastic activations draw from ``generator``."""
        for slot in self.slots.values():
            if slot.u_cols is not None:
                slot.activate(state.u[..., slot.u_cols], out=state.r[..., slot.r_cols],
                              generator=generator)

    def compartment_potential(self, state: NeuralState, population: str,
                              compartment: str) -> torch.Tensor:
        """Dendritic potential ``v_c = sum_{q -> c} gain_q W_q r_src`` (batch x n)."""
        pop = self.network.population(population)
        if compartment not in pop.compartments:
            raise unknown("compartment", compartment, list(pop.compartments),
                          f'population "{population}" (dendritic potentials)')
        return self._projected(state, population, compartment)

    def compartment_inputs(self, state: NeuralState, population: str) -> dict[str, torch.Tensor]:
        """Every compartment's input ``v_c = sum_{q -> c} gain_q W_q r_src`` of a dynamic
        population, "soma" (the direct currents of soma projections) first. The bias and
        nudges are not included (they belong to a phase; see :attr:`biases`)."""
        self._slot(population, need_dynamic=True)
        comps = self.network.population(population).compartments
        return {c: self._projected(state, population, c) for c in (SOMA, *comps)}

    def _projected(self, state: NeuralState, population: str, compartment: str) -> torch.Tensor:
        total = torch.zeros(*state.r.shape[:-1], self.slots[population].size,
                            dtype=self.dtype, device=self.device)
        for q in self.network.incoming(population):
            if q.compartment != compartment:
                continue
            src = self.r_of(state, q.source)
            if not q.is_dense:
                total.add_(q.drive(src, self.weights.get(q.name)), alpha=float(q.gain))
            elif q.name in self.weights:
                ops.addmm_(total, src, self.weights[q.name].mT, alpha=float(q.gain))
            else:
                total.add_(src, alpha=float(q.gain))
        return total

    # ------------------------------------------------------------------ operators
    def build_operators(self, reuse: dict | None = None) -> dict:
        """Stack the dynamic inputs of each linear cell into ``KT_p`` (key: population) and
        those of each compartment of a general cell into ``VT_{p,c}`` (key: (population,
        compartment)), from the current weights; call again after they change. ``reuse``
        recycles buffers. Narrow operators and bfloat16 ones (:class:`LowPrecision`) are
        column-major (a transposed view; see module docstring): the fused loop reads a
        bfloat16 operator's rows W_p^low."""
        ops = {}
        for name, slot in self.slots.items():
            if slot.cell is not None:
                for comp, cols in slot.inputs:
                    if cols is not None:
                        ops[name, comp] = self._stack(name, cols, comp, reuse.get((name, comp))
                                                      if reuse else None)
                continue
            if slot.source_cols is not None:
                ops[name] = self._stack(name, slot.source_cols, None,
                                        reuse.get(name) if reuse else None)
            if slot.low_cols is not None:
                key = LowPrecision(name)
                ops[key] = self._stack(name, slot.low_cols, None, reuse.get(key) if reuse
                                       else None, low=True)
                if slot.self_coupling:
                    key = Diagonal(name)
                    diagonal = self._stack_plans.get(key)
                    if diagonal is None:
                        diagonal = self._stack_plans[key] = torch.tensor(
                            slot.self_coupling, dtype=self.dtype, device=self.device)
                    ops[key] = diagonal
        return ops

    def _stack(self, name: str, cols: slice, compartment: str | None, kt,
               low: bool = False) -> torch.Tensor:
        """Blocks ``coef_q W_q^T`` of population ``name``'s dynamic inputs over source columns
        ``cols`` (zero where nothing projects): a linear cell's full-precision inputs with k_q
        (``compartment`` None), or its bfloat16 ones (``low``), or a general cell's inputs onto
        ``compartment`` with gain_q."""
        slot = self.slots[name]
        lo = cols.start
        lead = () if self.members is None else (self.members,)
        shape = (*lead, cols.stop - lo, slot.size)
        bfloat16 = low and slot.low_bfloat16
        dtype = torch.bfloat16 if bfloat16 else self.dtype
        if kt is None or tuple(kt.shape) != shape or kt.dtype != dtype:
            # column-major: narrow operators (module docstring) and bfloat16 ones (built from
            # row-major weights without a transposing cast, 5x faster; the loop packs rows)
            narrow = bfloat16 or (slot.size <= NARROW_SIZE and
                                  NARROW_RATIO * slot.size <= shape[-2])
            kt = torch.empty((*lead, *shape[:-3:-1]) if narrow else shape, dtype=dtype,
                             device=self.device)
            kt = kt.mT if narrow else kt
        # the writes below, recorded once per operator buffer and set of weight tensors (the
        # weights change in place, so the recorded views stay theirs)
        plan_key = (name, compartment, low)
        plan = self._stack_plans.get(plan_key)
        if plan is not None and plan[0] is kt and all(self.weights.get(q) is w
                                                       for q, w in plan[1]):
            for write, target, weight, coef in plan[2]:
                if write == "mul":
                    torch.mul(weight, coef, out=target)
                elif write == "add":
                    target.add_(weight, alpha=coef)
                elif write == "zero":
                    target.zero_()
                else:
                    target.diagonal(dim1=-2, dim2=-1).add_(coef)
            if low:            # the fused loop repacks a bfloat16 operator after each write
                self.low_stamps = {key: entry for key, entry in self.low_stamps.items()
                                   if entry[0]() is not None}
                self.low_stamps[id(kt)] = (weakref.ref(kt), next(_LOW_STAMPS))
            return kt
        writes, used = [], []
        column_major = not kt.is_contiguous()
        written = set()          # source blocks holding a value (the rest are zeroed)
        if compartment is None:
            full, low_inputs, _ = self._grouped(name)
            chosen = low_inputs if low else full
        else:
            chosen = [q for q in self.network.incoming(name)
                      if self.slots[q.source].u_cols is not None and q.compartment == compartment]
        incoming = sorted(chosen, key=lambda q: q.name not in self.weights)   # weighted first
        for q in incoming:
            if not q.is_dense:
                raise ConfigError(f'projection "{q.name}" ({q.kind}) comes from the dynamic '
                                  f'population "{q.source}": ODE phases integrate spatial '
                                  "projections only from input populations; train this "
                                  "network with a feed-forward protocol (pepita, backprop) or "
                                  "feed the projection from an input.")
            src = self.slots[q.source]
            block = kt[..., src.r_cols.start - lo:src.r_cols.stop - lo, :]
            coef = self.coupling(q) if compartment is None else float(q.gain)
            if q.name in self.weights:
                # written in the operator's memory order (a column-major block as W's rows:
                # torch's kernels are several times slower across the orders, above all
                # when casting to bfloat16)
                used.append((q.name, self.weights[q.name]))
                weight, out = self.weights[q.name].mT, block
                if column_major:
                    weight, out = weight.mT, block.mT
                writes.append(("add" if q.source in written else "mul", out, weight, coef))
            else:
                if q.source not in written:
                    writes.append(("zero", block, None, None))
                writes.append(("diagonal", block, None, coef))
            written.add(q.source)
        for other in self.slots.values():
            start, stop = max(other.r_cols.start, lo), min(other.r_cols.stop, lo + shape[-2])
            if other.name not in written and start < stop:
                writes.append(("zero", kt[..., start - lo:stop - lo, :], None, None))
        self._stack_plans[plan_key] = (kt, used, writes)
        return self._stack(name, cols, compartment, kt, low)

    def input_currents(self, inputs: Mapping[str, torch.Tensor]) -> dict:
        """Constant inputs from clamped populations: ``sum_q k_q W_q x_q`` per linear cell
        (key: population) and ``sum_{q -> c} gain_q W_q x_q`` per compartment of a general
        cell (key: (population, compartment))."""
        currents: dict = {}
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
            if x.ndim not in (2, 2 + (self.members is not None)) or x.shape[-1] != size:
                raise ConfigError(f'input "{q.source}": got shape {tuple(x.shape)}, expected '
                                  f"(batch, {size}) or ({size},).")
            general = self.slots[q.target].cell is not None
            coef = float(q.gain) if general else self.coupling(q)
            key = (q.target, q.compartment) if general else q.target
            if not q.is_dense:
                contrib = q.drive(x, self.weights.get(q.name))
                if coef != 1.0:
                    contrib = contrib * coef
            elif q.name in self.weights:
                contrib = ops.matmul(x, self.weights[q.name].mT)
                if coef != 1.0:
                    contrib.mul_(coef)
            else:
                contrib = x * coef
            if key in currents:
                currents[key] += contrib
            else:
                currents[key] = contrib
        return currents

    def phase(self, operators: Mapping, inputs: Mapping[str, torch.Tensor],
              nudges: Mapping[str, tuple] | None = None, currents=None,
              generator: torch.Generator | None = None,
              at_rest: bool = False) -> "PhaseDynamics":
        """Dynamics of one phase: fixed operators, clamped inputs, the biases as they are now
        and optional nudges ``{population: (target y, beta)}`` adding ``beta (y - r)`` to the
        soma input. ``generator`` draws noise and stochastic activities. ``at_rest`` promises
        that the phase starts from u = 0: the first Gauss-Seidel step then skips the products
        of sources that are silent at rest (sigma(0) = 0), which are exactly zero."""
        self.phase_plan()
        currents = dict(self.input_currents(inputs) if currents is None else currents)
        operators = dict(operators)
        cell_nudges = {}
        for name, (target, beta) in (nudges or {}).items():
            slot = self._slot(name, need_dynamic=True)
            target = torch.as_tensor(target, dtype=self.dtype, device=self.device)
            if target.shape[-1] != slot.size:
                raise ConfigError(f'nudge target for "{name}" has {target.shape[-1]} columns, '
                                  f"the population has {slot.size} neurons.")
            if isinstance(beta, torch.Tensor) and beta.dim() > 0:     # one per member
                if self.members is None or tuple(beta.shape) != (self.members,):
                    raise ConfigError(f'nudge of "{name}": beta has shape '
                                      f"{tuple(beta.shape)}; one number per ensemble member "
                                      f"({self.members or 'not an ensemble'}) or a number.")
                if not bool(beta.any()):
                    continue
                beta = beta.to(self.device, self.dtype)
            else:
                beta = float(beta)
                if beta == 0.0:
                    continue
            push = target * ops.member_scale(beta, target)
            key = name if slot.cell is None else (name, SOMA)
            currents[key] = currents[key] + push if key in currents else push
            if slot.cell is not None:
                cell_nudges[name] = beta
                continue
            kt = operators.get(name)
            if slot.low_cols is not None and (kt is None or not (
                    slot.source_cols.start <= slot.r_cols.start < slot.source_cols.stop)):
                # its own block is in bfloat16 (or absent): the nudge's -beta r_p joins the
                # elementwise self-coupling, in full precision
                key = Diagonal(name)
                base = operators.get(key, torch.zeros((), dtype=self.dtype, device=self.device))
                operators[key] = base - (beta if isinstance(beta, float) else
                                         beta.reshape(-1, 1, 1))
                continue
            if kt is None or slot.source_cols is None or not (
                    slot.source_cols.start <= slot.r_cols.start < slot.source_cols.stop):
                raise ConfigError(f'population "{name}" cannot be nudged: it has no recurrent '
                                  "self-connection block (add an identity projection "
                                  "with gain 0 onto itself).")
            kt = kt.clone()
            off = slot.r_cols.start - slot.source_cols.start
            diagonal = kt[..., off:off + slot.size, :].diagonal(dim1=-2, dim2=-1)
            diagonal.sub_(beta if isinstance(beta, float) else beta.unsqueeze(-1))
            operators[name] = kt
        for name, slot in self.slots.items():
            if slot.u_cols is not None and self._bias_in_use(name):
                bias = self.biases[name].unsqueeze(-2)
                key = name if slot.cell is None else (name, SOMA)
                currents[key] = currents[key] + bias if key in currents else bias.clone()
        return PhaseDynamics(self, operators, currents, generator,
                             silent=set(self.silent_at_rest) if at_rest else set(),
                             cell_nudges=cell_nudges)

    def phase_plan(self) -> tuple:
        """What every phase of this network shares, fixed once compiled: (dynamic slots,
        general cells among them, deterministic ones, each dynamic population's dynamic
        sources). Raises for populations without a soma equation (they run in discrete
        passes)."""
        if self._phase_plan is None:
            for pop in self.network.dynamic:
                if not pop.has_soma_equation:
                    raise ConfigError(f'population "{pop.name}" (kind "{pop.kind}") has no '
                                      "soma equation: it runs in discrete passes (its "
                                      "protocol, or CompiledNetwork.feedforward), not in an "
                                      "ODE phase or simulation; use a protocol made for it "
                                      '(e.g. "infomorphic").')
            slots = [s for s in self.slots.values() if s.u_cols is not None]
            dynamic = {s.name for s in slots}
            sources = {s.name: frozenset(q.source for q in self.network.incoming(s.name)
                                         if q.source in dynamic) for s in slots}
            self._phase_plan = (slots, [s for s in slots if s.cell is not None],
                                [s for s in slots if not s.stochastic], sources)
        return self._phase_plan

    # ------------------------------------------------------------------ discrete passes
    def feedforward(self, inputs: Mapping[str, torch.Tensor], *, state: NeuralState | None = None,
                    dropout: Mapping[str, float] | None = None,
                    masks: Mapping[str, torch.Tensor] | None = None,
                    generator: torch.Generator | None = None,
                    transform: Mapping[str, Callable] | None = None
                    ) -> tuple[NeuralState, dict[str, torch.Tensor]]:
        """One discrete sweep, no ODE. In declaration order each dynamic population p reads
        the newest activities (inputs clamped; populations not yet visited read ``state``, or
        0) and sets

            v_c = sum_{q -> c} gain_q W_q r_src    (+ b_p: v_soma, or per compartment)
            u_p = feedforward_p(v)                 (linear cells: sum_c k_c v_c / d_p)
            r_p = T_p(sigma(u_p)) * m_p,   m_p = Bernoulli(1 - p_drop) / (1 - p_drop)

        (sigma may draw, e.g. stochastic_sign: +-1 with P(+1) = sigmoid(u), from
        ``generator``).

        ``dropout`` maps populations to drop probabilities; their masks are drawn from
        ``generator`` unless ``masks`` (as returned by an earlier call) gives them.
        ``transform`` maps populations to a function T_p of their (batch x n) activity (e.g.
        a normalisation; identity otherwise). Returns the new state and the masks used."""
        plan, required, dynamic, ahead = self._feedforward_plan()
        dropout, given = dict(dropout or {}), dict(masks or {})
        for what, table in (("dropout", dropout), ("masks", given)):
            for name in table:
                if name in dynamic:
                    continue
                if name in self.slots:
                    raise ConfigError(f'feedforward {what}: population "{name}" is an input '
                                      "(clamped); masks apply to the dynamic populations: "
                                      f"{', '.join(dynamic)}.")
                raise unknown("population", name, dynamic, f"feedforward {what}")
        for name, p in dropout.items():
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
                raise ConfigError(f'dropout for population "{name}": the drop probability must '
                                  f"be a number in [0, 1), got {p!r}.")
        if state is not None:
            batch = state.r.shape[-2]
        else:
            shapes = [torch.as_tensor(x).shape for x in inputs.values()]
            batch = max((s[-2] for s in shapes if len(s) >= 2), default=1)
        missing = required.difference(inputs)
        if missing:
            name = sorted(missing)[0]
            feeds = next(q.name for q in self.network.projections if q.source == name)
            raise ConfigError(f'input population "{name}" feeds projection "{feeds}" but no '
                              f'input was given for it; pass inputs={{"{name}": tensor}}.')
        z = dict(device=self.device, dtype=self.dtype)
        # every column is written before it is read when every input is given and no
        # population reads a later one: then the buffers need no zero fill
        fill = torch.empty if len(inputs) == self.n_inputs and not ahead else torch.zeros
        out = state.clone() if state is not None else NeuralState(
            fill(*self._rows(batch), self.n_dyn, **z), fill(*self._rows(batch), self.n_all, **z),
            self)
        self.clamp_inputs(out, inputs)
        used = {}
        for pop, slot, terms, bias_coef in plan:
            if terms is not None:
                u = self._linear_feedforward(out, slot, terms, bias_coef)
            else:
                v = pop.add_bias(self.compartment_inputs(out, pop.name), self.biases[pop.name])
                u = pop.feedforward(v)
            out.u[..., slot.u_cols] = u
            r = out.r[..., slot.r_cols]
            slot.activate(out.u[..., slot.u_cols], out=r, generator=generator)
            if transform and pop.name in transform:
                r.copy_(transform[pop.name](r))
            mask = given.get(pop.name)
            if mask is None and pop.name in dropout:
                mask = self._dropout_mask(pop.name, dropout[pop.name], r.shape, generator)
            if mask is not None:
                if tuple(mask.shape) != tuple(r.shape):
                    raise ConfigError(f'dropout mask for population "{pop.name}" has shape '
                                      f"{tuple(mask.shape)}, the pass needs {tuple(r.shape)}; "
                                      "reuse masks only for a batch of the same size.")
                r.mul_(mask)
                used[pop.name] = mask
        return out, used

    def _feedforward_plan(self) -> tuple[list, set, list, bool]:
        """What a feed-forward sweep needs: per dynamic population (population, slot, terms,
        bias coefficient) with terms ((weight name or None, k_q gain_q / d, source columns of
        r, the projection if it is spatial else None), ...) for linear cells (None for general cells), rebuilt on every
        call so that changed gains or conductances count, as in the ODE phases; and, worked
        out once, the input populations that feed a projection, the dynamic populations and
        whether a population reads one visited at or after it (top-down or recurrent input)."""
        if self._ff_plan is None:
            required = {q.source for q in self.network.projections
                        if self.slots[q.source].u_cols is None}
            order = {p.name: i for i, p in enumerate(self.network.populations)}
            ahead = any(self.slots[q.source].u_cols is not None and
                        order[q.source] >= order[q.target] for q in self.network.projections)
            self._ff_plan = (required, [p.name for p in self.network.dynamic], ahead)
        plan = []
        for pop in self.network.dynamic:
            slot = self.slots[pop.name]
            if slot.cell is not None or type(pop).feedforward is not \
                    DynamicPopulation.feedforward:
                plan.append((pop, slot, None, 0.0))
                continue
            decay, coupling = pop.linear_coefficients()
            if decay == 0:
                pop.feedforward({})               # raises its "d = 0" error
            terms = tuple((q.name if q.name in self.weights else None,
                           coupling[q.compartment] * float(q.gain) / decay,
                           self.slots[q.source].r_cols, None if q.is_dense else q)
                          for q in self.network.incoming(pop.name))
            plan.append((pop, slot, terms, coupling[SOMA] / decay))
        return (plan, *self._ff_plan)

    def _linear_feedforward(self, state: NeuralState, slot, terms, bias_coef) -> torch.Tensor:
        """u* = sum_c k_c v_c / d of a linear cell, one product per incoming projection
        (the same as :meth:`DynamicPopulation.feedforward` of the compartment inputs, without
        building them)."""
        u = None
        for weight, coef, cols, spatial in terms:
            src = state.r[..., cols]
            if spatial is not None:
                contrib = spatial.drive(src, None if weight is None else self.weights[weight])
                if u is None:
                    u = contrib if coef == 1.0 else contrib * coef
                else:
                    u.add_(contrib, alpha=coef)
            elif weight is not None:
                if u is None:
                    u = ops.matmul(src, self.weights[weight].mT)
                    if coef != 1.0:
                        u.mul_(coef)
                else:
                    ops.addmm_(u, src, self.weights[weight].mT, alpha=coef)
            elif u is None:
                u = src * coef
            else:
                u.add_(src, alpha=coef)
        if u is None:
            u = torch.zeros(*state.r.shape[:-1], slot.size, dtype=self.dtype,
                            device=self.device)
        if self._bias_in_use(slot.name):
            u.add_(self.biases[slot.name].unsqueeze(-2), alpha=bias_coef)
        return u

    def _bias_in_use(self, name: str) -> bool:
        """Whether population ``name``'s bias enters its input: nonzero or learnable when
        compiled, or set nonzero since (checked again only after the tensor changed)."""
        if self.slots[name].bias_current:
            return True
        bias = self.biases[name]
        if bias.is_inference():            # no version counter to tell a change
            return bool(bias.any())
        key = (bias.data_ptr(), bias._version)
        cached = self._bias_checked.get(name)
        if cached is None or cached[0] != key:
            cached = (key, bool(bias.any()))
            self._bias_checked[name] = cached
        return cached[1]

    def _dropout_mask(self, name: str, p: float, shape, generator) -> torch.Tensor:
        """Bernoulli(1 - p) keep-mask scaled by 1 / (1 - p)."""
        if generator is None:
            raise ConfigError(f'dropout on population "{name}" draws a random mask: pass '
                              "generator= (or masks= from an earlier pass).")
        keep = uniform(shape, generator, device=self.device, dtype=self.dtype)
        return keep.ge_(p).mul_(1.0 / (1.0 - p))      # in place: 1 / (1 - p) or 0


@dataclass
class PhaseDynamics:
    """Right-hand side and in-place steps for one phase (operators and drive fixed).

    ``cell_nudges``: population -> beta for nudged general cells (their ``beta y`` is in
    ``currents[(population, "soma")]``, their ``-beta r`` is added per evaluation).

    ``drive``: time-varying input (neurosim.stimuli.Drive) or None. Its ``currents(t)`` are
    added to ``currents`` (same keys) wherever the right-hand side is evaluated at time t, and
    its ``clamp(state, t)`` writes time-varying clamped inputs into ``state.r``. ``t`` is the
    time of the state being stepped; :func:`neurosim.solvers.solve` sets it (:meth:`set_time`)
    before every step, and Runge-Kutta stages evaluate at ``t + c_i dt``."""

    net: CompiledNetwork
    operators: Mapping
    currents: Mapping
    generator: torch.Generator | None = None
    silent: set = field(default_factory=set)     # populations with r = 0 exactly, until a step
    cell_nudges: Mapping[str, float] = field(default_factory=dict)
    drive: object | None = None
    t: float = 0.0
    rhs_evals: int = field(default=0)
    step_index: int = 0            # the phase's step that the next discrete step takes
    _driven: tuple = field(default=(None, None), repr=False)
    _held: tuple = field(default=(None, {}), repr=False)
    _held_next: int | None = field(default=None, repr=False)
    _plan: list = field(default_factory=list, repr=False)
    _plan_key: tuple = field(default=(), repr=False)

    def __post_init__(self):
        self.slots, self.cells, self._deterministic, self.sources = self.net.phase_plan()
        self.holding = any(s.low_refresh > 1 for s in self.slots)   # some products held

    @property
    def stochastic(self) -> bool:
        """True when a population has noise > 0."""
        return any(s.noise > 0 for s in self.slots)

    @property
    def drawn(self) -> list[str]:
        """Populations whose activity is a random draw (stochastic activations)."""
        return [s.name for s in self.slots if s.stochastic]

    def to(self, dtype) -> "PhaseDynamics":
        """A copy of this phase evaluating in ``dtype`` (its own tensors)."""
        def copy(tensors):       # a bfloat16 operator stays one
            return {k: v.clone() if isinstance(k, LowPrecision) and v.dtype == torch.bfloat16
                    else v.to(dtype, copy=True) for k, v in tensors.items()}
        return PhaseDynamics(self.net, copy(self.operators), copy(self.currents), self.generator,
                             cell_nudges=dict(self.cell_nudges), drive=self.drive, t=self.t)

    def set_time(self, state: NeuralState, t: float) -> None:
        """Make ``t`` the time of ``state`` (the next step starts there); a drive writes its
        clamped inputs at t into ``state.r``."""
        self.t = float(t)
        if self.drive is not None:
            self.drive.clamp(state, self.t)

    def currents_at(self, t: float | None = None) -> Mapping:
        """Constant currents plus the drive's currents at time t (default: :attr:`t`)."""
        if self.drive is None:
            return self.currents
        t = self.t if t is None else float(t)
        if self._driven[0] == t:
            return self._driven[1]
        merged = dict(self.currents)
        for key, value in self.drive.currents(t).items():
            merged[key] = merged[key] + value if key in merged else value
        self._driven = (t, merged)
        return merged

    def rhs(self, u: torch.Tensor, r: torch.Tensor, t=None, held=None) -> torch.Tensor:
        """Jacobi du/dt at soma potentials ``u`` and time ``t`` (default :attr:`t`; only a
        drive depends on it); ``r`` is a scratch activity buffer whose input columns hold the
        clamped inputs (its deterministic dynamic columns are overwritten with sigma(u);
        stochastic ones are read as drawn). Products are recomputed (the exact du/dt) unless
        ``held`` (population -> (buffer, due), from an Euler step) holds them."""
        self.rhs_evals += 1
        currents = self.currents_at(None if t is None or self.drive is None else float(t))
        du = torch.empty_like(u)
        for slot in self._deterministic:
            slot.activate(u[..., slot.u_cols], out=r[..., slot.r_cols])
        for slot in self.slots:
            if slot.cell is None:
                self._drift(slot, u, r, du[..., slot.u_cols], currents,
                            None if held is None else held.get(slot.name))
            else:
                du[..., slot.u_cols] = self._cell_drift(slot, u, r, currents)
        return du

    def differentiable_rhs(self, u: torch.Tensor, r: torch.Tensor, t=None) -> torch.Tensor:
        """du/dt like :meth:`rhs` but without writing into its arguments, so that autograd
        (``torch.func``) can differentiate it with respect to ``u``; ``r`` gives the clamped
        columns."""
        currents = self.currents_at(t)
        r = torch.cat([r[..., s.r_cols] if s.u_cols is None or s.stochastic else
                       s.activate(u[..., s.u_cols]) for s in self.net.slots.values()], dim=-1)
        return torch.cat([self._drift(s, u, r, currents=currents) if s.cell is None else
                          self._cell_drift(s, u, r, currents) for s in self.slots], dim=-1)

    def held(self, state: NeuralState) -> dict[str, torch.Tensor]:
        """The held products ``r_low KT_p^low`` of populations whose separate operator has
        ``low_refresh`` > 1 (population -> rows x n in the state's dtype), kept for the
        buffers of ``state``; new buffers are refreshed at the next step. The eager steps and
        the fused loop share them."""
        key = (state.u.data_ptr(), tuple(state.u.shape), state.u.dtype)
        if self._held[0] != key:
            self._held = (key, {s.name: torch.zeros((*state.u.shape[:-1], s.size),
                                                    dtype=state.u.dtype, device=state.u.device)
                                for s in self.slots if s.low_refresh > 1})
            self._held_next = None
        return self._held[1]

    def held_values(self) -> tuple[int, dict[str, torch.Tensor]] | None:
        """(the step that the held products continue into, population -> held product), or
        None when nothing is held yet: what a later phase of the same run (or a checkpoint)
        carries on with (:meth:`carry_held`)."""
        if self._held_next is None or not self._held[1]:
            return None
        return self._held_next, self._held[1]

    def carry_held(self, state: NeuralState, step: int | None, values: Mapping) -> None:
        """Continue held products of an earlier phase (:meth:`held_values`) at step ``step``
        of ``state``: the next step, if it is ``step``, uses them until its refresh (None:
        the next step refreshes them whatever it is)."""
        buffers = self.held(state)
        if set(values) != set(buffers):
            raise ConfigError(f"held products of {sorted(values)} cannot continue a phase that "
                              f"holds {sorted(buffers)}; the network changed.")
        for name, value in values.items():
            buffers[name].copy_(torch.as_tensor(value).reshape(buffers[name].shape))
        self._held_next = None if step is None else int(step)

    def held_for(self, state: NeuralState, step: int) -> tuple[dict, bool]:
        """(the held buffers of ``state``, whether they hold the products that step ``step``
        continues with), for the fused loop."""
        buffers = self.held(state)
        return buffers, self._held_next == step

    def resume_at(self, step: int, held_current: bool) -> None:
        """Make ``step`` the next step to take, with the held products in the buffers
        current for it (``held_current``) or to be refreshed by it."""
        self.step_index = step
        self._held_next = step if held_current else None

    def stepped_to(self, step: int) -> None:
        """Record that the steps up to ``step`` were taken in order (held products current)."""
        self.step_index = self._held_next = step

    def refresh_due(self, slot: PopulationSlot, step: int) -> bool:
        """Whether step ``step`` of the phase recomputes the held product of ``slot``: at
        multiples of its ``low_refresh``, and at the first step after its buffers were made or
        the steps were not taken in order (a solve resumed elsewhere)."""
        return self._held_next != step or step % slot.low_refresh == 0

    def _drift(self, slot: PopulationSlot, u, r, out=None, currents=None,
               held=None) -> torch.Tensor:
        """Linear cell: rate [-d u_p + r_src KT_p (+ r_low KT_p^low + c_p r_p) + I_p], into
        ``out`` (or a new tensor); ``held``: (buffer, due) where the separate product is
        held (recomputed into the buffer when due)."""
        u_p = u[..., slot.u_cols]
        kt = self.operators.get(slot.name)
        if kt is not None:
            out = ops.matmul(r[..., slot.source_cols], kt, out=out)
            out.add_(u_p, alpha=-slot.decay)
        else:
            out = torch.mul(u_p, -slot.decay, out=out)
        if slot.low_cols is not None:
            low = self.operators[LowPrecision(slot.name)]
            if held is None:
                out.add_(ops.matmul(r[..., slot.low_cols].to(low.dtype), low))
            else:
                buffer, due = held
                if due:
                    buffer.copy_(ops.matmul(r[..., slot.low_cols].to(low.dtype), low))
                out.add_(buffer)
            diagonal = self.operators.get(Diagonal(slot.name))
            if diagonal is not None:
                out.addcmul_(r[..., slot.r_cols], diagonal)
        current = (self.currents if currents is None else currents).get(slot.name)
        if current is not None:
            out.add_(current)
        if slot.rate != 1.0:
            out.mul_(slot.rate)
        return out

    def _cell_drift(self, slot: PopulationSlot, u, r, currents=None) -> torch.Tensor:
        """General cell: drift(u_p, v) with v from :meth:`cell_inputs`."""
        return slot.cell.drift(u[..., slot.u_cols], self.cell_inputs(slot, r, currents))

    def cell_inputs(self, slot: PopulationSlot, r: torch.Tensor,
                    currents=None) -> dict[str, torch.Tensor]:
        """A general cell's compartment inputs at activities ``r`` (batch x n each, read
        only): v_c = r_src VT_{p,c} + clamped part (+ the drive's currents, ``currents``
        defaulting to those at :attr:`t`); v_soma also holds the bias and the nudge
        beta (y - r_p)."""
        rows, v = tuple(r.shape[:-1]), {}
        currents = self.currents_at() if currents is None else currents
        for comp, cols in slot.inputs:
            total = currents.get((slot.name, comp))
            if cols is not None:
                product = ops.matmul(r[..., cols], self.operators[slot.name, comp])
                total = product if total is None else product + total
            if total is None:
                total = r.new_zeros(1, slot.size)
            v[comp] = total.expand(*rows, slot.size)
        beta = self.cell_nudges.get(slot.name)
        if beta is not None:
            r_p = r[..., slot.r_cols]
            v[SOMA] = v[SOMA] - ops.member_scale(beta, r_p) * r_p
        return v

    def euler_step_(self, state: NeuralState, dt: float, synced: bool = False) -> None:
        """Explicit (Jacobi) Euler step, in place: u <- u + (h/rate) f(u); r <- sigma(u)
        (held products as :attr:`PopulationSlot.low_refresh` says). Linear cells take it as
        u_p <- (1 - h d_p) u_p + h (r_src KT_p + r_low KT_p^low + c_p r_p + I_p), every product
        reading the activities before the step; ``synced``: ``state.r`` already holds
        sigma(u) (the previous step's end), so it is not recomputed first."""
        if not self.cells:
            self._linear_euler_step_(state, dt, synced)
            return
        step, held = self.step_index, None
        if self.holding:
            held = {name: (buffer, self.refresh_due(self.net.slots[name], step))
                    for name, buffer in self.held(state).items()}
        du = self.rhs(state.u, state.r, held=held)
        self.stepped_to(step + 1)
        for slot in self.slots:
            state.u[..., slot.u_cols].add_(du[..., slot.u_cols],
                                           alpha=slot.step_size(dt) / slot.rate)
        self._noise_(state, dt)
        self.net.sync_activity(state, self.generator)

    def _linear_euler_step_(self, state: NeuralState, dt: float, synced: bool) -> None:
        """:meth:`euler_step_` of a network of linear cells: per population one fused
        ``u_p <- beta u_p + alpha r_src KT_p`` and the other terms in place (a population's
        products read ``r``, which changes only at the end of the step)."""
        self.rhs_evals += 1
        if not synced:
            for slot in self._deterministic:
                slot.activate(state.u[..., slot.u_cols], out=state.r[..., slot.r_cols])
        currents = self.currents_at() if self.drive is not None else None
        step = self.step_index
        held = self.held(state) if self.holding else None
        for slot, u_p, product, current, r_p, low in self._bind(state):
            if currents is not None:
                current = currents.get(slot.name)
            h = slot.step_size(dt)
            if product is not None:
                target, left, right = product
                ops.addmm_(target, left, right, beta=1.0 - h * slot.decay, alpha=h)
            else:
                u_p.mul_(1.0 - h * slot.decay)
            if low is not None:
                self._add_separate_(slot, u_p, r_p, low, held, step, h)
            if current is not None:
                u_p.add_(current, alpha=h)
        self.stepped_to(step + 1)
        self._noise_(state, dt)
        self.net.sync_activity(state, self.generator)

    def _add_separate_(self, slot: PopulationSlot, u_p, r_p, low: tuple, held, step: int,
                       h: float, active: bool = True) -> None:
        """u_p += h (r_low KT_p^low + c_p r_p): the separate operator's product (recomputed
        into the held buffer when due, where it is held; zero while its sources are silent,
        ``active`` False) and the self-coupling. ``low``: (r_low, its bfloat16 buffer or None,
        KT_p^low, c_p or None), as :meth:`_bind` gives it."""
        source, rounded, kt, diagonal = low
        buffer = held.get(slot.name) if held else None
        refresh = buffer is None or self.refresh_due(slot, step)
        if refresh and active:
            into = buffer if buffer is not None and buffer.dtype == kt.dtype else None
            value = ops.matmul(source if rounded is None else rounded.copy_(source), kt,
                               out=into)
            if buffer is None:
                u_p.add_(value, alpha=h)
            elif into is None:              # a bfloat16 product
                buffer.copy_(value)
        elif refresh and buffer is not None:
            buffer.zero_()                  # silent sources: the product is zero
        if buffer is not None:
            u_p.add_(buffer, alpha=h)
        if diagonal is not None and active:
            u_p.addcmul_(r_p, diagonal, value=h)

    def gauss_seidel_step_(self, state: NeuralState, dt: float) -> None:
        """Layer-ordered Euler step: populations are updated one after another in declaration
        order, each reading the newest activities (linear cells:
        u_p <- (1 - h d_p) u_p + h (K_p r + K_p^low r + c_p r_p + I_p), h = dt rate_p; general cells:
        u_p <- u_p + (h / rate_p) drift_p(u_p, v); then r_p <- sigma(u_p)); a held
        K_p^low r (``low_refresh`` > 1) is recomputed when due (:meth:`refresh_due`)."""
        self.rhs_evals += 1
        silent = self.silent
        driven = self.currents_at() if self.drive is not None else None
        step = self.step_index
        held = self.held(state) if self.holding else None
        for slot, u_p, product, current, r_p, low in self._bind(state):
            if driven is not None:
                current = driven.get(slot.name)
            h = slot.fixed_step if slot.fixed_step is not None else dt * slot.rate
            active = not (silent and self.sources[slot.name] <= silent)
            if product is not None and active:
                target, left, right = product
                ops.addmm_(target, left, right, beta=1.0 - h * slot.decay, alpha=h)
            elif slot.cell is None:
                u_p.mul_(1.0 - h * slot.decay)
            else:
                u_p.add_(self._cell_drift(slot, state.u, state.r, driven), alpha=h / slot.rate)
            if low is not None:
                self._add_separate_(slot, u_p, r_p, low, held, step, h, active)
            silent.discard(slot.name)
            if current is not None:
                u_p.add_(current, alpha=h)
            if slot.noise > 0:
                u_p.add_(self._gaussian(u_p), alpha=slot.noise * (h * slot.rate) ** 0.5)
            slot.activate(u_p, out=r_p, generator=self.generator)
        silent.clear()
        self.stepped_to(step + 1)

    def _bind(self, state: NeuralState) -> list:
        """Per-population views into ``state`` and the operands of its product
        ``target <- beta target + alpha left @ right`` (``u_p``, ``r_src``, ``KT_p``, or their
        transposes for a column-major ``KT_p``), and of its bfloat16 part (``r_low``, a
        bfloat16 buffer for it, ``KT_p^low``, ``c_p``); cached while the same buffers are
        stepped."""
        key = (state.u.data_ptr(), state.r.data_ptr(), state.u.shape, state.r.shape,
               state.u.stride(), state.r.stride())
        if key != self._plan_key:
            self._plan = []
            for slot in self.slots:
                u_p, kt = state.u[..., slot.u_cols], self.operators.get(slot.name)
                product = None
                if kt is not None:
                    source = state.r[..., slot.source_cols]
                    product = ((u_p.mT, kt.mT, source.mT) if kt.mT.is_contiguous() and
                               not kt.is_contiguous() else (u_p, source, kt))
                low = None
                if slot.low_cols is not None:
                    source = state.r[..., slot.low_cols]
                    kt_low = self.operators[LowPrecision(slot.name)]
                    rounded = None if kt_low.dtype == source.dtype else torch.empty(
                        source.shape, dtype=kt_low.dtype, device=source.device)
                    low = (source, rounded, kt_low, self.operators.get(Diagonal(slot.name)))
                self._plan.append((slot, u_p, product, self.currents.get(slot.name),
                                   state.r[..., slot.r_cols], low))
            self._plan_key = key
        return self._plan

    def _noise_(self, state: NeuralState, dt: float) -> None:
        for slot in self.slots:
            if slot.noise > 0:
                u_p = state.u[..., slot.u_cols]
                u_p.add_(self._gaussian(u_p), alpha=slot.noise * (slot.step_size(dt) * slot.rate) ** 0.5)

    def _gaussian(self, like: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            raise SimulationError("a population has noise > 0 but the phase has no random "
                                  "generator; pass generator= to CompiledNetwork.phase().")
        return torch.randn(like.shape, generator=self.generator, dtype=like.dtype,
                           device=like.device)

    def members_apart(self, state: NeuralState
                      ) -> "list[tuple[PhaseDynamics, NeuralState]] | None":
        """An ensemble's phase split into one phase per member (its operators, currents and
        state at member m: the operations of its separate run's phase, equal bit for bit in
        float64; in float32 to an ulp, as BLAS kernels follow the buffers' alignment) when
        each member's state holds at least ``ops.MEMBER_LOOP_SIZE`` entries (evaluation
        batches), so that members are stepped one after another with their own working set
        in cache (measured: batched elementwise passes over M such states ran 1.3x slower
        than M separate ones); None otherwise, or with noise, random activities or a drive
        (one generator or drive for the whole ensemble). Cached while the same state buffers
        are stepped."""
        if self.net.members is None or state.u.dim() != 3 or \
                state.u[0].numel() < ops.MEMBER_LOOP_SIZE or self.stochastic or self.drawn or \
                self.drive is not None:
            return None
        key = (state.u.data_ptr(), state.r.data_ptr(), tuple(state.u.shape), state.u.stride(),
               state.r.stride())
        cached = self.__dict__.get("_members_apart")
        if cached is None or cached[0] != key:
            def own(table, m, axes):       # member m's part of tensors with a member axis
                return {k: v[m] if isinstance(v, torch.Tensor) and v.dim() == axes else v
                        for k, v in table.items()}
            views = [(PhaseDynamics(self.net, own(self.operators, m, 3),
                                    own(self.currents, m, 3),
                                    cell_nudges=own(self.cell_nudges, m, 1), t=self.t),
                      NeuralState(state.u[m], state.r[m], self.net))
                     for m in range(state.u.shape[0])]
            cached = self.__dict__["_members_apart"] = (key, views)
        for view, _ in cached[1]:
            view.silent, view.t = set(self.silent), self.t
        if self.holding:                                      # the whole phase's held products
            buffers = self.held(state)
            for m, (view, view_state) in enumerate(cached[1]):
                view._held = ((view_state.u.data_ptr(), tuple(view_state.u.shape),
                               view_state.u.dtype), {k: b[m] for k, b in buffers.items()})
                view._held_next = self._held_next
        return cached[1]

    def residual(self, state: NeuralState) -> torch.Tensor:
        """max |du/dt| over all neurons and samples (a 0-d tensor; no host sync)."""
        return self.rhs(state.u, state.r.clone()).abs().max()

    def check_finite(self, state: NeuralState, step: int) -> None:
        """Raise SimulationError naming population, compartment and step on NaN/inf."""
        if math.isfinite(float(state.u.sum())):       # one cheap reduction in the common case
            return
        for slot in self.slots:
            bad = ~torch.isfinite(state.u[..., slot.u_cols])
            if bool(bad.any()):
                *member, sample, neuron = (int(i) for i in bad.nonzero()[0])
                where = f"ensemble member {member[0]}, " if member else ""
                raise SimulationError(
                    f'non-finite soma potential in population "{slot.name}", compartment '
                    f'"soma", at step {step} ({where}sample {sample}, neuron {neuron}). The '
                    f"dynamics diverged: reduce the step size (dt), {self._divergence_advice()}.")

    def _divergence_advice(self) -> str:
        """What to use instead of a step that diverged: an implicit solver when the linear
        cells' decay rates (rate * d) span orders of magnitude (a stiff network, where an
        explicit adaptive solver would crawl), else an adaptive one."""
        rates = [(s.name, s.rate * s.decay) for s in self.slots if s.cell is None and s.decay > 0]
        fast = max(rates, key=lambda item: item[1], default=None)
        slow = min(rates, key=lambda item: item[1], default=None)
        if fast is not None and fast[1] >= 1e3 * slow[1]:
            return (f"or, as the network looks stiff (decay rates span a ratio "
                    f"~{fast[1] / slow[1]:.2g}: \"{fast[0]}\" {fast[1]:.3g}, \"{slow[0]}\" "
                    f"{slow[1]:.3g}), use an implicit solver (--solver bdf, lsoda or radau)")
        return ("or use an adaptive solver: an implicit one (--solver bdf, lsoda or radau) if "
                "the network's time scales span orders of magnitude (stiff), else dopri5; "
                "if every solver diverges, the activity itself grows without bound (check "
                "weights and gains)")
