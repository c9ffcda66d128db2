"""Size awareness: the memory and disk a simulation or a training run will need, known before
any tensor is allocated.

:func:`estimate_simulation` and :func:`estimate_training` read the sizes from the graph (a
:class:`~neurosim.graph.Network`; a compiled network or a simulation works too) and return a
:class:`SizeEstimate`, a list of :class:`Item` s, each saying what it is, how many bytes and
where they live:

- ``"memory"``: on the run's device (the CPU's memory, or the GPU's): weights and masks, the
  stacked operators a phase builds from them, biases and the state, the solver's working
  copies of the state, the recorder's chunk buffers;
- ``"host"``: CPU memory held only while the network is built (weights are drawn in float64
  before they are converted and moved; the largest projection sets the peak);
- ``"disk"``: files, with the directory they go to: the recording (records x bytes per record
  per monitor, in whole HDF5 chunks, plus its time axes) and checkpoints.

:func:`check_size` refuses a run whose memory part exceeds the memory available (Linux
``MemAvailable`` and the cgroup limit; ``os.sysconf`` elsewhere; ``torch.cuda.mem_get_info``
for a GPU) or whose files exceed the free space of their disk (``shutil.disk_usage``); the
limits can be passed in (tests, or a budget of your own). The message gives the estimate, its
largest items and the flag that skips the check.

The figures are estimates: solvers' scratch space is counted from their number of stages, a
steady-state stop may end a run (and its recording) early; datasets of training runs,
plug-ins' own buffers and the fused loop's packed copies of operators (each at most the
last-level cache, neurosim.dynamics.fused) are not counted.
"""
from __future__ import annotations

import math
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

from .errors import ConfigError

SYNAPSES = "synapses"        # the "compartment" of a weight monitor (neurosim.simulation)
HDF5_OVERHEAD = 16 << 10     # file header, groups and attributes of a recording
DATASET_OVERHEAD = 4 << 10   # per dataset: header, attributes, chunk index
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}
#: working copies of the state (stages, scratch activities) a solver holds per step
SOLVER_COPIES = {"euler": 2, "gs-euler": 2, "heun": 5, "rk4": 8}
CONTINUOUS_COPIES = 16       # adaptive torchdiffeq / scipy methods: stages, error estimates
CONTINUOUS_SEGMENT = 64      # outputs a continuous solver returns at once (solvers.base)
TRAINING_STATE_COPIES = 12   # states a learning protocol keeps (phases, records, scratch)


def format_bytes(n: float) -> str:
    """A byte count for people: "512 B", "12.3 kB", "4.8 GB" (decimal units)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"        # pragma: no cover


@dataclass(frozen=True)
class Item:
    """One part of an estimate: ``kind`` ("projection", "population", "recording", ...),
    ``name``, ``nbytes``, ``place`` ("memory", "host" or "disk"), a ``detail`` such as
    "200000 x 300000 float32 weights", and for files the ``directory`` they go to."""

    kind: str
    name: str
    nbytes: int
    place: str
    detail: str = ""
    directory: str | None = None

    def describe(self) -> str:
        """'projection "x_h" needs 200000 x 300000 float32 weights = 240 GB'."""
        what = f'{self.kind} "{self.name}"' if self.name else self.kind
        detail = f"{self.detail} = " if self.detail else ""
        return f"{what} needs {detail}{format_bytes(self.nbytes)}"


@dataclass
class SizeEstimate:
    """The items of a run's size (see the module docstring), for a run on ``device``."""

    what: str
    device: str = "cpu"
    items: list[Item] = field(default_factory=list)

    def add(self, *args, **kwargs) -> None:
        item = Item(*args, **kwargs)
        if item.nbytes > 0:
            self.items.append(item)

    def total(self, *places: str) -> int:
        """Bytes of the items in ``places`` (all when none are given)."""
        return sum(i.nbytes for i in self.items if not places or i.place in places)

    @property
    def memory_bytes(self) -> int:
        """What the run holds in memory at its peak (device plus build-time host memory)."""
        return self.total("memory", "host")

    @property
    def disk_bytes(self) -> int:
        return self.total("disk")

    def largest(self, *places: str, count: int = 1) -> list[Item]:
        chosen = [i for i in self.items if not places or i.place in places]
        return sorted(chosen, key=lambda i: -i.nbytes)[:count]

    def by_kind(self, kind: str) -> list[Item]:
        return [i for i in self.items if i.kind == kind]

    def summary(self) -> str:
        """One line: memory and disk totals."""
        return (f"{self.what}: about {format_bytes(self.memory_bytes)} of memory and "
                f"{format_bytes(self.disk_bytes)} on disk")


# ------------------------------------------------------------------------------ the graph
def _graph(network):
    """The Network of a Network, CompiledNetwork or Simulation."""
    from .graph import Network
    while not isinstance(network, Network):
        inner = getattr(network, "network", None)
        if inner is None:
            raise ConfigError(f"size estimate: expected a Network, CompiledNetwork or "
                              f"Simulation, got {type(network).__name__}.")
        network = inner
    return network


def _dtype_name(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in ITEMSIZE:
        raise ConfigError(f'size estimate: unknown dtype "{dtype}"; use float32 or float64.')
    return name


def _network_items(estimate: SizeEstimate, net, dtype: str, batch: int) -> dict:
    """Weights, masks, build-time float64 copies, stacked operators, biases and the state of
    every population; returns {"weights": bytes of all weights, "state": bytes of one state}."""
    size = ITEMSIZE[dtype]
    pops = net.population_map
    weights = 0
    biggest = None
    for proj in net.projections:
        if not proj.has_weight:
            continue
        n_post, n_pre = pops[proj.target].size, pops[proj.source].size
        shape = tuple(proj.weight_shape(n_post, n_pre))
        count = math.prod(shape)
        masked = proj.mask is not None
        what = f"{' x '.join(map(str, shape))} {dtype} weights" + (" and mask" if masked else "")
        estimate.add("projection", proj.name, count * size * (2 if masked else 1), "memory", what)
        weights += count * size
        if biggest is None or count > biggest[1]:
            biggest = (proj.name, count, shape, masked)
    if biggest is not None:
        name, count, shape, masked = biggest
        estimate.add("initialisation of projection", name, 8 * count * (3 if masked else 1),
                     "host", f"{' x '.join(map(str, shape))} float64 weights")
    offset, columns = 0, {}
    for pop in net.populations:
        columns[pop.name] = (offset, offset + pop.size)
        offset += pop.size
    n_all = offset
    n_dyn = sum(p.size for p in net.populations if not p.is_input)
    for pop in net.populations:
        neurons = f"{pop.size} neuron{'s' if pop.size != 1 else ''}"
        if pop.is_input:
            estimate.add("population", pop.name, batch * pop.size * size, "memory",
                         f"{neurons} x batch {batch} {dtype} clamped activities")
            continue
        # u and r, the bias, the constant input current of a phase
        nbytes = (3 * batch + 1) * pop.size * size
        estimate.add("population", pop.name, nbytes, "memory",
                     f"{neurons} x batch {batch} {dtype} state")
        sources = [columns[q.source] for q in net.incoming(pop.name)
                   if not pops[q.source].is_input and q.is_dense]   # spatial: never stacked
        if sources:
            span = max(s[1] for s in sources) - min(s[0] for s in sources)
            estimate.add("operator", pop.name, span * pop.size * size, "memory",
                         f"{span} x {pop.size} {dtype} stacked recurrent inputs")
    return {"weights": weights, "state": batch * (n_all + n_dyn) * size, "n_dyn": n_dyn,
            "n_all": n_all}


def _solver_items(estimate: SizeEstimate, solver: str, batch: int, n_dyn: int, n_all: int,
                  dtype: str) -> None:
    name = str(solver).lower()
    size = ITEMSIZE[dtype]
    state = batch * (n_dyn + n_all) * size
    if name in SOLVER_COPIES:
        estimate.add("solver", name, SOLVER_COPIES[name] * state, "memory",
                     f"{SOLVER_COPIES[name]} working copies of the state")
        return
    scipy = name.startswith("scipy") or name in ("bdf", "lsoda", "radau", "rk45", "rk23",
                                                  "dop853")
    if scipy:                                    # float64 whatever the network's dtype
        state = batch * (n_dyn + n_all) * 8
    estimate.add("solver", name, (CONTINUOUS_COPIES + CONTINUOUS_SEGMENT) * state, "memory",
                 f"{CONTINUOUS_COPIES} working copies and {CONTINUOUS_SEGMENT} outputs of the "
                 "state")
    method = name.split(":")[-1]
    if scipy and method in ("bdf", "radau", "lsoda") and n_dyn <= 4096:
        blocks = (batch * n_dyn) ** 2 if method == "lsoda" else (batch + 2) * n_dyn ** 2
        estimate.add("solver", name, 8 * blocks, "memory",
                     f"the {method} Jacobian ({n_dyn} x {n_dyn} per sample, float64)")


def record_shape(monitor, net, batch: int) -> tuple[int, ...]:
    """The shape of one record of a monitor (a MonitorSpec): (batch, neurons), or
    (post, pre) for a weight monitor."""
    if monitor.compartment == SYNAPSES:
        proj = net.projection(monitor.population)
        pops = net.population_map
        return (pops[proj.target].size, pops[proj.source].size)
    pop = net.population(monitor.population)
    count = len(monitor.indices) if monitor.indices is not None else pop.size
    return (batch, count)


def records_between(every: int, start_step: int, total_steps: int) -> int:
    """How many records a monitor taking every ``every``-th step writes from step
    ``start_step`` (recorded when it is 0) to ``total_steps``."""
    total = max(total_steps, start_step)
    count = total // every - start_step // every
    return count + 1 if start_step == 0 else count


def recording_items(estimate: SizeEstimate, monitors: Iterable, net, *, batch: int,
                    dtype: str, start_step: int, total_steps: int, chunk_size: int,
                    directory: str | None) -> None:
    """The recorder's chunk buffers (memory) and the recording's size on disk: whole HDF5
    chunks of each monitor (neurosim.io.recorder), its time axes and the file's metadata."""
    from .io.recorder import MAX_CHUNK_BYTES
    size = ITEMSIZE[dtype]
    clocks: dict[int, int] = {}
    monitors = list(monitors)
    for monitor in monitors:
        shape = record_shape(monitor, net, batch)
        per_record = math.prod(shape) * size
        records = records_between(monitor.every, start_step, total_steps)
        clocks[monitor.every] = records
        rows = max(1, min(chunk_size, MAX_CHUNK_BYTES // max(1, per_record)))
        chunks = math.ceil(records / rows)
        shape_text = " x ".join(map(str, shape))
        estimate.add("recorder buffer", monitor.key, chunk_size * per_record, "memory",
                     f"{chunk_size} records of {shape_text} {dtype}")
        estimate.add("recording", monitor.key, chunks * rows * per_record + DATASET_OVERHEAD,
                     "disk", f"{records} records of {shape_text} {dtype}", directory)
    if monitors:
        times = sum(math.ceil(n / chunk_size) * chunk_size * 8 + DATASET_OVERHEAD
                    for n in clocks.values())
        estimate.add("recording", "time axes", times + HDF5_OVERHEAD, "disk",
                     f"{sum(clocks.values())} float64 times and the file's metadata", directory)


def estimate_simulation(network, options=None, monitors: Iterable = (), *,
                        chunk_size: int = 256, start_step: int | None = None,
                        total_steps: int | None = None, out=None, checkpoint=None,
                        plasticity: str | None = None) -> SizeEstimate:
    """The size of a simulation of ``network`` (a Network, CompiledNetwork or Simulation)
    with ``options`` (SimulationOptions; a Simulation's own by default) recording
    ``monitors`` (MonitorSpecs) with ``chunk_size`` records per write into the file ``out``,
    from ``start_step`` (a Simulation's current step, else 0) to ``total_steps`` (default
    from the options); ``checkpoint`` adds a checkpoint file."""
    if options is None:
        options = network.options
    if start_step is None:
        start_step = int(getattr(network, "step", 0))
    net = _graph(network)
    dtype = _dtype_name(options.dtype)
    batch = int(options.batch)
    estimate = SizeEstimate("simulation", str(options.device))
    sizes = _network_items(estimate, net, dtype, batch)
    _solver_items(estimate, options.solver, batch, sizes["n_dyn"], sizes["n_all"], dtype)
    if plasticity is None:
        from .simulation import plasticity_mode
        mode = plasticity_mode(options.plasticity, "[simulation] plasticity")
        plasticity = mode[0] if mode else None
    if plasticity == "continuous":
        plastic = sum(i.nbytes for i in estimate.by_kind("projection"))
        estimate.add("plasticity", "weights in the ODE state", CONTINUOUS_COPIES * plastic,
                     "memory", f"{CONTINUOUS_COPIES} working copies of the weights")
    if total_steps is None:
        total_steps = options.total_steps()
    directory = str(Path(out).parent) if out is not None else None
    recording_items(estimate, monitors, net, batch=batch, dtype=dtype, start_step=start_step,
                    total_steps=total_steps, chunk_size=chunk_size, directory=directory)
    if checkpoint is not None:
        nbytes = 2 * (sizes["weights"] + sizes["state"]) + HDF5_OVERHEAD
        estimate.add("checkpoint", str(checkpoint), nbytes, "disk",
                     "weights and state, a new copy beside the old one",
                     str(Path(checkpoint).parent))
    return estimate


def estimate_training(network, config, *, run_dir=None, members: int = 1) -> SizeEstimate:
    """The size of a training run of ``network`` with ``config`` (a TrainingConfig): the
    network at the larger of batch_size and eval_batch_size, the protocol's states, and the
    checkpoints in ``run_dir``: run.h5 (weights, biases and a rule state as large as the
    weights) and the ``keep_checkpoints - 1`` kept before it, plus the new one written beside
    them; ``members`` times that for an ensemble. The dataset is not counted."""
    net = _graph(network)
    dtype = _dtype_name(config.dtype)
    batch = max(int(config.batch_size), int(config.eval_batch_size))
    estimate = SizeEstimate("training run", str(config.device))
    sizes = _network_items(estimate, net, dtype, batch)
    estimate.add("protocol", "states", TRAINING_STATE_COPIES * sizes["state"], "memory",
                 f"{TRAINING_STATE_COPIES} copies of the state at batch {batch}")
    if run_dir is not None:
        biases = sum(p.size * max(1, len(getattr(p, "biased", ())))    # one row per
                     for p in net.populations if not p.is_input) * ITEMSIZE[dtype]   # compartment
        files = int(getattr(config, "keep_checkpoints", 1)) + 1
        nbytes = files * (2 * sizes["weights"] + biases + HDF5_OVERHEAD)
        estimate.add("checkpoint", "run.h5", nbytes, "disk",
                     f"weights, biases and rule state; {files} files at most (the kept ones "
                     "and a new one beside them)", str(run_dir))
    if members > 1:
        estimate.what = f"ensemble of {members} training runs"
        estimate.items = [replace(item, nbytes=item.nbytes * members,
                                  detail=f"{item.detail} (x {members} members)")
                          for item in estimate.items]
    return estimate


# ------------------------------------------------------------------------------ the machine
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    """What a memory-limited container (cgroup v2 or v1) may still use: the limit minus the
    usage, page cache that can be dropped counted as free."""
    for limit_file, usage_file, stat_file, inactive in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current",
             "/sys/fs/cgroup/memory.stat", "inactive_file"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes",
             "/sys/fs/cgroup/memory/memory.stat", "total_inactive_file")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is None or usage is None or limit >= 1 << 60:
            continue
        free_cache = 0
        try:
            for line in Path(stat_file).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == inactive and value.strip().isdigit():
                    free_cache = int(value)
        except OSError:
            pass
        return max(0, limit - usage + free_cache)
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def available_memory(device: str = "cpu") -> int | None:
    """Bytes this process can still allocate on ``device`` (None when unknown): for "cpu"
    the smaller of /proc/meminfo's MemAvailable and the cgroup's room (free pages from
    os.sysconf where neither exists); for a GPU its free memory."""
    device = str(device)
    if device.startswith("cuda"):
        try:
            import torch
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:        # no CUDA, or a driver that cannot say: no check
            return None
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    if not known:
        known = [v for v in (_sysconf_available(),) if v is not None]
    return min(known) if known else None


def free_disk(directory) -> int | None:
    """Free bytes on the file system that holds ``directory`` (its nearest existing
    ancestor); None when unknown."""
    path = Path(directory or ".").absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return int(shutil.disk_usage(path).free)
    except OSError:
        return None


def _items_text(items: list[Item]) -> str:
    return ", ".join(i.describe() for i in items)


def check_size(estimate: SizeEstimate, *, memory_available: int | None = None,
               host_available: int | None = None,
               disk_available: int | Mapping[str, int] | None = None,
               memory: bool = True, disk: bool = True, override: str = "--no-size-check",
               hint: str = "", disk_hint: str = "write to a disk with more room") -> None:
    """Raise a ConfigError when the estimate's memory exceeds ``memory_available`` (default:
    :func:`available_memory` of its device; on a GPU the build-time host part is compared
    with ``host_available``, default the CPU's) or its files exceed ``disk_available`` (a
    number for every directory, a mapping directory -> bytes, default :func:`free_disk`).
    ``memory``/``disk`` False skip that part; ``override`` is named as the way to skip the
    check, ``hint`` and ``disk_hint`` as the ways to shrink the run's memory and files."""
    fix = f"{hint + ', or ' if hint else ''}pass {override} to start anyway"
    if memory:
        gpu = estimate.device.startswith("cuda")
        parts = [(("memory",), memory_available, estimate.device)] if gpu else \
            [(("memory", "host"), memory_available, "cpu")]
        if gpu:
            parts.append((("host",), host_available, "cpu"))
        for places, limit, device in parts:
            need = estimate.total(*places)
            if limit is None:
                limit = available_memory(device)
            if limit is not None and need > limit:
                where = "GPU memory" if device != "cpu" else "memory"
                largest = _items_text(estimate.largest(*places, count=3))
                raise ConfigError(
                    f"this {estimate.what} needs about {format_bytes(need)} of {where} but "
                    f"{format_bytes(limit)} is available ({largest}); {fix}.")
    if disk:
        needs: dict[str, int] = {}
        for item in estimate.items:
            if item.place == "disk":
                key = item.directory or "."
                needs[key] = needs.get(key, 0) + item.nbytes
        devices: dict = {}
        for directory, need in needs.items():       # directories on one disk share its room
            devices.setdefault(_device_of(directory), []).append((directory, need))
        for entries in devices.values():
            need = sum(n for _, n in entries)
            directory = entries[0][0]
            if isinstance(disk_available, Mapping):
                limit = disk_available.get(directory)
            else:
                limit = disk_available
            if limit is None:
                limit = free_disk(directory)
            if limit is not None and need > limit:
                files = [i for i in estimate.items if i.place == "disk"
                         and (i.directory or ".") in {d for d, _ in entries}]
                biggest = sorted(files, key=lambda i: -i.nbytes)[:3]
                raise ConfigError(
                    f"this {estimate.what} writes about {format_bytes(need)} to {directory} but "
                    f"only {format_bytes(limit)} is free there ({_items_text(biggest)}); "
                    f"{disk_hint}, or pass {override} to start anyway.")


def _device_of(directory: str):
    path = Path(directory or ".").absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return os.stat(path).st_dev
    except OSError:
        return str(path)


# ------------------------------------------------------------------------------ allocation
_ALLOCATION_WORDS = ("can't allocate", "cannot allocate", "out of memory", "failed to allocate",
                     "not enough memory", "alloc_cpu")


def is_allocation_error(error: BaseException) -> bool:
    """True for the errors torch (and Python) raise when memory cannot be allocated."""
    if isinstance(error, MemoryError):
        return True
    return isinstance(error, RuntimeError) and \
        any(word in str(error).lower() for word in _ALLOCATION_WORDS)


def requested_bytes(error: BaseException) -> int | None:
    """The size an allocation error says was asked for ("... allocate 480000000000 bytes")."""
    found = re.search(r"allocate (\d+) bytes", str(error))
    if found:
        return int(found.group(1))
    found = re.search(r"allocate ([\d.]+) (KiB|MiB|GiB|TiB)", str(error))
    if found:
        power = {"KiB": 10, "MiB": 20, "GiB": 30, "TiB": 40}[found.group(2)]
        return int(float(found.group(1)) * (1 << power))
    return None


def allocation_message(estimate: SizeEstimate | None, error: BaseException) -> str:
    """One line naming what could not be allocated: the item whose size the error names,
    else the largest one."""
    asked = requested_bytes(error)
    asked_text = f" (asked for {format_bytes(asked)})" if asked else ""
    if estimate is None or not estimate.items:
        return (f"out of memory{asked_text}: {str(error).splitlines()[0][:200]}; make the "
                "network or the batch smaller.")
    memory = [i for i in estimate.items if i.place in ("memory", "host")]
    graph = [i for i in memory if i.kind in ("projection", "population")]
    exact = [i for i in memory if asked and abs(i.nbytes - asked) <= 0.01 * asked]
    culprit = (exact or sorted(graph or memory, key=lambda i: -i.nbytes))[0]
    available = available_memory(estimate.device)
    room = f"; about {format_bytes(available)} is available" if available is not None else ""
    return (f"cannot allocate memory{asked_text}: {culprit.describe()}{room} (the whole "
            f"{estimate.what} needs about {format_bytes(estimate.memory_bytes)}); make the "
            "populations or the batch smaller.")


@contextmanager
def allocation_guard(estimate: SizeEstimate | None):
    """Turn an allocation failure inside the block into one ConfigError naming the
    projection or population (and its size) that did not fit."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not is_allocation_error(error):
            raise
        raise ConfigError(allocation_message(estimate, error)) from None
