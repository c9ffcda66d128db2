"""Simulation speed of neurosim beside Brian2 and BrainPy on one network (issue 13).

    python benchmarks/peers/run.py [--sizes 1000 4000] [--repeats 3] [--threads 2]
                                   [--paths fused eager] [--peers brainpy brian2]
                                   [--skip-peers]
                                   [--brian2-targets cpp_standalone]

The network (benchmarks/peers/network.py): N pyramidal neurons (basal and apical dendrites,
sigmoid) with dense recurrent apical input, 100 clamped inputs onto the basal dendrites and
10 relu interneurons (pyr -> inh -> pyr apical, gain -1); explicit Euler, dt 0.05, 2,000
steps, batch 1. Weights and inputs are drawn once per N with NumPy (fixed seed, float32) and
written as .npy files to a temporary directory; every tool reads them from there.

For every N: the float64 NumPy reference runs first; then each tool is built and run once
and its trajectory (10 recorded somas at every step, final u of every neuron) compared with
the reference (network.check): a tool that disagrees is not timed. Then ``--repeats`` rounds
each time every tool once, interleaved (a burst of other load hits all alike; the order
changes from round to round so that each tool follows each other one equally often), and the table
gives steps per second (best and median) and the ratios neurosim / BrainPy and neurosim /
Brian2 (of the best rates; above 1: neurosim is faster), then the paired ratios: the median
over rounds of each round's ratio, which a slow drift of the host's memory bandwidth between
rounds does not move.

Tools: neurosim through its Python API (Simulation from a model TOML, float32, torch threads
= --threads; on its fused path, and with --paths eager also on its eager path), with no recording and recording 10 somas every step into HDF5 (a Recorder, as
``neurosim simulate`` does); BrainPy (bm.for_loop, JAX jit, float32) and Brian2 (cpp_standalone
by default; float64) in subprocesses of the peers' own virtual environment,
benchmarks/peers/.venv-peers (made by benchmarks/peers/setup_peers.sh, never in the project's
dependencies), with their CPU affinity limited to --threads cores. Timed: the 2,000 steps only
(not building, compiling, reading the weights).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import network  # noqa: E402
from timing import cpu_name  # noqa: E402

PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        else:
            return "flags unknown"
    except OSError:
        return "flags unknown"
    return ", ".join(f"{name} {'yes' if key in flags else 'no'}" for name, key in
                     (("AVX2", "avx2"), ("AVX-512", "avx512f"), ("AMX", "amx_tile")))


class Peer:
    """A peer in a subprocess of the peers' venv, speaking worker.py's protocol."""

    def __init__(self, key: str, script: str, directory: Path, threads: int, extra=(),
                 python=None, platform: str = "cpu"):
        self.key, self.label = key, key
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
                   MKL_NUM_THREADS=str(threads), JAX_PLATFORMS=platform, PYTHONUNBUFFERED="1")
        cores = sorted(os.sched_getaffinity(0))[:threads]
        self.log = open(directory / f"{key}.log", "w")
        self.proc = subprocess.Popen(
            [str(python or PEERS_PYTHON), str(HERE / script), str(directory), "--threads", str(threads),
             *extra], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
            text=True, env=env, preexec_fn=lambda: os.sched_setaffinity(0, cores))
        self.directory = directory

    def ready(self) -> dict:
        msg = self._read()
        if msg.get("ready"):
            self.label = msg["label"]
        return msg

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            return {"error": f"exited with status {self.proc.returncode} (log: "
                             f"{self.log.name}): {self._tail()}"}
        return json.loads(line)

    def _tail(self) -> str:
        self.log.flush()
        lines = [ln for ln in Path(self.log.name).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"

    def result(self) -> dict:
        import numpy as np
        return {k: np.load(self.directory / f"{self.key}_{k}.npy")
                for k in ("trace", "u", "u_inh")}

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        msg = self._read()
        if "seconds" not in msg:
            raise RuntimeError(f"{self.label}: {msg.get('error')}")
        return msg["seconds"]

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def measure(n: int, args) -> list[dict]:
    """Check and time every tool on the network of size n; rows for the table."""
    from neurosim_side import NeurosimRunner
    rows = []
    with tempfile.TemporaryDirectory(prefix=f"peers{n}_") as tmp:
        directory = network.write(n, Path(tmp))
        s, arrays = network.load(directory)
        start = time.perf_counter()
        ref = network.reference(s, arrays)
        print(f"\n## N = {n}: float64 reference in {time.perf_counter() - start:.1f} s; "
              f"{network.summary(ref)}", flush=True)
        tools = []            # (row, run() -> seconds)
        for path, record in [(p, r) for p in args.paths for r in (False, True)]:
            runner = NeurosimRunner(directory, record, args.threads, path, args.device,
                                    args.warm)
            name = "graph" if path == "fused" and args.device != "cpu" else path
            where = "" if args.device == "cpu" else f" ({args.device}" + \
                (", warm)" if args.warm else ", cold)")
            label = (f"neurosim {name}{where}, recording 10 somas" if record else
                     f"neurosim {name}{where}, no recording")
            seconds, result = runner.run()        # warm-up and check
            tools.append(_checked({"tool": label, "kind": "neurosim"}, result, ref,
                                  lambda runner=runner: runner.run()[0]))
        peers = []
        if not args.skip_peers:
            specs = [("brainpy", "run_brainpy.py", ())] * ("brainpy" in args.peers) + [
                (f"brian2_{t}", "run_brian2.py",
                 ("--target", t) + (() if args.brian2_openmp else ("--no-openmp",)))
                for t in args.brian2_targets] * ("brian2" in args.peers)
            for key, script, extra in specs:
                if key == "brainpy" and args.device != "cpu":
                    extra = ("--platform", "gpu")
                peer = Peer(key, script, directory, args.threads, extra, args.peers_python,
                            "cpu" if args.device == "cpu" else "cuda")
                peers.append(peer)
                start = time.perf_counter()
                msg = peer.ready()
                kind = "brainpy" if key == "brainpy" else "brian2"
                if not msg.get("ready"):
                    print(f"  {key}: FAILED to build or run: {msg.get('error')}", flush=True)
                    tools.append(({"tool": key, "kind": kind, "skipped": msg.get("error")},
                                  None))
                    continue
                print(f"  {peer.label}: built and checked in "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
                tools.append(_checked({"tool": peer.label, "kind": kind}, peer.result(), ref,
                                      peer.run))
        try:
            times = {id(row): [] for row, fn in tools}
            runnable = [(row, fn) for row, fn in tools if fn is not None]
            orders = balanced_orders(len(runnable))
            for k in range(args.repeats):
                for i in orders[k % len(orders)] if orders else ():
                    row, fn = runnable[i]
                    try:
                        times[id(row)].append(fn())
                    except Exception as err:           # noqa: BLE001 - a peer died
                        row["skipped"] = str(err)
                print(f"  round {k + 1}/{args.repeats}: " + ", ".join(
                    f"{row['tool'] if row['kind'] == 'neurosim' else short(row['tool'])}"
                    f" {s['steps'] / times[id(row)][-1]:,.0f}/s"
                    for row, fn in tools if fn is not None and times[id(row)]), flush=True)
        finally:
            for peer in peers:
                peer.close()
        for row, fn in tools:
            ts = times[id(row)]
            if ts and "skipped" not in row:
                row["best"] = s["steps"] / min(ts)
                row["median"] = s["steps"] / statistics.median(ts)
                row["seconds"] = list(ts)
            row["n"] = n
            rows.append(row)
    return rows


def _checked(row: dict, result: dict, ref: dict, fn):
    ok, line = network.check(network.deviation(result, ref))
    row["agreement"] = line
    print(f"  {row['tool']}: agreement with the float64 reference: {line}", flush=True)
    if not ok:
        row["skipped"] = "disagrees with the reference: " + line
        return row, None
    return row, fn


def report(rows: list[dict]) -> None:
    print("\n| N | tool | steps/s best | steps/s median | agreement (max |u - u_ref| / "
          "max(1, |u_ref|)) |")
    print("|---:|---|---:|---:|---|")
    for row in rows:
        if "best" in row:
            print(f"| {row['n']:,} | {row['tool']} | {row['best']:,.0f} | {row['median']:,.0f} "
                  f"| {row['agreement']} |")
        else:
            print(f"| {row['n']:,} | {row['tool']} | - | - | skipped: {row['skipped']} |")
    print("\nRatios (best steps/s; above 1: neurosim faster):")
    for n in sorted({r["n"] for r in rows}):
        here = [r for r in rows if r["n"] == n and "best" in r]
        ours = [r for r in here if r["kind"] == "neurosim"]
        others = [r for r in here if r["kind"] != "neurosim"]
        if not others:
            print(f"  N = {n:,}: no peer timed")
        for o in others:
            print(f"  N = {n:,}: " + "; ".join(
                f"{r['tool']} / {o['tool']} = {r['best'] / o['best']:.2f}" for r in ours))
    print("\nPaired ratios (median over rounds of the peer's seconds / neurosim's seconds in the "
          "same round; a drift of the host's speed between rounds cancels):")
    for n in sorted({r["n"] for r in rows}):
        here = [r for r in rows if r["n"] == n and "seconds" in r]
        for o in (r for r in here if r["kind"] != "neurosim"):
            print(f"  N = {n:,}: " + "; ".join(
                f"{r['tool']} / {o['tool']} = {paired(r['seconds'], o['seconds']):.2f}"
                for r in here if r["kind"] == "neurosim"))


def balanced_orders(count: int) -> list[list[int]]:
    """Orders of ``count`` tools for successive rounds in which each tool runs right after
    each other one equally often (a Williams design: first order 0, 1, count - 1, 2,
    count - 2, ..., then shifted by one per round): no tool always follows the same one
    (in one run the tool after Brian2's minutes on one core ran slower)."""
    first, lo, hi = [0], 1, count - 1
    while len(first) < count:
        first.append(lo)
        lo += 1
        if len(first) < count:
            first.append(hi)
            hi -= 1
    return [[(i + shift) % count for i in first] for shift in range(count)] if count else []


def short(tool: str) -> str:
    """A peer's name up to its first comma, its parenthesis closed: "BrainPy 2.8.2 for_loop
    (JAX 0.10.2 jit)"."""
    name = tool.split(",")[0]
    return name + ")" * (name.count("(") - name.count(")"))


def paired(ours: list[float], theirs: list[float]) -> float:
    """The median over rounds k of theirs[k] / ours[k] (the rounds both completed)."""
    return statistics.median(t / o for o, t in zip(ours, theirs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", nargs="+", default=["fused"], choices=["fused", "eager"],
                    help="neurosim's paths to time: the compiled many-step loop (fused, the "
                         "default for this network) and/or one tensor operation at a time")
    ap.add_argument("--peers", nargs="+", default=["brainpy", "brian2"],
                    choices=["brainpy", "brian2"],
                    help="which peers to run (Brian2 at N = 4,000 takes about 2 minutes a run)")
    ap.add_argument("--skip-peers", action="store_true",
                    help="only neurosim and the reference (runs in the project's venv alone)")
    ap.add_argument("--brian2-targets", nargs="+", default=["cpp_standalone"],
                    choices=["cpp_standalone", "cython", "numpy"],
                    help="Brian2 code generation targets to time (each a tool)")
    ap.add_argument("--brian2-openmp", action="store_true",
                    help="cpp_standalone with --threads OpenMP threads (default: 1 thread, "
                         "faster here for summed variables)")
    ap.add_argument("--device", default="cpu",
                    help="cpu, or cuda: neurosim on the GPU (its fused path is then the graph "
                         "path) and BrainPy's JAX on the GPU")
    ap.add_argument("--warm", action="store_true",
                    help="neurosim's timed runs continue its first run for another 2,000 steps "
                         "(the graphs or set-up it made kept) instead of building a fresh "
                         "simulation each time")
    ap.add_argument("--peers-python", type=Path, default=None,
                    help="the Python that runs the peers (default: the peers' venv)")
    args = ap.parse_args()
    if not args.skip_peers and args.peers_python is None and not PEERS_PYTHON.exists():
        sys.exit(f"run.py: the peers' virtual environment {PEERS_PYTHON.parent.parent} is "
                 f"missing; create it with `bash {HERE / 'setup_peers.sh'}` (installs Brian2, "
                 "BrainPy and JAX there, a few minutes), or pass --skip-peers to time neurosim "
                 "alone.")
    import torch
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"# peers: {cpu_name()} ({cpu_flags()}), {os.cpu_count()} cores, "
          f"{args.threads} threads per tool; Python {platform.python_version()}, torch "
          f"{torch.__version__}; load average at start {load[0]:.2f} {load[1]:.2f}")
    print(f"# explicit Euler, dt {network.DT}, {network.STEPS} steps, batch 1; "
          f"{args.repeats} interleaved repeats")
    rows = []
    for n in args.sizes:
        rows += measure(n, args)
    report(rows)
    load = os.getloadavg()
    print(f"\n# load average at end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
