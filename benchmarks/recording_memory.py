"""Recording memory: peak memory stays flat when a run records 10x more steps.

    python benchmarks/recording_memory.py [--steps 2000 20000] [--neurons 1000] [--batch 4]
                                          [--chunk-size 256] [--no-baseline]

Each configuration runs in a fresh Python process (so peak RSS, from
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, belongs to that run alone). The process builds
a Simulation (input 50 -> pyramidal N -> pyramidal 50, gs-euler, float32, batch B), records
the soma potential u of all N neurons and the apical potential of the top layer at every
step, and reports:

- peak RSS after setup and a 10-step warm-up (before recording), and at the end of the run;
- the growth of the peak during the run;
- the recorder's in-memory buffers (``Recorder.buffer_nbytes``: chunk_size records per
  monitor, whatever the run length) and the bytes it wrote to disk.

For contrast, the ``in-memory`` rows keep every record in a Python list of tensors (what a
recorder without streaming would do): their peak grows with the number of steps.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = """
[network]
name = "recording_memory"

[[population]]
name = "x"
type = "input"
size = 50

[[population]]
name = "pyr"
type = "pyramidal"
size = {n}
leak = 0.2
basal = 1.0
apical = 0.5
activation = "sigmoid"

[[population]]
name = "top"
type = "pyramidal"
size = 50
leak = 0.2
activation = "sigmoid"

[[projection]]
name = "x_pyr"
source = "x"
target = "pyr"
compartment = "basal"

[[projection]]
name = "pyr_top"
source = "pyr"
target = "top"
compartment = "basal"

[[projection]]
name = "top_pyr"
source = "top"
target = "pyr"
compartment = "apical"

[simulation]
solver = "gs-euler"
dt = 0.05
batch = {batch}
seed = 0

[[monitor]]
population = "pyr"
compartment = "soma"
variable = "u"

[[monitor]]
population = "top"
compartment = "apical"
variable = "v"
"""


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


class ListRecorder:
    """The non-streaming alternative: every record kept in memory until the end."""

    def __init__(self):
        self.records: dict[str, list] = {}
        self.chunks_written = 0

    def add(self, name, spec, shape, dtype, attrs=None):
        self.records[name] = []

    def append(self, name, values, t):
        self.records[name].append((t, values.clone()))

    @property
    def buffer_nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for recs in self.records.values()
                   for _, v in recs)

    def close(self):
        pass


def child(mode: str, steps: int, neurons: int, batch: int, chunk_size: int, out: str) -> dict:
    import torch

    from neurosim.graph import parse_model_text
    from neurosim.io import Recorder
    from neurosim.simulation import Simulation, monitors_from

    torch.set_num_threads(1)
    text = MODEL.format(n=neurons, batch=batch)
    sim = Simulation.from_model_text(text)
    sim.run(10)  # warm-up: allocations, first-call overheads
    sim = Simulation.from_model_text(text)
    monitors = monitors_from(parse_model_text(text), sim.network, "model")
    before = peak_rss_mib()
    recorder = (Recorder(out, chunk_size=chunk_size, overwrite=True) if mode == "recorder"
                else ListRecorder())
    t0 = time.perf_counter()
    sim.run(steps, monitors=monitors, recorder=recorder)
    during = peak_rss_mib()
    buffers = recorder.buffer_nbytes
    chunks = recorder.chunks_written
    recorder.close()
    seconds = time.perf_counter() - t0
    record_bytes = sum(int(torch.tensor(s).prod()) * 4 for s in ((batch, neurons), (batch, 50)))
    return {"mode": mode, "steps": steps, "records": steps + 1, "peak_before_mib": before,
            "peak_after_mib": max(during, peak_rss_mib()), "buffer_bytes": buffers,
            "chunks": chunks, "data_bytes": (steps + 1) * record_bytes,
            "file_bytes": os.path.getsize(out) if mode == "recorder" else 0,
            "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--no-baseline", action="store_true", help="skip the in-memory rows")
    p.add_argument("--child", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        result = child(args.child[0], int(args.child[1]), args.neurons, args.batch,
                       args.chunk_size, args.out)
        print(json.dumps(result))
        return

    mib = 1 << 20
    print(f"# recording memory: pyramidal N={args.neurons}, batch {args.batch}, monitors "
          f"pyr/soma/u ({args.batch}x{args.neurons}) + top/apical/v ({args.batch}x50) every "
          f"step, chunk_size {args.chunk_size}, float32; one fresh process per row")
    load = os.getloadavg()
    print(f"# load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    print("| mode | steps | data recorded (MiB) | file (MiB) | chunks written | "
          "in-memory buffers (MiB) | peak RSS before run (MiB) | peak RSS after run (MiB) | "
          "growth (MiB) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    modes = ["recorder"] + ([] if args.no_baseline else ["in-memory"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for steps in args.steps:
                out = str(Path(tmp) / f"rec-{steps}.h5")
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", mode, str(steps), "--out", out,
                     "--neurons", str(args.neurons), "--batch", str(args.batch),
                     "--chunk-size", str(args.chunk_size)],
                    capture_output=True, text=True,
                    env=dict(os.environ, OMP_NUM_THREADS="1"))
                if proc.returncode != 0:
                    raise SystemExit(f"child failed:\n{proc.stderr}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(r)
                Path(out).unlink(missing_ok=True)
                print(f"| {mode} | {steps:,} | {r['data_bytes'] / mib:,.1f} | "
                      f"{r['file_bytes'] / mib:,.1f} | {r['chunks']} | "
                      f"{r['buffer_bytes'] / mib:,.2f} | {r['peak_before_mib']:,.1f} | "
                      f"{r['peak_after_mib']:,.1f} | "
                      f"{r['peak_after_mib'] - r['peak_before_mib']:,.1f} | "
                      f"{r['seconds']:.1f} |", flush=True)
    rec = [r for r in rows if r["mode"] == "recorder"]
    if len(rec) >= 2:
        lo, hi = rec[0], rec[-1]
        print(f"\nrecorder: {hi['steps'] / lo['steps']:g}x the steps -> "
              f"{hi['data_bytes'] / lo['data_bytes']:.1f}x the data, peak RSS "
              f"{lo['peak_after_mib']:.0f} -> {hi['peak_after_mib']:.0f} MiB "
              f"({hi['peak_after_mib'] / lo['peak_after_mib']:.2f}x); buffers "
              f"{lo['buffer_bytes'] / mib:.2f} -> {hi['buffer_bytes'] / mib:.2f} MiB")


if __name__ == "__main__":
    main()
