"""The protocol between benchmarks/peers/run.py and a peer running in its own virtual
environment (NumPy only, so both sides import it).

The peer is started as ``python run_<tool>.py DIR --threads T [options]`` with DIR holding
the network (network.write). It builds its simulation, runs it once to check (writing
``DIR/<label>_trace.npy``, ``_u.npy``, ``_u_inh.npy``), answers one JSON line
``{"ready": ..., "label": ..., "setup_s": ...}``, then for every line ``run`` on its stdin
runs the 2,000 steps again from the initial state and answers ``{"seconds": ...}``; ``quit``
(or the end of stdin) ends it. The protocol has its own file descriptor: whatever the tool
prints (to Python's stdout or from C code) goes to stderr.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def serve(build, directory, label_hint: str) -> None:
    """``build()`` returns (label, run) where ``run()`` -> (seconds, {"trace", "u", "u_inh"})."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(**msg):
        proto.write(json.dumps(msg) + "\n")
        proto.flush()

    try:
        start = time.perf_counter()
        label, run = build()
        seconds, result = run()           # the first run compiles (JAX, Cython, C++)
        setup = time.perf_counter() - start
        for key in ("trace", "u", "u_inh"):
            np.save(Path(directory) / f"{label_hint}_{key}.npy",
                    np.asarray(result[key], dtype=np.float64))
        send(ready=True, label=label, setup_s=setup, first_run_s=seconds)
    except Exception as err:              # noqa: BLE001 - reported to the driver
        traceback.print_exc()
        send(ready=False, error=f"{type(err).__name__}: {err}")
        return
    for line in sys.stdin:
        if line.strip() != "run":
            break
        try:
            seconds, _ = run()
            send(seconds=seconds)
        except Exception as err:          # noqa: BLE001
            traceback.print_exc()
            send(error=f"{type(err).__name__}: {err}")
            return
