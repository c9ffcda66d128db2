"""The fused path: many fixed steps of linear cells in one compiled call.

Explicit Euler (Jacobi) and layer-ordered Euler (Gauss-Seidel) on networks of linear cells
(module docstring of neurosim.dynamics.compiled) are, per population p with
``h_p = dt rate_p`` (or its ``fixed_step``),

    u_p <- (1 - h_p d_p) u_p + h_p (r_src W_p^T + I_p),        r_p <- sigma_p(u_p)

with every population reading the activities of the previous step (Jacobi) or the newest
ones (Gauss-Seidel, in declaration order). The eager path runs this as a few tensor
operations per population and step, each paying Python and dispatch work; at N = 1,000 that
work costs more than the 1,000 x 1,000 product itself. The fused path runs a whole chunk
of steps in one call of a small C++ loop (``csrc/fused_euler.cpp``: OpenMP threads share
the neurons, or for batches up to :data:`PANEL_BATCH` the sources of a row-major operator,
with a barrier between phases; larger batches multiply in register blocks of samples and
neurons, as a GEMM kernel does, without the thread start-up of one BLAS call per step; when
every operator fits in :data:`SAMPLE_SPLIT_CACHE` of a core's L2 cache, the threads share the
samples of such a batch instead: each steps its own, with no barrier between steps (without
a non-finite check, as in the protocols' phases, whole tiles of samples run through every
step of a call), and the sums run in the same order, so the results are the same bit for
bit). A bfloat16 operator that :meth:`CompiledNetwork.build_operators` wrote is packed for
the loop once per build (every phase of that build reads it); a call of :data:`PACK_STEPS`
steps or more reads a row-major operator summed over the sources, of
:data:`PACK_MIN_BYTES` up to the last-level cache, from a copy packed by groups of four
sources (a thread streams one contiguous block instead of four rows; the same sums in the
same order, 1.03-1.19x on the peer network at 500-1,000 neurons), and one larger than that
cache has each row prefetched ahead (1.09-1.16x at 4,000 neurons); and a phase that starts at
rest skips, at its first Gauss-Seidel step, the products of sources still silent, as the
eager step does. What a phase's set-up derives from shapes alone (the loop's layout, how
the threads split the work, the support checks) is kept per network for the next phase of
the same shapes: the phases of every later batch build only their pointers and parameters. It
also copies monitored columns of ``u`` or ``r`` into a buffer at each due step
(:class:`neurosim.solvers.Probe`), so recording adds no work per step either. Numerics are
those of the eager path up to float rounding: the sums run in another order, which depends
on the thread count only (a run cut into pieces repeats the uncut one bit for bit with the
same number of threads).

The loop is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``)
into ``$NEUROSIM_CACHE/ext`` (default ``~/.cache/neurosim/ext``), keyed by the source, the
flags, the compiler and the CPU's features. This takes about a second, once per machine. It
is loaded with ctypes and needs neither torch headers nor ninja. It runs on torch's thread
count, at most the CPUs the process may use, and on one thread in a child forked after it
ran (the OpenMP runtime's threads do not survive a fork).

When it applies (:func:`unsupported` gives the reason when not):

- solver ``euler`` or ``gs-euler``, on the CPU, float32 or float64 (an ensemble runs member
  by member, each with its own weights; in an unchecked phase whose threads share the
  samples, as EP's, all members in one call: their tiles of samples handed out together, the
  last ones split so that every thread gets as many samples);
- every dynamic population a built-in linear cell without noise, whose activation is
  linear, relu, clip[a,b], leaky_relu[s], sigmoid or tanh;
- batch up to :data:`MAX_BATCH`, or beyond it when the threads share the samples
  (:func:`samples_shared`; otherwise the eager path's matrix-matrix products are as fast),
  no tensor that requires gradients;
- projections with ``precision = "bfloat16"`` in float32 networks, where the loop was built
  with AVX512-BF16 (the activities are rounded to bfloat16 as torch rounds them, and the
  products summed in float32: the eager path's bfloat16 product also rounds its result);
- held products (projections with ``refresh_every`` > 1): the loop keeps them in the
  phase's buffers (:meth:`PhaseDynamics.held`, shared with the eager steps), recomputed at
  the same steps as the eager path.

Stimuli (a time-varying drive) are evaluated in Python at each step's time, a chunk at a
time, and handed to the loop as per-step currents.

A steady-state stop (``steady_tol``) checks after every step by default, so those runs take
one step per call and gain little.

Otherwise the eager path runs, with the same results. ``NEUROSIM_FUSED=off`` (or
:func:`set_mode`) always takes the eager path; ``require`` makes a run that cannot take the
fused path an error, which tests use to compare both.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import ConfigError, SimulationError
from . import graphs, ops
from .compiled import Diagonal, LowPrecision, PhaseDynamics

SOURCE = Path(__file__).with_name("csrc") / "fused_euler.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-std=c++17", "-shared",
         "-fPIC")
PANEL_BATCH = 8               # up to this batch row-major operators are summed over each
                              # thread's sources; above it, in register blocks of samples
MAX_BATCH = 64                # larger batches: the eager GEMMs catch up (unless the threads
                              # share the samples)
SAMPLE_SPLIT_CACHE = 0.75     # threads share the samples when every operator together fits
                              # in this fraction of a core's L2 (batches above PANEL_BATCH)
PACK_STEPS = 256              # calls of at least this many steps read a row-major operator
PACK_MIN_BYTES = 512 << 10    # of at least this size and at most the last-level cache, summed
                              # over the sources (batches up to PANEL_BATCH), from a packed copy
MAX_PLANS = 8                 # phase set-ups a network keeps: state shapes, and phases
                              # of each
MODES = ("auto", "off", "require")
ACTIVATION_CODES = {"linear": 0, "relu": 1, "clip": 2, "sigmoid": 3, "tanh": 4,
                    "leaky_relu": 5}

_mode = os.environ.get("NEUROSIM_FUSED", "auto").strip().lower() or "auto"
if _mode not in MODES:
    warnings.warn(f"NEUROSIM_FUSED={_mode!r} is not one of {', '.join(MODES)}; using auto.",
                  RuntimeWarning, stacklevel=2)
    _mode = "auto"
_forked = False          # in a child forked after the loop ran: one thread (see below)
_library: ctypes.CDLL | None = None
_build_error: str | None = None
_lock = threading.Lock()


def set_mode(mode: str) -> None:
    """"auto" (fused where it applies, else eager), "off" (always eager) or "require" (an
    error where the fused path does not apply)."""
    global _mode
    if mode not in MODES:
        raise ConfigError(f"fused mode must be one of {', '.join(MODES)}, got {mode!r}.")
    _mode = mode


def get_mode() -> str:
    """The mode :func:`set_mode` (or $NEUROSIM_FUSED) chose."""
    return _mode


@contextmanager
def mode(value: str):
    """Run a block in fused mode ``value`` (see :func:`set_mode`)."""
    before = _mode
    set_mode(value)
    try:
        yield
    finally:
        set_mode(before)


def cache_dir() -> Path:
    """Where the compiled loop is kept: $NEUROSIM_CACHE/ext, else ~/.cache/neurosim/ext."""
    root = os.environ.get("NEUROSIM_CACHE") or Path.home() / ".cache" / "neurosim"
    return Path(root) / "ext"


def _compiler() -> list[str] | None:
    """The compiler command: $CXX (which may carry arguments, e.g. "ccache g++"), else c++,
    g++ or clang++ on the PATH."""
    given = shlex.split(os.environ.get("CXX", "")) or ["c++"]
    found = shutil.which(given[0])
    if found is not None:
        return [found, *given[1:]]
    for name in ("g++", "clang++"):
        found = shutil.which(name)
        if found is not None:
            return [found]
    return None


def library() -> ctypes.CDLL | None:
    """The compiled loop, built on first use; None (see :func:`build_error`) when it cannot
    be built here."""
    global _library, _build_error
    with _lock:
        if _library is not None or _build_error is not None:
            return _library
        try:
            _library = _load(_build())
        except (OSError, subprocess.SubprocessError, RuntimeError) as err:
            _build_error = " ".join(str(err).split())[:600]
        return _library


def build_error() -> str | None:
    """Why the compiled loop could not be built (None when it was, or was not tried)."""
    return _build_error


def _build() -> Path:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++); install one "
                           "(Debian: apt install g++) to use the fused path")
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True,
                             timeout=60).stdout.splitlines()[:1]
    key = hashlib.sha256("\n".join([SOURCE.read_text(), " ".join(FLAGS), *compiler, *version,
                                    ops.cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"neurosim_fused_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        result = subprocess.run([*compiler, *FLAGS, str(SOURCE), "-o", str(built)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(compiler)} failed to build {SOURCE.name}: "
                               f"{(result.stderr or result.stdout)[-500:]}")
        os.replace(built, target)         # atomic: concurrent builders race harmlessly
    return target


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    i64, f64p, ptr = ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p
    for name in ("neurosim_euler_f32", "neurosim_euler_f64"):
        fn = getattr(lib, name)
        fn.restype = i64
        fn.argtypes = [i64, ptr, i64, ptr, i64, i64, ptr, f64p, ptr, ptr, ptr, ptr, ptr, ptr,
                       i64, f64p, ctypes.c_int, ptr, i64, ptr, i64, ctypes.c_int, ctypes.c_int,
                       ptr, ptr, ctypes.c_int, i64, ptr, f64p, ptr, ptr, ctypes.c_int]
    lib.neurosim_bfloat16.restype = ctypes.c_int
    lib.neurosim_bfloat16.argtypes = []
    lib.neurosim_pack_bf16.restype = ctypes.c_int
    lib.neurosim_pack_bf16.argtypes = [ptr, i64, i64, ptr, ctypes.c_int]
    lib.neurosim_vector_bytes.restype = ctypes.c_int
    lib.neurosim_vector_bytes.argtypes = []
    for name in ("neurosim_pack_panels_f32", "neurosim_pack_panels_f64"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [ptr, i64, i64, ptr, ctypes.c_int]
    return lib


def _after_fork() -> None:
    """The loop's OpenMP runtime (the system's libgomp) does not survive fork() with its
    threads: a child forked after the loop ran would hang in it, so there it runs on one
    thread."""
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def threads() -> int:
    """Threads of the loop: torch's, at most the CPUs this process may run on (more would
    wait on each other at every barrier), one in a forked child."""
    if _forked:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus))


def _activation_code(slot) -> tuple[int, float, float] | None:
    """(code, a, b) of a built-in activation the loop computes (clip's [a, b], leaky_relu's
    slope a, from the activation's unrounded ``params``), or None. Slots are fixed once
    compiled: the answer is kept per slot."""
    found = _ACTIVATION_CODES.get(id(slot))
    if found is not None and found[0]() is slot:
        return found[1]
    code = _find_activation_code(slot)
    _ACTIVATION_CODES[id(slot)] = (weakref.ref(slot), code)
    weakref.finalize(slot, _ACTIVATION_CODES.pop, id(slot), None)
    return code


_ACTIVATION_CODES: dict = {}


def _slot_keys(name: str) -> tuple:
    """The operator keys LowPrecision(name) and Diagonal(name), made once per name."""
    keys = _SLOT_KEYS.get(name)
    if keys is None:
        keys = _SLOT_KEYS[name] = (LowPrecision(name), Diagonal(name))
    return keys


_SLOT_KEYS: dict = {}


def _find_activation_code(slot) -> tuple[int, float, float] | None:
    activation = slot.activation
    if activation is None or slot.activate is not activation.forward or \
            getattr(activation.forward, "__module__", "") != "neurosim.graph.activations":
        return None
    name = activation.name.split("[", 1)[0]
    if name not in ACTIVATION_CODES:
        return None
    a, b = (tuple(float(v) for v in activation.params) + (0.0, 0.0))[:2]
    return ACTIVATION_CODES[name], a, b


def slot_unsupported(slot) -> str | None:
    """Why the compiled paths (this loop, and the graphs of neurosim.dynamics.graphs) cannot
    step a population: not a built-in linear cell, noisy or stochastic, or an activation
    other than the built-in elementwise ones (None when they can)."""
    if slot.cell is not None:
        return f'population "{slot.name}" is a general cell (its own drift)'
    if slot.noise > 0 or slot.stochastic:
        return f'population "{slot.name}" is noisy or stochastic'
    if _activation_code(slot) is None:
        return (f'population "{slot.name}" has activation {slot.activation.name!r} (the '
                "compiled paths know linear, relu, clip, leaky_relu, sigmoid and tanh)")
    return None


def unsupported(dynamics, state) -> str | None:
    """Why the fused path cannot step ``state`` under ``dynamics`` (None when it can)."""
    net = dynamics.net
    if state.u.device.type != "cpu":
        return f"the state is on {state.u.device} (the fused loop runs on the CPU)"
    if state.u.dtype not in (torch.float32, torch.float64):
        return f"dtype {state.u.dtype} (float32 or float64 only)"
    lead = () if net.members is None else (net.members,)     # an ensemble: member by member
    if state.u.dim() != 2 + len(lead) or tuple(state.u.shape[:len(lead)]) != lead:
        return f"a state of shape {tuple(state.u.shape)} for {net.members or 'no'} members"
    if lead and dynamics.drive is not None:
        return "stimuli on an ensemble"
    batch = state.u.shape[-2]
    if batch > MAX_BATCH and not samples_shared(dynamics, batch):
        return (f"batch {batch} > {MAX_BATCH} with operators beyond a core's L2 cache (the "
                "eager GEMMs are as fast)")
    if not (state.u[0] if lead else state.u).is_contiguous() or \
            not (state.r[0] if lead else state.r).is_contiguous():
        # an ensemble's members are stepped one by one: each member's rows must be
        # contiguous (e.g. EP's nudged half of a (members, 2 batch, n) buffer)
        return "a state that is not contiguous" + (" within a member" if lead else "")
    if state.r.dtype != state.u.dtype or state.r.device != state.u.device or \
            tuple(state.r.shape) != (*lead, batch, sum(s.size for s in net.slots.values())):
        return f"r of shape {tuple(state.r.shape)} and dtype {state.r.dtype} does not match u"
    if _needs_grad(dynamics, state):
        return "tensors that require gradients (the loop does not record autograd)"
    for slot in dynamics.slots:
        reason = slot_unsupported(slot)
        if reason is not None:
            return reason
        if slot.low_bfloat16 and state.u.dtype != torch.float32:
            return f'population "{slot.name}" has a bfloat16 projection in a {state.u.dtype} ' \
                   "network (the loop multiplies bfloat16 in float32 networks)"
        kt = dynamics.operators.get(slot.name)
        if kt is not None:
            cols = slot.source_cols
            expected = (*lead, cols.stop - cols.start, slot.size) if cols is not None else None
            if tuple(kt.shape) != expected:
                return (f'the operator of "{slot.name}" has shape {tuple(kt.shape)}, not '
                        f"{expected}")
            if kt.dtype != state.u.dtype or kt.device != state.u.device:
                return f'the operator of "{slot.name}" is {kt.dtype} on {kt.device}'
            if not (kt.is_contiguous() or kt.mT.is_contiguous()):
                return f'the operator of "{slot.name}" is neither row- nor column-major'
        current = dynamics.currents.get(slot.name)
        if current is not None and (current.dim() not in (1, 2, 2 + len(lead)) or
                                    current.shape[-1] != slot.size or
                                    (current.dim() >= 2 and
                                     current.shape[-2] not in (1, batch)) or
                                    (current.dim() == 3 and
                                     (not lead or current.shape[0] != lead[0]))):
            return f'population "{slot.name}" has a current of shape {tuple(current.shape)}'
    return None


def _form(tensor) -> tuple | None:
    """What the loop's set-up reads of a tensor besides its values and address."""
    if tensor is None:
        return None
    return tuple(tensor.shape), tensor.stride(), tensor.dtype, tensor.device


class _Plan:
    """What a :class:`FusedStepper` derives from the shapes of a phase alone (the loop's
    layout, how its threads split the work, the slots' activation codes and operator keys),
    kept per network for the next phase of the same shapes: the phases of a training step
    and of every later batch build only their pointers and parameters."""

    def __init__(self, dynamics, state):
        blocked = state.u.shape[-2] > PANEL_BATCH
        self.codes = [_activation_code(slot) for slot in dynamics.slots]
        self.keys = [_slot_keys(slot.name) for slot in dynamics.slots]
        layout, weights, lows = [], [], []
        for slot, code, (low_key, _) in zip(dynamics.slots, self.codes, self.keys):
            kt = dynamics.operators.get(slot.name)
            src = slot.source_cols if kt is not None else None
            operator, mode = _operator(kt, blocked)
            low = dynamics.operators.get(low_key)
            low_src = slot.low_cols if low is not None else None
            layout.append([slot.u_cols.start, slot.size, slot.r_cols.start,
                           src.start if src is not None else 0,
                           src.stop - src.start if src is not None else 0, code[0], mode,
                           low_src.start if low_src is not None else 0,
                           low_src.stop - low_src.start if low_src is not None else 0])
            weights.append(operator)
            lows.append(low)
        self.layout = _int64s(v for row in layout for v in row)
        # held products: (refresh_every, whether the separate operator is in full precision)
        self.holds = _int64s(v for slot in dynamics.slots for v in (
            slot.low_refresh, int(slot.low_cols is not None and not slot.low_bfloat16))) \
            if any(slot.low_refresh > 1 for slot in dynamics.slots) else None
        # operators that fit in a core's L2 cache: in a blocked batch the threads share the
        # samples (each reads every operator, with no barrier between steps)
        self.by_samples = blocked and _fit_in_l2(weights, lows)


def _phase_forms(dynamics) -> tuple:
    """The slots and the forms of their operators and currents (see :class:`_Plan`)."""
    forms = []
    for slot in dynamics.slots:
        low_key, _ = _slot_keys(slot.name)
        forms.append((slot, _form(dynamics.operators.get(slot.name)),
                      _form(dynamics.operators.get(low_key)),
                      _form(dynamics.currents.get(slot.name))))
    return tuple(forms)


class FusedStepper:
    """Steps one phase's state in chunks through the compiled loop (see module docstring),
    reading the phase's operators (fixed within a phase) and currents in place. Each sum of a
    product runs in an order set by the thread count alone, so a run cut into pieces
    (resumed, or stopped for checkpoints) repeats the uncut one bit for bit."""

    def __init__(self, dynamics, state, jacobi: bool, lib: ctypes.CDLL,
                 plan: "_Plan | None" = None):
        self.dynamics, self.jacobi = dynamics, jacobi
        self.fn = lib.neurosim_euler_f64 if state.u.dtype == torch.float64 else \
            lib.neurosim_euler_f32
        plan = plan if plan is not None else _Plan(dynamics, state)
        self._layout, self.by_samples = plan.layout, plan.by_samples
        self.holds = plan.holds
        params, self._keep = [], []
        self.weights, self.low_weights, self.currents, self.current_rows = [], [], [], []
        self.packed = []
        for slot, (code, a, b), (low_key, diagonal_key) in zip(dynamics.slots, plan.codes,
                                                                 plan.keys):
            kt = dynamics.operators.get(slot.name)
            low = dynamics.operators.get(low_key)
            diagonal = dynamics.operators.get(diagonal_key)
            params.append((slot.decay, slot.rate,
                           -1.0 if slot.fixed_step is None else float(slot.fixed_step), a, b,
                           0.0 if diagonal is None else float(diagonal)))
            self.weights.append(None if kt is None else kt.mT if kt.mT.is_contiguous() else kt)
            # the loop reads the bfloat16 operator's rows W_p^low = (KT_p^low)^T (built so),
            # a full-precision one (held) as KT_p^low
            bfloat16 = low is not None and low.dtype == torch.bfloat16
            self.low_weights.append(None if low is None else low.mT.contiguous() if bfloat16
                                    else low.contiguous())
            self.packed.append(None if not bfloat16 else
                               _packed(dynamics.net, low, self.low_weights[-1], lib)
                               if not hasattr(dynamics, "member_of") else
                               _packed(dynamics.net, dynamics.member_of[0][low_key],
                                       self.low_weights[-1], lib, dynamics.member_of[1]))
            current = dynamics.currents.get(slot.name)
            if current is not None:
                current = current.to(state.u.dtype).reshape(-1, slot.size).contiguous()
            self.currents.append(current)
            self.current_rows.append(0 if current is None else current.shape[0])
        # operators summed over the sources (mode 0) that long calls read packed (mode 4)
        self._packable = [p for p, kt in enumerate(self.weights)
                          if self._layout[p * 9 + 6] == 0 and _worth_packing(kt)]
        self._lib = lib
        # the loop's arguments as ctypes arrays (cheaper to build than tensors: phases of a
        # training step are short)
        self.params = _float64s(v for row in params for v in row)
        self.weight_ptrs, self.low_ptrs, self.current_ptrs, self.packed_ptrs = (
            _int64s(t.data_ptr() if t is not None else 0 for t in table)
            for table in (self.weights, self.low_weights, self.currents, self.packed))
        self.rows = _int64s(self.current_rows)

    @property
    def layout(self) -> torch.Tensor:
        """The loop's layout, one row per population (u0 n r0 s0 S activation mode ls0 lS)."""
        return torch.tensor(list(self._layout), dtype=torch.int64).reshape(-1, 9)

    def _silent(self):
        """Per population, whether its products are zero at the call's first step, as the
        eager Gauss-Seidel step skips them: every source silent at rest and not yet
        updated in that step (None: nothing to skip)."""
        silent = self.dynamics.silent
        if not silent or self.jacobi:
            return None
        remaining, flags = set(silent), []
        for slot in self.dynamics.slots:
            flags.append(int(bool(remaining) and self.dynamics.sources[slot.name] <= remaining))
            remaining.discard(slot.name)
        return _int64s(flags) if any(flags) else None

    def advance(self, state, dts: list[float], step0: int, probes=(), *,
                check: bool = True, stimuli=None, held=None) -> int:
        """Take ``len(dts)`` steps from step ``step0``; ``probes``: (source, columns, every,
        buffer) with ``columns`` int64 and contiguous, in range, and ``buffer`` (records x batch
        x columns, contiguous, the state's dtype) receiving its due records in order;
        ``stimuli``: population -> the stimuli's currents at each step (steps x rows x n,
        rows 1 or batch); ``held``: (population -> held product buffer, whether they hold
        step0 - 1's values), else the phase's own (:meth:`PhaseDynamics.held`). Returns the
        steps taken: fewer when ``check`` and a step made a potential non-finite (the state
        is then that step's)."""
        batch = state.u.shape[0]
        stimuli = {name: value.to("cpu", state.u.dtype).contiguous()
                   for name, value in (stimuli or {}).items()}
        for name, value in stimuli.items():
            size = self.dynamics.net.slots[name].size
            if value.dim() != 3 or value.shape[0] != len(dts) or value.shape[2] != size or \
                    value.shape[1] not in (1, batch):
                raise SimulationError(f'stimulus currents of "{name}" have shape '
                                      f"{tuple(value.shape)}, not ({len(dts)}, 1 or {batch}, "
                                      f"{size})")
        order = [slot.name for slot in self.dynamics.slots]
        unknown = set(stimuli) - set(order)
        if unknown:
            raise SimulationError(f"stimulus currents for {sorted(unknown)}, which the loop "
                                  "does not step")
        step_ptrs = _int64s(stimuli[n].data_ptr() if n in stimuli else 0 for n in order)
        step_rows = _int64s(stimuli[n].shape[1] if n in stimuli else 0 for n in order)
        records = _int64s(v for source, columns, every, buffer in probes
                          for v in (0 if source == "u" else 1, every, columns.numel(),
                                    columns.data_ptr(), buffer.data_ptr()))
        steps = _float64s(dts)
        count = threads()
        if held is None and self.holds is not None:      # this phase's own held products
            held = self.dynamics.held_for(state, step0)
        held_ptrs = None if self.holds is None else self._held_ptrs(held[0])
        layout, weight_ptrs = self._layout, self.weight_ptrs
        if self._packable and len(dts) >= PACK_STEPS:
            layout, weight_ptrs = self._panels()
        done = self.fn(batch, state.u.data_ptr(), state.u.stride(0), state.r.data_ptr(),
                       state.r.stride(0), len(self.weights), layout, self.params,
                       weight_ptrs, self.low_ptrs, self.current_ptrs, self.rows,
                       step_ptrs, step_rows, len(dts), steps, int(self.jacobi),
                       _scratch(self.dynamics.net, state, count).data_ptr(), len(probes),
                       records, step0, count, int(check), self.packed_ptrs, self._silent(),
                       int(self.by_samples), 0, None, None, self.holds, held_ptrs,
                       int(bool(held and held[1])))
        if done < 0:
            raise SimulationError("the fused loop refused its arguments (an internal error; "
                                  "NEUROSIM_FUSED=off avoids it)")
        self.dynamics.rhs_evals += int(done)
        self.dynamics.silent.clear()
        if isinstance(self.dynamics, PhaseDynamics):
            self.dynamics.stepped_to(step0 + int(done))
        return int(done)

    def _panels(self) -> tuple[ctypes.Array, ctypes.Array]:
        """The layout and operator addresses of a call that reads the packable operators
        (KT_p, sources x n, row-major) from packed copies (mode 4, the same sums in the same
        order: groups of four sources whose rows are interleaved by vectors of neurons, so
        that a thread streams one contiguous block instead of four rows). Packed at every
        such call (the phase's operators may have been rewritten in place since), into
        buffers that the network's steppers share (one runs at a time)."""
        layout, ptrs = list(self._layout), list(self.weight_ptrs)
        buffers = self.dynamics.net.__dict__.setdefault("_panel_buffers", {})
        width = self._lib.neurosim_vector_bytes()
        for p in self._packable:
            kt = self.weights[p]
            sources, n = kt.shape
            vector = width // kt.element_size()
            size = (sources + 3) // 4 * 4 * ((n + vector - 1) // vector * vector)
            key = (self.dynamics.slots[p].name, kt.dtype)
            buffer = buffers.get(key)
            if buffer is None or buffer.numel() != size:
                buffer = buffers[key] = torch.empty(size, dtype=kt.dtype)
            pack = self._lib.neurosim_pack_panels_f64 if kt.dtype == torch.float64 else \
                self._lib.neurosim_pack_panels_f32
            pack(kt.data_ptr(), sources, n, buffer.data_ptr(), threads())
            layout[p * 9 + 6], ptrs[p] = 4, buffer.data_ptr()
        return _int64s(layout), _int64s(ptrs)

    def _held_ptrs(self, buffers: dict) -> ctypes.Array:
        """Addresses of the held products (population -> rows x n, contiguous), slot order."""
        return _int64s(buffers[slot.name].data_ptr() if slot.low_refresh > 1 else 0
                       for slot in self.dynamics.slots)


def _scratch(net, state, threads: int) -> torch.Tensor:
    """The loop's products and partial sums, in a buffer that the network's steppers share
    (one runs at a time): (threads + 1) x the state's size."""
    scratches = net.__dict__.setdefault("_fused_scratch", {})
    scratch = scratches.get(state.u.dtype)
    if scratch is None or scratch.numel() < (threads + 1) * state.u.numel():
        scratch = scratches[state.u.dtype] = torch.empty(
            (threads + 1) * state.u.numel(), dtype=state.u.dtype, device="cpu")
    return scratch


def _packed(net, operator: torch.Tensor, rows: torch.Tensor, lib,
            member: int | None = None) -> torch.Tensor | None:
    """The bfloat16 operator ``operator`` (KT_p^low; ``rows`` = its rows W_p^low, n x
    sources, of ensemble member ``member`` when given) packed as the loop reads it (pairs of
    sources interleaved per neuron, ``neurosim_pack_bf16``), once per build: the network's
    ``low_stamps`` tell when :meth:`CompiledNetwork.build_operators` last wrote it. None
    (the loop packs it at each call) for an operator that it did not build."""
    entry = net.low_stamps.get(id(operator))
    if entry is None or entry[0]() is not operator or rows.dim() != 2:
        return None
    stamp = entry[1]
    cache = net.__dict__.setdefault("_packed_low", {})
    key = (id(operator), member)
    found = cache.get(key)
    if found is not None and found[0]() is operator and found[1] == stamp:
        return found[2]
    n, sources = rows.shape
    shape = ((sources + 1) // 2, (n + 15) // 16 * 16)
    buffer = found[2] if found is not None and found[0]() is operator and \
        tuple(found[2].shape) == shape else torch.empty(shape, dtype=torch.int32)
    if not lib.neurosim_pack_bf16(rows.data_ptr(), sources, n, buffer.data_ptr(), threads()):
        return None
    for dead in [k for k, value in cache.items() if value[0]() is None]:
        del cache[dead]
    cache[key] = (weakref.ref(operator), stamp, buffer)
    return buffer


def _worth_packing(kt: torch.Tensor | None) -> bool:
    """Whether long calls read this row-major operator packed: one matrix (not an ensemble's
    stack) of PACK_MIN_BYTES up to the last-level cache, where a thread's rows stream from
    the caches (measured on the peer network: 1.14x at 500 neurons, 1.09-1.19x at 1,000,
    1.02x at 2,000; beyond the cache both layouts run at the memory's pace)."""
    if kt is None or kt.dim() != 2 or not kt.is_contiguous():
        return False
    size = kt.numel() * kt.element_size()
    return PACK_MIN_BYTES <= size <= cache_bytes()


def _fit_in_l2(operators, low_operators) -> bool:
    """Whether the bytes that every thread reads at each step when the threads share the
    samples fit in SAMPLE_SPLIT_CACHE of a core's L2: the full-precision operators (KT_p,
    one member's) and the bfloat16 ones (KT_p^low, sources x n) as the loop packs them
    (pairs of sources, neurons padded to 16; held full-precision ones as they are)."""
    total = 0
    for kt in operators:
        if kt is not None:
            total += kt.shape[-2] * kt.shape[-1] * kt.element_size()
    for low in low_operators:
        if low is not None and low.dtype != torch.bfloat16:     # held, full precision
            total += low.shape[-2] * low.shape[-1] * low.element_size()
        elif low is not None:
            sources, n = low.shape[-2:]
            total += (sources + 1) // 2 * ((n + 15) // 16 * 16) * 4
    return total <= SAMPLE_SPLIT_CACHE * l2_bytes()


def samples_shared(dynamics, batch: int) -> bool:
    """Whether the loop's threads share the samples of this phase (rather than the neurons):
    a batch above PANEL_BATCH whose operators together fit in SAMPLE_SPLIT_CACHE of a core's
    L2 cache."""
    if batch <= PANEL_BATCH:
        return False
    operators = [dynamics.operators.get(s.name) for s in dynamics.slots]
    lows = [dynamics.operators.get(LowPrecision(s.name)) for s in dynamics.slots]
    return _fit_in_l2(operators, lows)


def _caches() -> list[tuple[str, int]]:
    """(level, bytes) of cpu0's caches (Linux sysfs; none elsewhere)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    found = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level = (index / "level").read_text().strip()
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        number = text.rstrip("KMG")
        if number.isdigit():
            found.append((level, int(number) * units.get(text[-1], 1)))
    return found


@functools.lru_cache(maxsize=1)
def l2_bytes() -> int:
    """A core's L2 cache in bytes, else 1 MiB."""
    return next((size for level, size in _caches() if level == "2"), 1 << 20)


@functools.lru_cache(maxsize=1)
def cache_bytes() -> int:
    """The CPU's last-level cache in bytes, else 32 MiB."""
    return max((size for _, size in _caches()), default=32 << 20)


def _int64s(values) -> ctypes.Array:
    values = list(values)
    return (ctypes.c_int64 * max(len(values), 1))(*values)


def _float64s(values) -> ctypes.Array:
    values = list(values)
    return (ctypes.c_double * max(len(values), 1))(*values)


def _operator(kt: torch.Tensor | None, blocked: bool) -> tuple[torch.Tensor | None, int]:
    """The operator as the loop reads it, never copied, and how: (W_p = KT_p^T, 1 or 3) where
    ``KT_p`` is column-major (n_p x sources, row-major: dot products over its rows, threads
    sharing the neurons, or for ``blocked`` batches the samples), else (KT_p, 0) for small
    batches (each thread sums over its share of the sources; 5 when the operator is larger
    than the last-level cache: read from memory, each row prefetched ahead, 1.10-1.15x on the
    peer network at N = 4,000) or (KT_p, 2) for ``blocked`` ones (register blocks of samples
    and of this thread's neurons)."""
    if kt is None:
        return None, 0
    if kt.mT.is_contiguous():
        return kt.mT, 3 if blocked else 1
    if blocked:
        return kt, 2
    return kt, 5 if kt.numel() * kt.element_size() > cache_bytes() else 0


def stepper(dynamics, state, solver) -> tuple[FusedStepper | None, str | None]:
    """(the :class:`FusedStepper` for this solve, "fused"; on a CUDA device the
    :class:`neurosim.dynamics.graphs.GraphStepper`, "graph"), or (None, "eager: <reason>") for
    the eager path (mode "auto"; mode "require" raises instead), or (None, None) for a solver
    without a fused form."""
    kind = getattr(solver, "fused", None)
    if kind is None:
        if _mode == "require":
            _refuse(f'solver "{solver.name}" has no fused form')
        return None, None
    if _mode == "off":
        return None, "eager: NEUROSIM_FUSED=off"
    if state.u.device.type == "cuda" or graphs._cpu_replay:
        # on a GPU: the same steps replayed as CUDA graphs (neurosim.dynamics.graphs)
        reason = graphs.unsupported(dynamics, state, kind)
        if reason is None:
            return graphs.stepper(dynamics, state, kind), "graph"
        if _mode == "require":
            _refuse(f"{reason} (the graph path, on {state.u.device})")
        return None, f"eager: {reason}"
    # operators and currents are fixed within a phase (the stepper reads them in place)
    key = (kind, state.u.dtype, tuple(state.u.shape), state.u.stride(), state.r.stride())
    found = dynamics.__dict__.get("_fused_stepper")
    if found is not None and found[0] == key:
        return found[1], "fused"
    # a later phase of the same shapes (the same slots, operators and currents laid out
    # alike, the same state) takes the set-up its network kept, unchecked again: those
    # shapes passed the checks below
    plans = dynamics.net.__dict__.setdefault("_fused_plans", {})
    plan_key = (*key, tuple(state.r.shape), state.r.dtype, state.u.device, state.r.device,
                PANEL_BATCH, MAX_BATCH, SAMPLE_SPLIT_CACHE)
    forms = _phase_forms(dynamics)
    kept = plans.get(plan_key)                 # [forms, plan] of each phase of these shapes
    if kept is None:
        while len(plans) >= MAX_PLANS:         # the oldest shapes go first
            del plans[next(iter(plans))]
        kept = plans[plan_key] = []
    entry = next((e for e in kept if e[0] == forms), None)
    lib = _library
    if entry is None or lib is None or _needs_grad(dynamics, state) or \
            (dynamics.net.members is not None and dynamics.drive is not None):
        reason, lib = unsupported(dynamics, state), None
        if reason is None:
            lib = library()
            if lib is None:
                reason = f"the fused loop could not be built ({_build_error})"
                if _mode == "auto":
                    _warn_once(reason)
            elif not lib.neurosim_bfloat16() and any(s.low_bfloat16
                                                      for s in dynamics.slots):
                reason = ("a bfloat16 projection, and this CPU has no bfloat16 instructions "
                          "(AVX512-BF16) for the loop")
        if reason is not None:
            if _mode == "require":
                _refuse(reason)
            return None, f"eager: {reason}"
        if entry is None:
            entry = [forms, None]
            kept[:] = [*kept[-(MAX_PLANS - 1):], entry]
    if dynamics.net.members is None:
        if entry[1] is None:
            entry[1] = _Plan(dynamics, state)
        built = FusedStepper(dynamics, state, kind == "jacobi", lib, entry[1])
    else:
        built = EnsembleStepper(dynamics, state, kind == "jacobi", lib, entry)
    dynamics.__dict__["_fused_stepper"] = (key, built)
    return built, "fused"


def _needs_grad(dynamics, state) -> bool:
    """Whether the phase holds tensors that require gradients under grad mode (the loop
    does not record autograd)."""
    return torch.is_grad_enabled() and (state.u.requires_grad or any(
        isinstance(t, torch.Tensor) and t.requires_grad
        for t in (*dynamics.operators.values(), *dynamics.currents.values())))


class _MemberPhase:
    """One ensemble member's part of a phase, as a :class:`FusedStepper` reads it: operators
    and currents with a member axis taken at ``member`` (shared ones as they are)."""

    def __init__(self, dynamics, member: int):
        def own(value):
            return value[member] if isinstance(value, torch.Tensor) and value.dim() == 3 \
                else value
        self.net, self.slots, self.sources = dynamics.net, dynamics.slots, dynamics.sources
        self.member_of = (dynamics.operators, member)     # the whole phase's operators
        self.operators = {key: own(value) for key, value in dynamics.operators.items()}
        self.currents = {key: own(value) for key, value in dynamics.currents.items()}
        self.rhs_evals, self.silent = 0, set()


class EnsembleStepper:
    """An ensemble's phase on the loop, member by member (each member's own weights, its own
    call): every member runs exactly the loop of its separate run."""

    def __init__(self, dynamics, state, jacobi: bool, lib: ctypes.CDLL, entry=None):
        self.dynamics = dynamics
        phases = [_MemberPhase(dynamics, m) for m in range(state.u.shape[0])]
        states = [_member_state(state, m) for m in range(state.u.shape[0])]
        entry = entry if entry is not None else [None, None]
        if entry[1] is None:                   # every member has the same shapes
            entry[1] = _Plan(phases[0], states[0])
        member_plan = entry[1]
        self.members = [FusedStepper(phase, member_state, jacobi, lib, member_plan)
                        for phase, member_state in zip(phases, states)]

    def advance(self, state, dts: list[float], step0: int, probes=(), *,
                check: bool = True, stimuli=None) -> int:
        """As :meth:`FusedStepper.advance`, every member in turn; the steps taken are the
        fewest any member took (a member stopped by a non-finite potential)."""
        if probes or stimuli:
            raise SimulationError("the loop does not record or drive ensembles; run them on "
                                  "the eager path (NEUROSIM_FUSED=off)")
        for member in self.members:           # silent at rest: as the whole phase
            member.dynamics.silent = set(self.dynamics.silent)
        held = self.dynamics.held_for(state, step0) if self.members[0].holds is not None \
            else None
        if not check and self._together():
            done = self._advance_together(state, dts, step0, held)
        else:
            done = min(member.advance(_member_state(state, m), dts, step0, check=check,
                                      held=None if held is None else
                                      ({k: v[m] for k, v in held[0].items()}, held[1]))
                       for m, member in enumerate(self.members))
        self.dynamics.rhs_evals += done
        self.dynamics.silent.clear()
        self.dynamics.stepped_to(step0 + done)
        return done

    def _together(self) -> bool:
        """Whether one call can step every member: threads sharing the samples, every
        bfloat16 operator packed beforehand (then the call hands out the tiles of samples of
        all members, each through all steps, as each member's own call would step them)."""
        first = self.members[0]
        return len(self.members) > 1 and first.by_samples and all(
            packed is not None or low is None or low.dtype != torch.bfloat16
            for member in self.members for packed, low in zip(member.packed,
                                                               member.low_weights))

    def _advance_together(self, state, dts: list[float], step0: int, held) -> int:
        """Every member in one call of the loop (see :meth:`_together`), no check; ``held``
        as :meth:`FusedStepper.advance` takes it, with a member axis."""
        first, count = self.members[0], threads()
        tables = _int64s(v for m, member in enumerate(self.members)
                         for v in (state.u[m].data_ptr(), state.r[m].data_ptr(),
                                   *member.weight_ptrs, *member.low_ptrs, *member.packed_ptrs,
                                   *member.current_ptrs,
                                   *(member._held_ptrs({k: b[m] for k, b in held[0].items()})
                                     if held is not None else [0] * len(first.weights))))
        params = _float64s(v for member in self.members for v in member.params)
        nothing = _int64s([0] * len(first.weights))
        done = first.fn(state.u.shape[-2], state.u[0].data_ptr(), state.u.stride(-2),
                        state.r[0].data_ptr(), state.r.stride(-2), len(first.weights),
                        first._layout, first.params, first.weight_ptrs, first.low_ptrs,
                        first.current_ptrs, first.rows, nothing, nothing, len(dts),
                        _float64s(dts), int(first.jacobi),
                        _scratch(self.dynamics.net, state, count).data_ptr(), 0, None, step0,
                        count, 0, first.packed_ptrs, first._silent(), 1, len(self.members),
                        tables, params, first.holds,
                        None if held is None else first._held_ptrs(
                            {k: b[0] for k, b in held[0].items()}),
                        int(bool(held and held[1])))
        if done < 0:
            raise SimulationError("the fused loop refused to step the members together (an "
                                  "internal error; NEUROSIM_FUSED=off avoids it)")
        for member in self.members:
            member.dynamics.rhs_evals += int(done)
            member.dynamics.silent.clear()
        return int(done)


def _member_state(state, member: int):
    from .compiled import NeuralState
    return NeuralState(state.u[member], state.r[member])


def _refuse(reason: str) -> None:
    raise SimulationError(f"the fused path cannot run this solve: {reason} "
                          "(NEUROSIM_FUSED=require); set NEUROSIM_FUSED=auto to fall back to "
                          "the eager path.")


_warned = False


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"neurosim runs fixed-step solves on its slower eager path: {reason}",
                      RuntimeWarning, stacklevel=3)
