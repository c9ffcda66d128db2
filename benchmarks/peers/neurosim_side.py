"""The peer benchmark's network through neurosim's public Python API.

A model TOML naming the .npy files of :mod:`network` is written next to them and built with
:meth:`neurosim.simulation.Simulation.from_model_file` (solver "euler", dt 0.05, 2,000 steps,
batch 1, float32). A run is timed around ``Simulation.run`` only (building the simulation,
which reads the weight files, is not timed), either without recording or recording the 10
somas of :func:`network.recorded` at every step into an HDF5 file with a
:class:`neurosim.io.Recorder`, as ``neurosim simulate`` does; on the fused path (the default
for this network) or, for comparison, the eager one.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

import network

MODEL = """\
# written by benchmarks/peers/neurosim_side.py (see benchmarks/peers/network.py)
[network]
name = "peers_{n}"

[[population]]
name = "x"
type = "input"
size = {n_input}

[[population]]
name = "pyr"
type = "pyramidal"
size = {n}
leak = {pyr[leak]!r}
basal = {pyr[basal]!r}
apical = {pyr[apical]!r}
rate = {pyr[rate]!r}
bias = {pyr[bias]!r}
activation = "sigmoid"

[[population]]
name = "inh"
type = "interneuron"
size = {n_inh}
leak = {inh[leak]!r}
rate = {inh[rate]!r}
bias = {inh[bias]!r}
activation = "relu"

[[projection]]
name = "x_pyr"
source = "x"
target = "pyr"
compartment = "basal"
init = {{ file = "x_pyr.npy" }}

[[projection]]
name = "pyr_pyr"
source = "pyr"
target = "pyr"
compartment = "apical"
init = {{ file = "pyr_pyr.npy" }}

[[projection]]
name = "pyr_inh"
source = "pyr"
target = "inh"
compartment = "soma"
init = {{ file = "pyr_inh.npy" }}

[[projection]]
name = "inh_pyr"
source = "inh"
target = "pyr"
compartment = "apical"
gain = {gain_inh!r}
init = {{ file = "inh_pyr.npy" }}

[simulation]
solver = "euler"
dt = {dt!r}
n_steps = {steps}
batch = 1
dtype = "float32"
seed = 0
inputs = {{ x = {{ file = "x.npy" }} }}
"""


def write_model(directory) -> Path:
    """model.toml next to the arrays and spec.json written by :func:`network.write`."""
    directory = Path(directory)
    s, _ = network.load(directory)
    path = directory / "model.toml"
    path.write_text(MODEL.format(**s))
    return path


class NeurosimRunner:
    """Builds and runs the network from ``model.toml``; ``record`` adds the 10-soma monitor.
    ``path``: "fused" (the compiled many-step loop, required; on a GPU the graph path,
    neurosim.dynamics.graphs) or "eager" (one tensor operation at a time; neurosim.dynamics.fused
    explains both). ``device``: "cpu" or "cuda". ``warm``: the timed runs after the first
    continue the first run's simulation for another 2,000 steps (the graphs it recorded kept,
    as a JIT keeps its compiled loop) instead of building a fresh one."""

    def __init__(self, directory, record: bool, threads: int, path: str = "fused",
                 device: str = "cpu", warm: bool = False):
        self.mode = {"fused": "require", "eager": "off"}[path]
        self.device, self.warm, self.sim = device, warm, None
        from neurosim.io import MonitorSpec
        torch.set_num_threads(threads)
        self.directory, self.record = Path(directory), record
        self.model = write_model(self.directory)
        s, _ = network.load(self.directory)
        self.steps = s["steps"]
        self.monitors = [MonitorSpec("pyr", "soma", "u", indices=tuple(s["recorded"]))] \
            if record else []

    def run(self) -> tuple[float, dict]:
        """One timed run from a fresh simulation: (seconds, trajectory)."""
        from neurosim.dynamics import fused
        with fused.mode(self.mode):
            return self._run()

    def _synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def _run(self) -> tuple[float, dict]:
        from neurosim.io import Recorder
        from neurosim.simulation import Simulation
        fresh = self.sim is None or not self.warm
        sim = Simulation.from_model_file(self.model, device=self.device) if fresh else self.sim
        if self.warm:
            self.sim = sim
        first, end = sim.step, sim.step + self.steps
        out = self.directory / "neurosim_recording.h5"
        self._synchronize()
        if self.record:
            recorder = Recorder(out, attrs=sim.run_attrs(), overwrite=True,
                                config_text=sim.model_text)
            with recorder:
                start = time.perf_counter()
                stats = sim.run(end, monitors=self.monitors, recorder=recorder)
                self._synchronize()
                seconds = time.perf_counter() - start
        else:
            start = time.perf_counter()
            stats = sim.run(end)
            self._synchronize()
            seconds = time.perf_counter() - start
        if stats.steps != end:
            raise RuntimeError(f"neurosim ran to step {stats.steps}, expected {end}")
        if first:                             # a continued run: timed, not checked
            return seconds, {}
        result = {"u": sim.state["pyr"].u[0].double().cpu().numpy().copy(),
                  "u_inh": sim.state["inh"].u[0].double().cpu().numpy().copy(),
                  "trace": None}
        if self.record:
            import h5py
            with h5py.File(out, "r") as f:
                result["trace"] = np.asarray(f["recordings/pyr/soma/u"])[:, 0, :]
        return seconds, result
