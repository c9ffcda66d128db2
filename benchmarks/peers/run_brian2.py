"""The peer benchmark's network in Brian2: NeuronGroups for the pyramidal cells and the
interneurons (``method="euler"``, dt = 0.05 ms, model time in ms), dense Synapses whose
``(summed)`` variables carry W r into the targets (N^2 + 20 N synapses; Brian2 updates summed
variables before the groups' state update, so the scheme is the same explicit Euler), the
activities r kept as state variables set after every step by ``run_regularly`` (so that the
sigmoid is evaluated once per neuron, not once per synapse), the
clamped inputs' constant contribution g_B W x + b computed once into a per-neuron constant,
and a StateMonitor on the 10 recorded somas (every run records them). Brian2 computes in
float64 (its default; the weights are the same float32 numbers as everywhere).

Targets (``--target``): ``cpp_standalone`` (C++ code generation, compiled once; the binary
is run again for every timed run and its own simulation time, ``device._last_run_time``, is
reported, without loading the synapses; OpenMP with ``--threads`` threads), ``cython`` or
``numpy`` (runtime: ``Network.run`` timed, restored to the initial state in between).

    python run_brian2.py DIR --threads 2 --target cpp_standalone
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import network  # noqa: E402
import worker  # noqa: E402

PYR_EQS = """
du/dt = rate * (-d * u + k_a * (I_rec + g_inh * I_inh) + drive) / ms : 1
r : 1
I_rec : 1
I_inh : 1
drive : 1 (constant)
"""
INH_EQS = """
du/dt = rate_i * (-leak_i * u + I_exc + b_i) / ms : 1
r : 1
I_exc : 1
"""


def build(directory, threads, target, openmp):
    import numpy as np
    import brian2 as b2
    from brian2 import ms
    s, a = network.load(directory)
    p, q = s["pyr"], s["inh"]
    n, n_inh, steps = s["n"], s["n_inh"], s["steps"]
    standalone = target == "cpp_standalone"
    build_dir = Path(directory) / f"brian2_{target}"
    if standalone:
        b2.set_device("cpp_standalone", directory=str(build_dir), build_on_run=False)
        b2.prefs.devices.cpp_standalone.openmp_threads = threads if openmp else 0
    else:
        b2.prefs.codegen.target = target
        b2.prefs.codegen.runtime.cython.cache_dir = str(build_dir / "cython_cache")
    b2.defaultclock.dt = s["dt"] * ms
    ns = dict(rate=p["rate"], d=p["decay"], k_a=p["apical"], g_inh=s["gain_inh"],
              rate_i=q["rate"], leak_i=q["leak"], b_i=q["bias"], ms=ms)
    pyr = b2.NeuronGroup(n, PYR_EQS, method="euler", namespace=ns, name="pyr")
    inh = b2.NeuronGroup(n_inh, INH_EQS, method="euler", namespace=ns, name="inh")
    pyr.drive = network.input_current(s, a) + p["bias"]
    pyr.u, pyr.r = 0, 0.5                             # r = sigmoid(u), relu(u) at u = 0
    inh.u, inh.r = 0, 0
    # the activities as state variables, updated once per neuron after each state update (a
    # subexpression r = sigmoid(u) would be evaluated per synapse: 10x slower here)
    pyr.run_regularly("r = 1 / (1 + exp(-u))", when="after_groups", name="pyr_rate")
    inh.run_regularly("r = u * int(u > 0)", when="after_groups", name="inh_rate")

    def dense(source, target_group, var, w):        # w: target x source
        syn = b2.Synapses(source, target_group, f"w : 1\n{var}_post = w * r_pre : 1 (summed)",
                          name=f"{source.name}_{target_group.name}")
        post, pre = np.indices(w.shape)
        syn.connect(i=pre.ravel(), j=post.ravel())
        syn.w = w.astype(np.float64).ravel()
        return syn

    syns = [dense(pyr, pyr, "I_rec", a["pyr_pyr"]), dense(pyr, inh, "I_exc", a["pyr_inh"]),
            dense(inh, pyr, "I_inh", a["inh_pyr"])]
    mon = b2.StateMonitor(pyr, "u", record=np.asarray(s["recorded"]), name="mon")
    net = b2.Network(pyr, inh, *syns, mon)
    duration = steps * s["dt"] * ms

    def result():
        trace = np.asarray(mon.u).T                   # steps x 10 (states before each step)
        return {"trace": np.concatenate([trace, np.asarray(pyr.u)[None, s["recorded"]]]),
                "u": np.asarray(pyr.u), "u_inh": np.asarray(inh.u)}

    if standalone:
        net.run(duration)
        b2.device.build(directory=str(build_dir), compile=True, run=False)

        def run():
            b2.device.run()
            return float(b2.device._last_run_time), result()
    else:
        net.store("initial")

        def run():
            net.restore("initial")
            start = time.perf_counter()
            net.run(duration)
            return time.perf_counter() - start, result()

    label = f"Brian2 {b2.__version__} {target}" + (
        (f" ({threads} OpenMP threads)" if openmp else " (1 thread)") if standalone
        else "") + ", float64"
    return label, run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("directory")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", default="cpp_standalone",
                    choices=["cpp_standalone", "cython", "numpy"])
    ap.add_argument("--no-openmp", dest="openmp", action="store_false",
                    help="cpp_standalone: one thread (summed variables gain little from OpenMP)")
    args = ap.parse_args()
    worker.serve(lambda: build(args.directory, args.threads, args.target, args.openmp),
                 args.directory,
                 f"brian2_{args.target}")


if __name__ == "__main__":
    main()
