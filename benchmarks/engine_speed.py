"""Engine speed: steps per second of every solver on a dense three-compartment population.

    python benchmarks/engine_speed.py [--sizes 1000 10000] [--batches 1 16] [--budget 3]
                                      [--solvers euler gs-euler heun rk4 dopri5 bdf lsoda]
                                      [--threads 2] [--dtype float32]

Network: an input population of 100 neurons feeding the basal dendrites of one pyramidal
population of N neurons (sigmoid), with a dense N x N recurrent projection onto its apical
dendrites (weights N(0, (0.5/sqrt N)^2), so the dynamics are contracting and non-trivial).

Each (N, batch, solver) is measured for about ``--budget`` seconds of wall time after a
short warm-up, through :func:`neurosim.solvers.solve` with its defaults (finiteness checked
after every step, as in ``Simulation.run``):

- fixed-step solvers (euler, gs-euler, heun, rk4): steps/s at dt = 0.05;
- adaptive solvers (dopri5, bdf, lsoda; rtol 1e-7, atol 1e-9): output steps/s on a grid of
  dt = 0.05 plus the right-hand-side evaluations per output step. They integrate in segments
  of 64 output steps (the default; each segment restarts the integrator), or fewer when a
  segment of 64 does not finish within the time box (the table says which). The scipy adapter passes
  the analytic (block-diagonal) Jacobian only when N <= dense_jacobian_limit (4096); above,
  BDF would build an N x N finite-difference Jacobian from N right-hand-side evaluations, so it
  is reported as skipped. A measurement whose first output steps do not finish within the
  time box (max(10 s, 3 x budget)) is reported as skipped, with the evaluations it made.

Prints a Markdown table plus the machine, thread count and load average.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import time

import torch

from neurosim.dynamics import CompiledNetwork
from neurosim.errors import SimulationError
from neurosim.graph import InputPopulation, Network, Projection, PyramidalPopulation
from neurosim.solvers import ConstantStep, ContinuousSolver, get_solver, solve

N_INPUT = 100
DT = 0.05
FIXED = ("euler", "gs-euler", "heun", "rk4")
ADAPTIVE = ("dopri5", "bdf", "lsoda")


class TimeBox(Exception):
    pass


def network(n: int) -> Network:
    return Network([
        InputPopulation("x", N_INPUT),
        PyramidalPopulation("pyr", n, leak=0.1, basal=1.0, apical=0.5, activation="sigmoid"),
    ], [
        Projection("x_pyr", "x", "pyr", "basal", init="xavier_uniform"),
        Projection("pyr_pyr", "pyr", "pyr", "apical", init="normal", scale=0.5 / math.sqrt(n)),
    ], name=f"dense{n}")


def fresh_state(net: CompiledNetwork, x: torch.Tensor):
    state = net.zero_state(x.shape[0])
    net.clamp_inputs(state, {"x": x})
    return state


class TimeBoxed:
    """SIGALRM after ``seconds``, raised as TimeBox (inside scipy's Fortran LSODA loop it
    surfaces as a solver failure, a SimulationError, instead)."""

    def __init__(self, seconds: int):
        self.seconds = seconds

    def __enter__(self):
        def on_alarm(*_):
            raise TimeBox

        self.old = signal.signal(signal.SIGALRM, on_alarm)
        self.start = time.perf_counter()
        signal.alarm(self.seconds)
        return self

    def expired(self, err: BaseException) -> bool:
        return isinstance(err, TimeBox) or time.perf_counter() - self.start >= self.seconds

    def __exit__(self, *exc):
        signal.alarm(0)
        signal.signal(signal.SIGALRM, self.old)


def measure(net: CompiledNetwork, batch: int, name: str, budget: float) -> dict:
    """Run ``name`` for about ``budget`` seconds; return steps, seconds, rhs evaluations.

    Fixed-step solvers run in chunks of doubling length until the budget is used up.
    Adaptive solvers integrate in segments of ``segment`` output steps (each segment restarts
    the integrator, as in a long run): 64 (the default), or 16, 4, 1 when a segment of 64
    does not finish within the time box."""
    solver = get_solver(name)
    adaptive = isinstance(solver, ContinuousSolver)
    n = net.n_dyn
    if name in ("bdf", "radau") and n > solver.dense_jacobian_limit:
        return {"skipped": f"N > dense_jacobian_limit ({solver.dense_jacobian_limit}): "
                           f"a finite-difference Jacobian needs {n} rhs evaluations each"}
    x = torch.rand(batch, N_INPUT, generator=torch.Generator().manual_seed(1), dtype=net.dtype)
    dynamics = net.phase(net.build_operators(), {"x": x})
    schedule = ConstantStep(DT)
    limit = int(max(10, 3 * budget))

    with torch.inference_mode():
        # warm-up: allocations, thread start-up, scipy imports
        evals0 = dynamics.rhs_evals
        with TimeBoxed(limit) as box:
            try:
                solve(dynamics, fresh_state(net, x), solver=solver, schedule=schedule,
                      n_steps=2)
            except MemoryError as err:
                return {"skipped": f"out of memory ({str(err).split(' for an array')[0]})"}
            except (TimeBox, SimulationError) as err:
                if not box.expired(err):
                    return {"skipped": f"solver failed: {err}"}
                evals = dynamics.rhs_evals - evals0
                per_eval = (time.perf_counter() - box.start) / max(1, evals)
                return {"skipped": f"2 output steps did not finish within {limit} s "
                                   f"({evals} rhs evaluations, {per_eval:.2g} s each on "
                                   f"average)"}
        for segment in ((64, 16, 4, 1) if adaptive else (None,)):
            if adaptive:
                solver.segment = segment
            state = fresh_state(net, x)
            k, chunk, elapsed, evals = 0, segment or 1, 0.0, 0
            evals0, t0 = dynamics.rhs_evals, time.perf_counter()
            with TimeBoxed(limit) as box:
                try:
                    while elapsed < budget:
                        solve(dynamics, state, solver=solver, schedule=schedule,
                              n_steps=k + chunk, step0=k, t0=k * DT)
                        k += chunk
                        elapsed = time.perf_counter() - t0
                        evals = dynamics.rhs_evals - evals0
                        if not adaptive and elapsed < budget / 4:
                            chunk *= 2
                except (TimeBox, SimulationError) as err:
                    if not box.expired(err):
                        return {"skipped": f"solver failed: {err}"}
                    if k == 0:  # not even one chunk: try shorter segments
                        continue
            if not bool(torch.isfinite(state.u).all()):
                return {"skipped": "diverged"}
            return {"steps": k, "seconds": elapsed, "evals": evals, "adaptive": adaptive,
                    "segment": segment}
    return {"skipped": f"no output step finished within {limit} s"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--solvers", nargs="+", default=[*FIXED, *ADAPTIVE])
    p.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    load0 = os.getloadavg()
    print(f"# engine speed: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.dtype}, dt {DT}, "
          f"budget {args.budget:g} s per row")
    print(f"# load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}\n")
    print("| N | batch | solver | steps | seconds | steps/s | rhs evals/step | "
          "neuron-steps/s |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        t = time.perf_counter()
        net = CompiledNetwork(network(n), dtype=dtype, seed=0)
        build = time.perf_counter() - t
        for batch in args.batches:
            for name in args.solvers:
                r = measure(net, batch, name, args.budget)
                if "skipped" in r:
                    print(f"| {n} | {batch} | {name} | - | - | skipped: {r['skipped']} | - | - |",
                          flush=True)
                    continue
                rate = r["steps"] / r["seconds"]
                label = (f"{name} (output steps, segment {r['segment']})" if r["adaptive"]
                         else name)
                print(f"| {n} | {batch} | {label} | {r['steps']} | {r['seconds']:.2f} | "
                      f"{rate:,.1f} | {r['evals'] / r['steps']:.2f} | "
                      f"{rate * n * batch:,.3g} |", flush=True)
        print(f"<!-- N={n}: network compiled in {build:.1f} s -->", flush=True)
        del net
    load1 = os.getloadavg()
    print(f"\n# load average at end: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")


if __name__ == "__main__":
    main()
