"""The graph path: fixed steps on a CUDA device, replayed as CUDA graphs.

On a GPU the eager steps of a network of a few thousand neurons are bound by kernel launches:
a step is a handful of small kernels, and each costs more to launch (Python, dispatch and
driver work, a few microseconds) than to run. The graph path records the kernels of
:data:`GROUP` consecutive steps once, as a CUDA graph (``torch.cuda.CUDAGraph``), and replays
them with one launch: the kernels are those of the eager steps, so the numbers are too.

A graph reads and writes buffers of its own: copies of the state, of the phase's operators and
currents, of its held products and of the monitored columns. Each call of
:meth:`GraphStepper.advance` copies the phase's tensors in and the state out (a few device
copies), so that the graphs recorded for one phase serve every later phase of the same network
and shapes: EP's phases of every batch, the pieces of a simulation cut for checkpoints,
monitors or plasticity, and later runs of it. What a graph bakes in is its key: the step
sizes, the steps at which held products are refreshed and monitors are due (the first step
modulo their periods; groups are whole multiples of those periods, so consecutive groups share
one graph) and which populations start silent.

When it applies (:func:`unsupported` says why not):

- solver ``euler`` or ``gs-euler`` on a CUDA device, float32 or float64 (bfloat16 projections
  as on the eager path), ensembles too;
- every dynamic population a built-in linear cell with a built-in elementwise activation
  (linear, relu, clip, leaky_relu, sigmoid, tanh: a user's may read values on the host, which
  a graph cannot), without noise or stochastic activations (their draws need the phase's
  generator at every step) and without stimuli (their currents are evaluated in Python at
  every step);
- no tensor that requires gradients.

A non-finite check (``check``) runs once per call: when the potentials are no longer finite
the call steps again from its start on the eager path to find the step that made them so, as
the CPU's loop reports it. ``NEUROSIM_FUSED=off`` (:func:`neurosim.dynamics.fused.set_mode`)
takes the eager path, ``require`` makes a solve that can take neither the fused nor the graph
path an error.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

from .compiled import NeuralState, PhaseDynamics

GROUP = 64               # steps per graph (rounded up to whole periods of monitors and holds)
MAX_GRAPHS = 32          # graphs a phase form keeps (the oldest go first)
MAX_PHASES = 8           # phase forms a network keeps

_cpu_replay = False      # tests: run the graph path's bookkeeping on the CPU (see CpuReplay)


def unsupported(dynamics, state, kind: str | None) -> str | None:
    """Why the graph path cannot step ``state`` (None when it can)."""
    if kind is None:
        return "the solver has no fused form"
    if state.u.device.type != "cuda" and not _cpu_replay:
        return f"the state is on {state.u.device}"
    if state.u.dtype not in (torch.float32, torch.float64):
        return f"dtype {state.u.dtype} (float32 or float64 only)"
    if state.r.dtype != state.u.dtype or state.r.device != state.u.device:
        return f"r is {state.r.dtype} on {state.r.device}, u {state.u.dtype} on {state.u.device}"
    if dynamics.drive is not None:
        return "stimuli (their currents are evaluated in Python at every step)"
    from .fused import slot_unsupported
    for slot in dynamics.slots:
        reason = slot_unsupported(slot)
        if reason is not None:
            return reason
    tensors = [*dynamics.operators.values(), *dynamics.currents.values()]
    if any(not isinstance(t, torch.Tensor) for t in tensors):
        return "an operator or current that is not a tensor"
    if any(t.device != state.u.device for t in tensors):
        return "operators or currents on another device than the state"
    if torch.is_grad_enabled() and (state.u.requires_grad or
                                    any(t.requires_grad for t in tensors)):
        return "tensors that require gradients (a graph does not record autograd)"
    return None


class CudaGraphs:
    """Records a function's kernels as a CUDA graph on a side stream, sharing one memory
    pool among the graphs of a phase form."""

    def __init__(self, device):
        self.stream = torch.cuda.Stream(device)
        self.pool = torch.cuda.graph_pool_handle()

    def warm_up(self, fn) -> None:
        """Run ``fn`` once on the side stream (libraries create their handles and
        workspaces before a capture, as CUDA graphs require)."""
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            fn()
        torch.cuda.current_stream().wait_stream(self.stream)

    def capture(self, fn, restore=None):
        """A function that replays ``fn``'s kernels (``fn`` runs once, recording; the
        Python-side choices it made are in the kernels, so ``restore`` is not needed)."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
            fn()
        return graph.replay


class CpuReplay:
    """For tests on machines without a GPU: a 'graph' that reruns the recorded Python steps,
    with the phase's Python-side state (step index, held and silent bookkeeping) put back as
    it was when it was recorded, as a CUDA graph would replay kernels chosen then."""

    def warm_up(self, fn) -> None:
        fn()

    def capture(self, fn, restore=None):
        """A function that calls ``restore()`` (puts the bookkeeping back as it is now),
        then ``fn``."""
        def replay():
            if restore is not None:
                restore()
            fn()
        return replay


class GraphPhase:
    """A phase form's buffers and graphs: a :class:`PhaseDynamics` over copies of the
    operators and currents, a state of its own and its held products; kept per network."""

    def __init__(self, dynamics, state, kind: str):
        # every buffer a graph reads is an ordinary tensor (not an inference tensor), so that
        # later calls under inference_mode, no_grad or neither may all write into it
        with torch.inference_mode(False), torch.no_grad():
            self.operators = {k: v.detach().clone() for k, v in dynamics.operators.items()}
            self.currents = {k: v.detach().clone() for k, v in dynamics.currents.items()}
            self.state = NeuralState(state.u.detach().clone(), state.r.detach().clone(),
                                     dynamics.net)
            self.dynamics = PhaseDynamics(dynamics.net, self.operators, self.currents,
                                          cell_nudges=dict(dynamics.cell_nudges))
            self.held = self.dynamics.held(self.state)
        self.jacobi = kind == "jacobi"
        self.backend = CpuReplay() if state.u.device.type != "cuda" else \
            CudaGraphs(state.u.device)
        self.graphs: OrderedDict = OrderedDict()
        self.columns: dict = {}         # probe columns on the device
        refreshes = [s.low_refresh for s in dynamics.slots if s.low_refresh > 1]
        self.refresh_period = math.lcm(*refreshes) if refreshes else 1

    def load(self, dynamics, state, step0: int) -> None:
        """Copy the phase's operators, currents, state and held products in."""
        for table, own in ((dynamics.operators, self.operators),
                           (dynamics.currents, self.currents)):
            for key, value in table.items():
                own[key].copy_(value)
        self.state.u.copy_(state.u)
        self.state.r.copy_(state.r)
        self.current = True
        if self.held:
            buffers, self.current = dynamics.held_for(state, step0)
            for name, buffer in buffers.items():
                self.held[name].copy_(buffer)

    def store(self, dynamics, state) -> None:
        """Copy the state and held products out (after a call's steps)."""
        state.u.copy_(self.state.u)
        state.r.copy_(self.state.r)
        if self.held:
            buffers, _ = dynamics.held_for(state, dynamics.step_index)
            for name, buffer in buffers.items():
                buffer.copy_(self.held[name])

    def _set_python_state(self, step: int, current: bool, silent: frozenset) -> None:
        """The bookkeeping that decides which kernels a group of steps launches."""
        self.dynamics.resume_at(step, current)
        self.dynamics.silent = set(silent)

    def group(self, dts: tuple, step: int, current: bool, silent: frozenset,
              probes: tuple) -> tuple:
        """The graph for steps ``step`` .. ``step + len(dts) - 1``: (replay, records per
        probe, the probes' buffers on the device); recorded on first use. Groups whose step
        sizes differ among themselves run unrecorded (``replay`` then takes the steps)."""
        key = (dts, step % self.refresh_period if self.held else 0,
               current or not self.held, silent,
               tuple((source, columns, step % every) for source, columns, every in probes))
        found = self.graphs.get(key)
        if found is not None:
            self.graphs.move_to_end(key)
            return found
        due = [[j for j in range(step + 1, step + len(dts) + 1) if j % every == 0]
               for _, _, every in probes]
        with torch.inference_mode(False), torch.no_grad():
            buffers = [torch.empty((len(steps), *self.state.u.shape[:-1], len(columns)),
                                   dtype=self.state.u.dtype, device=self.state.u.device)
                       for steps, (_, columns, _) in zip(due, probes)]
        index = [self._columns(columns) for _, columns, _ in probes]

        def steps():
            record = [0] * len(probes)
            for j, dt in enumerate(dts, start=step):
                if self.jacobi:        # r = sigma(u) holds after a step of the group
                    self.dynamics.euler_step_(self.state, dt, synced=j > step)
                else:
                    self.dynamics.gauss_seidel_step_(self.state, dt)
                for p, (source, _, every) in enumerate(probes):
                    if (j + 1) % every == 0:
                        values = self.state.u if source == "u" else self.state.r
                        torch.index_select(values, -1, index[p], out=buffers[p][record[p]])
                        record[p] += 1

        if len(set(dts)) > 1:
            # step sizes that change within the group (a decaying schedule): its graph would
            # serve no other group, so these steps run as they are, unrecorded
            def run_now():
                with torch.inference_mode(False), torch.no_grad():
                    self._set_python_state(step, current, silent)
                    steps()
            return run_now, [len(d) for d in due], buffers
        with torch.inference_mode(False), torch.no_grad():     # buffers made on the way
            saved = (self.state.u.clone(), self.state.r.clone(),   # (bfloat16 roundings) too
                     {k: v.clone() for k, v in self.held.items()})
            self._set_python_state(step, current, silent)
            self.backend.warm_up(steps)
            self.state.u.copy_(saved[0])
            self.state.r.copy_(saved[1])
            for name, value in saved[2].items():
                self.held[name].copy_(value)
            self._set_python_state(step, current, silent)
            replay = self.backend.capture(
                steps, lambda: self._set_python_state(step, current, silent))
        found = self.graphs[key] = (replay, [len(d) for d in due], buffers)
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return found

    def _columns(self, columns: tuple) -> torch.Tensor:
        found = self.columns.get(columns)
        if found is None:
            found = self.columns[columns] = torch.tensor(columns, dtype=torch.int64,
                                                         device=self.state.u.device)
        return found


def _group_size(probes, refresh_period: int) -> int:
    """Steps per graph: :data:`GROUP` rounded up to whole periods of the monitors and held
    products, so that consecutive groups have the same key."""
    period = math.lcm(refresh_period, *(every for _, _, every in probes))
    return period * max(1, -(-GROUP // period)) if period <= 16 * GROUP else GROUP


class GraphStepper:
    """Steps one phase's state in chunks of replayed graphs (module docstring), with the
    interface of :class:`neurosim.dynamics.fused.FusedStepper`."""

    def __init__(self, dynamics, phase: GraphPhase, kind: str):
        self.dynamics, self.phase, self.kind = dynamics, phase, kind

    def advance(self, state, dts: list[float], step0: int, probes=(), *,
                check: bool = True, stimuli=None) -> int:
        """Take ``len(dts)`` steps from step ``step0``; ``probes``: (source, columns, every,
        buffer) as for the fused loop (``buffer`` on any device receives the due records in
        order). Returns the steps taken: fewer when ``check`` and a step made a potential
        non-finite (the state is then that step's)."""
        if stimuli:
            raise ValueError("the graph path takes no stimuli")
        dyn, phase = self.dynamics, self.phase
        spec = tuple((source, tuple(int(c) for c in columns.tolist()), int(every))
                     for source, columns, every, _ in probes)
        phase.load(dyn, state, step0)
        size = _group_size(spec, phase.refresh_period)
        current, silent = phase.current, frozenset(dyn.silent)
        done, staged = 0, [[] for _ in probes]
        while done < len(dts):
            count = min(size, len(dts) - done)
            replay, counts, buffers = phase.group(tuple(float(dt) for dt in
                                                        dts[done:done + count]),
                                                  step0 + done, current, silent, spec)
            replay()
            for p, (n, buffer) in enumerate(zip(counts, buffers)):
                if n:
                    staged[p].append(buffer.clone())
            done += count
            current, silent = True, frozenset()
        taken = len(dts)
        if check and not bool(torch.isfinite(phase.state.u).all()):
            taken = self._first_non_finite(state, dts, step0)
        else:
            dyn.rhs_evals += taken
            dyn.silent.clear()
            dyn.stepped_to(step0 + taken)
            phase.store(dyn, state)
        for (*_, buffer), blocks in zip(probes, staged):   # one copy to the host per probe
            if blocks:
                values = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
                buffer[:values.shape[0]].copy_(values)
        return taken

    def _first_non_finite(self, state, dts, step0: int) -> int:
        """Step ``state`` from ``step0`` on the eager path until a potential is no longer
        finite: the steps taken."""
        dyn = self.dynamics
        step = dyn.euler_step_ if self.kind == "jacobi" else dyn.gauss_seidel_step_
        dyn.step_index = step0
        for j, dt in enumerate(dts):
            step(state, dt)
            if not bool(torch.isfinite(state.u).all()):
                return j + 1
        return len(dts)


def _forms(dynamics, state, kind: str) -> tuple:
    """What a phase form's buffers and graphs depend on besides values."""
    def form(table):
        return tuple((key, tuple(v.shape), v.stride(), v.dtype) for key, v in table.items())
    return (kind, tuple(state.u.shape), state.u.stride(), state.u.dtype, state.u.device,
            tuple(state.r.shape), state.r.stride(), form(dynamics.operators),
            form(dynamics.currents), tuple(sorted(dynamics.cell_nudges.items())))


def stepper(dynamics, state, kind: str) -> GraphStepper:
    """The :class:`GraphStepper` for this phase (its network keeps the graphs of each phase
    form); :func:`unsupported` must have said None."""
    phases = dynamics.net.__dict__.setdefault("_graph_phases", OrderedDict())
    key = _forms(dynamics, state, kind)
    phase = phases.get(key)
    if phase is None:
        phase = phases[key] = GraphPhase(dynamics, state, kind)
        while len(phases) > MAX_PHASES:
            phases.popitem(last=False)
    else:
        phases.move_to_end(key)
    return GraphStepper(dynamics, phase, kind)
